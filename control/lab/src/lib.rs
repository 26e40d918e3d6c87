//! The lab: a node and its pods in network namespaces on one machine, with a real
//! `xylem-agent` as the node's dataplane; and the helpers to run commands, handle namespaces and
//! start netserver that the lab and `netperf-harness` share.
//!
//! # What it does
//! - Everything the lab creates lives in namespaces named `xylem-<lab>-…`: a **node namespace**
//!   that plays the host (the agent runs there, with the dataplane ends of the pod veths and the
//!   host port), and one namespace per pod ([`Lab::up`], [`Lab::add_pod`]). Its state is
//!   recorded under `/run/xylem/labs/<lab>` ([`Lab::state`]).
//! - A lab file's `nodes:` form makes several nodes ([`LabFile::node_list`]), each its own
//!   namespace with its own agent, API socket and pod CIDR (10.200.i.0/24), plus an underlay:
//!   a namespace with a bridge joining every node's uplink ([`UPLINK_IF`], at [`node_ip`]) and a
//!   world namespace ([`WORLD_IP`]) that plays the underlay router and serves netperf and echo.
//!   Each agent gets its own worker core while the machine has enough. Every agent is told
//!   the other nodes' pods as remote endpoints, on `lab up`, `lab add-pod` and `lab delete-pod`,
//!   so that its policies select them by label.
//! - `lab down` ([`Lab::down`]) removes it all — also after the agent was SIGKILLed — by killing
//!   every process left in the lab's namespaces and deleting the namespaces, which destroys the
//!   veths and the XDP programs on them.
//! - [`process`] runs helper commands with their output captured and errors that name the
//!   command, and owns long-running children behind a guard that stops them on drop; [`netns`]
//!   creates, lists and removes namespaces (with a guard that deletes one on drop), starts
//!   netserver in one, and brings the node's end of a pod veth up closed to the node's own stack
//!   ([`netns::node_port_up`], which a CNI plugin can call as well: this crate links no agent). `netperf-harness` builds its kernel paths with these same helpers, so
//!   there is one copy of each.
//!
//! # What it does not do
//! - It never touches the machine's own namespace, interfaces or routes, and no traffic leaves
//!   the lab's namespaces.
//! - It does not decide anything per packet, nor configure the dataplane beyond the agent's
//!   configuration file and its API: the agent owns the XDP program, the sockets and the tables.
//! - It handles no signals and pins no CPUs itself (a multi-node lab only names each agent's
//!   worker core in its configuration): a caller that must stop on a signal passes its own
//!   flag to [`process::run_timed`]; the harness keeps its signal handling and CPU pinning.
//! - When the lab has a DNS server pod (`kube-system`, `k8s-app: kube-dns`), every pod's
//!   `ip netns exec` resolves names through it ([`resolv`]); the machine's resolver
//!   configuration is never touched.
//! - It installs nothing: `ip`, `ethtool`, `ss`, `sysctl`, `iptables`, socat and netperf come from
//!   `docker/bootstrap.sh`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use xylem_api::config::{DEFAULT_SOCKET, Ipv4Cidr, XdpModeSetting, check_node_name, overlaps};
use xylem_dataplane::tables::{MacAddr, Mode};
use xylem_dataplane::worker::Placement;

mod error;
pub mod netns;
mod pods;
pub mod process;
mod remote;
mod resolv;
mod underlay;
mod up;

pub use error::Error;
pub use netns::{NETSERVER_PORT, start_netserver};
pub use process::run;

/// The lab name used when none is given; its agent listens on the default API socket.
pub const DEFAULT_LAB: &str = "default";
/// The gateway's MAC (locally administered).
pub const GATEWAY_MAC: MacAddr = MacAddr([0x0e, 0x78, 0x79, 0x6c, 0x00, 0x01]);
/// The host port's interface in the node namespace, facing the host side.
pub const HOST_IF: &str = "xyhost";
/// The host port's dataplane end (the agent's host port).
pub const HOST_DP_IF: &str = "xyhostdp";

/// The pod CIDR of a lab's node.
pub const POD_CIDR: Ipv4Cidr = Ipv4Cidr {
    addr: Ipv4Addr::new(10, 200, 0, 0),
    len: 24,
};

/// The service CIDR the node routes to the host port when the lab file names none: Kubernetes'
/// own default (`--service-cluster-ip-range`).
pub const DEFAULT_SERVICE_CIDR: Ipv4Cidr = Ipv4Cidr {
    addr: Ipv4Addr::new(10, 96, 0, 0),
    len: 12,
};

/// `LAB.yaml`: the pods to create, on one node (`pods:`) or on several (`nodes:`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabFile {
    /// The pods of the single-node form: one node called [`SINGLE_NODE`], with pod CIDR
    /// [`POD_CIDR`] and no underlay. Empty when `nodes` is used; `pods: []` (or no `nodes`
    /// either) is a node without pods, whose agent waits for them (`lab add-pod`, a CNI
    /// plugin's ADD).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<LabPod>,
    /// The nodes of the multi-node form, in file order: node i gets pod CIDR 10.200.i.0/24 and
    /// an uplink on the lab's underlay ([`node_pod_cidr`], [`node_ip`]). Empty when `pods` is
    /// used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<LabNode>,
    /// The services' virtual IPs: the node namespace routes them through the host port, so the
    /// node's own stack reaches them through the dataplane, which balances them (default
    /// [`DEFAULT_SERVICE_CIDR`]).
    #[serde(default = "default_service_cidr")]
    pub service_cidr: Ipv4Cidr,
    /// ESP encryption between the nodes (multi-node form only): every node's agent gets this key
    /// file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<LabEncryption>,
}

fn default_service_cidr() -> Ipv4Cidr {
    DEFAULT_SERVICE_CIDR
}

/// One node of a multi-node lab file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabNode {
    /// The node's name: an RFC 1123 label of at most [`MAX_NODE_NAME`] characters (it is part
    /// of the node's namespace name).
    pub name: String,
    /// Its pods (none: its agent waits for them, as in the single-node form).
    pub pods: Vec<LabPod>,
}

/// A lab file's `encryption` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabEncryption {
    /// The key file every node's agent reads its keys from (Cilium's format); it must exist.
    pub key_file: PathBuf,
}
/// One pod of a lab file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabPod {
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// A command the lab starts in the pod's namespace once the pod is up (through `sh -c`,
    /// detached, with `POD_NAME`, `POD_NAMESPACE` and `POD_IP` set), so that the pod serves
    /// something: `socat TCP-LISTEN:8080,fork,reuseaddr SYSTEM:'echo $POD_NAME'`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

fn default_namespace() -> String {
    "default".into()
}

impl LabFile {
    /// Three pods, `pod-a`, `pod-b`, `pod-c`, on one node.
    pub fn default_pods() -> Self {
        LabFile {
            pods: ["pod-a", "pod-b", "pod-c"]
                .iter()
                .map(|n| LabPod {
                    name: (*n).into(),
                    namespace: default_namespace(),
                    labels: BTreeMap::from([("app".to_string(), (*n).to_string())]),
                    run: None,
                })
                .collect(),
            nodes: Vec::new(),
            service_cidr: DEFAULT_SERVICE_CIDR,
            encryption: None,
        }
    }

    /// Whether the file uses the `nodes:` form, which gets an underlay and a world.
    pub fn multi_node(&self) -> bool {
        !self.nodes.is_empty()
    }

    /// The nodes to build, in order: the `nodes:` list, or the `pods:` form as one node called
    /// [`SINGLE_NODE`].
    pub fn node_list(&self) -> Vec<LabNode> {
        if self.multi_node() {
            self.nodes.clone()
        } else {
            vec![LabNode {
                name: SINGLE_NODE.into(),
                pods: self.pods.clone(),
            }]
        }
    }

    /// Parses and checks a lab file. Errors name the field (`nodes[1].pods[0].name`) and say
    /// what to change.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let f: LabFile = serde_norway::from_str(text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!("LAB.yaml line {} column {}", l.line(), l.column()))
                .unwrap_or_else(|| "LAB.yaml".into());
            Error::config(at, e.to_string())
        })?;
        f.check()?;
        Ok(f)
    }

    /// The checks of [`LabFile::parse`] past the syntax.
    fn check(&self) -> Result<(), Error> {
        if self.multi_node() && !self.pods.is_empty() {
            return Err(Error::config(
                "pods",
                "is given together with nodes: list the pods under each node (nodes[].pods), \
                 or use pods alone for a single node",
            ));
        }
        if self.nodes.len() > MAX_NODES {
            return Err(Error::config(
                "nodes",
                format!("list 1 to {MAX_NODES} nodes, not {}", self.nodes.len()),
            ));
        }
        if let Some(enc) = &self.encryption {
            if !self.multi_node() {
                return Err(Error::config(
                    "encryption",
                    "encrypts traffic between nodes, and a pods: lab has one node: list the \
                     nodes under nodes:, or remove encryption",
                ));
            }
            if !enc.key_file.exists() {
                return Err(Error::config(
                    "encryption.key_file",
                    format!(
                        "{} does not exist: write the key file first (one line per key: \
                         `KEYID rfc4106(gcm(aes)) HEXKEY 128`)",
                        enc.key_file.display()
                    ),
                ));
            }
        }
        let mut node_names = BTreeSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            check_lab_node_name(&format!("nodes[{i}].name"), &n.name)?;
            if !node_names.insert(n.name.as_str()) {
                return Err(Error::config(
                    format!("nodes[{i}].name"),
                    format!("{} is listed twice", n.name),
                ));
            }
        }
        let node_cidrs: Vec<Ipv4Cidr> = (0..self.nodes.len().max(1)).map(node_pod_cidr).collect();
        let svc = self.service_cidr;
        if let Some(pods) = node_cidrs.iter().find(|c| overlaps(c, &svc)) {
            return Err(Error::config(
                "service_cidr",
                format!("{svc} overlaps the pod CIDR {pods}: pick a prefix outside it"),
            ));
        }
        if overlaps(&svc, &UNDERLAY_CIDR) && self.multi_node() {
            return Err(Error::config(
                "service_cidr",
                format!("{svc} overlaps the underlay {UNDERLAY_CIDR}: pick a prefix outside it"),
            ));
        }
        // Pod names are unique across the lab: each pod has a namespace named after it.
        let mut seen = BTreeSet::new();
        let lists: Vec<(String, &[LabPod])> = if self.multi_node() {
            (self.nodes.iter().enumerate())
                .map(|(i, n)| (format!("nodes[{i}].pods"), n.pods.as_slice()))
                .collect()
        } else {
            vec![("pods".to_string(), self.pods.as_slice())]
        };
        for (field, pods) in lists {
            check_pods(&field, pods, &mut seen)?;
        }
        Ok(())
    }
}

/// Checks the pods listed at `field`; `seen` holds the names of the pods checked before them,
/// for uniqueness across the lab. None is fine: the node's agent then serves only its host port
/// (and uplink), ready for pods added later, by `lab add-pod` or a CNI plugin.
fn check_pods(field: &str, pods: &[LabPod], seen: &mut BTreeSet<String>) -> Result<(), Error> {
    if pods.len() > MAX_PODS {
        return Err(Error::config(
            field,
            format!("list at most {MAX_PODS} pods, not {}", pods.len()),
        ));
    }
    for (i, p) in pods.iter().enumerate() {
        let ok = !p.name.is_empty()
            && p.name.len() <= 40
            && p.name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok {
            return Err(Error::config(
                format!("{field}[{i}].name"),
                format!(
                    "{:?} is not a pod name: use 1 to 40 lowercase letters, digits and '-'",
                    p.name
                ),
            ));
        }
        if !seen.insert(p.name.clone()) {
            return Err(Error::config(
                format!("{field}[{i}].name"),
                format!(
                    "{} is listed twice: pod names are unique across the lab's nodes",
                    p.name
                ),
            ));
        }
        if p.run.as_deref().is_some_and(|r| r.trim().is_empty()) {
            return Err(Error::config(
                format!("{field}[{i}].run"),
                "is empty: give a shell command, or leave the field out",
            ));
        }
    }
    Ok(())
}

/// Checks a lab node's name: an RFC 1123 label (as the agent wants it) short enough for the
/// namespace name, and not the name of one of the lab's other namespaces.
fn check_lab_node_name(field: &str, name: &str) -> Result<(), Error> {
    check_node_name(field, name)?;
    if name.len() > MAX_NODE_NAME {
        return Err(Error::config(
            field,
            format!("{name:?} is longer than {MAX_NODE_NAME} characters: shorten it"),
        ));
    }
    if name == UNDERLAY_NS || name == WORLD_NS || name.starts_with("pod-") {
        return Err(Error::config(
            field,
            format!(
                "{name:?} would clash with the lab's own namespaces ({UNDERLAY_NS}, {WORLD_NS}, \
                 pod-*): pick another name"
            ),
        ));
    }
    Ok(())
}

/// The most nodes a lab has: the underlay addresses, CIDRs and MACs are laid out for them.
pub const MAX_NODES: usize = 8;
/// The most pods a node has.
pub const MAX_PODS: usize = 200;
/// The longest node name: it goes into the node's namespace name, `xylem-<lab>-<node>`.
pub const MAX_NODE_NAME: usize = 20;
/// The name of the node of a single-node (`pods:`) lab.
pub const SINGLE_NODE: &str = "node1";

/// The underlay's namespace suffix: `xylem-<lab>-underlay`.
pub const UNDERLAY_NS: &str = "underlay";
/// The world's namespace suffix: `xylem-<lab>-world`.
pub const WORLD_NS: &str = "world";
/// The bridge in the underlay namespace that joins the nodes' uplinks and the world.
pub const UNDERLAY_BRIDGE: &str = "xybr0";
/// The node's uplink in its namespace, where the agent attaches XDP.
pub const UPLINK_IF: &str = "xyup";
/// The world's end of its veth into the bridge.
pub const WORLD_IF: &str = "world0";
/// The underlay network: the nodes' uplinks, the world and the bridge's own address.
pub const UNDERLAY_CIDR: Ipv4Cidr = Ipv4Cidr {
    addr: Ipv4Addr::new(10, 199, 0, 0),
    len: 24,
};
/// The world's address: it plays the underlay router every node's uplink sends through.
pub const WORLD_IP: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 100);
/// The bridge's own address, so the underlay namespace can probe the underlay
/// (`ip netns exec xylem-<lab>-underlay ping 10.199.0.100`) without going through a node.
pub const UNDERLAY_BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 254);
/// The port of the world's TCP and UDP echo listeners (socat).
pub const WORLD_ECHO_PORT: u16 = 7;

/// The MTU of pod veths (both ends) when the lab encrypts: 1500 less the ESP tunnel's largest
/// overhead, so a pod never sends a packet too big to encapsulate within the underlay's 1500.
/// The agent's own number (it reports it as `network.pod_mtu` in its status, for the CNI
/// plugin), so the lab's pods and a CNI plugin's agree.
pub use xylem_api::ENCRYPTED_POD_MTU;

/// Node `i`'s pod CIDR (0-based, file order): 10.200.i.0/24; node 0's is [`POD_CIDR`].
pub fn node_pod_cidr(i: usize) -> Ipv4Cidr {
    Ipv4Cidr {
        addr: Ipv4Addr::new(10, 200, i as u8, 0),
        len: 24,
    }
}

/// Node `i`'s address on the underlay: 10.199.0.(11+i).
pub fn node_ip(i: usize) -> Ipv4Addr {
    UNDERLAY_CIDR.nth(11 + i as u32)
}

/// Node `i`'s uplink MAC, locally administered and deterministic so that captures and tests
/// can name it: `0e:78:79:75:00:NN`, NN = i+1.
pub fn uplink_mac(i: usize) -> MacAddr {
    MacAddr([0x0e, 0x78, 0x79, 0x75, 0x00, i as u8 + 1])
}

/// Agent settings for a lab's nodes (flags of `xylem lab up`).
#[derive(Clone, Debug, Default)]
pub struct LabOptions {
    /// Worker placement.
    pub placement: Option<Placement>,
    /// Worker cores.
    pub worker_cores: Vec<usize>,
    /// Pipeline mode.
    pub mode: Mode,
    /// XDP mode request.
    pub xdp_mode: Option<XdpModeSetting>,
    /// Batch size.
    pub batch_size: Option<usize>,
    /// Idle spin in shared placement.
    pub idle_spin_us: Option<u64>,
    /// Realtime priority in shared placement (`workers.realtime`).
    pub realtime: Option<bool>,
    /// Port rooms each worker keeps beyond the lab file's pods (`workers.spare_ports`): how
    /// many pods `lab add-pod` or a CNI plugin can add at once.
    pub spare_ports: Option<u32>,
}

/// A node as `lab status` reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeState {
    /// Node name.
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its agent's API socket.
    pub api_socket: PathBuf,
    /// Its agent's pid.
    pub agent_pid: Option<u32>,
    /// Whether that agent is alive.
    #[serde(default)]
    pub agent_running: bool,
    /// Pod CIDR.
    pub pod_cidr: Ipv4Cidr,
    /// Gateway IP.
    pub gateway: Ipv4Addr,
    /// The host port's address (the node's own address on the pod network).
    pub host_ip: Ipv4Addr,
    /// The service CIDR, routed like the pod CIDR through the host port.
    #[serde(default = "default_service_cidr")]
    pub service_cidr: Ipv4Cidr,
    /// The agent's configuration file.
    pub agent_config: PathBuf,
    /// The agent's log.
    pub agent_log: PathBuf,
    /// The node's address on the underlay (multi-node labs; null for a single-node lab).
    #[serde(default)]
    pub node_ip: Option<Ipv4Addr>,
    /// The node's uplink in its namespace, [`UPLINK_IF`] (multi-node labs; null otherwise).
    #[serde(default)]
    pub underlay_if: Option<String>,
    /// The MTU of its pods' veths when it is not the default 1500: with encryption, the room
    /// for the ESP tunnel's headers is taken off, so a pod never sends a packet too big to
    /// encapsulate. Pods added later get it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_mtu: Option<u32>,
}

/// The underlay of a multi-node lab as `lab status` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnderlayState {
    /// Its namespace, `xylem-<lab>-underlay`.
    pub netns: String,
    /// The bridge joining the nodes' uplinks and the world, [`UNDERLAY_BRIDGE`].
    pub bridge: String,
}

/// The world of a multi-node lab (the underlay router, and a server outside the cluster) as
/// `lab status` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorldState {
    /// Its namespace, `xylem-<lab>-world`.
    pub netns: String,
    /// Its address on the underlay, [`WORLD_IP`].
    pub ip: Ipv4Addr,
}

/// A pod as `lab status` reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodState {
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// IPv4 address.
    pub ip: Ipv4Addr,
    /// Its network namespace (usable with `ip netns exec`).
    pub netns: String,
    /// The node it is on.
    pub node: String,
    /// The dataplane's interface for it (in the node namespace).
    pub interface: String,
    /// The command the lab started in its namespace (the lab file's `run:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Where that command's standard output and error go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_log: Option<PathBuf>,
    /// That command's pid (the `sh` running it), while the lab knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_pid: Option<u32>,
    /// The `resolv.conf` that `ip netns exec` gives the pod when the lab has a DNS server pod
    /// (namespace `kube-system`, label `k8s-app: kube-dns`): it names that pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolv_conf: Option<PathBuf>,
}

/// What `lab status -o json` prints and `state.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabState {
    /// The lab's name.
    pub lab: String,
    /// Nodes.
    pub nodes: Vec<NodeState>,
    /// Pods.
    pub pods: Vec<PodState>,
    /// The underlay (null for a single-node `pods:` lab).
    #[serde(default)]
    pub underlay: Option<UnderlayState>,
    /// The world (null for a single-node `pods:` lab).
    #[serde(default)]
    pub world: Option<WorldState>,
}

/// A lab, by name.
#[derive(Clone, Debug)]
pub struct Lab {
    name: String,
}

impl Lab {
    /// The lab called `name` (letters, digits and `-`, at most 20 characters).
    pub fn new(name: &str) -> Result<Self, Error> {
        let ok = !name.is_empty()
            && name.len() <= 20
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return Err(Error::config(
                "--lab",
                format!("{name:?} is not a lab name: use 1 to 20 letters, digits and '-'"),
            ));
        }
        Ok(Lab { name: name.into() })
    }

    fn dir(&self) -> PathBuf {
        PathBuf::from("/run/xylem/labs").join(&self.name)
    }

    fn state_path(&self) -> PathBuf {
        self.dir().join("state.json")
    }

    /// The prefix of every namespace of this lab.
    pub fn netns_prefix(&self) -> String {
        format!("xylem-{}-", self.name)
    }

    /// The namespace of this lab's node, underlay or world called `suffix`.
    pub fn netns(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.netns_prefix())
    }

    /// The API socket of the agent of the lab's node number `i` (0-based): the first node's is
    /// [`Lab::api_socket`], so single-node tools and `xylem --lab` keep finding it; the others
    /// get one of their own in the lab directory.
    pub fn node_api_socket(&self, i: usize, node: &str) -> PathBuf {
        if i == 0 {
            self.api_socket()
        } else {
            self.dir().join(format!("agent-{node}.sock"))
        }
    }

    /// The API socket of this lab's first (or only) node's agent.
    pub fn api_socket(&self) -> PathBuf {
        if self.name == DEFAULT_LAB {
            PathBuf::from(DEFAULT_SOCKET)
        } else {
            self.dir().join("agent.sock")
        }
    }

    /// The lab's recorded state, with liveness refreshed; None when it is not up.
    pub fn state(&self) -> Result<Option<LabState>, Error> {
        let path = self.state_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::File(xylem_api::FileError {
                    what: "reading the lab state",
                    path,
                    source,
                }));
            }
        };
        let mut st: LabState = serde_json::from_str(&text).map_err(|e| {
            Error::Lab(format!(
                "the lab state {} is unreadable ({e}): run `xylem lab down` to clear it",
                path.display()
            ))
        })?;
        for n in &mut st.nodes {
            n.agent_running = n.agent_pid.is_some_and(process::pid_alive);
        }
        Ok(Some(st))
    }

    pub(crate) fn save(&self, st: &LabState) -> Result<(), Error> {
        let path = self.state_path();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(st).map_err(|e| Error::Lab(e.to_string()))?;
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|source| {
                Error::File(xylem_api::FileError {
                    what: "writing the lab state",
                    path,
                    source,
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_file_rejects_unknown_fields() {
        let e = LabFile::parse("pods: [{name: a, colour: red}]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn lab_file_defaults_the_namespace() {
        let f = LabFile::parse("pods: [{name: web, labels: {app: web}}]").unwrap();
        assert_eq!(f.pods[0].namespace, "default");
        assert_eq!(f.pods[0].labels["app"], "web");
    }

    #[test]
    fn lab_file_takes_a_run_command_and_a_service_cidr() {
        let f = LabFile::parse(
            "service_cidr: 10.100.0.0/16\npods: [{name: web, run: \"socat TCP-LISTEN:8080,fork SYSTEM:'echo $POD_NAME'\"}]",
        )
        .unwrap();
        assert_eq!(
            f.pods[0].run.as_deref(),
            Some("socat TCP-LISTEN:8080,fork SYSTEM:'echo $POD_NAME'")
        );
        assert_eq!(f.service_cidr.to_string(), "10.100.0.0/16");
        let d = LabFile::parse("pods: [{name: web}]").unwrap();
        assert_eq!(d.pods[0].run, None);
        assert_eq!(d.service_cidr, DEFAULT_SERVICE_CIDR);
        let e = LabFile::parse("pods: [{name: web, run: '  '}]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pods[0].run"), "{e}");
        let e = LabFile::parse("service_cidr: 10.0.0.0/8\npods: [{name: web}]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("service_cidr"), "{e}");
    }

    #[test]
    fn lab_names_are_checked() {
        assert!(Lab::new("ok-1").is_ok());
        assert!(Lab::new("no/slash").is_err());
        assert!(Lab::new("").is_err());
    }

    fn err(text: &str) -> String {
        LabFile::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn the_pods_form_is_one_node_without_an_underlay() {
        let f = LabFile::parse("pods: [{name: a}, {name: b}]").unwrap();
        assert!(!f.multi_node());
        let nodes = f.node_list();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].name, SINGLE_NODE);
        assert_eq!(nodes[0].pods.len(), 2);
        assert_eq!(node_pod_cidr(0), POD_CIDR);
    }

    #[test]
    fn a_lab_may_start_without_pods() {
        // One node whose agent serves only its host port, ready for pods added later (`lab
        // add-pod`, a CNI plugin's ADD).
        let f = LabFile::parse("pods: []").unwrap();
        assert!(!f.multi_node());
        let nodes = f.node_list();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].name, SINGLE_NODE);
        assert!(nodes[0].pods.is_empty());
        // Nodes without pods, beside one with.
        let f =
            LabFile::parse("nodes: [{name: n1, pods: []}, {name: n2, pods: [{name: a}]}]").unwrap();
        assert!(f.multi_node());
        assert!(f.nodes[0].pods.is_empty());
        assert_eq!(f.nodes[1].pods.len(), 1);
        let many: Vec<String> = (0..=MAX_PODS).map(|i| format!("{{name: p{i}}}")).collect();
        let e = err(&format!("pods: [{}]", many.join(", ")));
        assert!(e.contains("pods") && e.contains("at most 200"), "{e}");
    }

    #[test]
    fn the_nodes_form_lists_nodes_in_file_order() {
        let f = LabFile::parse(
            "nodes:\n  - {name: n1, pods: [{name: a}, {name: b}]}\n  - {name: n2, pods: [{name: c}]}\n",
        )
        .unwrap();
        assert!(f.multi_node());
        let names: Vec<_> = f.node_list().into_iter().map(|n| n.name).collect();
        assert_eq!(names, ["n1", "n2"]);
        assert_eq!(f.nodes[1].pods[0].name, "c");
        assert_eq!(f.encryption, None);
        // One node is a multi-node lab too: it gets the underlay.
        assert!(
            LabFile::parse("nodes: [{name: n1, pods: [{name: a}]}]")
                .unwrap()
                .multi_node()
        );
    }

    #[test]
    fn lab_file_errors_name_the_field() {
        let e = err("pods: [{name: a}]\nnodes: [{name: n1, pods: [{name: b}]}]");
        assert!(
            e.contains("pods") && e.contains("together with nodes"),
            "{e}"
        );
        let e = err("nodes: [{name: n1, pods: [{name: a}]}, {name: n2, pods: [{name: a}]}]");
        assert!(
            e.contains("nodes[1].pods[0].name") && e.contains("twice"),
            "{e}"
        );
        let e = err("nodes: [{name: N_1, pods: [{name: a}]}]");
        assert!(e.contains("nodes[0].name"), "{e}");
        let e = err("nodes: [{name: abcdefghijklmnopqrstu, pods: [{name: a}]}]");
        assert!(e.contains("nodes[0].name") && e.contains("20"), "{e}");
        let e = err("nodes: [{name: world, pods: [{name: a}]}]");
        assert!(e.contains("nodes[0].name") && e.contains("clash"), "{e}");
        let e = err("nodes: [{name: n1, pods: [{name: a}]}, {name: n1, pods: [{name: b}]}]");
        assert!(e.contains("nodes[1].name") && e.contains("twice"), "{e}");
        let nine: Vec<String> = (0..9)
            .map(|i| format!("{{name: n{i}, pods: [{{name: p{i}}}]}}"))
            .collect();
        let e = err(&format!("nodes: [{}]", nine.join(", ")));
        assert!(e.contains("nodes") && e.contains("1 to 8"), "{e}");
        let many: Vec<String> = (0..=MAX_PODS).map(|i| format!("{{name: p{i}}}")).collect();
        let e = err(&format!(
            "nodes: [{{name: n1, pods: [{}]}}]",
            many.join(", ")
        ));
        assert!(
            e.contains("nodes[0].pods") && e.contains("at most 200"),
            "{e}"
        );
        let e = err("nodes: [{name: n1, pods: [{name: a}], colour: red}]");
        assert!(e.contains("colour"), "{e}");
        let e = err(
            "service_cidr: 10.200.1.0/24\nnodes: [{name: n1, pods: [{name: a}]}, {name: n2, pods: [{name: b}]}]",
        );
        assert!(e.contains("service_cidr"), "{e}");
    }

    #[test]
    fn encryption_needs_the_nodes_form_and_an_existing_key_file() {
        let key = std::env::temp_dir().join(format!("xylem-lab-key-{}", std::process::id()));
        std::fs::write(
            &key,
            "3 rfc4106(gcm(aes)) 0123456789abcdef0123456789abcdef01234567 128\n",
        )
        .unwrap();
        let nodes = "nodes: [{name: n1, pods: [{name: a}]}, {name: n2, pods: [{name: b}]}]";
        let f = LabFile::parse(&format!(
            "encryption: {{key_file: {}}}\n{nodes}",
            key.display()
        ))
        .unwrap();
        assert_eq!(f.encryption.unwrap().key_file, key);
        let e = err(&format!(
            "encryption: {{key_file: {}}}\npods: [{{name: a}}]",
            key.display()
        ));
        assert!(e.contains("encryption") && e.contains("nodes"), "{e}");
        let e = err(&format!(
            "encryption: {{key_file: {}, keyfile: x}}\n{nodes}",
            key.display()
        ));
        assert!(e.contains("keyfile"), "{e}");
        std::fs::remove_file(&key).unwrap();
        let e = err(&format!(
            "encryption: {{key_file: {}}}\n{nodes}",
            key.display()
        ));
        assert!(
            e.contains("encryption.key_file") && e.contains("does not exist"),
            "{e}"
        );
    }

    #[test]
    fn nodes_are_addressed_by_their_index() {
        assert_eq!(node_pod_cidr(1).to_string(), "10.200.1.0/24");
        assert_eq!(node_pod_cidr(7).to_string(), "10.200.7.0/24");
        assert_eq!(node_ip(0), Ipv4Addr::new(10, 199, 0, 11));
        assert_eq!(node_ip(7), Ipv4Addr::new(10, 199, 0, 18));
        assert!(UNDERLAY_CIDR.contains(node_ip(MAX_NODES - 1)));
        assert_ne!(node_ip(MAX_NODES - 1), WORLD_IP);
        assert_eq!(uplink_mac(0).to_string(), "0e:78:79:75:00:01");
        assert_eq!(uplink_mac(9).to_string(), "0e:78:79:75:00:0a");
    }

    #[test]
    fn later_nodes_get_their_own_api_socket() {
        let lab = Lab::new("multi").unwrap();
        assert_eq!(lab.node_api_socket(0, "n1"), lab.api_socket());
        let second = lab.node_api_socket(1, "n2");
        assert_ne!(second, lab.api_socket());
        assert!(second.to_string_lossy().contains("n2"), "{second:?}");
        assert_eq!(lab.netns("underlay"), "xylem-multi-underlay");
    }
}

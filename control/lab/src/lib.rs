//! The lab: a node and its pods in network namespaces on one machine, with a real
//! `xylem-agent` as the node's dataplane; and the helpers to run commands, handle namespaces and
//! start netserver that the lab and `netperf-harness` share.
//!
//! # What it does
//! - Everything the lab creates lives in namespaces named `xylem-<lab>-…`: a **node namespace**
//!   that plays the host (the agent runs there, with the dataplane ends of the pod veths and the
//!   host port), and one namespace per pod ([`Lab::up`], [`Lab::add_pod`]). Its state is
//!   recorded under `/run/xylem/labs/<lab>` ([`Lab::state`]).
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
//! - It handles no signals and pins no CPUs: a caller that must stop on a signal passes its own
//!   flag to [`process::run_timed`]; the harness keeps its signal handling and CPU pinning.
//! - When the lab has a DNS server pod (`kube-system`, `k8s-app: kube-dns`), every pod's
//!   `ip netns exec` resolves names through it ([`resolv`]); the machine's resolver
//!   configuration is never touched.
//! - It installs nothing: `ip`, `ethtool`, `ss`, `sysctl`, `iptables` and netperf come from
//!   `docker/bootstrap.sh`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use xylem_api::config::{DEFAULT_SOCKET, Ipv4Cidr, XdpModeSetting};
use xylem_dataplane::tables::{MacAddr, Mode};
use xylem_dataplane::worker::Placement;

mod error;
pub mod netns;
mod pods;
pub mod process;
mod resolv;
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

/// `LAB.yaml`: the pods to create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabFile {
    /// The pods.
    pub pods: Vec<LabPod>,
    /// The services' virtual IPs: the node namespace routes them through the host port, so the
    /// node's own stack reaches them through the dataplane, which balances them (default
    /// [`DEFAULT_SERVICE_CIDR`]).
    #[serde(default = "default_service_cidr")]
    pub service_cidr: Ipv4Cidr,
}

fn default_service_cidr() -> Ipv4Cidr {
    DEFAULT_SERVICE_CIDR
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
    /// Three pods, `pod-a`, `pod-b`, `pod-c`.
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
            service_cidr: DEFAULT_SERVICE_CIDR,
        }
    }

    /// Parses and checks a lab file.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let f: LabFile = serde_norway::from_str(text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!("LAB.yaml line {} column {}", l.line(), l.column()))
                .unwrap_or_else(|| "LAB.yaml".into());
            Error::config(at, e.to_string())
        })?;
        if f.pods.is_empty() || f.pods.len() > 200 {
            return Err(Error::config("pods", "list 1 to 200 pods"));
        }
        let (svc, pods) = (f.service_cidr, POD_CIDR);
        if svc.contains(pods.addr) || pods.contains(svc.addr) {
            return Err(Error::config(
                "service_cidr",
                format!("{svc} overlaps the pod CIDR {pods}: pick a prefix outside it"),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in f.pods.iter().enumerate() {
            let ok = !p.name.is_empty()
                && p.name.len() <= 40
                && p.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok {
                return Err(Error::config(
                    format!("pods[{i}].name"),
                    format!(
                        "{:?} is not a pod name: use 1 to 40 lowercase letters, digits and '-'",
                        p.name
                    ),
                ));
            }
            if !seen.insert(p.name.clone()) {
                return Err(Error::config(
                    format!("pods[{i}].name"),
                    format!("{} is listed twice", p.name),
                ));
            }
            if p.run.as_deref().is_some_and(|r| r.trim().is_empty()) {
                return Err(Error::config(
                    format!("pods[{i}].run"),
                    "is empty: give a shell command, or leave the field out",
                ));
            }
        }
        Ok(f)
    }
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

    /// The API socket of this lab's (single) node agent.
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
}

//! The agent's configuration: a YAML (or JSON) file, with command-line overrides.
//!
//! Unknown fields are errors, never ignored: a typo in a config must not silently change what
//! the dataplane does.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use xdp_redirector::XdpModeRequest;
use xylem_dataplane::maglev::{DEFAULT_TABLE_SIZE, SUPPORTED_TABLE_SIZES};
use xylem_dataplane::services::Algorithm;
use xylem_dataplane::tables::{MacAddr, Mode};
use xylem_dataplane::worker::Placement;
use xylem_policy::AllowLocalhost;

use crate::Error;

mod fqdn;
mod nodes;

pub use fqdn::{FqdnConfig, RejectResponse};
pub use nodes::{DEFAULT_GRACE_PERIOD_S, EncryptionConfig, NodeConfig, check_node_name, overlaps};

/// The default API socket.
pub const DEFAULT_SOCKET: &str = "/run/xylem/agent.sock";
/// The default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/xylem";

/// An IPv4 prefix, written `10.200.0.0/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Cidr {
    /// The network address.
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub len: u8,
}

impl Ipv4Cidr {
    /// Whether `ip` is inside the prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.len))
        };
        (u32::from(ip) & mask) == (u32::from(self.addr) & mask)
    }

    /// The `n`th address of the prefix.
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr).wrapping_add(n))
    }
}

impl TryFrom<String> for Ipv4Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Ipv4Cidr> for String {
    fn from(c: Ipv4Cidr) -> String {
        c.to_string()
    }
}

impl std::str::FromStr for Ipv4Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("'{s}' is not a CIDR: write it like 10.200.0.0/24"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("'{a}' is not an IPv4 address"))?;
        let len: u8 = l
            .parse()
            .ok()
            .filter(|&l| l <= 32)
            .ok_or_else(|| format!("'{l}' is not a prefix length from 0 to 32"))?;
        Ok(Ipv4Cidr { addr, len })
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// What is on the other side of a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortKind {
    /// A pod's veth.
    Pod,
    /// The host port: the node's own network namespace.
    Host,
    /// The uplink: the node's interface towards the other nodes and the world (the
    /// underlay). Its `ip` is the node's address there and its `mac` the interface's own,
    /// which the dataplane answers ARP with and sends from.
    Uplink,
}

/// One interface the dataplane serves, and the endpoint behind it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    /// The dataplane's end of the veth (in the agent's network namespace).
    pub ifname: String,
    /// Pod, host or uplink.
    pub kind: PortKind,
    /// The endpoint's IPv4 address (an uplink's: the node's own on the underlay).
    pub ip: Ipv4Addr,
    /// The endpoint's MAC address (the far end of the veth; an uplink's: its own).
    pub mac: MacAddr,
    /// Uplink only: the underlay router the world is reached through. Absent: destinations
    /// off the cluster are on the underlay's link, and each is resolved by ARP itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop: Option<Ipv4Addr>,
    /// Pod name (pods only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Pod namespace (pods only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Pod labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// The gateway's own addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The pods' default gateway.
    pub ip: Ipv4Addr,
    /// The MAC the gateway answers ARP with.
    pub mac: MacAddr,
}

/// Worker settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkersConfig {
    /// One worker per listed CPU. Empty: one worker, on the last CPU.
    #[serde(default)]
    pub cores: Vec<usize>,
    /// `dedicated` or `shared`; default from the machine's CPU count
    /// ([`Placement::default_for`]).
    #[serde(default)]
    pub placement: Option<Placement>,
    /// Frames per RX batch.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// In `shared` placement: microseconds to keep polling after traffic before blocking.
    #[serde(default = "default_idle_spin")]
    pub idle_spin_us: u64,
    /// In `shared` placement: on a core a busy pod holds, workers wait for frames at
    /// `SCHED_FIFO` priority 1, so that the busy pod cannot hold frames back for a scheduler
    /// tick; a worker busy for 2 ms straight returns to normal priority until its rings run dry,
    /// as the kernel's softirq processing does. Needs CAP_SYS_NICE (and realtime runtime in the
    /// agent's cgroup); without it the worker warns and runs at normal priority.
    #[serde(default = "default_realtime")]
    pub realtime: bool,
    /// Entries per AF_XDP ring.
    #[serde(default = "default_ring")]
    pub ring_size: u32,
    /// Pod ports each worker can hold at once beyond the configured ones (endpoints naming a
    /// new interface): each adds one ring's worth of frames to the worker's UMEM. A removed
    /// pod's port gives its frames back, so this bounds the pods present together, not the
    /// pods that ever came.
    #[serde(default = "default_spare_ports")]
    pub spare_ports: u32,
    /// Connections the agent's conntrack holds, all workers together: one table that every
    /// worker shares (network policy, `full` mode); allocated at start, about 43 bytes each.
    /// When it is full, a new flow evicts the oldest unanswered entry on its probe path, or is
    /// dropped (`ct-full`) if there is none.
    #[serde(default = "default_ct_capacity")]
    pub ct_capacity: usize,
    /// Connections one endpoint may have in the conntrack: the flows created by packets from
    /// its port (a pod's own connections, not those it answers). Further new flows of its are
    /// dropped (`ct-endpoint-limit`), so one pod cannot fill the node's table. The host port,
    /// which carries the node's flows and every other node's, is not limited. 0 or absent: a
    /// quarter of `ct_capacity`. At most `ct_capacity`.
    #[serde(default)]
    pub ct_endpoint_limit: usize,
    /// Bytes of room kept in front of every received packet, for headers the dataplane
    /// prepends (an ESP tunnel's Ethernet + IPv4 + ESP header + IV take 50). The kernel's own
    /// 256-byte XDP headroom covers up to 256 at no cost; more adds UMEM frame headroom.
    #[serde(default = "default_headroom")]
    pub headroom: usize,
}

fn default_headroom() -> usize {
    xylem_dataplane::io::DEFAULT_HEADROOM
}

fn default_ct_capacity() -> usize {
    xylem_dataplane::worker::DEFAULT_CT_CAPACITY
}

/// The most `workers.spare_ports` a configuration may ask for: well above Kubernetes' largest
/// usual `maxPods` (110 by default, 250 on large nodes), and small enough that the UMEM's frame
/// count cannot overflow at the largest ring size.
pub const MAX_SPARE_PORTS: u32 = 1024;

fn default_spare_ports() -> u32 {
    4
}

fn default_batch() -> usize {
    64
}
fn default_idle_spin() -> u64 {
    50
}
fn default_realtime() -> bool {
    true
}
fn default_ring() -> u32 {
    1024
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            cores: Vec::new(),
            placement: None,
            batch_size: default_batch(),
            idle_spin_us: default_idle_spin(),
            realtime: default_realtime(),
            ct_capacity: default_ct_capacity(),
            ct_endpoint_limit: 0,
            headroom: default_headroom(),
            ring_size: default_ring(),
            spare_ports: default_spare_ports(),
        }
    }
}

/// Network policy settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// `always` (the default, as Cilium's `allow-localhost`): the node (its host port's
    /// addresses and the gateway) reaches every local pod whatever its ingress policy, so
    /// kubelet probes work under default-deny; an `ingressDeny` naming `host` still wins.
    /// `policy`: only where a policy allows it (`fromEntities: [host]`).
    #[serde(default)]
    pub allow_localhost: AllowLocalhost,
}

/// Service load-balancing settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicesConfig {
    /// How a new connection to a virtual IP picks its backend: `maglev` (the default: Maglev
    /// consistent hashing of the 5-tuple, the same pick on every worker and node) or `random`
    /// (a random slot of the same weighted table).
    #[serde(default)]
    pub algorithm: Algorithm,
    /// M, the slots of each frontend's Maglev table: one of the supported primes
    /// ([`SUPPORTED_TABLE_SIZES`], default [`DEFAULT_TABLE_SIZE`]). 100 or more slots per
    /// backend keep each backend's share within about 1 % of its weight.
    #[serde(default = "default_maglev_table_size")]
    pub maglev_table_size: u32,
}

fn default_maglev_table_size() -> u32 {
    DEFAULT_TABLE_SIZE
}

impl Default for ServicesConfig {
    fn default() -> Self {
        ServicesConfig {
            algorithm: Algorithm::default(),
            maglev_table_size: default_maglev_table_size(),
        }
    }
}

/// The agent's whole configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This node's name.
    pub node_name: String,
    /// The node's pod CIDR.
    pub pod_cidr: Ipv4Cidr,
    /// The pods' gateway.
    pub gateway: GatewayConfig,
    /// The ports.
    pub ports: Vec<PortConfig>,
    /// Workers.
    #[serde(default)]
    pub workers: WorkersConfig,
    /// `auto` (native, falling back to generic), `native` or `generic`.
    #[serde(default)]
    pub xdp_mode: XdpModeSetting,
    /// `full` (the whole pipeline, network policy included; the default) or `passthrough`
    /// (L2/L3 only).
    #[serde(default)]
    pub mode: Mode,
    /// Network policy settings.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Service load balancing.
    #[serde(default)]
    pub services: ServicesConfig,
    /// DNS-aware policy: minimum TTL, addresses kept per name, the answer to a denied query.
    #[serde(default)]
    pub fqdn: FqdnConfig,
    /// The cluster's nodes (this one's own entry may be among them): each pod CIDR is routed
    /// over the uplink to its node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeConfig>,
    /// Transparent encryption (ESP) of the traffic with other nodes; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionConfig>,
    /// Where state is kept.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The API socket.
    #[serde(default = "default_socket")]
    pub api_socket: PathBuf,
    /// Where to serve Prometheus metrics (`/metrics`); off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// The XDP attach mode a configuration asks for (the redirector's own type is not serialized,
/// so that the configuration does not need the loader to describe itself).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeSetting {
    /// Native, falling back to generic only where the driver lacks native XDP.
    #[default]
    Auto,
    /// Native only.
    Native,
    /// Generic only.
    Generic,
}

/// The default metrics address (when enabled without one).
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9962";

fn default_state_dir() -> PathBuf {
    DEFAULT_STATE_DIR.into()
}
fn default_socket() -> PathBuf {
    DEFAULT_SOCKET.into()
}

impl AgentConfig {
    /// Parses a YAML (or JSON) document.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let cfg: AgentConfig = serde_norway::from_str(text).map_err(|e| {
            let field = e
                .location()
                .map(|l| format!("line {} column {}", l.line(), l.column()))
                .unwrap_or_else(|| "document".into());
            Error::config(field, e.to_string())
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The XDP mode asked for, as the redirector takes it.
    pub fn xdp_mode_request(&self) -> XdpModeRequest {
        match self.xdp_mode {
            XdpModeSetting::Auto => XdpModeRequest::Auto,
            XdpModeSetting::Native => XdpModeRequest::Native,
            XdpModeSetting::Generic => XdpModeRequest::Generic,
        }
    }

    /// The placement in effect.
    pub fn placement(&self) -> Placement {
        self.workers
            .placement
            .unwrap_or_else(|| Placement::default_for(online_cpus()))
    }

    /// The worker cores in effect.
    pub fn worker_cores(&self) -> Vec<usize> {
        if self.workers.cores.is_empty() {
            vec![online_cpus().saturating_sub(1)]
        } else {
            self.workers.cores.clone()
        }
    }

    /// Checks everything that can be checked without touching the system.
    pub fn validate(&self) -> Result<(), Error> {
        if self.ports.is_empty() {
            return Err(Error::config("ports", "at least one port is needed"));
        }
        if self.workers.ct_capacity == 0 || self.workers.ct_capacity > 1 << 26 {
            return Err(Error::config(
                "workers.ct_capacity",
                format!(
                    "{} is out of range: use 1 to 67108864 (default 262144)",
                    self.workers.ct_capacity
                ),
            ));
        }
        if self.workers.ct_endpoint_limit > self.workers.ct_capacity {
            return Err(Error::config(
                "workers.ct_endpoint_limit",
                format!(
                    "{} is more than workers.ct_capacity ({}): one endpoint cannot have more \
                     connections than the table holds; use at most that, or 0 for a quarter of it",
                    self.workers.ct_endpoint_limit, self.workers.ct_capacity
                ),
            ));
        }
        if !self.pod_cidr.contains(self.gateway.ip) {
            return Err(Error::config(
                "gateway.ip",
                format!("{} is outside pod_cidr {}", self.gateway.ip, self.pod_cidr),
            ));
        }
        let mut seen_if = std::collections::BTreeSet::new();
        let mut seen_ip = std::collections::BTreeSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            if p.ifname.is_empty() || p.ifname.len() > 15 {
                return Err(Error::config(
                    format!("ports[{i}].ifname"),
                    "an interface name has 1 to 15 characters",
                ));
            }
            if !seen_if.insert(&p.ifname) {
                return Err(Error::config(
                    format!("ports[{i}].ifname"),
                    format!("{} is listed twice", p.ifname),
                ));
            }
            if !seen_ip.insert(p.ip) {
                return Err(Error::config(
                    format!("ports[{i}].ip"),
                    format!("{} is used by two ports", p.ip),
                ));
            }
            if p.ip == self.gateway.ip {
                return Err(Error::config(
                    format!("ports[{i}].ip"),
                    "is the gateway's own address",
                ));
            }
            if p.kind != PortKind::Uplink && !self.pod_cidr.contains(p.ip) {
                return Err(Error::config(
                    format!("ports[{i}].ip"),
                    format!("{} is outside pod_cidr {}", p.ip, self.pod_cidr),
                ));
            }
        }
        self.validate_nodes()?;
        let m = self.services.maglev_table_size;
        if !SUPPORTED_TABLE_SIZES.contains(&m) {
            return Err(Error::config(
                "services.maglev_table_size",
                format!(
                    "{m} is not a supported prime: use one of {} (default {DEFAULT_TABLE_SIZE}; \
                     100 or more slots per backend recommended)",
                    SUPPORTED_TABLE_SIZES.map(|m| m.to_string()).join(", ")
                ),
            ));
        }
        self.fqdn.validate()?;
        let w = &self.workers;
        if w.batch_size == 0 || w.batch_size > 4096 {
            return Err(Error::config("workers.batch_size", "use 1 to 4096"));
        }
        if w.headroom > xylem_dataplane::io::MAX_HEADROOM {
            return Err(Error::config(
                "workers.headroom",
                format!(
                    "{} bytes is more than half a frame: use at most {} (default {})",
                    w.headroom,
                    xylem_dataplane::io::MAX_HEADROOM,
                    default_headroom()
                ),
            ));
        }
        if !w.ring_size.is_power_of_two() || !(64..=16384).contains(&w.ring_size) {
            return Err(Error::config(
                "workers.ring_size",
                "use a power of two from 64 to 16384",
            ));
        }
        if w.spare_ports > MAX_SPARE_PORTS {
            return Err(Error::config(
                "workers.spare_ports",
                format!(
                    "{} is more than {MAX_SPARE_PORTS}: each spare port adds ring_size frames \
                     to every worker's UMEM",
                    w.spare_ports
                ),
            ));
        }
        let cpus = online_cpus();
        for (i, c) in self.worker_cores().iter().enumerate() {
            if *c >= cpus {
                return Err(Error::config(
                    format!("workers.cores[{i}]"),
                    format!(
                        "CPU {c} does not exist: this machine has CPUs 0 to {}",
                        cpus - 1
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// How many CPUs are online: the machine's, from `/sys/devices/system/cpu/online`, not the
/// caller's affinity mask (a `lab up` run under `taskset` still places agents on every CPU);
/// the affinity's count where sysfs cannot be read.
pub fn online_cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|list| cpu_list_len(list.trim()))
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

/// The number of CPUs in a kernel CPU list such as `0-3,6,8-9`; `None` if it does not parse.
fn cpu_list_len(list: &str) -> Option<usize> {
    let mut n = 0;
    for part in list.split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => {
                b.parse::<usize>()
                    .ok()?
                    .checked_sub(a.parse::<usize>().ok()?)?
                    + 1
            }
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
    }
    (n > 0).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest valid configuration, which other modules' tests build on.
    pub(crate) const GOOD: &str = r#"
node_name: node1
pod_cidr: 10.200.0.0/24
gateway: { ip: 10.200.0.1, mac: "0e:78:79:6c:00:01" }
ports:
  - { ifname: xyp0, kind: pod, ip: 10.200.0.10, mac: "02:00:00:00:00:0a", name: a }
"#;

    #[test]
    fn parses_a_minimal_config() {
        let c = AgentConfig::parse(GOOD).unwrap();
        assert_eq!(c.ports.len(), 1);
        assert_eq!(c.workers.batch_size, 64);
        assert_eq!(c.api_socket, PathBuf::from(DEFAULT_SOCKET));
    }

    #[test]
    fn rejects_unknown_fields_naming_them() {
        let bad = format!("{GOOD}bogus: 1\n");
        let e = AgentConfig::parse(&bad).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn the_xdp_mode_is_one_of_three_words() {
        let c = AgentConfig::parse(&format!("{GOOD}xdp_mode: generic\n")).unwrap();
        assert_eq!(c.xdp_mode_request(), XdpModeRequest::Generic);
        assert_eq!(
            AgentConfig::parse(GOOD).unwrap().xdp_mode_request(),
            XdpModeRequest::Auto
        );
        let e = AgentConfig::parse(&format!("{GOOD}xdp_mode: fast\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("fast") && e.contains("native"), "{e}");
    }

    #[test]
    fn rejects_a_port_outside_the_pod_cidr() {
        let bad = GOOD.replace("10.200.0.10", "10.9.0.10");
        let e = AgentConfig::parse(&bad).unwrap_err().to_string();
        assert!(e.contains("ports[0].ip"), "{e}");
    }

    #[test]
    fn several_workers_are_accepted_in_both_modes() {
        let two = format!("{GOOD}workers: {{ cores: [0, 0], ct_capacity: 1000 }}\n");
        let full = AgentConfig::parse(&two).expect("several workers share one conntrack");
        assert_eq!(full.mode, Mode::Full);
        assert_eq!(full.worker_cores(), [0, 0]);
        assert_eq!(full.workers.ct_capacity, 1000);
        assert_eq!(full.workers.ct_endpoint_limit, 0, "absent: the default");
        let limited = format!("{GOOD}workers: {{ ct_capacity: 1000, ct_endpoint_limit: 100 }}\n");
        let limited = AgentConfig::parse(&limited).unwrap();
        assert_eq!(limited.workers.ct_endpoint_limit, 100);
        let e = AgentConfig::parse(&format!(
            "{GOOD}workers: {{ ct_capacity: 1000, ct_endpoint_limit: 1001 }}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("workers.ct_endpoint_limit"), "{e}");
        let passthrough = format!("{two}mode: passthrough\n");
        AgentConfig::parse(&passthrough).expect("several workers forward in passthrough");
    }

    #[test]
    fn spare_ports_are_bounded() {
        let c = AgentConfig::parse(&format!("{GOOD}workers: {{ spare_ports: 110 }}\n")).unwrap();
        assert_eq!(c.workers.spare_ports, 110);
        let e = AgentConfig::parse(&format!(
            "{GOOD}workers: {{ spare_ports: {} }}\n",
            MAX_SPARE_PORTS + 1
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("workers.spare_ports"), "{e}");
    }

    #[test]
    fn headroom_defaults_and_is_bounded() {
        let c = AgentConfig::parse(GOOD).unwrap();
        assert_eq!(c.workers.headroom, xylem_dataplane::io::DEFAULT_HEADROOM);
        let ok = AgentConfig::parse(&format!("{GOOD}workers: {{ headroom: 512 }}\n")).unwrap();
        assert_eq!(ok.workers.headroom, 512);
        let e = AgentConfig::parse(&format!("{GOOD}workers: {{ headroom: 4096 }}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("workers.headroom") && e.contains("at most 2048"),
            "{e}"
        );
    }

    #[test]
    fn allow_localhost_is_always_by_default_or_policy_and_nothing_else() {
        let c = AgentConfig::parse(GOOD).unwrap();
        assert_eq!(c.policy.allow_localhost, AllowLocalhost::Always);
        let c =
            AgentConfig::parse(&format!("{GOOD}policy: {{ allow_localhost: policy }}\n")).unwrap();
        assert_eq!(c.policy.allow_localhost, AllowLocalhost::Policy);
        let c =
            AgentConfig::parse(&format!("{GOOD}policy: {{ allow_localhost: always }}\n")).unwrap();
        assert_eq!(c.policy.allow_localhost, AllowLocalhost::Always);
        for bad in ["sometimes", "true", "Always"] {
            let e = AgentConfig::parse(&format!("{GOOD}policy: {{ allow_localhost: {bad} }}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("policy.allow_localhost")
                    && e.contains("always")
                    && e.contains("policy"),
                "{e}"
            );
        }
        let e = AgentConfig::parse(&format!("{GOOD}policy: {{ allow_local_host: always }}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("allow_local_host"), "{e}");
    }

    #[test]
    fn services_default_to_maglev_at_16381_and_refuse_what_they_cannot_run() {
        let c = AgentConfig::parse(GOOD).unwrap();
        assert_eq!(c.services.algorithm, Algorithm::Maglev);
        assert_eq!(c.services.maglev_table_size, 16381);
        let c = AgentConfig::parse(&format!(
            "{GOOD}services: {{ algorithm: random, maglev_table_size: 65521 }}\n"
        ))
        .unwrap();
        assert_eq!(c.services.algorithm, Algorithm::Random);
        assert_eq!(c.services.maglev_table_size, 65521);
        let e = AgentConfig::parse(&format!("{GOOD}services: {{ maglev_table_size: 16384 }}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("services.maglev_table_size") && e.contains("16384") && e.contains("16381"),
            "{e}"
        );
        let e = AgentConfig::parse(&format!("{GOOD}services: {{ algorithm: roundrobin }}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("services.algorithm") && e.contains("maglev") && e.contains("random"),
            "{e}"
        );
        let e = AgentConfig::parse(&format!("{GOOD}services: {{ table_size: 251 }}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("table_size"), "{e}");
    }

    #[test]
    fn cpu_lists_count_their_cpus() {
        assert_eq!(cpu_list_len("0-1"), Some(2));
        assert_eq!(cpu_list_len("0"), Some(1));
        assert_eq!(cpu_list_len("0-3,6,8-9"), Some(7));
        for bad in ["", "a", "3-1", "0-", "1,,2"] {
            assert_eq!(cpu_list_len(bad), None, "{bad}");
        }
        assert!(online_cpus() >= 1);
    }

    #[test]
    fn cidr_contains() {
        let c: Ipv4Cidr = "10.200.0.0/24".parse().unwrap();
        assert!(c.contains("10.200.0.77".parse().unwrap()));
        assert!(!c.contains("10.200.1.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Ipv4Cidr>().is_err());
    }
}

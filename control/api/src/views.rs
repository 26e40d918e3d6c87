//! What the agent's API answers and takes: the views of `GET` answers and the bodies of
//! requests, as JSON.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use xdp_redirector::{RedirectCounters, XdpMode};
use xylem_dataplane::ledger::FrameCounts;
use xylem_dataplane::stats::StatsSnapshot;
use xylem_dataplane::tables::Mode;
use xylem_dataplane::worker::{CtSnapshot, Placement};

use crate::config::PortKind;

/// One port as the API reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PortStatus {
    /// Interface.
    pub ifname: String,
    /// Interface index.
    pub ifindex: u32,
    /// `pod` or `host`.
    pub kind: PortKind,
    /// The endpoint's IP.
    pub ip: Ipv4Addr,
    /// `namespace/name` of the pod, or `host`.
    pub endpoint: String,
    /// XDP mode in effect.
    pub xdp_mode: XdpMode,
    /// AF_XDP queues bound (one per worker).
    pub queues: Vec<u32>,
    /// Frames received on the port, all workers.
    pub rx: u64,
    /// Frames sent on the port, all workers.
    pub tx: u64,
    /// Frames received on the port and dropped, all workers.
    pub drops: u64,
}

/// One worker as the API reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Worker index.
    pub id: usize,
    /// CPU it is pinned to.
    pub core: usize,
    /// Share of wall time spent on batches that moved frames.
    pub busy_ratio: f64,
    /// Its counters.
    pub stats: StatsSnapshot,
    /// Where its frames are (free, in fill rings, held, in TX rings), as of its last batch.
    #[serde(default)]
    pub frames: FrameCounts,
}

/// A port whose interface was deleted under the agent: closed, its frames given back, attached
/// again when an interface of that name comes back.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MissingInterface {
    /// The interface's name.
    pub ifname: String,
    /// What it served: `namespace/name`, `host`, or `-`.
    pub endpoint: String,
}

/// Overall health.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Health {
    /// True when every worker and the slow path are running.
    pub ok: bool,
    /// Why not, when not.
    pub reason: Option<String>,
}

/// What `GET /v1/status` returns.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    /// Agent version.
    pub version: String,
    /// Node name.
    pub node: String,
    /// Seconds since start.
    pub uptime_s: f64,
    /// `passthrough` or `full`.
    pub mode: Mode,
    /// `dedicated` or `shared`.
    pub placement: Placement,
    /// Frames per batch.
    pub batch_size: usize,
    /// Table revision in effect.
    pub tables_revision: u64,
    /// Health.
    pub health: Health,
    /// Workers.
    pub workers: Vec<WorkerStatus>,
    /// Ports.
    pub ports: Vec<PortStatus>,
    /// Ports closed because their interface was deleted under the agent.
    #[serde(default)]
    pub missing_interfaces: Vec<MissingInterface>,
    /// The XDP program's counters.
    pub redirector: RedirectCounters,
    /// Slow-path counters.
    pub slowpath: SlowPathCounters,
    /// All workers' counters summed.
    pub totals: StatsSnapshot,
    /// DNS-aware policy's counters and the FQDN cache's size.
    #[serde(default)]
    pub dns: DnsCounters,
    /// `ipsec` when the agent encrypts traffic with other nodes, else `disabled` (details:
    /// `GET /v1/encryption`).
    #[serde(default = "disabled")]
    pub encryption: String,
    /// How a pod joins this node's network: what a CNI plugin needs to address one.
    #[serde(default)]
    pub network: NetworkView,
}

/// The MTU of a pod's interface when the agent does not encrypt: the underlay's Ethernet MTU.
pub const POD_MTU: u32 = 1500;

/// The MTU of a pod's interface when the agent encrypts traffic with other nodes: [`POD_MTU`]
/// less the ESP tunnel's largest overhead, so a pod never sends a packet too big to
/// encapsulate within the underlay's 1500 (the dataplane answers a bigger one with ICMP
/// fragmentation needed). The lab gives its pods this MTU, and the agent reports it in
/// [`NetworkView::pod_mtu`]: one number, so they agree.
pub const ENCRYPTED_POD_MTU: u32 = POD_MTU - xylem_dataplane::esp::TUNNEL_OVERHEAD_MAX as u32;

/// The pod network of this node as `GET /v1/status` reports it ([`Status::network`]): a pod
/// gets an address in `pod_cidr` as a `/32`, a link-scope route to `gateway_ip` and its default
/// route through it, and `pod_mtu` on its interface. The dataplane forwards only frames sent to
/// `gateway_mac` and answers ARP for `gateway_ip` only, so a pod that thinks its neighbours are
/// on-link cannot reach them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkView {
    /// The node's pod CIDR (`10.200.0.0/24`).
    pub pod_cidr: String,
    /// The gateway every pod routes through.
    pub gateway_ip: Ipv4Addr,
    /// The MAC the gateway answers ARP with (`0e:78:79:6c:00:01`).
    pub gateway_mac: String,
    /// The MTU a pod's interface should have: [`POD_MTU`], or [`ENCRYPTED_POD_MTU`] when the
    /// agent encrypts traffic with other nodes.
    pub pod_mtu: u32,
}

/// What a status from an agent that does not report its network reads as: nothing usable (an
/// unspecified gateway), so that a CNI plugin refuses it rather than address a pod wrongly.
impl Default for NetworkView {
    fn default() -> Self {
        NetworkView {
            pod_cidr: String::new(),
            gateway_ip: Ipv4Addr::UNSPECIFIED,
            gateway_mac: String::new(),
            pod_mtu: POD_MTU,
        }
    }
}

fn disabled() -> String {
    ENCRYPTION_DISABLED.into()
}

/// [`Status::encryption`] and [`EncryptionStatus::mode`] without an `encryption` section.
pub const ENCRYPTION_DISABLED: &str = "disabled";
/// [`Status::encryption`] and [`EncryptionStatus::mode`] with one.
pub const ENCRYPTION_IPSEC: &str = "ipsec";

/// The DNS stage's counters (all workers) and the FQDN cache's size, as reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsCounters {
    /// Queries a policy allowed, sent on.
    pub queries_forwarded: u64,
    /// Queries a policy denied, answered by the dataplane (REFUSED or NXDOMAIN).
    pub queries_refused: u64,
    /// Answers inspected and sent on.
    pub answers: u64,
    /// Addresses learned (or refreshed) from answers as allowed destinations.
    pub learned: u64,
    /// DNS records the workers dropped because the agent had not drained the log: lost to
    /// the FQDN cache and the monitor (the addresses themselves were learned).
    pub log_lost: u64,
    /// (Endpoint, name) entries in the FQDN cache.
    pub cache_names: u64,
}

/// One endpoint's DNS name in the FQDN cache, as `GET /v1/fqdn/cache` returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FqdnCacheEntry {
    /// The endpoint whose query resolved it, `namespace/name`.
    pub endpoint: String,
    /// The name, fully qualified (`a.domain.com.`).
    pub name: String,
    /// The addresses its answers gave, by address.
    pub ips: Vec<FqdnCacheIp>,
}

/// An address of an [`FqdnCacheEntry`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FqdnCacheIp {
    /// The address.
    pub ip: Ipv4Addr,
    /// When it stops being an allowed destination (RFC 3339, UTC): the answer's TTL, or
    /// `fqdn.min_ttl_s` if longer.
    pub expires_at: String,
    /// Whether a live connection of the endpoint goes to it (it is then kept past its expiry
    /// and over `fqdn.max_ips_per_name`).
    pub in_use: bool,
}

/// What `DELETE /v1/fqdn/cache` removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FqdnCleaned {
    /// (Endpoint, name) entries removed.
    pub names: usize,
    /// Their addresses.
    pub ips: usize,
}

/// Slow-path counters, as reported.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct SlowPathCounters {
    /// Frames taken from workers.
    pub rx: u64,
    /// Frames sent back through a worker.
    pub tx: u64,
    /// Replies dropped because the worker's queue was full.
    pub tx_dropped: u64,
    /// Frames not sent because no route leads to their destination: the tables address every
    /// frame the slow path sends, never its own neighbour cache.
    pub tx_unroutable: u64,
}

/// An endpoint as `GET /v1/endpoints` returns it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Endpoint {
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// IPv4 address.
    pub ip: Ipv4Addr,
    /// The dataplane's interface for it.
    pub interface: String,
    /// The endpoint's MAC address (`aa:bb:cc:dd:ee:ff`).
    pub mac: String,
    /// Its security identity.
    pub identity: Option<u32>,
    /// Whether a policy makes its ingress default-deny.
    #[serde(default)]
    pub ingress_enforced: Option<bool>,
    /// Whether a policy makes its egress default-deny.
    #[serde(default)]
    pub egress_enforced: Option<bool>,
    /// Its interface was deleted under the agent: it has no route until the interface is back.
    #[serde(default)]
    pub interface_missing: bool,
    /// The container runtime's id of the container it was added for (CNI `CNI_CONTAINERID`);
    /// `null` for an endpoint not added through CNI.
    #[serde(default)]
    pub container_id: Option<String>,
    /// The container's network namespace (CNI `CNI_NETNS`), when given.
    #[serde(default)]
    pub netns: Option<String>,
    /// The interface's name inside the container (CNI `CNI_IFNAME`), when given.
    #[serde(default)]
    pub cni_ifname: Option<String>,
}

/// A stored network policy as `GET /v1/policies` returns it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyView {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// The document as imported.
    pub source: serde_json::Value,
}

/// A security identity as `GET /v1/identities` returns it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdentityView {
    /// The number.
    pub identity: u32,
    /// Its labels (the namespace among them), or the reserved name.
    pub labels: BTreeMap<String, String>,
    /// The local endpoints (`namespace/name`) that have it.
    pub endpoints: Vec<String>,
}

/// The body of `POST /v1/policy/trace`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceRequest {
    /// The source: `namespace/name` or `name` of an endpoint, an IPv4 address, or labels
    /// `k=v,k2=v2` (with an optional `io.kubernetes.pod.namespace`; default namespace
    /// `default`).
    pub src: String,
    /// The destination, written like `src`.
    pub dst: String,
    /// The destination port and protocol: `80/TCP`, `53/UDP`, `ICMP`.
    pub dport: String,
}

/// The agent's conntrack (one table shared by every worker), as `GET /v1/ct` returns it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CtView {
    /// How many workers share the table.
    pub workers: usize,
    /// The entries, size and counters.
    #[serde(flatten)]
    pub table: CtSnapshot,
}

/// The body of `PUT /v1/endpoints/{namespace}/{name}`, before validation: strings, so each
/// field's error can name it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointRequest {
    /// The dataplane's end of the pod's veth; must be one of the agent's pod ports.
    pub ifname: String,
    /// The pod's IPv4 address (inside the pod CIDR).
    pub ip: String,
    /// The pod's MAC address.
    pub mac: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The container runtime's id of the container the endpoint is for (CNI
    /// `CNI_CONTAINERID`): kept with the endpoint so that a CNI plugin's CHECK and GC find
    /// their attachments, and so that the agent, restarting, drops the endpoint if its
    /// interface went with the container meanwhile. As the CNI specification has it: starts
    /// with a letter or digit, then letters, digits, `_`, `.` and `-`; at most 256 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The container's network namespace (CNI `CNI_NETNS`): an absolute path. Only with
    /// `container_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// The interface's name inside the container (CNI `CNI_IFNAME`): 1 to 15 characters, no
    /// `/`, `:` or whitespace, not `.` or `..`. Only with `container_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_ifname: Option<String>,
}

/// What the agent knows of a backend's health, as `xylem service list` shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendHealth {
    /// The service has no health check (`lb.xylem.io/health-check`): the backend counts as
    /// healthy.
    #[default]
    Unchecked,
    /// The service has a health check that has not decided yet (no rise or fall reached since
    /// the backend appeared or the agent started): the backend counts as healthy, as a
    /// Kubernetes-ready pod does.
    Unknown,
    /// Its health check passed `rise` times in a row.
    Up,
    /// Its health check failed `fall` times in a row: it takes no new connection.
    Down,
}

impl BackendHealth {
    /// The name used in the API and in the monitor's `backend-health` events.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendHealth::Unchecked => "unchecked",
            BackendHealth::Unknown => "unknown",
            BackendHealth::Up => "up",
            BackendHealth::Down => "down",
        }
    }
}

/// A service as `GET /v1/services` returns it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceView {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.annotations`, as imported.
    pub annotations: BTreeMap<String, String>,
    /// `None` or `ClientIP`, as Kubernetes writes `spec.sessionAffinity`.
    pub session_affinity: String,
    /// With `ClientIP`: how long a client keeps its backend without traffic, in seconds;
    /// `null` otherwise.
    pub affinity_timeout_s: Option<u32>,
    /// Every virtual IP × port × protocol.
    pub frontends: Vec<FrontendView>,
    /// One row per backend of each service port (an address serving two ports is two rows).
    pub backends: Vec<BackendView>,
}

/// A frontend of a [`ServiceView`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FrontendView {
    /// The virtual IP.
    pub ip: Ipv4Addr,
    /// The service port.
    pub port: u16,
    /// `TCP` or `UDP`.
    pub protocol: String,
}

/// A backend of a [`ServiceView`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendView {
    /// The endpoint's address.
    pub ip: Ipv4Addr,
    /// The target port.
    pub port: u16,
    /// Its weight (`lb.xylem.io/weights`, default 1).
    pub weight: u16,
    /// `active`, `terminating` or `maintenance`.
    pub state: String,
    /// `unchecked`, `unknown`, `up` or `down` ([`BackendHealth`]).
    pub health: BackendHealth,
    /// The fraction of the Maglev table's M slots it holds in the table of the frontends of its
    /// service port (every virtual IP of one service port has the same backends, so the same
    /// table): 0 when it takes no new connection (maintenance, down, weight 0, or terminating
    /// while an active backend is left). The shares of one service port sum to 1, or to 0
    /// when it has no usable backend.
    pub table_share: f64,
}

/// Where a node of the node table comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeSource {
    /// The agent's configuration file (`nodes`).
    Config,
    /// `PUT /v1/nodes/{name}` (kept in the state directory; wins over the file's entry).
    Api,
}

/// One node of the cluster as `GET /v1/nodes` answers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// The node's name.
    pub name: String,
    /// Its address on the underlay.
    pub node_ip: Ipv4Addr,
    /// Its pod CIDR.
    pub pod_cidr: crate::config::Ipv4Cidr,
    /// Whether traffic with it is encrypted (its own setting, or the agent's default).
    pub encryption: bool,
    /// Its MAC on the underlay, once resolved; `None` until then (its traffic is dropped
    /// `neighbor-unresolved` meanwhile).
    pub mac: Option<String>,
    /// Whether this is the agent's own node.
    pub local: bool,
    /// Where the entry comes from.
    pub source: NodeSource,
}

/// The body of `PUT /v1/nodes/{name}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRequest {
    /// The node's address on the underlay.
    pub node_ip: Ipv4Addr,
    /// Its pod CIDR.
    pub pod_cidr: crate::config::Ipv4Cidr,
    /// Encryption with it: absent follows the agent (on when it has an `encryption` section).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<bool>,
}

/// The body of `PUT /v1/remote-endpoints/{namespace}/{name}`: a pod of another node, which
/// this node's policies select by its labels (identity numbers are per agent and no header
/// carries them between nodes, so each node must be told the other nodes' pods' labels).
/// Also what the agent stores for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteEndpointRequest {
    /// The node the pod runs on: in the node table, and not this node.
    pub node: String,
    /// The pod's address: inside that node's pod CIDR (a node speaks only for its own pods).
    pub ip: Ipv4Addr,
    /// The pod's labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A pod of another node as `GET /v1/remote-endpoints` answers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteEndpointView {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The identity its labels have on this node, as the last compilation gave it.
    #[serde(default)]
    pub identity: Option<u32>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// A key in use, as `GET /v1/encryption` reports it (never its bytes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionKeyView {
    /// The key id of the file.
    pub id: u8,
    /// The SPI of its SAs (the key id).
    pub spi: u32,
    /// `current` (sent and received with) or `grace` (received only, until it expires).
    pub state: String,
    /// `AES-128-GCM` or `AES-256-GCM`.
    pub algorithm: String,
    /// For a grace key: seconds until it is no longer accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_s: Option<u64>,
}

/// The encrypted traffic with one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionPeerView {
    /// The peer's node name.
    pub node: String,
    /// Its underlay address.
    pub node_ip: Option<Ipv4Addr>,
    /// Packets sealed for it.
    pub tx_packets: u64,
    /// Packets from it that opened.
    pub rx_packets: u64,
    /// Bytes sealed for it, on the wire.
    pub tx_bytes: u64,
    /// Bytes from it that opened, on the wire.
    pub rx_bytes: u64,
}

/// What `GET /v1/encryption` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionStatus {
    /// [`ENCRYPTION_IPSEC`] or [`ENCRYPTION_DISABLED`].
    pub mode: String,
    /// The key file watched, when encryption is configured.
    #[serde(default)]
    pub key_file: Option<String>,
    /// The key id packets are sent with; `None` without a valid key (encrypting peers'
    /// traffic is then dropped `no-key`).
    pub current_key_id: Option<u8>,
    /// Every key accepted on receipt.
    pub keys: Vec<EncryptionKeyView>,
    /// Every encrypting peer.
    pub peers: Vec<EncryptionPeerView>,
    /// The ESP drop reasons summed over the workers, zeros included.
    pub errors: BTreeMap<String, u64>,
    /// Why the key file was last refused (the keys in use stay), or why there is no key.
    #[serde(default)]
    pub last_error: Option<String>,
}

//! The agent's runtime: attaches the redirector, binds AF_XDP sockets, starts the workers and
//! the slow path, and serves the API until told to stop.
//!
//! Threads (see ARCHITECTURE.md):
//! - one worker per configured core, pinned ([`xylem_dataplane::worker`]);
//! - the slow path (the gateway's smoltcp interface), unpinned;
//! - the API server (a single-threaded tokio runtime), unpinned;
//! - the main thread, which waits for SIGTERM or SIGINT and then shuts down in order: stop
//!   the workers, detach the XDP programs (so the kernel gets the interfaces back), remove the
//!   API socket.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::queue::ArrayQueue;
use xdp_redirector::{RedirectFlags, Redirector, XdpMode};
use xylem_dataplane::conntrack::{Conntrack, CtConfig, CtTimeouts};
use xylem_dataplane::io::afxdp::{PortSpec, XskBackend, XskOptions};
use xylem_dataplane::mailbox::NoReply;
use xylem_dataplane::monitor::{EventType, FlowEvent, MonitorLink};
use xylem_dataplane::slowpath::{Signal, SlowPath, SlowPathLink, SlowPathStats};
use xylem_dataplane::stats::StatsSnapshot;
use xylem_dataplane::tables::{Gateway, MacAddr, Mode, Neighbor, Tables};
use xylem_dataplane::worker::{
    CT_LIST_MAX, CtControl, CtRequest, CtSnapshot, PortControl, Worker, WorkerConfig, WorkerLink,
};

use crate::policy::{
    EndpointInfo, EndpointSpec, IdentityAllocator, Policy, Trace, TracePeer, compile,
    parse_policies, reserved_name,
};

use xylem_api::{
    CtView, Endpoint, EndpointRequest, Health, IdentityView, PolicyView, PortStatus,
    SlowPathCounters, Status, TraceRequest, WorkerStatus,
};

use crate::Error;
use crate::config::{AgentConfig, GatewayConfig, PortConfig, PortKind};
use crate::state::{Kind, StateStore, TypedStore, kind};

/// The policy side of the agent: the stored policies, the identities and what the last
/// compilation said about each endpoint. Locked after `bindings`.
#[derive(Debug, Default)]
struct PolicyState {
    policies: BTreeMap<String, Policy>,
    ids: IdentityAllocator,
    endpoints: Vec<EndpointInfo>,
}

/// Restores the stored identity allocation (so identities survive restarts).
fn restore_identities(store: &dyn StateStore, ids: &mut IdentityAllocator) -> Result<(), Error> {
    let Some(map) = store.get_as::<kind::Identities>(kind::IDENTITIES_KEY)? else {
        return Ok(());
    };
    for (id, labels) in map {
        ids.restore(labels, id);
    }
    Ok(())
}

/// The identity allocation as stored.
fn identities_value(ps: &PolicyState) -> BTreeMap<u32, BTreeMap<String, String>> {
    ps.ids
        .list()
        .map(|(id, labels)| (id, labels.clone()))
        .collect()
}

/// Restores the stored policies. A stored policy that no longer parses stops the agent.
fn restore_policies(store: &dyn StateStore) -> Result<BTreeMap<String, Policy>, Error> {
    let mut out = BTreeMap::new();
    for (key, stored) in store.list_as::<kind::Policies>()? {
        let bad = |why: String| {
            Error::State(format!(
                "stored policy {key} cannot be restored: {why}; start with --start-empty to \
                 discard the stored state"
            ))
        };
        for p in parse_policies(&stored.yaml).map_err(|e| bad(e.to_string()))? {
            out.insert(p.key(), p);
        }
    }
    if !out.is_empty() {
        tracing::info!(
            policies = out.len(),
            "restored policies from the state store"
        );
    }
    Ok(out)
}

/// What the policy compiler needs from the port bindings: the pods as endpoints, and the
/// addresses that are the `host` entity (the gateway and the host ports).
fn policy_inputs(
    gateway: &GatewayConfig,
    bindings: &[Option<PortConfig>],
) -> (Vec<EndpointSpec>, Vec<std::net::Ipv4Addr>) {
    let mut specs = Vec::new();
    let mut host = vec![gateway.ip];
    for p in bindings.iter().flatten() {
        match p.kind {
            PortKind::Pod => specs.push(EndpointSpec {
                ip: p.ip,
                namespace: p.namespace.clone().unwrap_or_else(|| "default".into()),
                labels: p.labels.clone(),
            }),
            _ => host.push(p.ip),
        }
    }
    (specs, host)
}

/// The tables for `bindings` (port id = index; `None`: no route) in `mode`, with `policies`
/// compiled in at the same `revision`, identities taken from `ids`. Returns what compilation
/// said about each endpoint too. The one builder of full tables: the agent publishes its
/// result to the workers, and `xylem replay` runs a capture against it, so a replay sees the
/// tables an agent with the same endpoints and policies would.
pub fn compile_tables(
    gateway: &GatewayConfig,
    mode: Mode,
    bindings: &[Option<PortConfig>],
    revision: u64,
    policies: &[Policy],
    ids: &mut IdentityAllocator,
) -> Result<(Tables, Vec<EndpointInfo>), Error> {
    let mut t = route_tables(gateway, mode, bindings, revision)?;
    let (specs, host) = policy_inputs(gateway, bindings);
    let compiled = compile(revision, policies, &specs, &host, ids);
    t.set_policy(compiled.tables);
    Ok((t, compiled.endpoints))
}

/// The tables for `bindings` with `policies` compiled in (same revision), and what compilation
/// said about each endpoint. Allocates identities in `ids` and frees the ones no endpoint uses
/// any more.
fn build_full_tables(
    cfg: &AgentConfig,
    bindings: &[Option<PortConfig>],
    revision: u64,
    policies: &BTreeMap<String, Policy>,
    ids: &mut IdentityAllocator,
) -> Result<(Tables, Vec<EndpointInfo>), Error> {
    let list: Vec<Policy> = policies.values().cloned().collect();
    let (t, endpoints) = compile_tables(&cfg.gateway, cfg.mode, bindings, revision, &list, ids)?;
    let used: std::collections::BTreeSet<u32> = endpoints.iter().map(|e| e.identity).collect();
    ids.retain(|id| used.contains(&id));
    Ok((t, endpoints))
}

/// A durable write that is part of a change (see [`AgentState::publish`]): a kind's name, a key
/// and, to store, the value as JSON. Built with [`StoreOp::put`] and [`StoreOp::delete`], which
/// take the kind as a type.
enum StoreOp<'a> {
    Put(&'static str, &'a str, serde_json::Value),
    Delete(&'static str, &'a str),
}

impl<'a> StoreOp<'a> {
    /// Stores `value` as `key` of kind `K`.
    fn put<K: Kind>(key: &'a str, value: &K::Value) -> Result<Self, Rejected> {
        serde_json::to_value(value)
            .map(|v| StoreOp::Put(K::NAME, key, v))
            .map_err(|e| reject(500, "-", e.to_string()))
    }

    /// Removes `key` of kind `K`.
    fn delete<K: Kind>(key: &'a str) -> Self {
        StoreOp::Delete(K::NAME, key)
    }
}

/// Why a change was not published. In both cases the workers' tables are unchanged.
enum PublishError {
    /// The tables did not build (an address outside the pod CIDR, a policy that does not
    /// compile); nothing was written.
    Build(Error),
    /// A durable write failed; the writes before it may be on disk.
    Store(Error),
}

impl PublishError {
    /// As the API answers it: a build failure is the request's fault (`status`, `field`), a
    /// store failure the agent's (500).
    fn rejected(self, status: u16, field: &str) -> Rejected {
        match self {
            PublishError::Build(e) => reject(status, field, e.to_string()),
            PublishError::Store(e) => reject(500, "-", e.to_string()),
        }
    }
}

fn policy_rejected(e: crate::policy::Error) -> Rejected {
    match e {
        crate::policy::Error::Invalid {
            document,
            field,
            why,
        } => reject(
            422,
            &field,
            format!("{why} (in {document}); nothing was imported"),
        ),
        other => reject(422, "body", other.to_string()),
    }
}

/// Parses a trace peer (see [`TraceRequest`]).
fn trace_peer(field: &str, v: &str, eps: &[Endpoint]) -> Result<TracePeer, Rejected> {
    if let Ok(ip) = v.parse::<Ipv4Addr>() {
        return Ok(TracePeer::Ip(ip));
    }
    if v.contains('=') {
        let mut labels = BTreeMap::new();
        let mut namespace = "default".to_string();
        for kv in v.split(',') {
            let Some((k, val)) = kv.split_once('=') else {
                return Err(reject(422, field, format!("{kv:?} is not key=value")));
            };
            let (k, val) = (k.trim(), val.trim());
            if k.trim_start_matches("k8s:") == crate::policy::NAMESPACE_LABEL {
                namespace = val.to_string();
            } else {
                labels.insert(k.to_string(), val.to_string());
            }
        }
        return Ok(TracePeer::Labels { namespace, labels });
    }
    let (ns, name) = v.split_once('/').unwrap_or(("", v));
    let found: Vec<&Endpoint> = eps
        .iter()
        .filter(|e| e.name == name && (ns.is_empty() || e.namespace == ns))
        .collect();
    match found.as_slice() {
        [e] => Ok(TracePeer::Ip(e.ip)),
        [] => Err(reject(
            422,
            field,
            format!("{v:?} is neither an endpoint, an IPv4 address nor labels k=v"),
        )),
        _ => Err(reject(
            422,
            field,
            format!("{v:?} names endpoints in several namespaces: write namespace/name"),
        )),
    }
}

/// Parses `80/TCP`, `53/udp`, `ICMP`, `80` (TCP) into (port, protocol).
fn trace_port(v: &str) -> Result<(u16, u8), Rejected> {
    use xylem_dataplane::conntrack::proto;
    let bad = || {
        reject(
            422,
            "dport",
            format!("{v:?} is not PORT/PROTO (80/TCP, 53/UDP) or ICMP"),
        )
    };
    let (port, pr) = v.split_once('/').unwrap_or((v, "TCP"));
    if port.eq_ignore_ascii_case("icmp") {
        return Ok((0, proto::ICMP));
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    let pr = match pr.to_ascii_uppercase().as_str() {
        "TCP" => proto::TCP,
        "UDP" => proto::UDP,
        "ICMP" => proto::ICMP,
        _ => return Err(bad()),
    };
    Ok((port, pr))
}

/// A request the agent refused; nothing was changed.
#[derive(Clone, Debug)]
pub struct Rejected {
    /// HTTP status (4xx).
    pub status: u16,
    /// The field at fault (`ip`, `mac`, `namespace`, …).
    pub field: String,
    /// Why.
    pub why: String,
}

fn reject(status: u16, field: &str, why: impl Into<String>) -> Rejected {
    Rejected {
        status,
        field: field.into(),
        why: why.into(),
    }
}

/// Checks a Kubernetes-style name (RFC 1123 label: lowercase alphanumerics and `-`, 1–63).
pub fn check_name(field: &str, v: &str) -> Result<(), Rejected> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(reject(
            422,
            field,
            format!("{v:?} is not a valid name: use 1 to 63 lowercase letters, digits and '-'"),
        ))
    }
}

fn check_label(k: &str, v: &str) -> Result<(), Rejected> {
    let good = |s: &str, max: usize| {
        s.len() <= max
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
    };
    if k.is_empty() || !good(k, 253) {
        return Err(reject(422, &format!("labels.{k}"), "invalid label key"));
    }
    if !good(v, 63) {
        return Err(reject(
            422,
            &format!("labels.{k}"),
            format!("{v:?} is not a valid label value (at most 63 of [A-Za-z0-9-_./])"),
        ));
    }
    Ok(())
}

/// Keeps event types enabled while a monitor client listens; dropping it disables the types
/// nobody else listens to.
pub struct MonitorSubscription {
    agent: Arc<AgentState>,
    types: Vec<EventType>,
}

impl std::fmt::Debug for MonitorSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorSubscription")
            .field("types", &self.types)
            .finish()
    }
}

impl Drop for MonitorSubscription {
    fn drop(&mut self) {
        tracing::info!(types = ?self.types, "monitor client detached");
        for t in &self.types {
            let left = self.agent.monitor_listeners[*t as usize].fetch_sub(1, Ordering::SeqCst);
            if left == 1 {
                self.agent
                    .monitor_mask
                    .fetch_and(!t.bit(), Ordering::SeqCst);
            }
        }
    }
}

/// `namespace/name` of a pod port.
fn endpoint_key(p: &PortConfig) -> String {
    format!(
        "{}/{}",
        p.namespace.as_deref().unwrap_or("default"),
        p.name.as_deref().unwrap_or(&p.ifname)
    )
}

fn endpoint_of(p: &PortConfig) -> Endpoint {
    Endpoint {
        name: p.name.clone().unwrap_or_default(),
        namespace: p.namespace.clone().unwrap_or_else(|| "default".into()),
        labels: p.labels.clone(),
        ip: p.ip,
        interface: p.ifname.clone(),
        mac: p.mac.to_string(),
        identity: None,
        ingress_enforced: None,
        egress_enforced: None,
    }
}

/// The ports and their bindings: the configuration's ports, then the interfaces that stored
/// endpoints added at runtime; bound as the configuration says, overridden by the endpoints kept
/// in the store (and by deletions recorded there). A stored endpoint that cannot be restored
/// (its interface is gone, its address outside the pod CIDR) is an error: the agent refuses to
/// start rather than run half-configured.
fn restore_bindings(
    cfg: &AgentConfig,
    store: &dyn StateStore,
) -> Result<(Vec<PortConfig>, Vec<Option<PortConfig>>), Error> {
    let mut all: Vec<PortConfig> = cfg.ports.clone();
    let mut b: Vec<Option<PortConfig>> = cfg.ports.iter().cloned().map(Some).collect();
    for ifname in store.list_as::<kind::UnboundPorts>()?.keys() {
        if let Some(i) = cfg.ports.iter().position(|p| &p.ifname == ifname) {
            b[i] = None;
        }
    }
    let stored = store.list_as::<kind::Endpoints>()?;
    let n = stored.len();
    for (key, p) in stored {
        let bad = |why: String| {
            Error::State(format!(
                "stored endpoint {key} cannot be restored: {why}; fix the configuration, or start \
                 with --start-empty to discard the stored state"
            ))
        };
        let i = match all.iter().position(|c| c.ifname == p.ifname) {
            Some(i) => i,
            None => {
                // Added through the API: its interface must still be there.
                ifindex(&p.ifname).map_err(|_| {
                    bad(format!(
                        "its interface {} does not exist in the agent's network namespace",
                        p.ifname
                    ))
                })?;
                all.push(p.clone());
                b.push(None);
                all.len() - 1
            }
        };
        if !cfg.pod_cidr.contains(p.ip) {
            return Err(bad(format!("{} is outside the pod CIDR", p.ip)));
        }
        // A configured endpoint that was moved elsewhere through the API leaves its old port.
        for (j, other) in b.iter_mut().enumerate() {
            if j != i
                && other
                    .as_ref()
                    .is_some_and(|o| o.kind == PortKind::Pod && endpoint_key(o) == key)
            {
                *other = None;
            }
        }
        b[i] = Some(p);
    }
    if n > 0 {
        tracing::info!(endpoints = n, "restored endpoints from the state store");
    }
    Ok((all, b))
}

struct WorkerHandle {
    id: usize,
    core: usize,
    link: WorkerLink,
    ports_ctl: PortControl<PortSpec>,
    ct_ctl: CtControl,
    thread: Option<JoinHandle<Result<(), Error>>>,
}

impl WorkerHandle {
    /// Whether the worker's thread is still running.
    fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

/// How long the API waits for a worker to answer a request (it answers between two batches,
/// normally within microseconds).
const WORKER_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The end of "worker N …" for a request that got no reply.
fn no_reply(why: NoReply) -> String {
    match why {
        NoReply::TimedOut => format!("did not answer within {} s", WORKER_REPLY_TIMEOUT.as_secs()),
        NoReply::WorkerGone => "stopped without answering".to_string(),
    }
}

/// The running agent's shared state (what the API reads).
pub struct AgentState {
    cfg: AgentConfig,
    started: Instant,
    tables: Arc<ArcSwap<Tables>>,
    workers: Vec<WorkerHandle>,
    /// The ports by port id: their configuration (as first opened), ifindex and XDP mode.
    /// Grows when an endpoint names a new interface; locked after `bindings`.
    ports: Mutex<Vec<(PortConfig, u32, XdpMode)>>,
    redirector: Mutex<Redirector>,
    slow_stats: Arc<SlowPathStats>,
    slow_thread: Option<JoinHandle<()>>,
    slow_stop: Arc<AtomicBool>,
    wakers: Vec<Arc<mio::Waker>>,
    store: Box<dyn StateStore>,
    /// What each port (by port id) serves now: the configuration's port, with the endpoint's
    /// identity, IP and MAC as last set through the API; `None` when its endpoint was deleted.
    bindings: Mutex<Vec<Option<PortConfig>>>,
    /// Policies and identities; locked after `bindings`.
    policy: Mutex<PolicyState>,
    /// The conntrack every worker shares (this handle: for listing).
    ct: Conntrack,
    /// Serializes flush requests (one reply per request, in order).
    ct_lock: Mutex<()>,
    monitor_mask: Arc<AtomicU32>,
    monitor_listeners: [AtomicUsize; 4],
    wall_epoch: std::time::SystemTime,
}

impl std::fmt::Debug for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentState")
            .field("node", &self.cfg.node_name)
            .finish()
    }
}

fn ifindex(name: &str) -> Result<u32, Error> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| Error::config("ifname", format!("{name:?} has a NUL byte")))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(Error::config(
            "ports[].ifname",
            format!("interface {name} does not exist in the agent's network namespace"),
        ));
    }
    Ok(idx)
}

/// Builds the tables from the configuration. The port index is the [`PortId`].
///
/// [`PortId`]: xylem_dataplane::tables::PortId
pub fn build_tables(cfg: &AgentConfig, revision: u64) -> Result<Tables, Error> {
    let all: Vec<Option<PortConfig>> = cfg.ports.iter().cloned().map(Some).collect();
    build_tables_from(cfg, &all, revision)
}

/// Builds the tables for the ports' current bindings (port id = index; `None`: no route).
pub fn build_tables_from(
    cfg: &AgentConfig,
    bindings: &[Option<PortConfig>],
    revision: u64,
) -> Result<Tables, Error> {
    route_tables(&cfg.gateway, cfg.mode, bindings, revision)
}

/// Routes only (no policy): the gateway and one host route per bound port.
fn route_tables(
    gateway: &GatewayConfig,
    mode: Mode,
    bindings: &[Option<PortConfig>],
    revision: u64,
) -> Result<Tables, Error> {
    let gw = Gateway {
        mac: gateway.mac,
        ipv4: gateway.ip,
    };
    let mut t = Tables::new(revision, mode, gw);
    for (i, p) in bindings.iter().enumerate() {
        let Some(p) = p else { continue };
        t.add_route(
            p.ip,
            Neighbor {
                port: i as u16,
                mac: p.mac,
            },
        )?;
    }
    Ok(t)
}

impl AgentState {
    /// Sets everything up and starts the threads. On error, whatever was set up is torn down
    /// again (the redirector detaches when dropped).
    ///
    /// The endpoints kept in `store` are restored before any socket is registered, so the
    /// workers never see traffic with tables older than the stored state.
    pub fn start(cfg: AgentConfig, store: Box<dyn StateStore>) -> Result<Arc<Self>, Error> {
        cfg.validate()?;
        let mode_req = cfg.xdp_mode_request();
        let placement = cfg.placement();
        let cores = cfg.worker_cores();
        let (all_ports, bindings) = restore_bindings(&cfg, store.as_ref())?;
        let mut policy = PolicyState::default();
        restore_identities(store.as_ref(), &mut policy.ids)?;
        let policies = restore_policies(store.as_ref())?;
        let (first, endpoints) = build_full_tables(&cfg, &bindings, 1, &policies, &mut policy.ids)?;
        policy.endpoints = endpoints;
        store.put_as::<kind::Identities>(kind::IDENTITIES_KEY, &identities_value(&policy))?;
        policy.policies = policies;
        let tables = Arc::new(ArcSwap::from_pointee(first));
        let monitor_mask = Arc::new(AtomicU32::new(0));

        let mut redirector = Redirector::load()?;
        let mut ports = Vec::new();
        for p in &all_ports {
            let idx = ifindex(&p.ifname)?;
            let mode = redirector.attach(&p.ifname, mode_req, RedirectFlags::default())?;
            tracing::info!(ifname = %p.ifname, %mode, "XDP program attached");
            ports.push((p.clone(), idx, mode));
        }

        let to_slow = Arc::new(ArrayQueue::new(1024));
        let signal = Arc::new(Signal::default());
        // One conntrack for every worker: a pod's veth hands a flow's two directions to queues,
        // hence workers, chosen independently. Its memory is allocated here, before any
        // traffic; every worker's clock counts from the same origin, because the table
        // compares their timestamps.
        let seed = {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(cfg.node_name.as_str())
        };
        let ct = Conntrack::new(&CtConfig {
            capacity: cfg.workers.ct_capacity,
            timeouts: CtTimeouts::default(),
            seed,
        });
        tracing::info!(
            capacity = ct.capacity(),
            bytes = ct.memory_bytes(),
            workers = cores.len(),
            "conntrack allocated (shared by every worker)"
        );
        let epoch = Instant::now();
        let mut workers = Vec::new();
        let mut built = Vec::new();
        for (w, &core) in cores.iter().enumerate() {
            let specs: Vec<PortSpec> = ports
                .iter()
                .map(|(p, idx, _)| PortSpec {
                    ifname: p.ifname.clone(),
                    ifindex: *idx,
                    queue: w as u32,
                })
                .collect();
            let opts = XskOptions {
                ring_size: cfg.workers.ring_size,
                zero_copy: false,
            };
            let backend = XskBackend::with_headroom(
                &specs,
                opts,
                4 * cfg.workers.batch_size as u32,
                cfg.workers.spare_ports,
                cfg.workers.headroom,
            )?;
            for (ifidx, queue, fd) in backend.socket_fds() {
                redirector.register_socket(ifidx, queue, fd)?;
            }
            let mut link = WorkerLink::new(
                Arc::clone(&tables),
                Arc::clone(&to_slow),
                Arc::clone(&signal),
            );
            link.monitor = MonitorLink::with_mask(
                Arc::clone(&monitor_mask),
                xylem_dataplane::monitor::DEFAULT_RING,
            );
            link.epoch = epoch;
            let wcfg = WorkerConfig {
                id: w,
                core: Some(core),
                placement,
                batch_size: cfg.workers.batch_size,
                idle_spin: Duration::from_micros(cfg.workers.idle_spin_us),
                realtime: cfg.workers.realtime,
                ct_capacity: cfg.workers.ct_capacity,
            };
            let worker = Worker::with_conntrack(wcfg, backend, link.clone(), ct.clone())?;
            built.push((w, core, link, worker));
        }

        // Replies from the slow path leave through worker 0, on its queue of each port.
        let slow_stats = Arc::new(SlowPathStats::default());
        let slow_stop = Arc::new(AtomicBool::new(false));
        let (_, _, link0, worker0) = &built[0];
        let slow_link = SlowPathLink {
            inbox: Arc::clone(&to_slow),
            outbox: Arc::clone(&link0.from_slow),
            waker: worker0.waker(),
            tables: Arc::clone(&tables),
            signal: Arc::clone(&signal),
            stats: Arc::clone(&slow_stats),
        };
        let slow = SlowPath::new(slow_link, cfg.pod_cidr.len);
        let stop = Arc::clone(&slow_stop);
        let slow_thread = std::thread::Builder::new()
            .name("xylem-slowpath".into())
            .spawn(move || slow.run(stop))
            .map_err(|source| Error::Io {
                what: "starting the slow-path thread".into(),
                source,
            })?;

        let mut wakers = Vec::new();
        for (id, core, link, worker) in built {
            if let Some(w) = worker.waker() {
                wakers.push(w);
            }
            let ports_ctl = worker.port_control();
            let ct_ctl = worker.ct_control();
            let thread = std::thread::Builder::new()
                .name(format!("xylem-worker-{id}"))
                .spawn(move || worker.run().map(|_| ()).map_err(Error::from))
                .map_err(|source| Error::Io {
                    what: format!("starting worker {id}"),
                    source,
                })?;
            workers.push(WorkerHandle {
                id,
                core,
                link,
                ports_ctl,
                ct_ctl,
                thread: Some(thread),
            });
        }

        Ok(Arc::new(AgentState {
            cfg,
            started: Instant::now(),
            tables,
            workers,
            ports: Mutex::new(ports),
            redirector: Mutex::new(redirector),
            slow_stats,
            slow_thread: Some(slow_thread),
            slow_stop,
            wakers,
            store,
            bindings: Mutex::new(bindings),
            policy: Mutex::new(policy),
            ct,
            ct_lock: Mutex::new(()),
            monitor_mask,
            monitor_listeners: Default::default(),
            wall_epoch: std::time::SystemTime::now(),
        }))
    }

    /// The configuration in effect.
    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }

    /// A consistent-enough snapshot of everything (counters are read without stopping anyone).
    pub fn status(&self) -> Status {
        let uptime = self.started.elapsed();
        let mut totals = StatsSnapshot::default();
        let mut workers = Vec::new();
        let mut dead = Vec::new();
        for w in &self.workers {
            let snap = w.link.stats.snapshot();
            totals += &snap;
            if w.thread.as_ref().is_some_and(|t| t.is_finished()) {
                dead.push(w.id);
            }
            workers.push(WorkerStatus {
                id: w.id,
                core: w.core,
                busy_ratio: (w.link.busy_ns.get() as f64 / uptime.as_nanos().max(1) as f64)
                    .min(1.0),
                stats: snap,
            });
        }
        let bindings = self.bindings_snapshot();
        let ports = self.ports_snapshot();
        let ports = ports
            .iter()
            .enumerate()
            .map(|(i, (p, idx, mode))| PortStatus {
                ifname: p.ifname.clone(),
                ifindex: *idx,
                kind: p.kind,
                ip: bindings
                    .get(i)
                    .and_then(|b| b.as_ref())
                    .map_or(p.ip, |b| b.ip),
                endpoint: match (p.kind, bindings.get(i).and_then(|b| b.as_ref())) {
                    (PortKind::Host, _) => "host".into(),
                    (_, None) => "-".into(),
                    (_, Some(b)) => endpoint_key(b),
                },
                xdp_mode: *mode,
                queues: (0..self.workers.len() as u32).collect(),
                rx: self.workers.iter().map(|w| w.link.port_rx(i)).sum(),
                tx: self.workers.iter().map(|w| w.link.port_tx(i)).sum(),
                drops: self.workers.iter().map(|w| w.link.port_drops(i)).sum(),
            })
            .collect();
        let redirector = self
            .redirector
            .lock()
            .map(|r| r.counters().unwrap_or_default())
            .unwrap_or_default();
        let slow_dead = self.slow_thread.as_ref().is_some_and(|t| t.is_finished());
        let health = if !dead.is_empty() {
            Health {
                ok: false,
                reason: Some(format!("worker(s) {dead:?} stopped; see the agent log")),
            }
        } else if slow_dead {
            Health {
                ok: false,
                reason: Some("the slow path stopped; see the agent log".into()),
            }
        } else {
            Health {
                ok: true,
                reason: None,
            }
        };
        Status {
            version: env!("CARGO_PKG_VERSION"),
            node: self.cfg.node_name.clone(),
            uptime_s: uptime.as_secs_f64(),
            mode: self.cfg.mode,
            placement: self.cfg.placement(),
            batch_size: self.cfg.workers.batch_size,
            tables_revision: self.tables.load().revision(),
            health,
            workers,
            ports,
            redirector,
            slowpath: SlowPathCounters {
                rx: self.slow_stats.rx.get(),
                tx: self.slow_stats.tx.get(),
                tx_dropped: self.slow_stats.tx_dropped.get(),
            },
            totals,
        }
    }

    fn ports_snapshot(&self) -> Vec<(PortConfig, u32, XdpMode)> {
        self.ports.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Opens a new pod port on `ifname` while the workers run: attaches the redirector, asks
    /// every worker to bind a socket on its UMEM (between two batches), registers the sockets
    /// in the XSKMAP. Returns the new port id. Called with the bindings lock held.
    fn open_port(&self, ifname: &str) -> Result<usize, Error> {
        let idx = ifindex(ifname)?;
        let mode_req = self.cfg.xdp_mode_request();
        let mut redirector = self
            .redirector
            .lock()
            .map_err(|_| Error::Agent("redirector lock poisoned".into()))?;
        let mut ports = self
            .ports
            .lock()
            .map_err(|_| Error::Agent("ports lock poisoned".into()))?;
        let mode = redirector.attach(ifname, mode_req, RedirectFlags::default())?;
        let mut tickets = Vec::with_capacity(self.workers.len());
        for w in &self.workers {
            let spec = PortSpec {
                ifname: ifname.to_string(),
                ifindex: idx,
                queue: w.id as u32,
            };
            let ticket = w
                .ports_ctl
                .post(spec)
                .map_err(|_| Error::Agent("the worker's port mailbox is full".into()))?;
            tickets.push(ticket);
        }
        self.wake_workers();
        for (w, ticket) in self.workers.iter().zip(tickets) {
            // A worker that failed leaves the port ids of the workers out of step: report it
            // loudly (the agent is then unhealthy for that port; restart it).
            let why = match ticket.wait(WORKER_REPLY_TIMEOUT, || w.is_running()) {
                Ok(Ok(fd)) => Ok(fd),
                Ok(Err(e)) => Err(format!("could not open {ifname}: {e}")),
                Err(no) => Err(no_reply(no)),
            };
            let fd = why.map_err(|why| {
                tracing::error!(worker = w.id, %ifname, %why, "adding a port failed");
                Error::Agent(format!("worker {} {why}", w.id))
            })?;
            if let Some(fd) = fd {
                redirector.register_socket(idx, w.id as u32, fd)?;
            }
        }
        let cfg = PortConfig {
            ifname: ifname.to_string(),
            kind: PortKind::Pod,
            ip: Ipv4Addr::UNSPECIFIED,
            mac: MacAddr::default(),
            name: None,
            namespace: None,
            labels: BTreeMap::new(),
        };
        ports.push((cfg, idx, mode));
        tracing::info!(%ifname, %mode, port = ports.len() - 1, "port added");
        Ok(ports.len() - 1)
    }

    fn bindings_snapshot(&self) -> Vec<Option<PortConfig>> {
        self.bindings.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// The pods this agent serves.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let info: BTreeMap<Ipv4Addr, EndpointInfo> = self
            .policy
            .lock()
            .map(|p| p.endpoints.iter().map(|e| (e.ip, e.clone())).collect())
            .unwrap_or_default();
        self.bindings_snapshot()
            .iter()
            .flatten()
            .filter(|p| p.kind == PortKind::Pod)
            .map(|p| {
                let mut e = endpoint_of(p);
                if let Some(i) = info.get(&p.ip) {
                    e.identity = Some(i.identity);
                    e.ingress_enforced = Some(i.ingress_enforced);
                    e.egress_enforced = Some(i.egress_enforced);
                }
                e
            })
            .collect()
    }

    /// The one transaction every change of endpoints or policies goes through: build the tables
    /// of the next revision from `bindings` and the policies (`policies`, or the current ones
    /// when `None`), write `ops` and the identities durably, swap the tables in and wake the
    /// workers. The caller holds the bindings lock and passes the policy state it locked after
    /// it; on success the policies given become current, and the caller makes `bindings` its
    /// own. Returns the new revision.
    fn publish(
        &self,
        bindings: &[Option<PortConfig>],
        ps: &mut PolicyState,
        policies: Option<BTreeMap<String, Policy>>,
        ops: Vec<StoreOp<'_>>,
    ) -> Result<u64, PublishError> {
        let revision = self.tables.load().revision() + 1;
        let next = policies.as_ref().unwrap_or(&ps.policies);
        let (tables, endpoints) =
            build_full_tables(&self.cfg, bindings, revision, next, &mut ps.ids)
                .map_err(PublishError::Build)?;
        ps.endpoints = endpoints;
        for op in ops {
            match op {
                StoreOp::Put(kind, key, value) => self.store.put(kind, key, value),
                StoreOp::Delete(kind, key) => self.store.delete(kind, key).map(|_| ()),
            }
            .map_err(PublishError::Store)?;
        }
        self.store
            .put_as::<kind::Identities>(kind::IDENTITIES_KEY, &identities_value(ps))
            .map_err(PublishError::Store)?;
        self.tables.store(Arc::new(tables));
        self.wake_workers();
        if let Some(p) = policies {
            ps.policies = p;
        }
        Ok(revision)
    }

    /// The policy state, locked (after the bindings, by callers that hold them).
    fn lock_policy(&self) -> Result<std::sync::MutexGuard<'_, PolicyState>, Rejected> {
        self.policy
            .lock()
            .map_err(|_| reject(500, "-", "agent state poisoned"))
    }

    /// Imports the policies of `yaml` (one document, several, or a `List`): all or nothing.
    /// Each is stored durably (replacing one of the same `namespace/name`), then the tables are
    /// recompiled and published in one swap. Returns the new revision.
    pub fn import_policies(&self, yaml: &str) -> Result<u64, Rejected> {
        let parsed = parse_policies(yaml).map_err(policy_rejected)?;
        if parsed.is_empty() {
            return Err(reject(422, "body", "no policy in the input"));
        }
        let bindings = self
            .bindings
            .lock()
            .map_err(|_| reject(500, "-", "agent state poisoned"))?;
        let mut ps = self.lock_policy()?;
        let mut next = ps.policies.clone();
        let mut values = Vec::new();
        for p in parsed {
            let text =
                serde_norway::to_string(&p.source).map_err(|e| reject(500, "-", e.to_string()))?;
            values.push((p.key(), kind::StoredPolicy { yaml: text }));
            next.insert(p.key(), p);
        }
        let ops = values
            .iter()
            .map(|(key, v)| StoreOp::put::<kind::Policies>(key, v))
            .collect::<Result<_, _>>()?;
        let revision = self
            .publish(&bindings, &mut ps, Some(next), ops)
            .map_err(|e| e.rejected(500, "-"))?;
        tracing::info!(revision, "policies imported");
        Ok(revision)
    }

    /// The stored policies, by `namespace/name`.
    pub fn policies(&self) -> Vec<PolicyView> {
        self.policy
            .lock()
            .map(|ps| {
                ps.policies
                    .values()
                    .map(|p| PolicyView {
                        namespace: p.namespace.clone(),
                        name: p.name.clone(),
                        source: serde_json::to_value(&p.source).unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Deletes the policy `namespace/name`, durably, and publishes the recompiled tables.
    /// Returns the new revision, or `None` if there was no such policy.
    pub fn delete_policy(&self, namespace: &str, name: &str) -> Result<Option<u64>, Rejected> {
        check_name("namespace", namespace)?;
        check_name("name", name)?;
        let key = format!("{namespace}/{name}");
        let bindings = self
            .bindings
            .lock()
            .map_err(|_| reject(500, "-", "agent state poisoned"))?;
        let mut ps = self.lock_policy()?;
        if !ps.policies.contains_key(&key) {
            return Ok(None);
        }
        let mut next = ps.policies.clone();
        next.remove(&key);
        let ops = vec![StoreOp::delete::<kind::Policies>(&key)];
        let revision = self
            .publish(&bindings, &mut ps, Some(next), ops)
            .map_err(|e| e.rejected(500, "-"))?;
        tracing::info!(policy = %key, revision, "policy deleted");
        Ok(Some(revision))
    }

    /// The security identities: the reserved ones, then one per endpoint label set.
    pub fn identities(&self) -> Vec<IdentityView> {
        use xylem_dataplane::policy::identity;
        let eps = self.endpoints();
        let mut out: Vec<IdentityView> = [identity::HOST, identity::WORLD]
            .into_iter()
            .map(|id| IdentityView {
                identity: id,
                labels: BTreeMap::from([(
                    reserved_name(id).unwrap_or("reserved").to_string(),
                    String::new(),
                )]),
                endpoints: Vec::new(),
            })
            .collect();
        if let Ok(ps) = self.policy.lock() {
            for (id, labels) in ps.ids.list() {
                out.push(IdentityView {
                    identity: id,
                    labels: labels.clone(),
                    endpoints: eps
                        .iter()
                        .filter(|e| e.identity == Some(id))
                        .map(|e| format!("{}/{}", e.namespace, e.name))
                        .collect(),
                });
            }
        }
        out.sort_by_key(|i| i.identity);
        out
    }

    /// Explains the policy verdict for a new connection `src → dst:dport`.
    pub fn trace(&self, req: &TraceRequest) -> Result<Trace, Rejected> {
        let eps = self.endpoints();
        let src = trace_peer("src", &req.src, &eps)?;
        let dst = trace_peer("dst", &req.dst, &eps)?;
        let (port, proto) = trace_port(&req.dport)?;
        let (specs, host) = policy_inputs(&self.cfg.gateway, &self.bindings_snapshot());
        let ps = self
            .policy
            .lock()
            .map_err(|_| reject(500, "-", "agent state poisoned"))?;
        let list: Vec<Policy> = ps.policies.values().cloned().collect();
        Ok(crate::policy::trace(
            &list, &specs, &host, &ps.ids, &src, &dst, port, proto,
        ))
    }

    /// The tracked connections (at most `max`, capped at [`CT_LIST_MAX`]), read from the
    /// shared table on the calling thread: lookups take no lock, so the workers do not wait.
    pub fn ct_list(&self, max: usize) -> Result<CtView, Rejected> {
        let now = self
            .workers
            .first()
            .map_or(Duration::ZERO, |w| w.link.epoch.elapsed())
            .as_nanos() as u64;
        let len = self.ct.len();
        let entries = self
            .ct
            .entries(now)
            .filter(|e| e.expires_in_ns > 0)
            .take(max.min(CT_LIST_MAX))
            .collect();
        Ok(CtView {
            workers: self.workers.len(),
            table: CtSnapshot {
                entries,
                len,
                capacity: self.ct.capacity(),
                bytes_per_entry: self.ct.bytes_per_entry(),
                stats: self.ct.stats(),
            },
        })
    }

    /// Empties the shared conntrack. Returns how many entries there were.
    ///
    /// One worker does it, between two of its batches: removing entries takes the table's
    /// stripe locks, which only the pinned workers take (a preempted API thread holding one
    /// would stall them).
    pub fn ct_flush(&self) -> Result<usize, Rejected> {
        let _one = self
            .ct_lock
            .lock()
            .map_err(|_| reject(500, "-", "agent state poisoned"))?;
        let Some(w) = self.workers.iter().find(|w| w.is_running()) else {
            return Err(reject(
                503,
                "-",
                "no worker is running to flush the conntrack; see xylem status",
            ));
        };
        let ticket = w
            .ct_ctl
            .post(CtRequest::Flush)
            .map_err(|_| reject(503, "-", "the worker's conntrack mailbox is full"))?;
        self.wake_workers();
        match ticket.wait(WORKER_REPLY_TIMEOUT, || w.is_running()) {
            Ok(r) => Ok(r.len),
            Err(why) => Err(reject(
                503,
                "-",
                format!("worker {} {}; see xylem status", w.id, no_reply(why)),
            )),
        }
    }

    /// Creates or replaces the endpoint `namespace/name`: validates, stores it durably, then
    /// publishes new tables. A refused request changes nothing. Returns the endpoint and whether
    /// it is new.
    pub fn put_endpoint(
        &self,
        namespace: &str,
        name: &str,
        req: EndpointRequest,
    ) -> Result<(Endpoint, bool), Rejected> {
        check_name("namespace", namespace)?;
        check_name("name", name)?;
        let ip: Ipv4Addr = req
            .ip
            .parse()
            .map_err(|_| reject(422, "ip", format!("{:?} is not an IPv4 address", req.ip)))?;
        if !self.cfg.pod_cidr.contains(ip) {
            return Err(reject(
                422,
                "ip",
                format!("{ip} is outside the pod CIDR {}", self.cfg.pod_cidr),
            ));
        }
        if ip == self.cfg.gateway.ip || ip == self.cfg.pod_cidr.addr {
            return Err(reject(
                422,
                "ip",
                format!("{ip} is reserved (gateway or network)"),
            ));
        }
        let mac: MacAddr = req.mac.parse().map_err(|_| {
            reject(
                422,
                "mac",
                format!(
                    "{:?} is not a MAC address (write it 02:00:00:00:00:0a)",
                    req.mac
                ),
            )
        })?;
        if mac.is_multicast() || mac.0 == [0; 6] {
            return Err(reject(
                422,
                "mac",
                format!("{:?} is not a unicast MAC address", req.mac),
            ));
        }
        for (k, v) in &req.labels {
            check_label(k, v)?;
        }
        let mut bindings = self
            .bindings
            .lock()
            .map_err(|_| reject(500, "-", "agent state poisoned"))?;
        let known = self
            .ports_snapshot()
            .iter()
            .position(|(p, _, _)| p.ifname == req.ifname);
        if known.is_none() {
            // A new interface: it must exist in the agent's namespace; checked before anything
            // is attached.
            if req.ifname.is_empty() || req.ifname.len() > 15 {
                return Err(reject(
                    422,
                    "ifname",
                    "an interface name has 1 to 15 characters",
                ));
            }
            if ifindex(&req.ifname).is_err() {
                return Err(reject(
                    422,
                    "ifname",
                    format!(
                        "interface {:?} does not exist in the agent's network namespace",
                        req.ifname
                    ),
                ));
            }
        }
        if let Some(i) = known
            && self.ports_snapshot()[i].0.kind != PortKind::Pod
        {
            return Err(reject(
                422,
                "ifname",
                format!("{} is the host port", req.ifname),
            ));
        }
        let key = format!("{namespace}/{name}");
        let port_opt = known;
        for (i, b) in bindings.iter().enumerate() {
            let Some(b) = b else { continue };
            let same = b.kind == PortKind::Pod && endpoint_key(b) == key;
            let port = port_opt.unwrap_or(usize::MAX);
            if i != port && same {
                return Err(reject(
                    409,
                    "ifname",
                    format!("{key} is already on {}: delete it first", b.ifname),
                ));
            }
            if i != port && b.ip == ip {
                return Err(reject(
                    409,
                    "ip",
                    format!("{ip} is already used by {}", b.ifname),
                ));
            }
            if i == port && b.kind == PortKind::Pod && !same {
                return Err(reject(
                    409,
                    "ifname",
                    format!(
                        "{} already serves {}: delete it first",
                        b.ifname,
                        endpoint_key(b)
                    ),
                ));
            }
        }
        // Every check passed: open the new interface now (attach, a socket per worker).
        let port = match port_opt {
            Some(p) => p,
            None => {
                let p = self
                    .open_port(&req.ifname)
                    .map_err(|e| reject(500, "ifname", e.to_string()))?;
                bindings.resize(p + 1, None);
                p
            }
        };
        let created = bindings[port].is_none()
            || bindings[port]
                .as_ref()
                .is_some_and(|b| endpoint_key(b) != key);
        let new_port = PortConfig {
            ifname: req.ifname.clone(),
            kind: PortKind::Pod,
            ip,
            mac,
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: req.labels,
        };
        let mut next = bindings.clone();
        next[port] = Some(new_port.clone());
        let ops = vec![
            StoreOp::put::<kind::Endpoints>(&key, &new_port)?,
            StoreOp::delete::<kind::UnboundPorts>(&req.ifname),
        ];
        let revision = self
            .publish(&next, &mut *self.lock_policy()?, None, ops)
            .map_err(|e| e.rejected(422, "ip"))?;
        *bindings = next;
        tracing::info!(endpoint = %key, ifname = %req.ifname, %ip, revision, "endpoint set");
        Ok((endpoint_of(&new_port), created))
    }

    /// Deletes the endpoint `namespace/name`: its route goes (its port stays attached and
    /// serves nothing), durably. Returns whether it existed.
    pub fn delete_endpoint(&self, namespace: &str, name: &str) -> Result<bool, Rejected> {
        check_name("namespace", namespace)?;
        check_name("name", name)?;
        let key = format!("{namespace}/{name}");
        let mut bindings = self
            .bindings
            .lock()
            .map_err(|_| reject(500, "-", "agent state poisoned"))?;
        let Some(port) = bindings.iter().position(|b| {
            b.as_ref()
                .is_some_and(|b| b.kind == PortKind::Pod && endpoint_key(b) == key)
        }) else {
            return Ok(false);
        };
        let ifname = self.ports_snapshot()[port].0.ifname.clone();
        let mut next = bindings.clone();
        next[port] = None;
        let ops = vec![
            StoreOp::put::<kind::UnboundPorts>(&ifname, &kind::Unbound {})?,
            StoreOp::delete::<kind::Endpoints>(&key),
        ];
        let revision = self
            .publish(&next, &mut *self.lock_policy()?, None, ops)
            .map_err(|e| e.rejected(500, "-"))?;
        *bindings = next;
        tracing::info!(endpoint = %key, %ifname, revision, "endpoint deleted");
        Ok(true)
    }

    fn wake_workers(&self) {
        for w in &self.wakers {
            let _ = w.wake();
        }
    }

    /// Enables the event types in `types` while the returned guard lives (the API holds one
    /// per listening client).
    pub fn monitor_subscribe(self: &Arc<Self>, types: &[EventType]) -> MonitorSubscription {
        for t in types {
            self.monitor_listeners[*t as usize].fetch_add(1, Ordering::SeqCst);
            self.monitor_mask.fetch_or(t.bit(), Ordering::SeqCst);
        }
        MonitorSubscription {
            agent: Arc::clone(self),
            types: types.to_vec(),
        }
    }

    /// Takes every queued flow event of every worker into `out`, as `(worker, event)`: one
    /// bulk read of each worker's ring.
    pub fn drain_events(&self, out: &mut Vec<(usize, FlowEvent)>) {
        for w in &self.workers {
            w.link.monitor.ring.drain(|ev| out.push((w.id, ev)));
        }
    }

    /// Events the workers could not queue, all workers.
    pub fn monitor_lost(&self) -> u64 {
        self.workers.iter().map(|w| w.link.monitor.lost.get()).sum()
    }

    /// Port id → (interface, `namespace/name` or `host`/`-`), and IP → endpoint, for naming
    /// the endpoints in flow events.
    pub fn names(&self) -> (Vec<String>, BTreeMap<Ipv4Addr, String>) {
        let b = self.bindings_snapshot();
        let ports = self
            .ports_snapshot()
            .iter()
            .map(|(p, _, _)| p.ifname.clone())
            .collect();
        let mut ips = BTreeMap::new();
        for p in b.iter().flatten() {
            let name = match p.kind {
                PortKind::Host => "host".to_string(),
                PortKind::Pod => endpoint_key(p),
            };
            ips.insert(p.ip, name);
        }
        ips.insert(self.cfg.gateway.ip, "gateway".into());
        (ports, ips)
    }

    /// The wall-clock time of a worker clock reading.
    pub fn wall_time(&self, worker: usize, ns: u64) -> std::time::SystemTime {
        let base = self
            .workers
            .get(worker)
            .map(|w| w.link.epoch)
            .unwrap_or(self.started);
        // Wall time of the worker's epoch: ours, corrected by the gap between the two Instants.
        let skew = self.started.saturating_duration_since(base);
        self.wall_epoch - skew + Duration::from_nanos(ns)
    }

    /// Stops the workers and the slow path and detaches every XDP program. Idempotent.
    pub fn shutdown(self: Arc<Self>) -> Result<(), Error> {
        let Ok(mut me) = Arc::try_unwrap(self) else {
            return Err(Error::Agent(
                "shutdown while the API still holds the agent state".into(),
            ));
        };
        for w in &me.workers {
            w.link.stop.store(true, Ordering::Relaxed);
        }
        for w in &me.wakers {
            let _ = w.wake();
        }
        let mut first_err = None;
        for w in &mut me.workers {
            if let Some(t) = w.thread.take() {
                match t.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(worker = w.id, error = %e, "worker failed");
                        first_err.get_or_insert(e);
                    }
                    Err(_) => tracing::error!(worker = w.id, "worker panicked"),
                }
            }
        }
        me.slow_stop.store(true, Ordering::Relaxed);
        if let Some(t) = me.slow_thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        // Dropping the redirector detaches the programs.
        drop(me);
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

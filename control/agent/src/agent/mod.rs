//! The agent's runtime: attaches the redirector, binds AF_XDP sockets, starts the workers and
//! the slow path, and serves the API until told to stop.
//!
//! Threads (see ARCHITECTURE.md):
//! - one worker per configured core, pinned ([`xylem_dataplane::worker`]);
//! - the slow path (the gateway's smoltcp interface), unpinned;
//! - the link watcher, the health checker ([`health`]), the underlay thread ([`underlay`]:
//!   neighbours learned and the ESP key file) and the DNS thread ([`dns`]: the FQDN
//!   cache and the monitor's DNS events), unpinned;
//! - the API server (a single-threaded tokio runtime), unpinned;
//! - the main thread, which waits for SIGTERM or SIGINT and then shuts down in order: stop
//!   the workers, detach the XDP programs (so the kernel gets the interfaces back), remove the
//!   API socket.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::queue::ArrayQueue;
use xdp_redirector::{Redirector, XdpMode};
use xylem_dataplane::conntrack::Conntrack;
use xylem_dataplane::io::afxdp::PortSpec;
use xylem_dataplane::mailbox::NoReply;
use xylem_dataplane::slowpath::probe::ProbeQueues;
use xylem_dataplane::slowpath::{Signal, SlowPathStats};
use xylem_dataplane::tables::Tables;
use xylem_dataplane::worker::{CtControl, PortControl, WorkerLink};

use xylem_policy::Policy;

use crate::Error;
use crate::state::{Kind, StateStore, TypedStore, kind};
use xylem_api::config::{AgentConfig, PortConfig};

mod dns;
mod encryption;
mod endpoints;
mod fqdn;
mod health;
mod links;
mod policies;
mod ports;
mod remote;
mod services;
mod startup;
mod status;
mod underlay;

pub use dns::DnsEvent;
pub use endpoints::check_name;
use endpoints::restore_bindings;
use policies::{
    PolicyState, build_full_tables, identities_value, restore_identities, restore_policies,
};
pub use services::HealthTarget;
use services::{NextServices, ServiceState};
use startup::{Shared, build_worker, shared_conntrack, start_slow_path, start_workers};
pub use status::{AgentEvent, MonitorSubscription};

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
            .map_err(|e| reject(Refusal::Failed, "-", e.to_string()))
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
    /// As the API answers it: a build failure is the request's fault (`refusal`, `field`), a
    /// store failure the agent's.
    fn rejected(self, refusal: Refusal, field: &str) -> Rejected {
        match self {
            PublishError::Build(e) => reject(refusal, field, e.to_string()),
            PublishError::Store(e) => reject(Refusal::Failed, "-", e.to_string()),
        }
    }
}

/// Why the agent refused a request. The HTTP server gives each its status code; the agent's
/// domain knows nothing of HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The request is invalid: a field is malformed or out of range.
    Invalid,
    /// The request conflicts with what the agent holds (an endpoint already there).
    Conflict,
    /// The agent cannot do it now (the flow table is busy, a worker is not answering).
    Unavailable,
    /// The agent failed while carrying it out (a write, a worker, the redirector).
    Failed,
}

/// A request the agent refused; nothing was changed.
#[derive(Clone, Debug)]
pub struct Rejected {
    /// What kind of refusal.
    pub refusal: Refusal,
    /// The field at fault (`ip`, `mac`, `namespace`, …).
    pub field: String,
    /// Why.
    pub why: String,
}

fn reject(refusal: Refusal, field: &str, why: impl Into<String>) -> Rejected {
    Rejected {
        refusal,
        field: field.into(),
        why: why.into(),
    }
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

/// How long a worker is asked again to bind a socket the kernel refused (see
/// `AgentState::open_sockets`).
const BIND_RETRY: Duration = Duration::from_secs(2);

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
    /// The ports by id; `None`: a removed port's id, free for the next.
    ports: Mutex<Vec<Option<(PortConfig, u32, XdpMode)>>>,
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
    /// Services, their backends' health, ids and Maglev tables; locked after `policy`.
    services: Mutex<ServiceState>,
    /// The conntrack every worker shares (this handle: for listing).
    ct: Conntrack,
    /// Serializes flush requests (one reply per request, in order).
    ct_lock: Mutex<()>,
    monitor_mask: Arc<AtomicU32>,
    monitor_listeners: [AtomicUsize; xylem_dataplane::monitor::EventType::ALL.len()],
    /// The monitor's second source: agent events (backend health changes).
    agent_events: status::AgentEvents,
    /// The slow path's probe queues, which the health checker asks.
    probes: ProbeQueues,
    /// Stops the health checker.
    health_stop: Arc<AtomicBool>,
    /// The health checker's thread.
    health_thread: Mutex<Option<JoinHandle<()>>>,
    /// The FQDN cache, the monitor's DNS events and the thread that feeds them; the cache is
    /// locked last.
    dns: dns::DnsSide,
    wall_epoch: std::time::SystemTime,
    /// Ports closed because their interface was deleted under the agent (see the `links`
    /// module); locked last, and never while taking another lock.
    missing: Mutex<Vec<links::MissingPort>>,
    /// Stops the link watcher.
    links_stop: Arc<AtomicBool>,
    /// The link watcher's thread.
    links_thread: Mutex<Option<JoinHandle<()>>>,
    /// The node table and the key manager's state (see the `underlay` module); locked after
    /// `services`.
    underlay: Mutex<underlay::UnderlayState>,
    /// The underlay MACs the slow path learns; every revision carries a snapshot.
    neighbors: Arc<xylem_dataplane::neighbor::Neighbors>,
    /// Stops the underlay thread.
    underlay_stop: Arc<AtomicBool>,
    /// The underlay thread.
    underlay_thread: Mutex<Option<JoinHandle<()>>>,
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

impl AgentState {
    /// Sets everything up and starts the threads. On error, whatever was set up is torn down
    /// again (the redirector detaches when dropped).
    ///
    /// The endpoints kept in `store` are restored before any socket is registered, so the
    /// workers never see traffic with tables older than the stored state; so is the FQDN cache,
    /// whose addresses are learned again under the first tables' `toFQDNs` scopes.
    pub fn start(cfg: AgentConfig, store: Box<dyn StateStore>) -> Result<Arc<Self>, Error> {
        cfg.validate()?;
        let mode_req = cfg.xdp_mode_request();
        let cores = cfg.worker_cores();
        let (all_ports, bindings) = restore_bindings(&cfg, store.as_ref())?;
        let mut policy = PolicyState::default();
        restore_identities(store.as_ref(), &mut policy.ids)?;
        let policies = restore_policies(store.as_ref())?;
        let services = ServiceState::restore(&cfg.services, store.as_ref())?;
        // The node table and the keys before the first tables: an encrypting peer is never
        // sent to in clear, not even before the first key-file poll.
        let neighbors = Arc::new(xylem_dataplane::neighbor::Neighbors::new());
        // Read before the first snapshot: a MAC learned after it is published by the underlay
        // thread's first tick.
        let neighbors_seen = neighbors.generation();
        let nodes = underlay::restore_nodes(&cfg, store.as_ref())?;
        let remote = remote::restore_remote(&cfg, store.as_ref(), &nodes)?;
        let mut under = underlay::UnderlayState {
            nodes,
            keys: AgentState::initial_keys(&cfg),
            remote,
        };
        let snapshot = under.snapshot(&cfg, &neighbors);
        let (first, compiled) = build_full_tables(
            &cfg,
            &bindings,
            1,
            &policies,
            Arc::clone(&services.tables),
            &mut policy.ids,
            snapshot.underlay(&cfg),
        )?;
        policy.keep(compiled);
        store.put_as::<kind::Identities>(kind::IDENTITIES_KEY, &identities_value(&policy))?;
        policy.policies = policies;
        // The conntrack (and its FQDN table) before the redirector: the cached DNS answers are
        // taught to the first tables before any socket can take a frame.
        let epoch = Instant::now();
        let ct = shared_conntrack(&cfg, cores.len());
        let dns = dns::DnsSide::restore(&cfg.fqdn, store.as_ref(), &bindings, &first, &ct, epoch)?;
        let tables = Arc::new(ArcSwap::from_pointee(first));
        let monitor_mask = Arc::new(AtomicU32::new(0));

        let mut redirector = Redirector::load()?;
        let mut ports = Vec::new();
        for p in &all_ports {
            let idx = ifindex(&p.ifname)?;
            let mode = redirector.attach(&p.ifname, mode_req)?;
            tracing::info!(ifname = %p.ifname, %mode, "XDP program attached");
            ports.push((p.clone(), idx, mode));
        }

        let shared = Shared {
            tables: Arc::clone(&tables),
            to_slow: Arc::new(ArrayQueue::new(1024)),
            signal: Arc::new(Signal::default()),
            monitor_mask: Arc::clone(&monitor_mask),
            epoch,
            ct,
        };
        let mut built = Vec::new();
        for (w, &core) in cores.iter().enumerate() {
            let (link, worker) = build_worker(&cfg, w, core, &ports, &mut redirector, &shared)?;
            built.push((w, core, link, worker));
        }
        let (_, _, link0, worker0) = &built[0];
        let (slow_stats, slow_stop, slow_thread, probes) =
            start_slow_path(&cfg, link0, worker0, &shared, Arc::clone(&neighbors))?;
        let (workers, wakers) = start_workers(built)?;
        let ct = shared.ct;

        let agent = Arc::new(AgentState {
            cfg,
            started: Instant::now(),
            tables,
            workers,
            ports: Mutex::new(ports.into_iter().map(Some).collect()),
            redirector: Mutex::new(redirector),
            slow_stats,
            slow_thread: Some(slow_thread),
            slow_stop,
            wakers,
            store,
            bindings: Mutex::new(bindings),
            policy: Mutex::new(policy),
            services: Mutex::new(services),
            ct,
            ct_lock: Mutex::new(()),
            monitor_mask,
            monitor_listeners: Default::default(),
            wall_epoch: std::time::SystemTime::now(),
            missing: Mutex::new(Vec::new()),
            links_stop: Arc::new(AtomicBool::new(false)),
            links_thread: Mutex::new(None),
            agent_events: Default::default(),
            probes,
            health_stop: Arc::new(AtomicBool::new(false)),
            health_thread: Mutex::new(None),
            dns,
            underlay: Mutex::new(under),
            neighbors,
            underlay_stop: Arc::new(AtomicBool::new(false)),
            underlay_thread: Mutex::new(None),
        });
        match agent.start_watchers(neighbors_seen) {
            Ok(()) => Ok(agent),
            Err(e) => {
                if let Err(stop) = agent.shutdown() {
                    tracing::error!(error = %stop, "stopping after a failed start");
                }
                Err(e)
            }
        }
    }

    /// Starts the control-side threads that hold the agent a tick at a time: the link watcher,
    /// the health checker, the underlay thread and the DNS thread.
    fn start_watchers(self: &Arc<Self>, neighbors_seen: u64) -> Result<(), Error> {
        let links = links::watch_links(Arc::downgrade(self), Arc::clone(&self.links_stop))?;
        if let Ok(mut slot) = self.links_thread.lock() {
            *slot = Some(links);
        }
        let stop = Arc::clone(&self.health_stop);
        let health = health::start(Arc::downgrade(self), self.probes.clone(), stop)?;
        if let Ok(mut slot) = self.health_thread.lock() {
            *slot = Some(health);
        }
        let under = underlay::start(
            Arc::downgrade(self),
            Arc::clone(&self.underlay_stop),
            neighbors_seen,
        )?;
        if let Ok(mut slot) = self.underlay_thread.lock() {
            *slot = Some(under);
        }
        dns::start(self)
    }

    /// The configuration in effect.
    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }

    /// [`Self::publish_with`] for a change of endpoints or policies: the services stay as they
    /// are (their tables are shared with the current revision, not rebuilt).
    fn publish(
        &self,
        bindings: &[Option<PortConfig>],
        ps: &mut PolicyState,
        policies: Option<BTreeMap<String, Policy>>,
        ops: Vec<StoreOp<'_>>,
    ) -> Result<u64, PublishError> {
        let mut svc = self
            .services
            .lock()
            .map_err(|_| PublishError::Build(Error::Agent("agent state poisoned".into())))?;
        self.publish_with(bindings, ps, policies, &mut svc, None, ops)
    }

    /// The one transaction every change of endpoints, policies or services goes through: build
    /// the tables of the next revision from `bindings`, the policies (`policies`, or the
    /// current ones when `None`) and the services (`services`, built by the caller, or the
    /// current ones when `None`), write `ops` and the identities durably, swap the tables in
    /// and wake the workers. The caller holds the bindings lock and passes the policy and
    /// service states it locked after it, in that order; on success the policies and services
    /// given become current, and the caller makes `bindings` its own. Returns the new revision.
    fn publish_with(
        &self,
        bindings: &[Option<PortConfig>],
        ps: &mut PolicyState,
        policies: Option<BTreeMap<String, Policy>>,
        svc: &mut ServiceState,
        services: Option<NextServices>,
        ops: Vec<StoreOp<'_>>,
    ) -> Result<u64, PublishError> {
        let mut under = self
            .underlay
            .lock()
            .map_err(|_| PublishError::Build(Error::Agent("agent state poisoned".into())))?;
        self.publish_full(bindings, ps, policies, svc, services, &mut under, ops)
    }

    /// [`Self::publish_with`] with the underlay state `under` (the node table and the keys),
    /// which the caller locked after the services: the current one, or the next one of a node
    /// or key change, which the caller makes current on success. Every revision is built with
    /// the node table, the neighbours as they are now and the SAs, whatever changed.
    #[allow(clippy::too_many_arguments)]
    fn publish_full(
        &self,
        bindings: &[Option<PortConfig>],
        ps: &mut PolicyState,
        policies: Option<BTreeMap<String, Policy>>,
        svc: &mut ServiceState,
        services: Option<NextServices>,
        under: &mut underlay::UnderlayState,
        ops: Vec<StoreOp<'_>>,
    ) -> Result<u64, PublishError> {
        let revision = self.tables.load().revision() + 1;
        let snapshot = under.snapshot(&self.cfg, &self.neighbors);
        let next = policies.as_ref().unwrap_or(&ps.policies);
        let service_tables = services.as_ref().map_or(&svc.tables, |n| &n.built.tables);
        let (tables, compiled) = build_full_tables(
            &self.cfg,
            bindings,
            revision,
            next,
            Arc::clone(service_tables),
            &mut ps.ids,
            snapshot.underlay(&self.cfg),
        )
        .map_err(PublishError::Build)?;
        ps.keep(compiled);
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
        // Under the revision's scopes before it is swapped in: its new toFQDNs selectors find
        // the names resolved before they existed.
        self.dns.relearn(&tables, bindings);
        self.tables.store(Arc::new(tables));
        self.wake_workers();
        if let Some(p) = policies {
            ps.policies = p;
        }
        if let Some(n) = services {
            svc.commit(n);
        }
        Ok(revision)
    }

    fn wake_workers(&self) {
        for w in &self.wakers {
            let _ = w.wake();
        }
    }

    /// Stops the workers and the slow path and detaches every XDP program. Idempotent.
    pub fn shutdown(self: Arc<Self>) -> Result<(), Error> {
        // The link watcher and the health checker first: each holds the state for as long as
        // one check or tick lasts. The checker before the slow path, whose probes it awaits.
        self.links_stop.store(true, Ordering::Relaxed);
        self.health_stop.store(true, Ordering::Relaxed);
        self.underlay_stop.store(true, Ordering::Relaxed);
        for slot in [
            &self.links_thread,
            &self.health_thread,
            &self.underlay_thread,
        ] {
            let thread = slot.lock().ok().and_then(|mut t| t.take());
            if let Some(t) = thread {
                let _ = t.join();
            }
        }
        // Then the DNS thread, and the whole cache written while the state is still ours.
        self.dns.stop();
        if let Err(e) = self.dns.save_all(self.store.as_ref()) {
            tracing::error!(error = %e, "writing the FQDN cache at stop failed");
        }
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

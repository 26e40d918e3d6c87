//! Start-up pieces: the conntrack every worker shares, each worker (its sockets registered in
//! the redirector), the slow-path thread and the worker threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::queue::ArrayQueue;
use xdp_redirector::{Redirector, XdpMode};
use xylem_dataplane::conntrack::{Conntrack, CtConfig, CtTimeouts};
use xylem_dataplane::io::afxdp::{PortSpec, XskBackend, XskOptions};
use xylem_dataplane::monitor::MonitorLink;
use xylem_dataplane::slowpath::probe::ProbeQueues;
use xylem_dataplane::slowpath::{Signal, SlowPath, SlowPathLink, SlowPathStats};
use xylem_dataplane::tables::{PortId, Tables};
use xylem_dataplane::worker::{Worker, WorkerConfig, WorkerLink};

use super::{WorkerHandle, health};
use crate::Error;
use xylem_api::config::{AgentConfig, PortConfig, PortKind};

/// What every worker of the agent shares.
pub(super) struct Shared {
    pub(super) tables: Arc<ArcSwap<Tables>>,
    pub(super) to_slow: Arc<ArrayQueue<xylem_dataplane::worker::SlowFrame>>,
    pub(super) signal: Arc<Signal>,
    pub(super) monitor_mask: Arc<AtomicU32>,
    /// Every worker's clock counts from here: the shared flow table compares their timestamps.
    pub(super) epoch: Instant,
    pub(super) ct: Conntrack,
}

/// One conntrack for every worker: a pod's veth hands a flow's two directions to queues, hence
/// workers, chosen independently. Its memory is allocated here, before any traffic.
pub(super) fn shared_conntrack(cfg: &AgentConfig, workers: usize) -> Conntrack {
    let seed = {
        use std::hash::BuildHasher;
        std::collections::hash_map::RandomState::new().hash_one(cfg.node_name.as_str())
    };
    let ct = Conntrack::new(&CtConfig {
        capacity: cfg.workers.ct_capacity,
        endpoint_limit: cfg.workers.ct_endpoint_limit,
        timeouts: CtTimeouts::default(),
        seed,
    });
    // The host ports (configured ones only: the API binds pods) carry the node's own flows,
    // and the uplink every other node's pods' and the world's: not one pod, so not one pod's
    // share.
    for (i, p) in cfg.ports.iter().enumerate() {
        if matches!(p.kind, PortKind::Host | PortKind::Uplink) {
            ct.exempt_from_endpoint_limit(i as PortId);
        }
    }
    tracing::info!(
        capacity = ct.capacity(),
        endpoint_limit = ct.endpoint_limit(),
        bytes = ct.memory_bytes(),
        workers,
        "conntrack allocated (shared by every worker)"
    );
    ct
}

/// Worker `w`, pinned to `core`: its AF_XDP sockets on queue `w` of every port, registered in
/// the redirector's XSKMAP, and its link to the rest of the agent. Not started yet.
pub(super) fn build_worker(
    cfg: &AgentConfig,
    w: usize,
    core: usize,
    ports: &[(PortConfig, u32, XdpMode)],
    redirector: &mut Redirector,
    shared: &Shared,
) -> Result<(WorkerLink, Worker<XskBackend>), Error> {
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
        Arc::clone(&shared.tables),
        Arc::clone(&shared.to_slow),
        Arc::clone(&shared.signal),
    );
    link.monitor = MonitorLink::with_mask(
        Arc::clone(&shared.monitor_mask),
        xylem_dataplane::monitor::DEFAULT_RING,
    );
    link.epoch = shared.epoch;
    let wcfg = WorkerConfig {
        id: w,
        core: Some(core),
        placement: cfg.placement(),
        batch_size: cfg.workers.batch_size,
        idle_spin: Duration::from_micros(cfg.workers.idle_spin_us),
        realtime: cfg.workers.realtime,
        ct_capacity: cfg.workers.ct_capacity,
        ct_endpoint_limit: cfg.workers.ct_endpoint_limit,
    };
    // Its DNS records name the worker, whose clock their times are read with.
    let mut ct = shared.ct.clone();
    ct.set_worker(w as u16);
    let worker = Worker::with_conntrack(wcfg, backend, link.clone(), ct)?;
    Ok((link, worker))
}

/// The slow path's counters, its stop flag, its thread and its probe queues.
pub(super) type SlowPathThread = (
    Arc<SlowPathStats>,
    Arc<AtomicBool>,
    JoinHandle<()>,
    ProbeQueues,
);

/// Starts the slow-path thread. Its replies leave through worker 0 (`link0`, `worker0`), on
/// that worker's queue of each port. It learns underlay MACs into `neighbors`, which the
/// underlay thread watches.
pub(super) fn start_slow_path(
    cfg: &AgentConfig,
    link0: &WorkerLink,
    worker0: &Worker<XskBackend>,
    shared: &Shared,
    neighbors: Arc<xylem_dataplane::neighbor::Neighbors>,
) -> Result<SlowPathThread, Error> {
    let slow_stats = Arc::new(SlowPathStats::default());
    let slow_stop = Arc::new(AtomicBool::new(false));
    let slow_link = SlowPathLink {
        inbox: Arc::clone(&shared.to_slow),
        outbox: Arc::clone(&link0.from_slow),
        waker: worker0.waker(),
        tables: Arc::clone(&shared.tables),
        signal: Arc::clone(&shared.signal),
        stats: Arc::clone(&slow_stats),
        neighbors,
    };
    let mut slow = SlowPath::new(slow_link, cfg.pod_cidr.len);
    let probes = ProbeQueues::new(health::MAX_PROBES, Arc::clone(&shared.signal));
    slow.serve_probes(probes.clone(), probe_owner(cfg, &shared.ct));
    let stop = Arc::clone(&slow_stop);
    let thread = std::thread::Builder::new()
        .name("xylem-slowpath".into())
        .spawn(move || slow.run(stop))
        .map_err(|source| Error::Io {
            what: "starting the slow-path thread".into(),
            source,
        })?;
    Ok((slow_stats, slow_stop, thread, probes))
}

/// The port the health checks' conntrack entries are counted against: the first configured
/// host port, which carries the node's own flows and is exempt from the per-pod limit, since
/// probes are the node's connections too (a pod's share must neither pay for them nor stop
/// them). Without a host port, the last port id, exempted here: only a node with every port
/// id in use would also give it to a pod, which then shares its count with the probes.
fn probe_owner(cfg: &AgentConfig, ct: &Conntrack) -> PortId {
    if let Some(i) = cfg.ports.iter().position(|p| p.kind == PortKind::Host) {
        return i as PortId;
    }
    let last = (xylem_dataplane::worker::MAX_PORTS - 1) as PortId;
    ct.exempt_from_endpoint_limit(last);
    last
}

/// Run by a worker's thread once it stopped: lets the last frames complete, then checks that
/// every frame of its UMEM is where its ledger says (free, or in a fill ring, by the kernel's
/// own count), and logs the result. Ports come and go while an agent runs, so this is the
/// proof, at each stop, that none of them took frames with it. Traffic still arriving while the
/// agent stops makes the check fail too, so it is reported, not turned into an error.
fn check_frames(id: usize, mut worker: Worker<XskBackend>) {
    // Far enough ahead that every port still being removed is closed now.
    worker.drain(u64::MAX / 4);
    match worker.check_quiescent() {
        Ok(()) => tracing::info!(
            worker = id,
            frames = worker.ledger().total(),
            "frame accounting: ok"
        ),
        Err(e) => tracing::error!(worker = id, error = %e, "frame accounting broken"),
    }
}

/// Starts one thread per built worker; returns their handles and the wakers of those that
/// block when idle.
pub(super) fn start_workers(
    built: Vec<(usize, usize, WorkerLink, Worker<XskBackend>)>,
) -> Result<(Vec<WorkerHandle>, Vec<Arc<mio::Waker>>), Error> {
    let mut workers = Vec::new();
    let mut wakers = Vec::new();
    for (id, core, link, worker) in built {
        if let Some(w) = worker.waker() {
            wakers.push(w);
        }
        let ports_ctl = worker.port_control();
        let ct_ctl = worker.ct_control();
        let thread = std::thread::Builder::new()
            .name(format!("xylem-worker-{id}"))
            .spawn(move || {
                worker
                    .run()
                    .map(|w| check_frames(id, w))
                    .map_err(Error::from)
            })
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
    Ok((workers, wakers))
}

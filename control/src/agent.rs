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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::queue::ArrayQueue;
use serde::Serialize;
use xdp_redirector::{RedirectCounters, RedirectFlags, Redirector, XdpMode};
use xylem_dataplane::io::afxdp::{PortSpec, XskBackend, XskOptions};
use xylem_dataplane::slowpath::{Signal, SlowPath, SlowPathLink, SlowPathStats};
use xylem_dataplane::stats::StatsSnapshot;
use xylem_dataplane::tables::{Gateway, Neighbor, Tables};
use xylem_dataplane::worker::{Placement, Worker, WorkerConfig, WorkerLink};

use crate::Error;
use crate::config::{AgentConfig, PortConfig};

/// One port as the API reports it.
#[derive(Clone, Debug, Serialize)]
pub struct PortStatus {
    /// Interface.
    pub ifname: String,
    /// Interface index.
    pub ifindex: u32,
    /// `pod` or `host`.
    pub kind: crate::config::PortKind,
    /// The endpoint's IP.
    pub ip: std::net::Ipv4Addr,
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
}

/// One worker as the API reports it.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerStatus {
    /// Worker index.
    pub id: usize,
    /// CPU it is pinned to.
    pub core: usize,
    /// Share of wall time spent on batches that moved frames.
    pub busy_ratio: f64,
    /// Its counters.
    pub stats: StatsSnapshot,
}

/// Overall health.
#[derive(Clone, Debug, Serialize)]
pub struct Health {
    /// True when every worker and the slow path are running.
    pub ok: bool,
    /// Why not, when not.
    pub reason: Option<String>,
}

/// What `GET /v1/status` returns.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// Agent version.
    pub version: &'static str,
    /// Node name.
    pub node: String,
    /// Seconds since start.
    pub uptime_s: f64,
    /// `passthrough` or `full`.
    pub mode: xylem_dataplane::tables::Mode,
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
    /// The XDP program's counters.
    pub redirector: RedirectCounters,
    /// Slow-path counters.
    pub slowpath: SlowPathCounters,
    /// All workers' counters summed.
    pub totals: StatsSnapshot,
}

/// Slow-path counters, as reported.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct SlowPathCounters {
    /// Frames taken from workers.
    pub rx: u64,
    /// Frames sent back through a worker.
    pub tx: u64,
    /// Replies dropped because the worker's queue was full.
    pub tx_dropped: u64,
}

/// An endpoint as `GET /v1/endpoints` returns it.
#[derive(Clone, Debug, Serialize)]
pub struct Endpoint {
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// IPv4 address.
    pub ip: std::net::Ipv4Addr,
    /// The dataplane's interface for it.
    pub interface: String,
}

struct WorkerHandle {
    id: usize,
    core: usize,
    link: WorkerLink,
    thread: Option<JoinHandle<Result<(), Error>>>,
}

/// The running agent's shared state (what the API reads).
pub struct AgentState {
    cfg: AgentConfig,
    started: Instant,
    tables: Arc<ArcSwap<Tables>>,
    workers: Vec<WorkerHandle>,
    ports: Vec<(PortConfig, u32, XdpMode)>,
    redirector: Mutex<Redirector>,
    slow_stats: Arc<SlowPathStats>,
    slow_thread: Option<JoinHandle<()>>,
    slow_stop: Arc<AtomicBool>,
    wakers: Vec<Arc<mio::Waker>>,
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
    let gw = Gateway {
        mac: cfg.gateway.mac,
        ipv4: cfg.gateway.ip,
    };
    let mut t = Tables::new(revision, cfg.mode, gw);
    for (i, p) in cfg.ports.iter().enumerate() {
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
    pub fn start(cfg: AgentConfig) -> Result<Arc<Self>, Error> {
        cfg.validate()?;
        let mode_req = cfg.xdp_mode_request()?;
        let placement = cfg.placement();
        let cores = cfg.worker_cores();
        let tables = Arc::new(ArcSwap::from_pointee(build_tables(&cfg, 1)?));

        let mut redirector = Redirector::load()?;
        let mut ports = Vec::new();
        for p in &cfg.ports {
            let idx = ifindex(&p.ifname)?;
            let mode = redirector.attach(&p.ifname, mode_req, RedirectFlags::default())?;
            tracing::info!(ifname = %p.ifname, %mode, "XDP program attached");
            ports.push((p.clone(), idx, mode));
        }

        let to_slow = Arc::new(ArrayQueue::new(1024));
        let signal = Arc::new(Signal::default());
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
            let backend = XskBackend::new(&specs, opts, 4 * cfg.workers.batch_size as u32)?;
            for (ifidx, queue, fd) in backend.socket_fds() {
                redirector.register_socket(ifidx, queue, fd)?;
            }
            let link = WorkerLink::new(
                Arc::clone(&tables),
                Arc::clone(&to_slow),
                Arc::clone(&signal),
            );
            let wcfg = WorkerConfig {
                id: w,
                core: Some(core),
                placement,
                batch_size: cfg.workers.batch_size,
                idle_spin: Duration::from_micros(cfg.workers.idle_spin_us),
            };
            let worker = Worker::new(wcfg, backend, link.clone())?;
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
                thread: Some(thread),
            });
        }

        Ok(Arc::new(AgentState {
            cfg,
            started: Instant::now(),
            tables,
            workers,
            ports,
            redirector: Mutex::new(redirector),
            slow_stats,
            slow_thread: Some(slow_thread),
            slow_stop,
            wakers,
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
        let ports = self
            .ports
            .iter()
            .enumerate()
            .map(|(i, (p, idx, mode))| PortStatus {
                ifname: p.ifname.clone(),
                ifindex: *idx,
                kind: p.kind,
                ip: p.ip,
                endpoint: match (&p.namespace, &p.name) {
                    (_, None) => "host".into(),
                    (ns, Some(n)) => format!("{}/{n}", ns.as_deref().unwrap_or("default")),
                },
                xdp_mode: *mode,
                queues: (0..self.workers.len() as u32).collect(),
                rx: self.workers.iter().map(|w| w.link.port_rx(i)).sum(),
                tx: self.workers.iter().map(|w| w.link.port_tx(i)).sum(),
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

    /// The pods this agent serves.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.cfg
            .ports
            .iter()
            .filter(|p| p.kind == crate::config::PortKind::Pod)
            .map(|p| Endpoint {
                name: p.name.clone().unwrap_or_default(),
                namespace: p.namespace.clone().unwrap_or_else(|| "default".into()),
                labels: p.labels.clone(),
                ip: p.ip,
                interface: p.ifname.clone(),
            })
            .collect()
    }

    /// Stops the workers and the slow path and detaches every XDP program. Idempotent.
    pub fn shutdown(self: Arc<Self>) -> Result<(), Error> {
        let Ok(mut me) = Arc::try_unwrap(self) else {
            return Err(Error::Lab(
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

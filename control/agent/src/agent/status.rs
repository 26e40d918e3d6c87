//! What the agent reports: status, connection tracking, the flow monitor's subscriptions.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use xylem_dataplane::monitor::{EventType, FlowEvent};
use xylem_dataplane::stats::StatsSnapshot;
use xylem_dataplane::worker::{CT_LIST_MAX, CtRequest, CtSnapshot};

use xylem_api::{CtView, Health, PortStatus, SlowPathCounters, Status, WorkerStatus};

use super::endpoints::endpoint_key;
use super::*;
use xylem_api::config::PortKind;

/// Agent events the control side may queue for the monitor dispatcher before new ones count
/// as lost (its 5 ms tick drains them; health changes come a few a second at most).
pub const AGENT_EVENT_QUEUE: usize = 1024;

/// A notification of the agent itself for the monitor (`type: "agent"`): today a backend's
/// health change. Built on the control side, never by a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentEvent {
    /// When it happened.
    pub time: std::time::SystemTime,
    /// What happened: `backend-health`.
    pub event: &'static str,
    /// The service, `namespace/name`.
    pub service: String,
    /// The backend, `ip:port`.
    pub backend: std::net::SocketAddrV4,
    /// The health before (`unknown`, `up`, `down`).
    pub from: String,
    /// The health after.
    pub to: String,
}

impl AgentEvent {
    /// `backend` of `service` went from health `from` to `to`, now.
    pub fn backend_health(
        service: String,
        backend: std::net::SocketAddrV4,
        from: String,
        to: String,
    ) -> Self {
        AgentEvent {
            time: std::time::SystemTime::now(),
            event: "backend-health",
            service,
            backend,
            from,
            to,
        }
    }
}

/// The monitor's second source beside the workers' rings: agent events, queued without ever
/// waiting and drained by the dispatcher with the rings.
#[derive(Debug)]
pub(super) struct AgentEvents {
    queue: crossbeam::queue::ArrayQueue<AgentEvent>,
    /// Several control-side threads may push: a real atomic add, not the workers'
    /// single-writer counter.
    lost: std::sync::atomic::AtomicU64,
}

impl Default for AgentEvents {
    fn default() -> Self {
        AgentEvents {
            queue: crossbeam::queue::ArrayQueue::new(AGENT_EVENT_QUEUE),
            lost: Default::default(),
        }
    }
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

impl AgentState {
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
                frames: w.link.frames.read(),
            });
        }
        let bindings = self.bindings_snapshot();
        let ports = self.ports_snapshot();
        let ports = ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i, p)))
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
                    (PortKind::Uplink, _) => "uplink".into(),
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
            version: env!("CARGO_PKG_VERSION").into(),
            node: self.cfg.node_name.clone(),
            uptime_s: uptime.as_secs_f64(),
            mode: self.cfg.mode,
            placement: self.cfg.placement(),
            batch_size: self.cfg.workers.batch_size,
            tables_revision: self.tables.load().revision(),
            health,
            workers,
            ports,
            missing_interfaces: self.missing_snapshot().iter().map(|m| m.view()).collect(),
            redirector,
            slowpath: SlowPathCounters {
                rx: self.slow_stats.rx.get(),
                tx: self.slow_stats.tx.get(),
                tx_dropped: self.slow_stats.tx_dropped.get(),
                tx_unroutable: self.slow_stats.tx_unroutable.get(),
            },
            totals,
            dns: self.dns.counters(),
            encryption: if self.cfg.encryption.is_some() {
                xylem_api::ENCRYPTION_IPSEC
            } else {
                xylem_api::ENCRYPTION_DISABLED
            }
            .into(),
            network: self.network(),
        }
    }

    /// The pod network as a CNI plugin needs it to address a pod: the configuration's pod CIDR
    /// and gateway, and the pod MTU. With encryption every pod gets the lower MTU, whatever
    /// node it talks to: the route it takes is not known when its interface is made.
    pub fn network(&self) -> xylem_api::NetworkView {
        xylem_api::NetworkView {
            pod_cidr: self.cfg.pod_cidr.to_string(),
            gateway_ip: self.cfg.gateway.ip,
            gateway_mac: self.cfg.gateway.mac.to_string(),
            pod_mtu: if self.cfg.encryption.is_some() {
                xylem_api::ENCRYPTED_POD_MTU
            } else {
                xylem_api::POD_MTU
            },
        }
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
            .map_err(|_| reject(Refusal::Failed, "-", "agent state poisoned"))?;
        let Some(w) = self.workers.iter().find(|w| w.is_running()) else {
            return Err(reject(
                Refusal::Unavailable,
                "-",
                "no worker is running to flush the conntrack; see xylem status",
            ));
        };
        let ticket = w.ct_ctl.post(CtRequest::Flush).map_err(|_| {
            reject(
                Refusal::Unavailable,
                "-",
                "the worker's conntrack mailbox is full",
            )
        })?;
        self.wake_workers();
        match ticket.wait(WORKER_REPLY_TIMEOUT, || w.is_running()) {
            Ok(r) => Ok(r.len),
            Err(why) => Err(reject(
                Refusal::Unavailable,
                "-",
                format!("worker {} {}; see xylem status", w.id, no_reply(why)),
            )),
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

    /// Queues an agent event for the monitor's clients, if one listens for `agent` events
    /// (otherwise there is nobody to tell, as for a worker's events). Never waits: a full
    /// queue counts the event lost.
    pub fn agent_event(&self, ev: AgentEvent) {
        if self.monitor_mask.load(Ordering::Relaxed) & EventType::Agent.bit() == 0 {
            return;
        }
        if self.agent_events.queue.push(ev).is_err() {
            self.agent_events.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes every queued agent event into `out`.
    pub fn drain_agent_events(&self, out: &mut Vec<AgentEvent>) {
        while let Some(ev) = self.agent_events.queue.pop() {
            out.push(ev);
        }
    }

    /// Events the workers and the control side could not queue.
    pub fn monitor_lost(&self) -> u64 {
        let workers: u64 = self.workers.iter().map(|w| w.link.monitor.lost.get()).sum();
        workers + self.agent_events.lost.load(Ordering::Relaxed) + self.dns.events_lost()
    }

    /// Port id → (interface, `namespace/name` or `host`/`-`), and IP → endpoint, for naming
    /// the endpoints in flow events.
    pub fn names(&self) -> (Vec<String>, BTreeMap<Ipv4Addr, String>) {
        let b = self.bindings_snapshot();
        let ports = self
            .ports_snapshot()
            .iter()
            .map(|p| {
                p.as_ref()
                    .map_or_else(|| "-".into(), |(p, _, _)| p.ifname.clone())
            })
            .collect();
        let mut ips = BTreeMap::new();
        for p in b.iter().flatten() {
            let name = match p.kind {
                PortKind::Host => "host".to_string(),
                PortKind::Uplink => "uplink".to_string(),
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
}

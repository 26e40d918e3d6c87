//! The worker: one thread per configured core, moving frames between its ports' rings and
//! deciding on each with [`crate::pipeline::process`].
//!
//! # The loop
//! Each iteration ("batch") reads the clock once and loads the current [`Tables`] once (an
//! atomic pointer load through `arc-swap`), then:
//! 1. takes back completed TX frames into the free list;
//! 2. tops up the ports' fill rings from the free list, fairly: each port with room takes at
//!    most an equal share of what is free (and the pass starts at the next port each batch),
//!    so a busy port that empties its fill ring every batch cannot starve a new or quiet one;
//! 3. takes up to `batch_size` frames from each port's RX ring; in [`Mode::Full`], with at
//!    least [`CT_PREFETCH_MIN_ENTRIES`] tracked connections, it first runs the pipeline's parse
//!    stage on the whole batch and prefetches each frame's conntrack entry
//!    ([`Conntrack::prefetch`] of `Meta::key`), so the batch's cache misses overlap instead of
//!    stalling each decision in turn (at 1,000,000 connections the batch takes a third of the
//!    time: see the `worker` benchmark); then it decides on each frame (parsing it first if the
//!    batch was not parsed ahead): forwarded frames are queued for the
//!    destination port's TX ring (no copy: all ports share the UMEM), slow-path frames are
//!    copied into the slow path's bounded queue, dropped frames go back to the free list. A
//!    port's frames for the slow path and the ICMP errors answering its expired packets pass
//!    only at its rate ([`crate::ratelimit`]); the rest are dropped and counted. While
//!    a monitor client listens for a frame's event type, the event is written into the worker's
//!    [`MonitorWriter`]; the batch's events are published to the monitor's ring once, at the
//!    end of the step;
//! 4. sends the slow path's replies (copied into free frames);
//! 5. flushes the per-port TX queues, kicking the kernel once per port and batch;
//! 6. collects expired conntrack entries with a small budget ([`CT_GC_BUDGET`] slots), paced by
//!    time rather than by batch (see [`CT_GC_SWEEP_NS`]).
//! 7. publishes where its frames are ([`WorkerLink::frames`]: a few relaxed stores).
//!
//! Every worker of an agent holds a handle on one shared [`Conntrack`]
//! ([`Worker::with_conntrack`]; [`Worker::new`] makes a table of its own, of capacity
//! [`WorkerConfig::ct_capacity`]), so a flow's two directions find one entry whichever queues
//! they arrive on. The control side lists it directly (reads take no lock) and flushes it
//! through one worker's [`CtControl`], a [`Mailbox`] checked once per batch like
//! [`PortControl`].
//!
//! Nothing in that loop allocates, takes a lock or logs; the only system calls are the TX
//! kicks (and, in `shared` placement, the idle wait and the priority changes around it).
//!
//! # Placements
//! - [`Placement::Dedicated`]: the worker spins on its rings forever. Lowest latency when it has
//!   a core to itself (bare metal, large nodes).
//! - [`Placement::Shared`]: after traffic the worker keeps polling for `idle_spin`, yielding the
//!   core between polls so the pods that share it run first (spinning without yielding starves
//!   them: P99 four times worse in our measurements); then it blocks in `epoll` (via `mio`) on
//!   its sockets and a [`mio::Waker`]. The kernel wakes it when frames arrive; the control side
//!   wakes it when it publishes tables, has slow-path replies or wants it to stop. Best when the
//!   worker shares cores with the pods (small nodes and VMs, where waking an idle vCPU costs
//!   tens of microseconds).
//!
//!   When a yield comes back late, another task (a busy pod) holds the core, and yielding would
//!   hand it whole time slices while frames wait; the worker then blocks at once for the next
//!   second. Blocking alone is not enough: a normal-priority worker that has had more than its
//!   fair share is not eligible to run when woken (EEVDF), so the scheduler picks the busy task,
//!   which keeps the core until the next tick (3.3 ms at 300 Hz; TCP_CRR P99 2.7 ms). So with
//!   [`WorkerConfig::realtime`] the worker blocks on a contended core at `SCHED_FIFO`
//!   priority [`RT_PRIORITY`], and its wake-up preempts the busy task at once, as the kernel's
//!   own softirq processing would. It gives realtime up again before yield-polling (a realtime
//!   thread's yield lets no normal task run), after [`RT_BUSY_BUDGET_NS`] busy without an
//!   empty poll (the kernel's own bound on softirq work), and for the rest of any
//!   [`RT_WINDOW_NS`] in which it was busy at realtime for [`RT_WINDOW_BUDGET_NS`], so that a
//!   flooding pod, steady or in bursts, takes the core from its neighbours at most half the
//!   time. The priority changes are system calls, made per busy period, never per frame.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::queue::ArrayQueue;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::conntrack::{Conntrack, CtConfig, CtEntry, CtStats, CtTimeouts};
use crate::io::{Backend, KernelStats};
use crate::ledger::{FrameGauges, Ledger, LedgerError, Place};
use crate::mailbox::{Letter, Mailbox};
use crate::monitor::{EventType, FlowEvent, MonitorLink, MonitorWriter};
use crate::pipeline::{Outcome, Parsed, Verdict, decide, parse};
use crate::policy::PolicyVerdict;
use crate::ratelimit::{Limiter, RateLimits};
use crate::slowpath::Signal;
use crate::stats::{Counter, DropReason, WorkerStats};
use crate::tables::{Mode, PortId, Tables};

/// Largest frame the slow path carries (an MTU-1500 Ethernet frame with room to spare).
pub const SLOW_FRAME_MAX: usize = 2048;

/// A frame on its way to or from the slow path, copied out of (or into) a UMEM frame so the
/// worker keeps its frames to itself. Fixed-size, so the queues carrying it never allocate.
#[derive(Clone)]
pub struct SlowFrame {
    /// The port it arrived on, or is to leave by.
    pub port: PortId,
    /// For a frame the slow path sends that opens a flow (a health-check probe's): the port
    /// its conntrack entry is counted against (the node's, never a pod's; see
    /// [`crate::slowpath::SlowPath::serve_probes`]). Equal to `port` otherwise.
    pub owner: PortId,
    /// Bytes used in `data`.
    pub len: u16,
    /// The frame.
    pub data: [u8; SLOW_FRAME_MAX],
}

impl std::fmt::Debug for SlowFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlowFrame")
            .field("port", &self.port)
            .field("len", &self.len)
            .finish()
    }
}

impl SlowFrame {
    /// Copies `bytes` (up to [`SLOW_FRAME_MAX`]) into a new slow frame.
    pub fn new(port: PortId, bytes: &[u8]) -> Option<Self> {
        if bytes.len() > SLOW_FRAME_MAX {
            return None;
        }
        let mut data = [0u8; SLOW_FRAME_MAX];
        data[..bytes.len()].copy_from_slice(bytes);
        Some(SlowFrame {
            port,
            owner: port,
            len: bytes.len() as u16,
            data,
        })
    }

    /// The frame's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.data[..self.len as usize]
    }
}

/// Where a worker runs and how it waits. See the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Busy-poll on a core kept for the dataplane.
    Dedicated,
    /// Share the pods' cores; block when idle.
    Shared,
}

impl Placement {
    /// The default for a machine with `cores` online CPUs: `dedicated` from 8 cores up (one or
    /// two cores given to the dataplane are a small share of the node, and spinning gives the
    /// lowest latency), `shared` below (on a 2- or 4-vCPU VM a spinning worker takes a large
    /// share of the node, and every transaction that crosses to another vCPU pays for waking it).
    pub fn default_for(cores: usize) -> Placement {
        if cores >= 8 {
            Placement::Dedicated
        } else {
            Placement::Shared
        }
    }

    /// `"dedicated"` or `"shared"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Placement::Dedicated => "dedicated",
            Placement::Shared => "shared",
        }
    }
}

impl std::str::FromStr for Placement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dedicated" => Ok(Placement::Dedicated),
            "shared" => Ok(Placement::Shared),
            other => Err(format!(
                "unknown placement '{other}': use 'dedicated' or 'shared'"
            )),
        }
    }
}

/// A worker's settings.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Index of the worker (also the queue it binds on multi-queue ports).
    pub id: usize,
    /// The CPU to pin to, if any.
    pub core: Option<usize>,
    /// How it waits.
    pub placement: Placement,
    /// Frames taken from each RX ring per batch (default 64).
    pub batch_size: usize,
    /// In `shared` placement, how long to keep polling after the last frame before blocking.
    pub idle_spin: Duration,
    /// In `shared` placement, wait for frames on a contended core at `SCHED_FIFO` priority
    /// [`RT_PRIORITY`], so that the wake-up preempts the pod task holding the core, as the
    /// kernel's own softirq processing does (see the module documentation for when the worker
    /// gives it up). Off by default here (tests and benches); the agent turns it on
    /// (`workers.realtime`). Ignored in `dedicated` placement, where a realtime spinner would
    /// starve the kernel threads of its core.
    pub realtime: bool,
    /// Most connections the conntrack [`Worker::new`] makes holds (default
    /// [`DEFAULT_CT_CAPACITY`]); [`Worker::with_conntrack`] uses the table it is given.
    pub ct_capacity: usize,
    /// Most connections one port's packets may create in the conntrack [`Worker::new`] makes
    /// (0: a quarter of `ct_capacity`, [`crate::conntrack::default_endpoint_limit`]).
    pub ct_endpoint_limit: usize,
}

/// The default conntrack capacity (of the agent's table, shared by its workers).
pub const DEFAULT_CT_CAPACITY: usize = 262_144;

/// Conntrack slots examined by the garbage collection of one batch.
pub const CT_GC_BUDGET: usize = 64;

/// How long one garbage-collection sweep over the whole conntrack table takes: the worker runs
/// one [`CT_GC_BUDGET`]-slot step every `CT_GC_SWEEP_NS × budget / slots` nanoseconds (at most
/// every microsecond), however often it polls. Paced by batch instead, a `dedicated` worker
/// spinning on empty rings swept its 11 MiB table every few milliseconds, streaming it through
/// the cache the pods share, for no gain: an expired entry is also reused in place by the next
/// flow that probes over it.
pub const CT_GC_SWEEP_NS: u64 = 10_000_000_000;

/// From this many tracked connections on, the worker prefetches each batch's conntrack entries
/// (step 3 of the loop). Below it their lines mostly stay in cache and the pre-pass (about
/// 5 ns per packet) costs more than it hides. Measured with the `worker` benchmark (ns/packet
/// of the whole batch, prefetch ÷ no prefetch, same run; 2-vCPU AMD EPYC VM): 1,000
/// connections 1.12–1.16, 10,000 1.04–1.14, 30,000 0.99–1.04, 100,000 0.76–0.97, 300,000
/// 0.36–0.48, 1,000,000 0.27–0.34.
pub const CT_PREFETCH_MIN_ENTRIES: usize = 32_768;

/// When a worker prefetches its conntrack entries before deciding on a batch (only ever in
/// [`Mode::Full`], where the policy stage looks them up).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CtPrefetch {
    /// From [`CT_PREFETCH_MIN_ENTRIES`] tracked connections on.
    #[default]
    Auto,
    /// Every batch.
    Always,
    /// Never.
    Never,
}

/// Most entries one [`CtRequest::List`] answer carries.
pub const CT_LIST_MAX: usize = 65_536;

/// A request to a worker about its conntrack, answered between batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtRequest {
    /// A snapshot of at most `max` live entries (capped at [`CT_LIST_MAX`]).
    List {
        /// The most entries to copy.
        max: usize,
    },
    /// Remove every entry.
    Flush,
}

/// A worker's answer to a [`CtRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CtSnapshot {
    /// The entries (empty after a flush).
    pub entries: Vec<CtEntry>,
    /// Entries in the table before the request (live and expired not yet collected).
    pub len: usize,
    /// The table's capacity.
    pub capacity: usize,
    /// Bytes of the table per connection at capacity.
    pub bytes_per_entry: f64,
    /// The tracker's counters.
    pub stats: CtStats,
}

/// How the control side reaches a worker's conntrack: post a request, wake the worker, wait on
/// the ticket.
pub type CtControl = Mailbox<CtRequest, CtSnapshot>;

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            id: 0,
            core: None,
            placement: Placement::Shared,
            batch_size: 64,
            idle_spin: Duration::from_micros(50),
            realtime: false,
            ct_capacity: DEFAULT_CT_CAPACITY,
            ct_endpoint_limit: 0,
        }
    }
}

/// What a worker shares with the control side. Cheap to clone.
#[derive(Clone, Debug)]
pub struct WorkerLink {
    /// The tables, swapped atomically by the control side.
    pub tables: Arc<ArcSwap<Tables>>,
    /// The worker's counters (written by the worker only).
    pub stats: Arc<WorkerStats>,
    /// Frames for the slow path (shared by all workers).
    pub to_slow: Arc<ArrayQueue<SlowFrame>>,
    /// The slow path's replies for this worker to send.
    pub from_slow: Arc<ArrayQueue<SlowFrame>>,
    /// Wakes the slow-path thread.
    pub slow_signal: Arc<Signal>,
    /// Frames and bytes per port (indexed by port id), written by the worker once per batch.
    pub ports: Arc<Vec<PortCounters>>,
    /// Nanoseconds spent in batches that moved frames (the busy share of wall time).
    pub busy_ns: Arc<Counter>,
    /// Where the worker's frames are, published at the end of every batch.
    pub frames: Arc<FrameGauges>,
    /// Set to stop the worker.
    pub stop: Arc<AtomicBool>,
    /// The flow monitor's ring, lost counter and enable mask.
    pub monitor: MonitorLink,
    /// The origin of the worker's clock (`now_ns` counts from here), so the control side can
    /// turn event timestamps into wall time.
    pub epoch: Instant,
}

impl WorkerLink {
    /// A link with fresh counters and a reply queue of 256 frames.
    pub fn new(
        tables: Arc<ArcSwap<Tables>>,
        to_slow: Arc<ArrayQueue<SlowFrame>>,
        slow_signal: Arc<Signal>,
    ) -> Self {
        WorkerLink {
            tables,
            stats: Arc::new(WorkerStats::default()),
            to_slow,
            slow_signal,
            ports: Arc::new((0..MAX_PORTS).map(|_| PortCounters::default()).collect()),
            busy_ns: Arc::new(Counter::default()),
            frames: Arc::new(FrameGauges::default()),
            from_slow: Arc::new(ArrayQueue::new(256)),
            stop: Arc::new(AtomicBool::new(false)),
            monitor: MonitorLink::default(),
            epoch: Instant::now(),
        }
    }
}

impl WorkerLink {
    /// Frames received on `port` by this worker.
    pub fn port_rx(&self, port: usize) -> u64 {
        self.ports.get(port).map_or(0, |p| p.rx_packets.get())
    }
    /// Frames sent on `port` by this worker.
    pub fn port_tx(&self, port: usize) -> u64 {
        self.ports.get(port).map_or(0, |p| p.tx_packets.get())
    }
    /// Frames received on `port` by this worker and dropped.
    pub fn port_drops(&self, port: usize) -> u64 {
        self.ports.get(port).map_or(0, |p| p.drops.get())
    }
}

/// Most ports one worker serves.
pub const MAX_PORTS: usize = 256;

/// Per-port counters of one worker.
#[derive(Debug, Default)]
pub struct PortCounters {
    /// Frames received.
    pub rx_packets: Counter,
    /// Frames sent.
    pub tx_packets: Counter,
    /// Frames received on this port and dropped (by the pipeline or the worker).
    pub drops: Counter,
}

impl PortCounters {
    /// Back to zero, for the next port at this index. Only the owning worker may call this.
    pub fn reset(&self) {
        self.rx_packets.reset();
        self.tx_packets.reset();
        self.drops.reset();
    }
}

const WAKER: Token = Token(usize::MAX);

/// Pushes the monitor events for one decided frame, if their types are enabled: the policy
/// verdict (when the policy stage ran), then the trace or drop event. `verdict` is the frame's
/// final fate (a slow-path handoff that found the queue full is a drop); `event(kind, egress,
/// reason)` builds an event about the frame.
#[inline]
fn emit(
    monitor: &mut MonitorWriter,
    mask: u32,
    o: &Outcome,
    verdict: Verdict,
    event: impl Fn(EventType, Option<PortId>, Option<DropReason>) -> FlowEvent,
) {
    let egress = match verdict {
        Verdict::Forward(out)
        | Verdict::IcmpError(out)
        | Verdict::TooBig(out)
        | Verdict::Refused { port: out, .. } => Some(out),
        Verdict::SlowPath | Verdict::Drop(_) => None,
    };
    let reason = match verdict {
        Verdict::Drop(r) => Some(r),
        _ => None,
    };
    if let Some(pv) = o.policy
        && mask & EventType::PolicyVerdict.bit() != 0
    {
        let reason = match pv {
            PolicyVerdict::Drop { reason, .. } => Some(DropReason::from(reason)),
            _ => reason,
        };
        monitor.push(event(EventType::PolicyVerdict, egress, reason));
    }
    let kind = match verdict {
        Verdict::Forward(_) | Verdict::IcmpError(_) | Verdict::TooBig(_) => EventType::Trace,
        Verdict::Drop(_) | Verdict::Refused { .. } => EventType::Drop,
        Verdict::SlowPath => return,
    };
    if mask & kind.bit() != 0 {
        monitor.push(event(kind, egress, reason));
    }
}

/// Why a frame sits on a port's TX queue: what to count once the ring has taken it, or could
/// not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TxKind {
    /// A packet the pipeline forwarded: `forwarded` when queued, else the drop `tx-ring-full`.
    Forwarded,
    /// An ICMP error answering a packet the pipeline did not send on (already counted by its
    /// reason: `ttl-exceeded`, `no-service-backend`, `esp-too-big`): `icmp_errors_sent` when
    /// queued.
    IcmpError,
    /// A TCP RST refusing a connection to a service with no backend (already counted as
    /// `no-service-backend`): `resets_sent` when queued.
    Reset,
    /// A slow-path reply: `slowpath_replies_sent` or `slowpath_replies_dropped`.
    SlowPathReply,
}

/// The frames waiting for one port's TX ring, with why each is there.
#[derive(Debug)]
struct TxQueue<D> {
    descs: Vec<D>,
    kinds: Vec<TxKind>,
}

impl<D> TxQueue<D> {
    fn with_capacity(n: usize) -> Self {
        TxQueue {
            descs: Vec::with_capacity(n),
            kinds: Vec::with_capacity(n),
        }
    }

    #[inline]
    fn push(&mut self, d: D, kind: TxKind) {
        self.descs.push(d);
        self.kinds.push(kind);
    }

    #[inline]
    fn is_empty(&self) -> bool {
        self.descs.is_empty()
    }

    #[inline]
    fn len(&self) -> usize {
        self.descs.len()
    }
}

/// The `SCHED_FIFO` priority of a realtime worker: the lowest, enough to preempt every normal
/// task and below any realtime task the node runs on purpose.
pub const RT_PRIORITY: i32 = 1;

/// How long a realtime worker may stay busy without one empty poll before it returns to normal
/// priority: the kernel's own bound on softirq processing before it hands the rest to
/// `ksoftirqd`, a normal task (`MAX_SOFTIRQ_TIME`, 2 ms). A pod flooding the worker therefore
/// takes its co-located pods' core no longer than a flood through the kernel's stack would.
pub const RT_BUSY_BUDGET_NS: u64 = 2_000_000;

/// Over any [`RT_WINDOW_NS`], a realtime worker spends at most this long busy at realtime
/// priority; then it stays at normal priority until the window ends. Without it, a pod on
/// another core sending bursts just under [`RT_BUSY_BUDGET_NS`], each followed by a gap long
/// enough for one empty poll, would keep the worker at realtime priority nearly all the time
/// and starve the pods it shares its core with.
pub const RT_WINDOW_BUDGET_NS: u64 = 5_000_000;

/// The window of [`RT_WINDOW_BUDGET_NS`].
pub const RT_WINDOW_NS: u64 = 10_000_000;

/// A realtime worker's use of realtime priority, against [`RT_BUSY_BUDGET_NS`] and
/// [`RT_WINDOW_BUDGET_NS`]. Times are the worker's clock, in nanoseconds.
#[derive(Debug, Default)]
struct RtBudget {
    /// Start of the current run of busy batches (none since the last empty poll).
    stretch: Option<u64>,
    /// Start of the current window.
    window: u64,
    /// Busy time at realtime priority in the current window.
    used: u64,
}

impl RtBudget {
    /// A batch that moved frames ran from `start` to `end`, at realtime priority if `rt`.
    /// Returns whether the worker must return to normal priority now.
    fn busy(&mut self, start: u64, end: u64, rt: bool) -> bool {
        self.roll(end);
        let since = *self.stretch.get_or_insert(start);
        if rt {
            self.used += end.saturating_sub(start);
        }
        rt && (end.saturating_sub(since) >= RT_BUSY_BUDGET_NS || self.used >= RT_WINDOW_BUDGET_NS)
    }

    /// A poll found nothing to do: the busy run is over.
    fn idle(&mut self) {
        self.stretch = None;
    }

    /// Whether the worker may wait at realtime priority at `now`.
    fn allows(&mut self, now: u64) -> bool {
        self.roll(now);
        self.used < RT_WINDOW_BUDGET_NS
    }

    fn roll(&mut self, now: u64) {
        if now.saturating_sub(self.window) >= RT_WINDOW_NS {
            self.window = now;
            self.used = 0;
        }
    }
}

/// Sets the calling thread's scheduling policy: `SCHED_FIFO` at [`RT_PRIORITY`], or
/// `SCHED_OTHER` (its nice value is kept).
fn set_realtime(on: bool) -> std::io::Result<()> {
    let (policy, prio) = if on {
        (libc::SCHED_FIFO, RT_PRIORITY)
    } else {
        (libc::SCHED_OTHER, 0)
    };
    let param = libc::sched_param {
        sched_priority: prio,
    };
    // SAFETY: `param` is a valid, initialised `sched_param` that outlives the call, which only
    // reads it; pid 0 names the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// How often a running worker reads its sockets' kernel counters ([`WorkerStats::xsk`]).
pub const XSK_STATS_INTERVAL_NS: u64 = 1_000_000_000;

/// A yield that takes longer than this means another task held the core.
const YIELD_CONTENDED_NS: u64 = 5_000;
/// How long a `shared` worker blocks at once (instead of yielding) after a contended yield.
const YIELD_BACKOFF_NS: u64 = 1_000_000_000;

/// A worker over backend `B`. Build it with [`Worker::new`], then either drive it step by step
/// with [`Worker::run_once`] (tests) or hand it a thread with [`Worker::run`].
pub struct Worker<B: Backend> {
    cfg: WorkerConfig,
    backend: B,
    link: WorkerLink,
    ledger: Ledger,
    free: Vec<B::Desc>,
    scratch: Vec<B::Desc>,
    /// The parse stage's results for the batch being decided (prefetching batches only).
    parsed: Vec<Result<Parsed, DropReason>>,
    pending: Vec<TxQueue<B::Desc>>,
    poll: Option<Poll>,
    waker: Option<Arc<Waker>>,
    ports_ctl: PortControl<B::PortSpec>,
    /// Per port index: whether the port is open (a closed one's index waits for the next).
    open: Vec<bool>,
    /// The port step 2 starts topping up at, one further each batch.
    fill_next: usize,
    /// Ports being removed (see [`PortRequest::Remove`]).
    closing: Vec<Closing<B::PortSpec>>,
    /// Per frame, the port whose ring it was last given to (with [`IN_TX`] for a TX ring), or
    /// [`NOT_IN_RING`]: what lets a removed port's frames be taken back, since a closed socket's
    /// rings cannot be read. Written where a frame goes onto a ring only (not where it comes
    /// back, which would cost a store per packet more): a frame back in the worker's hands
    /// keeps a stale tag, and [`Worker::close_port`] tells those apart.
    in_ring: Vec<u16>,
    ct: Conntrack,
    ct_ctl: CtControl,
    /// The producing end of the monitor's ring (events of a batch, published once per batch).
    monitor: MonitorWriter,
    /// When step 3 prefetches the batch's conntrack entries.
    ct_prefetch: CtPrefetch,
    /// The worker clock's time of the next garbage-collection step.
    ct_gc_next: u64,
    /// Nanoseconds between garbage-collection steps (see [`CT_GC_SWEEP_NS`]).
    ct_gc_interval: u64,
    /// Per-port rates of slow-path frames and ICMP errors (step 3).
    limiter: Limiter,
    /// Per port, the kernel's counters of its socket as last added to the stats
    /// ([`WorkerStats::xsk`]); zeros for a closed port and a new one.
    xsk_seen: Vec<KernelStats>,
    /// The worker clock's time of the next read of the kernel's counters.
    xsk_next: u64,
}

/// How the control side opens and closes ports of a running worker: post the request, wake the
/// worker, wait on the ticket. The worker checks its mailbox once per batch (one atomic load
/// when empty) and acts between batches.
pub type PortControl<S> = Mailbox<PortRequest<S>, PortReply>;

/// What the control side asks of a worker's ports.
#[derive(Clone, Debug)]
pub enum PortRequest<S> {
    /// Open a port: it takes the lowest free index (see [`Backend::add_port`]). Refused with
    /// [`Error::PortBudget`], changing nothing, when every port the frames were sized for is
    /// open ([`Backend::max_ports`]).
    Add(S),
    /// Close a port. Ask only once nothing routes to it and nothing can arrive on it any more
    /// (its XDP program detached): the worker first lets it finish what it holds — frames
    /// received are decided, frames queued are sent and completed — for at most
    /// [`PORT_DRAIN_NS`], then closes its socket and takes back every frame still on its
    /// rings, so a port removed costs no frames and its index is free for the next.
    Remove(PortId),
}

/// A port a worker opened or closed: its index, and (AF_XDP, opened) the socket to register in
/// the XSKMAP.
#[derive(Debug)]
pub struct PortChange {
    /// The port's index.
    pub port: PortId,
    /// When a port was opened on a backend that has sockets: a duplicate of the new socket's
    /// descriptor, for the control side to register in the XSKMAP. The worker keeps the socket
    /// itself; drop this once registered, since while it is open the socket outlives the port
    /// (a closed port's socket would stay bound to its queue and in the XSKMAP).
    pub fd: Option<std::os::fd::OwnedFd>,
}

/// A worker's answer to a port request, or why it could not be carried out.
pub type PortReply = Result<PortChange, Error>;

/// How long a port being removed may take to finish its frames before its socket closes
/// anyway (the frames still on its rings come back then too).
pub const PORT_DRAIN_NS: u64 = 50_000_000;

/// In [`Worker::in_ring`]: a frame never given to a ring.
const NOT_IN_RING: u16 = u16::MAX;
/// In [`Worker::in_ring`]: the frame is on the port's TX or completion ring (else its fill or
/// RX ring).
const IN_TX: u16 = 1 << 15;

/// A port being removed, and the request to answer once it is.
struct Closing<S> {
    port: usize,
    letter: Letter<PortRequest<S>, PortReply>,
    /// Worker time after which it closes whatever it still holds.
    deadline: u64,
    /// The last batch found nothing queued for it: one more, and its completions are reaped.
    quiet: bool,
}

impl<B: Backend> std::fmt::Debug for Worker<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("cfg", &self.cfg)
            .field("ledger", &self.ledger)
            .finish()
    }
}

impl<B: Backend> Worker<B> {
    /// Takes the backend's frames and prepares the queues, with a conntrack of its own
    /// (capacity [`WorkerConfig::ct_capacity`]). Allocates everything the loop needs up front.
    pub fn new(cfg: WorkerConfig, backend: B, link: WorkerLink) -> Result<Self, Error> {
        if cfg.ct_capacity == 0 {
            return Err(Error::Config(
                "conntrack capacity is 0: give the table room for at least one connection \
                 (default 262144)"
                    .into(),
            ));
        }
        let seed = {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(cfg.id)
        };
        let ct = Conntrack::new(&CtConfig {
            capacity: cfg.ct_capacity,
            endpoint_limit: cfg.ct_endpoint_limit,
            timeouts: CtTimeouts::default(),
            seed,
        });
        Self::with_conntrack(cfg, backend, link, ct)
    }

    /// As [`Worker::new`], on the conntrack `ct` (a handle: clone one table's handle for each
    /// worker that shares it).
    pub fn with_conntrack(
        cfg: WorkerConfig,
        mut backend: B,
        link: WorkerLink,
        ct: Conntrack,
    ) -> Result<Self, Error> {
        if cfg.batch_size == 0 || cfg.batch_size > 4096 {
            return Err(Error::Config(format!(
                "batch size {} is out of range: use 1 to 4096 (default 64)",
                cfg.batch_size
            )));
        }
        let ports = backend.port_count();
        if ports == 0 || ports > MAX_PORTS {
            return Err(Error::Config(format!(
                "a worker serves 1 to {MAX_PORTS} ports, not {ports}"
            )));
        }
        let frames = backend.take_frames();
        let total = backend.frame_count();
        if frames.len() != total as usize {
            return Err(Error::Config(
                "the backend's frames were already taken".into(),
            ));
        }
        let Some(&blank) = frames.first() else {
            return Err(Error::Config("a worker needs frames".into()));
        };
        let mut free = Vec::with_capacity(total as usize);
        free.extend(frames);
        // Frames are taken from the back of the free list; reversing keeps the first frames
        // first, which makes tests easier to read.
        free.reverse();
        let (poll, waker) = match cfg.placement {
            Placement::Dedicated => (None, None),
            Placement::Shared => {
                let poll = Poll::new().map_err(|source| Error::Io {
                    what: "creating the worker's epoll instance",
                    source,
                })?;
                for (i, fd) in backend.raw_fds() {
                    poll.registry()
                        .register(&mut SourceFd(&fd), Token(i), Interest::READABLE)
                        .map_err(|source| Error::Io {
                            what: "registering an AF_XDP socket with epoll",
                            source,
                        })?;
                }
                let waker = Waker::new(poll.registry(), WAKER).map_err(|source| Error::Io {
                    what: "creating the worker's waker",
                    source,
                })?;
                (Some(poll), Some(Arc::new(waker)))
            }
        };
        let monitor = link.monitor.writer(2 * cfg.batch_size).ok_or_else(|| {
            Error::Config(
                "the monitor ring of this worker link already has a worker: build each worker \
                 with its own WorkerLink"
                    .into(),
            )
        })?;
        // Every worker of a table paces its own steps, so with `w` workers a sweep takes
        // `CT_GC_SWEEP_NS / w`.
        let slots = (ct.memory_bytes() / Conntrack::BYTES_PER_SLOT).max(1) as u64;
        let ct_gc_interval =
            (CT_GC_SWEEP_NS.saturating_mul(CT_GC_BUDGET as u64) / slots).max(1_000);
        Ok(Worker {
            ct,
            ct_gc_next: 0,
            limiter: Limiter::new(RateLimits::default()),
            ct_gc_interval,
            xsk_seen: vec![KernelStats::default(); ports],
            xsk_next: 0,
            monitor,
            ct_prefetch: CtPrefetch::Auto,
            ct_ctl: Mailbox::new(16),
            scratch: vec![blank; cfg.batch_size.max(64)],
            parsed: vec![Err(DropReason::ZeroLength); cfg.batch_size.max(64)],
            pending: (0..ports)
                .map(|_| TxQueue::with_capacity(cfg.batch_size))
                .collect(),
            cfg,
            backend,
            link,
            ledger: Ledger::new(total),
            free,
            poll,
            waker,
            ports_ctl: Mailbox::new(16),
            open: vec![true; ports],
            fill_next: 0,
            closing: Vec::new(),
            in_ring: vec![NOT_IN_RING; total as usize],
        })
    }

    /// The mailbox through which the control side adds ports to this worker while it runs.
    pub fn port_control(&self) -> PortControl<B::PortSpec> {
        self.ports_ctl.clone()
    }

    /// The mailbox through which the control side lists or flushes the conntrack, between this
    /// worker's batches.
    pub fn ct_control(&self) -> CtControl {
        self.ct_ctl.clone()
    }

    /// When step 3 prefetches conntrack entries (default [`CtPrefetch::Auto`]). Benchmarks
    /// force it on or off to measure what it saves and costs.
    pub fn set_ct_prefetch(&mut self, when: CtPrefetch) {
        self.ct_prefetch = when;
    }

    /// The per-port rates of frames handed to the slow path and of ICMP errors (default
    /// [`RateLimits::default`]); over them, frames are dropped as `slowpath-rate-limited` and
    /// `ttl-exceeded-rate-limited`. Resets every port's bucket to full.
    pub fn set_rate_limits(&mut self, limits: RateLimits) {
        self.limiter = Limiter::new(limits);
    }

    /// The worker's handle on its conntrack (tests and benchmarks inspect it).
    pub fn conntrack(&self) -> &Conntrack {
        &self.ct
    }

    /// Answers the control side's conntrack requests. Between batches only.
    #[cold]
    fn ct_requests(&mut self, now_ns: u64) {
        while let Some(letter) = self.ct_ctl.take() {
            let len = self.ct.len();
            let entries = match letter.request {
                CtRequest::List { max } => self
                    .ct
                    .entries(now_ns)
                    .filter(|e| e.expires_in_ns > 0)
                    .take(max.min(CT_LIST_MAX))
                    .collect(),
                CtRequest::Flush => {
                    self.ct.flush();
                    Vec::new()
                }
            };
            letter.answer(CtSnapshot {
                entries,
                len,
                capacity: self.ct.capacity(),
                bytes_per_entry: self.ct.bytes_per_entry(),
                stats: self.ct.stats(),
            });
        }
    }

    /// Carries out the control side's port requests: opens ports at once, and starts removing
    /// ports (finished by [`Self::close_ports`]). Between batches only.
    #[cold]
    fn port_requests(&mut self, now_ns: u64) {
        while let Some(letter) = self.ports_ctl.take() {
            match &letter.request {
                PortRequest::Add(spec) => {
                    let r = self.open_port(spec);
                    letter.answer(r);
                }
                PortRequest::Remove(port) => {
                    let port = usize::from(*port);
                    let open = self.open.get(port).copied().unwrap_or(false)
                        && !self.closing.iter().any(|c| c.port == port);
                    if open {
                        self.closing.push(Closing {
                            port,
                            letter,
                            deadline: now_ns.saturating_add(PORT_DRAIN_NS),
                            quiet: false,
                        });
                    } else {
                        letter.answer(Err(Error::Config(format!(
                            "port {port} is not open on this worker"
                        ))));
                    }
                }
            }
        }
    }

    /// Opens a port on `spec` (see [`PortRequest::Add`]), if the frames have room for one
    /// more ([`Backend::max_ports`]). Refused, it changes nothing.
    fn open_port(&mut self, spec: &B::PortSpec) -> PortReply {
        let open = self.open.iter().filter(|&&o| o).count();
        if open >= MAX_PORTS {
            return Err(Error::Config(format!(
                "a worker serves at most {MAX_PORTS} ports"
            )));
        }
        let max = self.backend.max_ports();
        if open >= max {
            return Err(Error::PortBudget { max });
        }
        let (port, fd) = self.backend.add_port(spec)?;
        let raw = fd.map(|fd| fd.as_raw_fd());
        let dup = fd.map(|fd| fd.try_clone_to_owned()).transpose();
        let registered = match (&self.poll, raw) {
            (Some(poll), Some(raw)) => poll
                .registry()
                .register(&mut SourceFd(&raw), Token(port), Interest::READABLE)
                .map_err(|source| Error::Io {
                    what: "registering the new socket with epoll",
                    source,
                }),
            _ => Ok(()),
        };
        let dup = dup.map_err(|source| Error::Io {
            what: "duplicating the new socket's descriptor for the XSKMAP",
            source,
        });
        let fd = match registered.and(dup) {
            Ok(fd) => fd,
            Err(e) => {
                if let (Some(poll), Some(raw)) = (&self.poll, raw) {
                    let _ = poll.registry().deregister(&mut SourceFd(&raw));
                }
                // Nothing was on its rings yet: closing it takes no frames with it.
                self.backend.remove_port(port);
                return Err(e);
            }
        };
        // Port ids index the TX queues as they index the backend's ports.
        if port == self.pending.len() {
            self.pending
                .push(TxQueue::with_capacity(self.cfg.batch_size));
        }
        if port == self.open.len() {
            self.open.push(true);
            self.xsk_seen.push(KernelStats::default());
        } else {
            self.open[port] = true;
            self.xsk_seen[port] = KernelStats::default();
        }
        self.limiter.reset(port as PortId);
        Ok(PortChange {
            port: port as PortId,
            fd,
        })
    }

    /// Finishes removing the ports whose frames are done, or whose time is up: closes their
    /// sockets, takes back the frames left on their rings and answers the requests.
    #[cold]
    fn close_ports(&mut self, now_ns: u64) {
        let mut i = 0;
        while i < self.closing.len() {
            let port = self.closing[i].port;
            // Nothing left to send, for two batches in a row: the first batch's completion step
            // has taken back what the kernel sent meanwhile.
            let quiet = self.pending[port].is_empty() && self.backend.tx_queued(port) == 0;
            let done = quiet && self.closing[i].quiet;
            self.closing[i].quiet = quiet;
            if !done && now_ns < self.closing[i].deadline {
                i += 1;
                continue;
            }
            let c = self.closing.swap_remove(i);
            self.close_port(port);
            c.letter.answer(Ok(PortChange {
                port: port as PortId,
                fd: None,
            }));
        }
    }

    /// Adds what the kernel counted at `port`'s socket since the last read to the stats.
    #[cold]
    fn read_kernel_stats(&mut self, port: usize) {
        let Some(now) = self.backend.kernel_stats(port) else {
            return;
        };
        let seen = std::mem::replace(&mut self.xsk_seen[port], now);
        for ((c, n), s) in self
            .link
            .stats
            .xsk
            .iter()
            .zip(now.values())
            .zip(seen.values())
        {
            c.add(n.saturating_sub(s));
        }
    }

    /// Closes `port` now and takes back every frame on its rings.
    fn close_port(&mut self, port: usize) {
        if let Some(poll) = &self.poll
            && let Some(&(_, fd)) = self.backend.raw_fds().iter().find(|(p, _)| *p == port)
        {
            // Closing the socket would drop it from the epoll set too; deregistering first
            // keeps the token from ever firing for the next port at this index early.
            let _ = poll.registry().deregister(&mut SourceFd(&fd));
        }
        let q = &mut self.pending[port];
        let queued: Vec<B::Desc> = q.descs.drain(..).collect();
        q.kinds.clear();
        for d in queued {
            WorkerStats::drop(&self.link.stats, DropReason::NoRoute);
            self.release(d);
        }
        // What the kernel counted since the last read goes with the socket otherwise.
        self.read_kernel_stats(port);
        self.xsk_seen[port] = KernelStats::default();
        self.backend.remove_port(port);
        self.open[port] = false;
        // A frame tagged with this port is on its rings unless it came back since: then it is
        // in the free list, or held in a TX queue (between batches nothing else holds one).
        let mut back = vec![false; self.in_ring.len()];
        let held = self.pending.iter().flat_map(|q| q.descs.iter());
        for d in self.free.iter().chain(held) {
            back[self.backend.frame_index(d) as usize] = true;
        }
        let fill = port as u16;
        let tx = fill | IN_TX;
        for (idx, (tag, &came_back)) in self.in_ring.iter_mut().zip(&back).enumerate() {
            let from = match *tag {
                _ if came_back => continue,
                r if r == fill => Place::Fill,
                r if r == tx => Place::Tx,
                _ => continue,
            };
            *tag = NOT_IN_RING;
            self.ledger.moved(idx as u32, from, Place::Free);
            self.free.push(self.backend.frame_desc(idx as u32));
        }
        self.link.ports[port].reset();
    }

    /// The waker the control side uses to rouse a blocked worker (`shared` placement only).
    pub fn waker(&self) -> Option<Arc<Waker>> {
        self.waker.clone()
    }

    /// The backend (tests play the kernel's side through it).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The frame ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// One batch. Returns how many frames it moved (received, sent or completed); 0 means idle.
    pub fn run_once(&mut self, now_ns: u64) -> usize {
        if !self.ports_ctl.is_empty() {
            self.port_requests(now_ns);
        }
        if !self.closing.is_empty() {
            self.close_ports(now_ns);
        }
        if !self.ct_ctl.is_empty() {
            self.ct_requests(now_ns);
        }
        let tables = self.link.tables.load();
        // One reference-count increment per batch, so `self` stays free for the ring calls.
        let stats_owner = Arc::clone(&self.link.stats);
        let stats = &*stats_owner;
        let mut work = 0;
        let ports = self.backend.port_count();
        // The monitor's enable mask, once per batch: 0 (nobody listening) costs one branch per
        // frame and nothing else.
        let mon_mask = self.link.monitor.load_mask();
        // Prefetch flow state only where the conntrack stage will look it up, and only when the
        // table is too big to stay in cache.
        let ct_prefetch = tables.mode() == Mode::Full
            && match self.ct_prefetch {
                CtPrefetch::Auto => self.ct.len() >= CT_PREFETCH_MIN_ENTRIES,
                CtPrefetch::Always => true,
                CtPrefetch::Never => false,
            };
        // 1. Completions back to the free list.
        for port in 0..ports {
            loop {
                let n = self.backend.complete(port, &mut self.scratch);
                for d in &self.scratch[..n] {
                    let idx = self.backend.frame_index(d);
                    self.ledger.moved(idx, Place::Tx, Place::Free);
                    self.free.push(*d);
                }
                work += n;
                if n < self.scratch.len() {
                    break;
                }
            }
        }

        // 1b. Frames still on a TX ring need another kick: in copy mode the kernel sends at
        // most 32 frames per wake-up. Counted as work so a `shared` worker does not block
        // with frames stuck in a ring.
        for port in 0..ports {
            if self.backend.tx_queued(port) > 0 {
                self.backend.tx_kick(port);
                work += 1;
            }
        }

        // 2. Top up the fill rings: each port in turn takes at most an equal share of what is
        // free among the ports still to come, so what one leaves goes to the others.
        let mut sharers = (0..ports).filter(|&p| self.fill_takes(p)).count();
        let first = self.fill_next % ports.max(1);
        self.fill_next = first + 1;
        for port in (first..ports).chain(0..first) {
            if self.free.is_empty() || sharers == 0 {
                break;
            }
            if !self.fill_takes(port) {
                continue;
            }
            let share = self.free.len().div_ceil(sharers);
            sharers -= 1;
            let room =
                self.backend
                    .fill_room(port, share.min(u32::MAX as usize) as u32) as usize;
            if room == 0 {
                continue;
            }
            let start = self.free.len() - room;
            // SAFETY: these are the last `room` descriptors of the free list, which holds
            // only frames the worker owns (the ledger has each as `Free`), each once. If the
            // ring takes them they leave the list (truncated below) and the ledger marks them
            // `Fill`, so the worker passes them nowhere else until `rx` returns them.
            if unsafe { self.backend.fill(port, &self.free[start..]) } == room {
                for d in &self.free[start..] {
                    let idx = self.backend.frame_index(d);
                    self.ledger.moved(idx, Place::Free, Place::Fill);
                    self.in_ring[idx as usize] = port as u16;
                }
                self.free.truncate(start);
            }
        }

        // 3. Receive and decide.
        let mut slow_queued = false;
        for port in 0..ports {
            let n = self
                .backend
                .rx(port, &mut self.scratch[..self.cfg.batch_size]);
            if n == 0 {
                continue;
            }
            // The uplink's frames are addressed to the uplink's own MAC, every other port's to
            // the gateway's.
            let gw = *tables.gateway_for(port as PortId);
            work += n;
            stats.rx_packets.add(n as u64);
            self.link.ports[port].rx_packets.add(n as u64);
            // 3a. Parse the whole batch first and start loading each frame's flow state, so
            // that their cache misses overlap instead of each stalling its decision in turn.
            if ct_prefetch {
                let ct = &self.ct;
                for (d, parsed) in self.scratch[..n].iter_mut().zip(&mut self.parsed) {
                    // SAFETY: `rx` just returned the frame: the kernel let go of it and the
                    // worker holds it (the ledger moves it to `Held` just below).
                    *parsed =
                        unsafe { self.backend.with_frame(d, |frame| parse(frame.data(), &gw)) };
                    if let Ok(Parsed::Ipv4(m)) = parsed {
                        ct.prefetch(&m.key);
                    }
                }
            }
            for i in 0..n {
                let mut d = self.scratch[i];
                let idx = self.backend.frame_index(&d);
                self.ledger.moved(idx, Place::Fill, Place::Held);
                stats.rx_bytes.add(self.backend.desc_len(&d) as u64);
                let to_slow = &self.link.to_slow;
                let ct = &mut self.ct;
                let monitor = &mut self.monitor;
                let limiter = &mut self.limiter;
                let parsed = &self.parsed[i];
                let decide_frame = |frame: &mut crate::frame::Frame<'_>| {
                    // Parsed once: in 3a, or here.
                    let p = if ct_prefetch {
                        *parsed
                    } else {
                        parse(frame.data(), &gw)
                    };
                    let o = match &p {
                        Ok(p) => decide(now_ns, port as PortId, frame, p, &tables, ct),
                        Err(r) => Outcome::drop(*r),
                    };
                    if o.checksum_completed {
                        stats.checksum_completed.inc();
                    }
                    let mut v = limiter.admit(port as PortId, now_ns, o.verdict);
                    if v == Verdict::SlowPath {
                        // Copy out now, while the frame is at hand.
                        let queued = SlowFrame::new(port as PortId, frame.data())
                            .is_some_and(|sf| to_slow.push(sf).is_ok());
                        if queued {
                            slow_queued = true;
                        } else {
                            v = Verdict::Drop(DropReason::SlowPathFull);
                        }
                    }
                    if mon_mask != 0 {
                        let meta = match &p {
                            Ok(Parsed::Ipv4(m)) => Some(m),
                            _ => None,
                        };
                        let len = frame.len();
                        emit(monitor, mon_mask, &o, v, |kind, egress, reason| {
                            FlowEvent::new(now_ns, kind, port as PortId, egress, meta, len, reason)
                        });
                    }
                    v
                };
                // SAFETY: `rx` returned this frame in this batch and the ledger has it `Held`:
                // it is the worker's until the verdict below sends it to a TX queue or the
                // free list.
                let verdict = unsafe { self.backend.with_frame(&mut d, decide_frame) };
                // Every received frame is counted once, here or (if queued for TX) in `flush`.
                match verdict {
                    Verdict::Forward(out)
                    | Verdict::IcmpError(out)
                    | Verdict::TooBig(out)
                    | Verdict::Refused { port: out, .. }
                        if (out as usize) < ports =>
                    {
                        let q = out as usize;
                        let answered = match verdict {
                            Verdict::IcmpError(_) => {
                                Some((DropReason::TtlExceeded, TxKind::IcmpError))
                            }
                            Verdict::TooBig(_) => Some((DropReason::EspTooBig, TxKind::IcmpError)),
                            Verdict::Refused { reset: true, .. } => {
                                Some((DropReason::NoServiceBackend, TxKind::Reset))
                            }
                            Verdict::Refused { reset: false, .. } => {
                                Some((DropReason::NoServiceBackend, TxKind::IcmpError))
                            }
                            _ => None,
                        };
                        let kind = match answered {
                            // The packet itself is dropped; its answer is counted when sent.
                            Some((reason, kind)) => {
                                stats.drop(reason);
                                self.link.ports[port].drops.inc();
                                kind
                            }
                            None => TxKind::Forwarded,
                        };
                        if self.pending[q].len() == self.cfg.batch_size {
                            self.flush(q);
                        }
                        self.pending[q].push(d, kind);
                    }
                    Verdict::Forward(_)
                    | Verdict::IcmpError(_)
                    | Verdict::TooBig(_)
                    | Verdict::Refused { .. } => {
                        stats.drop(DropReason::NoRoute);
                        self.link.ports[port].drops.inc();
                        self.release(d);
                    }
                    Verdict::SlowPath => {
                        stats.to_slowpath.inc();
                        self.release(d);
                    }
                    Verdict::Drop(reason) => {
                        stats.drop(reason);
                        self.link.ports[port].drops.inc();
                        self.release(d);
                    }
                }
            }
        }

        // The batch's monitor events, if any: one release store for all of them.
        self.monitor.publish();
        if slow_queued {
            self.link.slow_signal.notify();
        }

        // 4. Slow-path replies.
        while let Some(sf) = self.link.from_slow.pop() {
            work += 1;
            let port = sf.port as usize;
            if port >= ports {
                stats.slowpath_replies_dropped.inc();
                continue;
            }
            if !self.admit_probe_frame(now_ns, &sf, &tables) {
                stats.slowpath_probes_denied.inc();
                continue;
            }
            let Some(mut d) = self.free.pop() else {
                stats.slowpath_replies_dropped.inc();
                continue;
            };
            let idx = self.backend.frame_index(&d);
            self.ledger.moved(idx, Place::Free, Place::Held);
            // SAFETY: popped from the free list, so the worker holds it (the ledger has just
            // moved it `Free` -> `Held`).
            unsafe {
                self.backend.with_frame(&mut d, |frame| {
                    let n = sf.bytes().len().min(frame.capacity());
                    frame.set_len(n);
                    frame.data_mut().copy_from_slice(&sf.bytes()[..n]);
                });
            }
            if self.pending[port].len() == self.cfg.batch_size {
                self.flush(port);
            }
            self.pending[port].push(d, TxKind::SlowPathReply);
        }

        // 5. Send.
        for port in 0..ports {
            if !self.pending[port].is_empty() {
                self.flush(port);
            }
        }

        // 6. Conntrack garbage collection: one bounded step when one is due.
        if now_ns >= self.ct_gc_next && !self.ct.is_empty() {
            self.ct.gc(now_ns, CT_GC_BUDGET);
            self.ct_gc_next = now_ns + self.ct_gc_interval;
        }
        // 7. The kernel's counters of the sockets, once a second: one system call per port.
        if now_ns >= self.xsk_next {
            self.xsk_next = now_ns + XSK_STATS_INTERVAL_NS;
            for port in 0..ports {
                if self.open[port] {
                    self.read_kernel_stats(port);
                }
            }
        }
        // A port being removed is waited on by the control side: a `shared` worker must not
        // block before it is closed (at most `PORT_DRAIN_NS`).
        if !self.closing.is_empty() {
            work += 1;
        }
        if work > 0 {
            stats.batches.inc();
        }
        self.link.frames.publish(&self.ledger);
        work
    }

    /// Whether a frame the slow path sends may leave. A health-check probe's frame
    /// ([`crate::slowpath::probe::is_probe_frame`]) opens or continues a connection from the
    /// gateway, the `host` entity, so in `full` mode it passes conntrack and the policy stage
    /// as a pod's packet would: a new flow is judged against the backend's ingress and, if
    /// allowed, committed (owned by [`SlowFrame::owner`]), so the backend's reply is a tracked
    /// `Reply`; later segments advance the entry's TCP state. The slow path's other frames
    /// answer a pod (ARP, echo replies, a RST to a pod's flow) and pass as before.
    fn admit_probe_frame(&mut self, now_ns: u64, sf: &SlowFrame, tables: &Tables) -> bool {
        if tables.mode() != Mode::Full {
            return true;
        }
        let gw = tables.gateway().ipv4;
        let Some(meta) = crate::slowpath::probe::is_probe_frame(sf.bytes(), gw) else {
            return true;
        };
        let rules = tables.policy();
        crate::pipeline::flow_and_policy(now_ns, sf.owner, &meta, gw, rules, &mut self.ct).allows()
    }

    /// Whether step 2 gives `port` frames: open, and not being removed.
    #[inline]
    fn fill_takes(&self, port: usize) -> bool {
        self.open[port] && (self.closing.is_empty() || !self.closing.iter().any(|c| c.port == port))
    }

    fn release(&mut self, d: B::Desc) {
        let idx = self.backend.frame_index(&d);
        self.ledger.moved(idx, Place::Held, Place::Free);
        self.free.push(d);
    }

    /// Hands `port`'s pending frames to its TX ring, and counts each by its kind (see
    /// [`TxKind`]): the ones the ring took as sent, the others as dropped.
    fn flush(&mut self, port: usize) {
        let stats_owner = Arc::clone(&self.link.stats);
        let stats = &*stats_owner;
        let q = &mut self.pending[port];
        // SAFETY: a TX queue holds only frames the worker holds (each came from `rx` or the
        // free list, and the ledger has it `Held`), each once. The prefix the ring takes is
        // marked `Tx` below and the queue is cleared, so the worker passes those frames
        // nowhere else until `complete` returns them; the rest go back to the free list.
        let sent = unsafe { self.backend.tx(port, &q.descs) };
        let mut bytes = 0u64;
        for (d, kind) in q.descs.iter().zip(&q.kinds).take(sent) {
            let idx = self.backend.frame_index(d);
            self.ledger.moved(idx, Place::Held, Place::Tx);
            self.in_ring[idx as usize] = port as u16 | IN_TX;
            let len = self.backend.desc_len(d) as u64;
            bytes += len;
            match kind {
                TxKind::Forwarded => {
                    stats.forwarded.inc();
                    stats.forwarded_bytes.add(len);
                }
                TxKind::IcmpError => stats.icmp_errors_sent.inc(),
                TxKind::Reset => stats.resets_sent.inc(),
                TxKind::SlowPathReply => stats.slowpath_replies_sent.inc(),
            }
        }
        stats.tx_packets.add(sent as u64);
        stats.tx_bytes.add(bytes);
        self.link.ports[port].tx_packets.add(sent as u64);
        for (d, kind) in q.descs.iter().zip(&q.kinds).skip(sent) {
            match kind {
                TxKind::Forwarded => stats.drop(DropReason::TxRingFull),
                TxKind::IcmpError | TxKind::Reset => {}
                TxKind::SlowPathReply => stats.slowpath_replies_dropped.inc(),
            }
            let idx = self.backend.frame_index(d);
            self.ledger.moved(idx, Place::Held, Place::Free);
            self.free.push(*d);
        }
        // Cleared, not replaced: the vectors keep their capacity, so no allocation.
        q.descs.clear();
        q.kinds.clear();
    }

    /// Checks the frame accounting against the kernel's rings. Call it when no traffic is
    /// arriving: after a few idle batches every sent frame has completed, so every frame must be
    /// free or waiting in a fill ring, and the fill rings must hold exactly the frames the ledger
    /// says they do.
    pub fn check_quiescent(&mut self) -> Result<(), LedgerError> {
        self.ledger.check()?;
        let held = self.ledger.count(Place::Held);
        let tx = self.ledger.count(Place::Tx);
        if held != 0 || tx != 0 {
            return Err(self.ledger.error(format!(
                "{held} frames held and {tx} in TX after quiescence"
            )));
        }
        let in_rings: u32 = (0..self.backend.port_count())
            .map(|p| self.backend.fill_ring_occupancy(p))
            .sum();
        if in_rings != self.ledger.count(Place::Fill) {
            return Err(self.ledger.error(format!(
                "the fill rings hold {in_rings} frames but the ledger says {}",
                self.ledger.count(Place::Fill)
            )));
        }
        if self.free.len() as u32 != self.ledger.count(Place::Free) {
            return Err(self
                .ledger
                .error(format!("the free list holds {} frames", self.free.len())));
        }
        Ok(())
    }

    /// Runs the loop on the calling thread until `link.stop` is set, pinned to the configured
    /// core. Returns the worker so its ledger can be checked.
    pub fn run(mut self) -> Result<Self, Error> {
        if let Some(core) = self.cfg.core {
            let ok = core_affinity::set_for_current(core_affinity::CoreId { id: core });
            if !ok {
                return Err(Error::Config(format!(
                    "cannot pin worker {} to CPU {core}: is that CPU online and in this process's cpuset?",
                    self.cfg.id
                )));
            }
        }
        let epoch = self.link.epoch;
        let mut events = Events::with_capacity(64);
        let mut last_work = 0u64;
        let mut prev: Option<u64> = None;
        let idle_spin = self.cfg.idle_spin.as_nanos() as u64;
        let stop = Arc::clone(&self.link.stop);
        let busy_ns = Arc::clone(&self.link.busy_ns);
        // Shared placement polls after traffic by yielding the core. If a yield comes back late,
        // another task (a busy pod) holds the core and each yield would hand it a whole time
        // slice; then the worker blocks at once for a while instead, so the kernel's wake-up
        // preempts that task as soon as a frame arrives.
        let mut yield_off_until = 0u64;
        // Realtime (shared placement): `wants_rt` is the setting (and that the kernel allows
        // it), `rt` the policy in force now. The start probes the permission, so that a refusal
        // is reported once, here, and then waits at normal priority until a core is contended.
        let mut wants_rt = self.cfg.realtime && self.cfg.placement == Placement::Shared;
        if wants_rt && let Err(e) = set_realtime(true).and_then(|()| set_realtime(false)) {
            wants_rt = false;
            tracing::warn!(
                worker = self.cfg.id,
                "cannot run at SCHED_FIFO priority {RT_PRIORITY} ({e}); running at normal \
                 priority, where a busy pod on this core can delay frames by a scheduler tick. \
                 Grant CAP_SYS_NICE (and realtime runtime to the agent's cgroup), or set \
                 workers.realtime: false to silence this"
            );
        }
        let mut rt = false;
        let mut budget = RtBudget::default();
        while !stop.load(Ordering::Relaxed) {
            // The one clock read of the batch; it also closes the previous busy batch.
            let now = epoch.elapsed().as_nanos() as u64;
            if let Some(start) = prev.take() {
                busy_ns.add(now.saturating_sub(start));
                if budget.busy(start, now, rt) && set_realtime(false).is_ok() {
                    rt = false;
                    self.link.stats.priority_drops.inc();
                }
            }
            if self.run_once(now) > 0 {
                last_work = now;
                prev = Some(now);
                self.link.stats.busy_polls.inc();
                continue;
            }
            budget.idle();
            self.link.stats.idle_polls.inc();
            match (&mut self.poll, self.cfg.placement) {
                (Some(poll), Placement::Shared)
                    if now.saturating_sub(last_work) >= idle_spin || now < yield_off_until =>
                {
                    // On a contended core, block at realtime priority, so that the wake-up
                    // preempts the task holding the core.
                    if wants_rt && !rt && now < yield_off_until && budget.allows(now) {
                        rt = set_realtime(true).is_ok();
                    }
                    self.link.stats.wakeups.inc();
                    // A timeout bounds how long a missed wake-up could stall us; the waker and the
                    // sockets normally end the wait long before it.
                    match poll.poll(&mut events, Some(Duration::from_millis(100))) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(source) => {
                            return Err(Error::Io {
                                what: "waiting on the worker's sockets",
                                source,
                            });
                        }
                    }
                    last_work = epoch.elapsed().as_nanos() as u64;
                }
                // Shared cores: poll again, but let the pods on this core run first.
                (_, Placement::Shared) => {
                    // A realtime thread's yield lets no normal task run: poll at normal priority.
                    let mut before = now;
                    if rt && set_realtime(false).is_ok() {
                        rt = false;
                        // The system call is not the yield's delay.
                        before = epoch.elapsed().as_nanos() as u64;
                    }
                    std::thread::yield_now();
                    let back = epoch.elapsed().as_nanos() as u64;
                    if back.saturating_sub(before) > YIELD_CONTENDED_NS {
                        yield_off_until = back + YIELD_BACKOFF_NS;
                    }
                }
                _ => std::hint::spin_loop(),
            }
        }
        self.drain(epoch.elapsed().as_nanos() as u64);
        Ok(self)
    }

    /// Runs batches until nothing moves (at most 10,000), so that sent frames complete and come
    /// back before the worker stops. Frames still arriving keep it busy only up to that bound.
    pub fn drain(&mut self, now_ns: u64) {
        for _ in 0..10_000 {
            if self.run_once(now_ns) == 0 {
                break;
            }
        }
    }
}

#[cfg(test)]
mod rt_budget_tests {
    use super::*;

    /// Busy batches of `step` ns from `from` to `to`; the time of the first that must drop
    /// realtime, if any.
    fn busy_run(b: &mut RtBudget, from: u64, to: u64, step: u64, rt: bool) -> Option<u64> {
        (from..to)
            .step_by(step as usize)
            .find(|&t| b.busy(t, t + step, rt))
            .map(|t| t + step)
    }

    #[test]
    fn a_steady_flood_drops_realtime_after_the_busy_budget() {
        let mut b = RtBudget::default();
        let dropped = busy_run(&mut b, 0, 10_000_000, 10_000, true);
        assert_eq!(dropped, Some(RT_BUSY_BUDGET_NS));
    }

    #[test]
    fn bursts_with_empty_polls_between_them_use_up_the_window() {
        let mut b = RtBudget::default();
        let burst = RT_BUSY_BUDGET_NS - 100_000;
        let mut t = 0;
        let mut dropped = None;
        while dropped.is_none() && t < RT_WINDOW_NS {
            assert!(
                b.allows(t),
                "realtime refused at {t} before the budget ran out"
            );
            dropped = busy_run(&mut b, t, t + burst, 10_000, true);
            b.idle();
            t += burst + 1_000;
        }
        // Each burst alone is under the per-run budget; together they reach the window's.
        let at = dropped.expect("the window budget never stopped the bursts");
        assert!((RT_WINDOW_BUDGET_NS..RT_WINDOW_NS).contains(&at), "{at}");
        assert!(
            !b.allows(at + 1_000),
            "realtime allowed again inside the window"
        );
        assert!(
            b.allows(RT_WINDOW_NS),
            "realtime still refused in the next window"
        );
    }

    #[test]
    fn busy_time_at_normal_priority_is_neither_dropped_nor_charged() {
        let mut b = RtBudget::default();
        assert_eq!(busy_run(&mut b, 0, 8_000_000, 10_000, false), None);
        b.idle();
        assert!(b.allows(8_000_000));
    }
}

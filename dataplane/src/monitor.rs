//! The flow monitor: fixed-size [`FlowEvent`]s that workers push into bounded per-worker rings
//! for the control side to stream (`xylem monitor`).
//!
//! Cost model. A worker loads [`MonitorLink::mask`] once per batch. When it is 0 (nobody
//! listening) the worker does nothing else for the monitor. When a type is enabled, each
//! matching frame costs a copy of its 5-tuple from the [`Meta`] the pipeline's parse stage
//! already made (the frame is never read again) and a 32-byte event written into the worker's [`MonitorWriter`] (plain stores into memory only the worker
//! touches). Once per batch the writer copies its events into the ring and publishes them with
//! one release store ([`MonitorWriter::publish`]). The ring is single-producer single-consumer
//! (`rtrb`): no compare-and-swap, and the consumer's side stays off the worker's cache lines
//! except for the one index it reads. A full ring never blocks the worker: the events that do
//! not fit are dropped and counted in [`MonitorLink::lost`] (single writer: the worker).
//!
//! The control side takes events from [`MonitorLink::ring`] ([`EventRing::drain`], or
//! [`EventRing::pop`]) and sets the mask while at least one client listens.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::pipeline::Meta;
use crate::stats::{Counter, DropReason};
use crate::wire::ip::proto;

/// Events per worker ring by default.
pub const DEFAULT_RING: usize = 4096;

/// Kinds of event; each is one bit of the enable mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum EventType {
    /// A frame was dropped.
    Drop = 0,
    /// A frame was forwarded.
    Trace = 1,
    /// A policy decision (`full` mode: every packet the conntrack and policy stages judged).
    PolicyVerdict = 2,
    /// A DNS query or answer the DNS stage inspected. Workers never put these in their rings
    /// (a name and its answers do not fit a fixed 32-byte event): the stage reports them on
    /// the DNS log (`crate::dns::log`), and the agent hands them to the clients that asked.
    Dns = 3,
    /// A notification of the agent itself (a backend's health changed), Cilium's name for
    /// agent notifications. Workers never produce it: the control side queues these beside
    /// the workers' rings, and its bit in the enable mask only tells the agent whether anyone
    /// listens.
    Agent = 4,
}

impl EventType {
    /// Every type.
    pub const ALL: [EventType; 5] = [
        EventType::Drop,
        EventType::Trace,
        EventType::PolicyVerdict,
        EventType::Dns,
        EventType::Agent,
    ];

    /// Its bit in the enable mask.
    pub const fn bit(self) -> u32 {
        1 << self as u32
    }

    /// The stable name (`drop`, `trace`, `policy-verdict`, `dns`, `agent`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Drop => "drop",
            EventType::Trace => "trace",
            EventType::PolicyVerdict => "policy-verdict",
            EventType::Dns => "dns",
            EventType::Agent => "agent",
        }
    }
}

impl std::str::FromStr for EventType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                format!("unknown event type '{s}': use drop, trace, policy-verdict, dns or agent")
            })
    }
}

/// One flow event. Fixed-size and `Copy`, so the rings never allocate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEvent {
    /// The worker's clock (nanoseconds since the worker started) of the batch.
    pub timestamp_ns: u64,
    /// What happened.
    pub kind: EventType,
    /// Port the frame arrived on.
    pub ingress_port: u16,
    /// Port it left by (forwarded frames).
    pub egress_port: Option<u16>,
    /// IPv4 source (unspecified for non-IPv4 frames).
    pub src: Ipv4Addr,
    /// IPv4 destination.
    pub dst: Ipv4Addr,
    /// IP protocol number (0 for non-IPv4).
    pub protocol: u8,
    /// TCP/UDP source port, or ICMP type.
    pub src_port: u16,
    /// TCP/UDP destination port, or ICMP code.
    pub dst_port: u16,
    /// `None`: forwarded; `Some(reason)`: dropped.
    pub drop_reason: Option<DropReason>,
    /// Frame length.
    pub len: u16,
}

impl FlowEvent {
    /// An event about a frame whose headers the pipeline's parse stage read into `meta`
    /// (`None`: the frame did not parse, or is not IPv4; its addresses and ports are then 0).
    /// For ICMP the ports hold the type and code. The 5-tuple is the packet's as it arrived.
    #[inline]
    pub fn new(
        timestamp_ns: u64,
        kind: EventType,
        ingress_port: u16,
        egress_port: Option<u16>,
        meta: Option<&Meta>,
        len: usize,
        drop_reason: Option<DropReason>,
    ) -> Self {
        let mut ev = FlowEvent {
            timestamp_ns,
            kind,
            ingress_port,
            egress_port,
            src: Ipv4Addr::UNSPECIFIED,
            dst: Ipv4Addr::UNSPECIFIED,
            protocol: 0,
            src_port: 0,
            dst_port: 0,
            drop_reason,
            len: len.min(u16::MAX as usize) as u16,
        };
        if let Some(m) = meta {
            ev.src = m.key.src;
            ev.dst = m.key.dst;
            ev.protocol = m.key.proto;
            (ev.src_port, ev.dst_port) = if m.key.proto == proto::ICMP {
                (u16::from(m.icmp_type), u16::from(m.icmp_code))
            } else {
                (m.key.sport, m.key.dport)
            };
        }
        ev
    }

    /// `FORWARDED` or `DROPPED`.
    pub fn verdict(&self) -> &'static str {
        if self.drop_reason.is_some() {
            "DROPPED"
        } else {
            "FORWARDED"
        }
    }
}

/// What a worker shares with the control side for the monitor. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MonitorLink {
    /// Enabled event types ([`EventType::bit`]s). Loaded by the worker once per batch.
    pub mask: Arc<AtomicU32>,
    /// The worker's event ring.
    pub ring: Arc<EventRing>,
    /// Events that did not fit (written by the worker only).
    pub lost: Arc<Counter>,
}

impl MonitorLink {
    /// A link with a ring of `capacity` events and every type off.
    pub fn new(capacity: usize) -> Self {
        Self::with_mask(Arc::new(AtomicU32::new(0)), capacity)
    }

    /// A link whose enable mask is `mask` (shared by all workers of an agent).
    pub fn with_mask(mask: Arc<AtomicU32>, capacity: usize) -> Self {
        MonitorLink {
            mask,
            ring: Arc::new(EventRing::new(capacity.max(1))),
            lost: Arc::new(Counter::default()),
        }
    }

    /// The current mask (once per batch on the worker).
    #[inline]
    pub fn load_mask(&self) -> u32 {
        self.mask.load(Ordering::Relaxed)
    }

    /// The producing end of the ring, for the one worker that owns this link; `None` once
    /// taken. `batch` is how many events the writer gathers before it must publish them (it
    /// allocates room for that many, here and never again).
    pub fn writer(&self, batch: usize) -> Option<MonitorWriter> {
        let producer = lock(&self.ring.producer).take()?;
        Some(MonitorWriter {
            producer,
            lost: Arc::clone(&self.lost),
            pending: Vec::with_capacity(batch.max(1)),
        })
    }
}

impl Default for MonitorLink {
    fn default() -> Self {
        MonitorLink::new(DEFAULT_RING)
    }
}

/// Locks `m`, whatever a panicking holder left: the ring's ends stay consistent (every
/// operation on them is a single `rtrb` call).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A worker's event ring: a bounded single-producer single-consumer queue (`rtrb`). The
/// producing end is handed once to the worker ([`MonitorLink::writer`]); the consuming end
/// stays here, behind a mutex that only the control side takes (the dispatcher every 5 ms,
/// tests), so there is one consumer at a time and the worker never waits for it.
pub struct EventRing {
    producer: Mutex<Option<rtrb::Producer<FlowEvent>>>,
    consumer: Mutex<rtrb::Consumer<FlowEvent>>,
    capacity: usize,
}

impl std::fmt::Debug for EventRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRing")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

impl EventRing {
    /// An empty ring of `capacity` events.
    pub fn new(capacity: usize) -> Self {
        let (p, c) = rtrb::RingBuffer::new(capacity);
        EventRing {
            producer: Mutex::new(Some(p)),
            consumer: Mutex::new(c),
            capacity,
        }
    }

    /// Takes the oldest event, if any.
    pub fn pop(&self) -> Option<FlowEvent> {
        lock(&self.consumer).pop().ok()
    }

    /// Takes every event published so far, oldest first, handing each to `f`. Returns how
    /// many. One lock and one release store for the lot.
    pub fn drain(&self, mut f: impl FnMut(FlowEvent)) -> usize {
        let mut c = lock(&self.consumer);
        let n = c.slots();
        match c.read_chunk(n) {
            Ok(chunk) => {
                for ev in chunk {
                    f(ev);
                }
                n
            }
            // Cannot happen: `n` slots were there, and only this (locked) consumer takes them.
            Err(_) => 0,
        }
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        lock(&self.consumer).slots()
    }

    /// Whether no event is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most events it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// The worker's end of its [`EventRing`]. Events are gathered in memory only the worker touches
/// ([`Self::push`]: plain stores) and published into the ring by [`Self::publish`], once per
/// batch: one copy and one release store. Whatever does not fit in the ring is counted lost.
#[derive(Debug)]
pub struct MonitorWriter {
    producer: rtrb::Producer<FlowEvent>,
    lost: Arc<Counter>,
    /// Events of the current batch; never grows beyond the capacity it was created with.
    pending: Vec<FlowEvent>,
}

impl MonitorWriter {
    /// Adds an event to the batch (publishing the batch first if it is full).
    #[inline]
    pub fn push(&mut self, ev: FlowEvent) {
        if self.pending.len() == self.pending.capacity() {
            self.publish();
        }
        self.pending.push(ev);
    }

    /// Makes the batch's events visible to the consumer, as many as the ring has room for;
    /// the rest are counted in [`MonitorLink::lost`]. Call it once per batch.
    #[inline]
    pub fn publish(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let (_, rest) = self.producer.push_partial_slice(&self.pending);
        if !rest.is_empty() {
            self.lost.add(rest.len() as u64);
        }
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp_frame() -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1234, 53);
        let mut v = Vec::new();
        b.write(&mut v, &[1, 2, 3]).unwrap();
        v
    }

    #[test]
    fn an_event_is_32_bytes() {
        // Half a cache line: what a traced frame costs the ring.
        assert_eq!(std::mem::size_of::<FlowEvent>(), 32);
    }

    #[test]
    fn carries_the_parsed_five_tuple() {
        let f = udp_frame();
        let gw = crate::tables::Gateway {
            mac: crate::tables::MacAddr([2, 0, 0, 0, 0, 2]),
            ipv4: Ipv4Addr::new(10, 0, 0, 254),
        };
        let crate::pipeline::Parsed::Ipv4(m) = crate::pipeline::parse(&f, &gw).unwrap() else {
            panic!("not IPv4");
        };
        let ev = FlowEvent::new(7, EventType::Trace, 1, Some(2), Some(&m), f.len(), None);
        assert_eq!(ev.src, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(ev.dst, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!((ev.protocol, ev.src_port, ev.dst_port), (17, 1234, 53));
        assert_eq!((ev.len as usize, ev.verdict()), (f.len(), "FORWARDED"));
        let none = FlowEvent::new(
            0,
            EventType::Drop,
            0,
            None,
            None,
            3,
            Some(DropReason::EthTruncated),
        );
        assert_eq!(
            (none.protocol, none.src, none.verdict()),
            (0, Ipv4Addr::UNSPECIFIED, "DROPPED")
        );
    }

    #[test]
    fn a_full_ring_counts_lost_events() {
        let m = MonitorLink::new(2);
        let mut w = m.writer(4).unwrap();
        let ev = FlowEvent::new(0, EventType::Drop, 0, None, None, 0, None);
        for _ in 0..5 {
            w.push(ev);
        }
        // The fifth push published the first four: two fit.
        assert_eq!((m.ring.len(), m.lost.get()), (2, 2));
        w.publish();
        assert_eq!((m.ring.len(), m.lost.get()), (2, 3));
        assert_eq!(m.ring.drain(|_| {}), 2);
        assert!(m.ring.is_empty());
    }

    #[test]
    fn events_are_published_once_per_batch_in_order() {
        let m = MonitorLink::new(16);
        let mut w = m.writer(8).unwrap();
        assert!(m.writer(8).is_none(), "one producer per ring");
        for port in 0..3 {
            w.push(FlowEvent::new(
                0,
                EventType::Trace,
                port,
                None,
                None,
                0,
                None,
            ));
        }
        assert!(m.ring.is_empty(), "nothing visible before publish");
        w.publish();
        let mut ports = Vec::new();
        m.ring.drain(|ev| ports.push(ev.ingress_port));
        assert_eq!(ports, [0, 1, 2]);
        assert_eq!(m.lost.get(), 0);
    }

    /// A worker thread producing batches while a consumer thread drains: every event arrives
    /// exactly once and in order, or is counted lost, never both, never torn.
    #[test]
    fn a_producer_and_a_consumer_thread_lose_nothing_silently() {
        const EVENTS: u64 = 200_000;
        let m = MonitorLink::new(64);
        let mut w = m.writer(32).unwrap();
        let consumer = {
            let m = m.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                loop {
                    let done = m.mask.load(Ordering::Acquire) == 1;
                    m.ring.drain(|ev| {
                        // Each event carries its sequence number in its timestamp and a copy
                        // of its low bits in the ports: a torn event would not match.
                        assert_eq!(ev.src_port, ev.timestamp_ns as u16);
                        assert_eq!(ev.dst_port, (ev.timestamp_ns >> 16) as u16);
                        seen.push(ev.timestamp_ns);
                    });
                    if done {
                        return seen;
                    }
                    std::thread::yield_now();
                }
            })
        };
        for i in 0..EVENTS {
            let mut ev = FlowEvent::new(i, EventType::Trace, 0, None, None, 0, None);
            ev.src_port = i as u16;
            ev.dst_port = (i >> 16) as u16;
            w.push(ev);
            if i % 32 == 31 {
                w.publish();
            }
        }
        w.publish();
        m.mask.store(1, Ordering::Release);
        let seen = consumer.join().unwrap();
        assert!(seen.windows(2).all(|p| p[0] < p[1]), "in order, once each");
        assert_eq!(seen.len() as u64 + m.lost.get(), EVENTS);
        assert!(!seen.is_empty());
    }

    #[test]
    fn event_types_parse_by_name() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>().unwrap(), t);
        }
        assert!("bogus".parse::<EventType>().is_err());
    }
}

//! The flow monitor: fixed-size [`FlowEvent`]s that workers push into bounded per-worker rings
//! for the control side to stream (`xylem monitor`).
//!
//! Cost model. A worker loads [`MonitorLink::mask`] once per batch. When it is 0 (nobody
//! listening) the worker does nothing else for the monitor: no parsing, no push. When a type is
//! enabled, each matching frame costs a bounds-checked read of a few header bytes and one
//! lock-free `ArrayQueue::push` of a 40-byte event; a full ring never blocks the worker: the
//! event is dropped and counted in [`MonitorLink::lost`] (single writer: the worker).
//!
//! The control side pops events ([`MonitorLink::ring`]) and sets the mask while at least one
//! client listens.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crossbeam::queue::ArrayQueue;
use serde::{Deserialize, Serialize};

use crate::stats::{Counter, DropReason};

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
    /// A policy decision (not produced until policy lands).
    PolicyVerdict = 2,
    /// A DNS observation (not produced until DNS lands).
    Dns = 3,
}

impl EventType {
    /// Every type.
    pub const ALL: [EventType; 4] = [
        EventType::Drop,
        EventType::Trace,
        EventType::PolicyVerdict,
        EventType::Dns,
    ];

    /// Its bit in the enable mask.
    pub const fn bit(self) -> u32 {
        1 << self as u32
    }

    /// The stable name (`drop`, `trace`, `policy-verdict`, `dns`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Drop => "drop",
            EventType::Trace => "trace",
            EventType::PolicyVerdict => "policy-verdict",
            EventType::Dns => "dns",
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
                format!("unknown event type '{s}': use drop, trace, policy-verdict or dns")
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
    /// Builds an event from a frame's bytes: reads the IPv4 addresses, protocol and L4 ports
    /// when present (every read bounds-checked; a short or non-IPv4 frame gives zeros).
    #[inline]
    pub fn from_frame(
        timestamp_ns: u64,
        kind: EventType,
        ingress_port: u16,
        egress_port: Option<u16>,
        frame: &[u8],
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
            len: frame.len().min(u16::MAX as usize) as u16,
        };
        let is_ipv4 = frame.get(12..14) == Some(&[0x08, 0x00][..]);
        let Some(ip) = frame.get(14..).filter(|_| is_ipv4) else {
            return ev;
        };
        let (Some(&vihl), Some(&proto), Some(s), Some(d)) =
            (ip.first(), ip.get(9), ip.get(12..16), ip.get(16..20))
        else {
            return ev;
        };
        if vihl >> 4 != 4 {
            return ev;
        }
        ev.protocol = proto;
        ev.src = Ipv4Addr::new(s[0], s[1], s[2], s[3]);
        ev.dst = Ipv4Addr::new(d[0], d[1], d[2], d[3]);
        let ihl = usize::from(vihl & 0x0f) * 4;
        let l4 = ip.get(ihl..).unwrap_or(&[]);
        match proto {
            6 | 17 => {
                if let Some(p) = l4.get(0..4) {
                    ev.src_port = u16::from_be_bytes([p[0], p[1]]);
                    ev.dst_port = u16::from_be_bytes([p[2], p[3]]);
                }
            }
            1 => {
                if let Some(p) = l4.get(0..2) {
                    ev.src_port = u16::from(p[0]);
                    ev.dst_port = u16::from(p[1]);
                }
            }
            _ => {}
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
    pub ring: Arc<ArrayQueue<FlowEvent>>,
    /// Events that did not fit (written by the worker only).
    pub lost: Arc<Counter>,
}

impl MonitorLink {
    /// A link with a ring of `capacity` events and every type off.
    pub fn new(capacity: usize) -> Self {
        MonitorLink {
            mask: Arc::new(AtomicU32::new(0)),
            ring: Arc::new(ArrayQueue::new(capacity.max(1))),
            lost: Arc::new(Counter::default()),
        }
    }

    /// A link whose enable mask is `mask` (shared by all workers of an agent).
    pub fn with_mask(mask: Arc<AtomicU32>, capacity: usize) -> Self {
        MonitorLink {
            mask,
            ring: Arc::new(ArrayQueue::new(capacity.max(1))),
            lost: Arc::new(Counter::default()),
        }
    }

    /// The current mask (once per batch on the worker).
    #[inline]
    pub fn load_mask(&self) -> u32 {
        self.mask.load(Ordering::Relaxed)
    }

    /// Pushes an event; a full ring counts it as lost. Worker only.
    #[inline]
    pub fn push(&self, ev: FlowEvent) {
        if self.ring.push(ev).is_err() {
            self.lost.inc();
        }
    }
}

impl Default for MonitorLink {
    fn default() -> Self {
        MonitorLink::new(DEFAULT_RING)
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
    fn extracts_the_five_tuple() {
        let f = udp_frame();
        let ev = FlowEvent::from_frame(7, EventType::Trace, 1, Some(2), &f, None);
        assert_eq!(ev.src, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(ev.dst, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!((ev.protocol, ev.src_port, ev.dst_port), (17, 1234, 53));
        assert_eq!(ev.verdict(), "FORWARDED");
    }

    #[test]
    fn truncated_frames_give_zeros_never_panic() {
        let f = udp_frame();
        for n in 0..f.len() {
            let ev = FlowEvent::from_frame(0, EventType::Drop, 0, None, &f[..n], None);
            assert!(ev.len as usize == n);
        }
    }

    #[test]
    fn a_full_ring_counts_lost_events() {
        let m = MonitorLink::new(2);
        let ev = FlowEvent::from_frame(0, EventType::Drop, 0, None, &[], None);
        for _ in 0..5 {
            m.push(ev);
        }
        assert_eq!(m.ring.len(), 2);
        assert_eq!(m.lost.get(), 3);
    }

    #[test]
    fn event_types_parse_by_name() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>().unwrap(), t);
        }
        assert!("bogus".parse::<EventType>().is_err());
    }
}

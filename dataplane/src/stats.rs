//! Per-worker counters.
//!
//! Every worker owns one [`WorkerStats`] and is its only writer; the control side reads it through
//! an `Arc` at any time and sums workers with [`StatsSnapshot`]'s `+=`. Counters use relaxed
//! load + store (no read-modify-write), which compiles to a plain `add` on x86: correct because
//! there is exactly one writer, and readers only need a value that was true at some point.
//!
//! Accounting rule: the worker counts every frame it receives exactly once, by its final fate,
//! in one *verdict counter*: [`WorkerStats::forwarded`] (handed to a TX ring),
//! [`WorkerStats::to_slowpath`] (handed to the slow path's queue) or one of
//! [`WorkerStats::drops`] (including `tx-ring-full` and `slowpath-full`, when the pipeline's
//! decision could not be carried out). So at rest `rx_packets` equals the sum of the verdict
//! counters. A frame answered with an ICMP time-exceeded error counts as the drop
//! [`DropReason::TtlExceeded`] (the original packet is dropped), and the answer, once on a TX
//! ring, as [`WorkerStats::icmp_errors_sent`]. The slow path's replies are not received frames:
//! each is counted once in [`WorkerStats::slowpath_replies_sent`] or
//! [`WorkerStats::slowpath_replies_dropped`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// A counter with one writer (its worker) and any number of readers (the control side). Relaxed
/// load+store, no RMW: costs a plain add on x86.
#[derive(Debug, Default)]
#[repr(transparent)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one. Only the owning worker may call this (single writer).
    #[inline(always)]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`. Only the owning worker may call this (single writer): two concurrent writers
    /// would lose updates, since this is a load followed by a store, not an atomic RMW.
    #[inline(always)]
    pub fn add(&self, n: u64) {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.wrapping_add(n), Ordering::Relaxed);
    }

    /// The current value, from any thread.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Back to zero. Only the owning worker may call this (single writer).
    pub fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

macro_rules! drop_reasons {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)*) => {
        /// Why a frame was dropped. Stable kebab-case names: the `reason` label of the Prometheus
        /// drop counter, the JSON keys of `xylem status` and the monitor's drop events.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason {
            $($(#[doc = $doc])* $variant,)*
        }

        impl DropReason {
            /// How many reasons there are (the length of [`WorkerStats::drops`]).
            pub const COUNT: usize = [$(DropReason::$variant),*].len();
            /// Every reason, in discriminant order: `ALL[r as usize] == r`.
            pub const ALL: [DropReason; Self::COUNT] = [$(DropReason::$variant),*];

            /// The stable kebab-case name of this reason.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(DropReason::$variant => $name,)*
                }
            }
        }
    };
}

drop_reasons! {
    /// The frame is shorter than an Ethernet header (14 bytes) but not empty.
    EthTruncated => "eth-truncated",
    /// The frame has no bytes at all.
    ZeroLength => "zero-length",
    /// The Ethernet payload is shorter than a minimal IPv4 header (20 bytes).
    Ipv4Truncated => "ipv4-truncated",
    /// The IP version nibble of an EtherType-IPv4 frame is not 4.
    Ipv4BadVersion => "ipv4-bad-version",
    /// IHL is below 5, or the header it announces extends beyond the frame.
    Ipv4BadIhl => "ipv4-bad-ihl",
    /// Total length is beyond the frame or below the header length.
    Ipv4BadTotalLength => "ipv4-bad-total-length",
    /// The IPv4 header checksum does not verify.
    Ipv4BadChecksum => "ipv4-bad-checksum",
    /// An ARP packet that is truncated or not Ethernet/IPv4 request or reply.
    ArpMalformed => "arp-malformed",
    /// A well-formed ARP packet whose target is not the gateway's IPv4 address.
    ArpNotForGateway => "arp-not-for-gateway",
    /// The destination MAC is neither the gateway's nor one the frame's protocol may use
    /// (broadcast for ARP, multicast for IPv6).
    NotForGateway => "not-for-gateway",
    /// An EtherType other than IPv4, ARP and IPv6 (this includes VLAN tags).
    UnsupportedEthertype => "unsupported-ethertype",
    /// IPv6 (and NDP): not handled yet.
    Ipv6Unsupported => "ipv6-unsupported",
    /// No host route for the IPv4 destination.
    NoRoute => "no-route",
    /// TTL expired in transit. Counted both when answered with ICMP time exceeded (then the
    /// verdict is `Forward` towards the source and `icmp_errors_sent` counts the answer) and when
    /// no answer is allowed (the packet is itself an ICMP error, or a non-initial fragment).
    TtlExceeded => "ttl-exceeded",
    /// TTL expired in transit and the source has no route, so no ICMP error can be sent.
    TtlExceededUnroutable => "ttl-exceeded-unroutable",
    /// TTL expired in transit, and its port has used up its rate of ICMP errors
    /// ([`crate::ratelimit`]), so none is sent.
    TtlExceededRateLimited => "ttl-exceeded-rate-limited",
    /// TTL expired but the frame buffer has no room for the ICMP error (capacity too small).
    IcmpNoRoom => "icmp-no-room",
    /// The slow-path queue was full.
    SlowPathFull => "slowpath-full",
    /// A frame for the slow path (ARP or IPv4 to the gateway) over its port's rate
    /// ([`crate::ratelimit`]): one pod flooding the gateway does not crowd out the others.
    SlowPathRateLimited => "slowpath-rate-limited",
    /// The TX ring of the egress port was full.
    TxRingFull => "tx-ring-full",
    /// Network policy: the direction is default-deny and no rule allows the flow (`full` mode).
    PolicyDenied => "policy-denied",
    /// Network policy: a deny rule (`ingressDeny`/`egressDeny`) matched (`full` mode).
    PolicyDenyRule => "policy-deny-rule",
    /// Network policy allowed a new flow but the conntrack table is full, and the flow's probe
    /// path holds no unanswered entry to evict.
    CtFull => "ct-full",
    /// Network policy allowed a new flow but the endpoint whose port it came from already has
    /// its limit of conntrack entries (`workers.ct_endpoint_limit`).
    CtEndpointLimit => "ct-endpoint-limit",
    /// A frame from a pod port whose source IP is not the endpoint's behind that port (or from
    /// a port with no endpoint).
    InvalidSourceIp => "invalid-source-ip",
    /// A frame whose source IP is the endpoint's behind its port but whose source MAC is not.
    InvalidSourceMac => "invalid-source-mac",
    /// An ARP frame whose sender (IP, MAC, or the Ethernet source) is not the endpoint behind
    /// the port it arrived on.
    ArpSpoofed => "arp-spoofed",
    /// A non-initial IPv4 fragment whose datagram's first fragment was not seen (not yet, or
    /// more than the fragment table's timeout ago, or its record was evicted): without its
    /// ports it cannot be judged, so it is dropped (`full` mode).
    FragNoHead => "frag-no-head",
    /// A new connection to a service's frontend, which has no backend that takes new
    /// connections: answered with a TCP RST or an ICMP port unreachable, built in the packet's
    /// own buffer (the verdict then sends that back; `full` mode).
    NoServiceBackend => "no-service-backend",
    /// A DNS message on a flow whose policy inspects DNS (`rules.dns`) that could not be
    /// parsed: truncated, a compression loop, a count larger than the message, an oversized
    /// TCP length prefix, or a TCP segment that does not hold whole messages (`full` mode).
    DnsMalformed => "dns-malformed",
    /// A packet for a peer whose traffic is encrypted, while no valid key exists for it: never
    /// sent in clear.
    NoKey => "no-key",
    /// An ESP packet whose ICV did not verify: a wrong key, or bytes altered on the way.
    EspAuthFailed => "esp-auth-failed",
    /// An ESP packet whose sequence number was seen before, or is older than the replay
    /// window (RFC 4303 §3.4.3).
    EspReplay => "esp-replay",
    /// An ESP packet whose SPI names no key held for its sender.
    EspUnknownSpi => "esp-unknown-spi",
    /// An ESP packet too short for its header, IV, trailer and ICV.
    EspTruncated => "esp-truncated",
    /// An authentic ESP packet whose trailer is malformed (padding, next header not IPv4), or
    /// whose inner packet is not a valid IPv4 packet from its sender's pods.
    EspBadPayload => "esp-bad-payload",
    /// An ESP packet from an address that is no encrypting peer's.
    EspUnknownPeer => "esp-unknown-peer",
    /// A packet in clear on the uplink from the pods of a peer whose traffic is encrypted: it
    /// must arrive as ESP.
    EspRequired => "esp-required",
    /// The SA's sequence numbers are spent (2^32 - 1 packets): it never wraps; a new key in the
    /// key file takes over.
    EspSeqExhausted => "esp-seq-exhausted",
    /// A packet too big to encapsulate within the uplink's MTU, never fragmented: with DF set,
    /// answered with an ICMP fragmentation needed naming the size that fits.
    EspTooBig => "esp-too-big",
    /// A packet for another node or the world whose next hop's MAC is not resolved yet (the
    /// slow path asks by ARP).
    NeighborUnresolved => "neighbor-unresolved",
    /// A packet for the world that cannot be masqueraded to the node's address: a fragment, an
    /// ICMP error, a service connection to a backend in the world, no free port for it, or a
    /// packet of a flow tracked before the world was reachable. Never sent with its pod source.
    SnatFailed => "snat-failed",
}

impl From<crate::policy::PolicyDropReason> for DropReason {
    #[inline]
    fn from(r: crate::policy::PolicyDropReason) -> Self {
        match r {
            crate::policy::PolicyDropReason::PolicyDenied => DropReason::PolicyDenied,
            crate::policy::PolicyDropReason::PolicyDenyRule => DropReason::PolicyDenyRule,
            crate::policy::PolicyDropReason::CtFull => DropReason::CtFull,
            crate::policy::PolicyDropReason::CtEndpointLimit => DropReason::CtEndpointLimit,
        }
    }
}

/// The kernel's counters of a worker's AF_XDP sockets ([`crate::io::KernelStats`]), summed over
/// its ports, open and closed. Named as the kernel names them (`struct xdp_statistics`), so
/// that they can be looked up; they count frames the pipeline never saw, so they are not
/// [`DropReason`]s and not in the verdict counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XskCounter {
    /// See [`crate::io::KernelStats::rx_dropped`].
    RxDropped,
    /// See [`crate::io::KernelStats::rx_ring_full`].
    RxRingFull,
    /// See [`crate::io::KernelStats::rx_fill_ring_empty_descs`].
    RxFillRingEmptyDescs,
    /// See [`crate::io::KernelStats::rx_invalid_descs`].
    RxInvalidDescs,
    /// See [`crate::io::KernelStats::tx_invalid_descs`].
    TxInvalidDescs,
}

impl XskCounter {
    /// How many there are (the length of [`WorkerStats::xsk`]).
    pub const COUNT: usize = 5;
    /// Every counter, in the order of [`crate::io::KernelStats::values`].
    pub const ALL: [XskCounter; Self::COUNT] = [
        XskCounter::RxDropped,
        XskCounter::RxRingFull,
        XskCounter::RxFillRingEmptyDescs,
        XskCounter::RxInvalidDescs,
        XskCounter::TxInvalidDescs,
    ];

    /// The kernel's name for it: the JSON key in `xylem status` and the Prometheus label.
    pub fn as_str(self) -> &'static str {
        match self {
            XskCounter::RxDropped => "rx_dropped",
            XskCounter::RxRingFull => "rx_ring_full",
            XskCounter::RxFillRingEmptyDescs => "rx_fill_ring_empty_descs",
            XskCounter::RxInvalidDescs => "rx_invalid_descs",
            XskCounter::TxInvalidDescs => "tx_invalid_descs",
        }
    }

    /// Whether each one it counts is a frame lost.
    pub fn is_loss(self) -> bool {
        self != XskCounter::RxFillRingEmptyDescs
    }
}

/// Per-worker counters, cache-line aligned, shared by Arc with the control side.
#[derive(Debug)]
#[repr(align(64))]
pub struct WorkerStats {
    /// Frames received (counted by the worker).
    pub rx_packets: Counter,
    /// Bytes received (counted by the worker).
    pub rx_bytes: Counter,
    /// Frames transmitted (counted by the worker).
    pub tx_packets: Counter,
    /// Bytes transmitted (counted by the worker).
    pub tx_bytes: Counter,
    /// Transit packets forwarded by the pipeline (verdict counter).
    pub forwarded: Counter,
    /// Bytes of the frames the pipeline forwarded (counted by the worker).
    pub forwarded_bytes: Counter,
    /// Frames handed to the slow path by the pipeline (verdict counter).
    pub to_slowpath: Counter,
    /// Partial TCP/UDP checksums (left by TX checksum offload) completed by the pipeline.
    pub checksum_completed: Counter,
    /// ICMP error messages built by the pipeline (time exceeded; port unreachable for a UDP
    /// datagram to a service with no backend).
    pub icmp_errors_sent: Counter,
    /// TCP resets built by the pipeline (a connection to a service with no backend).
    pub resets_sent: Counter,
    /// Drops by reason, indexed by `DropReason as usize` (verdict counters).
    pub drops: [Counter; DropReason::COUNT],
    /// Slow-path replies handed to a TX ring.
    pub slowpath_replies_sent: Counter,
    /// Slow-path replies that could not be sent (no free frame, no such port, TX ring full).
    pub slowpath_replies_dropped: Counter,
    /// Health-check probe frames of the slow path that conntrack and policy refused (not
    /// sent): a backend whose policy does not let the node in, or a full flow table.
    pub slowpath_probes_denied: Counter,
    /// RX batches processed (counted by the worker).
    pub batches: Counter,
    /// Polls that found work (counted by the worker).
    pub busy_polls: Counter,
    /// Polls that found nothing (counted by the worker).
    pub idle_polls: Counter,
    /// Wake-ups from a blocking wait (counted by the worker).
    pub wakeups: Counter,
    /// Times a realtime worker stayed busy for [`crate::worker::RT_BUSY_BUDGET_NS`] and returned
    /// to normal priority until its rings ran dry (counted by the worker).
    pub priority_drops: Counter,
    /// The kernel's counters of the worker's sockets, indexed by `XskCounter as usize`: read
    /// once a second while the worker runs, and once more when a port closes.
    pub xsk: [Counter; XskCounter::COUNT],
}

impl Default for WorkerStats {
    fn default() -> Self {
        Self {
            rx_packets: Counter::default(),
            rx_bytes: Counter::default(),
            tx_packets: Counter::default(),
            tx_bytes: Counter::default(),
            forwarded: Counter::default(),
            forwarded_bytes: Counter::default(),
            to_slowpath: Counter::default(),
            checksum_completed: Counter::default(),
            icmp_errors_sent: Counter::default(),
            resets_sent: Counter::default(),
            // Not `Default::default()`: arrays only derive it up to 32 elements.
            drops: std::array::from_fn(|_| Counter::default()),
            slowpath_replies_sent: Counter::default(),
            slowpath_replies_dropped: Counter::default(),
            slowpath_probes_denied: Counter::default(),
            batches: Counter::default(),
            busy_polls: Counter::default(),
            idle_polls: Counter::default(),
            wakeups: Counter::default(),
            priority_drops: Counter::default(),
            xsk: std::array::from_fn(|_| Counter::default()),
        }
    }
}

impl WorkerStats {
    /// Counts one drop for reason `r`.
    #[inline(always)]
    pub fn drop(&self, r: DropReason) {
        self.drops[r as usize].inc();
    }

    /// How many frames were dropped for reason `r`.
    pub fn drops_of(&self, r: DropReason) -> u64 {
        self.drops[r as usize].get()
    }

    /// A plain copy of every counter (each read individually; not one atomic snapshot).
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            rx_packets: self.rx_packets.get(),
            rx_bytes: self.rx_bytes.get(),
            tx_packets: self.tx_packets.get(),
            tx_bytes: self.tx_bytes.get(),
            forwarded: self.forwarded.get(),
            forwarded_bytes: self.forwarded_bytes.get(),
            to_slowpath: self.to_slowpath.get(),
            checksum_completed: self.checksum_completed.get(),
            icmp_errors_sent: self.icmp_errors_sent.get(),
            resets_sent: self.resets_sent.get(),
            drops: DropReason::ALL
                .iter()
                .map(|&r| (Cow::Borrowed(r.as_str()), self.drops_of(r)))
                .collect(),
            slowpath_replies_sent: self.slowpath_replies_sent.get(),
            slowpath_replies_dropped: self.slowpath_replies_dropped.get(),
            slowpath_probes_denied: self.slowpath_probes_denied.get(),
            batches: self.batches.get(),
            busy_polls: self.busy_polls.get(),
            idle_polls: self.idle_polls.get(),
            wakeups: self.wakeups.get(),
            priority_drops: self.priority_drops.get(),
            xsk: XskCounter::ALL
                .iter()
                .map(|&c| (Cow::Borrowed(c.as_str()), self.xsk[c as usize].get()))
                .collect(),
        }
    }
}

/// The values of a [`WorkerStats`] at one moment, as plain numbers (serializable, summable, and
/// read back from the agent's JSON by the CLI).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatsSnapshot {
    /// See [`WorkerStats::rx_packets`].
    pub rx_packets: u64,
    /// See [`WorkerStats::rx_bytes`].
    pub rx_bytes: u64,
    /// See [`WorkerStats::tx_packets`].
    pub tx_packets: u64,
    /// See [`WorkerStats::tx_bytes`].
    pub tx_bytes: u64,
    /// See [`WorkerStats::forwarded`].
    pub forwarded: u64,
    /// See [`WorkerStats::forwarded_bytes`].
    pub forwarded_bytes: u64,
    /// See [`WorkerStats::to_slowpath`].
    pub to_slowpath: u64,
    /// See [`WorkerStats::checksum_completed`].
    pub checksum_completed: u64,
    /// See [`WorkerStats::icmp_errors_sent`].
    pub icmp_errors_sent: u64,
    /// See [`WorkerStats::resets_sent`].
    #[serde(default)]
    pub resets_sent: u64,
    /// Drops keyed by [`DropReason::as_str`]; a snapshot taken from a [`WorkerStats`] has every
    /// reason, zeros included.
    // `Cow`: a snapshot taken from counters names its reasons without allocating, one read
    // back from JSON owns them.
    pub drops: BTreeMap<Cow<'static, str>, u64>,
    /// See [`WorkerStats::slowpath_replies_sent`].
    pub slowpath_replies_sent: u64,
    /// See [`WorkerStats::slowpath_replies_dropped`].
    pub slowpath_replies_dropped: u64,
    /// See [`WorkerStats::slowpath_probes_denied`].
    #[serde(default)]
    pub slowpath_probes_denied: u64,
    /// See [`WorkerStats::batches`].
    pub batches: u64,
    /// See [`WorkerStats::busy_polls`].
    pub busy_polls: u64,
    /// See [`WorkerStats::idle_polls`].
    pub idle_polls: u64,
    /// See [`WorkerStats::wakeups`].
    pub wakeups: u64,
    /// See [`WorkerStats::priority_drops`].
    pub priority_drops: u64,
    /// See [`WorkerStats::xsk`]; keyed by [`XskCounter::as_str`], zeros included.
    #[serde(default)]
    pub xsk: BTreeMap<Cow<'static, str>, u64>,
}

impl StatsSnapshot {
    /// The sum of the verdict counters: at rest, every frame received (`rx_packets`).
    pub fn verdicts(&self) -> u64 {
        self.forwarded + self.to_slowpath + self.total_drops()
    }

    /// The sum of all drop counters.
    pub fn total_drops(&self) -> u64 {
        self.drops.values().sum()
    }
}

impl std::ops::AddAssign<&StatsSnapshot> for StatsSnapshot {
    fn add_assign(&mut self, o: &StatsSnapshot) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
        self.forwarded += o.forwarded;
        self.forwarded_bytes += o.forwarded_bytes;
        self.to_slowpath += o.to_slowpath;
        self.checksum_completed += o.checksum_completed;
        self.icmp_errors_sent += o.icmp_errors_sent;
        self.resets_sent += o.resets_sent;
        for (k, v) in &o.drops {
            *self.drops.entry(k.clone()).or_insert(0) += v;
        }
        self.slowpath_replies_sent += o.slowpath_replies_sent;
        self.slowpath_replies_dropped += o.slowpath_replies_dropped;
        self.slowpath_probes_denied += o.slowpath_probes_denied;
        self.batches += o.batches;
        self.busy_polls += o.busy_polls;
        self.idle_polls += o.idle_polls;
        self.wakeups += o.wakeups;
        self.priority_drops += o.priority_drops;
        for (k, v) in &o.xsk {
            *self.xsk.entry(k.clone()).or_insert(0) += v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_discriminant_order_and_names_are_unique_kebab_case() {
        let mut seen = std::collections::HashSet::new();
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            let s = r.as_str();
            assert!(seen.insert(s), "duplicate name {s}");
            assert!(
                s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{s} is not kebab-case"
            );
        }
        assert_eq!(DropReason::COUNT, DropReason::ALL.len());
    }

    #[test]
    fn counters_and_snapshots_sum() {
        let a = WorkerStats::default();
        a.forwarded.add(3);
        a.drop(DropReason::NoRoute);
        a.drop(DropReason::NoRoute);
        assert_eq!(a.drops_of(DropReason::NoRoute), 2);
        let b = WorkerStats::default();
        b.forwarded.inc();
        b.drop(DropReason::TtlExceeded);
        let mut total = a.snapshot();
        total += &b.snapshot();
        assert_eq!(total.forwarded, 4);
        assert_eq!(total.drops["no-route"], 2);
        assert_eq!(total.drops["ttl-exceeded"], 1);
        assert_eq!(total.total_drops(), 3);
        assert_eq!(total.drops.len(), DropReason::COUNT);
        assert_eq!(std::mem::align_of::<WorkerStats>(), 64);
    }
}

//! Per-worker connection tracking: a fixed-capacity, preallocated open-addressing table.
//!
//! What it does:
//! - Tracks IPv4 TCP, UDP, ICMP echo and other-protocol flows under one canonical key, so the
//!   original direction and its replies find the same entry with **one** probe sequence.
//! - TCP state tracking with a timeout per state ([`CtTimeouts`]): SYN (`syn-sent`, `syn-recv`),
//!   established, FIN, RST; fixed timeouts for UDP, ICMP and other protocols.
//! - Bounded capacity ([`CtConfig::capacity`]): when the table holds that many live entries, a
//!   new flow is refused (the caller drops it as `ct-full`, counted in [`CtStats::full`]); the
//!   table never grows. Expired entries met on a probe are reused in place.
//! - Incremental garbage collection ([`Conntrack::gc`]) that does a bounded amount of work per
//!   call, so a worker can call it once per batch without ever stalling.
//! - Each entry remembers the policy revision it was last checked against (see
//!   [`crate::policy::decide`]), so a narrowed policy stops established flows on their next packet.
//!
//! What it does not do: it decides nothing about policy (that is [`crate::policy`]), reads no
//! clock (`now` is passed in, in nanoseconds), allocates nothing after [`Conntrack::new`], takes no
//! lock (it belongs to one worker) and does not validate TCP sequence numbers.
//!
//! # Layout
//! One slot is [`Conntrack::BYTES_PER_SLOT`] (32) bytes, two per cache line: the canonical
//! 5-tuple, state, flags, the policy revision (low 32 bits) and the expiry time. Slots are
//! `capacity × 4/3` (load ≤ 75 %), so a full table costs about 42.7 bytes per connection. They
//! are indexed by a seeded multiply-mix hash reduced with a multiply-shift (any slot count, not
//! only powers of two), probed linearly, and deleted with backward shift (no tombstones). Tables
//! of 2 MiB and more ask for transparent huge pages (`madvise`), to spare TLB misses.
//! [`Conntrack::prefetch`] lets a worker overlap the cache misses of a whole batch; the worker
//! finds each frame's key for it with [`FlowKey::of_frame`].

use std::net::Ipv4Addr;

/// IP protocol numbers the tracker knows.
pub mod proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
}

/// TCP flag bits as they appear in byte 13 of the TCP header.
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// A flow's 5-tuple as seen on one packet.
///
/// For TCP and UDP the ports are the transport ports. For ICMP echo request and reply both ports
/// hold the echo identifier (so a reply maps to its request); for other ICMP messages both are 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Source port (or ICMP echo identifier).
    pub sport: u16,
    /// Destination port (or ICMP echo identifier).
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
}

impl FlowKey {
    /// The same flow seen from the other side.
    #[inline]
    pub fn reversed(&self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }

    /// The key the policy stage will look up for the Ethernet frame `frame`, read without
    /// running the pipeline: for a worker to [`Conntrack::prefetch`] a batch's entries before
    /// deciding on them.
    ///
    /// It reads what the pipeline's policy stage reads, the same way (etherparse slices, then
    /// the TCP/UDP ports or the ICMP echo identifier within the IPv4 total length; ports 0 for a
    /// non-initial fragment or a header too short), and skips what cannot change the key: the
    /// destination MAC, the header checksum, the route. So for every frame whose packet the
    /// pipeline tracks, the key is the one [`crate::policy::decide`] looks up (the original
    /// direction as this packet sees it; [`Conntrack::prefetch`] normalises the direction).
    /// `None` for a frame that is not IPv4 or whose Ethernet or IPv4 header does not parse.
    /// Every read is bounds-checked: no input panics.
    ///
    /// (For an ICMP error, the pipeline first looks up the flow it quotes; this returns the
    /// error's own key, which is looked up second.)
    #[inline]
    pub fn of_frame(frame: &[u8]) -> Option<FlowKey> {
        use etherparse::{EtherType, Ethernet2Slice, Ipv4HeaderSlice};
        let eth = Ethernet2Slice::from_slice_without_fcs(frame).ok()?;
        if eth.ether_type() != EtherType::IPV4 {
            return None;
        }
        let l3 = eth.payload_slice();
        let h = Ipv4HeaderSlice::from_slice(l3).ok()?;
        let header_len = h.slice().len();
        let payload_len = usize::from(h.payload_len().ok()?);
        // The pipeline drops a packet whose total length goes beyond the frame.
        let l4 = l3.get(header_len..header_len + payload_len)?;
        // A non-initial fragment carries no L4 header.
        let later_fragment = h.fragments_offset().value() != 0;
        Some(FlowKey::from_l4(
            h.source(),
            h.destination(),
            h.protocol().0,
            l4,
            later_fragment,
        ))
    }

    /// The 5-tuple of a packet whose L4 bytes start at `l4` (`no_l4`: a non-initial fragment,
    /// which has none): TCP/UDP ports; for ICMP echo request and reply the identifier as both
    /// ports; otherwise (or when too short) ports 0. The policy stage and [`Self::of_frame`]
    /// both build their keys here, so a prefetch always finds the entry the stage looks up.
    #[inline(always)]
    pub fn from_l4(src: [u8; 4], dst: [u8; 4], protocol: u8, l4: &[u8], no_l4: bool) -> FlowKey {
        let mut key = FlowKey {
            src: Ipv4Addr::from(src),
            dst: Ipv4Addr::from(dst),
            sport: 0,
            dport: 0,
            proto: protocol,
        };
        if no_l4 {
            return key;
        }
        match protocol {
            proto::TCP | proto::UDP => {
                if let Some(p) = l4.first_chunk::<4>() {
                    key.sport = u16::from_be_bytes([p[0], p[1]]);
                    key.dport = u16::from_be_bytes([p[2], p[3]]);
                }
            }
            proto::ICMP => {
                // Echo reply (0) and echo request (8): the identifier, at bytes 4..6, as both
                // ports.
                if let (Some(0 | 8), Some(id)) = (l4.first(), l4.get(4..6)) {
                    let id = u16::from_be_bytes([id[0], id[1]]);
                    key.sport = id;
                    key.dport = id;
                }
            }
            _ => {}
        }
        key
    }
}

/// Timeouts per state, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    /// TCP before the handshake completes (`syn-sent`, `syn-recv`).
    pub tcp_syn: u64,
    /// TCP established.
    pub tcp_established: u64,
    /// TCP after a FIN in either direction.
    pub tcp_fin: u64,
    /// TCP after a RST.
    pub tcp_rst: u64,
    /// UDP.
    pub udp: u64,
    /// ICMP echo and other ICMP.
    pub icmp: u64,
    /// Any other IP protocol.
    pub other: u64,
}

const SEC: u64 = 1_000_000_000;

impl Default for CtTimeouts {
    /// Cilium's defaults: SYN 60 s, established 6 h, FIN 10 s, RST 10 s, UDP/ICMP/other 60 s.
    fn default() -> Self {
        Self {
            tcp_syn: 60 * SEC,
            tcp_established: 21_600 * SEC,
            tcp_fin: 10 * SEC,
            tcp_rst: 10 * SEC,
            udp: 60 * SEC,
            icmp: 60 * SEC,
            other: 60 * SEC,
        }
    }
}

/// How to build a [`Conntrack`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtConfig {
    /// The most live entries the table holds; further new flows are refused (`ct-full`).
    pub capacity: usize,
    /// Per-state timeouts.
    pub timeouts: CtTimeouts,
    /// Hash seed. Use a random value per worker so flows cannot be crafted to collide; tests may
    /// use a constant.
    pub seed: u64,
}

impl Default for CtConfig {
    fn default() -> Self {
        Self {
            capacity: 65_536,
            timeouts: CtTimeouts::default(),
            seed: 0x5eed_0fc0_ffee,
        }
    }
}

/// The state of a tracked flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum CtState {
    /// TCP: the originator sent a SYN (or the first packet seen was mid-stream); no reply yet.
    SynSent = 1,
    /// TCP: the responder answered SYN-ACK; waiting for the final ACK.
    SynRecv = 2,
    /// TCP: handshake complete (or traffic seen both ways).
    Established = 3,
    /// TCP: a FIN was seen.
    Fin = 4,
    /// TCP: a RST was seen.
    Rst = 5,
    /// UDP.
    Udp = 6,
    /// ICMP.
    Icmp = 7,
    /// Another IP protocol.
    Other = 8,
}

impl CtState {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::SynSent,
            2 => Self::SynRecv,
            3 => Self::Established,
            4 => Self::Fin,
            5 => Self::Rst,
            6 => Self::Udp,
            7 => Self::Icmp,
            8 => Self::Other,
            _ => return None,
        })
    }

    /// The stable kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SynSent => "syn-sent",
            Self::SynRecv => "syn-recv",
            Self::Established => "established",
            Self::Fin => "fin",
            Self::Rst => "rst",
            Self::Udp => "udp",
            Self::Icmp => "icmp",
            Self::Other => "other",
        }
    }
}

/// Counters of one tracker (single writer: the worker that owns it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CtStats {
    /// Entries created.
    pub created: u64,
    /// New flows refused because the table was full (`ct-full`).
    pub full: u64,
    /// Expired entries removed by [`Conntrack::gc`].
    pub gc_removed: u64,
    /// Expired entries reused in place by a new flow.
    pub reused: u64,
    /// Entries removed because the current policy no longer allows them.
    pub policy_removed: u64,
}

/// Asks the kernel for transparent huge pages on the (not yet touched) capacity of `v`: a large
/// table then costs far fewer TLB misses per lookup. Best effort: failure changes nothing.
fn advise_huge_pages(v: &Vec<Slot>) {
    const PAGE: usize = 4096;
    let bytes = v.capacity() * std::mem::size_of::<Slot>();
    if bytes < 2 * 1024 * 1024 {
        return;
    }
    let start = (v.as_ptr() as usize).next_multiple_of(PAGE);
    let end = (v.as_ptr() as usize + bytes) & !(PAGE - 1);
    if end > start {
        // SAFETY: `[start, end)` lies within the allocation `v` owns (rounded inwards to page
        // boundaries); MADV_HUGEPAGE only changes how the kernel backs those pages, never their
        // contents or validity, and the result is deliberately ignored.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

fn timeout_of(t: &CtTimeouts, s: CtState) -> u64 {
    match s {
        CtState::SynSent | CtState::SynRecv => t.tcp_syn,
        CtState::Established => t.tcp_established,
        CtState::Fin => t.tcp_fin,
        CtState::Rst => t.tcp_rst,
        CtState::Udp => t.udp,
        CtState::Icmp => t.icmp,
        CtState::Other => t.other,
    }
}

const EMPTY: u8 = 0;
/// The canonical side `a` originated the flow.
const F_ORIG_A: u8 = 1;
/// A packet was seen in the reply direction.
const F_SEEN_REPLY: u8 = 2;

/// One slot: 32 bytes, aligned so that a slot never straddles two cache lines.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(32))]
struct Slot {
    a: u32,
    b: u32,
    ap: u16,
    bp: u16,
    proto: u8,
    state: u8,
    flags: u8,
    _pad: u8,
    revision: u32,
    expires: u64,
}

/// The canonical form of a key: the (address, port) pairs in ascending order, and whether the
/// packet went from `a` to `b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Canon {
    a: u32,
    b: u32,
    ap: u16,
    bp: u16,
    proto: u8,
}

#[inline]
fn canon(k: &FlowKey) -> (Canon, bool) {
    let s = (k.src.to_bits(), k.sport);
    let d = (k.dst.to_bits(), k.dport);
    if s <= d {
        (
            Canon {
                a: s.0,
                b: d.0,
                ap: s.1,
                bp: d.1,
                proto: k.proto,
            },
            true,
        )
    } else {
        (
            Canon {
                a: d.0,
                b: s.0,
                ap: d.1,
                bp: s.1,
                proto: k.proto,
            },
            false,
        )
    }
}

impl Slot {
    #[inline]
    fn is(&self, c: &Canon) -> bool {
        self.a == c.a
            && self.b == c.b
            && self.ap == c.ap
            && self.bp == c.bp
            && self.proto == c.proto
    }

    fn canon(&self) -> Canon {
        Canon {
            a: self.a,
            b: self.b,
            ap: self.ap,
            bp: self.bp,
            proto: self.proto,
        }
    }

    /// The key in the flow's original direction.
    fn orig_key(&self) -> FlowKey {
        let (a, b) = (Ipv4Addr::from_bits(self.a), Ipv4Addr::from_bits(self.b));
        if self.flags & F_ORIG_A != 0 {
            FlowKey {
                src: a,
                dst: b,
                sport: self.ap,
                dport: self.bp,
                proto: self.proto,
            }
        } else {
            FlowKey {
                src: b,
                dst: a,
                sport: self.bp,
                dport: self.ap,
                proto: self.proto,
            }
        }
    }
}

/// A tracked entry as listed by [`Conntrack::entries`] (for `xylem ct list`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CtEntry {
    /// The flow in its original direction.
    pub orig: FlowKey,
    /// Its state.
    pub state: CtState,
    /// Whether a reply was seen.
    pub seen_reply: bool,
    /// Nanoseconds until it expires (0 if already expired, awaiting GC).
    pub expires_in_ns: u64,
    /// The low 32 bits of the policy revision it was last checked against.
    pub policy_revision: u32,
}

impl serde::Serialize for FlowKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("FlowKey", 5)?;
        st.serialize_field("src", &self.src)?;
        st.serialize_field("dst", &self.dst)?;
        st.serialize_field("sport", &self.sport)?;
        st.serialize_field("dport", &self.dport)?;
        st.serialize_field("proto", &self.proto)?;
        st.end()
    }
}

/// What a lookup found (crate-internal: [`crate::policy::decide`] drives the tracker).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    /// A live entry at `slot`; `orig` is whether the packet goes in the original direction.
    Hit { slot: usize, orig: bool },
    /// No live entry; a new one can go at `slot` (`reuse`: it holds an expired entry).
    Vacant { slot: usize, reuse: bool },
    /// No live entry and no room.
    Full,
}

/// A per-worker connection tracker. See the module documentation.
#[derive(Debug)]
pub struct Conntrack {
    slots: Box<[Slot]>,
    capacity: usize,
    len: usize,
    seed: u64,
    timeouts: CtTimeouts,
    gc_cursor: usize,
    stats: CtStats,
}

impl Conntrack {
    /// Bytes of one slot.
    pub const BYTES_PER_SLOT: usize = std::mem::size_of::<Slot>();

    /// A tracker holding at most `config.capacity` live entries; all memory is allocated here.
    pub fn new(config: &CtConfig) -> Self {
        let capacity = config.capacity.max(1);
        let n = capacity + capacity.div_ceil(3) + 1;
        let mut slots: Vec<Slot> = Vec::with_capacity(n);
        advise_huge_pages(&slots);
        slots.resize(n, Slot::default());
        Self {
            slots: slots.into_boxed_slice(),
            capacity,
            len: 0,
            seed: config.seed,
            timeouts: config.timeouts,
            gc_cursor: 0,
            stats: CtStats::default(),
        }
    }

    /// Live (and expired, not yet collected) entries.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table holds no entry.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The configured capacity.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Total bytes of the slot array.
    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * Self::BYTES_PER_SLOT
    }

    /// Bytes per tracked connection when the table is full: `memory_bytes / capacity`.
    pub fn bytes_per_entry(&self) -> f64 {
        self.memory_bytes() as f64 / self.capacity as f64
    }

    /// The counters.
    #[inline]
    pub fn stats(&self) -> &CtStats {
        &self.stats
    }

    /// The timeouts in force.
    pub fn timeouts(&self) -> &CtTimeouts {
        &self.timeouts
    }

    /// Starts loading the cache lines where `key`'s entry lives (either direction). Call it for
    /// every packet of a batch before calling [`crate::policy::decide`] on them: the memory
    /// accesses of the batch then overlap instead of each waiting for DRAM in turn. A hint
    /// only: it changes no state and may do nothing on other architectures.
    ///
    /// Two lines: the home slot's and the next one. At the table's full load (75 %) a lookup
    /// that hits probes 2.5 slots on average, so it often ends on the next line; prefetching
    /// that line too took the worker benchmark at 1,000,000 connections from a median of 97 to
    /// 77 ns/packet.
    #[inline]
    pub fn prefetch(&self, key: &FlowKey) {
        let (c, _) = canon(key);
        let home = self.home(&c);
        // Two slots on: the next line whether `home` starts its line or ends it.
        let next = if home + 2 < self.slots.len() {
            home + 2
        } else {
            0
        };
        for i in [home, next] {
            let slot: *const Slot = &self.slots[i];
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
                // SAFETY: SSE is part of the x86_64 baseline, so the target feature is present;
                // `slot` points into `self.slots`, and a prefetch never faults or changes
                // memory.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(slot.cast()) };
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = slot;
        }
    }

    /// Removes every entry (`xylem ct flush`).
    pub fn flush(&mut self) {
        self.slots.fill(Slot::default());
        self.len = 0;
        self.gc_cursor = 0;
    }

    /// Every entry (live or expired but not yet collected), for listing.
    pub fn entries(&self, now: u64) -> impl Iterator<Item = CtEntry> + '_ {
        self.slots.iter().filter_map(move |s| {
            Some(CtEntry {
                state: CtState::from_u8(s.state)?,
                orig: s.orig_key(),
                seen_reply: s.flags & F_SEEN_REPLY != 0,
                expires_in_ns: s.expires.saturating_sub(now),
                policy_revision: s.revision,
            })
        })
    }

    /// The live entry of `key` (either direction), if any: its state and whether `key` is the
    /// original direction.
    pub fn get(&self, now: u64, key: &FlowKey) -> Option<(CtState, bool)> {
        let (c, fwd) = canon(key);
        let mut i = self.home(&c);
        loop {
            let s = &self.slots[i];
            if s.state == EMPTY {
                return None;
            }
            if s.is(&c) {
                if now >= s.expires {
                    return None;
                }
                let orig = fwd == (s.flags & F_ORIG_A != 0);
                return Some((CtState::from_u8(s.state)?, orig));
            }
            i = self.next(i);
        }
    }

    /// Removes expired entries, examining at most about `budget` slots (a removal counts the
    /// entries it shifts back). Returns how many entries it removed. Call it once per batch with
    /// a small budget (e.g. 64): a full sweep then takes `slots / budget` batches.
    pub fn gc(&mut self, now: u64, budget: usize) -> usize {
        let n = self.slots.len();
        let mut work = 0;
        let mut removed = 0;
        while work < budget && self.len > 0 {
            let i = self.gc_cursor;
            let s = &self.slots[i];
            if s.state != EMPTY && now >= s.expires {
                work += self.remove_at(i);
                removed += 1;
                // Slot `i` may now hold an entry shifted back: look at it again.
                continue;
            }
            self.gc_cursor = if i + 1 == n { 0 } else { i + 1 };
            work += 1;
        }
        self.stats.gc_removed += removed as u64;
        removed
    }

    #[inline]
    fn hash(&self, c: &Canon) -> u64 {
        let k1 = ((c.a as u64) << 32) | c.b as u64;
        let k2 = ((c.ap as u64) << 32) | ((c.bp as u64) << 8) | c.proto as u64;
        let h = (k1 ^ self.seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let h = (h.rotate_left(29) ^ k2).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        h ^ (h >> 31)
    }

    #[inline]
    fn home(&self, c: &Canon) -> usize {
        ((self.hash(c) as u128 * self.slots.len() as u128) >> 64) as usize
    }

    #[inline]
    fn next(&self, i: usize) -> usize {
        if i + 1 == self.slots.len() { 0 } else { i + 1 }
    }

    /// Finds `key`'s live entry, or where a new one would go.
    #[inline]
    pub(crate) fn probe(&self, now: u64, key: &FlowKey) -> Probe {
        let (c, fwd) = canon(key);
        let mut i = self.home(&c);
        let mut expired: Option<usize> = None;
        loop {
            let s = &self.slots[i];
            if s.state == EMPTY {
                break;
            }
            if s.is(&c) {
                if now < s.expires {
                    return Probe::Hit {
                        slot: i,
                        orig: fwd == (s.flags & F_ORIG_A != 0),
                    };
                }
                // The same flow, expired: start it again in place.
                return Probe::Vacant {
                    slot: i,
                    reuse: true,
                };
            }
            if expired.is_none() && now >= s.expires {
                expired = Some(i);
            }
            i = self.next(i);
        }
        match expired {
            Some(slot) => Probe::Vacant { slot, reuse: true },
            None if self.len < self.capacity => Probe::Vacant {
                slot: i,
                reuse: false,
            },
            None => Probe::Full,
        }
    }

    /// Counts a refused new flow.
    #[inline]
    pub(crate) fn count_full(&mut self) {
        self.stats.full += 1;
    }

    /// Creates the entry of `key` (original direction) at a slot returned by [`Self::probe`].
    pub(crate) fn insert(
        &mut self,
        now: u64,
        probe_slot: usize,
        reuse: bool,
        key: &FlowKey,
        tcp: u8,
        revision: u64,
    ) {
        let (c, fwd) = canon(key);
        if reuse {
            self.stats.reused += 1;
        } else {
            self.len += 1;
        }
        self.stats.created += 1;
        let state = match key.proto {
            proto::TCP if tcp & tcp_flags::RST != 0 => CtState::Rst,
            proto::TCP if tcp & tcp_flags::FIN != 0 => CtState::Fin,
            proto::TCP => CtState::SynSent,
            proto::UDP => CtState::Udp,
            proto::ICMP => CtState::Icmp,
            _ => CtState::Other,
        };
        self.slots[probe_slot] = Slot {
            a: c.a,
            b: c.b,
            ap: c.ap,
            bp: c.bp,
            proto: c.proto,
            state: state as u8,
            flags: if fwd { F_ORIG_A } else { 0 },
            _pad: 0,
            revision: revision as u32,
            expires: now + self.timeout(state),
        };
    }

    fn timeout(&self, s: CtState) -> u64 {
        timeout_of(&self.timeouts, s)
    }

    /// Advances the entry at `slot` for a packet in direction `orig` with TCP flags `tcp`, and
    /// refreshes its expiry.
    #[inline]
    pub(crate) fn update(&mut self, now: u64, slot: usize, orig: bool, tcp: u8) {
        use tcp_flags::*;
        let timeouts = self.timeouts;
        let s = &mut self.slots[slot];
        if !orig {
            s.flags |= F_SEEN_REPLY;
        }
        let cur = s.state;
        let next = if cur >= CtState::Udp as u8 {
            cur
        } else if tcp & RST != 0 {
            CtState::Rst as u8
        } else if cur == CtState::Rst as u8 {
            cur
        } else if tcp & FIN != 0 || cur == CtState::Fin as u8 {
            CtState::Fin as u8
        } else if cur == CtState::SynSent as u8 && !orig {
            if tcp & SYN != 0 {
                CtState::SynRecv as u8
            } else {
                // Picked up mid-stream: traffic both ways.
                CtState::Established as u8
            }
        } else if cur == CtState::SynRecv as u8 && orig && tcp & (SYN | ACK) == ACK {
            CtState::Established as u8
        } else {
            cur
        };
        s.state = next;
        // Only RST and an already-closing state keep their original deadline; everything else
        // refreshes.
        if !(next == CtState::Rst as u8 && cur == CtState::Rst as u8) {
            let st = CtState::from_u8(next).unwrap_or(CtState::Other);
            s.expires = now + timeout_of(&timeouts, st);
        }
    }

    /// Whether a TCP SYN (without ACK) on the entry at `slot` starts a new connection reusing
    /// the tuple (the old one closing or closed).
    #[inline]
    pub(crate) fn is_closing(&self, slot: usize) -> bool {
        let st = self.slots[slot].state;
        st == CtState::Fin as u8 || st == CtState::Rst as u8
    }

    /// The policy revision (low 32 bits) the entry at `slot` was checked against.
    #[inline]
    pub(crate) fn revision(&self, slot: usize) -> u32 {
        self.slots[slot].revision
    }

    /// Records that the entry at `slot` is allowed by policy `revision`.
    #[inline]
    pub(crate) fn set_revision(&mut self, slot: usize, revision: u64) {
        self.slots[slot].revision = revision as u32;
    }

    /// The original-direction key of the entry at `slot`.
    pub(crate) fn orig_key(&self, slot: usize) -> FlowKey {
        self.slots[slot].orig_key()
    }

    /// Removes the entry at `slot` because policy no longer allows it.
    pub(crate) fn remove_for_policy(&mut self, slot: usize) {
        self.remove_at(slot);
        self.stats.policy_removed += 1;
    }

    /// Removes the entry at `i` by backward shift. Returns the number of slots touched (≥ 1).
    fn remove_at(&mut self, mut i: usize) -> usize {
        let n = self.slots.len();
        self.slots[i].state = EMPTY;
        self.len -= 1;
        let mut j = i;
        let mut touched = 1;
        loop {
            j = self.next(j);
            touched += 1;
            let s = self.slots[j];
            if s.state == EMPTY {
                break;
            }
            let h = self.home(&s.canon());
            // Move `s` back to `i` if `i` lies cyclically within [h, j).
            let dist_hj = (j + n - h) % n;
            let dist_ij = (j + n - i) % n;
            if dist_hj >= dist_ij {
                self.slots[i] = s;
                self.slots[j].state = EMPTY;
                i = j;
            }
        }
        touched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(capacity: usize) -> CtConfig {
        CtConfig {
            capacity,
            timeouts: CtTimeouts::default(),
            seed: 1,
        }
    }

    fn key(i: u32, sport: u16, dport: u16, proto: u8) -> FlowKey {
        FlowKey {
            src: Ipv4Addr::from_bits(0x0a00_0000 | i),
            dst: Ipv4Addr::new(10, 1, 0, 1),
            sport,
            dport,
            proto,
        }
    }

    fn add(ct: &mut Conntrack, now: u64, k: &FlowKey) -> bool {
        match ct.probe(now, k) {
            Probe::Vacant { slot, reuse } => {
                ct.insert(now, slot, reuse, k, tcp_flags::SYN, 1);
                true
            }
            Probe::Hit { .. } => true,
            Probe::Full => {
                ct.count_full();
                false
            }
        }
    }

    #[test]
    fn slot_is_32_bytes() {
        assert_eq!(Conntrack::BYTES_PER_SLOT, 32);
        let ct = Conntrack::new(&cfg(3000));
        assert!(ct.bytes_per_entry() < 43.0, "{}", ct.bytes_per_entry());
    }

    #[test]
    fn both_directions_hit_one_entry() {
        let mut ct = Conntrack::new(&cfg(16));
        let k = key(5, 40000, 80, proto::TCP);
        assert!(add(&mut ct, 0, &k));
        assert!(matches!(ct.probe(1, &k), Probe::Hit { orig: true, .. }));
        assert!(matches!(
            ct.probe(1, &k.reversed()),
            Probe::Hit { orig: false, .. }
        ));
        assert_eq!(ct.get(1, &k.reversed()), Some((CtState::SynSent, false)));
        assert_eq!(ct.entries(1).next().unwrap().orig, k);
    }

    #[test]
    fn full_refuses_and_counts_then_gc_frees() {
        let mut ct = Conntrack::new(&cfg(100));
        for i in 0..100 {
            assert!(add(&mut ct, 0, &key(i, 1, 80, proto::TCP)));
        }
        assert!(!add(&mut ct, 0, &key(1000, 1, 80, proto::TCP)));
        assert_eq!(ct.stats().full, 1);
        assert_eq!(ct.len(), 100);
        // After the SYN timeout everything is collectable, in bounded steps.
        let later = CtTimeouts::default().tcp_syn + 1;
        let mut removed = 0;
        let mut calls = 0;
        while !ct.is_empty() {
            let r = ct.gc(later, 16);
            removed += r;
            calls += 1;
            assert!(r <= 16);
            assert!(calls < 1000);
        }
        assert_eq!(removed, 100);
        assert!(add(&mut ct, later, &key(1000, 1, 80, proto::TCP)));
    }

    #[test]
    fn expired_entries_are_reused_on_insert() {
        let mut ct = Conntrack::new(&cfg(10));
        for i in 0..10 {
            assert!(add(&mut ct, 0, &key(i, 1, 53, proto::UDP)));
        }
        let later = CtTimeouts::default().udp;
        // Full, but every entry is expired: a new flow reuses a slot on its probe path or the
        // table is full for it. Run GC a little and it must succeed.
        let k = key(77, 1, 53, proto::UDP);
        if !add(&mut ct, later, &k) {
            ct.gc(later, 1000);
            assert!(add(&mut ct, later, &k));
        }
        assert!(ct.get(later, &k).is_some());
    }

    #[test]
    fn deletion_keeps_every_other_entry_reachable() {
        let mut ct = Conntrack::new(&cfg(2000));
        let keys: Vec<_> = (0..2000).map(|i| key(i, 7, 80, proto::UDP)).collect();
        for (n, k) in keys.iter().enumerate() {
            // Half expire at t=60s, half at t=120s.
            let now = if n % 2 == 0 { 0 } else { 60 * SEC };
            assert!(add(&mut ct, now, k));
        }
        let t = 60 * SEC + 1;
        while ct.len() > 1000 {
            ct.gc(t, 50);
        }
        for (n, k) in keys.iter().enumerate() {
            assert_eq!(ct.get(t, k).is_some(), n % 2 == 1, "{n}");
        }
    }

    /// Random inserts, refreshes and bounded GC against a model: every key the model says is
    /// live must be found, every other must not (backward-shift deletion and slot reuse keep
    /// probe chains intact).
    #[test]
    fn matches_a_model_under_churn() {
        let mut ct = Conntrack::new(&cfg(500));
        let mut model: std::collections::HashMap<FlowKey, u64> = Default::default();
        let udp = CtTimeouts::default().udp;
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut now = 0u64;
        for step in 0..20_000 {
            now += next() % (udp / 50);
            let k = key((next() % 900) as u32, (next() % 3) as u16, 53, proto::UDP);
            match ct.probe(now, &k) {
                Probe::Hit { slot, orig } => {
                    ct.update(now, slot, orig, 0);
                    model.insert(k, now + udp);
                }
                Probe::Vacant { slot, reuse } => {
                    ct.insert(now, slot, reuse, &k, 0, 1);
                    model.insert(k, now + udp);
                }
                Probe::Full => ct.count_full(),
            }
            if step % 7 == 0 {
                ct.gc(now, (next() % 40) as usize);
            }
            if step % 1000 == 0 {
                for (k, &exp) in &model {
                    assert_eq!(ct.get(now, k).is_some(), now < exp, "step {step} {k:?}");
                }
                let live = model.values().filter(|&&e| now < e).count();
                assert!(ct.len() >= live && ct.len() <= ct.capacity());
            }
        }
        assert!(
            ct.stats().gc_removed > 0 && ct.stats().reused > 0,
            "{:?}",
            ct.stats()
        );
    }

    /// Frames for [`FlowKey::of_frame`]: built with etherparse, from 10.0.0.10 to 10.0.0.11
    /// through the gateway's MAC.
    mod frames {
        use etherparse::PacketBuilder;

        pub const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
        pub const A: [u8; 4] = [10, 0, 0, 10];
        pub const B: [u8; 4] = [10, 0, 0, 11];

        fn eth() -> etherparse::PacketBuilderStep<etherparse::Ethernet2Header> {
            PacketBuilder::ethernet2([2, 0, 0, 0, 0, 10], GW_MAC)
        }

        pub fn udp(sport: u16, dport: u16) -> Vec<u8> {
            let mut v = Vec::new();
            eth()
                .ipv4(A, B, 64)
                .udp(sport, dport)
                .write(&mut v, &[7; 20])
                .unwrap();
            v
        }

        pub fn tcp_syn(sport: u16, dport: u16) -> Vec<u8> {
            let mut v = Vec::new();
            eth()
                .ipv4(A, B, 64)
                .tcp(sport, dport, 1, 64240)
                .syn()
                .write(&mut v, &[])
                .unwrap();
            v
        }

        pub fn echo_request(id: u16) -> Vec<u8> {
            let mut v = Vec::new();
            eth()
                .ipv4(A, B, 64)
                .icmpv4_echo_request(id, 1)
                .write(&mut v, &[0; 16])
                .unwrap();
            v
        }

        /// A UDP frame whose IPv4 header carries a non-zero fragment offset.
        pub fn later_fragment() -> Vec<u8> {
            let mut f = udp(1, 2);
            f[14 + 6..14 + 8].copy_from_slice(&0x0010u16.to_be_bytes());
            let ip = &mut f[14..34];
            ip[10..12].fill(0);
            let c = crate::checksum::checksum(ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f
        }
    }

    /// Runs the pipeline on `frame` in `Full` mode (no policy: everything allowed) with an
    /// empty tracker, and returns the key of the entry it created, if any.
    fn key_decide_inserts(frame: &[u8]) -> Option<FlowKey> {
        use crate::pipeline::{Frame, process};
        use crate::tables::{Gateway, MacAddr, Mode, Neighbor, Tables};
        let mut t = Tables::new(
            1,
            Mode::Full,
            Gateway {
                mac: MacAddr(frames::GW_MAC),
                ipv4: Ipv4Addr::new(10, 0, 0, 1),
            },
        );
        t.add_route(
            Ipv4Addr::from(frames::B),
            Neighbor {
                port: 1,
                mac: MacAddr([2, 0, 0, 0, 0, 11]),
            },
        )
        .unwrap();
        let mut ct = Conntrack::new(&cfg(16));
        let mut buf = vec![0u8; 2048];
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        process(1, 0, &mut Frame::new(&mut buf, n), &t, &mut ct);
        ct.entries(1).next().map(|e| e.orig)
    }

    #[test]
    fn the_frame_key_is_the_key_decide_inserts() {
        let cases = [
            (frames::udp(40000, 53), Some((40000, 53, proto::UDP))),
            (frames::tcp_syn(40001, 80), Some((40001, 80, proto::TCP))),
            (
                frames::echo_request(0x4242),
                Some((0x4242, 0x4242, proto::ICMP)),
            ),
            (frames::later_fragment(), Some((0, 0, proto::UDP))),
        ];
        for (f, want) in cases {
            let got = FlowKey::of_frame(&f);
            assert_eq!(got.map(|k| (k.sport, k.dport, k.proto)), want, "{f:02x?}");
            let k = got.unwrap();
            assert_eq!((k.src.octets(), k.dst.octets()), (frames::A, frames::B));
            assert_eq!(key_decide_inserts(&f), Some(k), "{f:02x?}");
        }
        // Not IPv4: no key.
        let mut arp = frames::udp(1, 2);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(FlowKey::of_frame(&arp), None);
    }

    #[test]
    fn truncated_frames_never_panic() {
        for f in [
            frames::udp(1, 2),
            frames::tcp_syn(3, 4),
            frames::echo_request(5),
        ] {
            for n in 0..f.len() {
                let k = FlowKey::of_frame(&f[..n]);
                // Cut inside the IPv4 packet: its total length goes beyond the frame, so the
                // pipeline drops it and there is nothing to prefetch.
                assert_eq!(k, None, "{n} of {}", f.len());
            }
            assert!(FlowKey::of_frame(&f).is_some());
        }
    }

    /// Random corruptions of real frames: never a panic, and whenever the pipeline tracks the
    /// corrupted packet, it tracks it under the key `of_frame` read.
    #[test]
    fn corrupted_frames_never_panic_and_tracked_ones_match() {
        let bases = [
            frames::udp(1000, 2000),
            frames::tcp_syn(3000, 4000),
            frames::echo_request(77),
        ];
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut tracked = 0;
        for i in 0..20_000 {
            let mut f = bases[i % bases.len()].clone();
            // Corrupt 1 to 3 bytes of the first 50 (headers), sometimes fixing the IPv4
            // checksum so the pipeline gets past it, and sometimes cut the frame.
            for _ in 0..1 + next() % 3 {
                let at = (next() % 50) as usize;
                f[at] = next() as u8;
            }
            if next() % 2 == 0 && f.len() >= 34 {
                let ihl = usize::from(f[14] & 0x0f) * 4;
                if (20..=60).contains(&ihl) && f.len() >= 14 + ihl {
                    f[24..26].fill(0);
                    let c = crate::checksum::checksum(&f[14..14 + ihl]);
                    f[24..26].copy_from_slice(&c.to_be_bytes());
                }
            }
            if next() % 8 == 0 {
                f.truncate((next() % f.len() as u64) as usize);
            }
            let key = FlowKey::of_frame(&f);
            if let Some(inserted) = key_decide_inserts(&f) {
                tracked += 1;
                assert_eq!(key, Some(inserted), "{f:02x?}");
            }
        }
        assert!(
            tracked > 1000,
            "only {tracked} corrupted frames were tracked"
        );
    }

    #[test]
    fn tcp_states_and_timeouts() {
        use tcp_flags::*;
        let t = CtTimeouts::default();
        let mut ct = Conntrack::new(&cfg(8));
        let k = key(1, 1234, 80, proto::TCP);
        let Probe::Vacant { slot, reuse } = ct.probe(0, &k) else {
            panic!()
        };
        ct.insert(0, slot, reuse, &k, SYN, 1);
        assert_eq!(ct.get(0, &k), Some((CtState::SynSent, true)));
        ct.update(1, slot, false, SYN | ACK);
        assert_eq!(ct.get(1, &k).unwrap().0, CtState::SynRecv);
        // Still the SYN timeout.
        assert!(ct.get(1 + t.tcp_syn, &k).is_none());
        ct.update(2, slot, true, ACK);
        assert_eq!(ct.get(2, &k).unwrap().0, CtState::Established);
        assert!(ct.get(2 + t.tcp_syn, &k).is_some());
        assert!(ct.get(1 + t.tcp_established, &k).is_some());
        assert!(ct.get(2 + t.tcp_established, &k).is_none());
        ct.update(3, slot, false, FIN | ACK);
        assert_eq!(ct.get(3, &k).unwrap().0, CtState::Fin);
        ct.update(4, slot, true, ACK);
        assert_eq!(ct.get(4, &k).unwrap().0, CtState::Fin);
        assert!(ct.get(4 + t.tcp_fin, &k).is_none());
        ct.update(5, slot, true, RST);
        assert_eq!(ct.get(5, &k).unwrap().0, CtState::Rst);
        // More packets do not extend a RST entry.
        ct.update(6, slot, false, ACK);
        assert!(ct.get(5 + t.tcp_rst, &k).is_none());
    }
}

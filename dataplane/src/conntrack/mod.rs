//! Connection tracking: one fixed-capacity, preallocated open-addressing table shared by every
//! worker of an agent.
//!
//! What it does:
//! - Tracks IPv4 TCP, UDP, ICMP echo and other-protocol flows under one canonical key, so the
//!   original direction and its replies find the same entry with **one** probe sequence, on
//!   whichever worker each direction arrives (a pod's veth picks the queue of each direction
//!   independently).
//! - TCP state tracking with a timeout per state ([`CtTimeouts`]): SYN (`syn-sent`, `syn-recv`),
//!   established, half-closed (one side sent FIN: still the established timeout, so a
//!   half-closed stream may idle as long as an open one), FIN (both sides sent FIN: the short
//!   close timeout), RST; fixed timeouts for UDP, ICMP and other protocols.
//! - Bounded capacity ([`CtConfig::capacity`], for the whole table); the table never grows.
//!   When it holds that many entries, a new flow takes the place of one on its probe path: an
//!   expired entry first (reused in place, also before the table is full), else the oldest
//!   entry that never saw a reply (evicted, counted in [`CtStats::evicted`]), as LRU maps do;
//!   only when the path holds neither is the flow refused (the caller drops it as `ct-full`,
//!   counted in [`CtStats::full`]). So a full table of established connections stays as it is,
//!   while unanswered flows (a scan, a flood) give way to new ones.
//! - Bounded state per endpoint: each entry remembers its owner, the port whose packet created
//!   it, and the table counts entries per owner; an owner with [`CtConfig::endpoint_limit`]
//!   entries gets no more (`ct-endpoint-limit`, counted in [`CtStats::endpoint_limit`]), so one
//!   pod cannot fill the node's table. Counted exactly across workers (see [`Conntrack::insert`]).
//!   A port that is not one pod (the host port) can be exempted
//!   ([`Conntrack::exempt_from_endpoint_limit`]).
//! - Incremental garbage collection ([`Conntrack::gc`]) that does a bounded amount of work per
//!   call, so every worker calls it once per batch without ever stalling; the workers claim
//!   consecutive chunks of the table from one shared cursor, so together they sweep all of it
//!   (also if one of them stops).
//! - Each entry remembers the policy revision it was last checked against (see
//!   the pipeline's conntrack stage (`crate::pipeline::flow`)), so a narrowed policy stops established flows on their next
//!   packet, on every worker.
//! - Room for the stages after policy: per entry a 24-bit `ext` field (0 = none; the service
//!   stage keeps a backend or frontend id there) and a `stage` byte ([`Conntrack::ext`],
//!   [`Conntrack::stage`] and their setters), both written with the entry
//!   ([`Conntrack::insert_with`]); [`Conntrack::find_at`] reads an entry at a remembered slot
//!   index without hashing, and [`Conntrack::follow`] keeps one entry's state and expiry in
//!   step with another's (a balanced connection's two entries).
//!
//! What it does not do: it decides nothing about policy (that is [`crate::policy`]), reads no
//! clock (`now` is passed in, in nanoseconds, and every user must count from the same origin),
//! allocates nothing after [`Conntrack::new`], and does not validate TCP sequence numbers.
//!
//! # Sharing
//! A [`Conntrack`] is a handle: [`Clone`] gives another handle on the **same** table (an
//! `Arc`), with its own counter shard and garbage-collection chunk; give each worker its own.
//! All methods take `&self`. Lookups and the established path (state, flags, last-seen time)
//! take no lock; creating and removing entries takes a per-stripe spin lock for the few stores
//! of that change (see `table.rs` for the protocol). Two workers creating the same flow at once
//! end with one entry ([`CtStats::races`] counts the second).
//!
//! A slot handle (the `slot` of [`Probe`]) names an entry as the probe saw it: if another
//! worker moves or removes that entry before the handle is used (a window of nanoseconds),
//! the setters do nothing and return `false`, [`Conntrack::is_closing`] answers `true` (so the
//! caller takes the new-flow path, whose [`Conntrack::insert`] looks again under the lock), and
//! the plain getters read whatever the slot holds then.
//!
//! # Layout
//! One slot is [`Conntrack::BYTES_PER_SLOT`] (32) bytes, two per cache line: the canonical
//! addresses (8 bytes); one 8-byte word with the ports, protocol, state, flags, a generation
//! and the stage byte; the policy revision (low 32 bits, 4 bytes); a 4-byte word holding the
//! ext index (low 24 bits) and the owner (high 8 bits: port ids 0 to 255, which covers every
//! port a worker serves); and the last-seen time (8 bytes; the expiry is
//! `seen + timeout(state)`). Slots are `capacity × 4/3` (load ≤ 75 %), plus one lock byte per
//! 16 slots, 512 bytes of counters and 1.25 KiB of per-owner counts and exemptions, so a full
//! table costs about 42.8 bytes per connection. They are indexed by a seeded multiply-mix hash
//! reduced with a multiply-shift (any slot count, not only powers of two), probed linearly, and deleted with backward shift (no tombstones). Tables of 2 MiB and more
//! ask for transparent huge pages (`madvise`), to spare TLB misses. [`Conntrack::prefetch`]
//! lets a worker overlap the cache misses of a whole batch; the worker takes each frame's key
//! from the pipeline's parse stage (`pipeline::Meta::key`).
//!
//! # Counters
//! [`CtStats`] are relaxed atomic counters in one cache line per handle (eight shards, round
//! robin), summed when read: a worker never writes a line another worker writes, and the sum
//! is exact whatever the number of writers. Only the entry count is one shared atomic, because
//! the capacity check needs the whole table's count, and so are the per-owner counts (one
//! `AtomicU32` per port, written only when an entry is created or leaves, under its cluster's
//! locks).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};

mod table;

use crate::dns::log::DnsLog;
use crate::fragments::FragmentTable;
use crate::learned::LearnedTable;
use std::net::Ipv4Addr;
use table::{
    Canon, EMPTY, EXT_MASK, Entry, F_ORIG_A, F_SEEN_REPLY, GC_CHUNK, OWNERS, SHARDS, Scan, Shard,
    Table, handle, initial_state, stage_of, state_of,
};

use crate::tables::PortId;

// Every port a worker serves has an owner byte of its own.
const _: () = assert!(crate::worker::MAX_PORTS <= OWNERS);

/// The owner byte of port `port`. Ports from 256 up, which no worker serves
/// (`worker::MAX_PORTS`), would share the last one.
#[inline]
fn owner_index(port: PortId) -> usize {
    usize::from(port).min(OWNERS - 1)
}

/// The session-affinity facts ([`Conntrack::affinity`]) a table of `capacity` connections
/// holds: one per eight connections (a client with affinity usually opens several), 1,024 to
/// 65,536 (at most 1.8 MiB).
pub fn affinity_capacity(capacity: usize) -> usize {
    (capacity / 8).clamp(1024, 65_536)
}

/// The default [`CtConfig::endpoint_limit`] for a table of `capacity` connections: a quarter
/// of it. One pod then holds at most a quarter of the node's connections, so it takes four
/// pods at their limit to fill the table, and even then the unanswered flows among them give
/// way to new ones (see the module documentation); a fixed share, not one divided by the
/// current number of pods, so that a pod's limit does not shrink under it as pods come.
pub fn default_endpoint_limit(capacity: usize) -> usize {
    (capacity / 4).max(1)
}

/// IP protocol numbers, as the wire layer defines them (re-exported: flow keys hold the byte).
pub use crate::wire::ip::proto;
/// TCP flag bits, as the wire layer defines them.
pub use crate::wire::tcp::flags as tcp_flags;

/// A flow's 5-tuple as seen on one packet.
///
/// For TCP and UDP the ports are the transport ports. For ICMP echo request and reply both ports
/// hold the echo identifier (so a reply maps to its request); for other ICMP messages both are 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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

    /// The 5-tuple of a packet whose L4 bytes start at `l4` (`no_l4`: a non-initial fragment,
    /// which has none): TCP/UDP ports; for ICMP echo request and reply the identifier as both
    /// ports; otherwise (or when too short) ports 0. The pipeline's parse stage builds every
    /// key here (`pipeline::Meta::key`, and the key an ICMP error quotes).
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
    /// TCP after a FIN in both directions (or one before the handshake completed). A FIN from
    /// one side only keeps `tcp_established`.
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
    /// The most live entries the table holds, all its users together; further new flows evict
    /// unanswered ones or are refused (`ct-full`).
    pub capacity: usize,
    /// The most entries one owner (the port whose packets created them) may have; further new
    /// flows of its are refused (`ct-endpoint-limit`). 0: [`default_endpoint_limit`]. At most
    /// `capacity`.
    pub endpoint_limit: usize,
    /// Per-state timeouts.
    pub timeouts: CtTimeouts,
    /// Hash seed. Use a random value per table so flows cannot be crafted to collide; tests may
    /// use a constant.
    pub seed: u64,
}

impl Default for CtConfig {
    fn default() -> Self {
        Self {
            capacity: 65_536,
            endpoint_limit: 0,
            timeouts: CtTimeouts::default(),
            seed: 0x5eed_0fc0_ffee,
        }
    }
}

/// The state of a tracked flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum CtState {
    /// TCP: the originator sent a SYN (or the first packet seen was mid-stream); no reply yet.
    SynSent = 1,
    /// TCP: the responder answered SYN-ACK; waiting for the final ACK.
    SynRecv = 2,
    /// TCP: handshake complete (or traffic seen both ways).
    Established = 3,
    /// TCP: both sides sent FIN (or a FIN came before the handshake completed): closing.
    Fin = 4,
    /// TCP: a RST was seen.
    Rst = 5,
    /// UDP.
    Udp = 6,
    /// ICMP.
    Icmp = 7,
    /// Another IP protocol.
    Other = 8,
    /// TCP: the originator sent FIN, the responder not yet (it may go on sending).
    HalfClosedOrig = 9,
    /// TCP: the responder sent FIN, the originator not yet.
    HalfClosedReply = 10,
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
            9 => Self::HalfClosedOrig,
            10 => Self::HalfClosedReply,
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
            Self::HalfClosedOrig => "half-closed-orig",
            Self::HalfClosedReply => "half-closed-reply",
        }
    }
}

/// A tracked entry as listed by [`Conntrack::entries`] (for `xylem ct list`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CtEntry {
    /// The flow in its original direction.
    pub orig: FlowKey,
    /// Its state.
    pub state: CtState,
    /// Whether a reply was seen.
    pub seen_reply: bool,
    /// Nanoseconds until it expires (0 if already expired, awaiting GC).
    pub expires_in_ns: u64,
    /// The low 32 bits of the policy revision it was last checked against (for a balanced
    /// connection's reverse entry, which the policy never checks, the slot index of the
    /// connection's entry).
    pub policy_revision: u32,
    /// The port whose packet created it: the endpoint it counts against.
    pub owner: PortId,
}

/// Counters of one table, summed over its handles (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CtStats {
    /// Entries created.
    pub created: u64,
    /// New flows refused because the table was full and their probe path held no entry to
    /// evict (`ct-full`).
    pub full: u64,
    /// New flows refused because their owner had its [`CtConfig::endpoint_limit`] of entries
    /// (`ct-endpoint-limit`).
    pub endpoint_limit: u64,
    /// Live entries that never saw a reply, evicted by a new flow from a full table.
    pub evicted: u64,
    /// Expired entries removed by [`Conntrack::gc`].
    pub gc_removed: u64,
    /// Expired entries reused in place by a new flow.
    pub reused: u64,
    /// Entries removed because the current policy no longer allows them.
    pub policy_removed: u64,
    /// New flows another worker had created between this worker's probe and its insert: they
    /// join that entry instead of creating a second one.
    pub races: u64,
}

/// What a later stage keeps on a new entry ([`Conntrack::insert_with`]): an index into its
/// translation state (at most [`Conntrack::MAX_EXT`]) and its stage byte.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Annex {
    /// The `ext` index (0: none).
    pub ext: u32,
    /// The stage byte.
    pub stage: u8,
}

impl Annex {
    /// No translation, stage byte 0.
    pub const NONE: Annex = Annex { ext: 0, stage: 0 };
}

/// Why [`Conntrack::insert`] did not track a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtRefusal {
    /// The table is full and the flow's probe path holds nothing to evict (`ct-full`).
    Full,
    /// The flow's owner has its [`CtConfig::endpoint_limit`] of entries
    /// (`ct-endpoint-limit`).
    EndpointLimit,
}

/// What a lookup found.
///
/// `slot` is an opaque handle for the calls that follow ([`Conntrack::update`],
/// [`Conntrack::insert`], …): it names the entry as the probe saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A live entry at `slot`; `orig` is whether the packet goes in the original direction.
    Hit {
        /// The entry.
        slot: usize,
        /// Whether the packet goes in the original direction.
        orig: bool,
        /// The entry's stage byte ([`Conntrack::stage`]), read with it.
        stage: u8,
    },
    /// No live entry; a new one would go at `slot` (`reuse`: it holds an expired entry), room
    /// permitting ([`Conntrack::insert`] decides).
    Vacant {
        /// Where the new entry would go.
        slot: usize,
        /// Whether that slot holds an expired entry.
        reuse: bool,
    },
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

/// Where [`Conntrack::insert`] puts a new entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// Over this expired entry (or the flow's own closing one).
    Reuse(usize),
    /// In the empty slot that ends the probe path.
    End,
    /// Over this live entry that never saw a reply.
    Evict(usize),
}

/// The key of `addrs`/`meta` in the flow's original direction.
fn orig_key_of(addrs: u64, m: u64) -> FlowKey {
    let c = Canon::of_slot(addrs, m);
    let (a, b) = (Ipv4Addr::from_bits(c.a), Ipv4Addr::from_bits(c.b));
    if m & F_ORIG_A != 0 {
        FlowKey {
            src: a,
            dst: b,
            sport: c.ap,
            dport: c.bp,
            proto: c.proto,
        }
    } else {
        FlowKey {
            src: b,
            dst: a,
            sport: c.bp,
            dport: c.ap,
            proto: c.proto,
        }
    }
}

/// The most records any DNS log holds ([`dns_log_capacity`]).
pub const DNS_LOG_CAPACITY: usize = 4096;

/// How many records the DNS log of a flow table of `capacity` entries holds before it drops
/// them ([`Conntrack::dns_log`]): one per 64 connections, between 64 and 4,096 (4,096 for the
/// agent's default table: a fifth of a second of 20,000 lookups a second, for an agent that drains it
/// every few milliseconds). A record is under 1 KiB.
pub fn dns_log_capacity(capacity: usize) -> usize {
    (capacity / 64).clamp(64, DNS_LOG_CAPACITY)
}

/// The FQDN table's capacity for a flow table of `capacity` entries: one learned address per
/// two connections, at least 1,024 (see [`Conntrack::fqdn`]).
pub fn fqdn_capacity(capacity: usize) -> usize {
    (capacity / 2).max(1024)
}

/// The DNS stage's shared state: the FQDN table and the log.
struct DnsState {
    fqdn: Arc<LearnedTable>,
    log: Arc<DnsLog>,
}

/// A handle on a connection tracker shared by every worker. See the module documentation.
pub struct Conntrack {
    t: Arc<Table>,
    /// The fragment records, shared by the handles as the table is (see [`Self::fragments`]).
    frags: Arc<FragmentTable>,
    /// Session affinity, shared by the handles as the table is (see [`Self::affinity`]).
    affinity: Arc<LearnedTable>,
    /// What the DNS stage learns and reports, shared likewise (see [`Self::fqdn`]).
    dns: Arc<DnsState>,
    /// The worker this handle belongs to, for the records it reports ([`Self::worker`]).
    worker: u16,
    /// This handle's counter shard.
    shard: usize,
    /// The garbage-collection chunk this handle sweeps: the next position and the end, as
    /// counts of slots taken modulo the slot count (see [`Conntrack::gc`]).
    gc_pos: AtomicUsize,
    gc_end: AtomicUsize,
}

impl std::fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conntrack")
            .field("capacity", &self.t.capacity)
            .field("len", &self.len())
            .field("shard", &self.shard)
            .finish()
    }
}

impl Clone for Conntrack {
    /// Another handle on the same table (for another worker).
    fn clone(&self) -> Self {
        Self::handle(
            Arc::clone(&self.t),
            Arc::clone(&self.frags),
            Arc::clone(&self.affinity),
            Arc::clone(&self.dns),
        )
    }
}

impl Conntrack {
    /// Bytes of one slot.
    pub const BYTES_PER_SLOT: usize = Table::BYTES_PER_SLOT;

    /// A tracker holding at most `config.capacity` live entries; all memory is allocated here.
    /// Clone the result to share the table.
    pub fn new(config: &CtConfig) -> Self {
        Self::handle(
            Arc::new(Table::new(config)),
            Arc::new(FragmentTable::for_flows(config.capacity)),
            Arc::new(LearnedTable::new(affinity_capacity(config.capacity), 0)),
            Arc::new(DnsState {
                fqdn: Arc::new(LearnedTable::new(fqdn_capacity(config.capacity), 0)),
                log: Arc::new(DnsLog::new(dns_log_capacity(config.capacity))),
            }),
        )
    }

    fn handle(
        t: Arc<Table>,
        frags: Arc<FragmentTable>,
        affinity: Arc<LearnedTable>,
        dns: Arc<DnsState>,
    ) -> Self {
        let shard = t.handles.fetch_add(1, Relaxed) % SHARDS;
        Conntrack {
            t,
            frags,
            affinity,
            dns,
            worker: 0,
            shard,
            gc_pos: AtomicUsize::new(0),
            gc_end: AtomicUsize::new(0),
        }
    }

    /// The IPv4 fragment records of the pipeline's fragment stage, sized for this table
    /// ([`FragmentTable::for_flows`]) and shared by its handles: the fragments of one datagram
    /// may reach different workers, as the two directions of a flow may.
    #[inline]
    pub fn fragments(&self) -> &FragmentTable {
        &self.frags
    }

    /// Session affinity (`ClientIP`): (frontend id, client address) → the backend id its
    /// connections go to, until the service's timeout. Shared by the handles: a client's next
    /// connection may reach another worker. Sized for one client in eight connections of the
    /// table ([`affinity_capacity`]).
    #[inline]
    pub fn affinity(&self) -> &LearnedTable {
        &self.affinity
    }

    /// The FQDN table: (scope of one endpoint's `toFQDNs` selector, address) → until when the
    /// address is an allowed destination, learned by the DNS stage from the answers it
    /// forwards, before it forwards them. Shared by the handles: the pod's connection to the
    /// address may leave through another worker than the one that saw the answer. Sized by
    /// [`fqdn_capacity`]. Its facts are reported through [`Self::dns_log`], not the table's
    /// own queue (the control side needs the names too).
    #[inline]
    pub fn fqdn(&self) -> &LearnedTable {
        &self.dns.fqdn
    }

    /// The FQDN table itself, for the control side (restoring, cleaning and listing the cache).
    pub fn fqdn_table(&self) -> Arc<LearnedTable> {
        Arc::clone(&self.dns.fqdn)
    }

    /// The DNS log every handle's DNS stage reports to (see [`crate::dns::log`]).
    #[inline]
    pub fn dns_log(&self) -> &Arc<DnsLog> {
        &self.dns.log
    }

    /// The worker this handle belongs to (0 unless [`Self::set_worker`] said otherwise).
    #[inline]
    pub fn worker(&self) -> u16 {
        self.worker
    }

    /// Says which worker this handle belongs to, for the DNS records it reports.
    pub fn set_worker(&mut self, worker: u16) {
        self.worker = worker;
    }

    /// Whether `other` is a handle on the same table.
    pub fn shares_table_with(&self, other: &Conntrack) -> bool {
        Arc::ptr_eq(&self.t, &other.t)
    }

    #[inline]
    fn count(&self, f: impl FnOnce(&Shard) -> &AtomicU64) {
        f(&self.t.shards[self.shard]).fetch_add(1, Relaxed);
    }

    /// Live (and expired, not yet collected) entries, all workers together.
    #[inline]
    pub fn len(&self) -> usize {
        self.t.len.0.load(Relaxed)
    }

    /// Whether the table holds no entry.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The configured capacity (of the whole table).
    #[inline]
    pub fn capacity(&self) -> usize {
        self.t.capacity
    }

    /// Total bytes of the table: slots, stripe locks and counters.
    pub fn memory_bytes(&self) -> usize {
        self.t.memory_bytes()
    }

    /// Bytes per tracked connection when the table is full: `memory_bytes / capacity`.
    pub fn bytes_per_entry(&self) -> f64 {
        self.memory_bytes() as f64 / self.t.capacity as f64
    }

    /// The counters, summed over every handle of the table.
    pub fn stats(&self) -> CtStats {
        let mut s = CtStats::default();
        for sh in self.t.shards.iter() {
            s.created += sh.created.load(Relaxed);
            s.full += sh.full.load(Relaxed);
            s.gc_removed += sh.gc_removed.load(Relaxed);
            s.reused += sh.reused.load(Relaxed);
            s.policy_removed += sh.policy_removed.load(Relaxed);
            s.races += sh.races.load(Relaxed);
            s.evicted += sh.evicted.load(Relaxed);
            s.endpoint_limit += sh.endpoint_limit.load(Relaxed);
        }
        s
    }

    /// The most entries one owner may have ([`CtConfig::endpoint_limit`], resolved).
    pub fn endpoint_limit(&self) -> usize {
        self.t.endpoint_limit
    }

    /// Exempts `port` from [`CtConfig::endpoint_limit`]: its entries are still counted, but not
    /// limited. For a port that is not one pod: the host port, through which the node itself
    /// and every other node's pods reach this node's pods, so that its share is not what any
    /// single pod gets.
    pub fn exempt_from_endpoint_limit(&self, port: PortId) {
        self.t.exempt(owner_index(port));
    }

    /// Entries owned by `port` (live, and expired not yet collected), all workers together.
    pub fn owned_by(&self, port: PortId) -> usize {
        self.t.owned(owner_index(port))
    }

    /// The timeouts in force.
    pub fn timeouts(&self) -> &CtTimeouts {
        &self.t.timeouts
    }

    /// Starts loading the cache lines where `key`'s entry lives (either direction). Call it for
    /// every packet of a batch before calling the pipeline's conntrack stage (`crate::pipeline::flow`) on them: the memory
    /// accesses of the batch then overlap instead of each waiting for DRAM in turn. A hint
    /// only: it changes no state and may do nothing on other architectures.
    ///
    /// Two lines: the home slot's and the next one. At the table's full load (75 %) a lookup
    /// that hits probes 2.5 slots on average, so it often ends on the next line; prefetching
    /// that line too took the worker benchmark at 1,000,000 connections from a median of 97 to
    /// 77 ns/packet.
    #[inline]
    pub fn prefetch(&self, key: &FlowKey) {
        self.t.prefetch(&canon(key).0);
    }

    /// Removes every entry (`xylem ct flush`), one stripe at a time: entries created by other
    /// workers while it runs may or may not survive it.
    pub fn flush(&self) {
        self.t.flush();
    }

    /// Every entry (live or expired but not yet collected), for listing. Lock-free, read slot
    /// by slot while the workers run: not a snapshot (an entry moved during the walk may be
    /// missed or listed twice).
    pub fn entries(&self, now: u64) -> impl Iterator<Item = CtEntry> + '_ {
        (0..self.t.slot_count()).filter_map(move |i| {
            let r = self.t.read(i)?;
            Some(CtEntry {
                state: CtState::from_u8(state_of(r.meta))?,
                orig: orig_key_of(r.addrs, r.meta),
                seen_reply: r.meta & F_SEEN_REPLY != 0,
                expires_in_ns: r
                    .seen
                    .saturating_add(self.t.timeout_of(r.meta))
                    .saturating_sub(now),
                policy_revision: r.revision,
                owner: table::owner_of(r.ext) as PortId,
            })
        })
    }

    /// The live entry of `key` (either direction), if any: its state and whether `key` is the
    /// original direction.
    pub fn get(&self, now: u64, key: &FlowKey) -> Option<(CtState, bool)> {
        let (c, fwd) = canon(key);
        match self.t.scan(&c, now) {
            Scan::Hit(_, m) => Some((CtState::from_u8(state_of(m))?, fwd == (m & F_ORIG_A != 0))),
            _ => None,
        }
    }

    /// Removes expired entries, examining at most about `budget` slots (a removal counts the
    /// entries it shifts back). Returns how many entries it removed. Call it once per batch with
    /// a small budget (e.g. 64): with `w` workers a full sweep takes `slots / (w × budget)`
    /// batches. Each handle sweeps chunks of 1,024 slots claimed from a cursor shared
    /// by the table (one atomic add per chunk), so the workers never sweep the same slots at
    /// once. A slot whose stripe another worker holds is skipped until the next sweep.
    pub fn gc(&self, now: u64, budget: usize) -> usize {
        let t = &*self.t;
        let n = t.slot_count();
        let mut pos = self.gc_pos.load(Relaxed);
        let mut end = self.gc_end.load(Relaxed);
        let mut work = 0;
        let mut removed = 0;
        while work < budget && !self.is_empty() {
            if pos == end {
                pos = t.gc_cursor.0.fetch_add(GC_CHUNK, Relaxed);
                end = pos.wrapping_add(GC_CHUNK);
            }
            let i = pos % n;
            let (m, seen, _) = t.view(i);
            let st = state_of(m);
            if st != EMPTY
                && CtState::from_u8(st).is_some()
                && !t.is_live(m, seen, now)
                && let Some(touched) = t.remove_if(i, false, |m, seen| !t.is_live(m, seen, now))
            {
                work += touched;
                removed += 1;
                // Slot `i` may now hold an entry shifted back: look at it again.
                continue;
            }
            pos = pos.wrapping_add(1);
            work += 1;
        }
        self.gc_pos.store(pos, Relaxed);
        self.gc_end.store(end, Relaxed);
        if removed > 0 {
            self.t.shards[self.shard]
                .gc_removed
                .fetch_add(removed as u64, Relaxed);
        }
        removed
    }

    /// Finds `key`'s live entry, or where a new one would go. Lock-free.
    #[inline]
    pub fn probe(&self, now: u64, key: &FlowKey) -> Probe {
        let (c, fwd) = canon(key);
        match self.t.scan(&c, now) {
            Scan::Hit(i, m) => Probe::Hit {
                slot: handle(i, m),
                orig: fwd == (m & F_ORIG_A != 0),
                stage: stage_of(m),
            },
            // The same flow, expired: start it again in place.
            Scan::SameExpired(i, m) => Probe::Vacant {
                slot: handle(i, m),
                reuse: true,
            },
            Scan::Miss {
                expired: Some((i, m)),
                ..
            } => Probe::Vacant {
                slot: handle(i, m),
                reuse: true,
            },
            Scan::Miss { end, end_meta, .. } => Probe::Vacant {
                slot: handle(end, end_meta),
                reuse: false,
            },
        }
    }

    /// Creates the entry of `key` (original direction), owned by port `owner`, after a
    /// [`Self::probe`] that returned `Vacant { slot, reuse }` (or `Hit { slot, .. }` on a
    /// closing entry, with `reuse` true, to start it again).
    ///
    /// It looks again under the locks of the key's cluster, so a flow another worker created
    /// since the probe is not created twice: that entry is advanced as for any packet of it
    /// (counted in [`CtStats::races`]). Otherwise the new entry goes, in this order of
    /// preference: in place of the key's own entry when expired, or of the entry the probe
    /// named with `reuse`; in place of the first expired entry on the path (counted
    /// [`CtStats::reused`]); in the empty slot that ends the path, while the table holds fewer
    /// than its capacity; in place of the oldest entry on the path that never saw a reply
    /// (counted [`CtStats::evicted`]). With none of these the flow is refused as
    /// [`CtRefusal::Full`].
    ///
    /// The owner's count goes up by one (unless the entry replaced was its own); if that would
    /// take it past [`CtConfig::endpoint_limit`], the flow is refused as
    /// [`CtRefusal::EndpointLimit`] and nothing changes. The entry replaced, if any, leaves its
    /// owner's count. Both happen under the cluster's locks with atomic adds, so counts are exact
    /// and limits strict whatever other workers do at once.
    ///
    /// Returns the handle of the flow's entry (use it, not the probe's, for later calls).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn insert(
        &self,
        now: u64,
        probe_slot: usize,
        reuse: bool,
        key: &FlowKey,
        tcp: u8,
        revision: u64,
        owner: PortId,
    ) -> Result<usize, CtRefusal> {
        self.insert_with(
            now,
            probe_slot,
            reuse,
            key,
            tcp,
            revision,
            owner,
            Annex::NONE,
        )
    }

    /// [`Self::insert`], with the entry's translation state and stage byte written with it, so
    /// no other worker ever sees the new entry without them. A flow another worker created in
    /// the meantime keeps its own.
    #[allow(clippy::too_many_arguments)]
    pub fn insert_with(
        &self,
        now: u64,
        probe_slot: usize,
        reuse: bool,
        key: &FlowKey,
        tcp: u8,
        revision: u64,
        owner: PortId,
        annex: Annex,
    ) -> Result<usize, CtRefusal> {
        let t = &*self.t;
        let (c, fwd) = canon(key);
        let home = t.home(&c);
        let run = t.lock_run(home);
        let mut i = home;
        let mut found = None;
        let mut expired = None;
        // The oldest live entry on the path that never saw a reply: (slot, last seen).
        let mut unreplied: Option<(usize, u64)> = None;
        while i != run.end {
            let (m, seen, addrs) = t.view(i);
            let live = t.is_live(m, seen, now);
            if Table::is_key(m, addrs, &c) {
                found = Some((i, m, live));
                break;
            }
            if !live && expired.is_none() {
                expired = Some(i);
            }
            if live && m & F_SEEN_REPLY == 0 && unreplied.is_none_or(|(_, old)| seen < old) {
                unreplied = Some((i, seen));
            }
            i = t.after(i);
        }
        let restart = |f: usize, m: u64| reuse && handle(f, m) == probe_slot;
        if let Some((f, m, true)) = found
            && !restart(f, m)
        {
            t.advance_at(now, f, m, fwd == (m & F_ORIG_A != 0), tcp);
            let h = handle(f, t.view(f).0);
            t.unlock_run(&run);
            self.count(|s| &s.races);
            return Ok(h);
        }
        let place = match (found, expired) {
            (Some((x, _, _)), _) | (None, Some(x)) => Some(Place::Reuse(x)),
            // Room: the capacity is never passed, even by workers inserting at once. (It is
            // below the slot count, so one slot always stays empty and every probe path ends.)
            (None, None) if t.len.0.fetch_add(1, Relaxed) < t.capacity => Some(Place::End),
            (None, None) => {
                t.len.0.fetch_sub(1, Relaxed);
                unreplied.map(|(x, _)| Place::Evict(x))
            }
        };
        let owner = owner_index(owner);
        let result = match place {
            None => Err(CtRefusal::Full),
            Some(p) => {
                let (x, replaced) = match p {
                    Place::Reuse(x) | Place::Evict(x) => (x, Some(t.owner_at(x))),
                    Place::End => (run.end, None),
                };
                if replaced == Some(owner) || t.acquire(owner) {
                    let e = Entry::new(
                        &c,
                        fwd,
                        initial_state(key.proto, tcp),
                        revision as u32,
                        now,
                        owner,
                    )
                    .annexed(annex.ext, annex.stage);
                    t.write(x, &e);
                    if let Some(old) = replaced.filter(|&o| o != owner) {
                        t.release(old);
                    }
                    Ok((x, p))
                } else {
                    if p == Place::End {
                        t.len.0.fetch_sub(1, Relaxed);
                    }
                    Err(CtRefusal::EndpointLimit)
                }
            }
        };
        let result = result.map(|(x, p)| (handle(x, t.view(x).0), p));
        t.unlock_run(&run);
        match result {
            Ok((h, p)) => {
                self.count(|s| &s.created);
                match p {
                    Place::Reuse(_) => self.count(|s| &s.reused),
                    Place::Evict(_) => self.count(|s| &s.evicted),
                    Place::End => {}
                }
                Ok(h)
            }
            Err(r) => {
                match r {
                    CtRefusal::Full => self.count(|s| &s.full),
                    CtRefusal::EndpointLimit => self.count(|s| &s.endpoint_limit),
                }
                Err(r)
            }
        }
    }

    /// Advances the entry at `slot` for a packet in direction `orig` with TCP flags `tcp`, and
    /// refreshes its expiry (a RST entry keeps its deadline). Lock-free. `false` if the entry
    /// moved or went since the probe (nothing changed; the next packet finds it again).
    #[inline]
    pub fn update(&self, now: u64, slot: usize, orig: bool, tcp: u8) -> bool {
        self.t.advance(now, slot, orig, tcp)
    }

    /// Whether a TCP SYN (without ACK) on the entry at `slot` starts a new connection reusing
    /// the tuple (the old one closing or closed). `true` too if the entry is gone since the
    /// probe, so the caller takes the new-flow path and looks again.
    #[inline]
    pub fn is_closing(&self, slot: usize) -> bool {
        match self.t.meta_of(slot) {
            Some((_, m)) => {
                let st = state_of(m);
                st == CtState::Fin as u8 || st == CtState::Rst as u8
            }
            None => true,
        }
    }

    /// The policy revision (low 32 bits) the entry at `slot` was checked against.
    #[inline]
    pub fn revision(&self, slot: usize) -> u32 {
        self.t.revision(slot)
    }

    /// Records that the entry at `slot` is allowed by policy `revision`. Takes the slot's
    /// stripe lock (once per flow and policy change). `false` if the entry is gone.
    pub fn set_revision(&self, slot: usize, revision: u64) -> bool {
        self.t.set_revision(slot, revision as u32)
    }

    /// The original-direction key of the entry at `slot`.
    pub fn orig_key(&self, slot: usize) -> FlowKey {
        match self.t.read_handle(slot) {
            Some(r) => orig_key_of(r.addrs, r.meta),
            // Gone since the probe: what the slot holds now.
            None => {
                let (m, _, addrs) = self.t.view(slot & 0xffff_ffff);
                orig_key_of(addrs, m)
            }
        }
    }

    /// Removes the entry at `slot` because policy no longer allows it. `false` if it was
    /// already gone (moved: the next packet finds and rechecks it again).
    pub fn remove_for_policy(&self, slot: usize) -> bool {
        let Some((i, _)) = self.t.meta_of(slot) else {
            return false;
        };
        let t = &*self.t;
        let removed = t.remove_if(i, true, |m, _| handle(i, m) == slot).is_some();
        if removed {
            self.count(|s| &s.policy_removed);
        }
        removed
    }

    /// The live entry of `key` if it sits at slot index `index` (an index remembered from an
    /// earlier handle: [`Self::index_of`]): its handle and whether `key` is its original
    /// direction. `None` if that slot holds anything else now (the entry moved, went, or
    /// expired): look it up with [`Self::probe`]. One slot read, no hashing, no walk.
    #[inline]
    pub fn find_at(&self, now: u64, index: u32, key: &FlowKey) -> Option<(usize, bool)> {
        let i = index as usize;
        if i >= self.t.slot_count() {
            return None;
        }
        let (c, fwd) = canon(key);
        let (m, seen, addrs) = self.t.view(i);
        // A slot being written (or empty) has no state of the table's: never a match.
        let settled = CtState::from_u8(state_of(m)).is_some();
        (settled && Table::is_key(m, addrs, &c) && self.t.is_live(m, seen, now))
            .then(|| (handle(i, m), fwd == (m & F_ORIG_A != 0)))
    }

    /// The live, settled entry at slot index `index`, whatever its key: its handle, its
    /// original-direction key, its stage byte and its `ext`. For a second entry that remembers
    /// its leader by index but cannot rebuild the leader's key (a masqueraded connection's
    /// reverse entry): the caller checks what it reads against what it knows. `None` if the
    /// slot is empty, being written or expired. One slot read, no hashing.
    pub fn entry_at(&self, now: u64, index: u32) -> Option<(usize, FlowKey, u8, u32)> {
        let i = index as usize;
        if i >= self.t.slot_count() {
            return None;
        }
        let (m, seen, addrs) = self.t.view(i);
        let settled = CtState::from_u8(state_of(m)).is_some();
        if !settled || !self.t.is_live(m, seen, now) {
            return None;
        }
        let h = handle(i, m);
        Some((
            h,
            orig_key_of(addrs, m),
            stage_of(m),
            self.t.ext(h) & EXT_MASK,
        ))
    }

    /// The slot index a handle names, to remember an entry by (see [`Self::find_at`]).
    #[inline]
    pub fn index_of(slot: usize) -> u32 {
        (slot & 0xffff_ffff) as u32
    }

    /// The owner of the entry at `slot`: the port whose packet created it.
    #[inline]
    pub fn owner(&self, slot: usize) -> PortId {
        table::owner_of(self.t.ext(slot)) as PortId
    }

    /// The translation-state index of the entry at `slot` (0: none).
    #[inline]
    pub fn ext(&self, slot: usize) -> u32 {
        self.t.ext(slot) & EXT_MASK
    }

    /// The largest translation-state index an entry holds ([`Self::set_ext`]).
    pub const MAX_EXT: u32 = EXT_MASK;

    /// Sets the translation-state index of the entry at `slot` (a new entry starts at 0). Takes
    /// the slot's stripe lock. `false` if the entry is gone, or `ext` is above
    /// [`Self::MAX_EXT`] (nothing changes).
    pub fn set_ext(&self, slot: usize, ext: u32) -> bool {
        ext <= Self::MAX_EXT && self.t.set_ext(slot, ext)
    }

    /// The stage byte of the entry at `slot` (a new entry starts at 0).
    #[inline]
    pub fn stage(&self, slot: usize) -> u8 {
        self.t.meta_of(slot).map_or(0, |(_, m)| stage_of(m))
    }

    /// Makes the entry at `slot` follow the entry at `leader`: it takes the leader's state and
    /// reply flag and is refreshed at `now`, so it expires with it (a connection's second
    /// entry, such as a service connection's entry under its virtual address). Lock-free.
    /// `false` if either entry is gone.
    #[inline]
    pub fn follow(&self, now: u64, slot: usize, leader: usize) -> bool {
        self.t.follow(now, slot, leader)
    }

    /// Sets the stage byte of the entry at `slot`. Lock-free. `false` if the entry is gone.
    pub fn set_stage(&self, slot: usize, stage: u8) -> bool {
        self.t.set_stage(slot, stage)
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod concurrency_tests;

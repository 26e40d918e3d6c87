//! Learned state: facts the dataplane learns from the traffic itself, shared by every worker
//! without the control side in the loop.
//!
//! The first user is DNS-aware policy: when a pod's DNS query for an allowed name is answered,
//! the worker that sees the answer records each address in it as an allowed destination for
//! that pod, for the answer's TTL, **before** it forwards the answer; the pod's next packet may
//! be handled by any worker, and every worker finds the fact in the same table.
//!
//! What it does:
//! - [`LearnedTable`]: a fixed-capacity table, allocated once, keyed by `(scope, IPv4
//!   address)` — `scope` is a small integer naming who learned the fact or for whom (an
//!   endpoint's identity, a policy selector id) — holding an expiry time (nanoseconds, the
//!   caller's clock) and a tag (e.g. which FQDN selector matched).
//!   [`LearnedTable::lookup`] (the per-packet read) and [`LearnedTable::learn`] (the write) are
//!   lock-free: atomic loads to read, one compare-and-swap to refresh or claim a slot; no
//!   thread ever waits for another, and a thread stopped half-way through a write only hides
//!   the one slot it was writing.
//! - Learning a fact already known refreshes its expiry (never shortens it); lookups ignore
//!   expired facts; expired slots are reused by the next fact that needs room.
//! - Full (both buckets a key may live in hold live facts): the fact is refused and counted
//!   ([`LearnedStats::full`]); a live fact is never evicted. The table has 4/3 of its
//!   capacity in slots, as the connection tracker does, so refusals stay rare up to the
//!   capacity (see below).
//! - [`LearnedTable::gc`]: bounded work per call, like the connection tracker's, freeing slots
//!   of expired facts so [`LearnedTable::occupied`] tracks what the table really holds.
//! - Reports: every newly learned or refreshed fact is pushed on a bounded queue for the
//!   control side ([`LearnedTable::pop_report`]); when the queue is full the report is dropped
//!   and counted ([`LearnedStats::reports_dropped`]), the fact itself is still learned.
//!
//! What it does not do: it parses no DNS and decides no policy (its users do), reads no clock,
//! allocates nothing after [`LearnedTable::new`] (except the listing
//! [`LearnedTable::live_facts`], for the control side), and holds IPv4 addresses only.
//!
//! # Layout and concurrency
//!
//! A bucket is two cache lines (128 bytes, aligned, so the adjacent-line prefetcher fetches
//! them together) of six slots: the six keys (`scope << 32 | address`) in the first line, then
//! the six state words and the six tags. A key may live in either of two buckets chosen by a
//! seeded hash, and a new fact goes to the one with more room. A lookup reads the key lines of
//! both buckets, and the second line of a bucket only where a key matches. Memory: 128 / 6 =
//! 21.3 bytes per slot ([`LearnedTable::BYTES_PER_SLOT`]), 28.4 bytes per fact at capacity.
//!
//! With two choices among six-slot buckets, keys spread by the hash are first refused at
//! about 70 % of the slots (the `a_table_takes_most_of_its_slots_before_refusing` test prints
//! it); of the facts learned between 70 and 75 % (the table's capacity) under 1 % are refused,
//! 2-3 % between 75 and 80 %. Relocating facts to make room (cuckoo hashing) would fill the
//! table further but would make a fact briefly invisible to lock-free readers, or present
//! twice.
//!
//! A slot's state word holds a 16-bit generation and a 48-bit expiry in units of
//! [`EXPIRY_UNIT_NS`] (65.5 µs, rounded up: a fact may outlive its expiry by less than that,
//! which is nothing next to DNS TTLs of seconds; 48 bits of units cover the whole `u64`
//! nanosecond range). Expiry 0 is a free slot; the all-ones expiry marks a slot being claimed.
//! - Claiming a free or expired slot: one compare-and-swap moves its word to "being claimed"
//!   with the next generation, which makes the slot the claimer's alone; it then stores the tag
//!   and the key and publishes the word with the new expiry (release stores).
//! - Refreshing: a compare-and-swap of the word, same generation, later expiry. It fails if
//!   the slot was claimed again in between (the generation changed), and the learner looks
//!   again.
//! - Reading: the word (acquire), the key, the tag, and the word again: the same generation
//!   twice means the key and tag read in between belong to that fact (a claim in between would
//!   have changed the generation; a refresh does not, and only moves the expiry later). A torn
//!   read — a claim of the slot running at the same time, so the fact there was expired
//!   anyway — is treated as "not this slot". (A generation comes back after 65,536 claims of
//!   one slot, each needing the fact before it to expire: never while a reader is between two
//!   loads.)
//!
//! Two workers learning the same new fact at the same instant may both claim a slot for it;
//! the duplicate is harmless (a lookup returns the later expiry of the two) and its slot is
//! reused once it expires.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crossbeam::queue::ArrayQueue;

use crate::slotword::{CLAIMING, MAX_UNITS, UNIT_SHIFT, generation, live, units, word};

/// The granularity of expiry times: 2^16 ns (65.5 µs). Stored expiries are rounded up to it.
pub const EXPIRY_UNIT_NS: u64 = 1 << UNIT_SHIFT;

/// Expiry units of a free slot.
const FREE: u64 = 0;
const SLOTS: usize = 6;

/// Whether a claimer may take the slot: free, or holding an expired fact.
#[inline]
fn claimable(word: u64, now_units: u64) -> bool {
    let u = units(word);
    u != CLAIMING && u <= now_units
}

#[inline]
fn key_of(scope: u32, ip: Ipv4Addr) -> u64 {
    u64::from(scope) << 32 | u64::from(ip.to_bits())
}

/// Two cache lines: six slots, fields grouped so that the six keys share the first line.
#[derive(Default)]
#[repr(C, align(128))]
struct Bucket {
    keys: [AtomicU64; SLOTS],
    words: [AtomicU64; SLOTS],
    tags: [AtomicU32; SLOTS],
}

const _: () = assert!(std::mem::size_of::<Bucket>() == 128);

impl Bucket {
    /// The fact in slot `s` if it is live and its key is `key`: its state word and its tag.
    /// Torn reads (a claim running at the same time) are reported as no fact.
    #[inline]
    fn read(&self, s: usize, key: u64, now_units: u64) -> Option<(u64, u32)> {
        // A cheap filter first: most slots hold another key.
        if self.keys[s].load(Ordering::Relaxed) != key {
            return None;
        }
        let w = self.words[s].load(Ordering::Acquire);
        if !live(w, now_units) {
            return None;
        }
        // Acquire loads, so that each load below happens after the one before; if any of them
        // sees a later claim's store, the word read last has another generation (see the
        // module docs). A refresh in between keeps the generation (and only moves the expiry
        // later): the fact is still this one, and live.
        let k = self.keys[s].load(Ordering::Acquire);
        let tag = self.tags[s].load(Ordering::Acquire);
        let again = self.words[s].load(Ordering::Relaxed);
        (k == key && generation(again) == generation(w)).then_some((again, tag))
    }
}

/// A live fact, as [`LearnedTable::lookup`] returns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fact {
    /// When it expires (the caller's clock, ns), rounded up to [`EXPIRY_UNIT_NS`].
    pub expiry: u64,
    /// The tag it was first learned with.
    pub tag: u32,
}

/// What [`LearnedTable::learn`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learn {
    /// A new fact; reported to the control side.
    Learned,
    /// The fact was known and live; its expiry was moved later. Reported.
    Refreshed,
    /// The fact was known and live until at least the expiry given; nothing changed. Not
    /// reported.
    Unchanged,
    /// No room: both of the key's buckets hold live facts. Nothing changed; counted.
    Full,
    /// The expiry given is not after `now`; nothing changed; counted.
    Expired,
}

/// A newly learned or refreshed fact, for the control side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    /// Who learned it (or for whom): the key's first half.
    pub scope: u32,
    /// The address: the key's second half.
    pub ip: Ipv4Addr,
    /// The expiry the fact now has, rounded up to [`EXPIRY_UNIT_NS`].
    pub expiry: u64,
    /// The tag given with it.
    pub tag: u32,
    /// Whether it refreshed a known fact (false: newly learned).
    pub refreshed: bool,
}

/// The table's counters: shared by every worker, bumped on the learning path only (never by
/// a lookup), each a relaxed atomic add.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Counters {
    learned: AtomicU64,
    refreshed: AtomicU64,
    unchanged: AtomicU64,
    full: AtomicU64,
    expired: AtomicU64,
    collected: AtomicU64,
    reports_dropped: AtomicU64,
}

/// A snapshot of the counters ([`LearnedTable::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LearnedStats {
    /// Facts newly learned.
    pub learned: u64,
    /// Known facts whose expiry moved later.
    pub refreshed: u64,
    /// Known facts learned again without a later expiry.
    pub unchanged: u64,
    /// Facts refused for lack of room.
    pub full: u64,
    /// Facts refused because they had already expired.
    pub expired: u64,
    /// Expired facts whose slot [`LearnedTable::gc`] freed.
    pub collected: u64,
    /// Reports dropped because the control side's queue was full.
    pub reports_dropped: u64,
}

/// The position of one caller's incremental [`LearnedTable::gc`]. Each caller keeps its own,
/// so workers collecting at the same time share no cache line for it.
#[derive(Clone, Copy, Debug, Default)]
pub struct GcCursor {
    next: usize,
}

/// `usize` alone on a cache line, so the workers' reads of it do not share a line with
/// anything they write.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Padded(AtomicUsize);

/// Learned facts shared by every worker. See the module documentation.
pub struct LearnedTable {
    /// At least two.
    buckets: Box<[Bucket]>,
    /// The number of facts the table is sized for.
    capacity: usize,
    seed: u64,
    /// Slots holding a fact that [`Self::gc`] has not freed yet (live or expired).
    occupied: Padded,
    counters: Counters,
    /// `None` for a table whose facts nobody outside the workers needs to hear of.
    reports: Option<ArrayQueue<Report>>,
}

impl std::fmt::Debug for LearnedTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LearnedTable")
            .field("capacity", &self.capacity())
            .field("occupied", &self.occupied())
            .field("stats", &self.stats())
            .finish()
    }
}

impl LearnedTable {
    /// Bytes of one slot (a bucket of two cache lines holds six).
    pub const BYTES_PER_SLOT: f64 = 128.0 / SLOTS as f64;

    /// A table for `capacity` facts (at least one): 4/3 of that in slots, in buckets of six
    /// (at least two buckets), and a report queue of `reports` entries (0: no reports, for a table
    /// whose facts only the workers read, such as session affinity). All
    /// memory is allocated here.
    pub fn new(capacity: usize, reports: usize) -> Self {
        let seed = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            0x006c_6561_726e_6564_u64,
        );
        Self::with_seed(capacity, reports, seed)
    }

    /// As [`Self::new`] with a chosen hash seed (tests and benchmarks; [`Self::new`] picks a
    /// random one, so that the addresses in DNS answers, which others choose, cannot be picked
    /// to collide).
    pub fn with_seed(capacity: usize, reports: usize, seed: u64) -> Self {
        let capacity = capacity.max(1);
        let slots = capacity.saturating_add(capacity.div_ceil(3));
        let n = slots.div_ceil(SLOTS).max(2);
        let mut buckets = Vec::with_capacity(n);
        buckets.resize_with(n, Bucket::default);
        Self {
            buckets: buckets.into_boxed_slice(),
            capacity,
            seed,
            occupied: Padded::default(),
            counters: Counters::default(),
            reports: (reports > 0).then(|| ArrayQueue::new(reports)),
        }
    }

    /// The number of facts the table is sized for.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The number of slots: about 4/3 of the capacity.
    pub fn slots(&self) -> usize {
        self.buckets.len() * SLOTS
    }

    /// Bytes of the table (the report queue aside).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.buckets)
    }

    /// Bytes per fact when the table holds its capacity: `memory_bytes / capacity`.
    pub fn bytes_per_fact(&self) -> f64 {
        self.memory_bytes() as f64 / self.capacity as f64
    }

    /// Slots holding a fact not yet freed by [`Self::gc`], live or expired.
    pub fn occupied(&self) -> usize {
        self.occupied.0.load(Ordering::Relaxed)
    }

    /// The counters.
    pub fn stats(&self) -> LearnedStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LearnedStats {
            learned: get(&c.learned),
            refreshed: get(&c.refreshed),
            unchanged: get(&c.unchanged),
            full: get(&c.full),
            expired: get(&c.expired),
            collected: get(&c.collected),
            reports_dropped: get(&c.reports_dropped),
        }
    }

    /// The two buckets `key` may live in (distinct): two seeded multiply-mix hashes, each
    /// reduced to the bucket count with a multiply-shift (any count, not only powers of two).
    #[inline]
    fn buckets_of(&self, key: u64) -> (&Bucket, &Bucket) {
        let n = self.buckets.len();
        let h = (key ^ self.seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let h1 = (h ^ (h >> 29)).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        let h2 = (h1 ^ (h1 >> 32)).wrapping_mul(0xD6E8_FEB8_6659_FD93);
        let reduce = |x: u64| ((u128::from(x) * n as u128) >> 64) as usize;
        let b1 = reduce(h1);
        let mut b2 = reduce(h2);
        if b2 == b1 {
            b2 = if b1 + 1 == n { 0 } else { b1 + 1 };
        }
        // Both are below the bucket count, so the indexing cannot fail.
        (&self.buckets[b1], &self.buckets[b2])
    }

    /// The live fact of `(scope, ip)` at `now`, if any. The per-packet read: the key lines of
    /// two buckets (and the state line where a key matches), atomic loads only.
    #[inline]
    pub fn lookup(&self, now: u64, scope: u32, ip: Ipv4Addr) -> Option<Fact> {
        let key = key_of(scope, ip);
        let now_units = now >> UNIT_SHIFT;
        let (a, b) = self.buckets_of(key);
        let mut best: Option<(u64, u32)> = None;
        for bucket in [a, b] {
            for s in 0..SLOTS {
                if let Some((w, tag)) = bucket.read(s, key, now_units)
                    && best.is_none_or(|(bu, _)| units(w) > bu)
                {
                    best = Some((units(w), tag));
                }
            }
        }
        best.map(|(u, tag)| Fact {
            expiry: u << UNIT_SHIFT,
            tag,
        })
    }

    /// The fact of `(scope, ip)` still held by the table, expired or not: an expired fact stays
    /// until its slot is collected or claimed for another. For flows already open (see
    /// `crate::policy::Learned::established`).
    #[inline]
    pub fn lookup_held(&self, scope: u32, ip: Ipv4Addr) -> Option<Fact> {
        // Live at time 0 is exactly "held": not free and not being claimed.
        self.lookup(0, scope, ip)
    }

    /// Forgets every fact of `(scope, ip)`, live or expired (the control side: a cleaned cache,
    /// an address over its name's limit). Returns how many slots it freed. Lock-free: a fact
    /// being refreshed at the same time is forgotten or refreshed, never half of each.
    pub fn forget(&self, scope: u32, ip: Ipv4Addr) -> usize {
        let key = key_of(scope, ip);
        let (a, b) = self.buckets_of(key);
        let mut freed = 0;
        for bucket in [a, b] {
            for s in 0..SLOTS {
                // Until the slot holds no such fact: a failed exchange means another thread
                // changed the word (a refresh), and the fact is read again.
                while let Some((w, _)) = bucket.read(s, key, 0) {
                    // A new generation, so a reader between its two loads sees a torn read.
                    let free = word(generation(w) + 1, FREE);
                    if bucket.words[s]
                        .compare_exchange(w, free, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                    {
                        self.occupied.0.fetch_sub(1, Ordering::Relaxed);
                        freed += 1;
                        break;
                    }
                }
            }
        }
        freed
    }

    /// Learns that `(scope, ip)` holds until `expiry` (ns, the caller's clock), with `tag`, and
    /// reports it to the control side if it is new or its expiry moved later. Never waits:
    /// when the table has no room the fact is refused ([`Learn::Full`]). A known fact keeps
    /// the tag it was first learned with. Once this returns, every thread's [`Self::lookup`]
    /// that happens after it finds the fact.
    pub fn learn(&self, now: u64, scope: u32, ip: Ipv4Addr, expiry: u64, tag: u32) -> Learn {
        let outcome = self.insert(now, key_of(scope, ip), expiry, tag);
        let c = &self.counters;
        let counter = match outcome {
            (Learn::Learned, _) => &c.learned,
            (Learn::Refreshed, _) => &c.refreshed,
            (Learn::Unchanged, _) => &c.unchanged,
            (Learn::Full, _) => &c.full,
            (Learn::Expired, _) => &c.expired,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let (Learn::Learned | Learn::Refreshed, units) = outcome {
            let report = Report {
                scope,
                ip,
                expiry: units << UNIT_SHIFT,
                tag,
                refreshed: outcome.0 == Learn::Refreshed,
            };
            if let Some(q) = &self.reports
                && q.push(report).is_err()
            {
                c.reports_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        outcome.0
    }

    /// The insertion itself: the outcome and, when the fact is live, its expiry in units.
    fn insert(&self, now: u64, key: u64, expiry: u64, tag: u32) -> (Learn, u64) {
        if expiry <= now {
            return (Learn::Expired, 0);
        }
        let now_units = now >> UNIT_SHIFT;
        // Rounded up, so the fact is live at least until `expiry`; `expiry > now` makes it
        // live at `now`.
        let want = expiry.div_ceil(EXPIRY_UNIT_NS).min(MAX_UNITS);
        let (a, b) = self.buckets_of(key);
        // Each pass either ends or follows another thread's successful change of a slot
        // (a failed compare-and-swap), so the loop is lock-free.
        'again: loop {
            // 1. A live fact with this key: move its expiry later.
            for bucket in [a, b] {
                for s in 0..SLOTS {
                    let Some((w, _)) = bucket.read(s, key, now_units) else {
                        continue;
                    };
                    if units(w) >= want {
                        return (Learn::Unchanged, units(w));
                    }
                    // Only if the word is still `w`: the same generation, so the same fact.
                    match bucket.words[s].compare_exchange(
                        w,
                        word(generation(w), want),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return (Learn::Refreshed, want),
                        Err(_) => continue 'again,
                    }
                }
            }
            // 2. A slot for a new fact: free or expired, in the bucket with more room.
            let room = |bk: &Bucket| {
                (0..SLOTS)
                    .filter(|&s| claimable(bk.words[s].load(Ordering::Relaxed), now_units))
                    .count()
            };
            let (first, second) = if room(b) > room(a) { (b, a) } else { (a, b) };
            for bucket in [first, second] {
                for s in 0..SLOTS {
                    let w = bucket.words[s].load(Ordering::Acquire);
                    if !claimable(w, now_units) {
                        continue;
                    }
                    let next_gen = generation(w) + 1;
                    if bucket.words[s]
                        .compare_exchange(
                            w,
                            word(next_gen, CLAIMING),
                            Ordering::AcqRel,
                            Ordering::Relaxed,
                        )
                        .is_err()
                    {
                        continue;
                    }
                    // The slot is ours until the word is published below.
                    bucket.tags[s].store(tag, Ordering::Release);
                    bucket.keys[s].store(key, Ordering::Release);
                    bucket.words[s].store(word(next_gen, want), Ordering::Release);
                    if units(w) == FREE {
                        self.occupied.0.fetch_add(1, Ordering::Relaxed);
                    }
                    return (Learn::Learned, want);
                }
            }
            return (Learn::Full, 0);
        }
    }

    /// Frees the slots of facts expired at `now`, examining at most `budget` slots from
    /// `cursor` on (which it advances). Returns how many it freed. Call it once per batch with
    /// a small budget (a bucket's worth or two); a whole sweep then takes `slots / budget`
    /// calls. Expired slots are reused whether or not they were collected: this keeps
    /// [`Self::occupied`] true to what the table holds.
    pub fn gc(&self, now: u64, cursor: &mut GcCursor, budget: usize) -> usize {
        if self.occupied() == 0 {
            return 0;
        }
        let now_units = now >> UNIT_SHIFT;
        let slots = self.slots();
        let mut freed = 0;
        let mut i = if cursor.next < slots { cursor.next } else { 0 };
        for _ in 0..budget.min(slots) {
            let cell = &self.buckets[i / SLOTS].words[i % SLOTS];
            i = if i + 1 == slots { 0 } else { i + 1 };
            let w = cell.load(Ordering::Relaxed);
            let u = units(w);
            if u == FREE || u == CLAIMING || u > now_units {
                continue;
            }
            // A new generation: a learner holding the old word cannot refresh it any more.
            if cell
                .compare_exchange(
                    w,
                    word(generation(w) + 1, FREE),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                self.occupied.0.fetch_sub(1, Ordering::Relaxed);
                freed += 1;
            }
        }
        cursor.next = i;
        if freed > 0 {
            self.counters
                .collected
                .fetch_add(freed as u64, Ordering::Relaxed);
        }
        freed
    }

    /// The next report for the control side, oldest first.
    pub fn pop_report(&self) -> Option<Report> {
        self.reports.as_ref()?.pop()
    }

    /// Every fact live at `now`: `(scope, address, fact)`, in table order; a fact learned twice
    /// at once by two workers appears twice. For the control side (it allocates).
    pub fn live_facts(&self, now: u64) -> Vec<(u32, Ipv4Addr, Fact)> {
        let now_units = now >> UNIT_SHIFT;
        let mut out = Vec::new();
        for bucket in self.buckets.iter() {
            for s in 0..SLOTS {
                let key = bucket.keys[s].load(Ordering::Acquire);
                if let Some((w, tag)) = bucket.read(s, key, now_units) {
                    out.push((
                        (key >> 32) as u32,
                        Ipv4Addr::from_bits(key as u32),
                        Fact {
                            expiry: units(w) << UNIT_SHIFT,
                            tag,
                        },
                    ));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn ip(n: u32) -> Ipv4Addr {
        Ipv4Addr::from_bits(0x0a00_0000 | n)
    }

    /// Rounded up as the table keeps it.
    fn kept(expiry: u64) -> u64 {
        expiry.div_ceil(EXPIRY_UNIT_NS) * EXPIRY_UNIT_NS
    }

    #[test]
    fn a_learned_fact_is_found_until_it_expires() {
        let t = LearnedTable::with_seed(1024, 16, 1);
        let now = 100 * SEC;
        assert_eq!(t.lookup(now, 7, ip(1)), None);
        assert_eq!(t.learn(now, 7, ip(1), now + 30 * SEC, 3), Learn::Learned);
        let f = t.lookup(now, 7, ip(1)).expect("learned");
        assert_eq!(
            f,
            Fact {
                expiry: kept(now + 30 * SEC),
                tag: 3
            }
        );
        // Another scope, another address: not the same fact.
        assert_eq!(t.lookup(now, 8, ip(1)), None);
        assert_eq!(t.lookup(now, 7, ip(2)), None);
        // Live until its (rounded) expiry, gone from then on.
        assert!(t.lookup(kept(now + 30 * SEC) - 1, 7, ip(1)).is_some());
        assert_eq!(t.lookup(kept(now + 30 * SEC), 7, ip(1)), None);
        assert_eq!(t.lookup(u64::MAX, 7, ip(1)), None);
        assert_eq!(t.occupied(), 1);
    }

    #[test]
    fn an_expired_fact_is_held_until_its_slot_is_taken_and_forgetting_frees_it() {
        let t = LearnedTable::with_seed(1024, 0, 3);
        let now = 100 * SEC;
        let _ = t.learn(now, 7, ip(1), now + 30 * SEC, 0);
        let later = now + 60 * SEC;
        assert_eq!(t.lookup(later, 7, ip(1)), None, "expired");
        assert_eq!(
            t.lookup_held(7, ip(1)).map(|f| f.expiry),
            Some(kept(now + 30 * SEC)),
            "but still held"
        );
        assert_eq!(t.lookup_held(8, ip(1)), None);
        assert_eq!(t.forget(7, ip(1)), 1);
        assert_eq!(t.lookup_held(7, ip(1)), None);
        assert_eq!(t.forget(7, ip(1)), 0);
        assert_eq!(t.occupied(), 0);
        // A forgotten live fact is gone at once, and may be learned again.
        let _ = t.learn(now, 7, ip(2), now + 30 * SEC, 0);
        assert_eq!(t.forget(7, ip(2)), 1);
        assert_eq!(t.lookup(now, 7, ip(2)), None);
        assert_eq!(t.learn(now, 7, ip(2), now + 30 * SEC, 0), Learn::Learned);
        assert!(t.lookup(now, 7, ip(2)).is_some());
    }

    #[test]
    fn learning_again_refreshes_the_expiry_but_never_shortens_it_or_changes_the_tag() {
        let t = LearnedTable::with_seed(1024, 16, 2);
        let now = 5 * SEC;
        assert_eq!(t.learn(now, 1, ip(9), now + 10 * SEC, 1), Learn::Learned);
        assert_eq!(t.learn(now, 1, ip(9), now + 20 * SEC, 2), Learn::Refreshed);
        let f = t.lookup(now, 1, ip(9)).unwrap();
        assert_eq!(
            f,
            Fact {
                expiry: kept(now + 20 * SEC),
                tag: 1
            }
        );
        assert_eq!(t.learn(now, 1, ip(9), now + 15 * SEC, 1), Learn::Unchanged);
        assert_eq!(
            t.lookup(now, 1, ip(9)).unwrap().expiry,
            kept(now + 20 * SEC)
        );
        // One slot, however often it is learned.
        assert_eq!(t.occupied(), 1);
        assert_eq!(t.live_facts(now).len(), 1);
        // Once expired, learning it again is a new fact, with the new tag.
        let later = now + 21 * SEC;
        assert_eq!(t.lookup(later, 1, ip(9)), None);
        assert_eq!(t.learn(later, 1, ip(9), later + SEC, 4), Learn::Learned);
        assert_eq!(t.lookup(later, 1, ip(9)).unwrap().tag, 4);
        assert_eq!(t.occupied(), 1, "the expired slot was reused");
        let s = t.stats();
        assert_eq!((s.learned, s.refreshed, s.unchanged), (2, 1, 1));
    }

    #[test]
    fn an_expiry_not_after_now_is_refused_and_counted() {
        let t = LearnedTable::with_seed(64, 16, 3);
        assert_eq!(t.learn(10 * SEC, 1, ip(1), 10 * SEC, 0), Learn::Expired);
        assert_eq!(t.learn(10 * SEC, 1, ip(1), 9 * SEC, 0), Learn::Expired);
        assert_eq!(t.lookup(0, 1, ip(1)), None);
        assert_eq!(t.stats().expired, 2);
        assert_eq!(t.occupied(), 0);
        assert!(t.pop_report().is_none());
        // One nanosecond later is enough.
        assert_eq!(t.learn(10 * SEC, 1, ip(1), 10 * SEC + 1, 0), Learn::Learned);
        assert!(t.lookup(10 * SEC, 1, ip(1)).is_some());
        // The far future is kept, saturated.
        assert_eq!(t.learn(0, 2, ip(2), u64::MAX, 0), Learn::Learned);
        assert!(t.lookup(u64::MAX - EXPIRY_UNIT_NS * 2, 2, ip(2)).is_some());
    }

    #[test]
    fn a_full_table_refuses_new_facts_without_evicting_live_ones_and_reuses_expired_slots() {
        // Two buckets of six: every key may use all twelve slots.
        let t = LearnedTable::with_seed(6, 64, 4);
        assert_eq!(t.slots(), 12);
        let now = SEC;
        for i in 0..12 {
            let expiry = now + (i as u64 + 1) * SEC;
            assert_eq!(
                t.learn(now, 1, ip(i), expiry, i),
                Learn::Learned,
                "fact {i}"
            );
        }
        assert_eq!(t.learn(now, 1, ip(100), now + SEC, 0), Learn::Full);
        assert_eq!(t.learn(now, 2, ip(0), now + SEC, 0), Learn::Full);
        assert_eq!(t.stats().full, 2);
        // Refreshing a known fact needs no room.
        assert_eq!(t.learn(now, 1, ip(5), now + 60 * SEC, 5), Learn::Refreshed);
        for i in 0..12 {
            assert_eq!(
                t.lookup(now, 1, ip(i)).map(|f| f.tag),
                Some(i),
                "fact {i} kept"
            );
        }
        // Fact 0 expires at now + 1 s (rounded up): its slot takes the next new fact, the
        // others stay.
        let later = kept(now + SEC);
        assert_eq!(t.lookup(later, 1, ip(0)), None);
        assert_eq!(t.learn(later, 1, ip(100), later + SEC, 100), Learn::Learned);
        assert_eq!(t.learn(later, 1, ip(101), later + SEC, 101), Learn::Full);
        for i in 1..12 {
            assert!(t.lookup(later, 1, ip(i)).is_some(), "fact {i} kept");
        }
        assert_eq!(t.lookup(later, 1, ip(100)).unwrap().tag, 100);
        assert_eq!(t.occupied(), 12);
    }

    #[test]
    fn gc_frees_expired_slots_within_its_budget() {
        let t = LearnedTable::with_seed(3 * 64, 16, 5);
        let slots = t.slots();
        for i in 0..60 {
            // Even facts expire after 1 s, odd ones after 100 s.
            let ttl = if i % 2 == 0 { SEC } else { 100 * SEC };
            assert_eq!(t.learn(0, 1, ip(i), ttl, 0), Learn::Learned);
        }
        assert_eq!(t.occupied(), 60);
        let mut c = GcCursor::default();
        assert_eq!(t.gc(SEC / 2, &mut c, slots), 0, "nothing expired yet");
        // A budget of 8 slots looks at 8 slots: it frees at most 8.
        let mut c = GcCursor::default();
        let first = t.gc(2 * SEC, &mut c, 8);
        assert!(first <= 8);
        let mut freed = first;
        for _ in 0..slots {
            freed += t.gc(2 * SEC, &mut c, 8);
        }
        assert_eq!(freed, 30);
        assert_eq!(t.occupied(), 30);
        assert_eq!(t.stats().collected, 30);
        for i in 0..60 {
            assert_eq!(
                t.lookup(2 * SEC, 1, ip(i)).is_some(),
                i % 2 == 1,
                "fact {i}"
            );
        }
        // A freed slot is reused by a new fact.
        assert_eq!(t.learn(2 * SEC, 2, ip(0), 3 * SEC, 0), Learn::Learned);
        assert_eq!(t.occupied(), 31);
        // An empty table costs one load.
        let empty = LearnedTable::with_seed(64, 1, 6);
        assert_eq!(empty.gc(SEC, &mut GcCursor::default(), 1000), 0);
    }

    #[test]
    fn new_and_refreshed_facts_are_reported_and_a_full_queue_drops_reports_not_facts() {
        let t = LearnedTable::with_seed(64, 2, 7);
        assert_eq!(t.learn(0, 1, ip(1), 10 * SEC, 11), Learn::Learned);
        assert_eq!(t.learn(0, 1, ip(1), 20 * SEC, 11), Learn::Refreshed);
        assert_eq!(t.learn(0, 1, ip(1), 5 * SEC, 11), Learn::Unchanged);
        assert_eq!(t.learn(0, 1, ip(2), 10 * SEC, 12), Learn::Learned);
        assert!(
            t.lookup(0, 1, ip(2)).is_some(),
            "learned though not reported"
        );
        assert_eq!(t.stats().reports_dropped, 1);
        assert_eq!(
            t.pop_report(),
            Some(Report {
                scope: 1,
                ip: ip(1),
                expiry: kept(10 * SEC),
                tag: 11,
                refreshed: false
            })
        );
        assert_eq!(
            t.pop_report(),
            Some(Report {
                scope: 1,
                ip: ip(1),
                expiry: kept(20 * SEC),
                tag: 11,
                refreshed: true
            })
        );
        assert_eq!(t.pop_report(), None);
    }

    #[test]
    fn a_table_has_four_thirds_of_its_capacity_in_slots_of_a_sixth_of_two_cache_lines() {
        let t = LearnedTable::with_seed(3000, 1, 8);
        assert_eq!(t.capacity(), 3000);
        assert_eq!(t.slots(), 667 * 6);
        assert_eq!(t.memory_bytes(), 667 * 128);
        assert!((LearnedTable::BYTES_PER_SLOT - 21.33).abs() < 0.01);
        assert!(
            (t.bytes_per_fact() - 28.46).abs() < 0.01,
            "{}",
            t.bytes_per_fact()
        );
    }

    /// How full a table gets before refusing facts, with keys spread by the hash: the numbers
    /// the module documentation quotes.
    #[test]
    fn a_table_takes_most_of_its_slots_before_refusing() {
        for seed in 0..4 {
            let t = LearnedTable::with_seed(24_000, 1, seed);
            let slots = t.slots() as f64;
            let mut n = 0u32;
            let mut first = None;
            // (load reached, refused, tried) since the previous mark.
            let mut marks = Vec::new();
            let (mut refused, mut tried) = (0, 0);
            for mark in [0.70, 0.75, 0.80, 0.85] {
                while (t.occupied() as f64) < mark * slots {
                    tried += 1;
                    if t.learn(0, n % 7, ip(n), SEC, 0) == Learn::Full {
                        refused += 1;
                        first.get_or_insert(t.occupied() as f64 / slots);
                    }
                    n += 1;
                }
                marks.push((mark, refused, tried));
                (refused, tried) = (0, 0);
            }
            let first = first.unwrap_or(1.0);
            eprintln!(
                "seed {seed}: first refusal at load {first:.3}; (load, refused, tried) {marks:?}"
            );
            assert!(first > 0.6, "first refusal at load {first}");
            // Up to the capacity (75 % of the slots), under 1 % of the facts are refused.
            let (up_to_capacity, tried) = (marks[0].1 + marks[1].1, marks[0].2 + marks[1].2);
            assert!(up_to_capacity * 100 < tried, "{marks:?}");
            assert_eq!(t.stats().full, marks.iter().map(|m| m.1).sum::<u64>());
        }
    }

    /// A fact learned on one thread is found by another that hears about it afterwards (the
    /// DNS answer is forwarded after learning, the pod's next packet reaches another worker).
    #[test]
    fn a_fact_learned_on_one_thread_is_found_on_another_that_hears_of_it_later() {
        let t = Arc::new(LearnedTable::with_seed(1 << 14, 1, 9));
        for round in 0..200u32 {
            let flag = Arc::new(AtomicBool::new(false));
            let (t2, f2) = (Arc::clone(&t), Arc::clone(&flag));
            let reader = std::thread::spawn(move || {
                while !f2.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                (0..20).all(|i| t2.lookup(0, round, ip(i)).is_some())
            });
            for i in 0..20 {
                assert_eq!(t.learn(0, round, ip(i), SEC, i), Learn::Learned);
            }
            flag.store(true, Ordering::Release);
            assert!(reader.join().unwrap(), "round {round}");
            // Expire them all, so the next round reuses slots.
            let mut c = GcCursor::default();
            t.gc(SEC, &mut c, t.slots());
        }
    }

    /// Without time passing nothing expires, so once `learn` accepts an expiry, every later
    /// lookup must find the fact at least until then: racing refreshes must not shorten it
    /// (a lost compare-and-swap), racing claims must not overwrite each other's slot.
    #[test]
    fn racing_learners_never_lose_or_shorten_a_live_fact() {
        let t = Arc::new(LearnedTable::with_seed(65_536, 1, 10));
        let start = Arc::new(std::sync::Barrier::new(4));
        // The latest expiry accepted for each shared fact, published after `learn` returned:
        // a lookup that starts later must see at least that.
        let accepted: Arc<Vec<AtomicU64>> = Arc::new((0..16).map(|_| AtomicU64::new(0)).collect());
        let handles: Vec<_> = (0..4u32)
            .map(|id| {
                let (t, start) = (Arc::clone(&t), Arc::clone(&start));
                let accepted = Arc::clone(&accepted);
                std::thread::spawn(move || {
                    let mut rng = 0x2545_f491_4f6c_dd1du64 ^ u64::from(id + 1) << 32;
                    let mut next = move || {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        rng
                    };
                    start.wait();
                    for i in 0..40_000u32 {
                        // Mostly one of 16 facts every thread refreshes, else a fact of this
                        // thread's own, new: claims race for slots.
                        let (scope, ipn) = if next() % 4 != 0 {
                            (0, (next() % 16) as u32)
                        } else {
                            (id + 1, i)
                        };
                        for j in 0..8u64 {
                            // Rising over the run, so most learning refreshes, and the
                            // threads' refreshes of a shared fact race with close values.
                            let step = u64::from(i) * 8 + j;
                            let expiry = (step * 64 + 1 + next() % 64) * EXPIRY_UNIT_NS;
                            let tag = tag_of(scope, ipn);
                            let outcome = t.learn(0, scope, ip(ipn), expiry, tag);
                            assert!(
                                matches!(
                                    outcome,
                                    Learn::Learned | Learn::Refreshed | Learn::Unchanged
                                ),
                                "{outcome:?}"
                            );
                            let floor = if scope == 0 {
                                let a = &accepted[ipn as usize];
                                a.fetch_max(expiry, Ordering::AcqRel);
                                a.load(Ordering::Acquire)
                            } else {
                                expiry
                            };
                            let f = t
                                .lookup(0, scope, ip(ipn))
                                .expect("a learned fact is found");
                            assert!(f.expiry >= floor, "shortened: {f:?} < {floor}");
                            assert_eq!(f.tag, tag);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(t.stats().full, 0);
    }

    fn tag_of(scope: u32, ipn: u32) -> u32 {
        scope.wrapping_mul(0x9e37_79b9) ^ ipn.wrapping_mul(0x85eb_ca6b)
    }

    /// Threads learn, refresh and look up random facts over a small key space while a clock
    /// moves on and facts expire, and collect; checked against a model. During the run no
    /// lookup may return a tag that is not its key's or a fact that is expired; afterwards every
    /// fact whose latest accepted expiry is still ahead must be found with exactly that expiry
    /// (no live fact was lost or overwritten, no refresh missed), and no other.
    fn run_against_model(capacity: usize, keys: u32, threads: u32, ops: u32) -> LearnedStats {
        let t = Arc::new(LearnedTable::with_seed(capacity, 1024, 0xfeed));
        let clock = Arc::new(AtomicU64::new(SEC));
        let handles: Vec<_> = (0..threads)
            .map(|id| {
                let (t, clock) = (Arc::clone(&t), Arc::clone(&clock));
                std::thread::spawn(move || {
                    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (u64::from(id) << 17 | 1);
                    let mut next = move || {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        rng
                    };
                    // (scope, ip) -> latest expiry this thread had accepted.
                    let mut model: HashMap<(u32, u32), u64> = HashMap::new();
                    let mut cursor = GcCursor::default();
                    let mut full = 0u64;
                    for op in 0..ops {
                        if id == 0 && op % 16 == 0 {
                            clock.fetch_add(EXPIRY_UNIT_NS * 3, Ordering::Relaxed);
                        }
                        let now = clock.load(Ordering::Relaxed);
                        let k = (next() % u64::from(keys)) as u32;
                        let (scope, ipn) = (k % 5, k);
                        match next() % 10 {
                            0..=3 => {
                                // TTLs of 1 to 100 units, the clock moving 3 units every
                                // 16 operations of thread 0: facts keep expiring.
                                let expiry = now + (1 + next() % 100) * EXPIRY_UNIT_NS;
                                match t.learn(now, scope, ip(ipn), expiry, tag_of(scope, ipn)) {
                                    Learn::Learned | Learn::Refreshed | Learn::Unchanged => {
                                        let e = model.entry((scope, ipn)).or_default();
                                        *e = (*e).max(expiry);
                                    }
                                    Learn::Full => full += 1,
                                    Learn::Expired => panic!("a future expiry refused"),
                                }
                            }
                            4..=8 => {
                                if let Some(f) = t.lookup(now, scope, ip(ipn)) {
                                    assert_eq!(f.tag, tag_of(scope, ipn), "a torn read");
                                    assert!(f.expiry > now, "an expired fact returned");
                                }
                            }
                            _ => {
                                t.gc(now, &mut cursor, 6);
                            }
                        }
                    }
                    (model, full)
                })
            })
            .collect();
        let mut model: HashMap<(u32, u32), u64> = HashMap::new();
        let mut full = 0;
        for h in handles {
            let (m, f) = h.join().unwrap();
            full += f;
            for (k, e) in m {
                let v = model.entry(k).or_default();
                *v = (*v).max(e);
            }
        }
        let now = clock.load(Ordering::Relaxed);
        let mut live = 0;
        for k in 0..keys {
            let (scope, ipn) = (k % 5, k);
            let expected = model
                .get(&(scope, ipn))
                .map(|&e| kept(e))
                .filter(|&e| e > now)
                .map(|e| Fact {
                    expiry: e,
                    tag: tag_of(scope, ipn),
                });
            assert_eq!(t.lookup(now, scope, ip(ipn)), expected, "key {k} at {now}");
            live += usize::from(expected.is_some());
        }
        // Every live fact is listed (duplicates aside), and nothing else.
        let mut listed: Vec<_> = t
            .live_facts(now)
            .into_iter()
            .map(|(s, a, _)| (s, a))
            .collect();
        listed.sort();
        listed.dedup();
        assert_eq!(listed.len(), live);
        let s = t.stats();
        assert_eq!(s.full, full);
        assert!(t.occupied() <= t.slots());
        eprintln!("capacity {capacity}, keys {keys}: {live} live at the end, {s:?}");
        s
    }

    #[test]
    fn concurrent_learners_and_readers_agree_with_a_model() {
        let s = run_against_model(4096, 600, 4, 200_000);
        assert!(s.learned > 0 && s.refreshed > 0 && s.unchanged > 0, "{s:?}");
        assert!(s.collected > 0, "{s:?}");
    }

    #[test]
    fn concurrent_learners_of_the_same_few_facts_agree_with_a_model() {
        // Every thread on the same 24 facts: refreshes race, and new facts are claimed twice.
        let s = run_against_model(4096, 24, 4, 200_000);
        assert!(s.learned > 0 && s.refreshed > 0, "{s:?}");
    }

    #[test]
    fn concurrent_learners_on_a_table_too_small_lose_no_live_fact() {
        // Far more keys than slots: refusals, reuse of expired slots and collection all race.
        let s = run_against_model(48, 400, 4, 200_000);
        assert!(s.full > 0 && s.collected > 0, "{s:?}");
    }
}

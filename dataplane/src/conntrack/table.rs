//! The slot table behind [`super::Conntrack`], shared by every worker: its layout, the versioned
//! lock-free reads, the per-stripe writer locks, insertion and backward-shift removal.
//!
//! # Concurrency
//! - **Readers** ([`Table::scan`], [`Table::read`]) take no lock and write nothing. Each slot's
//!   `meta` word carries a 10-bit generation that every rewrite of the slot bumps; a writer
//!   first marks the slot `BUSY` (with the new generation), then writes the other words, then
//!   publishes the final `meta` (seqlock style, with the release/acquire fences of the classic
//!   seqlock). A reader walks a probe path once, then walks it again comparing the generations:
//!   any entry written, moved or removed on the path in between changes the sum of the
//!   generations and the read is retried. So a lookup never misses an entry that a concurrent
//!   backward shift moved across its path, and never matches a half-written key. A reader that
//!   meets a `BUSY` slot waits for it (a few nanoseconds; see [`backoff`]).
//! - **Writers that change what a slot holds** (insert, removal, flush, and the rare
//!   [`Table::set_revision`]/[`Table::set_ext`]) take the locks of the stripes (16 slots each)
//!   they read and write: from the first slot they look at to the empty slot that ends the
//!   cluster. Any two writers whose clusters touch share a stripe, so they run one after the
//!   other. Locks are taken in order with `try_lock`; on failure everything is released and
//!   retried, so there is no deadlock. A lock is held for the few stores of one change, never
//!   across packets.
//! - **The established path** ([`Table::advance`]: TCP state, "seen a reply", the last-seen
//!   time) takes no lock: the state and flags change by compare-and-swap on `meta` (which fails
//!   if the slot was rewritten: the generation is part of the word), and the last-seen time is
//!   a plain atomic store, only when it moves forward (so a batch's packets of one flow write
//!   it once). A concurrent rewrite can at worst make that store refresh the entry now in the
//!   slot: one more timeout's life for an entry that was just moved or created, never a lost
//!   or corrupted key.
//!
//! Expiry is derived, not stored: `seen + timeout(state)`, so a state change and a refresh
//! never need to be written together.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, fence};

use super::{CtConfig, CtState, CtTimeouts, proto, tcp_flags};

/// Slots per writer lock.
pub(super) const STRIPE: usize = 16;
/// Counter shards (one per handle, round robin).
pub(super) const SHARDS: usize = 8;
/// Slots a handle's garbage collection claims from the shared cursor at a time.
pub(super) const GC_CHUNK: usize = 1024;
/// Largest capacity: slot indices must fit the 32 low bits of a handle.
pub(super) const MAX_CAPACITY: usize = 1 << 30;
/// The `ext` word: the ext index in its low 24 bits, the owner (the port whose packet created
/// the entry) in its high 8.
const OWNER_SHIFT: u32 = 24;
/// The ext index's bits of the `ext` word.
pub(super) const EXT_MASK: u32 = (1 << OWNER_SHIFT) - 1;
/// Owners a table counts entries for: one per port id that fits the owner byte.
pub(super) const OWNERS: usize = 1 << (32 - OWNER_SHIFT);

/// The owner byte of an `ext` word.
#[inline]
pub(super) fn owner_of(ext: u32) -> usize {
    (ext >> OWNER_SHIFT) as usize
}

// `meta`: the key's ports and protocol, the state, the flags, the generation and the stage
// byte, in one word so that a compare-and-swap on it checks all of them.
const BP_SHIFT: u32 = 16;
const PROTO_SHIFT: u32 = 32;
const STATE_SHIFT: u32 = 40;
const FLAGS_SHIFT: u32 = 44;
const GEN_SHIFT: u32 = 46;
const STAGE_SHIFT: u32 = 56;
/// Ports and protocol.
const KEY_MASK: u64 = (1 << STATE_SHIFT) - 1;
const STATE_MASK: u64 = 0xf << STATE_SHIFT;
const GEN_MASK: u64 = 0x3ff << GEN_SHIFT;
const STAGE_MASK: u64 = 0xff << STAGE_SHIFT;
/// The canonical side `a` originated the flow.
pub(super) const F_ORIG_A: u64 = 1 << FLAGS_SHIFT;
/// A packet was seen in the reply direction.
pub(super) const F_SEEN_REPLY: u64 = 2 << FLAGS_SHIFT;

/// No entry.
pub(super) const EMPTY: u8 = 0;
/// Being written by a lock holder: readers wait.
const BUSY: u8 = 15;

#[inline]
pub(super) fn state_of(m: u64) -> u8 {
    ((m & STATE_MASK) >> STATE_SHIFT) as u8
}

#[inline]
fn gen_of(m: u64) -> u64 {
    (m & GEN_MASK) >> GEN_SHIFT
}

#[inline]
pub(super) fn stage_of(m: u64) -> u8 {
    (m >> STAGE_SHIFT) as u8
}

/// `m` with the next generation and state `state`.
#[inline]
fn bumped(m: u64, state: u8) -> u64 {
    let g = ((gen_of(m) + 1) << GEN_SHIFT) & GEN_MASK;
    (m & !(GEN_MASK | STATE_MASK)) | g | (u64::from(state) << STATE_SHIFT)
}

#[inline]
fn with_state(m: u64, state: u8) -> u64 {
    (m & !STATE_MASK) | (u64::from(state) << STATE_SHIFT)
}

/// A slot handle, as [`super::Probe`] hands it out: the index in the low 32 bits, the
/// generation seen by the probe above them.
#[inline]
pub(super) fn handle(i: usize, m: u64) -> usize {
    ((gen_of(m) as usize) << 32) | i
}

#[inline]
fn unhandle(h: usize) -> (usize, u64) {
    (h & 0xffff_ffff, (h >> 32) as u64)
}

/// The canonical form of a key: the (address, port) pairs in ascending order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Canon {
    pub a: u32,
    pub b: u32,
    pub ap: u16,
    pub bp: u16,
    pub proto: u8,
}

impl Canon {
    #[inline]
    fn addrs(&self) -> u64 {
        (u64::from(self.a) << 32) | u64::from(self.b)
    }

    #[inline]
    fn key(&self) -> u64 {
        u64::from(self.ap) | (u64::from(self.bp) << BP_SHIFT) | (u64::from(self.proto) << 32)
    }

    #[inline]
    pub(super) fn of_slot(addrs: u64, m: u64) -> Canon {
        Canon {
            a: (addrs >> 32) as u32,
            b: addrs as u32,
            ap: m as u16,
            bp: (m >> BP_SHIFT) as u16,
            proto: (m >> PROTO_SHIFT) as u8,
        }
    }
}

/// One slot: 32 bytes, aligned so that a slot never straddles two cache lines.
#[derive(Debug, Default)]
#[repr(C, align(32))]
struct Slot {
    /// `a << 32 | b`.
    addrs: AtomicU64,
    /// See the constants above.
    meta: AtomicU64,
    /// The low 32 bits of the policy revision that last allowed the flow.
    revision: AtomicU32,
    /// Low 24 bits: index into a companion table of translation state (0: none). High 8 bits:
    /// the entry's owner, the port whose packet created it (see [`owner_of`]).
    ext: AtomicU32,
    /// Nanoseconds: the last time a packet refreshed the entry.
    seen: AtomicU64,
}

/// A whole entry, as written into a slot.
#[derive(Clone, Copy, Debug)]
pub(super) struct Entry {
    pub addrs: u64,
    /// Without generation.
    pub meta: u64,
    pub revision: u32,
    /// The whole `ext` word, owner included.
    pub ext: u32,
    pub seen: u64,
}

impl Entry {
    /// A new entry for the flow `c`, originated by side `a` if `orig_a`, in `state`, owned by
    /// `owner` (below [`OWNERS`]), with no translation.
    pub(super) fn new(
        c: &Canon,
        orig_a: bool,
        state: CtState,
        revision: u32,
        now: u64,
        owner: usize,
    ) -> Self {
        let mut meta = c.key() | (u64::from(state as u8) << STATE_SHIFT);
        if orig_a {
            meta |= F_ORIG_A;
        }
        Entry {
            addrs: c.addrs(),
            meta,
            revision,
            ext: (owner as u32) << OWNER_SHIFT,
            seen: now,
        }
    }

    /// This entry with translation state `ext` (at most [`EXT_MASK`]) and stage byte `stage`.
    pub(super) fn annexed(mut self, ext: u32, stage: u8) -> Self {
        self.ext |= ext & EXT_MASK;
        self.meta = (self.meta & !STAGE_MASK) | (u64::from(stage) << STAGE_SHIFT);
        self
    }
}

/// One consistent read of a slot.
#[derive(Clone, Copy, Debug)]
pub(super) struct Read {
    pub addrs: u64,
    pub meta: u64,
    pub revision: u32,
    /// The whole `ext` word, owner included.
    pub ext: u32,
    pub seen: u64,
}

/// Counters of the handles that write this shard (see [`super::CtStats`]).
#[derive(Debug, Default)]
#[repr(align(64))]
pub(super) struct Shard {
    pub created: AtomicU64,
    pub full: AtomicU64,
    pub gc_removed: AtomicU64,
    pub reused: AtomicU64,
    pub policy_removed: AtomicU64,
    pub races: AtomicU64,
    pub evicted: AtomicU64,
    pub endpoint_limit: AtomicU64,
}

/// An atomic alone on its cache line, so that writes to it do not evict its neighbours.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(super) struct Padded<T>(pub T);

/// What a lookup found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scan {
    /// The key's live entry at this slot, with the `meta` read.
    Hit(usize, u64),
    /// The key's entry, expired.
    SameExpired(usize, u64),
    /// Not there. `end` is the empty slot that ends the probe path; `expired` the first
    /// expired entry on it.
    Miss {
        end: usize,
        end_meta: u64,
        expired: Option<(usize, u64)>,
    },
}

/// Locked stripes: `count` of them from `first` (wrapping), and the empty slot that ends the
/// cluster the caller scanned.
#[derive(Debug)]
pub(super) struct Run {
    first: usize,
    count: usize,
    pub end: usize,
}

/// Waits a little longer each time; after 64 rounds (a writer preempted while holding a slot
/// or a stripe, which a pinned worker almost never is), yields the CPU to it.
#[cold]
pub(super) fn backoff(spins: &mut u32) {
    if *spins < 64 {
        for _ in 0..1u32 << (*spins).min(6) {
            std::hint::spin_loop();
        }
    } else {
        std::thread::yield_now();
    }
    *spins += 1;
}

/// The TCP state after a packet in direction `orig` with flags `tcp`, from state `cur`.
///
/// A FIN closes one direction only: the connection stays half-closed (with the established
/// timeout, since the other side may keep sending for as long as it likes) until the other
/// side's FIN too, and only then is it closing (`Fin`, the short timeout). A FIN before the
/// handshake completed closes at once: such an entry was never answered in full, and a long
/// life for it would let a sender park entries with bare FINs.
#[inline]
fn next_state(cur: u8, orig: bool, tcp: u8) -> u8 {
    use tcp_flags::*;
    const EST: u8 = CtState::Established as u8;
    const HALF_ORIG: u8 = CtState::HalfClosedOrig as u8;
    const HALF_REPLY: u8 = CtState::HalfClosedReply as u8;
    if cur >= CtState::Udp as u8 && cur <= CtState::Other as u8 {
        return cur;
    }
    if tcp & RST != 0 {
        return CtState::Rst as u8;
    }
    if cur == CtState::Rst as u8 || cur == CtState::Fin as u8 {
        return cur;
    }
    let open = if cur == CtState::SynSent as u8 && !orig {
        if tcp & SYN != 0 {
            CtState::SynRecv as u8
        } else {
            // Picked up mid-stream: traffic both ways.
            EST
        }
    } else if cur == CtState::SynRecv as u8 && orig && tcp & (SYN | ACK) == ACK {
        EST
    } else {
        cur
    };
    if tcp & FIN == 0 {
        return open;
    }
    match (open, orig) {
        (EST, true) | (HALF_ORIG, true) => HALF_ORIG,
        (EST, false) | (HALF_REPLY, false) => HALF_REPLY,
        // The other side's FIN (both have closed), or a FIN before the handshake completed.
        _ => CtState::Fin as u8,
    }
}

/// The state a new entry starts in.
pub(super) fn initial_state(protocol: u8, tcp: u8) -> CtState {
    match protocol {
        proto::TCP if tcp & tcp_flags::RST != 0 => CtState::Rst,
        proto::TCP if tcp & tcp_flags::FIN != 0 => CtState::Fin,
        proto::TCP => CtState::SynSent,
        proto::UDP => CtState::Udp,
        proto::ICMP => CtState::Icmp,
        _ => CtState::Other,
    }
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

/// The shared table. See the module documentation.
#[derive(Debug)]
pub(super) struct Table {
    slots: Box<[Slot]>,
    locks: Box<[AtomicU8]>,
    pub shards: Box<[Shard]>,
    /// Entries per owner (live or expired, not yet collected): raised when an entry is written
    /// for an owner, lowered whenever one leaves (reused, evicted, collected, removed for
    /// policy, flushed). Written only under the stripe locks of the entry's cluster, with
    /// atomic adds, so the count is exact whatever the workers do at once.
    owners: Box<[AtomicU32]>,
    /// Owners whose entries are counted but not limited (see
    /// [`super::Conntrack::exempt_from_endpoint_limit`]).
    unlimited: Box<[AtomicBool]>,
    /// The most entries one owner may have.
    pub endpoint_limit: usize,
    pub capacity: usize,
    seed: u64,
    pub timeouts: CtTimeouts,
    /// Timeout by state nibble (0 for `EMPTY` and `BUSY`).
    timeout: [u64; 16],
    /// Entries (live or expired, not yet collected).
    pub len: Padded<AtomicUsize>,
    /// Where the next handle's garbage collection chunk starts (a count of slots, taken modulo
    /// the slot count).
    pub gc_cursor: Padded<AtomicUsize>,
    /// Handles made so far: picks each new handle's counter shard.
    pub handles: AtomicUsize,
}

impl Table {
    /// Bytes of one slot.
    pub(super) const BYTES_PER_SLOT: usize = std::mem::size_of::<Slot>();

    pub(super) fn new(config: &CtConfig) -> Table {
        let capacity = config.capacity.clamp(1, MAX_CAPACITY);
        let n = capacity + capacity.div_ceil(3) + 1;
        let mut slots: Vec<Slot> = Vec::with_capacity(n);
        advise_huge_pages(&slots);
        slots.resize_with(n, Slot::default);
        let t = &config.timeouts;
        let mut timeout = [0u64; 16];
        for s in [
            CtState::SynSent,
            CtState::SynRecv,
            CtState::Established,
            CtState::Fin,
            CtState::Rst,
            CtState::Udp,
            CtState::Icmp,
            CtState::Other,
            CtState::HalfClosedOrig,
            CtState::HalfClosedReply,
        ] {
            timeout[s as usize] = match s {
                CtState::SynSent | CtState::SynRecv => t.tcp_syn,
                CtState::Established | CtState::HalfClosedOrig | CtState::HalfClosedReply => {
                    t.tcp_established
                }
                CtState::Fin => t.tcp_fin,
                CtState::Rst => t.tcp_rst,
                CtState::Udp => t.udp,
                CtState::Icmp => t.icmp,
                CtState::Other => t.other,
            };
        }
        Table {
            slots: slots.into_boxed_slice(),
            locks: (0..n.div_ceil(STRIPE)).map(|_| AtomicU8::new(0)).collect(),
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            owners: (0..OWNERS).map(|_| AtomicU32::new(0)).collect(),
            unlimited: (0..OWNERS).map(|_| AtomicBool::new(false)).collect(),
            endpoint_limit: match config.endpoint_limit {
                0 => super::default_endpoint_limit(capacity),
                n => n.min(capacity),
            },
            capacity,
            seed: config.seed,
            timeouts: config.timeouts,
            timeout,
            len: Padded(AtomicUsize::new(0)),
            gc_cursor: Padded(AtomicUsize::new(0)),
            handles: AtomicUsize::new(0),
        }
    }

    /// Slots in the table.
    #[inline]
    pub(super) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Bytes of the slot array, its locks and the counter shards.
    pub(super) fn memory_bytes(&self) -> usize {
        self.slots.len() * Self::BYTES_PER_SLOT
            + self.locks.len()
            + self.shards.len() * std::mem::size_of::<Shard>()
            + self.owners.len() * std::mem::size_of::<AtomicU32>()
            + self.unlimited.len()
    }

    #[inline]
    fn next(&self, i: usize) -> usize {
        if i + 1 == self.slots.len() { 0 } else { i + 1 }
    }

    #[inline]
    fn hash(&self, c: &Canon) -> u64 {
        let k1 = c.addrs();
        let k2 = ((c.ap as u64) << 32) | ((c.bp as u64) << 8) | c.proto as u64;
        let h = (k1 ^ self.seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let h = (h.rotate_left(29) ^ k2).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        h ^ (h >> 31)
    }

    #[inline]
    pub(super) fn home(&self, c: &Canon) -> usize {
        ((self.hash(c) as u128 * self.slots.len() as u128) >> 64) as usize
    }

    /// The timeout of an entry in the state `m` holds.
    #[inline]
    pub(super) fn timeout_of(&self, m: u64) -> u64 {
        self.timeout[state_of(m) as usize]
    }

    #[inline]
    fn live(&self, m: u64, seen: u64, now: u64) -> bool {
        now < seen.saturating_add(self.timeout_of(m))
    }

    /// Starts loading the cache lines of the probe path of `c` (see
    /// [`super::Conntrack::prefetch`]).
    #[inline]
    pub(super) fn prefetch(&self, c: &Canon) {
        let home = self.home(c);
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

    // ----- readers -----

    /// Looks `c` up. Lock-free; retried until the read is consistent.
    #[inline]
    pub(super) fn scan(&self, c: &Canon, now: u64) -> Scan {
        let home = self.home(c);
        let mut spins = 0;
        loop {
            if let Some(s) = self.try_scan(c, home, now) {
                return s;
            }
            backoff(&mut spins);
        }
    }

    /// One attempt: walk the path, then walk it again comparing generations. `None`: a writer
    /// was at work on the path; try again.
    #[inline(always)]
    fn try_scan(&self, c: &Canon, home: usize, now: u64) -> Option<Scan> {
        let (found, walked, gens) = self.walk(c, home, now)?;
        fence(Acquire);
        // A hit needs only its own slot to be unchanged (a seqlock read of that slot): the
        // entry is there, wherever the rest of the path moved. A miss needs the whole path,
        // since an entry moved back across it would otherwise be missed.
        if let Scan::Hit(i, m) = found {
            return (self.slots[i].meta.load(Relaxed) == m).then_some(found);
        }
        self.unchanged(home, walked, gens).then_some(found)
    }

    /// The first pass: what the path says, how many slots it took and the sum of their
    /// generations. `None` if a slot was busy.
    #[inline(always)]
    fn walk(&self, c: &Canon, home: usize, now: u64) -> Option<(Scan, usize, u64)> {
        let (key, addrs) = (c.key(), c.addrs());
        let mut i = home;
        let mut walked = 0usize;
        let mut gens = 0u64;
        let mut expired = None;
        let found = loop {
            let s = &self.slots[i];
            let m = s.meta.load(Acquire);
            let st = state_of(m);
            if st == BUSY {
                return None;
            }
            gens += gen_of(m);
            walked += 1;
            if st == EMPTY {
                break Scan::Miss {
                    end: i,
                    end_meta: m,
                    expired,
                };
            }
            let live = self.live(m, s.seen.load(Relaxed), now);
            if m & KEY_MASK == key && s.addrs.load(Relaxed) == addrs {
                break if live {
                    Scan::Hit(i, m)
                } else {
                    Scan::SameExpired(i, m)
                };
            }
            if !live && expired.is_none() {
                expired = Some((i, m));
            }
            i = self.next(i);
            if walked == self.slots.len() {
                // Only while a flush empties the table stripe by stripe can a path look this
                // long; read again.
                return None;
            }
        };
        Some((found, walked, gens))
    }

    /// The second pass (after an acquire fence): whether the `walked` slots from `home` still
    /// hold the generations that summed to `gens`, none busy. Generations only move forward
    /// (modulo 1024), so a change anywhere on the path changes the sum.
    #[inline]
    fn unchanged(&self, home: usize, walked: usize, gens: u64) -> bool {
        let mut j = home;
        let mut again = 0u64;
        for _ in 0..walked {
            let m = self.slots[j].meta.load(Relaxed);
            if state_of(m) == BUSY {
                return false;
            }
            again += gen_of(m);
            j = self.next(j);
        }
        again == gens
    }

    /// A consistent read of slot `i`, or `None` if it is empty (or stayed busy for a long
    /// while: only listings use this).
    pub(super) fn read(&self, i: usize) -> Option<Read> {
        let s = &self.slots[i];
        for _ in 0..1000 {
            let m = s.meta.load(Acquire);
            match state_of(m) {
                EMPTY => return None,
                BUSY => {
                    std::hint::spin_loop();
                    continue;
                }
                _ => {}
            }
            let r = Read {
                addrs: s.addrs.load(Relaxed),
                meta: m,
                revision: s.revision.load(Relaxed),
                ext: s.ext.load(Relaxed),
                seen: s.seen.load(Relaxed),
            };
            fence(Acquire);
            if gen_of(s.meta.load(Relaxed)) == gen_of(m) {
                return Some(r);
            }
        }
        None
    }

    /// The `meta` of the entry `h` names, if the slot still holds that entry.
    #[inline]
    pub(super) fn meta_of(&self, h: usize) -> Option<(usize, u64)> {
        let (i, g) = unhandle(h);
        let m = self.slots[i].meta.load(Acquire);
        let st = state_of(m);
        (gen_of(m) == g && st != EMPTY && st != BUSY).then_some((i, m))
    }

    /// A consistent read of the entry `h` names, if the slot still holds it.
    pub(super) fn read_handle(&self, h: usize) -> Option<Read> {
        let (i, g) = unhandle(h);
        self.read(i).filter(|r| gen_of(r.meta) == g)
    }

    /// The revision field of slot `h` (whatever entry it holds).
    #[inline]
    pub(super) fn revision(&self, h: usize) -> u32 {
        self.slots[unhandle(h).0].revision.load(Relaxed)
    }

    /// The ext field of slot `h` (whatever entry it holds).
    #[inline]
    pub(super) fn ext(&self, h: usize) -> u32 {
        self.slots[unhandle(h).0].ext.load(Relaxed)
    }

    // ----- the established path (lock-free writes) -----

    /// Advances the entry `h` names for a packet in direction `orig` with TCP flags `tcp`, and
    /// refreshes it (except a RST entry, which keeps its deadline). `false` if the slot no
    /// longer holds that entry (moved or removed since the probe): nothing is changed.
    #[inline]
    pub(super) fn advance(&self, now: u64, h: usize, orig: bool, tcp: u8) -> bool {
        let (i, g) = unhandle(h);
        let s = &self.slots[i];
        let mut m = s.meta.load(Relaxed);
        let (cur, next) = loop {
            let cur = state_of(m);
            if gen_of(m) != g || cur == EMPTY || cur == BUSY {
                return false;
            }
            let next = next_state(cur, orig, tcp);
            let mut nm = with_state(m, next);
            if !orig {
                nm |= F_SEEN_REPLY;
            }
            if nm == m {
                break (cur, next);
            }
            match s.meta.compare_exchange_weak(m, nm, Relaxed, Relaxed) {
                Ok(_) => break (cur, next),
                Err(x) => m = x,
            }
        };
        if !(next == CtState::Rst as u8 && cur == CtState::Rst as u8) && now > s.seen.load(Relaxed)
        {
            s.seen.store(now, Relaxed);
        }
        true
    }

    /// Gives the entry `h` names the state and reply flag of the entry `leader` names, and
    /// refreshes it, so that it lives as long as its leader did at `now`. Lock-free; `false`
    /// if either is gone.
    #[inline]
    pub(super) fn follow(&self, now: u64, h: usize, leader: usize) -> bool {
        let Some((_, lm)) = self.meta_of(leader) else {
            return false;
        };
        let (i, g) = unhandle(h);
        let s = &self.slots[i];
        let mut m = s.meta.load(Relaxed);
        loop {
            let st = state_of(m);
            if gen_of(m) != g || st == EMPTY || st == BUSY {
                return false;
            }
            let nm = with_state(m, state_of(lm)) | (lm & F_SEEN_REPLY);
            if nm == m {
                break;
            }
            match s.meta.compare_exchange_weak(m, nm, Relaxed, Relaxed) {
                Ok(_) => break,
                Err(x) => m = x,
            }
        }
        if now > s.seen.load(Relaxed) {
            s.seen.store(now, Relaxed);
        }
        true
    }

    /// Sets the stage byte of the entry `h` names. Lock-free; `false` if it is gone.
    pub(super) fn set_stage(&self, h: usize, stage: u8) -> bool {
        let (i, g) = unhandle(h);
        let s = &self.slots[i];
        let mut m = s.meta.load(Relaxed);
        loop {
            let st = state_of(m);
            if gen_of(m) != g || st == EMPTY || st == BUSY {
                return false;
            }
            let nm = (m & !STAGE_MASK) | (u64::from(stage) << STAGE_SHIFT);
            if nm == m {
                return true;
            }
            match s.meta.compare_exchange_weak(m, nm, Relaxed, Relaxed) {
                Ok(_) => return true,
                Err(x) => m = x,
            }
        }
    }

    // ----- writers (stripe locks) -----

    #[inline]
    fn try_lock(&self, stripe: usize) -> bool {
        let l = &self.locks[stripe];
        l.load(Relaxed) == 0 && l.compare_exchange(0, 1, Acquire, Relaxed).is_ok()
    }

    #[inline]
    fn unlock(&self, stripe: usize) {
        self.locks[stripe].store(0, Release);
    }

    fn lock(&self, stripe: usize) {
        let mut spins = 0;
        while !self.try_lock(stripe) {
            backoff(&mut spins);
        }
    }

    /// Locks the stripes from slot `start` to the empty slot that ends its cluster, scanning
    /// each stripe only once it holds it. `None` (nothing held) if a stripe was taken.
    pub(super) fn try_lock_run(&self, start: usize) -> Option<Run> {
        let stripes = self.locks.len();
        let first = start / STRIPE;
        if !self.try_lock(first) {
            return None;
        }
        let mut run = Run {
            first,
            count: 1,
            end: start,
        };
        let mut last = first;
        let mut i = start;
        loop {
            let st = i / STRIPE;
            if st != last {
                // Back at the first stripe only after wrapping round the whole table: held.
                if st != first {
                    if !self.try_lock(st) {
                        self.unlock_run(&run);
                        return None;
                    }
                    run.count += 1;
                }
                last = st;
            }
            if state_of(self.slots[i].meta.load(Relaxed)) == EMPTY {
                run.end = i;
                return Some(run);
            }
            i = self.next(i);
            debug_assert!(run.count <= stripes);
        }
    }

    /// [`Self::try_lock_run`] until it succeeds.
    pub(super) fn lock_run(&self, start: usize) -> Run {
        let mut spins = 0;
        loop {
            if let Some(r) = self.try_lock_run(start) {
                return r;
            }
            backoff(&mut spins);
        }
    }

    pub(super) fn unlock_run(&self, run: &Run) {
        let stripes = self.locks.len();
        for k in 0..run.count {
            self.unlock((run.first + k) % stripes);
        }
    }

    /// The `meta`, `seen` and `addrs` of slot `i`, each read on its own: consistent only
    /// under the lock of its stripe (else a first look, to be confirmed under the lock).
    #[inline]
    pub(super) fn view(&self, i: usize) -> (u64, u64, u64) {
        let s = &self.slots[i];
        (
            s.meta.load(Relaxed),
            s.seen.load(Relaxed),
            s.addrs.load(Relaxed),
        )
    }

    /// The slot after `i`.
    #[inline]
    pub(super) fn after(&self, i: usize) -> usize {
        self.next(i)
    }

    /// Whether an entry in `m` with last-seen `seen` is live at `now`.
    #[inline]
    pub(super) fn is_live(&self, m: u64, seen: u64, now: u64) -> bool {
        self.live(m, seen, now)
    }

    /// Whether slot `i`'s entry (its `meta` and `addrs`) is the flow `c`.
    #[inline]
    pub(super) fn is_key(m: u64, addrs: u64, c: &Canon) -> bool {
        m & KEY_MASK == c.key() && addrs == c.addrs()
    }

    /// Marks slot `i` busy with a new generation and returns what it held, as the last value
    /// before the mark (a concurrent [`Self::advance`] either lands before, and is kept, or
    /// fails). Caller holds the stripe.
    fn freeze(&self, i: usize) -> u64 {
        let s = &self.slots[i];
        let mut m = s.meta.load(Relaxed);
        loop {
            match s
                .meta
                .compare_exchange_weak(m, bumped(m, BUSY), Relaxed, Relaxed)
            {
                Ok(_) => return m,
                Err(x) => m = x,
            }
        }
    }

    /// Writes `e` into slot `i` (caller holds the stripe). Replacing an entry takes a new
    /// generation; filling an empty slot keeps the slot's (a reader that saw it empty stopped
    /// there, and read nothing of it), so the handle of a `Vacant` probe names the entry
    /// created in that slot.
    pub(super) fn write(&self, i: usize, e: &Entry) {
        let s = &self.slots[i];
        let cur = s.meta.load(Relaxed);
        let busy = if state_of(cur) == EMPTY {
            with_state(cur, BUSY)
        } else {
            bumped(cur, BUSY)
        };
        s.meta.store(busy, Relaxed);
        // Seqlock writer: the busy mark is ordered before the data words for any reader that
        // sees one of them (paired with the reader's acquire fence).
        fence(Release);
        s.addrs.store(e.addrs, Relaxed);
        s.revision.store(e.revision, Relaxed);
        s.ext.store(e.ext, Relaxed);
        s.seen.store(e.seen, Relaxed);
        s.meta
            .store((e.meta & !GEN_MASK) | (busy & GEN_MASK), Release);
    }

    /// Advances the entry at slot `i` (caller holds the stripe) as [`Self::advance`] would.
    pub(super) fn advance_at(&self, now: u64, i: usize, m: u64, orig: bool, tcp: u8) {
        self.advance(now, handle(i, m), orig, tcp);
    }

    /// Removes the entry at slot `i` by backward shift (caller holds the stripes of `i`'s
    /// cluster, up to the empty slot that ends it). Returns the number of slots touched.
    pub(super) fn remove_locked(&self, i: usize) -> usize {
        let n = self.slots.len();
        self.freeze(i);
        self.release(owner_of(self.slots[i].ext.load(Relaxed)));
        let mut hole = i;
        let mut j = i;
        let mut touched = 1;
        loop {
            j = self.next(j);
            touched += 1;
            let s = &self.slots[j];
            let m = s.meta.load(Relaxed);
            if state_of(m) == EMPTY {
                break;
            }
            let h = self.home(&Canon::of_slot(s.addrs.load(Relaxed), m));
            // Move the entry back to the hole if the hole lies cyclically within [h, j).
            let dist_hj = (j + n - h) % n;
            let dist_ij = (j + n - hole) % n;
            if dist_hj >= dist_ij {
                let m = self.freeze(j);
                let e = Entry {
                    addrs: s.addrs.load(Relaxed),
                    meta: m,
                    revision: s.revision.load(Relaxed),
                    ext: s.ext.load(Relaxed),
                    seen: s.seen.load(Relaxed),
                };
                self.write(hole, &e);
                hole = j;
            }
        }
        // The last hole (frozen, its generation already bumped) becomes empty.
        let s = &self.slots[hole];
        let m = s.meta.load(Relaxed);
        s.meta.store(m & GEN_MASK, Release);
        self.len.0.fetch_sub(1, Relaxed);
        touched
    }

    /// Removes the entry at slot `i` if `keep_going(meta, seen)` says so once `i`'s cluster
    /// is locked. With `wait`, waits for the locks; otherwise gives up (`None`) if a stripe is
    /// taken. Returns the slots touched.
    pub(super) fn remove_if(
        &self,
        i: usize,
        wait: bool,
        keep_going: impl Fn(u64, u64) -> bool,
    ) -> Option<usize> {
        let run = if wait {
            self.lock_run(i)
        } else {
            self.try_lock_run(i)?
        };
        let (m, seen, _) = self.view(i);
        let st = state_of(m);
        let r = (st != EMPTY && st != BUSY && keep_going(m, seen)).then(|| self.remove_locked(i));
        self.unlock_run(&run);
        r
    }

    /// Empties the table, one stripe at a time. Returns how many entries it removed.
    pub(super) fn flush(&self) -> usize {
        let mut total = 0;
        for st in 0..self.locks.len() {
            self.lock(st);
            let mut n = 0;
            for s in &self.slots[st * STRIPE..((st + 1) * STRIPE).min(self.slots.len())] {
                let m = s.meta.load(Relaxed);
                if state_of(m) != EMPTY {
                    s.meta.store(bumped(m, EMPTY) & GEN_MASK, Release);
                    self.release(owner_of(s.ext.load(Relaxed)));
                    n += 1;
                }
            }
            self.len.0.fetch_sub(n, Relaxed);
            self.unlock(st);
            total += n;
        }
        total
    }

    /// Under the stripe lock: runs `f` on slot `h` if it still holds that entry.
    fn with_locked_entry(&self, h: usize, f: impl FnOnce(&Slot)) -> bool {
        let (i, g) = unhandle(h);
        let st = i / STRIPE;
        self.lock(st);
        let s = &self.slots[i];
        let m = s.meta.load(Relaxed);
        let ok = gen_of(m) == g && state_of(m) != EMPTY;
        if ok {
            f(s);
        }
        self.unlock(st);
        ok
    }

    /// Records the policy revision of the entry `h` names. `false` if it is gone.
    pub(super) fn set_revision(&self, h: usize, revision: u32) -> bool {
        self.with_locked_entry(h, |s| s.revision.store(revision, Relaxed))
    }

    /// Sets the ext index (at most [`EXT_MASK`]) of the entry `h` names, keeping its owner.
    /// `false` if it is gone.
    pub(super) fn set_ext(&self, h: usize, ext: u32) -> bool {
        self.with_locked_entry(h, |s| {
            let owner = s.ext.load(Relaxed) & !EXT_MASK;
            s.ext.store(owner | (ext & EXT_MASK), Relaxed);
        })
    }

    // ----- owners (callers hold the stripes of the entry's cluster) -----

    /// Counts one more entry for `owner`, unless it has [`Self::endpoint_limit`] already (and
    /// is not exempt): then nothing changes and the answer is `false`. Strict under
    /// concurrency, and the count never passes the limit (see below).
    pub(super) fn acquire(&self, owner: usize) -> bool {
        let c = &self.owners[owner];
        if self.unlimited[owner].load(Relaxed) {
            c.fetch_add(1, Relaxed);
            return true;
        }
        // A compare-and-swap, not an add taken back: the count itself never passes the limit,
        // not even for the instant another reader (`owned`, `xylem status`) may look.
        let mut n = c.load(Relaxed);
        loop {
            if n as usize >= self.endpoint_limit {
                return false;
            }
            match c.compare_exchange_weak(n, n + 1, Relaxed, Relaxed) {
                Ok(_) => return true,
                Err(now) => n = now,
            }
        }
    }

    /// Counts one entry fewer for `owner`.
    pub(super) fn release(&self, owner: usize) {
        self.owners[owner].fetch_sub(1, Relaxed);
    }

    /// Exempts `owner` from the endpoint limit.
    pub(super) fn exempt(&self, owner: usize) {
        self.unlimited[owner].store(true, Relaxed);
    }

    /// Entries `owner` has (live or expired, not yet collected).
    pub(super) fn owned(&self, owner: usize) -> usize {
        self.owners[owner].load(Relaxed) as usize
    }

    /// The owner of the entry at slot `i` (caller holds its stripe).
    pub(super) fn owner_at(&self, i: usize) -> usize {
        owner_of(self.slots[i].ext.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon_at(t: &Table, home: usize, n: usize) -> Vec<Canon> {
        (1u32..)
            .map(|i| Canon {
                a: 0x0a00_0000 | i,
                b: 0x0a01_0001,
                ap: 1,
                bp: 80,
                proto: proto::TCP,
            })
            .filter(|c| t.home(c) == home)
            .take(n)
            .collect()
    }

    fn insert(t: &Table, c: &Canon) -> usize {
        let run = t.lock_run(t.home(c));
        t.write(run.end, &Entry::new(c, true, CtState::SynSent, 1, 0, 0));
        t.len.0.fetch_add(1, Relaxed);
        assert!(t.acquire(0));
        t.unlock_run(&run);
        run.end
    }

    /// The race a lookup must not lose: it has walked past the start of a cluster when the
    /// entry it looks for is shifted back across its path. The second pass sees it.
    #[test]
    fn the_second_pass_sees_an_entry_moved_across_the_path() {
        let t = Table::new(&CtConfig {
            capacity: 64,
            ..CtConfig::default()
        });
        let cs = canon_at(&t, 10, 3);
        let at: Vec<usize> = cs.iter().map(|c| insert(&t, c)).collect();
        assert_eq!(at, [10, 11, 12]);
        // A first pass for the third entry, then the first one is removed: the others move
        // back one slot each.
        let (found, walked, gens) = t.walk(&cs[2], 10, 1).unwrap();
        assert!(matches!(found, Scan::Hit(12, _)));
        assert!(t.unchanged(10, walked, gens), "nothing happened yet");
        let run = t.lock_run(10);
        t.remove_locked(10);
        t.unlock_run(&run);
        assert!(!t.unchanged(10, walked, gens));
        assert_eq!(
            t.scan(&cs[2], 1),
            Scan::Hit(11, t.slots[11].meta.load(Relaxed))
        );
        // State changes on the established path do not disturb readers.
        let (_, walked, gens) = t.walk(&cs[2], 10, 1).unwrap();
        let m = t.slots[10].meta.load(Relaxed);
        assert!(t.advance(5, handle(10, m), false, tcp_flags::SYN | tcp_flags::ACK));
        assert!(t.unchanged(10, walked, gens));
        // A half-written slot is busy: the walk stops.
        let s = &t.slots[11];
        let m = s.meta.load(Relaxed);
        s.meta.store(bumped(m, BUSY), Relaxed);
        assert!(t.walk(&cs[2], 10, 1).is_none());
        assert!(!t.unchanged(10, walked, gens));
        s.meta.store(m, Relaxed);
    }

    #[test]
    fn meta_fields_do_not_overlap() {
        let c = Canon {
            a: 1,
            b: 2,
            ap: 0xffff,
            bp: 0xffff,
            proto: 0xff,
        };
        let e = Entry::new(&c, true, CtState::Other, 0, 0, 0);
        let m = bumped(e.meta | F_SEEN_REPLY | STAGE_MASK, CtState::Fin as u8);
        assert_eq!(m & KEY_MASK, c.key());
        assert_eq!(state_of(m), CtState::Fin as u8);
        assert_eq!(gen_of(m), 1);
        assert_eq!(stage_of(m), 0xff);
        assert_ne!(m & F_ORIG_A, 0);
        assert_ne!(m & F_SEEN_REPLY, 0);
        assert_eq!(Canon::of_slot(c.addrs(), m), c);
        // The generation wraps inside its field.
        let mut m = m;
        for _ in 0..1024 {
            m = bumped(m, CtState::Fin as u8);
        }
        assert_eq!(gen_of(m), 1);
        assert_eq!(m & KEY_MASK, c.key());
        assert_eq!(stage_of(m), 0xff);
        let h = handle(12345, m);
        assert_eq!(unhandle(h), (12345, 1));
    }
}

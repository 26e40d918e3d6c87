//! Fragment tracking: what the first fragment of an IPv4 datagram said, for its later fragments.
//!
//! A fragmented datagram's transport header (its ports) travels in its first fragment only
//! (offset 0, more-fragments set); the later fragments carry the IP header and payload bytes.
//! As Cilium does, the pipeline's fragment stage (`crate::pipeline::fragment`) records, when a
//! first fragment has been judged, its ports and its fate (passed, or dropped with which
//! reason) under the datagram's reassembly key ([`Datagram`]: source, destination, protocol, IP
//! ID; RFC 791). A later fragment looks the record up and is judged as part of that flow: so an
//! allowed datagram arrives whole and a denied one is dropped whole. A later fragment with no
//! record is dropped (`frag-no-head`).
//!
//! What it does:
//! - [`FragmentTable`]: a fixed number of records, allocated once, in buckets of
//!   [`FragmentTable::SLOTS_PER_BUCKET`] (two cache lines); a datagram lives in the one bucket
//!   its key hashes to (a seeded hash, random per table, so that nobody can aim datagrams at
//!   another's bucket).
//! - [`FragmentTable::lookup`] (per later fragment) and [`FragmentTable::record`] (per first
//!   fragment) are lock-free: atomic loads to read, one compare-and-swap to claim a slot; no
//!   thread ever waits for another.
//! - Expiry: a record lives [`TIMEOUT_NS`] (5 s) from its first fragment. A sender hands all the
//!   fragments of a datagram to its interface back to back (Linux's `ip_do_fragment` sends them
//!   in one call), so the record is needed for micro- to milliseconds; 5 s leaves room for any
//!   queueing, is well within the 30 s a receiving kernel waits for the missing pieces
//!   (`ipfrag_time`), and keeps an IP ID that comes round again (after 65,536 datagrams from one
//!   source to one destination) from meeting a stale record of its own in most cases.
//! - The last fragment (more-fragments clear) does not remove the record: fragments of one
//!   datagram that arrived on different queues may still be in another worker's batch, and
//!   would then find no record. Records expire instead, and their slots are reused.
//! - Full: a new record takes a free or expired slot of its bucket; if there is none, it
//!   replaces the **oldest** record of the bucket ([`Recorded::Evicted`]), whose datagram's
//!   remaining fragments, if any are still to come, are then dropped as `frag-no-head`. A new
//!   datagram is never refused for want of room: refusing would let one pod that keeps the
//!   table full (one first fragment per slot every 5 s) cut off every fragmented datagram on
//!   the node, while evicting the oldest means it must push a whole bucket of newer records
//!   through in the micro- to milliseconds a victim datagram is in flight.
//!
//! What it does not do: it decides nothing (the pipeline's fragment stage does), reassembles
//! nothing (fragments go on as they came, and the destination reassembles them), reads no
//! clock (`now` is the worker's, read once per batch), and allocates nothing after
//! [`FragmentTable::new`].
//!
//! # Shared by every worker
//! One table per agent, hung on the conntrack handle ([`crate::conntrack::Conntrack::fragments`])
//! and shared the same way, because the fragments of one datagram may be received by different
//! workers. A pod's veth hands each packet to the receive queue matching the transmit queue its
//! kernel picked for it: the socket's cached queue, XPS, or a hash of the packet, which for a
//! fragment covers its addresses only, and for a first fragment may come from the socket. An
//! AF_PACKET socket, which anyone with `CAP_NET_RAW` in the pod has, sends on the queue of the
//! CPU it runs on, and so can put each fragment of one datagram on another queue. With a table
//! per worker, such a datagram would be dropped by the workers that did not see its head (safe,
//! but the datagram lost); with one shared table the queue a fragment takes does not matter.
//! The cost is paid by fragments only: an unfragmented packet tests one flag; a later fragment
//! reads one bucket (two cache lines) that another worker may have written.
//!
//! What a pod can do with a raw socket: later fragments with made-up IDs find no record and are
//! dropped; a record's key holds its source address, which the ingress checks have already
//! tied to the sending port, so a pod can never ride another pod's record; first fragments sent
//! in bulk can evict other datagrams' records (see above): then those datagrams' remaining
//! fragments are dropped. Every failure drops fragments; none lets a packet pass that the
//! policy would not pass whole.
//!
//! # Layout and concurrency
//! A bucket is two cache lines of five slots: the five address pairs, the five "rest" words
//! (protocol, IP ID, ports and fate), the five state words (a 16-bit generation and a 48-bit
//! expiry in units of 2^16 ns, rounded up). 25.6 bytes per record. The protocol is the one
//! [`crate::learned`] uses:
//! - Claiming a slot (free, expired, the same datagram's, or the bucket's oldest): one
//!   compare-and-swap moves its state word to "being claimed" with the next generation, which
//!   makes it the claimer's alone; it stores the address pair and the rest word and publishes
//!   the state word with the new expiry (release stores).
//! - Reading: the state word (acquire), the address pair and the rest word, the state word
//!   again: the same generation twice means the two words in between belong to that record. A
//!   torn read (a claim of the slot at the same time) is "not this slot".
//! - A slot being claimed is skipped by other claimers; if every slot of a bucket is being
//!   claimed at once (more workers than slots writing one bucket), the record is not stored
//!   ([`Recorded::Busy`]), with the same effect as an eviction.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::slotword::{CLAIMING, MAX_UNITS, UNIT_SHIFT, generation, live, units, word};
use crate::stats::DropReason;

/// How long a record lives after its first fragment was judged: 5 s (see the module
/// documentation).
pub const TIMEOUT_NS: u64 = 5_000_000_000;

const SLOTS: usize = 5;

/// The datagram a fragment belongs to: the key under which a receiver reassembles it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP protocol number.
    pub proto: u8,
    /// IP identification.
    pub id: u16,
}

impl Datagram {
    #[inline]
    fn addrs(&self) -> u64 {
        u64::from(self.src.to_bits()) << 32 | u64::from(self.dst.to_bits())
    }

    /// The part of a slot's rest word that belongs to the key: protocol and ID, bits 40..64.
    #[inline]
    fn tag(&self) -> u64 {
        u64::from(self.proto) << 16 | u64::from(self.id)
    }
}

/// What a datagram's first fragment said, for its later fragments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Its source port (the ICMP echo identifier for an echo; 0 for other protocols).
    pub sport: u16,
    /// Its destination port (likewise).
    pub dport: u16,
    /// Why it was dropped, or `None` if it passed the policy.
    pub dropped: Option<DropReason>,
}

impl Head {
    /// The rest word of a slot: protocol (56..64), ID (40..56), source port (24..40),
    /// destination port (8..24), fate (0..8: 0 passed, else the drop reason + 1).
    #[inline]
    fn pack(&self, d: &Datagram) -> u64 {
        let fate = self.dropped.map_or(0, |r| u64::from(r as u8) + 1);
        d.tag() << 40 | u64::from(self.sport) << 24 | u64::from(self.dport) << 8 | fate
    }

    #[inline]
    fn unpack(rest: u64) -> Head {
        let dropped = match rest as u8 {
            0 => None,
            // Only `pack` writes the fate; an unknown one would still drop.
            f => Some(
                DropReason::ALL
                    .get(usize::from(f - 1))
                    .copied()
                    .unwrap_or(DropReason::FragNoHead),
            ),
        };
        Head {
            sport: (rest >> 24) as u16,
            dport: (rest >> 8) as u16,
            dropped,
        }
    }
}

/// What [`FragmentTable::record`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Stored in a free or expired slot.
    New,
    /// Stored over the live record of the same datagram (its first fragment came again).
    Replaced,
    /// Stored over the oldest live record of the bucket, of another datagram.
    Evicted,
    /// Not stored: every slot of the bucket was being claimed by another worker.
    Busy,
}

/// Two cache lines: five slots, the address pairs first.
#[derive(Default)]
#[repr(C, align(128))]
struct Bucket {
    addrs: [AtomicU64; SLOTS],
    rest: [AtomicU64; SLOTS],
    words: [AtomicU64; SLOTS],
}

const _: () = assert!(std::mem::size_of::<Bucket>() == 128);

impl Bucket {
    /// The record in slot `s` if it is live and belongs to the datagram whose address pair is
    /// `addrs` and whose key tag is `tag`: its state word and rest word. Torn reads (a claim
    /// running at the same time) are reported as no record.
    #[inline]
    fn read(&self, s: usize, addrs: u64, tag: u64, now_units: u64) -> Option<(u64, u64)> {
        // A cheap filter first: most slots hold another datagram.
        if self.addrs[s].load(Ordering::Relaxed) != addrs {
            return None;
        }
        let w = self.words[s].load(Ordering::Acquire);
        if !live(w, now_units) {
            return None;
        }
        // Acquire loads, so that each load below happens after the one before; if either of
        // them sees a later claim's store, the state word read last has another generation.
        let a = self.addrs[s].load(Ordering::Acquire);
        let rest = self.rest[s].load(Ordering::Acquire);
        let again = self.words[s].load(Ordering::Relaxed);
        (a == addrs && rest >> 40 == tag && again == w).then_some((w, rest))
    }
}

/// The fragment records shared by every worker. See the module documentation.
pub struct FragmentTable {
    buckets: Box<[Bucket]>,
    seed: u64,
}

impl std::fmt::Debug for FragmentTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FragmentTable")
            .field("records", &self.records())
            .finish()
    }
}

impl FragmentTable {
    /// Records per bucket.
    pub const SLOTS_PER_BUCKET: usize = SLOTS;
    /// The fewest records [`Self::for_flows`] gives a table.
    pub const MIN_RECORDS: usize = 64;
    /// The most records [`Self::for_flows`] gives a table.
    pub const MAX_RECORDS: usize = 16_384;

    /// A table of at least `records` records (rounded up to whole buckets, at least one), with
    /// a random hash seed. All memory is allocated here.
    pub fn new(records: usize) -> Self {
        let seed = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            0x0066_7261_676d_656e_u64,
        );
        Self::with_seed(records, seed)
    }

    /// As [`Self::new`] with a chosen hash seed (tests).
    pub fn with_seed(records: usize, seed: u64) -> Self {
        let n = records.div_ceil(SLOTS).max(1);
        let mut buckets = Vec::with_capacity(n);
        buckets.resize_with(n, Bucket::default);
        Self {
            buckets: buckets.into_boxed_slice(),
            seed,
        }
    }

    /// The table for a flow table of `capacity` connections: one record per 16 connections,
    /// between [`Self::MIN_RECORDS`] and [`Self::MAX_RECORDS`] (at most 410 KiB). Records are
    /// needed for the moments a datagram is in flight, so even the smallest table holds many
    /// more than are needed at once; the largest keeps records of 16,384 datagrams, an eviction
    /// horizon of tens of milliseconds at hundreds of thousands of fragmented datagrams per
    /// second.
    pub fn for_flows(capacity: usize) -> Self {
        Self::new((capacity / 16).clamp(Self::MIN_RECORDS, Self::MAX_RECORDS))
    }

    /// The number of records the table holds.
    pub fn records(&self) -> usize {
        self.buckets.len() * SLOTS
    }

    /// Bytes of the table.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.buckets)
    }

    /// The bucket of `d`: a seeded multiply-mix hash reduced with a multiply-shift.
    #[inline]
    fn bucket(&self, d: &Datagram) -> &Bucket {
        let n = self.buckets.len();
        let h = (d.addrs() ^ self.seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let h = (h ^ (h >> 29) ^ d.tag()).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        let h = h ^ (h >> 32);
        // Below `n`, so the indexing cannot fail.
        &self.buckets[((u128::from(h) * n as u128) >> 64) as usize]
    }

    /// The live record of `d` at `now`, if any (the newest, if two workers recorded the same
    /// first fragment at once). The per-later-fragment read: one bucket, atomic loads only.
    #[inline]
    pub fn lookup(&self, now: u64, d: &Datagram) -> Option<Head> {
        let (addrs, tag, now_units) = (d.addrs(), d.tag(), now >> UNIT_SHIFT);
        let b = self.bucket(d);
        let mut best: Option<(u64, u64)> = None;
        for s in 0..SLOTS {
            if let Some((w, rest)) = b.read(s, addrs, tag, now_units)
                && best.is_none_or(|(u, _)| units(w) > u)
            {
                best = Some((units(w), rest));
            }
        }
        best.map(|(_, rest)| Head::unpack(rest))
    }

    /// Records `head` for datagram `d`, judged at `now`, until `now + TIMEOUT_NS`. Never waits
    /// and never refuses for want of room (see the module documentation). Once this returns,
    /// every thread's [`Self::lookup`] that happens after it finds the record.
    pub fn record(&self, now: u64, d: &Datagram, head: Head) -> Recorded {
        let (addrs, tag, rest) = (d.addrs(), d.tag(), head.pack(d));
        let now_units = now >> UNIT_SHIFT;
        // Rounded up, so the record is live at least until the timeout.
        let want = now
            .saturating_add(TIMEOUT_NS)
            .div_ceil(1 << UNIT_SHIFT)
            .min(MAX_UNITS);
        let b = self.bucket(d);
        // Each failed claim follows another thread's successful change of that slot, so the
        // loop is lock-free; it is bounded so that a packet's work is too.
        for _ in 0..=SLOTS {
            let Some((s, w, what)) = Self::victim(b, addrs, tag, now_units) else {
                return Recorded::Busy;
            };
            let next_gen = generation(w) + 1;
            if b.words[s]
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
            // The slot is ours until the state word is published below.
            b.rest[s].store(rest, Ordering::Release);
            b.addrs[s].store(addrs, Ordering::Release);
            b.words[s].store(word(next_gen, want), Ordering::Release);
            return what;
        }
        Recorded::Busy
    }

    /// The slot a new record of the datagram (`addrs`, `tag`) takes, its state word as seen, and
    /// what storing there does: the datagram's own live record, else a free or expired slot,
    /// else the oldest live record. `None` if every slot is being claimed.
    #[inline]
    fn victim(b: &Bucket, addrs: u64, tag: u64, now_units: u64) -> Option<(usize, u64, Recorded)> {
        let mut best: Option<(usize, u64, Recorded)> = None;
        for s in 0..SLOTS {
            let w = b.words[s].load(Ordering::Acquire);
            if units(w) == CLAIMING {
                continue;
            }
            if !live(w, now_units) {
                if !matches!(best, Some((_, _, Recorded::New))) {
                    best = Some((s, w, Recorded::New));
                }
                continue;
            }
            if b.read(s, addrs, tag, now_units).is_some() {
                return Some((s, w, Recorded::Replaced));
            }
            let older = match best {
                None => true,
                Some((_, bw, Recorded::Evicted)) => units(w) < units(bw),
                Some(_) => false,
            };
            if older {
                best = Some((s, w, Recorded::Evicted));
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
    const SEC: u64 = 1_000_000_000;

    fn dgram(id: u16) -> Datagram {
        Datagram {
            src: A,
            dst: B,
            proto: 17,
            id,
        }
    }

    fn head(dport: u16) -> Head {
        Head {
            sport: 40000,
            dport,
            dropped: None,
        }
    }

    #[test]
    fn a_record_is_found_by_its_whole_key_only() {
        let t = FragmentTable::with_seed(64, 1);
        assert_eq!(t.record(0, &dgram(7), head(53)), Recorded::New);
        assert_eq!(t.lookup(1, &dgram(7)), Some(head(53)));
        // Another ID, protocol, source or destination: another datagram.
        assert_eq!(t.lookup(1, &dgram(8)), None);
        assert_eq!(
            t.lookup(
                1,
                &Datagram {
                    proto: 6,
                    ..dgram(7)
                }
            ),
            None
        );
        assert_eq!(t.lookup(1, &Datagram { src: B, ..dgram(7) }), None);
        assert_eq!(t.lookup(1, &Datagram { dst: A, ..dgram(7) }), None);
    }

    #[test]
    fn a_drop_is_recorded_with_its_reason() {
        let t = FragmentTable::with_seed(64, 1);
        for r in DropReason::ALL {
            let h = Head {
                sport: 1,
                dport: 0xffff,
                dropped: Some(r),
            };
            t.record(0, &dgram(r as u16), h);
            assert_eq!(t.lookup(0, &dgram(r as u16)), Some(h));
        }
    }

    #[test]
    fn records_expire_after_the_timeout() {
        let t = FragmentTable::with_seed(64, 1);
        let now = 1_000 * SEC;
        t.record(now, &dgram(1), head(53));
        assert!(t.lookup(now + TIMEOUT_NS - 1, &dgram(1)).is_some());
        assert_eq!(
            t.lookup(now + TIMEOUT_NS + (1 << UNIT_SHIFT), &dgram(1)),
            None
        );
        // The expired slot is reused.
        assert_eq!(
            t.record(now + 2 * TIMEOUT_NS, &dgram(1), head(54)),
            Recorded::New
        );
        assert_eq!(t.lookup(now + 2 * TIMEOUT_NS, &dgram(1)), Some(head(54)));
    }

    #[test]
    fn a_repeated_first_fragment_replaces_its_record() {
        let t = FragmentTable::with_seed(64, 1);
        t.record(0, &dgram(1), head(53));
        assert_eq!(t.record(SEC, &dgram(1), head(80)), Recorded::Replaced);
        assert_eq!(t.lookup(SEC, &dgram(1)), Some(head(80)));
    }

    #[test]
    fn a_full_bucket_gives_up_its_oldest_record() {
        // One bucket: every datagram shares it.
        let t = FragmentTable::with_seed(SLOTS, 1);
        assert_eq!(t.records(), SLOTS);
        for i in 0..SLOTS as u16 {
            assert_eq!(
                t.record(u64::from(i) * SEC / 10, &dgram(i), head(i)),
                Recorded::New
            );
        }
        let now = SEC;
        assert_eq!(t.record(now, &dgram(100), head(100)), Recorded::Evicted);
        // The oldest (ID 0) went; the others and the newcomer are there.
        assert_eq!(t.lookup(now, &dgram(0)), None);
        for i in 1..SLOTS as u16 {
            assert_eq!(t.lookup(now, &dgram(i)), Some(head(i)), "{i}");
        }
        assert_eq!(t.lookup(now, &dgram(100)), Some(head(100)));
        // Then the next oldest.
        assert_eq!(t.record(now, &dgram(101), head(101)), Recorded::Evicted);
        assert_eq!(t.lookup(now, &dgram(1)), None);
        assert!(t.lookup(now, &dgram(2)).is_some());
    }

    #[test]
    fn sizes() {
        assert_eq!(FragmentTable::with_seed(1, 1).records(), SLOTS);
        let small = FragmentTable::for_flows(100);
        assert!(small.records() >= FragmentTable::MIN_RECORDS);
        let big = FragmentTable::for_flows(usize::MAX);
        assert!(big.records() >= FragmentTable::MAX_RECORDS);
        assert!(big.memory_bytes() <= 410 * 1024, "{}", big.memory_bytes());
    }

    #[test]
    fn first_fragments_recorded_at_once_into_one_bucket_all_keep_their_records() {
        // Four workers claim slots of the same bucket at the same instant, over and over: as
        // long as there is room, none may take a slot another took (each claim is a
        // compare-and-swap), so every record is found afterwards.
        const WORKERS: u16 = 4;
        for round in 0..500u16 {
            let t = FragmentTable::with_seed(SLOTS, u64::from(round));
            let start = std::sync::Barrier::new(usize::from(WORKERS));
            std::thread::scope(|s| {
                for k in 0..WORKERS {
                    let (t, start) = (&t, &start);
                    s.spawn(move || {
                        start.wait();
                        assert_ne!(t.record(0, &dgram(k), head(k)), Recorded::Busy);
                    });
                }
            });
            for k in 0..WORKERS {
                assert_eq!(t.lookup(0, &dgram(k)), Some(head(k)), "round {round}");
            }
        }
    }
}

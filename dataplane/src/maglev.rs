//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016), with weights as Cilium's weighted Maglev has them: the table a
//! service's new connections pick their backend from.
//!
//! What it does: [`MaglevTable::new`] fills a table of `M` slots with backend indices, once,
//! and [`MaglevTable::lookup`] maps a flow's hash to a backend in O(1) (`table[hash % M]`,
//! no allocation, no lock, no branch beyond the bounds check). Every backend owns a share of
//! the slots in proportion to its weight (weight 0: no slot), and when a backend leaves or
//! joins, few of the other backends' slots change owner, so few new connections land on a
//! different backend than they would have before.
//!
//! What it does not do: it hashes no packet (the caller hashes the flow's 5-tuple into a
//! `u32`, the same way on every worker), translates no address, and remembers no connection:
//! keeping an established connection on its backend when the table changes is conntrack's
//! job, which is why only new connections ever consult this table.
//!
//! How: each backend's key (its IPv4 address and port) gives it, through a fixed seeded hash,
//! an `offset` in `[0, M)` and a `skip` in `[1, M)`, and so a preference list over the slots,
//! `offset, offset + skip, offset + 2·skip, …` (mod `M`). The backends then take turns, each
//! turn claiming the backend's next preferred slot that is still free, until all `M` slots are
//! taken. A backend's preference list depends on its key and `M` only, never on the other
//! backends, so the same backend set always builds the same table, on every node and after
//! every restart. The seeds are part of that contract: changing them moves every backend.
//!
//! Weights decide whose turn it is: a backend takes a turn when it is the furthest behind its
//! weighted share of the turns taken so far (the smallest `(turns + 1) / weight`; ties go to
//! the smaller key). This is the rule of Cilium's weighted Maglev (a backend takes turns in
//! proportion to its weight), with the most-behind backend kept in a heap rather than found by
//! scanning, so the cost does not grow with the spread of the weights. With equal weights the
//! turns are a plain round-robin, which is the paper's algorithm. Each backend takes its
//! weighted share of the `M` turns to within one turn, so its share of the slots is within
//! `1 / M` of `weight / Σ weights`.
//!
//! Why `M` must be prime: a skip in `[1, M)` is then coprime to `M`, so every preference list
//! visits every slot exactly once: a backend always finds a free slot, and two backends'
//! lists are independent permutations. Only the primes in [`SUPPORTED_TABLE_SIZES`] are
//! accepted (Cilium's list), default [`DEFAULT_TABLE_SIZE`]. Why `M ≥ 100 × backends` is
//! recommended: a backend's slot count is a whole number, so shares are only as fine as
//! `1 / M`, and disruption when a backend leaves grows as `M / backends` shrinks; at 100 slots
//! per backend both stay around 1 %.
//!
//! Build cost: `M` turns, each `O(log backends)` for the heap plus the probes past slots
//! already taken (on the order of `M · ln M` in all, most of them in the last turns, and at
//! most `M` per backend), with no allocation beyond the table (2 bytes a slot), the
//! per-backend slot counts and a few bytes of working state per backend. Measured (bench
//! `maglev`, 2-vCPU VM): 0.8, 1.0 and 1.4 ms for 10, 100 and 1,000 backends at `M` = 16381;
//! 2.6, 3.8 and 5.7 ms at 65521. A table is built once per change of a service's backend
//! set, never on the per-packet path.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fmt;
use std::net::SocketAddrV4;

use crate::error::Error;

/// The table sizes accepted: primes near powers of two, as Cilium supports.
pub const SUPPORTED_TABLE_SIZES: [u32; 10] = [
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071,
];

/// The default table size `M`: 100 slots per backend up to 163 backends.
pub const DEFAULT_TABLE_SIZE: u32 = 16381;

/// The most backends a table takes: slots hold `u16` indices, and `u16::MAX` marks a free slot
/// while the table is built.
pub const MAX_BACKENDS: usize = u16::MAX as usize;

/// Marks a slot not yet taken during the build; never left in a built table.
const FREE: u16 = u16::MAX;

/// Seeds of the two hashes of a backend's key. Fixed: they decide every backend's preference
/// list, so changing them changes every table.
const SEED_OFFSET: u64 = 0x6d61_676c_6576_0001;
const SEED_SKIP: u64 = 0x6d61_676c_6576_0002;

/// One backend as the table sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MaglevBackend {
    /// What identifies the backend across rebuilds; its preference list derives from it.
    pub key: SocketAddrV4,
    /// Its relative share of the slots; 0 gives it none.
    pub weight: u32,
}

/// The murmur3 64-bit finalizer: a bijection whose every output bit depends on every input
/// bit, so neighbouring addresses and ports get unrelated offsets and skips (and, in the
/// service stage, neighbouring flows unrelated slots).
#[inline(always)]
pub(crate) fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A backend's `(offset, skip)` in a table of `table_size` slots: its preference list is
/// `offset + j · skip (mod table_size)` for `j = 0, 1, …`. Depends on the key and the size only.
pub fn permutation(key: SocketAddrV4, table_size: u32) -> (u32, u32) {
    let k = (u64::from(key.ip().to_bits()) << 16) | u64::from(key.port());
    let m = u64::from(table_size);
    let offset = mix(k ^ SEED_OFFSET) % m;
    let skip = mix(k ^ SEED_SKIP) % (m - 1) + 1;
    (offset as u32, skip as u32)
}

/// A backend waiting for its turn, ordered so that the heap's top is the one furthest behind
/// its weighted share.
#[derive(Debug, PartialEq, Eq)]
struct Turn {
    /// Turns taken so far, plus one.
    next: u64,
    weight: u64,
    /// Position of the backend's key among the positive-weight backends' keys, sorted.
    rank: u32,
}

impl Ord for Turn {
    fn cmp(&self, other: &Self) -> Ordering {
        // `next / weight` compared without division; both products stay below 2^49
        // (next ≤ M + 1 < 2^18, weight < 2^32). Reversed: `BinaryHeap` pops its greatest.
        (self.next * other.weight)
            .cmp(&(other.next * self.weight))
            .then(self.rank.cmp(&other.rank))
            .reverse()
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A built Maglev table: slot → index of a backend in the list it was built from.
#[derive(Clone, PartialEq, Eq)]
pub struct MaglevTable {
    table: Box<[u16]>,
    /// Slots each backend holds, by its index in the list given to [`MaglevTable::new`].
    slots: Box<[u32]>,
    /// `⌈2^64 / M⌉`, so `hash % M` needs two multiplications instead of a division.
    fastmod: u64,
}

impl fmt::Debug for MaglevTable {
    // The slots themselves are tens of thousands of numbers: show the size and the counts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaglevTable")
            .field("table_size", &self.table.len())
            .field("slots_per_backend", &self.slots)
            .finish()
    }
}

fn refuse(field: &'static str, reason: String) -> Error {
    Error::Maglev { field, reason }
}

impl MaglevTable {
    /// Builds the table of `table_size` slots for `backends`; [`lookup`](Self::lookup)
    /// returns indices into `backends`. The result depends on the set of backends, not on
    /// their order in the list (beyond which index names which backend).
    ///
    /// Errors: `table_size` not in [`SUPPORTED_TABLE_SIZES`]; no backend with a positive
    /// weight; more than [`MAX_BACKENDS`] backends; the same key twice.
    pub fn new(backends: &[MaglevBackend], table_size: u32) -> Result<Self, Error> {
        if !SUPPORTED_TABLE_SIZES.contains(&table_size) {
            return Err(refuse(
                "maglev_table_size",
                format!(
                    "{table_size} is not a supported prime (supported: {}; default {DEFAULT_TABLE_SIZE}, \
                     100 or more slots per backend recommended)",
                    SUPPORTED_TABLE_SIZES.map(|m| m.to_string()).join(", ")
                ),
            ));
        }
        if backends.len() > MAX_BACKENDS {
            return Err(refuse(
                "backends",
                format!(
                    "{} given, at most {MAX_BACKENDS} are supported",
                    backends.len()
                ),
            ));
        }
        // Sorted by key: the rank that breaks ties between turns, and duplicates side by side.
        let mut by_key: Vec<u16> = (0..backends.len() as u16).collect();
        by_key.sort_unstable_by_key(|&i| backends[usize::from(i)].key);
        if let Some(w) = by_key
            .windows(2)
            .find(|w| backends[usize::from(w[0])].key == backends[usize::from(w[1])].key)
        {
            return Err(refuse(
                "backends",
                format!(
                    "{} is listed twice (at {} and {})",
                    backends[usize::from(w[0])].key,
                    w[0].min(w[1]),
                    w[0].max(w[1])
                ),
            ));
        }
        by_key.retain(|&i| backends[usize::from(i)].weight > 0);
        if by_key.is_empty() {
            return Err(refuse(
                "backends",
                if backends.is_empty() {
                    "none given: a table needs at least one backend with a positive weight"
                        .to_string()
                } else {
                    format!(
                        "all {} have weight 0: a table needs at least one backend with a \
                         positive weight",
                        backends.len()
                    )
                },
            ));
        }

        // Per positive-weight backend, by rank: the next slot of its preference list, and its skip.
        let mut walks: Vec<(u32, u32)> = by_key
            .iter()
            .map(|&i| permutation(backends[usize::from(i)].key, table_size))
            .collect();
        let mut turns: BinaryHeap<Turn> = by_key
            .iter()
            .enumerate()
            .map(|(rank, &i)| Turn {
                next: 1,
                weight: u64::from(backends[usize::from(i)].weight),
                rank: rank as u32,
            })
            .collect();
        let mut table = vec![FREE; table_size as usize].into_boxed_slice();
        let mut slots = vec![0u32; backends.len()].into_boxed_slice();
        for _ in 0..table_size {
            let Some(mut turn) = turns.peek_mut() else {
                unreachable!("the heap holds every positive-weight backend, and there is one");
            };
            let rank = turn.rank as usize;
            let backend = by_key[rank];
            let (pos, skip) = &mut walks[rank];
            // Ends: the list visits every slot (M prime), and one is still free this turn.
            loop {
                let slot = *pos as usize;
                *pos += *skip;
                if *pos >= table_size {
                    *pos -= table_size;
                }
                if table[slot] == FREE {
                    table[slot] = backend;
                    break;
                }
            }
            slots[usize::from(backend)] += 1;
            turn.next += 1;
        }
        Ok(Self {
            table,
            slots,
            fastmod: u64::MAX / u64::from(table_size) + 1,
        })
    }

    /// The backend for a flow: its index in the list the table was built from. `hash` is the
    /// caller's hash of the flow's 5-tuple; every worker must hash the same way.
    #[inline]
    pub fn lookup(&self, hash: u32) -> usize {
        usize::from(self.table[self.slot_of(hash)])
    }

    /// `hash % M`, by Lemire, Kaser and Kurz's direct remainder ("Faster Remainder by Direct
    /// Computation", 2019): exact for every 32-bit `hash` and `M`.
    #[inline]
    fn slot_of(&self, hash: u32) -> usize {
        let low = self.fastmod.wrapping_mul(u64::from(hash));
        ((u128::from(low) * self.table.len() as u128) >> 64) as usize
    }

    /// `M`, the number of slots.
    pub fn table_size(&self) -> u32 {
        self.table.len() as u32
    }

    /// The number of backends the table was built from, weight 0 included.
    pub fn backends(&self) -> usize {
        self.slots.len()
    }

    /// The slots, in order: each holds a backend's index.
    pub fn entries(&self) -> &[u16] {
        &self.table
    }

    /// Slots held by each backend, by index.
    pub fn slot_counts(&self) -> &[u32] {
        &self.slots
    }

    /// The fraction of the slots (and so of new connections, for well-spread hashes) that
    /// `backend` takes; 0 for weight 0. Panics if `backend` is out of range.
    pub fn share(&self, backend: usize) -> f64 {
        f64::from(self.slots[backend]) / self.table.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn backend(i: u32, weight: u32) -> MaglevBackend {
        MaglevBackend {
            key: SocketAddrV4::new(Ipv4Addr::from_bits(0x0ac8_0000 + i), 8080),
            weight,
        }
    }

    fn equal(n: u32) -> Vec<MaglevBackend> {
        (0..n).map(|i| backend(i, 1)).collect()
    }

    /// The key owning each slot, so tables built from different lists compare.
    fn owners(t: &MaglevTable, list: &[MaglevBackend]) -> Vec<SocketAddrV4> {
        t.entries()
            .iter()
            .map(|&i| list[usize::from(i)].key)
            .collect()
    }

    fn assert_refused(r: Result<MaglevTable, Error>, field: &str, says: &str) {
        match r {
            Err(e @ Error::Maglev { field: f, .. }) => {
                assert_eq!(f, field, "{e}");
                let msg = e.to_string();
                assert!(msg.starts_with(&format!("{field}: ")), "{msg}");
                assert!(msg.contains(says), "{msg:?} does not say {says:?}");
            }
            other => panic!("expected a Maglev error on {field}, got {other:?}"),
        }
    }

    #[test]
    fn supported_sizes_are_primes() {
        for m in SUPPORTED_TABLE_SIZES {
            assert!((2..m).take_while(|d| d * d <= m).all(|d| m % d != 0), "{m}");
        }
        assert!(SUPPORTED_TABLE_SIZES.contains(&DEFAULT_TABLE_SIZE));
    }

    #[test]
    fn build_and_lookup() {
        let list = [backend(1, 1), backend(2, 1), backend(3, 1)];
        let t = MaglevTable::new(&list, 251).unwrap();
        assert_eq!(t.table_size(), 251);
        assert_eq!(t.backends(), 3);
        assert!(t.entries().iter().all(|&i| usize::from(i) < list.len()));
        assert_eq!(t.slot_counts().iter().sum::<u32>(), 251);
        for i in 0..3 {
            assert!((83..=84).contains(&t.slot_counts()[i]), "{t:?}");
            let counted = t.entries().iter().filter(|&&e| usize::from(e) == i).count();
            assert_eq!(counted as u32, t.slot_counts()[i]);
        }
        let mut seen = [false; 3];
        for h in [0, 1, 250, 251, 252, 1 << 31, u32::MAX - 1, u32::MAX] {
            let b = t.lookup(h);
            assert_eq!(b, usize::from(t.entries()[(h % 251) as usize]), "hash {h}");
            seen[b] = true;
        }
        let mut x = 0x1234_5678u32;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            seen[t.lookup(x)] = true;
        }
        assert_eq!(seen, [true; 3]);
        // A single backend takes every slot.
        let one = MaglevTable::new(&[backend(9, 5)], 251).unwrap();
        assert_eq!(one.slot_counts(), &[251]);
        assert_eq!(one.share(0), 1.0);
    }

    #[test]
    fn lookup_remainder_is_exact_for_every_size() {
        let mut x = 0x9e37_79b9u32;
        for m in SUPPORTED_TABLE_SIZES {
            let t = MaglevTable::new(&equal(2), m).unwrap();
            let edges = [0, 1, m - 1, m, m + 1, 2 * m - 1, u32::MAX / m * m, u32::MAX];
            for h in edges.into_iter().chain((0..20_000).map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x
            })) {
                assert_eq!(t.slot_of(h), (h % m) as usize, "{h} % {m}");
            }
        }
    }

    /// Relative error of each backend's share against its weight's share.
    fn assert_shares_follow_weights(list: &[MaglevBackend], m: u32, tolerance: f64) {
        let t = MaglevTable::new(list, m).unwrap();
        let total: u64 = list.iter().map(|b| u64::from(b.weight)).sum();
        for (i, b) in list.iter().enumerate() {
            let ideal = b.weight as f64 / total as f64;
            let got = t.share(i);
            assert!(
                (got - ideal).abs() <= tolerance * ideal,
                "backend {i} (weight {}): share {got}, ideal {ideal}",
                b.weight
            );
        }
    }

    #[test]
    fn shares_follow_weights_1_2_3() {
        let list = [backend(1, 1), backend(2, 2), backend(3, 3)];
        assert_shares_follow_weights(&list, 16381, 0.01);
        // Large weights take the same shares as small ones in the same ratio.
        let list = [backend(1, 1000), backend(2, 2000), backend(3, 3000)];
        assert_shares_follow_weights(&list, 16381, 0.01);
    }

    #[test]
    fn shares_equal_100_backends() {
        assert_shares_follow_weights(&equal(100), 65521, 0.01);
        let t = MaglevTable::new(&equal(100), 65521).unwrap();
        assert!(
            t.slot_counts().iter().all(|&s| s == 655 || s == 656),
            "{t:?}"
        );
    }

    #[test]
    fn shares_follow_skewed_weights() {
        let mut list: Vec<MaglevBackend> = (0..50).map(|i| backend(i, 1)).collect();
        list.push(backend(50, 950));
        assert_shares_follow_weights(&list, 131071, 0.01);
    }

    #[test]
    fn weight_zero_takes_no_slot() {
        let list = [backend(1, 1), backend(2, 0), backend(3, 1)];
        let t = MaglevTable::new(&list, 1021).unwrap();
        assert_eq!(t.slot_counts()[1], 0);
        assert_eq!(t.share(1), 0.0);
        assert!(t.entries().iter().all(|&e| e != 1));
        // A weight-0 backend changes nothing for the others.
        let without = MaglevTable::new(&[list[0], list[2]], 1021).unwrap();
        assert_eq!(owners(&t, &list), owners(&without, &[list[0], list[2]]));
    }

    /// Of the slots a remaining backend held before `removed` left, the fraction now held by
    /// another remaining backend.
    fn moved_among_others(list: &[MaglevBackend], removed: usize, m: u32) -> f64 {
        let before = MaglevTable::new(list, m).unwrap();
        let mut rest = list.to_vec();
        rest.remove(removed);
        let after = MaglevTable::new(&rest, m).unwrap();
        let (b, a) = (owners(&before, list), owners(&after, &rest));
        let gone = list[removed].key;
        let held = b.iter().filter(|&&k| k != gone).count();
        let moved = b
            .iter()
            .zip(&a)
            .filter(|(x, y)| **x != gone && x != y)
            .count();
        moved as f64 / held as f64
    }

    #[test]
    fn removing_one_backend_moves_few_other_slots() {
        let list = equal(100);
        for removed in [0, 37, 99] {
            let moved = moved_among_others(&list, removed, 65521);
            assert!(moved <= 1.0 / 100.0 + 0.01, "removing {removed}: {moved}");
        }
        let list = equal(10);
        let moved = moved_among_others(&list, 4, 16381);
        assert!(moved <= 1.0 / 10.0 + 0.01, "{moved}");
        let list: Vec<MaglevBackend> = (0..10).map(|i| backend(i, 1 + i % 3)).collect();
        let moved = moved_among_others(&list, 4, 16381);
        assert!(moved <= 1.0 / 10.0 + 0.01, "weighted: {moved}");
    }

    #[test]
    fn adding_back_restores_the_table() {
        let list = equal(100);
        let full = MaglevTable::new(&list, 65521).unwrap();
        let mut rest = list.clone();
        let gone = rest.remove(42);
        let smaller = MaglevTable::new(&rest, 65521).unwrap();
        assert_ne!(owners(&full, &list), owners(&smaller, &rest));
        // Back in its place: the very same table.
        let mut back = rest.clone();
        back.insert(42, gone);
        assert_eq!(MaglevTable::new(&back, 65521).unwrap(), full);
        // Back at the end of the list: the same owner in every slot.
        let mut appended = rest;
        appended.push(gone);
        let t = MaglevTable::new(&appended, 65521).unwrap();
        assert_eq!(owners(&t, &appended), owners(&full, &list));
    }

    #[test]
    fn deterministic() {
        let list: Vec<MaglevBackend> = (0..30).map(|i| backend(i * 7, 1 + i % 4)).collect();
        let a = MaglevTable::new(&list, 4093).unwrap();
        let b = MaglevTable::new(&list, 4093).unwrap();
        assert_eq!(a, b);
        // Any order of the same backends: the same owner in every slot.
        let mut reversed = list.clone();
        reversed.reverse();
        let r = MaglevTable::new(&reversed, 4093).unwrap();
        assert_eq!(owners(&a, &list), owners(&r, &reversed));
        // A backend's preference list is its own: pinned, so a change of the hash or its
        // seeds (which would move every backend on every node) cannot pass unnoticed.
        assert_eq!(
            permutation(
                SocketAddrV4::new(Ipv4Addr::new(10, 200, 0, 12), 8080),
                16381
            ),
            PINNED_PERMUTATION
        );
        let t = MaglevTable::new(&[backend(1, 1), backend(2, 2), backend(3, 3)], 251).unwrap();
        assert_eq!(&t.entries()[..16], PINNED_ENTRIES);
    }

    const PINNED_PERMUTATION: (u32, u32) = (13814, 5312);
    const PINNED_ENTRIES: &[u16] = &[1, 2, 2, 1, 2, 2, 0, 2, 0, 1, 1, 2, 1, 1, 2, 2];

    #[test]
    fn refuses_bad_table_sizes() {
        let list = equal(3);
        assert_refused(
            MaglevTable::new(&list, 1000),
            "maglev_table_size",
            "1000 is not a supported prime",
        );
        // Prime, but not one of the supported sizes.
        assert_refused(
            MaglevTable::new(&list, 257),
            "maglev_table_size",
            "257 is not a supported prime (supported: 251, 509,",
        );
        assert_refused(MaglevTable::new(&list, 0), "maglev_table_size", "0 is not");
        assert_refused(MaglevTable::new(&list, 1), "maglev_table_size", "1 is not");
    }

    #[test]
    fn refuses_bad_backend_lists() {
        assert_refused(MaglevTable::new(&[], 251), "backends", "none given");
        assert_refused(
            MaglevTable::new(&[backend(1, 0), backend(2, 0)], 251),
            "backends",
            "all 2 have weight 0",
        );
        assert_refused(
            MaglevTable::new(&[backend(1, 1), backend(2, 1), backend(1, 3)], 251),
            "backends",
            "10.200.0.1:8080 is listed twice (at 0 and 2)",
        );
        let many: Vec<MaglevBackend> = (0..=MAX_BACKENDS as u32).map(|i| backend(i, 1)).collect();
        assert_refused(
            MaglevTable::new(&many, 131071),
            "backends",
            "65536 given, at most 65535",
        );
    }
}

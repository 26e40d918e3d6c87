//! The learned-state table (`xylem_dataplane::learned`): the per-packet lookup, and learning.
//!
//! The table is sized for 65,536 facts and filled to that (75 % of its slots: the load it is
//! sized for), keys spread over 64 scopes (pods). Single-threaded: the cost of the operations
//! themselves, uncontended.
//! - `lookup/hit-one`: the same fact every time (hot in cache);
//! - `lookup/hit-random`, `lookup/miss-random`: a fact drawn at random from 4,096 known ones,
//!   or 4,096 unknown keys, spread over the whole table (1.9 MB: mostly in the last-level
//!   cache, so these are cache-warm numbers);
//! - `learn/refresh`: a known fact learned with a later expiry (one compare-and-swap, and a
//!   report pushed; the loop pops it again, so the time includes that pop);
//! - `learn/unchanged`: a known fact learned with an earlier expiry (reads only, no report);
//! - `learn/new`: a new fact each time, taking an expired fact's slot (the clock moves so that
//!   about half the table expires), report pushed and popped;
//! - `gc/12-slots`: one incremental collection step (a bucket pair), as a worker would call it
//!   per batch; after the first sweep it mostly examines slots that are live or already free.
//!
//! Criterion reports time per iteration, which is ns/operation. Bytes per fact are printed
//! before the measurements.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use xylem_bench::xorshift;
use xylem_dataplane::learned::{GcCursor, Learn, LearnedTable};

const FACTS: u32 = 65_536;
const SEC: u64 = 1_000_000_000;
const NOW: u64 = 1_000 * SEC;

fn key(i: u32) -> (u32, Ipv4Addr) {
    (i % 64, Ipv4Addr::from_bits(0x0a00_0000 + i))
}

/// A table of `FACTS` capacity, holding `FACTS` facts (keys `key(0..FACTS)`), as many as fit.
fn full_table() -> LearnedTable {
    let t = LearnedTable::with_seed(FACTS as usize, 1024, 0x5eed);
    for i in 0..FACTS {
        let (scope, ip) = key(i);
        let _ = t.learn(NOW, scope, ip, NOW + 3600 * SEC, i);
    }
    t
}

fn bench(c: &mut Criterion) {
    let t = full_table();
    let s = t.stats();
    println!(
        "learned table: capacity {} facts, {} slots, {} KiB, {:.1} bytes per fact at capacity \
         ({:.1} per slot); filled with {} facts, {} refused",
        t.capacity(),
        t.slots(),
        t.memory_bytes() / 1024,
        t.bytes_per_fact(),
        LearnedTable::BYTES_PER_SLOT,
        s.learned,
        s.full
    );
    let known: Vec<(u32, Ipv4Addr)> = {
        let mut rng = 0x1234_5678u64;
        let mut v = Vec::with_capacity(4096);
        while v.len() < 4096 {
            let (scope, ip) = key((xorshift(&mut rng) % u64::from(FACTS)) as u32);
            if t.lookup(NOW, scope, ip).is_some() {
                v.push((scope, ip));
            }
        }
        v
    };
    let unknown: Vec<(u32, Ipv4Addr)> = (0..4096).map(|i| key(FACTS + 1 + i * 7)).collect();
    assert!(
        unknown
            .iter()
            .all(|&(s, ip)| t.lookup(NOW, s, ip).is_none())
    );

    let mut g = c.benchmark_group("lookup");
    g.throughput(Throughput::Elements(1));
    let (s0, ip0) = known[0];
    g.bench_function("hit-one", |b| {
        b.iter(|| black_box(t.lookup(black_box(NOW), black_box(s0), black_box(ip0))))
    });
    let mut rng = 7u64;
    g.bench_function("hit-random", |b| {
        b.iter(|| {
            let (s, ip) = known[(xorshift(&mut rng) & 4095) as usize];
            black_box(t.lookup(NOW, s, ip))
        })
    });
    g.bench_function("miss-random", |b| {
        b.iter(|| {
            let (s, ip) = unknown[(xorshift(&mut rng) & 4095) as usize];
            black_box(t.lookup(NOW, s, ip))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("learn");
    g.throughput(Throughput::Elements(1));
    let mut expiry = NOW + 3600 * SEC;
    g.bench_function("refresh", |b| {
        b.iter(|| {
            expiry += SEC;
            let r = t.learn(NOW, s0, ip0, expiry, 0);
            black_box(t.pop_report());
            r
        })
    });
    assert_eq!(t.learn(NOW, s0, ip0, expiry + SEC, 0), Learn::Refreshed);
    let _ = t.pop_report();
    g.bench_function("unchanged", |b| {
        b.iter(|| t.learn(black_box(NOW), s0, ip0, black_box(NOW + SEC), 0))
    });
    // New facts on a table of their own: the clock moves 1 µs per fact and each lives
    // `FACTS / 2` µs, so about half the table is live and a new fact takes an expired slot.
    let churn = LearnedTable::with_seed(FACTS as usize, 1024, 0x5eed);
    let mut n = 0u32;
    let mut refused = 0u64;
    g.bench_function("new", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            let now = NOW + u64::from(n) * 1_000;
            let (scope, ip) = key(n);
            let r = churn.learn(now, scope, ip, now + u64::from(FACTS / 2) * 1_000, n);
            refused += u64::from(r == Learn::Full);
            black_box(churn.pop_report());
            r
        })
    });
    println!("learn/new: {n} facts learned, {refused} refused");
    g.finish();

    let mut g = c.benchmark_group("gc");
    g.throughput(Throughput::Elements(12));
    let mut cursor = GcCursor::default();
    let now = NOW + u64::from(n) * 1_000;
    g.bench_function("12-slots", |b| {
        b.iter(|| churn.gc(black_box(now), &mut cursor, 12))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

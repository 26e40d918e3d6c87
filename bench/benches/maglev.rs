//! The Maglev table (`xylem_dataplane::maglev`): building it, and looking a flow up in it.
//!
//! Backends are `10.200.x.y:8080` with weight 1.
//! - `build/M=<M>/<N>-backends`: `MaglevTable::new` for `N` = 10, 100 and 1,000 backends at
//!   `M` = 16381 (the default) and 65521; the time per iteration is one whole build, as the
//!   agent pays it per change of a service's backend set. Target: ≤ 10 ms for 1,000 backends
//!   at 65521.
//! - `lookup/random-hash`: one lookup at `M` = 65521 with 100 backends, a different hash each
//!   time (the table, 128 KiB, stays in cache): ns/lookup.
//!
//! Printed before the measurements: the share of the table that changes owner when one of 100
//! backends is removed at `M` = 65521, beside the ideal `1/N` (only the removed backend's own
//! slots), and how much of it is slots moving between the remaining backends.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use xylem_bench::xorshift;
use xylem_dataplane::maglev::{MaglevBackend, MaglevTable};

fn backends(n: u32) -> Vec<MaglevBackend> {
    (0..n)
        .map(|i| MaglevBackend {
            key: SocketAddrV4::new(Ipv4Addr::from_bits(0x0ac8_0000 + i), 8080),
            weight: 1,
        })
        .collect()
}

/// The key owning each slot, so tables built from different lists compare.
fn owners(t: &MaglevTable, list: &[MaglevBackend]) -> Vec<SocketAddrV4> {
    t.entries()
        .iter()
        .map(|&i| list[usize::from(i)].key)
        .collect()
}

fn print_disruption(n: u32, m: u32, removed: usize) {
    let list = backends(n);
    let before = MaglevTable::new(&list, m).unwrap();
    let mut rest = list.clone();
    let gone = rest.remove(removed).key;
    let after = MaglevTable::new(&rest, m).unwrap();
    let (b, a) = (owners(&before, &list), owners(&after, &rest));
    let changed = b.iter().zip(&a).filter(|(x, y)| x != y).count();
    let own = b.iter().filter(|&&k| k == gone).count();
    println!(
        "remove 1 of {n} backends at M={m}: {:.2} % of the table changes owner (ideal 1/N = \
         {:.2} %): the removed backend's {own} slots ({:.2} %) and {} slots ({:.2} %) moving \
         between the {} others",
        100.0 * changed as f64 / f64::from(m),
        100.0 / f64::from(n),
        100.0 * own as f64 / f64::from(m),
        changed - own,
        100.0 * (changed - own) as f64 / f64::from(m),
        n - 1
    );
}

fn bench(c: &mut Criterion) {
    print_disruption(100, 65521, 37);

    let mut g = c.benchmark_group("build");
    for m in [16381u32, 65521] {
        for n in [10u32, 100, 1_000] {
            let list = backends(n);
            g.bench_function(
                BenchmarkId::new(format!("M={m}"), format!("{n}-backends")),
                |b| b.iter(|| MaglevTable::new(black_box(&list), black_box(m)).unwrap()),
            );
        }
    }
    g.finish();

    let t = MaglevTable::new(&backends(100), 65521).unwrap();
    let mut g = c.benchmark_group("lookup");
    g.throughput(Throughput::Elements(1));
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    g.bench_function("random-hash", |b| {
        b.iter(|| t.lookup(black_box(xorshift(&mut seed) as u32)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! `process` on forwarded frames: the cost of the per-packet forwarding decision.
//!
//! Each iteration restores the dozen bytes the previous call rewrote ([`BenchFrame::reset`]) and
//! calls `process` once; `reset-only` times the restore alone. Criterion reports time per
//! iteration, which is ns/packet.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use xylem_bench::{BenchFrame, make_partial, pod_ip, tables, tcp_frame, udp_frame};
use xylem_dataplane::conntrack::{Conntrack, CtConfig};
use xylem_dataplane::pipeline::{Verdict, process};
use xylem_dataplane::stats::WorkerStats;
use xylem_dataplane::tables::{Mode, Tables};

fn run_one(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: BenchmarkId,
    t: &Tables,
    frame: &[u8],
) {
    let stats = WorkerStats::default();
    let mut ct = Conntrack::new(&CtConfig::default());
    let mut b = BenchFrame::new(frame);
    b.reset();
    assert!(matches!(
        process(0, 0, &mut b.frame(), t, &mut ct, &stats),
        Verdict::Forward(_)
    ));
    c.bench_function(id, |bench| {
        bench.iter(|| {
            b.reset();
            black_box(process(
                black_box(0),
                0,
                &mut b.frame(),
                black_box(t),
                &mut ct,
                &stats,
            ))
        })
    });
}

fn forward(c: &mut Criterion) {
    let mut g = c.benchmark_group("process");
    g.throughput(Throughput::Elements(1));
    for routes in [4u32, 256, 65_536] {
        let t = tables(routes, Mode::Passthrough);
        let dst = pod_ip(routes - 1);
        run_one(
            &mut g,
            BenchmarkId::new("udp-64B", format!("{routes}-routes")),
            &t,
            &udp_frame(64, dst),
        );
        run_one(
            &mut g,
            BenchmarkId::new("tcp-1500B", format!("{routes}-routes")),
            &t,
            &tcp_frame(1500, dst),
        );
    }
    let t = tables(256, Mode::Passthrough);
    let mut partial = tcp_frame(1500, pod_ip(255));
    make_partial(&mut partial);
    run_one(
        &mut g,
        BenchmarkId::new("tcp-1500B-partial-csum", "256-routes"),
        &t,
        &partial,
    );
    let t_full = tables(256, Mode::Full);
    run_one(
        &mut g,
        BenchmarkId::new("udp-64B-mode-full", "256-routes"),
        &t_full,
        &udp_frame(64, pod_ip(255)),
    );

    // 65,536 routes with 4,096 different destinations in turn: lookups that miss the cache.
    let t = tables(65_536, Mode::Passthrough);
    let mut frames: Vec<BenchFrame> = (0..4096u32)
        .map(|i| {
            BenchFrame::new(&udp_frame(
                64,
                pod_ip(i.wrapping_mul(2_654_435_761) % 65_536),
            ))
        })
        .collect();
    let stats = WorkerStats::default();
    let mut ct = Conntrack::new(&CtConfig::default());
    let mut i = 0usize;
    g.bench_function(
        BenchmarkId::new("udp-64B-4096-dsts", "65536-routes"),
        |bench| {
            bench.iter(|| {
                i = (i + 1) & 4095;
                let b = &mut frames[i];
                b.reset();
                black_box(process(
                    0,
                    0,
                    &mut b.frame(),
                    black_box(&t),
                    &mut ct,
                    &stats,
                ))
            })
        },
    );
    assert_eq!(stats.drops.iter().map(|c| c.get()).sum::<u64>(), 0);

    let mut b = BenchFrame::new(&udp_frame(64, pod_ip(3)));
    g.bench_function("reset-only", |bench| {
        bench.iter(|| {
            b.reset();
            black_box(&mut b);
        })
    });
    g.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);

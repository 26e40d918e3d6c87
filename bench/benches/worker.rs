//! The worker's batch (`Worker::run_once`) in `Mode::Full` over the in-memory backend, with and
//! without the conntrack prefetch of its step 3: the per-packet cost of policy plus connection
//! tracking as the worker pays it, rings and counters included.
//!
//! Rules are CiliumNetworkPolicy YAML compiled by `xylem_policy`, as in the `policy`
//! benchmark: one policy selecting the server, 100,000 ingress rules from 100 other client
//! labels and 1,000 ports, the last allowing `app=client` on 80/TCP. Sixteen endpoints carry
//! `app=client`; the worker's conntrack (capacity = the connection count) is filled by sending
//! it, through `run_once`, one ACK per connection `client:port → server:80` and one reply (so
//! every connection is established), then:
//!
//! - `prefetch/N-conns` and `no-prefetch/N-conns`: batches of 64 ACKs on port 0, each of a
//!   connection drawn at random among the `N` tracked ones (from a pool of 2^20 pre-built
//!   frames: at 1,000,000 connections every batch touches conntrack lines spread over the whole
//!   42 MiB table, cache-cold); all forwarded to port 1. Same worker, same frames, prefetch
//!   forced on (`CtPrefetch::Always`) or off (`Never`). The worker's default (`Auto`)
//!   prefetches from `CT_PREFETCH_MIN_ENTRIES` (32,768) connections on, so it runs as
//!   `no-prefetch` at 1,000 connections and as `prefetch` at 100,000 and 1,000,000; the 1,000
//!   case measures what the pre-pass costs when every entry is in cache.
//!
//! Only `run_once` is timed (`iter_custom`): injecting the frames before it and delivering the
//! sent ones after it play the kernel's part. Criterion's time is per batch of 64 packets;
//! ÷ 64 gives ns/packet, and its throughput line gives packets/s.
//!
//! `cargo bench -p xylem-bench --bench worker`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use crossbeam::queue::ArrayQueue;
use xylem_bench::full::{CLIENT_PORT, CLIENTS, FRAME_LEN, RULES, SERVER_PORT, ack, tables};
use xylem_dataplane::io::memory::MemoryBackend;
use xylem_dataplane::slowpath::Signal;
use xylem_dataplane::tables::Tables;
use xylem_dataplane::worker::{CtPrefetch, Placement, Worker, WorkerConfig, WorkerLink};

const BATCH: usize = 64;
const POOL: usize = 1 << 20;
const NOW: u64 = 1_000_000_000;

/// One batch: `frames` arrive on `port`, the worker runs once, the "kernel" sends what it
/// queued. Returns how long `run_once` took.
fn batch<'a>(
    w: &mut Worker<MemoryBackend>,
    port: usize,
    frames: impl Iterator<Item = &'a [u8]>,
) -> Duration {
    for f in frames {
        assert!(w.backend_mut().inject(port, f), "no fill frame");
    }
    let t0 = Instant::now();
    black_box(w.run_once(NOW));
    let t = t0.elapsed();
    w.backend_mut().deliver();
    t
}

/// A worker over the in-memory backend whose conntrack tracks `conns` established
/// connections (its capacity).
fn worker(tables: &Arc<ArcSwap<Tables>>, conns: usize) -> (Worker<MemoryBackend>, WorkerLink) {
    assert!(conns <= (CLIENTS as usize) << 16);
    let link = WorkerLink::new(
        Arc::clone(tables),
        Arc::new(ArrayQueue::new(64)),
        Arc::new(Signal::default()),
    );
    let mut backend = MemoryBackend::new(2, 1024, 4096, 2048);
    backend.keep_wire(false);
    let cfg = WorkerConfig {
        placement: Placement::Dedicated,
        batch_size: BATCH,
        ct_capacity: conns,
        // Every connection comes from one client port.
        ct_endpoint_limit: conns,
        ..WorkerConfig::default()
    };
    let mut w = Worker::new(cfg, backend, link.clone()).expect("worker");
    w.run_once(NOW); // prime the fill rings
    for reply in [false, true] {
        let port = if reply { SERVER_PORT } else { CLIENT_PORT };
        for start in (0..conns as u64).step_by(BATCH) {
            let frames: Vec<Vec<u8>> = (start..(start + BATCH as u64).min(conns as u64))
                .map(|i| ack(i, reply))
                .collect();
            batch(&mut w, port, frames.iter().map(Vec::as_slice));
        }
    }
    let ct = w.conntrack();
    assert_eq!(ct.len(), conns);
    assert_eq!(ct.stats().created, conns as u64);
    assert_eq!(link.stats.forwarded.get(), 2 * conns as u64);
    (w, link)
}

fn bench(c: &mut Criterion) {
    let t0 = Instant::now();
    let tables = Arc::new(ArcSwap::from_pointee(tables()));
    println!("{RULES} rules: YAML parse + compile {:?}", t0.elapsed());
    let mut g = c.benchmark_group("worker-ct");
    g.throughput(Throughput::Elements(BATCH as u64));
    for conns in [1_000usize, 100_000, 1_000_000] {
        let t0 = Instant::now();
        let (mut w, link) = worker(&tables, conns);
        println!(
            "{conns} connections tracked in {:?} ({:.1} bytes each, {} MiB); transparent huge pages in use (whole process): {}",
            t0.elapsed(),
            w.conntrack().bytes_per_entry(),
            w.conntrack().memory_bytes() >> 20,
            xylem_bench::anon_huge_pages()
        );
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut pool = Vec::with_capacity(POOL * FRAME_LEN);
        for _ in 0..POOL {
            pool.extend_from_slice(&ack(xylem_bench::xorshift(&mut seed) % conns as u64, false));
        }
        let forwarded = link.stats.forwarded.get();
        let mut sent = 0u64;
        let mut next = 0usize;
        for (name, when) in [
            ("prefetch", CtPrefetch::Always),
            ("no-prefetch", CtPrefetch::Never),
        ] {
            w.set_ct_prefetch(when);
            g.bench_function(BenchmarkId::new(name, format!("{conns}-conns")), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let frames = (0..BATCH).map(|k| {
                            let at = ((next + k) % POOL) * FRAME_LEN;
                            &pool[at..at + FRAME_LEN]
                        });
                        total += batch(&mut w, CLIENT_PORT, frames);
                        next = (next + BATCH) % POOL;
                        sent += BATCH as u64;
                    }
                    total
                })
            });
        }
        // Every packet was of a tracked connection and forwarded.
        assert_eq!(w.conntrack().stats().created, conns as u64);
        assert_eq!(link.stats.forwarded.get() - forwarded, sent);
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

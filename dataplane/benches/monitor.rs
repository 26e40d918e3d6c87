//! Worker throughput with and without the flow monitor, on the in-memory backend: the cost the
//! monitor adds to the worker's batch (`run_once`), nothing else is timed.
//!
//! - `off`: nobody listens (mask 0).
//! - `drop-only`: a client listens for drops, but every frame is forwarded: the "idle monitor".
//! - `trace`: every frame produces an event (the worst case); the ring is drained between
//!   batches (untimed), as the agent's dispatcher does on another thread.
//!
//! `cargo bench -p xylem-dataplane --bench monitor`

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crossbeam::queue::ArrayQueue;
use etherparse::PacketBuilder;
use xylem_dataplane::io::memory::MemoryBackend;
use xylem_dataplane::monitor::EventType;
use xylem_dataplane::slowpath::Signal;
use xylem_dataplane::tables::{Gateway, MacAddr, Mode, Neighbor, Tables};
use xylem_dataplane::worker::{Placement, Worker, WorkerConfig, WorkerLink};

const BATCH: usize = 64;
const GW_MAC: [u8; 6] = [0x0e, 0x78, 0x79, 0x6c, 0, 1];

fn pod(i: u8) -> (Ipv4Addr, [u8; 6]) {
    (Ipv4Addr::new(10, 200, 0, 10 + i), [2, 0, 0, 0, 0, 0x10 + i])
}

fn frame() -> Vec<u8> {
    let (src, smac) = pod(0);
    let (dst, _) = pod(1);
    let mut v = Vec::new();
    PacketBuilder::ethernet2(smac, GW_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(40000, 5001)
        .write(&mut v, &[0u8; 18])
        .unwrap();
    v
}

fn worker() -> (Worker<MemoryBackend>, WorkerLink) {
    let mut t = Tables::new(
        1,
        Mode::Passthrough,
        Gateway {
            mac: MacAddr(GW_MAC),
            ipv4: Ipv4Addr::new(10, 200, 0, 1),
        },
    );
    for i in 0..2 {
        let (ip, mac) = pod(i);
        t.add_route(
            ip,
            Neighbor {
                port: u16::from(i),
                mac: MacAddr(mac),
            },
        )
        .unwrap();
    }
    let link = WorkerLink::new(
        Arc::new(ArcSwap::from_pointee(t)),
        Arc::new(ArrayQueue::new(64)),
        Arc::new(Signal::default()),
    );
    let mut backend = MemoryBackend::new(2, 1024, 4096, 2048);
    backend.keep_wire(false);
    let cfg = WorkerConfig {
        placement: Placement::Dedicated,
        batch_size: BATCH,
        ..WorkerConfig::default()
    };
    (Worker::new(cfg, backend, link.clone()).unwrap(), link)
}

fn bench(c: &mut Criterion) {
    let f = frame();
    let mut g = c.benchmark_group("worker_monitor");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, mask) in [
        ("off", 0),
        ("drop-only", EventType::Drop.bit()),
        ("trace", EventType::Trace.bit() | EventType::Drop.bit()),
    ] {
        let (mut w, link) = worker();
        link.monitor.mask.store(mask, Ordering::Relaxed);
        // Prime the fill rings.
        w.run_once(0);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    for _ in 0..BATCH {
                        w.backend_mut().inject(0, &f);
                    }
                    let t0 = Instant::now();
                    std::hint::black_box(w.run_once(i));
                    total += t0.elapsed();
                    w.backend_mut().deliver();
                    while link.monitor.ring.pop().is_some() {}
                }
                total
            })
        });
        assert_eq!(
            link.monitor.lost.get(),
            0,
            "{name}: events lost in the bench"
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! What the flow monitor costs the worker: `Worker::run_once` over the in-memory backend, with
//! nobody listening, with a client listening for drops while every frame is forwarded (the
//! idle monitor), and with every frame traced (the worst case), in the same run.
//!
//! Frames: batches of 64 UDP frames of 64 bytes from pod 0 (port 0) to pod 1 (port 1), all
//! forwarded, in `passthrough` mode and in `full` mode (no policy selects the pods, so each
//! packet goes through the policy stage and hits its conntrack entry). Cases, per mode:
//!
//! - `off`: mask 0, the baseline.
//! - `drop-only`: a client listens for drops; nothing is dropped, so no event is made.
//! - `trace`: one event per frame. The ring is drained after each batch (untimed), with the
//!   same call the agent's dispatcher makes, so every event fits and none is lost.
//!
//! and in `passthrough` mode only, with the ring drained by another thread on another CPU:
//!
//! - `trace-consumer-thread`: the consumer drains as fast as it can, so the ring seldom fills,
//!   but the ring's lines move between the two cores as they would in the agent;
//! - `trace-agent-5ms`: the consumer drains every 5 ms, as the agent's dispatcher does. At
//!   this packet rate the ring fills within a fraction of that, so most events are lost (the
//!   share is printed): this measures the full-ring path.
//!
//! Only `run_once` is timed (`iter_custom`); injecting the frames before it, delivering what
//! it sent and (for `trace`) draining the ring after it play the kernel's and the agent's part.
//! Criterion's time is per batch of 64 packets (÷ 64 for ns/packet); compare each case with
//! `off` of the same mode and run. The consumer thread pins itself to a CPU other than the one
//! the benchmark started on: run it pinned (`taskset -c 1 cargo bench -p xylem-bench --bench
//! monitor`) on a machine with at least two CPUs.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use crossbeam::queue::ArrayQueue;
use xylem_bench::{pod_ip, tables, udp_frame};
use xylem_dataplane::io::memory::MemoryBackend;
use xylem_dataplane::monitor::{EventType, MonitorLink};
use xylem_dataplane::slowpath::Signal;
use xylem_dataplane::tables::Mode;
use xylem_dataplane::worker::{Placement, Worker, WorkerConfig, WorkerLink};

const BATCH: usize = 64;
const NOW: u64 = 1_000_000_000;

/// How the monitor's ring is emptied while the worker runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Consumer {
    /// After every batch, on the benchmark's thread, untimed.
    BetweenBatches,
    /// Another thread on another CPU, draining without pause.
    Thread,
    /// Another thread on another CPU, every 5 ms (the agent's dispatcher).
    Every5ms,
}

fn worker(mode: Mode) -> (Worker<MemoryBackend>, WorkerLink) {
    let link = WorkerLink::new(
        Arc::new(ArcSwap::from_pointee(tables(2, mode))),
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
    let mut w = Worker::new(cfg, backend, link.clone()).expect("worker");
    w.run_once(NOW); // prime the fill rings
    (w, link)
}

/// Takes every queued event, as the agent's dispatcher does. Returns how many.
fn drain(monitor: &MonitorLink) -> usize {
    monitor.ring.drain(|ev| {
        black_box(ev);
    })
}

/// The CPU this thread runs on, and another online one.
fn other_cpu() -> Option<usize> {
    // SAFETY: `sched_getcpu` and `sysconf` take no pointers and have no preconditions.
    let (cur, online) = unsafe {
        (
            libc::sched_getcpu(),
            libc::sysconf(libc::_SC_NPROCESSORS_ONLN),
        )
    };
    (cur >= 0 && online >= 2).then(|| (cur as usize + 1) % online as usize)
}

/// Starts a thread draining `monitor` on another CPU, until `stop`. It returns how many events
/// it took.
fn consumer(
    monitor: MonitorLink,
    every: Option<Duration>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    let cpu = other_cpu();
    std::thread::spawn(move || {
        if let Some(id) = cpu {
            core_affinity::set_for_current(core_affinity::CoreId { id });
        }
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            n += drain(&monitor);
            match every {
                Some(d) => std::thread::sleep(d),
                None => std::hint::spin_loop(),
            }
        }
        n + drain(&monitor)
    })
}

fn bench(c: &mut Criterion) {
    if other_cpu().is_none() {
        println!("one CPU only: the consumer threads share it with the worker");
    }
    let frame = udp_frame(64, pod_ip(1));
    let mut g = c.benchmark_group("worker-monitor");
    g.throughput(Throughput::Elements(BATCH as u64));
    let trace = EventType::Trace.bit() | EventType::Drop.bit();
    let cases = [
        (Mode::Passthrough, "off", 0, Consumer::BetweenBatches),
        (
            Mode::Passthrough,
            "drop-only",
            EventType::Drop.bit(),
            Consumer::BetweenBatches,
        ),
        (Mode::Passthrough, "trace", trace, Consumer::BetweenBatches),
        (
            Mode::Passthrough,
            "trace-consumer-thread",
            trace,
            Consumer::Thread,
        ),
        (
            Mode::Passthrough,
            "trace-agent-5ms",
            trace,
            Consumer::Every5ms,
        ),
        (Mode::Full, "off", 0, Consumer::BetweenBatches),
        (
            Mode::Full,
            "drop-only",
            EventType::Drop.bit(),
            Consumer::BetweenBatches,
        ),
        (Mode::Full, "trace", trace, Consumer::BetweenBatches),
    ];
    for (mode, name, mask, drained) in cases {
        let (mut w, link) = worker(mode);
        link.monitor.mask.store(mask, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = match drained {
            Consumer::BetweenBatches => None,
            Consumer::Thread => Some(consumer(link.monitor.clone(), None, Arc::clone(&stop))),
            Consumer::Every5ms => Some(consumer(
                link.monitor.clone(),
                Some(Duration::from_millis(5)),
                Arc::clone(&stop),
            )),
        };
        let mut frames = 0u64;
        let mut drained_here = 0usize;
        let mode_name = match mode {
            Mode::Passthrough => "passthrough",
            Mode::Full => "full",
        };
        g.bench_function(BenchmarkId::new(mode_name, name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    for _ in 0..BATCH {
                        w.backend_mut().inject(0, &frame);
                    }
                    let t0 = Instant::now();
                    black_box(w.run_once(NOW));
                    total += t0.elapsed();
                    w.backend_mut().deliver();
                    if drained == Consumer::BetweenBatches {
                        drained_here += drain(&link.monitor);
                    }
                    frames += BATCH as u64;
                }
                total
            })
        });
        stop.store(true, Ordering::Relaxed);
        let taken = drained_here + thread.map_or(0, |t| t.join().expect("consumer thread"));
        let lost = link.monitor.lost.get();
        assert_eq!(link.stats.forwarded.get(), frames, "every frame forwarded");
        if mask & EventType::Trace.bit() != 0 {
            assert_eq!(taken as u64 + lost, frames, "one event per frame");
            println!(
                "{mode_name}/{name}: {frames} frames, {taken} events taken, {lost} lost ({:.1} %)",
                100.0 * lost as f64 / frames as f64
            );
        } else {
            assert_eq!((taken, lost), (0, 0), "no event without traffic to report");
        }
        if drained == Consumer::BetweenBatches {
            assert_eq!(
                lost, 0,
                "{mode_name}/{name}: events lost with the ring drained"
            );
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

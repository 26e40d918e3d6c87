//! Aggregate packets per second of one worker against two, in `Mode::Full` over the in-memory
//! backend with the real `Worker`, the 100,000-rule policy and 1,000,000 tracked (established)
//! connections (the set-up of the `worker` benchmark, `xylem_bench::full`), one pinned thread
//! per worker:
//!
//! - `1-worker`: one worker on the conntrack (capacity 1,000,000).
//! - `2-workers-shared`: two workers on that one table, each through its own handle.
//! - `2-workers-handoff`: the other design (VPP's worker handoff), as a prototype: each worker
//!   has a table of its own, holding the connections it owns (by a symmetric hash of the
//!   5-tuple, so both directions of a flow have one owner; capacity = the connections it
//!   owns). The worker that receives a frame hashes it; a frame it does not own is copied into
//!   a single-producer ring to the owner, which copies it into a frame of its own UMEM (its
//!   backend's RX ring: each worker has its own UMEM) before deciding on it with its own table.
//!   A full ring holds the sender back (it serves its own inbox meanwhile); an idle worker keeps
//!   serving its inbox, as a real one polls it.
//! - `2-workers-steered`: the control. Two workers with a table each, and each receives only
//!   the frames of the flows it owns (the perfect symmetric steering veth cannot do): no
//!   sharing, no handoff, so whatever separates it from twice `1-worker` is the machine's.
//!
//! Traffic: each worker receives batches of 64 frames from its own pool of 2^20 pre-built
//! frames, each an ACK of a connection drawn at random among the 1,000,000, in a random
//! direction (client → server on port 0, or the reply on port 1): as on a pod's veth, either
//! direction of a flow may reach either worker. Every batch reads the clock once, as a worker
//! does, so entries are refreshed as in real traffic (a store per packet whose entry another
//! batch refreshed last).
//!
//! Time: wall time of `iters` rounds run by every worker at once (each round: the "kernel"
//! copies the batch's frames into the worker's UMEM, the worker runs `run_once`, the "kernel"
//! completes the sent frames). Criterion's throughput line is the aggregate packets/s; compare
//! the variants within one run. On a shared machine the other tasks take part of each
//! thread's CPU, so each thread also measures its own CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`), and the run ends with each variant's frames per CPU-second,
//! summed over its threads (the aggregate rate with a core each), and its ratio to
//! `1-worker`; every thread's share of its wall time is printed too (the run's noise).
//!
//! `cargo bench -p xylem-bench --bench workers -- --warm-up-time 1 --measurement-time 3`

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crossbeam::queue::ArrayQueue;
use xylem_bench::full::{CLIENTS, FRAME_LEN, ack, port_of, tables};
use xylem_dataplane::conntrack::{Conntrack, CtConfig, CtTimeouts};
use xylem_dataplane::io::memory::MemoryBackend;
use xylem_dataplane::pipeline::{Parsed, parse};
use xylem_dataplane::slowpath::Signal;
use xylem_dataplane::tables::{Gateway, MacAddr, Tables};
use xylem_dataplane::worker::{Placement, Worker, WorkerConfig, WorkerLink};

const CONNS: u64 = 1_000_000;
const BATCH: usize = 64;
const POOL: usize = 1 << 20;
/// Added to every clock reading, so that `now` is never 0.
const NOW: u64 = 1_000_000_000;

/// Frames a worker receives, in order, with the port each arrives on.
struct Pool {
    bytes: Vec<u8>,
    ports: Vec<u8>,
    next: usize,
}

impl Pool {
    /// Frames of connections drawn at random among `conns` (all of them if empty).
    fn new(seed: u64, conns: &[u64]) -> Pool {
        let mut s = seed;
        let mut bytes = Vec::with_capacity(POOL * FRAME_LEN);
        let mut ports = Vec::with_capacity(POOL);
        for _ in 0..POOL {
            let r = xylem_bench::xorshift(&mut s);
            let i = if conns.is_empty() {
                r % CONNS
            } else {
                conns[(r % conns.len() as u64) as usize]
            };
            let reply = xylem_bench::xorshift(&mut s) & 1 == 1;
            bytes.extend_from_slice(&ack(i, reply));
            ports.push(port_of(reply) as u8);
        }
        Pool {
            bytes,
            ports,
            next: 0,
        }
    }

    fn take(&mut self) -> (usize, &[u8]) {
        let at = self.next;
        self.next = (at + 1) % POOL;
        (
            usize::from(self.ports[at]),
            &self.bytes[at * FRAME_LEN..(at + 1) * FRAME_LEN],
        )
    }
}

/// The owner of a frame's flow (0 or 1), the same for both directions: the receiving worker
/// runs the pipeline's parse stage, then hashes the 5-tuple symmetrically.
fn owner(frame: &[u8]) -> usize {
    let gw = Gateway {
        mac: MacAddr(xylem_bench::GW_MAC),
        ipv4: xylem_bench::GW_IP,
    };
    let Ok(Parsed::Ipv4(m)) = parse(frame, &gw) else {
        panic!("the bench's frames are IPv4 to the gateway");
    };
    let k = m.key;
    let (a, b) = ((k.src.to_bits(), k.sport), (k.dst.to_bits(), k.dport));
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let x = (u64::from(lo.0) << 32 | u64::from(hi.0))
        ^ (u64::from(lo.1) << 16 | u64::from(hi.1)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x.wrapping_mul(0xC2B2_AE3D_27D4_EB4F) >> 63) as usize
}

/// A worker over the in-memory backend on conntrack `ct`, and its link.
fn worker(
    tables: &Arc<ArcSwap<Tables>>,
    ct: Conntrack,
    id: usize,
) -> (Worker<MemoryBackend>, WorkerLink) {
    let link = WorkerLink::new(
        Arc::clone(tables),
        Arc::new(ArrayQueue::new(64)),
        Arc::new(Signal::default()),
    );
    let mut backend = MemoryBackend::new(2, 1024, 4096, 2048);
    backend.keep_wire(false);
    let cfg = WorkerConfig {
        id,
        placement: Placement::Dedicated,
        batch_size: BATCH,
        ..WorkerConfig::default()
    };
    let mut w = Worker::with_conntrack(cfg, backend, link.clone(), ct).expect("worker");
    w.run_once(NOW); // prime the fill rings
    (w, link)
}

/// Establishes connections `conns` through `w`: an ACK each, then a reply each.
fn establish(w: &mut Worker<MemoryBackend>, conns: &[u64]) {
    for reply in [false, true] {
        for chunk in conns.chunks(BATCH) {
            for &i in chunk {
                assert!(w.backend_mut().inject(port_of(reply), &ack(i, reply)));
            }
            w.run_once(NOW);
            w.backend_mut().deliver();
        }
    }
}

fn table(capacity: usize) -> Conntrack {
    Conntrack::new(&CtConfig {
        capacity,
        // Every connection comes from one client port.
        endpoint_limit: capacity,
        timeouts: CtTimeouts::default(),
        seed: 0x5eed,
    })
}

/// One frame handed to another worker.
#[derive(Clone, Copy)]
struct Handed {
    port: u8,
    bytes: [u8; FRAME_LEN],
}

impl Default for Handed {
    fn default() -> Self {
        Handed {
            port: 0,
            bytes: [0; FRAME_LEN],
        }
    }
}

/// The owner's side of the handoff: copies what was handed over into frames of its own UMEM
/// (at most a batch per port, what one `run_once` takes), then runs a batch.
fn serve(
    w: &mut Worker<MemoryBackend>,
    inbox: &mut rtrb::Consumer<Handed>,
    frames: &mut u64,
    now: u64,
) {
    for _ in 0..BATCH {
        let Ok(h) = inbox.pop() else { break };
        assert!(
            w.backend_mut().inject(usize::from(h.port), &h.bytes),
            "no fill frame"
        );
        *frames += 1;
    }
    w.run_once(now);
    w.backend_mut().deliver();
}

/// A worker with what it receives, and the frames it was given to decide on.
struct Lane {
    w: Worker<MemoryBackend>,
    link: WorkerLink,
    pool: Pool,
    /// Frames put on the worker's RX rings.
    frames: u64,
    /// Its `forwarded` counter when the lane started.
    base: u64,
    how: How,
}

enum How {
    /// Receives its frames and decides on them itself.
    Direct,
    /// Receives its frames, keeps those it owns and hands the others over.
    Handoff {
        me: usize,
        out: rtrb::Producer<Handed>,
        inbox: rtrb::Consumer<Handed>,
        handed: u64,
        /// Times the ring to the owner was full and this worker waited (serving its own
        /// inbox) for room.
        waits: u64,
        /// Wall time spent spinning for room with nothing to serve (an owner behind, most
        /// often because another task had its CPU).
        spun: Duration,
    },
}

impl Lane {
    fn new((w, link): (Worker<MemoryBackend>, WorkerLink), pool: Pool, how: How) -> Lane {
        Lane {
            base: link.stats.forwarded.get(),
            w,
            link,
            pool,
            frames: 0,
            how,
        }
    }

    fn round(&mut self, now: u64) {
        let Lane {
            w,
            pool,
            frames,
            how,
            ..
        } = self;
        match how {
            How::Direct => {
                for _ in 0..BATCH {
                    let (port, f) = pool.take();
                    assert!(w.backend_mut().inject(port, f), "no fill frame");
                }
                *frames += BATCH as u64;
                w.run_once(now);
                w.backend_mut().deliver();
            }
            How::Handoff {
                me,
                out,
                inbox,
                handed,
                waits,
                spun,
            } => {
                for _ in 0..BATCH {
                    let (port, f) = pool.take();
                    if owner(f) == *me {
                        assert!(w.backend_mut().inject(port, f), "no fill frame");
                        *frames += 1;
                        continue;
                    }
                    let mut h = Handed {
                        port: port as u8,
                        ..Handed::default()
                    };
                    h.bytes.copy_from_slice(f);
                    if let Err(rtrb::PushError::Full(back)) = out.push(h) {
                        // Back-pressure: the owner is behind. Serve our own inbox meanwhile,
                        // so two full rings cannot wait on each other.
                        h = back;
                        *waits += 1;
                        let t0 = Instant::now();
                        let mut idle = Duration::ZERO;
                        while let Err(rtrb::PushError::Full(back)) = out.push(h) {
                            h = back;
                            if inbox.is_empty() {
                                let t = Instant::now();
                                std::hint::spin_loop();
                                idle += t.elapsed();
                            } else {
                                serve(w, inbox, frames, now);
                            }
                        }
                        *spun += idle.min(t0.elapsed());
                    }
                    *handed += 1;
                }
                serve(w, inbox, frames, now);
            }
        }
    }

    /// Between commands: a handoff worker keeps serving its inbox, as a real one polls it.
    /// `false` if there is nothing to serve (a direct lane).
    fn idle(&mut self, now: u64, cpu: &mut Duration) -> bool {
        match &mut self.how {
            How::Direct => false,
            How::Handoff { inbox, .. } => {
                if !inbox.is_empty() {
                    // Counted with the next command's time: it is work handed over during it.
                    let t0 = thread_cpu();
                    serve(&mut self.w, inbox, &mut self.frames, now);
                    *cpu += thread_cpu() - t0;
                }
                true
            }
        }
    }

    /// Lets the worker finish what its rings still hold, checks that every frame it was
    /// given was forwarded (all are of tracked connections) and that no flow was created, and
    /// gives the worker back.
    fn finish(mut self, created: u64) -> (Worker<MemoryBackend>, Pool) {
        if let How::Handoff { inbox, .. } = &mut self.how {
            while !inbox.is_empty() {
                serve(&mut self.w, inbox, &mut self.frames, NOW);
            }
        }
        self.w.drain(NOW);
        let forwarded = self.link.stats.forwarded.get() - self.base;
        assert_eq!(forwarded, self.frames, "every frame forwarded");
        assert_eq!(self.w.conntrack().stats().created, created, "no new flow");
        if let How::Handoff {
            handed,
            waits,
            spun,
            ..
        } = self.how
        {
            println!(
                "handoff worker: {forwarded} frames decided, {handed} handed over, {waits} \
                 waits for room, {:.3} s spent spinning for it",
                spun.as_secs_f64()
            );
        }
        (self.w, self.pool)
    }
}

/// The calling thread's CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// What a crew thread reports after a command: its CPU time and wall time over the rounds,
/// and the CPU it ran on last.
struct Report {
    cpu: Duration,
    wall: Duration,
    on: i32,
    /// Frames given to the worker since the last report.
    frames: u64,
}

/// One pinned thread per lane, run `iters` rounds at a time on command.
struct Crew {
    go: Vec<Sender<u64>>,
    done: Receiver<(usize, Report)>,
    threads: Vec<std::thread::JoinHandle<Lane>>,
    /// Per thread: CPU time, wall time, last CPU, frames.
    totals: std::cell::RefCell<Vec<(Duration, Duration, i32, u64)>>,
}

impl Crew {
    fn start(lanes: Vec<Lane>) -> Crew {
        let epoch = Instant::now();
        let (done_tx, done) = channel();
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let mut go = Vec::new();
        let mut threads = Vec::new();
        for (k, mut lane) in lanes.into_iter().enumerate() {
            let (tx, rx) = channel::<u64>();
            go.push(tx);
            let done_tx = done_tx.clone();
            let core = cores.get(k % cores.len().max(1)).copied();
            threads.push(std::thread::spawn(move || {
                if let Some(c) = core {
                    core_affinity::set_for_current(c);
                }
                let mut idle_cpu = Duration::ZERO;
                let mut reported = 0;
                loop {
                    let iters = match rx.try_recv() {
                        Ok(iters) => iters,
                        Err(TryRecvError::Empty)
                            if lane
                                .idle(NOW + epoch.elapsed().as_nanos() as u64, &mut idle_cpu) =>
                        {
                            continue;
                        }
                        Err(TryRecvError::Empty) => match rx.recv() {
                            Ok(iters) => iters,
                            Err(_) => break,
                        },
                        Err(TryRecvError::Disconnected) => break,
                    };
                    let (cpu0, wall0) = (thread_cpu(), Instant::now());
                    for _ in 0..iters {
                        // One clock read per batch, as a worker does.
                        lane.round(NOW + epoch.elapsed().as_nanos() as u64);
                    }
                    let r = Report {
                        cpu: thread_cpu() - cpu0 + std::mem::take(&mut idle_cpu),
                        wall: wall0.elapsed(),
                        // SAFETY: sched_getcpu has no preconditions.
                        on: unsafe { libc::sched_getcpu() },
                        frames: lane.frames - reported,
                    };
                    reported = lane.frames;
                    done_tx.send((k, r)).expect("main thread");
                }
                lane
            }));
        }
        let totals =
            std::cell::RefCell::new(vec![(Duration::ZERO, Duration::ZERO, -1, 0); go.len()]);
        Crew {
            go,
            done,
            threads,
            totals,
        }
    }

    fn run(&self, iters: u64) -> Duration {
        let t0 = Instant::now();
        for g in &self.go {
            g.send(iters).expect("crew thread");
        }
        for _ in &self.go {
            let (k, r) = self.done.recv().expect("crew thread");
            let t = &mut self.totals.borrow_mut()[k];
            t.0 += r.cpu;
            t.1 += r.wall;
            t.2 = r.on;
            t.3 += r.frames;
        }
        t0.elapsed()
    }

    /// Stops the threads, after printing how much of its wall time each one ran (the rest,
    /// other tasks had its CPU: the run's noise) and its frames per second of its own CPU
    /// time; their sum is the aggregate rate the workers would reach with a core each to
    /// themselves. Returns the lanes, that sum, and the sum leaving out the time handoff
    /// workers spun waiting for ring room with nothing else to do.
    fn stop(self, name: &str) -> (Vec<Lane>, f64, f64) {
        drop(self.go);
        let lanes: Vec<Lane> = self
            .threads
            .into_iter()
            .map(|t| t.join().expect("crew thread"))
            .collect();
        let (mut sum, mut sum_busy) = (0.0, 0.0);
        for (k, ((cpu, wall, on, frames), lane)) in
            self.totals.borrow().iter().zip(&lanes).enumerate()
        {
            let cpu = cpu.as_secs_f64().max(1e-9);
            let spun = match &lane.how {
                How::Handoff { spun, .. } => spun.as_secs_f64().min(cpu * 0.999),
                How::Direct => 0.0,
            };
            let rate = *frames as f64 / cpu;
            sum += rate;
            sum_busy += *frames as f64 / (cpu - spun);
            println!(
                "{name}: thread {k} (last on CPU {on}) ran {:.1} % of its {:.2} s: {frames} \
                 frames, {:.2} M/s of its CPU time ({:.2} M/s without the {:.3} s it spun \
                 waiting for ring room)",
                100.0 * cpu / wall.as_secs_f64().max(1e-9),
                wall.as_secs_f64(),
                rate / 1e6,
                *frames as f64 / (cpu - spun) / 1e6,
                spun
            );
        }
        println!(
            "{name}: {:.2} M frames per CPU-second, all threads ({:.2} without spinning)",
            sum / 1e6,
            sum_busy / 1e6
        );
        (lanes, sum, sum_busy)
    }
}

/// The connections each of two workers owns (by [`owner`]).
fn owned() -> [Vec<u64>; 2] {
    let mut owned: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    for i in 0..CONNS {
        let o = owner(&ack(i, false));
        assert_eq!(o, owner(&ack(i, true)), "symmetric");
        owned[o].push(i);
    }
    owned
}

/// Two workers with a table each, holding the connections it owns; `how(k)` says what each
/// does with its frames.
fn private_lanes(
    tables: &Arc<ArcSwap<Tables>>,
    owned: &[Vec<u64>; 2],
    pools: Vec<Pool>,
    mut how: impl FnMut(usize) -> How,
) -> (Vec<Lane>, Vec<u64>) {
    let mut lanes = Vec::new();
    let mut created = Vec::new();
    for ((me, conns), pool) in owned.iter().enumerate().zip(pools) {
        let (mut w, link) = worker(tables, table(conns.len()), me);
        establish(&mut w, conns);
        assert_eq!(w.conntrack().len(), conns.len());
        created.push(w.conntrack().stats().created);
        lanes.push(Lane::new((w, link), pool, how(me)));
    }
    (lanes, created)
}

fn bench(c: &mut Criterion) {
    assert!(CONNS <= u64::from(CLIENTS) << 16);
    let t0 = Instant::now();
    let tables = Arc::new(ArcSwap::from_pointee(tables()));
    let owned = owned();
    let pools = vec![
        Pool::new(0x9e37_79b9_7f4a_7c15, &[]),
        Pool::new(0x2545_f491_4f6c_dd1d, &[]),
    ];
    println!("tables and frame pools built in {:?}", t0.elapsed());
    let all: Vec<u64> = (0..CONNS).collect();
    let mut g = c.benchmark_group("workers");
    let mut rates = Vec::new();
    let mut pools = pools.into_iter();
    let (pool0, pool1) = (pools.next().unwrap(), pools.next().unwrap());

    // One table, filled through worker 0.
    let t0 = Instant::now();
    let ct = table(CONNS as usize);
    let (mut w0, link0) = worker(&tables, ct.clone(), 0);
    establish(&mut w0, &all);
    assert_eq!(ct.len(), CONNS as usize);
    println!(
        "shared table: {CONNS} connections in {:?} ({:.1} bytes each, {} MiB); huge pages: {}",
        t0.elapsed(),
        ct.bytes_per_entry(),
        ct.memory_bytes() >> 20,
        xylem_bench::anon_huge_pages()
    );
    let created = ct.stats().created;

    g.throughput(Throughput::Elements(BATCH as u64));
    let crew = Crew::start(vec![Lane::new((w0, link0.clone()), pool0, How::Direct)]);
    g.bench_function("1-worker", |b| b.iter_custom(|iters| crew.run(iters)));
    let (lanes, rate, busy) = crew.stop("1-worker");
    rates.push(("1-worker", rate, busy));
    let (w0, pool0) = lanes.into_iter().next().unwrap().finish(created);

    g.throughput(Throughput::Elements(2 * BATCH as u64));
    let crew = Crew::start(vec![
        Lane::new((w0, link0), pool0, How::Direct),
        Lane::new(worker(&tables, ct.clone(), 1), pool1, How::Direct),
    ]);
    g.bench_function("2-workers-shared", |b| {
        b.iter_custom(|iters| crew.run(iters))
    });
    let (lanes, rate, busy) = crew.stop("2-workers-shared");
    rates.push(("2-workers-shared", rate, busy));
    let pools: Vec<Pool> = lanes.into_iter().map(|l| l.finish(created).1).collect();
    println!("shared table: {:?}", ct.stats());
    drop(ct);

    // Handoff: a table per worker with the connections it owns.
    let (out0, in1) = rtrb::RingBuffer::new(4096);
    let (out1, in0) = rtrb::RingBuffer::new(4096);
    let mut rings = [(out0, in0), (out1, in1)].into_iter();
    let (lanes, created) = private_lanes(&tables, &owned, pools, |me| {
        let (out, inbox) = rings.next().unwrap();
        How::Handoff {
            me,
            out,
            inbox,
            handed: 0,
            waits: 0,
            spun: Duration::ZERO,
        }
    });
    let crew = Crew::start(lanes);
    g.bench_function("2-workers-handoff", |b| {
        b.iter_custom(|iters| crew.run(iters))
    });
    let (lanes, rate, busy) = crew.stop("2-workers-handoff");
    rates.push(("2-workers-handoff", rate, busy));
    for (lane, created) in lanes.into_iter().zip(created) {
        lane.finish(created);
    }

    // Control: every frame reaches the worker that owns its flow (perfect symmetric
    // steering, which veth cannot do): no sharing, no handoff. The machine's own scaling.
    let pools = vec![
        Pool::new(0x9e37_79b9_7f4a_7c15, &owned[0]),
        Pool::new(0x2545_f491_4f6c_dd1d, &owned[1]),
    ];
    let (lanes, created) = private_lanes(&tables, &owned, pools, |_| How::Direct);
    let crew = Crew::start(lanes);
    g.bench_function("2-workers-steered", |b| {
        b.iter_custom(|iters| crew.run(iters))
    });
    let (lanes, rate, busy) = crew.stop("2-workers-steered");
    rates.push(("2-workers-steered", rate, busy));
    for (lane, created) in lanes.into_iter().zip(created) {
        lane.finish(created);
    }
    g.finish();
    let base = rates[0].1;
    for (name, rate, busy) in &rates {
        println!(
            "{name}: {:.2} M frames per CPU-second, {:.2} × one worker (without spinning for \
             ring room: {:.2} ×)",
            rate / 1e6,
            rate / base,
            busy / base
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

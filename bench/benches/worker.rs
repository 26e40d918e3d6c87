//! The worker's batch (`Worker::run_once`) in `Mode::Full` over the in-memory backend, with and
//! without the conntrack prefetch of its step 3: the per-packet cost of policy plus connection
//! tracking as the worker pays it, rings and counters included.
//!
//! Rules are CiliumNetworkPolicy YAML compiled by `xylem_control::policy`, as in the `policy`
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

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use crossbeam::queue::ArrayQueue;
use xylem_bench::{GW_IP, GW_MAC, flow_frame};
use xylem_control::policy::{EndpointSpec, IdentityAllocator, compile, parse_policies};
use xylem_dataplane::conntrack::{proto, tcp_flags};
use xylem_dataplane::io::memory::MemoryBackend;
use xylem_dataplane::slowpath::Signal;
use xylem_dataplane::tables::{Gateway, MacAddr, Mode, Neighbor, Tables};
use xylem_dataplane::worker::{CtPrefetch, Placement, Worker, WorkerConfig, WorkerLink};

const RULES: u32 = 100_000;
const OTHER_LABELS: u32 = xylem_bench::POLICY_CLIENT_LABELS;
/// Endpoints labelled `app=client`; each opens up to 65,536 connections (one per source port).
const CLIENTS: u32 = 16;
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const CLIENT_PORT: usize = 0;
const SERVER_PORT: usize = 1;
const BATCH: usize = 64;
const FRAME_LEN: usize = 64;
const POOL: usize = 1 << 20;
const NOW: u64 = 1_000_000_000;

fn client(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, i as u8)
}

/// Connection `i`: `(client address, source port)`.
fn conn(i: u64) -> (Ipv4Addr, u16) {
    (client((i >> 16) as u32), i as u16)
}

/// `Mode::Full` tables: routes to the server (port 1) and the clients (port 0), and the
/// 100,000-rule policy.
fn tables() -> Tables {
    let y = xylem_bench::server_policy_yaml(RULES);
    let policies = parse_policies(&y).expect("bench policy parses");
    let ep = |ip: Ipv4Addr, app: String| EndpointSpec {
        ip,
        namespace: "default".into(),
        labels: BTreeMap::from([("app".to_owned(), app)]),
    };
    let mut eps = vec![ep(SERVER, "server".into())];
    eps.extend((0..CLIENTS).map(|i| ep(client(i), "client".into())));
    eps.extend(
        (0..OTHER_LABELS).map(|j| ep(Ipv4Addr::from_bits(0x0a01_0000 + j), format!("client-{j}"))),
    );
    let mut t = Tables::new(
        1,
        Mode::Full,
        Gateway {
            mac: MacAddr(GW_MAC),
            ipv4: GW_IP,
        },
    );
    let route = |t: &mut Tables, ip: Ipv4Addr, port: usize| {
        let mut mac = [2, 0, 0, 0, 0, 0];
        mac[2..].copy_from_slice(&ip.octets());
        t.add_route(
            ip,
            Neighbor {
                port: port as u16,
                mac: MacAddr(mac),
            },
        )
        .expect("distinct addresses");
    };
    route(&mut t, SERVER, SERVER_PORT);
    for i in 0..CLIENTS {
        route(&mut t, client(i), CLIENT_PORT);
    }
    let c = compile(
        t.revision(),
        &policies,
        &eps,
        &[GW_IP],
        &mut IdentityAllocator::new(),
    );
    let server = c.tables.endpoint(SERVER).expect("server").1;
    assert!(
        server.ingress.exact_keys() >= RULES as usize,
        "rules compiled"
    );
    t.set_policy(c.tables);
    t
}

/// A client's ACK on connection `i` (to the server), or the server's reply.
fn ack(i: u64, reply: bool) -> Vec<u8> {
    let (c, sport) = conn(i);
    let (src, dst) = if reply {
        ((SERVER, 80), (c, sport))
    } else {
        ((c, sport), (SERVER, 80))
    };
    flow_frame(proto::TCP, FRAME_LEN, src, dst, tcp_flags::ACK)
}

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

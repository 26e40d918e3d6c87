//! The pipeline's conntrack lookup, policy and commit stages (`pipeline::flow_and_policy`) on
//! established flows: the per-packet cost of policy plus connection tracking, with 10, 1,000 and 100,000 rules and 1,000 and 1,000,000 tracked connections.
//!
//! Rules are written as CiliumNetworkPolicy YAML and go through the real parser and compiler
//! (`xylem_policy`): one policy selecting the server, with `N` ingress rules from `N`
//! distinct (client label, port) pairs, all compiled into the server's ingress table.
//! The conntrack table is filled to the given number of connections (its capacity) with flows
//! between other addresses, then:
//! - `established/one-flow`: the same established flow every packet (hot in cache);
//! - `established/random-flow`: a different tracked flow each packet, drawn at random from
//!   65,536 of them spread over the whole table (cache-cold at 1,000,000 connections);
//! - `established/random-flow-batch32-prefetch`: the same, 32 packets at a time, prefetching
//!   their entries first as a worker's batch loop would (time per iteration ÷ 32 = ns/packet;
//!   criterion's throughput line gives packets/s);
//! - `new-flow-lookup`: `evaluate` alone (the policy lookup a new flow pays), per rule count.
//!
//! Criterion reports time per iteration, which is ns/packet. Bytes per tracked connection are
//! printed before the measurements.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use xylem_dataplane::conntrack::{Conntrack, CtConfig, FlowKey};
use xylem_dataplane::pipeline::{Meta, flow_and_policy};
use xylem_dataplane::policy::{PolicyTables, PolicyVerdict, evaluate};
use xylem_dataplane::wire::ip::proto;
use xylem_dataplane::wire::tcp::flags as tcp_flags;
use xylem_policy::{EndpointSpec, IdentityAllocator, compile, parse_policies};

/// Stages 4, 6 and 8b on `m`, as a routed packet from port 0 whose gateway is not involved.
#[inline(always)]
fn decide(now: u64, m: &Meta, t: &PolicyTables, ct: &mut Conntrack) -> PolicyVerdict {
    flow_and_policy(now, 0, m, Ipv4Addr::new(10, 0, 0, 1), t, ct)
}

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
const CLIENT_LABELS: u32 = xylem_bench::POLICY_CLIENT_LABELS;
const NOW: u64 = 1_000_000_000;
const BATCH: usize = 32;

/// One policy with `rules` ingress rules; the last allows the benchmarked client on 80/TCP.
fn tables(rules: u32) -> PolicyTables {
    let y = xylem_bench::server_policy_yaml(rules);
    let policies = parse_policies(&y).expect("bench policy parses");
    let ep = |ip: Ipv4Addr, app: String| EndpointSpec {
        ip,
        namespace: "default".into(),
        labels: BTreeMap::from([("app".to_owned(), app)]),
    };
    let mut eps = vec![ep(SERVER, "server".into()), ep(CLIENT, "client".into())];
    for j in 0..CLIENT_LABELS {
        eps.push(ep(
            Ipv4Addr::from_bits(0x0a01_0000 + j),
            format!("client-{j}"),
        ));
    }
    let c = compile(
        1,
        &policies,
        &eps,
        &[Ipv4Addr::new(10, 0, 0, 1)],
        xylem_policy::AllowLocalhost::default(),
        &mut IdentityAllocator::new(),
    );
    let server = c.tables.endpoint(SERVER).expect("server").1;
    assert!(
        server.ingress.exact_keys() >= rules as usize,
        "rules compiled"
    );
    c.tables
}

fn key(i: u64) -> FlowKey {
    // Filler flows between addresses outside the cluster: tracked, never policy-checked again.
    FlowKey {
        src: Ipv4Addr::from_bits(0x6400_0000 | (i >> 16) as u32),
        dst: Ipv4Addr::new(192, 0, 2, 1),
        sport: i as u16,
        dport: 443,
        proto: proto::TCP,
    }
}

fn ack(key: FlowKey) -> Meta {
    Meta {
        tcp_flags: tcp_flags::ACK,
        ..Meta::from_key(key)
    }
}

/// A tracker holding `conns` connections (its capacity), the benchmarked one among them.
fn conntrack(t: &PolicyTables, conns: usize) -> (Conntrack, Meta) {
    let mut ct = Conntrack::new(&CtConfig {
        capacity: conns,
        // Every connection comes from one port.
        endpoint_limit: conns,
        seed: 0x1234_5678,
        ..CtConfig::default()
    });
    let main = FlowKey {
        src: CLIENT,
        dst: SERVER,
        sport: 40000,
        dport: 80,
        proto: proto::TCP,
    };
    let syn = Meta {
        tcp_flags: tcp_flags::SYN,
        ..ack(main)
    };
    assert_eq!(decide(0, &syn, t, &mut ct), PolicyVerdict::New);
    for i in 0..conns as u64 - 1 {
        let v = decide(0, &ack(key(i)), t, &mut ct);
        assert_eq!(v, PolicyVerdict::New);
    }
    assert_eq!(ct.len(), conns);
    // Complete the handshake so the flow is established.
    decide(0, &ack(main.reversed()), t, &mut ct);
    (ct, ack(main))
}

fn bench(c: &mut Criterion) {
    let rule_counts = [10u32, 1_000, 100_000];
    let conn_counts = [1_000usize, 1_000_000];
    let all: Vec<(u32, PolicyTables)> = rule_counts
        .iter()
        .map(|&r| {
            let t0 = std::time::Instant::now();
            let t = tables(r);
            println!("{r} rules: YAML parse + compile {:?}", t0.elapsed());
            (r, t)
        })
        .collect();
    for &n in &conn_counts {
        let ct = Conntrack::new(&CtConfig {
            capacity: n,
            ..CtConfig::default()
        });
        println!(
            "conntrack: {} bytes per slot, {:.1} bytes per tracked connection at capacity {} ({} MiB)",
            Conntrack::BYTES_PER_SLOT,
            ct.bytes_per_entry(),
            n,
            ct.memory_bytes() >> 20
        );
    }

    let mut g = c.benchmark_group("policy-ct");
    g.throughput(Throughput::Elements(1));
    for &conns in &conn_counts {
        for (rules, t) in &all {
            let (mut ct, flow) = conntrack(t, conns);
            println!(
                "{rules} rules, {conns} connections: {} (transparent huge pages in use, whole process)",
                xylem_bench::anon_huge_pages()
            );
            let id = format!("{rules}-rules/{conns}-conns");
            assert_eq!(decide(NOW, &flow, t, &mut ct), PolicyVerdict::Established);
            g.bench_function(BenchmarkId::new("established/one-flow", &id), |b| {
                b.iter(|| black_box(decide(black_box(NOW), black_box(&flow), t, &mut ct)))
            });
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            let sample: Vec<Meta> = (0..65_536)
                .map(|_| ack(key(xylem_bench::xorshift(&mut seed) % (conns as u64 - 1))))
                .collect();
            let mut i = 0usize;
            g.bench_function(BenchmarkId::new("established/random-flow", &id), |b| {
                b.iter(|| {
                    i = (i + 1) & 0xffff;
                    black_box(decide(black_box(NOW), &sample[i], t, &mut ct))
                })
            });
            assert_eq!(
                decide(NOW, &sample[7], t, &mut ct),
                PolicyVerdict::Established
            );
            // As a worker would: prefetch the entries of a 32-packet batch, then decide them.
            g.throughput(Throughput::Elements(BATCH as u64));
            let mut i = 0usize;
            g.bench_function(
                BenchmarkId::new("established/random-flow-batch32-prefetch", &id),
                |b| {
                    b.iter(|| {
                        i = (i + BATCH) & 0xffff;
                        let batch = &sample[i..i + BATCH];
                        for f in batch {
                            ct.prefetch(&f.key);
                        }
                        for f in batch {
                            black_box(decide(black_box(NOW), f, t, &mut ct));
                        }
                    })
                },
            );
            g.throughput(Throughput::Elements(1));
        }
    }
    for (rules, t) in &all {
        let k = FlowKey {
            src: CLIENT,
            dst: SERVER,
            sport: 40001,
            dport: 80,
            proto: proto::TCP,
        };
        assert!(evaluate(t, &k).drop().is_none());
        g.bench_function(
            BenchmarkId::new("new-flow-lookup", format!("{rules}-rules")),
            |b| b.iter(|| black_box(evaluate(t, black_box(&k)))),
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

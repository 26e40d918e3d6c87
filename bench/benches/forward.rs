//! `process` on forwarded frames: the cost of the per-packet forwarding decision.
//!
//! Each iteration restores the dozen bytes the previous call rewrote ([`BenchFrame::reset`]) and
//! calls `process` once; `reset-only` times the restore alone. Criterion reports time per
//! iteration, which is ns/packet.
//!
//! `*-full-policy-established` runs the same frames in `Mode::Full` with a realistic policy
//! (1,000 ingress rules on the destination, an egress policy on the source, written as
//! CiliumNetworkPolicy YAML and compiled by `xylem_policy`) and a conntrack holding
//! 50,000 other connections: the frame belongs to an established connection, so this is
//! policy + conntrack cost on the fast path, to compare with the `Passthrough` cases of the
//! same run.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::collections::BTreeMap;
use std::fmt::Write;
use xylem_bench::{BenchFrame, make_partial, pod_ip, tables, tcp_frame, udp_frame};

use xylem_dataplane::conntrack::{Conntrack, CtConfig, FlowKey};
use xylem_dataplane::pipeline::{Meta, Verdict, flow_and_policy, process};
use xylem_dataplane::tables::{Mode, Tables};
use xylem_dataplane::wire::ip::proto;
use xylem_policy::{EndpointSpec, IdentityAllocator, compile, parse_policies};

/// `tables(routes, Full)` with a policy: pod `dst` (app=server) accepts 1,000 ingress rules
/// (999 from other client labels and ports, the last from app=client on 80/TCP and UDP); pod 0
/// (app=client) may only send to app=server. The bench frames go from pod 0 to pod `dst`,
/// port 80.
fn policy_tables(routes: u32, dst: u32) -> Tables {
    let mut y = String::from(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: server}\nspec:\n  endpointSelector: {matchLabels: {app: server}}\n  ingress:\n",
    );
    for i in 0..999u32 {
        let _ = writeln!(
            y,
            "  - fromEndpoints: [{{matchLabels: {{app: client-{}}}}}]\n    toPorts: [{{ports: [{{port: \"{}\", protocol: TCP}}]}}]",
            i % 50,
            1000 + i / 50
        );
    }
    y.push_str(
        "  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts: [{ports: [{port: \"80\", protocol: TCP}, {port: \"80\", protocol: UDP}]}]\n",
    );
    y.push_str(
        "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: client}\nspec:\n  endpointSelector: {matchLabels: {app: client}}\n  egress:\n  - toEndpoints: [{matchLabels: {app: server}}]\n",
    );
    let policies = parse_policies(&y).expect("bench policy parses");
    let eps: Vec<EndpointSpec> = (0..routes)
        .map(|i| EndpointSpec {
            ip: pod_ip(i),
            namespace: "default".into(),
            labels: BTreeMap::from([(
                "app".to_owned(),
                match i {
                    0 => "client".to_owned(),
                    i if i == dst => "server".to_owned(),
                    i => format!("client-{}", i % 50),
                },
            )]),
        })
        .collect();
    let mut t = tables(routes, Mode::Full);
    let compiled = compile(
        t.revision(),
        &policies,
        &eps,
        &[xylem_bench::GW_IP],
        xylem_policy::AllowLocalhost::default(),
        &mut IdentityAllocator::new(),
    );
    t.set_policy(compiled.tables);
    t
}

/// A conntrack holding `n` connections between addresses outside the pods.
fn busy_conntrack(t: &Tables, n: u32) -> Conntrack {
    let mut ct = Conntrack::new(&CtConfig {
        // Every connection comes from one port.
        endpoint_limit: CtConfig::default().capacity,
        ..CtConfig::default()
    });
    for i in 0..n {
        let key = FlowKey {
            src: std::net::Ipv4Addr::from_bits(0x0b00_0000 + i),
            dst: std::net::Ipv4Addr::new(192, 0, 2, 1),
            sport: 1024 + (i % 60_000) as u16,
            dport: 443,
            proto: proto::UDP,
        };
        assert!(
            flow_and_policy(
                1,
                0,
                &Meta::from_key(key),
                t.gateway().ipv4,
                t.policy(),
                &mut ct
            )
            .allows()
        );
    }
    ct
}

fn run_one(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: BenchmarkId,
    t: &Tables,
    frame: &[u8],
) {
    let ct = Conntrack::new(&CtConfig {
        capacity: 16,
        ..CtConfig::default()
    });
    run_one_ct(c, id, t, frame, ct);
}

fn run_one_ct(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: BenchmarkId,
    t: &Tables,
    frame: &[u8],
    mut ct: Conntrack,
) {
    let mut b = BenchFrame::new(frame);
    b.reset();
    assert!(matches!(
        process(0, 0, &mut b.frame(), t, &mut ct).verdict,
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

    // Full mode with policy, an established flow, 50,000 other tracked connections.
    let t_pol = policy_tables(256, 255);
    let ct = busy_conntrack(&t_pol, 50_000);
    println!(
        "conntrack: {} connections tracked, {:.1} bytes per connection at capacity {}",
        ct.len(),
        ct.bytes_per_entry(),
        ct.capacity()
    );
    run_one_ct(
        &mut g,
        BenchmarkId::new("tcp-1500B-full-policy-established", "256-routes"),
        &t_pol,
        &tcp_frame(1500, pod_ip(255)),
        ct,
    );
    run_one_ct(
        &mut g,
        BenchmarkId::new("udp-64B-full-policy-established", "256-routes"),
        &t_pol,
        &udp_frame(64, pod_ip(255)),
        busy_conntrack(&t_pol, 50_000),
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
    let mut ct = Conntrack::new(&CtConfig::default());
    let mut i = 0usize;
    g.bench_function(
        BenchmarkId::new("udp-64B-4096-dsts", "65536-routes"),
        |bench| {
            bench.iter(|| {
                i = (i + 1) & 4095;
                let b = &mut frames[i];
                b.reset();
                let o = process(0, 0, &mut b.frame(), black_box(&t), &mut ct);
                debug_assert!(matches!(o.verdict, Verdict::Forward(_)));
                black_box(o)
            })
        },
    );

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

//! DNS-aware policy: what inline DNS inspection adds to a query and to an answer, against the
//! same packets on a flow the policy allows without inspecting it, in the same run; and the
//! FQDN table (the learned addresses) holding 100,000 names.
//!
//! Pipeline cases (`process`, `Mode::Full`, an established UDP flow from pod 0 to the DNS
//! server, pod 1, port 53; the frame is copied into the buffer every iteration, as
//! `copy-only` measures):
//! - `query/plain`: an `a.domain.com` A query where the policy allows port 53 with no
//!   `rules.dns` (the baseline); `query/inspected`: the same query where a DNS rule covers the
//!   flow: parsed, matched against `*.domain.com`, logged;
//! - `answer/plain`, `answer/inspected`: the answer (one A record): parsed, its address learned
//!   (a refresh, after the first) for the pod's `toFQDNs` selector, logged (the loop pops the
//!   record, as the agent would);
//! - `query/refused`: an `example.org` query, answered REFUSED in its own buffer.
//!
//! FQDN table cases (100,000 names, each one address, over 100 pods, in a table sized for
//! them): `fqdn/learn-new` (an address not yet known, in a table at that load: the clock moves
//! so that older facts expire and their slots are reused), `fqdn/learn-refresh`,
//! `fqdn/lookup-hit`, `fqdn/lookup-miss`; and the policy verdict of a new flow allowed through
//! a `toFQDNs` rule (`evaluate/fqdn`: the egress table misses, then the pod's selector's fact)
//! against one allowed by an identity rule (`evaluate/identity`).
//!
//! Criterion reports ns per iteration. Pin it (`taskset -c 1`) and read ratios.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use xylem_bench::{GW_MAC, pod_ip, pod_mac, tables};
use xylem_dataplane::conntrack::{Conntrack, CtConfig, FlowKey};
use xylem_dataplane::dns::{DnsRule, FqdnScope, NameSelector};
use xylem_dataplane::learned::LearnedTable;
use xylem_dataplane::pipeline::{Frame, Verdict, process};
use xylem_dataplane::policy::{
    Learned, PolicyTablesBuilder, RuleOrigin, Section, evaluate_with, identity,
};
use xylem_dataplane::tables::{Mode, Tables};
use xylem_dataplane::wire::ip::proto;

const SEC: u64 = 1_000_000_000;
const NOW: u64 = 1_000 * SEC;
const NAMES: u32 = 100_000;
const PODS: u32 = 100;
const ID_CLIENT: u32 = 300;
const ID_DNS: u32 = 400;
const ID_WEB: u32 = 500;
/// The address the answers carry (`a.domain.com`).
const WEB: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);

/// Routes for pods 0..3; pod 0 the client, pod 1 the DNS server, pod 2 a web server. With
/// `inspect`, the client's DNS to pod 1 is under a `rules.dns` rule for `*.domain.com`.
fn dns_tables(inspect: bool) -> Tables {
    let mut t = tables(3, Mode::Full);
    let mut b = PolicyTablesBuilder::new(1);
    b.add_endpoint(pod_ip(0), ID_CLIENT);
    b.add_endpoint(pod_ip(1), ID_DNS);
    b.add_endpoint(pod_ip(2), ID_WEB);
    let mut origin = |index| {
        b.add_origin(RuleOrigin {
            policy: "default/p".into(),
            spec: 0,
            section: Section::Egress,
            index,
        })
    };
    let (r0, r1, r2) = (origin(0), origin(1), origin(2));
    let egress = &mut b.endpoint_policy(ID_CLIENT).egress;
    egress.set_enforced(true);
    egress.add(ID_DNS, proto::UDP, Some((53, 53)), false, r0);
    egress.add(identity::FIRST_FQDN, proto::TCP, Some((80, 80)), false, r1);
    egress.add(ID_WEB, proto::TCP, Some((80, 80)), false, r2);
    let selector = NameSelector::pattern("*.domain.com").expect("pattern");
    if inspect {
        b.add_dns_rule(
            ID_CLIENT,
            DnsRule {
                peer: ID_DNS,
                proto: proto::UDP,
                ports: (53, 53),
                selectors: Arc::from([selector.clone()]),
                rule: r0,
            },
        );
    }
    b.add_fqdn_scope(
        pod_ip(0),
        FqdnScope {
            scope: 1,
            peer: identity::FIRST_FQDN,
            selector,
        },
    );
    t.set_policy(b.build());
    t
}

fn name_wire(name: &str) -> Vec<u8> {
    let mut v = Vec::new();
    for label in name.split('.') {
        v.push(label.len() as u8);
        v.extend_from_slice(label.as_bytes());
    }
    v.push(0);
    v
}

/// A DNS message: header `flags`, one question for `name`, A/IN, and `answer` as one A record.
fn message(flags: u16, name: &str, answer: Option<Ipv4Addr>) -> Vec<u8> {
    let mut v = vec![0x12, 0x34];
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&[0, 1, 0, u8::from(answer.is_some()), 0, 0, 0, 0]);
    v.extend(name_wire(name));
    v.extend_from_slice(&[0, 1, 0, 1]);
    if let Some(ip) = answer {
        v.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0x0e, 0x10, 0, 4]);
        v.extend_from_slice(&ip.octets());
    }
    v
}

fn udp(from: u32, to: u32, ports: (u16, u16), payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2(pod_mac(from), GW_MAC)
        .ipv4(pod_ip(from).octets(), pod_ip(to).octets(), 64)
        .udp(ports.0, ports.1)
        .write(&mut v, payload)
        .expect("frame");
    v
}

/// Runs `frame` from `port` once, copied into `buf`.
#[inline(always)]
fn run(buf: &mut [u8], frame: &[u8], port: u16, t: &Tables, ct: &mut Conntrack) -> Verdict {
    buf[..frame.len()].copy_from_slice(frame);
    let mut f = Frame::new(buf, frame.len());
    process(NOW, port, &mut f, t, ct).verdict
}

fn pipeline(c: &mut Criterion) {
    let query = udp(0, 1, (40000, 53), &message(0x0100, "a.domain.com", None));
    let answer = udp(
        1,
        0,
        (53, 40000),
        &message(0x8180, "a.domain.com", Some(WEB)),
    );
    let refused = udp(0, 1, (40001, 53), &message(0x0100, "example.org", None));
    let mut buf = vec![0u8; 2048];
    let mut g = c.benchmark_group("dns");
    g.bench_function("copy-only", |b| {
        b.iter(|| {
            buf[..query.len()].copy_from_slice(black_box(&query));
            black_box(&buf);
        })
    });
    for (label, inspect) in [("plain", false), ("inspected", true)] {
        let t = dns_tables(inspect);
        let mut ct = Conntrack::new(&CtConfig::default());
        // The flow is open: the query and its answer are an established flow's packets.
        assert_eq!(run(&mut buf, &query, 0, &t, &mut ct), Verdict::Forward(1));
        assert_eq!(run(&mut buf, &answer, 1, &t, &mut ct), Verdict::Forward(0));
        g.bench_function(format!("query/{label}"), |b| {
            b.iter(|| {
                let v = run(&mut buf, black_box(&query), 0, &t, &mut ct);
                ct.dns_log().pop();
                black_box(v)
            })
        });
        g.bench_function(format!("answer/{label}"), |b| {
            b.iter(|| {
                let v = run(&mut buf, black_box(&answer), 1, &t, &mut ct);
                ct.dns_log().pop();
                black_box(v)
            })
        });
        if inspect {
            assert_eq!(run(&mut buf, &refused, 0, &t, &mut ct), Verdict::Forward(0));
            g.bench_function("query/refused", |b| {
                b.iter(|| {
                    let v = run(&mut buf, black_box(&refused), 0, &t, &mut ct);
                    ct.dns_log().pop();
                    black_box(v)
                })
            });
        }
    }
    g.finish();
}

/// The address of name `i`.
fn address(i: u32) -> Ipv4Addr {
    Ipv4Addr::from_bits(Ipv4Addr::new(100, 64, 0, 0).to_bits() + i)
}

fn fqdn(c: &mut Criterion) {
    let table = LearnedTable::with_seed(NAMES as usize, 0, 0x5eed);
    for i in 0..NAMES {
        let _ = table.learn(NOW, 1 + i % PODS, address(i), NOW + 3600 * SEC, 0);
    }
    let s = table.stats();
    println!(
        "FQDN table: {} names learned over {PODS} pods, {} refused for room, {} KiB",
        s.learned,
        s.full,
        table.memory_bytes() / 1024
    );
    let mut g = c.benchmark_group("dns");
    let mut i = 0u32;
    g.bench_function("fqdn/lookup-hit", |b| {
        b.iter(|| {
            i = (i + 7919) % NAMES;
            black_box(table.lookup(NOW, 1 + i % PODS, address(i)))
        })
    });
    g.bench_function("fqdn/lookup-miss", |b| {
        b.iter(|| {
            i = (i + 7919) % NAMES;
            black_box(table.lookup(NOW, 1 + i % PODS, address(i + NAMES)))
        })
    });
    g.bench_function("fqdn/learn-refresh", |b| {
        let mut expiry = NOW + 3600 * SEC;
        b.iter(|| {
            i = (i + 7919) % NAMES;
            expiry += 1 << 16;
            black_box(table.learn(NOW, 1 + i % PODS, address(i), expiry, 0))
        })
    });
    // New names at a steady load: each one expires 100,000 learnings later (one ns of clock per
    // learning), so the table holds about 100,000 live names throughout.
    let churn = LearnedTable::with_seed(NAMES as usize, 0, 0x5eed);
    let mut n = 0u64;
    g.bench_function("fqdn/learn-new", |b| {
        b.iter(|| {
            n += 1;
            let now = NOW + n;
            let ip = Ipv4Addr::from_bits(n as u32);
            black_box(churn.learn(now, 1, ip, now + u64::from(NAMES), 0))
        })
    });

    // The policy verdict of a new flow through a toFQDNs rule, against an identity rule.
    let t = dns_tables(true);
    let learned = Learned {
        table: &table,
        now: NOW,
        established: false,
    };
    let _ = table.learn(NOW, 1, WEB, NOW + 3600 * SEC, 0);
    let to = |dst| FlowKey {
        src: pod_ip(0),
        dst,
        sport: 50000,
        dport: 80,
        proto: proto::TCP,
    };
    let (via_fqdn, via_identity) = (to(WEB), to(pod_ip(2)));
    assert!(
        evaluate_with(t.policy(), &via_fqdn, Some(learned))
            .drop()
            .is_none()
    );
    assert!(
        evaluate_with(t.policy(), &via_identity, Some(learned))
            .drop()
            .is_none()
    );
    g.bench_function("evaluate/identity", |b| {
        b.iter(|| {
            black_box(evaluate_with(
                t.policy(),
                black_box(&via_identity),
                Some(learned),
            ))
        })
    });
    g.bench_function("evaluate/fqdn", |b| {
        b.iter(|| {
            black_box(evaluate_with(
                t.policy(),
                black_box(&via_fqdn),
                Some(learned),
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, pipeline, fqdn);
criterion_main!(benches);

//! The service stage and its NAT on established connections, through the whole pipeline
//! (`process`, `Mode::Full`), against the same pipeline on a connection that needs no
//! translation, in the same run:
//! - `established/direct`: client → backend's own address (conntrack + policy path: the
//!   baseline);
//! - `established/virtual-ip`: client → virtual IP: the service entry, the connection's entry
//!   (two probes), DNAT with incremental checksums;
//! - `established/reply`: backend → client of a balanced connection: one probe, reverse NAT;
//! - `copy-only`: restoring the frame, which every iteration does (subtract it from all).
//!
//! Each case cycles through 1,024 connections of its kind, so that its cost is an average over
//! where their entries sit. The service tables hold 100 frontends of 10 backends each, the flow
//! table 50,000 other connections besides.
//!
//! Before the measurements it prints, for Maglev at M = 65521 with 100 backends, the share of
//! the table that changes owner when one backend is removed, beside the ideal 1/N.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use xylem_bench::{GW_MAC, pod_ip, pod_mac, tables};
use xylem_dataplane::conntrack::{Conntrack, CtConfig, FlowKey};
use xylem_dataplane::maglev::{MaglevBackend, MaglevTable};
use xylem_dataplane::pipeline::{Frame, Meta, Verdict, flow_and_policy, process};
use xylem_dataplane::services::{Algorithm, Backend, Frontend, ServiceTables};
use xylem_dataplane::tables::{Mode, Tables};
use xylem_dataplane::wire::ip::proto;

const FRONTENDS: u32 = 100;
const BACKENDS: u32 = 10;
const NOW: u64 = 1_000_000_000;

/// The virtual IP of frontend `i`.
fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from_bits(Ipv4Addr::new(10, 96, 0, 0).to_bits() + i)
}

/// Pods 0 (the client) to `FRONTENDS × BACKENDS`; frontend `f`'s backends are pods
/// `1 + f × BACKENDS ..`, port 8080; its virtual address `vip(f)`:80.
fn service_tables() -> Tables {
    let mut t = tables(1 + FRONTENDS * BACKENDS, Mode::Full);
    let mut s = ServiceTables::new(Algorithm::Maglev);
    for f in 0..FRONTENDS {
        let bs: Vec<Backend> = (0..BACKENDS)
            .map(|b| {
                let pod = 1 + f * BACKENDS + b;
                Backend {
                    id: pod,
                    addr: SocketAddrV4::new(pod_ip(pod), 8080),
                }
            })
            .collect();
        for b in &bs {
            s.add_backend(b.id, b.addr).expect("backend");
        }
        let weighted: Vec<_> = bs.iter().map(|&b| (b, 1)).collect();
        let addr = SocketAddrV4::new(vip(f), 80);
        s.add_frontend(
            Frontend::with_table(f + 1, addr, proto::TCP, 0, &weighted, 16381).expect("maglev"),
        )
        .expect("frontend");
    }
    t.set_services(Arc::new(s));
    t
}

/// A TCP ACK segment from pod `from` (its MAC) to `to`, 64 bytes.
fn segment(from: u32, src: SocketAddrV4, to: SocketAddrV4) -> Vec<u8> {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2(pod_mac(from), GW_MAC)
        .ipv4(src.ip().octets(), to.ip().octets(), 64)
        .tcp(src.port(), to.port(), 1000, 64240)
        .ack(1)
        .write(&mut v, &[0u8; 10])
        .expect("frame");
    v
}

/// A flow table with 50,000 connections between addresses outside the node.
fn busy_conntrack(t: &Tables) -> Conntrack {
    let mut ct = Conntrack::new(&CtConfig {
        capacity: 65_536,
        endpoint_limit: 65_536,
        seed: 7,
        ..CtConfig::default()
    });
    for i in 0..50_000u32 {
        let k = FlowKey {
            src: Ipv4Addr::from_bits(0x6400_0000 | i),
            dst: Ipv4Addr::new(192, 0, 2, 1),
            sport: 1024 + (i % 60_000) as u16,
            dport: 443,
            proto: proto::TCP,
        };
        flow_and_policy(
            NOW,
            5,
            &Meta::from_key(k),
            t.gateway().ipv4,
            t.policy(),
            &mut ct,
        );
    }
    ct
}

/// Runs `bytes` once through the pipeline on `port` (the setup's packets).
fn once(t: &Tables, ct: &mut Conntrack, port: u16, bytes: &[u8]) -> (Verdict, Vec<u8>) {
    let mut buf = bytes.to_vec();
    buf.resize(2048, 0);
    let mut f = Frame::new(&mut buf, bytes.len());
    let o = process(NOW, port, &mut f, t, ct);
    let out = f.data().to_vec();
    (o.verdict, out)
}

/// Prints how much of a 100-backend Maglev table at M = 65521 changes owner when one
/// backend leaves, against the ideal 1/N.
fn print_disruption() {
    let n = 100u32;
    let all: Vec<MaglevBackend> = (0..n)
        .map(|i| MaglevBackend {
            key: SocketAddrV4::new(pod_ip(i), 8080),
            weight: 1,
        })
        .collect();
    let before = MaglevTable::new(&all, 65521).expect("table");
    let after = MaglevTable::new(&all[1..], 65521).expect("table");
    let moved = before
        .entries()
        .iter()
        .zip(after.entries())
        .filter(|&(&b, &a)| all[usize::from(b)].key != all[1 + usize::from(a)].key)
        .count();
    let own = before.slot_counts()[0] as usize;
    let m = 65521.0;
    eprintln!(
        "maglev disruption, M=65521, {n} backends, one removed: {:.2} % of the table changed \
         owner (ideal 1/N = {:.2} %): the removed backend's own {:.2} % and {:.2} % held by \
         the others",
        moved as f64 / m * 100.0,
        100.0 / f64::from(n),
        own as f64 / m * 100.0,
        (moved - own) as f64 / m * 100.0,
    );
}

/// Connections per case: the benchmark cycles through them, so the cost is an average over
/// flows (a single flow's cost depends on where its entry happens to sit).
const FLOWS: u16 = 1024;

fn services(c: &mut Criterion) {
    print_disruption();
    let t = service_tables();
    let mut ct = busy_conntrack(&t);
    // Per flow: the client's packet to the virtual IP, the backend's reply, and a packet of a
    // connection straight to that backend's own address (the baseline), each with its port.
    let mut to_vip = Vec::new();
    let mut replies = Vec::new();
    let mut direct = Vec::new();
    for i in 0..FLOWS {
        let client = SocketAddrV4::new(pod_ip(0), 20000 + i);
        let frontend = SocketAddrV4::new(vip(u32::from(i) % FRONTENDS), 80);
        let packet = segment(0, client, frontend);
        let (v, out) = once(&t, &mut ct, 0, &packet);
        assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
        let backend_ip = Ipv4Addr::new(out[30], out[31], out[32], out[33]);
        let backend_pod = backend_ip.to_bits() - pod_ip(0).to_bits();
        let backend = SocketAddrV4::new(backend_ip, 8080);
        // Pod `i` sits on port `i % 64` (`xylem_bench::tables`).
        let backend_port = (backend_pod % 64) as u16;
        let reply = segment(backend_pod, backend, client);
        assert_eq!(
            once(&t, &mut ct, backend_port, &reply).0,
            Verdict::Forward(0)
        );
        let straight = segment(0, SocketAddrV4::new(pod_ip(0), 40000 + i), backend);
        assert!(matches!(
            once(&t, &mut ct, 0, &straight).0,
            Verdict::Forward(_)
        ));
        to_vip.push((packet, 0));
        replies.push((reply, backend_port));
        direct.push((straight, 0));
    }

    let mut g = c.benchmark_group("services");
    let mut buf = vec![0u8; 2048];
    for (name, frames) in [
        ("established/direct", &direct),
        ("established/virtual-ip", &to_vip),
        ("established/reply", &replies),
    ] {
        let mut i = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                let (bytes, port) = &frames[i % frames.len()];
                i += 1;
                buf[..bytes.len()].copy_from_slice(bytes);
                let mut f = Frame::new(&mut buf, bytes.len());
                black_box(process(NOW, *port, &mut f, &t, &mut ct))
            })
        });
    }
    g.bench_function("copy-only", |b| {
        let mut i = 0;
        b.iter(|| {
            let (bytes, _) = &to_vip[i % to_vip.len()];
            i += 1;
            buf[..bytes.len()].copy_from_slice(black_box(bytes));
            black_box(&mut buf);
        })
    });
    g.finish();
}

criterion_group!(benches, services);
criterion_main!(benches);

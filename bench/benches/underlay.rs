//! `process` on the paths between nodes, against a pod-to-pod forward on the same node in the
//! same run: a pod's packet to another node's pod in clear (routing's peer scan) and sealed in
//! ESP (stage 10), and the other node's uplink receiving it in clear and opening it (stage 3).
//!
//! Every case copies its whole frame into the buffer each iteration (encapsulation rewrites
//! all of it), so the copy is in every case alike and the ratios are the stages' cost. The
//! opening case needs a sequence number its window has not seen: each iteration opens the next
//! packet of one peer's SA, sealed in the untimed setup (`iter_batched_ref`). Tables in `full`
//! mode without policy rules; the flow is established after the first iteration.
//!
//! Pin it (`taskset -c 1`) and read ratios.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use xylem_bench::{pod_ip, pod_mac, tables, udp_frame};
use xylem_dataplane::conntrack::{Conntrack, CtConfig};
use xylem_dataplane::esp::{HEADROOM, Key, KeysIn, PeerSas, SaOut, seal, sealed_len};
use xylem_dataplane::frame::Frame;
use xylem_dataplane::pipeline::{Verdict, process};
use xylem_dataplane::tables::{MacAddr, Mode, Peer, Prefix, Tables, Uplink};

const UPLINK: u16 = 63;
const UPLINK_MAC: [u8; 6] = [0x0e, 0x78, 0x79, 0x75, 0, 1];
const PEER_MAC: [u8; 6] = [0x0e, 0x78, 0x79, 0x75, 0, 2];
const NODE: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 11);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 12);
/// A pod of the other node.
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 129, 0, 10);
const HEAD: usize = 256;
const KEY: [u8; 20] = [0x42; 20];

/// This node's tables: the bench library's pods (10.128.0.0/16, on ports 0–62), the uplink on
/// port 63, and the peer with pods 10.129.0.0/16, encrypting when `esp`.
fn node_tables(esp: bool) -> Tables {
    let mut t = tables(16, Mode::Full);
    t.set_uplink(Uplink {
        port: UPLINK,
        ip: NODE,
        mac: MacAddr(UPLINK_MAC),
        pod_cidr: Prefix::new(Ipv4Addr::new(10, 128, 0, 0), 16),
    })
    .expect("uplink");
    let sas = esp.then(|| {
        let mut inbound = KeysIn::new();
        inbound
            .insert(Key::new(3, &KEY).expect("key"))
            .expect("room");
        Arc::new(PeerSas {
            out: Some(Arc::new(SaOut::new(Key::new(3, &KEY).expect("key")))),
            inbound,
            counters: Default::default(),
        })
    });
    t.add_peer(Peer {
        name: "node2".into(),
        node_ip: PEER,
        pod_cidr: Prefix::new(Ipv4Addr::new(10, 129, 0, 0), 16),
        mac: Some(MacAddr(PEER_MAC)),
        esp: sas,
    })
    .expect("peer");
    t
}

fn ct() -> Conntrack {
    Conntrack::new(&CtConfig {
        capacity: 1024,
        ..Default::default()
    })
}

/// Copies `frame` into `buf` behind the headroom and runs it through `t` from `port`.
#[inline(always)]
fn run(buf: &mut [u8], frame: &[u8], port: u16, t: &Tables, ct: &mut Conntrack) -> Verdict {
    buf[HEAD..HEAD + frame.len()].copy_from_slice(frame);
    let mut f = Frame::with_headroom(buf, HEAD, frame.len());
    process(1, port, &mut f, t, ct).verdict
}

/// `frame` from pod 0 (its source MAC), as pod 0 sends it.
fn from_pod0(mut frame: Vec<u8>) -> Vec<u8> {
    frame[6..12].copy_from_slice(&pod_mac(0));
    frame
}

/// The frame the peer's pod `REMOTE_POD` sends to pod 1, as it arrives on the uplink in clear.
fn from_peer_clear(len: usize) -> Vec<u8> {
    let mut f = udp_frame(len, pod_ip(1));
    f[0..6].copy_from_slice(&UPLINK_MAC);
    f[6..12].copy_from_slice(&PEER_MAC);
    f[26..30].copy_from_slice(&REMOTE_POD.octets());
    let c = xylem_dataplane::checksum::checksum(&{
        let mut h = [0u8; 20];
        h.copy_from_slice(&f[14..34]);
        h[10] = 0;
        h[11] = 0;
        h
    });
    f[24..26].copy_from_slice(&c.to_be_bytes());
    // UDP checksum 0: none, so the changed source needs no update.
    f[40..42].copy_from_slice(&[0, 0]);
    f
}

/// The same frame sealed by the peer with `sa`, as it arrives on the uplink.
fn from_peer_esp(inner_frame: &[u8], sa: &SaOut) -> Vec<u8> {
    let inner = &inner_frame[14..];
    let mut esp = vec![0u8; sealed_len(inner.len())];
    esp[HEADROOM..HEADROOM + inner.len()].copy_from_slice(inner);
    seal(sa, &mut esp, inner.len()).expect("seal");
    let mut f = Vec::with_capacity(34 + esp.len());
    f.extend_from_slice(&UPLINK_MAC);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    xylem_dataplane::wire::ipv4::Repr {
        src: PEER.octets(),
        dst: NODE.octets(),
        protocol: xylem_dataplane::wire::ip::Protocol::ESP,
        payload_len: esp.len() as u16,
        ttl: 64,
        tos: 0,
    }
    .emit(&mut ip);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&esp);
    f
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("underlay");
    let clear = node_tables(false);
    let encrypting = node_tables(true);
    let mut buf = vec![0u8; HEAD + 4096];
    // One peer SA for every size: the node's window for it slides across them all.
    let peer_sa = SaOut::new(Key::new(3, &KEY).expect("key"));
    for len in [64usize, 512, 1400] {
        g.throughput(Throughput::Bytes(len as u64));
        let local = from_pod0(udp_frame(len, pod_ip(1)));
        let remote = from_pod0(udp_frame(len, REMOTE_POD));
        for (name, frame, t, want) in [
            ("pod-to-pod", &local, &clear, Verdict::Forward(1)),
            ("to-peer-clear", &remote, &clear, Verdict::Forward(UPLINK)),
            (
                "to-peer-esp",
                &remote,
                &encrypting,
                Verdict::Forward(UPLINK),
            ),
        ] {
            let mut c = ct();
            assert_eq!(run(&mut buf, frame, 0, t, &mut c), want, "{name}/{len}");
            g.bench_function(format!("{name}/{len}"), |b| {
                b.iter(|| black_box(run(&mut buf, black_box(frame), 0, t, &mut c)))
            });
        }
        let inbound = from_peer_clear(len);
        let mut c = ct();
        assert_eq!(
            run(&mut buf, &inbound, UPLINK, &clear, &mut c),
            Verdict::Forward(1)
        );
        g.bench_function(format!("from-peer-clear/{len}"), |b| {
            b.iter(|| black_box(run(&mut buf, black_box(&inbound), UPLINK, &clear, &mut c)))
        });
        let mut c = ct();
        let first = from_peer_esp(&inbound, &peer_sa);
        assert_eq!(
            run(&mut buf, &first, UPLINK, &encrypting, &mut c),
            Verdict::Forward(1)
        );
        g.bench_function(format!("from-peer-esp/{len}"), |b| {
            b.iter_batched_ref(
                || from_peer_esp(&inbound, &peer_sa),
                |packet| black_box(run(&mut buf, packet, UPLINK, &encrypting, &mut c)),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

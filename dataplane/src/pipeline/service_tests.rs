//! The service stage and its NAT, on byte arrays through [`process`]: a client pod A, backend
//! pods B1, B2 and B3, and a frontend 10.96.0.10 (TCP 80 → 8080, UDP 53 → 5353). Every
//! rewritten packet's checksums are verified by `etherparse`, an independent implementation.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use super::*;
use crate::checksum;
use crate::conntrack::CtConfig;
use crate::policy::{PolicyTablesBuilder, RuleOrigin, Section, identity};
use crate::services::{Algorithm, Backend, Frontend, ServiceTables};
use crate::tables::{Gateway, MacAddr, Neighbor};
use crate::wire::ip::proto;
use etherparse::{Icmpv4Type, NetHeaders, PacketBuilder, PacketHeaders, TransportHeader};

const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const GW_IP: [u8; 4] = [10, 0, 0, 1];
const VIP: [u8; 4] = [10, 96, 0, 10];

#[derive(Clone, Copy, Debug)]
struct Pod {
    ip: [u8; 4],
    mac: [u8; 6],
    port: PortId,
    id: u32,
}

const A: Pod = Pod {
    ip: [10, 0, 0, 10],
    mac: [0x02, 0, 0, 0, 0, 0x0a],
    port: 1,
    id: 300,
};
const B: [Pod; 3] = [
    Pod {
        ip: [10, 0, 0, 21],
        mac: [0x02, 0, 0, 0, 0, 0x21],
        port: 2,
        id: 301,
    },
    Pod {
        ip: [10, 0, 0, 22],
        mac: [0x02, 0, 0, 0, 0, 0x22],
        port: 3,
        id: 302,
    },
    Pod {
        ip: [10, 0, 0, 23],
        mac: [0x02, 0, 0, 0, 0, 0x23],
        port: 4,
        id: 303,
    },
];

fn backend(i: usize, port: u16) -> Backend {
    Backend {
        id: 1 + i as u32 + if port == 8080 { 0 } else { 10 },
        addr: SocketAddrV4::new(B[i].ip.into(), port),
    }
}

/// Services: TCP 80 → 8080 and UDP 53 → 5353 on the backends `which` (weights 1), with
/// `affinity_ns` of ClientIP affinity on the TCP frontend.
fn services(which: &[usize], affinity_ns: u64) -> ServiceTables {
    let mut s = ServiceTables::new(Algorithm::Maglev);
    for i in 0..3 {
        s.add_backend(backend(i, 8080).id, backend(i, 8080).addr)
            .unwrap();
        s.add_backend(backend(i, 5353).id, backend(i, 5353).addr)
            .unwrap();
    }
    for (id, port, target, protocol) in [(1, 80, 8080, proto::TCP), (2, 53, 5353, proto::UDP)] {
        let weighted: Vec<_> = which.iter().map(|&i| (backend(i, target), 1)).collect();
        let affinity = if protocol == proto::TCP {
            affinity_ns
        } else {
            0
        };
        let addr = SocketAddrV4::new(VIP.into(), port);
        s.add_frontend(Frontend::with_table(id, addr, protocol, affinity, &weighted, 251).unwrap())
            .unwrap();
    }
    s
}

/// Full-mode tables for A and the backends, with `services`; B3's ingress (if `guard_b3`)
/// allows nothing, so a connection balanced to it is denied. Policy revision 1 without the
/// guard, 2 with it.
fn tables_with(services: ServiceTables, guard_b3: bool) -> Tables {
    let mut t = Tables::new(
        1,
        Mode::Full,
        Gateway {
            mac: MacAddr(GW_MAC),
            ipv4: Ipv4Addr::from(GW_IP),
        },
    );
    let mut b = PolicyTablesBuilder::new(if guard_b3 { 2 } else { 1 });
    for p in std::iter::once(A).chain(B) {
        t.add_route(
            Ipv4Addr::from(p.ip),
            Neighbor {
                port: p.port,
                mac: MacAddr(p.mac),
            },
        )
        .unwrap();
        b.add_endpoint(Ipv4Addr::from(p.ip), p.id);
    }
    b.add_address(Ipv4Addr::from(GW_IP), identity::HOST);
    if guard_b3 {
        b.add_origin(RuleOrigin {
            policy: "default/p".into(),
            spec: 0,
            section: Section::Ingress,
            index: 0,
        });
        b.endpoint_policy(B[2].id).ingress.set_enforced(true);
    }
    t.set_policy(b.build());
    t.set_services(Arc::new(services));
    t
}

fn tables() -> Tables {
    tables_with(services(&[0, 1, 2], 0), false)
}

fn ct() -> Conntrack {
    Conntrack::new(&CtConfig {
        capacity: 8192,
        seed: 5,
        ..CtConfig::default()
    })
}

fn tcp(from: Pod, to: [u8; 4], sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(from.mac, GW_MAC)
        .ipv4(from.ip, to, 64)
        .tcp(sport, dport, 1000, 64240);
    let b = if syn { b.syn() } else { b.ack(1).psh() };
    let mut v = Vec::new();
    b.write(&mut v, if syn { b"" } else { b"hello" }).unwrap();
    v
}

fn udp(from: Pod, to: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(from.mac, GW_MAC)
        .ipv4(from.ip, to, 64)
        .udp(sport, dport)
        .write(&mut v, b"query")
        .unwrap();
    v
}

/// Runs `bytes` through the pipeline as received on `from`'s port; the outcome and the frame.
fn send(t: &Tables, ct: &mut Conntrack, from: Pod, bytes: &[u8]) -> (Outcome, Vec<u8>) {
    let mut buf = bytes.to_vec();
    buf.resize(2048, 0);
    let mut f = Frame::new(&mut buf, bytes.len());
    let o = process(1_000, from.port, &mut f, t, ct);
    let out = f.data().to_vec();
    (o, out)
}

/// The frame's IPv4 addresses and transport ports, after checking with `etherparse` that its
/// IP header checksum and its TCP or UDP checksum are right.
fn verified(frame: &[u8]) -> (SocketAddrV4, SocketAddrV4) {
    let h = PacketHeaders::from_ethernet_slice(frame).unwrap();
    let Some(NetHeaders::Ipv4(ip, _)) = &h.net else {
        panic!("not IPv4")
    };
    assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "IP checksum");
    let payload = h.payload.slice();
    let (sp, dp) = match &h.transport {
        Some(TransportHeader::Tcp(t)) => {
            assert_eq!(
                t.checksum,
                t.calc_checksum_ipv4(ip, payload).unwrap(),
                "TCP checksum"
            );
            (t.source_port, t.destination_port)
        }
        Some(TransportHeader::Udp(u)) => {
            assert_eq!(
                u.checksum,
                u.calc_checksum_ipv4(ip, payload).unwrap(),
                "UDP checksum"
            );
            (u.source_port, u.destination_port)
        }
        other => panic!("not TCP or UDP: {other:?}"),
    };
    (
        SocketAddrV4::new(ip.source.into(), sp),
        SocketAddrV4::new(ip.destination.into(), dp),
    )
}

fn pod_at(ip: Ipv4Addr) -> Pod {
    *B.iter().find(|b| Ipv4Addr::from(b.ip) == ip).unwrap()
}

fn vip(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(VIP.into(), port)
}

/// A connection to the virtual address goes to a backend (destination rewritten, checksums
/// right), is tracked there, and the backend's reply comes back from the virtual address; the
/// connection's later packets find the same backend.
#[test]
fn a_connection_is_balanced_translated_and_answered_from_the_virtual_address() {
    let (t, mut ct) = (tables(), ct());
    let (o, out) = send(&t, &mut ct, A, &tcp(A, VIP, 40000, 80, true));
    assert_eq!(o.policy, Some(PolicyVerdict::New));
    let (src, dst) = verified(&out);
    assert_eq!(src, SocketAddrV4::new(A.ip.into(), 40000));
    assert_eq!(dst.port(), 8080);
    let b = pod_at(*dst.ip());
    assert_eq!(o.verdict, Verdict::Forward(b.port));
    assert_eq!(&out[0..6], &b.mac, "to the backend's MAC");
    // Two entries: the service entry and the connection's own.
    assert_eq!(ct.len(), 2);

    let reply = tcp(b, A.ip, 8080, 40000, false);
    let (o, out) = send(&t, &mut ct, b, &reply);
    assert_eq!(o.policy, Some(PolicyVerdict::Reply));
    assert_eq!(o.verdict, Verdict::Forward(A.port));
    assert_eq!(
        verified(&out),
        (vip(80), SocketAddrV4::new(A.ip.into(), 40000))
    );

    for _ in 0..3 {
        let (o, out) = send(&t, &mut ct, A, &tcp(A, VIP, 40000, 80, false));
        assert_eq!(o.policy, Some(PolicyVerdict::Established));
        assert_eq!(verified(&out).1, dst);
    }
    // A reply handled by another worker (another handle on the same table) is translated too.
    let mut other = ct.clone();
    let (o, out) = send(&t, &mut other, b, &reply);
    assert_eq!(o.policy, Some(PolicyVerdict::Reply));
    assert_eq!(verified(&out).0, vip(80));
    assert_eq!(ct.len(), 2);
}

/// Connections spread over every backend, the same 5-tuple always to the same one.
#[test]
fn new_connections_spread_over_the_backends_and_each_keeps_its_own() {
    let (t, mut ct) = (tables(), ct());
    let mut seen = std::collections::HashMap::new();
    for sport in 30000..30300u16 {
        let (o, out) = send(&t, &mut ct, A, &tcp(A, VIP, sport, 80, true));
        assert!(matches!(o.verdict, Verdict::Forward(_)));
        *seen.entry(*verified(&out).1.ip()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|&n| n > 60), "{seen:?}");
}

/// An established connection stays on its backend when the backend set changes; a new one
/// sees only the new set.
#[test]
fn established_connections_never_move_when_the_backend_set_changes() {
    let mut ct = ct();
    let t = tables();
    let mut placed = Vec::new();
    for sport in 20000..20060u16 {
        let (_, out) = send(&t, &mut ct, A, &tcp(A, VIP, sport, 80, true));
        placed.push((sport, verified(&out).1));
    }
    let gone = placed[0].1;
    let rest: Vec<usize> = (0..3)
        .filter(|&i| Ipv4Addr::from(B[i].ip) != *gone.ip())
        .collect();
    let t2 = tables_with(services(&rest, 0), false);
    for &(sport, to) in &placed {
        let (o, out) = send(&t2, &mut ct, A, &tcp(A, VIP, sport, 80, false));
        assert_eq!(o.policy, Some(PolicyVerdict::Established), "{sport}");
        assert_eq!(verified(&out).1, to, "connection {sport} moved");
    }
    for sport in 50000..50100u16 {
        let (_, out) = send(&t2, &mut ct, A, &tcp(A, VIP, sport, 80, true));
        assert_ne!(
            *verified(&out).1.ip(),
            *gone.ip(),
            "a new connection to the removed backend"
        );
    }
}

/// With no backend, a TCP SYN gets a RST and a UDP datagram an ICMP port unreachable, both
/// from the virtual address, to the sender's port; nothing is tracked.
#[test]
fn a_service_without_a_backend_answers_a_reset_or_port_unreachable() {
    let (t, mut ct) = (tables_with(services(&[], 0), false), ct());
    let (o, out) = send(&t, &mut ct, A, &tcp(A, VIP, 40000, 80, true));
    assert_eq!(
        o.verdict,
        Verdict::Refused {
            port: A.port,
            reset: true
        }
    );
    assert_eq!(o.drop_reason(), Some(DropReason::NoServiceBackend));
    assert_eq!(&out[0..6], &A.mac);
    assert_eq!(
        verified(&out),
        (vip(80), SocketAddrV4::new(A.ip.into(), 40000))
    );
    let h = PacketHeaders::from_ethernet_slice(&out).unwrap();
    let Some(TransportHeader::Tcp(rst)) = h.transport else {
        panic!()
    };
    assert!(rst.rst && rst.ack && rst.acknowledgment_number == 1001);

    let (o, out) = send(&t, &mut ct, A, &udp(A, VIP, 4000, 53));
    assert_eq!(
        o.verdict,
        Verdict::Refused {
            port: A.port,
            reset: false
        }
    );
    let h = PacketHeaders::from_ethernet_slice(&out).unwrap();
    let Some(NetHeaders::Ipv4(ip, _)) = &h.net else {
        panic!()
    };
    assert_eq!((ip.source, ip.destination), (VIP, A.ip));
    let Some(TransportHeader::Icmpv4(icmp)) = &h.transport else {
        panic!()
    };
    assert!(matches!(
        icmp.icmp_type,
        Icmpv4Type::DestinationUnreachable(_)
    ));
    assert_eq!(
        icmp.checksum,
        icmp.icmp_type.calc_checksum(h.payload.slice())
    );
    assert_eq!(ct.len(), 0);
    // A RST to the frontend is not answered.
    let mut rst = tcp(A, VIP, 40000, 80, false);
    rst[14 + 20 + 13] = 0x04;
    let (o, _) = send(&t, &mut ct, A, &rst);
    assert_eq!(o.verdict, Verdict::Drop(DropReason::NoServiceBackend));
}

/// UDP is translated both ways, and a datagram without a checksum keeps none.
#[test]
fn udp_is_translated_both_ways_and_a_missing_checksum_stays_missing() {
    let (t, mut ct) = (tables(), ct());
    let (_, out) = send(&t, &mut ct, A, &udp(A, VIP, 4000, 53));
    let (_, to) = verified(&out);
    assert_eq!(to.port(), 5353);
    let b = pod_at(*to.ip());
    let (o, out) = send(&t, &mut ct, b, &udp(b, A.ip, 5353, 4000));
    assert_eq!(o.policy, Some(PolicyVerdict::Reply));
    assert_eq!(verified(&out).0, vip(53));

    let mut bare = udp(A, VIP, 4001, 53);
    bare[14 + 20 + 6] = 0;
    bare[14 + 20 + 7] = 0;
    let (_, out) = send(&t, &mut ct, A, &bare);
    assert_eq!(&out[14 + 20 + 6..14 + 20 + 8], &[0, 0]);
    assert_eq!(&out[14 + 20 + 2..14 + 20 + 4], &5353u16.to_be_bytes());
}

/// A partial checksum (a pod's TX offload) is completed before the translation, so the
/// backend gets a whole, right one.
#[test]
fn a_partial_checksum_is_completed_then_translated() {
    let (t, mut ct) = (tables(), ct());
    let mut f = tcp(A, VIP, 40000, 80, false);
    let total = f.len() - 14;
    let p = checksum::ipv4_pseudo_header(A.ip, VIP, proto::TCP, (total - 20) as u16).fold();
    f[14 + 20 + 16..14 + 20 + 18].copy_from_slice(&p.to_be_bytes());
    let (o, out) = send(&t, &mut ct, A, &f);
    assert!(o.checksum_completed);
    verified(&out);
}

/// With ClientIP affinity every connection of a client reaches one backend.
#[test]
fn client_ip_affinity_keeps_a_client_on_one_backend() {
    let (t, mut ct) = (
        tables_with(services(&[0, 1, 2], 10_000_000_000), false),
        ct(),
    );
    let mut to = std::collections::HashSet::new();
    for sport in 30000..30100u16 {
        let (_, out) = send(&t, &mut ct, A, &tcp(A, VIP, sport, 80, true));
        to.insert(*verified(&out).1.ip());
    }
    assert_eq!(to.len(), 1, "{to:?}");
}

/// The policy judges the translated flow: a backend whose ingress allows nothing is not
/// reached through the virtual address either, and the drop names the policy.
#[test]
fn policy_sees_the_backend_after_translation() {
    let (t, mut ct) = (tables_with(services(&[2], 0), true), ct());
    let (o, _) = send(&t, &mut ct, A, &tcp(A, VIP, 40000, 80, true));
    assert_eq!(o.verdict, Verdict::Drop(DropReason::PolicyDenied));
    assert_eq!(ct.len(), 0);
}

/// A backend's port unreachable about a client's datagram reaches the client about the
/// datagram it sent: from the virtual address, quoting the virtual address, checksums right.
#[test]
fn an_icmp_error_from_a_backend_is_translated_back() {
    let (t, mut ct) = (tables(), ct());
    let (_, sent) = send(&t, &mut ct, A, &udp(A, VIP, 4000, 53));
    let b = pod_at(*verified(&sent).1.ip());
    let mut err = Vec::new();
    PacketBuilder::ethernet2(b.mac, GW_MAC)
        .ipv4(b.ip, A.ip, 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut err, &sent[14..14 + 28])
        .unwrap();
    let (o, out) = send(&t, &mut ct, b, &err);
    assert_eq!(o.policy, Some(PolicyVerdict::Related));
    assert_eq!(o.verdict, Verdict::Forward(A.port));
    let h = PacketHeaders::from_ethernet_slice(&out).unwrap();
    let Some(NetHeaders::Ipv4(ip, _)) = &h.net else {
        panic!()
    };
    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
    assert_eq!(ip.source, VIP);
    let Some(TransportHeader::Icmpv4(icmp)) = &h.transport else {
        panic!()
    };
    let quote = h.payload.slice();
    assert_eq!(icmp.checksum, icmp.icmp_type.calc_checksum(quote));
    let (inner, rest) = etherparse::Ipv4Header::from_slice(quote).unwrap();
    assert_eq!(inner.header_checksum, inner.calc_header_checksum());
    assert_eq!((inner.source, inner.destination), (A.ip, VIP));
    assert_eq!(&rest[2..4], &53u16.to_be_bytes());
    // The quoted UDP checksum is that of the datagram the client sent.
    assert_eq!(
        &rest[6..8],
        &udp(A, VIP, 4000, 53)[14 + 20 + 6..14 + 20 + 8]
    );
}

/// The passthrough floor translates nothing: a packet to a virtual address has no route.
#[test]
fn passthrough_translates_nothing() {
    let mut t = tables_in_mode(Mode::Passthrough);
    t.set_services(Arc::new(services(&[0], 0)));
    let (o, _) = send(&t, &mut ct(), A, &tcp(A, VIP, 40000, 80, true));
    assert_eq!(o.verdict, Verdict::Drop(DropReason::NoRoute));
}

fn tables_in_mode(mode: Mode) -> Tables {
    let t = tables();
    let mut p = Tables::new(t.revision(), mode, *t.gateway());
    for (ip, n) in t.routes() {
        p.add_route(ip, n).unwrap();
    }
    p
}

/// The reverse entry's slot and the connection entry's slot index, for A's connection from
/// `sport` balanced to `b` (port 8080).
fn entries_of(ct: &Conntrack, sport: u16, b: Pod) -> (usize, u32) {
    let key = |dst: [u8; 4], dport| crate::conntrack::FlowKey {
        src: A.ip.into(),
        dst: dst.into(),
        sport,
        dport,
        proto: proto::TCP,
    };
    let crate::conntrack::Probe::Hit { slot: reverse, .. } = ct.probe(1_000, &key(b.ip, 8080))
    else {
        panic!("no reverse entry")
    };
    let crate::conntrack::Probe::Hit { slot: own, .. } = ct.probe(1_000, &key(VIP, 80)) else {
        panic!("no connection entry")
    };
    (reverse, Conntrack::index_of(own))
}

/// A reply reaches its connection's entry in one probe and one slot read, advances its state,
/// and still finds it (and corrects the index it keeps) if the entry moved since.
#[test]
fn a_reply_advances_its_connection_and_finds_it_after_it_moved() {
    let (t, mut ct) = (tables(), ct());
    let (_, out) = send(&t, &mut ct, A, &tcp(A, VIP, 40000, 80, true));
    let b = pod_at(*verified(&out).1.ip());
    let (reverse, index) = entries_of(&ct, 40000, b);
    assert_eq!(
        ct.revision(reverse),
        index,
        "the reverse entry points at the connection's"
    );
    let seen_reply = |ct: &Conntrack| {
        ct.entries(1_000)
            .find(|e| e.orig.dst == Ipv4Addr::from(VIP))
            .map(|e| (e.state, e.seen_reply))
    };
    assert_eq!(
        seen_reply(&ct),
        Some((crate::conntrack::CtState::SynSent, false))
    );
    // As if a removal had shifted the connection's entry: the index is wrong.
    ct.set_revision(reverse, u64::from(index) + 1);
    let mut synack = Vec::new();
    PacketBuilder::ethernet2(b.mac, GW_MAC)
        .ipv4(b.ip, A.ip, 64)
        .tcp(8080, 40000, 5000, 64240)
        .syn()
        .ack(1001)
        .write(&mut synack, b"")
        .unwrap();
    let (o, out) = send(&t, &mut ct, b, &synack);
    assert_eq!(o.policy, Some(PolicyVerdict::Reply));
    assert_eq!(verified(&out).0, vip(80));
    assert_eq!(
        seen_reply(&ct),
        Some((crate::conntrack::CtState::SynRecv, true))
    );
    assert_eq!(ct.revision(reverse), index, "the index is corrected");
}

/// A narrowed policy stops a balanced connection on its next packet: the policy rechecks it
/// as the flow to its backend, removes it, and the backend's replies are no longer given the
/// virtual address.
#[test]
fn a_narrowed_policy_stops_a_balanced_connection() {
    let mut ct = ct();
    let open = tables_with(services(&[2], 0), false);
    let (o, _) = send(&open, &mut ct, A, &tcp(A, VIP, 40000, 80, true));
    assert_eq!(o.policy, Some(PolicyVerdict::New));
    let narrowed = tables_with(services(&[2], 0), true);
    let (o, _) = send(&narrowed, &mut ct, A, &tcp(A, VIP, 40000, 80, false));
    assert_eq!(o.verdict, Verdict::Drop(DropReason::PolicyDenied));
    let (o, out) = send(
        &narrowed,
        &mut ct,
        B[2],
        &tcp(B[2], A.ip, 8080, 40000, false),
    );
    assert_ne!(o.policy, Some(PolicyVerdict::Reply));
    if let Verdict::Forward(_) = o.verdict {
        assert_eq!(
            *verified(&out).0.ip(),
            Ipv4Addr::from(B[2].ip),
            "translated"
        );
    }
}

/// Maglev picks by the 5-tuple alone, the same whenever it is asked; `random` picks a random
/// slot of the same weighted table, so one 5-tuple asked at different times reaches every
/// backend, about equally.
#[test]
fn maglev_depends_on_the_tuple_and_random_on_nothing_but_the_table() {
    let s = services(&[0, 1, 2], 0);
    let f = s.frontend(VIP.into(), 80, proto::TCP).unwrap();
    let ct = ct();
    let key = crate::conntrack::FlowKey {
        src: A.ip.into(),
        dst: VIP.into(),
        sport: 40000,
        dport: 80,
        proto: proto::TCP,
    };
    let pick = |algorithm, now| super::service::select(now, &key, f, algorithm, &ct).unwrap();
    let first = pick(Algorithm::Maglev, 1);
    assert!((2..3000).all(|now| pick(Algorithm::Maglev, now * 7919) == first));
    let mut counts = std::collections::HashMap::new();
    for now in 0..3000u64 {
        *counts
            .entry(pick(Algorithm::Random, now * 7919).id)
            .or_insert(0) += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        counts.values().all(|&n| (800..1200).contains(&n)),
        "{counts:?}"
    );
}

/// `frame` (Ethernet, a 20-byte IPv4 header, its payload) cut in two fragments after `at`
/// bytes of IP payload (a multiple of 8).
fn fragments(frame: &[u8], at: usize) -> [Vec<u8>; 2] {
    let (head, payload) = frame.split_at(14 + 20);
    let piece = |bytes: &[u8], offset: usize, more: bool| {
        let mut f = head.to_vec();
        f.extend_from_slice(bytes);
        f[16..18].copy_from_slice(&((20 + bytes.len()) as u16).to_be_bytes());
        let flags = if more { 0x2000 } else { 0 } | (offset / 8) as u16;
        f[20..22].copy_from_slice(&flags.to_be_bytes());
        f[24..26].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f
    };
    [
        piece(&payload[..at], 0, true),
        piece(&payload[at..], at, false),
    ]
}

/// The UDP datagram two translated fragments carry, checked whole: both fragments carry the
/// same addresses, and the UDP checksum (which covers the whole datagram) verifies.
fn reassembled(first: &[u8], later: &[u8]) -> (SocketAddrV4, SocketAddrV4) {
    assert_eq!(
        &first[26..34],
        &later[26..34],
        "the fragments' addresses differ"
    );
    for f in [first, later] {
        assert!(checksum::verify(&f[14..34]), "IP header checksum");
    }
    let mut ip = first[14..34].to_vec();
    ip[6..8].copy_from_slice(&[0, 0]);
    let mut payload = first[34..].to_vec();
    payload.extend_from_slice(&later[34..]);
    ip[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    ip[10..12].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut whole = first[..14].to_vec();
    whole.extend_from_slice(&ip);
    whole.extend_from_slice(&payload);
    verified(&whole)
}

/// A fragmented datagram to a virtual IP is balanced whole (its later fragment follows its
/// first to the same backend, both translated), and the backend's fragmented answer comes back
/// from the virtual IP whole.
#[test]
fn a_fragmented_datagram_is_balanced_and_answered_whole() {
    let (t, mut ct) = (tables(), ct());
    let mut query = Vec::new();
    PacketBuilder::ethernet2(A.mac, GW_MAC)
        .ipv4(A.ip, VIP, 64)
        .udp(4000, 53)
        .write(&mut query, &[7u8; 200])
        .unwrap();
    let [first, later] = fragments(&query, 48);
    let (o1, first_out) = send(&t, &mut ct, A, &first);
    let (o2, later_out) = send(&t, &mut ct, A, &later);
    assert!(matches!(o1.verdict, Verdict::Forward(_)), "{o1:?}");
    assert_eq!(o1.verdict, o2.verdict, "the fragments went different ways");
    let (from, to) = reassembled(&first_out, &later_out);
    assert_eq!(from, SocketAddrV4::new(A.ip.into(), 4000));
    assert_eq!(to.port(), 5353);

    let b = pod_at(*to.ip());
    let mut answer = Vec::new();
    PacketBuilder::ethernet2(b.mac, GW_MAC)
        .ipv4(b.ip, A.ip, 64)
        .udp(5353, 4000)
        .write(&mut answer, &[9u8; 300])
        .unwrap();
    let [first, later] = fragments(&answer, 104);
    let (o1, first_out) = send(&t, &mut ct, b, &first);
    let (o2, later_out) = send(&t, &mut ct, b, &later);
    assert_eq!(
        (o1.verdict, o2.verdict),
        (Verdict::Forward(A.port), Verdict::Forward(A.port))
    );
    assert_eq!(o1.policy, Some(PolicyVerdict::Reply));
    assert_eq!(
        reassembled(&first_out, &later_out),
        (vip(53), SocketAddrV4::new(A.ip.into(), 4000))
    );
}

//! Masquerade on byte arrays: two pods of one node talk to a host in the world; the node's
//! pipeline sends their packets from its underlay address and gives the world's replies back,
//! on one worker or another, and nothing else gets in.

use std::net::Ipv4Addr;

use etherparse::{NetHeaders, PacketBuilder, PacketHeaders, TransportHeader};

use crate::conntrack::{Conntrack, CtConfig};
use crate::frame::Frame;
use crate::pipeline::{Verdict, process};
use crate::policy::{PolicyTablesBuilder, PolicyVerdict, RuleOrigin, Section};
use crate::stats::DropReason;
use crate::tables::{Gateway, MacAddr, Mode, Neighbor, PortId, Prefix, Tables, Uplink};
use crate::wire::ip::proto;

const GW_MAC: [u8; 6] = [0x0e, 0x78, 0x79, 0x6c, 0, 1];
const UPLINK: PortId = 3;
const UPLINK_MAC: [u8; 6] = [0x0e, 0x78, 0x79, 0x75, 0, 1];
const NODE: [u8; 4] = [10, 199, 0, 11];
const HOP: [u8; 4] = [10, 199, 0, 100];
const HOP_MAC: [u8; 6] = [2, 0xaa, 0, 0, 0, 0x64];
const WORLD: [u8; 4] = [93, 184, 216, 34];
const HEAD: usize = 256;

#[derive(Clone, Copy)]
struct Pod {
    ip: [u8; 4],
    mac: [u8; 6],
    port: PortId,
}

const A: Pod = Pod {
    ip: [10, 200, 0, 10],
    mac: [2, 0, 0, 0, 0, 0x0a],
    port: 1,
};
const B: Pod = Pod {
    ip: [10, 200, 0, 11],
    mac: [2, 0, 0, 0, 0, 0x0b],
    port: 2,
};

fn tables(mode: Mode) -> Tables {
    let mut t = Tables::new(
        1,
        mode,
        Gateway {
            mac: MacAddr(GW_MAC),
            ipv4: Ipv4Addr::new(10, 200, 0, 1),
        },
    );
    for p in [A, B] {
        t.add_route(
            p.ip.into(),
            Neighbor {
                port: p.port,
                mac: MacAddr(p.mac),
            },
        )
        .unwrap();
    }
    t.set_uplink(Uplink {
        port: UPLINK,
        ip: NODE.into(),
        mac: MacAddr(UPLINK_MAC),
        pod_cidr: Prefix::new(Ipv4Addr::new(10, 200, 0, 0), 24),
    })
    .unwrap();
    t.set_world(HOP.into(), Some(MacAddr(HOP_MAC)));
    t
}

fn ct() -> Conntrack {
    Conntrack::new(&CtConfig {
        capacity: 256,
        ..Default::default()
    })
}

fn run(t: &Tables, port: PortId, bytes: &[u8], ct: &mut Conntrack) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; HEAD + 2048];
    buf[HEAD..HEAD + bytes.len()].copy_from_slice(bytes);
    let mut f = Frame::with_headroom(&mut buf, HEAD, bytes.len());
    let o = process(7, port, &mut f, t, ct);
    (o.verdict, f.data().to_vec())
}

/// A TCP segment (SYN, or SYN-ACK with `ack`) from `src:sport` to `dst:dport`, in an Ethernet
/// frame from `eth.0` to `eth.1`.
fn tcp(eth: ([u8; 6], [u8; 6]), src: ([u8; 4], u16), dst: ([u8; 4], u16), ack: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(eth.0, eth.1)
        .ipv4(src.0, dst.0, 64)
        .tcp(src.1, dst.1, 1000, 64240)
        .syn();
    let b = if ack { b.ack(1001) } else { b };
    let mut v = Vec::new();
    b.write(&mut v, &[]).unwrap();
    v
}

fn udp(eth: ([u8; 6], [u8; 6]), src: ([u8; 4], u16), dst: ([u8; 4], u16)) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(eth.0, eth.1)
        .ipv4(src.0, dst.0, 64)
        .udp(src.1, dst.1)
        .write(&mut v, b"ping?")
        .unwrap();
    v
}

fn echo(eth: ([u8; 6], [u8; 6]), src: [u8; 4], dst: [u8; 4], id: u16, reply: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(eth.0, eth.1).ipv4(src, dst, 64);
    let b = if reply {
        b.icmpv4_echo_reply(id, 1)
    } else {
        b.icmpv4_echo_request(id, 1)
    };
    let mut v = Vec::new();
    b.write(&mut v, b"abcd").unwrap();
    v
}

/// An Ethernet source and destination.
type Macs = ([u8; 6], [u8; 6]);
/// An address and port.
type End = ([u8; 4], u16);

/// The frame's Ethernet addresses, IP addresses and transport ports (ICMP: the echo id
/// twice), after checking every checksum in it.
fn seen(f: &[u8]) -> (Macs, End, End) {
    let h = PacketHeaders::from_ethernet_slice(f).unwrap();
    let eth = h.link.clone().unwrap().ethernet2().unwrap();
    let Some(NetHeaders::Ipv4(ip, _)) = &h.net else {
        panic!("not IPv4")
    };
    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
    let payload = h.payload.slice();
    let (sp, dp) = match &h.transport {
        Some(TransportHeader::Tcp(t)) => {
            assert_eq!(t.checksum, t.calc_checksum_ipv4(ip, payload).unwrap());
            (t.source_port, t.destination_port)
        }
        Some(TransportHeader::Udp(u)) => {
            assert_eq!(u.checksum, u.calc_checksum_ipv4(ip, payload).unwrap());
            (u.source_port, u.destination_port)
        }
        Some(TransportHeader::Icmpv4(i)) => {
            assert_eq!(i.checksum, i.icmp_type.calc_checksum(payload));
            match i.icmp_type {
                etherparse::Icmpv4Type::EchoRequest(e) | etherparse::Icmpv4Type::EchoReply(e) => {
                    (e.id, e.id)
                }
                _ => panic!("not an echo"),
            }
        }
        other => panic!("transport {other:?}"),
    };
    (
        (eth.source, eth.destination),
        (ip.source, sp),
        (ip.destination, dp),
    )
}

const TO_WORLD: ([u8; 6], [u8; 6]) = (UPLINK_MAC, HOP_MAC);
const FROM_WORLD: ([u8; 6], [u8; 6]) = (HOP_MAC, UPLINK_MAC);

#[test]
fn a_pods_tcp_connection_leaves_from_the_node_address_and_its_replies_come_back() {
    let t = tables(Mode::Full);
    let mut c = ct();
    let (v, out) = run(
        &t,
        A.port,
        &tcp((A.mac, GW_MAC), (A.ip, 40000), (WORLD, 80), false),
        &mut c,
    );
    assert_eq!(v, Verdict::Forward(UPLINK));
    assert_eq!(
        seen(&out),
        (TO_WORLD, (NODE, 40000), (WORLD, 80)),
        "the pod's port kept"
    );
    let reply = tcp(FROM_WORLD, (WORLD, 80), (NODE, 40000), true);
    let (v, back) = run(&t, UPLINK, &reply, &mut c);
    assert_eq!(v, Verdict::Forward(A.port));
    assert_eq!(seen(&back), ((GW_MAC, A.mac), (WORLD, 80), (A.ip, 40000)));
    // The connection's next packet finds its port.
    let (v, out) = run(
        &t,
        A.port,
        &tcp((A.mac, GW_MAC), (A.ip, 40000), (WORLD, 80), true),
        &mut c,
    );
    assert_eq!(v, Verdict::Forward(UPLINK));
    assert_eq!(seen(&out).1, (NODE, 40000));
}

#[test]
fn two_pods_on_one_port_get_two_node_ports_and_each_its_own_replies() {
    let t = tables(Mode::Full);
    let mut c = ct();
    let mut ports = Vec::new();
    for p in [A, B] {
        let (v, out) = run(
            &t,
            p.port,
            &udp((p.mac, GW_MAC), (p.ip, 5353), (WORLD, 53)),
            &mut c,
        );
        assert_eq!(v, Verdict::Forward(UPLINK));
        let (_, (src, port), _) = seen(&out);
        assert_eq!(src, NODE);
        ports.push(port);
    }
    assert_eq!(ports[0], 5353);
    assert_ne!(ports[1], 5353, "B cannot have the port A holds");
    assert!((32768..=60999).contains(&ports[1]));
    for (p, port) in [A, B].into_iter().zip(ports) {
        let (v, back) = run(
            &t,
            UPLINK,
            &udp(FROM_WORLD, (WORLD, 53), (NODE, port)),
            &mut c,
        );
        assert_eq!(v, Verdict::Forward(p.port));
        assert_eq!(seen(&back).2, (p.ip, 5353));
    }
}

#[test]
fn ping_to_the_world_keeps_its_identifier() {
    let t = tables(Mode::Full);
    let mut c = ct();
    let (v, out) = run(
        &t,
        A.port,
        &echo((A.mac, GW_MAC), A.ip, WORLD, 77, false),
        &mut c,
    );
    assert_eq!(v, Verdict::Forward(UPLINK));
    assert_eq!(seen(&out), (TO_WORLD, (NODE, 77), (WORLD, 77)));
    let (v, back) = run(&t, UPLINK, &echo(FROM_WORLD, WORLD, NODE, 77, true), &mut c);
    assert_eq!(v, Verdict::Forward(A.port));
    assert_eq!(seen(&back).2, (A.ip, 77));
    // B pinging the same host with the same identifier at once cannot be told apart.
    let (v, _) = run(
        &t,
        B.port,
        &echo((B.mac, GW_MAC), B.ip, WORLD, 77, false),
        &mut c,
    );
    assert_eq!(v, Verdict::Drop(DropReason::SnatFailed));
}

#[test]
fn the_world_reaches_nothing_through_the_node_address_but_replies() {
    let t = tables(Mode::Full);
    let mut c = ct();
    // Unsolicited, to a port no connection holds.
    let (v, _) = run(
        &t,
        UPLINK,
        &tcp(FROM_WORLD, (WORLD, 80), (NODE, 40000), false),
        &mut c,
    );
    assert_eq!(v, Verdict::Drop(DropReason::NoRoute));
    run(
        &t,
        A.port,
        &tcp((A.mac, GW_MAC), (A.ip, 40000), (WORLD, 80), false),
        &mut c,
    );
    // From another host, or another port of the right host, to the connection's port.
    for (src, sport) in [([93, 184, 216, 35], 80), (WORLD, 81)] {
        let (v, _) = run(
            &t,
            UPLINK,
            &tcp(FROM_WORLD, (src, sport), (NODE, 40000), true),
            &mut c,
        );
        assert_eq!(v, Verdict::Drop(DropReason::NoRoute), "{src:?}:{sport}");
    }
    // Fragments are never masqueraded, so never leave with a pod's address.
    let mut frag = udp((A.mac, GW_MAC), (A.ip, 6000), (WORLD, 53));
    frag[20] = 0x20; // more fragments
    frag[24..26].copy_from_slice(&[0, 0]);
    let sum = crate::checksum::checksum(&frag[14..34]);
    frag[24..26].copy_from_slice(&sum.to_be_bytes());
    let (v, _) = run(&t, A.port, &frag, &mut c);
    assert_eq!(v, Verdict::Drop(DropReason::SnatFailed));
    // Without connection tracking (the passthrough floor) there is no way to the world.
    let (v, _) = run(
        &tables(Mode::Passthrough),
        A.port,
        &udp((A.mac, GW_MAC), (A.ip, 6000), (WORLD, 53)),
        &mut ct(),
    );
    assert_eq!(v, Verdict::Drop(DropReason::NoRoute));
}

#[test]
fn a_reply_may_reach_another_worker_than_its_request() {
    let t = tables(Mode::Full);
    let shared = ct();
    let (mut w1, mut w2) = (shared.clone(), shared.clone());
    let (v, _) = run(
        &t,
        A.port,
        &udp((A.mac, GW_MAC), (A.ip, 7000), (WORLD, 53)),
        &mut w1,
    );
    assert_eq!(v, Verdict::Forward(UPLINK));
    let (v, back) = run(
        &t,
        UPLINK,
        &udp(FROM_WORLD, (WORLD, 53), (NODE, 7000)),
        &mut w2,
    );
    assert_eq!(v, Verdict::Forward(A.port));
    assert_eq!(seen(&back).2, (A.ip, 7000));
}

#[test]
fn a_narrowed_policy_stops_a_masqueraded_connections_replies() {
    let mut t = tables(Mode::Full);
    let mut c = ct();
    run(
        &t,
        A.port,
        &udp((A.mac, GW_MAC), (A.ip, 7000), (WORLD, 53)),
        &mut c,
    );
    // A's egress becomes default-deny: the open connection's next reply is refused.
    let mut b = PolicyTablesBuilder::new(2);
    b.add_endpoint(A.ip.into(), 300);
    b.add_origin(RuleOrigin {
        policy: "default/deny".into(),
        spec: 0,
        section: Section::Egress,
        index: 0,
    });
    b.endpoint_policy(300).egress.set_enforced(true);
    t.set_policy(b.build());
    let mut buf = vec![0u8; HEAD + 2048];
    let reply = udp(FROM_WORLD, (WORLD, 53), (NODE, 7000));
    buf[HEAD..HEAD + reply.len()].copy_from_slice(&reply);
    let mut f = Frame::with_headroom(&mut buf, HEAD, reply.len());
    let o = process(9, UPLINK, &mut f, &t, &mut c);
    assert_eq!(o.verdict, Verdict::Drop(DropReason::PolicyDenied));
    assert!(matches!(o.policy, Some(PolicyVerdict::Drop { .. })));
    assert_eq!(proto::UDP, 17);
}

//! Flow state a pod's frames may and may not create or borrow, on byte arrays through
//! [`process`]: ICMP errors that claim a flow they are not part of, packets with no route, and a
//! pod at its share of the flow table. Three pods A, B and C, one port each.

use super::*;
use crate::conntrack::CtConfig;
use crate::policy::{PolicyTablesBuilder, RuleOrigin, Section, identity};
use crate::tables::{Gateway, MacAddr, Neighbor};
use crate::wire::ip::proto;
use etherparse::{Icmpv4Type, PacketBuilder, icmpv4::DestUnreachableHeader};
use std::net::Ipv4Addr;

const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const GW_IP: [u8; 4] = [10, 0, 0, 1];

/// A pod: its address, MAC and port.
#[derive(Clone, Copy)]
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
const B: Pod = Pod {
    ip: [10, 0, 0, 11],
    mac: [0x02, 0, 0, 0, 0, 0x0b],
    port: 2,
    id: 301,
};
const C: Pod = Pod {
    ip: [10, 0, 0, 12],
    mac: [0x02, 0, 0, 0, 0, 0x0c],
    port: 3,
    id: 302,
};

/// Full-mode tables for A, B and C. B's ingress allows only UDP from A, A's ingress only UDP
/// from C; C is open. So ICMP from A to B, or from B to A, is denied unless it is related.
fn tables() -> Tables {
    let mut t = Tables::new(
        1,
        Mode::Full,
        Gateway {
            mac: MacAddr(GW_MAC),
            ipv4: Ipv4Addr::from(GW_IP),
        },
    );
    let mut b = PolicyTablesBuilder::new(1);
    for p in [A, B, C] {
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
    let rule = b.add_origin(RuleOrigin {
        policy: "default/p".into(),
        spec: 0,
        section: Section::Ingress,
        index: 0,
    });
    for (to, from) in [(B, A), (A, C)] {
        let ing = &mut b.endpoint_policy(to.id).ingress;
        ing.set_enforced(true);
        ing.add(from.id, proto::UDP, None, false, rule);
    }
    t.set_policy(b.build());
    t
}

fn ct() -> Conntrack {
    Conntrack::new(&CtConfig {
        capacity: 64,
        seed: 3,
        ..CtConfig::default()
    })
}

/// A UDP datagram from `from` to the address `to`, ports `sport` to `dport`, with `ttl`.
fn datagram(from: Pod, to: [u8; 4], sport: u16, dport: u16, ttl: u8) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(from.mac, GW_MAC)
        .ipv4(from.ip, to, ttl)
        .udp(sport, dport)
        .write(&mut v, b"data")
        .unwrap();
    v
}

/// A UDP datagram from `from` to the address `to` (port 4000 to `dport`).
fn udp(from: Pod, to: [u8; 4], dport: u16) -> Vec<u8> {
    datagram(from, to, 4000, dport, 64)
}

/// A port-unreachable error sent by `from` to `to`, quoting the IP packet of the frame `quoted`.
fn unreachable(from: Pod, to: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(from.mac, GW_MAC)
        .ipv4(from.ip, to, 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::Port,
        ))
        .write(&mut v, &quoted[14..])
        .unwrap();
    v
}

/// Runs `bytes` through the pipeline as received on `from`'s port at time `now`.
fn send(now: u64, t: &Tables, ct: &mut Conntrack, from: Pod, bytes: &[u8]) -> Outcome {
    let mut buf = bytes.to_vec();
    buf.resize(2048, 0);
    let mut f = Frame::new(&mut buf, bytes.len());
    process(now, from.port, &mut f, t, ct)
}

/// An ICMP error passes as related to a tracked flow only if it goes to the quoted packet's
/// source from its destination; otherwise it is judged by policy as any ICMP from its sender.
#[test]
fn an_icmp_error_is_related_only_to_a_flow_it_is_part_of() {
    let t = tables();
    let mut ct = ct();
    // Tracked: A → B, B → C, C → A.
    let a_to_b = udp(A, B.ip, 53);
    let b_to_c = udp(B, C.ip, 53);
    let c_to_a = udp(C, A.ip, 53);
    for (from, f) in [(A, &a_to_b), (B, &b_to_c), (C, &c_to_a)] {
        let o = send(0, &t, &mut ct, from, f);
        assert_eq!(o.policy, Some(PolicyVerdict::New), "{o:?}");
    }
    // Matching: B answers A's datagram. A's ingress allows no ICMP from B, yet it passes.
    let o = send(1, &t, &mut ct, B, &unreachable(B, A.ip, &a_to_b));
    assert_eq!(o.verdict, Verdict::Forward(A.port));
    assert_eq!(o.policy, Some(PolicyVerdict::Related));
    // The same error without the flow would be denied: the policy is what lets it pass.
    let o = send(1, &t, &mut ct, B, &unreachable(B, A.ip, &udp(A, B.ip, 54)));
    assert_eq!(o.verdict, Verdict::Drop(DropReason::PolicyDenied));
    // Mismatched outer source: A claims an error about B → C, sent to B. Its source is A,
    // not C: judged as ICMP from A to B, which B's ingress denies.
    let o = send(2, &t, &mut ct, A, &unreachable(A, B.ip, &b_to_c));
    assert_eq!(o.verdict, Verdict::Drop(DropReason::PolicyDenied));
    assert!(matches!(o.policy, Some(PolicyVerdict::Drop { .. })));
    // Mismatched outer destination: A quotes C → A (A is its destination, as it should be)
    // but sends the error to B instead of C.
    let o = send(3, &t, &mut ct, A, &unreachable(A, B.ip, &c_to_a));
    assert_eq!(o.verdict, Verdict::Drop(DropReason::PolicyDenied));
    // The genuine one, to C, is related (C is open anyway, so check the verdict).
    let o = send(3, &t, &mut ct, A, &unreachable(A, C.ip, &c_to_a));
    assert_eq!(o.verdict, Verdict::Forward(C.port));
    assert_eq!(o.policy, Some(PolicyVerdict::Related));
    // None of them created state.
    assert_eq!(ct.len(), 3);
}

/// Routing comes before the commit: a packet that goes nowhere (no route, or its TTL ran out)
/// creates no entry, whatever the policy says of it.
#[test]
fn a_packet_that_goes_nowhere_creates_no_state() {
    let t = tables();
    let mut ct = ct();
    let o = send(0, &t, &mut ct, A, &udp(A, [192, 168, 1, 1], 53));
    assert_eq!(o.verdict, Verdict::Drop(DropReason::NoRoute));
    assert_eq!(o.policy, Some(PolicyVerdict::Untracked));
    let o = send(0, &t, &mut ct, A, &datagram(A, B.ip, 4000, 53, 1));
    assert_eq!(o.verdict, Verdict::IcmpError(A.port));
    assert_eq!(o.policy, Some(PolicyVerdict::Untracked));
    assert!(ct.is_empty());
    assert_eq!(ct.stats().created, 0);
    // The same datagram with a route is tracked, owned by the port it came from.
    let o = send(0, &t, &mut ct, A, &udp(A, B.ip, 53));
    assert_eq!(o.policy, Some(PolicyVerdict::New));
    assert_eq!((ct.len(), ct.owned_by(A.port)), (1, 1));
}

/// A pod at its limit of entries gets no new flow (`ct-endpoint-limit`), while its tracked
/// flows go on and other pods still open theirs. The entries of a flow count against the pod
/// whose packet created it, not the one that answers.
#[test]
fn a_pod_at_its_limit_gets_no_new_flow_and_the_others_still_do() {
    let t = tables();
    let mut ct = Conntrack::new(&CtConfig {
        capacity: 64,
        endpoint_limit: 4,
        seed: 3,
        ..CtConfig::default()
    });
    for port in 1..=4 {
        let o = send(0, &t, &mut ct, C, &udp(C, A.ip, port));
        assert_eq!(o.policy, Some(PolicyVerdict::New));
    }
    let o = send(0, &t, &mut ct, C, &udp(C, A.ip, 5));
    assert_eq!(o.verdict, Verdict::Drop(DropReason::CtEndpointLimit));
    assert_eq!(o.drop_reason(), Some(DropReason::CtEndpointLimit));
    assert!(matches!(
        o.policy,
        Some(PolicyVerdict::Drop {
            reason: crate::policy::PolicyDropReason::CtEndpointLimit,
            direction: None,
            ..
        })
    ));
    assert_eq!(ct.stats().endpoint_limit, 1);
    assert_eq!(ct.owned_by(C.port), 4);
    // Its tracked flows go on, both ways.
    let o = send(1, &t, &mut ct, C, &udp(C, A.ip, 1));
    assert_eq!(o.policy, Some(PolicyVerdict::Established));
    let o = send(1, &t, &mut ct, A, &datagram(A, C.ip, 1, 4000, 64));
    assert_eq!(o.policy, Some(PolicyVerdict::Reply));
    assert_eq!(o.verdict, Verdict::Forward(C.port));
    // A and B open flows of their own.
    let o = send(2, &t, &mut ct, A, &udp(A, B.ip, 53));
    assert_eq!(o.policy, Some(PolicyVerdict::New));
    let o = send(2, &t, &mut ct, B, &udp(B, C.ip, 53));
    assert_eq!(o.policy, Some(PolicyVerdict::New));
    assert_eq!(
        (
            ct.owned_by(A.port),
            ct.owned_by(B.port),
            ct.owned_by(C.port)
        ),
        (1, 1, 4)
    );
}

//! The conntrack lookup, policy and commit stages together ([`super::super::flow_and_policy`]),
//! on flows described by their 5-tuple: new flows, replies, related ICMP errors, narrowed
//! policy, timeouts and a full table.

use std::net::Ipv4Addr;

use crate::conntrack::{Conntrack, CtConfig, CtTimeouts, FlowKey};
use crate::pipeline::{Meta, flow_and_policy};
use crate::policy::{
    Direction, Identity, PROTO_ANY, PolicyDropReason, PolicyTables, PolicyTablesBuilder,
    PolicyVerdict, RuleOrigin, RuleRef, Section, identity,
};
use crate::wire::ip::proto;
use crate::wire::tcp::flags::*;

/// What a packet says of its flow, as the tests write it.
#[derive(Clone, Copy, Debug)]
struct Flow {
    key: FlowKey,
    tcp_flags: u8,
    icmp_error_of: Option<FlowKey>,
}

impl Flow {
    fn new(key: FlowKey) -> Self {
        Flow {
            key,
            tcp_flags: 0,
            icmp_error_of: None,
        }
    }
}

/// Stages 4, 6 and 8b on the packet `f` describes (as routed).
fn decide(now: u64, t: &PolicyTables, ct: &mut Conntrack, f: &Flow) -> PolicyVerdict {
    let mut m = Meta::from_key(f.key);
    m.tcp_flags = f.tcp_flags;
    if let Some(q) = f.icmp_error_of {
        m.quoted = Some(q);
        m.flags |= Meta::ICMP_ERROR;
    }
    flow_and_policy(now, PORT, &m, GW, t, ct)
}

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
const OTHER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 4);
const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const SEC: u64 = 1_000_000_000;
/// The port every packet of these tests arrives on.
const PORT: crate::tables::PortId = 1;
const ID_CLIENT: Identity = 300;
const ID_SERVER: Identity = 301;
const ID_OTHER: Identity = 302;

fn origin(b: &mut PolicyTablesBuilder, section: Section, index: usize) -> RuleRef {
    b.add_origin(RuleOrigin {
        policy: "default/p".into(),
        spec: 0,
        section,
        index,
    })
}

/// Server ingress: allow client on 80/TCP (and `narrow` drops that), deny other on any.
fn tables(rev: u64, allow_client: bool) -> PolicyTables {
    let mut b = PolicyTablesBuilder::new(rev);
    b.add_endpoint(CLIENT, ID_CLIENT);
    b.add_endpoint(SERVER, ID_SERVER);
    b.add_endpoint(OTHER, ID_OTHER);
    b.add_address(GW, identity::HOST);
    let r0 = origin(&mut b, Section::Ingress, 0);
    let r1 = origin(&mut b, Section::IngressDeny, 0);
    let sp = b.endpoint_policy(ID_SERVER);
    sp.ingress.set_enforced(true);
    if allow_client {
        sp.ingress
            .add(ID_CLIENT, proto::TCP, Some((80, 80)), false, r0);
    }
    sp.ingress.add(identity::HOST, PROTO_ANY, None, false, r0);
    sp.ingress.add(ID_OTHER, PROTO_ANY, None, true, r1);
    b.build()
}

fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Flow {
    Flow {
        key: FlowKey {
            src,
            dst,
            sport,
            dport,
            proto: proto::TCP,
        },
        tcp_flags: flags,
        icmp_error_of: None,
    }
}

fn ct(cap: usize) -> Conntrack {
    Conntrack::new(&CtConfig {
        capacity: cap,
        endpoint_limit: cap,
        timeouts: CtTimeouts::default(),
        seed: 9,
    })
}

#[test]
fn new_flow_then_replies_via_conntrack() {
    let t = tables(1, true);
    let mut ct = ct(16);
    let syn = tcp(CLIENT, 40000, SERVER, 80, SYN);
    assert_eq!(decide(0, &t, &mut ct, &syn), PolicyVerdict::New);
    let synack = tcp(SERVER, 80, CLIENT, 40000, SYN | ACK);
    assert_eq!(decide(1, &t, &mut ct, &synack), PolicyVerdict::Reply);
    let ack = tcp(CLIENT, 40000, SERVER, 80, ACK);
    assert_eq!(decide(2, &t, &mut ct, &ack), PolicyVerdict::Established);
    // The server may not open a connection to the client's port on its own... it may,
    // since client egress is not enforced; but another port on the server is denied.
    let other_port = tcp(CLIENT, 40001, SERVER, 81, SYN);
    assert!(matches!(
        decide(3, &t, &mut ct, &other_port),
        PolicyVerdict::Drop {
            reason: PolicyDropReason::PolicyDenied,
            direction: Some(Direction::Ingress),
            rule: None
        }
    ));
    let from_other = tcp(OTHER, 1, SERVER, 80, SYN);
    assert!(matches!(
        decide(3, &t, &mut ct, &from_other),
        PolicyVerdict::Drop {
            reason: PolicyDropReason::PolicyDenyRule,
            rule: Some(RuleRef(1)),
            ..
        }
    ));
    let from_host = tcp(GW, 1, SERVER, 22, SYN);
    assert_eq!(decide(3, &t, &mut ct, &from_host), PolicyVerdict::New);
}

#[test]
fn icmp_errors_related_to_tracked_flows() {
    let t = tables(1, true);
    let mut ct = ct(16);
    let syn = tcp(CLIENT, 40000, SERVER, 80, SYN);
    decide(0, &t, &mut ct, &syn);
    // The server (or a router) answers with an ICMP error quoting the SYN.
    let err = Flow {
        key: FlowKey {
            src: SERVER,
            dst: CLIENT,
            sport: 0,
            dport: 0,
            proto: proto::ICMP,
        },
        tcp_flags: 0,
        icmp_error_of: Some(syn.key),
    };
    assert_eq!(decide(1, &t, &mut ct, &err), PolicyVerdict::Related);
    // The gateway may send an error about any flow, to the quoted packet's source.
    let from_gw = Flow {
        key: FlowKey { src: GW, ..err.key },
        ..err
    };
    assert_eq!(decide(1, &t, &mut ct, &from_gw), PolicyVerdict::Related);
    // Anyone else is judged by policy: OTHER (denied into the server) cannot pass an error
    // about the client's flow to the server, nor one to itself.
    let forged = Flow {
        key: FlowKey {
            src: OTHER,
            dst: SERVER,
            ..err.key
        },
        icmp_error_of: Some(syn.key.reversed()),
        ..err
    };
    assert!(!decide(1, &t, &mut ct, &forged).allows());
    let misaddressed = Flow {
        key: FlowKey {
            dst: OTHER,
            ..err.key
        },
        ..err
    };
    assert_eq!(
        decide(1, &t, &mut ct, &misaddressed),
        PolicyVerdict::Untracked
    );
    // An error quoting an unknown flow is judged as plain ICMP: the client's egress is open.
    let unrelated = Flow {
        icmp_error_of: Some(tcp(CLIENT, 1, SERVER, 9, SYN).key),
        ..err
    };
    assert_eq!(decide(1, &t, &mut ct, &unrelated), PolicyVerdict::Untracked);
    // ... but into the server, ICMP from the client is not allowed.
    let into_server = Flow {
        key: unrelated.key.reversed(),
        ..unrelated
    };
    assert!(!decide(1, &t, &mut ct, &into_server).allows());
}

#[test]
fn narrowed_policy_stops_established_flows() {
    let t1 = tables(1, true);
    let mut ct = ct(16);
    let syn = tcp(CLIENT, 40000, SERVER, 80, SYN);
    decide(0, &t1, &mut ct, &syn);
    decide(1, &t1, &mut ct, &tcp(SERVER, 80, CLIENT, 40000, SYN | ACK));
    // An unrelated change (same verdict) keeps the flow, restamped once.
    let t2 = tables(2, true);
    let data = tcp(CLIENT, 40000, SERVER, 80, ACK);
    assert_eq!(decide(2, &t2, &mut ct, &data), PolicyVerdict::Established);
    assert_eq!(ct.stats().policy_removed, 0);
    // Narrowed: the next packet, in either direction, is dropped and the entry gone.
    let t3 = tables(3, false);
    let reply = tcp(SERVER, 80, CLIENT, 40000, ACK);
    assert!(matches!(
        decide(3, &t3, &mut ct, &reply),
        PolicyVerdict::Drop {
            reason: PolicyDropReason::PolicyDenied,
            ..
        }
    ));
    assert_eq!(ct.stats().policy_removed, 1);
    assert!(ct.is_empty());
    assert!(!decide(4, &t3, &mut ct, &data).allows());
}

#[test]
fn timeouts_with_a_manual_clock() {
    let to = CtTimeouts::default();
    let t = tables(1, true);
    let mut ct = ct(16);
    let syn = tcp(CLIENT, 40000, SERVER, 80, SYN);
    decide(0, &t, &mut ct, &syn);
    // Half-open: after the SYN timeout the SYN-ACK is no longer a reply but a new flow
    // (allowed: neither the server's egress nor the client's ingress is enforced).
    let synack = tcp(SERVER, 80, CLIENT, 40000, SYN | ACK);
    assert_eq!(
        decide(to.tcp_syn - 1, &t, &mut ct, &synack),
        PolicyVerdict::Reply
    );
    let synack2 = tcp(SERVER, 80, CLIENT, 40002, SYN | ACK);
    let syn2 = tcp(CLIENT, 40002, SERVER, 80, SYN);
    decide(0, &t, &mut ct, &syn2);
    assert_eq!(
        decide(to.tcp_syn, &t, &mut ct, &synack2),
        PolicyVerdict::New
    );
    // A full handshake lives for the established timeout.
    let mut now = to.tcp_syn + 1;
    ct.flush();
    assert_eq!(decide(now, &t, &mut ct, &syn), PolicyVerdict::New);
    now += 1;
    assert_eq!(decide(now, &t, &mut ct, &synack), PolicyVerdict::Reply);
    now += 1;
    decide(now, &t, &mut ct, &tcp(CLIENT, 40000, SERVER, 80, ACK));
    let reply = tcp(SERVER, 80, CLIENT, 40000, ACK);
    now += to.tcp_established - 1;
    assert_eq!(decide(now, &t, &mut ct, &reply), PolicyVerdict::Reply);
    // The client's FIN half-closes it: the server may still send, after idling for a minute
    // (far beyond the close timeout), and its packets still pass as replies.
    decide(now, &t, &mut ct, &tcp(CLIENT, 40000, SERVER, 80, FIN | ACK));
    now += 60 * SEC;
    assert!(60 * SEC > to.tcp_fin);
    assert_eq!(decide(now, &t, &mut ct, &reply), PolicyVerdict::Reply);
    assert_eq!(
        decide(now, &t, &mut ct, &tcp(CLIENT, 40000, SERVER, 80, ACK)),
        PolicyVerdict::Established
    );
    // The server's FIN closes the other half: only now does the short timeout apply.
    let fin = tcp(SERVER, 80, CLIENT, 40000, FIN | ACK);
    assert_eq!(decide(now, &t, &mut ct, &fin), PolicyVerdict::Reply);
    assert_eq!(
        decide(now + to.tcp_fin - 1, &t, &mut ct, &reply),
        PolicyVerdict::Reply
    );
    // Expired: no longer a reply (a new flow, the server's egress being open).
    // (Each packet after both FINs refreshes the close timeout.)
    let late = now + 2 * to.tcp_fin - 1;
    assert_eq!(decide(late, &t, &mut ct, &reply), PolicyVerdict::New);
    // The client's own packets on it would now be judged afresh (they count as replies of
    // the server's new flow here, which is what conntrack by tuple means).
    ct.flush();
    // UDP from host to the server: tracked with the UDP timeout.
    let udp = Flow::new(FlowKey {
        src: GW,
        dst: SERVER,
        sport: 5,
        dport: 53,
        proto: proto::UDP,
    });
    let rudp = Flow::new(udp.key.reversed());
    assert_eq!(decide(0, &t, &mut ct, &udp), PolicyVerdict::New);
    assert_eq!(decide(to.udp - 1, &t, &mut ct, &rudp), PolicyVerdict::Reply);
    assert_eq!(
        decide(2 * to.udp - 2, &t, &mut ct, &rudp),
        PolicyVerdict::Reply
    );
    // Expired: a reply from the server is a new flow; server egress is not enforced.
    assert_eq!(decide(3 * to.udp, &t, &mut ct, &rudp), PolicyVerdict::New);
}

#[test]
fn ct_full_drops_new_flows_only() {
    let t = tables(1, true);
    let mut ct = ct(2);
    for sport in [1, 2] {
        assert_eq!(
            decide(0, &t, &mut ct, &tcp(GW, sport, SERVER, 1, SYN)),
            PolicyVerdict::New
        );
    }
    // Full of unanswered flows: a new one evicts one of them (as the table's own tests show
    // in detail), or, where its probe path holds none, is refused.
    let third = decide(0, &t, &mut ct, &tcp(GW, 3, SERVER, 1, SYN));
    assert_eq!(ct.len(), 2);
    let s = ct.stats();
    assert_eq!(s.evicted + s.full, 1, "{third:?}");
    ct.flush();
    for sport in [1, 2] {
        decide(0, &t, &mut ct, &tcp(GW, sport, SERVER, 1, SYN));
        decide(0, &t, &mut ct, &tcp(SERVER, 1, GW, sport, SYN | ACK));
    }
    // Full of answered flows: refused.
    assert!(matches!(
        decide(0, &t, &mut ct, &tcp(GW, 3, SERVER, 1, SYN)),
        PolicyVerdict::Drop {
            reason: PolicyDropReason::CtFull,
            ..
        }
    ));
    assert_eq!(ct.stats().full, s.full + 1);
    assert_eq!(
        decide(0, &t, &mut ct, &tcp(SERVER, 1, GW, 2, ACK)),
        PolicyVerdict::Reply
    );
    // A denied flow is reported as denied, not as ct-full.
    assert!(matches!(
        decide(0, &t, &mut ct, &tcp(OTHER, 3, SERVER, 1, SYN)),
        PolicyVerdict::Drop {
            reason: PolicyDropReason::PolicyDenyRule,
            ..
        }
    ));
}

#[test]
fn icmp_echo_reply_matches_its_request() {
    let t = tables(1, true);
    let mut ct = ct(16);
    // Echo from the host to the server (allowed: host), identifier 7 in both ports.
    let echo = Flow::new(FlowKey {
        src: GW,
        dst: SERVER,
        sport: 7,
        dport: 7,
        proto: proto::ICMP,
    });
    assert_eq!(decide(0, &t, &mut ct, &echo), PolicyVerdict::New);
    assert_eq!(
        decide(1, &t, &mut ct, &Flow::new(echo.key.reversed())),
        PolicyVerdict::Reply
    );
    // The client may not ping the server (its ingress allows only 80/TCP from it).
    let ping = Flow::new(FlowKey {
        src: CLIENT,
        ..echo.key
    });
    assert!(!decide(2, &t, &mut ct, &ping).allows());
}

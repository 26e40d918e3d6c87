//! The DNS stage on byte arrays: the policy (DNS to kube-dns on port 53 for
//! `*.domain.com`, TCP port 80 to the addresses those lookups return), compiled by hand.

use std::net::Ipv4Addr;
use std::sync::Arc;

use etherparse::{PacketBuilder, PacketHeaders, TransportHeader};

use super::*;
use crate::conntrack::CtConfig;
use crate::dns::log::DnsAction;
use crate::dns::{DnsOptions, DnsRule, FqdnScope, NameSelector};
use crate::policy::{PolicyTablesBuilder, PolicyVerdict, RuleOrigin, RuleRef, Section, identity};
use crate::stats::DropReason;
use crate::tables::{Gateway, MacAddr, Neighbor};
use crate::wire::ip::proto;

const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The pod `app: myService`.
const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const POD: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const POD_PORT: PortId = 1;
/// kube-dns.
const DNS_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
const DNS_PORT: PortId = 2;
/// Outside the cluster, behind the host port.
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];
const HOST_PORT: PortId = 3;
const WEB: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);
const OTHER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 81);
const CDN: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 90);

const ID_POD: u32 = 300;
const ID_DNS: u32 = 400;
const SCOPE: u32 = 7;
const SEC: u64 = 1_000_000_000;

fn origin(b: &mut PolicyTablesBuilder, index: usize) -> RuleRef {
    b.add_origin(RuleOrigin {
        policy: "default/egress-domain-wildcard".into(),
        spec: 0,
        section: Section::Egress,
        index,
    })
}

/// The policy, with the DNS rule's protocols `dns_proto` and its names `dns_names`.
fn tables_with(dns_proto: u8, dns_names: &[&str], options: DnsOptions) -> Tables {
    tables_at(1, dns_proto, dns_names, options)
}

/// [`tables_with`] at policy revision `revision`.
fn tables_at(revision: u64, dns_proto: u8, dns_names: &[&str], options: DnsOptions) -> Tables {
    let mut b = PolicyTablesBuilder::new(revision);
    b.add_endpoint(POD, ID_POD);
    b.add_endpoint(DNS, ID_DNS);
    let r0 = origin(&mut b, 0);
    let r1 = origin(&mut b, 1);
    let fqdn = identity::FIRST_FQDN;
    let egress = &mut b.endpoint_policy(ID_POD).egress;
    egress.set_enforced(true);
    egress.add(ID_DNS, dns_proto, Some((53, 53)), false, r0);
    egress.add(fqdn, proto::TCP, Some((80, 80)), false, r1);
    let selectors: Arc<[NameSelector]> = dns_names
        .iter()
        .map(|n| NameSelector::pattern(n).unwrap())
        .collect();
    b.add_dns_rule(
        ID_POD,
        DnsRule {
            peer: ID_DNS,
            proto: dns_proto,
            ports: (53, 53),
            selectors,
            rule: r0,
        },
    );
    b.add_fqdn_scope(
        POD,
        FqdnScope {
            scope: SCOPE,
            peer: fqdn,
            selector: NameSelector::pattern("*.domain.com").unwrap(),
        },
    );
    let mut t = Tables::new(
        1,
        Mode::Full,
        Gateway {
            mac: MacAddr(GW_MAC),
            ipv4: GW_IP,
        },
    );
    for (ip, port, mac) in [
        (POD, POD_PORT, POD_MAC),
        (DNS, DNS_PORT, DNS_MAC),
        (WEB, HOST_PORT, HOST_MAC),
        (OTHER, HOST_PORT, HOST_MAC),
        (CDN, HOST_PORT, HOST_MAC),
    ] {
        t.add_route(
            ip,
            Neighbor {
                port,
                mac: MacAddr(mac),
            },
        )
        .unwrap();
    }
    t.set_policy(b.build());
    t.set_dns_options(options);
    t
}

fn tables() -> Tables {
    tables_with(proto::UDP, &["*.domain.com"], DnsOptions::default())
}

fn conntrack() -> Conntrack {
    Conntrack::new(&CtConfig {
        capacity: 1024,
        ..Default::default()
    })
}

// --- DNS messages, written by hand so that the tests do not trust the parser they test ---

fn name_wire(name: &str) -> Vec<u8> {
    let mut v = Vec::new();
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        v.push(label.len() as u8);
        v.extend_from_slice(label.as_bytes());
    }
    v.push(0);
    v
}

fn header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        v.extend_from_slice(&c.to_be_bytes());
    }
    v
}

fn query_msg(id: u16, name: &str) -> Vec<u8> {
    let mut v = header(id, 0x0100, [1, 0, 0, 0]);
    v.extend(name_wire(name));
    v.extend_from_slice(&[0, 1, 0, 1]); // A, IN
    v
}

enum Rec<'a> {
    A(&'a str, Ipv4Addr, u32),
    Cname(&'a str, &'a str),
}

fn answer_msg(id: u16, name: &str, records: &[Rec<'_>]) -> Vec<u8> {
    let mut v = header(id, 0x8180, [1, records.len() as u16, 0, 0]);
    v.extend(name_wire(name));
    v.extend_from_slice(&[0, 1, 0, 1]);
    for r in records {
        let (owner, rtype, rdata) = match r {
            Rec::A(owner, ip, _) => (*owner, 1u16, ip.octets().to_vec()),
            Rec::Cname(owner, target) => (*owner, 5u16, name_wire(target)),
        };
        let ttl = match r {
            Rec::A(_, _, ttl) => *ttl,
            Rec::Cname(..) => 300,
        };
        v.extend(name_wire(owner));
        v.extend_from_slice(&rtype.to_be_bytes());
        v.extend_from_slice(&1u16.to_be_bytes());
        v.extend_from_slice(&ttl.to_be_bytes());
        v.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        v.extend(rdata);
    }
    v
}

// --- frames ---

fn udp_frame(from: ([u8; 6], Ipv4Addr, u16), to: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(from.0, GW_MAC)
        .ipv4(from.1.octets(), to.0.octets(), 64)
        .udp(from.2, to.1)
        .write(&mut v, payload)
        .unwrap();
    v
}

fn tcp_frame(
    from: ([u8; 6], Ipv4Addr, u16),
    to: (Ipv4Addr, u16),
    (seq, ack, syn): (u32, Option<u32>, bool),
    payload: &[u8],
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(from.0, GW_MAC)
        .ipv4(from.1.octets(), to.0.octets(), 64)
        .tcp(from.2, to.1, seq, 64_000);
    if syn {
        b = b.syn();
    }
    if let Some(a) = ack {
        b = b.ack(a);
    }
    if !payload.is_empty() {
        b = b.psh();
    }
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

/// Runs `frame` from `port` at `now`; returns the outcome and the frame as it leaves.
fn run(now: u64, port: PortId, frame: &[u8], t: &Tables, ct: &mut Conntrack) -> (Outcome, Vec<u8>) {
    let mut buf = vec![0u8; 2048];
    buf[..frame.len()].copy_from_slice(frame);
    let mut f = Frame::new(&mut buf, frame.len());
    let o = process(now, port, &mut f, t, ct);
    (o, f.data().to_vec())
}

fn query(id: u16, name: &str, sport: u16) -> Vec<u8> {
    udp_frame((POD_MAC, POD, sport), (DNS, 53), &query_msg(id, name))
}

fn answer(id: u16, name: &str, records: &[Rec<'_>], dport: u16) -> Vec<u8> {
    udp_frame(
        (DNS_MAC, DNS, 53),
        (POD, dport),
        &answer_msg(id, name, records),
    )
}

fn syn(to: Ipv4Addr, dport: u16, sport: u16) -> Vec<u8> {
    tcp_frame((POD_MAC, POD, sport), (to, dport), (1000, None, true), &[])
}

/// Looks up `name` through the DNS stage (query, then answer with `records`), on `ct`.
fn resolve(now: u64, name: &str, records: &[Rec<'_>], t: &Tables, ct: &mut Conntrack) {
    let (o, _) = run(now, POD_PORT, &query(9, name, 40000), t, ct);
    assert_eq!(o.verdict, Verdict::Forward(DNS_PORT), "query for {name}");
    let (o, _) = run(now, DNS_PORT, &answer(9, name, records, 40000), t, ct);
    assert_eq!(o.verdict, Verdict::Forward(POD_PORT), "answer for {name}");
}

fn drain(ct: &Conntrack) -> Vec<crate::dns::log::DnsRecord> {
    std::iter::from_fn(|| ct.dns_log().pop()).collect()
}

fn dns_payload(frame: &[u8]) -> (PacketHeaders<'_>, Vec<u8>) {
    let h = PacketHeaders::from_ethernet_slice(frame).unwrap();
    let p = h.payload.slice().to_vec();
    (h, p)
}

#[test]
fn an_allowed_query_goes_to_the_server_unchanged_and_is_logged() {
    let t = tables();
    let mut ct = conntrack();
    let q = query(0x1234, "a.domain.com", 40000);
    let (o, out) = run(SEC, POD_PORT, &q, &t, &mut ct);
    assert_eq!(o.verdict, Verdict::Forward(DNS_PORT));
    assert_eq!(o.policy, Some(PolicyVerdict::New));
    // As sent, but for the TTL (and the header checksum) routing changes.
    assert_eq!(out.len(), q.len());
    assert_eq!(&out[34..], &q[34..]);
    assert_eq!(out[22], q[22] - 1);
    let recs = drain(&ct);
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(
        (r.id, r.response, r.action),
        (0x1234, false, DnsAction::Forwarded)
    );
    assert_eq!(r.qname.as_str(), "a.domain.com.");
    assert_eq!((r.endpoint, r.rule), (POD, Some(RuleRef(0))));
    assert_eq!(ct.dns_log().stats().queries_forwarded, 1);
}

#[test]
fn a_denied_query_is_answered_refused_from_the_server_and_never_reaches_it() {
    for (options, rcode) in [
        (DnsOptions::default(), 5u8),
        (
            DnsOptions {
                reject_rcode: crate::wire::dns::RCODE_NXDOMAIN,
                ..DnsOptions::default()
            },
            3,
        ),
    ] {
        let t = tables_with(proto::UDP, &["*.domain.com"], options);
        let mut ct = conntrack();
        let (o, out) = run(
            SEC,
            POD_PORT,
            &query(0x4321, "example.org", 40001),
            &t,
            &mut ct,
        );
        assert_eq!(o.verdict, Verdict::Forward(POD_PORT), "answered to the pod");
        assert_eq!(o.drop_reason(), None);
        let (h, dns) = dns_payload(&out);
        let eth = h.link.unwrap().ethernet2().unwrap();
        assert_eq!((eth.source, eth.destination), (GW_MAC, POD_MAC));
        let ip = h.net.unwrap().ipv4_ref().unwrap().0.clone();
        assert_eq!((ip.source, ip.destination), (DNS.octets(), POD.octets()));
        assert_eq!(ip.header_checksum, ip.calc_header_checksum());
        let Some(TransportHeader::Udp(u)) = h.transport else {
            panic!("not UDP");
        };
        assert_eq!((u.source_port, u.destination_port), (53, 40001));
        assert_eq!(u.checksum, u.calc_checksum_ipv4(&ip, &dns).unwrap());
        // Same ID and question; QR, RA and the rcode set; no records.
        let asked = query_msg(0x4321, "example.org");
        assert_eq!(&dns[..2], &asked[..2]);
        assert_eq!(dns[2] & 0x80, 0x80, "QR");
        assert_eq!(dns[3] & 0x0f, rcode);
        assert_eq!(&dns[4..12], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&dns[12..], &asked[12..]);
        // No flow was opened for it, and it was logged as refused.
        assert_eq!(ct.len(), 0);
        let recs = drain(&ct);
        assert_eq!(recs.len(), 1);
        assert_eq!(
            (recs[0].action, recs[0].rcode, recs[0].rule),
            (DnsAction::Refused, u16::from(rcode), None)
        );
        assert_eq!(ct.dns_log().stats().queries_refused, 1);
    }
}

#[test]
fn an_answer_teaches_the_pod_its_addresses_before_it_is_forwarded() {
    let t = tables();
    let mut ct = conntrack();
    // Not learned yet: port 80 to the address is denied.
    let (o, _) = run(SEC, POD_PORT, &syn(WEB, 80, 50000), &t, &mut ct);
    assert_eq!(o.verdict, Verdict::Drop(DropReason::PolicyDenied));
    resolve(
        SEC,
        "a.domain.com",
        &[Rec::A("a.domain.com", WEB, 30)],
        &t,
        &mut ct,
    );
    let recs = drain(&ct);
    let ans = recs.iter().find(|r| r.response).unwrap();
    assert_eq!(ans.answers(), &[(WEB, 30)]);
    assert_eq!(ans.learned, 1);
    // Learned: port 80 there connects; another address, another port do not.
    let (o, _) = run(2 * SEC, POD_PORT, &syn(WEB, 80, 50001), &t, &mut ct);
    assert_eq!(o.verdict, Verdict::Forward(HOST_PORT));
    assert_eq!(o.policy, Some(PolicyVerdict::New));
    let (o, _) = run(2 * SEC, POD_PORT, &syn(OTHER, 80, 50002), &t, &mut ct);
    assert_eq!(o.verdict, Verdict::Drop(DropReason::PolicyDenied));
    let (o, _) = run(2 * SEC, POD_PORT, &syn(WEB, 443, 50003), &t, &mut ct);
    assert_eq!(o.verdict, Verdict::Drop(DropReason::PolicyDenied));
}

#[test]
fn after_the_ttl_new_connections_are_denied_and_open_ones_go_on() {
    let t = tables();
    let mut ct = conntrack();
    resolve(
        SEC,
        "a.domain.com",
        &[Rec::A("a.domain.com", WEB, 30)],
        &t,
        &mut ct,
    );
    let open = syn(WEB, 80, 50010);
    assert_eq!(
        run(2 * SEC, POD_PORT, &open, &t, &mut ct).0.verdict,
        Verdict::Forward(HOST_PORT)
    );
    // 31 s after the answer: expired.
    let late = 32 * SEC;
    let (o, _) = run(late, POD_PORT, &syn(WEB, 80, 50011), &t, &mut ct);
    assert_eq!(o.verdict, Verdict::Drop(DropReason::PolicyDenied));
    // The open connection's next packet passes, also when a new policy revision makes every
    // flow be judged again.
    let next = tcp_frame(
        (POD_MAC, POD, 50010),
        (WEB, 80),
        (1001, Some(1), false),
        b"GET /",
    );
    assert_eq!(
        run(late, POD_PORT, &next, &t, &mut ct).0.policy,
        Some(PolicyVerdict::Established)
    );
    let t2 = tables_at(2, proto::UDP, &["*.domain.com"], DnsOptions::default());
    let (o, _) = run(late, POD_PORT, &next, &t2, &mut ct);
    assert_eq!(o.policy, Some(PolicyVerdict::Established), "{o:?}");
}

#[test]
fn min_ttl_keeps_a_short_lived_answer_allowed() {
    let t = tables_with(
        proto::UDP,
        &["*.domain.com"],
        DnsOptions {
            min_ttl_s: 60,
            ..DnsOptions::default()
        },
    );
    let mut ct = conntrack();
    resolve(
        SEC,
        "a.domain.com",
        &[Rec::A("a.domain.com", WEB, 0)],
        &t,
        &mut ct,
    );
    let (o, _) = run(50 * SEC, POD_PORT, &syn(WEB, 80, 50020), &t, &mut ct);
    assert_eq!(o.verdict, Verdict::Forward(HOST_PORT));
}

#[test]
fn addresses_reached_through_a_cname_chain_are_learned_and_strangers_are_not() {
    let t = tables();
    let mut ct = conntrack();
    let records = [
        Rec::A("c.cdn.net", CDN, 60),
        Rec::A("x.other.org", OTHER, 60),
        Rec::Cname("a.domain.com", "b.cdn.net"),
        Rec::Cname("b.cdn.net", "c.cdn.net"),
    ];
    resolve(SEC, "a.domain.com", &records, &t, &mut ct);
    let (o, _) = run(2 * SEC, POD_PORT, &syn(CDN, 80, 50030), &t, &mut ct);
    assert_eq!(o.verdict, Verdict::Forward(HOST_PORT));
    let (o, _) = run(2 * SEC, POD_PORT, &syn(OTHER, 80, 50031), &t, &mut ct);
    assert_eq!(o.verdict, Verdict::Drop(DropReason::PolicyDenied));
}

#[test]
fn an_allowed_name_outside_the_fqdn_selectors_teaches_nothing() {
    let t = tables_with(proto::UDP, &["*"], DnsOptions::default());
    let mut ct = conntrack();
    resolve(
        SEC,
        "example.org",
        &[Rec::A("example.org", OTHER, 60)],
        &t,
        &mut ct,
    );
    let (o, _) = run(2 * SEC, POD_PORT, &syn(OTHER, 80, 50040), &t, &mut ct);
    assert_eq!(o.verdict, Verdict::Drop(DropReason::PolicyDenied));
}

#[test]
fn an_address_learned_on_one_worker_is_allowed_on_another() {
    let t = tables();
    let mut first = conntrack();
    first.set_worker(0);
    let mut second = first.clone();
    second.set_worker(1);
    resolve(
        SEC,
        "a.domain.com",
        &[Rec::A("a.domain.com", WEB, 30)],
        &t,
        &mut first,
    );
    let (o, _) = run(SEC, POD_PORT, &syn(WEB, 80, 50050), &t, &mut second);
    assert_eq!(o.verdict, Verdict::Forward(HOST_PORT));
    assert!(drain(&second).iter().all(|r| r.worker == 0));
}

#[test]
fn malformed_messages_are_dropped_and_counted_and_later_queries_work() {
    let t = tables();
    let mut ct = conntrack();
    let q = query_msg(1, "a.domain.com");
    let mut loop_ = header(2, 0x0100, [1, 0, 0, 0]);
    loop_.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]); // a name pointing at itself
    let mut too_many = q.clone();
    too_many[5] = 9; // QDCOUNT 9, one question present
    let mut count_over = q.clone();
    count_over[7] = 3; // ANCOUNT 3, no record present
    for (what, msg) in [
        ("truncated", q[..q.len() - 3].to_vec()),
        ("header only", q[..7].to_vec()),
        ("compression loop", loop_),
        ("question count", too_many),
        ("answer count", count_over),
    ] {
        let (o, _) = run(
            SEC,
            POD_PORT,
            &udp_frame((POD_MAC, POD, 40100), (DNS, 53), &msg),
            &t,
            &mut ct,
        );
        assert_eq!(o.verdict, Verdict::Drop(DropReason::DnsMalformed), "{what}");
    }
    assert!(drain(&ct).is_empty());
    let (o, _) = run(SEC, POD_PORT, &query(3, "a.domain.com", 40101), &t, &mut ct);
    assert_eq!(o.verdict, Verdict::Forward(DNS_PORT));
}

#[test]
fn a_fragmented_dns_datagram_is_dropped() {
    let t = tables();
    let mut ct = conntrack();
    let mut f = query(4, "a.domain.com", 40200);
    // More fragments, offset 0: a first fragment.
    f[14 + 6] |= 0x20;
    let sum = crate::checksum::checksum(&{
        let mut h = f[14..34].to_vec();
        h[10] = 0;
        h[11] = 0;
        h
    });
    f[14 + 10..14 + 12].copy_from_slice(&sum.to_be_bytes());
    let (o, _) = run(SEC, POD_PORT, &f, &t, &mut ct);
    assert_eq!(o.verdict, Verdict::Drop(DropReason::DnsMalformed));
}

/// Opens a TCP connection from the pod to the DNS server's port 53 (SYN, SYN-ACK, ACK).
fn tcp_handshake(t: &Tables, ct: &mut Conntrack, sport: u16) {
    let steps = [
        (
            POD_PORT,
            tcp_frame((POD_MAC, POD, sport), (DNS, 53), (100, None, true), &[]),
        ),
        (
            DNS_PORT,
            tcp_frame(
                (DNS_MAC, DNS, 53),
                (POD, sport),
                (5000, Some(101), true),
                &[],
            ),
        ),
        (
            POD_PORT,
            tcp_frame(
                (POD_MAC, POD, sport),
                (DNS, 53),
                (101, Some(5001), false),
                &[],
            ),
        ),
    ];
    for (port, f) in steps {
        let (o, _) = run(SEC, port, &f, t, ct);
        assert!(matches!(o.verdict, Verdict::Forward(_)), "{o:?}");
    }
}

fn framed(msgs: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for m in msgs {
        v.extend_from_slice(&(m.len() as u16).to_be_bytes());
        v.extend_from_slice(m);
    }
    v
}

#[test]
fn tcp_dns_is_inspected_per_segment() {
    let t = tables_with(
        crate::policy::PROTO_ANY,
        &["*.domain.com"],
        DnsOptions::default(),
    );
    let mut ct = conntrack();
    tcp_handshake(&t, &mut ct, 41000);
    let pod = (POD_MAC, POD, 41000);
    // An allowed query goes on; its answer teaches the address.
    let q = framed(&[&query_msg(5, "a.domain.com")]);
    let (o, _) = run(
        SEC,
        POD_PORT,
        &tcp_frame(pod, (DNS, 53), (101, Some(5001), false), &q),
        &t,
        &mut ct,
    );
    assert_eq!(o.verdict, Verdict::Forward(DNS_PORT));
    let a = framed(&[&answer_msg(
        5,
        "a.domain.com",
        &[Rec::A("a.domain.com", WEB, 30)],
    )]);
    let f = tcp_frame(
        (DNS_MAC, DNS, 53),
        (POD, 41000),
        (5001, Some(101 + q.len() as u32), false),
        &a,
    );
    assert_eq!(
        run(SEC, DNS_PORT, &f, &t, &mut ct).0.verdict,
        Verdict::Forward(POD_PORT)
    );
    assert_eq!(
        run(SEC, POD_PORT, &syn(WEB, 80, 50060), &t, &mut ct)
            .0
            .verdict,
        Verdict::Forward(HOST_PORT)
    );

    // A denied query is answered with a segment that acknowledges it.
    tcp_handshake(&t, &mut ct, 41001);
    let q = framed(&[&query_msg(6, "example.org")]);
    let f = tcp_frame(
        (POD_MAC, POD, 41001),
        (DNS, 53),
        (101, Some(5001), false),
        &q,
    );
    let (o, out) = run(SEC, POD_PORT, &f, &t, &mut ct);
    assert_eq!(o.verdict, Verdict::Forward(POD_PORT));
    let (h, payload) = dns_payload(&out);
    let ip = h.net.unwrap().ipv4_ref().unwrap().0.clone();
    let Some(TransportHeader::Tcp(th)) = h.transport else {
        panic!("not TCP");
    };
    assert_eq!((th.source_port, th.destination_port), (53, 41001));
    assert_eq!(
        (th.sequence_number, th.acknowledgment_number),
        (5001, 101 + q.len() as u32)
    );
    assert!(th.ack && th.psh && !th.syn && !th.rst);
    assert_eq!(th.checksum, th.calc_checksum_ipv4(&ip, &payload).unwrap());
    let len = u16::from_be_bytes([payload[0], payload[1]]) as usize;
    assert_eq!(len, payload.len() - 2);
    assert_eq!(payload[2 + 3] & 0x0f, 5, "REFUSED");

    // An oversized length prefix, half a message: malformed.
    tcp_handshake(&t, &mut ct, 41002);
    let mut q = framed(&[&query_msg(7, "a.domain.com")]);
    q[1] += 40;
    let f = tcp_frame(
        (POD_MAC, POD, 41002),
        (DNS, 53),
        (101, Some(5001), false),
        &q,
    );
    assert_eq!(
        run(SEC, POD_PORT, &f, &t, &mut ct).0.verdict,
        Verdict::Drop(DropReason::DnsMalformed)
    );
    // Two queries in one segment, one denied: dropped as the policy's.
    let q = framed(&[&query_msg(8, "a.domain.com"), &query_msg(9, "example.org")]);
    let f = tcp_frame(
        (POD_MAC, POD, 41002),
        (DNS, 53),
        (101, Some(5001), false),
        &q,
    );
    assert_eq!(
        run(SEC, POD_PORT, &f, &t, &mut ct).0.verdict,
        Verdict::Drop(DropReason::PolicyDenied)
    );
}

#[test]
fn flows_the_dns_rules_do_not_cover_are_not_inspected() {
    let t = tables();
    let mut ct = conntrack();
    // UDP to the DNS server on another port: no DNS rule, and no allow rule either.
    let f = udp_frame((POD_MAC, POD, 40300), (DNS, 5353), b"not dns at all");
    assert_eq!(
        run(SEC, POD_PORT, &f, &t, &mut ct).0.verdict,
        Verdict::Drop(DropReason::PolicyDenied)
    );
    // The DNS server's own traffic to the pod's port 53 is not a query of the pod's.
    assert!(drain(&ct).is_empty());
}

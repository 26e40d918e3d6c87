//! The fragment stage through the whole pipeline ([`crate::pipeline::process`]), on frames
//! written byte by byte: B's ingress allows UDP 53 from A only, and A sends datagrams in
//! fragments.

use std::net::Ipv4Addr;

use crate::checksum;
use crate::conntrack::{Conntrack, CtConfig};
use crate::fragments::TIMEOUT_NS;
use crate::pipeline::{Frame, Outcome, Verdict, process};
use crate::policy::{PolicyTablesBuilder, PolicyVerdict, RuleOrigin, Section};
use crate::stats::DropReason;
use crate::tables::{Gateway, MacAddr, Mode, Neighbor, PortId, Tables};
use crate::wire::ip::proto;

const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const A_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const A_PORT: PortId = 1;
const B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
const B_PORT: PortId = 2;
const SEC: u64 = 1_000_000_000;

fn tables(mode: Mode) -> Tables {
    let mut t = Tables::new(
        1,
        mode,
        Gateway {
            mac: MacAddr(GW_MAC),
            ipv4: GW_IP,
        },
    );
    for (ip, port, mac) in [(A_IP, A_PORT, A_MAC), (B_IP, B_PORT, B_MAC)] {
        t.add_route(
            ip,
            Neighbor {
                port,
                mac: MacAddr(mac),
            },
        )
        .unwrap();
    }
    let mut b = PolicyTablesBuilder::new(1);
    b.add_endpoint(A_IP, 300);
    b.add_endpoint(B_IP, 301);
    let r = b.add_origin(RuleOrigin {
        policy: "default/b-in".into(),
        spec: 0,
        section: Section::Ingress,
        index: 0,
    });
    let p = b.endpoint_policy(301);
    p.ingress.set_enforced(true);
    p.ingress.add(300, proto::UDP, Some((53, 53)), false, r);
    t.set_policy(b.build());
    t
}

fn new_ct() -> Conntrack {
    Conntrack::new(&CtConfig {
        capacity: 1024,
        ..Default::default()
    })
}

/// One fragment from `src` (behind A's port, with A's MAC) to `dst`: IP ID `id`, offset `off`
/// (bytes, a multiple of 8), more-fragments `more`, carrying `bytes` of the datagram's IP
/// payload.
fn fragment(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    off: usize,
    more: bool,
    bytes: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(34 + bytes.len());
    f.extend_from_slice(&GW_MAC);
    f.extend_from_slice(&A_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + bytes.len()) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    let frag = (off / 8) as u16 | if more { 0x2000 } else { 0 };
    ip[6..8].copy_from_slice(&frag.to_be_bytes());
    ip[8] = 64;
    ip[9] = proto::UDP;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum::checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(bytes);
    f
}

/// A UDP datagram from A to B (`dport`, `len` bytes of data) in fragments of at most 1,480
/// bytes of IP payload, in order, as a sender at MTU 1500 cuts it.
fn datagram(id: u16, dport: u16, len: usize) -> Vec<Vec<u8>> {
    let mut l4 = Vec::with_capacity(8 + len);
    l4.extend_from_slice(&40000u16.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&((8 + len) as u16).to_be_bytes());
    // No checksum (IPv4 allows it): the datagram's bytes are checked whole by the tests.
    l4.extend_from_slice(&[0, 0]);
    l4.extend((0..len).map(|i| i as u8));
    let chunks: Vec<&[u8]> = l4.chunks(1480).collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| fragment(A_IP, B_IP, id, i * 1480, i + 1 < chunks.len(), c))
        .collect()
}

/// Runs `frame` through the pipeline from A's port at `now`; the outcome and the frame as it
/// would leave.
fn send(now: u64, t: &Tables, ct: &mut Conntrack, frame: &[u8]) -> (Outcome, Vec<u8>) {
    let mut buf = vec![0u8; frame.len() + 64];
    buf[..frame.len()].copy_from_slice(frame);
    let mut f = Frame::new(&mut buf, frame.len());
    let o = process(now, A_PORT, &mut f, t, ct);
    (o, f.data().to_vec())
}

fn verdict(now: u64, t: &Tables, ct: &mut Conntrack, frame: &[u8]) -> Verdict {
    send(now, t, ct, frame).0.verdict
}

#[test]
fn every_fragment_of_an_allowed_datagram_is_forwarded_intact() {
    let t = tables(Mode::Full);
    let mut ct = new_ct();
    let frags = datagram(7, 53, 4000);
    assert_eq!(frags.len(), 3);
    for (i, f) in frags.iter().enumerate() {
        let (o, out) = send(SEC, &t, &mut ct, f);
        assert_eq!(o.verdict, Verdict::Forward(B_PORT), "fragment {i}");
        // As sent on: B's MAC, TTL − 1, the IP payload untouched.
        assert_eq!(&out[..6], &B_MAC);
        assert_eq!(out[22], 63);
        assert_eq!(&out[34..], &f[34..], "fragment {i}");
        let expected = if i == 0 {
            PolicyVerdict::New
        } else {
            PolicyVerdict::Established
        };
        assert_eq!(o.policy, Some(expected), "fragment {i}");
    }
    // The same datagram's ports to a port B does not allow: the whole of it is dropped.
    for (i, f) in datagram(8, 54, 4000).iter().enumerate() {
        assert_eq!(
            verdict(SEC, &t, &mut ct, f),
            Verdict::Drop(DropReason::PolicyDenied),
            "fragment {i}"
        );
    }
    // In passthrough nothing is judged on ports: fragments need no record.
    let mut fresh = new_ct();
    let later = &datagram(9, 54, 4000)[1];
    assert_eq!(
        verdict(SEC, &tables(Mode::Passthrough), &mut fresh, later),
        Verdict::Forward(B_PORT)
    );
}

#[test]
fn a_later_fragment_before_its_first_is_dropped_and_counted() {
    let t = tables(Mode::Full);
    let mut ct = new_ct();
    let frags = datagram(7, 53, 4000);
    let (o, _) = send(SEC, &t, &mut ct, &frags[2]);
    assert_eq!(o.verdict, Verdict::Drop(DropReason::FragNoHead));
    assert_eq!(o.drop_reason(), Some(DropReason::FragNoHead));
    assert_eq!(o.policy, None);
    // The first fragment then passes, and the fragments after it.
    for f in &frags {
        assert_eq!(verdict(SEC, &t, &mut ct, f), Verdict::Forward(B_PORT));
    }
}

#[test]
fn a_denied_first_fragment_takes_its_later_fragments_with_it() {
    let t = tables(Mode::Full);
    let mut ct = new_ct();
    let frags = datagram(7, 54, 3000);
    let (o, _) = send(SEC, &t, &mut ct, &frags[0]);
    assert_eq!(o.verdict, Verdict::Drop(DropReason::PolicyDenied));
    assert!(matches!(o.policy, Some(PolicyVerdict::Drop { .. })));
    for f in &frags[1..] {
        assert_eq!(
            verdict(SEC, &t, &mut ct, f),
            Verdict::Drop(DropReason::PolicyDenied)
        );
    }
    // No flow was opened by any of them.
    assert!(ct.is_empty());
}

#[test]
fn a_record_expires() {
    let t = tables(Mode::Full);
    let mut ct = new_ct();
    let frags = datagram(7, 53, 4000);
    assert_eq!(
        verdict(SEC, &t, &mut ct, &frags[0]),
        Verdict::Forward(B_PORT)
    );
    assert_eq!(
        verdict(SEC + TIMEOUT_NS / 2, &t, &mut ct, &frags[1]),
        Verdict::Forward(B_PORT)
    );
    assert_eq!(
        verdict(SEC + TIMEOUT_NS + SEC / 1000, &t, &mut ct, &frags[2]),
        Verdict::Drop(DropReason::FragNoHead)
    );
}

#[test]
fn a_full_table_gives_up_its_oldest_records_and_keeps_passing_new_datagrams() {
    let t = tables(Mode::Full);
    let mut ct = new_ct();
    let records = ct.fragments().records();
    let old = datagram(1, 53, 2000);
    assert_eq!(verdict(SEC, &t, &mut ct, &old[0]), Verdict::Forward(B_PORT));
    // Twenty times as many first fragments as the table has records, each datagram's own ID:
    // every bucket is refilled many times over, so the oldest record is long gone.
    for i in 0..20 * records {
        let id = 2 + i as u16;
        let first = &datagram(id, 53, 2000)[0];
        assert_eq!(
            verdict(2 * SEC, &t, &mut ct, first),
            Verdict::Forward(B_PORT)
        );
    }
    assert_eq!(
        verdict(2 * SEC, &t, &mut ct, &old[1]),
        Verdict::Drop(DropReason::FragNoHead)
    );
    // A datagram sent now still passes whole.
    for f in &datagram(60_000, 53, 2000) {
        assert_eq!(verdict(2 * SEC, &t, &mut ct, f), Verdict::Forward(B_PORT));
    }
}

#[test]
fn a_forged_later_fragment_finds_no_head_to_ride() {
    let t = tables(Mode::Full);
    let mut ct = new_ct();
    let frags = datagram(7, 53, 4000);
    assert_eq!(
        verdict(SEC, &t, &mut ct, &frags[0]),
        Verdict::Forward(B_PORT)
    );
    // Another ID, to the same allowed destination: no record.
    let forged = fragment(A_IP, B_IP, 8, 1480, false, &[0x55; 64]);
    assert_eq!(
        verdict(SEC, &t, &mut ct, &forged),
        Verdict::Drop(DropReason::FragNoHead)
    );
    // The same ID from B's port with A's address: refused at the ingress checks, before the
    // record could be looked up.
    let mut as_a = fragment(A_IP, B_IP, 7, 1480, false, &[0x55; 64]);
    as_a[6..12].copy_from_slice(&B_MAC);
    let mut buf = as_a.clone();
    let mut f = Frame::new(&mut buf, as_a.len());
    assert_eq!(
        process(SEC, B_PORT, &mut f, &t, &mut ct).verdict,
        Verdict::Drop(DropReason::InvalidSourceIp)
    );
    // A later fragment that did come from A with its datagram's key rides the record: the
    // datagram's own fragments.
    assert_eq!(
        verdict(SEC, &t, &mut ct, &frags[1]),
        Verdict::Forward(B_PORT)
    );
}

#[test]
fn fragments_of_one_datagram_may_reach_different_workers() {
    // Two handles on one flow table, as two workers hold: the first fragment on one, the
    // later ones on the other.
    let t = tables(Mode::Full);
    let mut w0 = new_ct();
    let mut w1 = w0.clone();
    let frags = datagram(7, 53, 4000);
    assert_eq!(
        verdict(SEC, &t, &mut w0, &frags[0]),
        Verdict::Forward(B_PORT)
    );
    for f in &frags[1..] {
        assert_eq!(verdict(SEC, &t, &mut w1, f), Verdict::Forward(B_PORT));
    }
}

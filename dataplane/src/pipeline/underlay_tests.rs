//! Two nodes on byte arrays: node 1's pipeline sends a pod's packet over its uplink, the bytes
//! go unchanged into node 2's pipeline on its uplink, which delivers them to its pod; in clear
//! and in ESP, with the attacks an underlay host or a peer can make.

use std::net::Ipv4Addr;
use std::sync::Arc;

use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacket, EtherType, NetHeaders, PacketBuilder, PacketHeaders,
    TransportHeader,
};

use crate::conntrack::{Conntrack, CtConfig};
use crate::esp::{Key, KeysIn, PeerSas, SaOut};
use crate::frame::Frame;
use crate::pipeline::{Verdict, process};
use crate::stats::DropReason;
use crate::tables::{Gateway, MacAddr, Mode, Neighbor, Peer, PortId, Prefix, Tables, Uplink};
use crate::wire::ip::proto;

const GW_MAC: [u8; 6] = [0x0e, 0x78, 0x79, 0x6c, 0, 1];
const POD_PORT: PortId = 1;
const UPLINK: PortId = 3;
/// Headroom in front of every test frame, as the worker's UMEM frames have.
const HEAD: usize = 256;

/// One node of the test cluster: node `n` (1 or 2) has pod CIDR 10.200.(n-1).0/24, gateway
/// .1, one pod .10 on port 1, and underlay address 10.199.0.(10+n).
struct Node {
    n: u8,
}

impl Node {
    fn gateway(&self) -> [u8; 4] {
        [10, 200, self.n - 1, 1]
    }
    fn pod_ip(&self) -> [u8; 4] {
        [10, 200, self.n - 1, 10]
    }
    fn pod_mac(&self) -> [u8; 6] {
        [2, 0, 0, 0, self.n, 10]
    }
    fn node_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 199, 0, 10 + self.n)
    }
    fn uplink_mac(&self) -> MacAddr {
        MacAddr([0x0e, 0x78, 0x79, 0x75, 0, self.n])
    }
    fn cidr(&self) -> Prefix {
        Prefix::new(Ipv4Addr::new(10, 200, self.n - 1, 0), 24)
    }

    /// This node's tables, with `other` as its peer (`esp`: its SAs, if encrypted).
    fn tables(&self, other: &Node, mode: Mode, esp: Option<Arc<PeerSas>>) -> Tables {
        let mut t = Tables::new(
            1,
            mode,
            Gateway {
                mac: MacAddr(GW_MAC),
                ipv4: self.gateway().into(),
            },
        );
        t.add_route(
            self.pod_ip().into(),
            Neighbor {
                port: POD_PORT,
                mac: MacAddr(self.pod_mac()),
            },
        )
        .unwrap();
        t.set_uplink(Uplink {
            port: UPLINK,
            ip: self.node_ip(),
            mac: self.uplink_mac(),
            pod_cidr: self.cidr(),
        })
        .unwrap();
        t.add_peer(Peer {
            name: format!("node{}", other.n).into(),
            node_ip: other.node_ip(),
            pod_cidr: other.cidr(),
            mac: Some(other.uplink_mac()),
            esp,
        })
        .unwrap();
        t
    }
}

const N1: Node = Node { n: 1 };
const N2: Node = Node { n: 2 };

fn ct() -> Conntrack {
    Conntrack::new(&CtConfig {
        capacity: 1024,
        ..Default::default()
    })
}

/// A UDP datagram from node 1's pod to node 2's, as the pod sends it (to the gateway's MAC).
fn pod_udp(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(N1.pod_mac(), GW_MAC)
        .ipv4(N1.pod_ip(), N2.pod_ip(), 64)
        .udp(4000, 5001)
        .write(&mut v, payload)
        .unwrap();
    v
}

/// Runs `bytes` through `t`'s pipeline, arriving on `port`: the verdict and the frame after.
fn run(t: &Tables, port: PortId, bytes: &[u8], ct: &mut Conntrack) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; HEAD + 2048];
    buf[HEAD..HEAD + bytes.len()].copy_from_slice(bytes);
    let mut f = Frame::with_headroom(&mut buf, HEAD, bytes.len());
    let o = process(7, port, &mut f, t, ct);
    (o.verdict, f.data().to_vec())
}

/// The SAs both nodes hold for each other with key `id` (AES-128-GCM): node 1 seals with `out`,
/// node 2 opens with `inbound`.
fn sas(id: u32, with_out: bool) -> Arc<PeerSas> {
    let key = || Key::new(id, &[0x42; 20]).unwrap();
    let mut inbound = KeysIn::new();
    inbound.insert(key()).unwrap();
    Arc::new(PeerSas {
        out: with_out.then(|| Arc::new(SaOut::new(key()))),
        inbound,
        counters: Default::default(),
    })
}

fn headers(f: &[u8]) -> PacketHeaders<'_> {
    PacketHeaders::from_ethernet_slice(f).unwrap()
}

/// Checks `f` is node 1's pod's datagram as node 2 delivers it to its pod, `hops` routers on.
fn assert_delivered(f: &[u8], payload: &[u8], hops: u8) {
    let h = headers(f);
    let eth = h.link.clone().unwrap().ethernet2().unwrap();
    assert_eq!(eth.destination, N2.pod_mac());
    assert_eq!(eth.source, GW_MAC);
    let Some(NetHeaders::Ipv4(ip, _)) = &h.net else {
        panic!("not IPv4")
    };
    assert_eq!((ip.source, ip.destination), (N1.pod_ip(), N2.pod_ip()));
    assert_eq!(ip.time_to_live, 64 - hops);
    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
    let Some(TransportHeader::Udp(u)) = &h.transport else {
        panic!("not UDP")
    };
    assert_eq!(
        u.checksum,
        u.calc_checksum_ipv4(ip, h.payload.slice()).unwrap()
    );
    assert_eq!(h.payload.slice(), payload);
}

#[test]
fn a_pod_reaches_a_pod_of_another_node_in_clear_over_the_uplinks() {
    for mode in [Mode::Passthrough, Mode::Full] {
        let (t1, t2) = (N1.tables(&N2, mode, None), N2.tables(&N1, mode, None));
        let (v, wire) = run(&t1, POD_PORT, &pod_udp(b"hello"), &mut ct());
        assert_eq!(v, Verdict::Forward(UPLINK), "{mode:?}");
        let eth = headers(&wire).link.unwrap().ethernet2().unwrap();
        assert_eq!(
            (eth.source, eth.destination),
            (N1.uplink_mac().0, N2.uplink_mac().0),
            "no overlay: only the MACs change"
        );
        let (v, delivered) = run(&t2, UPLINK, &wire, &mut ct());
        assert_eq!(v, Verdict::Forward(POD_PORT), "{mode:?}");
        assert_delivered(&delivered, b"hello", 2);
    }
}

#[test]
fn encrypted_traffic_is_esp_between_the_node_addresses_and_opens_to_the_same_packet() {
    let s = sas(3, true);
    let (t1, t2) = (
        N1.tables(&N2, Mode::Full, Some(Arc::clone(&s))),
        N2.tables(&N1, Mode::Full, Some(sas(3, true))),
    );
    let payload = b"the secret payload of a pod";
    let (v, wire) = run(&t1, POD_PORT, &pod_udp(payload), &mut ct());
    assert_eq!(v, Verdict::Forward(UPLINK));
    let h = headers(&wire);
    let eth = h.link.clone().unwrap().ethernet2().unwrap();
    assert_eq!(
        (eth.source, eth.destination),
        (N1.uplink_mac().0, N2.uplink_mac().0)
    );
    let Some(NetHeaders::Ipv4(outer, _)) = &h.net else {
        panic!("not IPv4")
    };
    assert_eq!(
        (outer.source, outer.destination),
        (N1.node_ip().octets(), N2.node_ip().octets())
    );
    assert_eq!(outer.protocol.0, proto::ESP);
    assert_eq!(outer.header_checksum, outer.calc_header_checksum());
    let esp = &wire[34..];
    assert_eq!(&esp[..4], &3u32.to_be_bytes(), "the key id is the SPI");
    assert_eq!(
        &esp[4..8],
        &1u32.to_be_bytes(),
        "the first sequence number is 1"
    );
    assert!(
        !wire.windows(payload.len()).any(|w| w == payload),
        "the payload is not on the wire in clear"
    );
    assert_eq!(
        s.counters
            .tx_packets
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let (v, delivered) = run(&t2, UPLINK, &wire, &mut ct());
    assert_eq!(v, Verdict::Forward(POD_PORT));
    assert_delivered(&delivered, payload, 2);
    // The same packet again is a replay.
    let (v, _) = run(&t2, UPLINK, &wire, &mut ct());
    assert_eq!(v, Verdict::Drop(DropReason::EspReplay));
}

#[test]
fn without_a_key_traffic_to_an_encrypting_peer_is_dropped_never_sent_in_clear() {
    for esp in [sas(3, false), Arc::new(PeerSas::default())] {
        let t1 = N1.tables(&N2, Mode::Full, Some(esp));
        let (v, _) = run(&t1, POD_PORT, &pod_udp(b"x"), &mut ct());
        assert_eq!(v, Verdict::Drop(DropReason::NoKey));
    }
}

#[test]
fn altered_replayed_foreign_and_truncated_esp_is_dropped_by_reason() {
    let t1 = N1.tables(&N2, Mode::Full, Some(sas(3, true)));
    let sealed = |ct: &mut Conntrack| run(&t1, POD_PORT, &pod_udp(b"payload"), ct).1;
    let mut c = ct();
    let t2 = N2.tables(&N1, Mode::Full, Some(sas(3, true)));
    // A flipped bit anywhere in the ciphertext or ICV.
    for at in [50, 60, 34 + 16 + 5] {
        let mut bad = sealed(&mut c);
        let last = bad.len() - 1;
        bad[at.min(last)] ^= 1;
        assert_eq!(
            run(&t2, UPLINK, &bad, &mut ct()).0,
            Verdict::Drop(DropReason::EspAuthFailed),
            "bit flipped at {at}"
        );
    }
    // Another key id than node 2 holds.
    let t1_key4 = N1.tables(&N2, Mode::Full, Some(sas(4, true)));
    let other = run(&t1_key4, POD_PORT, &pod_udp(b"payload"), &mut ct()).1;
    assert_eq!(
        run(&t2, UPLINK, &other, &mut ct()).0,
        Verdict::Drop(DropReason::EspUnknownSpi)
    );
    // The same key, another key: node 2 holding key 3 with other bytes fails the ICV.
    let wrong = {
        let mut inbound = KeysIn::new();
        inbound.insert(Key::new(3, &[0x43; 20]).unwrap()).unwrap();
        Arc::new(PeerSas {
            out: None,
            inbound,
            counters: Default::default(),
        })
    };
    let t2_wrong = N2.tables(&N1, Mode::Full, Some(wrong));
    assert_eq!(
        run(&t2_wrong, UPLINK, &sealed(&mut c), &mut ct()).0,
        Verdict::Drop(DropReason::EspAuthFailed)
    );
    // An ESP packet too short for its header, IV and ICV, with a consistent IP header.
    let mut short = Vec::new();
    PacketBuilder::ethernet2(N1.uplink_mac().0, N2.uplink_mac().0)
        .ipv4(N1.node_ip().octets(), N2.node_ip().octets(), 64)
        .write(
            &mut short,
            etherparse::IpNumber(proto::ESP),
            &[0, 0, 0, 3, 0, 0, 0, 9],
        )
        .unwrap();
    assert_eq!(
        run(&t2, UPLINK, &short, &mut ct()).0,
        Verdict::Drop(DropReason::EspTruncated)
    );
    // ESP from an underlay address that is no peer's.
    let mut stranger = sealed(&mut c);
    stranger[26..30].copy_from_slice(&[10, 199, 0, 77]);
    fix_ip_checksum(&mut stranger);
    assert_eq!(
        run(&t2, UPLINK, &stranger, &mut ct()).0,
        Verdict::Drop(DropReason::EspUnknownPeer)
    );
}

#[test]
fn the_underlay_cannot_skip_encryption_or_claim_local_or_foreign_sources() {
    let t2 = N2.tables(&N1, Mode::Full, Some(sas(3, true)));
    // Node 1's pod's datagram in clear, as an attacker on the underlay would send it.
    let mut clear = pod_udp(b"x");
    clear[0..6].copy_from_slice(&N2.uplink_mac().0);
    clear[6..12].copy_from_slice(&N1.uplink_mac().0);
    assert_eq!(
        run(&t2, UPLINK, &clear, &mut ct()).0,
        Verdict::Drop(DropReason::EspRequired)
    );
    // Claiming to be node 2's own pod, its gateway or its underlay address.
    for src in [
        N2.pod_ip(),
        N2.gateway(),
        N2.node_ip().octets(),
        [10, 200, 1, 99],
    ] {
        let mut f = clear.clone();
        f[26..30].copy_from_slice(&src);
        fix_ip_checksum(&mut f);
        assert_eq!(
            run(&t2, UPLINK, &f, &mut ct()).0,
            Verdict::Drop(DropReason::InvalidSourceIp),
            "{src:?}"
        );
    }
    // In clear from a peer that does not encrypt, but from another MAC than the peer's.
    let t2_clear = N2.tables(&N1, Mode::Full, None);
    let mut f = clear.clone();
    f[6..12].copy_from_slice(&[2, 0xee, 0xee, 0xee, 0xee, 0xee]);
    assert_eq!(
        run(&t2_clear, UPLINK, &f, &mut ct()).0,
        Verdict::Drop(DropReason::InvalidSourceMac)
    );
    // Node 1 may speak only for its own pods, even with a valid SA: an inner packet from
    // elsewhere is refused once it opened, and so is an inner packet that is no IPv4 packet.
    let sa = SaOut::new(Key::new(3, &[0x42; 20]).unwrap());
    let mut foreign = pod_udp(b"x");
    foreign[26..30].copy_from_slice(&[10, 200, 7, 7]);
    fix_ip_checksum(&mut foreign);
    assert_eq!(
        run(&t2, UPLINK, &esp_frame(&foreign[14..], &sa), &mut ct()).0,
        Verdict::Drop(DropReason::InvalidSourceIp)
    );
    assert_eq!(
        run(&t2, UPLINK, &esp_frame(&[0x60; 40], &sa), &mut ct()).0,
        Verdict::Drop(DropReason::EspBadPayload)
    );
    assert_eq!(
        run(
            &t2,
            UPLINK,
            &esp_frame(&pod_udp(b"fine")[14..], &sa),
            &mut ct()
        )
        .0,
        Verdict::Forward(POD_PORT),
        "the same construction with node 1's pod as source opens and is delivered"
    );
}

/// Recomputes the IPv4 header checksum of an Ethernet frame in place (after a test edit).
fn fix_ip_checksum(f: &mut [u8]) {
    f[24..26].copy_from_slice(&[0, 0]);
    let c = crate::checksum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

/// `inner` (an IPv4 packet, or anything) sealed with `sa` as node 1 would send it to node 2.
fn esp_frame(inner: &[u8], sa: &SaOut) -> Vec<u8> {
    let mut esp = vec![0u8; crate::esp::sealed_len(inner.len())];
    esp[16..16 + inner.len()].copy_from_slice(inner);
    crate::esp::seal(sa, &mut esp, inner.len()).unwrap();
    let mut v = Vec::new();
    PacketBuilder::ethernet2(N1.uplink_mac().0, N2.uplink_mac().0)
        .ipv4(N1.node_ip().octets(), N2.node_ip().octets(), 64)
        .write(&mut v, etherparse::IpNumber(proto::ESP), &esp)
        .unwrap();
    v
}

#[test]
fn arp_on_the_uplink_is_for_the_node_address_only_and_never_from_a_local_one() {
    let t2 = N2.tables(&N1, Mode::Full, None);
    let arp = |sender_ip: [u8; 4], target: Ipv4Addr| {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(N1.uplink_mac().0, [0xff; 6])
            .arp(
                ArpPacket::new(
                    ArpHardwareId::ETHERNET,
                    EtherType::IPV4,
                    ArpOperation::REQUEST,
                    &N1.uplink_mac().0,
                    &sender_ip,
                    &[0; 6],
                    &target.octets(),
                )
                .unwrap(),
            )
            .write(&mut v)
            .unwrap();
        v
    };
    let from_n1 = N1.node_ip().octets();
    assert_eq!(
        run(&t2, UPLINK, &arp(from_n1, N2.node_ip()), &mut ct()).0,
        Verdict::SlowPath
    );
    assert_eq!(
        run(
            &t2,
            UPLINK,
            &arp(from_n1, Ipv4Addr::new(10, 199, 0, 99)),
            &mut ct()
        )
        .0,
        Verdict::Drop(DropReason::ArpNotForGateway)
    );
    assert_eq!(
        run(&t2, UPLINK, &arp(N2.gateway(), N2.node_ip()), &mut ct()).0,
        Verdict::Drop(DropReason::ArpSpoofed)
    );
    // A pod asking for the node's underlay address gets nothing: that is the uplink's.
    let mut pod_asks = arp(N2.pod_ip(), N2.node_ip());
    pod_asks[6..12].copy_from_slice(&N2.pod_mac());
    pod_asks[22..28].copy_from_slice(&N2.pod_mac());
    assert_eq!(
        run(&t2, POD_PORT, &pod_asks, &mut ct()).0,
        Verdict::Drop(DropReason::ArpNotForGateway)
    );
}

#[test]
fn unresolved_peers_too_big_packets_and_transit_are_dropped_by_reason() {
    let mut t1 = N1.tables(&N2, Mode::Full, None);
    // A peer whose MAC is not resolved yet.
    let mut unresolved = Tables::new(2, Mode::Full, *t1.gateway());
    unresolved
        .add_route(
            N1.pod_ip().into(),
            Neighbor {
                port: POD_PORT,
                mac: MacAddr(N1.pod_mac()),
            },
        )
        .unwrap();
    unresolved.set_uplink(*t1.uplink().unwrap()).unwrap();
    let mut p = t1.peers()[0].clone();
    p.mac = None;
    unresolved.add_peer(p).unwrap();
    assert_eq!(
        run(&unresolved, POD_PORT, &pod_udp(b"x"), &mut ct()).0,
        Verdict::Drop(DropReason::NeighborUnresolved)
    );
    // Too big to encapsulate within the uplink's MTU: dropped; with DF set, answered with an
    // ICMP fragmentation needed naming the largest packet that fits (1,446 bytes), so path MTU
    // discovery finds it; that packet itself passes.
    let te = N1.tables(&N2, Mode::Full, Some(sas(3, true)));
    let mtu = super::INNER_MTU;
    assert_eq!(mtu, 1446);
    let udp_of = |ip_len: usize| pod_udp(&vec![7u8; ip_len - 28]);
    let with_df = |ip_len: usize, df: bool| {
        let mut f = udp_of(ip_len);
        f[20] = if df { f[20] | 0x40 } else { f[20] & !0x40 };
        fix_ip_checksum(&mut f);
        f
    };
    assert_eq!(
        run(&te, POD_PORT, &with_df(1500, false), &mut ct()).0,
        Verdict::Drop(DropReason::EspTooBig)
    );
    let df = with_df(mtu + 1, true);
    let (v, answer) = run(&te, POD_PORT, &df, &mut ct());
    assert_eq!(v, Verdict::TooBig(POD_PORT));
    let h = headers(&answer);
    let Some(NetHeaders::Ipv4(ip, _)) = &h.net else {
        panic!("not IPv4")
    };
    assert_eq!((ip.source, ip.destination), (N1.gateway(), N1.pod_ip()));
    let Some(TransportHeader::Icmpv4(icmp)) = &h.transport else {
        panic!("not ICMP: {:?}", h.transport)
    };
    assert_eq!(
        icmp.icmp_type,
        etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: mtu as u16
            }
        )
    );
    assert_eq!(
        icmp.checksum,
        icmp.icmp_type.calc_checksum(h.payload.slice())
    );
    for len in [mtu, 1500 - crate::esp::TUNNEL_OVERHEAD_MAX] {
        assert_eq!(
            run(&te, POD_PORT, &udp_of(len), &mut ct()).0,
            Verdict::Forward(UPLINK),
            "{len}"
        );
    }
    // From the uplink to another node's pods: not a transit router.
    let mut transit = pod_udp(b"x");
    transit[0..6].copy_from_slice(&N1.uplink_mac().0);
    transit[6..12].copy_from_slice(&[2, 0xab, 0, 0, 0, 1]);
    transit[26..30].copy_from_slice(&[10, 199, 0, 50]);
    fix_ip_checksum(&mut transit);
    assert_eq!(
        run(&t1, UPLINK, &transit, &mut ct()).0,
        Verdict::Drop(DropReason::NoRoute)
    );
    t1.set_world(Ipv4Addr::new(10, 199, 0, 100), None);
    assert!(t1.wants_neighbor(Ipv4Addr::new(10, 199, 0, 100)));
    assert!(t1.wants_neighbor(N2.node_ip()));
    assert!(!t1.wants_neighbor(Ipv4Addr::new(10, 199, 0, 50)));
}

#[test]
fn two_workers_share_the_sequence_numbers_and_the_window() {
    let s1 = sas(5, true);
    let t1 = N1.tables(&N2, Mode::Full, Some(s1));
    let t2 = N2.tables(&N1, Mode::Full, Some(sas(5, true)));
    // Two workers of node 1 (two conntrack handles on one table), each sealing a packet.
    let shared = ct();
    let (mut w1, mut w2) = (shared.clone(), shared.clone());
    let a = run(&t1, POD_PORT, &pod_udp(b"first"), &mut w1).1;
    let b = run(&t1, POD_PORT, &pod_udp(b"second"), &mut w2).1;
    assert_eq!(&a[38..42], &1u32.to_be_bytes());
    assert_eq!(&b[38..42], &2u32.to_be_bytes());
    // Node 2's two workers get them in the other order: both open, once.
    let rx = ct();
    let (mut r1, mut r2) = (rx.clone(), rx.clone());
    assert_eq!(run(&t2, UPLINK, &b, &mut r1).0, Verdict::Forward(POD_PORT));
    assert_eq!(run(&t2, UPLINK, &a, &mut r2).0, Verdict::Forward(POD_PORT));
    assert_eq!(
        run(&t2, UPLINK, &a, &mut r1).0,
        Verdict::Drop(DropReason::EspReplay)
    );
}

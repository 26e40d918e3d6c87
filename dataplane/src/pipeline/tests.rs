use super::*;
use crate::checksum;
use crate::stats::WorkerStats;
use crate::tables::{Gateway, MacAddr, Neighbor};
use crate::wire::ip::proto;
use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacket, EtherType, Icmpv4Type, NetHeaders, PacketBuilder,
    PacketHeaders, TransportHeader,
};
use std::net::Ipv4Addr;

const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const GW_IP: [u8; 4] = [10, 0, 0, 1];
const A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const A_IP: [u8; 4] = [10, 0, 0, 10];
const A_PORT: PortId = 1;
const B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const B_IP: [u8; 4] = [10, 0, 0, 11];
const B_PORT: PortId = 2;
const CAP: usize = 2048;

fn tables_in(mode: Mode) -> Tables {
    let mut t = Tables::new(
        1,
        mode,
        Gateway {
            mac: MacAddr(GW_MAC),
            ipv4: Ipv4Addr::from(GW_IP),
        },
    );
    t.add_route(
        Ipv4Addr::from(A_IP),
        Neighbor {
            port: A_PORT,
            mac: MacAddr(A_MAC),
        },
    )
    .unwrap();
    t.add_route(
        Ipv4Addr::from(B_IP),
        Neighbor {
            port: B_PORT,
            mac: MacAddr(B_MAC),
        },
    )
    .unwrap();
    t
}

fn tables() -> Tables {
    tables_in(Mode::Passthrough)
}

fn test_ct() -> Conntrack {
    Conntrack::new(&crate::conntrack::CtConfig {
        capacity: 1024,
        ..Default::default()
    })
}

/// The counters a worker moves for `o` when every queue has room: exactly one verdict
/// counter, plus the side counters (`icmp_errors_sent`, `checksum_completed`).
fn tally(o: &Outcome) -> WorkerStats {
    let s = WorkerStats::default();
    match o.verdict {
        Verdict::Forward(_) => s.forwarded.inc(),
        Verdict::IcmpError(_) => {
            s.drop(DropReason::TtlExceeded);
            s.icmp_errors_sent.inc();
        }
        Verdict::TooBig(_) => {
            s.drop(DropReason::EspTooBig);
            s.icmp_errors_sent.inc();
        }
        Verdict::Refused { reset, .. } => {
            s.drop(DropReason::NoServiceBackend);
            if reset {
                s.resets_sent.inc();
            } else {
                s.icmp_errors_sent.inc();
            }
        }
        Verdict::SlowPath => s.to_slowpath.inc(),
        Verdict::Drop(r) => s.drop(r),
    }
    if o.checksum_completed {
        s.checksum_completed.inc();
    }
    assert_eq!(verdict_counters(&s), 1);
    assert_eq!(
        o.drop_reason().is_some(),
        matches!(
            o.verdict,
            Verdict::Drop(_) | Verdict::IcmpError(_) | Verdict::Refused { .. }
        )
    );
    s
}

/// Runs `process` on a copy of `bytes` in a `CAP`-byte buffer; returns the verdict, the
/// resulting frame bytes and the counters a worker would move for it.
fn run_with(t: &Tables, bytes: &[u8]) -> (Verdict, Vec<u8>, WorkerStats) {
    let mut buf = vec![0u8; CAP.max(bytes.len())];
    buf[..bytes.len()].copy_from_slice(bytes);
    let mut f = Frame::new(&mut buf, bytes.len());
    let mut ct = test_ct();
    let o = process(123, A_PORT, &mut f, t, &mut ct);
    let out = f.data().to_vec();
    (o.verdict, out, tally(&o))
}

fn run(bytes: &[u8]) -> (Verdict, Vec<u8>, WorkerStats) {
    run_with(&tables(), bytes)
}

/// As [`run_with`], for a frame sent by B from B's port (its source MAC set to B's).
fn run_from_b(t: &Tables, bytes: &[u8]) -> (Verdict, Vec<u8>, WorkerStats) {
    let mut buf = vec![0u8; CAP.max(bytes.len())];
    buf[..bytes.len()].copy_from_slice(bytes);
    buf[6..12].copy_from_slice(&B_MAC);
    let mut f = Frame::new(&mut buf, bytes.len());
    let o = process(123, B_PORT, &mut f, t, &mut test_ct());
    let out = f.data().to_vec();
    (o.verdict, out, tally(&o))
}

fn verdict_counters(s: &WorkerStats) -> u64 {
    s.forwarded.get()
        + s.to_slowpath.get()
        + DropReason::ALL.iter().map(|&r| s.drops_of(r)).sum::<u64>()
}

fn icmp_echo(src: [u8; 4], dst: [u8; 4], ttl: u8, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(A_MAC, GW_MAC)
        .ipv4(src, dst, ttl)
        .icmpv4_echo_request(7, 9);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

fn udp(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(A_MAC, GW_MAC)
        .ipv4(src, dst, 64)
        .udp(4000, 53);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

fn tcp(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(A_MAC, GW_MAC)
        .ipv4(src, dst, 64)
        .tcp(40000, 80, 0x1234_5678, 64240)
        .ack(42)
        .psh();
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

fn arp(op: ArpOperation, target: [u8; 4]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(A_MAC, [0xff; 6]).arp(
        ArpPacket::new(
            ArpHardwareId::ETHERNET,
            EtherType::IPV4,
            op,
            &A_MAC,
            &A_IP,
            &[0; 6],
            &target,
        )
        .unwrap(),
    );
    let mut v = Vec::new();
    b.write(&mut v).unwrap();
    v
}

/// Recomputes the IPv4 header checksum of an Ethernet frame in place (after a test edit).
fn fix_ip_checksum(f: &mut [u8]) {
    let hl = usize::from(f[14] & 0xf) * 4;
    f[24] = 0;
    f[25] = 0;
    let c = checksum::checksum(&f[14..14 + hl]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

/// Overwrites the L4 checksum with the partial (pseudo-header only) value that TX checksum
/// offload leaves.
fn make_partial(f: &mut [u8], field: usize) {
    let hl = usize::from(f[14] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let src: [u8; 4] = f[26..30].try_into().unwrap();
    let dst: [u8; 4] = f[30..34].try_into().unwrap();
    let p = checksum::ipv4_pseudo_header(src, dst, f[23], (total - hl) as u16).fold();
    f[14 + hl + field..14 + hl + field + 2].copy_from_slice(&p.to_be_bytes());
}

fn ipv4_of(h: &PacketHeaders<'_>) -> etherparse::Ipv4Header {
    match &h.net {
        Some(NetHeaders::Ipv4(ip, _)) => ip.clone(),
        other => panic!("not IPv4: {other:?}"),
    }
}

#[test]
fn frame_clamps_lengths() {
    let mut b = [0u8; 10];
    let mut f = Frame::new(&mut b, 99);
    assert_eq!((f.len(), f.capacity()), (10, 10));
    f.set_len(3);
    assert_eq!(f.data().len(), 3);
    f.set_len(usize::MAX);
    assert_eq!(f.len(), 10);
    f.set_len(0);
    assert!(f.is_empty() && f.data_mut().is_empty());
}

#[test]
fn arp_for_gateway_goes_to_slow_path() {
    for op in [ArpOperation::REQUEST, ArpOperation::REPLY] {
        let (v, out, s) = run(&arp(op, GW_IP));
        assert_eq!(v, Verdict::SlowPath);
        assert_eq!(out, arp(op, GW_IP), "slow-path frames are not modified");
        assert_eq!(s.to_slowpath.get(), 1);
    }
    // Unicast to the gateway MAC too (ARP refresh).
    let mut f = arp(ArpOperation::REQUEST, GW_IP);
    f[..6].copy_from_slice(&GW_MAC);
    assert_eq!(run(&f).0, Verdict::SlowPath);
}

#[test]
fn arp_for_another_ip_and_malformed_arp() {
    let (v, _, s) = run(&arp(ArpOperation::REQUEST, B_IP));
    assert_eq!(v, Verdict::Drop(DropReason::ArpNotForGateway));
    assert_eq!(s.drops_of(DropReason::ArpNotForGateway), 1);

    let good = arp(ArpOperation::REQUEST, GW_IP);
    assert_eq!(
        run(&good[..14 + 27]).0,
        Verdict::Drop(DropReason::ArpMalformed)
    );
    for (at, val) in [(14, 9u8), (16, 0x86), (18, 8), (19, 16), (21, 3)] {
        let mut f = good.clone();
        f[at] = val;
        let (v, _, s) = run(&f);
        assert_eq!(v, Verdict::Drop(DropReason::ArpMalformed), "byte {at}");
        assert_eq!(s.drops_of(DropReason::ArpMalformed), 1);
    }
    // ARP sent to some other unicast MAC is not ours.
    let mut f = good.clone();
    f[..6].copy_from_slice(&B_MAC);
    assert_eq!(run(&f).0, Verdict::Drop(DropReason::NotForGateway));
}

#[test]
fn icmp_echo_between_pods_is_forwarded() {
    for mode in [Mode::Passthrough, Mode::Full] {
        let input = icmp_echo(A_IP, B_IP, 64, b"hello, pod");
        let (v, out, s) = run_with(&tables_in(mode), &input);
        assert_eq!(v, Verdict::Forward(B_PORT));
        assert_eq!(s.forwarded.get(), 1);
        assert_eq!(out.len(), input.len());
        let h = PacketHeaders::from_ethernet_slice(&out).unwrap();
        let e = h.link.clone().unwrap().ethernet2().unwrap();
        assert_eq!((e.source, e.destination), (GW_MAC, B_MAC));
        let ip = ipv4_of(&h);
        assert_eq!(ip.time_to_live, 63);
        assert_eq!(ip.header_checksum, ip.calc_header_checksum());
        assert_eq!((ip.source, ip.destination), (A_IP, B_IP));
        // Everything after the IP header is untouched.
        assert_eq!(out[34..], input[34..]);
        assert_eq!(out[12..22], input[12..22]);
    }
}

#[test]
fn ttl_decrement_checksum_is_right_for_every_ttl_and_checksum_corner() {
    for ttl in 2..=255u8 {
        for ident in [0u16, 1, 0x00ff, 0xbeef, 0xfffe, 0xffff] {
            let mut f = icmp_echo(A_IP, B_IP, ttl, b"x");
            f[18..20].copy_from_slice(&ident.to_be_bytes());
            fix_ip_checksum(&mut f);
            let (v, out, _) = run(&f);
            assert_eq!(v, Verdict::Forward(B_PORT));
            assert!(
                checksum::verify(&out[14..34]),
                "ttl {ttl} ident {ident:04x}"
            );
            assert_eq!(out[22], ttl - 1);
        }
    }
}

#[test]
fn packets_for_the_gateway_go_to_slow_path() {
    let input = icmp_echo(A_IP, GW_IP, 64, b"ping");
    let (v, out, s) = run(&input);
    assert_eq!(v, Verdict::SlowPath);
    assert_eq!(out, input, "TTL and MACs untouched");
    assert_eq!(s.to_slowpath.get(), 1);
    // Even with TTL 1: it is not transit.
    assert_eq!(
        run(&icmp_echo(A_IP, GW_IP, 1, b"ping")).0,
        Verdict::SlowPath
    );
}

/// Full-mode tables where A's egress is default-deny; `allow_host` adds a rule letting A
/// send ICMP to the `host` entity (the gateway's address maps to it, as the agent does).
fn tables_with_a_egress(allow_host: bool) -> Tables {
    use crate::policy::{PolicyTablesBuilder, RuleOrigin, Section, identity};
    let mut t = tables_in(Mode::Full);
    let mut b = PolicyTablesBuilder::new(1);
    b.add_endpoint(Ipv4Addr::from(A_IP), 300);
    b.add_endpoint(Ipv4Addr::from(B_IP), 301);
    b.add_address(Ipv4Addr::from(GW_IP), identity::HOST);
    let rule = b.add_origin(RuleOrigin {
        policy: "default/a-out".into(),
        spec: 0,
        section: Section::Egress,
        index: 0,
    });
    let p = b.endpoint_policy(300);
    p.egress.set_enforced(true);
    if allow_host {
        p.egress.add(identity::HOST, proto::ICMP, None, false, rule);
    }
    t.set_policy(b.build());
    t
}

#[test]
fn packets_for_the_gateway_pass_the_senders_egress_policy_in_full_mode() {
    let ping = icmp_echo(A_IP, GW_IP, 64, b"ping");
    // Egress default-deny without a rule for `host`: the gateway is not reachable.
    let (v, _, s) = run_with(&tables_with_a_egress(false), &ping);
    assert_eq!(v, Verdict::Drop(DropReason::PolicyDenied));
    assert_eq!(s.drops_of(DropReason::PolicyDenied), 1);
    assert_eq!(s.to_slowpath.get(), 0);
    // `toEntities: [host]` (ICMP): it is, and the verdict is the policy's.
    let t = tables_with_a_egress(true);
    let (v, out, s) = run_with(&t, &ping);
    assert_eq!(v, Verdict::SlowPath);
    assert_eq!(out, ping, "local delivery leaves the frame as it is");
    assert_eq!(s.to_slowpath.get(), 1);
    let mut f = ping.clone();
    f.resize(CAP, 0);
    let mut frame = Frame::new(&mut f, ping.len());
    let o = process(1, A_PORT, &mut frame, &t, &mut test_ct());
    assert_eq!(o.verdict, Verdict::SlowPath);
    assert!(o.policy.is_some_and(|pv| pv.allows()), "{o:?}");
    // ARP is not policed: A still resolves its gateway under default-deny egress.
    let (v, _, _) = run_with(
        &tables_with_a_egress(false),
        &arp(ArpOperation::REQUEST, GW_IP),
    );
    assert_eq!(v, Verdict::SlowPath);
    // Passthrough mode has no policy at all.
    let (v, _, _) = run_with(&tables_in(Mode::Passthrough), &ping);
    assert_eq!(v, Verdict::SlowPath);
    // B has no policy: its egress is open, the gateway included.
    let (v, _, _) = run_from_b(&t, &icmp_echo(B_IP, GW_IP, 64, b"ping"));
    assert_eq!(v, Verdict::SlowPath);
}

/// A pod is only itself: a source IP or MAC that is not the endpoint's behind the port the
/// frame arrived on is dropped before anything else judges it, and so is an ARP frame whose
/// sender is not.
#[test]
fn frames_claiming_another_source_than_their_port_s_endpoint_are_dropped() {
    // B's address from A's port (the forged "reply" that would open a connection-tracking
    // entry in B's name), in either mode.
    for t in [tables(), tables_in(Mode::Full)] {
        let (v, _, s) = run_with(&t, &udp(B_IP, A_IP, b"forged"));
        assert_eq!(v, Verdict::Drop(DropReason::InvalidSourceIp));
        assert_eq!(s.drops_of(DropReason::InvalidSourceIp), 1);
    }
    // The gateway's address, and an address no endpoint has.
    let (v, _, _) = run(&udp(GW_IP, B_IP, b"forged"));
    assert_eq!(v, Verdict::Drop(DropReason::InvalidSourceIp));
    let (v, _, _) = run(&udp([10, 0, 0, 99], B_IP, b"forged"));
    assert_eq!(v, Verdict::Drop(DropReason::InvalidSourceIp));
    // A's own address with another MAC.
    let mut f = udp(A_IP, B_IP, b"forged mac");
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x66]);
    let (v, _, s) = run(&f);
    assert_eq!(v, Verdict::Drop(DropReason::InvalidSourceMac));
    assert_eq!(s.drops_of(DropReason::InvalidSourceMac), 1);
    // A's own address and MAC from B's port.
    let (v, _, _) = run_from_b(&tables(), &udp(A_IP, B_IP, b"wrong port"));
    assert_eq!(v, Verdict::Drop(DropReason::InvalidSourceIp));
    // ARP: a sender that is not A, a sender MAC that is not the Ethernet source.
    let mut a = arp(ArpOperation::REQUEST, GW_IP);
    a[28..32].copy_from_slice(&B_IP);
    let (v, _, s) = run(&a);
    assert_eq!(v, Verdict::Drop(DropReason::ArpSpoofed));
    assert_eq!(s.drops_of(DropReason::ArpSpoofed), 1);
    let mut a = arp(ArpOperation::REQUEST, GW_IP);
    a[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x66]);
    let (v, _, _) = run(&a);
    assert_eq!(v, Verdict::Drop(DropReason::ArpSpoofed));
    // A itself passes.
    let (v, _, _) = run(&arp(ArpOperation::REQUEST, GW_IP));
    assert_eq!(v, Verdict::SlowPath);
    let (v, _, _) = run(&udp(A_IP, B_IP, b"genuine"));
    assert_eq!(v, Verdict::Forward(B_PORT));
}

#[test]
fn unknown_destination_is_no_route() {
    let (v, _, s) = run(&icmp_echo(A_IP, [192, 168, 1, 1], 64, b""));
    assert_eq!(v, Verdict::Drop(DropReason::NoRoute));
    assert_eq!(s.drops_of(DropReason::NoRoute), 1);
}

fn check_time_exceeded(input: &[u8], out: &[u8]) {
    let h = PacketHeaders::from_ethernet_slice(out).unwrap();
    let e = h.link.clone().unwrap().ethernet2().unwrap();
    assert_eq!(
        (e.source, e.destination, e.ether_type),
        (GW_MAC, A_MAC, EtherType::IPV4)
    );
    let ip = ipv4_of(&h);
    assert_eq!(
        (ip.source, ip.destination, ip.time_to_live),
        (GW_IP, A_IP, 64)
    );
    assert_eq!(ip.protocol, etherparse::IpNumber::ICMP);
    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
    assert!(ip.options.is_empty());
    let Some(TransportHeader::Icmpv4(icmp)) = &h.transport else {
        panic!("not ICMP: {:?}", h.transport);
    };
    assert_eq!(
        icmp.icmp_type,
        Icmpv4Type::TimeExceeded(etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit)
    );
    let quote = h.payload.slice();
    let in_hl = usize::from(input[14] & 0xf) * 4;
    let in_total = usize::from(u16::from_be_bytes([input[16], input[17]]));
    let want_quote = &input[14..14 + in_hl + (in_total - in_hl).min(8)];
    assert_eq!(quote, want_quote, "original header + 8 bytes, as received");
    let recomputed = etherparse::Icmpv4Header::with_checksum(icmp.icmp_type.clone(), quote);
    assert_eq!(icmp.checksum, recomputed.checksum);
    assert_eq!(out.len(), 14 + 20 + 8 + want_quote.len());
    assert_eq!(usize::from(ip.total_len), out.len() - 14);
    // The exact bytes of the headers we wrote.
    assert_eq!(
        &out[14..24],
        &[0x45, 0xc0, 0, (out.len() - 14) as u8, 0, 0, 0, 0, 64, 1]
    );
    assert_eq!(&out[34..42], &[11, 0, out[36], out[37], 0, 0, 0, 0]);
}

#[test]
fn ttl_one_and_zero_are_answered_with_time_exceeded() {
    for ttl in [0u8, 1] {
        let input = icmp_echo(A_IP, B_IP, ttl, b"0123456789abcdef");
        let (v, out, s) = run(&input);
        assert_eq!(v, Verdict::IcmpError(A_PORT), "back to the source's port");
        assert_eq!(s.drops_of(DropReason::TtlExceeded), 1);
        assert_eq!(s.icmp_errors_sent.get(), 1);
        assert_eq!(s.forwarded.get(), 0);
        check_time_exceeded(&input, &out);
    }
    // A short payload (fewer than 8 bytes) is quoted whole; UDP with options-free header.
    let mut input = udp(A_IP, B_IP, b"abc");
    input[22] = 1;
    fix_ip_checksum(&mut input);
    let (v, out, _) = run(&input);
    assert_eq!(v, Verdict::IcmpError(A_PORT));
    check_time_exceeded(&input, &out);
    // With IP options (IHL 6), and Ethernet padding after the datagram.
    let mut input = icmp_echo(A_IP, B_IP, 1, b"payload!payload!");
    input.splice(34..34, [1, 1, 1, 0]); // NOP NOP NOP EOL
    input[14] = 0x46;
    let total = u16::from_be_bytes([input[16], input[17]]) + 4;
    input[16..18].copy_from_slice(&total.to_be_bytes());
    fix_ip_checksum(&mut input);
    input.extend_from_slice(&[0; 10]);
    let (v, out, _) = run(&input);
    assert_eq!(v, Verdict::IcmpError(A_PORT));
    check_time_exceeded(&input, &out);
}

#[test]
fn no_icmp_error_about_icmp_errors_fragments_or_unroutable_sources() {
    // An ICMP error (itself a time exceeded) with TTL 1: dropped, not answered.
    let b = PacketBuilder::ethernet2(A_MAC, GW_MAC)
        .ipv4(A_IP, B_IP, 1)
        .icmpv4(Icmpv4Type::TimeExceeded(
            etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit,
        ));
    let mut input = Vec::new();
    b.write(&mut input, &[0x45; 28]).unwrap();
    let (v, _, s) = run(&input);
    assert_eq!(v, Verdict::Drop(DropReason::TtlExceeded));
    assert_eq!(s.icmp_errors_sent.get(), 0);
    // A non-initial fragment.
    let mut input = udp(A_IP, B_IP, b"fragment");
    input[22] = 1;
    input[20..22].copy_from_slice(&100u16.to_be_bytes());
    fix_ip_checksum(&mut input);
    let (v, _, s) = run(&input);
    assert_eq!(v, Verdict::Drop(DropReason::TtlExceeded));
    assert_eq!(s.icmp_errors_sent.get(), 0);
    // An unroutable source is not A's: refused at ingress, before routing could answer it.
    let (v, _, s) = run(&icmp_echo([10, 9, 9, 9], B_IP, 1, b""));
    assert_eq!(v, Verdict::Drop(DropReason::InvalidSourceIp));
    assert_eq!(s.icmp_errors_sent.get(), 0);
    assert_eq!(s.drops_of(DropReason::TtlExceeded), 0);
    // No room in the buffer for the answer.
    let input = icmp_echo(A_IP, B_IP, 1, b"");
    let mut buf = input.clone();
    let mut f = Frame::new(&mut buf, input.len());
    assert_eq!(
        process(0, A_PORT, &mut f, &tables(), &mut test_ct()).verdict,
        Verdict::Drop(DropReason::IcmpNoRoom)
    );
}

#[test]
fn malformed_frames_are_dropped_with_their_own_reason() {
    let good = icmp_echo(A_IP, B_IP, 64, b"0123456789");
    let cases: Vec<(&str, Vec<u8>, DropReason)> = vec![
        ("zero length", vec![], DropReason::ZeroLength),
        (
            "truncated ethernet",
            good[..13].to_vec(),
            DropReason::EthTruncated,
        ),
        (
            "ethernet only",
            good[..14].to_vec(),
            DropReason::Ipv4Truncated,
        ),
        (
            "truncated ip header",
            good[..14 + 19].to_vec(),
            DropReason::Ipv4Truncated,
        ),
        (
            "ihl < 5",
            {
                let mut f = good.clone();
                f[14] = 0x44;
                fix_ip_checksum(&mut f);
                f
            },
            DropReason::Ipv4BadIhl,
        ),
        (
            "ihl 0",
            {
                let mut f = good.clone();
                f[14] = 0x40;
                f
            },
            DropReason::Ipv4BadIhl,
        ),
        (
            "ihl beyond frame",
            {
                let mut f = good[..14 + 24].to_vec();
                f[14] = 0x47;
                f
            },
            DropReason::Ipv4BadIhl,
        ),
        (
            "version 6 in ipv4",
            {
                let mut f = good.clone();
                f[14] = 0x65;
                f
            },
            DropReason::Ipv4BadVersion,
        ),
        (
            "total length beyond frame",
            {
                let mut f = good.clone();
                f[17] += 1;
                fix_ip_checksum(&mut f);
                f
            },
            DropReason::Ipv4BadTotalLength,
        ),
        (
            "total length below header",
            {
                let mut f = good.clone();
                f[16] = 0;
                f[17] = 19;
                fix_ip_checksum(&mut f);
                f
            },
            DropReason::Ipv4BadTotalLength,
        ),
        (
            "bad header checksum",
            {
                let mut f = good.clone();
                f[24] ^= 1;
                f
            },
            DropReason::Ipv4BadChecksum,
        ),
        (
            "other unicast mac",
            {
                let mut f = good.clone();
                f[..6].copy_from_slice(&B_MAC);
                f
            },
            DropReason::NotForGateway,
        ),
        (
            "ipv4 to broadcast mac",
            {
                let mut f = good.clone();
                f[..6].copy_from_slice(&[0xff; 6]);
                f
            },
            DropReason::NotForGateway,
        ),
        (
            "vlan tag",
            {
                let mut f = good.clone();
                f[12..14].copy_from_slice(&[0x81, 0]);
                f
            },
            DropReason::UnsupportedEthertype,
        ),
        (
            "unknown ethertype",
            {
                let mut f = good.clone();
                f[12..14].copy_from_slice(&[0x88, 0xb5]);
                f
            },
            DropReason::UnsupportedEthertype,
        ),
    ];
    for (name, f, want) in cases {
        let (v, _, s) = run(&f);
        assert_eq!(v, Verdict::Drop(want), "{name}");
        assert_eq!(s.drops_of(want), 1, "{name}");
    }
    // Trailing Ethernet padding beyond the total length is fine and kept.
    let mut padded = icmp_echo(A_IP, B_IP, 64, b"");
    padded.resize(60, 0);
    let (v, out, _) = run(&padded);
    assert_eq!((v, out.len()), (Verdict::Forward(B_PORT), 60));
}

#[test]
fn ipv6_is_counted_as_unsupported() {
    let b = PacketBuilder::ethernet2(A_MAC, GW_MAC)
        .ipv6([0xfd; 16], [0xfe; 16], 64)
        .udp(1, 2);
    let mut f = Vec::new();
    b.write(&mut f, b"v6").unwrap();
    let (v, _, s) = run(&f);
    assert_eq!(v, Verdict::Drop(DropReason::Ipv6Unsupported));
    assert_eq!(s.drops_of(DropReason::Ipv6Unsupported), 1);
    // Neighbour discovery to a multicast MAC too.
    f[..6].copy_from_slice(&[0x33, 0x33, 0xff, 0, 0, 1]);
    assert_eq!(run(&f).0, Verdict::Drop(DropReason::Ipv6Unsupported));
}

fn l4_checksum_ok(out: &[u8]) -> bool {
    let h = PacketHeaders::from_ethernet_slice(out).unwrap();
    let ip = ipv4_of(&h);
    let payload = h.payload.slice();
    match &h.transport {
        Some(TransportHeader::Udp(u)) => u.checksum == u.calc_checksum_ipv4(&ip, payload).unwrap(),
        Some(TransportHeader::Tcp(t)) => t.checksum == t.calc_checksum_ipv4(&ip, payload).unwrap(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn partial_checksums_are_completed_and_correct_ones_left_alone() {
    let payloads: [&[u8]; 4] = [b"", b"x", b"odd length payload!", &[0xa5; 1400]];
    for p in payloads {
        for (mut f, field) in [(tcp(A_IP, B_IP, p), 16), (udp(A_IP, B_IP, p), 6)] {
            let correct = f.clone();
            assert!(l4_checksum_ok(&correct));
            // Correct checksum: untouched, not counted.
            let (v, out, s) = run(&correct);
            assert_eq!(v, Verdict::Forward(B_PORT));
            assert_eq!(out[34..], correct[34..]);
            assert_eq!(s.checksum_completed.get(), 0);
            // Partial checksum: completed to what etherparse computes.
            make_partial(&mut f, field);
            assert!(!l4_checksum_ok(&f));
            let (v, out, s) = run(&f);
            assert_eq!(v, Verdict::Forward(B_PORT));
            assert!(l4_checksum_ok(&out), "len {}", p.len());
            assert_eq!(out[34..], correct[34..]);
            assert_eq!(s.checksum_completed.get(), 1);
            // Also on the way to the slow path (smoltcp verifies checksums).
            let mut g = if field == 16 {
                tcp(A_IP, GW_IP, p)
            } else {
                udp(A_IP, GW_IP, p)
            };
            make_partial(&mut g, field);
            let (v, out, s) = run(&g);
            assert_eq!(v, Verdict::SlowPath);
            assert!(l4_checksum_ok(&out));
            assert_eq!(s.checksum_completed.get(), 1);
        }
    }
    // UDP without checksum (0) stays 0.
    let mut f = udp(A_IP, B_IP, b"no checksum");
    f[40] = 0;
    f[41] = 0;
    let (_, out, s) = run(&f);
    assert_eq!(&out[40..42], &[0, 0]);
    assert_eq!(s.checksum_completed.get(), 0);
}

#[test]
fn tcp_header_rejected_by_etherparse_is_forwarded_without_completion() {
    // Data offset 4 (< 5): `TcpHeaderSlice` rejects the header, so the partial checksum is
    // left as it is; the packet is still routed.
    let mut f = tcp(A_IP, B_IP, b"bad offset");
    make_partial(&mut f, 16);
    f[46] = 0x40 | (f[46] & 0x0f);
    let (v, out, s) = run(&f);
    assert_eq!(v, Verdict::Forward(B_PORT));
    assert_eq!(out[34..], f[34..]);
    assert_eq!(s.checksum_completed.get(), 0);
}

#[test]
fn completed_udp_checksum_of_zero_is_sent_as_ffff() {
    // Search payloads for one whose true checksum computes to 0 (sent as 0xFFFF).
    for x in 0..=u16::MAX {
        let mut f = udp(A_IP, B_IP, &x.to_be_bytes());
        let field = u16::from_be_bytes([f[40], f[41]]);
        if field != 0xffff {
            continue;
        }
        make_partial(&mut f, 6);
        let (_, out, s) = run(&f);
        assert_eq!(&out[40..42], &[0xff, 0xff]);
        assert_eq!(s.checksum_completed.get(), 1);
        assert!(l4_checksum_ok(&out));
        return;
    }
    panic!("no payload with a zero UDP checksum found");
}

/// A tiny deterministic RNG (no dependency).
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_and_mutated_frames_never_panic_and_get_one_verdict_each() {
    let t = tables();
    let (mut icmp_errors, mut completed) = (0u64, 0u64);
    let mut ct = test_ct();
    let mut r = XorShift(0x9e37_79b9_7f4a_7c15);
    let seeds: Vec<Vec<u8>> = vec![
        icmp_echo(A_IP, B_IP, 64, b"0123456789"),
        icmp_echo(A_IP, B_IP, 1, b"0123456789"),
        icmp_echo(A_IP, GW_IP, 64, b"ping"),
        tcp(A_IP, B_IP, &[7; 300]),
        udp(A_IP, B_IP, b"dns?"),
        {
            let mut f = udp(A_IP, B_IP, b"partial");
            make_partial(&mut f, 6);
            f
        },
        {
            let mut f = tcp(A_IP, B_IP, b"partial");
            make_partial(&mut f, 16);
            f
        },
        arp(ArpOperation::REQUEST, GW_IP),
    ];
    let mut buf = vec![0u8; 512];
    let n = 300_000;
    let mut verdicts = [0u64; 4];
    for i in 0..n {
        let len;
        if i % 4 == 0 {
            // Pure noise, sometimes with plausible MAC/ethertype.
            len = r.below(120);
            for b in &mut buf[..len] {
                *b = r.next() as u8;
            }
            if len >= 14 && r.below(2) == 0 {
                buf[..6].copy_from_slice(&GW_MAC);
                buf[12..14].copy_from_slice(&[0x08, [0x00, 0x06][r.below(2)]]);
                if len > 14 && r.below(2) == 0 {
                    buf[14] = 0x45;
                }
            }
        } else {
            // A valid frame with a few bytes flipped, truncated or extended.
            let s = &seeds[r.below(seeds.len())];
            buf[..s.len()].copy_from_slice(s);
            len = match r.below(4) {
                0 => r.below(s.len() + 1),
                1 => (s.len() + r.below(16)).min(buf.len()),
                _ => s.len(),
            };
            for _ in 0..r.below(4) {
                let at = r.below(s.len().min(60));
                buf[at] = r.next() as u8;
            }
            if r.below(3) == 0 && len >= 34 {
                // Keep the header checksum valid so deeper stages are reached.
                let hl = usize::from(buf[14] & 0xf) * 4;
                if (20..=60).contains(&hl) && 14 + hl <= len {
                    buf[24] = 0;
                    buf[25] = 0;
                    let c = checksum::checksum(&buf[14..14 + hl]);
                    buf[24..26].copy_from_slice(&c.to_be_bytes());
                }
            }
        }
        // Vary the capacity too (the ICMP error needs room).
        let cap = (len + r.below(64)).min(buf.len());
        let mut f = Frame::new(&mut buf[..cap], len);
        let o = process(i, A_PORT, &mut f, &t, &mut ct);
        let s = tally(&o);
        assert!(f.len() <= cap);
        verdicts[match o.verdict {
            Verdict::Forward(_) => 0,
            Verdict::IcmpError(_) | Verdict::TooBig(_) | Verdict::Refused { .. } => 1,
            Verdict::SlowPath => 2,
            Verdict::Drop(_) => 3,
        }] += 1;
        icmp_errors += s.icmp_errors_sent.get();
        completed += s.checksum_completed.get();
    }
    assert_eq!(verdicts.iter().sum::<u64>(), n);
    // The mix reached every kind of verdict.
    assert!(verdicts.iter().all(|&c| c > 1000), "{verdicts:?}");
    assert!(icmp_errors > 0 && completed > 0);
}

#[test]
fn snapshot_serializes() {
    let (_, _, s) = run(&icmp_echo(A_IP, B_IP, 64, b""));
    let snap = s.snapshot();
    assert_eq!(snap.forwarded, 1);
    let _ = format!("{snap:?}");
}

#[test]
fn meta_is_small_enough_to_keep_a_batch_of() {
    // A worker keeps one per frame of a batch; ARCHITECTURE.md states the size.
    assert_eq!(std::mem::size_of::<Meta>(), 44);
    assert!(std::mem::size_of::<Result<Parsed, DropReason>>() <= 46);
}

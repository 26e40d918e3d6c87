//! Fuzzes `xylem_dataplane::pipeline::process` with arbitrary frames against fixed tables.
//!
//! Input layout:
//! - byte 0: the buffer's spare capacity (low 7 bits: 0..=127 bytes beyond the frame, so the "no
//!   room for the ICMP error" path is reached) and the mode (high bit: full, else passthrough);
//! - byte 1: bit 0 repairs the IPv4 header checksum before processing (random bytes almost never
//!   carry a valid one, and without a repair the fuzzer stops at stage 3); bit 1 uses tables
//!   with an enforced policy (full mode only); bit 2 processes the frame a second time with the
//!   same conntrack (the established-flow path); bits 3 to 5 are the port the frame arrives on
//!   (0 to 7: the port of pod 10.0.0.2 + n), which the ingress checks hold it to; bit 6 first
//!   processes the frame's mirror (addresses, ports and MACs swapped, from the other pod's
//!   port), so that the frame itself is a reply (a DNS answer reaches the DNS stage so);
//! - the rest is the frame, starting at the Ethernet header.
//!
//! In full mode the tables have services: 10.96.0.10 TCP 80 → 10.0.0.6 and 10.0.0.7 port 8080,
//! UDP 53 → 10.0.0.8 port 5353, and 10.96.0.11 TCP 80 with no backend (refused). With the
//! enforced policy, 10.0.0.9's DNS to 10.0.0.8 (ports 53 and 5353, UDP and TCP) is inspected
//! (`*.domain.com` and `example.net` allowed) and its `toFQDNs` rule allows TCP 80 to the
//! addresses of `*.domain.com`.
//!
//! Checks, beyond "does not panic": parsing the frame alone (the worker's prefetch pass) and
//! `process` agree on whether it is dropped at parse, the frame stays within its buffer, and
//! every frame sent on (`Verdict::Forward`, `Verdict::IcmpError`, `Verdict::Refused`) carries a
//! valid IPv4 header checksum and the gateway's source MAC.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use xylem_dataplane::checksum;
use xylem_dataplane::conntrack::{Conntrack, CtConfig};
use xylem_dataplane::dns::{DnsRule, FqdnScope, NameSelector};
use xylem_dataplane::pipeline::{Frame, Verdict, parse, process};
use xylem_dataplane::policy::{
    PROTO_ANY, PolicyTables, PolicyTablesBuilder, RuleOrigin, Section, identity,
};
use xylem_dataplane::services::{Algorithm, Backend, Frontend, ServiceTables};
use xylem_dataplane::tables::{Gateway, MacAddr, Mode, Neighbor, Tables};

const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn table(mode: Mode, policy: Option<PolicyTables>) -> Tables {
    let mut t = Tables::new(
        1,
        mode,
        Gateway {
            // Seeds are easiest to write with these: gateway 02:00:00:00:00:01 / 10.0.0.1,
            // pods 10.0.0.2..=10.0.0.9 behind ports 0..=7.
            mac: MacAddr([0x02, 0, 0, 0, 0, 0x01]),
            ipv4: GATEWAY_IP,
        },
    );
    for i in 2..10u8 {
        t.add_route(
            Ipv4Addr::new(10, 0, 0, i),
            Neighbor {
                port: u16::from(i - 2),
                mac: MacAddr([0x02, 0, 0, 0, 0, i]),
            },
        )
        .expect("distinct routes");
    }
    if let Some(p) = policy {
        t.set_policy(p);
    }
    if mode == Mode::Full {
        t.set_services(Arc::new(services()));
    }
    t
}

/// The services of the module documentation.
fn services() -> ServiceTables {
    let mut s = ServiceTables::new(Algorithm::Maglev);
    let vip = |last, port| SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, last), port);
    let mut id = 0;
    for (frontend_id, (frontend, proto, pods, target)) in (1..).zip([
        (vip(10, 80), 6, &[6u8, 7][..], 8080),
        (vip(10, 53), 17, &[8][..], 5353),
        (vip(11, 80), 6, &[][..], 8080),
    ]) {
        let backends: Vec<Backend> = pods
            .iter()
            .map(|&p| {
                id += 1;
                Backend {
                    id,
                    addr: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, p), target),
                }
            })
            .collect();
        for b in &backends {
            s.add_backend(b.id, b.addr).expect("backend");
        }
        let weighted: Vec<_> = backends.iter().map(|&b| (b, 1)).collect();
        s.add_frontend(
            Frontend::with_table(frontend_id, frontend, proto, 0, &weighted, 251).expect("maglev"),
        )
        .expect("frontend");
    }
    s
}

/// Pods 10.0.0.2..=9 with identities 302..=309; the gateway is `host`; 192.168.0.0/16 is a
/// CIDR identity. 10.0.0.2's ingress allows TCP 80 from 10.0.0.3, UDP 1000-2000 from anyone,
/// and denies everything from 10.0.0.4; 10.0.0.5's egress allows ICMP to the host and anything
/// to the CIDR, and denies TCP 22 to anyone.
fn policy() -> PolicyTables {
    let mut b = PolicyTablesBuilder::new(1);
    for i in 2..10u8 {
        b.add_endpoint(Ipv4Addr::new(10, 0, 0, i), 300 + u32::from(i));
    }
    b.add_address(GATEWAY_IP, identity::HOST);
    b.add_cidr(Ipv4Addr::new(192, 168, 0, 0), 16, identity::FIRST_CIDR);
    let origin = |section, index| RuleOrigin {
        policy: "default/fuzz".into(),
        spec: 0,
        section,
        index,
    };
    let (in0, in1, in2) = (
        b.add_origin(origin(Section::Ingress, 0)),
        b.add_origin(origin(Section::Ingress, 1)),
        b.add_origin(origin(Section::IngressDeny, 0)),
    );
    let (out0, out1, out2) = (
        b.add_origin(origin(Section::Egress, 0)),
        b.add_origin(origin(Section::Egress, 1)),
        b.add_origin(origin(Section::EgressDeny, 0)),
    );
    let p = b.endpoint_policy(302);
    p.ingress.set_enforced(true);
    p.ingress.add(303, 6, Some((80, 80)), false, in0);
    p.ingress
        .add(identity::ANY, 17, Some((1000, 2000)), false, in1);
    p.ingress.add(304, 0, None, true, in2);
    let p = b.endpoint_policy(305);
    p.egress.set_enforced(true);
    p.egress.add(identity::HOST, 1, None, false, out0);
    p.egress.add(identity::FIRST_CIDR, 0, None, false, out1);
    p.egress.add(identity::ANY, 6, Some((22, 22)), true, out2);
    dns_policy(
        &mut b,
        origin(Section::Egress, 2),
        origin(Section::Egress, 3),
    );
    b.build()
}

/// 10.0.0.9's DNS rules and `toFQDNs` rule (see the module documentation).
fn dns_policy(b: &mut PolicyTablesBuilder, dns: RuleOrigin, fqdn: RuleOrigin) {
    let (dns, fqdn) = (b.add_origin(dns), b.add_origin(fqdn));
    let p = b.endpoint_policy(309);
    p.egress.set_enforced(true);
    p.egress
        .add(identity::FIRST_FQDN, 6, Some((80, 80)), false, fqdn);
    let selectors: Arc<[NameSelector]> = Arc::from([
        NameSelector::pattern("*.domain.com").expect("pattern"),
        NameSelector::name("example.net").expect("name"),
    ]);
    for port in [53, 5353] {
        b.endpoint_policy(309)
            .egress
            .add(308, PROTO_ANY, Some((port, port)), false, dns);
        b.add_dns_rule(
            309,
            DnsRule {
                peer: 308,
                proto: PROTO_ANY,
                ports: (port, port),
                selectors: Arc::clone(&selectors),
                rule: dns,
            },
        );
    }
    b.add_fqdn_scope(
        Ipv4Addr::new(10, 0, 0, 9),
        FqdnScope {
            scope: 1,
            peer: identity::FIRST_FQDN,
            selector: NameSelector::pattern("*.domain.com").expect("pattern"),
        },
    );
}

fn tables(full: bool, enforced: bool) -> &'static Tables {
    static PASSTHROUGH: OnceLock<Tables> = OnceLock::new();
    static FULL: OnceLock<Tables> = OnceLock::new();
    static ENFORCED: OnceLock<Tables> = OnceLock::new();
    match (full, enforced) {
        (false, _) => PASSTHROUGH.get_or_init(|| table(Mode::Passthrough, None)),
        (true, false) => FULL.get_or_init(|| table(Mode::Full, None)),
        (true, true) => ENFORCED.get_or_init(|| table(Mode::Full, Some(policy()))),
    }
}

/// Rewrites the IPv4 header checksum of an Ethernet/IPv4 frame whose IHL fits in it.
fn repair_ipv4_checksum(frame: &mut [u8]) {
    if frame.get(12..14) != Some(&[0x08, 0x00][..]) {
        return;
    }
    let Some(&vihl) = frame.get(14) else { return };
    let ihl = usize::from(vihl & 0x0f) * 4;
    if ihl < 20 || frame.len() < 14 + ihl {
        return;
    }
    frame[24] = 0;
    frame[25] = 0;
    let sum = checksum::checksum(&frame[14..14 + ihl]);
    frame[24..26].copy_from_slice(&sum.to_be_bytes());
}

/// The frame's mirror: Ethernet, IPv4 and TCP/UDP source and destination swapped (the source
/// MAC the new sender's), or `None` if it is not an IPv4 frame from one of the pods.
fn mirror(frame: &[u8]) -> Option<(Vec<u8>, u16)> {
    let mut m = frame.to_vec();
    if m.get(12..14) != Some(&[0x08, 0x00][..]) || m.len() < 34 {
        return None;
    }
    let ihl = usize::from(m[14] & 0x0f) * 4;
    let (src, dst) = ((26, 30), (30, 34));
    let (a, b) = (m[src.0..src.1].to_vec(), m[dst.0..dst.1].to_vec());
    m[src.0..src.1].copy_from_slice(&b);
    m[dst.0..dst.1].copy_from_slice(&a);
    let last = b[3];
    if b[..3] != [10, 0, 0] || !(2..10).contains(&last) {
        return None;
    }
    m[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    m[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, last]);
    if matches!(m[23], 6 | 17) && m.len() >= 14 + ihl + 4 {
        let l4 = 14 + ihl;
        let (sp, dp) = (m[l4..l4 + 2].to_vec(), m[l4 + 2..l4 + 4].to_vec());
        m[l4..l4 + 2].copy_from_slice(&dp);
        m[l4 + 2..l4 + 4].copy_from_slice(&sp);
    }
    repair_ipv4_checksum(&mut m);
    Some((m, u16::from(last - 2)))
}

fn run_once(frame: &[u8], spare: usize, ingress: u16, t: &Tables, ct: &mut Conntrack) {
    let mut buf = vec![0u8; frame.len() + spare];
    buf[..frame.len()].copy_from_slice(frame);
    let capacity = buf.len();
    let parsed = parse(frame, t.gateway());
    let mut f = Frame::new(&mut buf, frame.len());
    let o = process(0, ingress, &mut f, t, ct);
    if let Err(r) = parsed {
        assert_eq!(o.verdict, Verdict::Drop(r));
    }
    assert!(f.len() <= capacity);
    match o.verdict {
        Verdict::Forward(port)
        | Verdict::IcmpError(port)
        | Verdict::TooBig(port)
        | Verdict::Refused { port, .. } => {
            assert!(port < 8);
            let out = f.data();
            assert!(out.len() >= 34);
            let ihl = usize::from(out[14] & 0x0f) * 4;
            assert!(
                checksum::verify(&out[14..14 + ihl]),
                "forwarded a bad IPv4 header"
            );
            assert_eq!(&out[6..12], &t.gateway().mac.0);
        }
        Verdict::SlowPath => assert!(parsed.is_ok()),
        Verdict::Drop(r) => assert_eq!(o.drop_reason(), Some(r)),
    }
}

fuzz_target!(|data: &[u8]| {
    let [control, flags, frame @ ..] = data else {
        return;
    };
    let spare = usize::from(control & 0x7f);
    let ingress = u16::from((flags >> 3) & 0x07);
    let t = tables(control & 0x80 != 0, flags & 0x02 != 0);
    let mut frame = frame.to_vec();
    if flags & 0x01 != 0 {
        repair_ipv4_checksum(&mut frame);
    }
    let mut ct = Conntrack::new(&CtConfig {
        capacity: 64,
        ..Default::default()
    });
    if flags & 0x40 != 0
        && let Some((m, from)) = mirror(&frame)
    {
        run_once(&m, spare, from, t, &mut ct);
    }
    run_once(&frame, spare, ingress, t, &mut ct);
    if flags & 0x04 != 0 {
        run_once(&frame, spare, ingress, t, &mut ct);
    }
});

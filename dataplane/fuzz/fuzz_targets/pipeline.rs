//! Fuzzes `xylem_dataplane::pipeline::process` with arbitrary frames against fixed tables.
//!
//! Input layout:
//! - byte 0: the buffer's spare capacity (low 7 bits: 0..=127 bytes beyond the frame, so the "no
//!   room for the ICMP error" path is reached) and the mode (high bit: full, else passthrough);
//! - byte 1: bit 0 repairs the IPv4 header checksum before processing (random bytes almost never
//!   carry a valid one, and without a repair the fuzzer stops at stage 3); bit 1 uses tables
//!   with an enforced policy (full mode only); bit 2 processes the frame a second time with the
//!   same conntrack (the established-flow path); bits 3 to 5 are the port the frame arrives on
//!   (0 to 7: the port of pod 10.0.0.2 + n), which the ingress checks hold it to;
//! - the rest is the frame, starting at the Ethernet header.
//!
//! In full mode the tables have services: 10.96.0.10 TCP 80 → 10.0.0.6 and 10.0.0.7 port 8080,
//! UDP 53 → 10.0.0.8 port 5353, and 10.96.0.11 TCP 80 with no backend (refused).
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
use xylem_dataplane::pipeline::{Frame, Verdict, parse, process};
use xylem_dataplane::policy::{PolicyTables, PolicyTablesBuilder, RuleOrigin, Section, identity};
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
    b.build()
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
        Verdict::Forward(port) | Verdict::IcmpError(port) | Verdict::Refused { port, .. } => {
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
    run_once(&frame, spare, ingress, t, &mut ct);
    if flags & 0x04 != 0 {
        run_once(&frame, spare, ingress, t, &mut ct);
    }
});

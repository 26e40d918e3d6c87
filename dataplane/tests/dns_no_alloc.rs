//! The DNS stage allocates nothing per packet: a counting global allocator around `process`
//! for an inspected query, its answer (addresses learned, records logged) and a refused query,
//! over TCP and UDP, after one warm-up round.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use etherparse::PacketBuilder;
use xylem_dataplane::conntrack::{Conntrack, CtConfig};
use xylem_dataplane::dns::{DnsRule, FqdnScope, NameSelector};
use xylem_dataplane::pipeline::{Frame, Verdict, process};
use xylem_dataplane::policy::{PROTO_ANY, PolicyTablesBuilder, RuleOrigin, Section, identity};
use xylem_dataplane::tables::{Gateway, MacAddr, Mode, Neighbor, Tables};

/// Counts the allocations made while `COUNTING` is on, on any thread (the test has one).
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; the counter is an
// atomic add, which allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` above with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const GW: [u8; 6] = [2, 0, 0, 0, 0, 1];
const POD_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];
const DNS_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x0b];
const POD: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);

fn tables() -> Tables {
    let mut b = PolicyTablesBuilder::new(1);
    b.add_endpoint(POD, 300);
    b.add_endpoint(DNS, 400);
    let rule = b.add_origin(RuleOrigin {
        policy: "default/dns".into(),
        spec: 0,
        section: Section::Egress,
        index: 0,
    });
    let egress = &mut b.endpoint_policy(300).egress;
    egress.set_enforced(true);
    egress.add(400, PROTO_ANY, Some((53, 53)), false, rule);
    let selector = NameSelector::pattern("*.domain.com").expect("pattern");
    b.add_dns_rule(
        300,
        DnsRule {
            peer: 400,
            proto: PROTO_ANY,
            ports: (53, 53),
            selectors: Arc::from([selector.clone()]),
            rule,
        },
    );
    b.add_fqdn_scope(
        POD,
        FqdnScope {
            scope: 1,
            peer: identity::FIRST_FQDN,
            selector,
        },
    );
    let mut t = Tables::new(
        1,
        Mode::Full,
        Gateway {
            mac: MacAddr(GW),
            ipv4: Ipv4Addr::new(10, 0, 0, 1),
        },
    );
    for (ip, port, mac) in [(POD, 1, POD_MAC), (DNS, 2, DNS_MAC)] {
        t.add_route(
            ip,
            Neighbor {
                port,
                mac: MacAddr(mac),
            },
        )
        .expect("route");
    }
    t.set_policy(b.build());
    t
}

/// A message with one A/IN question for `name` and, if given, one A answer.
fn message(flags: u16, name: &str, answer: Option<[u8; 4]>) -> Vec<u8> {
    let mut v = vec![0x12, 0x34];
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&[0, 1, 0, u8::from(answer.is_some()), 0, 0, 0, 0]);
    for label in name.split('.') {
        v.push(label.len() as u8);
        v.extend_from_slice(label.as_bytes());
    }
    v.extend_from_slice(&[0, 0, 1, 0, 1]);
    if let Some(ip) = answer {
        v.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        v.extend_from_slice(&ip);
    }
    v
}

fn frame(
    tcp: bool,
    from: (Ipv4Addr, [u8; 6]),
    to: Ipv4Addr,
    ports: (u16, u16),
    msg: &[u8],
) -> Vec<u8> {
    let ip = PacketBuilder::ethernet2(from.1, GW).ipv4(from.0.octets(), to.octets(), 64);
    let mut v = Vec::new();
    if tcp {
        let mut payload = (msg.len() as u16).to_be_bytes().to_vec();
        payload.extend_from_slice(msg);
        ip.tcp(ports.0, ports.1, 1000, 64_000)
            .ack(1)
            .psh()
            .write(&mut v, &payload)
            .expect("frame");
    } else {
        ip.udp(ports.0, ports.1).write(&mut v, msg).expect("frame");
    }
    v
}

#[test]
fn the_dns_stage_allocates_nothing_per_packet() {
    let t = tables();
    let mut ct = Conntrack::new(&CtConfig {
        capacity: 1024,
        ..Default::default()
    });
    let mut frames = Vec::new();
    for tcp in [false, true] {
        let query = message(0x0100, "a.domain.com", None);
        let answer = message(0x8180, "a.domain.com", Some([192, 0, 2, 80]));
        let refused = message(0x0100, "example.org", None);
        frames.push((
            1,
            frame(tcp, (POD, POD_MAC), DNS, (40000, 53), &query),
            Verdict::Forward(2),
        ));
        frames.push((
            2,
            frame(tcp, (DNS, DNS_MAC), POD, (53, 40000), &answer),
            Verdict::Forward(1),
        ));
        frames.push((
            1,
            frame(tcp, (POD, POD_MAC), DNS, (40001, 53), &refused),
            Verdict::Forward(1),
        ));
    }
    let mut buf = vec![0u8; 2048];
    let mut run = |now: u64| {
        for (port, f, want) in &frames {
            buf[..f.len()].copy_from_slice(f);
            let mut frame = Frame::new(&mut buf, f.len());
            let o = process(now, *port, &mut frame, &t, &mut ct);
            assert_eq!(o.verdict, *want);
            while ct.dns_log().pop().is_some() {}
        }
    };
    // The counter sees allocations at all (else the assertion below could not fail).
    let probe = ALLOCATIONS.load(Ordering::Relaxed);
    drop(std::hint::black_box(Box::new(1u8)));
    assert!(ALLOCATIONS.load(Ordering::Relaxed) > probe);
    // The first round opens the flows (and whatever lazily initialises).
    run(1_000_000_000);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for i in 0..100 {
        run(2_000_000_000 + i);
    }
    assert_eq!(ALLOCATIONS.load(Ordering::Relaxed) - before, 0);
}

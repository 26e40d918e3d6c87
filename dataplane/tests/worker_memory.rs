//! The real worker, driven through the in-memory backend: forwarding between ports, the slow
//! path's ARP and ICMP answers, ring-full handling, and frame accounting after 1,000,000
//! packets. No root needed.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam::queue::ArrayQueue;
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use xylem_dataplane::io::Backend;
use xylem_dataplane::io::memory::MemoryBackend;
use xylem_dataplane::ledger::Place;
use xylem_dataplane::ratelimit::RateLimits;
use xylem_dataplane::slowpath::{Signal, SlowPath, SlowPathLink, SlowPathStats};
use xylem_dataplane::stats::DropReason;
use xylem_dataplane::tables::{Gateway, MacAddr, Mode, Neighbor, Tables};
use xylem_dataplane::worker::{
    Placement, PortChange, PortRequest, Worker, WorkerConfig, WorkerLink,
};

const GW_MAC: [u8; 6] = [0x0e, 0x78, 0x79, 0x6c, 0, 1];
const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);

fn pod_mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, 0x10 + i]
}
fn pod_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 0, 10 + i)
}

/// The port a frame comes in on: its sender's, by its source MAC (port 0 for a frame too short
/// to have one). A pod is only itself: on any other port the dataplane refuses it.
fn sender_port(frame: &[u8]) -> usize {
    match frame.get(6..12) {
        Some([0x02, 0, 0, 0, 0, last]) if *last >= 0x10 => usize::from(last - 0x10),
        _ => 0,
    }
}

fn tables(ports: u8) -> Tables {
    let mut t = Tables::new(
        1,
        Mode::Passthrough,
        Gateway {
            mac: MacAddr(GW_MAC),
            ipv4: GW_IP,
        },
    );
    for i in 0..ports {
        t.add_route(
            pod_ip(i),
            Neighbor {
                port: u16::from(i),
                mac: MacAddr(pod_mac(i)),
            },
        )
        .unwrap();
    }
    t
}

struct Rig {
    worker: Worker<MemoryBackend>,
    link: WorkerLink,
    slow: SlowPath,
}

fn rig(ports: u8, ring: usize, frames: u32, batch: usize) -> Rig {
    let tables = Arc::new(ArcSwap::from_pointee(tables(ports)));
    let to_slow = Arc::new(ArrayQueue::new(64));
    let signal = Arc::new(Signal::default());
    let link = WorkerLink::new(
        Arc::clone(&tables),
        Arc::clone(&to_slow),
        Arc::clone(&signal),
    );
    let backend = MemoryBackend::new(usize::from(ports), ring, frames, 2048);
    let cfg = WorkerConfig {
        placement: Placement::Dedicated,
        batch_size: batch,
        ..WorkerConfig::default()
    };
    let worker = Worker::new(cfg, backend, link.clone()).unwrap();
    let slow = SlowPath::new(
        SlowPathLink {
            inbox: to_slow,
            outbox: Arc::clone(&link.from_slow),
            waker: None,
            tables,
            signal,
            stats: Arc::new(SlowPathStats::default()),
            neighbors: Default::default(),
        },
        24,
    );
    Rig { worker, link, slow }
}

fn udp(from: u8, to: u8, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(pod_mac(from), GW_MAC)
        .ipv4(pod_ip(from).octets(), pod_ip(to).octets(), ttl)
        .udp(40000, 5001)
        .write(&mut v, payload)
        .unwrap();
    v
}

/// An ARP request from pod `i` for the gateway's address.
fn arp_for_gateway(i: u8) -> Vec<u8> {
    let mut arp = Vec::new();
    PacketBuilder::ethernet2(pod_mac(i), [0xff; 6])
        .arp(
            etherparse::ArpPacket::new(
                etherparse::ArpHardwareId::ETHERNET,
                etherparse::EtherType::IPV4,
                etherparse::ArpOperation::REQUEST,
                &pod_mac(i),
                &pod_ip(i).octets(),
                &[0; 6],
                &GW_IP.octets(),
            )
            .unwrap(),
        )
        .write(&mut arp)
        .unwrap();
    arp
}

/// Runs the worker and the fake kernel until nothing moves.
fn settle(r: &mut Rig) {
    for _ in 0..16 {
        let w = r.worker.run_once(0);
        let d = r.worker.backend_mut().deliver();
        let s = r.slow.poll();
        if w == 0 && d == 0 && !s {
            break;
        }
    }
}

#[test]
fn forwards_between_ports_rewriting_macs_and_ttl() {
    let mut r = rig(3, 64, 512, 64);
    settle(&mut r); // fill rings
    let sent = udp(0, 2, 64, b"hello xylem");
    assert!(r.worker.backend_mut().inject(0, &sent));
    settle(&mut r);
    let wire = r.worker.backend_mut().take_wire(2);
    assert_eq!(wire.len(), 1, "one frame out of port 2");
    let p = SlicedPacket::from_ethernet(&wire[0]).unwrap();
    assert_eq!(&wire[0][6..12], &GW_MAC, "source MAC is the gateway's");
    assert_eq!(&wire[0][0..6], &pod_mac(2), "destination MAC is the pod's");
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4")
    };
    assert_eq!(ip.header().ttl(), 63);
    let h = ip.header().to_header();
    assert_eq!(h.header_checksum, h.calc_header_checksum());
    let Some(TransportSlice::Udp(u)) = &p.transport else {
        panic!("not UDP")
    };
    assert_eq!(u.payload(), b"hello xylem");
    assert!(r.worker.backend_mut().take_wire(1).is_empty());
    assert_eq!(r.link.stats.forwarded.get(), 1);
    assert_eq!(r.link.port_rx(0), 1);
    assert_eq!(r.link.port_tx(2), 1);
    r.worker.check_quiescent().unwrap();
}

#[test]
fn the_gateway_answers_arp_through_the_slow_path() {
    let mut r = rig(2, 64, 256, 64);
    settle(&mut r);
    let arp = arp_for_gateway(1);
    assert!(r.worker.backend_mut().inject(1, &arp));
    settle(&mut r);
    let wire = r.worker.backend_mut().take_wire(1);
    assert_eq!(
        wire.len(),
        1,
        "an ARP reply on the port the request came from"
    );
    let reply = &wire[0];
    assert_eq!(&reply[0..6], &pod_mac(1), "to the asker");
    assert_eq!(&reply[6..12], &GW_MAC, "from the gateway");
    assert_eq!(&reply[12..14], &[0x08, 0x06]);
    assert_eq!(&reply[20..22], &[0, 2], "an ARP reply");
    assert_eq!(
        &reply[22..28],
        &GW_MAC,
        "sender hardware address is the gateway's"
    );
    assert_eq!(&reply[28..32], &GW_IP.octets());
    assert_eq!(r.link.stats.to_slowpath.get(), 1);
    r.worker.check_quiescent().unwrap();
}

#[test]
fn the_gateway_answers_ping() {
    let mut r = rig(2, 64, 256, 64);
    settle(&mut r);
    // The gateway must know the pod's MAC: a pod ARPs for it first, which fills smoltcp's cache.
    let arp = arp_for_gateway(0);
    r.worker.backend_mut().inject(0, &arp);
    settle(&mut r);
    r.worker.backend_mut().take_wire(0);

    let mut echo = Vec::new();
    PacketBuilder::ethernet2(pod_mac(0), GW_MAC)
        .ipv4(pod_ip(0).octets(), GW_IP.octets(), 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut echo, b"ping payload")
        .unwrap();
    r.worker.backend_mut().inject(0, &echo);
    settle(&mut r);
    let wire = r.worker.backend_mut().take_wire(0);
    assert_eq!(wire.len(), 1, "an echo reply");
    let p = SlicedPacket::from_ethernet(&wire[0]).unwrap();
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4")
    };
    assert_eq!(ip.header().source_addr(), GW_IP);
    assert_eq!(ip.header().destination_addr(), pod_ip(0));
    let Some(TransportSlice::Icmpv4(icmp)) = &p.transport else {
        panic!("not ICMP")
    };
    assert!(matches!(
        icmp.icmp_type(),
        etherparse::Icmpv4Type::EchoReply(etherparse::IcmpEchoHeader { id: 7, seq: 1 })
    ));
    assert_eq!(icmp.payload(), b"ping payload");
}

#[test]
fn a_full_tx_ring_drops_and_counts_without_leaking() {
    // TX rings of 8 entries, batches of 64: most of a burst cannot be queued.
    let mut r = rig(2, 8, 64, 64);
    settle(&mut r);
    for _ in 0..8 {
        r.worker.backend_mut().inject(0, &udp(0, 1, 64, b"x"));
    }
    // Do not deliver: the TX ring of port 1 fills up.
    r.worker.run_once(0);
    for _ in 0..8 {
        r.worker.backend_mut().inject(0, &udp(0, 1, 64, b"y"));
    }
    r.worker.run_once(0);
    assert_eq!(r.link.stats.drops_of(DropReason::TxRingFull), 8);
    settle(&mut r);
    assert_eq!(r.worker.backend_mut().take_wire(1).len(), 8);
    r.worker.check_quiescent().unwrap();
}

#[test]
fn frame_accounting_holds_after_a_million_packets() {
    const PACKETS: u64 = 1_000_000;
    let mut r = rig(4, 256, 4 * 2 * 256 + 256, 64);
    r.worker.backend_mut().keep_wire(false);
    // Every TTL-expired frame is to be answered: a millisecond of worker time would allow a
    // burst of ICMP errors only.
    r.worker.set_rate_limits(RateLimits::NONE);
    settle(&mut r);
    // A mix: forwarded, unroutable (dropped), malformed (dropped) and TTL-expired (answered).
    let frames = [
        udp(0, 1, 64, &[0u8; 18]),
        udp(1, 2, 64, &[1u8; 200]),
        udp(2, 3, 64, &[2u8; 1400]),
        udp(3, 0, 1, &[3u8; 32]),
        {
            let mut f = Vec::new();
            PacketBuilder::ethernet2(pod_mac(0), GW_MAC)
                .ipv4(pod_ip(0).octets(), [10, 9, 9, 9], 64) // unroutable destination
                .udp(40000, 5001)
                .write(&mut f, &[4u8; 40])
                .unwrap();
            f
        },
        {
            let mut f = udp(1, 0, 64, &[5u8; 40]);
            f[14] = 0x43; // IHL 3: malformed
            f
        },
    ];
    let mut injected = 0u64;
    let mut i = 0usize;
    while injected < PACKETS {
        for _ in 0..64 {
            let f = &frames[i % frames.len()];
            if r.worker.backend_mut().inject(sender_port(f), f) {
                injected += 1;
            }
            i += 1;
        }
        r.worker.run_once(injected);
        r.worker.backend_mut().deliver();
        if i.is_multiple_of(4096) {
            r.worker.ledger().check().unwrap();
        }
    }
    settle(&mut r);
    r.worker.check_quiescent().unwrap();
    let stats = r.link.stats.snapshot();
    assert_eq!(stats.rx_packets, injected);
    let sent: u64 = (0..4).map(|p| r.worker.backend_mut().sent(p)).sum();
    assert_eq!(stats.tx_packets, sent);
    // Every received frame was forwarded, handed to the slow path or dropped for a counted
    // reason (a TTL-expired frame counts as `ttl-exceeded` and is answered in place).
    assert_eq!(
        stats.rx_packets,
        stats.forwarded + stats.total_drops() + stats.to_slowpath,
        "{stats:?}"
    );
    let sixth = PACKETS / 6;
    assert!(stats.forwarded >= 3 * sixth, "{stats:?}");
    assert!(stats.icmp_errors_sent >= sixth, "{stats:?}");
    assert!(
        r.link.stats.drops_of(DropReason::NoRoute) >= sixth,
        "{stats:?}"
    );
    assert!(
        r.link.stats.drops_of(DropReason::Ipv4BadIhl) >= sixth,
        "{stats:?}"
    );
    let l = r.worker.ledger();
    assert_eq!(l.count(Place::Held) + l.count(Place::Tx), 0);
}

#[test]
fn a_port_added_to_a_running_worker_receives_and_sends() {
    let mut r = rig(2, 64, 512, 32);
    r.worker.run_once(0);
    let ctl = r.worker.port_control();
    let ticket = ctl.post(PortRequest::Add(64)).unwrap();
    r.link.tables.store(Arc::new(tables(3)));
    r.worker.run_once(0);
    let added = ticket
        .wait(Duration::from_secs(1), || true)
        .expect("a reply");
    assert!(
        matches!(added, Ok(PortChange { port: 2, fd: None })),
        "{added:?}"
    );
    // Its fill ring was topped up from the shared free list in the same batch.
    r.worker.run_once(0);
    let sent = udp(0, 2, 64, b"to the new port");
    assert!(r.worker.backend_mut().inject(0, &sent));
    r.worker.run_once(0);
    r.worker.backend_mut().deliver();
    assert_eq!(r.worker.backend_mut().take_wire(2).len(), 1);
    let back = udp(2, 0, 64, b"from the new port");
    assert!(r.worker.backend_mut().inject(2, &back));
    r.worker.run_once(0);
    r.worker.backend_mut().deliver();
    assert_eq!(r.worker.backend_mut().take_wire(0).len(), 1);
    for _ in 0..4 {
        r.worker.run_once(0);
        r.worker.backend_mut().deliver();
    }
    r.worker.check_quiescent().unwrap();
}

/// Pods come and go without end: each round opens a port, has frames on every one of its
/// rings (fill, RX not yet read, TX not yet sent, completions not yet taken), removes it, and
/// the next round gets the same index back. At the end every frame is accounted for.
#[test]
fn ports_removed_at_runtime_give_back_every_frame_and_their_index() {
    // 2 ports of 64-entry rings and 256 frames: without the frames coming back, the third
    // round would find the free list empty.
    let mut r = rig(2, 64, 256, 32);
    r.worker.run_once(0);
    let ctl = r.worker.port_control();
    let total = r.worker.ledger().total();
    // A few batches, the kernel sending in between, within the drain time of a removal: the
    // port's frames must come back because they are done, not because time ran out.
    let ask = |r: &mut Rig, req: PortRequest<usize>, now: u64| {
        let ticket = ctl.post(req).unwrap();
        for k in 0..4 {
            r.worker.run_once(now + k * 1_000_000);
            r.worker.backend_mut().deliver();
        }
        ticket
            .wait(Duration::ZERO, || true)
            .expect("a reply within four batches")
            .expect("the worker carries out the request")
    };
    for round in 0..200u64 {
        let now = round * 1_000_000_000;
        let added = ask(&mut r, PortRequest::Add(64), now);
        assert_eq!(
            added.port, 2,
            "round {round}: the removed port's index is reused"
        );
        r.link.tables.store(Arc::new(tables(3)));
        r.worker.run_once(now);
        // Traffic both ways; some of it left on the new port's rings.
        for i in 0..8 {
            assert!(
                r.worker
                    .backend_mut()
                    .inject(0, &udp(0, 2, 64, b"to the pod"))
            );
            assert!(
                r.worker
                    .backend_mut()
                    .inject(2, &udp(2, 0, 64, b"from the pod"))
            );
            if i % 2 == 0 {
                r.worker.run_once(now);
            }
        }
        r.worker.run_once(now);
        r.worker.backend_mut().deliver();
        assert!(!r.worker.backend_mut().take_wire(2).is_empty());
        r.worker.backend_mut().take_wire(0);
        // Received but not read, sent but not completed: what a pod leaves when it goes.
        assert!(
            r.worker
                .backend_mut()
                .inject(2, &udp(2, 0, 64, b"last words"))
        );
        let (rx, tx) = r.worker.backend_mut().in_kernel(2);
        assert!(rx > 0, "round {round}: the pod's fill ring holds frames");
        let _ = tx;
        // The route goes first, then the port.
        r.link.tables.store(Arc::new(tables(2)));
        let removed = ask(&mut r, PortRequest::Remove(2), now);
        assert_eq!(removed.port, 2);
        assert_eq!(r.worker.backend_mut().in_kernel(2), (0, 0));
    }
    for _ in 0..4 {
        r.worker.run_once(1 << 40);
        r.worker.backend_mut().deliver();
    }
    r.worker.check_quiescent().unwrap();
    assert_eq!(r.worker.ledger().total(), total);
    let stats = r.link.stats.snapshot();
    assert_eq!(stats.rx_packets, stats.verdicts(), "{stats:?}");
}

/// What the kernel drops at a socket (no frame in the fill ring, a full RX ring) never reaches
/// the pipeline: the worker reads the socket's counters once a second, and once more when the
/// port closes, so a removed pod's drops stay counted and a new socket starts from zero.
#[test]
fn the_kernels_socket_drops_are_counted_once_a_second_and_outlive_the_port() {
    let xsk = |r: &Rig, name: &str| r.link.stats.snapshot().xsk[name];
    // 2 ports of 8-entry rings and 16 frames: each fill ring gets 8 frames and none is left.
    let mut r = rig(2, 8, 16, 64);
    // Before the worker's first batch the fill rings are empty: the kernel drops.
    assert!(!r.worker.backend_mut().inject(0, &udp(0, 1, 64, b"early")));
    r.worker.run_once(0);
    assert_eq!(xsk(&r, "rx_dropped"), 1);
    assert_eq!(xsk(&r, "rx_fill_ring_empty_descs"), 1);
    // Eight frames fill port 0's RX ring; the worker does not run, so the ninth finds it full.
    for _ in 0..8 {
        assert!(r.worker.backend_mut().inject(0, &udp(0, 1, 64, b"x")));
    }
    assert!(!r.worker.backend_mut().inject(0, &udp(0, 1, 64, b"ninth")));
    r.worker.run_once(500_000_000);
    assert_eq!(
        xsk(&r, "rx_ring_full"),
        0,
        "read again before a second went by"
    );
    r.worker.run_once(1_000_000_000);
    assert_eq!(xsk(&r, "rx_ring_full"), 1);
    assert_eq!(xsk(&r, "rx_dropped"), 1, "counted once, not once per read");
    settle(&mut r);

    // Port 1 drops one frame and is removed before the next read: its count survives it.
    let ctl = r.worker.port_control();
    r.worker.backend_mut().take_wire(1);
    for _ in 0..8 {
        r.worker.backend_mut().inject(1, &udp(1, 0, 64, b"y"));
    }
    assert!(!r.worker.backend_mut().inject(1, &udp(1, 0, 64, b"lost")));
    r.link.tables.store(Arc::new(tables(1)));
    let removed = ctl.post(PortRequest::Remove(1)).unwrap();
    for k in 0..4 {
        r.worker.run_once(1_100_000_000 + k * 100_000_000);
        r.worker.backend_mut().deliver();
    }
    removed
        .wait(Duration::ZERO, || true)
        .expect("a reply within four batches")
        .expect("the port is removed");
    assert_eq!(xsk(&r, "rx_ring_full"), 2);
    // A new port at the same index starts from zero: nothing is counted twice.
    let added = ctl.post(PortRequest::Add(8)).unwrap();
    r.worker.run_once(1_600_000_000);
    added
        .wait(Duration::ZERO, || true)
        .expect("a reply within a batch")
        .expect("the port is added");
    r.worker.run_once(3_000_000_000);
    assert_eq!(xsk(&r, "rx_ring_full"), 2);
    assert_eq!(xsk(&r, "rx_dropped"), 1);
    // None of it is a verdict: the pipeline never saw those frames.
    let st = r.link.stats.snapshot();
    assert_eq!(st.rx_packets, st.verdicts(), "{st:?}");
}

/// Removing a port that is not open is refused, and changes nothing.
#[test]
fn removing_a_port_that_is_not_open_is_refused() {
    let mut r = rig(2, 64, 512, 32);
    r.worker.run_once(0);
    let ctl = r.worker.port_control();
    let ticket = ctl.post(PortRequest::Remove(7)).unwrap();
    r.worker.run_once(0);
    let reply = ticket
        .wait(Duration::from_secs(1), || true)
        .expect("a reply");
    assert!(reply.is_err(), "{reply:?}");
    r.worker.check_quiescent().unwrap();
}

/// Policy for the `policy_*` tests: pod 0 (identity 300) and pod 1 (301), pod 2 (302). Pod 1's
/// ingress is enforced and allows UDP 5001 from pod 0 only; nothing else is enforced.
fn policy_tables(revision: u64) -> xylem_dataplane::policy::PolicyTables {
    use xylem_dataplane::policy::{PolicyTablesBuilder, RuleOrigin, Section};
    let mut b = PolicyTablesBuilder::new(revision);
    for i in 0..3u8 {
        b.add_endpoint(pod_ip(i), 300 + u32::from(i));
    }
    let rule = b.add_origin(RuleOrigin {
        policy: "default/allow-a".into(),
        spec: 0,
        section: Section::Ingress,
        index: 0,
    });
    let p = b.endpoint_policy(301);
    p.ingress.set_enforced(true);
    p.ingress.add(300, 17, Some((5001, 5001)), false, rule);
    b.build()
}

fn udp_ports(from: u8, to: u8, sport: u16, dport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(pod_mac(from), GW_MAC)
        .ipv4(pod_ip(from).octets(), pod_ip(to).octets(), 64)
        .udp(sport, dport)
        .write(&mut v, b"policy")
        .unwrap();
    v
}

fn policy_rig() -> Rig {
    let r = rig(3, 64, 512, 64);
    let mut t = Tables::new(2, Mode::Full, *tables(3).gateway());
    for (ip, n) in tables(3).routes() {
        t.add_route(ip, n).unwrap();
    }
    t.set_policy(policy_tables(2));
    r.link.tables.store(Arc::new(t));
    r
}

#[test]
fn policy_allows_denies_and_passes_replies_in_full_mode() {
    let mut r = policy_rig();
    settle(&mut r);
    // Allowed: pod 0 → pod 1 UDP 5001.
    assert!(
        r.worker
            .backend_mut()
            .inject(0, &udp_ports(0, 1, 40000, 5001))
    );
    settle(&mut r);
    assert_eq!(r.worker.backend_mut().take_wire(1).len(), 1, "allowed flow");
    // Denied: pod 2 → pod 1 UDP 5001 (no rule), and pod 0 → pod 1 UDP 5002 (wrong port).
    assert!(
        r.worker
            .backend_mut()
            .inject(2, &udp_ports(2, 1, 40000, 5001))
    );
    assert!(
        r.worker
            .backend_mut()
            .inject(0, &udp_ports(0, 1, 40000, 5002))
    );
    settle(&mut r);
    assert!(
        r.worker.backend_mut().take_wire(1).is_empty(),
        "denied flows"
    );
    assert_eq!(r.link.stats.drops_of(DropReason::PolicyDenied), 2);
    // Reply: pod 1 → pod 0 from 5001 to 40000 (pod 1's egress is open anyway; pod 0's ingress
    // is not enforced) and an unsolicited pod 1 → pod 2 (egress not enforced): both pass. The
    // reply is tracked as such.
    assert!(
        r.worker
            .backend_mut()
            .inject(1, &udp_ports(1, 0, 5001, 40000))
    );
    settle(&mut r);
    assert_eq!(r.worker.backend_mut().take_wire(0).len(), 1, "reply");
    assert_eq!(
        r.worker.conntrack().len(),
        1,
        "one tracked flow (the allowed one)"
    );
    assert_eq!(r.link.stats.forwarded.get(), 2);
    r.worker.check_quiescent().unwrap();
}

#[test]
fn narrowed_policy_stops_an_established_flow_on_its_next_packet() {
    let mut r = policy_rig();
    settle(&mut r);
    assert!(
        r.worker
            .backend_mut()
            .inject(0, &udp_ports(0, 1, 40000, 5001))
    );
    settle(&mut r);
    assert_eq!(r.worker.backend_mut().take_wire(1).len(), 1);
    // New revision: pod 1's ingress enforced with no rule at all.
    let mut t = (**r.link.tables.load()).clone();
    let mut b = xylem_dataplane::policy::PolicyTablesBuilder::new(3);
    for i in 0..3u8 {
        b.add_endpoint(pod_ip(i), 300 + u32::from(i));
    }
    b.endpoint_policy(301).ingress.set_enforced(true);
    t.set_policy(b.build());
    r.link.tables.store(Arc::new(t));
    assert!(
        r.worker
            .backend_mut()
            .inject(0, &udp_ports(0, 1, 40000, 5001))
    );
    settle(&mut r);
    assert!(r.worker.backend_mut().take_wire(1).is_empty());
    assert_eq!(r.link.stats.drops_of(DropReason::PolicyDenied), 1);
    assert_eq!(r.worker.conntrack().len(), 0);
}

#[test]
fn conntrack_is_listed_and_flushed_through_the_control_queue() {
    use xylem_dataplane::worker::CtRequest;
    let mut r = policy_rig();
    settle(&mut r);
    assert!(
        r.worker
            .backend_mut()
            .inject(0, &udp_ports(0, 1, 40000, 5001))
    );
    settle(&mut r);
    let ctl = r.worker.ct_control();
    let wait = Duration::from_secs(1);
    let ticket = ctl.post(CtRequest::List { max: 10 }).unwrap();
    r.worker.run_once(1);
    let snap = ticket.wait(wait, || true).expect("a reply");
    assert_eq!(snap.entries.len(), 1);
    assert_eq!(snap.entries[0].orig.dport, 5001);
    assert!(snap.bytes_per_entry > 32.0 && snap.bytes_per_entry < 64.0);
    let ticket = ctl.post(CtRequest::Flush).unwrap();
    r.worker.run_once(2);
    assert_eq!(ticket.wait(wait, || true).unwrap().len, 1);
    assert!(r.worker.conntrack().is_empty());
}

#[test]
fn passthrough_mode_skips_policy() {
    let mut r = rig(3, 64, 512, 64);
    let mut t = tables(3);
    t.set_policy(policy_tables(2));
    r.link.tables.store(Arc::new(t));
    settle(&mut r);
    assert!(
        r.worker
            .backend_mut()
            .inject(2, &udp_ports(2, 1, 40000, 5001))
    );
    settle(&mut r);
    assert_eq!(r.worker.backend_mut().take_wire(1).len(), 1);
    assert!(r.worker.conntrack().is_empty());
}

#[test]
fn policy_verdicts_reach_the_monitor_only_when_asked_for() {
    use xylem_dataplane::monitor::EventType;
    let mut r = policy_rig();
    settle(&mut r);
    // Nobody listening: no event.
    assert!(
        r.worker
            .backend_mut()
            .inject(2, &udp_ports(2, 1, 40000, 5001))
    );
    settle(&mut r);
    assert!(r.link.monitor.ring.is_empty());
    r.link.monitor.mask.store(
        EventType::PolicyVerdict.bit(),
        std::sync::atomic::Ordering::Relaxed,
    );
    assert!(
        r.worker
            .backend_mut()
            .inject(0, &udp_ports(0, 1, 40000, 5001))
    );
    assert!(
        r.worker
            .backend_mut()
            .inject(2, &udp_ports(2, 1, 40000, 5001))
    );
    settle(&mut r);
    let allowed = r.link.monitor.ring.pop().expect("allowed verdict");
    let denied = r.link.monitor.ring.pop().expect("denied verdict");
    assert!(r.link.monitor.ring.is_empty(), "only policy-verdict events");
    assert_eq!(allowed.kind, EventType::PolicyVerdict);
    assert_eq!((allowed.src, allowed.drop_reason), (pod_ip(0), None));
    assert_eq!(allowed.egress_port, Some(1));
    assert_eq!(denied.src, pod_ip(2));
    assert_eq!(denied.drop_reason, Some(DropReason::PolicyDenied));
}

/// The conntrack prefetch of the worker's step 3 is a hint: forced on, on a batch mixing
/// allowed, denied and reply packets with truncated and malformed frames, the worker sends,
/// drops and tracks exactly what it does with the prefetch off, and never panics.
#[test]
fn prefetching_conntrack_entries_changes_no_verdict() {
    use xylem_dataplane::worker::CtPrefetch;
    let mut batch = vec![
        udp_ports(0, 1, 40000, 5001),
        udp_ports(2, 1, 40000, 5001),
        udp_ports(0, 1, 40000, 5002),
        udp_ports(1, 0, 5001, 40000),
        arp_for_gateway(0),
        Vec::new(),
        vec![0xff; 3],
    ];
    let good = udp_ports(0, 1, 40001, 5001);
    for n in [13, 14, 20, 33, 34, 37, 41] {
        batch.push(good[..n].to_vec());
    }
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x4f;
    batch.push(bad_ihl);
    let mut outcomes = Vec::new();
    for when in [CtPrefetch::Never, CtPrefetch::Always] {
        let mut r = policy_rig();
        r.worker.set_ct_prefetch(when);
        settle(&mut r);
        for _round in 0..2 {
            for f in &batch {
                assert!(r.worker.backend_mut().inject(sender_port(f), f));
            }
            settle(&mut r);
        }
        let wire: Vec<_> = (0..3)
            .map(|p| r.worker.backend_mut().take_wire(p))
            .collect();
        let entries: Vec<_> = r.worker.conntrack().entries(0).map(|e| e.orig).collect();
        let drops: Vec<_> = r.link.stats.drops.iter().map(|c| c.get()).collect();
        r.worker.check_quiescent().unwrap();
        outcomes.push((wire, entries, drops, r.link.stats.forwarded.get()));
    }
    assert_eq!(outcomes[0], outcomes[1]);
    assert_eq!(outcomes[1].3, 4, "allowed and reply, twice");
}

/// Trace events reach the monitor's ring at the end of each batch, in order; what does not fit
/// is counted lost, and the worker never waits. A link's ring takes one worker only.
#[test]
fn trace_events_fill_the_ring_then_count_as_lost() {
    use std::sync::atomic::Ordering;
    use xylem_dataplane::monitor::{EventType, MonitorLink};
    let mut link = WorkerLink::new(
        Arc::new(ArcSwap::from_pointee(tables(2))),
        Arc::new(ArrayQueue::new(64)),
        Arc::new(Signal::default()),
    );
    link.monitor = MonitorLink::new(8);
    let cfg = WorkerConfig {
        placement: Placement::Dedicated,
        batch_size: 64,
        ..WorkerConfig::default()
    };
    let mut w = Worker::new(
        cfg.clone(),
        MemoryBackend::new(2, 64, 256, 2048),
        link.clone(),
    )
    .unwrap();
    let again = Worker::new(cfg, MemoryBackend::new(2, 64, 256, 2048), link.clone());
    assert!(again.is_err(), "a second worker on the same monitor ring");
    w.run_once(0);
    link.monitor
        .mask
        .store(EventType::Trace.bit(), Ordering::Relaxed);
    for i in 0..20u16 {
        assert!(w.backend_mut().inject(0, &udp_ports(0, 1, 1000 + i, 5001)));
    }
    w.run_once(1);
    assert_eq!(link.stats.forwarded.get(), 20);
    assert_eq!((link.monitor.ring.len(), link.monitor.lost.get()), (8, 12));
    let mut sports = Vec::new();
    link.monitor.ring.drain(|ev| {
        assert_eq!((ev.kind, ev.egress_port), (EventType::Trace, Some(1)));
        sports.push(ev.src_port);
    });
    assert_eq!(sports, (1000..1008).collect::<Vec<_>>());
    w.backend_mut().deliver();
    for i in 0..5u16 {
        assert!(w.backend_mut().inject(0, &udp_ports(0, 1, 2000 + i, 5001)));
    }
    w.run_once(2);
    assert_eq!((link.monitor.ring.len(), link.monitor.lost.get()), (5, 12));
}

/// Every received frame moves exactly one verdict counter, whatever its fate (forwarded, TX ring
/// full, ICMP error, dropped by the pipeline, handed to the slow path, slow path full), and every
/// slow-path reply moves exactly one reply counter: a frame counted twice (or not at all) breaks
/// the sums.
#[test]
fn every_frame_is_counted_once_whatever_its_fate() {
    let mut r = rig(3, 8, 512, 64);
    settle(&mut r);
    let mut unroutable = udp(2, 0, 64, b"?");
    unroutable[30..34].copy_from_slice(&[10, 9, 9, 9]);
    let c = xylem_dataplane::checksum::checksum(&{
        let mut h = unroutable[14..34].to_vec();
        h[10] = 0;
        h[11] = 0;
        h
    });
    unroutable[24..26].copy_from_slice(&c.to_be_bytes());
    let inject = |r: &mut Rig, port: usize, frames: &[Vec<u8>]| {
        for f in frames {
            assert!(
                r.worker.backend_mut().inject(port, f),
                "room in the fill ring"
            );
        }
        r.worker.run_once(0);
    };
    // Nothing is delivered until the end: TX rings (8 entries) and the slow path's queue (64)
    // fill up.
    inject(&mut r, 0, &vec![udp(0, 1, 64, b"fits"); 8]);
    inject(&mut r, 0, &vec![udp(0, 1, 64, b"ring full"); 8]);
    inject(
        &mut r,
        2,
        &[
            udp(2, 0, 1, b"expired"),
            unroutable,
            udp(2, 0, 64, b"x")[..13].to_vec(),
            arp_for_gateway(2),
        ],
    );
    for _ in 0..8 {
        inject(&mut r, 2, &vec![arp_for_gateway(2); 8]);
    }
    let s = r.link.stats.snapshot();
    assert_eq!(s.rx_packets, 8 + 8 + 4 + 64);
    assert_eq!(s.verdicts(), s.rx_packets, "{s:?}");
    assert_eq!(s.forwarded, 8);
    assert_eq!(s.drops["tx-ring-full"], 8);
    assert_eq!(s.drops["ttl-exceeded"], 1);
    assert_eq!(s.icmp_errors_sent, 1);
    assert_eq!(s.drops["no-route"], 1);
    assert_eq!(s.drops["eth-truncated"], 1);
    assert_eq!(s.to_slowpath, 64);
    assert_eq!(s.drops["slowpath-full"], 1);
    assert_eq!(s.tx_packets, s.forwarded + s.icmp_errors_sent);

    // Now the slow path answers the 64 ARP requests, and everything drains.
    settle(&mut r);
    settle(&mut r);
    let s = r.link.stats.snapshot();
    assert_eq!(s.verdicts(), s.rx_packets, "{s:?}");
    assert_eq!(
        s.slowpath_replies_sent + s.slowpath_replies_dropped,
        64,
        "{s:?}"
    );
    assert!(s.slowpath_replies_sent > 0);
    assert_eq!(
        s.tx_packets,
        s.forwarded + s.icmp_errors_sent + s.slowpath_replies_sent,
        "{s:?}"
    );
    r.worker.check_quiescent().unwrap();
}

/// Posts `req` to the worker, runs four batches with the kernel sending in between (a removal
/// waits for two quiet ones), and returns the worker's answer.
fn ask_port(r: &mut Rig, req: PortRequest<usize>) -> Result<PortChange, String> {
    let ticket = r.worker.port_control().post(req).unwrap();
    for _ in 0..4 {
        r.worker.run_once(0);
        r.worker.backend_mut().deliver();
    }
    ticket
        .wait(Duration::ZERO, || true)
        .expect("a reply within four batches")
        .map_err(|e| e.to_string())
}

/// Where every frame is once the fill rings are topped up (a few idle batches: each gives a
/// port at most its share): the ledger's counts, and what each port's rings hold.
fn frame_places(r: &mut Rig) -> (Vec<u32>, Vec<(usize, usize)>) {
    settle(r);
    for _ in 0..4 {
        r.worker.run_once(0);
    }
    let counts = Place::ALL
        .iter()
        .map(|&p| r.worker.ledger().count(p))
        .collect();
    let b = r.worker.backend_mut();
    let rings = (0..b.port_count()).map(|p| b.in_kernel(p)).collect();
    (counts, rings)
}

/// 192 frames of 64-entry rings are sized for three ports: a third is added, a fourth is
/// refused with an error that says what to raise, and the refusal changes nothing: no port
/// index, no frame moved, traffic flows as before. Once a port is removed, one can be added
/// again.
#[test]
fn a_port_beyond_the_frame_budget_is_refused_and_changes_nothing() {
    let mut r = rig(2, 64, 192, 32);
    settle(&mut r);
    let added = ask_port(&mut r, PortRequest::Add(64)).expect("a third port fits");
    assert_eq!(added.port, 2);
    r.link.tables.store(Arc::new(tables(3)));
    settle(&mut r);
    r.worker.check_quiescent().unwrap();
    let before = frame_places(&mut r);
    assert_eq!(before.1.len(), 3);

    let refused = ask_port(&mut r, PortRequest::Add(64)).expect_err("a fourth port");
    assert!(
        refused.contains("sized for 3 open ports") && refused.contains("spare_ports"),
        "{refused}"
    );
    settle(&mut r);
    r.worker.check_quiescent().unwrap();
    assert_eq!(frame_places(&mut r), before, "the refusal moved frames");

    // Traffic between the old ports and the new one flows as before.
    assert!(
        r.worker
            .backend_mut()
            .inject(2, &udp(2, 0, 64, b"still here"))
    );
    assert!(
        r.worker
            .backend_mut()
            .inject(0, &udp(0, 2, 64, b"and back"))
    );
    settle(&mut r);
    assert_eq!(r.worker.backend_mut().take_wire(0).len(), 1);
    assert_eq!(r.worker.backend_mut().take_wire(2).len(), 1);

    // A removed port's frames make room for the next.
    r.link.tables.store(Arc::new(tables(2)));
    let removed = ask_port(&mut r, PortRequest::Remove(2)).expect("port 2 removed");
    assert_eq!(removed.port, 2);
    let again = ask_port(&mut r, PortRequest::Add(64)).expect("room again");
    assert_eq!(again.port, 2);
    settle(&mut r);
    r.worker.check_quiescent().unwrap();
}

/// A busy port empties its fill ring every batch; frames come back to the free list only as
/// its forwarded frames complete. A port added meanwhile (empty fill ring) must still get its
/// share of them, and receive: topped up in port order, the busy port 0 would take every frame
/// each batch and the new port 2 none, ever.
#[test]
fn fill_rings_are_topped_up_fairly_across_a_busy_and_a_quiet_port() {
    // Three rings' worth of frames: every port's fill ring, and nothing to spare once port 1's
    // TX ring holds a burst.
    let mut r = rig(2, 64, 192, 64);
    r.worker.run_once(0);
    assert_eq!(r.worker.backend_mut().in_kernel(0).0, 64);
    assert_eq!(r.worker.backend_mut().in_kernel(1).0, 64);
    // Port 0 busy: a full ring's burst to port 1, sent but not completed yet.
    let burst = |r: &mut Rig| {
        let mut n = 0;
        while r.worker.backend_mut().inject(0, &udp(0, 1, 64, b"busy")) {
            n += 1;
        }
        n
    };
    // Port 2 is added in the batch that finds port 0's fill ring emptied by a burst and
    // the free list refilled by nothing else.
    assert_eq!(burst(&mut r), 64);
    let ticket = r.worker.port_control().post(PortRequest::Add(64)).unwrap();
    r.worker.run_once(0);
    let added = ticket.wait(Duration::ZERO, || true).expect("a reply");
    assert_eq!(added.expect("a third port fits").port, 2);
    r.link.tables.store(Arc::new(tables(3)));

    // Each round: a burst on port 0 as big as its fill ring allows, the kernel sends the last
    // round's, and one batch takes them back, tops up the fill rings and forwards the burst.
    let mut bursts = Vec::new();
    for _ in 0..8 {
        bursts.push(burst(&mut r));
        r.worker.backend_mut().deliver();
        r.worker.run_once(0);
        r.worker.backend_mut().take_wire(1);
    }
    assert!(
        bursts.iter().all(|&b| b > 0),
        "the busy port starved: {bursts:?}"
    );
    let (new_fill, _) = r.worker.backend_mut().in_kernel(2);
    assert_eq!(new_fill, 64, "the new port's fill ring was not topped up");

    // And it receives: its pod's frame is forwarded.
    assert!(r.worker.backend_mut().inject(2, &udp(2, 0, 64, b"new pod")));
    settle(&mut r);
    let wire = r.worker.backend_mut().take_wire(0);
    assert!(wire.iter().any(|f| f.ends_with(b"new pod")), "{wire:?}");
    settle(&mut r);
    r.worker.check_quiescent().unwrap();
}

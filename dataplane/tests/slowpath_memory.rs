//! The slow path through the real worker on the in-memory backend: its replies are addressed by
//! the tables alone, one pod flooding the gateway does not crowd out another, and a flood of
//! expired packets gets at most the ICMP error rate. No root needed.

use std::net::Ipv4Addr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use crossbeam::queue::ArrayQueue;
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use xylem_dataplane::io::memory::MemoryBackend;
use xylem_dataplane::ratelimit::{DEFAULT_ICMP_ERROR_RATE, DEFAULT_SLOWPATH_RATE, RateLimits};
use xylem_dataplane::slowpath::{Signal, SlowPath, SlowPathLink, SlowPathStats};
use xylem_dataplane::stats::DropReason;
use xylem_dataplane::tables::{Gateway, MacAddr, Mode, Neighbor, Tables};
use xylem_dataplane::worker::{Placement, SlowFrame, Worker, WorkerConfig, WorkerLink};

const GW_MAC: [u8; 6] = [0x0e, 0x78, 0x79, 0x6c, 0, 1];
const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
/// A MAC no endpoint has.
const LIAR_MAC: [u8; 6] = [0x02, 0xee, 0xee, 0xee, 0xee, 0xee];
const MS: u64 = 1_000_000;

fn pod_mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, 0x10 + i]
}
fn pod_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 0, 10 + i)
}

struct Rig {
    worker: Worker<MemoryBackend>,
    link: WorkerLink,
    slow: SlowPath,
    to_slow: Arc<ArrayQueue<SlowFrame>>,
    slow_stats: Arc<SlowPathStats>,
}

/// A worker with `ports` pods (pod `i` on port `i`) in full mode, and the slow path, with the
/// agent's queue size.
fn rig(ports: u8) -> Rig {
    let mut t = Tables::new(
        1,
        Mode::Full,
        Gateway {
            mac: MacAddr(GW_MAC),
            ipv4: GW_IP,
        },
    );
    for i in 0..ports {
        let n = Neighbor {
            port: u16::from(i),
            mac: MacAddr(pod_mac(i)),
        };
        t.add_route(pod_ip(i), n).unwrap();
    }
    let tables = Arc::new(ArcSwap::from_pointee(t));
    let to_slow = Arc::new(ArrayQueue::new(1024));
    let signal = Arc::new(Signal::default());
    let link = WorkerLink::new(
        Arc::clone(&tables),
        Arc::clone(&to_slow),
        Arc::clone(&signal),
    );
    let n = usize::from(ports);
    let backend = MemoryBackend::new(n, 256, (n * 2 * 256 + 256) as u32, 2048);
    let cfg = WorkerConfig {
        placement: Placement::Dedicated,
        batch_size: 64,
        ..WorkerConfig::default()
    };
    let worker = Worker::new(cfg, backend, link.clone()).unwrap();
    let slow_stats = Arc::new(SlowPathStats::default());
    let slow = SlowPath::new(
        SlowPathLink {
            inbox: Arc::clone(&to_slow),
            outbox: Arc::clone(&link.from_slow),
            waker: None,
            tables,
            signal,
            stats: Arc::clone(&slow_stats),
            neighbors: Default::default(),
        },
        24,
    );
    let mut r = Rig {
        worker,
        link,
        slow,
        to_slow,
        slow_stats,
    };
    settle(&mut r, 0);
    r
}

/// Runs the worker (at `now`), the fake kernel and the slow path until nothing moves.
fn settle(r: &mut Rig, now: u64) {
    for _ in 0..64 {
        let w = r.worker.run_once(now);
        let d = r.worker.backend_mut().deliver();
        let s = r.slow.poll();
        if w == 0 && d == 0 && !s {
            break;
        }
    }
}

/// An ARP request for the gateway's address from `sender` (`ip`, `mac`).
fn arp_for_gateway(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut arp = Vec::new();
    PacketBuilder::ethernet2(mac, [0xff; 6])
        .arp(
            etherparse::ArpPacket::new(
                etherparse::ArpHardwareId::ETHERNET,
                etherparse::EtherType::IPV4,
                etherparse::ArpOperation::REQUEST,
                &mac,
                &ip.octets(),
                &[0; 6],
                &GW_IP.octets(),
            )
            .unwrap(),
        )
        .write(&mut arp)
        .unwrap();
    arp
}

/// An echo request from pod `i` to `dst` with `ttl`.
fn ping(i: u8, dst: Ipv4Addr, ttl: u8, seq: u16) -> Vec<u8> {
    let mut echo = Vec::new();
    PacketBuilder::ethernet2(pod_mac(i), GW_MAC)
        .ipv4(pod_ip(i).octets(), dst.octets(), ttl)
        .icmpv4_echo_request(7, seq)
        .write(&mut echo, b"ping payload")
        .unwrap();
    echo
}

fn is_arp_reply(f: &[u8]) -> bool {
    f.get(12..14) == Some(&[0x08, 0x06]) && f.get(20..22) == Some(&[0, 2])
}

/// The ICMP type of an IPv4 frame, if it is ICMP.
fn icmp_type(f: &[u8]) -> Option<etherparse::Icmpv4Type> {
    match SlicedPacket::from_ethernet(f).ok()?.transport {
        Some(TransportSlice::Icmpv4(i)) => Some(i.icmp_type()),
        _ => None,
    }
}

#[test]
fn a_poisoned_neighbour_cache_steers_no_reply() {
    let mut r = rig(2);
    // What no worker lets through (its ingress checks drop it as `arp-spoofed`), handed to
    // smoltcp directly: an ARP request claiming pod 0's address from another MAC, so that its
    // neighbour cache maps pod 0 to that MAC.
    let forged = SlowFrame::new(1, &arp_for_gateway(LIAR_MAC, pod_ip(0))).unwrap();
    r.to_slow.push(forged).unwrap();
    settle(&mut r, 0);
    let answer = r.worker.backend_mut().take_wire(0);
    assert_eq!(answer.len(), 1, "the ARP reply goes to pod 0's port");
    assert_eq!(&answer[0][0..6], &pod_mac(0), "to pod 0's MAC");
    assert_eq!(&answer[0][32..38], &pod_mac(0), "naming pod 0's MAC");
    assert!(r.worker.backend_mut().take_wire(1).is_empty());

    // Pod 0 pings the gateway: smoltcp's cache says LIAR_MAC, the tables say pod 0's MAC.
    assert!(r.worker.backend_mut().inject(0, &ping(0, GW_IP, 64, 1)));
    settle(&mut r, 0);
    let wire = r.worker.backend_mut().take_wire(0);
    assert_eq!(wire.len(), 1, "an echo reply on the tables' port");
    assert_eq!(&wire[0][0..6], &pod_mac(0), "to the tables' MAC");
    assert_eq!(&wire[0][6..12], &GW_MAC);
    let p = SlicedPacket::from_ethernet(&wire[0]).unwrap();
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4")
    };
    assert_eq!(ip.header().destination_addr(), pod_ip(0));
    assert!(matches!(
        icmp_type(&wire[0]),
        Some(etherparse::Icmpv4Type::EchoReply(_))
    ));
    assert!(r.worker.backend_mut().take_wire(1).is_empty());
    assert_eq!(r.slow_stats.tx_unroutable.get(), 0);

    // An address no route leads to gets nothing, whatever smoltcp knows of it.
    let stranger = Ipv4Addr::new(10, 200, 0, 99);
    let forged = SlowFrame::new(1, &arp_for_gateway(LIAR_MAC, stranger)).unwrap();
    r.to_slow.push(forged).unwrap();
    settle(&mut r, 0);
    assert!(r.worker.backend_mut().take_wire(0).is_empty());
    assert!(r.worker.backend_mut().take_wire(1).is_empty());
    assert_eq!(r.slow_stats.tx_unroutable.get(), 1);
}

/// Pod 0 sends the gateway 64 ARP requests every millisecond for `steps` milliseconds, pod 1 one
/// (an ARP request or a ping, in turn), while the slow path gets to run only every 50 ms (a
/// busy slow-path thread).
/// Returns how many of pod 1's requests were answered.
fn flood(r: &mut Rig, steps: u64) -> usize {
    let flood = arp_for_gateway(pod_mac(0), pod_ip(0));
    let mut answered = 0;
    for step in 0..steps {
        let now = (step + 1) * MS;
        for _ in 0..64 {
            assert!(r.worker.backend_mut().inject(0, &flood));
        }
        let ask = if step % 2 == 0 {
            arp_for_gateway(pod_mac(1), pod_ip(1))
        } else {
            ping(1, GW_IP, 64, step as u16)
        };
        assert!(r.worker.backend_mut().inject(1, &ask));
        r.worker.run_once(now);
        r.worker.backend_mut().deliver();
        if step % 50 == 49 {
            settle(r, now);
        }
        answered += r
            .worker
            .backend_mut()
            .take_wire(1)
            .iter()
            .filter(|f| {
                is_arp_reply(f)
                    || matches!(icmp_type(f), Some(etherparse::Icmpv4Type::EchoReply(_)))
            })
            .count();
        r.worker.backend_mut().take_wire(0);
    }
    answered
}

#[test]
fn one_pod_flooding_the_gateway_does_not_crowd_out_another() {
    const STEPS: u64 = 200;
    let mut r = rig(2);
    let answered = flood(&mut r, STEPS);
    assert_eq!(answered, STEPS as usize, "every one of pod 1's requests");
    let s = r.link.stats.snapshot();
    assert_eq!(s.drops["slowpath-full"], 0, "{s:?}");
    // Pod 0 got its burst and then its rate (one a millisecond); pod 1 everything.
    let burst = u64::from(DEFAULT_SLOWPATH_RATE.burst);
    let per_ms = u64::from(DEFAULT_SLOWPATH_RATE.per_sec) / 1000;
    let pod0 = s.to_slowpath - STEPS;
    assert!(
        (burst..=burst + STEPS * per_ms).contains(&pod0),
        "{pod0} of pod 0's frames reached the slow path"
    );
    assert_eq!(s.drops["slowpath-rate-limited"], STEPS * 64 - pod0);
    assert_eq!(s.rx_packets, STEPS * 65);
    assert_eq!(s.rx_packets, s.verdicts());

    // The same flood without the limit: pod 0 fills the queue and pod 1 goes unanswered.
    let mut r = rig(2);
    r.worker.set_rate_limits(RateLimits::NONE);
    let answered = flood(&mut r, STEPS);
    assert!(answered < STEPS as usize / 2, "{answered} answered");
    assert!(r.link.stats.drops_of(DropReason::SlowPathFull) > 0);
}

#[test]
fn a_flood_of_expired_packets_gets_at_most_the_icmp_error_rate() {
    let mut r = rig(2);
    let rate = DEFAULT_ICMP_ERROR_RATE;
    let expired = ping(0, pod_ip(1), 1, 1);
    // 100 ms of 64 expired packets per millisecond, from the start: the burst, then the rate.
    let mut errors = 0u64;
    for ms in 0..100 {
        for _ in 0..64 {
            assert!(r.worker.backend_mut().inject(0, &expired));
        }
        settle(&mut r, 5_000 * MS + ms * MS);
        for f in r.worker.backend_mut().take_wire(0) {
            assert!(matches!(
                icmp_type(&f),
                Some(etherparse::Icmpv4Type::TimeExceeded(_))
            ));
            errors += 1;
        }
        assert!(r.worker.backend_mut().take_wire(1).is_empty());
    }
    let allowed = u64::from(rate.burst) + 99 * u64::from(rate.per_sec) / 1000;
    assert_eq!(errors, allowed);
    let s = r.link.stats.snapshot();
    assert_eq!(s.icmp_errors_sent, allowed);
    assert_eq!(s.drops["ttl-exceeded"], allowed);
    assert_eq!(s.drops["ttl-exceeded-rate-limited"], 6400 - allowed);
    assert_eq!(s.rx_packets, s.verdicts());

    // Pod 1's expired packets are answered: pod 0 used up its own rate only.
    assert!(r.worker.backend_mut().inject(1, &ping(1, pod_ip(0), 1, 1)));
    settle(&mut r, 5_100 * MS);
    assert_eq!(r.worker.backend_mut().take_wire(1).len(), 1);
}

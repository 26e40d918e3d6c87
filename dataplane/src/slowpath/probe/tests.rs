//! Probes against a real TCP peer: a second smoltcp interface (the backend pod) on the other
//! end of the slow path's queues, so the handshake, the HTTP exchange and the closing FIN or
//! RST are real TCP without a kernel.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::queue::ArrayQueue;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

use super::*;
use crate::slowpath::{SlowPath, SlowPathLink, SlowPathStats};
use crate::tables::{Gateway, MacAddr, Mode, Neighbor, Tables};
use crate::worker::SlowFrame;

const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const GW_MAC: MacAddr = MacAddr([0x0e, 0, 0, 0, 0, 1]);
const POD: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 7);
/// A second address of the same peer, a second backend.
const POD2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 8);
const POD_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 7]);
/// Routed to the pod's port, but nothing answers there: the peer drops its frames.
const SILENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 9);

/// The backend's device: it receives what the slow path sends and answers into the slow
/// path's inbox. Frames for `SILENT` are lost, as to a host that is down.
struct PeerDevice {
    rx: Arc<ArrayQueue<SlowFrame>>,
    tx: Arc<ArrayQueue<SlowFrame>>,
    /// Frames taken from the slow path, with their bytes, to check what went on the wire.
    seen: Vec<Vec<u8>>,
}

struct PeerRx(Vec<u8>);
impl phy::RxToken for PeerRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

struct PeerTx<'a>(&'a ArrayQueue<SlowFrame>);
impl phy::TxToken for PeerTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        let sf = SlowFrame::new(3, &buf).expect("frame fits");
        assert!(self.0.push(sf).is_ok(), "slow path inbox full");
        r
    }
}

impl Device for PeerDevice {
    type RxToken<'a> = PeerRx;
    type TxToken<'a> = PeerTx<'a>;
    fn receive(&mut self, _: SmolInstant) -> Option<(PeerRx, PeerTx<'_>)> {
        loop {
            let f = self.rx.pop()?;
            let bytes = f.bytes().to_vec();
            self.seen.push(bytes.clone());
            // An IPv4 frame to the silent address, or an ARP request for it: lost.
            let silent = SILENT.octets();
            let lost = (bytes[12..14] == [8, 0] && bytes[30..34] == silent)
                || (bytes[12..14] == [8, 6] && bytes[38..42] == silent);
            if !lost {
                return Some((PeerRx(bytes), PeerTx(&self.tx)));
            }
        }
    }
    fn transmit(&mut self, _: SmolInstant) -> Option<PeerTx<'_>> {
        Some(PeerTx(&self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

/// The backend pod: a TCP server on 8080 that accepts 8 connections at once (a smoltcp
/// listening socket takes one), and an HTTP server on 80 answering `status`.
struct Peer {
    iface: Interface,
    dev: PeerDevice,
    sockets: SocketSet<'static>,
    tcp: Vec<SocketHandle>,
    http: SocketHandle,
    status: u16,
    epoch: Instant,
}

impl Peer {
    fn new(rx: Arc<ArrayQueue<SlowFrame>>, tx: Arc<ArrayQueue<SlowFrame>>, status: u16) -> Peer {
        let mut dev = PeerDevice {
            rx,
            tx,
            seen: Vec::new(),
        };
        let cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(POD_MAC.0)));
        let mut iface = Interface::new(cfg, &mut dev, SmolInstant::from_micros(0));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(POD), 24));
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(POD2), 24));
        });
        let mut sockets = SocketSet::new(Vec::new());
        let listener = |port: u16| {
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 2048]),
                tcp::SocketBuffer::new(vec![0; 2048]),
            );
            s.listen(port).unwrap();
            s
        };
        let tcp = (0..8).map(|_| sockets.add(listener(8080))).collect();
        let http = sockets.add(listener(80));
        Peer {
            iface,
            dev,
            sockets,
            tcp,
            http,
            status,
            epoch: Instant::now(),
        }
    }

    fn poll(&mut self) {
        let now = SmolInstant::from_micros(self.epoch.elapsed().as_micros() as i64);
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        let s = self.sockets.get_mut::<tcp::Socket>(self.http);
        if s.can_recv() {
            let mut req = [0u8; 1024];
            let n = s.recv_slice(&mut req).unwrap();
            assert!(
                req[..n].starts_with(b"GET /healthz HTTP/1.0\r\n"),
                "{:?}",
                String::from_utf8_lossy(&req[..n])
            );
            let answer = format!("HTTP/1.0 {} X\r\nContent-Length: 0\r\n\r\n", self.status);
            s.send_slice(answer.as_bytes()).unwrap();
            s.close();
        }
        // A closed server socket listens again, for the next probe.
        let servers = self.tcp.iter().map(|h| (*h, 8080));
        for (h, port) in servers.chain([(self.http, 80)]) {
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            if s.state() == tcp::State::CloseWait {
                s.close();
            }
            if !s.is_open() {
                s.listen(port).unwrap();
            }
        }
    }

    /// TCP flags of the frames the slow path sent to `port`.
    fn flags_to(&self, port: u16) -> Vec<u8> {
        self.dev
            .seen
            .iter()
            .filter(|f| f[12..14] == [8, 0] && f[23] == 6 && f[36..38] == port.to_be_bytes())
            .map(|f| f[47])
            .collect()
    }
}

fn tables() -> Tables {
    let mut t = Tables::new(
        1,
        Mode::Full,
        Gateway {
            mac: GW_MAC,
            ipv4: GW,
        },
    );
    for ip in [POD, POD2, SILENT] {
        t.add_route(
            ip,
            Neighbor {
                port: 3,
                mac: POD_MAC,
            },
        )
        .unwrap();
    }
    t
}

/// A slow path serving probes, and the backend peer on its queues.
fn setup(http_status: u16) -> (SlowPath, ProbeQueues, Peer) {
    let link = SlowPathLink {
        inbox: Arc::new(ArrayQueue::new(256)),
        outbox: Arc::new(ArrayQueue::new(256)),
        waker: None,
        tables: Arc::new(ArcSwap::from_pointee(tables())),
        signal: Arc::new(Signal::default()),
        stats: Arc::new(SlowPathStats::default()),
        neighbors: Default::default(),
    };
    let peer = Peer::new(
        Arc::clone(&link.outbox),
        Arc::clone(&link.inbox),
        http_status,
    );
    // The pod knows its gateway, as a kernel that has talked to it does: an ARP request from
    // the gateway teaches it (smoltcp, unlike a kernel, drops the packet that needed an ARP
    // request, so a pod that must ask would answer a probe's SYN only on its retransmission).
    let mut who_has = vec![0xff; 6];
    who_has.extend_from_slice(&GW_MAC.0);
    who_has.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    who_has.extend_from_slice(&GW_MAC.0);
    who_has.extend_from_slice(&GW.octets());
    who_has.extend_from_slice(&[0; 6]);
    who_has.extend_from_slice(&POD.octets());
    assert!(
        link.outbox
            .push(SlowFrame::new(3, &who_has).unwrap())
            .is_ok()
    );
    let queues = ProbeQueues::new(8, Arc::clone(&link.signal));
    let mut slow = SlowPath::new(link, 24);
    slow.serve_probes(queues.clone(), 0);
    (slow, queues, peer)
}

/// Polls both sides until `done` or 5 s.
fn drive(slow: &mut SlowPath, peer: &mut Peer, mut done: impl FnMut(&SlowPath) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done(slow) {
        assert!(Instant::now() < deadline, "not done within 5 s");
        slow.poll();
        peer.poll();
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn probe(
    slow: &mut SlowPath,
    peer: &mut Peer,
    q: &ProbeQueues,
    id: u64,
    target: SocketAddrV4,
    kind: ProbeKind,
    timeout_ms: u64,
) -> ProbeResult {
    q.submit(ProbeRequest {
        id,
        target,
        kind,
        timeout: Duration::from_millis(timeout_ms),
    })
    .unwrap();
    let mut got = None;
    drive(slow, peer, |_| {
        got = got.or_else(|| q.take_result());
        got.is_some()
    });
    let r = got.unwrap();
    assert_eq!((r.id, r.target), (id, target));
    // Then its socket goes, once smoltcp has sent what the close needs.
    drive(slow, peer, |s| s.sockets_held() == 0);
    assert_eq!(slow.probes_in_flight(), 0);
    r
}

const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const FIN: u8 = 0x01;

#[test]
fn a_probe_aborted_at_its_timeout_sends_a_rst() {
    // The pod accepts on 8080 but the probe's timeout is shorter than one poll round: no,
    // use HTTP to a TCP-only server, which never answers a status line.
    let (mut slow, q, mut peer) = setup(200);
    let target = SocketAddrV4::new(POD, 8080);
    let http = ProbeKind::Http {
        path: "/".into(),
        expect_status: 200,
    };
    let r = probe(&mut slow, &mut peer, &q, 7, target, http, 300);
    assert_eq!(r.outcome, ProbeOutcome::TimedOut);
    let flags = peer.flags_to(8080);
    assert!(flags.iter().any(|f| f & RST != 0), "no RST: {flags:x?}");
}

#[test]
fn a_tcp_probe_to_a_listening_port_is_healthy_and_closes_with_a_fin() {
    let (mut slow, q, mut peer) = setup(200);
    let target = SocketAddrV4::new(POD, 8080);
    let r = probe(&mut slow, &mut peer, &q, 1, target, ProbeKind::Tcp, 1000);
    assert_eq!(r.outcome, ProbeOutcome::Healthy);
    let flags = peer.flags_to(8080);
    assert_eq!(
        flags.first().map(|f| f & (SYN | 0x10)),
        Some(SYN),
        "{flags:x?}"
    );
    assert!(flags.iter().any(|f| f & FIN != 0), "no FIN: {flags:x?}");
    // From a probe port, which the workers judge by conntrack and policy.
    let first = peer
        .dev
        .seen
        .iter()
        .find(|f| f[12..14] == [8, 0] && f[23] == 6)
        .unwrap();
    let meta = is_probe_frame(first, GW).expect("a probe's SYN is a probe frame");
    assert!(PROBE_PORTS.contains(&meta.key.sport));
    assert_eq!((meta.key.dst, meta.key.dport), (POD, 8080));
}

#[test]
fn a_tcp_probe_to_a_closed_port_is_refused() {
    let (mut slow, q, mut peer) = setup(200);
    let target = SocketAddrV4::new(POD, 9999);
    let r = probe(&mut slow, &mut peer, &q, 2, target, ProbeKind::Tcp, 1000);
    assert_eq!(r.outcome, ProbeOutcome::Refused);
}

#[test]
fn an_http_probe_checks_the_status() {
    let (mut slow, q, mut peer) = setup(200);
    let target = SocketAddrV4::new(POD, 80);
    let http = |status| ProbeKind::Http {
        path: "/healthz".into(),
        expect_status: status,
    };
    let r = probe(&mut slow, &mut peer, &q, 3, target, http(200), 1000);
    assert_eq!(r.outcome, ProbeOutcome::Healthy);
    let r = probe(&mut slow, &mut peer, &q, 4, target, http(204), 1000);
    assert_eq!(r.outcome, ProbeOutcome::BadStatus(200));
    let bad = ProbeKind::Http {
        path: "/a b".into(),
        expect_status: 200,
    };
    let r = probe(&mut slow, &mut peer, &q, 5, target, bad, 1000);
    assert_eq!(r.outcome, ProbeOutcome::BadRequest);
}

#[test]
fn a_probe_nobody_answers_times_out_and_frees_its_socket() {
    let (mut slow, q, mut peer) = setup(200);
    let target = SocketAddrV4::new(SILENT, 8080);
    let start = Instant::now();
    let r = probe(&mut slow, &mut peer, &q, 6, target, ProbeKind::Tcp, 200);
    assert_eq!(r.outcome, ProbeOutcome::TimedOut);
    assert!(r.took >= Duration::from_millis(200), "{:?}", r.took);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn probes_run_side_by_side_on_distinct_ports_and_a_full_queue_hands_requests_back() {
    let (mut slow, q, mut peer) = setup(200);
    let target = SocketAddrV4::new(POD, 8080);
    for id in 0..8 {
        q.submit(ProbeRequest {
            id,
            target,
            kind: ProbeKind::Tcp,
            timeout: Duration::from_secs(1),
        })
        .unwrap();
    }
    let extra = ProbeRequest {
        id: 99,
        target,
        kind: ProbeKind::Tcp,
        timeout: Duration::from_secs(1),
    };
    assert_eq!(q.submit(extra.clone()), Err(extra));
    let mut results = Vec::new();
    drive(&mut slow, &mut peer, |_| {
        while let Some(r) = q.take_result() {
            results.push(r);
        }
        results.len() == 8
    });
    assert!(results.iter().all(|r| r.outcome.healthy()), "{results:?}");
    drive(&mut slow, &mut peer, |s| s.sockets_held() == 0);
    let syn_ports: std::collections::BTreeSet<u16> = peer
        .dev
        .seen
        .iter()
        .filter(|f| f[12..14] == [8, 0] && f[23] == 6 && f[47] == SYN)
        .map(|f| u16::from_be_bytes([f[34], f[35]]))
        .collect();
    assert_eq!(syn_ports.len(), 8, "{syn_ports:?}");
}

#[test]
fn probes_to_new_backends_at_once_do_not_wait_for_arp() {
    // smoltcp sends one ARP request a second for the whole interface: without the tables'
    // neighbours given to it first, the second backend's probe would wait out its timeout.
    let (mut slow, q, mut peer) = setup(200);
    for (id, ip) in [(1, POD), (2, POD2)] {
        q.submit(ProbeRequest {
            id,
            target: SocketAddrV4::new(ip, 8080),
            kind: ProbeKind::Tcp,
            timeout: Duration::from_millis(300),
        })
        .unwrap();
    }
    let mut results = Vec::new();
    drive(&mut slow, &mut peer, |_| {
        results.extend(std::iter::from_fn(|| q.take_result()));
        results.len() == 2
    });
    assert!(results.iter().all(|r| r.outcome.healthy()), "{results:?}");
    // Nor did the slow path ask: it had the answer from the tables.
    let arp_requests = peer
        .dev
        .seen
        .iter()
        .filter(|f| f[12..14] == [8, 6] && f[21] == 1);
    assert_eq!(arp_requests.count(), 1, "only the set-up's");
}

#[test]
fn only_the_gateways_tcp_and_udp_from_probe_ports_are_probe_frames() {
    // Ethernet + IPv4 + TCP header from `src`:`sport` to the pod, with a valid IP checksum.
    let frame = |src: Ipv4Addr, proto: u8, sport: u16| {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[0..6].copy_from_slice(&POD_MAC.0);
        f[6..12].copy_from_slice(&GW_MAC.0);
        f[12..14].copy_from_slice(&[8, 0]);
        f[14..24].copy_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, proto]);
        f[26..30].copy_from_slice(&src.octets());
        f[30..34].copy_from_slice(&POD.octets());
        let sum = crate::checksum::checksum(&f[14..34]);
        f[24..26].copy_from_slice(&sum.to_be_bytes());
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&8080u16.to_be_bytes());
        f[46] = 0x50;
        f[47] = SYN;
        f
    };
    assert!(is_probe_frame(&frame(GW, 6, 40000), GW).is_some());
    assert!(is_probe_frame(&frame(GW, 17, 40999), GW).is_some());
    assert!(is_probe_frame(&frame(GW, 6, 39999), GW).is_none());
    assert!(is_probe_frame(&frame(GW, 6, 41000), GW).is_none());
    assert!(is_probe_frame(&frame(GW, 1, 40000), GW).is_none());
    assert!(is_probe_frame(&frame(POD, 6, 40000), GW).is_none());
}

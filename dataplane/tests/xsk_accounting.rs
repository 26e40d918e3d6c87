//! Privileged: the worker on real AF_XDP sockets (veth, native XDP, copy mode) forwards
//! 1,000,000 packets, and afterwards every UMEM frame is accounted for: none held, none stuck
//! in TX, and the fill rings hold exactly what the ledger says.
//!
//! Builds its own namespaces (a node and two pods) behind a guard that deletes them even on
//! panic. Skips, saying why, when not root.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::queue::ArrayQueue;
use xylem_dataplane::ledger::Place;
use xylem_dataplane::slowpath::Signal;
use xylem_dataplane::tables::{Gateway, MacAddr, Mode, Neighbor, Tables};
use xylem_dataplane::worker::{Placement, Worker, WorkerConfig, WorkerLink};

use common::{
    GW_MAC, Netns, attach_redirector, bind_sockets, enter, ifindex, ip, mac_of, port_specs,
};

const PACKETS: u64 = 1_000_000;

fn udp_frame(src_mac: [u8; 6]) -> Vec<u8> {
    flow_frame(src_mac, ([10, 201, 0, 10], 40000), ([10, 201, 0, 11], 9))
}

/// A UDP frame to the gateway's MAC from `src` to `dst` (address, port).
fn flow_frame(src_mac: [u8; 6], src: ([u8; 4], u16), dst: ([u8; 4], u16)) -> Vec<u8> {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2(src_mac, GW_MAC)
        .ipv4(src.0, dst.0, 64)
        .udp(src.1, dst.1)
        .write(&mut v, &[0xab; 64])
        .unwrap();
    v
}

/// A node namespace and two pods behind it: pod a (10.201.0.10) on `dpa`, pod b
/// (10.201.0.11) on `dpb`, veths with `queues` queues each way. Deleted when dropped.
struct Pods {
    node: String,
    pa: String,
    pb: String,
    mac_a: [u8; 6],
    mac_b: [u8; 6],
    _guard: Netns,
}

impl Pods {
    fn new(tag: &str, queues: u32) -> Pods {
        let (node, pa, pb) = (format!("{tag}-n"), format!("{tag}-a"), format!("{tag}-b"));
        let guard = Netns(vec![node.clone(), pa.clone(), pb.clone()]);
        for n in [&node, &pa, &pb] {
            ip(&["netns", "add", n]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        let q = queues.to_string();
        for (dp, pod, addr) in [
            ("dpa", &pa, "10.201.0.10/32"),
            ("dpb", &pb, "10.201.0.11/32"),
        ] {
            ip(&[
                "-n",
                &node,
                "link",
                "add",
                dp,
                "numtxqueues",
                &q,
                "numrxqueues",
                &q,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                pod,
                "numtxqueues",
                &q,
                "numrxqueues",
                &q,
            ]);
            ip(&["-n", pod, "addr", "add", addr, "dev", "eth0"]);
            ip(&["-n", pod, "link", "set", "eth0", "up"]);
            ip(&["-n", &node, "link", "set", dp, "up"]);
            ip(&[
                "-n",
                pod,
                "route",
                "add",
                "10.201.0.1",
                "dev",
                "eth0",
                "scope",
                "link",
            ]);
            ip(&["-n", pod, "route", "add", "default", "via", "10.201.0.1"]);
            ip(&[
                "-n",
                pod,
                "neigh",
                "add",
                "10.201.0.1",
                "lladdr",
                "0e:78:79:6c:00:01",
                "dev",
                "eth0",
                "nud",
                "permanent",
            ]);
        }
        Pods {
            mac_a: mac_of(&pa, "eth0"),
            mac_b: mac_of(&pb, "eth0"),
            node,
            pa,
            pb,
            _guard: guard,
        }
    }

    /// Tables with routes to both pods (pod a on port 0, pod b on port 1).
    fn tables(&self, mode: Mode) -> Tables {
        let mut t = Tables::new(
            1,
            mode,
            Gateway {
                mac: MacAddr(GW_MAC),
                ipv4: "10.201.0.1".parse().unwrap(),
            },
        );
        for (addr, port, mac) in [
            ("10.201.0.10", 0, self.mac_a),
            ("10.201.0.11", 1, self.mac_b),
        ] {
            t.add_route(
                addr.parse().unwrap(),
                Neighbor {
                    port,
                    mac: MacAddr(mac),
                },
            )
            .unwrap();
        }
        t
    }
}

/// Sends `frames` in turn from `netns`'s `eth0` through a raw packet socket until `enough()`
/// (or 240 s, then panics). Returns how many were sent.
fn blast(netns: &str, frames: Vec<Vec<u8>>, enough: impl Fn() -> bool + Send + 'static) -> u64 {
    enter(netns);
    // SAFETY: plain socket(2); the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: zeroed sockaddr_ll is valid; fields set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex("eth0") as i32;
    // SAFETY: sll is a valid sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut sent = 0u64;
    while !enough() {
        assert!(Instant::now() < deadline, "the workers got too few frames");
        for f in frames.iter().cycle().take(1000) {
            // SAFETY: `f` is a valid buffer of the given length.
            let n = unsafe { libc::send(fd, f.as_ptr().cast(), f.len(), 0) };
            if n > 0 {
                sent += 1;
            }
        }
    }
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    sent
}

#[test]
fn frame_accounting_holds_after_a_million_packets_on_af_xdp() {
    if !common::root_or_skip("frame_accounting_holds_after_a_million_packets_on_af_xdp") {
        return;
    }
    let pods = Pods::new(&format!("xyt{}", std::process::id()), 1);
    let (node, pa, mac_a) = (pods.node.clone(), pods.pa.clone(), pods.mac_a);
    let t = pods.tables(Mode::Passthrough);
    let tables = Arc::new(ArcSwap::from_pointee(t));
    let link = WorkerLink::new(
        tables,
        Arc::new(ArrayQueue::new(64)),
        Arc::new(Signal::default()),
    );
    let stats = Arc::clone(&link.stats);
    let stop = Arc::clone(&link.stop);
    let ready = Arc::new(AtomicBool::new(false));

    let node2 = node.clone();
    let ready2 = Arc::clone(&ready);
    let worker_thread = std::thread::spawn(move || {
        enter(&node2);
        let mut r = attach_redirector(&["dpa", "dpb"]).unwrap();
        let backend = bind_sockets(&mut r, &port_specs(&["dpa", "dpb"], 0), 512, 256).unwrap();
        let cfg = WorkerConfig {
            placement: Placement::Dedicated,
            batch_size: 64,
            ..WorkerConfig::default()
        };
        let w = Worker::new(cfg, backend, link).unwrap();
        ready2.store(true, Ordering::Release);
        let mut w = w.run().unwrap();
        let result = w.check_quiescent();
        let l = w.ledger().clone();
        drop(r);
        (result, l)
    });
    while !ready.load(Ordering::Acquire) {
        assert!(
            !worker_thread.is_finished(),
            "the worker thread failed to start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // Pod A blasts UDP at pod B through the gateway with a raw packet socket, until the
    // worker has received a million frames.
    let stats2 = Arc::clone(&stats);
    let frame = udp_frame(mac_a);
    let sender = std::thread::spawn(move || {
        blast(&pa, vec![frame], move || stats2.rx_packets.get() >= PACKETS)
    });
    let sent = sender.join().unwrap();

    // Let the last frames drain, then stop the worker and check its books.
    let mut last = stats.tx_packets.get();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = stats.tx_packets.get();
        if now == last {
            break;
        }
        last = now;
    }
    stop.store(true, Ordering::Relaxed);
    let (result, ledger) = worker_thread.join().unwrap();
    result.unwrap_or_else(|e| panic!("{e}"));
    let s = stats.snapshot();
    eprintln!("sent {sent}, worker {s:?}, ledger {ledger:?}");
    assert!(s.rx_packets >= PACKETS);
    assert!(s.forwarded >= PACKETS * 99 / 100, "{s:?}");
    assert_eq!(s.rx_packets, s.verdicts(), "{s:?}");
    assert_eq!(
        s.tx_packets,
        s.forwarded + s.icmp_errors_sent + s.slowpath_replies_sent,
        "{s:?}"
    );
    assert_eq!(ledger.count(Place::Held), 0);
    assert_eq!(ledger.count(Place::Tx), 0);
}

/// Two workers in full mode sharing one conntrack, each with a socket on its own queue of
/// two-queue veths (as the agent sets them up): pod a sends 64 UDP flows to pod b and pod b
/// answers each of them, a million frames in all, spread over both queues by the kernel's
/// per-flow transmit hash. Afterwards every UMEM frame of each worker is accounted for, both
/// workers carried traffic, and the conntrack holds exactly one entry per flow, each having
/// seen its reply, whichever workers carried its two directions.
#[test]
fn frame_accounting_holds_with_two_workers_sharing_one_conntrack() {
    use xylem_dataplane::conntrack::{Conntrack, CtConfig};
    const FLOWS: u16 = 64;
    if !common::root_or_skip("frame_accounting_holds_with_two_workers_sharing_one_conntrack") {
        return;
    }
    let pods = Pods::new(&format!("xyu{}", std::process::id()), 2);
    let tables = Arc::new(ArcSwap::from_pointee(pods.tables(Mode::Full)));
    let ct = Conntrack::new(&CtConfig {
        capacity: 4096,
        ..CtConfig::default()
    });
    let epoch = Instant::now();
    let links: Vec<WorkerLink> = (0..2)
        .map(|_| {
            let mut l = WorkerLink::new(
                Arc::clone(&tables),
                Arc::new(ArrayQueue::new(64)),
                Arc::new(Signal::default()),
            );
            // The table compares the workers' timestamps: one clock origin.
            l.epoch = epoch;
            l
        })
        .collect();
    let received = {
        let links = links.clone();
        move || links.iter().map(|l| l.stats.rx_packets.get()).sum::<u64>()
    };

    // The node's thread attaches the program, binds each worker's sockets on its queue and
    // starts the workers; it keeps the redirector until they stop.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let node = pods.node.clone();
    let (links2, ct2) = (links.clone(), ct.clone());
    let node_thread = std::thread::spawn(move || {
        enter(&node);
        let mut r = attach_redirector(&["dpa", "dpb"]).unwrap();
        let mut workers = Vec::new();
        for (w, link) in links2.into_iter().enumerate() {
            let specs = port_specs(&["dpa", "dpb"], w as u32);
            let backend = bind_sockets(&mut r, &specs, 512, 256).unwrap();
            let cfg = WorkerConfig {
                id: w,
                placement: Placement::Shared,
                batch_size: 64,
                ..WorkerConfig::default()
            };
            let worker = Worker::with_conntrack(cfg, backend, link, ct2.clone()).unwrap();
            workers.push(std::thread::spawn(move || {
                let mut w = worker.run().unwrap();
                (w.check_quiescent(), w.ledger().clone())
            }));
        }
        ready_tx.send(()).unwrap();
        let books: Vec<_> = workers.into_iter().map(|t| t.join().unwrap()).collect();
        drop(r);
        books
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the workers start");

    // Pod a sends its flows, pod b their replies, until the workers received a million frames.
    let (a, b) = ([10, 201, 0, 10], [10, 201, 0, 11]);
    let requests: Vec<Vec<u8>> = (0..FLOWS)
        .map(|i| flow_frame(pods.mac_a, (a, 40000 + i), (b, 9)))
        .collect();
    let replies: Vec<Vec<u8>> = (0..FLOWS)
        .map(|i| flow_frame(pods.mac_b, (b, 9), (a, 40000 + i)))
        .collect();
    let senders: Vec<_> = [(pods.pa.clone(), requests), (pods.pb.clone(), replies)]
        .into_iter()
        .map(|(ns, frames)| {
            let received = received.clone();
            std::thread::spawn(move || blast(&ns, frames, move || received() >= PACKETS))
        })
        .collect();
    let sent: u64 = senders.into_iter().map(|s| s.join().unwrap()).sum();

    // Let the last frames drain, then stop the workers and check their books.
    let sent_by_workers = || links.iter().map(|l| l.stats.tx_packets.get()).sum::<u64>();
    let mut last = sent_by_workers();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = sent_by_workers();
        if now == last {
            break;
        }
        last = now;
    }
    for l in &links {
        l.stop.store(true, Ordering::Relaxed);
    }
    let books = node_thread.join().unwrap();
    let mut rx = 0;
    for (w, ((result, ledger), link)) in books.into_iter().zip(&links).enumerate() {
        result.unwrap_or_else(|e| panic!("worker {w}: {e}"));
        let s = link.stats.snapshot();
        eprintln!("worker {w}: {s:?}, ledger {ledger:?}");
        assert!(s.rx_packets > 0, "worker {w} saw no traffic");
        assert!(s.forwarded >= s.rx_packets * 99 / 100, "worker {w}: {s:?}");
        assert_eq!(
            s.rx_packets,
            s.forwarded + s.total_drops() + s.to_slowpath,
            "worker {w}: {s:?}"
        );
        assert_eq!(s.tx_packets, s.forwarded - s.drops["tx-ring-full"], "{s:?}");
        assert_eq!(ledger.count(Place::Held), 0);
        assert_eq!(ledger.count(Place::Tx), 0);
        rx += s.rx_packets;
    }
    eprintln!("sent {sent}, received {rx}, conntrack {:?}", ct.stats());
    assert!(rx >= PACKETS);
    let now = epoch.elapsed().as_nanos() as u64;
    let entries: Vec<_> = ct.entries(now).collect();
    assert_eq!(entries.len(), usize::from(FLOWS), "{entries:?}");
    assert_eq!(ct.len(), usize::from(FLOWS));
    let mut ports: Vec<u16> = entries
        .iter()
        .map(|e| {
            assert!(e.seen_reply, "{e:?}");
            let (client, port) = if e.orig.dport == 9 {
                (e.orig.src, e.orig.sport)
            } else {
                (e.orig.dst, e.orig.dport)
            };
            assert_eq!(client.octets(), a, "{e:?}");
            port
        })
        .collect();
    ports.sort_unstable();
    assert_eq!(ports, (40000..40000 + FLOWS).collect::<Vec<_>>());
    assert_eq!(ct.stats().created, u64::from(FLOWS), "{:?}", ct.stats());
}

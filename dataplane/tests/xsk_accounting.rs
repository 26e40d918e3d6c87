//! Privileged: the worker on real AF_XDP sockets (veth, native XDP, copy mode) forwards
//! 1,000,000 packets, and afterwards every UMEM frame is accounted for: none held, none stuck
//! in TX, and the fill rings hold exactly what the ledger says.
//!
//! Builds its own namespaces (a node and two pods) behind a guard that deletes them even on
//! panic. Skips, saying why, when not root.

use std::os::fd::AsFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::queue::ArrayQueue;
use xdp_redirector::{RedirectFlags, Redirector, XdpModeRequest};
use xylem_dataplane::io::afxdp::{PortSpec, XskBackend, XskOptions};
use xylem_dataplane::ledger::Place;
use xylem_dataplane::slowpath::Signal;
use xylem_dataplane::tables::{Gateway, MacAddr, Mode, Neighbor, Tables};
use xylem_dataplane::worker::{Placement, Worker, WorkerConfig, WorkerLink};

const GW_MAC: [u8; 6] = [0x0e, 0x78, 0x79, 0x6c, 0, 1];
const PACKETS: u64 = 1_000_000;

fn ip(args: &[&str]) -> String {
    let o = Command::new("ip").args(args).output().expect("ip");
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

struct Netns(Vec<String>);
impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "delete", n]).output();
        }
    }
}

fn enter(netns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{netns}")).expect("netns file");
    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

fn mac_of(netns: &str, ifname: &str) -> [u8; 6] {
    let out = ip(&["-n", netns, "-j", "link", "show", ifname]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let m: MacAddr = v[0]["address"].as_str().unwrap().parse().unwrap();
    m.0
}

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C string.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

fn udp_frame(src_mac: [u8; 6]) -> Vec<u8> {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2(src_mac, GW_MAC)
        .ipv4([10, 201, 0, 10], [10, 201, 0, 11], 64)
        .udp(40000, 9)
        .write(&mut v, &[0xab; 64])
        .unwrap();
    v
}

#[test]
fn frame_accounting_holds_after_a_million_packets_on_af_xdp() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED frame_accounting_holds_after_a_million_packets_on_af_xdp: needs root");
        return;
    }
    let tag = format!("xyt{}", std::process::id());
    let (node, pa, pb) = (format!("{tag}-n"), format!("{tag}-a"), format!("{tag}-b"));
    let _guard = Netns(vec![node.clone(), pa.clone(), pb.clone()]);
    for n in [&node, &pa, &pb] {
        ip(&["netns", "add", n]);
        ip(&["-n", n, "link", "set", "lo", "up"]);
    }
    for (dp, pod, addr) in [
        ("dpa", &pa, "10.201.0.10/32"),
        ("dpb", &pb, "10.201.0.11/32"),
    ] {
        ip(&[
            "-n", &node, "link", "add", dp, "type", "veth", "peer", "name", "eth0", "netns", pod,
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
    let mac_a = mac_of(&pa, "eth0");
    let mac_b = mac_of(&pb, "eth0");

    let mut t = Tables::new(
        1,
        Mode::Passthrough,
        Gateway {
            mac: MacAddr(GW_MAC),
            ipv4: "10.201.0.1".parse().unwrap(),
        },
    );
    t.add_route(
        "10.201.0.10".parse().unwrap(),
        Neighbor {
            port: 0,
            mac: MacAddr(mac_a),
        },
    )
    .unwrap();
    t.add_route(
        "10.201.0.11".parse().unwrap(),
        Neighbor {
            port: 1,
            mac: MacAddr(mac_b),
        },
    )
    .unwrap();
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
        let mut r = Redirector::load().unwrap();
        for i in ["dpa", "dpb"] {
            r.attach(i, XdpModeRequest::Native, RedirectFlags::default())
                .unwrap();
        }
        let specs: Vec<PortSpec> = ["dpa", "dpb"]
            .iter()
            .map(|n| PortSpec {
                ifname: n.to_string(),
                ifindex: ifindex(n),
                queue: 0,
            })
            .collect();
        let backend = XskBackend::new(
            &specs,
            XskOptions {
                ring_size: 512,
                zero_copy: false,
            },
            256,
        )
        .unwrap();
        for (idx, q, fd) in backend.socket_fds() {
            r.register_socket(idx, q, fd).unwrap();
        }
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
    let pa2 = pa.clone();
    let stats2 = Arc::clone(&stats);
    let sender = std::thread::spawn(move || {
        enter(&pa2);
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
        let frame = udp_frame(mac_a);
        let deadline = Instant::now() + Duration::from_secs(240);
        let mut sent = 0u64;
        while stats2.rx_packets.get() < PACKETS {
            assert!(
                Instant::now() < deadline,
                "only {} frames reached the worker",
                stats2.rx_packets.get()
            );
            for _ in 0..1000 {
                // SAFETY: frame is a valid buffer of the given length.
                let n = unsafe { libc::send(fd, frame.as_ptr().cast(), frame.len(), 0) };
                if n > 0 {
                    sent += 1;
                }
            }
        }
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        sent
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

//! Privileged end-to-end test of the slow path's fair share: a pod flooding the gateway with ARP
//! requests from a raw socket, as fast as it can, while another pod pings the gateway.
//!
//! It brings up its own lab (a unique name) behind a guard that brings it down again even if
//! the test panics. It needs root; without it, it prints why and skips.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

#[macro_use]
mod common;
use common::*;

fn mac_bytes(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// A genuine ARP request for `gateway` from `mac` / `ip`, broadcast: what passes the
/// dataplane's ingress checks and goes to the slow path.
fn arp_request(mac: [u8; 6], ip: Ipv4Addr, gateway: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&gateway.octets());
    f
}

/// Sends `frame` from `eth0` of namespace `ns` through a raw packet socket, as fast as the
/// socket takes it, until `stop` is set; returns how many frames went out.
fn flood(ns: &str, frame: Vec<u8>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let sent = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&sent);
    let sender = in_netns(ns, move || {
        // SAFETY: plain socket(2), sendto(2) and close(2) on a socket this closure owns; the
        // address and the buffer outlive the calls that read them.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            );
            assert!(
                fd >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            let ifindex = libc::if_nametoindex(c"eth0".as_ptr());
            assert!(ifindex > 0);
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
            while !stop.load(Ordering::Relaxed) {
                let n = libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    std::ptr::addr_of!(addr).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                if n > 0 {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            }
            libc::close(fd);
        }
    });
    std::thread::spawn(move || {
        sender.join().unwrap();
        sent.load(Ordering::Relaxed)
    })
}

/// How many of `count` pings from `ns` to `ip` (one every 0.1 s) were answered.
fn pings_answered(ns: &str, ip: Ipv4Addr, count: u32) -> u32 {
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        ns,
        "ping",
        "-c",
        &count.to_string(),
        "-i",
        "0.1",
        "-W",
        "2",
        &ip.to_string(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let (_, rest) = l.split_once(" packets transmitted, ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no ping summary in {text}"))
}

/// pod-a floods the gateway with ARP requests while pod-b pings it: pod-b's pings are all
/// answered, and pod-a's flood is held to its rate (`slowpath-rate-limited`).
#[test]
fn a_pod_flooding_the_gateway_with_arp_does_not_crowd_out_another() {
    require_root!();
    let lab = LabGuard::up(&[]);
    let (ns_a, ip_a) = lab.pod("pod-a");
    let (ns_b, _) = lab.pod("pod-b");
    let gw: Ipv4Addr = lab.status()["nodes"][0]["gateway"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mac_a = mac_bytes(&mac_in(&ns_a, "eth0"));
    assert_eq!(
        pings_answered(&ns_b, gw, 2),
        2,
        "pod-b cannot ping the gateway"
    );
    let limited = |lab: &LabGuard| {
        lab.agent()["totals"]["drops"]["slowpath-rate-limited"]
            .as_u64()
            .unwrap()
    };
    let before = limited(&lab);

    let stop = Arc::new(AtomicBool::new(false));
    let flooder = flood(&ns_a, arp_request(mac_a, ip_a, gw), Arc::clone(&stop));
    // Let the flood build up before pod-b asks.
    std::thread::sleep(Duration::from_millis(300));
    let answered = pings_answered(&ns_b, gw, 20);
    let during = limited(&lab);
    stop.store(true, Ordering::Relaxed);
    let sent = flooder.join().unwrap();

    assert_eq!(
        answered, 20,
        "pod-b's pings during pod-a's flood of {sent} ARP requests"
    );
    assert!(
        during - before > 1_000,
        "pod-a sent {sent} ARP requests but only {} were held back by its rate",
        during - before
    );
    let st = lab.agent();
    assert!(
        st["totals"]["to_slowpath"].as_u64().unwrap() < sent,
        "the slow path got all of pod-a's {sent} frames: {}",
        st["totals"]
    );
}

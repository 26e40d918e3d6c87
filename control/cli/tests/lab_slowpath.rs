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
        let sock = raw::PacketSocket::open("eth0");
        while !stop.load(Ordering::Relaxed) {
            if sock.send(&frame) {
                counted.fetch_add(1, Ordering::Relaxed);
            }
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
    let mac_a = raw::parse_mac(&mac_in(&ns_a, "eth0"));
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

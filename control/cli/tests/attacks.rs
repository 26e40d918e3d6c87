//! A pod is only itself, and nothing walks around the dataplane: attacks sent from inside a pod
//! with a raw packet socket, against the lab's real agent. Each test asserts what arrived (or
//! not) at the target, and the drop counters the agent reports. Needs root; skips without it.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

#[macro_use]
mod common;
use common::raw::*;
use common::*;

const ETH_IPV4: u16 = 0x0800;
const ETH_ARP: u16 = 0x0806;
const ETH_IPV6: u16 = 0x86dd;
const ETH_LLDP: u16 = 0x88cc;
const BROADCAST: [u8; 6] = [0xff; 6];
/// The port the node's UDP listener binds on every address (0.0.0.0).
const NODE_PORT: u16 = 9997;
/// The port the target pod's capture looks for SYNs to.
const SYN_PORT: u16 = 9998;

/// The MAC address of `ifname` in namespace `netns`, as bytes.
fn mac_of(netns: &str, ifname: &str) -> [u8; 6] {
    let v: Vec<u8> = mac_in(netns, ifname)
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// The agent's drop counters by reason.
fn drops(lab: &LabGuard) -> BTreeMap<String, u64> {
    serde_json::from_value(lab.agent()["totals"]["drops"].clone()).unwrap()
}

/// Waits (up to 3 s) until the drop counters moved by `want` from `before`, and asserts that
/// they moved by exactly that for each reason named.
fn assert_drops_moved(lab: &LabGuard, before: &BTreeMap<String, u64>, want: &[(&str, u64)]) {
    let delta = |now: &BTreeMap<String, u64>, r: &str| now[r] - before[r];
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut now = drops(lab);
    while want.iter().any(|(r, n)| delta(&now, r) < *n) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        now = drops(lab);
    }
    let got: Vec<(&str, u64)> = want.iter().map(|(r, _)| (*r, delta(&now, r))).collect();
    assert_eq!(got, want, "drop counters moved by");
}

/// The TCP SYNs to [`SYN_PORT`] among `frames`: (source IP, source MAC).
fn syns(frames: &[Vec<u8>]) -> Vec<(Ipv4Addr, [u8; 6])> {
    frames
        .iter()
        .filter(|f| f.len() >= 54 && f[12..14] == ETH_IPV4.to_be_bytes() && f[23] == 6)
        .filter(|f| f[36..38] == SYN_PORT.to_be_bytes() && f[47] & 0x12 == 0x02)
        .map(|f| {
            let ip = Ipv4Addr::new(f[26], f[27], f[28], f[29]);
            (ip, f[6..12].try_into().unwrap())
        })
        .collect()
}

struct Pods {
    lab: LabGuard,
    a: (String, Ipv4Addr, [u8; 6]),
    b: (String, Ipv4Addr),
    c: (String, Ipv4Addr),
    gateway: Ipv4Addr,
    host: Ipv4Addr,
    node: String,
}

impl Pods {
    fn up() -> Pods {
        let lab = LabGuard::up(&[]);
        let (ns_a, ip_a) = lab.pod("pod-a");
        let mac_a = mac_of(&ns_a, "eth0");
        let st = lab.status();
        let ip = |k: &str| st["nodes"][0][k].as_str().unwrap().parse().unwrap();
        let (gateway, host) = (ip("gateway"), ip("host_ip"));
        Pods {
            a: (ns_a, ip_a, mac_a),
            b: lab.pod("pod-b"),
            c: lab.pod("pod-c"),
            gateway,
            host,
            node: lab.node_netns(),
            lab,
        }
    }

    /// pod-a's port: the node's end of its veth.
    fn port_a(&self) -> String {
        let st = self.lab.status();
        let pods = st["pods"].as_array().unwrap();
        let a = pods.iter().find(|p| p["name"] == "pod-a").unwrap();
        a["interface"].as_str().unwrap().to_string()
    }
}

/// A TCP SYN from pod-a claiming pod-b's address, the gateway's, the host port's, or pod-a's
/// own address with another MAC never reaches pod-c (a capture in pod-c sees none), and each is
/// counted; pod-a's genuine SYN does arrive.
#[test]
fn a_forged_tcp_syn_never_reaches_its_target() {
    require_root!();
    let p = Pods::up();
    let (ns_a, ip_a, mac_a) = p.a.clone();
    let (ns_c, ip_c) = p.c.clone();
    let gw_mac = xylem_lab::GATEWAY_MAC.0;
    // pod-a's kernel resolves the gateway, so that pod-c's answer to the genuine SYN goes out.
    assert!(ping(&ns_a, ip_c, 1), "pod-a cannot reach pod-c at all");
    let forged_mac = [0x02, 0xde, 0xad, 0xbe, 0xef, 0x01];
    let before = drops(&p.lab);
    let seen = capture(&ns_c, Duration::from_millis(1500));
    let mut frames: Vec<Vec<u8>> = [(mac_a, p.b.1), (mac_a, p.gateway), (mac_a, p.host)]
        .into_iter()
        .chain([(forged_mac, ip_a)])
        .map(|(mac, src)| eth(gw_mac, mac, None, ETH_IPV4, &tcp_syn(src, ip_c, SYN_PORT)))
        .collect();
    frames.push(eth(
        gw_mac,
        mac_a,
        None,
        ETH_IPV4,
        &tcp_syn(ip_a, ip_c, SYN_PORT),
    ));
    send_frames(&ns_a, frames);
    let seen = seen.join().unwrap();
    assert_eq!(
        syns(&seen),
        vec![(ip_a, gw_mac)],
        "the SYNs pod-c received (source IP, source MAC)"
    );
    assert_drops_moved(
        &p.lab,
        &before,
        &[("invalid-source-ip", 3), ("invalid-source-mac", 1)],
    );
}

/// ARP from pod-a claiming pod-b's address (a request to the gateway and a gratuitous reply)
/// is dropped `arp-spoofed`; the gateway still answers pod-b, and routes pod-c's traffic to
/// pod-b, not to pod-a.
#[test]
fn arp_claiming_another_pods_address_changes_nothing() {
    require_root!();
    let p = Pods::up();
    let (ns_a, _, mac_a) = p.a.clone();
    let (ns_b, ip_b) = p.b.clone();
    let (ns_c, _) = p.c.clone();
    let gw_mac = xylem_lab::GATEWAY_MAC.0;
    assert!(ping(&ns_b, p.gateway, 1), "pod-b cannot ping its gateway");
    let before = drops(&p.lab);
    send_frames(
        &ns_a,
        vec![
            eth(
                BROADCAST,
                mac_a,
                None,
                ETH_ARP,
                &arp(1, (mac_a, ip_b), ([0; 6], p.gateway)),
            ),
            eth(
                gw_mac,
                mac_a,
                None,
                ETH_ARP,
                &arp(2, (mac_a, ip_b), (gw_mac, p.gateway)),
            ),
        ],
    );
    assert_drops_moved(&p.lab, &before, &[("arp-spoofed", 2)]);
    // pod-a sees none of what is meant for pod-b: the gateway's echo replies, pod-c's pings.
    let at_a = capture(&ns_a, Duration::from_millis(2500));
    assert!(
        ping(&ns_b, p.gateway, 3),
        "the gateway stopped answering pod-b"
    );
    assert!(ping(&ns_c, ip_b, 3), "pod-c cannot reach pod-b any more");
    let to_b = at_a
        .join()
        .unwrap()
        .into_iter()
        .filter(|f| f.len() >= 34 && f[12..14] == ETH_IPV4.to_be_bytes())
        .filter(|f| f[30..34] == ip_b.octets())
        .count();
    assert_eq!(to_b, 0, "frames for pod-b that reached pod-a");
}

/// The frames a pod could use to reach the node's own stack around the dataplane, and the drop
/// reason the dataplane gives each (the genuine datagram to the node, last, is forwarded).
fn frames_at_the_node(p: &Pods) -> Vec<(Vec<u8>, Option<&'static str>)> {
    let (ip_a, mac_a) = (p.a.1, p.a.2);
    let gw_mac = xylem_lab::GATEWAY_MAC.0;
    let port = p.port_a();
    let port_mac = mac_of(&p.node, &port);
    let zero = Ipv4Addr::UNSPECIFIED;
    let udp = |dst_mac, vlan, src, dst, what: &str| {
        eth(
            dst_mac,
            mac_a,
            vlan,
            ETH_IPV4,
            &udp4(src, dst, NODE_PORT, what.as_bytes()),
        )
    };
    let mcast_mac = [0x01, 0x00, 0x5e, 0, 0, 1];
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let me6 = link_local(mac_a);
    vec![
        (
            udp(port_mac, Some(0), ip_a, p.host, "vlan0 to the port's mac"),
            Some("not-for-gateway"),
        ),
        (
            udp(gw_mac, Some(0), ip_a, p.host, "vlan0 to the gateway"),
            Some("unsupported-ethertype"),
        ),
        (
            udp(
                BROADCAST,
                Some(0),
                zero,
                Ipv4Addr::BROADCAST,
                "vlan0 broadcast",
            ),
            Some("unsupported-ethertype"),
        ),
        (
            udp(port_mac, None, ip_a, p.host, "to the port's mac"),
            Some("not-for-gateway"),
        ),
        (
            udp(BROADCAST, None, zero, Ipv4Addr::BROADCAST, "broadcast"),
            Some("not-for-gateway"),
        ),
        (
            udp(
                mcast_mac,
                None,
                zero,
                Ipv4Addr::new(224, 0, 0, 1),
                "multicast",
            ),
            Some("not-for-gateway"),
        ),
        (
            eth(
                [0x33, 0x33, 0, 0, 0, 1],
                mac_a,
                None,
                ETH_IPV6,
                &icmpv6_echo(me6, all_nodes),
            ),
            Some("ipv6-unsupported"),
        ),
        (
            eth(
                port_mac,
                mac_a,
                None,
                ETH_IPV6,
                &icmpv6_echo(me6, link_local(port_mac)),
            ),
            Some("not-for-gateway"),
        ),
        (
            eth(
                [0x01, 0x80, 0xc2, 0, 0, 0x0e],
                mac_a,
                None,
                ETH_LLDP,
                b"\x02\x07\x04xylem\x00\x00",
            ),
            Some("unsupported-ethertype"),
        ),
        (
            eth(
                BROADCAST,
                mac_a,
                None,
                ETH_ARP,
                &arp(1, (mac_a, ip_a), ([0; 6], p.host)),
            ),
            Some("arp-not-for-gateway"),
        ),
        (udp(gw_mac, None, ip_a, p.host, "genuine"), None),
    ]
}

/// The reasons of `frames`, counted.
fn reasons(frames: &[(Vec<u8>, Option<&'static str>)]) -> Vec<(&'static str, u64)> {
    let mut m: BTreeMap<&str, u64> = BTreeMap::new();
    for r in frames.iter().filter_map(|(_, r)| *r) {
        *m.entry(r).or_default() += 1;
    }
    m.into_iter().collect()
}

/// Frames that reached pod-a back: IPv6 of any kind, and ARP replies.
fn answers(frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    frames
        .iter()
        .filter(|f| f.len() >= 22)
        .filter(|f| {
            f[12..14] == ETH_IPV6.to_be_bytes()
                || (f[12..14] == ETH_ARP.to_be_bytes() && f[20..22] == [0, 2])
        })
        .cloned()
        .collect()
}

/// The node's IPv6 counters (`/proc/net/snmp6` of its namespace) named `name`.
fn snmp6(node: &str, name: &str) -> u64 {
    ok(&["ip", "netns", "exec", node, "cat", "/proc/net/snmp6"])
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /proc/net/snmp6"))
}

/// Sends `frames` from pod-a and returns what the node's UDP listener heard and what came back
/// to pod-a.
fn attack_the_node(p: &Pods, frames: &[(Vec<u8>, Option<&'static str>)]) -> (Heard, Vec<Vec<u8>>) {
    let heard = listen_udp(&p.node, NODE_PORT, Duration::from_millis(1500));
    let back = capture(&p.a.0, Duration::from_millis(1500));
    send_frames(&p.a.0, frames.iter().map(|(f, _)| f.clone()).collect());
    (heard.join().unwrap(), answers(&back.join().unwrap()))
}

/// VLAN-0-tagged, IPv6, LLDP, broadcast and ARP frames aimed at the node from pod-a: with the
/// agent running the dataplane drops each, counted by reason, and only the genuine datagram
/// through the gateway reaches the node; with the agent killed (no XDP program any more)
/// nothing reaches the node's sockets and nothing answers, because of how the lab brings the
/// node's end of a pod veth up. Opening that port again lets the same frames in, which shows
/// the listener would have heard them.
#[test]
fn nothing_reaches_the_node_around_the_dataplane_with_the_agent_running_or_killed() {
    require_root!();
    let p = Pods::up();
    let (ns_a, ip_a, _) = p.a.clone();
    assert!(ping(&ns_a, p.host, 1), "pod-a cannot reach the node at all");
    let frames = frames_at_the_node(&p);

    // The agent running: the dataplane takes every frame.
    let before = drops(&p.lab);
    let ip6_in = snmp6(&p.node, "Ip6InReceives");
    let (heard, back) = attack_the_node(&p, &frames);
    assert_eq!(
        heard,
        vec![(ip_a, b"genuine".to_vec())],
        "what the node heard"
    );
    assert_eq!(
        back,
        Vec::<Vec<u8>>::new(),
        "answers that came back to pod-a"
    );
    assert_drops_moved(&p.lab, &before, &reasons(&frames));
    assert_eq!(
        snmp6(&p.node, "Ip6InReceives"),
        ip6_in,
        "IPv6 packets the node's kernel received"
    );

    // The agent killed: its programs are gone, the node's kernel sees every frame.
    p.lab.kill_agent(libc::SIGKILL);
    let ip6_out = snmp6(&p.node, "Ip6OutRequests");
    let ip6_delivered = snmp6(&p.node, "Ip6InDelivers");
    let (heard, back) = attack_the_node(&p, &frames);
    assert_eq!(heard, vec![], "what the node heard without the agent");
    assert_eq!(
        back,
        Vec::<Vec<u8>>::new(),
        "answers that came back to pod-a without the agent"
    );
    assert_eq!(snmp6(&p.node, "Ip6InDelivers"), ip6_delivered);
    assert_eq!(
        snmp6(&p.node, "Ip6OutRequests"),
        ip6_out,
        "the node answered"
    );

    // The port opened to the node's stack: the same frames get in, and ARP is answered.
    let port = p.port_a();
    let rp = format!("net.ipv4.conf.{port}.rp_filter=0");
    let ign = format!("net.ipv4.conf.{port}.arp_ignore=0");
    let node = p.node.as_str();
    ok(&["ip", "netns", "exec", node, "sysctl", "-qw", &rp, &ign]);
    ok(&[
        "ip",
        "netns",
        "exec",
        node,
        "sysctl",
        "-qw",
        "net.ipv4.conf.all.rp_filter=0",
    ]);
    ok(&["ip", "-n", node, "link", "set", "dev", &port, "arp", "on"]);
    ok(&[
        "ip",
        "netns",
        "exec",
        node,
        "iptables",
        "-w",
        "-t",
        "raw",
        "-D",
        "PREROUTING",
        "-i",
        &port,
        "-j",
        "DROP",
    ]);
    let (heard, back) = attack_the_node(&p, &frames);
    let heard: Vec<String> = heard
        .iter()
        .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
        .collect();
    for what in ["vlan0 to the port's mac", "to the port's mac", "broadcast"] {
        assert!(
            heard.iter().any(|h| h == what),
            "{what:?} not heard on an open port: {heard:?}"
        );
    }
    assert!(
        back.iter().any(|f| f[12..14] == ETH_ARP.to_be_bytes()),
        "no ARP answer from an open port"
    );
}

//! Privileged end-to-end tests of the flow state a pod can create or borrow, in a lab with a
//! real agent: one pod cannot fill the node's connection table, and an ICMP error that claims a
//! flow it is not part of is judged by policy. Each needs root; without it each prints why and
//! returns.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use serde_json::Value;
use xylem_api::config::AgentConfig;

#[macro_use]
mod common;
use common::*;

/// Restarts the lab's agent with `edit` applied to its configuration file.
fn restart_with(lab: &LabGuard, edit: impl FnOnce(&mut AgentConfig)) {
    let st = lab.status();
    let path = st["nodes"][0]["agent_config"].as_str().unwrap().to_string();
    let mut cfg = AgentConfig::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&path, serde_norway::to_string(&cfg).unwrap()).unwrap();
    lab.kill_agent(libc::SIGTERM);
    lab.start_agent(&[])
        .expect("the agent starts with the edited configuration");
}

/// The conntrack's entries, as `xylem ct list -o json` gives them.
fn ct_entries(lab: &LabGuard) -> Vec<Value> {
    let ct: Value = serde_json::from_str(&lab.xylem(&["ct", "list", "-o", "json"])).unwrap();
    ct["entries"].as_array().unwrap().clone()
}

/// The agent's drop counter `reason`, summed over its workers.
fn drops(lab: &LabGuard, reason: &str) -> u64 {
    lab.agent()["totals"]["drops"][reason].as_u64().unwrap_or(0)
}

/// pod-a sends UDP to 200 destinations (ports of pod-b and pod-c) in a table of 256 with a
/// limit of 20 per endpoint: it gets its 20 entries and no more, each further flow counted
/// `ct-endpoint-limit` (in `xylem status` and Prometheus). Then pod-b opens a new TCP connection
/// to pod-c, which works.
#[test]
fn a_pod_flooding_new_flows_gets_its_share_and_the_others_still_connect() {
    require_root!();
    let lab = LabGuard::up(&[]);
    const LIMIT: usize = 20;
    restart_with(&lab, |c| {
        c.workers.ct_capacity = 256;
        c.workers.ct_endpoint_limit = LIMIT;
    });
    let (ns_a, ip_a) = lab.pod("pod-a");
    let (ns_b, ip_b) = lab.pod("pod-b");
    let (ns_c, ip_c) = lab.pod("pod-c");
    // pod-a resolves its gateway (the ping is one of its entries).
    assert!(ping(&ns_a, ip_b, 1), "pod-a cannot reach pod-b at all");
    let before = drops(&lab, "ct-endpoint-limit");
    in_netns(&ns_a, move || {
        let s = UdpSocket::bind(SocketAddrV4::new(ip_a, 0)).unwrap();
        for port in 0..100u16 {
            for to in [ip_b, ip_c] {
                s.send_to(b"flood", SocketAddrV4::new(to, 20_000 + port))
                    .unwrap();
            }
        }
    })
    .join()
    .unwrap();
    // The workers take the frames from their rings within microseconds; give them a margin.
    std::thread::sleep(Duration::from_millis(300));
    let refused = drops(&lab, "ct-endpoint-limit") - before;
    assert!(
        refused >= 200 - LIMIT as u64,
        "{refused} flows of pod-a refused"
    );
    let a_entries = ct_entries(&lab)
        .iter()
        .filter(|e| e["orig"]["src"] == ip_a.to_string())
        .count();
    assert_eq!(a_entries, LIMIT, "pod-a holds its limit of entries");

    // pod-b → pod-c: a new TCP connection, both ways.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = in_netns(&ns_c, move || {
        let l = TcpListener::bind(SocketAddrV4::new(ip_c, 9300)).unwrap();
        ready_tx.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 5];
        std::io::Read::read_exact(&mut s, &mut buf).unwrap();
        std::io::Write::write_all(&mut s, &buf).unwrap();
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let echoed = in_netns(&ns_b, move || {
        let mut s = TcpStream::connect_timeout(
            &SocketAddrV4::new(ip_c, 9300).into(),
            Duration::from_secs(5),
        )
        .expect("pod-b connects to pod-c");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        std::io::Write::write_all(&mut s, b"hello").unwrap();
        let mut buf = [0u8; 5];
        std::io::Read::read_exact(&mut s, &mut buf).unwrap();
        buf
    })
    .join()
    .unwrap();
    server.join().unwrap();
    assert_eq!(&echoed, b"hello");
    let tcp = ct_entries(&lab)
        .into_iter()
        .find(|e| e["orig"]["dst"] == ip_c.to_string() && e["orig"]["dport"] == 9300)
        .expect("the connection is tracked");
    assert_eq!(tcp["orig"]["src"], ip_b.to_string());
    assert_eq!(tcp["seen_reply"], true);
    // Prometheus shows the same counter.
    let metrics = lab.xylem(&["metrics"]);
    let line = metrics
        .lines()
        .find(|l| l.starts_with("xylem_drop_count") && l.contains("\"ct-endpoint-limit\""))
        .unwrap_or_else(|| panic!("no ct-endpoint-limit drop counter in:\n{metrics}"));
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(value >= refused as f64, "{line}");
}

/// pod-b accepts anything from pod-c, nothing from anyone else.
const B_FROM_C_ONLY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: pod-b-in
  namespace: default
spec:
  endpointSelector:
    matchLabels: {app: pod-b}
  ingress:
    - fromEndpoints:
        - matchLabels: {app: pod-c}
";

/// An Ethernet frame from `src_mac` to the gateway carrying an ICMP port unreachable from
/// `src` to `dst`, quoting a UDP datagram `quoted_src:40000 → quoted_dst:9999`.
fn port_unreachable(
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    quoted_src: Ipv4Addr,
    quoted_dst: Ipv4Addr,
) -> Vec<u8> {
    // The quote: the datagram's IPv4 header and the first 8 bytes of its payload (its UDP
    // header, claiming 5 bytes of data that the quote leaves out).
    let mut udp = Vec::new();
    udp.extend_from_slice(&40000u16.to_be_bytes());
    udp.extend_from_slice(&9999u16.to_be_bytes());
    udp.extend_from_slice(&13u16.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&raw::ipv4(quoted_src, quoted_dst, 17, &udp));
    let sum = raw::checksum(&[&icmp]);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    raw::eth(
        xylem_lab::GATEWAY_MAC.0,
        src_mac,
        None,
        0x0800,
        &raw::ipv4(src, dst, 1, &icmp),
    )
}

/// Listens in namespace `ns` on a raw ICMP socket (which gets a copy of every ICMP packet the
/// pod receives) until `quiet` passes without one; returns (source, type) of each. Sends on
/// `ready` once listening.
fn icmp_heard(
    ns: &str,
    quiet: Duration,
    ready: std::sync::mpsc::Sender<()>,
) -> std::thread::JoinHandle<Vec<(Ipv4Addr, u8)>> {
    in_netns(ns, move || {
        let mut heard = Vec::new();
        // SAFETY: socket(2), setsockopt(2), recv(2) and close(2) on a socket this closure owns;
        // the option value and the buffer outlive the calls that use them.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
            assert!(
                fd >= 0,
                "raw ICMP socket: {}",
                std::io::Error::last_os_error()
            );
            let tv = libc::timeval {
                tv_sec: quiet.as_secs() as libc::time_t,
                tv_usec: quiet.subsec_micros() as libc::suseconds_t,
            };
            let r = libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::addr_of!(tv).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            assert_eq!(r, 0);
            ready.send(()).unwrap();
            let mut buf = [0u8; 1500];
            loop {
                let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
                if n < 20 {
                    break;
                }
                let ihl = usize::from(buf[0] & 0x0f) * 4;
                let src = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
                heard.push((src, buf[ihl]));
            }
            libc::close(fd);
        }
        heard
    })
}

/// pod-b has a tracked UDP flow to pod-c, and accepts nothing from pod-a. From inside pod-a,
/// with a raw socket, a port unreachable "from the flow" sent to pod-b (its outer source pod-a,
/// not pod-c) never reaches pod-b: it is judged by policy as ICMP from pod-a and dropped
/// (`policy-denied`). The same error sent by pod-c, which is part of the flow, does arrive.
#[test]
fn a_forged_icmp_error_quoting_another_pods_flow_does_not_reach_its_target() {
    require_root!();
    let lab = LabGuard::up(&[]);
    let path = format!("/tmp/xylem-lab-state-b-in-{}.yaml", std::process::id());
    std::fs::write(&path, B_FROM_C_ONLY).unwrap();
    lab.xylem(&["policy", "import", &path]);
    let _ = std::fs::remove_file(&path);
    let (ns_a, ip_a) = lab.pod("pod-a");
    let (ns_b, ip_b) = lab.pod("pod-b");
    let (ns_c, ip_c) = lab.pod("pod-c");
    let (mac_a, mac_c) = (
        raw::parse_mac(&mac_in(&ns_a, "eth0")),
        raw::parse_mac(&mac_in(&ns_c, "eth0")),
    );
    // pod-c listens, so that its own kernel answers nothing.
    let c_sock = in_netns(&ns_c, move || {
        UdpSocket::bind(SocketAddrV4::new(ip_c, 9999)).unwrap()
    })
    .join()
    .unwrap();
    // The flow pod-b → pod-c the forged error claims to be about.
    in_netns(&ns_b, move || {
        let s = UdpSocket::bind(SocketAddrV4::new(ip_b, 40000)).unwrap();
        s.send_to(b"flow!", SocketAddrV4::new(ip_c, 9999)).unwrap();
    })
    .join()
    .unwrap();
    c_sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = c_sock
        .recv_from(&mut buf)
        .expect("pod-b's datagram reaches pod-c");
    assert_eq!(
        (&buf[..n], from),
        (&b"flow!"[..], SocketAddrV4::new(ip_b, 40000).into())
    );
    assert!(
        ct_entries(&lab)
            .iter()
            .any(|e| e["orig"]["src"] == ip_b.to_string()
                && e["orig"]["dst"] == ip_c.to_string()
                && e["orig"]["dport"] == 9999),
        "the flow is tracked"
    );
    let denied = drops(&lab, "policy-denied");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let listener = icmp_heard(&ns_b, Duration::from_millis(1500), ready_tx);
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    // Raw frames carry their MACs: no ARP first. The forged error, then the genuine one from
    // pod-c.
    raw::send_frames(&ns_a, vec![port_unreachable(mac_a, ip_a, ip_b, ip_b, ip_c)]);
    raw::send_frames(&ns_c, vec![port_unreachable(mac_c, ip_c, ip_b, ip_b, ip_c)]);
    let heard = listener.join().unwrap();
    assert!(
        heard.contains(&(ip_c, 3)),
        "the genuine error from pod-c arrives: {heard:?}"
    );
    assert!(
        !heard.iter().any(|&(src, _)| src == ip_a),
        "the forged error from pod-a does not: {heard:?}"
    );
    assert!(
        drops(&lab, "policy-denied") > denied,
        "the forged error is counted as denied"
    );
    drop(c_sock);
}

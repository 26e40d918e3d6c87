//! Privileged end-to-end tests of IPv4 fragments in the lab: datagrams larger than the pods'
//! MTU (1500), cut into fragments by the sending pod's own kernel, under a policy that allows
//! one UDP port; and a later fragment forged from inside a pod with a raw socket.
//!
//! Each test brings up its own lab (a unique name) behind a guard that brings it down again even
//! if the test panics. They need root; without it they print why and skip.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use serde_json::Value;

#[macro_use]
mod common;
use common::*;

/// pod-b accepts UDP 5353 from pod-a, and nothing else.
const B_ACCEPTS_5353: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: pod-b-in
  namespace: default
spec:
  endpointSelector:
    matchLabels: {app: pod-b}
  ingress:
    - fromEndpoints:
        - matchLabels: {app: pod-a}
      toPorts:
        - ports:
            - {port: \"5353\", protocol: UDP}
";

const ALLOWED: u16 = 5353;
const DENIED: u16 = 5354;
/// Bytes of UDP data per datagram: three fragments at MTU 1500 (1,480 + 1,480 + 1,048 bytes of
/// IP payload).
const LEN: usize = 4000;

/// `len` pseudo-random bytes, different for each `seed`.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1d_u64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Listens in `ns` on `ip` at each of `ports` (listening when this returns) until `quiet`
/// passes without a datagram; the thread returns what each port received, in order.
fn receive(
    ns: &str,
    ip: Ipv4Addr,
    ports: &'static [u16],
    quiet: Duration,
) -> std::thread::JoinHandle<Vec<Vec<Vec<u8>>>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = in_netns(ns, move || {
        let socks: Vec<UdpSocket> = ports
            .iter()
            .map(|&p| {
                let s = UdpSocket::bind(SocketAddrV4::new(ip, p)).unwrap();
                s.set_nonblocking(true).unwrap();
                s
            })
            .collect();
        ready_tx.send(()).unwrap();
        let mut got = vec![Vec::new(); ports.len()];
        let mut buf = vec![0u8; 65536];
        let mut last = std::time::Instant::now();
        while last.elapsed() < quiet {
            for (i, s) in socks.iter().enumerate() {
                if let Ok(n) = s.recv(&mut buf) {
                    got[i].push(buf[..n].to_vec());
                    last = std::time::Instant::now();
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        got
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    h
}

/// Sends `datagram` from `ns` to `to` through a UDP socket: pod-a's kernel cuts it into
/// fragments.
fn send(ns: &str, to: SocketAddrV4, datagram: Vec<u8>) {
    in_netns(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        assert_eq!(s.send_to(&datagram, to).unwrap(), datagram.len());
    })
    .join()
    .unwrap();
}

fn drops(lab: &LabGuard) -> Value {
    lab.agent()["totals"]["drops"].clone()
}

fn delta(before: &Value, after: &Value, reason: &str) -> u64 {
    after[reason].as_u64().unwrap_or(0) - before[reason].as_u64().unwrap_or(0)
}

/// One fragment of an IPv4/UDP datagram from `src` to `dst` (IP ID `id`, offset `off` bytes,
/// more fragments to come if `more`), carrying `bytes` of the datagram's IP payload, in an
/// Ethernet frame from `src_mac` to `dst_mac`.
#[allow(
    clippy::too_many_arguments,
    reason = "every header field the tests vary"
)]
fn fragment(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    off: usize,
    more: bool,
    bytes: &[u8],
) -> Vec<u8> {
    let ip = raw::ipv4_fragment(src, dst, 17, id, off, more, bytes);
    raw::eth(dst_mac, src_mac, None, 0x0800, &ip)
}

/// The value of `xylem_drop_count_total` for `reason` in `xylem metrics`, summed over its other
/// labels.
fn metric_drops(lab: &LabGuard, reason: &str) -> f64 {
    let text = lab.xylem(&["metrics"]);
    let label = format!("reason=\"{reason}\"");
    text.lines()
        .filter(|l| l.starts_with("xylem_drop_count_total{") && l.contains(&label))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Under a policy that lets pod-a reach pod-b on UDP 5353 only: 4,000-byte datagrams, which
/// pod-a's kernel cuts into three fragments, arrive whole (byte for byte) on 5353, and not at
/// all on 5354, where every fragment is dropped by the first one's reason. A later fragment
/// forged with a raw socket, with no first fragment, is dropped as `frag-no-head`: in
/// `xylem status`, in the Prometheus metrics and in `xylem monitor --type drop`.
#[test]
fn an_allowed_datagram_arrives_whole_in_fragments_and_a_denied_one_not_at_all() {
    require_root!();
    let lab = LabGuard::up(&["--mode", "full"]);
    let (ns_a, ip_a) = lab.pod("pod-a");
    let (ns_b, ip_b) = lab.pod("pod-b");
    assert!(ping(&ns_a, ip_b, 1), "pod-a cannot reach pod-b at all");
    let path = format!("/tmp/xylem-fragments-{}.yaml", std::process::id());
    std::fs::write(&path, B_ACCEPTS_5353).unwrap();
    lab.xylem(&["policy", "import", &path]);
    let _ = std::fs::remove_file(&path);

    let rx = receive(&ns_b, ip_b, &[ALLOWED, DENIED], Duration::from_secs(2));
    let before = drops(&lab);
    let allowed = bytes(1, LEN);
    send(&ns_a, SocketAddrV4::new(ip_b, ALLOWED), allowed.clone());
    send(&ns_a, SocketAddrV4::new(ip_b, DENIED), bytes(2, LEN));
    let got = rx.join().unwrap();
    let after = drops(&lab);
    assert_eq!(
        got[0].len(),
        1,
        "datagrams on the allowed port; drops {after}"
    );
    assert!(
        got[0][0] == allowed,
        "the datagram arrived, but not as sent"
    );
    assert!(got[1].is_empty(), "a datagram arrived on the denied port");
    // The three fragments of the denied datagram, each by its first fragment's reason; none of
    // the allowed one's.
    assert_eq!(delta(&before, &after, "policy-denied"), 3, "{after}");
    assert_eq!(delta(&before, &after, "frag-no-head"), 0, "{after}");

    // A later fragment from pod-a, with no first fragment.
    let mon = Monitor::start(&[
        "--lab", &lab.name, "monitor", "--type", "drop", "-o", "json",
    ]);
    let mac_a = raw::parse_mac(&mac_in(&ns_a, "eth0"));
    let gw_mac = xylem_lab::GATEWAY_MAC.0;
    let forged = fragment(mac_a, gw_mac, ip_a, ip_b, 0x4242, 1480, false, &[0x5a; 64]);
    raw::send_frames_on_cpu(&ns_a, 0, vec![forged]);
    // The dispatcher moves events every 5 ms; give the drop time to reach the client.
    std::thread::sleep(Duration::from_millis(500));
    let (status, out, stderr) = mon.stop(libc::SIGINT);
    assert!(status.success(), "{stderr}");
    assert!(
        out.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| v["drop_reason"] == "frag-no-head" && v["source"]["ip"] == ip_a.to_string()),
        "no frag-no-head drop in `xylem monitor --type drop`:\n{out}"
    );
    assert_eq!(delta(&after, &drops(&lab), "frag-no-head"), 1);
    assert_eq!(metric_drops(&lab, "frag-no-head"), 1.0);
}

/// With two workers, one datagram's fragments on both: pod-a's transmit queues are tied to CPUs
/// (XPS), and a raw socket sends the first fragment from CPU 0 and the later ones from CPU 1,
/// so worker 0 judges the first and worker 1 the others. They share the fragment table, so the
/// datagram arrives whole. (A kernel cutting a datagram puts all its fragments on one queue:
/// its transmit hash covers a fragment's addresses only.)
#[test]
fn with_two_workers_a_datagram_whose_fragments_take_both_queues_arrives_whole() {
    require_root!();
    let lab = LabGuard::up(&[
        "--worker-cores",
        "0,0",
        "--placement",
        "shared",
        "--mode",
        "full",
    ]);
    let (ns_a, ip_a) = lab.pod("pod-a");
    let (ns_b, ip_b) = lab.pod("pod-b");
    // Resolves the gateway in pod-a, and checks the path, before the policy.
    assert!(ping(&ns_a, ip_b, 1), "pod-a cannot reach pod-b at all");
    let path = format!("/tmp/xylem-fragments-2w-{}.yaml", std::process::id());
    std::fs::write(&path, B_ACCEPTS_5353).unwrap();
    lab.xylem(&["policy", "import", &path]);
    let _ = std::fs::remove_file(&path);
    for (queue, cpus) in [(0, "1"), (1, "2")] {
        let file = format!("/sys/class/net/eth0/queues/tx-{queue}/xps_cpus");
        ok(&[
            "ip",
            "netns",
            "exec",
            &ns_a,
            "sh",
            "-c",
            &format!("echo {cpus} > {file}"),
        ]);
    }

    let rx = receive(&ns_b, ip_b, &[ALLOWED], Duration::from_secs(2));
    let before = lab.agent()["workers"].clone();
    let data = bytes(3, LEN);
    let l4 = raw::udp(ALLOWED, &data);
    let mac_a = raw::parse_mac(&mac_in(&ns_a, "eth0"));
    let gw_mac = xylem_lab::GATEWAY_MAC.0;
    let chunks: Vec<&[u8]> = l4.chunks(1480).collect();
    let frames: Vec<Vec<u8>> = chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let more = i + 1 < chunks.len();
            fragment(mac_a, gw_mac, ip_a, ip_b, 0x2020, i * 1480, more, c)
        })
        .collect();
    raw::send_frames_on_cpu(&ns_a, 0, frames[..1].to_vec());
    // Worker 0 has judged the first fragment long before the others leave.
    std::thread::sleep(Duration::from_millis(100));
    raw::send_frames_on_cpu(&ns_a, 1, frames[1..].to_vec());
    let got = rx.join().unwrap().remove(0);
    assert_eq!(got.len(), 1, "datagrams received; drops {}", drops(&lab));
    assert!(got[0] == data, "the datagram arrived, but not as sent");
    // Each worker forwarded a part of it.
    let after = lab.agent()["workers"].clone();
    let forwarded = |w: &Value, i: usize| w[i]["stats"]["forwarded"].as_u64().unwrap_or(0);
    assert_eq!(forwarded(&after, 0) - forwarded(&before, 0), 1, "{after}");
    assert_eq!(
        forwarded(&after, 1) - forwarded(&before, 1),
        (frames.len() - 1) as u64,
        "{after}"
    );
}

//! Privileged end-to-end tests of network policy in the lab: labelled pods, real TCP and UDP
//! connections from threads inside the pods' namespaces, the monitor, policy changes while
//! traffic flows, bad input rejected whole, and the CLI's JSON output.
//!
//! Each test brings up its own lab (unique name) behind a guard that brings it down again. They
//! need root; without it they print why and skip.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

#[macro_use]
mod common;
use common::*;

const LAB: &str = "pods:
  - name: web
    labels: {app: web}
  - name: client
    labels: {app: client}
  - name: other
    labels: {app: other}
";

/// web accepts TCP 8080 and UDP 5353 from client only.
const ALLOW_CLIENT: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: web-in
  namespace: default
spec:
  endpointSelector:
    matchLabels: {app: web}
  ingress:
    - fromEndpoints:
        - matchLabels: {app: client}
      toPorts:
        - ports:
            - {port: \"8080\", protocol: TCP}
            - {port: \"5353\", protocol: UDP}
";

/// The same policy narrowed: UDP 5353 from client only, no TCP.
const NARROWED: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: web-in
  namespace: default
spec:
  endpointSelector:
    matchLabels: {app: web}
  ingress:
    - fromEndpoints:
        - matchLabels: {app: client}
      toPorts:
        - ports:
            - {port: \"5353\", protocol: UDP}
";

fn lab_up() -> LabGuard {
    lab_up_with(&[])
}

fn lab_up_with(extra: &[&str]) -> LabGuard {
    let file = format!("/tmp/xylem-policy-lab-{}.yaml", std::process::id());
    std::fs::write(&file, LAB).unwrap();
    let mut args = vec!["-f", file.as_str(), "--mode", "full"];
    args.extend_from_slice(extra);
    LabGuard::up(&args)
}

fn write_policy(name: &str, text: &str) -> String {
    let path = format!("/tmp/xylem-policy-{}-{name}.yaml", std::process::id());
    std::fs::write(&path, text).unwrap();
    path
}

/// A TCP server in `netns` on `port`, echoing nothing, remembering when the last byte came on
/// each connection it accepted (in the order it accepted them). Runs until dropped.
struct TcpServer {
    last: Arc<Mutex<Vec<Option<Instant>>>>,
    stop: Arc<AtomicBool>,
}

fn tcp_server(netns: &str, ip: Ipv4Addr, port: u16) -> TcpServer {
    let last = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (l2, s2) = (Arc::clone(&last), Arc::clone(&stop));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    in_netns(netns, move || {
        let l = TcpListener::bind(SocketAddrV4::new(ip, port)).unwrap();
        l.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        let mut conns: Vec<TcpStream> = Vec::new();
        let mut buf = [0u8; 4096];
        while !s2.load(Ordering::Relaxed) {
            if let Ok((c, _)) = l.accept() {
                c.set_nonblocking(true).unwrap();
                conns.push(c);
                l2.lock().unwrap().push(None);
            }
            for (i, c) in conns.iter_mut().enumerate() {
                if let Ok(n) = c.read(&mut buf)
                    && n > 0
                {
                    l2.lock().unwrap()[i] = Some(Instant::now());
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    ready_rx.recv().unwrap();
    TcpServer { last, stop }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Whether a TCP connection from `netns` to `ip:port` opens within 1 s.
fn tcp_connects(netns: &str, ip: Ipv4Addr, port: u16) -> bool {
    in_netns(netns, move || {
        TcpStream::connect_timeout(&SocketAddrV4::new(ip, port).into(), Duration::from_secs(1))
            .is_ok()
    })
    .join()
    .unwrap()
}

/// A UDP receiver in `netns` on `ip:port`: counts datagrams per source address until `stop`.
struct UdpSink {
    counts: Arc<Mutex<std::collections::BTreeMap<Ipv4Addr, u64>>>,
    stop: Arc<AtomicBool>,
}

fn udp_sink(netns: &str, ip: Ipv4Addr, port: u16) -> UdpSink {
    let counts = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (c2, s2) = (Arc::clone(&counts), Arc::clone(&stop));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    in_netns(netns, move || {
        let s = UdpSocket::bind(SocketAddrV4::new(ip, port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 2048];
        while !s2.load(Ordering::Relaxed) {
            if let Ok((_, std::net::SocketAddr::V4(from))) = s.recv_from(&mut buf) {
                *c2.lock().unwrap().entry(*from.ip()).or_insert(0) += 1;
            }
        }
    });
    ready_rx.recv().unwrap();
    UdpSink { counts, stop }
}

impl UdpSink {
    fn from(&self, ip: Ipv4Addr) -> u64 {
        self.counts.lock().unwrap().get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sends `n` datagrams from `netns` to `ip:port`, one every `gap`; returns how many were sent.
fn udp_send(netns: &str, ip: Ipv4Addr, port: u16, n: u64, gap: Duration) -> u64 {
    in_netns(netns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut sent = 0;
        for i in 0..n {
            if s.send_to(&i.to_be_bytes(), SocketAddrV4::new(ip, port))
                .is_ok()
            {
                sent += 1;
            }
            std::thread::sleep(gap);
        }
        sent
    })
    .join()
    .unwrap()
}

/// Waits until `f` holds (up to 2 s).
fn eventually(f: impl Fn() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

#[test]
fn tcp_and_udp_allowed_and_denied_between_labelled_pods_with_drops_in_the_monitor() {
    require_root!();
    let g = lab_up();
    let (web_ns, web_ip) = g.pod("web");
    let (client_ns, client_ip) = g.pod("client");
    let (other_ns, other_ip) = g.pod("other");
    let _tcp = tcp_server(&web_ns, web_ip, 8080);
    let udp = udp_sink(&web_ns, web_ip, 5353);

    // No policy: everything passes.
    assert!(
        tcp_connects(&other_ns, web_ip, 8080),
        "open before any policy"
    );

    let rev: u64 = g
        .xylem(&["policy", "import", &write_policy("allow", ALLOW_CLIENT)])
        .trim()
        .parse()
        .expect("policy import prints the revision");
    assert!(rev > 1);

    // The monitor, listening for drops while denied traffic is sent.
    let mon = Monitor::start(&["--lab", &g.name, "monitor", "--type", "drop", "-o", "json"]);

    assert!(
        tcp_connects(&client_ns, web_ip, 8080),
        "client → web TCP 8080 allowed"
    );
    assert!(
        !tcp_connects(&other_ns, web_ip, 8080),
        "other → web TCP 8080 denied"
    );
    assert_eq!(
        udp_send(&client_ns, web_ip, 5353, 20, Duration::from_millis(2)),
        20
    );
    assert_eq!(
        udp_send(&other_ns, web_ip, 5353, 20, Duration::from_millis(2)),
        20
    );
    assert!(
        eventually(|| udp.from(client_ip) == 20),
        "client → web UDP allowed"
    );
    assert_eq!(udp.from(other_ip), 0, "other → web UDP denied");

    // The dispatcher moves events every 5 ms; give the last drops time to reach the client.
    std::thread::sleep(Duration::from_millis(500));
    let (status, out, stderr) = mon.stop(libc::SIGINT);
    assert!(status.success(), "{stderr}");
    let denied: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["drop_reason"] == "policy-denied")
        .collect();
    assert!(
        denied
            .iter()
            .any(|v| v["source"]["ip"] == other_ip.to_string()
                && v["source"]["endpoint"] == "default/other"),
        "denied flows in `xylem monitor --type drop`:\n{out}"
    );

    // The counters carry the reason too.
    let st = g.agent();
    assert!(
        st["totals"]["drops"]["policy-denied"].as_u64().unwrap_or(0) >= 21,
        "{}",
        st["totals"]
    );

    // Deleting the policy opens the port again.
    g.xylem(&["policy", "delete", "default/web-in"]);
    assert!(tcp_connects(&other_ns, web_ip, 8080), "open after delete");
}

#[test]
fn a_narrowed_policy_stops_an_established_connection_within_a_second_and_keeps_allowed_flows() {
    require_root!();
    narrowing_stops_established_connections(&lab_up(), 1);
}

/// The same with two workers sharing one conntrack: the client's connections and datagrams
/// spread over both workers' queues (each socket picks its own transmit hash), and the
/// narrowing stops the streams each of them carried.
#[test]
fn with_two_workers_a_narrowed_policy_stops_the_connections_of_both() {
    require_root!();
    let g = lab_up_with(&["--worker-cores", "0,0", "--placement", "shared"]);
    assert_eq!(g.agent()["workers"].as_array().unwrap().len(), 2);
    narrowing_stops_established_connections(&g, 8);
    for w in g.agent()["workers"].as_array().unwrap() {
        let rx = w["stats"]["rx_packets"].as_u64().unwrap_or(0);
        assert!(rx > 0, "worker {} saw no traffic", w["id"]);
    }
}

/// `streams` TCP connections client → web (one byte every 5 ms each), and allowed and denied
/// UDP streams; the policy is narrowed to UDP only: every TCP stream stops within a second,
/// every allowed datagram still arrives, no denied one does.
fn narrowing_stops_established_connections(g: &LabGuard, streams: usize) {
    let (web_ns, web_ip) = g.pod("web");
    let (client_ns, client_ip) = g.pod("client");
    let (other_ns, other_ip) = g.pod("other");
    let tcp = tcp_server(&web_ns, web_ip, 8080);
    let udp = udp_sink(&web_ns, web_ip, 5353);
    g.xylem(&["policy", "import", &write_policy("allow2", ALLOW_CLIENT)]);

    // Established TCP streams: one byte every 5 ms on each.
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = Arc::clone(&stop);
    let writer = in_netns(&client_ns, move || {
        let mut conns: Vec<TcpStream> = (0..streams)
            .map(|_| {
                let c = TcpStream::connect_timeout(
                    &SocketAddrV4::new(web_ip, 8080).into(),
                    Duration::from_secs(1),
                )
                .expect("connect");
                c.set_write_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                c
            })
            .collect();
        while !s2.load(Ordering::Relaxed) {
            for c in &mut conns {
                let _ = c.write(b"x");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    // Allowed and denied UDP streams running across the change.
    let sent_ok = Arc::new(AtomicU64::new(0));
    let (c_ns, o_ns) = (client_ns.clone(), other_ns.clone());
    let allowed =
        std::thread::spawn(move || udp_send(&c_ns, web_ip, 5353, 400, Duration::from_millis(5)));
    let denied =
        std::thread::spawn(move || udp_send(&o_ns, web_ip, 5353, 400, Duration::from_millis(5)));
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        eventually(|| tcp.last.lock().unwrap().len() == streams),
        "every connection was accepted"
    );

    // Every stream flows up to the change: each brought a byte within the last moments (one
    // is written every 5 ms), so a stream that had stalled on its own cannot pass for one the
    // change stopped.
    let changed = Instant::now();
    for (i, last) in tcp.last.lock().unwrap().iter().enumerate() {
        let last = last.unwrap_or_else(|| panic!("stream {i} carried nothing before the change"));
        assert!(
            changed.duration_since(last) < Duration::from_millis(250),
            "stream {i} had stalled {:?} before the change",
            changed.duration_since(last)
        );
    }
    g.xylem(&["policy", "import", &write_policy("narrowed", NARROWED)]);
    std::thread::sleep(Duration::from_millis(1500));
    // Then every stream stops within a second.
    for (i, last) in tcp.last.lock().unwrap().iter().enumerate() {
        let last = last.expect("bytes arrived");
        assert!(
            last < changed + Duration::from_secs(1),
            "stream {i} went on {:?} after the change",
            last.saturating_duration_since(changed)
        );
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    sent_ok.store(allowed.join().unwrap(), Ordering::Relaxed);
    let sent_denied = denied.join().unwrap();
    assert_eq!(sent_denied, 400);
    assert!(
        eventually(|| udp.from(client_ip) == sent_ok.load(Ordering::Relaxed)),
        "allowed datagrams all delivered: {} of {}",
        udp.from(client_ip),
        sent_ok.load(Ordering::Relaxed)
    );
    assert_eq!(udp.from(other_ip), 0, "no denied datagram delivered");
}

#[test]
fn bad_policy_input_is_rejected_whole_naming_the_field() {
    require_root!();
    let g = lab_up();
    g.xylem(&["policy", "import", &write_policy("good", ALLOW_CLIENT)]);
    let before = g.xylem(&["policy", "get", "-o", "json"]);
    let good_doc = ALLOW_CLIENT.to_string();
    let second = |s: &str| format!("{good_doc}---\n{s}");
    let cases: Vec<(String, &str)> = vec![
        (
            second(
                &ALLOW_CLIENT
                    .replace("web-in", "x1")
                    .replace("ingress:", "ingres:"),
            ),
            "ingres",
        ),
        (
            ALLOW_CLIENT.replace("cilium.io/v2", "cilium.io/v1"),
            "apiVersion",
        ),
        (
            ALLOW_CLIENT.replace("CiliumNetworkPolicy", "NetworkPolicy"),
            "kind",
        ),
        (
            second(&ALLOW_CLIENT.replace("web-in", "x2").replace(
                "- fromEndpoints:\n        - matchLabels: {app: client}",
                "- fromCIDR: [\"10.0.0.300/8\"]",
            )),
            "fromCIDR",
        ),
        (ALLOW_CLIENT.replace("\"8080\"", "\"70000\""), "port"),
        (
            ALLOW_CLIENT.replace(
                "{port: \"8080\", protocol: TCP}",
                "{port: \"8080\", endPort: 80, protocol: TCP}",
            ),
            "endPort",
        ),
    ];
    for (i, (text, field)) in cases.iter().enumerate() {
        let path = write_policy(&format!("bad{i}"), text);
        let o = sh(&[xylem(), "--lab", &g.name, "policy", "import", &path]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "case {i} accepted:\n{text}");
        assert!(
            err.contains(field),
            "case {i}: error does not name {field}: {err}"
        );
    }
    assert_eq!(
        g.xylem(&["policy", "get", "-o", "json"]),
        before,
        "running policy unchanged"
    );
}

#[test]
fn policy_identity_ct_and_endpoint_json_output() {
    require_root!();
    let g = lab_up();
    let (web_ns, web_ip) = g.pod("web");
    let (client_ns, _) = g.pod("client");
    let (other_ns, _) = g.pod("other");
    let _tcp = tcp_server(&web_ns, web_ip, 8080);
    g.xylem(&["policy", "import", &write_policy("json", ALLOW_CLIENT)]);

    let list: Value = serde_json::from_str(&g.xylem(&["policy", "get", "-o", "json"])).unwrap();
    assert_eq!(list[0]["name"], "web-in", "{list}");
    assert_eq!(list[0]["namespace"], "default");
    let one: Value =
        serde_json::from_str(&g.xylem(&["policy", "get", "web-in", "-o", "json"])).unwrap();
    assert_eq!(one["source"]["kind"], "CiliumNetworkPolicy");
    assert!(
        g.xylem(&["policy", "get", "-o", "yaml"])
            .contains("kind: CiliumNetworkPolicy")
    );

    let eps: Value = serde_json::from_str(&g.xylem(&["endpoint", "list", "-o", "json"])).unwrap();
    let web = eps
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "web")
        .unwrap();
    let client = eps
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "client")
        .unwrap();
    assert_eq!(web["ingress_enforced"], true, "{web}");
    assert_eq!(web["egress_enforced"], false);
    assert_eq!(client["ingress_enforced"], false);
    assert!(web["identity"].as_u64().unwrap() >= 256);
    assert_ne!(web["identity"], client["identity"]);

    let ids: Value = serde_json::from_str(&g.xylem(&["identity", "list", "-o", "json"])).unwrap();
    assert!(
        ids.as_array()
            .unwrap()
            .iter()
            .any(|i| i["identity"] == web["identity"] && i["endpoints"][0] == "default/web"),
        "{ids}"
    );
    assert!(ids.as_array().unwrap().iter().any(|i| i["identity"] == 1));

    let trace = g.xylem(&[
        "policy", "trace", "--src", "client", "--dst", "web", "--dport", "8080/TCP", "-o", "json",
    ]);
    let t: Value = serde_json::from_str(&trace).unwrap();
    assert_eq!(t["allowed"], true, "{t}");
    assert_eq!(t["rule"]["policy"], "default/web-in");
    let t: Value = serde_json::from_str(&g.xylem(&[
        "policy",
        "trace",
        "--src",
        "app=other",
        "--dst",
        "web",
        "--dport",
        "8080/TCP",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(t["verdict"], "policy-denied", "{t}");

    assert!(tcp_connects(&client_ns, web_ip, 8080));
    let ct: Value = serde_json::from_str(&g.xylem(&["ct", "list", "-o", "json"])).unwrap();
    let entries = ct["entries"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["orig"]["dport"] == 8080 && e["orig"]["dst"] == web_ip.to_string()),
        "{ct}"
    );
    assert_eq!(ct["workers"], 1, "{ct}");
    assert!(ct["bytes_per_entry"].as_f64().unwrap() > 32.0);
    assert!(g.xylem(&["ct", "flush"]).contains("flushed"));
    let ct: Value = serde_json::from_str(&g.xylem(&["ct", "list", "-o", "json"])).unwrap();
    assert!(ct["entries"].as_array().unwrap().is_empty(), "{ct}");
    // Policies and identities survive a restart of the agent.
    let policies = g.xylem(&["policy", "get", "-o", "json"]);
    let ids = g.xylem(&["identity", "list", "-o", "json"]);
    g.kill_agent(libc::SIGTERM);
    g.start_agent(&[]).expect("restart");
    assert_eq!(g.xylem(&["policy", "get", "-o", "json"]), policies);
    assert_eq!(g.xylem(&["identity", "list", "-o", "json"]), ids);
    assert!(
        !tcp_connects(&other_ns, web_ip, 8080),
        "still enforced after restart"
    );
    // Table outputs run.
    g.xylem(&["ct", "list"]);
    g.xylem(&["identity", "list"]);
    g.xylem(&["policy", "get"]);
    g.xylem(&["endpoint", "list"]);
}

/// other may send only to web: its gateway (the `host` entity) is out of reach.
const OTHER_TO_WEB: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: other-out
  namespace: default
spec:
  endpointSelector:
    matchLabels: {app: other}
  egress:
    - toEndpoints:
        - matchLabels: {app: web}
";

#[test]
fn the_gateway_is_the_host_entity_for_a_pods_egress_policy() {
    require_root!();
    let g = lab_up();
    let (_, web_ip) = g.pod("web");
    let (other_ns, _) = g.pod("other");
    let gateway: Ipv4Addr = g.status()["nodes"][0]["gateway"]
        .as_str()
        .expect("lab status names the gateway")
        .parse()
        .expect("gateway is an IPv4 address");
    assert!(
        ping(&other_ns, gateway, 1),
        "gateway answers without policy"
    );

    g.xylem(&["policy", "import", &write_policy("other-out", OTHER_TO_WEB)]);
    assert!(ping(&other_ns, web_ip, 1), "egress to web allowed");
    assert!(
        !ping(&other_ns, gateway, 1),
        "egress to the gateway (host) denied"
    );
    let drops = g.agent()["totals"]["drops"]["policy-denied"]
        .as_u64()
        .unwrap_or(0);
    assert!(drops >= 1, "the denied pings were counted: {drops}");

    g.xylem(&[
        "policy",
        "import",
        // The same policy with a second egress rule: the node.
        &write_policy(
            "other-out-host",
            &format!("{OTHER_TO_WEB}    - toEntities: [host]\n"),
        ),
    ]);
    assert!(
        ping(&other_ns, gateway, 1),
        "toEntities: [host] lets other reach its gateway"
    );
}

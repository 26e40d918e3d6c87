//! Privileged end-to-end tests of traffic between nodes and to the world: a two-node lab whose
//! uplinks meet on the underlay bridge, in clear and with ESP.
//!
//! What is on the wire is read from a capture on the underlay bridge (frames a worker sends
//! through AF_XDP never pass the uplink's own packet taps), and the ESP is decrypted by
//! tshark, an implementation that shares no code with Xylem. Each lab runs under a unique name
//! behind [`LabGuard`]; without root the tests print why and skip.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

#[macro_use]
mod common;
use common::*;

/// Servers of the pods on node 2: TCP 8080 and UDP 9000 answer the client's first line with the
/// pod's name. Reading first matters: a shell that answered at once could exit before socat
/// wrote the client's bytes to it, and socat, failing that write (EPIPE), exits without
/// sending the answer it had not forwarded yet, which a test would take for a lost packet.
const SERVE: &str = "socat TCP-LISTEN:8080,fork,reuseaddr SYSTEM:'read -r _; echo $POD_NAME' & \
                     socat UDP-RECVFROM:9000,fork SYSTEM:'read -r _; echo $POD_NAME'";

/// A lab file of two nodes: `a1`, `a2` on node1, `b1`, `b2` on node2 (serving [`SERVE`]),
/// after `header`.
fn lab_file(header: &str) -> TempFile {
    TempFile::new(
        "lab.yaml",
        &format!(
            "{header}nodes:\n\
             \x20 - name: node1\n    pods: [{{name: a1}}, {{name: a2}}]\n\
             \x20 - name: node2\n    pods:\n\
             \x20     - {{name: b1, run: \"{SERVE}\"}}\n\
             \x20     - {{name: b2, run: \"{SERVE}\"}}\n"
        ),
    )
}

/// A key file line in Cilium's format: key id `id`, AES-128-GCM, key and salt from `seed`.
fn key_line(id: u8, seed: u8) -> String {
    let hex: String = (0..20u8)
        .map(|i| format!("{:02x}", i.wrapping_mul(31).wrapping_add(seed)))
        .collect();
    format!("{id} rfc4106(gcm(aes)) 0x{hex} 128\n")
}

/// The key and salt of [`key_line`]`(_, seed)`, as tshark takes it.
fn key_hex(seed: u8) -> String {
    (0..20u8)
        .map(|i| format!("{:02x}", i.wrapping_mul(31).wrapping_add(seed)))
        .collect()
}

/// What a UDP datagram to `ip:port` from `netns` gets back.
fn udp(netns: &str, ip: &str, port: u16) -> Option<String> {
    in_ns(
        netns,
        &format!("echo hello | timeout 10 socat -t5 - UDP:{ip}:{port}"),
    )
}

/// A capture on the underlay bridge, to a file, until stopped.
struct Capture {
    child: Option<Child>,
    file: Option<TempFile>,
}

impl Capture {
    fn start(underlay: &str, filter: &str) -> Capture {
        let file = TempFile::new("cap.pcap", "");
        let child = Command::new("ip")
            .args([
                "netns", "exec", underlay, "tcpdump", "-i", "xybr0", "-U", "-n",
            ])
            .args(["-w", file.path()])
            .args(filter.split_whitespace())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump");
        // tcpdump needs a moment to open the interface.
        std::thread::sleep(Duration::from_millis(800));
        Capture {
            child: Some(child),
            file: Some(file),
        }
    }

    /// Stops it and returns `tcpdump -r` of what it caught (with `filter`).
    fn stop(mut self, filter: &str) -> (String, TempFile) {
        std::thread::sleep(Duration::from_millis(500));
        let mut child = self.child.take().expect("running");
        // SAFETY: `kill` on a child's pid, which this struct owns and has not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let _ = child.wait();
        let file = self.file.take().expect("a file");
        let mut args = vec!["tcpdump", "-n", "-r", file.path()];
        args.extend(filter.split_whitespace());
        let text = String::from_utf8_lossy(&sh(&args).stdout).into_owned();
        (text, file)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The drop totals of the agent behind `socket`.
fn drops(socket: &str) -> Value {
    let st: Value =
        serde_json::from_str(&ok(&[xylem(), "--socket", socket, "status", "-o", "json"])).unwrap();
    st["totals"]["drops"].clone()
}

/// Each node's API socket, in node order.
fn sockets(st: &Value) -> Vec<String> {
    st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["api_socket"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn pods_reach_the_other_nodes_pods_in_clear_and_the_world_masqueraded() {
    require_root!();
    let file = lab_file("");
    let lab = LabGuard::up(&["-f", file.path()]);
    let st = lab.status();
    let underlay = st["underlay"]["netns"].as_str().unwrap().to_string();
    let (a1, _) = lab.pod("a1");
    let (a2, _) = lab.pod("a2");
    let (b1, b1_ip) = lab.pod("b1");
    let (_, a2_ip) = lab.pod("a2");
    let b1_ip = b1_ip.to_string();

    let cap = Capture::start(&underlay, "");
    // Across nodes: TCP, UDP and ICMP, both ways.
    assert_eq!(
        eventually(10, || tcp(&a1, &b1_ip, 8080), "b1").as_deref(),
        Some("b1")
    );
    assert_eq!(udp(&a2, &b1_ip, 9000).as_deref(), Some("b1"));
    assert!(ping(&a1, b1_ip.parse().unwrap(), 3), "a1 -> b1");
    assert!(ping(&b1, a2_ip, 3), "b1 -> a2");
    // To the world: its echo servers on port 7, and ping.
    let world = "10.199.0.100";
    assert_eq!(tcp(&a1, world, 7).as_deref(), Some("hello"));
    assert_eq!(udp(&a2, world, 7).as_deref(), Some("hello"));
    assert!(ping(&a1, world.parse().unwrap(), 3), "a1 -> world");
    let (wire, _f) = cap.stop("ip");

    // No overlay: the pods' own addresses between the nodes.
    assert!(
        wire.contains(&format!("10.200.0.10 > {b1_ip}: ICMP echo request")),
        "{wire}"
    );
    // Masquerade: the world sees only the node's address, never a pod's.
    let to_world: Vec<&str> = wire
        .lines()
        .filter(|l| l.contains("> 10.199.0.100"))
        .collect();
    assert!(!to_world.is_empty(), "{wire}");
    for l in &to_world {
        assert!(l.contains(" 10.199.0.11"), "not masqueraded: {l}");
    }
    assert!(
        !wire.lines().any(|l| l.contains("10.199.0.100 > 10.200.")),
        "the world answered a pod address directly: {wire}"
    );
    // Nothing the tests sent was dropped for want of a route or a neighbour.
    for s in sockets(&st) {
        let d = drops(&s);
        for reason in [
            "no-route",
            "snat-failed",
            "esp-required",
            "invalid-source-ip",
        ] {
            assert_eq!(d[reason].as_u64().unwrap_or(0), 0, "{reason} on {s}: {d}");
        }
    }
}

#[test]
fn encrypted_nodes_send_standard_esp_drop_without_a_key_and_rotate_without_loss() {
    require_root!();
    if sh(&["which", "tshark"]).status.code() != Some(0) {
        panic!("tshark is missing: docker/bootstrap.sh installs it");
    }
    // The agents start before the key is there: nothing may leave in clear meanwhile.
    let keys = TempFile::new("keys", "# the key is written below\n");
    let file = lab_file(&format!("encryption: {{key_file: {}}}\n", keys.path()));
    let lab = LabGuard::up(&["-f", file.path()]);
    let st = lab.status();
    let socks = sockets(&st);
    let underlay = st["underlay"]["netns"].as_str().unwrap().to_string();
    let (a1, a1_ip) = lab.pod("a1");
    let (b1, b1_ip) = lab.pod("b1");
    let b1_ip = b1_ip.to_string();

    // 1. No key: dropped as no-key on the sending node, nothing on the wire between pods.
    let cap = Capture::start(&underlay, "");
    assert!(
        !ping(&a1, b1_ip.parse().unwrap(), 2),
        "passed without a key"
    );
    assert_eq!(tcp(&a1, &b1_ip, 8080), None, "passed without a key");
    let (wire, _f) = cap.stop("net 10.200.0.0/16 or esp");
    assert!(wire.trim().is_empty(), "sent without a key: {wire}");
    assert!(
        drops(&socks[0])["no-key"].as_u64().unwrap_or(0) > 0,
        "{}",
        drops(&socks[0])
    );

    // 2. A key appears: within seconds, traffic flows, as ESP only.
    keys.write(&key_line(3, 1));
    let cap = Capture::start(&underlay, "");
    assert_eq!(
        eventually(15, || tcp(&a1, &b1_ip, 8080), "b1").as_deref(),
        Some("b1")
    );
    assert_eq!(udp(&a1, &b1_ip, 9000).as_deref(), Some("b1"));
    assert!(ping(&b1, a1_ip, 3), "b1 -> a1");
    let (clear, cap_file) = cap.stop("net 10.200.0.0/16");
    assert!(clear.trim().is_empty(), "pod traffic in clear: {clear}");
    let esp = String::from_utf8_lossy(&sh(&["tcpdump", "-n", "-r", cap_file.path(), "esp"]).stdout)
        .into_owned();
    assert!(
        esp.contains("10.199.0.11 > 10.199.0.12: ESP(spi=0x00000003"),
        "{esp}"
    );

    // 3. tshark, given the SA, shows the inner packets: the wire format is the standard's.
    let sa = |src: &str, dst: &str| {
        format!(
            "uat:esp_sa:\"IPv4\",\"{src}\",\"{dst}\",\"0x00000003\",\
             \"AES-GCM with 16 octet ICV [RFC4106]\",\"0x{}\",\"NULL\",\"\"",
            key_hex(1)
        )
    };
    let decoded = ok(&[
        "tshark",
        "-n",
        "-r",
        cap_file.path(),
        "-o",
        "esp.enable_encryption_decode:TRUE",
        "-o",
        &sa("10.199.0.11", "10.199.0.12"),
        "-o",
        &sa("10.199.0.12", "10.199.0.11"),
    ]);
    // tshark pads its columns: compare with single spaces.
    let decoded: String = decoded
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") + "\n")
        .collect();
    for (flow, what) in [
        (format!("{b1_ip} → {a1_ip} ICMP"), "Echo (ping) request"),
        (format!("{a1_ip} → {b1_ip} ICMP"), "Echo (ping) reply"),
        (format!("{a1_ip} → {b1_ip} TCP"), "[SYN]"),
        (format!("{a1_ip} → {b1_ip} UDP"), "9000"),
    ] {
        assert!(
            decoded
                .lines()
                .any(|l| l.contains(&flow) && l.contains(what)),
            "tshark shows no {flow} {what}: {decoded}"
        );
    }
    let status: Value = serde_json::from_str(&ok(&[
        xylem(),
        "--socket",
        &socks[0],
        "encrypt",
        "status",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(status["mode"], "ipsec", "{status}");
    assert_eq!(status["current_key_id"], 3, "{status}");
    let peer = &status["peers"][0];
    assert_eq!(peer["node"], "node2", "{status}");
    assert!(peer["tx_packets"].as_u64().unwrap() > 0 && peer["rx_packets"].as_u64().unwrap() > 0);

    // 4. A rotation under a running TCP stream loses no connection.
    ok(&["ip", "netns", "exec", &b1, "netserver", "-p", "12866"]);
    let stream = Command::new("ip")
        .args(["netns", "exec", &a1, "netperf", "-H", &b1_ip, "-p", "12866"])
        .args(["-t", "TCP_STREAM", "-l", "8", "--", "-m", "1024"])
        .output_later();
    std::thread::sleep(Duration::from_secs(3));
    keys.write(&(key_line(3, 1) + &key_line(4, 2)));
    let out = stream.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "netperf failed across the rotation: {text}"
    );
    let mbps: f64 = text
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(mbps > 0.0, "no throughput across the rotation: {text}");
    let status: Value = serde_json::from_str(&ok(&[
        xylem(),
        "--socket",
        &socks[1],
        "encrypt",
        "status",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(status["current_key_id"], 4, "{status}");
    let states = key_states(&status);
    assert!(states.contains(&(4, "current".into())), "{status}");
    assert!(states.contains(&(3, "grace".into())), "{status}");
    let cap = Capture::start(&underlay, "esp");
    assert!(ping(&a1, b1_ip.parse().unwrap(), 2));
    let (esp, _f) = cap.stop("esp");
    assert!(
        esp.contains("ESP(spi=0x00000004"),
        "not sent with the new key: {esp}"
    );
    assert!(
        !esp.contains("ESP(spi=0x00000003"),
        "still sent with the old key: {esp}"
    );

    // 5. Pods whose MTU leaves no room for the tunnel (both ends, so TCP's MSS does not keep
    // the segments small): packets too big to seal are answered with ICMP fragmentation
    // needed, and path MTU discovery makes a stream pass.
    for (pod, node) in [("a1", 0), ("b1", 1)] {
        let node_ns = st["nodes"][node]["netns"].as_str().unwrap();
        let p = st["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == pod)
            .unwrap();
        let port = p["interface"].as_str().unwrap();
        let pod_ns = p["netns"].as_str().unwrap();
        ok(&["ip", "-n", node_ns, "link", "set", port, "mtu", "1500"]);
        ok(&["ip", "-n", pod_ns, "link", "set", "eth0", "mtu", "1500"]);
    }
    let too_big = |d: &Value| d["esp-too-big"].as_u64().unwrap_or(0);
    let before = too_big(&drops(&socks[0]));
    let out = ok(&[
        "ip",
        "netns",
        "exec",
        &a1,
        "netperf",
        "-H",
        &b1_ip,
        "-p",
        "12866",
        "-t",
        "TCP_STREAM",
        "-l",
        "3",
    ]);
    let mbps: f64 = out
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(mbps > 0.0, "no throughput at MTU 1500: {out}");
    assert!(
        too_big(&drops(&socks[0])) > before,
        "no packet was too big: {}",
        drops(&socks[0])
    );
}

/// Starts a command with its output captured, to be collected later.
trait OutputLater {
    fn output_later(&mut self) -> Child;
}

impl OutputLater for Command {
    fn output_later(&mut self) -> Child {
        self.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    }
}

/// A ClusterIP service `web` at `vip`:80 whose backends are node 2's pods on 8080.
fn web_service(vip: &str, backends: &[&str]) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\n\
         spec:\n  type: ClusterIP\n  clusterIP: {vip}\n  ports:\n  \
         - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  \
         namespace: default\n  labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\n\
         ports:\n  - {{name: http, port: 8080, protocol: TCP}}\nendpoints:\n"
    );
    for b in backends {
        y.push_str(&format!(
            "  - {{addresses: [{b}], conditions: {{ready: true}}}}\n"
        ));
    }
    y
}

#[test]
fn two_workers_per_node_carry_encrypted_masqueraded_and_balanced_traffic() {
    require_root!();
    // Two workers on each node: each direction of a flow, and each ESP packet, may land on
    // either worker of the node that receives it.
    let keys = TempFile::new("keys", &key_line(5, 9));
    let file = lab_file(&format!("encryption: {{key_file: {}}}\n", keys.path()));
    let lab = LabGuard::up(&["-f", file.path(), "--worker-cores", "0,1"]);
    let st = lab.status();
    let socks = sockets(&st);
    for s in &socks {
        let agent: Value =
            serde_json::from_str(&ok(&[xylem(), "--socket", s, "status", "-o", "json"])).unwrap();
        assert_eq!(agent["workers"].as_array().unwrap().len(), 2, "{agent}");
    }
    let (a1, _) = lab.pod("a1");
    let (a2, _) = lab.pod("a2");
    let (_, b1_ip) = lab.pod("b1");
    let (_, b2_ip) = lab.pod("b2");
    let b1_ip = b1_ip.to_string();
    assert_eq!(
        eventually(15, || tcp(&a1, &b1_ip, 8080), "b1").as_deref(),
        Some("b1")
    );
    // What each node dropped, for a failure's message.
    let both_drops = || {
        let lost = |s: &str| {
            let st: Value =
                serde_json::from_str(&ok(&[xylem(), "--socket", s, "status", "-o", "json"]))
                    .unwrap();
            format!("{} af_xdp {}", st["totals"]["drops"], st["totals"]["xsk"])
        };
        format!("node1 {}; node2 {}", lost(&socks[0]), lost(&socks[1]))
    };
    // Many connections, so their source ports (and so their queues) vary: none may fail.
    for i in 0..20 {
        let pod = if i % 2 == 0 { &a1 } else { &a2 };
        assert_eq!(
            tcp(pod, &b1_ip, 8080).as_deref(),
            Some("b1"),
            "connection {i} across; {}",
            both_drops()
        );
        assert_eq!(
            udp(pod, &b1_ip, 9000).as_deref(),
            Some("b1"),
            "datagram {i} across; {}",
            both_drops()
        );
        assert_eq!(
            tcp(pod, "10.199.0.100", 7).as_deref(),
            Some("hello"),
            "connection {i} out; {}",
            both_drops()
        );
    }
    // A service on node 1 balanced to node 2's pods: translated on node 1, then sealed.
    let svc = TempFile::new(
        "svc.yaml",
        &web_service("10.96.0.80", &[&b1_ip, &b2_ip.to_string()]),
    );
    ok(&[
        xylem(),
        "--socket",
        &socks[0],
        "service",
        "import",
        svc.path(),
    ]);
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..12 {
        let got = tcp(&a1, "10.96.0.80", 80);
        assert!(
            matches!(got.as_deref(), Some("b1" | "b2")),
            "connection {i} to the service got {got:?}"
        );
        seen.extend(got);
    }
    assert_eq!(
        seen.len(),
        2,
        "Maglev spread 12 connections over both backends: {seen:?}"
    );
    for s in &socks {
        let d = drops(s);
        for reason in ["esp-replay", "esp-auth-failed", "snat-failed", "no-key"] {
            assert_eq!(d[reason].as_u64().unwrap_or(0), 0, "{reason} on {s}: {d}");
        }
    }
}

//! Privileged end-to-end tests of the lab: real namespaces, real veths, the real XDP program,
//! real AF_XDP sockets, a real `xylem-agent`, real ping and netperf.
//!
//! Each test brings up its own lab (a unique name, so its own namespaces and API socket) behind
//! a guard that brings it down again even if the test panics. They need root; without it they
//! print why and skip. CI runs as root, so there they run.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

#[macro_use]
mod common;
use common::*;

/// Streams `len` pseudo-random bytes from pod `from` to pod `to` over TCP through the
/// dataplane and checks that every byte arrived, in order.
fn bulk_transfer(from_ns: &str, to_ns: &str, to_ip: Ipv4Addr, len: usize) {
    let data: Vec<u8> = {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = in_netns(to_ns, move || {
        let l = TcpListener::bind(SocketAddrV4::new(to_ip, 9100)).unwrap();
        ready_tx.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let sent = data.clone();
    let client = in_netns(from_ns, move || {
        let mut s = TcpStream::connect_timeout(
            &std::net::SocketAddr::V4(SocketAddrV4::new(to_ip, 9100)),
            Duration::from_secs(10),
        )
        .unwrap();
        s.write_all(&sent).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
    });
    client.join().unwrap();
    let got = server.join().unwrap();
    assert_eq!(got.len(), data.len(), "byte count");
    assert!(got == data, "the bytes received differ from the bytes sent");
}

fn netperf_rr(from_ns: &str, to_ns: &str, to_ip: Ipv4Addr) -> f64 {
    xylem_lab::start_netserver(to_ns).expect("netserver");
    let out = ok(&[
        "ip",
        "netns",
        "exec",
        from_ns,
        "netperf",
        "-4",
        "-H",
        &to_ip.to_string(),
        "-t",
        "TCP_RR",
        "-l",
        "2",
        "--",
        "-r",
        "1,1",
        "-o",
        "P99_LATENCY,TRANSACTION_RATE",
    ]);
    let last = out.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    let rate: f64 = last.split(',').nth(1).unwrap().trim().parse().unwrap();
    rate
}

fn end_to_end(xdp_mode: &str) {
    let lab = LabGuard::up(&["--xdp-mode", xdp_mode]);
    let st = lab.status();
    assert_eq!(st["pods"].as_array().unwrap().len(), 3);
    for p in st["pods"].as_array().unwrap() {
        assert!(p["ip"].as_str().unwrap().starts_with("10.200.0."), "{p}");
        let ns = p["netns"].as_str().unwrap();
        // The netns names work with `ip netns exec`.
        ok(&["ip", "netns", "exec", ns, "true"]);
    }
    let agent = lab.agent();
    for port in agent["ports"].as_array().unwrap() {
        assert_eq!(port["xdp_mode"], xdp_mode, "{port}");
    }

    let (a_ns, a_ip) = lab.pod("pod-a");
    let (b_ns, b_ip) = lab.pod("pod-b");
    assert!(ping(&a_ns, b_ip, 5), "pod-a cannot ping pod-b");
    assert!(ping(&b_ns, a_ip, 3), "pod-b cannot ping pod-a");
    // The host (the node namespace's own stack) reaches a pod through the host port.
    assert!(
        ping(&lab.node_netns(), a_ip, 3),
        "the host cannot ping pod-a"
    );

    let rate = netperf_rr(&a_ns, &b_ns, b_ip);
    assert!(
        rate > 100.0,
        "TCP_RR through the dataplane: {rate} transactions/s"
    );

    bulk_transfer(&a_ns, &b_ns, b_ip, 8 << 20);

    // The traffic went through the workers, not the kernel.
    let after = lab.agent();
    let fwd = after["totals"]["forwarded"].as_u64().unwrap();
    assert!(fwd > 5_000, "forwarded {fwd}");
    assert!(after["redirector"]["redirected"].as_u64().unwrap() >= fwd);
    assert_eq!(after["health"]["ok"], true);

    let prefix = lab.prefix();
    let o = lab.down();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(lab_namespaces(&prefix).is_empty(), "namespaces left behind");
}

#[test]
fn pods_talk_through_af_xdp_in_native_mode() {
    require_root!();
    end_to_end("native");
}

#[test]
fn pods_talk_through_af_xdp_in_generic_mode() {
    require_root!();
    end_to_end("generic");
}

#[test]
fn a_sigkilled_agent_fails_closed_for_pods_and_lab_down_recovers() {
    require_root!();
    let lab = LabGuard::up(&[]);
    let (a_ns, _) = lab.pod("pod-a");
    let (_, b_ip) = lab.pod("pod-b");
    let node = lab.node_netns();
    assert!(ping(&a_ns, b_ip, 2));
    let pid = lab.status()["nodes"][0]["agent_pid"].as_u64().unwrap();
    ok(&["kill", "-KILL", &pid.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(lab.status()["nodes"][0]["agent_running"], false);

    // The kernel detached the XDP programs with the agent's links: no interface keeps a
    // program that redirects into sockets nobody reads.
    let node2 = node.clone();
    let progs = in_netns(&node, move || {
        ["xyp0", "xyp1", "xyp2", "xyhostdp"]
            .iter()
            .map(|i| xdp_redirector::attached_program(i).unwrap())
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    assert!(
        progs.iter().all(Option::is_none),
        "programs left on {node2}: {progs:?}"
    );
    // Pod traffic stops: the kernel does not route it (the gateway MAC is nobody's), so no
    // policy is bypassed while the agent is down.
    assert!(
        !ping(&a_ns, b_ip, 2),
        "pod traffic must not flow without the agent"
    );
    // The client says clearly that the agent is gone.
    let o = sh(&[xylem(), "--lab", &lab.name, "status"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot reach xylem-agent at") && err.contains("is it running?"),
        "{err}"
    );

    // lab down cleans up after the crash, and a new lab up works.
    let prefix = lab.prefix();
    let o = lab.down();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(lab_namespaces(&prefix).is_empty());
    let args = [xylem(), "--lab", &lab.name, "lab", "up"];
    lab.ok_log(&args);
    let (a_ns, _) = lab.pod("pod-a");
    let (_, b_ip) = lab.pod("pod-b");
    assert!(ping(&a_ns, b_ip, 2), "a fresh lab works after the crash");
}

#[test]
fn lab_up_is_idempotent_and_exec_runs_in_the_pod() {
    require_root!();
    let lab = LabGuard::up(&[]);
    let before = lab.status();
    let again = lab.xylem(&["lab", "up"]);
    assert!(again.contains("pod-a"), "{again}");
    let after = lab.status();
    assert_eq!(
        before["nodes"][0]["agent_pid"],
        after["nodes"][0]["agent_pid"]
    );
    let out = lab.xylem(&[
        "lab", "exec", "pod-b", "--", "ip", "-4", "-o", "addr", "show", "eth0",
    ]);
    assert!(out.contains("10.200.0.11/32"), "{out}");
    let eps: Value = serde_json::from_str(&lab.xylem(&["endpoint", "list", "-o", "json"])).unwrap();
    assert_eq!(eps.as_array().unwrap().len(), 3);
    assert_eq!(eps[0]["name"], "pod-a");
}

#[test]
fn cli_without_an_agent_says_what_to_do() {
    let sock = std::env::temp_dir().join(format!("xylem-none-{}.sock", std::process::id()));
    let o = sh(&[xylem(), "--socket", sock.to_str().unwrap(), "status"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "cannot reach xylem-agent at {}: is it running?",
            sock.display()
        )),
        "{err}"
    );
}

/// Two workers: every pod veth gets two queues, one socket on each per worker, and each TCP
/// socket picks its own transmit hash, so a connection's two directions may reach different
/// workers. In passthrough mode all connections work; in full mode too, with the client's
/// ingress enforced, so every reply (from the SYN-ACK on) passes only if it finds the entry
/// its request created, whichever worker created it: the workers share one conntrack.
#[test]
fn two_workers_carry_connections_in_passthrough_and_in_full_mode() {
    require_root!();
    for mode in ["passthrough", "full"] {
        let lab = LabGuard::up(&[
            "--worker-cores",
            "0,0",
            "--placement",
            "shared",
            "--mode",
            mode,
        ]);
        echo_connections(&lab, mode == "full");
    }
}

/// pod-a accepts TCP only from pod-c, on a port nobody uses: its ingress is enforced.
const CLIENT_INGRESS: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: pod-a-in
  namespace: default
spec:
  endpointSelector:
    matchLabels: {app: pod-a}
  ingress:
    - fromEndpoints:
        - matchLabels: {app: pod-c}
      toPorts:
        - ports:
            - {port: \"7\", protocol: TCP}
";

/// 20 TCP connections pod-a → pod-b, each echoing 3,000 bytes; all must come back intact,
/// both workers must have carried traffic, and (`enforce`) with pod-a's ingress enforced the
/// conntrack must list each connection once.
fn echo_connections(lab: &LabGuard, enforce: bool) {
    let (a_ns, a_ip) = lab.pod("pod-a");
    let (b_ns, b_ip) = lab.pod("pod-b");
    if enforce {
        let path = format!("/tmp/xylem-lab-client-ingress-{}.yaml", std::process::id());
        std::fs::write(&path, CLIENT_INGRESS).unwrap();
        lab.xylem(&["policy", "import", &path]);
        let eps: Value =
            serde_json::from_str(&lab.xylem(&["endpoint", "list", "-o", "json"])).unwrap();
        let a = eps
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "pod-a")
            .unwrap();
        assert_eq!(a["ingress_enforced"], true, "{a}");
    }
    const CONNS: usize = 20;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = in_netns(&b_ns, move || {
        let l = TcpListener::bind(SocketAddrV4::new(b_ip, 9200)).unwrap();
        l.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        let mut echoed = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while echoed < CONNS && Instant::now() < deadline {
            let Ok((mut s, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            };
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while let Ok(n @ 1..) = s.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            if s.write_all(&got).is_ok() {
                echoed += 1;
            }
        }
        echoed
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let client = in_netns(&a_ns, move || {
        (0..CONNS)
            .filter_map(|i| {
                let msg = vec![i as u8; 3000];
                let mut s = TcpStream::connect_timeout(
                    &std::net::SocketAddr::V4(SocketAddrV4::new(b_ip, 9200)),
                    Duration::from_secs(2),
                )
                .ok()?;
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s.write_all(&msg).ok()?;
                s.shutdown(std::net::Shutdown::Write).ok()?;
                let mut back = Vec::new();
                s.read_to_end(&mut back).ok()?;
                let sport = s.local_addr().ok()?.port();
                (back == msg).then_some(sport)
            })
            .collect::<Vec<u16>>()
    });
    let sports = client.join().unwrap();
    assert_eq!(sports.len(), CONNS, "connections echoed intact");
    assert_eq!(server.join().unwrap(), CONNS);
    let st = lab.agent();
    let workers = st["workers"].as_array().expect("workers in status");
    assert_eq!(workers.len(), 2);
    for w in workers {
        let rx = w["stats"]["rx_packets"].as_u64().unwrap_or(0);
        // With 20 connections both queues, and so both workers, see traffic.
        assert!(rx > 0, "worker {} saw no traffic: {st}", w["id"]);
    }
    if enforce {
        assert_eq!(
            st["totals"]["drops"]["policy-denied"].as_u64().unwrap_or(0),
            0,
            "no reply was judged as a new flow: {st}"
        );
        // One table, listed once: each connection exactly once, client to server.
        let ct: Value = serde_json::from_str(&lab.xylem(&["ct", "list", "-o", "json"])).unwrap();
        assert_eq!(ct["workers"], 2, "{ct}");
        let mut listed: Vec<u16> = ct["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["orig"]["dport"] == 9200)
            .map(|e| {
                assert_eq!(e["orig"]["src"], a_ip.to_string(), "{e}");
                assert_eq!(e["seen_reply"], true, "{e}");
                e["orig"]["sport"].as_u64().unwrap() as u16
            })
            .collect();
        listed.sort_unstable();
        let mut want = sports;
        want.sort_unstable();
        assert_eq!(listed, want, "{ct}");
    }
}

/// Pods come and go without end: 200 pods added to a running lab and deleted, one after
/// another, each deletion removing the pod's port from the workers. Then the last one carries
/// traffic both ways, its port id is one the deleted pods had, every frame was counted once,
/// and when the agent stops each worker finds every frame of its UMEM where its ledger says.
/// Without frames coming back from removed ports, a few dozen rounds would empty the workers'
/// frame pools and the last pod would get nothing.
#[test]
fn two_hundred_pods_come_and_go_and_every_frame_comes_back() {
    require_root!();
    // Two workers, so that every port id is chosen by each worker and checked against the
    // agent's.
    let lab = LabGuard::up(&["--worker-cores", "0,1", "--placement", "shared"]);
    let (ns_a, ip_a) = lab.pod("pod-a");
    let port_ids = |lab: &LabGuard| -> Vec<String> {
        lab.agent()["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["ifname"].as_str().unwrap().to_string())
            .collect()
    };
    let before = port_ids(&lab);
    let rounds = 200;
    for i in 0..rounds {
        let name = format!("churn{i}");
        let out = lab.xylem(&["lab", "add-pod", &name]);
        assert!(out.contains(&format!("default/{name}")), "{out}");
        if i + 1 < rounds {
            let out = lab.xylem(&["lab", "delete-pod", &name]);
            assert!(out.contains("deleted"), "{out}");
        }
    }
    let after = port_ids(&lab);
    assert_eq!(
        after.len(),
        before.len() + 1,
        "ports left behind by deleted pods: {after:?}"
    );
    let last = format!("churn{}", rounds - 1);
    let (ns_last, ip_last) = lab.pod(&last);
    assert!(ping(&ns_a, ip_last, 3), "pod-a cannot reach {last}");
    assert!(ping(&ns_last, ip_a, 3), "{last} cannot reach pod-a");
    bulk_transfer(&ns_a, &ns_last, ip_last, 4 << 20);

    // Every frame received was counted once: forwarded, to the slow path, or dropped.
    let totals = lab.agent()["totals"].clone();
    let drops: u64 = totals["drops"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        totals["rx_packets"].as_u64().unwrap(),
        totals["forwarded"].as_u64().unwrap() + totals["to_slowpath"].as_u64().unwrap() + drops,
        "{totals}"
    );

    // The agent checks each worker's frames against the kernel's rings when it stops.
    let log = lab.status()["nodes"][0]["agent_log"]
        .as_str()
        .unwrap()
        .to_string();
    lab.kill_agent(libc::SIGTERM);
    let text = std::fs::read_to_string(&log).unwrap();
    let workers = text.matches("frame accounting: ok").count();
    assert!(
        workers == 2 && !text.contains("frame accounting broken"),
        "the agent's frame check after {rounds} pods came and went:\n{text}"
    );
}

/// An Ethernet/IPv4/UDP frame from port 40000 to `dport`.
fn raw_udp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    raw::eth(
        dst_mac,
        src_mac,
        None,
        0x0800,
        &raw::udp4(src, dst, dport, payload),
    )
}

/// A pod is only itself: from inside pod-a, with a raw socket, frames claiming pod-b's address,
/// the gateway's, or pod-a's own address with another MAC never reach pod-c, and each is
/// counted by reason; pod-a's genuine datagram does.
#[test]
fn a_pod_cannot_send_as_another_pod_the_gateway_or_another_mac() {
    require_root!();
    let lab = LabGuard::up(&[]);
    let (ns_a, ip_a) = lab.pod("pod-a");
    let (_, ip_b) = lab.pod("pod-b");
    let (ns_c, ip_c) = lab.pod("pod-c");
    let mac_a = raw::parse_mac(&mac_in(&ns_a, "eth0"));
    let gw_mac = xylem_lab::GATEWAY_MAC.0;
    let gw_ip: Ipv4Addr = lab.status()["nodes"][0]["gateway"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // pod-c listens and reports who it heard from.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let listener = in_netns(&ns_c, move || {
        let s = std::net::UdpSocket::bind(SocketAddrV4::new(ip_c, 9999)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut heard = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            heard.push((from.ip().to_string(), buf[..n].to_vec()));
        }
        heard
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    // The kernel of pod-a resolves the gateway first, so that its own frame goes out.
    assert!(ping(&ns_a, ip_c, 1), "pod-a cannot reach pod-c at all");
    let forged = [
        (mac_a, ip_b, b"as pod-b".as_slice()),
        (mac_a, gw_ip, b"as the gateway".as_slice()),
        (
            [0x02, 0xde, 0xad, 0xbe, 0xef, 0x01],
            ip_a,
            b"with a forged mac".as_slice(),
        ),
    ];
    for (mac, src, payload) in forged {
        raw::send_frames(&ns_a, vec![raw_udp(mac, gw_mac, src, ip_c, 9999, payload)]);
    }
    raw::send_frames(
        &ns_a,
        vec![raw_udp(mac_a, gw_mac, ip_a, ip_c, 9999, b"genuine")],
    );
    let heard = listener.join().unwrap();
    assert_eq!(
        heard,
        vec![(ip_a.to_string(), b"genuine".to_vec())],
        "what pod-c heard"
    );
    let drops = lab.agent()["totals"]["drops"].clone();
    assert!(drops["invalid-source-ip"].as_u64().unwrap() >= 2, "{drops}");
    assert!(
        drops["invalid-source-mac"].as_u64().unwrap() >= 1,
        "{drops}"
    );
}

/// A lab file of `pods: []` brings up a node whose agent serves only its host port, healthy,
/// with no endpoint and the pod network a CNI plugin reads (`network` in `xylem status`); `lab
/// status` names what a plugin needs (node namespace, API socket, pod CIDR, gateway); a pod
/// added to it reaches the node through the dataplane; `lab down` leaves no namespace.
#[test]
fn a_lab_without_pods_waits_for_them_and_takes_one_added_later() {
    require_root!();
    let file = TempFile::new("no-pods.yaml", "pods: []\n");
    let lab = LabGuard::up(&["--file", file.path()]);
    let prefix = lab.prefix();
    let st = lab.status();
    assert_eq!(st["pods"].as_array().unwrap().len(), 0, "{st}");
    let node = &st["nodes"][0];
    assert_eq!(node["netns"], format!("{prefix}node1"), "{st}");
    assert_eq!(node["pod_cidr"], "10.200.0.0/24", "{st}");
    assert_eq!(node["gateway"], "10.200.0.1", "{st}");
    assert_eq!(node["agent_running"], true, "{st}");
    let sock = node["api_socket"].as_str().unwrap().to_string();
    assert!(std::path::Path::new(&sock).exists(), "{sock}");
    assert_eq!(
        lab_namespaces(&prefix),
        [format!("{prefix}node1")],
        "only the node's namespace"
    );
    // The table form says why there are none.
    let table = lab.xylem(&["lab", "status"]);
    assert!(table.contains("no pods"), "{table}");

    // The agent, as `xylem --lab` and its typed client see it.
    let agent = lab.agent();
    assert_eq!(agent["health"]["ok"], true, "{agent}");
    let ports = agent["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1, "the host port alone: {agent}");
    assert_eq!(ports[0]["kind"], "host");
    let c = xylem_api::Client::new(&sock).with_timeout(Duration::from_secs(10));
    assert!(c.endpoints().unwrap().is_empty());
    let status = c.status().unwrap();
    assert!(status.health.ok);
    assert_eq!(status.network.pod_cidr, "10.200.0.0/24");
    assert_eq!(status.network.gateway_ip, Ipv4Addr::new(10, 200, 0, 1));
    assert_eq!(
        status.network.gateway_mac,
        xylem_lab::GATEWAY_MAC.to_string()
    );
    assert_eq!(status.network.pod_mtu, xylem_api::POD_MTU);
    let eps: Value = serde_json::from_str(&lab.xylem(&["endpoint", "list", "-o", "json"])).unwrap();
    assert_eq!(eps, serde_json::json!([]));

    // A pod added later: its endpoint, its port, and traffic with the node.
    let out = lab.xylem(&["lab", "add-pod", "late", "-l", "app=late"]);
    assert!(out.contains("default/late"), "{out}");
    let (ns_late, ip_late) = lab.pod("late");
    assert_eq!(ip_late, Ipv4Addr::new(10, 200, 0, 10));
    let ep = c.endpoint("default", "late").unwrap();
    assert_eq!((ep.ip, ep.labels["app"].as_str()), (ip_late, "late"));
    assert_eq!(ep.container_id, None);
    assert_eq!(c.status().unwrap().ports.len(), 2);
    let host_ip = node["host_ip"].as_str().unwrap().parse().unwrap();
    assert!(
        ping(&ns_late, host_ip, 2),
        "the added pod cannot reach the node"
    );
    // And it goes again.
    lab.xylem(&["lab", "delete-pod", "late"]);
    assert!(matches!(
        c.endpoint("default", "late"),
        Err(xylem_api::Error::Api { status: 404, .. })
    ));

    let o = lab.down();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(lab_namespaces(&prefix).is_empty(), "namespaces left");
}

/// The `nodes:` form takes a node without pods too. With encryption, every agent reports the
/// pods' lower MTU in its status (what a CNI plugin gives a pod's interface), the same the lab
/// gives its own pods; a pod added later to the empty node gets it and reaches the other
/// node's pod over the encrypted underlay.
#[test]
fn an_encrypted_node_without_pods_reports_the_pod_mtu_and_takes_a_pod_later() {
    require_root!();
    let key = TempFile::new(
        "keys",
        "3 rfc4106(gcm(aes)) 0123456789abcdef0123456789abcdef01234567 128\n",
    );
    let file = TempFile::new(
        "empty-node.yaml",
        &format!(
            "encryption: {{key_file: {}}}\nnodes:\n  - {{name: n1, pods: []}}\n  - {{name: n2, pods: [{{name: b}}]}}\n",
            key.path()
        ),
    );
    let lab = LabGuard::up(&["-f", file.path()]);
    let prefix = lab.prefix();
    let st = lab.status();
    let nodes = st["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{st}");
    for (i, n) in nodes.iter().enumerate() {
        let sock = n["api_socket"].as_str().unwrap();
        let status = xylem_api::Client::new(sock)
            .with_timeout(Duration::from_secs(10))
            .status()
            .unwrap();
        assert!(status.health.ok, "{}", n["name"]);
        assert_eq!(status.network.pod_mtu, xylem_lab::ENCRYPTED_POD_MTU);
        assert_eq!(n["pod_mtu"], xylem_lab::ENCRYPTED_POD_MTU, "{n}");
        assert_eq!(status.network.pod_cidr, format!("10.200.{i}.0/24"));
        assert_eq!(status.network.gateway_ip.to_string(), n["gateway"]);
    }
    let out = lab.xylem(&["lab", "add-pod", "a", "--node", "n1"]);
    assert!(out.contains("default/a"), "{out}");
    let (ns_a, ip_a) = lab.pod("a");
    assert_eq!(ip_a, Ipv4Addr::new(10, 200, 0, 10));
    let mtu = ok(&[
        "ip",
        "netns",
        "exec",
        &ns_a,
        "cat",
        "/sys/class/net/eth0/mtu",
    ]);
    assert_eq!(mtu.trim(), xylem_lab::ENCRYPTED_POD_MTU.to_string());
    let (_, ip_b) = lab.pod("b");
    // The first packets wait for the peer node's neighbour entry.
    let reached = (0..5).any(|_| ping(&ns_a, ip_b, 2));
    assert!(reached, "pod a on n1 cannot reach pod b on n2");
    let o = lab.down();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(lab_namespaces(&prefix).is_empty(), "namespaces left");
}

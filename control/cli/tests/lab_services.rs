//! Privileged end-to-end tests of service load balancing: real pods in network namespaces, real
//! servers (`socat`, `netserver`) in the backend pods, a real agent with two workers, and
//! services imported as Kubernetes YAML through `xylem service import`.
//!
//! Each test brings up its own lab (a unique name) behind a guard that brings it down again
//! even if the test panics. They need root; without it, they print why and skip.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::OwnedFd;
use std::time::Duration;

use serde_json::Value;

#[macro_use]
mod common;
use common::*;

/// A backend: answers each connection with its pod's name, then echoes what it is sent.
const SERVE: &str = "socat TCP-LISTEN:8080,fork,reuseaddr SYSTEM:'echo $POD_NAME; cat'";

/// The service's virtual IP (the lab routes the service CIDR through the dataplane).
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// Brings up a lab with a client pod (`client`) and `backends` pods `web-1`… running `run`,
/// on two workers (`shared`), so a backend's reply may reach another worker than its request.
fn lab_with(backends: usize, run: &str) -> LabGuard {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("xylem-svc-{}-{n}.yaml", std::process::id()));
    let mut text = String::from("pods:\n  - {name: client, labels: {app: client}}\n");
    for i in 1..=backends {
        text.push_str(&format!(
            "  - {{name: web-{i}, labels: {{app: web}}, run: \"{run}\"}}\n"
        ));
    }
    std::fs::write(&path, text).unwrap();
    let lab = LabGuard::up(&[
        "-f",
        path.to_str().unwrap(),
        "--worker-cores",
        "0,1",
        "--placement",
        "shared",
    ]);
    let _ = std::fs::remove_file(&path);
    lab
}

/// A `Service` `web` (virtual IP [`VIP`], `ports` as (port, targetPort)) and its
/// `EndpointSlice` over `backends` (address, ready), with `annotations` and, if `affinity`,
/// `ClientIP` session affinity.
fn service_yaml(
    ports: &[(u16, u16)],
    backends: &[(Ipv4Addr, bool)],
    annotations: &[(&str, String)],
    affinity: bool,
) -> String {
    let mut y = String::from(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\n",
    );
    if !annotations.is_empty() {
        y.push_str("  annotations:\n");
        for (k, v) in annotations {
            y.push_str(&format!("    {k}: \"{v}\"\n"));
        }
    }
    y.push_str(&format!("spec:\n  type: ClusterIP\n  clusterIP: {VIP}\n"));
    if affinity {
        y.push_str("  sessionAffinity: ClientIP\n");
    }
    y.push_str("  ports:\n");
    for (i, (port, target)) in ports.iter().enumerate() {
        y.push_str(&format!(
            "  - {{name: p{i}, port: {port}, targetPort: {target}, protocol: {}}}\n",
            protocol_of(*port)
        ));
    }
    y.push_str(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  \
         namespace: default\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\n\
         ports:\n",
    );
    for (i, (port, target)) in ports.iter().enumerate() {
        y.push_str(&format!(
            "  - {{name: p{i}, port: {target}, protocol: {}}}\n",
            protocol_of(*port)
        ));
    }
    y.push_str(if backends.is_empty() {
        "endpoints: []\n"
    } else {
        "endpoints:\n"
    });
    for (ip, ready) in backends {
        y.push_str(&format!(
            "  - {{addresses: [{ip}], conditions: {{ready: {ready}}}}}\n"
        ));
    }
    y
}

/// The protocol of a service port in these tests: 53 is DNS's, UDP; the others TCP.
fn protocol_of(port: u16) -> &'static str {
    if port == 53 { "UDP" } else { "TCP" }
}

/// Imports `yaml` with `xylem service import -` (standard input).
fn import(lab: &LabGuard, yaml: &str) {
    let path = std::env::temp_dir().join(format!("{}-svc.yaml", lab.name));
    std::fs::write(&path, yaml).unwrap();
    lab.xylem(&["service", "import", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
}

/// `xylem service list -o json`.
fn services(lab: &LabGuard) -> Value {
    serde_json::from_str(&lab.xylem(&["service", "list", "-o", "json"])).unwrap()
}

/// A TCP connection from `src` (a fixed source port: the test's outcome does not depend on
/// the ports the kernel happens to pick) to `dst`.
fn connect_from(src: SocketAddrV4, dst: SocketAddrV4) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt, socket, sockopt,
    };
    let fd: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(src))?;
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(dst))?;
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    Ok(s)
}

/// The first line a connection reads: the backend pod's name.
fn name_of(s: &mut TcpStream) -> std::io::Result<String> {
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// Waits until `web-1`… `web-n` all listen (a `run:` server needs a moment).
fn wait_for_servers(lab: &LabGuard, n: usize) {
    let (client_ns, _) = lab.pod("client");
    let ips: Vec<Ipv4Addr> = (1..=n).map(|i| lab.pod(&format!("web-{i}")).1).collect();
    in_netns(&client_ns, move || {
        for ip in ips {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while TcpStream::connect_timeout(&SocketAddr::from((ip, 8080)), Duration::from_secs(1))
                .is_err()
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{ip}:8080 never listened"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    })
    .join()
    .unwrap();
}

/// 10,000 connections to the virtual IP, from source ports 20000 to 29999, spread over the
/// three backends in proportion to their weights (1, 2, 1) within ±5 %, on two workers;
/// `xylem service list` shows each backend's share of the Maglev table in that proportion too.
#[test]
fn ten_thousand_connections_spread_in_proportion_to_the_weights() {
    require_root!();
    let lab = lab_with(3, SERVE);
    wait_for_servers(&lab, 3);
    let (client_ns, client) = lab.pod("client");
    let ips: Vec<Ipv4Addr> = (1..=3).map(|i| lab.pod(&format!("web-{i}")).1).collect();
    import(
        &lab,
        &service_yaml(
            &[(80, 8080)],
            &ips.iter().map(|&ip| (ip, true)).collect::<Vec<_>>(),
            &[("lb.xylem.io/weights", format!("{}=2", ips[1]))],
            false,
        ),
    );
    let list = services(&lab);
    let shares: BTreeMap<String, f64> = list[0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["ip"].as_str().unwrap().to_string(),
                b["table_share"].as_f64().unwrap(),
            )
        })
        .collect();
    assert!((shares[&ips[1].to_string()] - 0.5).abs() < 0.01, "{list}");

    let counts = in_netns(&client_ns, move || {
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        let mut failures = Vec::new();
        for port in 20000..30000u16 {
            match connect_from(SocketAddrV4::new(client, port), SocketAddrV4::new(VIP, 80))
                .and_then(|mut s| name_of(&mut s))
            {
                Ok(name) => *counts.entry(name).or_default() += 1,
                Err(e) => failures.push((port, e.to_string())),
            }
        }
        (counts, failures)
    })
    .join()
    .unwrap();
    let (counts, failures) = counts;
    assert!(
        failures.len() <= 10,
        "{} connections failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    let total: u32 = counts.values().sum();
    for (name, weight) in [("web-1", 0.25), ("web-2", 0.5), ("web-3", 0.25)] {
        let got = f64::from(counts.get(name).copied().unwrap_or(0)) / f64::from(total);
        eprintln!("{name}: {got:.4} of {total} connections (weight share {weight})");
        assert!(
            (got - weight).abs() <= 0.05 * weight,
            "{name} got {got:.4} of the connections, weight share {weight}: {counts:?}"
        );
    }
    // Both workers carried frames.
    let st = lab.agent();
    let frames: Vec<u64> = st["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["stats"]["rx_packets"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        frames.iter().all(|&f| f > 0),
        "a worker saw nothing: {frames:?}"
    );
}

/// Removing a backend while long-lived connections are open breaks none of those on the
/// other backends, and no new connection reaches the removed one.
#[test]
fn removing_a_backend_breaks_no_connection_on_the_others() {
    require_root!();
    let lab = lab_with(3, SERVE);
    wait_for_servers(&lab, 3);
    let (client_ns, client) = lab.pod("client");
    let ips: Vec<Ipv4Addr> = (1..=3).map(|i| lab.pod(&format!("web-{i}")).1).collect();
    let all: Vec<(Ipv4Addr, bool)> = ips.iter().map(|&ip| (ip, true)).collect();
    import(&lab, &service_yaml(&[(80, 8080)], &all, &[], false));

    let (to_open, opened) = std::sync::mpsc::channel::<()>();
    let (to_check, checked) = std::sync::mpsc::channel::<Vec<(String, bool)>>();
    let (give, got) = std::sync::mpsc::channel();
    let worker = in_netns(&client_ns, move || {
        let mut conns = Vec::new();
        for port in 21000..21060u16 {
            let mut s = connect_from(SocketAddrV4::new(client, port), SocketAddrV4::new(VIP, 80))
                .expect("connect");
            let name = name_of(&mut s).expect("name");
            conns.push((name, s));
        }
        give.send(conns.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>())
            .unwrap();
        opened.recv().unwrap();
        // Every connection still carries data both ways.
        let result = conns
            .iter_mut()
            .map(|(name, s)| {
                let ok = s.write_all(b"still-here\n").is_ok() && {
                    let mut buf = [0u8; 11];
                    s.read_exact(&mut buf).is_ok() && &buf == b"still-here\n"
                };
                (name.clone(), ok)
            })
            .collect();
        to_check.send(result).unwrap();
    });
    let names: Vec<String> = got.recv().unwrap();
    assert!(
        names.iter().any(|n| n == "web-1"),
        "no connection on web-1: {names:?}"
    );

    // web-1 leaves the service.
    import(&lab, &service_yaml(&[(80, 8080)], &all[1..], &[], false));
    to_open.send(()).unwrap();
    let result = checked.recv().unwrap();
    worker.join().unwrap();
    let broken: Vec<_> = result
        .iter()
        .filter(|(n, ok)| n != "web-1" && !ok)
        .collect();
    assert!(
        broken.is_empty(),
        "connections on the remaining backends broke: {broken:?}"
    );

    let fresh = in_netns(&client_ns, move || {
        (22000..22100u16)
            .map(|port| {
                let mut s =
                    connect_from(SocketAddrV4::new(client, port), SocketAddrV4::new(VIP, 80))
                        .expect("connect");
                name_of(&mut s).expect("name")
            })
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    assert!(
        !fresh.iter().any(|n| n == "web-1"),
        "a new connection reached web-1"
    );
}

/// With `ClientIP` affinity, every connection of the client reaches one backend.
#[test]
fn client_ip_affinity_keeps_the_client_on_one_backend() {
    require_root!();
    let lab = lab_with(3, SERVE);
    wait_for_servers(&lab, 3);
    let (client_ns, client) = lab.pod("client");
    let ips: Vec<(Ipv4Addr, bool)> = (1..=3)
        .map(|i| (lab.pod(&format!("web-{i}")).1, true))
        .collect();
    import(&lab, &service_yaml(&[(80, 8080)], &ips, &[], true));
    assert_eq!(services(&lab)[0]["session_affinity"], "ClientIP");
    let names = in_netns(&client_ns, move || {
        (23000..23100u16)
            .map(|port| {
                let mut s =
                    connect_from(SocketAddrV4::new(client, port), SocketAddrV4::new(VIP, 80))
                        .expect("connect");
                name_of(&mut s).expect("name")
            })
            .collect::<std::collections::BTreeSet<_>>()
    })
    .join()
    .unwrap();
    assert_eq!(names.len(), 1, "the client reached {names:?}");
}

/// A service with no backend answers a connection with a RST (the client sees "connection
/// refused" at once), counted as the drop `no-service-backend`; the node's own stack reaches a
/// service with backends through the host port.
#[test]
fn no_backend_answers_a_reset_and_the_node_is_balanced_too() {
    require_root!();
    let lab = lab_with(1, SERVE);
    wait_for_servers(&lab, 1);
    let (client_ns, _) = lab.pod("client");
    import(&lab, &service_yaml(&[(80, 8080)], &[], &[], false));
    let before = lab.agent()["totals"]["drops"]["no-service-backend"]
        .as_u64()
        .unwrap_or(0);
    let refused = in_netns(&client_ns, || {
        let t = std::time::Instant::now();
        let e = TcpStream::connect_timeout(&SocketAddr::from((VIP, 80)), Duration::from_secs(3))
            .expect_err("connected to a service with no backend");
        (e.kind(), t.elapsed())
    })
    .join()
    .unwrap();
    assert_eq!(
        refused.0,
        std::io::ErrorKind::ConnectionRefused,
        "{refused:?}"
    );
    assert!(refused.1 < Duration::from_secs(1), "{refused:?}");
    let after = lab.agent()["totals"]["drops"]["no-service-backend"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        after > before,
        "no-service-backend not counted: {before} → {after}"
    );
    // And in Prometheus' terms: the drop by reason and the reset the dataplane answered with.
    let metrics = lab.xylem(&["metrics"]);
    let value = |line_start: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line_start} in:\n{metrics}"))
    };
    assert!(value("xylem_resets_sent_total") >= 1);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("xylem_drop_count_total") && l.contains("no-service-backend")),
        "{metrics}"
    );

    let web = lab.pod("web-1").1;
    import(
        &lab,
        &service_yaml(&[(80, 8080)], &[(web, true)], &[], false),
    );
    let node = lab.node_netns();
    let name = in_netns(&node, || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((VIP, 80)), Duration::from_secs(3))
                .expect("the node connects to the virtual IP");
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        name_of(&mut s).expect("name")
    })
    .join()
    .unwrap();
    assert_eq!(name, "web-1");
}

/// netperf TCP_RR through the virtual IP: netperf's control connection (12865) and its data
/// connection (12866) are both balanced to the backend running netserver.
#[test]
fn netperf_tcp_rr_works_through_the_virtual_ip() {
    require_root!();
    let lab = lab_with(1, "netserver -D -p 12865");
    let (client_ns, _) = lab.pod("client");
    let web = lab.pod("web-1").1;
    import(
        &lab,
        &service_yaml(
            &[(12865, 12865), (12866, 12866)],
            &[(web, true)],
            &[],
            false,
        ),
    );
    // netserver needs a moment to listen: retry for a few seconds.
    let vip = VIP.to_string();
    let args = [
        "ip",
        "netns",
        "exec",
        &client_ns,
        "netperf",
        "-H",
        &vip,
        "-t",
        "TCP_RR",
        "-l",
        "2",
        "-P",
        "0",
        "--",
        "-P",
        "0,12866",
        "-o",
        "transaction_rate",
    ];
    let mut tries = 0;
    let out = loop {
        let o = sh(&args);
        if o.status.success() || tries == 10 {
            break String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
        }
        tries += 1;
        std::thread::sleep(Duration::from_millis(500));
    };
    let rate: f64 = out
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .next()
        .unwrap_or_else(|| panic!("no rate in netperf's output:\n{out}"));
    eprintln!("netperf TCP_RR through {VIP}: {rate:.0} transactions/s");
    assert!(rate > 100.0, "{rate}");
}

/// A UDP datagram larger than the MTU, to the virtual IP and back: the client's fragments are
/// balanced to one backend whole, and the backend's fragmented echo comes back from the
/// virtual IP whole (the kernel reassembles both, so every fragment was translated alike).
#[test]
fn a_fragmented_datagram_through_the_virtual_ip_arrives_whole_both_ways() {
    require_root!();
    let lab = lab_with(1, "socat UDP4-RECVFROM:5353,fork SYSTEM:cat");
    let (client_ns, _) = lab.pod("client");
    let web = lab.pod("web-1").1;
    import(
        &lab,
        &service_yaml(&[(53, 5353)], &[(web, true)], &[], false),
    );
    let (sent, got, from) = in_netns(&client_ns, || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let sent: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
        let mut buf = vec![0u8; 8192];
        // The backend's socat needs a moment to bind: a few tries.
        for _ in 0..20 {
            s.send_to(&sent, (VIP, 53)).unwrap();
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                return (sent, buf[..n].to_vec(), from);
            }
        }
        panic!("no echo through {VIP}:53");
    })
    .join()
    .unwrap();
    assert_eq!(from, SocketAddr::from((VIP, 53)), "the echo's source");
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "the echo differs from what was sent");
}

//! Privileged end-to-end tests of the lab's per-pod `run:` command and of service health
//! checks: probes from the gateway through the backend's policy, rise and fall, the `agent`
//! events of `xylem monitor`, and `xylem service list`'s health.
//!
//! Each test brings up its own lab (a unique name) behind a guard that brings it down again
//! even if the test panics. They need root; without it, they print why and skip.

use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

#[macro_use]
mod common;
use common::*;

/// A server answering each TCP connection on 8080 with its pod's name.
const SERVE_NAME: &str = "socat TCP-LISTEN:8080,fork,reuseaddr SYSTEM:'echo $POD_NAME'";

/// `pod-a` as a client; `web-1` and `web-2` as backends that answer with their names.
fn lab_file(name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{name}-lab.yaml"));
    let text = format!(
        "pods:\n  - {{name: pod-a, labels: {{app: client}}}}\n  \
         - {{name: web-1, labels: {{app: web}}, run: \"{SERVE_NAME}\"}}\n  \
         - {{name: web-2, labels: {{app: web}}, run: \"{SERVE_NAME}\"}}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn up_with_backends() -> (LabGuard, std::path::PathBuf) {
    // The lab's name is not known before it is up: the file gets a name of its own, one per
    // test (they run side by side in one process).
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = lab_file(&format!("xylem-health-{}-{n}", std::process::id()));
    let lab = LabGuard::up(&["-f", file.to_str().unwrap()]);
    (lab, file)
}

/// What a TCP connection from `netns` to `ip:port` reads, until the server closes.
fn read_from(netns: &str, ip: Ipv4Addr, port: u16) -> Result<String, String> {
    in_netns(netns, move || {
        let addr = SocketAddr::from((ip, port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .map_err(|e| format!("read {addr}: {e}"))?;
        Ok(out)
    })
    .join()
    .unwrap()
}

/// Retries `read_from` for up to 5 s: a `run:` server needs a moment to listen.
fn read_eventually(netns: &str, ip: Ipv4Addr, port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match read_from(netns, ip, port) {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn pod_status(lab: &LabGuard, name: &str) -> Value {
    lab.status()["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no pod {name}"))
}

/// The pids of the processes called `comm` in namespace `netns`.
fn pids_named(netns: &str, comm: &str) -> Vec<i32> {
    let out = sh(&["ip", "netns", "pids", netns]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .collect()
}

#[test]
fn a_pods_run_command_serves_with_its_name_and_lab_down_ends_it() {
    require_root!();
    let (lab, file) = up_with_backends();
    let (ns_a, _) = lab.pod("pod-a");
    let (_, ip_1) = lab.pod("web-1");
    let (_, ip_2) = lab.pod("web-2");
    assert_eq!(read_eventually(&ns_a, ip_1, 8080), "web-1\n");
    assert_eq!(read_eventually(&ns_a, ip_2, 8080), "web-2\n");

    let st = pod_status(&lab, "web-1");
    assert_eq!(st["run"], SERVE_NAME, "{st}");
    let log = st["run_log"].as_str().expect("run_log in lab status");
    assert!(std::path::Path::new(log).exists(), "{log}");
    assert!(pod_status(&lab, "pod-a").get("run").is_none());

    // `add-pod --run`, with POD_IP and POD_NAMESPACE set too.
    lab.xylem(&[
        "lab",
        "add-pod",
        "web-3",
        "--namespace",
        "shop",
        "--run",
        "socat TCP-LISTEN:8081,fork,reuseaddr SYSTEM:'echo $POD_NAMESPACE/$POD_NAME@$POD_IP'",
    ]);
    let (ns_3, ip_3) = lab.pod("web-3");
    assert_eq!(
        read_eventually(&ns_a, ip_3, 8081),
        format!("shop/web-3@{ip_3}\n")
    );

    // `lab down` ends every process of the lab's namespaces, the `run:` ones too.
    let servers: Vec<i32> = [lab.pod("web-1").0, lab.pod("web-2").0, ns_3]
        .iter()
        .flat_map(|ns| pids_named(ns, "socat"))
        .collect();
    assert!(servers.len() >= 3, "{servers:?}");
    let o = lab.down();
    assert!(o.status.success(), "{o:?}");
    for pid in servers {
        // Gone, or a zombie its new parent has not reaped yet (pid 1 of a container may not).
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z "),
            "socat {pid} outlived lab down: {stat}"
        );
    }
    std::fs::remove_file(file).unwrap();
}

#[test]
fn the_node_routes_the_service_cidr_through_the_host_port() {
    require_root!();
    let (lab, file) = up_with_backends();
    let route = ok(&["ip", "-n", &lab.node_netns(), "route", "get", "10.96.0.10"]);
    assert!(route.contains("dev xyhost"), "{route}");
    assert_eq!(lab.status()["nodes"][0]["service_cidr"], "10.96.0.0/12");
    std::fs::remove_file(file).unwrap();
}

/// A ClusterIP service over web-1 and web-2 with a TCP health check: every 300 ms, 200 ms
/// timeout, up after 2 successes, down after 2 failures.
fn service_yaml(ip_1: Ipv4Addr, ip_2: Ipv4Addr) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
  annotations:
    lb.xylem.io/health-check: tcp
    lb.xylem.io/health-interval: 300ms
    lb.xylem.io/health-timeout: 200ms
    lb.xylem.io/health-rise: \"2\"
    lb.xylem.io/health-fall: \"2\"
spec:
  type: ClusterIP
  clusterIP: 10.96.0.10
  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
  - {{addresses: [{ip_1}], conditions: {{ready: true}}}}
  - {{addresses: [{ip_2}], conditions: {{ready: true}}}}
"
    )
}

/// web-1's ingress enforced: only pod-a (and, by `policy.allow_localhost`, the node) gets in.
const WEB_INGRESS: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: web-ingress
  namespace: default
spec:
  endpointSelector:
    matchLabels: {app: web}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
";

fn import(lab: &LabGuard, what: &str, text: &str) {
    let path = std::env::temp_dir().join(format!("{}-{what}.yaml", lab.name));
    std::fs::write(&path, text).unwrap();
    lab.xylem(&[what, "import", path.to_str().unwrap()]);
    std::fs::remove_file(path).unwrap();
}

/// The health of backend `ip` of `default/web`, from `xylem service list -o json`.
fn health(lab: &LabGuard, ip: Ipv4Addr) -> String {
    let list: Value = serde_json::from_str(&lab.xylem(&["service", "list", "-o", "json"])).unwrap();
    let svc = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web")
        .expect("service web listed");
    let b = svc["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["ip"] == ip.to_string())
        .unwrap_or_else(|| panic!("no backend {ip} in {svc}"));
    b["health"].as_str().unwrap().to_string()
}

/// Waits until backend `ip` has health `want`, for at most `within`; returns how long it took.
fn wait_health(lab: &LabGuard, ip: Ipv4Addr, want: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let h = health(lab, ip);
        if h == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "backend {ip} still {h}, not {want}, after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `agent` events of a monitor's JSON output, as (backend, from, to).
fn health_events(out: &str) -> Vec<(String, String, String)> {
    out.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "agent")
        .map(|v| {
            assert_eq!(v["event"], "backend-health", "{v}");
            assert_eq!(v["service"], "default/web", "{v}");
            assert!(v["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{v}");
            let s = |k: &str| v[k].as_str().unwrap().to_string();
            (s("backend"), s("from"), s("to"))
        })
        .collect()
}

#[test]
fn a_killed_backend_is_marked_down_within_fall_intervals_and_up_again_with_agent_events() {
    require_root!();
    let (lab, file) = up_with_backends();
    let (ns_1, ip_1) = lab.pod("web-1");
    let (_, ip_2) = lab.pod("web-2");
    // web-1's ingress enforced, with the default `allow_localhost: always`: probed healthy.
    import(&lab, "policy", WEB_INGRESS);
    let mon = Monitor::start(&[
        "--lab", &lab.name, "monitor", "--type", "agent", "-o", "json",
    ]);
    import(&lab, "service", &service_yaml(ip_1, ip_2));
    // rise (2) × interval (300 ms) plus slack.
    wait_health(&lab, ip_1, "up", Duration::from_secs(5));
    wait_health(&lab, ip_2, "up", Duration::from_secs(5));

    for pid in pids_named(&ns_1, "socat") {
        // SAFETY: kill(2) of a server process in the lab's pod namespace.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    // fall (2) × interval (300 ms), plus a tick and the time to publish: well under 2 s.
    let took = wait_health(&lab, ip_1, "down", Duration::from_secs(2));
    assert_eq!(health(&lab, ip_2), "up");
    eprintln!("web-1 marked down {took:?} after its server was killed");
    // New connections to the virtual IP avoid it, from a pod and from the node's own stack
    // (through the host port, the service CIDR's route).
    let (ns_a, _) = lab.pod("pod-a");
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    for ns in [ns_a.clone(), lab.node_netns()] {
        for _ in 0..10 {
            assert_eq!(
                read_from(&ns, vip, 80).as_deref(),
                Ok("web-2\n"),
                "from {ns}"
            );
        }
    }

    // Back: a new server in web-1's namespace.
    let mut server = std::process::Command::new("ip")
        .args(["netns", "exec", &ns_1, "sh", "-c", SERVE_NAME])
        .env("POD_NAME", "web-1")
        .spawn()
        .unwrap();
    wait_health(&lab, ip_1, "up", Duration::from_secs(3));
    assert_eq!(read_eventually(&ns_a, ip_1, 8080), "web-1\n");

    let (status, out, err) = mon.stop(libc::SIGINT);
    assert!(status.success(), "{err}");
    let ev = health_events(&out);
    let b1 = format!("{ip_1}:8080");
    let b2 = format!("{ip_2}:8080");
    let of = |b: &str| {
        ev.iter()
            .filter(|e| e.0 == b)
            .map(|e| (e.1.as_str(), e.2.as_str()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of(&b1),
        [("unknown", "up"), ("up", "down"), ("down", "up")],
        "{out}"
    );
    assert_eq!(of(&b2), [("unknown", "up")], "{out}");
    let _ = server.kill();
    let _ = server.wait();
    std::fs::remove_file(file).unwrap();
}

#[test]
fn probes_pass_the_backends_policy_as_the_node_and_are_refused_without_allow_localhost() {
    require_root!();
    let (lab, file) = up_with_backends();
    let (_, ip_1) = lab.pod("web-1");
    let (_, ip_2) = lab.pod("web-2");
    import(&lab, "policy", WEB_INGRESS);
    // `policy`: the node is a peer like any other, and WEB_INGRESS lets only pod-a in.
    lab.restart_with_config("allow_localhost: always", "allow_localhost: policy");
    import(&lab, "service", &service_yaml(ip_1, ip_2));
    wait_health(&lab, ip_1, "down", Duration::from_secs(5));
    wait_health(&lab, ip_2, "down", Duration::from_secs(5));
    // The probes' SYNs were not sent: counted, not lost.
    let denied = lab.agent()["totals"]["slowpath_probes_denied"]
        .as_u64()
        .unwrap();
    assert!(denied >= 4, "{denied}");
    // A rule for the host brings them up: the probes' replies come back as a tracked flow's.
    import(
        &lab,
        "policy",
        &WEB_INGRESS.replace(
            "    - fromEndpoints: [{matchLabels: {app: client}}]\n",
            "    - fromEndpoints: [{matchLabels: {app: client}}]\n    - fromEntities: [host]\n",
        ),
    );
    wait_health(&lab, ip_1, "up", Duration::from_secs(5));
    wait_health(&lab, ip_2, "up", Duration::from_secs(5));
    std::fs::remove_file(file).unwrap();
}

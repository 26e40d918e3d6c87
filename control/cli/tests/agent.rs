//! End-to-end tests of the agent's control side through its real unix socket: the API and its
//! validation, persistence across SIGTERM and SIGKILL restarts, a corrupt state file, metrics
//! scraped over HTTP and parsed by a Prometheus text parser, and the monitor under load.
//!
//! The lab-based tests need root (namespaces, XDP, AF_XDP); without it they print why and skip.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use xylem_api::{Client, EndpointRequest};

#[macro_use]
mod common;
use common::*;

fn endpoints(c: &Client) -> BTreeMap<String, Value> {
    let eps: Vec<Value> = c.get("/v1/endpoints").unwrap();
    eps.into_iter()
        .map(|e| {
            (
                format!(
                    "{}/{}",
                    e["namespace"].as_str().unwrap(),
                    e["name"].as_str().unwrap()
                ),
                e,
            )
        })
        .collect()
}

fn revision(c: &Client) -> u64 {
    let st: Value = c.get("/v1/status").unwrap();
    st["tables_revision"].as_u64().unwrap()
}

/// A raw request (so malformed bodies reach the agent as they are): status and body.
fn api_status(sock: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let o = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/stderr",
            "-w",
            "%{http_code}",
            "--unix-socket",
            sock,
        ])
        .args(["-X", method, "-H", "content-type: application/json"])
        .args(["--data-binary", "@-"])
        .arg(format!("http://xylem{path}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            use std::io::Write;
            ch.stdin.take().unwrap().write_all(body)?;
            ch.wait_with_output()
        })
        .expect("curl");
    (
        String::from_utf8_lossy(&o.stdout).parse().unwrap_or(0),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn client(lab: &LabGuard) -> Client {
    Client::new(lab.socket())
}

/// Moves pod-c's endpoint to `prod/web` at 10.200.0.42 through the API (and gives pod-c's
/// eth0 that address), so what a restart must restore differs from the configuration file.
fn move_pod_c(lab: &LabGuard, c: &Client) -> (String, Ipv4Addr) {
    let (ns_c, _) = lab.pod("pod-c");
    let mac = mac_in(&ns_c, "eth0");
    c.delete("/v1/endpoints/default/pod-c").unwrap();
    let ep: Value = c
        .put(
            "/v1/endpoints/prod/web",
            &json!({"ifname": "xyp2", "ip": "10.200.0.42", "mac": mac, "labels": {"app": "web"}}),
        )
        .unwrap();
    assert_eq!(ep["ip"], "10.200.0.42");
    assert_eq!(ep["mac"], mac.as_str());
    assert_eq!(ep["labels"]["app"], "web");
    ok(&[
        "ip",
        "netns",
        "exec",
        &ns_c,
        "ip",
        "addr",
        "add",
        "10.200.0.42/32",
        "dev",
        "eth0",
    ]);
    (ns_c, "10.200.0.42".parse().unwrap())
}

#[test]
fn api_round_trips_refuses_bad_requests_and_state_survives_sigterm_and_sigkill() {
    require_root!();
    let lab = LabGuard::up(&[]);
    let c = client(&lab);
    let (ns_a, _) = lab.pod("pod-a");

    let before = endpoints(&c);
    assert_eq!(before.len(), 3, "{before:?}");
    // Every endpoint has a security identity now that policy is wired (issue 4).
    assert!(
        before["default/pod-a"]["identity"].as_u64().unwrap() >= 256,
        "{before:?}"
    );

    // Refused requests: 4xx naming the field, nothing changed.
    let sock = lab.socket();
    let rev = revision(&c);
    let mac = mac_in(&lab.pod("pod-c").0, "eth0");
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "/v1/endpoints/prod/web",
            json!({"ifname": "xyp2", "ip": "10.200.0.999", "mac": mac}).to_string(),
            422,
            "ip",
        ),
        (
            "/v1/endpoints/prod/web",
            json!({"ifname": "xyp2", "ip": "10.9.0.1", "mac": mac}).to_string(),
            422,
            "ip",
        ),
        (
            "/v1/endpoints/prod/web",
            json!({"ifname": "xyp2", "ip": "10.200.0.42", "mac": "zz"}).to_string(),
            422,
            "mac",
        ),
        (
            "/v1/endpoints/prod/web",
            json!({"ifname": "nope0", "ip": "10.200.0.42", "mac": mac}).to_string(),
            422,
            "ifname",
        ),
        (
            "/v1/endpoints/prod/web",
            json!({"ifname": "xyp2", "ip": "10.200.0.42", "mac": mac, "colour": 1}).to_string(),
            400,
            "colour",
        ),
        (
            "/v1/endpoints/prod/web",
            json!({"ip": "10.200.0.42", "mac": mac}).to_string(),
            400,
            "ifname",
        ),
        (
            "/v1/endpoints/Prod_X/web",
            json!({"ifname": "xyp2", "ip": "10.200.0.42", "mac": mac}).to_string(),
            422,
            "namespace",
        ),
        ("/v1/endpoints/prod/web", "{not json".into(), 400, "body"),
        // The port already serves pod-c; pod-b's IP is taken.
        (
            "/v1/endpoints/prod/web",
            json!({"ifname": "xyp2", "ip": "10.200.0.42", "mac": mac}).to_string(),
            409,
            "ifname",
        ),
        (
            "/v1/endpoints/default/pod-c",
            json!({"ifname": "xyp2", "ip": "10.200.0.11", "mac": mac}).to_string(),
            409,
            "ip",
        ),
    ];
    for (path, body, want, field) in &cases {
        let (code, text) = api_status(&sock, "PUT", path, body.as_bytes());
        assert_eq!(code, *want, "{path} {body}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{text}"));
        assert_eq!(v["field"], *field, "{body}: {text}");
    }
    let huge = vec![b'x'; 200 * 1024];
    let (code, _) = api_status(&sock, "PUT", "/v1/endpoints/prod/web", &huge);
    assert_eq!(code, 413, "an oversized body is refused");
    assert_eq!(endpoints(&c), before, "refused requests changed nothing");
    assert_eq!(revision(&c), rev, "refused requests published no tables");

    // Concurrent clients, one of them holding a monitor stream open.
    let mon = Monitor::start(&["--socket", &sock, "monitor", "-o", "json"]);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let c = Client::new(sock);
                for _ in 0..10 {
                    let st: Value = c.get("/v1/status").unwrap();
                    assert_eq!(st["health"]["ok"], true);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (status, _, stderr) = mon.stop(libc::SIGINT);
    assert!(status.success(), "{stderr}");

    // A real change: pod-c becomes prod/web at a new address; traffic follows the new tables.
    let (_, web_ip) = move_pod_c(&lab, &c);
    assert!(revision(&c) > rev);
    assert!(ping(&ns_a, web_ip, 2), "pod-a cannot reach prod/web");
    let configured = endpoints(&c);
    assert!(configured.contains_key("prod/web") && !configured.contains_key("default/pod-c"));

    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGKILL, "SIGKILL")] {
        lab.kill_agent(sig);
        lab.start_agent(&[])
            .unwrap_or_else(|e| panic!("restart after {name}: {e}"));
        let c = client(&lab);
        assert_eq!(endpoints(&c), configured, "endpoints after {name}");
        assert!(
            ping(&ns_a, web_ip, 2),
            "pod-a cannot reach prod/web after {name}"
        );
    }
}

#[test]
fn a_corrupt_state_file_is_refused_unless_started_empty() {
    require_root!();
    let lab = LabGuard::up(&[]);
    let st = lab.status();
    let cfg = st["nodes"][0]["agent_config"].as_str().unwrap().to_string();
    let dir = std::path::Path::new(&cfg).parent().unwrap().join("state");
    lab.kill_agent(libc::SIGTERM);
    std::fs::write(dir.join("endpoints.json"), b"{\"prod/web\": {\"ifn").unwrap();
    let err = lab
        .start_agent(&[])
        .expect_err("the agent started on a corrupt state file");
    assert!(
        err.contains("endpoints.json") && err.contains("corrupt") && err.contains("--start-empty"),
        "{err}"
    );
    lab.start_agent(&["--start-empty"]).unwrap();
    assert_eq!(endpoints(&client(&lab)).len(), 3);
    assert!(dir.join("endpoints.json.discarded").exists());
}

fn scrape(netns: &str) -> prometheus_parse::Scrape {
    let text = ok(&[
        "ip",
        "netns",
        "exec",
        netns,
        "curl",
        "-sf",
        "http://127.0.0.1:9962/metrics",
    ]);
    assert!(text.contains("# EOF"), "not OpenMetrics text: {text}");
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("exposition text parses")
}

fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .find(|m| m.metric == name && labels.iter().all(|(k, v)| m.labels.get(k) == Some(*v)))
        .map(|m| match m.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
}

#[test]
fn metrics_are_valid_exposition_and_count_the_packets_sent() {
    require_root!();
    let lab = LabGuard::up(&[]);
    let node = lab.node_netns();
    let (ns_a, _) = lab.pod("pod-a");
    let (_, ip_b) = lab.pod("pod-b");
    // Warm ARP caches so only the pings below cross the dataplane afterwards.
    assert!(ping(&ns_a, ip_b, 1));
    std::thread::sleep(Duration::from_millis(300));
    let s0 = scrape(&node);
    for name in [
        "xylem_forward_count_total",
        "xylem_forward_bytes_total",
        "xylem_xdp_redirect_total",
        "xylem_monitor_events_lost_total",
    ] {
        value(&s0, name, &[]);
    }
    value(&s0, "xylem_worker_busy_ratio", &[("worker", "0")]);
    let no_route = [("reason", "no-route"), ("direction", "ingress")];
    value(&s0, "xylem_drop_count_total", &no_route);

    assert!(ping(&ns_a, ip_b, 10));
    // Three echo requests to an address nobody has: dropped, counted no-route.
    let _ = sh(&[
        "ip",
        "netns",
        "exec",
        &ns_a,
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "1",
        "10.200.0.99",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    let s1 = scrape(&node);
    let d = |n: &str, l: &[(&str, &str)]| value(&s1, n, l) - value(&s0, n, l);
    assert_eq!(
        d("xylem_forward_count_total", &[]),
        20.0,
        "10 requests + 10 replies"
    );
    assert_eq!(
        d("xylem_forward_bytes_total", &[]),
        20.0 * 98.0,
        "98-byte ICMP frames"
    );
    assert_eq!(d("xylem_drop_count_total", &no_route), 3.0);
    assert!(d("xylem_xdp_redirect_total", &[]) >= 23.0);
    // The kernel's socket counters are exported by their kernel names (the worker tests and
    // `xsk_kernel_stats` check what they count).
    for counter in [
        "rx_dropped",
        "rx_ring_full",
        "rx_fill_ring_empty_descs",
        "rx_invalid_descs",
        "tx_invalid_descs",
    ] {
        value(&s1, "xylem_xsk_kernel_total", &[("counter", counter)]);
    }
    let cli = lab.xylem(&["metrics"]);
    assert!(cli.contains("xylem_forward_count_total"), "{cli}");
}

/// A netperf TCP stream from namespace `from` to `to` for `secs` seconds.
fn tcp_stream(from: &str, to: Ipv4Addr, secs: u32) {
    let _ = sh(&[
        "ip",
        "netns",
        "exec",
        from,
        "netperf",
        "-4",
        "-H",
        &to.to_string(),
        "-t",
        "TCP_STREAM",
        "-l",
        &secs.to_string(),
    ]);
}

/// A monitor client that reads nothing until told to: the raw HTTP stream on the unix socket.
struct SlowMonitor {
    stream: std::os::unix::net::UnixStream,
}

impl SlowMonitor {
    /// Attached once the response head has arrived: the agent subscribes the client before it
    /// answers.
    fn attach(sock: &str, path: &str) -> SlowMonitor {
        use std::io::{Read as _, Write as _};
        let mut stream = std::os::unix::net::UnixStream::connect(sock).expect("connect");
        write!(stream, "GET {path} HTTP/1.1\r\nHost: xylem\r\n\r\n").expect("request");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).expect("response head");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{head}"
        );
        SlowMonitor { stream }
    }

    /// Reads until the agent has sent nothing for `idle`, and returns the body's lines.
    fn drain(mut self, idle: Duration) -> Vec<Value> {
        use std::io::Read as _;
        self.stream.set_read_timeout(Some(idle)).unwrap();
        let mut raw = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) => panic!("reading the monitor stream: {e}"),
            }
        }
        // De-chunk: `size\r\ndata\r\n`, where the last chunk may be cut short by the read.
        let mut body = Vec::new();
        let mut rest = &raw[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16)
                .expect("chunk size");
            let data = &rest[eol + 2..];
            if size == 0 || data.len() < size + 2 {
                break;
            }
            body.extend_from_slice(&data[..size]);
            rest = &data[size + 2..];
        }
        String::from_utf8(body)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    }
}

#[test]
fn the_monitor_shows_pings_under_load_and_tells_a_slow_client_what_it_lost() {
    require_root!();
    let lab = LabGuard::up(&[]);
    let node = lab.node_netns();
    let (ns_a, _) = lab.pod("pod-a");
    let (ns_b, ip_b) = lab.pod("pod-b");
    xylem_lab::start_netserver(&ns_b).expect("netserver");
    // Let start-up traffic settle, so that both clients below see the same events.
    std::thread::sleep(Duration::from_millis(500));
    let sock = lab.socket();
    let mon = Monitor::start(&["--socket", &sock, "monitor", "-o", "json"]);
    let slow = SlowMonitor::attach(&sock, "/v1/monitor");
    assert!(ping(&ns_a, ip_b, 3));
    let _ = sh(&[
        "ip",
        "netns",
        "exec",
        &ns_a,
        "ping",
        "-c",
        "2",
        "-W",
        "1",
        "10.200.0.99",
    ]);
    // Load: a bulk TCP stream for two seconds makes more events than the workers' rings hold
    // between two rounds of the dispatcher; those are lost for every client.
    tcp_stream(&ns_a, ip_b, 2);
    // Then a steady trickle: pings every 2 ms for 4 s are few enough for the workers' rings but
    // make more dispatcher rounds than the agent buffers for a client that reads nothing.
    let _ = sh(&[
        "ip",
        "netns",
        "exec",
        &ns_a,
        "ping",
        "-q",
        "-i",
        "0.002",
        "-c",
        "2000",
        &ip_b.to_string(),
    ]);
    let slow_lines = slow.drain(Duration::from_secs(2));
    let (status, text, stderr) = mon.stop(libc::SIGINT);
    assert!(status.success(), "{stderr}");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let ping_seen = lines.iter().any(|v| {
        v["type"] == "trace"
            && v["protocol"] == "ICMP"
            && v["source"]["endpoint"] == "default/pod-a"
            && v["destination"]["endpoint"] == "default/pod-b"
            && v["verdict"] == "FORWARDED"
    });
    assert!(ping_seen, "no ping trace among {} events", lines.len());
    let drop_seen = lines.iter().any(|v| {
        v["type"] == "drop" && v["verdict"] == "DROPPED" && v["drop_reason"] == "no-route"
    });
    assert!(drop_seen, "no no-route drop event");
    let last = lines.last().unwrap();
    let (fast_shown, fast_lost) = (
        last["events"].as_u64().unwrap(),
        last["lost"].as_u64().unwrap(),
    );

    // The slow client was told, in `lost` lines, how many events it missed; what it was shown
    // and what it was told it lost add up to what the fast client saw of the same traffic.
    let slow_shown = slow_lines
        .iter()
        .filter(|v| v["type"] != "lost" && v["type"] != "end")
        .count() as u64;
    let slow_lost = slow_lines
        .iter()
        .filter(|v| v["type"] == "lost")
        .filter_map(|v| v["lost"].as_u64())
        .max()
        .unwrap_or(0);
    eprintln!(
        "monitor: fast client {fast_shown} shown + {fast_lost} lost; \
         slow client {slow_shown} shown + {slow_lost} lost"
    );
    assert!(
        slow_lost > 0,
        "the slow client was not told of any lost event"
    );
    assert!(
        slow_shown > 0,
        "the slow client was shown nothing once it read"
    );
    assert_eq!(
        slow_shown + slow_lost,
        fast_shown + fast_lost,
        "every event reached the slow client or was reported lost to it"
    );

    // Nobody listens any more: the workers stop producing events. Were they still producing,
    // their rings (drained only while a client listens) would fill and count events lost.
    let lost = |s: &prometheus_parse::Scrape| value(s, "xylem_monitor_events_lost_total", &[]);
    let before = lost(&scrape(&node));
    assert!(ping(&ns_a, ip_b, 3));
    tcp_stream(&ns_a, ip_b, 1);
    assert_eq!(
        lost(&scrape(&node)),
        before,
        "events were produced with no client"
    );
}

#[test]
fn every_command_says_what_to_do_when_the_agent_is_down() {
    let sock = std::env::temp_dir().join(format!("xylem-down-{}.sock", std::process::id()));
    let s = sock.to_str().unwrap();
    for cmd in [
        &["status"][..],
        &["endpoint", "list"],
        &["endpoint", "delete", "default/a"],
        &[
            "endpoint",
            "put",
            "a",
            "--ifname",
            "x",
            "--ip",
            "10.0.0.1",
            "--mac",
            "02:00:00:00:00:01",
        ],
        &["metrics"],
        &["monitor"],
    ] {
        let mut args = vec!["--socket", s];
        args.extend_from_slice(cmd);
        let o = Command::new(xylem()).args(&args).output().unwrap();
        assert!(!o.status.success(), "{cmd:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("cannot reach xylem-agent at {s}: is it running?")),
            "{cmd:?}: {err}"
        );
    }
}

#[test]
fn a_running_lab_gains_a_pod_through_the_api_and_keeps_it_after_sigkill() {
    require_root!();
    let lab = LabGuard::up(&[]);
    let rev = revision(&client(&lab));
    let out = lab.xylem(&[
        "lab",
        "add-pod",
        "web",
        "--namespace",
        "prod",
        "-l",
        "app=web",
    ]);
    assert!(out.contains("prod/web"), "{out}");
    let (ns_a, _) = lab.pod("pod-a");
    let (ns_web, web_ip) = lab.pod("web");
    let c = client(&lab);
    let eps = endpoints(&c);
    assert_eq!(eps["prod/web"]["labels"]["app"], "web");
    assert!(revision(&c) > rev);
    let st: Value = c.get("/v1/status").unwrap();
    let port = st["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["endpoint"] == "prod/web")
        .unwrap_or_else(|| panic!("no port for prod/web in {st}"))
        .clone();
    assert!(port["xdp_mode"].is_string());
    assert!(ping(&ns_a, web_ip, 2), "pod-a cannot reach the added pod");
    let node = lab.node_netns();
    let _ = ns_web;
    ok(&[
        "ip",
        "netns",
        "exec",
        &node,
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        &web_ip.to_string(),
    ]);

    lab.kill_agent(libc::SIGKILL);
    lab.start_agent(&[]).unwrap();
    let c = client(&lab);
    assert_eq!(endpoints(&c), eps, "endpoints after SIGKILL");
    assert!(
        ping(&ns_a, web_ip, 2),
        "the added pod is unreachable after SIGKILL"
    );
}

/// Makes a veth pair `name`/`{name}p` in the lab's node namespace, `name` closed to the node's
/// stack as a pod's port is: what a CNI plugin's ADD leaves for the agent (the pod end stays in
/// the node namespace here: the agent only serves the host end). The lab's namespace, deleted
/// by `lab down`, takes it with it.
fn node_veth(lab: &LabGuard, name: &str) -> String {
    let ns = lab.node_netns();
    let peer = format!("{name}p");
    ok(&[
        "ip", "-n", &ns, "link", "add", name, "type", "veth", "peer", "name", &peer,
    ]);
    xylem_lab::netns::node_port_up(Some(&ns), name).unwrap();
    ok(&["ip", "-n", &ns, "link", "set", &peer, "up"]);
    mac_in(&ns, &peer)
}

/// An endpoint request for `ifname` at `ip`, with the CNI fields when `container_id` is given.
fn cni_request(ifname: &str, ip: &str, mac: &str, container_id: Option<&str>) -> EndpointRequest {
    EndpointRequest {
        ifname: ifname.into(),
        ip: ip.into(),
        mac: mac.into(),
        labels: BTreeMap::from([("app".to_string(), ifname.to_string())]),
        container_id: container_id.map(String::from),
        netns: container_id.map(|_| "/var/run/netns/cni-test".to_string()),
        cni_ifname: container_id.map(|_| "eth0".to_string()),
    }
}

/// An endpoint added with CNI fields keeps them (API, `endpoint list -o json`, the state
/// store); bad ones are refused naming the field. When its interface is deleted while the agent
/// is stopped (its container went), the agent starts all the same, without it, and says so in
/// its log; an endpoint added without a container id whose interface is gone still stops the
/// start, naming it.
#[test]
fn a_cni_endpoint_whose_interface_went_while_the_agent_was_down_is_dropped_at_start() {
    require_root!();
    let lab = LabGuard::up(&[]);
    let sock = lab.socket();
    let c = Client::new(&sock).with_timeout(Duration::from_secs(30));
    let cni_mac = node_veth(&lab, "xyc0");
    let plain_mac = node_veth(&lab, "xyc1");
    let id = "3f2a9bc0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8";

    // Refused, naming the field, nothing changed.
    let before = endpoints(&c);
    let bad = [
        (json!({"container_id": "-x"}), "container_id"),
        (json!({"container_id": "c1", "netns": "cni-1"}), "netns"),
        (
            json!({"container_id": "c1", "cni_ifname": "eth/0"}),
            "cni_ifname",
        ),
        (json!({"netns": "/var/run/netns/x"}), "netns"),
        (json!({"cni_ifname": "eth0"}), "cni_ifname"),
    ];
    for (extra, field) in bad {
        let mut body = json!({"ifname": "xyc0", "ip": "10.200.0.20", "mac": cni_mac});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (code, text) = api_status(
            &sock,
            "PUT",
            "/v1/endpoints/default/cni-a",
            body.to_string().as_bytes(),
        );
        assert_eq!(code, 422, "{body}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["field"], field, "{body}: {text}");
    }
    assert_eq!(endpoints(&c), before, "refused requests changed nothing");

    let ep = c
        .put_endpoint(
            "default",
            "cni-a",
            &cni_request("xyc0", "10.200.0.20", &cni_mac, Some(id)),
        )
        .unwrap();
    assert_eq!(ep.container_id.as_deref(), Some(id));
    assert_eq!(ep.netns.as_deref(), Some("/var/run/netns/cni-test"));
    assert_eq!(ep.cni_ifname.as_deref(), Some("eth0"));
    c.put_endpoint(
        "default",
        "plain",
        &cni_request("xyc1", "10.200.0.21", &plain_mac, None),
    )
    .unwrap();
    let listed: Vec<Value> =
        serde_json::from_str(&lab.xylem(&["endpoint", "list", "-o", "json"])).unwrap();
    let find = |name: &str| {
        listed
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {listed:?}"))
            .clone()
    };
    let a = find("cni-a");
    assert_eq!(a["container_id"], id);
    assert_eq!(a["netns"], "/var/run/netns/cni-test");
    assert_eq!(a["cni_ifname"], "eth0");
    for name in ["plain", "pod-a"] {
        let e = find(name);
        for field in ["container_id", "netns", "cni_ifname"] {
            assert!(e[field].is_null(), "{name}.{field}: {e}");
        }
    }
    let table = lab.xylem(&["endpoint", "list"]);
    assert!(
        table.contains("CONTAINER") && table.contains(&id[..12]),
        "{table}"
    );

    // A restart with both interfaces there keeps both, CNI fields and all.
    lab.kill_agent(libc::SIGTERM);
    lab.start_agent(&[]).unwrap();
    let c = Client::new(&sock).with_timeout(Duration::from_secs(30));
    assert_eq!(
        c.endpoint("default", "cni-a")
            .unwrap()
            .container_id
            .as_deref(),
        Some(id)
    );

    // The container goes while the agent is down.
    let ns = lab.node_netns();
    lab.kill_agent(libc::SIGTERM);
    ok(&["ip", "-n", &ns, "link", "del", "xyc0"]);
    lab.start_agent(&[])
        .expect("a CNI endpoint whose interface is gone does not stop the start");
    let c = Client::new(&sock).with_timeout(Duration::from_secs(30));
    assert!(c.status().unwrap().health.ok);
    assert!(matches!(
        c.endpoint("default", "cni-a"),
        Err(xylem_api::Error::Api { status: 404, .. })
    ));
    let eps = endpoints(&c);
    assert!(
        eps.contains_key("default/plain") && eps.contains_key("default/pod-a"),
        "{eps:?}"
    );
    let st = lab.status();
    let log = std::fs::read_to_string(st["nodes"][0]["agent_log"].as_str().unwrap()).unwrap();
    let warned = log
        .lines()
        .find(|l| l.contains("stored endpoint dropped"))
        .unwrap_or_else(|| panic!("no warning in the agent log:\n{log}"));
    assert!(
        warned.contains("WARN")
            && warned.contains("default/cni-a")
            && warned.contains("xyc0")
            && warned.contains(id),
        "{warned}"
    );
    let cfg = st["nodes"][0]["agent_config"].as_str().unwrap();
    let stored = std::path::Path::new(cfg)
        .parent()
        .unwrap()
        .join("state/endpoints.json");
    let stored = std::fs::read_to_string(&stored).unwrap();
    assert!(
        !stored.contains("cni-a") && stored.contains("default/plain"),
        "{stored}"
    );

    // Without a container id, a missing interface still stops the start, naming the endpoint.
    lab.kill_agent(libc::SIGTERM);
    ok(&["ip", "-n", &ns, "link", "del", "xyc1"]);
    let e = lab
        .start_agent(&[])
        .expect_err("an endpoint without a container id whose interface is gone stops the start");
    assert!(
        e.contains("default/plain") && e.contains("xyc1") && e.contains("--start-empty"),
        "{e}"
    );
}

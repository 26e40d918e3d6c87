//! End-to-end tests of the FQDN cache's control side through `xylem fqdn cache` and a real
//! agent: an empty cache lists as `[]`, a bad pattern is refused by name, a cache seeded in the
//! state directory (as a stopped agent leaves it) is restored at start (expired addresses and
//! unknown endpoints left out), listed, cleaned by pattern, and the clean survives a restart.
//! What the dataplane learns from real DNS answers is the dataplane's tests'.
//!
//! The agent attaches XDP programs, so this needs root (a lab); without it it prints why and
//! skips.

use serde_json::{Value, json};

#[macro_use]
mod common;
use common::*;

fn list(g: &LabGuard) -> Value {
    serde_json::from_str(&g.xylem(&["fqdn", "cache", "list", "-o", "json"])).unwrap()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The agent's state directory.
fn state_dir(g: &LabGuard) -> std::path::PathBuf {
    let cfg = g.status()["nodes"][0]["agent_config"]
        .as_str()
        .unwrap()
        .to_string();
    std::path::Path::new(&cfg).parent().unwrap().join("state")
}

/// `(endpoint, name, [(ip, in_use)])`: one entry of a listing.
type Entry = (String, String, Vec<(String, bool)>);

/// The entries of a listing.
fn shape(l: &Value) -> Vec<Entry> {
    l.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let ips = e["ips"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    let at = i["expires_at"].as_str().unwrap();
                    assert!(at.ends_with('Z') && at.contains('T'), "RFC 3339: {at}");
                    (
                        i["ip"].as_str().unwrap().to_string(),
                        i["in_use"].as_bool().unwrap(),
                    )
                })
                .collect();
            (
                e["endpoint"].as_str().unwrap().to_string(),
                e["name"].as_str().unwrap().to_string(),
                ips,
            )
        })
        .collect()
}

#[test]
fn the_fqdn_cache_is_restored_listed_and_cleaned_by_pattern() {
    require_root!();
    let g = LabGuard::up(&[]);
    assert_eq!(list(&g), json!([]));
    let o = sh(&[
        xylem(),
        "--lab",
        &g.name,
        "fqdn",
        "cache",
        "clean",
        "--matchpattern",
        "a b.com",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a bad pattern was accepted");
    assert!(
        err.contains("matchpattern") && err.contains("\"a b.com\""),
        "{err}"
    );
    let out = g.xylem(&["fqdn", "cache", "clean"]);
    assert!(out.contains("removed 0 names (0 addresses)"), "{out}");

    // Seeded as a stopped agent leaves it: one address expired, one endpoint unknown.
    let dir = state_dir(&g);
    g.kill_agent(libc::SIGTERM);
    let (later, past) = (unix_now() + 3600, unix_now() - 10);
    let seed = json!({
        "default/pod-a": [
            {"name": "a.domain.com.", "ips": [
                {"ip": "192.0.2.11", "expires_at": past},
                {"ip": "192.0.2.10", "expires_at": later}
            ]},
            {"name": "Other.ORG", "ips": [{"ip": "198.51.100.7", "expires_at": later}]}
        ],
        "default/no-such-pod": [
            {"name": "a.domain.com.", "ips": [{"ip": "192.0.2.10", "expires_at": later}]}
        ]
    });
    std::fs::write(dir.join("fqdn-cache.json"), seed.to_string()).unwrap();
    g.start_agent(&[]).unwrap();
    let pod_a = |name: &str, ip: &str| {
        (
            "default/pod-a".to_string(),
            name.to_string(),
            vec![(ip.to_string(), false)],
        )
    };
    assert_eq!(
        shape(&list(&g)),
        [
            pod_a("a.domain.com.", "192.0.2.10"),
            pod_a("other.org.", "198.51.100.7")
        ]
    );
    let table = g.xylem(&["fqdn", "cache", "list"]);
    assert!(
        table.starts_with("ENDPOINT") && table.contains("IN-USE") && table.contains("198.51.100.7"),
        "{table}"
    );
    assert_eq!(g.agent()["dns"]["cache_names"], 2);
    let stored = std::fs::read_to_string(dir.join("fqdn-cache.json")).unwrap();
    assert!(!stored.contains("no-such-pod"), "{stored}");

    let out = g.xylem(&["fqdn", "cache", "clean", "--matchpattern", "*.domain.com"]);
    assert!(out.contains("removed 1 name (1 address)"), "{out}");
    let left = [pod_a("other.org.", "198.51.100.7")];
    assert_eq!(shape(&list(&g)), left);

    // The clean is durable, and a clean stop writes the cache back.
    g.kill_agent(libc::SIGTERM);
    g.start_agent(&[]).unwrap();
    assert_eq!(shape(&list(&g)), left);
    let metrics = g.xylem(&["metrics"]);
    assert!(
        metrics.lines().any(|l| l == "xylem_fqdn_cache_names 1"),
        "{metrics}"
    );
}

/// The issue's kind of policy for the lab: pod-a may ask pod-b (its DNS server) for
/// `*.domain.com` and reach what the answers give on port 80.
const POLICY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: dns-a
spec:
  endpointSelector:
    matchLabels:
      app: pod-a
  egress:
  - toEndpoints:
    - matchLabels:
        app: pod-b
    toPorts:
    - ports:
      - port: '53'
        protocol: UDP
      rules:
        dns:
        - matchPattern: "*.domain.com"
  - toFQDNs:
    - matchPattern: "*.domain.com"
    toPorts:
    - ports:
      - port: '80'
        protocol: TCP
"#;

/// Whether dnsmasq and dig are there; if not, `test` is skipped with the reason printed.
fn have_dns_tools(test: &str) -> bool {
    let missing: Vec<&str> = ["dnsmasq", "dig"]
        .into_iter()
        .filter(|t| {
            !sh(&["sh", "-c", &format!("command -v {t}")])
                .status
                .success()
        })
        .collect();
    if !missing.is_empty() {
        xylem_testkit::skip(test, &format!("needs {} in PATH", missing.join(" and ")));
    }
    missing.is_empty()
}

/// dnsmasq answering in a pod's namespace, stopped when dropped.
struct Dnsmasq(std::process::Child);

impl Dnsmasq {
    /// Answers for `a.domain.com` and `other.org` with TTL `ttl`.
    fn start(netns: &str, ip: std::net::Ipv4Addr, ttl: u32) -> Dnsmasq {
        let child = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                netns,
                "dnsmasq",
                "--no-daemon",
                "--no-resolv",
            ])
            .args(["--no-hosts", "--bind-interfaces", "--pid-file="])
            .arg(format!("--local-ttl={ttl}"))
            .arg(format!("--listen-address={ip}"))
            .args([
                "--address=/a.domain.com/192.0.2.10",
                "--address=/other.org/192.0.2.30",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dnsmasq starts");
        std::thread::sleep(std::time::Duration::from_millis(500));
        Dnsmasq(child)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `dig` from `netns` to `server` for `name`: the answer's status line and addresses.
fn dig(netns: &str, server: std::net::Ipv4Addr, name: &str) -> String {
    ok(&[
        "ip",
        "netns",
        "exec",
        netns,
        "dig",
        "+time=2",
        "+tries=1",
        &format!("@{server}"),
        name,
    ])
}

/// The monitor's DNS events for `query`.
fn dns_events<'a>(events: &'a [Value], query: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["type"] == "dns" && e["dns"]["query"] == query)
        .collect()
}

#[test]
fn dns_answers_fill_the_cache_and_the_monitor_and_the_reject_code_is_configurable() {
    require_root!();
    if !have_dns_tools("dns_answers_fill_the_cache") {
        return;
    }
    let g = LabGuard::up(&[]);
    let policy = format!("/tmp/xylem-fqdn-{}.yaml", std::process::id());
    std::fs::write(&policy, POLICY).unwrap();
    g.xylem(&["policy", "import", &policy]);
    let (ns_a, _) = g.pod("pod-a");
    let (ns_b, dns_ip) = g.pod("pod-b");
    let _server = Dnsmasq::start(&ns_b, dns_ip, 30);

    let mon = Monitor::start(&["--lab", &g.name, "monitor", "--type", "dns", "-o", "json"]);
    let allowed = dig(&ns_a, dns_ip, "a.domain.com");
    assert!(
        allowed.contains("status: NOERROR") && allowed.contains("192.0.2.10"),
        "{allowed}"
    );
    let refused = dig(&ns_a, dns_ip, "other.org");
    assert!(refused.contains("status: REFUSED"), "{refused}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (_, out, err) = mon.stop(libc::SIGINT);
    let events: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let a = dns_events(&events, "a.domain.com.");
    let query = a.iter().find(|e| e["dns"]["response"] == false);
    let answer = a.iter().find(|e| e["dns"]["response"] == true);
    let (Some(query), Some(answer)) = (query, answer) else {
        panic!("no query and answer for a.domain.com. in:\n{out}\n{err}");
    };
    assert_eq!(query["verdict"], "FORWARDED", "{query}");
    assert_eq!(query["source"]["endpoint"], "default/pod-a", "{query}");
    assert_eq!(query["dns"]["qtype"], "A", "{query}");
    assert_eq!(query["dns"]["rule"]["policy"], "default/dns-a", "{query}");
    assert_eq!(answer["dns"]["rcode"], "NOERROR", "{answer}");
    assert_eq!(
        answer["dns"]["answers"],
        json!([{"ip": "192.0.2.10", "ttl": 30}]),
        "{answer}"
    );
    let other = dns_events(&events, "other.org.");
    assert!(
        other.iter().any(|e| e["verdict"] == "REFUSED"
            && e["dns"]["rcode"] == "REFUSED"
            && e["dns"]["rule"].is_null()
            && e["drop_reason"].is_null()),
        "{out}"
    );

    let cached = |g: &LabGuard| -> Vec<String> {
        shape(&list(g))
            .into_iter()
            .map(|(ep, name, ips)| format!("{ep} {name} {}", ips[0].0))
            .collect()
    };
    assert_eq!(cached(&g), ["default/pod-a a.domain.com. 192.0.2.10"]);
    let metrics = g.xylem(&["metrics"]);
    for line in [
        r#"xylem_dns_queries_total{verdict="forwarded"} 1"#,
        r#"xylem_dns_queries_total{verdict="refused"} 1"#,
        "xylem_dns_answers_total 1",
        "xylem_fqdn_cache_names 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "no {line}:\n{metrics}");
    }

    // Restarted with Cilium's flag: the cache is back, and a denied query gets NXDOMAIN.
    g.kill_agent(libc::SIGTERM);
    g.start_agent(&["--tofqdns-dns-reject-response-code", "nameError"])
        .unwrap();
    assert_eq!(cached(&g), ["default/pod-a a.domain.com. 192.0.2.10"]);
    let refused = dig(&ns_a, dns_ip, "other.org");
    assert!(refused.contains("status: NXDOMAIN"), "{refused}");
    let _ = std::fs::remove_file(&policy);
}

/// pod-a asking only for names, without `toFQDNs`: its egress is default-deny but for DNS.
/// [`POLICY`] up to its `toFQDNs` rule.
fn dns_only() -> &'static str {
    let (head, _) = POLICY
        .split_once("  - toFQDNs:")
        .expect("POLICY has a toFQDNs rule");
    head
}

/// What the dataplane does with a TCP SYN from pod-a (in `ns_a`) to 192.0.2.10:80, as its
/// monitor says: `policy-denied` while no `toFQDNs` fact allows the address, `no-route` once
/// one does (nothing in the lab routes there).
fn syn_verdict(g: &LabGuard, ns_a: &str) -> String {
    let mon = Monitor::start(&["--lab", &g.name, "monitor", "--type", "drop", "-o", "json"]);
    let connect = "echo > /dev/tcp/192.0.2.10/80";
    let _ = sh(&[
        "ip", "netns", "exec", ns_a, "timeout", "1", "bash", "-c", connect,
    ]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (_, out, _) = mon.stop(libc::SIGINT);
    out.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["destination"]["ip"] == "192.0.2.10")
        .map(|e| e["drop_reason"].as_str().unwrap_or("none").to_string())
        .unwrap_or_else(|| format!("no drop event to 192.0.2.10 in:\n{out}"))
}

#[test]
fn a_to_fqdns_policy_imported_later_and_a_restart_find_the_names_already_resolved() {
    require_root!();
    if !have_dns_tools("a_to_fqdns_policy_imported_later") {
        return;
    }
    let g = LabGuard::up(&[]);
    let file = |name: &str, text: &str| {
        let path = format!("/tmp/xylem-fqdn-{}-{name}.yaml", std::process::id());
        std::fs::write(&path, text).unwrap();
        path
    };
    let (dns_only, with_fqdns) = (file("dns-only", dns_only()), file("fqdns", POLICY));
    g.xylem(&["policy", "import", &dns_only]);
    let (ns_a, _) = g.pod("pod-a");
    let (ns_b, dns_ip) = g.pod("pod-b");
    let _server = Dnsmasq::start(&ns_b, dns_ip, 300);
    let answer = dig(&ns_a, dns_ip, "a.domain.com");
    assert!(answer.contains("192.0.2.10"), "{answer}");
    // Resolved, but no selector asked for it yet: cached, not allowed.
    assert_eq!(shape(&list(&g)).len(), 1);
    assert_eq!(syn_verdict(&g, &ns_a), "policy-denied");
    // The toFQDNs policy comes later: the cached answer is learned under its selector.
    g.xylem(&["policy", "import", &with_fqdns]);
    assert_eq!(syn_verdict(&g, &ns_a), "no-route");
    // A restarted agent learns it again from its store, without a new query.
    g.kill_agent(libc::SIGTERM);
    g.start_agent(&[]).unwrap();
    assert_eq!(syn_verdict(&g, &ns_a), "no-route");
    // Cleaned: forgotten in the dataplane too.
    let out = g.xylem(&["fqdn", "cache", "clean", "--matchpattern", "a.domain.com"]);
    assert!(out.contains("removed 1 name (1 address)"), "{out}");
    assert_eq!(syn_verdict(&g, &ns_a), "policy-denied");
    let _ = std::fs::remove_file(&dns_only);
    let _ = std::fs::remove_file(&with_fqdns);
}

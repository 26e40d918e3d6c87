//! Privileged end-to-end tests of DNS-aware policy (`rules.dns`, `toFQDNs`): a real dnsmasq in
//! a `kube-system/kube-dns` pod serving a local zone, real servers (`socat`) in two web pods, a
//! client pod selected by the issue's CiliumNetworkPolicy, and a real agent with two workers.
//!
//! The zone (dnsmasq's `--host-record` and `--cname`): `a.domain.com` → web (TTL 5 s),
//! `b.domain.com` CNAME `c.cdn.net` → web, `long.domain.com` → web (TTL 300 s), `example.org`
//! → web2. dnsmasq itself answers all of them, so a REFUSED the client gets comes from the
//! dataplane.
//!
//! Each test brings up its own lab behind a guard that brings it down again even if the test
//! panics. They need root; without it, they print why and skip.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use serde_json::Value;

#[macro_use]
mod common;
use common::*;

/// The pods' addresses: the lab hands them out in the lab file's order from 10.200.0.10.
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 10);
const DNS: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 11);
const WEB: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 12);
const WEB2: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 13);

/// `a.domain.com`'s TTL, seconds.
const SHORT_TTL: u64 = 5;

/// A web server: answers each connection with its pod's name, then echoes what it is sent (so
/// a connection can stay open across an agent restart).
const SERVE: &str = "socat TCP-LISTEN:80,fork,reuseaddr SYSTEM:'echo $POD_NAME; cat'";

/// The issue's policy, as the issue writes it (the policy fuzz target's seed).
const ISSUE_POLICY: &str = include_str!("../../fuzz/seeds/policy/fqdn-example.yaml");

/// The issue's policy; `tcp` adds TCP port 53 to the DNS rule's ports, as the issue's TCP
/// tests do.
fn policy(tcp: bool) -> String {
    let udp = "        protocol: UDP\n";
    assert!(ISSUE_POLICY.contains(udp), "the seed changed shape");
    if tcp {
        ISSUE_POLICY.replacen(
            udp,
            &format!("{udp}      - port: '53'\n        protocol: TCP\n"),
            1,
        )
    } else {
        ISSUE_POLICY.to_string()
    }
}

/// dnsmasq serving the zone from the pod's address only, over UDP and TCP, in the foreground,
/// logging each query to the pod's run log; pinned to CPU 0 so its answers take the DNS pod's
/// first queue once XPS ties queues to CPUs.
fn dnsmasq() -> String {
    [
        "taskset -c 0 dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts",
        "--no-poll --bind-interfaces --listen-address=$POD_IP --port=53 --user=root --pid-file=",
        "--log-queries --log-facility=-",
        &format!("--host-record=a.domain.com,{WEB},{SHORT_TTL}"),
        &format!("--host-record=c.cdn.net,{WEB},{SHORT_TTL}"),
        &format!("--cname=b.domain.com,c.cdn.net,{SHORT_TTL}"),
        &format!("--host-record=long.domain.com,{WEB},300"),
        &format!("--host-record=example.org,{WEB2},60"),
    ]
    .join(" ")
}

/// A lab with the client, the DNS pod and the two web pods on two workers (`shared`), the
/// servers listening and the policy (`tcp`: with TCP DNS) imported.
fn dns_lab(tcp: bool) -> LabGuard {
    let path = std::env::temp_dir().join(format!(
        "xylem-dns-{}-{}.yaml",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let text = format!(
        "pods:\n  - {{name: client, labels: {{app: myService}}}}\n  \
         - {{name: dns, namespace: kube-system, labels: {{k8s-app: kube-dns}}, run: \"{}\"}}\n  \
         - {{name: web, labels: {{app: web}}, run: \"{SERVE}\"}}\n  \
         - {{name: web2, labels: {{app: web2}}, run: \"{SERVE}\"}}\n",
        dnsmasq()
    );
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
    for (name, ip) in [
        ("client", CLIENT),
        ("dns", DNS),
        ("web", WEB),
        ("web2", WEB2),
    ] {
        assert_eq!(lab.pod(name).1, ip, "pod {name}'s address");
    }
    wait_for_servers(&lab);
    let policy_path = std::env::temp_dir().join(format!("{}-dns-policy.yaml", lab.name));
    std::fs::write(&policy_path, policy(tcp)).unwrap();
    lab.xylem(&["policy", "import", policy_path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&policy_path);
    lab
}

/// Waits until dnsmasq answers (asked from inside its own pod: no dataplane, no learning) and
/// both web servers listen (asked from the node, before any policy).
fn wait_for_servers(lab: &LabGuard) {
    let (dns_ns, _) = lab.pod("dns");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dig_in(&dns_ns, &["a.domain.com"]).contains("status: NOERROR") {
        assert!(
            Instant::now() < deadline,
            "dnsmasq never answered:\n{}",
            run_log(lab, "dns")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    in_netns(&lab.node_netns(), || {
        for ip in [WEB, WEB2] {
            let deadline = Instant::now() + Duration::from_secs(10);
            while connect_name(ip).is_err() {
                assert!(Instant::now() < deadline, "{ip}:80 never listened");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    })
    .join()
    .unwrap();
}

/// `dig @DNS ARGS` in namespace `ns` (one try, 2 s): its whole output, also when it fails.
fn dig_in(ns: &str, args: &[&str]) -> String {
    let server = format!("@{DNS}");
    let mut a = vec![
        "ip", "netns", "exec", ns, "dig", &server, "+time=2", "+tries=1",
    ];
    a.extend_from_slice(args);
    let o = sh(&a);
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// `dig` from the client pod.
fn dig(lab: &LabGuard, args: &[&str]) -> String {
    dig_in(&lab.pod("client").0, args)
}

/// The addresses of the A records in `dig`'s answer section.
fn a_records(out: &str) -> Vec<Ipv4Addr> {
    out.lines()
        .filter(|l| !l.starts_with(';'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 5 && f[3] == "A").then(|| f[4].parse().ok())?
        })
        .collect()
}

/// A connection from the current namespace to `ip`:80 (2 s to connect and to read): the name
/// the server answers with.
fn connect_name(ip: Ipv4Addr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::from((ip, 80)), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(&mut s).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(line.trim().to_string())
}

/// [`connect_name`] from the client pod.
fn client_connect(lab: &LabGuard, ip: Ipv4Addr) -> std::io::Result<String> {
    in_netns(&lab.pod("client").0, move || connect_name(ip))
        .join()
        .unwrap()
}

/// The agent's drop counter `reason`, summed over its workers.
fn drops(lab: &LabGuard, reason: &str) -> u64 {
    lab.agent()["totals"]["drops"][reason].as_u64().unwrap_or(0)
}

/// Waits up to 3 s for drop counter `reason` to pass `before`; returns its value.
fn drops_after(lab: &LabGuard, reason: &str, before: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let now = drops(lab, reason);
        if now > before || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A pod's `run:` log (dnsmasq logs every query it sees there).
fn run_log(lab: &LabGuard, pod: &str) -> String {
    let st = lab.status();
    let path = st["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pod)
        .and_then(|p| p["run_log"].as_str())
        .unwrap_or_default()
        .to_string();
    std::fs::read_to_string(path).unwrap_or_default()
}

/// `xylem fqdn cache list -o json`.
fn fqdn_cache(lab: &LabGuard) -> Value {
    serde_json::from_str(&lab.xylem(&["fqdn", "cache", "list", "-o", "json"])).unwrap()
}

/// The cache entry for `name` (written with or without the final dot).
fn cache_entry(cache: &Value, name: &str) -> Option<Value> {
    cache
        .as_array()?
        .iter()
        .find(|e| e["name"].as_str().map(|n| n.trim_end_matches('.')) == Some(name))
        .cloned()
}

/// The policy allows `a.domain.com`: dig gets web's address, and the DNS monitor shows the
/// answer FORWARDED with it. It does not allow `example.org`: dig gets REFUSED from the
/// dataplane (dnsmasq, which would answer it, never sees the query), on the monitor as REFUSED.
/// `b.domain.com` answers through its CNAME.
#[test]
fn an_allowed_name_resolves_and_the_dataplane_refuses_the_others() {
    require_root!();
    let lab = dns_lab(false);
    let mon = Monitor::start(&["--lab", &lab.name, "monitor", "--type", "dns", "-o", "json"]);
    let allowed = dig(&lab, &["a.domain.com"]);
    assert!(allowed.contains("status: NOERROR"), "{allowed}");
    assert_eq!(a_records(&allowed), vec![WEB], "{allowed}");
    let refused = dig(&lab, &["example.org"]);
    assert!(refused.contains("status: REFUSED"), "{refused}");
    assert!(a_records(&refused).is_empty(), "{refused}");
    let cname = dig(&lab, &["b.domain.com"]);
    assert!(cname.contains("status: NOERROR"), "{cname}");
    assert_eq!(a_records(&cname), vec![WEB], "{cname}");
    // The dispatcher moves events every 5 ms; give them time to reach the client.
    std::thread::sleep(Duration::from_millis(500));
    let (status, out, stderr) = mon.stop(libc::SIGINT);
    assert!(status.success(), "{stderr}");
    let events: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        events.iter().any(|e| e["type"] == "dns"
            && e["verdict"] == "REFUSED"
            && e["dns"]["query"] == "example.org."
            && e["dns"]["rcode"] == "REFUSED"),
        "no REFUSED example.org. in `xylem monitor --type dns`:\n{out}"
    );
    assert!(
        events.iter().any(|e| e["type"] == "dns"
            && e["verdict"] == "FORWARDED"
            && e["dns"]["query"] == "a.domain.com."
            && e["dns"]["answers"][0]["ip"] == WEB.to_string()),
        "no FORWARDED answer for a.domain.com. with {WEB} in `xylem monitor --type dns`:\n{out}"
    );
    let log = run_log(&lab, "dns");
    assert!(log.contains("query[A] a.domain.com"), "{log}");
    assert!(
        !log.contains("example.org"),
        "dnsmasq saw the refused query:\n{log}"
    );
}

/// Before any answer the client cannot reach web; once `a.domain.com` answered web's address
/// it connects (and reads web's name), but not to web2, which no answer gave (counted
/// `policy-denied`); once the TTL passed with no connection open, a new connection fails.
#[test]
fn a_learned_address_is_reachable_until_its_ttl_expires() {
    require_root!();
    let lab = dns_lab(false);
    assert!(
        client_connect(&lab, WEB).is_err(),
        "the client reached web before any DNS answer"
    );
    let out = dig(&lab, &["a.domain.com"]);
    let answered = Instant::now();
    assert_eq!(a_records(&out), vec![WEB], "{out}");
    assert_eq!(client_connect(&lab, WEB).expect("connect to web"), "web");
    let before = drops(&lab, "policy-denied");
    assert!(
        client_connect(&lab, WEB2).is_err(),
        "the client reached web2, which no answer gave"
    );
    let after = drops_after(&lab, "policy-denied", before);
    assert!(
        after > before,
        "policy-denied not counted: {before} → {after}"
    );

    let expired = answered + Duration::from_secs(SHORT_TTL + 2);
    std::thread::sleep(expired.saturating_duration_since(Instant::now()));
    let late = client_connect(&lab, WEB);
    assert!(
        late.is_err(),
        "a new connection {}s after the answer (TTL {SHORT_TTL}s) reached {late:?}",
        answered.elapsed().as_secs()
    );
}

/// The libc resolver in the client (pointed at the lab's DNS pod by the lab's resolv.conf)
/// resolves through the DNS policy: `b.domain.com` through its CNAME, which teaches web's
/// address (the client then connects), and `a.domain.com`; `example.org` does not resolve.
#[test]
fn getent_in_the_client_resolves_through_the_labs_dns_pod() {
    require_root!();
    let lab = dns_lab(false);
    let (client_ns, _) = lab.pod("client");
    let conf = lab.status()["pods"][0]["resolv_conf"]
        .as_str()
        .expect("the client has a resolv.conf")
        .to_string();
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(
        text.contains(&format!("nameserver {DNS}")),
        "{conf}: {text}"
    );
    assert!(client_connect(&lab, WEB).is_err(), "reached web before DNS");
    let getent = |name: &str| sh(&["ip", "netns", "exec", &client_ns, "getent", "hosts", name]);
    let b = getent("b.domain.com");
    let out = String::from_utf8_lossy(&b.stdout);
    assert!(b.status.success(), "getent hosts b.domain.com: {b:?}");
    assert!(out.starts_with(&format!("{WEB} ")), "{out}");
    assert_eq!(client_connect(&lab, WEB).expect("connect to web"), "web");
    let a = getent("a.domain.com");
    assert!(
        String::from_utf8_lossy(&a.stdout).starts_with(&format!("{WEB} ")),
        "getent hosts a.domain.com: {a:?}"
    );
    let refused = getent("example.org");
    assert!(
        !refused.status.success(),
        "example.org resolved: {refused:?}"
    );
    // The lab removes its resolv.conf files with the lab.
    drop(lab);
    assert!(!std::path::Path::new(&conf).exists(), "{conf} left behind");
}

/// With a 300 s name learned and a connection open (the FQDN cache lists the address in use),
/// the agent restarts: the cache lists the name with web's address afterwards, the open
/// connection still carries data, a new one connects, and web2 stays out of reach.
#[test]
fn the_fqdn_cache_and_an_allowed_connection_survive_an_agent_restart() {
    require_root!();
    let lab = dns_lab(false);
    let out = dig(&lab, &["long.domain.com"]);
    assert_eq!(a_records(&out), vec![WEB], "{out}");
    let check_cache = |when: &str| {
        let cache = fqdn_cache(&lab);
        let e = cache_entry(&cache, "long.domain.com")
            .unwrap_or_else(|| panic!("{when}: no long.domain.com in the FQDN cache: {cache}"));
        assert_eq!(e["endpoint"], "default/client", "{when}: {e}");
        e["ips"]
            .as_array()
            .and_then(|ips| ips.iter().find(|i| i["ip"] == WEB.to_string()))
            .filter(|i| i["expires_at"].as_str().is_some_and(|t| !t.is_empty()))
            .unwrap_or_else(|| panic!("{when}: no {WEB} with an expiry: {e}"))
            .clone()
    };
    check_cache("before the restart");

    let (to_check, check) = std::sync::mpsc::channel::<()>();
    let (give, got) = std::sync::mpsc::channel();
    let conn = in_netns(&lab.pod("client").0, move || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((WEB, 80)), Duration::from_secs(2))
                .expect("connect to web");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        give.send(line.trim().to_string()).unwrap();
        check.recv().unwrap();
        let mut buf = [0u8; 11];
        s.write_all(b"still-here\n").is_ok()
            && r.read_exact(&mut buf).is_ok()
            && &buf == b"still-here\n"
    });
    assert_eq!(got.recv().unwrap(), "web");
    let ip = check_cache("with a connection open");
    assert_eq!(ip["in_use"], true, "with a connection open: {ip}");

    lab.kill_agent(libc::SIGTERM);
    lab.start_agent(&[]).expect("the agent restarts");
    check_cache("after the restart");
    to_check.send(()).unwrap();
    assert!(
        conn.join().unwrap(),
        "the open connection broke across the restart"
    );
    assert_eq!(
        client_connect(&lab, WEB).expect("a new connection after the restart"),
        "web"
    );
    assert!(
        client_connect(&lab, WEB2).is_err(),
        "after the restart the client reached web2, which no answer gave"
    );
}

/// With TCP port 53 in the DNS rule, `dig +tcp` gets its allowed answer (and the client then
/// connects to web) and a REFUSED from the dataplane for the other name.
#[test]
fn dns_over_tcp_is_inspected_too() {
    require_root!();
    let lab = dns_lab(true);
    let out = dig(&lab, &["+tcp", "a.domain.com"]);
    assert!(out.contains("status: NOERROR"), "{out}");
    assert_eq!(a_records(&out), vec![WEB], "{out}");
    assert_eq!(client_connect(&lab, WEB).expect("connect to web"), "web");
    let refused = dig(&lab, &["+tcp", "example.org"]);
    assert!(refused.contains("status: REFUSED"), "{refused}");
    let log = run_log(&lab, "dns");
    assert!(!log.contains("example.org"), "dnsmasq saw it:\n{log}");
}

/// A DNS header: ID, flags (RD), and the four counts.
fn header(qd: u16) -> Vec<u8> {
    let mut h = vec![0x4d, 0x51, 0x01, 0x00];
    for c in [qd, 0, 0, 0] {
        h.extend_from_slice(&c.to_be_bytes());
    }
    h
}

/// A query for `a.domain.com` A IN.
fn query() -> Vec<u8> {
    let mut q = header(1);
    q.extend_from_slice(b"\x01a\x06domain\x03com\x00\x00\x01\x00\x01");
    q
}

/// Malformed queries to the DNS pod are dropped and counted `dns-malformed`, each of them:
/// over UDP one cut inside its name, one whose name points at itself, one announcing more
/// questions than it holds; over TCP one whose length prefix announces more than the segment
/// holds. Afterwards a well-formed query still resolves.
#[test]
fn malformed_queries_are_dropped_as_dns_malformed() {
    require_root!();
    let lab = dns_lab(true);
    let (client_ns, _) = lab.pod("client");
    let seen = |lab: &LabGuard| run_log(lab, "dns").matches("query[A] a.domain.com").count();
    let seen_before = seen(&lab);
    let full = query();
    let mut looped = header(1);
    looped.extend_from_slice(&[0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01]);
    let mut counted = header(3);
    counted.extend_from_slice(&full[12..]);
    let udp: [(&str, Vec<u8>); 3] = [
        ("truncated", full[..18].to_vec()),
        ("compression loop", looped),
        ("count beyond the message", counted),
    ];
    for (what, msg) in udp {
        let before = drops(&lab, "dns-malformed");
        in_netns(&client_ns, move || {
            let s = UdpSocket::bind((CLIENT, 0)).unwrap();
            s.send_to(&msg, (DNS, 53)).unwrap();
        })
        .join()
        .unwrap();
        let after = drops_after(&lab, "dns-malformed", before);
        assert!(after > before, "{what}: dns-malformed {before} → {after}");
    }
    let before = drops(&lab, "dns-malformed");
    in_netns(&client_ns, move || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((DNS, 53)), Duration::from_secs(2))
                .expect("TCP to the DNS pod");
        s.set_nodelay(true).unwrap();
        let mut m = 0xffffu16.to_be_bytes().to_vec();
        m.extend_from_slice(&query());
        s.write_all(&m).unwrap();
        // The dataplane drops it; the kernel retransmits it meanwhile.
        std::thread::sleep(Duration::from_millis(500));
    })
    .join()
    .unwrap();
    let after = drops_after(&lab, "dns-malformed", before);
    assert!(
        after > before,
        "oversized TCP length: dns-malformed {before} → {after}"
    );
    let out = dig(&lab, &["a.domain.com"]);
    assert_eq!(a_records(&out), vec![WEB], "{out}");
    assert_eq!(
        seen(&lab),
        seen_before + 1,
        "dnsmasq saw one of the malformed queries (or missed the last one):\n{}",
        run_log(&lab, "dns")
    );
}

/// Ties `eth0`'s transmit queue i of pod namespace `ns` to CPU i (XPS), so a packet takes the
/// queue, hence the worker, of the CPU that sends it; or (`!tie`) unties them, so the queue is
/// chosen by a hash of the flow again.
fn tie_queues_to_cpus(ns: &str, tie: bool) {
    for (queue, mask) in [(0, "1"), (1, "2")] {
        let mask = if tie { mask } else { "0" };
        let file = format!("/sys/class/net/eth0/queues/tx-{queue}/xps_cpus");
        ok(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sh",
            "-c",
            &format!("echo {mask} > {file}"),
        ]);
    }
}

/// Runs `f` in `ns` on a thread pinned to CPU `cpu`.
fn on_cpu<T: Send + 'static>(ns: &str, cpu: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
    in_netns(ns, move || {
        // SAFETY: cpu_set_t is plain data, all-zero is the empty set; sched_setaffinity(2) of
        // the calling thread reads the set for the duration of the call.
        let pinned = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
        };
        assert_eq!(pinned, 0, "{}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// On two workers: the answer teaching web's address reaches worker 0 (dnsmasq answers from
/// CPU 0), the client's connection worker 1 (sent from CPU 1), which finds the address. Then,
/// the queues chosen by hash again, dnsperf from 8 sockets (spread over both workers) gets
/// every allowed query answered and every other one REFUSED.
#[test]
fn on_two_workers_an_address_learned_on_one_is_allowed_on_the_other() {
    require_root!();
    let lab = dns_lab(false);
    let (client_ns, _) = lab.pod("client");
    let dns_ns = lab.pod("dns").0;
    tie_queues_to_cpus(&client_ns, true);
    tie_queues_to_cpus(&dns_ns, true);
    let out = dig(&lab, &["a.domain.com"]);
    assert_eq!(a_records(&out), vec![WEB], "{out}");
    let name = on_cpu(&client_ns, 1, || connect_name(WEB));
    assert_eq!(name.expect("connect to web from CPU 1"), "web");
    let rx: Vec<u64> = lab.agent()["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["stats"]["rx_packets"].as_u64().unwrap_or(0))
        .collect();
    assert!(rx.len() == 2 && rx.iter().all(|&n| n > 0), "{rx:?}");
    tie_queues_to_cpus(&client_ns, false);
    tie_queues_to_cpus(&dns_ns, false);

    let queries = std::env::temp_dir().join(format!("{}-dnsperf.txt", lab.name));
    std::fs::write(&queries, "a.domain.com A\nexample.org A\n".repeat(50)).unwrap();
    let o = sh(&[
        "ip",
        "netns",
        "exec",
        &client_ns,
        "dnsperf",
        "-s",
        &DNS.to_string(),
        "-d",
        queries.to_str().unwrap(),
        "-c",
        "8",
        "-n",
        "4",
        "-t",
        "2",
        // A steady rate, so a loaded machine loses no query to a full ring.
        "-Q",
        "2000",
    ]);
    let _ = std::fs::remove_file(&queries);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "dnsperf: {o:?}");
    let codes = text
        .lines()
        .find(|l| l.contains("Response codes:"))
        .unwrap_or_else(|| panic!("no response codes in dnsperf's output:\n{text}"));
    assert!(
        codes.contains("NOERROR 200 ") && codes.contains("REFUSED 200 "),
        "{codes}\n{text}"
    );
}

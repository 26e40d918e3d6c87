//! `xylem-cni` behind a real container runtime: containerd 1.6 (Debian's) started by the test in
//! a lab's node namespace, and busybox containers run by `ctr run --cni`, whose network the
//! runtime's CNI library sets up by running `xylem-cni` (which delegates addresses to the
//! reference `host-local`). The containers talk to each other through the agent's AF_XDP
//! dataplane, a policy on their labels is enforced, stopping them runs DEL and leaves nothing
//! behind, and an agent killed in the middle of an ADD gives a clean error and a retry works.
//!
//! How containerd and `ctr` are kept apart from the machine's own (see `support`): their own
//! socket, root, state and configuration under a temporary directory, `/run` a tmpfs in
//! containerd's private mount namespace, and `/etc/cni/net.d` and `/opt/cni/bin` bind-mounted
//! from the temporary directory in a private mount namespace per `ctr run`.
//!
//! They need root and the packages `containerd`, `runc`, `containernetworking-plugins` and
//! `busybox-static`; without them they say what is missing and skip (or fail, where privileged
//! tests must run). `xylem` and `xylem-agent` must be built: `cargo build -p xylem-cli -p
//! xylem-agent`.

mod common;

use std::time::Duration;

use common::containerd::*;
use common::*;
use serde_json::Value;

/// Returns early from a test that cannot run here (see `support::runtime_or_skip`).
macro_rules! require_runtime {
    () => {
        if !runtime_or_skip(std::thread::current().name().unwrap_or(module_path!())) {
            return;
        }
    };
}

/// The server's port; it answers every connection with `hi` and closes it.
const PORT: &str = "8080";
const SERVER: &[&str] = &["/bin/nc", "-ll", "-p", PORT, "-e", "/bin/echo", "hi"];
/// A container that only waits, for `ctr task exec`.
const IDLE: &[&str] = &["/bin/sleep", "600"];

/// Ingress to app=server on TCP 8080 from app=client only.
const SERVER_FROM_CLIENT: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: server-in
  namespace: default
spec:
  endpointSelector:
    matchLabels: {app: server}
  ingress:
    - fromEndpoints:
        - matchLabels: {app: client}
      toPorts:
        - ports:
            - {port: \"8080\", protocol: TCP}
";

/// One connection from `from` to the server at `ip`: whether it got the server's `hi` (busybox
/// `nc` gives up connecting after 2 s).
fn greeted(from: &Container, ip: &str) -> bool {
    let o = from.exec(&["/bin/nc", "-w", "2", ip, PORT]);
    String::from_utf8_lossy(&o.stdout).trim() == "hi"
}

/// Waits until `from` reaches the server at `ip` (the first packets may meet a port that is
/// still being opened on the workers).
fn reaches(from: &Container, ip: &str) {
    eventually(
        Duration::from_secs(15),
        &format!("container {} reaches {ip}:{PORT}", from.id),
        || greeted(from, ip).then_some(()),
        || explain("the last nc", &from.exec(&["/bin/nc", "-w", "2", ip, PORT])),
    );
}

/// The `xylem status` port of the endpoint `default/<cni id>`, if any.
fn port_of(status: &Value, cni_id: &str) -> Option<Value> {
    let name = format!("default/{cni_id}");
    (status["ports"].as_array()?.iter())
        .find(|p| p["endpoint"] == name.as_str())
        .cloned()
}

fn counter(port: &Option<Value>, key: &str) -> u64 {
    port.as_ref().and_then(|p| p[key].as_u64()).unwrap_or(0)
}

/// Checks an endpoint the plugin registered for container `c`: the runtime's ids, the plugin's
/// host link, an address from the test's range and the conflist's labels. Returns its IP.
fn check_endpoint(lab: &Lab, c: &Container, ep: &Value, want: &[(&str, &str)]) -> String {
    assert_eq!(ep["namespace"], "default", "{ep}");
    assert_eq!(ep["name"], c.cni_id().as_str(), "{ep}");
    assert_eq!(ep["cni_ifname"], "eth0", "{ep}");
    let netns = ep["netns"].as_str().unwrap_or_default();
    assert!(
        netns.starts_with("/proc/") && netns.ends_with("/ns/net"),
        "{ep}"
    );
    let ifname = ep["interface"].as_str().unwrap_or_default();
    assert!(ifname.starts_with("xyc"), "host end named xyc…: {ep}");
    assert!(
        lab.cni_links().iter().any(|l| l == ifname),
        "{ifname} in the node namespace: {:?}",
        lab.cni_links()
    );
    assert_eq!(ep["labels"], labels(want), "{ep}");
    let ip = ep["ip"].as_str().unwrap().to_string();
    let (_, prefix) = lab.subnet_prefix();
    let host: u32 = ip.strip_prefix(&prefix).unwrap_or("0").parse().unwrap_or(0);
    let (lo, hi): (u32, u32) = (RANGE.0.parse().unwrap(), RANGE.1.parse().unwrap());
    assert!(
        (lo..=hi).contains(&host),
        "{ip} from the host-local range: {ep}"
    );
    ip
}

/// What a stopped `ctr run` printed must not hold a failed DEL (ctr logs it as "network review").
fn assert_clean_exit(id: &str, log: &str) {
    assert!(
        !log.contains("network review") && !log.contains("level=error"),
        "ctr run {id} reported an error on exit:\n{log}"
    );
}

/// Nothing of the containers is left: no endpoint, no `xyc` link in the node namespace, no port
/// in `xylem status` but the host's, no lease, no container in containerd.
fn assert_nothing_left(lab: &Lab, rt: &Runtime, ids: &[String]) {
    eventually(
        Duration::from_secs(5),
        "every trace of the containers is gone",
        || {
            let status = lab.status();
            (lab.endpoints().is_empty()
                && lab.cni_links().is_empty()
                && ids.iter().all(|id| port_of(&status, id).is_none())
                && (status["ports"].as_array().unwrap().iter()).all(|p| p["kind"] == "host")
                && rt.leases().is_empty()
                && rt.ctr(&["container", "ls", "-q"]).stdout.is_empty())
            .then_some(())
        },
        || {
            format!(
                "endpoints: {:?}\nxyc links: {:?}\nports: {}\nleases: {:?}\ncontainers: {}",
                lab.endpoints(),
                lab.cni_links(),
                lab.status()["ports"],
                rt.leases(),
                String::from_utf8_lossy(&rt.ctr(&["container", "ls"]).stdout)
            )
        },
    );
}

#[test]
fn containers_run_by_containerd_reach_each_other_through_xylem_and_leave_nothing_behind() {
    require_runtime!();
    let lab = Lab::up();
    let rt = Runtime::start(&lab);
    let sock = lab.api_socket();

    let mut server = rt.run(
        "server",
        &rt.conflist(&lab, &sock, &[("app", "server")]),
        SERVER,
    );
    let server_ep = server.endpoint(&lab);
    let server_ip = check_endpoint(&lab, &server, &server_ep, &[("app", "server")]);
    let mut client = rt.run(
        "client",
        &rt.conflist(&lab, &sock, &[("app", "client")]),
        IDLE,
    );
    let client_ep = client.endpoint(&lab);
    let client_ip = check_endpoint(&lab, &client, &client_ep, &[("app", "client")]);
    assert_ne!(server_ip, client_ip);

    // The pod is addressed as the lab addresses its own: a /32 and the gateway as its route.
    let gateway = lab.node()["gateway"].as_str().unwrap().to_string();
    let addr = client.exec(&["/bin/ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(
        String::from_utf8_lossy(&addr.stdout).contains(&format!("{client_ip}/32")),
        "{}",
        explain("ip addr in the client", &addr)
    );
    let routes = client.exec(&["/bin/ip", "-4", "route"]);
    assert!(
        String::from_utf8_lossy(&routes.stdout).contains(&format!("default via {gateway}")),
        "{}",
        explain("ip route in the client", &routes)
    );

    let before = lab.status();
    reaches(&client, &server_ip);
    // The exchange went through the dataplane: both containers' ports carried frames both ways.
    let after = lab.status();
    for id in [server.cni_id(), client.cni_id()] {
        let (b, a) = (port_of(&before, &id), port_of(&after, &id));
        assert!(a.is_some(), "a port for {id} in {}", after["ports"]);
        for key in ["rx", "tx"] {
            assert!(
                counter(&a, key) > counter(&b, key),
                "{id} {key} grew with the exchange: before {b:?}, after {a:?}"
            );
        }
    }
    assert!(
        after["redirector"]["redirected"].as_u64() > before["redirector"]["redirected"].as_u64(),
        "the redirector handed the frames to the workers: {} then {}",
        before["redirector"],
        after["redirector"]
    );

    let ids = [server.cni_id(), client.cni_id()];
    assert_clean_exit("client", &client.stop());
    assert_clean_exit("server", &server.stop());
    assert_nothing_left(&lab, &rt, &ids);
}

#[test]
fn a_policy_on_container_labels_is_enforced() {
    require_runtime!();
    let lab = Lab::up();
    let rt = Runtime::start(&lab);
    let sock = lab.api_socket();

    let mut server = rt.run(
        "server",
        &rt.conflist(&lab, &sock, &[("app", "server")]),
        SERVER,
    );
    let server_ip = server.endpoint(&lab)["ip"].as_str().unwrap().to_string();
    let mut client = rt.run(
        "client",
        &rt.conflist(&lab, &sock, &[("app", "client")]),
        IDLE,
    );
    client.endpoint(&lab);
    let mut other = rt.run(
        "other",
        &rt.conflist(&lab, &sock, &[("app", "other")]),
        IDLE,
    );
    other.endpoint(&lab);

    // Without a policy both reach the server: what follows is the policy's doing.
    reaches(&client, &server_ip);
    reaches(&other, &server_ip);

    let dir = TempDir::new("policy");
    let file = dir.path.join("server-in.yaml");
    std::fs::write(&file, SERVER_FROM_CLIENT).unwrap();
    lab.xylem(&["policy", "import", file.to_str().unwrap()]);
    let server_ep = (lab.endpoints().into_iter())
        .find(|e| e["container_id"] == server.cni_id().as_str())
        .unwrap();
    assert_eq!(server_ep["ingress_enforced"], true, "{server_ep}");

    let denied = |st: &Value| st["totals"]["drops"]["policy-denied"].as_u64().unwrap_or(0);
    let denied_before = denied(&lab.status());
    reaches(&client, &server_ip);
    assert!(
        !greeted(&other, &server_ip),
        "app=other reached app=server through a policy that admits only app=client"
    );
    eventually(
        Duration::from_secs(5),
        "the agent counts the refused connection as policy-denied",
        || (denied(&lab.status()) > denied_before).then_some(()),
        || lab.status()["totals"]["drops"].to_string(),
    );
    // Still allowed after the refusal.
    assert!(greeted(&client, &server_ip), "app=client after the refusal");

    let ids = [server.cni_id(), client.cni_id(), other.cni_id()];
    assert_clean_exit("other", &other.stop());
    assert_clean_exit("client", &client.stop());
    assert_clean_exit("server", &server.stop());
    assert_nothing_left(&lab, &rt, &ids);
}

#[test]
fn killing_the_agent_mid_add_gives_a_clean_error_and_a_retry_succeeds() {
    require_runtime!();
    let lab = Lab::up();
    let rt = Runtime::start(&lab);
    let results = rt.record_plugin_results();
    let sock = lab.api_socket();
    let agent_pid = lab.node()["agent_pid"].as_u64().unwrap() as u32;
    let proxy_dir = TempDir::new("proxy");
    let proxy = KillingProxy::start(
        proxy_dir.path.join("agent.sock"),
        sock.clone(),
        agent_pid,
        (lab.netns().to_string(), rt.leases.clone()),
    );

    // The ADD reaches the agent through the proxy, which kills the agent at the endpoint's PUT.
    let mut first = rt.run(
        "server",
        &rt.conflist(&lab, &proxy.socket, &[("app", "server")]),
        SERVER,
    );
    let (status, log) = first.wait(Duration::from_secs(30));
    let (links, leases) = proxy
        .killed()
        .unwrap_or_else(|| panic!("the proxy saw no PUT of an endpoint:\n{log}"));
    // Truly mid-ADD: the link and the lease existed when the agent died.
    assert_eq!(links.len(), 1, "one xyc link at the PUT: {links:?}");
    assert_eq!(leases.len(), 1, "one lease at the PUT: {leases:?}");
    assert!(!pid_alive(agent_pid), "agent {agent_pid} is dead");
    assert!(
        !status.success(),
        "ctr run fails when the ADD fails:\n{log}"
    );
    assert!(
        log.contains("xylem-cni") && log.to_lowercase().contains("agent"),
        "ctr names the plugin and the agent:\n{log}"
    );
    let calls = plugin_results(&results);
    let (_, rc, out) = (calls.iter())
        .find(|(cmd, _, _)| cmd == "ADD")
        .unwrap_or_else(|| panic!("no ADD recorded: {calls:?}"));
    let err: Value = serde_json::from_str(out)
        .unwrap_or_else(|e| panic!("the ADD printed no JSON error ({e}): {out}"));
    assert_ne!(*rc, 0, "{out}");
    assert_eq!(err["code"], 11, "try again later: {err}");
    assert!(
        err["msg"].as_str().unwrap_or_default().contains("agent"),
        "the message names the agent: {err}"
    );
    // The ADD rolled back what it had made.
    assert!(
        lab.cni_links().is_empty(),
        "xyc links left: {:?}",
        lab.cni_links()
    );
    assert!(rt.leases().is_empty(), "leases left: {:?}", rt.leases());
    // containerd 1.6's `ctr run --rm` leaves the container record of a run whose network set-up
    // failed; remove it, as whoever retries must, to run the same container again.
    rt.remove_container("server");
    drop(proxy);

    // The agent back, and the plugin pointed straight at it: the same container again.
    lab.restart_agent();
    assert!(lab.endpoints().is_empty(), "{:?}", lab.endpoints());
    let mut server = rt.run(
        "server",
        &rt.conflist(&lab, &sock, &[("app", "server")]),
        SERVER,
    );
    let ep = server.endpoint(&lab);
    let ip = check_endpoint(&lab, &server, &ep, &[("app", "server")]);
    let mut client = rt.run(
        "client",
        &rt.conflist(&lab, &sock, &[("app", "client")]),
        IDLE,
    );
    client.endpoint(&lab);
    reaches(&client, &ip);
    let adds: Vec<_> = (plugin_results(&results).into_iter())
        .filter(|(cmd, _, _)| cmd == "ADD")
        .collect();
    assert!(
        adds.len() == 3 && adds[1..].iter().all(|(_, rc, _)| *rc == 0),
        "the ADDs after the agent came back succeed: {adds:?}"
    );

    let ids = [server.cni_id(), client.cni_id()];
    assert_clean_exit("client", &client.stop());
    assert_clean_exit("server", &server.stop());
    assert_nothing_left(&lab, &rt, &ids);
}

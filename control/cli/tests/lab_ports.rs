//! Privileged end-to-end tests of ports at runtime against the frame budget: interfaces deleted
//! and made again under a running agent, and ports beyond the frames the workers have.
//!
//! Each test brings up its own lab behind a guard that brings it down again even on panic.
//! They need root; without it they print why and skip.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::Value;
use xylem_api::config::WorkersConfig;

#[macro_use]
mod common;
use common::*;

/// Frames of every worker together, from `xylem status`: (total, free, in fill rings, held,
/// in TX rings).
fn frames(lab: &LabGuard) -> (u64, u64, u64, u64, u64) {
    let st = lab.agent();
    let sum = |k: &str| -> u64 {
        st["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["frames"][k].as_u64().unwrap())
            .sum()
    };
    (
        sum("total"),
        sum("free"),
        sum("fill"),
        sum("held"),
        sum("tx"),
    )
}

/// Waits (up to 20 s) until `ok` holds of the agent's status; panics with the last status.
fn wait_status(lab: &LabGuard, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = lab.agent();
        if ok(&st) {
            return st;
        }
        assert!(Instant::now() < deadline, "{what}, never: {st:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until every worker's frames are idle with `ports` fill rings full: the frames of
/// exactly that many ports with the kernel, the others free.
fn wait_frames_for(lab: &LabGuard, ports: u64) -> (u64, u64, u64) {
    let ring = u64::from(WorkersConfig::default().ring_size);
    let workers = lab.agent()["workers"].as_array().unwrap().len() as u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (total, free, fill, held, tx) = frames(lab);
        if fill == workers * ports * ring && held == 0 && tx == 0 && free + fill == total {
            return (total, free, fill);
        }
        assert!(
            Instant::now() < deadline,
            "frames never settled to {ports} full fill rings of {ring} per worker: total \
             {total}, free {free}, fill {fill}, held {held}, tx {tx}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn port_names(st: &Value) -> Vec<String> {
    st["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["ifname"].as_str().unwrap().to_string())
        .collect()
}

fn endpoint<'a>(eps: &'a Value, name: &str) -> &'a Value {
    eps.as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no endpoint {name} in {eps:#}"))
}

/// Makes pod `ns`'s veth pair again, as the lab made it: `ifname` in the node namespace
/// `node`, `eth0` in the pod with `mac` and `ip`/32, `queues` queues each, routes through
/// `gateway`.
fn make_veth_again(
    node: &str,
    ns: &str,
    ifname: &str,
    queues: &str,
    mac: &str,
    ip: Ipv4Addr,
    gateway: &str,
) {
    ok(&[
        "ip",
        "-n",
        node,
        "link",
        "add",
        ifname,
        "numtxqueues",
        queues,
        "numrxqueues",
        queues,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns,
        "numtxqueues",
        queues,
        "numrxqueues",
        queues,
    ]);
    ok(&["ip", "-n", ns, "link", "set", "eth0", "address", mac]);
    ok(&[
        "ip",
        "-n",
        ns,
        "addr",
        "add",
        &format!("{ip}/32"),
        "dev",
        "eth0",
    ]);
    ok(&[
        "ip", "netns", "exec", ns, "ethtool", "-K", "eth0", "tx", "off",
    ]);
    ok(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
    ok(&["ip", "-n", node, "link", "set", ifname, "up"]);
    ok(&[
        "ip", "-n", ns, "route", "add", gateway, "dev", "eth0", "scope", "link",
    ]);
    ok(&[
        "ip", "-n", ns, "route", "add", "default", "via", gateway, "dev", "eth0",
    ]);
}

/// A pod's node-side veth deleted under the running agent: its port closes and its frames come
/// back (the workers' ledgers in `xylem status`), its endpoint is kept and shown missing; made
/// again by hand under the same names and addresses, it is attached anew and traffic flows to
/// and from the pod. Then a pod's namespace deleted does the same, and the agent's own frame
/// check at stop finds every frame where its ledger says.
#[test]
fn a_pod_veth_deleted_under_the_agent_gives_its_frames_back_and_is_attached_again_when_made_again()
{
    require_root!();
    let lab = LabGuard::up(&[]);
    let (a_ns, a_ip) = lab.pod("pod-a");
    let (b_ns, b_ip) = lab.pod("pod-b");
    let node = lab.node_netns();
    let lab_st = lab.status();
    let b_if = lab_st["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "pod-b")
        .unwrap()["interface"]
        .as_str()
        .unwrap()
        .to_string();
    let gateway = lab_st["nodes"][0]["gateway"].as_str().unwrap().to_string();
    let b_mac = mac_in(&b_ns, "eth0");
    let queues = ok(&[
        "ip",
        "netns",
        "exec",
        &node,
        "ls",
        &format!("/sys/class/net/{b_if}/queues"),
    ])
    .split_whitespace()
    .filter(|q| q.starts_with("rx-"))
    .count()
    .to_string();
    assert!(ping(&a_ns, b_ip, 3), "pod-a cannot reach pod-b at first");
    let ports = port_names(&lab.agent());
    let n = ports.len() as u64;
    let (total, free_before, fill_before) = wait_frames_for(&lab, n);

    // The node-side veth goes, under the running agent.
    ok(&["ip", "-n", &node, "link", "del", &b_if]);
    let st = wait_status(
        &lab,
        "the agent closes the deleted interface's port",
        |st| !port_names(st).contains(&b_if),
    );
    let missing = st["missing_interfaces"].as_array().unwrap();
    assert!(
        missing
            .iter()
            .any(|m| m["ifname"] == b_if.as_str() && m["endpoint"] == "default/pod-b"),
        "{st:#}"
    );
    // Its frames came back: one fill ring's worth per worker, now free.
    let (total_after, free_after, fill_after) = wait_frames_for(&lab, n - 1);
    assert_eq!(total_after, total);
    assert_eq!(fill_before - fill_after, free_after - free_before);
    // The endpoint's record is kept, marked.
    let eps: Value = serde_json::from_str(&lab.xylem(&["endpoint", "list", "-o", "json"])).unwrap();
    let b = endpoint(&eps, "pod-b");
    assert_eq!(b["interface_missing"], true, "{b}");
    assert_eq!(b["mac"], b_mac.as_str(), "{b}");
    let listed = lab.xylem(&["endpoint", "list"]);
    assert!(listed.contains(&format!("{b_if} (missing)")), "{listed}");
    // Nothing else is disturbed.
    let (_, c_ip) = lab.pod("pod-c");
    assert!(
        ping(&a_ns, c_ip, 2),
        "pod-a cannot reach pod-c while pod-b is missing"
    );

    // Made again by hand under the same names, with the same addresses.
    make_veth_again(&node, &b_ns, &b_if, &queues, &b_mac, b_ip, &gateway);
    let st = wait_status(&lab, "the agent attaches the interface again", |st| {
        port_names(st).contains(&b_if) && st["missing_interfaces"].as_array().unwrap().is_empty()
    });
    let port = st["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["ifname"] == b_if.as_str())
        .unwrap();
    assert_eq!(port["endpoint"], "default/pod-b", "{port}");
    assert_eq!(port["ip"], b_ip.to_string().as_str(), "{port}");
    let eps: Value = serde_json::from_str(&lab.xylem(&["endpoint", "list", "-o", "json"])).unwrap();
    assert_eq!(endpoint(&eps, "pod-b")["interface_missing"], false);
    wait_frames_for(&lab, n);

    // Traffic flows to and from the pod again, through the dataplane.
    let fwd = lab.agent()["totals"]["forwarded"].as_u64().unwrap();
    assert!(ping(&a_ns, b_ip, 3), "pod-a cannot reach pod-b again");
    assert!(ping(&b_ns, a_ip, 3), "pod-b cannot reach pod-a again");
    let after = lab.agent();
    assert!(
        after["totals"]["forwarded"].as_u64().unwrap() >= fwd + 12,
        "the pings did not go through the workers: {after:#}"
    );
    let b_port = port_names(&after).iter().position(|p| *p == b_if).unwrap();
    assert!(
        after["ports"][b_port]["rx"].as_u64().unwrap() > 0,
        "{after:#}"
    );

    // A pod's namespace deleted takes its veth pair with it (the kernel destroys the
    // namespace's interfaces in the background): the same again.
    let (c_ns, _) = lab.pod("pod-c");
    let c_if = lab.status()["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "pod-c")
        .unwrap()["interface"]
        .as_str()
        .unwrap()
        .to_string();
    ok(&["ip", "netns", "del", &c_ns]);
    let st = wait_status(
        &lab,
        "the agent closes the port of a deleted namespace",
        |st| !port_names(st).contains(&c_if),
    );
    assert!(
        st["missing_interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["endpoint"] == "default/pod-c"),
        "{st:#}"
    );
    wait_frames_for(&lab, n - 1);
    assert!(ping(&a_ns, b_ip, 2), "pod-b is still reachable");

    // The agent's own frame check when it stops: every frame where its ledger says.
    let log = lab.status()["nodes"][0]["agent_log"]
        .as_str()
        .unwrap()
        .to_string();
    lab.kill_agent(libc::SIGTERM);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("frame accounting: ok") && !text.contains("frame accounting broken"),
        "{text}"
    );
}

/// The lab's workers have frames for the configured ports plus `workers.spare_ports` more
/// (`lab up --spare-ports`): one pod beyond them is refused by the API (503, naming what to
/// raise) with nothing changed, and a pod deleted makes room for the next.
#[test]
fn a_pod_beyond_the_frame_budget_is_refused_naming_spare_ports_and_changes_nothing() {
    require_root!();
    // Not the default, so that the flag is what sets the budget.
    let spare = WorkersConfig::default().spare_ports + 2;
    let lab = LabGuard::up(&["--spare-ports", &spare.to_string()]);
    let ports = port_names(&lab.agent());
    // The configured ports, plus `spare` pods added at runtime: the frames' budget.
    for i in 0..spare {
        lab.xylem(&["lab", "add-pod", &format!("extra{i}")]);
    }
    let full = port_names(&lab.agent());
    assert_eq!(full.len(), ports.len() + spare as usize);
    let (total, _, _) = wait_frames_for(&lab, full.len() as u64);

    let o = sh(&[
        xylem(),
        "--lab",
        &lab.name,
        "lab",
        "add-pod",
        "one-too-many",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a pod beyond the budget was added");
    assert!(
        err.contains("spare_ports") && err.contains("503"),
        "the refusal does not say what to raise: {err}"
    );
    // Nothing changed: the same ports, no XDP program left on the refused interface, every
    // frame where it was.
    let st = lab.agent();
    assert_eq!(port_names(&st), full);
    assert_eq!(st["health"]["ok"], true);
    let (total_after, _, _) = wait_frames_for(&lab, full.len() as u64);
    assert_eq!(total_after, total);
    let refused_if = lab.status()["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "one-too-many")
        .map(|p| p["interface"].as_str().unwrap().to_string())
        .expect("the lab records the pod it made");
    let link = ok(&["ip", "-n", &lab.node_netns(), "link", "show", &refused_if]);
    assert!(!link.contains("xdp"), "{link}");

    // A pod deleted makes room for the next.
    lab.xylem(&["lab", "delete-pod", "extra0"]);
    lab.xylem(&["lab", "add-pod", "next"]);
    let (ns_next, ip_next) = lab.pod("next");
    let (a_ns, a_ip) = lab.pod("pod-a");
    assert!(
        ping(&a_ns, ip_next, 3),
        "pod-a cannot reach the pod added last"
    );
    assert!(
        ping(&ns_next, a_ip, 3),
        "the pod added last cannot reach pod-a"
    );
}

//! Privileged end-to-end test of remote endpoints (issue 13): in a two-node lab every agent is
//! told the other node's pods, so a policy selects a pod of another node by its labels, on
//! ingress (the server's node) and on egress (the client's node).
//!
//! The lab runs under a unique name behind [`LabGuard`], which brings it down even if the test
//! panics. It needs root; without it it prints why and skips.

use serde_json::Value;

#[macro_use]
mod common;
use common::*;

/// node1: `client` (app=client) and `other` (app=other); node2: `server` (app=server), which
/// answers the client's first line on TCP 8080 with `ok` (after reading it, so that socat never
/// writes to a shell that has already exited and drops the answer).
const LAB: &str = "nodes:\n\
  \x20 - name: node1\n    pods:\n\
  \x20     - {name: client, labels: {app: client}}\n\
  \x20     - {name: other, labels: {app: other}}\n\
  \x20 - name: node2\n    pods:\n\
  \x20     - {name: server, labels: {app: server}, \
  run: \"socat TCP-LISTEN:8080,fork,reuseaddr SYSTEM:'read -r _; echo ok'\"}\n";

/// On node2: the server takes TCP 8080 from app=client only.
const SERVER_FROM_CLIENT: &str = "\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-from-client}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]
";

/// On node1: `other` may reach app=server and nothing else.
const OTHER_TO_SERVER: &str = "\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: other-to-server}
spec:
  endpointSelector: {matchLabels: {app: other}}
  egress:
    - toEndpoints: [{matchLabels: {app: server}}]
";

/// `xylem --socket SOCK ARGS...`, which must succeed; its stdout.
fn on(lab: &LabGuard, sock: &str, args: &[&str]) -> String {
    let mut a = vec![xylem(), "--socket", sock];
    a.extend_from_slice(args);
    lab.ok_log(&a)
}

/// The `policy-denied` drops of the agent at `sock`.
fn policy_denied(lab: &LabGuard, sock: &str) -> u64 {
    let st: Value = serde_json::from_str(&on(lab, sock, &["status", "-o", "json"])).unwrap();
    st["totals"]["drops"]["policy-denied"].as_u64().unwrap_or(0)
}

/// The remote endpoints of the agent at `sock`, by `namespace/name`.
fn remote_list(lab: &LabGuard, sock: &str) -> Vec<Value> {
    let out = on(lab, sock, &["remote-endpoint", "list", "-o", "json"]);
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {out}"))
        .clone()
}

fn names(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|e| format!("{}/{}", e["namespace"], e["name"]).replace('"', ""))
        .collect()
}

#[test]
fn policies_select_the_other_nodes_pods_by_their_labels() {
    require_root!();
    let file = TempFile::new("lab.yaml", LAB);
    let lab = LabGuard::up(&["-f", file.path()]);
    let st = lab.status();
    let sock = |i: usize| st["nodes"][i]["api_socket"].as_str().unwrap().to_string();
    let (sock1, sock2) = (sock(0), sock(1));
    let (client_ns, _) = lab.pod("client");
    let (other_ns, other_ip) = lab.pod("other");
    let (_, server_ip) = lab.pod("server");
    let server = server_ip.to_string();

    // Each node lists the other's pods, with their node, address, labels and an identity.
    let on2 = remote_list(&lab, &sock2);
    assert_eq!(names(&on2), ["default/client", "default/other"], "{on2:?}");
    for e in &on2 {
        assert_eq!(e["node"], "node1", "{e}");
        assert!(e["identity"].as_u64().is_some(), "no identity: {e}");
    }
    let o = on2.iter().find(|e| e["name"] == "other").unwrap();
    assert_eq!(o["ip"], other_ip.to_string(), "{o}");
    assert_eq!(o["labels"]["app"], "other", "{o}");
    let on1 = remote_list(&lab, &sock1);
    assert_eq!(names(&on1), ["default/server"], "{on1:?}");
    assert_eq!(on1[0]["node"], "node2", "{on1:?}");

    // A node speaks only for its own pods: an address outside node1's pod CIDR is refused,
    // naming the field, and nothing is added.
    let o = sh(&[
        xylem(),
        "--socket",
        &sock2,
        "remote-endpoint",
        "put",
        "default/stray",
        "--node",
        "node1",
        "--ip",
        "10.200.1.99",
        "-l",
        "app=client",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "accepted: {err}");
    assert!(
        err.contains("ip: ") && err.contains("outside node node1's pod CIDR"),
        "{err}"
    );
    assert_eq!(remote_list(&lab, &sock2).len(), 2);
    // A node with remote endpoints is not deleted from under them (the lab's nodes are in
    // the agents' configuration files, so a node put through the API shows it).
    on(
        &lab,
        &sock2,
        &[
            "node",
            "put",
            "node3",
            "--node-ip",
            "10.199.0.13",
            "--pod-cidr",
            "10.200.5.0/24",
        ],
    );
    on(
        &lab,
        &sock2,
        &[
            "remote-endpoint",
            "put",
            "web",
            "--node",
            "node3",
            "--ip",
            "10.200.5.10",
        ],
    );
    let o = sh(&[xylem(), "--socket", &sock2, "node", "delete", "node3"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("409") && err.contains("default/web"),
        "{err}"
    );
    on(&lab, &sock2, &["remote-endpoint", "delete", "web"]);
    on(&lab, &sock2, &["node", "delete", "node3"]);
    assert_eq!(remote_list(&lab, &sock2).len(), 2);

    // Ingress on node2: the server takes app=client, which is a pod of node1.
    let policy = TempFile::new("server.yaml", SERVER_FROM_CLIENT);
    on(&lab, &sock2, &["policy", "import", policy.path()]);
    assert_eq!(
        eventually(20, || tcp(&client_ns, &server, 8080), "ok").as_deref(),
        Some("ok"),
        "client (node1) cannot reach server (node2) under a policy that allows it"
    );
    let denied = policy_denied(&lab, &sock2);
    assert_eq!(
        tcp(&other_ns, &server, 8080),
        None,
        "other (node1, app=other) reached the server past its policy"
    );
    assert!(
        policy_denied(&lab, &sock2) > denied,
        "node2 counted no policy-denied drop for other's connection"
    );
    on(
        &lab,
        &sock2,
        &["policy", "delete", "default/server-from-client"],
    );

    // Egress on node1: `other` may reach app=server, a pod of node2, and nothing else.
    assert_eq!(
        eventually(20, || tcp(&other_ns, &server, 8080), "ok").as_deref(),
        Some("ok"),
        "other cannot reach the server with no policy at all"
    );
    let world_port = xylem_lab::WORLD_ECHO_PORT;
    assert!(
        tcp(&other_ns, "10.199.0.100", world_port).is_some(),
        "other cannot reach the world with no policy at all"
    );
    let policy = TempFile::new("other.yaml", OTHER_TO_SERVER);
    on(&lab, &sock1, &["policy", "import", policy.path()]);
    assert_eq!(
        tcp(&other_ns, &server, 8080).as_deref(),
        Some("ok"),
        "other cannot reach the server its egress policy allows"
    );
    assert_eq!(
        tcp(&other_ns, "10.199.0.100", world_port),
        None,
        "other reached the world past its egress policy"
    );

    // A pod added to node2 becomes a remote endpoint of node1; deleted, it goes.
    lab.xylem(&[
        "lab", "add-pod", "late", "--node", "node2", "-l", "app=late",
    ]);
    let (_, late_ip) = lab.pod("late");
    let on1 = remote_list(&lab, &sock1);
    let late = on1.iter().find(|e| e["name"] == "late").expect("late");
    assert_eq!(late["node"], "node2", "{late}");
    assert_eq!(late["ip"], late_ip.to_string(), "{late}");
    assert!(late_ip.to_string().starts_with("10.200.1."), "{late}");
    lab.xylem(&["lab", "delete-pod", "late"]);
    assert_eq!(names(&remote_list(&lab, &sock1)), ["default/server"]);
}

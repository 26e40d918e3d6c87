//! Privileged end-to-end test of `policy.allow_localhost`: the node reaches a pod under an
//! ingress default-deny policy with the default (`always`), and not with `policy`.
//!
//! It brings up its own lab (a unique name) behind a guard that brings it down again even if
//! the test panics. It needs root; without it, it prints why and skips.

use std::net::Ipv4Addr;

#[macro_use]
mod common;
use common::*;

/// pod-a accepts nothing: ingress is default-deny and no rule allows anyone.
const DENY_A: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: deny-a
  namespace: default
spec:
  endpointSelector:
    matchLabels: {app: pod-a}
  ingress:
    - {}
";

/// `xylem policy trace` from the host port's address to pod-a, as text.
fn trace_from_host(lab: &LabGuard, host: Ipv4Addr) -> String {
    lab.xylem(&[
        "policy",
        "trace",
        "--src",
        &host.to_string(),
        "--dst",
        "pod-a",
        "--dport",
        "8080/TCP",
    ])
}

#[test]
fn the_node_reaches_a_default_deny_pod_unless_allow_localhost_is_policy() {
    require_root!();
    let lab = LabGuard::up(&[]);
    let node = lab.node_netns();
    let (_, ip_a) = lab.pod("pod-a");
    let (ns_b, _) = lab.pod("pod-b");
    let host: Ipv4Addr = lab.status()["nodes"][0]["host_ip"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let path = std::env::temp_dir().join(format!("{}-deny-a.yaml", lab.name));
    std::fs::write(&path, DENY_A).unwrap();
    lab.xylem(&["policy", "import", path.to_str().unwrap()]);

    // The default: the node gets in (its replies come back through conntrack), pods do not.
    assert!(!ping(&ns_b, ip_a, 2), "pod-b reached pod-a through deny-a");
    assert!(
        ping(&node, ip_a, 3),
        "the node cannot reach pod-a with allow_localhost: always"
    );
    let t = trace_from_host(&lab, host);
    assert!(
        t.contains("allowed") && t.contains("policy.allow_localhost"),
        "{t}"
    );

    // `policy`: the same policy now keeps the node out too.
    lab.restart_with_config("allow_localhost: always", "allow_localhost: policy");
    let denied_before = lab.agent()["totals"]["drops"]["policy-denied"]
        .as_u64()
        .unwrap();
    assert!(
        !ping(&node, ip_a, 2),
        "the node reached pod-a with allow_localhost: policy"
    );
    let denied = lab.agent()["totals"]["drops"]["policy-denied"]
        .as_u64()
        .unwrap();
    assert!(denied >= denied_before + 2, "{denied_before} -> {denied}");
    let t = trace_from_host(&lab, host);
    assert!(
        t.contains("policy-denied") && !t.contains("policy.allow_localhost"),
        "{t}"
    );
    std::fs::remove_file(&path).unwrap();
}

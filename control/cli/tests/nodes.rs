//! The node table through the agent's real socket: `PUT /v1/nodes/{name}` refused with the
//! field named and nothing changed, accepted, listed by `xylem node list -o json`, kept across a
//! restart, deleted; and `xylem encrypt status` / `xylem status` without encryption.
//!
//! Needs root (the lab); without it the test prints why and skips.

use std::process::{Command, Stdio};

use serde_json::{Value, json};
use xylem_api::Client;

#[macro_use]
mod common;
use common::*;

/// A raw request (so malformed bodies reach the agent as they are): status and body.
fn api(sock: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let o = Command::new("curl")
        .args(["-s", "-o", "/dev/stderr", "-w", "%{http_code}"])
        .args(["--unix-socket", sock, "-X", method])
        .args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
        ])
        .arg(format!("http://xylem{path}"))
        .stdin(Stdio::null())
        .output()
        .expect("curl");
    (
        String::from_utf8_lossy(&o.stdout).parse().unwrap_or(0),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn nodes(lab: &LabGuard) -> Value {
    serde_json::from_str(&lab.xylem(&["node", "list", "-o", "json"])).unwrap()
}

fn revision(c: &Client) -> u64 {
    let st: Value = c.get("/v1/status").unwrap();
    st["tables_revision"].as_u64().unwrap()
}

#[test]
fn nodes_are_checked_put_listed_kept_across_a_restart_and_deleted() {
    require_root!();
    let lab = LabGuard::up(&[]);
    let sock = lab.socket();
    let c = Client::new(&sock);
    let st: Value = c.get("/v1/status").unwrap();
    let me = st["node"].as_str().unwrap().to_string();
    assert_eq!(st["encryption"], "disabled", "{st}");
    let uplink = st["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "uplink")
        .map(|p| p["ip"].as_str().unwrap().to_string());

    // Refused: 4xx naming the field, and neither the table nor the revision moves.
    let before = nodes(&lab);
    let rev = revision(&c);
    let peer_field = if uplink.is_some() { "pod_cidr" } else { "name" };
    let cases = [
        (
            "/v1/nodes/Bad_Name",
            json!({"node_ip": "10.199.0.50", "pod_cidr": "10.201.0.0/24"}),
            422,
            "name",
        ),
        (
            "/v1/nodes/node9",
            json!({"node_ip": "10.199.0.50", "pod_cidr": "10.201.0.0/24", "colour": 1}),
            400,
            "colour",
        ),
        (
            "/v1/nodes/node9",
            json!({"node_ip": "10.199.0.50", "pod_cidr": "10.201.0.0/24", "encryption": true}),
            422,
            "encryption",
        ),
        (
            "/v1/nodes/node9",
            json!({"node_ip": "10.199.0.50", "pod_cidr": "10.200.0.0/25"}),
            422,
            peer_field,
        ),
        (
            "/v1/nodes/node9",
            json!({"node_ip": "10.199.0.50", "pod_cidr": "10.201.0.0/33"}),
            400,
            "body",
        ),
    ];
    for (path, body, code, field) in cases {
        let (got, text) = api(&sock, "PUT", path, &body.to_string());
        assert_eq!(got, code, "{path} {body}: {text}");
        if field != "body" {
            assert!(text.contains(field), "{path} {body}: {text}");
        }
    }
    assert_eq!(nodes(&lab), before);
    assert_eq!(revision(&c), rev);

    // Accepted: a peer over the uplink, or (without one) this node's own entry.
    let (name, ip, cidr) = match &uplink {
        Some(_) => ("node9".to_string(), "10.199.0.50", "10.201.0.0/24"),
        None => (me.clone(), "192.0.2.1", "10.200.0.0/24"),
    };
    lab.xylem(&[
        "node",
        "put",
        &name,
        "--node-ip",
        ip,
        "--pod-cidr",
        cidr,
        "--encryption",
        "off",
    ]);
    assert!(revision(&c) > rev);
    let find = |list: &Value| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name.as_str())
            .cloned()
    };
    let n = find(&nodes(&lab)).expect("the node put is listed");
    assert_eq!(n["node_ip"], ip);
    assert_eq!(n["source"], "api");
    assert_eq!(n["encryption"], false);
    assert_eq!(n["local"], uplink.is_none());
    let table = lab.xylem(&["node", "list"]);
    assert!(table.contains("NODE-IP") && table.contains(ip), "{table}");

    // Kept across a restart (the state store's `nodes` kind).
    lab.kill_agent(libc::SIGTERM);
    lab.start_agent(&[]).unwrap();
    let kept = find(&nodes(&lab)).expect("the node is back after a restart");
    assert_eq!(kept, n);

    // Deleted, then gone; a second delete is a 404.
    lab.xylem(&["node", "delete", &name]);
    assert!(find(&nodes(&lab)).is_none());
    let (got, text) = api(&sock, "DELETE", &format!("/v1/nodes/{name}"), "");
    assert_eq!(got, 404, "{text}");

    // Without an encryption section: mode disabled, every ESP error counted (at zero).
    let enc: Value =
        serde_json::from_str(&lab.xylem(&["encrypt", "status", "-o", "json"])).unwrap();
    assert_eq!(enc["mode"], "disabled", "{enc}");
    assert!(enc["current_key_id"].is_null(), "{enc}");
    for reason in [
        "no-key",
        "esp-auth-failed",
        "esp-replay",
        "esp-seq-exhausted",
        "esp-too-big",
    ] {
        assert_eq!(enc["errors"][reason], 0, "{reason}: {enc}");
    }
    let human = lab.xylem(&["status"]);
    assert!(human.contains("encryption: disabled"), "{human}");
}

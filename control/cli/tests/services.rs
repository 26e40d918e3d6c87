//! Privileged end-to-end tests of services' control side in the lab: the example
//! imported through `xylem service import`, listed with states and Maglev shares, bad specs
//! rejected whole with the field named and nothing changed, EndpointSlices joined to a service
//! the agent holds, delete, and services restored after a restart of the agent. Traffic through
//! a virtual IP is the dataplane's tests' (see `lab_services*.rs`).
//!
//! Each test brings up its own lab (unique name) behind a guard that brings it down again. They
//! need root; without it they print why and skip.

use serde_json::Value;

#[macro_use]
mod common;
use common::*;

/// The example.
const EXAMPLE: &str = include_str!("../../services/tests/issue-example.yaml");

/// A second service, `other`, for the cases that need one.
const OTHER: &str = "apiVersion: v1
kind: Service
metadata: {name: other}
spec:
  clusterIP: 10.96.0.20
  ports: [{port: 53, protocol: UDP}]
";

fn write(name: &str, text: &str) -> String {
    let path = format!("/tmp/xylem-services-{}-{name}.yaml", std::process::id());
    std::fs::write(&path, text).unwrap();
    path
}

fn list(g: &LabGuard) -> Value {
    serde_json::from_str(&g.xylem(&["service", "list", "-o", "json"])).unwrap()
}

fn revision(g: &LabGuard) -> u64 {
    g.agent()["tables_revision"].as_u64().unwrap()
}

/// A listing (or one service) without what a restart or a health check may change (health
/// and shares).
fn shape(list: &Value) -> Value {
    let mut l = list.clone();
    let services = match l.as_array_mut() {
        Some(a) => a.iter_mut().collect::<Vec<_>>(),
        None => vec![&mut l],
    };
    for s in services {
        for b in s["backends"].as_array_mut().unwrap() {
            let b = b.as_object_mut().unwrap();
            b.remove("health");
            b.remove("table_share");
        }
    }
    l
}

/// Checks the example as listed: frontend, backends with their states, weights and shares.
fn check_example(web: &Value) {
    assert_eq!(web["namespace"], "default", "{web}");
    assert_eq!(web["session_affinity"], "None");
    assert_eq!(web["affinity_timeout_s"], Value::Null);
    assert_eq!(web["annotations"]["lb.xylem.io/health-check"], "tcp");
    assert_eq!(
        web["frontends"],
        serde_json::json!([{"ip": "10.96.0.10", "port": 80, "protocol": "TCP"}])
    );
    let backends = web["backends"].as_array().unwrap();
    let got: Vec<(&str, u64, &str, u64)> = backends
        .iter()
        .map(|b| {
            (
                b["ip"].as_str().unwrap(),
                b["port"].as_u64().unwrap(),
                b["state"].as_str().unwrap(),
                b["weight"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("10.200.0.11", 8080, "active", 1),
            ("10.200.0.12", 8080, "active", 2),
            ("10.200.0.13", 8080, "terminating", 1)
        ]
    );
    let health: Vec<&str> = backends
        .iter()
        .map(|b| b["health"].as_str().unwrap())
        .collect();
    assert!(
        health.iter().all(|h| ["unknown", "up", "down"].contains(h)),
        "a checked service's backends are unknown, up or down: {health:?}"
    );
    let share: Vec<f64> = backends
        .iter()
        .map(|b| b["table_share"].as_f64().unwrap())
        .collect();
    let sum: f64 = share.iter().sum();
    assert!(
        (sum - 1.0).abs() < 1e-6 || health.contains(&"down"),
        "{share:?}"
    );
    if !health.contains(&"down") {
        // M = 16381: each share within 1/M of its weight's.
        assert!((share[0] - 1.0 / 3.0).abs() < 0.001, "{share:?}");
        assert!((share[1] - 2.0 / 3.0).abs() < 0.001, "{share:?}");
        assert_eq!(share[2], 0.0, "terminating while active ones are left");
    }
}

/// Imports `text`, which must be refused naming `field`, with nothing changed.
fn refused(g: &LabGuard, case: &str, text: &str, field: &str) {
    let (before, rev) = (list(g), revision(g));
    let o = sh(&[
        xylem(),
        "--lab",
        &g.name,
        "service",
        "import",
        &write(case, text),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{case} accepted:\n{text}");
    assert!(
        err.contains(field),
        "{case}: the error does not name {field}: {err}"
    );
    assert_eq!(list(g), before, "{case}: services unchanged");
    assert_eq!(revision(g), rev, "{case}: no new revision");
}

#[test]
fn services_import_list_refuse_bad_specs_delete_and_survive_a_restart() {
    require_root!();
    let g = LabGuard::up(&["--mode", "full"]);
    let rev0 = revision(&g);
    let rev: u64 = g
        .xylem(&["service", "import", &write("example", EXAMPLE)])
        .trim()
        .parse()
        .expect("service import prints the revision");
    assert!(rev > rev0, "{rev} after {rev0}");
    assert_eq!(revision(&g), rev);
    let l = list(&g);
    assert_eq!(l.as_array().unwrap().len(), 1, "{l}");
    assert_eq!(l[0]["name"], "web");
    check_example(&l[0]);
    let one: Value = xylem_api::Client::new(g.socket())
        .get("/v1/services/default/web")
        .unwrap();
    assert_eq!(shape(&one), shape(&l[0]));
    let table = g.xylem(&["service", "list"]);
    assert!(
        table.contains("default/web")
            && table.contains("10.96.0.10:80/TCP")
            && table.contains("10.200.0.13:8080")
            && table.contains("terminating"),
        "{table}"
    );

    // Bad specs, each rejected whole (a good document before the bad one is not imported).
    let good_first = |bad: &str| format!("{OTHER}---\n{bad}");
    let dup = EXAMPLE
        .split("---")
        .next()
        .unwrap()
        .replace("name: web\n", "name: web2\n");
    refused(&g, "dup", &good_first(&dup), "spec.ports[0].port");
    let ghost = "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: ghost-1
  labels: {kubernetes.io/service-name: ghost}
addressType: IPv4
ports: [{port: 80}]
endpoints: [{addresses: [10.200.0.11]}]
";
    refused(
        &g,
        "ghost",
        &good_first(ghost),
        "metadata.labels.kubernetes.io/service-name",
    );
    refused(
        &g,
        "unknown-field",
        &good_first(&OTHER.replace("clusterIP:", "externalIPs: [1.2.3.4]\n  clusterIP:")),
        "spec.externalIPs",
    );
    refused(
        &g,
        "protocol",
        &EXAMPLE.replace("protocol: TCP}]\n---", "protocol: SCTP}]\n---"),
        "spec.ports[0].protocol",
    );
    refused(
        &g,
        "port",
        &EXAMPLE.replace("port: 80,", "port: 70000,"),
        "spec.ports[0].port",
    );
    refused(
        &g,
        "weights",
        &EXAMPLE.replace(
            "\"10.200.0.12=2\"",
            "\"10.200.0.11=0,10.200.0.12=0,10.200.0.13=0\"",
        ),
        "lb.xylem.io/weights",
    );

    // Through the API: 422 with the field first, as every route answers; 404 for no service.
    let client = xylem_api::Client::new(g.socket());
    let rev = revision(&g);
    match client.import_services(&OTHER.replace("port: 53", "port: 0")) {
        Err(xylem_api::Error::Api { status, message }) => {
            assert_eq!(status, 422, "{message}");
            assert!(message.starts_with("spec.ports[0].port: "), "{message}");
        }
        other => panic!("a port 0 was not refused: {other:?}"),
    }
    match client.service("default", "nope") {
        Err(xylem_api::Error::Api { status, message }) => {
            assert_eq!(status, 404, "{message}");
            assert!(message.contains("no service default/nope"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(revision(&g), rev);

    // A second service, with ClientIP affinity and no backend yet.
    let affinity = OTHER.replace("spec:\n", "spec:\n  sessionAffinity: ClientIP\n");
    g.xylem(&["service", "import", &write("other", &affinity)]);
    let other = client.service("default", "other").unwrap();
    assert_eq!(other.session_affinity, "ClientIP");
    assert_eq!(other.affinity_timeout_s, Some(10_800));
    assert!(other.backends.is_empty());

    // Slices alone, for the service the agent holds: one replaces the held slice of its name,
    // another is added beside it.
    let slice = EXAMPLE.split("---\n").nth(1).unwrap().replace(
        "  - {addresses: [10.200.0.13], conditions: {ready: false, serving: true, terminating: true}}\n",
        "",
    );
    let second = slice
        .replace("web-abc12", "web-def34")
        .replace(
            "  - {addresses: [10.200.0.12], conditions: {ready: true}}\n",
            "",
        )
        .replace("10.200.0.11", "10.200.0.14");
    g.xylem(&[
        "service",
        "import",
        &write("slices", &format!("{slice}---\n{second}")),
    ]);
    let addrs = |v: &xylem_api::ServiceView| -> Vec<(String, u16)> {
        v.backends
            .iter()
            .map(|b| (b.ip.to_string(), b.weight))
            .collect()
    };
    let web = client.service("default", "web").unwrap();
    let want = |w12: u16| {
        vec![
            ("10.200.0.11".to_string(), 1),
            ("10.200.0.12".to_string(), w12),
            ("10.200.0.14".to_string(), 1),
        ]
    };
    assert_eq!(addrs(&web), want(2), "{web:?}");
    // The Service alone keeps its slices, joined again with its new weights.
    let service_only = EXAMPLE.split("---\n").next().unwrap().replace("=2", "=5");
    g.xylem(&["service", "import", &write("service-only", &service_only)]);
    let web = client.service("default", "web").unwrap();
    assert_eq!(addrs(&web), want(5), "{web:?}");
    // The Service with its slices: exactly those slices (web-def34 is gone).
    g.xylem(&["service", "import", &write("again", EXAMPLE)]);
    check_example(&serde_json::to_value(client.service("default", "web").unwrap()).unwrap());

    // Restored after a restart, before anything is imported again.
    let before = list(&g);
    g.kill_agent(libc::SIGTERM);
    g.start_agent(&[]).expect("restart");
    let after = list(&g);
    assert_eq!(shape(&after), shape(&before));
    assert_eq!(after.as_array().unwrap().len(), 2, "{after}");
    assert_eq!(after[0]["name"], "other", "sorted by namespace/name");
    check_example(&after[1]);

    // Delete, by NAME in `default`; then it is gone.
    let rev = revision(&g);
    let del: u64 = g
        .xylem(&["service", "delete", "web"])
        .trim()
        .parse()
        .unwrap();
    assert!(del > rev);
    let l = list(&g);
    assert_eq!(l.as_array().unwrap().len(), 1, "{l}");
    assert_eq!(l[0]["name"], "other");
    let o = sh(&[
        xylem(),
        "--lab",
        &g.name,
        "service",
        "delete",
        "default/web",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no service default/web"), "{err}");
}

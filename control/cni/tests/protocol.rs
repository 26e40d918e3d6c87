//! The CNI protocol driven directly, as a runtime drives it: environment variables, the
//! configuration on stdin, the result or error on stdout. Table-driven for the error paths;
//! against a real agent (a lab with no pods), real namespaces and the reference `host-local`
//! and `ptp` plugins for the rest.

mod common;

use std::process::Command;

use common::*;
use serde_json::{Value, json};

const NOT_THERE: &str = "/run/xylem/no-such-agent.sock";

fn minimal(version: &str, extra: &str) -> Vec<u8> {
    format!(
        r#"{{"cniVersion":"{version}","name":"xylem","type":"xylem-cni","agentSocket":"{NOT_THERE}"{extra}}}"#
    )
    .into_bytes()
}

#[test]
fn version_lists_the_versions_it_speaks_in_the_version_asked() {
    for asked in ["0.4.0", "1.0.0", "1.1.0"] {
        let out = run_cni(
            None,
            &[("CNI_COMMAND", "VERSION")],
            format!(r#"{{"cniVersion":"{asked}"}}"#).as_bytes(),
        )
        .expect_ok();
        assert_eq!(out["cniVersion"], asked);
        assert_eq!(out["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
    }
    // With nothing on stdin, the newest.
    let out = run_cni(None, &[("CNI_COMMAND", "VERSION")], b"").expect_ok();
    assert_eq!(out["cniVersion"], "1.1.0");
}

/// Every error path that needs no agent: the environment and the configuration, for each
/// command that reads them.
#[test]
fn bad_environment_and_configuration_get_the_specifications_codes() {
    let add = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> {
        let mut v = vec![
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/var/run/netns/none"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ];
        for (k, val) in extra {
            v.retain(|(n, _)| n != k);
            if !val.is_empty() {
                v.push((k, val));
            }
        }
        v
    };
    let ok_conf = minimal("1.0.0", "");
    struct Case {
        what: &'static str,
        env: Vec<(&'static str, &'static str)>,
        stdin: Vec<u8>,
        code: u64,
        names: &'static str,
    }
    let cases = vec![
        Case {
            what: "no command",
            env: add(&[("CNI_COMMAND", "")]),
            stdin: ok_conf.clone(),
            code: 4,
            names: "CNI_COMMAND",
        },
        Case {
            what: "unknown command",
            env: add(&[("CNI_COMMAND", "UPDATE")]),
            stdin: ok_conf.clone(),
            code: 4,
            names: "CNI_COMMAND",
        },
        Case {
            what: "ADD without container",
            env: add(&[("CNI_CONTAINERID", "")]),
            stdin: ok_conf.clone(),
            code: 4,
            names: "CNI_CONTAINERID",
        },
        Case {
            what: "ADD without netns",
            env: add(&[("CNI_NETNS", "")]),
            stdin: ok_conf.clone(),
            code: 4,
            names: "CNI_NETNS",
        },
        Case {
            what: "ADD without ifname",
            env: add(&[("CNI_IFNAME", "")]),
            stdin: ok_conf.clone(),
            code: 4,
            names: "CNI_IFNAME",
        },
        Case {
            what: "ADD without path",
            env: add(&[("CNI_PATH", "")]),
            stdin: ok_conf.clone(),
            code: 4,
            names: "CNI_PATH",
        },
        Case {
            what: "CHECK without netns",
            env: add(&[("CNI_COMMAND", "CHECK"), ("CNI_NETNS", "")]),
            stdin: ok_conf.clone(),
            code: 4,
            names: "CNI_NETNS",
        },
        Case {
            what: "DEL without container",
            env: add(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "")]),
            stdin: ok_conf.clone(),
            code: 4,
            names: "CNI_CONTAINERID",
        },
        Case {
            what: "bad container id",
            env: add(&[("CNI_CONTAINERID", "../etc")]),
            stdin: ok_conf.clone(),
            code: 4,
            names: "CNI_CONTAINERID",
        },
        Case {
            what: "ifname too long",
            env: add(&[("CNI_IFNAME", "eth0123456789012")]),
            stdin: ok_conf.clone(),
            code: 4,
            names: "CNI_IFNAME",
        },
        Case {
            what: "relative netns",
            env: add(&[("CNI_NETNS", "netns/x")]),
            stdin: ok_conf.clone(),
            code: 4,
            names: "CNI_NETNS",
        },
        Case {
            what: "bad CNI_ARGS",
            env: add(&[("CNI_ARGS", "K8S_POD_NAME")]),
            stdin: ok_conf.clone(),
            code: 4,
            names: "CNI_ARGS",
        },
        Case {
            what: "unknown CNI_ARGS key",
            env: add(&[("CNI_ARGS", "FOO=bar")]),
            stdin: ok_conf.clone(),
            code: 4,
            names: "FOO",
        },
        Case {
            what: "not JSON",
            env: add(&[]),
            stdin: b"{cniVersion".to_vec(),
            code: 6,
            names: "JSON",
        },
        Case {
            what: "empty stdin",
            env: add(&[]),
            stdin: Vec::new(),
            code: 6,
            names: "JSON",
        },
        Case {
            what: "old version",
            env: add(&[]),
            stdin: minimal("0.3.1", ""),
            code: 1,
            names: "0.3.1",
        },
        Case {
            what: "future version",
            env: add(&[]),
            stdin: minimal("2.0.0", ""),
            code: 1,
            names: "2.0.0",
        },
        Case {
            what: "version on DEL",
            env: add(&[("CNI_COMMAND", "DEL")]),
            stdin: minimal("0.2.0", ""),
            code: 1,
            names: "0.2.0",
        },
        Case {
            what: "version on STATUS",
            env: vec![("CNI_COMMAND", "STATUS")],
            stdin: minimal("9.9.9", ""),
            code: 1,
            names: "9.9.9",
        },
        Case {
            what: "unsupported field",
            env: add(&[]),
            stdin: minimal("1.0.0", r#","hairpinMode":true"#),
            code: 2,
            names: "hairpinMode",
        },
        Case {
            what: "unsupported capability",
            env: add(&[]),
            stdin: minimal("1.0.0", r#","runtimeConfig":{"portMappings":[]}"#),
            code: 2,
            names: "portMappings",
        },
        Case {
            what: "wrong type",
            env: add(&[]),
            stdin: br#"{"cniVersion":"1.0.0","name":"x","type":"bridge"}"#.to_vec(),
            code: 7,
            names: "type",
        },
        Case {
            what: "relative socket",
            env: add(&[]),
            stdin:
                br#"{"cniVersion":"1.0.0","name":"x","type":"xylem-cni","agentSocket":"x.sock"}"#
                    .to_vec(),
            code: 7,
            names: "agentSocket",
        },
        Case {
            what: "GC without the list",
            env: vec![("CNI_COMMAND", "GC")],
            stdin: minimal("1.1.0", ""),
            code: 7,
            names: "valid-attachments",
        },
        Case {
            what: "CHECK without prevResult",
            env: add(&[("CNI_COMMAND", "CHECK")]),
            stdin: minimal("1.0.0", ""),
            code: 7,
            names: "prevResult",
        },
        // The agent is not running: ADD is "try again later", STATUS "not available" (51:
        // the pods it served have no dataplane either).
        Case {
            what: "ADD with no agent",
            env: add(&[]),
            stdin: ok_conf.clone(),
            code: 11,
            names: "agent",
        },
        Case {
            what: "STATUS with no agent",
            env: vec![("CNI_COMMAND", "STATUS")],
            stdin: minimal("1.1.0", ""),
            code: 51,
            names: "agent",
        },
        Case {
            what: "GC with no agent",
            env: vec![("CNI_COMMAND", "GC")],
            stdin: minimal("1.1.0", r#","cni.dev/valid-attachments":[]"#),
            code: 11,
            names: "agent",
        },
    ];
    for c in cases {
        let run = run_cni(None, &c.env, &c.stdin);
        let json = run.expect_code(c.code);
        let text = json.to_string();
        assert!(
            text.contains(c.names),
            "{}: the error should name {}: {text}",
            c.what,
            c.names
        );
    }
}

/// ADD in each version the plugin speaks: the result's shape, the pod's addressing, traffic
/// through the dataplane, the endpoint with its CNI fields; then CHECK, DEL (twice, and with
/// the namespace gone), with nothing left.
#[test]
fn add_check_and_del_against_a_real_agent_in_every_version() {
    if !privileged("add_check_and_del_against_a_real_agent_in_every_version") {
        return;
    }
    let lab = Lab::up();
    let mut pods = Vec::new();
    for (i, version) in ["0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let ns = Netns::new();
        let container = format!("ctr-{i}");
        let conf = lab.conf(
            version,
            (200, 250),
            r#","args":{"cni":{"labels":[{"key":"app","value":"web"}]}}"#,
        );
        let path = ns.path().to_string();
        let out = run_cni(
            Some(lab.netns()),
            &attach_env("ADD", &container, &path, "eth0"),
            &conf,
        )
        .expect_ok();
        assert_eq!(out["cniVersion"], version);
        let ifs = out["interfaces"].as_array().unwrap();
        assert_eq!(ifs.len(), 2, "{out}");
        assert!(ifs[0]["name"].as_str().unwrap().starts_with("xyc"));
        assert!(ifs[0].get("sandbox").is_none());
        assert_eq!(ifs[1]["name"], "eth0");
        assert_eq!(ifs[1]["sandbox"], path.as_str());
        let ip = out["ips"][0]["address"].as_str().unwrap().to_string();
        assert!(ip.ends_with("/32"), "{out}");
        assert_eq!(out["ips"][0]["interface"], 1);
        assert_eq!(out["ips"][0]["gateway"], "10.200.0.1");
        assert_eq!(
            out["ips"][0].get("version").is_some(),
            version == "0.4.0",
            "ips[].version only before 1.0.0: {out}"
        );
        assert_eq!(
            out["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": "10.200.0.1"}])
        );
        assert!(out["dns"].is_object());
        // The pod as the lab addresses pods: /32, a link-scope route to the gateway.
        let addr =
            String::from_utf8_lossy(&ns.exec(&["ip", "-4", "-o", "addr", "show", "eth0"]).stdout)
                .into_owned();
        assert!(addr.contains(&format!("inet {ip}")), "{addr}");
        let routes = String::from_utf8_lossy(&ns.exec(&["ip", "route"]).stdout).into_owned();
        assert!(
            routes.contains("default via 10.200.0.1 dev eth0"),
            "{routes}"
        );
        assert!(
            routes.contains("10.200.0.1 dev eth0") && routes.contains("scope link"),
            "{routes}"
        );
        let offload =
            String::from_utf8_lossy(&ns.exec(&["ethtool", "-k", "eth0"]).stdout).into_owned();
        assert!(offload.contains("tx-checksumming: off"), "{offload}");
        // The gateway answers: the pod's frames reach the dataplane.
        assert!(ns.pings("10.200.0.1"), "the pod cannot reach the gateway");
        let ep = lab
            .endpoints()
            .into_iter()
            .find(|e| e["container_id"] == container.as_str())
            .unwrap_or_else(|| panic!("no endpoint for {container}"));
        assert_eq!(ep["namespace"], "default");
        assert_eq!(ep["name"], container.as_str());
        assert_eq!(ep["netns"], path.as_str());
        assert_eq!(ep["cni_ifname"], "eth0");
        assert_eq!(ep["interface"], ifs[0]["name"]);
        assert_eq!(ep["mac"], ifs[1]["mac"]);
        assert_eq!(ep["labels"]["app"], "web");
        // CHECK passes on what ADD made.
        let check = with_prev(&conf, &out);
        run_cni(
            Some(lab.netns()),
            &attach_env("CHECK", &container, &path, "eth0"),
            &check,
        )
        .expect_ok();
        pods.push((ns, container, conf, out));
    }
    // Pods reach each other through the dataplane.
    let ip1 = pods[1].3["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(pods[0].0.pings(&ip1), "pod 0 cannot reach pod 1 at {ip1}");
    let forwarded = lab.status()["totals"]["forwarded"].as_u64().unwrap_or(0);
    assert!(forwarded > 0, "the agent forwarded nothing");

    // CHECK finds what is broken: a route removed in the pod, an endpoint removed in the agent.
    let (ns, container, conf, out) = &pods[0];
    ns.exec(&["ip", "route", "del", "default"]);
    let check = with_prev(conf, out);
    let e = run_cni(
        Some(lab.netns()),
        &attach_env("CHECK", container, ns.path(), "eth0"),
        &check,
    )
    .expect_code(5);
    assert!(e.to_string().contains("default route"), "{e}");
    let (ns2, container2, conf2, out2) = &pods[1];
    lab.xylem(&["endpoint", "delete", &format!("default/{container2}")]);
    let e = run_cni(
        Some(lab.netns()),
        &attach_env("CHECK", container2, ns2.path(), "eth0"),
        &with_prev(conf2, out2),
    )
    .expect_code(5);
    assert!(e.to_string().contains("no endpoint"), "{e}");

    // DEL: twice each; for the last pod, after its namespace is gone.
    let (ns3, container3, conf3, out3) = pods.pop().unwrap();
    let path3 = ns3.path().to_string();
    drop(ns3);
    for _ in 0..2 {
        run_cni(
            Some(lab.netns()),
            &attach_env("DEL", &container3, "", "eth0"),
            &with_prev(&conf3, &out3),
        )
        .expect_ok();
    }
    let _ = path3;
    for (ns, container, conf, out) in &pods {
        for _ in 0..2 {
            run_cni(
                Some(lab.netns()),
                &attach_env("DEL", container, ns.path(), "eth0"),
                &with_prev(conf, out),
            )
            .expect_ok();
        }
        let links = String::from_utf8_lossy(&ns.exec(&["ip", "-o", "link"]).stdout).into_owned();
        assert!(!links.contains("eth0"), "the pod's end is left: {links}");
    }
    assert!(
        lab.endpoints().is_empty(),
        "endpoints left: {:?}",
        lab.endpoints()
    );
    assert!(
        lab.cni_links().is_empty(),
        "links left: {:?}",
        lab.cni_links()
    );
    assert!(lab.leased().is_empty(), "leases left: {:?}", lab.leased());
    let ports: Vec<Value> = lab.status()["ports"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        ports
            .iter()
            .all(|p| !p["ifname"].as_str().unwrap_or("").starts_with("xyc")),
        "ports left: {ports:?}"
    );
}

/// A failed ADD leaves nothing: IPAM exhausted, an address outside the node's pod CIDR, the
/// agent refusing the endpoint, the agent gone.
#[test]
fn a_failed_add_rolls_back_everything_it_made() {
    if !privileged("a_failed_add_rolls_back_everything_it_made") {
        return;
    }
    let lab = Lab::up();
    // A range of one address: the first ADD takes it, the second finds none.
    let conf = lab.conf("1.0.0", (230, 230), "");
    let a = Netns::new();
    run_cni(
        Some(lab.netns()),
        &attach_env("ADD", "full-a", a.path(), "eth0"),
        &conf,
    )
    .expect_ok();
    let b = Netns::new();
    let e = run_cni(
        Some(lab.netns()),
        &attach_env("ADD", "full-b", b.path(), "eth0"),
        &conf,
    );
    assert!(
        e.code().is_some_and(|c| c != 0),
        "ADD into a full range succeeded: {e:?}"
    );
    assert!(
        e.json["msg"].as_str().unwrap_or("").contains("IPAM"),
        "{}",
        e.json
    );
    assert_eq!(lab.cni_links().len(), 1, "{:?}", lab.cni_links());

    // An IPAM range outside the node's pod CIDR: refused before any link, lease released.
    let outside = String::from_utf8(lab.conf("1.0.0", (10, 20), ""))
        .unwrap()
        .replace("10.200.0.", "10.201.0.");
    let e = run_cni(
        Some(lab.netns()),
        &attach_env("ADD", "outside", b.path(), "eth0"),
        outside.as_bytes(),
    )
    .expect_code(7);
    assert!(e.to_string().contains("pod CIDR"), "{e}");
    assert_eq!(lab.cni_links().len(), 1);
    assert_eq!(
        lab.leased(),
        ["10.200.0.230"],
        "the outside lease was not released"
    );

    // The agent refuses the endpoint (its IP is taken by another endpoint): the veth and the
    // lease made for it are undone.
    let taken = String::from_utf8(lab.conf("1.0.0", (231, 231), "")).unwrap();
    let c = Netns::new();
    let first = run_cni(
        Some(lab.netns()),
        &attach_env("ADD", "taken-1", c.path(), "eth0"),
        taken.as_bytes(),
    )
    .expect_ok();
    let other_leases = lab.dir().join("other");
    let taken_again = taken.replace(
        lab.leases().to_str().unwrap(),
        other_leases.to_str().unwrap(),
    );
    let d = Netns::new();
    let e = run_cni(
        Some(lab.netns()),
        &attach_env("ADD", "taken-2", d.path(), "eth0"),
        taken_again.as_bytes(),
    )
    .expect_code(100);
    assert!(e.to_string().contains("10.200.0.231"), "{e}");
    assert_eq!(lab.cni_links().len(), 2, "{:?}", lab.cni_links());
    let other_left = std::fs::read_dir(other_leases.join("xylem"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(other_left, 0, "the refused ADD's lease is left");
    let d_links = String::from_utf8_lossy(&d.exec(&["ip", "-o", "link"]).stdout).into_owned();
    assert!(!d_links.contains("eth0"), "{d_links}");
    let _ = first;

    // The agent is gone: "try again later", and nothing is made.
    let conf2 = lab.conf("1.0.0", (240, 245), "");
    assert!(signal(lab.agent_pid(), "KILL"), "the agent was not running");
    let e = run_cni(
        Some(lab.netns()),
        &attach_env("ADD", "no-agent", d.path(), "eth0"),
        &conf2,
    )
    .expect_code(11);
    assert!(e.to_string().contains("agent"), "{e}");
    assert_eq!(lab.cni_links().len(), 2);
    assert!(
        !lab.leased().iter().any(|l| l.starts_with("10.200.0.24")),
        "{:?}",
        lab.leased()
    );
    // STATUS says so, with 51: the pods it served have no dataplane either.
    run_cni(Some(lab.netns()), &[("CNI_COMMAND", "STATUS")], &conf2).expect_code(51);
}

/// GC removes the attachments the runtime no longer lists, and a veth an ADD left behind.
#[test]
fn gc_removes_what_is_not_listed_and_keeps_what_is() {
    if !privileged("gc_removes_what_is_not_listed_and_keeps_what_is") {
        return;
    }
    let lab = Lab::up();
    let conf = lab.conf("1.1.0", (200, 250), "");
    let keep = Netns::new();
    let drop_me = Netns::new();
    run_cni(
        Some(lab.netns()),
        &attach_env("ADD", "keep", keep.path(), "eth0"),
        &conf,
    )
    .expect_ok();
    run_cni(
        Some(lab.netns()),
        &attach_env("ADD", "gone", drop_me.path(), "eth0"),
        &conf,
    )
    .expect_ok();
    // A veth of the plugin's that no endpoint owns, as an ADD killed halfway leaves.
    ok(Command::new("ip").args([
        "-n",
        lab.netns(),
        "link",
        "add",
        "xyc0123456789ab",
        "type",
        "veth",
        "peer",
        "name",
        "xyo0123456789ab",
    ]));
    assert_eq!(lab.cni_links().len(), 3);
    assert_eq!(lab.leased().len(), 2);
    // STATUS: ready.
    run_cni(
        Some(lab.netns()),
        &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/usr/lib/cni")],
        &conf,
    )
    .expect_ok();
    let mut gc: Value = serde_json::from_slice(&conf).unwrap();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    run_cni(
        Some(lab.netns()),
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
        &serde_json::to_vec(&gc).unwrap(),
    )
    .expect_ok();
    let eps: Vec<String> = lab
        .endpoints()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(eps, ["keep"]);
    assert_eq!(lab.cni_links().len(), 1, "{:?}", lab.cni_links());
    assert_eq!(
        lab.leased().len(),
        1,
        "the GC'd attachment's lease is left: {:?}",
        lab.leased()
    );
    assert!(
        keep.pings("10.200.0.1"),
        "GC broke the attachment it should keep"
    );
}

/// Chained after the reference `ptp` plugin: ptp makes the veth and assigns the address,
/// xylem-cni adopts the node's end, routes the pod through the Xylem gateway, and passes the
/// result on; DEL in reverse order leaves nothing.
#[test]
fn chained_after_ptp_it_adopts_the_veth_and_passes_the_result_on() {
    if !privileged("chained_after_ptp_it_adopts_the_veth_and_passes_the_result_on") {
        return;
    }
    let lab = Lab::up();
    let ptp = |leases: &str| {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"chain","type":"ptp",
                "ipam":{{"type":"host-local","dataDir":"{leases}",
                  "ranges":[[{{"subnet":"10.200.0.0/24","rangeStart":"10.200.0.200","rangeEnd":"10.200.0.210","gateway":"10.200.0.1"}}]]}}}}"#
        )
    };
    let leases = lab.dir().join("ptp");
    let ptp_conf = ptp(leases.to_str().unwrap());
    let xylem_conf = |prev: &Value| {
        serde_json::to_vec(&json!({
            "cniVersion": "1.0.0", "name": "chain", "type": "xylem-cni",
            "agentSocket": lab.api_socket(),
            "args": {"cni": {"labels": [{"key": "app", "value": "chained"}]}},
            "prevResult": prev,
        }))
        .unwrap()
    };
    let mut pods = Vec::new();
    for i in 0..2 {
        let ns = Netns::new();
        let container = format!("chain-{i}");
        let path = ns.path().to_string();
        let env = attach_env("ADD", &container, &path, "eth0");
        let prev = run_cni_plugin(lab.netns(), "ptp", &env, ptp_conf.as_bytes());
        let out = run_cni(Some(lab.netns()), &env, &xylem_conf(&prev)).expect_ok();
        // The result passed on: ptp's interfaces, the pod's address as a /32 behind the Xylem
        // gateway.
        assert_eq!(out["interfaces"], prev["interfaces"], "{out}");
        assert_eq!(
            out["ips"][0]["address"].as_str().unwrap(),
            prev["ips"][0]["address"]
                .as_str()
                .unwrap()
                .replace("/24", "/32")
        );
        assert_eq!(
            out["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": "10.200.0.1"}])
        );
        let host_if = prev["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i.get("sandbox").is_none())
            .unwrap()["name"]
            .clone();
        let ep = lab
            .endpoints()
            .into_iter()
            .find(|e| e["container_id"] == container.as_str())
            .unwrap();
        assert_eq!(
            ep["interface"], host_if,
            "the endpoint is not on ptp's veth"
        );
        assert_eq!(ep["labels"]["app"], "chained");
        pods.push((ns, container, out));
    }
    let ip1 = pods[1].2["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let before = lab.status()["totals"]["forwarded"].as_u64().unwrap_or(0);
    assert!(
        pods[0].0.pings(&ip1),
        "chained pods cannot reach each other"
    );
    assert!(
        lab.status()["totals"]["forwarded"].as_u64().unwrap_or(0) > before,
        "not through the dataplane"
    );
    for (ns, container, out) in &pods {
        let env = attach_env("DEL", container, ns.path(), "eth0");
        let mut conf: Value = serde_json::from_slice(&xylem_conf(out)).unwrap();
        conf["prevResult"] = out.clone();
        run_cni(Some(lab.netns()), &env, &serde_json::to_vec(&conf).unwrap()).expect_ok();
        run_cni_plugin(lab.netns(), "ptp", &env, ptp_conf.as_bytes());
    }
    assert!(lab.endpoints().is_empty(), "{:?}", lab.endpoints());
    let rules = ok(Command::new("ip").args([
        "netns",
        "exec",
        lab.netns(),
        "iptables",
        "-w",
        "-t",
        "raw",
        "-S",
        "PREROUTING",
    ]));
    assert!(
        !rules.contains("veth"),
        "the adopted links' rules are left: {rules}"
    );
}

/// Runs a reference plugin from /usr/lib/cni in `netns`; its JSON answer (it must succeed).
fn run_cni_plugin(netns: &str, plugin: &str, env: &[(&str, &str)], stdin: &[u8]) -> Value {
    use std::io::Write as _;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", netns, &format!("/usr/lib/cni/{plugin}")])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{plugin} failed: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// The pod's name comes from CNI_ARGS when the runtime gives it, else from the container id,
/// fitted to the agent's name rules.
#[test]
fn the_endpoint_is_named_after_the_pod_or_the_container() {
    if !privileged("the_endpoint_is_named_after_the_pod_or_the_container") {
        return;
    }
    let lab = Lab::up();
    let log = lab.dir().join("xylem-cni.log");
    let conf = lab.conf(
        "1.0.0",
        (200, 250),
        &format!(r#","logFile":"{}""#, log.display()),
    );
    let a = Netns::new();
    let mut env = attach_env("ADD", "k8s-sandbox-1", a.path(), "eth0");
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_UID=u";
    env.push(("CNI_ARGS", args));
    run_cni(Some(lab.netns()), &env, &conf).expect_ok();
    let b = Netns::new();
    let long_id = "0123456789abcdef".repeat(4);
    run_cni(
        Some(lab.netns()),
        &attach_env("ADD", &long_id, b.path(), "eth0"),
        &conf,
    )
    .expect_ok();
    let eps = lab.endpoints();
    let names: Vec<(String, String)> = eps
        .iter()
        .map(|e| {
            (
                e["namespace"].as_str().unwrap().into(),
                e["name"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        names.contains(&("shop".into(), "web-0".into())),
        "{names:?}"
    );
    let derived = names.iter().find(|(ns, _)| ns == "default").unwrap();
    assert!(derived.1.len() <= 63, "{derived:?}");
    let del_env = {
        let mut e = attach_env("DEL", "k8s-sandbox-1", a.path(), "eth0");
        e.push(("CNI_ARGS", args));
        e
    };
    run_cni(Some(lab.netns()), &del_env, &conf).expect_ok();
    run_cni(
        Some(lab.netns()),
        &attach_env("DEL", &long_id, b.path(), "eth0"),
        &conf,
    )
    .expect_ok();
    assert!(lab.endpoints().is_empty());
    // The plugin's own log: one line per command, each ADD with its steps in order.
    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let commands: Vec<&str> = lines
        .iter()
        .map(|l| l["command"].as_str().unwrap())
        .collect();
    assert_eq!(commands, ["ADD", "ADD", "DEL", "DEL"]);
    let steps: Vec<&str> = (lines[0]["steps_ms"].as_array().unwrap().iter())
        .map(|s| s[0].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "lock",
            "agent_status",
            "ipam_version",
            "ipam_add",
            "veth",
            "pod_addressing",
            "node_port",
            "agent_endpoint"
        ]
    );
    assert!(
        lines
            .iter()
            .all(|l| l["code"].is_null() && l["total_ms"].as_f64().unwrap() > 0.0)
    );
}

/// The drop counters of the lab's agent, by reason.
fn drops(lab: &Lab) -> std::collections::BTreeMap<String, u64> {
    serde_json::from_value(lab.status()["totals"]["drops"].clone()).unwrap()
}

/// A pod set up by the plugin is only itself: its identity is the port its frames arrive on,
/// with the address and MAC the plugin registered. Sending from another pod's address, or with
/// another MAC, from inside the pod gets nothing through, and each is counted.
#[test]
fn a_cni_pod_that_forges_its_source_is_dropped() {
    if !privileged("a_cni_pod_that_forges_its_source_is_dropped") {
        return;
    }
    let lab = Lab::up();
    let conf = lab.conf("1.0.0", (200, 250), "");
    let (a, b) = (Netns::new(), Netns::new());
    let out_a = run_cni(
        Some(lab.netns()),
        &attach_env("ADD", "honest", a.path(), "eth0"),
        &conf,
    )
    .expect_ok();
    let out_b = run_cni(
        Some(lab.netns()),
        &attach_env("ADD", "forger", b.path(), "eth0"),
        &conf,
    )
    .expect_ok();
    let ip = |out: &Value| {
        out["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string()
    };
    let (ip_a, ip_b) = (ip(&out_a), ip(&out_b));
    assert!(b.pings(&ip_a), "the honest path does not work");
    // pod b claims pod a's address: its pings to the gateway from that source go nowhere.
    let before = drops(&lab);
    b.exec(&["ip", "addr", "add", &format!("{ip_a}/32"), "dev", "eth0"]);
    let forged = b.exec(&["ping", "-c3", "-i0.2", "-W1", "-I", &ip_a, "10.200.0.1"]);
    assert!(
        !forged.status.success(),
        "a ping from another pod's address was answered"
    );
    let after = drops(&lab);
    assert!(
        after["invalid-source-ip"] >= before["invalid-source-ip"] + 3,
        "invalid-source-ip did not count the forged pings: {before:?} -> {after:?}"
    );
    b.exec(&["ip", "addr", "del", &format!("{ip_a}/32"), "dev", "eth0"]);
    // pod b changes its MAC: its own address no longer gets through either.
    let before = drops(&lab);
    b.exec(&["ip", "link", "set", "eth0", "address", "02:de:ad:be:ef:01"]);
    // Its ARP from the new MAC is refused (`arp-spoofed`), so the gateway's MAC is set by hand
    // for its IPv4 to leave at all.
    let gw_mac = lab.status()["network"]["gateway_mac"]
        .as_str()
        .unwrap()
        .to_string();
    b.exec(&[
        "ip",
        "neigh",
        "replace",
        "10.200.0.1",
        "lladdr",
        &gw_mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    let forged = b.exec(&["ping", "-c3", "-i0.2", "-W1", "-I", &ip_b, "10.200.0.1"]);
    assert!(
        !forged.status.success(),
        "a ping with another MAC was answered"
    );
    let after = drops(&lab);
    assert!(
        after["invalid-source-mac"] >= before["invalid-source-mac"] + 3,
        "invalid-source-mac did not count the forged frames: {before:?} -> {after:?}"
    );
}

//! Privileged end-to-end test of a multi-node lab: two nodes, each a namespace with its own
//! agent, their uplinks on an underlay bridge with a world namespace behind it.
//!
//! The lab runs under a unique name behind [`LabGuard`], which brings it down even if the test
//! panics. It needs root; without it it prints why and skips. The lab's structure is checked
//! here; the traffic it carries between nodes and to the world, in `lab_underlay.rs`.

use serde_json::Value;

#[macro_use]
mod common;
use common::*;

/// Two nodes, `node1` with pods `a1` and `a2`, `node2` with `b1` and `b2`; `header` goes
/// first (an `encryption:` section, say).
fn two_nodes(header: &str) -> TempFile {
    TempFile::new(
        "lab.yaml",
        &(header.to_string()
            + "nodes:\n\
             \x20 - name: node1\n    pods: [{name: a1}, {name: a2}]\n\
             \x20 - name: node2\n    pods: [{name: b1}, {name: b2}]\n"),
    )
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

#[test]
fn two_nodes_share_an_underlay_with_the_world() {
    require_root!();
    let file = two_nodes("");
    // The first node is called node1, so a failing `lab up` shows its agent's log.
    let lab = LabGuard::up(&["-f", file.path()]);
    let prefix = lab.prefix();
    let st = lab.status();

    // Status: the nodes with their underlay addresses and uplinks, and the underlay and world.
    let nodes = st["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2, "{st}");
    for (i, (name, cidr)) in [("node1", "10.200.0.0/24"), ("node2", "10.200.1.0/24")]
        .into_iter()
        .enumerate()
    {
        let n = &nodes[i];
        assert_eq!(n["name"], name, "{n}");
        assert_eq!(n["netns"], format!("{prefix}{name}"), "{n}");
        assert_eq!(n["pod_cidr"], cidr, "{n}");
        assert_eq!(n["node_ip"], format!("10.199.0.{}", 11 + i), "{n}");
        assert_eq!(n["underlay_if"], "xyup", "{n}");
        assert_eq!(n["agent_running"], true, "{n}");
        for key in [
            "gateway",
            "host_ip",
            "agent_config",
            "agent_log",
            "agent_pid",
        ] {
            assert!(!n[key].is_null(), "{key} missing in {n}");
        }
    }
    let sockets: Vec<&str> = nodes
        .iter()
        .map(|n| str_of(&n["api_socket"], "api_socket"))
        .collect();
    assert_ne!(sockets[0], sockets[1], "each node has its own API socket");
    let underlay = str_of(&st["underlay"]["netns"], "underlay.netns");
    assert_eq!(underlay, format!("{prefix}underlay"));
    assert_eq!(st["underlay"]["bridge"], "xybr0", "{st}");
    let world = str_of(&st["world"]["netns"], "world.netns");
    assert_eq!(world, format!("{prefix}world"));
    assert_eq!(st["world"]["ip"], "10.199.0.100", "{st}");
    let pods = st["pods"].as_array().expect("pods");
    assert_eq!(pods.len(), 4, "{st}");
    for p in pods {
        let want_node = if str_of(&p["name"], "name").starts_with('a') {
            "node1"
        } else {
            "node2"
        };
        assert_eq!(p["node"], want_node, "{p}");
        let ip = str_of(&p["ip"], "ip");
        let cidr_prefix = if want_node == "node1" {
            "10.200.0."
        } else {
            "10.200.1."
        };
        assert!(ip.starts_with(cidr_prefix), "{p}");
        for key in ["namespace", "labels", "netns", "interface"] {
            assert!(!p[key].is_null(), "{key} missing in {p}");
        }
    }

    // The uplinks and the world are ports of the bridge.
    let links: Value =
        serde_json::from_str(&ok(&["ip", "-n", underlay, "-j", "link", "show"])).unwrap();
    let enslaved: Vec<&str> = links
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["master"] == "xybr0")
        .map(|l| str_of(&l["ifname"], "ifname"))
        .collect();
    assert_eq!(enslaved.len(), 3, "two uplinks and the world: {links}");
    // Each uplink's peer is a bridge port, and has the MAC the lab gives it.
    for (i, n) in nodes.iter().enumerate() {
        let ns = str_of(&n["netns"], "netns");
        let up: Value =
            serde_json::from_str(&ok(&["ip", "-n", ns, "-j", "link", "show", "xyup"])).unwrap();
        assert_eq!(
            up[0]["address"],
            format!("0e:78:79:75:00:{:02x}", i + 1),
            "{up}"
        );
        let peer = up[0]["link_index"].as_u64().expect("xyup is a veth");
        assert!(
            links
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["ifindex"].as_u64() == Some(peer) && l["master"] == "xybr0"),
            "the peer of {ns}'s xyup is not on the bridge: {links}"
        );
    }

    // Each node's agent answers on its own socket.
    for sock in &sockets {
        let out = ok(&[xylem(), "--socket", sock, "status", "-o", "json"]);
        let status: Value = serde_json::from_str(&out).unwrap();
        assert!(status.is_object(), "{out}");
    }

    // The world answers on the underlay, kernel to kernel (not through a dataplane).
    assert!(
        ping(underlay, "10.199.0.100".parse().unwrap(), 2),
        "the underlay namespace cannot ping the world"
    );

    // The world serves netperf and TCP and UDP echo.
    let listening = ok(&["ip", "netns", "exec", world, "ss", "-Hlntu"]);
    for port in [":12865 ", &format!(":{} ", xylem_lab::WORLD_ECHO_PORT)] {
        assert!(listening.contains(port), "nothing on {port} in {listening}");
    }

    // lab down removes every namespace, the underlay and the world included.
    let o = lab.down();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(lab_namespaces(&prefix), Vec::<String>::new());
}

/// With encryption, every agent gets the key file and every pod veth leaves room for the ESP
/// tunnel's headers.
#[test]
fn an_encrypted_lab_gives_every_agent_the_key_and_shrinks_pod_mtus() {
    require_root!();
    let key = TempFile::new(
        "keys",
        "3 rfc4106(gcm(aes)) 0123456789abcdef0123456789abcdef01234567 128\n",
    );
    let file = two_nodes(&format!("encryption: {{key_file: {}}}\n", key.path()));
    let lab = LabGuard::up(&["-f", file.path()]);
    let st = lab.status();
    for n in st["nodes"].as_array().unwrap() {
        let cfg = std::fs::read_to_string(str_of(&n["agent_config"], "agent_config")).unwrap();
        assert!(cfg.contains(key.path()), "no key file in {cfg}");
        let sock = str_of(&n["api_socket"], "api_socket");
        ok(&[xylem(), "--socket", sock, "status"]);
    }
    let want = xylem_lab::ENCRYPTED_POD_MTU.to_string();
    for p in st["pods"].as_array().unwrap() {
        let netns = str_of(&p["netns"], "netns");
        let mtu = ok(&[
            "ip",
            "netns",
            "exec",
            netns,
            "cat",
            "/sys/class/net/eth0/mtu",
        ]);
        assert_eq!(mtu.trim(), want, "{p}");
    }
}

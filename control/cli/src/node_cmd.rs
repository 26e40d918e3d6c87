//! `xylem node` and `xylem encrypt`: the cluster's nodes as the agent knows them, and the
//! state of the encryption between them (keys, peers, ESP errors).

use std::net::Ipv4Addr;

use crate::error::Error;
use crate::output::{Format, format_table as table, print_json, print_table};
use crate::{Cli, socket};
use xylem_api::config::Ipv4Cidr;
use xylem_api::{Client, EncryptionStatus, NodeRequest, NodeView};

/// `--encryption on|off`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnOff {
    /// Encrypt traffic with the node.
    On,
    /// Send it in clear.
    Off,
}

/// `xylem node list`: one row per node; `-o json` prints the agent's array as it is.
pub(crate) fn list(cli: &Cli, output: Format) -> Result<(), Error> {
    let client = Client::new(socket(cli)?);
    if output == Format::Json {
        let v: serde_json::Value = client.get("/v1/nodes")?;
        print_json(&v);
        return Ok(());
    }
    print_table(
        &["NAME", "NODE-IP", "POD-CIDR", "ENCRYPTION", "MAC", "SOURCE"],
        &node_rows(&client.nodes()?),
    );
    Ok(())
}

fn node_rows(nodes: &[NodeView]) -> Vec<Vec<String>> {
    nodes
        .iter()
        .map(|n| {
            let source = match n.source {
                xylem_api::NodeSource::Config => "config",
                xylem_api::NodeSource::Api => "api",
            };
            vec![
                if n.local {
                    format!("{} (this node)", n.name)
                } else {
                    n.name.clone()
                },
                n.node_ip.to_string(),
                n.pod_cidr.to_string(),
                if n.local {
                    "-".into()
                } else if n.encryption {
                    "on".into()
                } else {
                    "off".into()
                },
                match (&n.mac, n.local) {
                    (_, true) => "-".into(),
                    (Some(m), _) => m.clone(),
                    (None, _) => "(unresolved)".into(),
                },
                source.into(),
            ]
        })
        .collect()
}

/// `xylem node put NAME --node-ip IP --pod-cidr CIDR [--encryption on|off]`.
pub(crate) fn put(
    cli: &Cli,
    name: &str,
    node_ip: Ipv4Addr,
    pod_cidr: Ipv4Cidr,
    encryption: Option<OnOff>,
) -> Result<(), Error> {
    let req = NodeRequest {
        node_ip,
        pod_cidr,
        encryption: encryption.map(|e| e == OnOff::On),
    };
    let n = Client::new(socket(cli)?).put_node(name, &req)?;
    println!(
        "node {} set: {} pods {}, encryption {}",
        n.name,
        n.node_ip,
        n.pod_cidr,
        if n.encryption { "on" } else { "off" }
    );
    Ok(())
}

/// `xylem node delete NAME`.
pub(crate) fn delete(cli: &Cli, name: &str) -> Result<(), Error> {
    Client::new(socket(cli)?).delete_node(name)?;
    println!("node {name} deleted");
    Ok(())
}

/// `xylem encrypt status`: mode, key file, keys, peers and the ESP errors that are not zero.
pub(crate) fn status(cli: &Cli, output: Format) -> Result<(), Error> {
    let client = Client::new(socket(cli)?);
    if output == Format::Json {
        let v: serde_json::Value = client.get("/v1/encryption")?;
        print_json(&v);
        return Ok(());
    }
    print!("{}", render(&client.encryption()?));
    Ok(())
}

/// The human form of `encrypt status`.
fn render(s: &EncryptionStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "mode: {}", s.mode);
    if let Some(f) = &s.key_file {
        let _ = writeln!(out, "key file: {f}");
    }
    if s.mode != xylem_api::ENCRYPTION_DISABLED {
        let _ = writeln!(
            out,
            "current key: {}",
            s.current_key_id
                .map_or("none (encrypted traffic is dropped: no-key)".into(), |k| k
                    .to_string())
        );
    }
    if let Some(e) = &s.last_error {
        let _ = writeln!(out, "error: {e}");
    }
    if !s.keys.is_empty() {
        let rows: Vec<Vec<String>> = s
            .keys
            .iter()
            .map(|k| {
                vec![
                    k.id.to_string(),
                    format!("{:#x}", k.spi),
                    k.algorithm.clone(),
                    k.state.clone(),
                    k.expires_in_s.map_or("-".into(), |s| format!("{s} s")),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(
            &["KEY", "SPI", "ALGORITHM", "STATE", "EXPIRES-IN"],
            &rows,
        ));
    }
    if !s.peers.is_empty() {
        let rows: Vec<Vec<String>> = s
            .peers
            .iter()
            .map(|p| {
                vec![
                    p.node.clone(),
                    p.node_ip.map_or("-".into(), |ip| ip.to_string()),
                    p.tx_packets.to_string(),
                    p.tx_bytes.to_string(),
                    p.rx_packets.to_string(),
                    p.rx_bytes.to_string(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(
            &[
                "PEER", "NODE-IP", "TX-PKTS", "TX-BYTES", "RX-PKTS", "RX-BYTES",
            ],
            &rows,
        ));
    }
    let errors: Vec<String> = s
        .errors
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| format!("  {r}: {n}"))
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(out, "\nerrors:\n{}", errors.join("\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use xylem_api::{EncryptionKeyView, EncryptionPeerView};

    #[test]
    fn the_human_status_shows_keys_peers_and_only_the_errors_that_happened() {
        let s = EncryptionStatus {
            mode: "ipsec".into(),
            key_file: Some("/etc/xylem/keys".into()),
            current_key_id: Some(2),
            keys: vec![
                EncryptionKeyView {
                    id: 2,
                    spi: 2,
                    state: "current".into(),
                    algorithm: "AES-128-GCM".into(),
                    expires_in_s: None,
                },
                EncryptionKeyView {
                    id: 1,
                    spi: 1,
                    state: "grace".into(),
                    algorithm: "AES-128-GCM".into(),
                    expires_in_s: Some(290),
                },
            ],
            peers: vec![EncryptionPeerView {
                node: "node2".into(),
                node_ip: Some([10, 199, 0, 12].into()),
                tx_packets: 5,
                ..Default::default()
            }],
            errors: [("esp-replay".to_string(), 3), ("no-key".to_string(), 0)].into(),
            last_error: None,
        };
        let out = render(&s);
        for want in [
            "mode: ipsec",
            "key file: /etc/xylem/keys",
            "current key: 2",
            "grace",
            "290 s",
            "node2",
            "esp-replay: 3",
        ] {
            assert!(out.contains(want), "{want}:\n{out}");
        }
        assert!(!out.contains("no-key"), "{out}");
    }

    #[test]
    fn a_node_without_a_mac_says_unresolved() {
        let rows = node_rows(&[NodeView {
            name: "node2".into(),
            node_ip: [10, 199, 0, 12].into(),
            pod_cidr: "10.200.1.0/24".parse().unwrap(),
            encryption: true,
            mac: None,
            local: false,
            source: xylem_api::NodeSource::Api,
        }]);
        assert_eq!(rows[0][3], "on");
        assert_eq!(rows[0][4], "(unresolved)");
        assert_eq!(rows[0][5], "api");
    }
}

//! The agent's `nodes` and `encryption` sections: the other nodes of the cluster (where their
//! pods are and whether traffic to them is encrypted), and the key file ESP takes its keys
//! from.
//!
//! Checked here, without touching the system: names, addresses and CIDRs that could not route
//! (overlaps, the node's own entry disagreeing with its own configuration), and encryption asked
//! of a node while no key file is configured. Whether the key file exists and parses is the
//! agent's to check at start, as it watches the file.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{AgentConfig, Ipv4Cidr, PortKind};
use crate::Error;

/// One node of the cluster, as the configuration lists it (the API's node requests carry the
/// same fields).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's name (an RFC 1123 label, as a Kubernetes node name).
    pub name: String,
    /// The node's address on the underlay: where its uplink receives.
    pub node_ip: Ipv4Addr,
    /// The node's pod CIDR: traffic to it goes over the uplink to `node_ip`.
    pub pod_cidr: Ipv4Cidr,
    /// Whether traffic to and from this node is ESP-encrypted. Absent: on exactly when the
    /// agent has an `encryption` section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<bool>,
}

impl NodeConfig {
    /// Whether traffic with this node is encrypted, given whether the agent has keys.
    pub fn encrypted(&self, agent_encrypts: bool) -> bool {
        self.encryption.unwrap_or(agent_encrypts)
    }
}

/// The default grace period of a rotated-out key, in seconds: five minutes, as Cilium's.
pub const DEFAULT_GRACE_PERIOD_S: u64 = 300;

/// Transparent encryption between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// The key file, in Cilium's format (`KEYID rfc4106(gcm(aes)) HEXKEY 128` per line). The
    /// agent watches it: a new key id is used for sending within seconds.
    pub key_file: PathBuf,
    /// Seconds a key that left the file (or was superseded) is still accepted on receipt.
    #[serde(default = "default_grace")]
    pub grace_period_s: u64,
}

fn default_grace() -> u64 {
    DEFAULT_GRACE_PERIOD_S
}

/// Checks a node name: an RFC 1123 label of 1 to 63 characters.
pub fn check_node_name(field: &str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::config(
            field,
            format!(
                "{name:?} is not a node name: use 1 to 63 lowercase letters, digits and '-', \
                 starting and ending with a letter or digit"
            ),
        ))
    }
}

/// Whether two prefixes share an address.
pub fn overlaps(a: &Ipv4Cidr, b: &Ipv4Cidr) -> bool {
    let len = a.len.min(b.len);
    let shorter = Ipv4Cidr { addr: a.addr, len };
    shorter.contains(b.addr)
}

impl AgentConfig {
    /// The uplink port's configuration, if there is one.
    pub fn uplink(&self) -> Option<&super::PortConfig> {
        self.ports.iter().find(|p| p.kind == PortKind::Uplink)
    }

    /// The other nodes (this node's own entry, if listed, left out).
    pub fn peers(&self) -> impl Iterator<Item = &NodeConfig> {
        self.nodes.iter().filter(|n| n.name != self.node_name)
    }

    /// Checks the uplink port, the node list and the encryption section.
    pub(super) fn validate_nodes(&self) -> Result<(), Error> {
        let uplinks: Vec<usize> = (self.ports.iter().enumerate())
            .filter(|(_, p)| p.kind == PortKind::Uplink)
            .map(|(i, _)| i)
            .collect();
        if let Some(&second) = uplinks.get(1) {
            return Err(Error::config(
                format!("ports[{second}].kind"),
                "a node has one uplink: this is the second port of kind uplink",
            ));
        }
        for (i, p) in self.ports.iter().enumerate() {
            if p.next_hop.is_some() && p.kind != PortKind::Uplink {
                return Err(Error::config(
                    format!("ports[{i}].next_hop"),
                    "only an uplink port has a next hop; remove it, or make the port kind uplink",
                ));
            }
        }
        let uplink = self.uplink();
        if let Some(u) = uplink
            && self.pod_cidr.contains(u.ip)
        {
            return Err(Error::config(
                format!("ports[{}].ip", uplinks[0]),
                format!(
                    "the uplink's address {} is inside pod_cidr {}: give the node an address \
                     on the underlay",
                    u.ip, self.pod_cidr
                ),
            ));
        }
        let mut names = BTreeSet::new();
        let mut ips = BTreeSet::new();
        let encrypts = self.encryption.is_some();
        for (i, n) in self.nodes.iter().enumerate() {
            let field = |f: &str| format!("nodes[{i}].{f}");
            check_node_name(&field("name"), &n.name)?;
            if !names.insert(n.name.as_str()) {
                return Err(Error::config(
                    field("name"),
                    format!("{} is listed twice", n.name),
                ));
            }
            if !ips.insert(n.node_ip) {
                return Err(Error::config(
                    field("node_ip"),
                    format!("{} is the address of two nodes", n.node_ip),
                ));
            }
            if n.encryption == Some(true) && !encrypts {
                return Err(Error::config(
                    field("encryption"),
                    "is on, but the agent has no encryption section: add encryption.key_file, \
                     or turn it off for this node",
                ));
            }
            if n.name == self.node_name {
                let Some(u) = uplink else { continue };
                if n.node_ip != u.ip || n.pod_cidr != self.pod_cidr {
                    return Err(Error::config(
                        field("node_ip"),
                        format!(
                            "this node's own entry says {} with pods in {}, but its uplink is \
                             {} and its pod_cidr {}: make them agree",
                            n.node_ip, n.pod_cidr, u.ip, self.pod_cidr
                        ),
                    ));
                }
                continue;
            }
            if uplink.is_none() {
                return Err(Error::config(
                    field("name"),
                    format!(
                        "node {} is reached over the uplink, and this node has none: add a \
                         port of kind uplink",
                        n.name
                    ),
                ));
            }
            if overlaps(&n.pod_cidr, &self.pod_cidr) {
                return Err(Error::config(
                    field("pod_cidr"),
                    format!(
                        "{} overlaps this node's pod_cidr {}",
                        n.pod_cidr, self.pod_cidr
                    ),
                ));
            }
            if let Some(other) = self.nodes[..i]
                .iter()
                .filter(|o| o.name != self.node_name)
                .find(|o| overlaps(&o.pod_cidr, &n.pod_cidr))
            {
                return Err(Error::config(
                    field("pod_cidr"),
                    format!(
                        "{} overlaps node {}'s {}",
                        n.pod_cidr, other.name, other.pod_cidr
                    ),
                ));
            }
        }
        if let Some(e) = &self.encryption {
            if e.key_file.as_os_str().is_empty() {
                return Err(Error::config(
                    "encryption.key_file",
                    "is empty: name the key file",
                ));
            }
            if e.grace_period_s > 86_400 {
                return Err(Error::config(
                    "encryption.grace_period_s",
                    format!(
                        "{} s is more than a day: a rotated-out key should not be trusted that \
                         long (default {DEFAULT_GRACE_PERIOD_S})",
                        e.grace_period_s
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::AgentConfig;
    use super::super::tests::GOOD;

    fn with_uplink(extra: &str) -> String {
        format!(
            "{GOOD}  - {{ ifname: xyup, kind: uplink, ip: 10.199.0.11, mac: \"02:00:00:00:01:0b\" }}\n{extra}"
        )
    }

    #[test]
    fn an_uplink_and_nodes_parse_with_encryption_defaulting_to_the_agents() {
        let c = AgentConfig::parse(&with_uplink(
            "nodes:\n  - { name: node1, node_ip: 10.199.0.11, pod_cidr: 10.200.0.0/24 }\n  \
             - { name: node2, node_ip: 10.199.0.12, pod_cidr: 10.200.1.0/24 }\n\
             encryption: { key_file: /etc/xylem/keys }\n",
        ))
        .unwrap();
        let ip: std::net::Ipv4Addr = "10.199.0.11".parse().unwrap();
        assert_eq!(c.uplink().unwrap().ip, ip);
        let peers: Vec<_> = c.peers().map(|n| n.name.as_str()).collect();
        assert_eq!(peers, ["node2"]);
        assert!(c.peers().all(|n| n.encrypted(true)));
        assert_eq!(c.encryption.as_ref().unwrap().grace_period_s, 300);
    }

    #[test]
    fn bad_nodes_are_rejected_naming_the_field() {
        let cases = [
            (
                "nodes:\n  - { name: node2, node_ip: 10.199.0.12, pod_cidr: 10.200.0.128/25 }\n",
                "nodes[0].pod_cidr",
            ),
            (
                "nodes:\n  - { name: Node2, node_ip: 10.199.0.12, pod_cidr: 10.200.1.0/24 }\n",
                "nodes[0].name",
            ),
            (
                "nodes:\n  - { name: node2, node_ip: 10.199.0.12, pod_cidr: 10.200.1.0/24 }\n  \
                 - { name: node3, node_ip: 10.199.0.12, pod_cidr: 10.200.2.0/24 }\n",
                "nodes[1].node_ip",
            ),
            (
                "nodes:\n  - { name: node2, node_ip: 10.199.0.12, pod_cidr: 10.200.1.0/24 }\n  \
                 - { name: node3, node_ip: 10.199.0.13, pod_cidr: 10.200.0.0/16 }\n",
                "nodes[1].pod_cidr",
            ),
            (
                "nodes:\n  - { name: node2, node_ip: 10.199.0.12, pod_cidr: 10.200.1.0/24, \
                 encryption: true }\n",
                "nodes[0].encryption",
            ),
            (
                "nodes:\n  - { name: node1, node_ip: 10.199.0.99, pod_cidr: 10.200.0.0/24 }\n",
                "nodes[0].node_ip",
            ),
            (
                "encryption: { key_file: /k, grace_period_s: 100000 }\n",
                "encryption.grace_period_s",
            ),
            ("encryption: { key_file: /k, grace: 1 }\n", "grace"),
        ];
        for (extra, field) in cases {
            let e = AgentConfig::parse(&with_uplink(extra))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{extra}: {e}");
        }
        let no_uplink = format!(
            "{GOOD}nodes:\n  - {{ name: node2, node_ip: 10.199.0.12, pod_cidr: 10.200.1.0/24 }}\n"
        );
        let e = AgentConfig::parse(&no_uplink).unwrap_err().to_string();
        assert!(e.contains("nodes[0].name") && e.contains("uplink"), "{e}");
        // The second uplink continues the port list, as ports[2].
        let two = with_uplink(
            "  - { ifname: xyup2, kind: uplink, ip: 10.199.0.21, mac: \"02:00:00:00:01:0c\" }\n",
        );
        let e = AgentConfig::parse(&two).unwrap_err().to_string();
        assert!(e.contains("ports[2].kind"), "{e}");
        let hop = GOOD.replace("name: a }", "name: a, next_hop: 10.200.0.2 }");
        let e = AgentConfig::parse(&hop).unwrap_err().to_string();
        assert!(e.contains("ports[0].next_hop"), "{e}");
        let inside = GOOD.to_string()
            + "  - { ifname: xyup, kind: uplink, ip: 10.200.0.77, mac: \"02:00:00:00:01:0b\" }\n";
        let e = AgentConfig::parse(&inside).unwrap_err().to_string();
        assert!(e.contains("ports[1].ip") && e.contains("underlay"), "{e}");
    }
}

//! `toPorts` entries: their ports, and the `rules` they may carry (only `rules.dns`, only in
//! egress, only on explicit ports), checked field by field like the rest of the policy.

use std::sync::Arc;

use serde::Deserialize;
use xylem_dataplane::conntrack::proto;
use xylem_dataplane::dns::NameSelector;
use xylem_dataplane::policy::PROTO_ANY;

use super::fqdn::{self, RawL7Rules};
use super::parse::Cx;
use super::{DnsPorts, PortSpec};
use crate::Error;

/// A `toPorts` element as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPortRule {
    ports: Option<Vec<RawPort>>,
    rules: Option<RawL7Rules>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPort {
    port: Option<String>,
    end_port: Option<i64>,
    protocol: Option<String>,
}

/// Which section a rule is in, which decides what it may carry besides peers and ports.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Ingress,
    Egress,
    /// `ingressDeny` or `egressDeny`.
    Deny,
}

impl Cx<'_> {
    /// The ports of every `toPorts` entry, whether there was any entry, and the entries with
    /// `rules.dns`.
    pub(crate) fn to_ports(
        &self,
        path: &str,
        section: Section,
        fqdn_rule: bool,
        to_ports: Option<Vec<RawPortRule>>,
    ) -> Result<(Vec<PortSpec>, bool, Vec<DnsPorts>), Error> {
        let mut ports = Vec::new();
        let mut has_ports = false;
        let mut dns = Vec::new();
        for (i, pr) in to_ports.into_iter().flatten().enumerate() {
            has_ports = true;
            let tp = format!("{path}.toPorts[{i}]");
            let written = pr.ports.as_ref().is_some_and(|p| !p.is_empty());
            let mut entry = Vec::new();
            for (j, p) in pr.ports.into_iter().flatten().enumerate() {
                entry.push(self.port(&format!("{tp}.ports[{j}]"), p)?);
            }
            if let Some(rules) = pr.rules {
                let names = self.dns_rules(&tp, section, fqdn_rule, rules)?;
                if !written {
                    return Err(self.err(
                        format!("{tp}.ports"),
                        "rules.dns needs the ports whose DNS is inspected (Cilium requires \
                         explicit ports for L7 rules): write ports: [{port: \"53\", protocol: \
                         ANY}]",
                    ));
                }
                if let Some(j) = entry.iter().position(|p| p.range.is_none()) {
                    return Err(self.err(
                        format!("{tp}.ports[{j}].port"),
                        "rules.dns needs an explicit non-zero port (Cilium requires one for L7 \
                         rules), such as \"53\"",
                    ));
                }
                dns.push(DnsPorts {
                    ports: entry.clone(),
                    names,
                });
            }
            ports.extend(entry);
        }
        Ok((ports, has_ports, dns))
    }

    /// The selectors of `rules` on the `toPorts` entry at `tp`, where rules are allowed.
    fn dns_rules(
        &self,
        tp: &str,
        section: Section,
        fqdn_rule: bool,
        rules: RawL7Rules,
    ) -> Result<Arc<[NameSelector]>, Error> {
        let rp = format!("{tp}.rules");
        match section {
            Section::Egress => {}
            Section::Ingress => {
                return Err(self.err(
                    rp,
                    "L7 rules in ingress are not supported (rules.dns applies to egress, as in \
                     Cilium); only egress rules.dns is",
                ));
            }
            Section::Deny => {
                return Err(self.err(rp, "deny rules cannot carry L7 rules (as in Cilium)"));
            }
        }
        if fqdn_rule {
            return Err(self.err(
                rp,
                "rules.dns in a toFQDNs rule is not supported: put it on the rule that allows \
                 the DNS server (such as toEndpoints selecting kube-dns)",
            ));
        }
        let Some(list) = rules.dns else {
            return Err(self.err(
                rp,
                "has no dns: write rules.dns with at least one matchName or matchPattern, or \
                 leave rules out",
            ));
        };
        if list.is_empty() {
            return Err(self.err(
                format!("{rp}.dns"),
                "is empty: list at least one matchName or matchPattern (`- matchPattern: \"*\"` \
                 allows every name and still learns the answers), or leave rules out to allow \
                 DNS without inspecting it",
            ));
        }
        list.into_iter()
            .enumerate()
            .map(|(k, s)| {
                fqdn::name_selector(&format!("{rp}.dns[{k}]"), s)
                    .map_err(|(field, why)| self.err(field, why))
            })
            .collect()
    }

    fn port(&self, path: &str, p: RawPort) -> Result<PortSpec, Error> {
        let proto = match p.protocol.as_deref() {
            None | Some("ANY") => PROTO_ANY,
            Some("TCP") => proto::TCP,
            Some("UDP") => proto::UDP,
            Some(other) => {
                return Err(self.err(
                    format!("{path}.protocol"),
                    format!("protocol {other:?} is not supported: expected TCP, UDP or ANY"),
                ));
            }
        };
        let port: u16 = match p.port.as_deref() {
            None | Some("") => 0,
            Some(s) => match s.parse::<u32>() {
                Ok(n) if n <= 65535 => n as u16,
                Ok(n) => {
                    return Err(self.err(
                        format!("{path}.port"),
                        format!("port {n} is out of range: expected 0-65535"),
                    ));
                }
                Err(_) => {
                    return Err(self.err(
                        format!("{path}.port"),
                        format!(
                            "port {s:?} is not a number: expected 0-65535 as a string (named \
                             ports are not supported)"
                        ),
                    ));
                }
            },
        };
        let range = match p.end_port {
            None | Some(0) if port == 0 => None,
            None | Some(0) => Some((port, port)),
            Some(_) if port == 0 => {
                return Err(self.err(
                    format!("{path}.endPort"),
                    "endPort needs a non-zero port to start the range",
                ));
            }
            Some(e) if !(0..=65535).contains(&e) => {
                return Err(self.err(
                    format!("{path}.endPort"),
                    format!("endPort {e} is out of range: expected 0-65535"),
                ));
            }
            Some(e) if e < port as i64 => {
                return Err(self.err(
                    format!("{path}.endPort"),
                    format!("endPort {e} is below port {port}"),
                ));
            }
            Some(e) => Some((port, e as u16)),
        };
        Ok(PortSpec { proto, range })
    }
}

//! CiliumNetworkPolicy YAML → validated [`Policy`] values.
//!
//! The raw `Raw*` types mirror the accepted subset field for field with
//! `#[serde(deny_unknown_fields)]`, so any other field (`toPorts[].rules.http`, `nodeSelector`,
//! `toServices`, …) fails with its path. Values are then checked one by one (apiVersion, kind,
//! operators, CIDRs, ports, entities, DNS selectors, where `toFQDNs` and `rules` may appear),
//! each error naming its field.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::Deserialize;
use serde_norway::Value;
use xylem_dataplane::policy::PROTO_ANY;

use super::fqdn::{self, RawNameSelector};
use super::labels::{NAMESPACE_LABEL, Requirement, Selector, normalize_key};
use super::parse_ports::{RawPortRule, Section};
use super::{Cidr, Entity, Peer, PeerRule, Policy, PolicyRule, PortSpec};
use crate::Error;

/// The accepted `apiVersion`.
pub const API_VERSION: &str = "cilium.io/v2";
/// The accepted `kind` (besides `List`).
pub const KIND: &str = "CiliumNetworkPolicy";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPolicy {
    #[expect(dead_code, reason = "checked on the untyped value first")]
    api_version: String,
    #[expect(dead_code, reason = "checked on the untyped value first")]
    kind: String,
    metadata: RawMeta,
    spec: Option<RawRule>,
    specs: Option<Vec<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeta {
    name: String,
    namespace: Option<String>,
    #[expect(dead_code, reason = "accepted, carries no policy meaning")]
    labels: Option<BTreeMap<String, String>>,
    #[expect(dead_code, reason = "accepted, carries no policy meaning")]
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRule {
    endpoint_selector: Option<RawSelector>,
    #[expect(dead_code, reason = "accepted, carries no policy meaning")]
    description: Option<String>,
    ingress: Option<Vec<RawIngress>>,
    ingress_deny: Option<Vec<RawIngress>>,
    egress: Option<Vec<RawEgress>>,
    egress_deny: Option<Vec<RawEgress>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawIngress {
    from_endpoints: Option<Vec<RawSelector>>,
    #[serde(rename = "fromCIDR")]
    from_cidr: Option<Vec<String>>,
    #[serde(rename = "fromCIDRSet")]
    from_cidr_set: Option<Vec<RawCidrSet>>,
    from_entities: Option<Vec<String>>,
    to_ports: Option<Vec<RawPortRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawEgress {
    to_endpoints: Option<Vec<RawSelector>>,
    #[serde(rename = "toCIDR")]
    to_cidr: Option<Vec<String>>,
    #[serde(rename = "toCIDRSet")]
    to_cidr_set: Option<Vec<RawCidrSet>>,
    to_entities: Option<Vec<String>>,
    #[serde(rename = "toFQDNs")]
    to_fqdns: Option<Vec<RawNameSelector>>,
    to_ports: Option<Vec<RawPortRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCidrSet {
    cidr: String,
    except: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSelector {
    match_labels: Option<BTreeMap<String, String>>,
    match_expressions: Option<Vec<RawRequirement>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequirement {
    key: String,
    operator: String,
    values: Option<Vec<String>>,
}

/// Parses and validates every policy in `yaml`: one document, several (`---`), or `List`s.
/// All or nothing: the first invalid field anywhere fails the whole input.
pub fn parse_policies(yaml: &str) -> Result<Vec<Policy>, Error> {
    let mut out = Vec::new();
    for o in xylem_kube::objects(yaml, "policies").map_err(Error::from)? {
        out.push(parse_one(&o.document, o.value)?);
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in &out {
        if !seen.insert(p.key()) {
            return Err(perr(
                &p.document,
                "metadata.name",
                format!("policy {} appears twice in the input", p.key()),
            ));
        }
    }
    Ok(out)
}

fn perr(doc: &str, field: impl Into<String>, why: impl Into<String>) -> Error {
    Error::Invalid {
        document: doc.to_owned(),
        field: field.into(),
        why: why.into(),
    }
}

fn parse_one(doc: &str, value: Value) -> Result<Policy, Error> {
    let Some(map) = value.as_mapping() else {
        return Err(perr(
            doc,
            "(document)",
            "expected a mapping (a policy object)",
        ));
    };
    let get_str = |k: &str| map.get(k).and_then(Value::as_str).map(str::to_owned);
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let ns = value
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_owned();
    let doc = match &name {
        Some(n) => format!("{doc} (policy {ns}/{n})"),
        None => doc.to_owned(),
    };
    match get_str("apiVersion") {
        Some(v) if v == API_VERSION => {}
        other => {
            return Err(perr(
                &doc,
                "apiVersion",
                format!("expected {API_VERSION:?}, got {}", shown(other)),
            ));
        }
    }
    match get_str("kind") {
        Some(k) if k == KIND => {}
        other => {
            return Err(perr(
                &doc,
                "kind",
                format!(
                    "expected {KIND:?} (or \"List\" of them), got {}; \
                     CiliumClusterwideNetworkPolicy is not supported yet",
                    shown(other)
                ),
            ));
        }
    }
    let source = value.clone();
    let raw: RawPolicy = serde_path_to_error::deserialize(value).map_err(|e| {
        let mut path = e.path().to_string();
        let msg = e.inner().to_string();
        // serde names an unknown field in the message; the path stops at its parent.
        if let Some(rest) = msg.strip_prefix("unknown field `") {
            let field = rest.split('`').next().unwrap_or("");
            // serde_path_to_error already ends the path with the unknown field; older
            // versions stop at its parent.
            if path == "." {
                path = field.to_owned();
            } else if path != field && !path.ends_with(&format!(".{field}")) {
                path = format!("{path}.{field}");
            }
            let why = if path.ends_with(&format!(".rules.{field}")) {
                fqdn::l7_refusal(field)
            } else if field == "toFQDNs" {
                fqdn::TO_FQDNS_OUTSIDE_EGRESS.to_owned()
            } else {
                "not in the supported subset of CiliumNetworkPolicy; it is rejected rather than \
                 ignored"
                    .to_owned()
            };
            return perr(&doc, path, why);
        }
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
        perr(&doc, path, msg)
    })?;
    if raw.metadata.name.is_empty() {
        return Err(perr(&doc, "metadata.name", "must not be empty"));
    }
    let namespace = raw.metadata.namespace.unwrap_or_else(|| "default".into());
    if namespace.is_empty() {
        return Err(perr(&doc, "metadata.namespace", "must not be empty"));
    }
    let mut specs = Vec::new();
    if let Some(s) = raw.spec {
        specs.push(("spec".to_owned(), s));
    }
    for (i, s) in raw.specs.into_iter().flatten().enumerate() {
        specs.push((format!("specs[{i}]"), s));
    }
    if specs.is_empty() {
        return Err(perr(&doc, "spec", "a policy needs `spec` or `specs`"));
    }
    let cx = Cx {
        doc: &doc,
        namespace: &namespace,
    };
    let rules = specs
        .into_iter()
        .map(|(path, r)| cx.rule(&path, r))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Policy {
        name: raw.metadata.name,
        namespace,
        document: doc.clone(),
        rules,
        source,
    })
}

fn shown(v: Option<String>) -> String {
    v.map_or_else(|| "nothing".into(), |v| format!("{v:?}"))
}

/// The peer and port fields of one rule, as written, with the names of the four peer fields
/// in its direction (`fromEndpoints` or `toEndpoints`, …) for messages.
struct RawPeers {
    fields: [&'static str; 4],
    endpoints: Option<Vec<RawSelector>>,
    cidrs: Option<Vec<String>>,
    cidr_sets: Option<Vec<RawCidrSet>>,
    entities: Option<Vec<String>>,
    fqdns: Option<Vec<RawNameSelector>>,
    to_ports: Option<Vec<RawPortRule>>,
}

/// What every check needs: where the policy came from, for messages, and its namespace.
pub(crate) struct Cx<'a> {
    doc: &'a str,
    namespace: &'a str,
}

impl Cx<'_> {
    pub(crate) fn err(&self, field: impl Into<String>, why: impl Into<String>) -> Error {
        perr(self.doc, field, why)
    }

    fn rule(&self, path: &str, r: RawRule) -> Result<PolicyRule, Error> {
        let Some(sel) = r.endpoint_selector else {
            return Err(self.err(
                format!("{path}.endpointSelector"),
                "required (nodeSelector is not supported)",
            ));
        };
        let mut selector = self.selector(&format!("{path}.endpointSelector"), sel)?;
        // A namespaced policy only ever selects endpoints of its own namespace (added as a
        // requirement, so a selector naming another namespace selects nothing, as in Cilium).
        selector.match_expressions.push((
            NAMESPACE_LABEL.into(),
            Requirement::In(vec![self.namespace.into()]),
        ));
        let ing = |name: &str, v: Option<Vec<RawIngress>>| -> Result<Vec<PeerRule>, Error> {
            let section = if name == "ingress" {
                Section::Ingress
            } else {
                Section::Deny
            };
            v.into_iter()
                .flatten()
                .enumerate()
                .map(|(i, x)| {
                    let raw = RawPeers {
                        fields: ["fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities"],
                        endpoints: x.from_endpoints,
                        cidrs: x.from_cidr,
                        cidr_sets: x.from_cidr_set,
                        entities: x.from_entities,
                        fqdns: None,
                        to_ports: x.to_ports,
                    };
                    self.peer_rule(&format!("{path}.{name}[{i}]"), section, raw)
                })
                .collect()
        };
        let eg = |name: &str, v: Option<Vec<RawEgress>>| -> Result<Vec<PeerRule>, Error> {
            let section = if name == "egress" {
                Section::Egress
            } else {
                Section::Deny
            };
            v.into_iter()
                .flatten()
                .enumerate()
                .map(|(i, x)| {
                    let raw = RawPeers {
                        fields: ["toEndpoints", "toCIDR", "toCIDRSet", "toEntities"],
                        endpoints: x.to_endpoints,
                        cidrs: x.to_cidr,
                        cidr_sets: x.to_cidr_set,
                        entities: x.to_entities,
                        fqdns: x.to_fqdns,
                        to_ports: x.to_ports,
                    };
                    self.peer_rule(&format!("{path}.{name}[{i}]"), section, raw)
                })
                .collect()
        };
        Ok(PolicyRule {
            selector,
            ingress: ing("ingress", r.ingress)?,
            ingress_deny: ing("ingressDeny", r.ingress_deny)?,
            egress: eg("egress", r.egress)?,
            egress_deny: eg("egressDeny", r.egress_deny)?,
        })
    }

    fn selector(&self, path: &str, s: RawSelector) -> Result<Selector, Error> {
        let mut out = Selector::default();
        for (k, v) in s.match_labels.into_iter().flatten() {
            let nk = self.key(&format!("{path}.matchLabels.{k}"), &k)?;
            out.match_labels.insert(nk, v);
        }
        for (i, e) in s.match_expressions.into_iter().flatten().enumerate() {
            let p = format!("{path}.matchExpressions[{i}]");
            let key = self.key(&format!("{p}.key"), &e.key)?;
            let values = e.values.unwrap_or_default();
            let req = match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(self.err(
                        format!("{p}.values"),
                        format!("operator {} needs at least one value", e.operator),
                    ));
                }
                "In" => Requirement::In(values),
                "NotIn" => Requirement::NotIn(values),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(self.err(
                        format!("{p}.values"),
                        format!("operator {} takes no values", e.operator),
                    ));
                }
                "Exists" => Requirement::Exists,
                "DoesNotExist" => Requirement::DoesNotExist,
                other => {
                    return Err(self.err(
                        format!("{p}.operator"),
                        format!(
                            "unknown operator {other:?}: expected In, NotIn, Exists or DoesNotExist"
                        ),
                    ));
                }
            };
            out.match_expressions.push((key, req));
        }
        Ok(out)
    }

    fn key(&self, path: &str, k: &str) -> Result<String, Error> {
        match normalize_key(k) {
            Some(n) if !n.is_empty() => Ok(n.to_owned()),
            _ => Err(self.err(
                path,
                format!(
                    "label key {k:?}: only Kubernetes labels, with or without the `k8s:` \
                     prefix, are supported"
                ),
            )),
        }
    }

    fn peer_rule(
        &self,
        path: &str,
        section: Section,
        mut raw: RawPeers,
    ) -> Result<PeerRule, Error> {
        // Cilium refuses a rule that mixes toFQDNs with another peer field.
        let other_l3 = [
            raw.endpoints.is_some(),
            raw.cidrs.is_some(),
            raw.cidr_sets.is_some(),
            raw.entities.is_some(),
        ]
        .iter()
        .position(|&set| set)
        .map(|k| raw.fields[k]);
        let (mut peers, mut has_l3) = self.l3_peers(path, &mut raw)?;
        let mut fqdn_rule = false;
        if let Some(list) = raw.fqdns.take() {
            let fp = format!("{path}.toFQDNs");
            if section != Section::Egress {
                return Err(self.err(
                    fp,
                    "toFQDNs is only supported in egress: Cilium has no FQDN deny rules",
                ));
            }
            if let Some(other) = other_l3 {
                return Err(self.err(
                    fp,
                    format!(
                        "toFQDNs cannot be combined with {other} in one rule (as in Cilium): \
                         write them as separate egress rules"
                    ),
                ));
            }
            has_l3 = true;
            fqdn_rule = true;
            for (i, s) in list.into_iter().enumerate() {
                let sel = fqdn::name_selector(&format!("{fp}[{i}]"), s)
                    .map_err(|(field, why)| self.err(field, why))?;
                peers.push(Peer::Fqdn(sel));
            }
        }
        let (mut ports, has_ports, dns) =
            self.to_ports(path, section, fqdn_rule, raw.to_ports.take())?;
        if has_ports && ports.is_empty() {
            // `toPorts: [{}]` or `ports: []`: Cilium treats it as all ports.
            ports.push(PortSpec {
                proto: PROTO_ANY,
                range: None,
            });
        }
        if !has_l3 && has_ports {
            peers.push(Peer::Entity(Entity::All));
        }
        if ports.is_empty() {
            ports.push(PortSpec {
                proto: PROTO_ANY,
                range: None,
            });
        }
        Ok(PeerRule { peers, ports, dns })
    }

    /// The endpoint, CIDR and entity peers of `raw` (taken out of it), and whether any of
    /// those fields was written.
    fn l3_peers(&self, path: &str, raw: &mut RawPeers) -> Result<(Vec<Peer>, bool), Error> {
        let mut peers = Vec::new();
        let mut has_l3 = false;
        let [f_endpoints, f_cidrs, f_cidr_sets, f_entities] = raw.fields;
        if let Some(list) = raw.endpoints.take() {
            has_l3 = true;
            for (i, s) in list.into_iter().enumerate() {
                let mut sel = self.selector(&format!("{path}.{f_endpoints}[{i}]"), s)?;
                if !sel.names_namespace() {
                    sel.match_labels
                        .insert(NAMESPACE_LABEL.into(), self.namespace.into());
                }
                peers.push(Peer::Endpoints(sel));
            }
        }
        if let Some(list) = raw.cidrs.take() {
            has_l3 = true;
            for (i, c) in list.iter().enumerate() {
                let net =
                    parse_cidr(c).map_err(|why| self.err(format!("{path}.{f_cidrs}[{i}]"), why))?;
                peers.push(Peer::Cidr {
                    net,
                    except: Vec::new(),
                });
            }
        }
        if let Some(list) = raw.cidr_sets.take() {
            has_l3 = true;
            for (i, s) in list.into_iter().enumerate() {
                let p = format!("{path}.{f_cidr_sets}[{i}]");
                let net = parse_cidr(&s.cidr).map_err(|why| self.err(format!("{p}.cidr"), why))?;
                let mut except = Vec::new();
                for (j, e) in s.except.into_iter().flatten().enumerate() {
                    let ep = format!("{p}.except[{j}]");
                    let x = parse_cidr(&e).map_err(|why| self.err(&ep, why))?;
                    if !net.contains(&x) {
                        return Err(self.err(ep, format!("{x} is not within cidr {net}")));
                    }
                    except.push(x);
                }
                peers.push(Peer::Cidr { net, except });
            }
        }
        if let Some(list) = raw.entities.take() {
            has_l3 = true;
            for (i, e) in list.iter().enumerate() {
                let ent = match e.as_str() {
                    "world" => Entity::World,
                    "cluster" => Entity::Cluster,
                    "host" => Entity::Host,
                    "all" => Entity::All,
                    other => {
                        return Err(self.err(
                            format!("{path}.{f_entities}[{i}]"),
                            format!(
                                "entity {other:?} is not supported: expected world, cluster, \
                                 host or all"
                            ),
                        ));
                    }
                };
                peers.push(Peer::Entity(ent));
            }
        }
        Ok((peers, has_l3))
    }
}

/// Parses `a.b.c.d/len` (or a bare address, as `/32`). Host bits are cleared.
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    if addr.contains(':') {
        return Err(format!("{s:?}: IPv6 is not supported yet"));
    }
    let ip: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{s:?} is not a valid IPv4 CIDR (expected like 10.0.0.0/8)"))?;
    let len: u8 = match len {
        None => 32,
        Some(l) => match l.parse::<u8>() {
            Ok(n) if n <= 32 => n,
            _ => {
                return Err(format!(
                    "{s:?} is not a valid IPv4 CIDR: prefix length must be 0-32"
                ));
            }
        },
    };
    Ok(Cidr::new(ip, len))
}

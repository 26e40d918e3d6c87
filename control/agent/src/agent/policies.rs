//! Network policies and identities: restore, import, delete, trace.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use xylem_dataplane::tables::Tables;

use xylem_policy::{
    EndpointInfo, IdentityAllocator, Policy, Trace, TracePeer, parse_policies, reserved_name,
};

use xylem_api::{Endpoint, IdentityView, PolicyView, TraceRequest};

use super::*;
use crate::Error;
use crate::state::{StateStore, TypedStore, kind};
use xylem_api::config::{AgentConfig, PortConfig};
use xylem_dataplane::services::ServiceTables;
use xylem_tables::{TableInputs, Underlay, compile_tables, policy_inputs};

/// The policy side of the agent: the stored policies, the identities and what the last
/// compilation said about each endpoint. Locked after `bindings`.
#[derive(Debug, Default)]
pub(super) struct PolicyState {
    pub(super) policies: BTreeMap<String, Policy>,
    pub(super) ids: IdentityAllocator,
    pub(super) endpoints: Vec<EndpointInfo>,
    /// The identity each remote endpoint's labels have here, by address, as the last
    /// compilation gave it (for `GET /v1/remote-endpoints`).
    pub(super) remote: BTreeMap<Ipv4Addr, u32>,
}

/// What compiling a revision said about the endpoints, local and remote.
pub(super) struct Compiled {
    endpoints: Vec<EndpointInfo>,
    remote: Vec<(Ipv4Addr, u32)>,
}

impl PolicyState {
    /// Keeps what the revision now in force said about the endpoints.
    pub(super) fn keep(&mut self, c: Compiled) {
        self.endpoints = c.endpoints;
        self.remote = c.remote.into_iter().collect();
    }
}

/// Restores the stored identity allocation (so identities survive restarts).
pub(super) fn restore_identities(
    store: &dyn StateStore,
    ids: &mut IdentityAllocator,
) -> Result<(), Error> {
    let Some(map) = store.get_as::<kind::Identities>(kind::IDENTITIES_KEY)? else {
        return Ok(());
    };
    for (id, labels) in map {
        ids.restore(labels, id);
    }
    Ok(())
}

/// The identity allocation as stored.
pub(super) fn identities_value(ps: &PolicyState) -> BTreeMap<u32, BTreeMap<String, String>> {
    ps.ids
        .list()
        .map(|(id, labels)| (id, labels.clone()))
        .collect()
}

/// Restores the stored policies. A stored policy that no longer parses stops the agent.
pub(super) fn restore_policies(store: &dyn StateStore) -> Result<BTreeMap<String, Policy>, Error> {
    let mut out = BTreeMap::new();
    for (key, stored) in store.list_as::<kind::Policies>()? {
        let bad = |why: String| {
            Error::State(format!(
                "stored policy {key} cannot be restored: {why}; start with --start-empty to \
                 discard the stored state"
            ))
        };
        for p in parse_policies(&stored.yaml).map_err(|e| bad(e.to_string()))? {
            out.insert(p.key(), p);
        }
    }
    if !out.is_empty() {
        tracing::info!(
            policies = out.len(),
            "restored policies from the state store"
        );
    }
    Ok(out)
}

/// The tables for `bindings` with `policies` compiled in, `services` set and the `underlay`
/// (nodes, neighbours, SAs, the other nodes' pods; same revision), and what compilation said
/// about each endpoint, local and remote. Allocates identities in `ids` and frees the ones no
/// endpoint uses any more.
pub(super) fn build_full_tables(
    cfg: &AgentConfig,
    bindings: &[Option<PortConfig>],
    revision: u64,
    policies: &BTreeMap<String, Policy>,
    services: Arc<ServiceTables>,
    ids: &mut IdentityAllocator,
    underlay: Underlay<'_>,
) -> Result<(Tables, Compiled), Error> {
    let list: Vec<Policy> = policies.values().cloned().collect();
    let inputs = TableInputs {
        gateway: &cfg.gateway,
        mode: cfg.mode,
        bindings,
        revision,
        policies: &list,
        localhost: cfg.policy.allow_localhost,
        services,
        underlay,
    };
    let built = compile_tables(inputs, ids)?;
    let used = built.identities();
    ids.retain(|id| used.contains(&id));
    let mut t = built.tables;
    // Every revision carries them: the DNS stage reads its options from the tables it runs on.
    t.set_dns_options(cfg.fqdn.dns_options());
    let compiled = Compiled {
        endpoints: built.endpoints,
        remote: built.remote,
    };
    Ok((t, compiled))
}

fn policy_rejected(e: xylem_policy::Error) -> Rejected {
    match e {
        xylem_policy::Error::Invalid {
            document,
            field,
            why,
        } => reject(
            Refusal::Invalid,
            &field,
            format!("{why} (in {document}); nothing was imported"),
        ),
        other => reject(Refusal::Invalid, "body", other.to_string()),
    }
}

/// Parses a trace peer (see [`TraceRequest`]).
fn trace_peer(field: &str, v: &str, eps: &[Endpoint]) -> Result<TracePeer, Rejected> {
    if let Ok(ip) = v.parse::<Ipv4Addr>() {
        return Ok(TracePeer::Ip(ip));
    }
    if v.contains('=') {
        let mut labels = BTreeMap::new();
        let mut namespace = "default".to_string();
        for kv in v.split(',') {
            let Some((k, val)) = kv.split_once('=') else {
                return Err(reject(
                    Refusal::Invalid,
                    field,
                    format!("{kv:?} is not key=value"),
                ));
            };
            let (k, val) = (k.trim(), val.trim());
            if k.trim_start_matches("k8s:") == xylem_policy::NAMESPACE_LABEL {
                namespace = val.to_string();
            } else {
                labels.insert(k.to_string(), val.to_string());
            }
        }
        return Ok(TracePeer::Labels { namespace, labels });
    }
    let (ns, name) = v.split_once('/').unwrap_or(("", v));
    let found: Vec<&Endpoint> = eps
        .iter()
        .filter(|e| e.name == name && (ns.is_empty() || e.namespace == ns))
        .collect();
    match found.as_slice() {
        [e] => Ok(TracePeer::Ip(e.ip)),
        [] => Err(reject(
            Refusal::Invalid,
            field,
            format!("{v:?} is neither an endpoint, an IPv4 address nor labels k=v"),
        )),
        _ => Err(reject(
            Refusal::Invalid,
            field,
            format!("{v:?} names endpoints in several namespaces: write namespace/name"),
        )),
    }
}

/// Parses `80/TCP`, `53/udp`, `ICMP`, `80` (TCP) into (port, protocol).
fn trace_port(v: &str) -> Result<(u16, u8), Rejected> {
    use xylem_dataplane::conntrack::proto;
    let bad = || {
        reject(
            Refusal::Invalid,
            "dport",
            format!("{v:?} is not PORT/PROTO (80/TCP, 53/UDP) or ICMP"),
        )
    };
    let (port, pr) = v.split_once('/').unwrap_or((v, "TCP"));
    if port.eq_ignore_ascii_case("icmp") {
        return Ok((0, proto::ICMP));
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    let pr = match pr.to_ascii_uppercase().as_str() {
        "TCP" => proto::TCP,
        "UDP" => proto::UDP,
        "ICMP" => proto::ICMP,
        _ => return Err(bad()),
    };
    Ok((port, pr))
}

impl AgentState {
    /// The policy state, locked (after the bindings, by callers that hold them).
    pub(super) fn lock_policy(&self) -> Result<std::sync::MutexGuard<'_, PolicyState>, Rejected> {
        self.policy
            .lock()
            .map_err(|_| reject(Refusal::Failed, "-", "agent state poisoned"))
    }

    /// Imports the policies of `yaml` (one document, several, or a `List`): all or nothing.
    /// Each is stored durably (replacing one of the same `namespace/name`), then the tables are
    /// recompiled and published in one swap. Returns the new revision.
    pub fn import_policies(&self, yaml: &str) -> Result<u64, Rejected> {
        let parsed = parse_policies(yaml).map_err(policy_rejected)?;
        if parsed.is_empty() {
            return Err(reject(Refusal::Invalid, "body", "no policy in the input"));
        }
        let bindings = self
            .bindings
            .lock()
            .map_err(|_| reject(Refusal::Failed, "-", "agent state poisoned"))?;
        let mut ps = self.lock_policy()?;
        let mut next = ps.policies.clone();
        let mut values = Vec::new();
        for p in parsed {
            let text = serde_norway::to_string(&p.source)
                .map_err(|e| reject(Refusal::Failed, "-", e.to_string()))?;
            values.push((p.key(), kind::StoredPolicy { yaml: text }));
            next.insert(p.key(), p);
        }
        let ops = values
            .iter()
            .map(|(key, v)| StoreOp::put::<kind::Policies>(key, v))
            .collect::<Result<_, _>>()?;
        let revision = self
            .publish(&bindings, &mut ps, Some(next), ops)
            .map_err(|e| e.rejected(Refusal::Failed, "-"))?;
        tracing::info!(revision, "policies imported");
        Ok(revision)
    }

    /// The stored policies, by `namespace/name`.
    pub fn policies(&self) -> Vec<PolicyView> {
        self.policy
            .lock()
            .map(|ps| {
                ps.policies
                    .values()
                    .map(|p| PolicyView {
                        namespace: p.namespace.clone(),
                        name: p.name.clone(),
                        source: serde_json::to_value(&p.source).unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Deletes the policy `namespace/name`, durably, and publishes the recompiled tables.
    /// Returns the new revision, or `None` if there was no such policy.
    pub fn delete_policy(&self, namespace: &str, name: &str) -> Result<Option<u64>, Rejected> {
        check_name("namespace", namespace)?;
        check_name("name", name)?;
        let key = format!("{namespace}/{name}");
        let bindings = self
            .bindings
            .lock()
            .map_err(|_| reject(Refusal::Failed, "-", "agent state poisoned"))?;
        let mut ps = self.lock_policy()?;
        if !ps.policies.contains_key(&key) {
            return Ok(None);
        }
        let mut next = ps.policies.clone();
        next.remove(&key);
        let ops = vec![StoreOp::delete::<kind::Policies>(&key)];
        let revision = self
            .publish(&bindings, &mut ps, Some(next), ops)
            .map_err(|e| e.rejected(Refusal::Failed, "-"))?;
        tracing::info!(policy = %key, revision, "policy deleted");
        Ok(Some(revision))
    }

    /// The security identities: the reserved ones, then one per endpoint label set.
    pub fn identities(&self) -> Vec<IdentityView> {
        use xylem_dataplane::policy::identity;
        let eps = self.endpoints();
        let mut out: Vec<IdentityView> = [identity::HOST, identity::WORLD]
            .into_iter()
            .map(|id| IdentityView {
                identity: id,
                labels: BTreeMap::from([(
                    reserved_name(id).unwrap_or("reserved").to_string(),
                    String::new(),
                )]),
                endpoints: Vec::new(),
            })
            .collect();
        if let Ok(ps) = self.policy.lock() {
            for (id, labels) in ps.ids.list() {
                out.push(IdentityView {
                    identity: id,
                    labels: labels.clone(),
                    endpoints: eps
                        .iter()
                        .filter(|e| e.identity == Some(id))
                        .map(|e| format!("{}/{}", e.namespace, e.name))
                        .collect(),
                });
            }
        }
        out.sort_by_key(|i| i.identity);
        out
    }

    /// Explains the policy verdict for a new connection `src → dst:dport`.
    pub fn trace(&self, req: &TraceRequest) -> Result<Trace, Rejected> {
        let eps = self.endpoints();
        let src = trace_peer("src", &req.src, &eps)?;
        let dst = trace_peer("dst", &req.dst, &eps)?;
        let (port, proto) = trace_port(&req.dport)?;
        let (specs, host) = policy_inputs(&self.cfg.gateway, &self.bindings_snapshot());
        let ps = self
            .policy
            .lock()
            .map_err(|_| reject(Refusal::Failed, "-", "agent state poisoned"))?;
        let list: Vec<Policy> = ps.policies.values().cloned().collect();
        Ok(xylem_policy::trace(
            &list,
            &specs,
            &host,
            self.cfg.policy.allow_localhost,
            &ps.ids,
            &src,
            &dst,
            port,
            proto,
        ))
    }
}

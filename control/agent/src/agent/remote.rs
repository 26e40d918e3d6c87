//! Remote endpoints: the pods of the other nodes, which this node's policies select by their
//! labels.
//!
//! Identity numbers are allocated per agent and no header carries them between nodes, so a
//! node cannot learn a remote pod's identity from its packets: it must be told the pod's labels,
//! and gives them an identity of its own. The list comes through the API
//! (`/v1/remote-endpoints`; the lab fills it, a cluster mesh will), is kept in the state store
//! (kind `remote-endpoints`) and restored at start, and every revision of the tables is built
//! with it (`Underlay.remote`, through the underlay snapshot), whatever changed.
//!
//! A node speaks only for its own pods: a remote endpoint names its node, which must be in the
//! node table (and not this node), and its address must lie in that node's pod CIDR. Two remote
//! endpoints never share an address (the tables could not tell them apart). A node with remote
//! endpoints cannot be deleted, nor given a pod CIDR they fall outside of.

use std::collections::BTreeMap;

use xylem_api::config::{AgentConfig, NodeConfig};
use xylem_api::{RemoteEndpointRequest, RemoteEndpointView};
use xylem_policy::EndpointSpec;

use super::endpoints::check_label;
use super::underlay::NodeEntry;
use super::*;
use crate::state::{StateStore, TypedStore, kind};

/// `namespace/name` as the store keys it, split again.
fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("default", key))
}

/// The remote endpoints as the policy compiler takes them.
pub(super) fn specs(remote: &BTreeMap<String, RemoteEndpointRequest>) -> Vec<EndpointSpec> {
    remote
        .iter()
        .map(|(key, r)| EndpointSpec {
            ip: r.ip,
            namespace: split_key(key).0.to_string(),
            labels: r.labels.clone(),
        })
        .collect()
}

/// Checks the remote endpoint `key` against the node table and the other remote endpoints
/// (`remote`, which may hold `key`'s previous value): labels as an endpoint's are checked, a
/// known node that is not this one, an address in that node's pod CIDR and held by no other
/// remote endpoint. Names the request's field.
fn check_remote(
    cfg: &AgentConfig,
    nodes: &BTreeMap<String, NodeEntry>,
    remote: &BTreeMap<String, RemoteEndpointRequest>,
    key: &str,
    req: &RemoteEndpointRequest,
) -> Result<(), Rejected> {
    for (k, v) in &req.labels {
        check_label(k, v)?;
    }
    if req.node == cfg.node_name {
        return Err(reject(
            Refusal::Invalid,
            "node",
            format!(
                "{} is this node: its pods are endpoints (PUT /v1/endpoints/…), not remote ones",
                req.node
            ),
        ));
    }
    let Some(node) = nodes.get(&req.node) else {
        return Err(reject(
            Refusal::Invalid,
            "node",
            format!(
                "no node {} in the node table: add it first (`xylem node put`)",
                req.node
            ),
        ));
    };
    if !node.node.pod_cidr.contains(req.ip) {
        return Err(reject(
            Refusal::Invalid,
            "ip",
            format!(
                "{} is outside node {}'s pod CIDR {}: a node speaks only for its own pods",
                req.ip, req.node, node.node.pod_cidr
            ),
        ));
    }
    if let Some((other, _)) = remote.iter().find(|(k, r)| *k != key && r.ip == req.ip) {
        return Err(reject(
            Refusal::Conflict,
            "ip",
            format!(
                "{} is remote endpoint {other}'s address: delete it first",
                req.ip
            ),
        ));
    }
    Ok(())
}

/// The stored remote endpoints, each checked against the node table `nodes` as the API checks
/// it. One that no longer fits (its node gone from the configuration) stops the agent, naming
/// it: policies would otherwise select a pod the agent cannot place.
pub(super) fn restore_remote(
    cfg: &AgentConfig,
    store: &dyn StateStore,
    nodes: &BTreeMap<String, NodeEntry>,
) -> Result<BTreeMap<String, RemoteEndpointRequest>, Error> {
    let stored = store.list_as::<kind::RemoteEndpoints>()?;
    for (key, r) in &stored {
        check_remote(cfg, nodes, &stored, key, r).map_err(|e| {
            Error::State(format!(
                "stored remote endpoint {key} cannot be restored: {}: {}; fix the \
                 configuration, or start with --start-empty to discard the stored state",
                e.field, e.why
            ))
        })?;
    }
    if !stored.is_empty() {
        tracing::info!(
            remote_endpoints = stored.len(),
            "restored remote endpoints from the state store"
        );
    }
    Ok(stored)
}

/// The remote endpoints of `node`, by key.
fn pods_of<'a>(
    remote: &'a BTreeMap<String, RemoteEndpointRequest>,
    node: &'a str,
) -> impl Iterator<Item = (&'a String, &'a RemoteEndpointRequest)> {
    remote.iter().filter(move |(_, r)| r.node == node)
}

/// Refuses (409) to delete node `node` while remote endpoints name it: deleting them with it
/// would silently change what the policies select; naming them lets the caller decide.
pub(super) fn refuse_while_node_has_pods(
    remote: &BTreeMap<String, RemoteEndpointRequest>,
    node: &str,
) -> Result<(), Rejected> {
    let keys: Vec<&str> = pods_of(remote, node).map(|(k, _)| k.as_str()).collect();
    if keys.is_empty() {
        return Ok(());
    }
    Err(reject(
        Refusal::Conflict,
        "name",
        format!(
            "node {node} has remote endpoints: {}; delete them first \
             (`xylem remote-endpoint delete NS/NAME`)",
            keys.join(", ")
        ),
    ))
}

/// Refuses (409) a new pod CIDR for `node` that one of its remote endpoints falls outside of.
pub(super) fn refuse_orphaned_pods(
    remote: &BTreeMap<String, RemoteEndpointRequest>,
    node: &NodeConfig,
) -> Result<(), Rejected> {
    let outside: Vec<String> = pods_of(remote, &node.name)
        .filter(|(_, r)| !node.pod_cidr.contains(r.ip))
        .map(|(k, r)| format!("{k} ({})", r.ip))
        .collect();
    if outside.is_empty() {
        return Ok(());
    }
    Err(reject(
        Refusal::Conflict,
        "pod_cidr",
        format!(
            "remote endpoints of node {} are outside {}: {}; delete them first \
             (`xylem remote-endpoint delete NS/NAME`)",
            node.name,
            node.pod_cidr,
            outside.join(", ")
        ),
    ))
}

impl AgentState {
    /// The remote endpoints as `GET /v1/remote-endpoints` answers them, each with the identity
    /// the last compilation gave its labels.
    pub fn remote_endpoints(&self) -> Vec<RemoteEndpointView> {
        // The policy lock before the underlay's, as publications take them.
        let ids = self
            .policy
            .lock()
            .map(|p| p.remote.clone())
            .unwrap_or_default();
        let Ok(under) = self.underlay.lock() else {
            return Vec::new();
        };
        under
            .remote
            .iter()
            .map(|(key, r)| {
                let (namespace, name) = split_key(key);
                RemoteEndpointView {
                    namespace: namespace.into(),
                    name: name.into(),
                    node: r.node.clone(),
                    ip: r.ip,
                    identity: ids.get(&r.ip).copied(),
                    labels: r.labels.clone(),
                }
            })
            .collect()
    }

    /// Adds or replaces the remote endpoint `namespace/name` (see the module documentation
    /// for the checks), stores it and publishes tables that carry it. Returns it and whether
    /// it is new. A refused request changes nothing.
    pub fn put_remote_endpoint(
        &self,
        namespace: &str,
        name: &str,
        req: RemoteEndpointRequest,
    ) -> Result<(RemoteEndpointView, bool), Rejected> {
        check_name("namespace", namespace)?;
        check_name("name", name)?;
        let key = format!("{namespace}/{name}");
        let ops = vec![StoreOp::put::<kind::RemoteEndpoints>(&key, &req)?];
        let r = self.publish_underlay(
            |next| {
                check_remote(&self.cfg, &next.nodes, &next.remote, &key, &req)?;
                let created = next.remote.insert(key.clone(), req.clone()).is_none();
                Ok(Some(created))
            },
            ops,
        )?;
        let Some((created, revision)) = r else {
            return Err(reject(
                Refusal::Failed,
                "-",
                "the remote endpoint was not published",
            ));
        };
        tracing::info!(remote_endpoint = %key, node = %req.node, ip = %req.ip, revision, created, "remote endpoint set");
        let view = self
            .remote_endpoints()
            .into_iter()
            .find(|v| v.namespace == namespace && v.name == name)
            .ok_or_else(|| reject(Refusal::Failed, "-", "the remote endpoint went away"))?;
        Ok((view, created))
    }

    /// Removes the remote endpoint `namespace/name` and publishes tables without it; `false`
    /// if there is no such remote endpoint.
    pub fn delete_remote_endpoint(&self, namespace: &str, name: &str) -> Result<bool, Rejected> {
        check_name("namespace", namespace)?;
        check_name("name", name)?;
        let key = format!("{namespace}/{name}");
        let ops = vec![StoreOp::delete::<kind::RemoteEndpoints>(&key)];
        let r = self.publish_underlay(|next| Ok(next.remote.remove(&key).map(|_| ())), ops)?;
        let Some(((), revision)) = r else {
            return Ok(false);
        };
        tracing::info!(remote_endpoint = %key, revision, "remote endpoint deleted");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xylem_api::NodeSource;

    const CFG: &str = "node_name: node1\npod_cidr: 10.200.0.0/24\n\
        gateway: { ip: 10.200.0.1, mac: \"0e:78:79:6c:00:01\" }\nports:\n  \
        - { ifname: xyup, kind: uplink, ip: 10.199.0.11, mac: \"02:00:00:00:01:0b\" }\n";

    fn nodes() -> BTreeMap<String, NodeEntry> {
        [
            ("node1", "10.200.0.0/24", 11),
            ("node2", "10.200.1.0/24", 12),
        ]
        .into_iter()
        .map(|(name, cidr, last)| {
            let e = NodeEntry {
                node: NodeConfig {
                    name: name.into(),
                    node_ip: [10, 199, 0, last].into(),
                    pod_cidr: cidr.parse().unwrap(),
                    encryption: None,
                },
                source: NodeSource::Api,
            };
            (name.to_string(), e)
        })
        .collect()
    }

    fn req(node: &str, ip: [u8; 4], labels: &[(&str, &str)]) -> RemoteEndpointRequest {
        RemoteEndpointRequest {
            node: node.into(),
            ip: ip.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn a_remote_endpoint_is_checked_against_its_node_naming_the_field() {
        let cfg = AgentConfig::parse(CFG).unwrap();
        let nodes = nodes();
        let mut remote = BTreeMap::new();
        let ok = req("node2", [10, 200, 1, 10], &[("app", "server")]);
        check_remote(&cfg, &nodes, &remote, "default/server", &ok).unwrap();
        remote.insert("default/server".to_string(), ok.clone());
        // Replacing itself with the same address is fine.
        check_remote(&cfg, &nodes, &remote, "default/server", &ok).unwrap();
        let cases = [
            (req("node2", [10, 200, 0, 10], &[]), "ip", Refusal::Invalid),
            (
                req("node1", [10, 200, 0, 10], &[]),
                "node",
                Refusal::Invalid,
            ),
            (
                req("node9", [10, 200, 9, 10], &[]),
                "node",
                Refusal::Invalid,
            ),
            (req("node2", [10, 200, 1, 10], &[]), "ip", Refusal::Conflict),
            (
                req("node2", [10, 200, 1, 11], &[("app", "bad value")]),
                "labels.app",
                Refusal::Invalid,
            ),
        ];
        for (r, field, refusal) in cases {
            let e = check_remote(&cfg, &nodes, &remote, "default/other", &r).unwrap_err();
            assert_eq!((e.field.as_str(), e.refusal), (field, refusal), "{}", e.why);
        }
    }

    #[test]
    fn stored_remote_endpoints_are_restored_and_one_whose_node_is_gone_stops_the_start() {
        let d = std::env::temp_dir().join(format!("xylem-remote-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let store = crate::state::FileStore::open(&d).unwrap();
        let cfg = AgentConfig::parse(CFG).unwrap();
        let r = req("node2", [10, 200, 1, 10], &[("app", "server")]);
        store
            .put_as::<kind::RemoteEndpoints>("default/server", &r)
            .unwrap();
        let reopened = crate::state::FileStore::open(&d).unwrap();
        let restored = restore_remote(&cfg, &reopened, &nodes()).unwrap();
        assert_eq!(restored["default/server"], r);
        let mut without = nodes();
        without.remove("node2");
        let err = restore_remote(&cfg, &reopened, &without)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("default/server") && err.contains("node") && err.contains("--start-empty"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_node_with_remote_endpoints_is_neither_deleted_nor_shrunk_under_them() {
        let remote = BTreeMap::from([(
            "default/server".to_string(),
            req("node2", [10, 200, 1, 200], &[]),
        )]);
        let e = refuse_while_node_has_pods(&remote, "node2").unwrap_err();
        assert_eq!(e.refusal, Refusal::Conflict);
        assert!(e.why.contains("default/server"), "{}", e.why);
        refuse_while_node_has_pods(&remote, "node3").unwrap();
        let mut node2 = nodes()["node2"].node.clone();
        refuse_orphaned_pods(&remote, &node2).unwrap();
        node2.pod_cidr = "10.200.1.0/25".parse().unwrap();
        let e = refuse_orphaned_pods(&remote, &node2).unwrap_err();
        assert_eq!(e.field, "pod_cidr");
        assert_eq!(
            specs(&remote),
            [EndpointSpec {
                ip: [10, 200, 1, 200].into(),
                namespace: "default".into(),
                labels: BTreeMap::new(),
            }]
        );
    }
}

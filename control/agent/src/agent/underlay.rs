//! The underlay: the cluster's other nodes (the node table), the MACs the slow path resolved
//! for them, and the ESP SAs the key manager (the `encryption` module) keeps for them.
//!
//! The node table is the configuration's `nodes` plus those put through the API (kept in the
//! state store, kind `nodes`, and winning over a configuration entry of the same name). A
//! change is checked by the configuration's own rules (`AgentConfig::validate`), so a node the
//! API accepts is one the configuration file would have accepted.
//!
//! Every revision of the tables, whatever changed, is built from the node table, the current
//! neighbours and the current SAs (see `AgentState::publish_full`): no revision forgets them.
//! The underlay thread (`xylem-underlay`) publishes a new revision when the slow path learns a
//! MAC (checked every [`NEIGHBOR_CHECK`]), when the key file changes (polled every
//! [`KEY_POLL`]) and when a rotated-out key's grace period ends.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xylem_api::config::{AgentConfig, NodeConfig, check_node_name};
use xylem_api::{
    ENCRYPTION_DISABLED, ENCRYPTION_IPSEC, EncryptionStatus, NodeRequest, NodeSource, NodeView,
    RemoteEndpointRequest,
};
use xylem_dataplane::esp::PeerSas;
use xylem_dataplane::neighbor::Neighbors;
use xylem_dataplane::tables::MacAddr;
use xylem_policy::EndpointSpec;
use xylem_tables::Underlay;

use super::encryption::{ESP_DROP_REASONS, KEY_POLL, KeyState, encrypting_peers, read_key_file};
use super::*;
use crate::state::{StateStore, TypedStore, kind};

/// How often the underlay thread checks whether the slow path learned a MAC.
pub(super) const NEIGHBOR_CHECK: Duration = Duration::from_millis(100);

/// A node of the table and where it comes from.
#[derive(Clone, Debug)]
pub(super) struct NodeEntry {
    pub(super) node: NodeConfig,
    pub(super) source: NodeSource,
}

/// The node table, the key manager's state and the other nodes' pods; locked after
/// `services`.
#[derive(Clone, Debug, Default)]
pub(super) struct UnderlayState {
    pub(super) nodes: BTreeMap<String, NodeEntry>,
    pub(super) keys: KeyState,
    /// The other nodes' pods, keyed `namespace/name` (see the `remote` module). Here, with
    /// the node table, because each one belongs to a node: a node change and a remote pod
    /// change are checked against each other under one lock.
    pub(super) remote: BTreeMap<String, RemoteEndpointRequest>,
}

/// What one revision's tables take from the underlay (owned, so [`Underlay`] can borrow it).
pub(super) struct UnderlaySnapshot {
    nodes: Vec<NodeConfig>,
    neighbors: BTreeMap<Ipv4Addr, MacAddr>,
    sas: BTreeMap<String, Arc<PeerSas>>,
    remote: Vec<EndpointSpec>,
}

impl UnderlaySnapshot {
    /// As the table builder takes it.
    pub(super) fn underlay<'a>(&'a self, cfg: &'a AgentConfig) -> Underlay<'a> {
        Underlay {
            node_name: &cfg.node_name,
            pod_cidr: Some(cfg.pod_cidr),
            nodes: &self.nodes,
            encrypts: cfg.encryption.is_some(),
            neighbors: Some(&self.neighbors),
            sas: Some(&self.sas),
            remote: &self.remote,
        }
    }
}

impl UnderlayState {
    /// The nodes, by name.
    fn node_list(&self) -> impl Iterator<Item = &NodeConfig> {
        self.nodes.values().map(|e| &e.node)
    }

    /// The node table, the current neighbours and the SAs of every encrypting peer (built or
    /// kept by the key manager).
    pub(super) fn snapshot(
        &mut self,
        cfg: &AgentConfig,
        neighbors: &Neighbors,
    ) -> UnderlaySnapshot {
        let nodes: Vec<NodeConfig> = self.node_list().cloned().collect();
        let sas = self.keys.peer_sas(encrypting_peers(cfg, nodes.iter()));
        UnderlaySnapshot {
            nodes,
            neighbors: neighbors.snapshot(),
            sas,
            remote: super::remote::specs(&self.remote),
        }
    }
}

/// The node table at start: the configuration's nodes, replaced by the stored ones of the same
/// name, and the stored others; the whole checked as the configuration is. A stored node that
/// no longer fits (the configuration changed under it) stops the agent, naming it.
pub(super) fn restore_nodes(
    cfg: &AgentConfig,
    store: &dyn StateStore,
) -> Result<BTreeMap<String, NodeEntry>, Error> {
    let mut nodes: BTreeMap<String, NodeEntry> = cfg
        .nodes
        .iter()
        .map(|n| {
            let e = NodeEntry {
                node: n.clone(),
                source: NodeSource::Config,
            };
            (n.name.clone(), e)
        })
        .collect();
    let stored = store.list_as::<kind::Nodes>()?;
    // One at a time, each checked last: a misfit is named, not the node it collides with.
    for (name, node) in &stored {
        let entry = NodeEntry {
            node: node.clone(),
            source: NodeSource::Api,
        };
        nodes.insert(name.clone(), entry);
        check_nodes(cfg, &nodes, name).map_err(|r| {
            Error::State(format!(
                "stored node {name} cannot be restored: {}: {}; fix the configuration, or                  start with --start-empty to discard the stored state",
                r.field, r.why
            ))
        })?;
    }
    if !stored.is_empty() {
        tracing::info!(nodes = stored.len(), "restored nodes from the state store");
    }
    Ok(nodes)
}

/// Checks `nodes` by the configuration's rules, the node `last` listed last so that a conflict
/// is reported on its fields (`pod_cidr`, `node_ip`, `encryption`, `name`).
fn check_nodes(
    cfg: &AgentConfig,
    nodes: &BTreeMap<String, NodeEntry>,
    last: &str,
) -> Result<(), Rejected> {
    let mut c = cfg.clone();
    c.nodes = nodes
        .values()
        .filter(|e| e.node.name != last)
        .chain(nodes.get(last))
        .map(|e| e.node.clone())
        .collect();
    c.validate().map_err(|e| match e {
        xylem_api::Error::Config(ce) => {
            // `nodes[3].pod_cidr` → `pod_cidr`: the request's own field.
            let field = match ce.field.split_once("].") {
                Some((head, f)) if head.starts_with("nodes[") => f.to_string(),
                _ => ce.field.clone(),
            };
            reject(Refusal::Invalid, &field, ce.why)
        }
        other => reject(Refusal::Invalid, "body", other.to_string()),
    })
}

fn rejected_name(e: xylem_api::Error) -> Rejected {
    match e {
        xylem_api::Error::Config(ce) => reject(Refusal::Invalid, "name", ce.why),
        other => reject(Refusal::Invalid, "name", other.to_string()),
    }
}

/// Starts the underlay thread (see the module documentation); `neighbors_seen` is the
/// neighbours' generation the current tables were built from.
pub(super) fn start(
    agent: Weak<AgentState>,
    stop: Arc<AtomicBool>,
    neighbors_seen: u64,
) -> Result<JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name("xylem-underlay".into())
        .spawn(move || {
            let mut seen = neighbors_seen;
            let mut polled: Option<Instant> = None;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(NEIGHBOR_CHECK);
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Some(agent) = agent.upgrade() else { break };
                agent.underlay_tick(&mut seen, &mut polled);
            }
        })
        .map_err(|source| Error::Io {
            what: "starting the underlay thread".into(),
            source,
        })
}

impl AgentState {
    /// The initial key state: the key file read once (see the `encryption` module).
    pub(super) fn initial_keys(cfg: &AgentConfig) -> KeyState {
        let mut keys = KeyState::default();
        if let Some(e) = &cfg.encryption {
            keys.load(
                &e.key_file,
                read_key_file(&e.key_file),
                Instant::now(),
                Duration::from_secs(e.grace_period_s),
            );
        }
        keys
    }

    /// One tick of the underlay thread: publishes when the neighbours changed since `seen`, or
    /// (every [`KEY_POLL`] since `polled`) the key file changed or a grace key expired.
    fn underlay_tick(&self, seen: &mut u64, polled: &mut Option<Instant>) {
        let generation = self.neighbors.generation();
        let neighbors_changed = *seen != generation;
        let now = Instant::now();
        let read = match &self.cfg.encryption {
            Some(e) if polled.is_none_or(|t| now.duration_since(t) >= KEY_POLL) => {
                *polled = Some(now);
                Some((e, read_key_file(&e.key_file)))
            }
            _ => None,
        };
        if !neighbors_changed && read.is_none() {
            return;
        }
        let r = self.publish_underlay(
            |next| {
                let mut changed = neighbors_changed;
                if let Some((e, read)) = read {
                    let grace = Duration::from_secs(e.grace_period_s);
                    changed |= next.keys.load(&e.key_file, read, now, grace);
                    changed |= next.keys.due(now) && next.keys.ring.expire(now);
                }
                Ok(changed.then_some(()))
            },
            Vec::new(),
        );
        match r {
            Ok(Some(((), revision))) => {
                *seen = generation;
                tracing::debug!(revision, "underlay change published");
            }
            Ok(None) => *seen = generation,
            // Tried again next tick (the neighbours' generation is left as it was).
            Err(e) => {
                tracing::error!(field = %e.field, error = %e.why, "publishing an underlay change failed")
            }
        }
    }

    /// Applies `change` to a copy of the underlay state under every lock a publication takes
    /// (bindings, policy, services, underlay, in that order), and publishes a revision built
    /// from the copy when it says so (`Some`), writing `ops`; the copy becomes the state when
    /// the revision is in, or when nothing needed publishing. A refusal changes nothing.
    pub(super) fn publish_underlay<T>(
        &self,
        change: impl FnOnce(&mut UnderlayState) -> Result<Option<T>, Rejected>,
        ops: Vec<StoreOp<'_>>,
    ) -> Result<Option<(T, u64)>, Rejected> {
        let poisoned = || reject(Refusal::Failed, "-", "agent state poisoned");
        let bindings = self.bindings.lock().map_err(|_| poisoned())?;
        let mut ps = self.lock_policy()?;
        let mut svc = self.services.lock().map_err(|_| poisoned())?;
        let mut under = self.underlay.lock().map_err(|_| poisoned())?;
        let mut next = under.clone();
        let Some(t) = change(&mut next)? else {
            *under = next;
            return Ok(None);
        };
        let revision = self
            .publish_full(&bindings, &mut ps, None, &mut svc, None, &mut next, ops)
            .map_err(|e| e.rejected(Refusal::Invalid, "-"))?;
        *under = next;
        Ok(Some((t, revision)))
    }

    /// The node table as `GET /v1/nodes` answers it.
    pub fn nodes(&self) -> Vec<NodeView> {
        let Ok(under) = self.underlay.lock() else {
            return Vec::new();
        };
        under.nodes.values().map(|e| self.node_view(e)).collect()
    }

    fn node_view(&self, e: &NodeEntry) -> NodeView {
        let local = e.node.name == self.cfg.node_name;
        NodeView {
            name: e.node.name.clone(),
            node_ip: e.node.node_ip,
            pod_cidr: e.node.pod_cidr,
            encryption: !local && e.node.encrypted(self.cfg.encryption.is_some()),
            mac: self.neighbors.get(e.node.node_ip).map(|m| m.to_string()),
            local,
            source: e.source,
        }
    }

    /// Adds or replaces the node `name`, checked as the configuration's nodes are, stored, and
    /// published. Returns it and whether it is new. A refused request changes nothing.
    pub fn put_node(&self, name: &str, req: NodeRequest) -> Result<(NodeView, bool), Rejected> {
        check_node_name("name", name).map_err(rejected_name)?;
        let node = NodeConfig {
            name: name.to_string(),
            node_ip: req.node_ip,
            pod_cidr: req.pod_cidr,
            encryption: req.encryption,
        };
        let entry = NodeEntry {
            node: node.clone(),
            source: NodeSource::Api,
        };
        let ops = vec![StoreOp::put::<kind::Nodes>(name, &node)?];
        let r = self.publish_underlay(
            |next| {
                let created = !next.nodes.contains_key(name);
                next.nodes.insert(name.to_string(), entry.clone());
                check_nodes(&self.cfg, &next.nodes, name)?;
                super::remote::refuse_orphaned_pods(&next.remote, &entry.node)?;
                Ok(Some(created))
            },
            ops,
        )?;
        let Some((created, revision)) = r else {
            return Err(reject(Refusal::Failed, "-", "the node was not published"));
        };
        tracing::info!(node = name, revision, created, "node set");
        Ok((self.node_view(&entry), created))
    }

    /// Removes the node `name` put through the API (a configuration entry of the same name
    /// takes its place again); `false` if there is no such node. A node of the configuration
    /// file alone is refused: it would be back at the next start.
    pub fn delete_node(&self, name: &str) -> Result<bool, Rejected> {
        check_node_name("name", name).map_err(rejected_name)?;
        let from_config = self.cfg.nodes.iter().find(|n| n.name == name).cloned();
        let ops = vec![StoreOp::delete::<kind::Nodes>(name)];
        let r = self.publish_underlay(
            |next| {
                match next.nodes.get(name).map(|e| e.source) {
                    None => return Ok(None),
                    Some(NodeSource::Config) => {
                        return Err(reject(
                            Refusal::Conflict,
                            "name",
                            format!(
                                "node {name} is in the agent's configuration file (nodes): \
                                 remove it there and restart the agent"
                            ),
                        ));
                    }
                    Some(NodeSource::Api) => {}
                }
                super::remote::refuse_while_node_has_pods(&next.remote, name)?;
                match from_config {
                    Some(node) => {
                        next.nodes.insert(
                            name.to_string(),
                            NodeEntry {
                                node,
                                source: NodeSource::Config,
                            },
                        );
                        check_nodes(&self.cfg, &next.nodes, name)?;
                    }
                    None => {
                        next.nodes.remove(name);
                    }
                }
                Ok(Some(()))
            },
            ops,
        )?;
        let Some(((), revision)) = r else {
            return Ok(false);
        };
        tracing::info!(node = name, revision, "node deleted");
        Ok(true)
    }

    /// What `GET /v1/encryption` answers.
    pub fn encryption_status(&self) -> EncryptionStatus {
        let mut errors: BTreeMap<String, u64> = ESP_DROP_REASONS
            .iter()
            .map(|r| (r.to_string(), 0))
            .collect();
        for w in &self.workers {
            for (reason, n) in &w.link.stats.snapshot().drops {
                if let Some(total) = errors.get_mut(reason.as_ref()) {
                    *total += n;
                }
            }
        }
        let Some(enc) = &self.cfg.encryption else {
            return EncryptionStatus {
                mode: ENCRYPTION_DISABLED.into(),
                key_file: None,
                current_key_id: None,
                keys: Vec::new(),
                peers: Vec::new(),
                errors,
                last_error: None,
            };
        };
        let under = self.underlay.lock().ok();
        let keys = under.as_ref().map(|u| &u.keys);
        let mut last_error = keys.and_then(|k| k.last_error.clone());
        if errors.get("esp-seq-exhausted").is_some_and(|&n| n > 0) {
            let note = "an outbound SA used its last sequence number and its packets are \
                        dropped (esp-seq-exhausted): add a new key to the key file";
            last_error = Some(match last_error {
                Some(e) => format!("{e}; {note}"),
                None => note.into(),
            });
        }
        EncryptionStatus {
            mode: ENCRYPTION_IPSEC.into(),
            key_file: Some(enc.key_file.display().to_string()),
            current_key_id: keys.and_then(|k| k.ring.current_id()),
            keys: keys
                .map(|k| k.ring.views(Instant::now()))
                .unwrap_or_default(),
            peers: under
                .as_ref()
                .map(|u| {
                    u.keys
                        .peer_views(encrypting_peers(&self.cfg, u.node_list()))
                })
                .unwrap_or_default(),
            errors,
            last_error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "node_name: node1\npod_cidr: 10.200.0.0/24\n\
        gateway: { ip: 10.200.0.1, mac: \"0e:78:79:6c:00:01\" }\nports:\n  \
        - { ifname: xyp0, kind: pod, ip: 10.200.0.10, mac: \"02:00:00:00:00:0a\", name: a }\n";

    fn cfg(extra: &str) -> AgentConfig {
        AgentConfig::parse(&format!("{BASE}{extra}")).unwrap()
    }

    fn entry(name: &str, ip: [u8; 4], cidr: &str, encryption: Option<bool>) -> NodeEntry {
        NodeEntry {
            node: NodeConfig {
                name: name.into(),
                node_ip: ip.into(),
                pod_cidr: cidr.parse().unwrap(),
                encryption,
            },
            source: NodeSource::Api,
        }
    }

    fn with(
        table: &BTreeMap<String, NodeEntry>,
        e: NodeEntry,
    ) -> (BTreeMap<String, NodeEntry>, String) {
        let mut t = table.clone();
        let name = e.node.name.clone();
        t.insert(name.clone(), e);
        (t, name)
    }

    #[test]
    fn a_node_is_checked_by_the_configurations_rules_naming_the_requests_field() {
        let c = cfg(UPLINK);
        let mut table = BTreeMap::new();
        let (t, n) = with(
            &table,
            entry("node2", [10, 199, 0, 12], "10.200.1.0/24", None),
        );
        check_nodes(&c, &t, &n).unwrap();
        table = t;
        let cases = [
            (
                entry("node3", [10, 199, 0, 13], "10.200.0.128/25", None),
                "pod_cidr",
            ),
            (
                entry("node3", [10, 199, 0, 13], "10.200.1.0/25", None),
                "pod_cidr",
            ),
            (
                entry("node3", [10, 199, 0, 12], "10.200.2.0/24", None),
                "node_ip",
            ),
            (
                entry("node3", [10, 199, 0, 13], "10.200.2.0/24", Some(true)),
                "encryption",
            ),
            (
                entry("node1", [10, 199, 0, 99], "10.200.0.0/24", None),
                "node_ip",
            ),
        ];
        for (e, field) in cases {
            let (t, n) = with(&table, e);
            let r = check_nodes(&c, &t, &n).unwrap_err();
            assert_eq!(r.field, field, "{n}: {}", r.why);
            assert_eq!(r.refusal, Refusal::Invalid);
        }
        // This node's own entry, agreeing with its uplink and pod CIDR, is fine.
        let (t, n) = with(
            &table,
            entry("node1", [10, 199, 0, 11], "10.200.0.0/24", None),
        );
        check_nodes(&c, &t, &n).unwrap();
        // Without an uplink a peer has no way out.
        let (t, n) = with(
            &BTreeMap::new(),
            entry("node2", [10, 199, 0, 12], "10.200.1.0/24", None),
        );
        let r = check_nodes(&cfg(""), &t, &n).unwrap_err();
        assert_eq!(r.field, "name");
        assert!(r.why.contains("uplink"), "{}", r.why);
        // A bad name.
        let r = check_node_name("name", "Node_2")
            .map_err(rejected_name)
            .unwrap_err();
        assert_eq!(r.field, "name");
    }

    const UPLINK: &str =
        "  - { ifname: xyup, kind: uplink, ip: 10.199.0.11, mac: \"02:00:00:00:01:0b\" }\n";

    #[test]
    fn stored_nodes_win_over_the_configurations_and_a_stored_misfit_stops_the_start() {
        let d = std::env::temp_dir().join(format!("xylem-nodes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let store = crate::state::FileStore::open(&d).unwrap();
        let c = cfg(&format!(
            "{UPLINK}nodes:\n  - {{ name: node2, node_ip: 10.199.0.12, pod_cidr: 10.200.1.0/24 }}\n"
        ));
        let e = entry("node2", [10, 199, 0, 22], "10.200.1.0/24", Some(false));
        store.put_as::<kind::Nodes>("node2", &e.node).unwrap();
        let e3 = entry("node3", [10, 199, 0, 13], "10.200.3.0/24", None);
        store.put_as::<kind::Nodes>("node3", &e3.node).unwrap();
        let reopened = crate::state::FileStore::open(&d).unwrap();
        let t = restore_nodes(&c, &reopened).unwrap();
        assert_eq!(t["node2"].node.node_ip, Ipv4Addr::new(10, 199, 0, 22));
        assert_eq!(t["node2"].source, NodeSource::Api);
        assert_eq!(t["node3"].source, NodeSource::Api);
        let bad = entry("node4", [10, 199, 0, 13], "10.200.4.0/24", None);
        reopened.put_as::<kind::Nodes>("node4", &bad.node).unwrap();
        let err = restore_nodes(&c, &reopened).unwrap_err().to_string();
        assert!(err.contains("node4") && err.contains("node_ip"), "{err}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn every_snapshot_carries_the_sas_of_the_encrypting_peers_only() {
        let c = cfg(&format!(
            "{UPLINK}encryption: {{ key_file: /nonexistent/keys }}\nnodes:\n  \
             - {{ name: node2, node_ip: 10.199.0.12, pod_cidr: 10.200.1.0/24 }}\n  \
             - {{ name: node3, node_ip: 10.199.0.13, pod_cidr: 10.200.2.0/24, encryption: false }}\n"
        ));
        let dir = std::env::temp_dir().join(format!("xylem-nodes-sas-{}", std::process::id()));
        let store = crate::state::FileStore::open(&dir).unwrap();
        let mut under = UnderlayState {
            nodes: restore_nodes(&c, &store).unwrap(),
            ..Default::default()
        };
        let neighbors = Neighbors::new();
        // Without a key: the encrypting peer has SAs to send with none (dropped `no-key`).
        let snap = under.snapshot(&c, &neighbors);
        assert!(snap.sas["node2"].out.is_none());
        assert!(!snap.sas.contains_key("node3"));
        let text = "1 rfc4106(gcm(aes)) 0102030405060708090a0b0c0d0e0f1011121314 128\n";
        under.keys.load(
            std::path::Path::new("/k"),
            (Ok(text.into()), None),
            Instant::now(),
            Duration::from_secs(300),
        );
        neighbors.learn(Ipv4Addr::new(10, 199, 0, 12), MacAddr([2, 0, 0, 0, 0, 12]));
        let snap = under.snapshot(&c, &neighbors);
        assert_eq!(snap.sas["node2"].out.as_ref().unwrap().key().spi(), 1);
        let u = snap.underlay(&c);
        assert_eq!(u.nodes.len(), 2);
        assert!(
            u.neighbors
                .unwrap()
                .contains_key(&Ipv4Addr::new(10, 199, 0, 12))
        );
    }
}

//! The agent's persistent state: every object it is given (endpoints, policies and the
//! identities they were given, services, nodes, the other nodes' pods) and what it learned (the FQDN cache), kept so a restarted agent restores the same dataplane state
//! with no client action.
//!
//! Callers use the [`StateStore`] trait (get/put/delete/list by kind and key), through
//! [`TypedStore`], which knows each [`Kind`]'s value type, so another backend (etcd, for
//! cluster mesh) can replace [`FileStore`] without touching them.
//!
//! [`FileStore`] keeps one JSON file per kind (`<state_dir>/<kind>.json`, a map from key to
//! object). Every write goes to a temporary file that is fsynced, renamed over the old one, and
//! the directory is fsynced: a crash leaves either the old or the new file, never half of one.
//! A file that cannot be read or parsed makes [`FileStore::open`] fail with a message naming it:
//! the agent then refuses to start rather than run half-configured (unless `--start-empty`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Error;

/// A kind of object the agent stores: its name in the store and the type of its values.
pub trait Kind {
    /// The kind's name in the store (the file `<state_dir>/<NAME>.json`).
    const NAME: &'static str;
    /// What each key of the kind holds.
    type Value: Serialize + DeserializeOwned;
}

/// The kinds the agent stores.
pub mod kind {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    use super::Kind;
    use xylem_api::config::PortConfig;

    /// Endpoints (pods), keyed `namespace/name`.
    #[derive(Debug)]
    pub struct Endpoints;
    impl Kind for Endpoints {
        const NAME: &'static str = "endpoints";
        type Value = StoredEndpoint;
    }

    /// A stored endpoint: its port binding (the fields of a configuration's port, at the top
    /// level) and, when a CNI plugin added it, the container it was added for. Stored:
    ///
    /// ```json
    /// {"default/web": {"ifname": "xyc3f2a", "kind": "pod", "ip": "10.200.0.20",
    ///                  "mac": "02:00:00:00:00:14", "name": "web", "namespace": "default",
    ///                  "cni": {"container_id": "3f2a…", "netns": "/var/run/netns/cni-1",
    ///                          "ifname": "eth0"}}}
    /// ```
    ///
    /// A value without `cni` (an endpoint added by `xylem endpoint put` or the lab, or stored by
    /// an agent without CNI support) reads as `cni: None`.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct StoredEndpoint {
        /// The port binding.
        #[serde(flatten)]
        pub port: PortConfig,
        /// The CNI attachment, when a CNI plugin added the endpoint.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub cni: Option<CniAttachment>,
    }

    /// The container a CNI plugin added an endpoint for: what its CHECK and GC look the
    /// endpoint up by, and why a restarting agent may drop the endpoint when its interface is
    /// gone (the container went while the agent was down; see the agent's `endpoints` module).
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CniAttachment {
        /// `CNI_CONTAINERID`.
        pub container_id: String,
        /// `CNI_NETNS`, when given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub netns: Option<String>,
        /// `CNI_IFNAME`, when given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub ifname: Option<String>,
    }

    /// Configured pod ports whose endpoint was deleted through the API, keyed by interface.
    #[derive(Debug)]
    pub struct UnboundPorts;
    impl Kind for UnboundPorts {
        const NAME: &'static str = "unbound-ports";
        type Value = Unbound;
    }

    /// The record of an unbound port: its key says it all (stored as `{}`).
    #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Unbound {}

    /// Network policies, keyed `namespace/name`.
    #[derive(Debug)]
    pub struct Policies;
    impl Kind for Policies {
        const NAME: &'static str = "policies";
        type Value = StoredPolicy;
    }

    /// A stored policy: the document as it was imported.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct StoredPolicy {
        /// The CiliumNetworkPolicy, as YAML.
        pub yaml: String,
    }

    /// Services, keyed `namespace/name` (see the agent's `services` module for why the parsed
    /// model and not the YAML).
    #[derive(Debug)]
    pub struct Services;
    impl Kind for Services {
        const NAME: &'static str = "services";
        type Value = StoredService;
    }

    /// A stored service: the Service as the agent holds it (its backends joined) and the
    /// EndpointSlices it was joined with, to join again when the Service or one slice changes.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct StoredService {
        /// The Service, validated, with its backends.
        pub service: xylem_services::Service,
        /// Its EndpointSlices, validated.
        pub slices: Vec<xylem_services::EndpointSlice>,
    }

    /// The cluster's nodes added or replaced through the API, keyed by node name (the value
    /// repeats it). Restored at start over the configuration's `nodes` of the same name.
    #[derive(Debug)]
    pub struct Nodes;
    impl Kind for Nodes {
        const NAME: &'static str = "nodes";
        type Value = xylem_api::config::NodeConfig;
    }

    /// The other nodes' pods this node applies policy to (see the agent's `remote` module),
    /// keyed `namespace/name`.
    #[derive(Debug)]
    pub struct RemoteEndpoints;
    impl Kind for RemoteEndpoints {
        const NAME: &'static str = "remote-endpoints";
        type Value = xylem_api::RemoteEndpointRequest;
    }

    /// Security identities: one object, key [`IDENTITIES_KEY`], mapping each identity to its
    /// labels.
    #[derive(Debug)]
    pub struct Identities;
    impl Kind for Identities {
        const NAME: &'static str = "identities";
        type Value = BTreeMap<u32, BTreeMap<String, String>>;
    }

    /// The one key of [`Identities`].
    pub const IDENTITIES_KEY: &str = "all";

    /// The FQDN cache (see the agent's `fqdn` module): per endpoint, keyed `namespace/name`,
    /// the DNS names its answers resolved and their addresses. Written in batches, at most once
    /// a second while it changes, and whole at a clean stop; a stored value that cannot be read
    /// is skipped with a warning (the pod resolves the name again) rather than stopping the
    /// agent. Stored:
    ///
    /// ```json
    /// {"default/pod-a": [{"name": "a.domain.com.",
    ///                     "ips": [{"ip": "192.0.2.10", "expires_at": 1795000000}]}]}
    /// ```
    ///
    /// `expires_at` is in Unix seconds; each name's addresses are listed oldest first (the
    /// order in which they are evicted beyond `fqdn.max_ips_per_name`).
    #[derive(Debug)]
    pub struct FqdnCache;
    impl Kind for FqdnCache {
        const NAME: &'static str = "fqdn-cache";
        type Value = Vec<StoredFqdnName>;
    }

    /// A name of a stored FQDN cache entry.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct StoredFqdnName {
        /// The DNS name, fully qualified (`a.domain.com.`).
        pub name: String,
        /// Its addresses, oldest first.
        pub ips: Vec<StoredFqdnIp>,
    }

    /// An address of a [`StoredFqdnName`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct StoredFqdnIp {
        /// The address.
        pub ip: std::net::Ipv4Addr,
        /// When it stops being an allowed destination, in Unix seconds.
        pub expires_at: u64,
    }
}

/// A store of JSON objects by kind and key.
pub trait StateStore: Send + Sync + std::fmt::Debug {
    /// The object `key` of `kind`, if any.
    fn get(&self, kind: &str, key: &str) -> Result<Option<Value>, Error>;
    /// Stores `value` as `key` of `kind`, durably, before returning.
    fn put(&self, kind: &str, key: &str, value: Value) -> Result<(), Error>;
    /// Removes `key` of `kind`; returns whether it existed.
    fn delete(&self, kind: &str, key: &str) -> Result<bool, Error>;
    /// Every object of `kind`, by key.
    fn list(&self, kind: &str) -> Result<BTreeMap<String, Value>, Error>;
    /// Stores (`Some`) or removes (`None`) several keys of `kind`, durably, before returning:
    /// a backend may do it in one write.
    fn put_many(&self, kind: &str, changes: Vec<(String, Option<Value>)>) -> Result<(), Error> {
        for (key, value) in changes {
            match value {
                Some(v) => self.put(kind, &key, v)?,
                None => {
                    self.delete(kind, &key)?;
                }
            }
        }
        Ok(())
    }
}

/// Typed access to any [`StateStore`]: each kind's values as their own type. A stored value
/// that is valid JSON but not of its kind's type is an error naming the kind and key.
pub trait TypedStore {
    /// The object `key` of kind `K`, if any.
    fn get_as<K: Kind>(&self, key: &str) -> Result<Option<K::Value>, Error>;
    /// Stores `value` as `key` of kind `K`, durably, before returning.
    fn put_as<K: Kind>(&self, key: &str, value: &K::Value) -> Result<(), Error>;
    /// Every object of kind `K`, by key.
    fn list_as<K: Kind>(&self) -> Result<BTreeMap<String, K::Value>, Error>;
}

/// A stored value of kind `K` as its type.
fn decode<K: Kind>(key: &str, v: Value) -> Result<K::Value, Error> {
    serde_json::from_value(v).map_err(|e| {
        Error::State(format!(
            "stored {} {key} (in {}.json in the state directory) cannot be read: {e}; start with \
             --start-empty to discard the stored state",
            K::NAME,
            K::NAME
        ))
    })
}

impl<S: StateStore + ?Sized> TypedStore for S {
    fn get_as<K: Kind>(&self, key: &str) -> Result<Option<K::Value>, Error> {
        self.get(K::NAME, key)?
            .map(|v| decode::<K>(key, v))
            .transpose()
    }

    fn put_as<K: Kind>(&self, key: &str, value: &K::Value) -> Result<(), Error> {
        let v = serde_json::to_value(value)
            .map_err(|e| Error::State(format!("{} {key} cannot be stored: {e}", K::NAME)))?;
        self.put(K::NAME, key, v)
    }

    fn list_as<K: Kind>(&self) -> Result<BTreeMap<String, K::Value>, Error> {
        self.list(K::NAME)?
            .into_iter()
            .map(|(key, v)| decode::<K>(&key, v).map(|t| (key, t)))
            .collect()
    }
}

/// The file backend: see the module documentation.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    kinds: Mutex<BTreeMap<String, BTreeMap<String, Value>>>,
}

/// The error for a state file that cannot be used.
fn corrupt(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::State(format!(
        "state file {} is unreadable or corrupt ({why}); the agent will not start half-configured: \
         repair or move the file away, or start with --start-empty to discard the stored state",
        path.display()
    ))
}

impl FileStore {
    /// Opens the store in `dir` (created if missing) and loads every `*.json` file in it. Fails
    /// on any file that cannot be read or parsed.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(dir).map_err(|source| {
            Error::File(xylem_api::FileError {
                what: "creating the state directory",
                path: dir.to_owned(),
                source,
            })
        })?;
        let mut kinds = BTreeMap::new();
        let rd = std::fs::read_dir(dir).map_err(|source| {
            Error::File(xylem_api::FileError {
                what: "reading the state directory",
                path: dir.to_owned(),
                source,
            })
        })?;
        for entry in rd.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let Some(kind) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let text = std::fs::read(&path).map_err(|e| corrupt(&path, e))?;
            let map: BTreeMap<String, Value> =
                serde_json::from_slice(&text).map_err(|e| corrupt(&path, e))?;
            kinds.insert(kind.to_string(), map);
        }
        Ok(FileStore {
            dir: dir.to_owned(),
            kinds: Mutex::new(kinds),
        })
    }

    /// Opens the store after moving every state file aside (`*.json` → `*.json.discarded`):
    /// `--start-empty`.
    pub fn open_empty(dir: &Path) -> Result<Self, Error> {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for entry in rd.flatten() {
                let path = entry.path();
                if path.extension().and_then(|e| e.to_str()) == Some("json") {
                    let mut to = path.clone().into_os_string();
                    to.push(".discarded");
                    std::fs::rename(&path, &to).map_err(|source| {
                        Error::File(xylem_api::FileError {
                            what: "moving a state file aside",
                            path: path.clone(),
                            source,
                        })
                    })?;
                    tracing::warn!(file = %path.display(), "state discarded (--start-empty)");
                }
            }
        }
        Self::open(dir)
    }

    /// The file of `kind`.
    pub fn path_of(&self, kind: &str) -> PathBuf {
        self.dir.join(format!("{kind}.json"))
    }

    fn write(&self, kind: &str, map: &BTreeMap<String, Value>) -> Result<(), Error> {
        let path = self.path_of(kind);
        let tmp = self.dir.join(format!(".{kind}.json.tmp"));
        let io = |what: &'static str, p: &Path| {
            let p = p.to_owned();
            move |source| {
                Error::File(xylem_api::FileError {
                    what,
                    path: p,
                    source,
                })
            }
        };
        let bytes = serde_json::to_vec_pretty(map).map_err(|e| Error::State(e.to_string()))?;
        let mut f = std::fs::File::create(&tmp).map_err(io("writing state", &tmp))?;
        f.write_all(&bytes).map_err(io("writing state", &tmp))?;
        f.sync_all().map_err(io("syncing state", &tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io("renaming state into place", &path))?;
        let d = std::fs::File::open(&self.dir).map_err(io("opening the state dir", &self.dir))?;
        d.sync_all()
            .map_err(io("syncing the state dir", &self.dir))?;
        Ok(())
    }
}

impl StateStore for FileStore {
    fn get(&self, kind: &str, key: &str) -> Result<Option<Value>, Error> {
        let kinds = self
            .kinds
            .lock()
            .map_err(|_| Error::State("poisoned".into()))?;
        Ok(kinds.get(kind).and_then(|m| m.get(key)).cloned())
    }

    fn put(&self, kind: &str, key: &str, value: Value) -> Result<(), Error> {
        let mut kinds = self
            .kinds
            .lock()
            .map_err(|_| Error::State("poisoned".into()))?;
        let mut map = kinds.get(kind).cloned().unwrap_or_default();
        map.insert(key.to_string(), value);
        // Written first, then kept: memory never holds what the disk does not.
        self.write(kind, &map)?;
        kinds.insert(kind.to_string(), map);
        Ok(())
    }

    fn delete(&self, kind: &str, key: &str) -> Result<bool, Error> {
        let mut kinds = self
            .kinds
            .lock()
            .map_err(|_| Error::State("poisoned".into()))?;
        let mut map = kinds.get(kind).cloned().unwrap_or_default();
        if map.remove(key).is_none() {
            return Ok(false);
        }
        self.write(kind, &map)?;
        kinds.insert(kind.to_string(), map);
        Ok(true)
    }

    fn list(&self, kind: &str) -> Result<BTreeMap<String, Value>, Error> {
        let kinds = self
            .kinds
            .lock()
            .map_err(|_| Error::State("poisoned".into()))?;
        Ok(kinds.get(kind).cloned().unwrap_or_default())
    }

    fn put_many(&self, kind: &str, changes: Vec<(String, Option<Value>)>) -> Result<(), Error> {
        let mut kinds = self
            .kinds
            .lock()
            .map_err(|_| Error::State("poisoned".into()))?;
        let mut map = kinds.get(kind).cloned().unwrap_or_default();
        let before = map.clone();
        for (key, value) in changes {
            match value {
                Some(v) => map.insert(key, v),
                None => map.remove(&key),
            };
        }
        if map == before {
            return Ok(());
        }
        self.write(kind, &map)?;
        kinds.insert(kind.to_string(), map);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xylem-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn each_kind_reads_back_as_its_own_type() {
        let d = tmpdir("typed");
        let s = FileStore::open(&d).unwrap();
        let policy = kind::StoredPolicy {
            yaml: "kind: CiliumNetworkPolicy\n".into(),
        };
        s.put_as::<kind::Policies>("default/p", &policy).unwrap();
        s.put_as::<kind::UnboundPorts>("veth9", &kind::Unbound {})
            .unwrap();
        let ids = BTreeMap::from([(300, BTreeMap::from([("app".into(), "a".into())]))]);
        s.put_as::<kind::Identities>(kind::IDENTITIES_KEY, &ids)
            .unwrap();
        let s2 = FileStore::open(&d).unwrap();
        assert_eq!(
            s2.get_as::<kind::Policies>("default/p").unwrap(),
            Some(policy)
        );
        assert_eq!(
            s2.list_as::<kind::UnboundPorts>()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            ["veth9"]
        );
        assert_eq!(
            s2.get_as::<kind::Identities>(kind::IDENTITIES_KEY).unwrap(),
            Some(ids)
        );
        // Valid JSON of the wrong shape: refused, naming the kind and the key.
        s2.put(
            kind::Policies::NAME,
            "default/q",
            serde_json::json!({"yml": 1}),
        )
        .unwrap();
        let e = s2.list_as::<kind::Policies>().unwrap_err().to_string();
        assert!(
            e.contains("policies default/q") && e.contains("--start-empty"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_endpoint_stored_without_cni_reads_back_and_one_with_it_round_trips() {
        let d = tmpdir("ep-cni");
        let s = FileStore::open(&d).unwrap();
        // As stored before the CNI attachment existed: the port's fields alone.
        let old = serde_json::json!({"ifname": "xyp0", "kind": "pod", "ip": "10.200.0.10",
            "mac": "02:00:00:00:00:0a", "name": "a", "namespace": "default",
            "labels": {"app": "a"}});
        s.put(kind::Endpoints::NAME, "default/a", old).unwrap();
        let a = s.get_as::<kind::Endpoints>("default/a").unwrap().unwrap();
        assert_eq!(a.cni, None);
        assert_eq!(a.port.ifname, "xyp0");
        assert_eq!(a.port.labels["app"], "a");
        let mut b = a.clone();
        b.port.ifname = "xyc1".into();
        b.cni = Some(kind::CniAttachment {
            container_id: "abc123".into(),
            netns: Some("/var/run/netns/cni-1".into()),
            ifname: Some("eth0".into()),
        });
        s.put_as::<kind::Endpoints>("default/b", &b).unwrap();
        let s2 = FileStore::open(&d).unwrap();
        assert_eq!(s2.get_as::<kind::Endpoints>("default/b").unwrap(), Some(b));
        // Written without `cni` when there is none: an older agent reads the file as before.
        let text = std::fs::read_to_string(d.join("endpoints.json")).unwrap();
        assert_eq!(text.matches("\"cni\"").count(), 1, "{text}");
        // The port's own fields are still checked: a misspelt one is an error naming the key.
        s2.put(
            kind::Endpoints::NAME,
            "default/c",
            serde_json::json!({"ifname": "xyp2", "kind": "pod", "ip": "10.200.0.12",
                "mac": "02:00:00:00:00:0c", "cni": {"container_id": "x", "colour": 1}}),
        )
        .unwrap();
        let e = s2.list_as::<kind::Endpoints>().unwrap_err().to_string();
        assert!(e.contains("endpoints default/c"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn put_get_list_delete_survive_reopening() {
        let d = tmpdir("rt");
        let s = FileStore::open(&d).unwrap();
        s.put(
            "endpoints",
            "default/a",
            serde_json::json!({"ip": "10.0.0.1"}),
        )
        .unwrap();
        s.put(
            "endpoints",
            "default/b",
            serde_json::json!({"ip": "10.0.0.2"}),
        )
        .unwrap();
        assert!(s.delete("endpoints", "default/b").unwrap());
        assert!(!s.delete("endpoints", "default/b").unwrap());
        let s2 = FileStore::open(&d).unwrap();
        assert_eq!(
            s2.get("endpoints", "default/a").unwrap().unwrap()["ip"],
            "10.0.0.1"
        );
        assert_eq!(s2.list("endpoints").unwrap().len(), 1);
        assert!(!d.join(".endpoints.json.tmp").exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn put_many_writes_and_removes_several_keys_at_once() {
        let d = tmpdir("many");
        let s = FileStore::open(&d).unwrap();
        let v = vec![kind::StoredFqdnName {
            name: "a.domain.com.".into(),
            ips: vec![kind::StoredFqdnIp {
                ip: [192, 0, 2, 10].into(),
                expires_at: 1_795_000_000,
            }],
        }];
        s.put_as::<kind::FqdnCache>("default/b", &v).unwrap();
        let json = serde_json::to_value(&v).unwrap();
        s.put_many(
            kind::FqdnCache::NAME,
            vec![("default/a".into(), Some(json)), ("default/b".into(), None)],
        )
        .unwrap();
        let s2 = FileStore::open(&d).unwrap();
        let all = s2.list_as::<kind::FqdnCache>().unwrap();
        assert_eq!(all.keys().collect::<Vec<_>>(), ["default/a"]);
        assert_eq!(all["default/a"], v);
        let text = std::fs::read_to_string(d.join("fqdn-cache.json")).unwrap();
        assert!(text.contains("\"expires_at\": 1795000000"), "{text}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_corrupt_file_is_refused_by_name_unless_started_empty() {
        let d = tmpdir("corrupt");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("endpoints.json"), b"{\"default/a\": ").unwrap();
        let e = FileStore::open(&d).unwrap_err().to_string();
        assert!(
            e.contains("endpoints.json") && e.contains("--start-empty"),
            "{e}"
        );
        let s = FileStore::open_empty(&d).unwrap();
        assert!(s.list("endpoints").unwrap().is_empty());
        assert!(d.join("endpoints.json.discarded").exists());
        let _ = std::fs::remove_dir_all(&d);
    }
}

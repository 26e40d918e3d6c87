//! The network configuration: the plugin's entry of a conflist as the runtime hands it over on
//! stdin (with `cniVersion`, `name`, `runtimeConfig` and `prevResult` filled in), and the
//! conflist file itself for checking a deployment.
//!
//! Pure parsing of untrusted bytes: no I/O, so it is tested and fuzzed on byte arrays. Every
//! field is either understood or refused by name, so a configuration never means something
//! other than what it says.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::{CniError, ErrorCode};
use crate::result::CniResult;

/// The plugin's `type`, and the name of its binary.
pub const PLUGIN_TYPE: &str = "xylem-cni";

/// The agent's API socket when the configuration names none (the agent's own default).
pub const DEFAULT_AGENT_SOCKET: &str = "/run/xylem/agent.sock";

/// The versions the plugin speaks, oldest first (VERSION lists them).
pub const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

/// The newest of [`SUPPORTED_VERSIONS`]: what a version-less answer (VERSION) is written in.
pub const LATEST_VERSION: &str = "1.1.0";

/// A `major.minor.patch` version, comparable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// Parses `1.0.0` (a missing patch or minor is 0, as the reference library reads them).
    pub fn parse(s: &str) -> Option<Version> {
        let mut it = s.split('.');
        let major = it.next()?.parse().ok()?;
        let minor = it.next().map_or(Some(0), |m| m.parse().ok())?;
        let patch = it.next().map_or(Some(0), |p| p.parse().ok())?;
        it.next().is_none().then_some(Version(major, minor, patch))
    }

    /// Whether results in this version carry `ips[].version` (before 1.0.0).
    pub fn has_ip_version_field(self) -> bool {
        self < Version(1, 0, 0)
    }
}

/// Checks that `v` is one of [`SUPPORTED_VERSIONS`]: code 1 otherwise.
pub fn check_version(v: &str) -> Result<Version, CniError> {
    if SUPPORTED_VERSIONS.contains(&v) {
        // Every supported version parses.
        return Version::parse(v)
            .ok_or_else(|| CniError::config("cniVersion", format!("{v:?} does not parse")));
    }
    Err(CniError::new(
        ErrorCode::IncompatibleVersion,
        format!("incompatible CNI version {v}"),
        format!(
            "xylem-cni speaks CNI {}; write one of them in cniVersion",
            SUPPORTED_VERSIONS.join(", ")
        ),
    ))
}

/// One attachment the runtime still uses, from GC's `cni.dev/valid-attachments`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attachment {
    /// `containerID`.
    pub container_id: String,
    /// `ifname`.
    pub ifname: String,
}

/// The plugin's network configuration, as the runtime passes it on stdin.
#[derive(Clone, Debug)]
pub struct NetConf {
    /// `cniVersion`, one of [`SUPPORTED_VERSIONS`].
    pub cni_version: String,
    /// Its parsed form.
    pub version: Version,
    /// `name`: the network's name (IPAM keys its leases by it).
    pub name: String,
    /// `agentSocket`: the agent's API socket.
    pub agent_socket: String,
    /// `logFile`: where to append one JSON line per command (what it did, how long each step
    /// took, how it ended). A runtime keeps no plugin's stderr; this is the plugin's own log.
    pub log_file: Option<String>,
    /// `ipam`, as given: it is handed whole to the plugin named in `ipam.type`.
    pub ipam: Option<Map<String, Value>>,
    /// `ipam.type`.
    pub ipam_type: Option<String>,
    /// `dns`, passed on in the result.
    pub dns: Option<Value>,
    /// The pod's labels: `args.cni.labels`, then `runtimeConfig.labels` over them.
    pub labels: BTreeMap<String, String>,
    /// `prevResult`: set when the plugin runs after another in a chain (and on CHECK and DEL).
    pub prev_result: Option<CniResult>,
    /// `cni.dev/valid-attachments` (GC).
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// The keys of a plugin configuration the specification defines, and the plugin's own.
const KNOWN_KEYS: [&str; 12] = [
    "cniVersion",
    "name",
    "type",
    "agentSocket",
    "logFile",
    "ipam",
    "dns",
    "args",
    "runtimeConfig",
    "capabilities",
    "prevResult",
    "cni.dev/valid-attachments",
];

/// Keys a runtime may inject into every plugin's configuration that say nothing to this
/// plugin (the conflist's own switches).
const IGNORED_KEYS: [&str; 3] = ["disableCheck", "disableGC", "cniVersions"];

impl NetConf {
    /// Parses the configuration on stdin: code 6 if it is not a JSON object, 1 for a version
    /// the plugin does not speak, 2 for a field it does not support and 7 for a wrong value,
    /// each naming the field.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                ErrorCode::Decoding,
                "the network configuration on stdin is not JSON",
                e.to_string(),
            )
        })?;
        let Value::Object(obj) = value else {
            return Err(CniError::new(
                ErrorCode::Decoding,
                "the network configuration on stdin is not a JSON object",
                "the runtime passes one plugin's configuration as an object",
            ));
        };
        Self::from_object(&obj)
    }

    fn from_object(obj: &Map<String, Value>) -> Result<NetConf, CniError> {
        for key in obj.keys() {
            if !KNOWN_KEYS.contains(&key.as_str()) && !IGNORED_KEYS.contains(&key.as_str()) {
                return Err(unsupported(
                    key,
                    format!("xylem-cni takes {}", KNOWN_KEYS.join(", ")),
                ));
            }
        }
        let cni_version = string(obj, "cniVersion")?.ok_or_else(|| {
            CniError::config(
                "cniVersion",
                "missing: write the CNI version, e.g. \"1.0.0\"",
            )
        })?;
        let version = check_version(&cni_version)?;
        let name = string(obj, "name")?
            .ok_or_else(|| CniError::config("name", "missing: name the network"))?;
        check_network_name(&name)?;
        match string(obj, "type")? {
            Some(t) if t == PLUGIN_TYPE => {}
            Some(t) => {
                return Err(CniError::config(
                    "type",
                    format!("is {t:?}, but this is the {PLUGIN_TYPE} plugin"),
                ));
            }
            None => return Err(CniError::config("type", "missing")),
        }
        let agent_socket =
            string(obj, "agentSocket")?.unwrap_or_else(|| DEFAULT_AGENT_SOCKET.to_string());
        if !agent_socket.starts_with('/') {
            return Err(CniError::config(
                "agentSocket",
                format!("{agent_socket:?} is not an absolute path"),
            ));
        }
        let log_file = string(obj, "logFile")?;
        if let Some(f) = &log_file
            && !f.starts_with('/')
        {
            return Err(CniError::config(
                "logFile",
                format!("{f:?} is not an absolute path"),
            ));
        }
        let (ipam, ipam_type) = match obj.get("ipam") {
            None | Some(Value::Null) => (None, None),
            Some(Value::Object(m)) => {
                let t = match m.get("type") {
                    Some(Value::String(t)) if valid_plugin_type(t) => t.clone(),
                    Some(Value::String(t)) => {
                        return Err(CniError::config(
                            "ipam.type",
                            format!("{t:?} is not a plugin name (a file name on CNI_PATH)"),
                        ));
                    }
                    _ => {
                        return Err(CniError::config(
                            "ipam.type",
                            "missing: name the IPAM plugin, e.g. \"host-local\"",
                        ));
                    }
                };
                (Some(m.clone()), Some(t))
            }
            Some(_) => return Err(CniError::config("ipam", "is not an object")),
        };
        let dns = match obj.get("dns") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(_) => return Err(CniError::config("dns", "is not an object")),
        };
        let mut labels = BTreeMap::new();
        if let Some(args) = obj.get("args") {
            args_labels(args, &mut labels)?;
        }
        if let Some(caps) = obj.get("capabilities") {
            let Value::Object(caps) = caps else {
                return Err(CniError::config("capabilities", "is not an object"));
            };
            if let Some(k) = caps.keys().find(|k| k.as_str() != "labels") {
                return Err(unsupported(
                    &format!("capabilities.{k}"),
                    "xylem-cni has one capability: labels",
                ));
            }
        }
        if let Some(rc) = obj.get("runtimeConfig") {
            runtime_labels(rc, &mut labels)?;
        }
        let prev_result = match obj.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v) => Some(CniResult::from_value(v, "prevResult")?),
        };
        let valid_attachments = match obj.get("cni.dev/valid-attachments") {
            None | Some(Value::Null) => None,
            Some(v) => Some(attachments(v)?),
        };
        Ok(NetConf {
            cni_version,
            version,
            name,
            agent_socket,
            log_file,
            ipam,
            ipam_type,
            dns,
            labels,
            prev_result,
            valid_attachments,
        })
    }
}

/// A conflist file (`/etc/cni/net.d/*.conflist`).
#[derive(Clone, Debug)]
pub struct ConfList {
    /// `cniVersion`.
    pub cni_version: String,
    /// `name`.
    pub name: String,
    /// Each plugin's `type`, in order.
    pub plugin_types: Vec<String>,
    /// The `xylem-cni` entry, as the runtime will hand it over (with the list's `cniVersion`
    /// and `name`).
    pub xylem: NetConf,
}

impl ConfList {
    /// Parses and checks a conflist as a runtime would load it: a version the plugin speaks,
    /// a valid network name, plugins each with a `type`, and exactly one `xylem-cni` entry
    /// that passes [`NetConf::parse`].
    pub fn parse(bytes: &[u8]) -> Result<ConfList, CniError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                ErrorCode::Decoding,
                "the conflist is not JSON",
                e.to_string(),
            )
        })?;
        let Value::Object(obj) = value else {
            return Err(CniError::new(
                ErrorCode::Decoding,
                "the conflist is not a JSON object",
                "",
            ));
        };
        let known = [
            "cniVersion",
            "cniVersions",
            "name",
            "plugins",
            "disableCheck",
            "disableGC",
            "loadOnlyInlinedPlugins",
        ];
        if let Some(k) = obj.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(unsupported(
                k,
                format!("a conflist has {}", known.join(", ")),
            ));
        }
        let cni_version =
            string(&obj, "cniVersion")?.ok_or_else(|| CniError::config("cniVersion", "missing"))?;
        check_version(&cni_version)?;
        let name = string(&obj, "name")?.ok_or_else(|| CniError::config("name", "missing"))?;
        check_network_name(&name)?;
        let Some(Value::Array(plugins)) = obj.get("plugins") else {
            return Err(CniError::config("plugins", "missing or not a list"));
        };
        if plugins.is_empty() {
            return Err(CniError::config("plugins", "is empty"));
        }
        let mut plugin_types = Vec::new();
        let mut xylem = None;
        for (i, p) in plugins.iter().enumerate() {
            let field = format!("plugins[{i}]");
            let Value::Object(p) = p else {
                return Err(CniError::config(&field, "is not an object"));
            };
            let t = match p.get("type") {
                Some(Value::String(t)) if valid_plugin_type(t) => t.clone(),
                _ => {
                    return Err(CniError::config(
                        &format!("{field}.type"),
                        "missing or invalid",
                    ));
                }
            };
            if t == PLUGIN_TYPE {
                if xylem.is_some() {
                    return Err(CniError::config(&field, "a second xylem-cni entry"));
                }
                let mut conf = p.clone();
                conf.insert("cniVersion".into(), Value::String(cni_version.clone()));
                conf.insert("name".into(), Value::String(name.clone()));
                xylem = Some(NetConf::from_object(&conf).map_err(|mut e| {
                    e.msg = format!("{field}: {}", e.msg);
                    e
                })?);
            }
            plugin_types.push(t);
        }
        let xylem = xylem.ok_or_else(|| {
            CniError::config("plugins", format!("no entry of type {PLUGIN_TYPE}"))
        })?;
        Ok(ConfList {
            cni_version,
            name,
            plugin_types,
            xylem,
        })
    }
}

fn unsupported(field: &str, why: impl Into<String>) -> CniError {
    CniError::new(
        ErrorCode::UnsupportedField,
        format!("unsupported field {field}"),
        why.into(),
    )
}

fn string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(CniError::config(key, "is not a string")),
    }
}

/// The specification's network name: alphanumerics, `_`, `.` and `-`, starting alphanumeric.
fn check_network_name(name: &str) -> Result<(), CniError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::config(
            "name",
            format!(
                "{name:?}: a network name is letters, digits, '_', '.' and '-', starting with a \
                 letter or digit"
            ),
        ))
    }
}

/// A plugin type is a file name looked up on `CNI_PATH`: no path separators, no `..`.
fn valid_plugin_type(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 255
        && !t.contains('/')
        && t != "."
        && t != ".."
        && !t.contains('\0')
}

/// `args`: only `args.cni.labels` ([{key, value}], the CNI conventions' label list) is read.
/// Keys beside `cni` belong to other consumers of the configuration; under `cni`, anything
/// else (`ips`, `mac`, …) asks for something the plugin does not do, so it is refused.
fn args_labels(args: &Value, labels: &mut BTreeMap<String, String>) -> Result<(), CniError> {
    let Value::Object(args) = args else {
        return Err(CniError::config("args", "is not an object"));
    };
    let Some(cni) = args.get("cni") else {
        return Ok(());
    };
    let Value::Object(cni) = cni else {
        return Err(CniError::config("args.cni", "is not an object"));
    };
    if let Some(k) = cni.keys().find(|k| k.as_str() != "labels") {
        return Err(unsupported(
            &format!("args.cni.{k}"),
            "xylem-cni reads args.cni.labels only",
        ));
    }
    let Some(list) = cni.get("labels") else {
        return Ok(());
    };
    let Value::Array(list) = list else {
        return Err(CniError::config(
            "args.cni.labels",
            "is not a list of {\"key\": …, \"value\": …}",
        ));
    };
    for (i, l) in list.iter().enumerate() {
        let field = format!("args.cni.labels[{i}]");
        let (Some(Value::String(k)), Some(Value::String(v))) = (l.get("key"), l.get("value"))
        else {
            return Err(CniError::config(&field, "needs string key and value"));
        };
        if l.as_object().is_some_and(|o| o.len() != 2) {
            return Err(CniError::config(&field, "has fields beside key and value"));
        }
        labels.insert(k.clone(), v.clone());
    }
    Ok(())
}

/// `runtimeConfig`: a runtime fills in the capabilities the configuration declares; the
/// plugin declares `labels` (a map), and refuses any other it is sent.
fn runtime_labels(rc: &Value, labels: &mut BTreeMap<String, String>) -> Result<(), CniError> {
    let Value::Object(rc) = rc else {
        return Err(CniError::config("runtimeConfig", "is not an object"));
    };
    for (k, v) in rc {
        if k != "labels" {
            return Err(unsupported(
                &format!("runtimeConfig.{k}"),
                "xylem-cni has one capability: labels",
            ));
        }
        let Value::Object(m) = v else {
            return Err(CniError::config(
                "runtimeConfig.labels",
                "is not a map of label to value",
            ));
        };
        for (lk, lv) in m {
            let Value::String(lv) = lv else {
                return Err(CniError::config(
                    &format!("runtimeConfig.labels.{lk}"),
                    "is not a string",
                ));
            };
            labels.insert(lk.clone(), lv.clone());
        }
    }
    Ok(())
}

fn attachments(v: &Value) -> Result<Vec<Attachment>, CniError> {
    let field = "cni.dev/valid-attachments";
    let Value::Array(list) = v else {
        return Err(CniError::config(field, "is not a list"));
    };
    list.iter()
        .enumerate()
        .map(|(i, a)| match (a.get("containerID"), a.get("ifname")) {
            (Some(Value::String(c)), Some(Value::String(i))) => Ok(Attachment {
                container_id: c.clone(),
                ifname: i.clone(),
            }),
            _ => Err(CniError::config(
                &format!("{field}[{i}]"),
                "needs string containerID and ifname",
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: &str) -> Result<NetConf, CniError> {
        let text = format!(r#"{{"cniVersion":"1.0.0","name":"xylem","type":"xylem-cni"{extra}}}"#);
        NetConf::parse(text.as_bytes())
    }

    #[test]
    fn a_minimal_configuration_takes_the_defaults() {
        let c = conf("").unwrap();
        assert_eq!(c.agent_socket, DEFAULT_AGENT_SOCKET);
        assert_eq!(c.version, Version(1, 0, 0));
        assert!(c.ipam.is_none() && c.prev_result.is_none() && c.labels.is_empty());
    }

    #[test]
    fn errors_carry_the_specifications_codes_and_name_the_field() {
        let cases: &[(&[u8], u32, &str)] = &[
            (b"not json", 6, "not JSON"),
            (b"[1]", 6, "not a JSON object"),
            (br#"{"cniVersion":"0.3.1","name":"x","type":"xylem-cni"}"#, 1, "0.3.1"),
            (br#"{"cniVersion":"2.0.0","name":"x","type":"xylem-cni"}"#, 1, "2.0.0"),
            (br#"{"name":"x","type":"xylem-cni"}"#, 7, "cniVersion"),
            (br#"{"cniVersion":"1.0.0","type":"xylem-cni"}"#, 7, "name"),
            (br#"{"cniVersion":"1.0.0","name":"-x","type":"xylem-cni"}"#, 7, "name"),
            (br#"{"cniVersion":"1.0.0","name":"x","type":"bridge"}"#, 7, "type"),
            (br#"{"cniVersion":"1.0.0","name":"x","type":"xylem-cni","mtu":9000}"#, 2, "mtu"),
            (br#"{"cniVersion":"1.0.0","name":"x","type":"xylem-cni","agentSocket":"a.sock"}"#, 7, "agentSocket"),
            (br#"{"cniVersion":"1.0.0","name":"x","type":"xylem-cni","logFile":"cni.log"}"#, 7, "logFile"),
            (br#"{"cniVersion":"1.0.0","name":"x","type":"xylem-cni","ipam":{}}"#, 7, "ipam.type"),
            (br#"{"cniVersion":"1.0.0","name":"x","type":"xylem-cni","ipam":{"type":"../x"}}"#, 7, "ipam.type"),
            (br#"{"cniVersion":"1.0.0","name":"x","type":"xylem-cni","args":{"cni":{"ips":["10.0.0.1"]}}}"#, 2, "args.cni.ips"),
            (br#"{"cniVersion":"1.0.0","name":"x","type":"xylem-cni","args":{"cni":{"labels":[{"key":"a"}]}}}"#, 7, "args.cni.labels[0]"),
            (br#"{"cniVersion":"1.0.0","name":"x","type":"xylem-cni","runtimeConfig":{"portMappings":[]}}"#, 2, "runtimeConfig.portMappings"),
            (br#"{"cniVersion":"1.0.0","name":"x","type":"xylem-cni","capabilities":{"bandwidth":true}}"#, 2, "capabilities.bandwidth"),
            (br#"{"cniVersion":"1.0.0","name":"x","type":"xylem-cni","cni.dev/valid-attachments":[{"containerID":"a"}]}"#, 7, "valid-attachments[0]"),
            (br#"{"cniVersion":"1.0.0","name":"x","type":"xylem-cni","prevResult":{"ips":[{"address":"nope"}]}}"#, 7, "prevResult.ips[0].address"),
        ];
        for (input, code, field) in cases {
            let e = NetConf::parse(input).expect_err(&String::from_utf8_lossy(input));
            assert_eq!(
                e.code.as_u32(),
                *code,
                "{}: {e}",
                String::from_utf8_lossy(input)
            );
            assert!(e.to_string().contains(field), "{e} should name {field}");
        }
    }

    #[test]
    fn labels_come_from_args_then_runtime_config() {
        let c = conf(
            r#","args":{"cni":{"labels":[{"key":"app","value":"web"},{"key":"tier","value":"a"}]},"other":{"x":1}},
               "capabilities":{"labels":true},"runtimeConfig":{"labels":{"tier":"b"}}"#,
        )
        .unwrap();
        assert_eq!(c.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(c.labels.get("tier").map(String::as_str), Some("b"));
    }

    #[test]
    fn a_conflist_is_checked_as_a_runtime_loads_it() {
        let ok = br#"{"cniVersion":"1.0.0","name":"k8s-pod-network","plugins":[
            {"type":"ptp","ipam":{"type":"host-local"}},
            {"type":"xylem-cni","agentSocket":"/run/xylem/agent.sock"}]}"#;
        let l = ConfList::parse(ok).unwrap();
        assert_eq!(l.plugin_types, ["ptp", "xylem-cni"]);
        assert_eq!(l.xylem.name, "k8s-pod-network");
        assert_eq!(l.xylem.cni_version, "1.0.0");
        let none = br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"ptp"}]}"#;
        assert!(
            ConfList::parse(none)
                .unwrap_err()
                .to_string()
                .contains("no entry")
        );
        let bad = br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"xylem-cni","foo":1}]}"#;
        let e = ConfList::parse(bad).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnsupportedField);
        assert!(e.to_string().contains("plugins[0]"), "{e}");
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(Version::parse("0.4.0").unwrap() < Version::parse("1.0.0").unwrap());
        assert!(Version::parse("1.10.0").unwrap() > Version::parse("1.9.0").unwrap());
        assert_eq!(Version::parse("1.0"), Some(Version(1, 0, 0)));
        assert_eq!(Version::parse("1.x"), None);
        assert_eq!(Version::parse("1.0.0.0"), None);
    }
}

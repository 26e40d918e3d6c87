//! The protocol's environment variables, checked per command, and the names the plugin derives
//! from them: the endpoint's namespace and name, and the node's end of the veth.

use crate::error::CniError;

/// `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach it (idempotent).
    Del,
    /// Check an attachment.
    Check,
    /// Whether the plugin is ready for ADD.
    Status,
    /// The versions the plugin speaks.
    Version,
    /// Remove attachments the runtime no longer knows.
    Gc,
}

impl Command {
    fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            _ => return None,
        })
    }
}

/// The environment of one invocation.
#[derive(Clone, Debug)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (ADD, DEL, CHECK).
    pub container_id: String,
    /// `CNI_NETNS` (ADD, CHECK; DEL where the namespace still exists).
    pub netns: Option<String>,
    /// `CNI_IFNAME` (ADD, DEL, CHECK).
    pub ifname: String,
    /// `K8S_POD_NAMESPACE` and `K8S_POD_NAME` from `CNI_ARGS`, when both are there.
    pub pod: Option<(String, String)>,
    /// `CNI_PATH`, split.
    pub path: Vec<String>,
    /// `CNI_ARGS` as given, passed on to the IPAM plugin.
    pub args: String,
}

/// The `CNI_ARGS` keys the plugin knows; others fail unless `IgnoreUnknown` is set, as the
/// reference plugins behave.
const KNOWN_ARGS: [&str; 5] = [
    "IgnoreUnknown",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
];

impl Env {
    /// Reads the environment through `var` (`std::env::var` in the binary), checking what
    /// the command needs: code 4 names the variable that is missing or wrong.
    pub fn read(var: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let get = |k: &str| var(k).filter(|v| !v.is_empty());
        let command = get("CNI_COMMAND").ok_or_else(|| {
            CniError::env(
                "CNI_COMMAND",
                "missing: xylem-cni is a CNI plugin, run by a container runtime with \
                 CNI_COMMAND=ADD, DEL, CHECK, STATUS, VERSION or GC",
            )
        })?;
        let command = Command::parse(&command).ok_or_else(|| {
            CniError::env(
                "CNI_COMMAND",
                format!("{command:?} is not ADD, DEL, CHECK, STATUS, VERSION or GC"),
            )
        })?;
        let attach = matches!(command, Command::Add | Command::Del | Command::Check);
        let need = |k: &str, needed: bool| -> Result<String, CniError> {
            match get(k) {
                Some(v) => Ok(v),
                None if needed => Err(CniError::env(k, "missing")),
                None => Ok(String::new()),
            }
        };
        let container_id = need("CNI_CONTAINERID", attach)?;
        if attach {
            check_container_id(&container_id)?;
        }
        let netns = get("CNI_NETNS");
        if matches!(command, Command::Add | Command::Check) && netns.is_none() {
            return Err(CniError::env("CNI_NETNS", "missing"));
        }
        if let Some(ns) = &netns
            && !ns.starts_with('/')
        {
            return Err(CniError::env(
                "CNI_NETNS",
                format!("{ns:?} is not an absolute path to a network namespace"),
            ));
        }
        let ifname = need("CNI_IFNAME", attach)?;
        if attach {
            check_ifname("CNI_IFNAME", &ifname)?;
        }
        let path: Vec<String> = get("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|d| !d.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        if path.is_empty() && matches!(command, Command::Add | Command::Del | Command::Check) {
            return Err(CniError::env(
                "CNI_PATH",
                "missing: the directories to look for the IPAM plugin in",
            ));
        }
        let args = get("CNI_ARGS").unwrap_or_default();
        let pod = parse_args(&args)?;
        Ok(Env {
            command,
            container_id,
            netns,
            ifname,
            pod,
            path,
            args,
        })
    }

    /// The endpoint's namespace and name in the agent: the pod's, or for a runtime that
    /// names none (`ctr`), `default` and a name derived from the container id.
    pub fn endpoint_name(&self) -> (String, String) {
        match &self.pod {
            Some((ns, name)) => (ns.clone(), name.clone()),
            None => ("default".into(), name_from_container_id(&self.container_id)),
        }
    }
}

/// The specification's container id: alphanumerics, `_`, `.` and `-`, starting alphanumeric.
fn check_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && id.len() <= 256;
    if ok {
        Ok(())
    } else {
        Err(CniError::env(
            "CNI_CONTAINERID",
            format!(
                "{id:?}: a container id is letters, digits, '_', '.' and '-', starting with a \
                 letter or digit, at most 256 characters"
            ),
        ))
    }
}

/// An interface name the kernel takes: 1 to 15 bytes, no `/`, `:` or whitespace, not `.` or
/// `..`.
pub fn check_ifname(var: &str, name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0);
    if ok {
        Ok(())
    } else {
        Err(CniError::env(
            var,
            format!(
                "{name:?} is not an interface name (1 to 15 characters, no '/', ':' or spaces)"
            ),
        ))
    }
}

/// `CNI_ARGS`: `K=V` pairs separated by `;`. Returns the pod's namespace and name when both
/// are given.
fn parse_args(args: &str) -> Result<Option<(String, String)>, CniError> {
    let mut pairs = Vec::new();
    for pair in args.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| CniError::env("CNI_ARGS", format!("{pair:?} is not KEY=VALUE")))?;
        pairs.push((k, v));
    }
    let ignore_unknown = pairs
        .iter()
        .any(|(k, v)| *k == "IgnoreUnknown" && matches!(*v, "1" | "true" | "True"));
    if !ignore_unknown && let Some((k, _)) = pairs.iter().find(|(k, _)| !KNOWN_ARGS.contains(k)) {
        return Err(CniError::env(
            "CNI_ARGS",
            format!(
                "unknown key {k} (xylem-cni reads {}; add IgnoreUnknown=1 to pass others)",
                KNOWN_ARGS.join(", ")
            ),
        ));
    }
    let find = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
            .filter(|v| !v.is_empty())
    };
    Ok(find("K8S_POD_NAMESPACE").zip(find("K8S_POD_NAME")))
}

/// FNV-1a, 64 bits: a stable hash for derived names, so the same container and interface give
/// the same names in every run and every version of the plugin (the standard library's hasher
/// promises neither).
pub fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h ^= u64::from(b'/');
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for b in p.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The prefix of the node ends of the veths the plugin creates.
pub const HOST_IF_PREFIX: &str = "xyc";

/// The node's end of the veth for `container_id`'s interface `ifname`: `xyc` and 12 hex
/// digits of a hash of both (15 characters, the kernel's limit), so DEL finds it again with
/// the agent down and the pod's namespace gone.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    format!(
        "{HOST_IF_PREFIX}{:012x}",
        fnv1a(&[container_id, ifname]) >> 16
    )
}

/// A name for the endpoint of a container with no pod name: the container id itself when it
/// is an RFC 1123 label (lower-case alphanumerics and `-`, at most 63), else what of it fits,
/// made one, with a hash of the whole id so that two ids never share a name.
pub fn name_from_container_id(id: &str) -> String {
    let is_label = id.len() <= 63
        && id.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && id.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if is_label {
        return id.to_string();
    }
    let cleaned: String = id
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(50)
        .collect();
    let cleaned = cleaned.trim_matches('-');
    let hash = format!("{:012x}", fnv1a(&[id]) >> 16);
    if cleaned.is_empty() {
        format!("c-{hash}")
    } else {
        format!("{cleaned}-{hash}")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::read(|k| m.get(k).cloned())
    }

    const ADD: [(&str, &str); 5] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
    ];

    #[test]
    fn each_command_needs_its_variables() {
        let e = env(&ADD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.path, ["/opt/cni/bin", "/usr/lib/cni"]);
        assert_eq!(e.endpoint_name(), ("default".into(), "abc123".into()));
        for missing in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"] {
            let vars: Vec<_> = ADD.iter().copied().filter(|(k, _)| *k != missing).collect();
            let e = env(&vars).unwrap_err();
            assert_eq!(e.code.as_u32(), 4);
            assert!(e.to_string().contains(missing), "{e}");
        }
        // DEL goes on without the namespace; STATUS, VERSION and GC need no container.
        let del: Vec<_> = (ADD.iter().copied())
            .filter(|(k, _)| *k != "CNI_NETNS")
            .map(|(k, v)| {
                if k == "CNI_COMMAND" {
                    (k, "DEL")
                } else {
                    (k, v)
                }
            })
            .collect();
        assert!(env(&del).unwrap().netns.is_none());
        for c in ["STATUS", "VERSION", "GC"] {
            assert!(env(&[("CNI_COMMAND", c)]).is_ok(), "{c}");
        }
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        let cases: &[(&str, &str)] = &[
            ("CNI_COMMAND", "ATTACH"),
            ("CNI_CONTAINERID", "-bad"),
            ("CNI_CONTAINERID", "a b"),
            ("CNI_NETNS", "relative/path"),
            ("CNI_IFNAME", "sixteen-chars-xx"),
            ("CNI_IFNAME", "a/b"),
            ("CNI_ARGS", "K8S_POD_NAME"),
            ("CNI_ARGS", "FOO=1"),
        ];
        for (k, v) in cases {
            let mut vars: Vec<_> = ADD.iter().copied().filter(|(n, _)| n != k).collect();
            vars.push((k, v));
            let e = env(&vars).unwrap_err();
            assert_eq!(e.code.as_u32(), 4, "{k}={v}");
            assert!(e.to_string().contains(k), "{e}");
        }
    }

    #[test]
    fn cni_args_name_the_pod() {
        let mut vars = ADD.to_vec();
        vars.push((
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;FOO=bar",
        ));
        assert_eq!(
            env(&vars).unwrap().endpoint_name(),
            ("shop".into(), "web-0".into())
        );
    }

    #[test]
    fn derived_names_fit_the_kernel_and_the_agent() {
        let long = "f".repeat(64);
        let n = name_from_container_id(&long);
        assert!(n.len() <= 63 && n.starts_with("fff"), "{n}");
        assert_ne!(n, name_from_container_id(&"f".repeat(65)));
        assert_eq!(name_from_container_id("default-web"), "default-web");
        let odd = name_from_container_id("Default_Web.1");
        assert!(odd.starts_with("default-web-1-"), "{odd}");
        assert!(name_from_container_id("___").starts_with("c-"));
        let h = host_ifname("abc", "eth0");
        assert_eq!(h.len(), 15);
        assert_eq!(h, host_ifname("abc", "eth0"));
        assert_ne!(h, host_ifname("abc", "eth1"));
    }
}

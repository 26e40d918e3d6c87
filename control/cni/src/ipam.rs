//! Delegated IPAM: the plugin named in `ipam.type`, found on `CNI_PATH` and run with the same
//! protocol, in a version it speaks (asked with VERSION first: Debian's `host-local` speaks up
//! to 1.0.0 and refuses a 1.1.0 configuration).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use serde_json::{Map, Value};

use crate::conf::{NetConf, SUPPORTED_VERSIONS, Version};
use crate::env::Env;
use crate::error::{CniError, ErrorCode};
use crate::result::CniResult;

/// The IPAM plugin of one configuration, ready to run.
#[derive(Debug)]
pub struct Ipam {
    plugin: PathBuf,
    /// The version both speak, the configuration's if the plugin has it.
    version: Version,
    /// The configuration passed on stdin, in `version`.
    stdin: Vec<u8>,
}

/// One invocation's variables for the IPAM plugin (the container's, or for GC another's).
#[derive(Clone, Debug)]
pub struct Target<'a> {
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_NETNS` (empty when gone).
    pub netns: Option<&'a str>,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
}

impl Target<'_> {
    /// No container: for STATUS and GC.
    const NONE: Target<'static> = Target {
        container_id: "",
        netns: None,
        ifname: "",
    };
}

impl Ipam {
    /// Finds `conf`'s IPAM plugin on `env.path` and settles the version to speak with it.
    /// `raw` is the configuration as the runtime sent it: the plugin gets it whole, as the
    /// specification has it, with `cniVersion` set to the version settled on.
    pub fn new(env: &Env, conf: &NetConf, raw: &Map<String, Value>) -> Result<Ipam, CniError> {
        let ty = conf.ipam_type.as_deref().ok_or_else(|| {
            CniError::config(
                "ipam",
                "missing: name an IPAM plugin (for example {\"type\": \"host-local\", …}), \
                 or chain xylem-cni after a plugin that assigns addresses",
            )
        })?;
        let plugin = env
            .path
            .iter()
            .map(|d| PathBuf::from(d).join(ty))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                CniError::config(
                    "ipam.type",
                    format!(
                        "no plugin {ty} in CNI_PATH ({}): install it there",
                        env.path.join(":")
                    ),
                )
            })?;
        let version = negotiate(&plugin, conf)?;
        let mut stdin = raw.clone();
        stdin.insert("cniVersion".into(), Value::String(version_text(version)));
        // A chain's earlier result is not the IPAM plugin's business.
        stdin.remove("prevResult");
        let stdin = serde_json::to_vec(&stdin).map_err(|e| CniError::io("encoding", e))?;
        Ok(Ipam {
            plugin,
            version,
            stdin,
        })
    }

    /// The version settled on.
    pub fn version(&self) -> Version {
        self.version
    }

    /// ADD: the lease.
    pub fn add(&self, env: &Env, t: &Target) -> Result<CniResult, CniError> {
        let out = self.exec("ADD", env, t)?;
        let v = out.ok_or_else(|| {
            CniError::new(
                ErrorCode::Decoding,
                format!("{} answered ADD with nothing", self.plugin.display()),
                "",
            )
        })?;
        let r = CniResult::from_value(&v, "the IPAM result")?;
        if r.ips.is_empty() {
            return Err(CniError::config(
                "ipam",
                format!("{} gave no IPv4 address", self.plugin.display()),
            ));
        }
        Ok(r)
    }

    /// DEL: releases the lease (the plugin treats a missing one as released).
    pub fn del(&self, env: &Env, t: &Target) -> Result<(), CniError> {
        self.exec("DEL", env, t).map(drop)
    }

    /// CHECK: the lease is still held.
    pub fn check(&self, env: &Env, t: &Target) -> Result<(), CniError> {
        self.exec("CHECK", env, t).map(drop)
    }

    /// STATUS (a 1.1.0 plugin): whether it can serve ADD.
    pub fn status(&self, env: &Env) -> Result<(), CniError> {
        self.exec("STATUS", env, &Target::NONE).map(drop)
    }

    /// GC (a 1.1.0 plugin): releases what `cni.dev/valid-attachments` does not list.
    pub fn gc(&self, env: &Env) -> Result<(), CniError> {
        self.exec("GC", env, &Target::NONE).map(drop)
    }

    /// Runs the plugin for `command`; its JSON answer, if any. A failure passes on the
    /// plugin's own code and message.
    fn exec(&self, command: &str, env: &Env, t: &Target) -> Result<Option<Value>, CniError> {
        let mut p = Process::new(&self.plugin);
        p.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", t.container_id)
            .env("CNI_NETNS", t.netns.unwrap_or(""))
            .env("CNI_IFNAME", t.ifname)
            .env("CNI_PATH", env.path.join(":"))
            .env("CNI_ARGS", &env.args);
        run(&self.plugin, &mut p, &self.stdin, command)
    }
}

fn version_text(v: Version) -> String {
    format!("{}.{}.{}", v.0, v.1, v.2)
}

/// Asks the plugin for its versions and picks the configuration's if it has it, else the
/// newest both speak.
fn negotiate(plugin: &Path, conf: &NetConf) -> Result<Version, CniError> {
    let mut p = Process::new(plugin);
    p.env_clear().env("CNI_COMMAND", "VERSION");
    let stdin = serde_json::json!({"cniVersion": conf.cni_version}).to_string();
    let v = run(plugin, &mut p, stdin.as_bytes(), "VERSION")?.unwrap_or(Value::Null);
    let theirs: Vec<Version> = v
        .get("supportedVersions")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().and_then(Version::parse))
                .collect()
        })
        .unwrap_or_default();
    if theirs.contains(&conf.version) {
        return Ok(conf.version);
    }
    SUPPORTED_VERSIONS
        .iter()
        .filter_map(|s| Version::parse(s))
        .filter(|v| theirs.contains(v))
        .max()
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::IncompatibleVersion,
                format!(
                    "the IPAM plugin {} speaks no version xylem-cni speaks",
                    plugin.display()
                ),
                format!(
                    "it speaks {}; xylem-cni speaks {}",
                    theirs
                        .iter()
                        .map(|v| version_text(*v))
                        .collect::<Vec<_>>()
                        .join(", "),
                    SUPPORTED_VERSIONS.join(", ")
                ),
            )
        })
}

fn run(
    plugin: &Path,
    p: &mut Process,
    stdin: &[u8],
    command: &str,
) -> Result<Option<Value>, CniError> {
    let what = || format!("running {} {command}", plugin.display());
    let mut child = p
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::io(what(), e))?;
    if let Some(mut i) = child.stdin.take() {
        // A plugin may exit without reading stdin (host-local answers VERSION so): a closed
        // pipe says nothing about the answer, which its exit status and stdout give.
        match i.write_all(stdin) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(CniError::io(what(), e));
            }
            _ => {}
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::io(what(), e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let value = if text.trim().is_empty() {
        None
    } else {
        Some(serde_json::from_str::<Value>(&text).map_err(|e| {
            CniError::new(
                ErrorCode::Decoding,
                format!(
                    "{} answered {command} with something other than JSON",
                    plugin.display()
                ),
                e.to_string(),
            )
        })?)
    };
    if out.status.success() {
        return Ok(value);
    }
    let field = |k: &str| {
        value
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let code = value
        .as_ref()
        .and_then(|v| v.get("code"))
        .and_then(Value::as_u64)
        .and_then(|c| u32::try_from(c).ok())
        .unwrap_or(ErrorCode::Io.as_u32());
    let mut details = field("details");
    if details.is_empty() {
        details = String::from_utf8_lossy(&out.stderr).trim().to_string();
    }
    Err(CniError::new(
        ErrorCode::Delegated(code),
        format!(
            "IPAM {} {command} failed: {}",
            plugin.display(),
            field("msg")
        ),
        details,
    ))
}

//! Xylem paths, driven through the `xylem lab` CLI (which owns its own namespaces and agent).
//!
//! The harness writes a two-pod LAB.yaml, runs `xylem lab up`, reads `xylem lab status -o json`,
//! starts netserver in the first pod and measures from the second. Dropping a [`Lab`] runs
//! `xylem lab down`, also when `up` failed half-way.
//!
//! `xylem` and `xylem-monitored` get the same lab in `full` mode with the same policy
//! ([`policy_yaml`]); the monitor client of `xylem-monitored` is the runner's business (see
//! `monitor`), attached to the API socket `lab status` reports. `xylem-multinode` and
//! `xylem-encrypted` get that mode and policy too, on a two-node lab ([`Layout::TwoNodes`],
//! module `multinode`), with the policy imported into both agents.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use xylem_lab::netns;
use xylem_lab::process::{self, ChildGuard};

use crate::error::{Error, Result};
use crate::multinode::{self, AgentReport};
use crate::results::{PathKind, Placement};
use crate::sys;
use crate::topology::Endpoints;

/// Name of the pod that runs netserver.
pub const SERVER_POD: &str = "xnh-server";
/// Name of the pod that runs netperf.
pub const CLIENT_POD: &str = "xnh-client";

/// How many rules the `xylem` path's policy holds besides the one the benchmark needs.
pub const POLICY_RULES: usize = 1_000;

/// The `xylem` path's policy: the server pod admits the client on every port (netperf's data
/// connections use ephemeral ports) and [`POLICY_RULES`] other label/port pairs; the client may
/// reach only the server. Both pods are selected, so both directions are enforced. Across
/// nodes the same policy selects the peer by its labels: the lab tells each agent the other
/// node's pods (remote endpoints), whose labels resolve to the agent's own identities.
pub fn policy_yaml() -> String {
    let mut y = String::from(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: bench-server\n  \
         namespace: bench\nspec:\n  endpointSelector:\n    matchLabels: {app: netserver}\n  \
         ingress:\n  - fromEndpoints:\n    - matchLabels: {app: netperf}\n",
    );
    for i in 0..POLICY_RULES {
        y.push_str(&format!(
            "  - fromEndpoints:\n    - matchLabels: {{app: svc-{i}}}\n    toPorts:\n    - ports:\n      \
             - {{port: \"{}\", protocol: TCP}}\n",
            10_000 + i
        ));
    }
    y.push_str(
        "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: bench-client\n  \
         namespace: bench\nspec:\n  endpointSelector:\n    matchLabels: {app: netperf}\n  \
         egress:\n  - toEndpoints:\n    - matchLabels: {app: netserver}\n",
    );
    y
}

/// How the lab lays out the two pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Both pods on one node ([`lab_yaml`]).
    OneNode,
    /// The client pod on one node, the server pod on another ([`multinode::lab_yaml`]), with
    /// ESP between them when `key_file` is given.
    TwoNodes {
        /// The lab file's `encryption.key_file`.
        key_file: Option<PathBuf>,
    },
}

impl Layout {
    /// The lab file for this layout.
    fn lab_yaml(&self) -> String {
        match self {
            Layout::OneNode => lab_yaml(),
            Layout::TwoNodes { key_file } => multinode::lab_yaml(key_file.as_deref()),
        }
    }
}

/// The lab description the harness hands to `xylem lab up -f` for a one-node path.
pub fn lab_yaml() -> String {
    format!(
        "# Written by netperf-harness: two pods, netserver in the first, netperf in the second.\n\
         pods:\n  - name: {SERVER_POD}\n    namespace: bench\n    labels: {{app: netserver}}\n  \
         - name: {CLIENT_POD}\n    namespace: bench\n    labels: {{app: netperf}}\n"
    )
}

/// How to bring a lab up.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// The `xylem` binary.
    pub bin: PathBuf,
    /// Where to write LAB.yaml.
    pub dir: PathBuf,
    /// Worker placement.
    pub placement: Placement,
    /// Worker cores for this placement (`taskset` list), given to every node's agent; `None`
    /// lets the lab pick one core per node (the two-node paths' dedicated placement).
    pub worker_cores: Option<String>,
    /// CPUs `lab up` runs on (`taskset -c`), when its affinity matters: the lab counts the
    /// CPUs it may pick worker cores from through its own affinity mask, which it inherits
    /// from the harness, pinned off the pod cores.
    pub lab_cpus: Option<String>,
    /// One node or two, with or without encryption.
    pub layout: Layout,
    /// `passthrough` or `full`.
    pub mode: &'static str,
    /// `auto`, `native` or `generic`.
    pub xdp_mode: String,
    /// Worker batch size.
    pub batch_size: u32,
    /// The lab's name (`XYLEM_LAB`), unique to this run so it never touches anyone else's lab.
    pub lab_name: String,
}

impl LabConfig {
    /// The worker mode for a Xylem path.
    pub fn mode_for(path: PathKind) -> &'static str {
        if path == PathKind::XylemPassthrough {
            "passthrough"
        } else {
            "full"
        }
    }
}

#[derive(Debug, Deserialize)]
struct Status {
    #[serde(default)]
    nodes: Vec<NodeStatus>,
    #[serde(default)]
    pods: Vec<PodStatus>,
}

#[derive(Debug, Deserialize)]
struct NodeStatus {
    api_socket: PathBuf,
}

#[derive(Debug, Deserialize)]
struct PodStatus {
    name: String,
    ip: String,
    netns: String,
    #[serde(default)]
    interface: Option<String>,
}

impl PodStatus {
    /// Its address without a prefix length.
    fn addr(&self) -> String {
        self.ip.split('/').next().unwrap_or(&self.ip).to_string()
    }
}

/// Parses `xylem lab status -o json`.
fn parse_status(json: &str) -> Result<Status> {
    serde_json::from_str(json).map_err(|e| {
        Error::Lab(format!(
            "`lab status -o json` is not the expected JSON: {e}"
        ))
    })
}

/// Every node's API socket, in the lab's node order.
pub fn api_sockets_from_status(json: &str) -> Result<Vec<PathBuf>> {
    Ok(parse_status(json)?
        .nodes
        .into_iter()
        .map(|n| n.api_socket)
        .collect())
}

/// Extracts the server and client pods from `xylem lab status -o json`.
pub fn endpoints_from_status(json: &str) -> Result<Endpoints> {
    if json.trim().is_empty() {
        return Err(Error::Lab(
            "`xylem lab status -o json` printed nothing (does this xylem binary implement `lab` yet?)".into(),
        ));
    }
    let status = parse_status(json)?;
    let find = |name: &str| {
        status
            .pods
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::Lab(format!("pod `{name}` missing from `lab status`")))
    };
    let (srv, cli) = (find(SERVER_POD)?, find(CLIENT_POD)?);
    Ok(Endpoints {
        server_ns: srv.netns.clone(),
        server_ip: srv.addr(),
        client_ns: cli.netns.clone(),
        server_if: srv.interface.clone().unwrap_or_else(|| "eth0".into()),
        client_if: cli.interface.clone().unwrap_or_else(|| "eth0".into()),
    })
}

/// Runs `xylem lab down` on drop.
#[derive(Debug)]
pub(crate) struct DownGuard {
    bin: PathBuf,
    lab: String,
}

impl DownGuard {
    /// A guard for lab `lab`, taken before `lab up` so a half-built lab is removed too.
    pub(crate) fn new(bin: &Path, lab: &str) -> DownGuard {
        DownGuard {
            bin: bin.to_path_buf(),
            lab: lab.to_string(),
        }
    }
}

impl Drop for DownGuard {
    fn drop(&mut self) {
        let bin = self.bin.to_string_lossy().into_owned();
        // Errors cannot be reported from Drop; `lab down` is documented to be idempotent. It
        // must run to the end even after Ctrl-C, which is when it matters most: stopped at the
        // interrupt flag, it would leave the lab's namespaces and agent behind.
        let _ = process::run_timed(
            &[&bin, "lab", "down"],
            &[("XYLEM_LAB", &self.lab)],
            Duration::from_secs(60),
            || false,
        );
    }
}

/// A running lab with netserver started in the server pod.
#[derive(Debug)]
pub struct Lab {
    /// Server and client pods.
    pub endpoints: Endpoints,
    /// The `lab status -o json` output, recorded in the conditions.
    pub status: serde_json::Value,
    /// The `lab up` command line.
    pub command: String,
    /// The agent's API socket (`nodes[0].api_socket` of `lab status`), if it reported one.
    pub api_socket: Option<PathBuf>,
    /// Two-node layouts: what each node's agent runs (placement, worker cores, ESP), as the
    /// agents report it; empty for one node.
    pub agents: Vec<AgentReport>,
    /// Every node's API socket, in node order.
    sockets: Vec<PathBuf>,
    _netserver: ChildGuard,
    // Last: the lab goes down after netserver is stopped.
    down: DownGuard,
}

/// Runs an `xylem` command against lab `lab`; its stdout, or an error quoting its stderr.
pub(crate) fn check(cmd: &[&str], lab: &str, timeout: Duration) -> Result<String> {
    let out = process::run_timed(cmd, &[("XYLEM_LAB", lab)], timeout, sys::interrupted)?;
    if out.success {
        Ok(out.stdout)
    } else {
        let msg = if out.stderr.trim().is_empty() {
            out.stdout
        } else {
            out.stderr
        };
        Err(Error::Lab(format!(
            "`XYLEM_LAB={lab} {}` failed ({}): {}",
            process::cmd_line(cmd),
            out.status,
            msg.trim()
        )))
    }
}

impl Lab {
    /// Packets the agents of a two-node lab have sealed with ESP since it came up
    /// ([`multinode::read_sealed`]); 0 for one node.
    pub fn esp_sealed(&self) -> Result<u64> {
        multinode::read_sealed(&self.down.bin, &self.down.lab, &self.sockets)
    }

    /// Brings the lab up for `path` and starts netserver.
    pub fn up(cfg: &LabConfig, pod_cores: &str) -> Result<Lab> {
        if !cfg.bin.is_file() {
            return Err(Error::Lab(format!(
                "xylem binary not found at {} (build it: cargo build --release -p xylem-cli -p xylem-agent, or pass --xylem-bin)",
                cfg.bin.display()
            )));
        }
        let yaml = cfg.dir.join("lab.yaml");
        std::fs::write(&yaml, cfg.layout.lab_yaml()).map_err(|source| Error::Io {
            path: yaml.clone(),
            source,
        })?;
        let bin = cfg.bin.to_string_lossy().into_owned();
        let yaml_s = yaml.to_string_lossy().into_owned();
        let batch = cfg.batch_size.to_string();
        // Behind `taskset` when the lab must count given CPUs (see `LabConfig::lab_cpus`).
        let mut up: Vec<&str> = match &cfg.lab_cpus {
            Some(c) => vec!["taskset", "-c", c.as_str()],
            None => Vec::new(),
        };
        up.extend([bin.as_str(), "lab", "up", "-f", &yaml_s]);
        up.extend(["--placement", cfg.placement.name()]);
        if let Some(cores) = &cfg.worker_cores {
            up.extend(["--worker-cores", cores.as_str()]);
        }
        up.extend(["--mode", cfg.mode, "--xdp-mode", &cfg.xdp_mode]);
        up.extend(["--batch-size", &batch]);
        let down = DownGuard {
            bin: cfg.bin.clone(),
            lab: cfg.lab_name.clone(),
        };
        check(&up, &cfg.lab_name, Duration::from_secs(180))?;
        let status_text = check(
            &[&bin, "lab", "status", "-o", "json"],
            &cfg.lab_name,
            Duration::from_secs(30),
        )?;
        let endpoints = endpoints_from_status(&status_text)?;
        let sockets = api_sockets_from_status(&status_text)?;
        if cfg.mode == "full" {
            // The full pipeline enforces a realistic policy: both pods selected, both directions
            // enforced, so every packet goes through the policy tables and connection tracking.
            // Every node's agent gets it, as every Cilium agent gets a cluster's policies.
            let policy = cfg.dir.join("policy.yaml");
            std::fs::write(&policy, policy_yaml()).map_err(|source| Error::Io {
                path: policy.clone(),
                source,
            })?;
            let policy_s = policy.to_string_lossy().into_owned();
            for sock in &sockets {
                let sock = sock.to_string_lossy();
                check(
                    &[&bin, "--socket", &sock, "policy", "import", &policy_s],
                    &cfg.lab_name,
                    Duration::from_secs(60),
                )?;
            }
        }
        let agents = match cfg.layout {
            Layout::OneNode => Vec::new(),
            Layout::TwoNodes { .. } => multinode::read_agents(&cfg.bin, &cfg.lab_name, &sockets)?,
        };
        let api_socket = sockets.first().cloned();
        let sockets = match cfg.layout {
            Layout::OneNode => Vec::new(),
            Layout::TwoNodes { .. } => sockets,
        };
        let status = serde_json::from_str(&status_text).unwrap_or(serde_json::Value::Null);
        // The lab already turns TX checksum offload off; repeat it for symmetry with the kernel
        // paths (harmless if the interface is named differently).
        for (ns, dev) in [
            (&endpoints.server_ns, &endpoints.server_if),
            (&endpoints.client_ns, &endpoints.client_if),
        ] {
            let _ = process::run(&netns::exec_args(ns, &["ethtool", "-K", dev, "tx", "off"]));
        }
        let netserver = netns::spawn_netserver(&endpoints.server_ns, pod_cores)?;
        Ok(Lab {
            endpoints,
            status,
            command: format!("XYLEM_LAB={} {}", cfg.lab_name, process::cmd_line(&up)),
            api_socket,
            agents,
            sockets,
            _netserver: netserver,
            down,
        })
    }
}

/// The default `xylem` binary: next to the harness's own executable.
pub fn default_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default()
        .join("xylem")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_parsing() -> Result<()> {
        let json = r#"{"nodes":[{"name":"node-a","netns":"xylem-node-a","api_socket":"/run/x.sock","agent_pid":42,"pod_cidr":"10.42.0.0/24","gateway":"10.42.0.1"}],
            "pods":[{"name":"xnh-client","namespace":"bench","labels":{"app":"netperf"},"ip":"10.42.0.3","netns":"xylem-pod-2","node":"node-a"},
                    {"name":"xnh-server","namespace":"bench","labels":{"app":"netserver"},"ip":"10.42.0.2/32","netns":"xylem-pod-1","node":"node-a"}]}"#;
        let e = endpoints_from_status(json)?;
        assert_eq!(e.server_ip, "10.42.0.2");
        assert_eq!(e.server_ns, "xylem-pod-1");
        assert_eq!(e.client_ns, "xylem-pod-2");
        assert_eq!(e.server_if, "eth0", "interface defaults to eth0");
        assert_eq!(
            api_sockets_from_status(json)?,
            [PathBuf::from("/run/x.sock")]
        );
        assert!(api_sockets_from_status(r#"{"nodes":[],"pods":[]}"#)?.is_empty());
        assert!(matches!(
            endpoints_from_status(r#"{"pods":[]}"#),
            Err(Error::Lab(_))
        ));
        assert!(matches!(
            endpoints_from_status("not json"),
            Err(Error::Lab(_))
        ));
        Ok(())
    }

    #[test]
    fn the_policy_parses_with_every_rule() {
        let policies = xylem_policy::parse_policies(&policy_yaml()).unwrap();
        assert_eq!(policies.len(), 2);
    }

    #[test]
    fn status_gives_every_nodes_socket() -> Result<()> {
        let two = r#"{"nodes":[{"name":"node1","api_socket":"/run/a.sock"},{"name":"node2","api_socket":"/run/b.sock"}],
            "pods":[{"name":"xnh-client","ip":"10.200.0.10","netns":"p1","node":"node1"},
                    {"name":"xnh-server","ip":"10.200.1.10","netns":"p2","node":"node2"}]}"#;
        assert_eq!(
            api_sockets_from_status(two)?,
            vec![PathBuf::from("/run/a.sock"), PathBuf::from("/run/b.sock")]
        );
        Ok(())
    }

    #[test]
    fn lab_yaml_has_two_pods() {
        let y = lab_yaml();
        assert_eq!(y.matches("- name:").count(), 2);
        assert!(y.contains(SERVER_POD) && y.contains(CLIENT_POD));
    }
}

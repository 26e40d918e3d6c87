//! The two-node paths, `xylem-multinode` and `xylem-encrypted`: what differs from the one-node
//! Xylem paths, which otherwise share their lab handling (module `xylem`).
//!
//! Both build one lab with two nodes (each its own namespace and agent, uplinks on the lab's
//! underlay bridge): the netperf client pod on node 1, netserver's pod on node 2, so every
//! packet crosses the underlay. `xylem-encrypted` adds the lab file's `encryption.key_file`,
//! which this module writes ([`KeyFile`]), so the agents seal that traffic in ESP
//! (AES-128-GCM). Nothing else differs between the two, which is what makes their ratio ESP's
//! cost.
//!
//! Worker placement needs care: the lab hands `--worker-cores` to every node alike, so in the
//! `shared` placement both agents get the pods' core (as the one-node `shared` agent does), and
//! in the `dedicated` placement the harness gives no cores and lets the lab pick one per node
//! ([`lab_node_cores`]); that placement is unavailable where those cores would be the pods'
//! ([`dedicated_unavailable`]). Once a lab is up, every agent is asked what it actually runs
//! ([`read_agents`], [`check_agents`]), so a result is never recorded under a placement, or an
//! encryption, that the agents did not have.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::results::{PathKind, Placement};
use crate::sys;
use crate::xylem::check;

/// How many nodes the two-node paths' lab has.
pub const NODES: usize = 2;
/// The node the netperf client pod runs on (the lab's first node, whose agent owns the lab's
/// default API socket).
pub const CLIENT_NODE: &str = "node1";
/// The node netserver's pod runs on.
pub const SERVER_NODE: &str = "node2";

/// The ESP key id (and SPI) of the key the harness writes, as in Cilium's examples.
pub const ESP_KEY_ID: u8 = 3;
/// The algorithm of that key: `rfc4106(gcm(aes))` with a 16-byte key (+ 4-byte salt) and a
/// 128-bit ICV, which the agents report as this name.
pub const ESP_ALGORITHM: &str = "AES-128-GCM";
/// Bytes of key material in the key file: a 16-byte AES key and the 4-byte GCM salt.
const KEY_BYTES: usize = 20;

/// Cilium's key-file line for `key`: `KEYID rfc4106(gcm(aes)) HEX 128`.
pub fn key_line(key: &[u8; KEY_BYTES]) -> String {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("{ESP_KEY_ID} rfc4106(gcm(aes)) {hex} 128\n")
}

/// A random ESP key in Cilium's format, in a directory of the harness's own (mode 0700, the
/// file 0600) that is removed on drop. One key serves the whole run: every visit of
/// `xylem-encrypted` builds a new lab on it, and the agents read it at start.
#[derive(Debug)]
pub struct KeyFile {
    dir: PathBuf,
    path: PathBuf,
}

impl KeyFile {
    /// Writes a fresh random key under the system's temporary directory.
    pub fn create() -> Result<KeyFile> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        let urandom = Path::new("/dev/urandom");
        let mut key = [0u8; KEY_BYTES];
        let mut tag = [0u8; 4];
        let mut rng = std::fs::File::open(urandom).map_err(io(urandom))?;
        rng.read_exact(&mut key).map_err(io(urandom))?;
        rng.read_exact(&mut tag).map_err(io(urandom))?;
        // A random suffix as well as the pid: the name cannot be taken by an earlier run.
        let dir = std::env::temp_dir().join(format!(
            "netperf-harness-{}-{}",
            std::process::id(),
            u32::from_ne_bytes(tag)
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io(&dir))?;
        let keys = KeyFile {
            path: dir.join("esp.keys"),
            dir,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&keys.path)
            .map_err(io(&keys.path))?;
        f.write_all(key_line(&key).as_bytes())
            .map_err(io(&keys.path))?;
        Ok(keys)
    }

    /// The key file, for the lab file's `encryption.key_file`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        // Nothing to report from Drop; the directory is the harness's own and holds only the key.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The worker core the lab gives each node's agent when `lab up` gets no `--worker-cores`:
/// node i (0-based) gets CPU `cpus - 1 - i`, from the last CPU down. This mirrors `xylem-lab`'s
/// private `node_workers`, to decide before building anything; [`check_agents`] verifies what
/// the agents really got. The lab counts CPUs through its caller's affinity mask, so the
/// harness runs `lab up` with every CPU in it (see the runner).
pub fn lab_node_cores(cpus: usize) -> Vec<usize> {
    let cpus = cpus.max(1);
    (0..NODES).map(|i| cpus - 1 - i % cpus).collect()
}

/// Why the two-node paths cannot run in the `dedicated` placement on a machine with `cpus` CPUs
/// and the pods on `pod_cores`, or `None` if they can: each agent busy-polls a core of its own,
/// which must be neither a pod core (it would starve netperf) nor the other agent's.
pub fn dedicated_unavailable(cpus: usize, pod_cores: &[usize]) -> Option<String> {
    let cores = lab_node_cores(cpus);
    let mut distinct = cores.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let clash: Vec<usize> = cores
        .iter()
        .copied()
        .filter(|c| pod_cores.contains(c))
        .collect();
    if distinct.len() == NODES && clash.is_empty() {
        return None;
    }
    Some(format!(
        "unavailable: the dedicated placement needs a core of its own for each node's agent, \
         outside the pod cores ({}); the lab gives them CPUs {} of {cpus}, and {} \
         (run on a machine with at least {} CPUs and the pod cores at the low end, or pass \
         --placements shared)",
        sys::cpu_list(pod_cores),
        sys::cpu_list(&cores),
        if clash.is_empty() {
            "they are the same CPU".to_string()
        } else {
            format!("CPU {} runs the pods", sys::cpu_list(&clash))
        },
        NODES + pod_cores.len()
    ))
}

/// The lab file of the two-node paths: the client pod on [`CLIENT_NODE`], the server pod on
/// [`SERVER_NODE`], with ESP between them when `key_file` is given.
pub fn lab_yaml(key_file: Option<&Path>) -> String {
    use crate::xylem::{CLIENT_POD, SERVER_POD};
    let mut y = format!(
        "# Written by netperf-harness: netperf's pod on {CLIENT_NODE}, netserver's on {SERVER_NODE}.\n\
         nodes:\n  - name: {CLIENT_NODE}\n    pods:\n      - name: {CLIENT_POD}\n        \
         namespace: bench\n        labels: {{app: netperf}}\n  - name: {SERVER_NODE}\n    pods:\n      \
         - name: {SERVER_POD}\n        namespace: bench\n        labels: {{app: netserver}}\n"
    );
    if let Some(k) = key_file {
        // A JSON string is a YAML double-quoted scalar: any path survives.
        let quoted = serde_json::Value::from(k.to_string_lossy().into_owned()).to_string();
        y.push_str(&format!("encryption: {{key_file: {quoted}}}\n"));
    }
    y
}

/// What one node's agent reports it runs: recorded in the conditions, and checked against what
/// the path asked for ([`check_agents`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentReport {
    /// The node's name.
    pub node: String,
    /// `dedicated` or `shared`.
    pub placement: String,
    /// The cores its workers are pinned to.
    pub worker_cores: Vec<usize>,
    /// `ipsec` or `disabled`.
    pub encryption: String,
    /// With encryption: the current key's algorithm (`AES-128-GCM`).
    pub esp_algorithm: Option<String>,
    /// With encryption: the key id (SPI) packets are sent with.
    pub esp_key_id: Option<u8>,
}

#[derive(Deserialize)]
struct AgentStatus {
    node: String,
    placement: String,
    #[serde(default)]
    workers: Vec<WorkerCore>,
    #[serde(default)]
    encryption: Option<String>,
}

#[derive(Deserialize)]
struct WorkerCore {
    core: usize,
}

#[derive(Deserialize)]
struct EncryptStatus {
    current_key_id: Option<u8>,
    #[serde(default)]
    keys: Vec<KeyView>,
}

#[derive(Deserialize)]
struct KeyView {
    id: u8,
    algorithm: String,
}

/// One agent's report from its `status -o json` and, when it encrypts, its
/// `encrypt status -o json`.
pub fn agent_report(status: &str, encrypt: Option<&str>) -> Result<AgentReport> {
    let bad = |what: &str, e: serde_json::Error| {
        Error::Lab(format!(
            "`xylem {what} -o json` is not the expected JSON: {e}"
        ))
    };
    let st: AgentStatus = serde_json::from_str(status).map_err(|e| bad("status", e))?;
    let enc: Option<EncryptStatus> = encrypt
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| bad("encrypt status", e))?;
    let current = enc.as_ref().and_then(|e| e.current_key_id);
    Ok(AgentReport {
        node: st.node,
        placement: st.placement,
        worker_cores: st.workers.iter().map(|w| w.core).collect(),
        encryption: st.encryption.unwrap_or_else(|| "disabled".into()),
        esp_algorithm: enc.and_then(|e| {
            e.keys
                .into_iter()
                .find(|k| Some(k.id) == current)
                .map(|k| k.algorithm)
        }),
        esp_key_id: current,
    })
}

#[derive(Deserialize)]
struct EncryptPeers {
    #[serde(default)]
    peers: Vec<PeerCounters>,
}

#[derive(Deserialize)]
struct PeerCounters {
    tx_packets: u64,
}

/// Packets the agent sealed for its peers, from its `encrypt status -o json`.
pub fn sealed_packets(encrypt: &str) -> Result<u64> {
    let e: EncryptPeers = serde_json::from_str(encrypt).map_err(|e| {
        Error::Lab(format!(
            "`xylem encrypt status -o json` is not the expected JSON: {e}"
        ))
    })?;
    Ok(e.peers.iter().map(|p| p.tx_packets).sum())
}

/// Packets all agents sealed with ESP so far: after a visit of `xylem-encrypted`, the proof
/// that its traffic went through ESP rather than around it.
pub fn read_sealed(bin: &Path, lab: &str, sockets: &[PathBuf]) -> Result<u64> {
    let bin = bin.to_string_lossy();
    sockets.iter().try_fold(0, |sum, sock| {
        let sock = sock.to_string_lossy();
        let text = check(
            &[&bin, "--socket", &sock, "encrypt", "status", "-o", "json"],
            lab,
            Duration::from_secs(30),
        )?;
        Ok(sum + sealed_packets(&text)?)
    })
}

/// Asks each agent (by its API socket, in node order) what it runs.
pub fn read_agents(bin: &Path, lab: &str, sockets: &[PathBuf]) -> Result<Vec<AgentReport>> {
    let bin = bin.to_string_lossy().into_owned();
    let timeout = Duration::from_secs(30);
    sockets
        .iter()
        .map(|sock| {
            let sock = sock.to_string_lossy().into_owned();
            let xylem = |args: &[&str]| {
                let mut cmd = vec![bin.as_str(), "--socket", sock.as_str()];
                cmd.extend_from_slice(args);
                check(&cmd, lab, timeout)
            };
            let status = xylem(&["status", "-o", "json"])?;
            let encrypts = agent_report(&status, None)?.encryption != "disabled";
            let encrypt = if encrypts {
                Some(xylem(&["encrypt", "status", "-o", "json"])?)
            } else {
                None
            };
            agent_report(&status, encrypt.as_deref())
        })
        .collect()
}

/// Checks that the agents run what `path` in `placement` asked for: two nodes, the placement,
/// dedicated workers off the pod cores and off each other's, and ESP with the harness's key
/// exactly when the path encrypts. The error says what differs and what to look at.
pub fn check_agents(
    agents: &[AgentReport],
    path: PathKind,
    placement: Placement,
    pod_cores: &[usize],
) -> Result<()> {
    let fail = |why: String| {
        Err(Error::Lab(format!(
            "the lab's agents do not run {path} ({}): {why}",
            placement.name()
        )))
    };
    if agents.len() != NODES {
        return fail(format!("{} agents answered, not {NODES}", agents.len()));
    }
    let mut taken: Vec<usize> = Vec::new();
    for a in agents {
        let node = &a.node;
        if a.placement != placement.name() {
            return fail(format!(
                "node {node}'s agent runs the {} placement (the lab changes it when agents must share cores; see `xylem lab up --help`)",
                a.placement
            ));
        }
        if placement == Placement::Dedicated {
            if let Some(c) = a.worker_cores.iter().find(|c| pod_cores.contains(c)) {
                return fail(format!(
                    "node {node}'s worker busy-polls CPU {c}, a pod core"
                ));
            }
            if let Some(c) = a.worker_cores.iter().find(|c| taken.contains(c)) {
                return fail(format!(
                    "node {node}'s worker busy-polls CPU {c}, as another node's does"
                ));
            }
            taken.extend(&a.worker_cores);
        }
        let want = if path.encrypted() {
            "ipsec"
        } else {
            "disabled"
        };
        if a.encryption != want {
            return fail(format!(
                "node {node}'s agent reports encryption `{}`, not `{want}`",
                a.encryption
            ));
        }
        if path.encrypted()
            && (a.esp_algorithm.as_deref() != Some(ESP_ALGORITHM)
                || a.esp_key_id != Some(ESP_KEY_ID))
        {
            return fail(format!(
                "node {node}'s agent sends with key {:?} ({:?}), not the harness's key {ESP_KEY_ID} ({ESP_ALGORITHM}): see `xylem encrypt status` and its log",
                a.esp_key_id, a.esp_algorithm
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_line_is_ciliums_format() {
        let line = key_line(&[0xab; KEY_BYTES]);
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.len(), 4, "{line}");
        assert_eq!(fields[0], "3");
        assert_eq!(fields[1], "rfc4106(gcm(aes))");
        assert_eq!(fields[2].len(), 40, "16-byte key + 4-byte salt in hex");
        assert!(fields[2].chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(fields[3], "128", "ICV bits");
        assert!(line.ends_with('\n'));
    }

    #[test]
    fn the_key_file_is_private_random_and_removed() -> Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let (a, b) = (KeyFile::create()?, KeyFile::create()?);
        let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode(a.path()).ok(), Some(0o600));
        assert_eq!(
            mode(a.path().parent().unwrap_or(a.path())).ok(),
            Some(0o700)
        );
        let read = |k: &KeyFile| std::fs::read_to_string(k.path()).unwrap_or_default();
        assert_ne!(read(&a), read(&b), "a fresh key each time");
        assert_eq!(read(&a).lines().count(), 1);
        let dir = a.path().parent().map(Path::to_path_buf);
        drop(a);
        assert!(dir.is_some_and(|d| !d.exists()), "removed on drop");
        Ok(())
    }

    #[test]
    fn the_lab_file_puts_the_pods_on_two_nodes() -> Result<()> {
        let keys = KeyFile::create()?;
        for key in [None, Some(keys.path())] {
            let f =
                xylem_lab::LabFile::parse(&lab_yaml(key)).map_err(|e| Error::Lab(e.to_string()))?;
            let nodes = f.node_list();
            assert_eq!(nodes.len(), NODES);
            assert_eq!(nodes[0].name, CLIENT_NODE);
            assert_eq!(nodes[0].pods[0].name, crate::xylem::CLIENT_POD);
            assert_eq!(nodes[1].name, SERVER_NODE);
            assert_eq!(nodes[1].pods[0].name, crate::xylem::SERVER_POD);
            assert_eq!(f.encryption.map(|e| e.key_file), key.map(Path::to_path_buf));
        }
        Ok(())
    }

    #[test]
    fn dedicated_needs_a_free_core_per_node() {
        // (CPUs, pod cores, unavailable?)
        let cases: &[(usize, &[usize], bool)] = &[
            (2, &[0], true),  // the lab would give node 2 CPU 0, the pods' core
            (1, &[0], true),  // one CPU for everything
            (3, &[0], false), // nodes on CPUs 2 and 1
            (4, &[0, 1], false),
            (4, &[3], true),
        ];
        for &(cpus, pods, unavailable) in cases {
            let why = dedicated_unavailable(cpus, pods);
            assert_eq!(
                why.is_some(),
                unavailable,
                "{cpus} CPUs, pods on {pods:?}: {why:?}"
            );
            if let Some(w) = why {
                assert!(w.contains("--placements shared"), "says what to do: {w}");
            }
        }
        assert_eq!(lab_node_cores(2), vec![1, 0]);
        assert_eq!(lab_node_cores(8), vec![7, 6]);
    }

    fn agent(node: &str, placement: &str, cores: &[usize], enc: Option<(&str, u8)>) -> AgentReport {
        AgentReport {
            node: node.into(),
            placement: placement.into(),
            worker_cores: cores.to_vec(),
            encryption: if enc.is_some() { "ipsec" } else { "disabled" }.into(),
            esp_algorithm: enc.map(|(a, _)| a.to_string()),
            esp_key_id: enc.map(|(_, k)| k),
        }
    }

    #[test]
    fn agents_are_checked_against_the_path() {
        use PathKind::{XylemEncrypted as Enc, XylemMultinode as Multi};
        use Placement::{Dedicated as D, Shared as S};
        let esp = Some((ESP_ALGORITHM, ESP_KEY_ID));
        let pods = [0];
        // (agents, path, placement, error mentions)
        let cases: Vec<(Vec<AgentReport>, PathKind, Placement, Option<&str>)> = vec![
            (
                vec![
                    agent("node1", "shared", &[0], None),
                    agent("node2", "shared", &[0], None),
                ],
                Multi,
                S,
                None,
            ),
            (
                vec![
                    agent("node1", "dedicated", &[2], None),
                    agent("node2", "dedicated", &[1], None),
                ],
                Multi,
                D,
                None,
            ),
            (
                vec![
                    agent("node1", "shared", &[0], esp),
                    agent("node2", "shared", &[0], esp),
                ],
                Enc,
                S,
                None,
            ),
            (
                vec![agent("node1", "shared", &[0], None)],
                Multi,
                S,
                Some("1 agents"),
            ),
            (
                vec![
                    agent("node1", "shared", &[1], None),
                    agent("node2", "shared", &[1], None),
                ],
                Multi,
                D,
                Some("shared placement"),
            ),
            (
                vec![
                    agent("node1", "dedicated", &[1], None),
                    agent("node2", "dedicated", &[0], None),
                ],
                Multi,
                D,
                Some("CPU 0, a pod core"),
            ),
            (
                vec![
                    agent("node1", "dedicated", &[1], None),
                    agent("node2", "dedicated", &[1], None),
                ],
                Multi,
                D,
                Some("another node's"),
            ),
            (
                vec![
                    agent("node1", "shared", &[0], None),
                    agent("node2", "shared", &[0], None),
                ],
                Enc,
                S,
                Some("`disabled`, not `ipsec`"),
            ),
            (
                vec![
                    agent("node1", "shared", &[0], esp),
                    agent("node2", "shared", &[0], esp),
                ],
                Multi,
                S,
                Some("`ipsec`, not `disabled`"),
            ),
            (
                vec![
                    agent("node1", "shared", &[0], esp),
                    agent("node2", "shared", &[0], Some(("AES-256-GCM", 3))),
                ],
                Enc,
                S,
                Some("not the harness's key"),
            ),
        ];
        for (agents, path, placement, want) in cases {
            let got = check_agents(&agents, path, placement, &pods);
            match (want, got) {
                (None, Ok(())) => {}
                (Some(w), Err(e)) => assert!(e.to_string().contains(w), "{e} should mention {w}"),
                (w, g) => panic!("{path} {placement:?} {agents:?}: expected {w:?}, got {g:?}"),
            }
        }
    }

    #[test]
    fn agent_reports_come_from_the_agents_json() -> Result<()> {
        let status = r#"{"node":"node2","placement":"shared","workers":[{"id":0,"core":0,"busy_ratio":0.1}],"encryption":"ipsec","version":"x"}"#;
        let enc = r#"{"mode":"ipsec","current_key_id":3,"keys":[{"id":3,"spi":3,"state":"current","algorithm":"AES-128-GCM"}],"peers":[],"errors":{}}"#;
        let a = agent_report(status, Some(enc))?;
        assert_eq!(a, agent("node2", "shared", &[0], Some((ESP_ALGORITHM, 3))));
        let plain = r#"{"node":"node1","placement":"dedicated","workers":[{"core":1}]}"#;
        assert_eq!(
            sealed_packets(
                r#"{"mode":"ipsec","peers":[{"node":"node1","tx_packets":7},{"node":"x","tx_packets":5}]}"#
            )?,
            12
        );
        assert_eq!(sealed_packets(enc)?, 0, "no peer yet");
        let a = agent_report(plain, None)?;
        assert_eq!(
            a.encryption, "disabled",
            "older agents have no encryption field"
        );
        assert!(matches!(agent_report("{}", None), Err(Error::Lab(_))));
        Ok(())
    }
}

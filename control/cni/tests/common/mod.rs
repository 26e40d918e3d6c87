//! What the plugin's protocol tests share: running `xylem-cni` as a runtime does (environment
//! and stdin), a lab with no pods whose agent the plugin talks to, and namespaces that go away
//! when dropped, also during a panic.
#![allow(dead_code, reason = "each test file uses a different subset")]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

pub static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this process and call.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn cni_binary() -> &'static str {
    env!("CARGO_BIN_EXE_xylem-cni")
}

/// `xylem` and `xylem-agent`: another package builds them, next to `xylem-cni`.
pub fn sibling(name: &str) -> PathBuf {
    let p = Path::new(cni_binary()).with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: the CNI tests start a lab with it. Build it with \
         `cargo build -p xylem-cli -p xylem-agent` (`cargo test --workspace` builds it too)",
        p.display()
    );
    p
}

pub fn sh(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

pub fn ok(args: &[&str]) -> String {
    let o = sh(args);
    assert!(
        o.status.success(),
        "{args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What one run of the plugin gave: its exit status and the JSON on stdout (`Null` if none).
#[derive(Debug)]
pub struct CniRun {
    pub success: bool,
    pub json: Value,
    pub stderr: String,
}

impl CniRun {
    /// The error code, if the run failed.
    pub fn code(&self) -> Option<u64> {
        (!self.success).then(|| self.json["code"].as_u64().unwrap_or(0))
    }

    #[track_caller]
    pub fn expect_ok(self) -> Value {
        assert!(
            self.success,
            "xylem-cni failed: {} {}",
            self.json, self.stderr
        );
        self.json
    }

    #[track_caller]
    pub fn expect_code(self, code: u64) -> Value {
        assert_eq!(
            self.code(),
            Some(code),
            "expected error code {code}: {} {}",
            self.json,
            self.stderr
        );
        for k in ["cniVersion", "code", "msg", "details"] {
            assert!(
                self.json.get(k).is_some(),
                "error without {k}: {}",
                self.json
            );
        }
        self.json
    }
}

/// Runs `xylem-cni` with exactly `vars` in its environment and `stdin`, in network namespace
/// `netns` (`None`: this process's).
pub fn run_cni(netns: Option<&str>, vars: &[(&str, &str)], stdin: &[u8]) -> CniRun {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, cni_binary()]);
            c
        }
        None => Command::new(cni_binary()),
    };
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn xylem-cni");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let json = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text}"))
    };
    CniRun {
        success: out.status.success(),
        json,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A lab brought up with no pods (`pods: []`), down when dropped.
pub struct Lab {
    pub name: String,
    pub netns: String,
    pub socket: String,
    pub agent_pid: i32,
    dir: PathBuf,
}

impl Lab {
    pub fn up() -> Lab {
        sibling("xylem-agent");
        let name = unique("c");
        let dir = std::env::temp_dir().join(format!("xylem-cni-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("lab.yaml");
        std::fs::write(&file, "pods: []\n").unwrap();
        let mut lab = Lab {
            name,
            netns: String::new(),
            socket: String::new(),
            agent_pid: 0,
            dir,
        };
        lab.xylem(&["lab", "up", "-f", file.to_str().unwrap()]);
        let st = lab.status();
        lab.netns = st["nodes"][0]["netns"].as_str().unwrap().to_string();
        lab.socket = st["nodes"][0]["api_socket"].as_str().unwrap().to_string();
        lab.agent_pid = st["nodes"][0]["agent_pid"].as_i64().unwrap() as i32;
        lab
    }

    /// A directory of the test's own (IPAM leases, files), removed with the lab.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn xylem(&self, args: &[&str]) -> String {
        let bin = sibling("xylem");
        let mut a = vec![bin.to_str().unwrap(), "--lab", &self.name];
        a.extend_from_slice(args);
        let o = sh(&a);
        if !o.status.success() {
            let log =
                std::fs::read_to_string(format!("/run/xylem/labs/{}/node1/agent.log", self.name))
                    .unwrap_or_default();
            panic!(
                "{a:?} failed:\nstdout: {}\nstderr: {}\nagent log:\n{log}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&self.xylem(&["lab", "status", "-o", "json"])).unwrap()
    }

    pub fn agent(&self) -> Value {
        serde_json::from_str(&self.xylem(&["status", "-o", "json"])).unwrap()
    }

    pub fn endpoints(&self) -> Vec<Value> {
        serde_json::from_str::<Value>(&self.xylem(&["endpoint", "list", "-o", "json"]))
            .unwrap()
            .as_array()
            .cloned()
            .unwrap()
    }

    /// The `xyc…` links in the node's namespace.
    pub fn cni_links(&self) -> Vec<String> {
        ok(&["ip", "-n", &self.netns, "-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with("xyc"))
            .collect()
    }

    /// A network configuration for the plugin: host-local over `range` (first and last
    /// address of the lab's pod CIDR 10.200.0.0/24), leases under the test's directory.
    pub fn conf(&self, version: &str, range: (u8, u8), extra: &str) -> Vec<u8> {
        format!(
            r#"{{"cniVersion":"{version}","name":"xylem","type":"xylem-cni",
                "agentSocket":"{}",
                "ipam":{{"type":"host-local","dataDir":"{}",
                  "ranges":[[{{"subnet":"10.200.0.0/24","rangeStart":"10.200.0.{}","rangeEnd":"10.200.0.{}"}}]]}}
                {extra}}}"#,
            self.socket,
            self.leases().display(),
            range.0,
            range.1
        )
        .into_bytes()
    }

    pub fn leases(&self) -> PathBuf {
        self.dir.join("leases")
    }

    /// The addresses host-local holds a lease on.
    pub fn leased(&self) -> Vec<String> {
        std::fs::read_dir(self.leases().join("xylem"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Ok(bin) = std::panic::catch_unwind(|| sibling("xylem")) {
            let _ = Command::new(bin)
                .args(["--lab", &self.name, "lab", "down"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A network namespace standing in for a container's, deleted when dropped.
pub struct Netns {
    pub name: String,
    path: String,
}

impl Netns {
    pub fn new() -> Netns {
        let name = unique("xycnit");
        ok(&["ip", "netns", "add", &name]);
        let path = format!("/var/run/netns/{name}");
        Netns { name, path }
    }

    /// Its path, as a runtime passes it in `CNI_NETNS`.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn exec(&self, args: &[&str]) -> Output {
        let mut a = vec!["ip", "netns", "exec", &self.name];
        a.extend_from_slice(args);
        sh(&a)
    }

    /// Whether one ping to `ip` from inside is answered within a second, trying up to 5 times
    /// (the first can race the agent's attach).
    pub fn pings(&self, ip: &str) -> bool {
        (0..5).any(|_| self.exec(&["ping", "-c1", "-W1", ip]).status.success())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.name]);
    }
}

/// The environment of one attachment.
pub fn attach_env<'a>(
    command: &'a str,
    container: &'a str,
    netns: &'a str,
    ifname: &'a str,
) -> Vec<(&'a str, &'a str)> {
    let mut v = vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", container),
        ("CNI_IFNAME", ifname),
        ("CNI_PATH", "/usr/lib/cni"),
    ];
    if !netns.is_empty() {
        v.push(("CNI_NETNS", netns));
    }
    v
}

/// `conf` with `prevResult` set to `prev`.
pub fn with_prev(conf: &[u8], prev: &Value) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(conf).unwrap();
    v["prevResult"] = prev.clone();
    serde_json::to_vec(&v).unwrap()
}

/// Whether a test that needs root and the reference CNI plugins may run: if not, it is skipped
/// (or, where skips fail, fails), saying what is missing.
pub fn privileged(test: &str) -> bool {
    xylem_testkit::root_or_skip(test) && have_reference_plugins(test)
}

/// Skips (or, where skips fail, fails) when the reference CNI plugins are missing.
pub fn have_reference_plugins(test: &str) -> bool {
    for p in ["host-local", "ptp"] {
        if !Path::new("/usr/lib/cni").join(p).exists() {
            xylem_testkit::skip(
                test,
                &format!(
                    "/usr/lib/cni/{p} is missing: install containernetworking-plugins \
                     (docker/bootstrap.sh does)"
                ),
            );
            return false;
        }
    }
    true
}

//! What the plugin's integration tests share: a lab with no pods whose agent the plugin talks
//! to, running `xylem-cni` as a runtime does (environment and stdin), namespaces standing in for
//! containers', and the guards that remove all of it, also during a panic. `containerd` has
//! what the tests with a real container runtime add.
#![allow(dead_code, reason = "each test uses a different subset")]

pub mod containerd;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The CNI network name of the tests' configurations: host-local keeps its leases in
/// `<dataDir>/<name>/`.
pub const NETWORK: &str = "xylem";

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A name no other test of this run (nor another run at the same time) uses.
pub fn unique(tag: &str) -> String {
    format!(
        "{tag}{}x{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// The plugin under test.
pub fn cni_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_xylem-cni"))
}

/// `xylem` or `xylem-agent`, which other packages build into the same target directory.
pub fn sibling(name: &str) -> PathBuf {
    let p = cni_binary().with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: these tests run the lab and its agent from the target directory of \
         xylem-cni. Build them with `cargo build -p xylem-cli -p xylem-agent`",
        p.display()
    );
    p
}

pub fn xylem() -> PathBuf {
    sibling("xylem")
}

/// Whether `prog` (a path, or a name looked up in `PATH`) is an existing file.
pub fn explain(what: &str, o: &Output) -> String {
    format!(
        "{what} exited with {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `cmd` to completion (it must start).
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd`, which must succeed; returns its stdout.
pub fn ok(cmd: &mut Command) -> String {
    let o = run(cmd);
    assert!(o.status.success(), "{}", explain(&format!("{cmd:?}"), &o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Waits until `f` returns `Some` (polling every 50 ms), up to `limit`; then panics with
/// `what` and the last state `describe` gives.
pub fn eventually<T>(
    limit: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    describe: impl FnOnce() -> String,
) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if t.elapsed() > limit {
            panic!("{what}: not within {limit:?}; last state:\n{}", describe());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether process `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// Sends `signal` (a `kill -s` name) to `pid`; whether it was delivered.
pub fn signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits for `child` up to `limit`; None if it is still running then.
fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let t = Instant::now();
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if t.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `xyc…` links (the plugin's host ends) in namespace `netns`.
pub fn cni_links(netns: &str) -> Vec<String> {
    ok(Command::new("ip").args(["-n", netns, "-o", "link", "show"]))
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap().to_string())
        .filter(|n| n.starts_with("xyc"))
        .collect()
}

/// The leases host-local holds under `data_dir`: anything in its network's directory but its
/// lock and its last-reserved markers.
pub fn leases(data_dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(data_dir.join(NETWORK)) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
        .collect()
}

/// A directory under `/tmp`, removed with all it holds when dropped.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("xylem-cni-{}", unique(tag)));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A lab with one node and no pods, brought down when dropped (also during a panic).
pub struct Lab {
    pub name: String,
    dir: TempDir,
    netns: String,
    socket: String,
}

impl Lab {
    pub fn up() -> Lab {
        sibling("xylem-agent");
        let dir = TempDir::new("lab");
        let yaml = dir.path.join("lab.yaml");
        std::fs::write(&yaml, "pods: []\n").unwrap();
        let mut lab = Lab {
            name: unique("c"),
            dir,
            netns: String::new(),
            socket: String::new(),
        };
        lab.xylem(&["lab", "up", "-f", yaml.to_str().unwrap()]);
        let node = lab.node();
        lab.netns = node["netns"].as_str().unwrap().to_string();
        lab.socket = node["api_socket"].as_str().unwrap().to_string();
        lab
    }

    /// A directory of the test's own (IPAM leases, files), removed with the lab.
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// The agent's pid, as `lab status` has it.
    pub fn agent_pid(&self) -> u32 {
        self.node()["agent_pid"].as_u64().unwrap() as u32
    }

    /// A network configuration for the plugin: host-local over `range` (first and last
    /// address of the lab's pod CIDR 10.200.0.0/24), leases under the test's directory.
    pub fn conf(&self, version: &str, range: (u8, u8), extra: &str) -> Vec<u8> {
        format!(
            r#"{{"cniVersion":"{version}","name":"{NETWORK}","type":"xylem-cni",
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

    /// The data directory of the leases of [`Lab::conf`]'s configurations.
    pub fn leases(&self) -> PathBuf {
        self.dir().join("leases")
    }

    /// The addresses host-local holds a lease on for [`Lab::conf`]'s configurations.
    pub fn leased(&self) -> Vec<String> {
        leases(&self.leases())
    }

    /// The node's agent log, for failure messages.
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(format!("/run/xylem/labs/{}/node1/agent.log", self.name))
            .unwrap_or_default()
    }

    /// Runs `xylem --lab NAME ARGS`, which must succeed (else panics with the agent's log).
    pub fn xylem(&self, args: &[&str]) -> String {
        let o = self.try_xylem(args);
        if !o.status.success() {
            panic!(
                "{}\nagent log:\n{}",
                explain(&format!("xylem --lab {} {args:?}", self.name), &o),
                self.agent_log()
            );
        }
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn try_xylem(&self, args: &[&str]) -> Output {
        run(Command::new(xylem()).args(["--lab", &self.name]).args(args))
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let text = self.xylem(args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?} printed {text}: {e}"))
    }

    /// `.nodes[0]` of `xylem lab status -o json`.
    pub fn node(&self) -> Value {
        self.json(&["lab", "status", "-o", "json"])["nodes"][0].clone()
    }

    /// The node's namespace, where the agent and the plugin run.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub fn api_socket(&self) -> PathBuf {
        PathBuf::from(&self.socket)
    }

    /// The node's pod CIDR (a /24 in the lab) and its first three octets, e.g. `10.200.0.`.
    pub fn subnet_prefix(&self) -> (String, String) {
        let cidr = self.node()["pod_cidr"].as_str().unwrap().to_string();
        let base = cidr.split('/').next().unwrap();
        let prefix = base.rsplit_once('.').unwrap().0.to_string();
        (cidr, format!("{prefix}."))
    }

    pub fn endpoints(&self) -> Vec<Value> {
        self.json(&["endpoint", "list", "-o", "json"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// `xylem status -o json`.
    pub fn status(&self) -> Value {
        self.json(&["status", "-o", "json"])
    }

    /// The `xyc…` links (the plugin's host ends) in the node namespace.
    pub fn cni_links(&self) -> Vec<String> {
        cni_links(&self.netns)
    }

    /// Starts the node's agent again, as `xylem lab up` starts it (same configuration, same
    /// log), after it died; returns once it reports itself healthy. `lab down` ends it with
    /// every other process of the lab's namespaces.
    pub fn restart_agent(&self) {
        let node = self.node();
        let log_path = node["agent_log"].as_str().unwrap();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(log_path)
            .unwrap_or_else(|e| panic!("{log_path}: {e}"));
        let mut child = Command::new("setsid")
            .args(["ip", "netns", "exec", node["netns"].as_str().unwrap()])
            .arg(sibling("xylem-agent"))
            .args(["--config", node["agent_config"].as_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting xylem-agent again: {e}"));
        let pid = child.id();
        // Reaped when `lab down` ends it, so it does not stay a zombie of the test.
        std::thread::spawn(move || child.wait());
        eventually(
            Duration::from_secs(30),
            "the restarted agent reports itself healthy",
            || {
                let o = self.try_xylem(&["status", "-o", "json"]);
                let st: Value = serde_json::from_slice(&o.stdout).ok()?;
                (st["health"]["ok"] == true).then_some(())
            },
            || {
                format!(
                    "agent pid {pid} alive: {}\n{}",
                    pid_alive(pid),
                    self.agent_log()
                )
            },
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let o = self.try_xylem(&["lab", "down"]);
        if !o.status.success() && !std::thread::panicking() {
            panic!("{}", explain("xylem lab down", &o));
        }
    }
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
            c.args(["netns", "exec", ns]).arg(cni_binary());
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

/// A network namespace standing in for a container's, deleted when dropped.
pub struct Netns {
    pub name: String,
    path: String,
}

impl Netns {
    pub fn new() -> Netns {
        let name = unique("xycnit");
        ok(Command::new("ip").args(["netns", "add", &name]));
        let path = format!("/var/run/netns/{name}");
        Netns { name, path }
    }

    /// Its path, as a runtime passes it in `CNI_NETNS`.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn exec(&self, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args))
    }

    /// Whether one ping to `ip` from inside is answered within a second, trying up to 5 times
    /// (the first can race the agent's attach).
    pub fn pings(&self, ip: &str) -> bool {
        (0..5).any(|_| self.exec(&["ping", "-c1", "-W1", ip]).status.success())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
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

//! Helpers shared by the privileged end-to-end tests: running commands, and [`LabGuard`], a lab
//! with a unique name that is brought down when dropped (also during a panic).
#![allow(dead_code, reason = "each test file uses a different subset")]

pub mod raw;

use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

pub fn xylem() -> &'static str {
    env!("CARGO_BIN_EXE_xylem")
}

/// The `xylem-agent` binary the lab starts: the one next to `xylem`. Another package builds
/// it, so say how when it is not there.
pub fn agent_binary() -> std::path::PathBuf {
    let agent = std::path::Path::new(xylem()).with_file_name("xylem-agent");
    assert!(
        agent.exists(),
        "{} is missing: the lab tests start it next to xylem. Build it with \
         `cargo build -p xylem-agent` (`cargo test --workspace` builds it too)",
        agent.display()
    );
    agent
}

/// Returns early from a test that needs root when it may skip (see `xylem_testkit`).
macro_rules! require_root {
    () => {
        if !xylem_testkit::root_or_skip(std::thread::current().name().unwrap_or(module_path!())) {
            return;
        }
    };
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

pub static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A lab that is brought down when dropped, also during a panic.
pub struct LabGuard {
    pub name: String,
}

impl LabGuard {
    pub fn up(extra: &[&str]) -> LabGuard {
        let name = format!(
            "t{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        agent_binary();
        let g = LabGuard { name };
        let mut args = vec![xylem(), "--lab", &g.name, "lab", "up"];
        args.extend_from_slice(extra);
        g.ok_log(&args);
        g
    }

    pub fn ok_log(&self, args: &[&str]) -> String {
        let o = sh(args);
        if !o.status.success() {
            let log =
                std::fs::read_to_string(format!("/run/xylem/labs/{}/node1/agent.log", self.name))
                    .unwrap_or_default();
            panic!(
                "{args:?} failed:\nstdout: {}\nstderr: {}\nagent log:\n{log}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn xylem(&self, args: &[&str]) -> String {
        let mut a = vec![xylem(), "--lab", &self.name];
        a.extend_from_slice(args);
        self.ok_log(&a)
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&self.xylem(&["lab", "status", "-o", "json"])).unwrap()
    }

    pub fn agent(&self) -> Value {
        serde_json::from_str(&self.xylem(&["status", "-o", "json"])).unwrap()
    }

    pub fn pod(&self, name: &str) -> (String, Ipv4Addr) {
        let st = self.status();
        let p = st["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no pod {name} in {st}"))
            .clone();
        (
            p["netns"].as_str().unwrap().to_string(),
            p["ip"].as_str().unwrap().parse().unwrap(),
        )
    }

    pub fn node_netns(&self) -> String {
        self.status()["nodes"][0]["netns"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn prefix(&self) -> String {
        format!("xylem-{}-", self.name)
    }

    pub fn down(&self) -> Output {
        sh(&[xylem(), "--lab", &self.name, "lab", "down"])
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let o = self.down();
        if !o.status.success() && !std::thread::panicking() {
            panic!("lab down failed: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
}

pub fn lab_namespaces(prefix: &str) -> Vec<String> {
    ok(&["ip", "netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(String::from)
        .collect()
}

pub fn ping(netns: &str, ip: Ipv4Addr, count: u32) -> bool {
    sh(&[
        "ip",
        "netns",
        "exec",
        netns,
        "ping",
        "-c",
        &count.to_string(),
        "-i",
        "0.2",
        "-W",
        "2",
        &ip.to_string(),
    ])
    .status
    .success()
}

impl LabGuard {
    /// The lab's agent API socket.
    pub fn socket(&self) -> String {
        self.status()["nodes"][0]["api_socket"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Pid of the agent running in the lab's node namespace (the lab's record goes stale once
    /// a test restarts the agent itself, so ask the kernel).
    pub fn agent_pid(&self) -> Option<i32> {
        let ns = self.node_netns();
        let out = sh(&["ip", "netns", "pids", &ns]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .find(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "xylem-agent")
            })
    }

    /// Sends `sig` to the agent and waits until it is gone.
    pub fn kill_agent(&self, sig: i32) {
        let pid = self.agent_pid().expect("no agent running");
        // SAFETY: kill(2) of the agent process this lab started.
        unsafe { libc::kill(pid, sig) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        // Until it is reaped: a zombie leader can still have threads exiting and files open
        // (the API socket among them). Its parent (init, or `start_agent`'s reaper) reaps it.
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "agent {pid} did not stop"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Stops the agent, replaces `from` (which must be there) with `to` in its configuration
    /// file, and starts it again.
    pub fn restart_with_config(&self, from: &str, to: &str) {
        let cfg = self.status()["nodes"][0]["agent_config"]
            .as_str()
            .unwrap()
            .to_string();
        let text = std::fs::read_to_string(&cfg).unwrap();
        assert!(text.contains(from), "no {from:?} in {cfg}:\n{text}");
        self.kill_agent(libc::SIGTERM);
        std::fs::write(&cfg, text.replace(from, to)).unwrap();
        self.start_agent(&[]).unwrap();
    }

    /// Starts the agent again with the lab's configuration plus `extra` flags, in the node
    /// namespace, and waits until its API answers. Returns the agent's exit output if it
    /// stopped during start-up instead.
    pub fn start_agent(&self, extra: &[&str]) -> Result<(), String> {
        let st = self.status();
        let node = &st["nodes"][0];
        let cfg = node["agent_config"].as_str().unwrap().to_string();
        let log = node["agent_log"].as_str().unwrap().to_string();
        let ns = node["netns"].as_str().unwrap().to_string();
        let agent = agent_binary();
        let logf = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log)
            .unwrap();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(&agent)
            .args(["--config", &cfg])
            .args(extra)
            .stdin(std::process::Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap();
        let sock = node["api_socket"].as_str().unwrap().to_string();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                return Err(format!("agent exited ({status}): {}", tail.join("\n")));
            }
            let o = sh(&[xylem(), "--socket", &sock, "status", "-o", "json"]);
            if o.status.success() {
                // Reap it in the background so it does not linger as a zombie.
                std::thread::spawn(move || {
                    let _ = child.wait();
                });
                return Ok(());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "agent did not answer within 30 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// The MAC address of `ifname` in namespace `netns`.
pub fn mac_in(netns: &str, ifname: &str) -> String {
    ok(&[
        "ip",
        "netns",
        "exec",
        netns,
        "cat",
        &format!("/sys/class/net/{ifname}/address"),
    ])
    .trim()
    .to_string()
}

/// Runs `f` on a thread that has entered network namespace `netns`.
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(
            std::os::fd::AsFd::as_fd(&fd),
            nix::sched::CloneFlags::CLONE_NEWNET,
        )
        .expect("setns");
        f()
    })
}

/// A running `xylem monitor` whose subscription is live: [`Monitor::start`] returns only after
/// the CLI printed its "Listening for events" line, which it does once the agent attached it.
/// Its output is drained by threads, so a chatty stream never blocks it on a full pipe.
pub struct Monitor {
    child: std::process::Child,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Monitor {
    pub fn start(args: &[&str]) -> Monitor {
        use std::io::BufRead as _;
        use std::process::Stdio;
        let mut child = Command::new(xylem())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn xylem monitor");
        let out = child.stdout.take().expect("piped stdout");
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut std::io::BufReader::new(out), &mut s);
            s
        });
        let err = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                if line.starts_with("Listening for events") {
                    let _ = tx.send(());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let mut m = Monitor {
            child,
            stdout: Some(stdout),
            stderr: Some(stderr),
        };
        if rx.recv_timeout(std::time::Duration::from_secs(30)).is_err() {
            let _ = m.child.kill();
            let (_, _, err) = m.finish_inner();
            panic!("xylem monitor {args:?} did not start listening within 30 s:\n{err}");
        }
        m
    }

    /// Sends `signal` (SIGINT: a clean stop) and returns (exit status, stdout, stderr).
    pub fn stop(mut self, signal: i32) -> (std::process::ExitStatus, String, String) {
        // SAFETY: kill(2) of the child we started and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        self.finish_inner()
    }

    fn finish_inner(&mut self) -> (std::process::ExitStatus, String, String) {
        let status = self.child.wait().expect("wait for xylem monitor");
        let join = |h: Option<std::thread::JoinHandle<String>>| {
            h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
        };
        (status, join(self.stdout.take()), join(self.stderr.take()))
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if self.stdout.is_some() {
            let _ = self.child.kill();
            let _ = self.finish_inner();
        }
    }
}

/// A file in the temporary directory, unique to this process and call, removed on drop.
pub struct TempFile(pub std::path::PathBuf);

impl TempFile {
    /// A file named after `what`, holding `text`.
    pub fn new(what: &str, text: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!(
            "xylem-test-{}-{}-{what}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let t = TempFile(path);
        t.write(text);
        t
    }

    /// Replaces its content, written whole and renamed into place, as a key distribution tool
    /// would: a reader polling the file never sees half of it.
    pub fn write(&self, text: &str) {
        let tmp = self.0.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.0).unwrap();
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `cmd` through `sh -c` in `netns` and returns its stdout, trimmed (`None` if it failed).
pub fn in_ns(netns: &str, cmd: &str) -> Option<String> {
    let o = sh(&["ip", "netns", "exec", netns, "sh", "-c", cmd]);
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// What a TCP connection to `ip:port` from `netns` reads (sending `hello` first); `None` when
/// it fails or times out. The timeouts are generous: lab servers answer by forking a shell, and
/// CI runs lab tests side by side on two CPUs with several agents' workers polling.
pub fn tcp(netns: &str, ip: &str, port: u16) -> Option<String> {
    in_ns(
        netns,
        &format!("echo hello | timeout 15 socat -t8 - TCP:{ip}:{port},connect-timeout=5"),
    )
}

/// `f` until it returns `want`, for at most `secs`; its last answer (a node's first packet to a
/// peer waits for its neighbour to resolve, a server for its `run:` to listen).
pub fn eventually(secs: u64, mut f: impl FnMut() -> Option<String>, want: &str) -> Option<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let got = f();
        if got.as_deref() == Some(want) || std::time::Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// The keys of `xylem encrypt status -o json`, as (id, state).
pub fn key_states(status: &Value) -> Vec<(u64, String)> {
    status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["id"].as_u64().unwrap(),
                k["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

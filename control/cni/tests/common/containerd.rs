//! What the containerd tests add: a `containerd` of their own started in the lab's node
//! namespace, containers run by `ctr run --cni` whose network `xylem-cni` sets up, and a proxy
//! that kills the agent in the middle of an ADD.
//!
//! Nothing here touches the machine's own containerd: the daemon gets its own `--address`,
//! `--root`, `--state` and `--config` under a temporary directory, and runs in a private mount
//! namespace where `/run` is a fresh tmpfs (containerd 1.6 puts its shims' sockets under
//! `/run/containerd/s`, a fixed path, and the runc shim keeps its state under
//! `/run/containerd/runc`). `ctr run --cni` reads only `/etc/cni/net.d` and `/opt/cni/bin`: each
//! `ctr run` gets a private mount namespace in which overlays on `/etc` and `/opt` (upper
//! directories in the temporary directory) provide the two mount points, and directories of the
//! test are bind-mounted on them. The machine's `/etc/cni`, `/opt/cni` and `/var/lib/cni` are
//! never read or created.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::*;

/// The containerd namespace `ctr` uses; the CNI container id is `<namespace>-<id>`.
pub const CTR_NAMESPACE: &str = "default";
/// The host-local range: inside the lab's pod CIDR, clear of the gateway (.1), the host port
/// (.254) and the addresses the lab gives its own pods (from .10).
pub const RANGE: (&str, &str) = ("220", "250");

fn found(prog: &str) -> bool {
    if prog.contains('/') {
        return Path::new(prog).is_file();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| d.join(prog).is_file())
}

/// Whether `test` may run: root, and the runtime's pieces installed. Otherwise it is skipped
/// through `xylem_testkit` (a failure where privileged tests must run), naming the package.
pub fn runtime_or_skip(test: &str) -> bool {
    if !xylem_testkit::root_or_skip(test) {
        return false;
    }
    let needs = [
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("runc", "runc"),
        ("/usr/lib/cni/host-local", "containernetworking-plugins"),
        ("/usr/lib/cni/loopback", "containernetworking-plugins"),
        ("/bin/busybox", "busybox-static"),
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
        ("setsid", "util-linux"),
    ];
    for (prog, package) in needs {
        if !found(prog) {
            xylem_testkit::skip(
                test,
                &format!(
                    "{prog} is missing: install the Debian package {package} \
                     (`docker/bootstrap.sh` installs it)"
                ),
            );
            return false;
        }
    }
    true
}

/// A command and everything it printed, for panic messages.
/// A `containerd` of the test's own, in the lab's node namespace, with everything it keeps under
/// a temporary directory. Dropping it kills its containers and shims, then it, then removes the
/// directory.
pub struct Runtime {
    pub netns: String,
    /// The daemon's socket, which every `ctr` of the test is given.
    pub address: PathBuf,
    /// Where the plugins run by `ctr run --cni` are (bind-mounted on `/opt/cni/bin`).
    pub bin: PathBuf,
    /// host-local's `dataDir`.
    pub leases: PathBuf,
    rootfs: PathBuf,
    fifo: PathBuf,
    /// A name for the containers' cgroups (relative, so runc puts them under the test's own).
    cgroup_tag: String,
    daemon: Option<Child>,
    log: PathBuf,
    seq: AtomicUsize,
    // Last: removed after the daemon is gone.
    dir: TempDir,
}

/// The smallest containerd configuration: without it containerd reads
/// `/etc/containerd/config.toml`. The CRI plugin is off: the tests use `ctr`, and CRI would
/// read CNI configuration of its own.
const CONTAINERD_CONFIG: &str = "version = 2\n\
    disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n";

impl Runtime {
    pub fn start(lab: &Lab) -> Runtime {
        let dir = TempDir::new("ctrd");
        let d = dir.path.clone();
        let bin = d.join("cni-bin");
        let rootfs = d.join("rootfs");
        let fifo = d.join("fifo");
        for p in [
            &bin,
            &fifo,
            &d.join("root"),
            &d.join("state"),
            &d.join("leases"),
        ] {
            std::fs::create_dir_all(p).unwrap();
        }
        for (src, name) in [
            (cni_binary(), "xylem-cni"),
            (PathBuf::from("/usr/lib/cni/host-local"), "host-local"),
            (PathBuf::from("/usr/lib/cni/loopback"), "loopback"),
        ] {
            std::fs::copy(&src, bin.join(name))
                .unwrap_or_else(|e| panic!("copying {}: {e}", src.display()));
        }
        make_rootfs(&rootfs);
        let config = d.join("containerd.toml");
        std::fs::write(&config, CONTAINERD_CONFIG).unwrap();
        let address = d.join("containerd.sock");
        let log = d.join("containerd.log");
        let logf = std::fs::File::create(&log).unwrap();
        // nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup mounts runc needs.
        let daemon = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", lab.netns()))
            .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                "set -e; mount -t tmpfs -o mode=0755 xylem-test-run /run; \
                 exec containerd --config \"$1\" --address \"$2\" --root \"$3\" --state \"$4\"",
            )
            .arg("sh")
            .arg(&config)
            .arg(&address)
            .arg(d.join("root"))
            .arg(d.join("state"))
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("starting containerd: {e}"));
        let rt = Runtime {
            netns: lab.netns().to_string(),
            address,
            bin,
            leases: d.join("leases"),
            rootfs,
            fifo,
            cgroup_tag: unique("xylem-test-"),
            daemon: Some(daemon),
            log,
            seq: AtomicUsize::new(0),
            dir,
        };
        // A zombie counts as exited: the daemon died during start-up.
        let pid = rt.daemon.as_ref().unwrap().id();
        eventually(
            Duration::from_secs(20),
            "containerd answers on its socket",
            || {
                assert!(pid_alive(pid), "containerd exited:\n{}", rt.log());
                rt.ctr(&["version"]).status.success().then_some(())
            },
            || rt.log(),
        );
        rt
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ctr --address SOCK ARGS` (outside the CNI mount namespace: only `run --cni` needs it).
    pub fn ctr(&self, args: &[&str]) -> Output {
        run(Command::new("ctr")
            .arg("--address")
            .arg(&self.address)
            .args(args))
    }

    /// The lease files host-local holds (anything in its directory but its lock and its
    /// last-reserved markers).
    pub fn leases(&self) -> Vec<String> {
        leases(&self.leases)
    }

    /// The test conflist for `lab`, with the agent at `agent_socket` and `labels`.
    pub fn conflist(&self, lab: &Lab, agent_socket: &Path, labels: &[(&str, &str)]) -> Value {
        let (cidr, prefix) = lab.subnet_prefix();
        let labels: Vec<Value> = (labels.iter())
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect();
        json!({
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "plugins": [{
                "type": "xylem-cni",
                "agentSocket": agent_socket,
                "args": {"cni": {"labels": labels}},
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{
                        "subnet": cidr,
                        "rangeStart": format!("{prefix}{}", RANGE.0),
                        "rangeEnd": format!("{prefix}{}", RANGE.1),
                    }]],
                    "dataDir": self.leases,
                },
            }],
        })
    }

    /// Starts `ctr run --rm --cni` for container `id` running `cmd`, with `conflist` as the only
    /// network configuration, in the foreground of a child process: containerd 1.6's `ctr`
    /// calls the plugins' DEL only when a container it runs in the foreground exits.
    pub fn run(&self, id: &str, conflist: &Value, cmd: &[&str]) -> Container<'_> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let d = self.dir.path.join(format!("run-{id}-{n}"));
        let netd = d.join("net.d");
        let (etc_up, etc_work) = (d.join("etc-upper"), d.join("etc-work"));
        let (opt_up, opt_work) = (d.join("opt-upper"), d.join("opt-work"));
        for p in [
            &netd,
            &etc_up.join("cni/net.d"),
            &etc_work,
            &opt_up.join("cni/bin"),
            &opt_work,
        ] {
            std::fs::create_dir_all(p).unwrap();
        }
        std::fs::write(
            netd.join("10-xylem.conflist"),
            serde_json::to_vec_pretty(conflist).unwrap(),
        )
        .unwrap();
        let log = d.join("ctr.log");
        let pid_file = d.join("pid");
        let logf = std::fs::File::create(&log).unwrap();
        // The overlays only give the two mount points: `/etc/cni/net.d` and `/opt/cni/bin`
        // exist in their upper directories, and the test's directories are bound on them.
        let script = "set -e
            mount -t overlay xylem-test-etc -o \"lowerdir=/etc,upperdir=$1,workdir=$2\" /etc
            mount --bind \"$3\" /etc/cni/net.d
            mount -t overlay xylem-test-opt -o \"lowerdir=/opt,upperdir=$4,workdir=$5\" /opt
            mount --bind \"$6\" /opt/cni/bin
            shift 6
            exec ctr \"$@\"";
        let cgroup = format!("{}-{id}-{n}", self.cgroup_tag);
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .args([
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
            ])
            .arg("sh")
            .args([&etc_up, &etc_work, &netd, &opt_up, &opt_work, &self.bin])
            .arg("--address")
            .arg(&self.address)
            .args(["run", "--rm", "--cni", "--cgroup", &cgroup])
            .arg("--fifo-dir")
            .arg(&self.fifo)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg("--rootfs")
            .arg(&self.rootfs)
            .arg(id)
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("starting ctr run: {e}"));
        Container {
            rt: self,
            id: id.to_string(),
            child: Some(child),
            log,
            pid_file,
            execs: AtomicUsize::new(0),
        }
    }

    /// Puts a recorder in front of the plugin: a shell script in its place runs it unchanged
    /// and keeps what it printed, one file per call (`<time>.<CNI_COMMAND>`, first line
    /// `rc=<exit code>`), so a test can read the error `ctr` summarises. Returns the directory.
    pub fn record_plugin_results(&self) -> PathBuf {
        let real = self.dir.path.join("xylem-cni.real");
        let out = self.dir.path.join("plugin-results");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::rename(self.bin.join("xylem-cni"), &real).unwrap();
        let script = format!(
            "#!/bin/sh\n\
             out=$('{}')\n\
             rc=$?\n\
             printf 'rc=%s\\n%s\\n' \"$rc\" \"$out\" > '{}'/$(date +%s%N).\"$CNI_COMMAND\"\n\
             printf '%s' \"$out\"\n\
             exit $rc\n",
            real.display(),
            out.display()
        );
        let wrapper = self.bin.join("xylem-cni");
        std::fs::write(&wrapper, script).unwrap();
        let mut perm = std::fs::metadata(&wrapper).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&wrapper, perm).unwrap();
        out
    }

    /// Removes container `id` and its task, if containerd still has them.
    pub fn remove_container(&self, id: &str) {
        self.ctr(&["task", "rm", "-f", id]);
        let listed = self.ctr(&["container", "ls", "-q"]);
        if String::from_utf8_lossy(&listed.stdout)
            .split_whitespace()
            .any(|c| c == id)
        {
            let o = self.ctr(&["container", "rm", id]);
            assert!(o.status.success(), "{}", explain("ctr container rm", &o));
        }
    }

    /// Kills and removes every container this daemon still has, and waits until it has none.
    fn remove_all_containers(&self) {
        let tasks = String::from_utf8_lossy(&self.ctr(&["task", "ls", "-q"]).stdout).into_owned();
        for t in tasks.split_whitespace() {
            self.ctr(&["task", "kill", "-s", "KILL", t]);
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            let o = self.ctr(&["task", "ls", "-q"]);
            if !o.status.success() || o.stdout.iter().all(u8::is_ascii_whitespace) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let containers =
            String::from_utf8_lossy(&self.ctr(&["container", "ls", "-q"]).stdout).into_owned();
        for c in containers.split_whitespace() {
            self.ctr(&["task", "rm", "-f", c]);
            self.ctr(&["container", "rm", c]);
        }
    }

    /// Processes of this runtime that outlived the daemon: shims (their command line names our
    /// socket) and containers (their root is our rootfs).
    fn leftover_pids(&self) -> Vec<u32> {
        let address = self.address.to_string_lossy().into_owned();
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let root = std::fs::read_link(e.path().join("root")).unwrap_or_default();
            if (cmdline.contains("containerd-shim") && cmdline.contains(&address))
                || root == self.rootfs
            {
                pids.push(pid);
            }
        }
        pids
    }

    /// Removes the cgroups runc left behind under the test's own (runc removes them when it
    /// deletes a task; this is for a test that died first).
    fn remove_cgroups(&self) {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        for line in own.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
            let (Some(controllers), Some(path)) = (controllers, path) else {
                continue;
            };
            let mount = match controllers {
                "" => "unified".to_string(),
                c => c.trim_start_matches("name=").to_string(),
            };
            let base = Path::new("/sys/fs/cgroup")
                .join(mount)
                .join(path.trim_start_matches('/'));
            for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&self.cgroup_tag)
                {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.remove_all_containers();
        if let Some(mut d) = self.daemon.take() {
            signal(d.id(), "TERM");
            if wait_timeout(&mut d, Duration::from_secs(5)).is_none() {
                let _ = d.kill();
                let _ = d.wait();
            }
        }
        for pid in self.leftover_pids() {
            signal(pid, "KILL");
        }
        self.remove_cgroups();
    }
}

/// A busybox root filesystem: the static binary and a relative link per applet (an absolute
/// link would point outside the container), and the directories runc mounts on.
fn make_rootfs(dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for d in ["proc", "sys", "dev", "tmp", "etc", "root", "run"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    let list = ok(Command::new("/bin/busybox").arg("--list"));
    for applet in list.lines().filter(|a| !a.is_empty() && *a != "busybox") {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
}

/// A container run by `ctr run --cni` in the foreground. Dropping it kills its task and waits
/// for `ctr` to exit (which runs the plugins' DEL and removes the container).
pub struct Container<'r> {
    rt: &'r Runtime,
    pub id: String,
    child: Option<Child>,
    log: PathBuf,
    pid_file: PathBuf,
    execs: AtomicUsize,
}

impl Container<'_> {
    /// The CNI container id `ctr` passes: `<namespace>-<id>`; also the endpoint's name.
    pub fn cni_id(&self) -> String {
        format!("{CTR_NAMESPACE}-{}", self.id)
    }

    /// What `ctr run` printed so far (the container's output and ctr's own errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the agent has this container's endpoint; returns it. Panics with ctr's
    /// output if `ctr run` exits first.
    pub fn endpoint(&mut self, lab: &Lab) -> Value {
        let id = self.cni_id();
        let read_log = || std::fs::read_to_string(&self.log).unwrap_or_default();
        let child = self.child.as_mut().expect("ctr run already waited for");
        eventually(
            Duration::from_secs(30),
            &format!("the endpoint of container {}", self.id),
            || {
                if let Some(s) = child.try_wait().ok().flatten() {
                    panic!(
                        "ctr run {} exited with {s} before its endpoint appeared:\n{}\n\
                         agent log:\n{}",
                        self.id,
                        read_log(),
                        lab.agent_log()
                    );
                }
                lab.endpoints()
                    .into_iter()
                    .find(|e| e["container_id"] == id.as_str())
            },
            || {
                format!(
                    "endpoints: {:?}\nctr:\n{}\ncontainerd:\n{}",
                    lab.endpoints(),
                    read_log(),
                    self.rt.log()
                )
            },
        )
    }

    /// Runs `cmd` in the running container (`ctr task exec`), at most 20 s.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        let n = self.execs.fetch_add(1, Ordering::Relaxed);
        run(Command::new("timeout")
            .arg("20")
            .arg("ctr")
            .arg("--address")
            .arg(&self.rt.address)
            .args(["task", "exec", "--exec-id", &format!("x{n}")])
            .arg("--fifo-dir")
            .arg(&self.rt.fifo)
            .arg(&self.id)
            .args(cmd))
    }

    /// Waits for `ctr run` to exit by itself (at most `limit`); its status and output.
    pub fn wait(&mut self, limit: Duration) -> (ExitStatus, String) {
        let child = self.child.as_mut().expect("ctr run already waited for");
        let Some(status) = wait_timeout(child, limit) else {
            panic!(
                "ctr run {} still running after {limit:?}:\n{}",
                self.id,
                self.log()
            );
        };
        self.child = None;
        (status, self.log())
    }

    /// Kills the container's task and waits for `ctr run` to exit: it then runs DEL and removes
    /// the container. Returns what `ctr run` printed.
    pub fn stop(&mut self) -> String {
        let Some(mut child) = self.child.take() else {
            return self.log();
        };
        if child.try_wait().ok().flatten().is_none() {
            self.rt.ctr(&["task", "kill", "-s", "KILL", &self.id]);
        }
        if wait_timeout(&mut child, Duration::from_secs(20)).is_none() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ctr run {} did not exit within 20 s of its task being killed:\n{}\n\
                 containerd:\n{}",
                self.id,
                self.log(),
                self.rt.log()
            );
        }
        self.log()
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.rt.ctr(&["task", "kill", "-s", "KILL", &self.id]);
            if wait_timeout(&mut child, Duration::from_secs(20)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // A container whose ctr died without ending it.
        if let Ok(pid) = std::fs::read_to_string(&self.pid_file)
            && let Ok(pid) = pid.trim().parse::<u32>()
            && std::fs::read_link(format!("/proc/{pid}/root")).ok() == Some(self.rt.rootfs.clone())
        {
            signal(pid, "KILL");
        }
    }
}

/// A unix-socket proxy in front of the agent's API socket that kills the agent the moment a
/// `PUT /v1/endpoints/…` request reaches it, and closes that connection without an answer: an
/// agent dying in the middle of a CNI ADD, after the plugin has created the link and taken the
/// lease. Every other request is passed through. The plugin's client opens one connection per
/// request, so the request line is the first line of a connection.
pub struct KillingProxy {
    pub socket: PathBuf,
    /// The `xyc` links of the node namespace and the leases, as they were at the PUT.
    killed: Arc<Mutex<Option<Seen>>>,
    stop: Arc<AtomicBool>,
}

type Seen = (Vec<String>, Vec<String>);

impl KillingProxy {
    /// `watch`: the node namespace and host-local's data directory, looked at when the PUT
    /// arrives.
    pub fn start(
        socket: PathBuf,
        upstream: PathBuf,
        agent_pid: u32,
        watch: (String, PathBuf),
    ) -> KillingProxy {
        let listener = UnixListener::bind(&socket)
            .unwrap_or_else(|e| panic!("binding {}: {e}", socket.display()));
        listener.set_nonblocking(true).unwrap();
        let killed = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (k, s) = (Arc::clone(&killed), Arc::clone(&stop));
        let watch = Arc::new(watch);
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (up, k, w) = (upstream.clone(), Arc::clone(&k), Arc::clone(&watch));
                        std::thread::spawn(move || proxy_one(conn, &up, agent_pid, &w, &k));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        KillingProxy {
            socket,
            killed,
            stop,
        }
    }

    /// Whether it has killed the agent, and what there was then.
    pub fn killed(&self) -> Option<Seen> {
        self.killed.lock().unwrap().clone()
    }
}

impl Drop for KillingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn proxy_one(
    mut conn: UnixStream,
    upstream: &Path,
    agent_pid: u32,
    watch: &(String, PathBuf),
    killed: &Mutex<Option<Seen>>,
) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(2).any(|w| w == b"\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    if head.starts_with(b"PUT /v1/endpoints/") {
        signal(agent_pid, "KILL");
        let t = Instant::now();
        while pid_alive(agent_pid) && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        *killed.lock().unwrap() = Some((cni_links(&watch.0), leases(&watch.1)));
        return; // dropping `conn` closes it unanswered
    }
    let Ok(mut up) = UnixStream::connect(upstream) else {
        return;
    };
    if up.write_all(&head).is_err() {
        return;
    }
    let (Ok(mut conn_r), Ok(mut up_w)) = (conn.try_clone(), up.try_clone()) else {
        return;
    };
    conn_r.set_read_timeout(None).unwrap();
    let to_agent = std::thread::spawn(move || {
        let _ = std::io::copy(&mut conn_r, &mut up_w);
        let _ = up_w.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut up, &mut conn);
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let _ = to_agent.join();
}

/// The calls [`Runtime::record_plugin_results`] recorded in `dir`, oldest first: the command,
/// the exit code and what the plugin printed.
pub fn plugin_results(dir: &Path) -> Vec<(String, i32, String)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            let (first, out) = text.split_once('\n').unwrap_or((&text, ""));
            let rc = first.trim_start_matches("rc=").parse().unwrap_or(-1);
            let cmd = f
                .extension()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            (cmd, rc, out.trim().to_string())
        })
        .collect()
}

/// Labels as the endpoint list shows them.
pub fn labels(pairs: &[(&str, &str)]) -> Value {
    let m: BTreeMap<&str, &str> = pairs.iter().copied().collect();
    json!(m)
}

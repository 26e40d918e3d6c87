//! The lab: a node and its pods in network namespaces on one machine, with a real
//! `xylem-agent` as the node's dataplane.
//!
//! Everything the lab creates lives in namespaces named `xylem-<lab>-…`: a **node namespace**
//! that plays the host (the agent runs there, with the dataplane ends of the pod veths and the
//! host port), and one namespace per pod. The machine's own namespace, interfaces and routes are
//! never touched, and no traffic leaves the lab's namespaces. `lab down` removes it all — also
//! after the agent was SIGKILLed — by killing every process left in the lab's namespaces and
//! deleting the namespaces, which destroys the veths and the XDP programs on them.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use xylem_dataplane::tables::{MacAddr, Mode};
use xylem_dataplane::worker::Placement;

use crate::Error;
use crate::config::{
    AgentConfig, DEFAULT_SOCKET, GatewayConfig, Ipv4Cidr, PortConfig, PortKind, WorkersConfig,
    XdpModeSetting,
};

/// The lab name used when none is given; its agent listens on the default API socket.
pub const DEFAULT_LAB: &str = "default";
/// The gateway's MAC (locally administered).
pub const GATEWAY_MAC: MacAddr = MacAddr([0x0e, 0x78, 0x79, 0x6c, 0x00, 0x01]);
const POD_IF_PREFIX: &str = "xyp";
const HOST_IF: &str = "xyhost";
const HOST_DP_IF: &str = "xyhostdp";

/// `LAB.yaml`: the pods to create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabFile {
    /// The pods.
    pub pods: Vec<LabPod>,
}

/// One pod of a lab file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabPod {
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn default_namespace() -> String {
    "default".into()
}

impl LabFile {
    /// Three pods, `pod-a`, `pod-b`, `pod-c`.
    pub fn default_pods() -> Self {
        LabFile {
            pods: ["pod-a", "pod-b", "pod-c"]
                .iter()
                .map(|n| LabPod {
                    name: (*n).into(),
                    namespace: default_namespace(),
                    labels: BTreeMap::from([("app".to_string(), (*n).to_string())]),
                })
                .collect(),
        }
    }

    /// Parses and checks a lab file.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let f: LabFile = serde_norway::from_str(text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!("LAB.yaml line {} column {}", l.line(), l.column()))
                .unwrap_or_else(|| "LAB.yaml".into());
            Error::config(at, e.to_string())
        })?;
        if f.pods.is_empty() || f.pods.len() > 200 {
            return Err(Error::config("pods", "list 1 to 200 pods"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in f.pods.iter().enumerate() {
            let ok = !p.name.is_empty()
                && p.name.len() <= 40
                && p.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok {
                return Err(Error::config(
                    format!("pods[{i}].name"),
                    format!(
                        "{:?} is not a pod name: use 1 to 40 lowercase letters, digits and '-'",
                        p.name
                    ),
                ));
            }
            if !seen.insert(p.name.clone()) {
                return Err(Error::config(
                    format!("pods[{i}].name"),
                    format!("{} is listed twice", p.name),
                ));
            }
        }
        Ok(f)
    }
}

/// Agent settings for a lab's nodes (flags of `xylem lab up`).
#[derive(Clone, Debug, Default)]
pub struct LabOptions {
    /// Worker placement.
    pub placement: Option<Placement>,
    /// Worker cores.
    pub worker_cores: Vec<usize>,
    /// Pipeline mode.
    pub mode: Mode,
    /// XDP mode request.
    pub xdp_mode: Option<XdpModeSetting>,
    /// Batch size.
    pub batch_size: Option<usize>,
    /// Idle spin in shared placement.
    pub idle_spin_us: Option<u64>,
    /// Realtime priority in shared placement (`workers.realtime`).
    pub realtime: Option<bool>,
}

/// A node as `lab status` reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeState {
    /// Node name.
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its agent's API socket.
    pub api_socket: PathBuf,
    /// Its agent's pid.
    pub agent_pid: Option<u32>,
    /// Whether that agent is alive.
    #[serde(default)]
    pub agent_running: bool,
    /// Pod CIDR.
    pub pod_cidr: Ipv4Cidr,
    /// Gateway IP.
    pub gateway: Ipv4Addr,
    /// The host port's address (the node's own address on the pod network).
    pub host_ip: Ipv4Addr,
    /// The agent's configuration file.
    pub agent_config: PathBuf,
    /// The agent's log.
    pub agent_log: PathBuf,
}

/// A pod as `lab status` reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodState {
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// IPv4 address.
    pub ip: Ipv4Addr,
    /// Its network namespace (usable with `ip netns exec`).
    pub netns: String,
    /// The node it is on.
    pub node: String,
    /// The dataplane's interface for it (in the node namespace).
    pub interface: String,
}

/// What `lab status -o json` prints and `state.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabState {
    /// The lab's name.
    pub lab: String,
    /// Nodes.
    pub nodes: Vec<NodeState>,
    /// Pods.
    pub pods: Vec<PodState>,
}

/// A lab, by name.
#[derive(Clone, Debug)]
pub struct Lab {
    name: String,
}

/// Runs a command, returning stdout; a failure carries the command line and its stderr.
pub fn run(args: &[&str]) -> Result<String, Error> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Command {
            command: args.join(" "),
            detail: format!("{e} (is it installed? docker/bootstrap.sh installs everything)"),
        })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: args.join(" "),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// netperf's control port.
pub const NETSERVER_PORT: u16 = 12865;

/// Starts `netserver` (it daemonizes) in network namespace `netns` and returns once it
/// listens, so a netperf started right after never races it. `lab down` stops it with the
/// lab's other processes.
pub fn start_netserver(netns: &str) -> Result<(), Error> {
    let port = NETSERVER_PORT.to_string();
    run(&["ip", "netns", "exec", netns, "netserver", "-4", "-p", &port])?;
    let filter = format!("sport = :{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listening = run(&["ip", "netns", "exec", netns, "ss", "-Hltn", &filter])
            .is_ok_and(|s| !s.trim().is_empty());
        if listening {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Command {
                command: format!("ip netns exec {netns} netserver -4 -p {port}"),
                detail: format!(
                    "netserver did not listen on port {port} within 10 s; \
                     run it by hand in that namespace to see why"
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn netns_list() -> Vec<String> {
    run(&["ip", "netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

fn read_mac(netns: &str, ifname: &str) -> Result<MacAddr, Error> {
    let out = run(&["ip", "-n", netns, "-j", "link", "show", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| Error::Command {
        command: format!("ip -n {netns} -j link show {ifname}"),
        detail: e.to_string(),
    })?;
    v.get(0)
        .and_then(|l| l.get("address"))
        .and_then(|a| a.as_str())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| Error::Command {
            command: format!("ip -n {netns} -j link show {ifname}"),
            detail: "no MAC address in the output".into(),
        })
}

fn sibling_binary(name: &str, env: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

impl Lab {
    /// The lab called `name` (letters, digits and `-`, at most 20 characters).
    pub fn new(name: &str) -> Result<Self, Error> {
        let ok = !name.is_empty()
            && name.len() <= 20
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return Err(Error::config(
                "--lab",
                format!("{name:?} is not a lab name: use 1 to 20 letters, digits and '-'"),
            ));
        }
        Ok(Lab { name: name.into() })
    }

    fn dir(&self) -> PathBuf {
        PathBuf::from("/run/xylem/labs").join(&self.name)
    }

    fn state_path(&self) -> PathBuf {
        self.dir().join("state.json")
    }

    /// The prefix of every namespace of this lab.
    pub fn netns_prefix(&self) -> String {
        format!("xylem-{}-", self.name)
    }

    /// The API socket of this lab's (single) node agent.
    pub fn api_socket(&self) -> PathBuf {
        if self.name == DEFAULT_LAB {
            PathBuf::from(DEFAULT_SOCKET)
        } else {
            self.dir().join("agent.sock")
        }
    }

    /// The lab's recorded state, with liveness refreshed; None when it is not up.
    pub fn state(&self) -> Result<Option<LabState>, Error> {
        let path = self.state_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::File {
                    what: "reading the lab state",
                    path,
                    source,
                });
            }
        };
        let mut st: LabState = serde_json::from_str(&text).map_err(|e| {
            Error::Lab(format!(
                "the lab state {} is unreadable ({e}): run `xylem lab down` to clear it",
                path.display()
            ))
        })?;
        for n in &mut st.nodes {
            n.agent_running = n.agent_pid.is_some_and(pid_alive);
        }
        Ok(Some(st))
    }

    fn save(&self, st: &LabState) -> Result<(), Error> {
        let path = self.state_path();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(st).map_err(|e| Error::Lab(e.to_string()))?;
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|source| Error::File {
                what: "writing the lab state",
                path,
                source,
            })
    }

    /// Brings the lab up: idempotent (a lab already up with the same pods is left as it is).
    pub fn up(&self, file: &LabFile, opts: &LabOptions) -> Result<LabState, Error> {
        if let Some(st) = self.state()? {
            let same = st.pods.len() == file.pods.len()
                && st.pods.iter().zip(&file.pods).all(|(a, b)| {
                    a.name == b.name && a.namespace == b.namespace && a.labels == b.labels
                });
            if same && st.nodes.iter().all(|n| n.agent_running) {
                return Ok(st);
            }
            if same {
                return Err(Error::Lab(format!(
                    "lab '{}' is up but its agent is not running (see {}): run `xylem lab down` then `xylem lab up`",
                    self.name,
                    st.nodes[0].agent_log.display()
                )));
            }
            return Err(Error::Lab(format!(
                "lab '{}' is already up with other pods: run `xylem lab down` first",
                self.name
            )));
        }
        // Leftovers of a lab that died half-way: clear them first.
        self.remove_namespaces()?;
        match self.create(file, opts) {
            Ok(st) => Ok(st),
            Err(e) => {
                let _ = self.down();
                Err(e)
            }
        }
    }

    fn create(&self, file: &LabFile, opts: &LabOptions) -> Result<LabState, Error> {
        let dir = self.dir();
        std::fs::create_dir_all(&dir).map_err(|source| Error::File {
            what: "creating the lab directory",
            path: dir.clone(),
            source,
        })?;
        let prefix = self.netns_prefix();
        let node_name = "node1".to_string();
        let node_ns = format!("{prefix}{node_name}");
        let pod_cidr: Ipv4Cidr = Ipv4Cidr {
            addr: Ipv4Addr::new(10, 200, 0, 0),
            len: 24,
        };
        let gateway = pod_cidr.nth(1);
        let host_ip = pod_cidr.nth(254);
        let workers = opts.worker_cores.len().max(1);
        let queues = workers.to_string();

        run(&["ip", "netns", "add", &node_ns])?;
        run(&["ip", "-n", &node_ns, "link", "set", "lo", "up"])?;
        for s in [
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ] {
            run(&["ip", "netns", "exec", &node_ns, "sysctl", "-qw", s])?;
        }

        let mut ports = Vec::new();
        let mut pods = Vec::new();
        for (i, p) in file.pods.iter().enumerate() {
            let pod_ns = format!("{prefix}pod-{}", p.name);
            let ifname = format!("{POD_IF_PREFIX}{i}");
            let ip = pod_cidr.nth(10 + i as u32);
            make_pod(&node_ns, &pod_ns, &ifname, ip, gateway, &queues)?;
            let mac = read_mac(&pod_ns, "eth0")?;
            ports.push(PortConfig {
                ifname: ifname.clone(),
                kind: PortKind::Pod,
                ip,
                mac,
                name: Some(p.name.clone()),
                namespace: Some(p.namespace.clone()),
                labels: p.labels.clone(),
            });
            pods.push(PodState {
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                labels: p.labels.clone(),
                ip,
                netns: pod_ns,
                node: node_name.clone(),
                interface: ifname,
            });
        }

        // The host port: the node namespace's own stack reaches the pods through the dataplane.
        run(&[
            "ip",
            "-n",
            &node_ns,
            "link",
            "add",
            HOST_IF,
            "numtxqueues",
            &queues,
            "numrxqueues",
            &queues,
            "type",
            "veth",
            "peer",
            "name",
            HOST_DP_IF,
            "numtxqueues",
            &queues,
            "numrxqueues",
            &queues,
        ])?;
        let host_addr = format!("{host_ip}/32");
        run(&[
            "ip", "-n", &node_ns, "addr", "add", &host_addr, "dev", HOST_IF,
        ])?;
        run(&[
            "ip", "netns", "exec", &node_ns, "ethtool", "-K", HOST_IF, "tx", "off",
        ])?;
        run(&["ip", "-n", &node_ns, "link", "set", HOST_IF, "up"])?;
        run(&["ip", "-n", &node_ns, "link", "set", HOST_DP_IF, "up"])?;
        let gw = gateway.to_string();
        let cidr = pod_cidr.to_string();
        let src = host_ip.to_string();
        run(&[
            "ip", "-n", &node_ns, "route", "add", &gw, "dev", HOST_IF, "scope", "link",
        ])?;
        run(&[
            "ip", "-n", &node_ns, "route", "add", &cidr, "via", &gw, "dev", HOST_IF, "src", &src,
        ])?;
        ports.push(PortConfig {
            ifname: HOST_DP_IF.into(),
            kind: PortKind::Host,
            ip: host_ip,
            mac: read_mac(&node_ns, HOST_IF)?,
            name: None,
            namespace: None,
            labels: BTreeMap::new(),
        });

        let api_socket = self.api_socket();
        let defaults = WorkersConfig::default();
        let cfg = AgentConfig {
            node_name: node_name.clone(),
            pod_cidr,
            gateway: GatewayConfig {
                ip: gateway,
                mac: GATEWAY_MAC,
            },
            ports,
            workers: WorkersConfig {
                cores: opts.worker_cores.clone(),
                placement: opts.placement,
                batch_size: opts.batch_size.unwrap_or(defaults.batch_size),
                idle_spin_us: opts.idle_spin_us.unwrap_or(defaults.idle_spin_us),
                realtime: opts.realtime.unwrap_or(defaults.realtime),
                ..defaults
            },
            xdp_mode: opts.xdp_mode.unwrap_or_default(),
            mode: opts.mode,
            state_dir: dir.join(&node_name).join("state"),
            api_socket: api_socket.clone(),
            // Inside the node's namespace: `ip netns exec <node> curl 127.0.0.1:9962/metrics`.
            metrics_addr: crate::config::DEFAULT_METRICS_ADDR.parse().ok(),
        };
        cfg.validate()?;
        let node_dir = dir.join(&node_name);
        std::fs::create_dir_all(&node_dir).map_err(|source| Error::File {
            what: "creating the node directory",
            path: node_dir.clone(),
            source,
        })?;
        let cfg_path = node_dir.join("agent.yaml");
        let log_path = node_dir.join("agent.log");
        let text = serde_norway::to_string(&cfg).map_err(|e| Error::Lab(e.to_string()))?;
        std::fs::write(&cfg_path, text).map_err(|source| Error::File {
            what: "writing the agent configuration",
            path: cfg_path.clone(),
            source,
        })?;

        let mut st = LabState {
            lab: self.name.clone(),
            nodes: vec![NodeState {
                name: node_name.clone(),
                netns: node_ns.clone(),
                api_socket: api_socket.clone(),
                agent_pid: None,
                agent_running: false,
                pod_cidr,
                gateway,
                host_ip,
                agent_config: cfg_path.clone(),
                agent_log: log_path.clone(),
            }],
            pods,
        };
        // Record the namespaces before starting the agent, so a crash from here on is cleaned
        // up by `lab down`.
        self.save(&st)?;
        let pid = self.start_agent(&node_ns, &cfg_path, &log_path)?;
        st.nodes[0].agent_pid = Some(pid);
        st.nodes[0].agent_running = true;
        self.save(&st)?;
        wait_ready(&api_socket, pid, &log_path)?;
        Ok(st)
    }

    fn start_agent(&self, node_ns: &str, cfg: &Path, log: &Path) -> Result<u32, Error> {
        let agent = sibling_binary("xylem-agent", "XYLEM_AGENT_BIN");
        let logf = std::fs::File::create(log).map_err(|source| Error::File {
            what: "creating the agent log",
            path: log.to_owned(),
            source,
        })?;
        let logf2 = logf.try_clone().map_err(|source| Error::File {
            what: "opening the agent log",
            path: log.to_owned(),
            source,
        })?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", node_ns])
            .arg(&agent)
            .arg("--config")
            .arg(cfg)
            .stdin(Stdio::null())
            .stdout(logf)
            .stderr(logf2);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent; it puts the
        // agent in its own session so it outlives the CLI and ignores the terminal's signals.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| Error::Command {
            command: format!("ip netns exec {node_ns} {} --config …", agent.display()),
            detail: e.to_string(),
        })?;
        Ok(child.id())
    }

    /// Kills every process in the lab's namespaces and deletes the namespaces.
    fn remove_namespaces(&self) -> Result<(), Error> {
        let prefix = self.netns_prefix();
        let ours: Vec<String> = netns_list()
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect();
        for sig in [libc::SIGTERM, libc::SIGKILL] {
            let mut any = false;
            for ns in &ours {
                for pid in run(&["ip", "netns", "pids", ns])
                    .unwrap_or_default()
                    .lines()
                {
                    if let Ok(pid) = pid.trim().parse::<i32>() {
                        any = true;
                        // SAFETY: plain kill(2) of a pid listed in one of the lab's namespaces.
                        unsafe { libc::kill(pid, sig) };
                    }
                }
            }
            if !any {
                break;
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline
                && ours.iter().any(|ns| {
                    !run(&["ip", "netns", "pids", ns])
                        .unwrap_or_default()
                        .trim()
                        .is_empty()
                })
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        for ns in &ours {
            run(&["ip", "netns", "delete", ns])?;
        }
        Ok(())
    }

    /// Removes everything the lab created. Safe to run at any time, also when nothing is up.
    pub fn down(&self) -> Result<(), Error> {
        let st = self.state().ok().flatten();
        if let Some(st) = &st {
            for n in &st.nodes {
                if let Some(pid) = n.agent_pid.filter(|p| pid_alive(*p)) {
                    // SAFETY: kill(2) of the agent we started; a clean stop detaches its programs.
                    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while pid_alive(pid) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
        self.remove_namespaces()?;
        let sock = self.api_socket();
        if sock.exists() && std::os::unix::net::UnixStream::connect(&sock).is_err() {
            let _ = std::fs::remove_file(&sock);
        }
        let dir = self.dir();
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|source| Error::File {
                what: "removing the lab directory",
                path: dir,
                source,
            })?;
        }
        let left: Vec<String> = netns_list()
            .into_iter()
            .filter(|n| n.starts_with(&self.netns_prefix()))
            .collect();
        if !left.is_empty() {
            return Err(Error::Lab(format!(
                "namespaces still present after lab down: {left:?}"
            )));
        }
        Ok(())
    }

    /// Adds a pod to a running lab: its namespace and veth, then its endpoint through the
    /// agent's API (`PUT /v1/endpoints/…`), which attaches the redirector and opens a socket on
    /// each worker. The agent keeps it across restarts.
    pub fn add_pod(&self, pod: &LabPod) -> Result<PodState, Error> {
        let mut st = self
            .state()?
            .filter(|st| st.nodes.iter().all(|n| n.agent_running))
            .ok_or_else(|| {
                Error::Lab(format!("lab '{}' is not up: run `xylem lab up`", self.name))
            })?;
        if st.pods.iter().any(|p| p.name == pod.name) {
            return Err(Error::Lab(format!(
                "lab '{}' already has a pod {}",
                self.name, pod.name
            )));
        }
        let node = st.nodes[0].clone();
        let (i, ip) = (0u32..240)
            .map(|i| (i, node.pod_cidr.nth(10 + i)))
            .find(|(i, ip)| {
                let ifname = format!("{POD_IF_PREFIX}{i}");
                !st.pods.iter().any(|p| p.ip == *ip || p.interface == ifname)
            })
            .ok_or_else(|| Error::Lab("the lab's pod CIDR is full".into()))?;
        let pod_ns = format!("{}pod-{}", self.netns_prefix(), pod.name);
        let ifname = format!("{POD_IF_PREFIX}{i}");
        // As many queues as the host port has (one per worker).
        let queues = run(&[
            "ip",
            "netns",
            "exec",
            &node.netns,
            "ls",
            &format!("/sys/class/net/{HOST_DP_IF}/queues"),
        ])
        .map(|o| {
            o.split_whitespace()
                .filter(|q| q.starts_with("rx-"))
                .count()
                .max(1)
        })
        .unwrap_or(1)
        .to_string();
        make_pod(&node.netns, &pod_ns, &ifname, ip, node.gateway, &queues)?;
        let pod_state = PodState {
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            labels: pod.labels.clone(),
            ip,
            netns: pod_ns.clone(),
            node: node.name.clone(),
            interface: ifname.clone(),
        };
        // Recorded before the API call, so `lab down` removes the namespace whatever happens.
        st.pods.push(pod_state.clone());
        self.save(&st)?;
        let mac = read_mac(&pod_ns, "eth0")?;
        let body = serde_json::json!({
            "ifname": ifname,
            "ip": ip.to_string(),
            "mac": mac.to_string(),
            "labels": pod.labels,
        });
        let _: serde_json::Value = xylem_api::Client::new(&node.api_socket).put(
            &format!("/v1/endpoints/{}/{}", pod.namespace, pod.name),
            &body,
        )?;
        Ok(pod_state)
    }

    /// The pod called `name`.
    pub fn pod(&self, name: &str) -> Result<PodState, Error> {
        let st = self.state()?.ok_or_else(|| {
            Error::Lab(format!("lab '{}' is not up: run `xylem lab up`", self.name))
        })?;
        st.pods
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| {
                Error::Lab(format!(
                    "no pod {name} in lab '{}'; pods: {}",
                    self.name,
                    st.pods
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }
}

/// Creates pod namespace `pod_ns` with `eth0` at `ip`/32 behind gateway `gateway`, and its veth
/// peer `ifname` in the node namespace.
fn make_pod(
    node_ns: &str,
    pod_ns: &str,
    ifname: &str,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
    queues: &str,
) -> Result<(), Error> {
    run(&["ip", "netns", "add", pod_ns])?;
    run(&["ip", "-n", pod_ns, "link", "set", "lo", "up"])?;
    for s in [
        "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1",
    ] {
        run(&["ip", "netns", "exec", pod_ns, "sysctl", "-qw", s])?;
    }
    run(&[
        "ip",
        "-n",
        node_ns,
        "link",
        "add",
        ifname,
        "numtxqueues",
        queues,
        "numrxqueues",
        queues,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod_ns,
        "numtxqueues",
        queues,
        "numrxqueues",
        queues,
    ])?;
    let addr = format!("{ip}/32");
    run(&["ip", "-n", pod_ns, "addr", "add", &addr, "dev", "eth0"])?;
    // The pod's checksums must be complete on the wire: AF_XDP forwards bytes, not skbs.
    run(&[
        "ip", "netns", "exec", pod_ns, "ethtool", "-K", "eth0", "tx", "off",
    ])?;
    run(&["ip", "-n", pod_ns, "link", "set", "eth0", "up"])?;
    run(&["ip", "-n", node_ns, "link", "set", ifname, "up"])?;
    let gw = gateway.to_string();
    run(&[
        "ip", "-n", pod_ns, "route", "add", &gw, "dev", "eth0", "scope", "link",
    ])?;
    run(&[
        "ip", "-n", pod_ns, "route", "add", "default", "via", &gw, "dev", "eth0",
    ])?;
    Ok(())
}

fn wait_ready(socket: &Path, pid: u32, log: &Path) -> Result<(), Error> {
    let client = xylem_api::Client::new(socket);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if !pid_alive(pid) {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(Error::Lab(format!(
                "xylem-agent exited during start-up; the last lines of {}:\n{}",
                log.display(),
                tail.join("\n")
            )));
        }
        if let Ok(st) = client.get::<serde_json::Value>("/v1/status")
            && st
                .get("health")
                .and_then(|h| h.get("ok"))
                .and_then(|o| o.as_bool())
                == Some(true)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Lab(format!(
                "xylem-agent did not answer on {} within 30 s; see {}",
                socket.display(),
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Prints a lab's topology for people.
pub fn print_topology(st: &LabState) {
    for n in &st.nodes {
        println!(
            "node {} (netns {}): agent pid {} {}, api {}",
            n.name,
            n.netns,
            n.agent_pid.map_or("-".into(), |p| p.to_string()),
            if n.agent_running {
                "running"
            } else {
                "NOT RUNNING"
            },
            n.api_socket.display()
        );
        println!(
            "  pod CIDR {}  gateway {}  host port {} ({} <-> {})",
            n.pod_cidr, n.gateway, n.host_ip, HOST_IF, HOST_DP_IF
        );
    }
    let rows: Vec<Vec<String>> = st
        .pods
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.namespace.clone(),
                p.ip.to_string(),
                p.netns.clone(),
                p.interface.clone(),
                p.labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    crate::output::print_table(
        &["POD", "NAMESPACE", "IP", "NETNS", "PORT", "LABELS"],
        &rows,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_file_rejects_unknown_fields() {
        let e = LabFile::parse("pods: [{name: a, colour: red}]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn lab_file_defaults_the_namespace() {
        let f = LabFile::parse("pods: [{name: web, labels: {app: web}}]").unwrap();
        assert_eq!(f.pods[0].namespace, "default");
        assert_eq!(f.pods[0].labels["app"], "web");
    }

    #[test]
    fn lab_names_are_checked() {
        assert!(Lab::new("ok-1").is_ok());
        assert!(Lab::new("no/slash").is_err());
        assert!(Lab::new("").is_err());
    }
}

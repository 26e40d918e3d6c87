//! Bringing a lab up and down: the node namespace, its host port, the agent's configuration and
//! the agent itself; and removing all of it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use xylem_api::config::{
    AgentConfig, GatewayConfig, Ipv4Cidr, PortConfig, PortKind, WorkersConfig,
};

use crate::netns::{self, read_mac};
use crate::pods::{POD_IF_PREFIX, make_pod};
use crate::process::{pid_alive, run};
use crate::{
    Error, GATEWAY_MAC, HOST_DP_IF, HOST_IF, Lab, LabFile, LabOptions, LabState, NodeState,
    PodState,
};

/// The addresses and names of the lab's one node.
struct Node {
    name: String,
    netns: String,
    pod_cidr: Ipv4Cidr,
    gateway: Ipv4Addr,
    host_ip: Ipv4Addr,
    /// Routed through the host port like the pod CIDR.
    service_cidr: Ipv4Cidr,
    /// Queues of every veth: one per worker.
    queues: String,
}

/// Where the agent's files go, in the lab directory.
struct AgentFiles {
    config: PathBuf,
    log: PathBuf,
}

impl Lab {
    /// Brings the lab up: idempotent (a lab already up with the same pods is left as it is).
    pub fn up(&self, file: &LabFile, opts: &LabOptions) -> Result<LabState, Error> {
        if let Some(st) = self.state()? {
            let same = st.pods.len() == file.pods.len()
                && st.pods.iter().zip(&file.pods).all(|(a, b)| {
                    a.name == b.name
                        && a.namespace == b.namespace
                        && a.labels == b.labels
                        && a.run == b.run
                })
                && st.nodes.iter().all(|n| n.service_cidr == file.service_cidr);
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
        std::fs::create_dir_all(&dir).map_err(|source| {
            Error::File(xylem_api::FileError {
                what: "creating the lab directory",
                path: dir.clone(),
                source,
            })
        })?;
        let pod_cidr = crate::POD_CIDR;
        let node = Node {
            name: "node1".into(),
            netns: format!("{}node1", self.netns_prefix()),
            pod_cidr,
            gateway: pod_cidr.nth(1),
            host_ip: pod_cidr.nth(254),
            service_cidr: file.service_cidr,
            queues: opts.worker_cores.len().max(1).to_string(),
        };
        add_quiet_netns(&node.netns)?;
        let (mut ports, mut pods) = self.make_pods(&node, file)?;
        // Before any `run:` starts, so a pod's command resolves through the lab's DNS pod.
        crate::resolv::write_all(Path::new(crate::resolv::NETNS_ETC), &mut pods)?;
        ports.push(make_host_port(&node)?);
        let cfg = self.agent_config(&node, opts, ports)?;
        let files = self.write_agent_config(&node, &cfg)?;

        let mut st = LabState {
            lab: self.name.clone(),
            nodes: vec![NodeState {
                name: node.name.clone(),
                netns: node.netns.clone(),
                api_socket: cfg.api_socket.clone(),
                agent_pid: None,
                agent_running: false,
                pod_cidr,
                gateway: node.gateway,
                host_ip: node.host_ip,
                service_cidr: node.service_cidr,
                agent_config: files.config.clone(),
                agent_log: files.log.clone(),
            }],
            pods,
        };
        // Record the namespaces before starting the agent, so a crash from here on is cleaned
        // up by `lab down`.
        self.save(&st)?;
        let pid = start_agent(&node.netns, &files.config, &files.log)?;
        st.nodes[0].agent_pid = Some(pid);
        st.nodes[0].agent_running = true;
        self.save(&st)?;
        wait_ready(&cfg.api_socket, pid, &files.log)?;
        // The pods' commands start once the dataplane carries their traffic.
        for (i, spec) in file.pods.iter().enumerate() {
            if let Some(cmd) = &spec.run {
                self.start_run(&mut st.pods[i], cmd)?;
                self.save(&st)?;
            }
        }
        Ok(st)
    }

    /// The pods of `file` in their namespaces, with their ports for the agent's configuration.
    fn make_pods(
        &self,
        node: &Node,
        file: &LabFile,
    ) -> Result<(Vec<PortConfig>, Vec<PodState>), Error> {
        let mut ports = Vec::new();
        let mut pods = Vec::new();
        for (i, p) in file.pods.iter().enumerate() {
            let pod_ns = format!("{}pod-{}", self.netns_prefix(), p.name);
            let ifname = format!("{POD_IF_PREFIX}{i}");
            let ip = node.pod_cidr.nth(10 + i as u32);
            make_pod(
                &node.netns,
                &pod_ns,
                &ifname,
                ip,
                node.gateway,
                &node.queues,
            )?;
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
                node: node.name.clone(),
                interface: ifname,
                run: None,
                run_log: None,
                run_pid: None,
                resolv_conf: None,
            });
        }
        Ok((ports, pods))
    }

    /// The agent's configuration for `node`, checked.
    fn agent_config(
        &self,
        node: &Node,
        opts: &LabOptions,
        ports: Vec<PortConfig>,
    ) -> Result<AgentConfig, Error> {
        let defaults = WorkersConfig::default();
        let cfg = AgentConfig {
            node_name: node.name.clone(),
            pod_cidr: node.pod_cidr,
            gateway: GatewayConfig {
                ip: node.gateway,
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
            policy: Default::default(),
            services: Default::default(),
            fqdn: Default::default(),
            state_dir: self.dir().join(&node.name).join("state"),
            api_socket: self.api_socket(),
            // Inside the node's namespace: `ip netns exec <node> curl 127.0.0.1:9962/metrics`.
            metrics_addr: xylem_api::config::DEFAULT_METRICS_ADDR.parse().ok(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Writes `cfg` to the node's directory; returns where it and the agent's log go.
    fn write_agent_config(&self, node: &Node, cfg: &AgentConfig) -> Result<AgentFiles, Error> {
        let node_dir = self.dir().join(&node.name);
        std::fs::create_dir_all(&node_dir).map_err(|source| {
            Error::File(xylem_api::FileError {
                what: "creating the node directory",
                path: node_dir.clone(),
                source,
            })
        })?;
        let files = AgentFiles {
            config: node_dir.join("agent.yaml"),
            log: node_dir.join("agent.log"),
        };
        let text = serde_norway::to_string(cfg).map_err(|e| Error::Lab(e.to_string()))?;
        std::fs::write(&files.config, text).map_err(|source| {
            Error::File(xylem_api::FileError {
                what: "writing the agent configuration",
                path: files.config.clone(),
                source,
            })
        })?;
        Ok(files)
    }

    /// Kills every process in the lab's namespaces and deletes the namespaces, and their
    /// `resolv.conf` files.
    fn remove_namespaces(&self) -> Result<(), Error> {
        netns::remove_all(&netns::list(&self.netns_prefix()))?;
        crate::resolv::remove_all(Path::new(crate::resolv::NETNS_ETC), &self.netns_prefix());
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
            std::fs::remove_dir_all(&dir).map_err(|source| {
                Error::File(xylem_api::FileError {
                    what: "removing the lab directory",
                    path: dir,
                    source,
                })
            })?;
        }
        let left = netns::list(&self.netns_prefix());
        if !left.is_empty() {
            return Err(Error::Lab(format!(
                "namespaces still present after lab down: {left:?}"
            )));
        }
        Ok(())
    }
}

/// Creates namespace `name` with its loopback up and IPv6 off: the dataplane does not handle
/// IPv6 (it drops and counts it `ipv6-unsupported`), so the kernel's own IPv6 traffic would only
/// add drops.
pub(crate) fn add_quiet_netns(name: &str) -> Result<(), Error> {
    netns::add(name)?;
    for s in [
        "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1",
    ] {
        run(&netns::exec_args(name, &["sysctl", "-qw", s]))?;
    }
    Ok(())
}

/// The host port: a veth pair in the node namespace, [`HOST_IF`] for the namespace's own stack
/// and [`HOST_DP_IF`] for the agent, so the node reaches the pods through the dataplane.
/// [`HOST_DP_IF`] is closed to the node's stack like a pod's port ([`netns::node_port_up`]):
/// without the agent, frames the node sends to the pods go nowhere.
fn make_host_port(node: &Node) -> Result<PortConfig, Error> {
    let ns = node.netns.as_str();
    let q = node.queues.as_str();
    run(&[
        "ip",
        "-n",
        ns,
        "link",
        "add",
        HOST_IF,
        "numtxqueues",
        q,
        "numrxqueues",
        q,
        "type",
        "veth",
        "peer",
        "name",
        HOST_DP_IF,
        "numtxqueues",
        q,
        "numrxqueues",
        q,
    ])?;
    let host_addr = format!("{}/32", node.host_ip);
    run(&["ip", "-n", ns, "addr", "add", &host_addr, "dev", HOST_IF])?;
    run(&[
        "ip", "netns", "exec", ns, "ethtool", "-K", HOST_IF, "tx", "off",
    ])?;
    run(&["ip", "-n", ns, "link", "set", HOST_IF, "up"])?;
    netns::node_port_up(Some(ns), HOST_DP_IF)?;
    let gw = node.gateway.to_string();
    let src = node.host_ip.to_string();
    run(&[
        "ip", "-n", ns, "route", "add", &gw, "dev", HOST_IF, "scope", "link",
    ])?;
    // The services' virtual IPs too: the dataplane balances the node's connections to them
    // as it does a pod's (only inside the lab's node namespace, never the machine's).
    for cidr in [node.pod_cidr.to_string(), node.service_cidr.to_string()] {
        run(&[
            "ip", "-n", ns, "route", "add", &cidr, "via", &gw, "dev", HOST_IF, "src", &src,
        ])?;
    }
    Ok(PortConfig {
        ifname: HOST_DP_IF.into(),
        kind: PortKind::Host,
        ip: node.host_ip,
        mac: read_mac(ns, HOST_IF)?,
        name: None,
        namespace: None,
        labels: BTreeMap::new(),
    })
}

/// `name` from `$env`, else next to the running executable, else from `PATH`.
fn sibling_binary(name: &str, env: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Starts the agent in `node_ns`, in its own session and with its output in `log`; returns its
/// pid. Nothing owns it: it outlives the command that started it, until `lab down`.
fn start_agent(node_ns: &str, cfg: &Path, log: &Path) -> Result<u32, Error> {
    let agent = sibling_binary("xylem-agent", "XYLEM_AGENT_BIN");
    let logf = std::fs::File::create(log).map_err(|source| {
        Error::File(xylem_api::FileError {
            what: "creating the agent log",
            path: log.to_owned(),
            source,
        })
    })?;
    let logf2 = logf.try_clone().map_err(|source| {
        Error::File(xylem_api::FileError {
            what: "opening the agent log",
            path: log.to_owned(),
            source,
        })
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

/// Waits until the agent at `socket` reports itself healthy; fails, with the end of its log, if
/// it exits first, or after 30 s.
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

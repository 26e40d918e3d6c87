//! Bringing a lab up and down: the node namespace, its host port, the agent's configuration and
//! the agent itself; and removing all of it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use xylem_api::config::{
    AgentConfig, DEFAULT_GRACE_PERIOD_S, EncryptionConfig, GatewayConfig, Ipv4Cidr, NodeConfig,
    PortConfig, PortKind, WorkersConfig,
};
use xylem_dataplane::worker::Placement;

use crate::netns::{self, read_mac};
use crate::pods::{POD_IF_PREFIX, make_pod};
use crate::process::{pid_alive, run};
use crate::{
    Error, GATEWAY_MAC, HOST_DP_IF, HOST_IF, Lab, LabFile, LabOptions, LabPod, LabState, NodeState,
    PodState, UnderlayState, WorldState,
};

/// The addresses, names and worker placement of one of the lab's nodes.
struct Node {
    /// Its index in the lab (0-based, file order): it picks the pod CIDR, underlay address,
    /// uplink MAC and worker core.
    index: usize,
    name: String,
    netns: String,
    pod_cidr: Ipv4Cidr,
    gateway: Ipv4Addr,
    host_ip: Ipv4Addr,
    /// Routed through the host port like the pod CIDR.
    service_cidr: Ipv4Cidr,
    /// Its agent's API socket.
    api_socket: PathBuf,
    /// Its agent's worker cores (empty: the agent's default) and placement.
    cores: Vec<usize>,
    placement: Option<Placement>,
    /// Queues of every veth: one per worker.
    queues: String,
    /// Its address on the underlay; None in a single-node lab, which has no underlay.
    node_ip: Option<Ipv4Addr>,
    /// Its pods' veth MTU when not the default (encryption).
    pod_mtu: Option<u32>,
}

/// Where the agent's files go, in the lab directory.
struct AgentFiles {
    config: PathBuf,
    log: PathBuf,
}

/// The worker cores and placement of node `i` of the `n` nodes of a lab on a machine with
/// `cpus` CPUs. A single-node (`pods:`) lab takes the options as they are. In a multi-node lab
/// each agent gets a core of its own, from the last CPU down, so the agents do not compete for
/// one core; where they must share (more nodes than CPUs, or the user's `--worker-cores` for
/// every node), the placement falls back to `shared` unless the user chose one, since agents
/// spinning on a shared core would starve each other.
fn node_workers(
    i: usize,
    n: usize,
    cpus: usize,
    multi: bool,
    opts: &LabOptions,
) -> (Vec<usize>, Option<Placement>) {
    let cpus = cpus.max(1);
    let (cores, shared) = match (multi, opts.worker_cores.is_empty()) {
        (false, _) => return (opts.worker_cores.clone(), opts.placement),
        (true, false) => (opts.worker_cores.clone(), n > 1),
        (true, true) => (vec![cpus - 1 - i % cpus], n > cpus),
    };
    let placement = match (opts.placement, shared) {
        (None, true) => Some(Placement::Shared),
        (p, _) => p,
    };
    (cores, placement)
}

/// Whether the lab recorded in `st` is the one `file` describes: same nodes, same pods on
/// them, same service CIDR, encrypted or not alike (which the pods' MTU records).
fn same_lab(st: &LabState, file: &LabFile) -> bool {
    let pod_mtu = file.encryption.as_ref().map(|_| crate::ENCRYPTED_POD_MTU);
    let nodes = file.node_list();
    let want: Vec<(&str, &LabPod)> = (nodes.iter())
        .flat_map(|n| n.pods.iter().map(|p| (n.name.as_str(), p)))
        .collect();
    st.pods.len() == want.len()
        && st.underlay.is_some() == file.multi_node()
        && st.pods.iter().zip(&want).all(|(a, (node, b))| {
            a.node == *node
                && a.name == b.name
                && a.namespace == b.namespace
                && a.labels == b.labels
                && a.run == b.run
        })
        && (st.nodes.iter()).all(|n| n.service_cidr == file.service_cidr && n.pod_mtu == pod_mtu)
}

impl Lab {
    /// Brings the lab up: idempotent (a lab already up with the same nodes and pods is left as
    /// it is).
    pub fn up(&self, file: &LabFile, opts: &LabOptions) -> Result<LabState, Error> {
        if let Some(st) = self.state()? {
            let same = same_lab(&st, file);
            if same && st.nodes.iter().all(|n| n.agent_running) {
                return Ok(st);
            }
            if same {
                let down: Vec<String> = (st.nodes.iter())
                    .filter(|n| !n.agent_running)
                    .map(|n| format!("{} (see {})", n.name, n.agent_log.display()))
                    .collect();
                return Err(Error::Lab(format!(
                    "lab '{}' is up but the agent of node {} is not running: run `xylem lab down` then `xylem lab up`",
                    self.name,
                    down.join(", ")
                )));
            }
            return Err(Error::Lab(format!(
                "lab '{}' is already up with other nodes or pods: run `xylem lab down` first",
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

    /// The nodes of `file`, with their addresses and worker placement.
    fn plan_nodes(&self, file: &LabFile, opts: &LabOptions) -> Vec<Node> {
        let specs = file.node_list();
        let multi = file.multi_node();
        let cpus = xylem_api::config::online_cpus();
        let pod_mtu = file.encryption.as_ref().map(|_| crate::ENCRYPTED_POD_MTU);
        (specs.iter().enumerate())
            .map(|(i, spec)| {
                let pod_cidr = crate::node_pod_cidr(i);
                let (cores, placement) = node_workers(i, specs.len(), cpus, multi, opts);
                Node {
                    index: i,
                    name: spec.name.clone(),
                    netns: self.netns(&spec.name),
                    pod_cidr,
                    gateway: pod_cidr.nth(1),
                    host_ip: pod_cidr.nth(254),
                    service_cidr: file.service_cidr,
                    api_socket: self.node_api_socket(i, &spec.name),
                    queues: cores.len().max(1).to_string(),
                    cores,
                    placement,
                    node_ip: multi.then(|| crate::node_ip(i)),
                    pod_mtu,
                }
            })
            .collect()
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
        let specs = file.node_list();
        let nodes = self.plan_nodes(file, opts);
        let multi = file.multi_node();
        let underlay_ns = self.netns(crate::UNDERLAY_NS);
        let world_ns = self.netns(crate::WORLD_NS);
        if multi {
            crate::underlay::make_underlay(&underlay_ns)?;
        }
        let mut node_ports = Vec::new();
        let mut pods = Vec::new();
        for (node, spec) in nodes.iter().zip(&specs) {
            add_quiet_netns(&node.netns)?;
            let (ports, node_pods) = self.make_pods(node, &spec.pods)?;
            node_ports.push(ports);
            pods.extend(node_pods);
        }
        // Before any `run:` starts, so a pod's command resolves through the lab's DNS pod.
        crate::resolv::write_all(Path::new(crate::resolv::NETNS_ETC), &mut pods)?;
        let peers: Vec<NodeConfig> = (nodes.iter())
            .filter_map(|n| {
                Some(NodeConfig {
                    name: n.name.clone(),
                    node_ip: n.node_ip?,
                    pod_cidr: n.pod_cidr,
                    encryption: None,
                })
            })
            .collect();
        let mut started = Vec::new();
        for (node, mut ports) in nodes.iter().zip(node_ports) {
            ports.push(make_host_port(node)?);
            if multi {
                let up = crate::underlay::Uplink {
                    index: node.index,
                    name: &node.name,
                    netns: &node.netns,
                    queues: &node.queues,
                };
                ports.push(crate::underlay::make_uplink(&up, &underlay_ns)?);
            }
            let cfg = self.agent_config(node, opts, ports, &peers, file)?;
            let files = self.write_agent_config(node, &cfg)?;
            started.push(files);
        }
        if multi {
            let routes: Vec<_> = (nodes.iter())
                .filter_map(|n| Some((n.pod_cidr, n.node_ip?)))
                .collect();
            crate::underlay::make_world(&world_ns, &underlay_ns, &routes, &dir.join("world"))?;
        }

        let mut st = LabState {
            lab: self.name.clone(),
            nodes: (nodes.iter().zip(&started))
                .map(|(node, files)| NodeState {
                    name: node.name.clone(),
                    netns: node.netns.clone(),
                    api_socket: node.api_socket.clone(),
                    agent_pid: None,
                    agent_running: false,
                    pod_cidr: node.pod_cidr,
                    gateway: node.gateway,
                    host_ip: node.host_ip,
                    service_cidr: node.service_cidr,
                    agent_config: files.config.clone(),
                    agent_log: files.log.clone(),
                    node_ip: node.node_ip,
                    underlay_if: multi.then(|| crate::UPLINK_IF.to_string()),
                    pod_mtu: node.pod_mtu,
                })
                .collect(),
            pods,
            underlay: multi.then(|| UnderlayState {
                netns: underlay_ns.clone(),
                bridge: crate::UNDERLAY_BRIDGE.into(),
            }),
            world: multi.then(|| WorldState {
                netns: world_ns.clone(),
                ip: crate::WORLD_IP,
            }),
        };
        // Record the namespaces before starting the agents, so a crash from here on is cleaned
        // up by `lab down`.
        self.save(&st)?;
        let mut pids = Vec::new();
        for i in 0..st.nodes.len() {
            let n = &st.nodes[i];
            let pid = start_agent(&n.netns, &n.agent_config, &n.agent_log)?;
            st.nodes[i].agent_pid = Some(pid);
            st.nodes[i].agent_running = true;
            self.save(&st)?;
            pids.push(pid);
        }
        // The agents start side by side; then each must answer.
        for (n, pid) in st.nodes.iter().zip(pids) {
            wait_ready(&n.api_socket, pid, &n.agent_log)?;
        }
        // Before the pods' commands start, so their first connections meet the policies that
        // select the other nodes' pods by label.
        self.publish_remote_pods(&st)?;
        // The pods' commands start once the dataplane carries their traffic.
        let runs: Vec<Option<String>> = (specs.iter())
            .flat_map(|n| n.pods.iter().map(|p| p.run.clone()))
            .collect();
        for (i, run) in runs.iter().enumerate() {
            if let Some(cmd) = run {
                self.start_run(&mut st.pods[i], cmd)?;
                self.save(&st)?;
            }
        }
        Ok(st)
    }

    /// The pods `specs` of `node` in their namespaces, with their ports for the agent's
    /// configuration.
    fn make_pods(
        &self,
        node: &Node,
        specs: &[LabPod],
    ) -> Result<(Vec<PortConfig>, Vec<PodState>), Error> {
        let mut ports = Vec::new();
        let mut pods = Vec::new();
        for (i, p) in specs.iter().enumerate() {
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
                node.pod_mtu,
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
                next_hop: None,
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

    /// The agent's configuration for `node`, checked: its ports, every node of the lab
    /// (`nodes`, empty for a single-node lab) and the lab's encryption.
    fn agent_config(
        &self,
        node: &Node,
        opts: &LabOptions,
        ports: Vec<PortConfig>,
        nodes: &[NodeConfig],
        file: &LabFile,
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
                cores: node.cores.clone(),
                placement: node.placement,
                batch_size: opts.batch_size.unwrap_or(defaults.batch_size),
                idle_spin_us: opts.idle_spin_us.unwrap_or(defaults.idle_spin_us),
                realtime: opts.realtime.unwrap_or(defaults.realtime),
                spare_ports: opts.spare_ports.unwrap_or(defaults.spare_ports),
                ..defaults
            },
            xdp_mode: opts.xdp_mode.unwrap_or_default(),
            mode: opts.mode,
            policy: Default::default(),
            services: Default::default(),
            fqdn: Default::default(),
            nodes: nodes.to_vec(),
            encryption: file.encryption.as_ref().map(|e| EncryptionConfig {
                key_file: e.key_file.clone(),
                grace_period_s: DEFAULT_GRACE_PERIOD_S,
            }),
            state_dir: self.dir().join(&node.name).join("state"),
            api_socket: node.api_socket.clone(),
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
    netns::add_veth(ns, HOST_IF, HOST_DP_IF, None, &node.queues)?;
    let host_addr = format!("{}/32", node.host_ip);
    run(&["ip", "-n", ns, "addr", "add", &host_addr, "dev", HOST_IF])?;
    netns::tx_offload_off(ns, HOST_IF)?;
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
        next_hop: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_gets_its_own_core_while_there_are_enough() {
        let opts = LabOptions::default();
        assert_eq!(node_workers(0, 2, 2, true, &opts), (vec![1], None));
        assert_eq!(node_workers(1, 2, 2, true, &opts), (vec![0], None));
        // Three nodes on two CPUs share cores: shared placement unless the user chose.
        assert_eq!(
            node_workers(2, 3, 2, true, &opts),
            (vec![1], Some(Placement::Shared))
        );
        let dedicated = LabOptions {
            placement: Some(Placement::Dedicated),
            ..LabOptions::default()
        };
        assert_eq!(
            node_workers(2, 3, 2, true, &dedicated),
            (vec![1], Some(Placement::Dedicated))
        );
        // The user's cores go to every node, so they are shared.
        let cores = LabOptions {
            worker_cores: vec![0],
            ..LabOptions::default()
        };
        assert_eq!(
            node_workers(1, 2, 4, true, &cores),
            (vec![0], Some(Placement::Shared))
        );
        // A single-node lab is as it always was.
        assert_eq!(node_workers(0, 1, 2, false, &opts), (vec![], None));
        assert_eq!(node_workers(0, 1, 2, false, &cores), (vec![0], None));
    }
}

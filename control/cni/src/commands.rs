//! The six commands. Each takes the checked environment and configuration and returns the JSON
//! to print on success (or nothing), or the error to print.

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::Command as Process;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde_json::{Map, Value, json};
use xylem_api::config::Ipv4Cidr;
use xylem_api::{Client, Endpoint, EndpointRequest, Status};

use crate::conf::{LATEST_VERSION, NetConf, SUPPORTED_VERSIONS, Version};
use crate::env::{Command, Env, HOST_IF_PREFIX, host_ifname};
use crate::error::{CniError, ErrorCode};
use crate::ipam::{Ipam, Target};
use crate::netlink::{self, Link, Netlink, in_netns, open_netns};
use crate::result::{CniResult, Interface, IpConfig, IpNet, Route};

/// How long the plugin waits for the agent on one request. Registering an endpoint attaches
/// the XDP program and opens a socket on every worker: well under a second on a healthy node,
/// so 10 s only ever expires on a stuck agent, and the runtime hears "try again later".
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

const DEFAULT_ROUTE: IpNet = IpNet {
    addr: Ipv4Addr::UNSPECIFIED,
    prefix: 0,
};

/// The steps of one command and how long each took, for `logFile`.
#[derive(Debug)]
pub struct Steps {
    start: Instant,
    last: Instant,
    done: Vec<(&'static str, Duration)>,
}

impl Steps {
    fn new() -> Self {
        let now = Instant::now();
        Steps {
            start: now,
            last: now,
            done: Vec::new(),
        }
    }

    /// Ends step `name` (begun where the previous one ended).
    fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.done.push((name, now - self.last));
        self.last = now;
    }

    /// The log line: the command, the attachment, how it ended, and each step in ms.
    fn line(&self, env: &Env, outcome: &Result<Option<Value>, CniError>) -> Value {
        let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
        // A list of [name, ms] pairs, in the order the steps ran.
        let steps: Vec<Value> = (self.done.iter())
            .map(|(n, d)| json!([n, ms(*d)]))
            .collect();
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        json!({
            "time": unix,
            "command": format!("{:?}", env.command).to_uppercase(),
            "container_id": env.container_id,
            "ifname": env.ifname,
            "code": outcome.as_ref().err().map(|e| e.code.as_u32()),
            "error": outcome.as_ref().err().map(ToString::to_string),
            "total_ms": ms(self.start.elapsed()),
            "steps_ms": steps,
        })
    }
}

/// Runs `env.command` with the configuration `stdin`, and appends its line to `logFile` when
/// the configuration names one (a log that cannot be written changes nothing of the outcome).
pub fn run(env: &Env, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    if env.command == Command::Version {
        return Ok(Some(version(stdin)));
    }
    let conf = NetConf::parse(stdin)?;
    let mut steps = Steps::new();
    let outcome = run_with(env, &conf, stdin, &mut steps);
    if let Some(path) = &conf.log_file {
        let line = steps.line(env, &outcome).to_string();
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes()));
        if let Err(e) = written {
            eprintln!("xylem-cni: cannot append to logFile {path}: {e}");
        }
    }
    outcome
}

fn run_with(
    env: &Env,
    conf: &NetConf,
    stdin: &[u8],
    steps: &mut Steps,
) -> Result<Option<Value>, CniError> {
    // `NetConf::parse` has just read it as an object.
    let raw: Map<String, Value> = serde_json::from_slice(stdin).unwrap_or_default();
    let client = Client::new(&conf.agent_socket).with_timeout(AGENT_TIMEOUT);
    // GC sweeps veths no endpoint owns yet, which is also what an ADD in flight has: GC waits
    // for the ADDs and DELs running on this node, and they for it.
    let _lock = node_lock(&conf.agent_socket, env.command == Command::Gc)?;
    steps.mark("lock");
    match env.command {
        Command::Add => add(env, conf, &raw, &client, steps).map(Some),
        Command::Del => del(env, conf, &raw, &client).map(|()| None),
        Command::Check => check(env, conf, &raw, &client).map(|()| None),
        Command::Status => status(env, conf, &raw, &client).map(|()| None),
        Command::Gc => gc(env, conf, &raw, &client).map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}

/// Takes the node's plugin lock (a file beside the agent's socket): exclusive for GC, shared
/// for the others. Only GC needs it: an ADD or DEL that cannot open it (the agent's directory
/// is gone with the agent) goes on without.
fn node_lock(agent_socket: &str, exclusive: bool) -> Result<Option<Flock<File>>, CniError> {
    let path = format!("{agent_socket}.cni-lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path);
    let file = match file {
        Ok(f) => f,
        Err(_) if !exclusive => return Ok(None),
        Err(e) => return Err(CniError::io(format!("opening the plugin lock {path}"), e)),
    };
    let arg = if exclusive {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockShared
    };
    match Flock::lock(file, arg) {
        Ok(l) => Ok(Some(l)),
        Err(_) if !exclusive => Ok(None),
        Err((_, e)) => Err(CniError::io(format!("locking {path}"), e)),
    }
}

/// VERSION: the versions the plugin speaks. The answer is written in the version asked for
/// when the plugin speaks it.
fn version(stdin: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST_VERSION.to_string());
    json!({"cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS})
}

/// The agent's status, which must say it is ready: code 11 otherwise, so the runtime retries.
fn ready_agent(client: &Client) -> Result<Status, CniError> {
    let status = client.status()?;
    if !status.health.ok {
        return Err(CniError::new(
            ErrorCode::TryAgainLater,
            "the Xylem agent is not ready",
            status
                .health
                .reason
                .unwrap_or_else(|| "it reports itself unhealthy".into()),
        ));
    }
    Ok(status)
}

/// Work done so far in an ADD, undone in reverse order if the ADD fails before it commits,
/// so that a failed ADD leaves nothing behind.
struct Undo<'a> {
    steps: Vec<(&'static str, UndoStep<'a>)>,
}

/// One step of [`Undo`].
type UndoStep<'a> = Box<dyn FnOnce() -> Result<(), CniError> + 'a>;

impl<'a> Undo<'a> {
    fn new() -> Self {
        Undo { steps: Vec::new() }
    }

    fn push(&mut self, what: &'static str, f: impl FnOnce() -> Result<(), CniError> + 'a) {
        self.steps.push((what, Box::new(f)));
    }

    fn commit(mut self) {
        self.steps.clear();
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        while let Some((what, f)) = self.steps.pop() {
            if let Err(e) = f() {
                // The ADD's own error is what the runtime gets; this one only explains a
                // leftover, in the runtime's log of the plugin's stderr.
                eprintln!("xylem-cni: undoing {what} failed: {e}");
            }
        }
    }
}

/// ADD: attach the container, or adopt the interface a previous plugin made (chained mode).
fn add(
    env: &Env,
    conf: &NetConf,
    raw: &Map<String, Value>,
    client: &Client,
    steps: &mut Steps,
) -> Result<Value, CniError> {
    let status = ready_agent(client)?;
    steps.mark("agent_status");
    let cidr: Ipv4Cidr = status.network.pod_cidr.parse().map_err(|e: String| {
        CniError::new(
            ErrorCode::AgentRefused,
            "the agent reports no usable pod CIDR",
            e.to_string(),
        )
    })?;
    let gateway = status.network.gateway_ip;
    let netns_path = env.netns.as_deref().unwrap_or_default();
    let netns = open_netns(netns_path)?.ok_or_else(|| {
        CniError::env(
            "CNI_NETNS",
            format!("{netns_path} does not exist: the container's namespace is gone"),
        )
    })?;
    if conf.prev_result.is_some() {
        if conf.ipam.is_some() {
            return Err(CniError::config(
                "ipam",
                "is given with prevResult: in a chain the earlier plugin assigns the address; \
                 remove ipam from xylem-cni's entry",
            ));
        }
        return add_chained(env, conf, client, &status, cidr, &netns);
    }
    let ipam = Ipam::new(env, conf, raw)?;
    steps.mark("ipam_version");
    let target = Target {
        container_id: &env.container_id,
        netns: env.netns.as_deref(),
        ifname: &env.ifname,
    };
    let host = host_ifname(&env.container_id, &env.ifname);
    let nl = Netlink::open()?;
    // Declared after what its steps borrow, so it is dropped (and undoes) first.
    let mut undo = Undo::new();
    let lease = ipam.add(env, &target)?;
    steps.mark("ipam_add");
    undo.push("the IPAM lease", || ipam.del(env, &target));
    let ip = lease.ips[0].address.addr;
    if !cidr.contains(ip) || ip == gateway {
        return Err(CniError::config(
            "ipam",
            format!(
                "{ip} is {} the node's pod CIDR {cidr}: give IPAM a range inside it that \
                 leaves out the gateway {gateway}",
                if ip == gateway {
                    "the gateway of"
                } else {
                    "outside"
                }
            ),
        ));
    }
    // A link of this name is left from an ADD of this very attachment that died halfway:
    // replace it.
    if let Some(stale) = nl.link(&host)? {
        nl.delete_link(stale.index)?;
    }
    let queues = u32::try_from(status.workers.len().max(1)).unwrap_or(1);
    let mtu = status.network.pod_mtu;
    nl.add_veth(&host, &env.ifname, &netns, queues, mtu)?;
    steps.mark("veth");
    undo.push("the veth", || match nl.link(&host)? {
        Some(l) => nl.delete_link(l.index),
        None => Ok(()),
    });
    let ifname = env.ifname.clone();
    let pod = in_netns(&netns, move || address_pod(&ifname, ip, gateway))?;
    steps.mark("pod_addressing");
    let host_link = nl
        .link(&host)?
        .ok_or_else(|| CniError::netlink(format!("{host} vanished"), "deleted under the plugin"))?;
    close_node_port(&nl, &host_link, true)?;
    steps.mark("node_port");
    let (namespace, name) = env.endpoint_name();
    let req = EndpointRequest {
        ifname: host.clone(),
        ip: ip.to_string(),
        mac: pod.mac.clone().unwrap_or_default(),
        labels: conf.labels.clone(),
        container_id: Some(env.container_id.clone()),
        netns: env.netns.clone(),
        cni_ifname: Some(env.ifname.clone()),
    };
    client.put_endpoint(&namespace, &name, &req)?;
    steps.mark("agent_endpoint");
    undo.commit();
    let result = CniResult {
        interfaces: vec![
            Interface {
                name: host.clone(),
                mac: host_link.mac.clone(),
                mtu: None,
                sandbox: None,
            },
            Interface {
                name: env.ifname.clone(),
                mac: pod.mac.clone(),
                mtu: Some(mtu),
                sandbox: env.netns.clone(),
            },
        ],
        ips: vec![IpConfig {
            address: IpNet {
                addr: ip,
                prefix: 32,
            },
            gateway: Some(gateway),
            interface: Some(1),
        }],
        routes: vec![Route {
            dst: DEFAULT_ROUTE,
            gw: Some(gateway),
        }],
        dns: conf.dns.clone().or(lease.dns),
    };
    Ok(result.to_json(&conf.cni_version, conf.version))
}

/// Inside the pod's namespace: TX checksum offload off, the IP as a /32, a link-scope route to
/// the gateway and the default route through it. The dataplane answers ARP for the gateway
/// only and forwards only frames sent to it, so the pod must see no neighbour on-link.
fn address_pod(ifname: &str, ip: Ipv4Addr, gateway: Ipv4Addr) -> Result<Link, CniError> {
    let nl = Netlink::open()?;
    let link = nl.link(ifname)?.ok_or_else(|| {
        CniError::netlink(
            format!("{ifname} is not in the pod's namespace"),
            "just created",
        )
    })?;
    netlink::tx_checksum_off(ifname)?;
    nl.flush_routes(link.index)?;
    nl.flush_addresses(link.index)?;
    nl.add_address(
        link.index,
        IpNet {
            addr: ip,
            prefix: 32,
        },
    )?;
    nl.set_up(link.index)?;
    nl.add_route(
        IpNet {
            addr: gateway,
            prefix: 32,
        },
        None,
        link.index,
    )?;
    nl.add_route(DEFAULT_ROUTE, Some(gateway), link.index)?;
    Ok(link)
}

/// Closes the node's end of a pod's veth to the node's own stack, so that while no XDP
/// program is attached (the agent not started, or killed) the pod reaches nothing on the node
/// over any ethertype, and brings it up:
///
/// - IPv6 off, before the link is up for a link the plugin made (no link-local address);
/// - ARP off (the kernel drops ARP received on it) and `arp_ignore=8`;
/// - no forwarding, strict reverse-path filtering: no IPv4 from it is routed or delivered;
/// - a `raw` table rule dropping all IPv4 received on it, for what reverse-path filtering
///   does not check (a source of 0.0.0.0 to a broadcast or link-local group). The plugin's
///   own links share one wildcard rule (`xyc+`), added once; an adopted link gets its own,
///   removed on DEL.
fn close_node_port(nl: &Netlink, link: &Link, own: bool) -> Result<(), CniError> {
    let name = netlink::sysctl_ifname(&link.name);
    netlink::sysctl(&format!("net.ipv6.conf.{name}.disable_ipv6"), "1")?;
    netlink::sysctl(&format!("net.ipv4.conf.{name}.forwarding"), "0")?;
    netlink::sysctl(&format!("net.ipv4.conf.{name}.arp_ignore"), "8")?;
    netlink::sysctl(&format!("net.ipv4.conf.{name}.rp_filter"), "1")?;
    nl.set_noarp(link.index)?;
    let pattern = if own {
        format!("{HOST_IF_PREFIX}+")
    } else {
        link.name.clone()
    };
    if !iptables("-C", &pattern)? {
        iptables("-A", &pattern)?;
    }
    nl.set_up(link.index)
}

/// `iptables -w -t raw OP PREROUTING -i PATTERN -j DROP`: whether it succeeded (for `-C`:
/// whether the rule is there). An `iptables` that cannot run at all is an error.
fn iptables(op: &str, pattern: &str) -> Result<bool, CniError> {
    let out = Process::new("iptables")
        .args([
            "-w",
            "-t",
            "raw",
            op,
            "PREROUTING",
            "-i",
            pattern,
            "-j",
            "DROP",
        ])
        .output()
        .map_err(|e| {
            CniError::io(
                "running iptables",
                format!("{e}: xylem-cni needs iptables on the node to close pod ports"),
            )
        })?;
    if op != "-C" && !out.status.success() {
        return Err(CniError::io(
            format!("iptables {op} -i {pattern}"),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(out.status.success())
}

/// Chained ADD: a previous plugin made the interface and assigned the address
/// (`prevResult`). Xylem adopts its node end, re-addresses the pod to route everything through
/// the Xylem gateway, registers the endpoint, and passes the result on.
fn add_chained(
    env: &Env,
    conf: &NetConf,
    client: &Client,
    status: &Status,
    cidr: Ipv4Cidr,
    netns: &File,
) -> Result<Value, CniError> {
    let mut prev = conf.prev_result.clone().unwrap_or_default();
    let gateway = status.network.gateway_ip;
    let pod_if = prev
        .interfaces
        .iter()
        .position(|i| i.name == env.ifname && i.sandbox.is_some())
        .ok_or_else(|| {
            CniError::config(
                "prevResult.interfaces",
                format!(
                    "no interface {} with a sandbox: the earlier plugin must create the pod's \
                     interface",
                    env.ifname
                ),
            )
        })?;
    let ip_idx = prev
        .ips
        .iter()
        .position(|ip| ip.interface == Some(pod_if))
        .or_else(|| (prev.ips.len() == 1).then_some(0))
        .ok_or_else(|| {
            CniError::config(
                "prevResult.ips",
                format!("no IPv4 address for {}", env.ifname),
            )
        })?;
    let ip = prev.ips[ip_idx].address.addr;
    if !cidr.contains(ip) || ip == gateway {
        return Err(CniError::config(
            "prevResult.ips",
            format!(
                "{ip} is not a pod address of this node's pod CIDR {cidr}: configure the \
                 earlier plugin's IPAM with a range inside it"
            ),
        ));
    }
    let ifname = env.ifname.clone();
    let pod = in_netns(netns, move || {
        let link = address_pod(&ifname, ip, gateway)?;
        if !link.veth {
            return Err(CniError::config(
                "prevResult.interfaces",
                format!(
                    "{ifname} is not a veth: xylem-cni chains after veth plugins (ptp, bridge)"
                ),
            ));
        }
        Ok(link)
    })?;
    let nl = Netlink::open()?;
    let host_link = pod
        .peer_index
        .map(|i| nl.link_by_index(i))
        .transpose()?
        .flatten()
        .filter(|l| l.veth)
        .ok_or_else(|| {
            CniError::config(
                "prevResult.interfaces",
                format!(
                    "{}'s peer is not a veth in this namespace: run the chain in the node's \
                     namespace, where the agent runs",
                    env.ifname
                ),
            )
        })?;
    close_node_port(&nl, &host_link, false)?;
    let (namespace, name) = env.endpoint_name();
    let req = EndpointRequest {
        ifname: host_link.name.clone(),
        ip: ip.to_string(),
        mac: pod.mac.clone().unwrap_or_default(),
        labels: conf.labels.clone(),
        container_id: Some(env.container_id.clone()),
        netns: env.netns.clone(),
        cni_ifname: Some(env.ifname.clone()),
    };
    if let Err(e) = client.put_endpoint(&namespace, &name, &req) {
        let _ = iptables("-D", &host_link.name);
        return Err(e.into());
    }
    prev.ips[ip_idx].address.prefix = 32;
    prev.ips[ip_idx].gateway = Some(gateway);
    prev.routes = vec![Route {
        dst: DEFAULT_ROUTE,
        gw: Some(gateway),
    }];
    if prev.dns.is_none() {
        prev.dns = conf.dns.clone();
    }
    Ok(prev.to_json(&conf.cni_version, conf.version))
}

/// The agent's endpoint for this attachment: the one under the pod's name whose container id
/// is this container's (a record under that name from another container is not touched).
/// `Ok(None)` when there is none.
fn own_endpoint(
    client: &Client,
    namespace: &str,
    name: &str,
    container_id: &str,
) -> Result<Option<Endpoint>, xylem_api::Error> {
    match client.endpoint(namespace, name) {
        Ok(ep) if ep.container_id.as_deref() == Some(container_id) => Ok(Some(ep)),
        Ok(_) => Ok(None),
        Err(xylem_api::Error::Api { status: 404, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// DEL: idempotent. The endpoint goes first (the agent closes the port on every worker), then
/// the link, then the lease; whatever is already gone is skipped. With the agent unreachable
/// the rest is still removed and the runtime hears "try again later"; the agent also drops an
/// endpoint made through CNI whose interface is gone when it starts.
fn del(
    env: &Env,
    conf: &NetConf,
    raw: &Map<String, Value>,
    client: &Client,
) -> Result<(), CniError> {
    let (namespace, name) = env.endpoint_name();
    let agent = own_endpoint(client, &namespace, &name, &env.container_id);
    let mut agent_error = None;
    let adopted = match &agent {
        Ok(Some(ep)) => {
            if let Err(e) = client.delete_endpoint(&namespace, &name)
                && !matches!(e, xylem_api::Error::Api { status: 404, .. })
            {
                agent_error = Some(e);
            }
            (!ep.interface.starts_with(HOST_IF_PREFIX)).then(|| ep.interface.clone())
        }
        Ok(None) => None,
        Err(_) => None,
    };
    if let Err(e) = agent {
        agent_error = Some(e);
    }
    // A chain's DEL carries the earlier plugin's node-side interface (no sandbox).
    let adopted = adopted.or_else(|| {
        conf.prev_result.as_ref().and_then(|p| {
            p.interfaces
                .iter()
                .find(|i| i.sandbox.is_none() && !i.name.starts_with(HOST_IF_PREFIX))
                .map(|i| i.name.clone())
        })
    });
    let nl = Netlink::open()?;
    match adopted {
        // The earlier plugin's DEL removes its link; only Xylem's rule for it goes.
        Some(link) => {
            if iptables("-C", &link)? {
                iptables("-D", &link)?;
            }
        }
        None => {
            if let Some(l) = nl.link(&host_ifname(&env.container_id, &env.ifname))? {
                nl.delete_link(l.index)?;
            }
        }
    }
    // In a chain the earlier plugin holds the lease (and its entry has the ipam block).
    if conf.ipam.is_some() {
        let ipam = Ipam::new(env, conf, raw)?;
        ipam.del(
            env,
            &Target {
                container_id: &env.container_id,
                netns: env.netns.as_deref(),
                ifname: &env.ifname,
            },
        )?;
    }
    match agent_error {
        None => Ok(()),
        Some(e) => Err(e.into()),
    }
}

/// CHECK: the pod's interface, its address and routes, the node's end, the agent's endpoint
/// and the lease all exist and match the previous result.
fn check(
    env: &Env,
    conf: &NetConf,
    raw: &Map<String, Value>,
    client: &Client,
) -> Result<(), CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::config(
            "prevResult",
            "missing: CHECK compares against the ADD's result",
        )
    })?;
    let status = client.status()?;
    let gateway = status.network.gateway_ip;
    let ip = prev
        .ips
        .first()
        .ok_or_else(|| CniError::config("prevResult.ips", "is empty"))?
        .address
        .addr;
    let netns_path = env.netns.as_deref().unwrap_or_default();
    let netns = open_netns(netns_path)?.ok_or_else(|| {
        CniError::new(
            ErrorCode::UnknownContainer,
            "the container's network namespace is gone",
            netns_path.to_string(),
        )
    })?;
    let fail = |what: String| CniError::new(ErrorCode::Io, "CHECK failed", what);
    let ifname = env.ifname.clone();
    let pod = in_netns(&netns, move || {
        let nl = Netlink::open()?;
        let link = nl
            .link(&ifname)?
            .ok_or_else(|| fail(format!("no interface {ifname} in the pod")))?;
        if !link.up {
            return Err(fail(format!("{ifname} is down")));
        }
        let addrs = nl.addresses(link.index)?;
        if addrs
            != [IpNet {
                addr: ip,
                prefix: 32,
            }]
        {
            return Err(fail(format!("{ifname} has {addrs:?}, not {ip}/32 alone")));
        }
        let routes = nl.routes()?;
        let to_gw = routes.iter().any(|r| {
            r.dst
                == IpNet {
                    addr: gateway,
                    prefix: 32,
                }
                && r.oif == Some(link.index)
                && r.link_scope
        });
        let default = routes
            .iter()
            .any(|r| r.dst == DEFAULT_ROUTE && r.gw == Some(gateway) && r.oif == Some(link.index));
        if !to_gw || !default {
            return Err(fail(format!(
                "the pod lacks its route to the gateway {gateway} or the default route through it"
            )));
        }
        Ok(link)
    })?;
    let (namespace, name) = env.endpoint_name();
    let ep = own_endpoint(client, &namespace, &name, &env.container_id)?.ok_or_else(|| {
        fail(format!(
            "the agent has no endpoint {namespace}/{name} for this container"
        ))
    })?;
    let nl = Netlink::open()?;
    let host = nl
        .link(&ep.interface)?
        .ok_or_else(|| fail(format!("the node's end {} is gone", ep.interface)))?;
    let matches = ep.ip == ip
        && Some(ep.mac.as_str()) == pod.mac.as_deref()
        && !ep.interface_missing
        && host.up
        && pod.peer_index == Some(host.index)
        && ep.cni_ifname.as_deref() == Some(env.ifname.as_str());
    if !matches {
        return Err(fail(format!(
            "the agent's endpoint {namespace}/{name} ({} {} on {}) does not match the pod ({ip} \
             {} on {})",
            ep.ip,
            ep.mac,
            ep.interface,
            pod.mac.as_deref().unwrap_or("-"),
            host.name
        )));
    }
    if conf.ipam.is_some() {
        Ipam::new(env, conf, raw)?.check(
            env,
            &Target {
                container_id: &env.container_id,
                netns: env.netns.as_deref(),
                ifname: &env.ifname,
            },
        )?;
    }
    Ok(())
}

/// STATUS: ready when the agent answers and reports itself healthy (and the IPAM plugin, where
/// it speaks 1.1.0, is ready too). An unreachable agent means the pods it served have lost
/// their dataplane too (51); a running but unhealthy one cannot take ADDs (50).
fn status(
    env: &Env,
    conf: &NetConf,
    raw: &Map<String, Value>,
    client: &Client,
) -> Result<(), CniError> {
    let st = client.status().map_err(|e| {
        CniError::new(
            ErrorCode::LimitedConnectivity,
            "the Xylem agent is not reachable",
            e.to_string(),
        )
    })?;
    if !st.health.ok {
        return Err(CniError::new(
            ErrorCode::NotAvailable,
            "the Xylem agent is not ready",
            st.health.reason.unwrap_or_default(),
        ));
    }
    if conf.ipam.is_some() && !env.path.is_empty() {
        let ipam = Ipam::new(env, conf, raw)?;
        if ipam.version() >= Version(1, 1, 0) {
            ipam.status(env)?;
        }
    }
    Ok(())
}

/// GC: removes the attachments made through CNI that `cni.dev/valid-attachments` does not
/// list (their endpoint, link and lease), and veths of the plugin's that no endpoint or valid
/// attachment owns (left by an ADD that died halfway).
fn gc(
    env: &Env,
    conf: &NetConf,
    raw: &Map<String, Value>,
    client: &Client,
) -> Result<(), CniError> {
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::config(
            "cni.dev/valid-attachments",
            "missing: GC removes every attachment not listed, so it needs the list",
        )
    })?;
    let is_valid = |c: &str, i: &str| valid.iter().any(|a| a.container_id == c && a.ifname == i);
    let endpoints = client.endpoints()?;
    let nl = Netlink::open()?;
    let ipam = if conf.ipam.is_some() && !env.path.is_empty() {
        Some(Ipam::new(env, conf, raw)?)
    } else {
        None
    };
    let mut first_error = None;
    let mut keep_links: Vec<String> = valid
        .iter()
        .map(|a| host_ifname(&a.container_id, &a.ifname))
        .collect();
    for ep in &endpoints {
        let (Some(cid), Some(cif)) = (&ep.container_id, &ep.cni_ifname) else {
            keep_links.push(ep.interface.clone());
            continue;
        };
        if is_valid(cid, cif) {
            keep_links.push(ep.interface.clone());
            continue;
        }
        let result = (|| -> Result<(), CniError> {
            match client.delete_endpoint(&ep.namespace, &ep.name) {
                Ok(()) | Err(xylem_api::Error::Api { status: 404, .. }) => {}
                Err(e) => return Err(e.into()),
            }
            if ep.interface.starts_with(HOST_IF_PREFIX) {
                if let Some(l) = nl.link(&ep.interface)? {
                    nl.delete_link(l.index)?;
                }
                if let Some(ipam) = &ipam {
                    ipam.del(
                        env,
                        &Target {
                            container_id: cid,
                            netns: None,
                            ifname: cif,
                        },
                    )?;
                }
            } else if iptables("-C", &ep.interface)? {
                iptables("-D", &ep.interface)?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            eprintln!("xylem-cni: GC of {}/{}: {e}", ep.namespace, ep.name);
            first_error.get_or_insert(e);
        }
    }
    for name in nl.link_names()? {
        if name.starts_with(HOST_IF_PREFIX)
            && name.len() == 15
            && !keep_links.contains(&name)
            && let Some(l) = nl.link(&name)?
        {
            nl.delete_link(l.index)?;
        }
    }
    if let Some(ipam) = &ipam
        && ipam.version() >= Version(1, 1, 0)
    {
        ipam.gc(env)?;
    }
    match first_error {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

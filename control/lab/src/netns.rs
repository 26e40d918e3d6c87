//! Network namespaces and netserver in them, for the lab and `netperf-harness`.
//!
//! Everything here goes through `ip netns` and `ip -n`, so it only ever touches the namespaces
//! it is given: never the machine's own.

use std::time::{Duration, Instant};

use xylem_dataplane::tables::MacAddr;

use crate::error::Error;
use crate::process::{self, ChildGuard};

/// netperf's control port, on which netserver listens.
pub const NETSERVER_PORT: u16 = 12865;

/// `ip netns exec NS ARGS...` as an argument vector.
pub fn exec_args<'a>(ns: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    v
}

/// Creates namespace `name` and brings its loopback up; if that fails, the namespace is
/// removed again. The namespace stays after the call (see [`Netns`] for one that goes away).
pub fn add(name: &str) -> Result<(), Error> {
    Netns::create(name).map(Netns::keep)
}

/// The namespaces whose names start with `prefix` (`""`: all of them). An `ip netns list` that
/// fails lists none.
pub fn list(prefix: &str) -> Vec<String> {
    process::run(&["ip", "netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// The processes running in namespace `name` (none if it does not exist).
pub fn pids(name: &str) -> Vec<libc::pid_t> {
    process::run(&["ip", "netns", "pids", name])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Sends `sig` to every process in the namespaces `names`; whether there was any.
fn signal_all(names: &[String], sig: libc::c_int) -> bool {
    let mut any = false;
    for ns in names {
        for pid in pids(ns) {
            any = true;
            // SAFETY: kill(2) has no memory-safety preconditions; the pid was just listed in a
            // namespace the caller created and owns, so only its own processes are signalled.
            unsafe { libc::kill(pid, sig) };
        }
    }
    any
}

/// Kills every process in namespace `name` with SIGKILL and deletes it. Errors are ignored: this
/// runs from `Drop` and from final sweeps, where nothing could report them.
pub fn remove(name: &str) {
    let names = [name.to_string()];
    for _ in 0..3 {
        if !signal_all(&names, libc::SIGKILL) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = process::run(&["ip", "netns", "del", name]);
}

/// Stops every process in the namespaces `names` — SIGTERM, and SIGKILL for whatever is still
/// there after 5 s, so a well-behaved process (the agent) can clean up — then deletes the
/// namespaces, which destroys their interfaces. Fails at the first namespace that cannot be
/// deleted.
pub fn remove_all(names: &[String]) -> Result<(), Error> {
    for sig in [libc::SIGTERM, libc::SIGKILL] {
        if !signal_all(names, sig) {
            break;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && names.iter().any(|ns| !pids(ns).is_empty()) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for ns in names {
        process::run(&["ip", "netns", "delete", ns])?;
    }
    Ok(())
}

/// A network namespace owned by its creator: dropping it (also while unwinding from a panic)
/// kills whatever runs in it and deletes it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace and brings its loopback up.
    pub fn create(name: &str) -> Result<Netns, Error> {
        process::run(&["ip", "netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (usable with `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS...`.
    pub fn ip(&self, args: &[&str]) -> Result<String, Error> {
        let mut v = vec!["ip", "-n", self.name.as_str()];
        v.extend_from_slice(args);
        process::run(&v)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<String, Error> {
        process::run(&exec_args(&self.name, args))
    }

    /// Gives up ownership: the namespace stays, and the caller removes it later (the lab's
    /// namespaces outlive the command that made them, until `lab down`).
    fn keep(mut self) {
        // An empty name makes `drop` a no-op; `forget` would do too, but would leak the name.
        self.name.clear();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.name.is_empty() {
            remove(&self.name);
        }
    }
}

/// Brings up `ifname`, the node's end of a pod's veth (or the host port's dataplane end), in
/// namespace `netns` (`None`: the caller's own, as for a CNI plugin, which runs in the node's
/// namespace), closed to the node's own stack. The XDP program hands every frame it sees to the
/// dataplane; these settings make sure that while no program is attached (the agent killed or
/// not started yet) a pod still reaches nothing on the node, over any ethertype:
///
/// - IPv6 off (`disable_ipv6=1`), set while the link is down so that it never gets a link-local
///   address: the kernel drops every IPv6 packet received on it.
/// - No ARP: the link is NOARP (the kernel drops every ARP frame received on it), and
///   `arp_ignore=8` answers none even if that flag is cleared.
/// - No forwarding (`forwarding=0`).
/// - Strict reverse-path filtering (`rp_filter=1`). No route leads back to a pod through this
///   interface, so the node's stack accepts no IPv4 from it: without it, a pod could send to
///   this interface's MAC with one of the node's own addresses as destination and Linux (a weak
///   host) would deliver it.
/// - An iptables rule dropping all IPv4 received on it (`raw` `PREROUTING`): reverse-path
///   filtering does not check a source of 0.0.0.0 sent to the limited broadcast or to a
///   link-local multicast group, which the kernel delivers to sockets bound to 0.0.0.0. The rule
///   names the interface, so it is added once and outlives the interface, ready for the next
///   one made under that name.
///
/// A VLAN-tagged frame ends up on one of these paths (the kernel strips a VLAN 0 tag; other
/// VLANs have no device and are dropped), and no other ethertype has a handler in the node's
/// stack. A process on the node reading a packet socket on every interface (tcpdump, lldpd)
/// still sees the frames, as it sees all traffic. Fails, changing nothing, if the link is
/// already up: it may already have a link-local address.
pub fn node_port_up(netns: Option<&str>, ifname: &str) -> Result<(), Error> {
    let inside = |args: &[&str]| -> Result<String, Error> {
        match netns {
            Some(ns) => process::run(&exec_args(ns, args)),
            None => process::run(args),
        }
    };
    let flags = inside(&["ip", "-j", "link", "show", "dev", ifname])?;
    let up = serde_json::from_str::<serde_json::Value>(&flags)
        .ok()
        .and_then(|v| v.get(0)?.get("flags")?.as_array().cloned())
        .is_some_and(|f| f.iter().any(|f| f == "UP"));
    if up {
        return Err(Error::Lab(format!(
            "{ifname} is already up: a pod port is closed to the node's stack before it goes \
             up (it may have an IPv6 link-local address already); delete it and make it again"
        )));
    }
    let sysctls = [
        format!("net.ipv6.conf.{ifname}.disable_ipv6=1"),
        format!("net.ipv4.conf.{ifname}.forwarding=0"),
        format!("net.ipv4.conf.{ifname}.arp_ignore=8"),
        format!("net.ipv4.conf.{ifname}.rp_filter=1"),
    ];
    let mut args = vec!["sysctl", "-qw"];
    args.extend(sysctls.iter().map(String::as_str));
    inside(&args)?;
    inside(&["ip", "link", "set", "dev", ifname, "arp", "off"])?;
    let rule = ["PREROUTING", "-i", ifname, "-j", "DROP"];
    let iptables = |op: &'static str| {
        let mut args = vec!["iptables", "-w", "-t", "raw", op];
        args.extend_from_slice(&rule);
        inside(&args)
    };
    if iptables("-C").is_err() {
        iptables("-A")?;
    }
    inside(&["ip", "link", "set", "dev", ifname, "up"])?;
    Ok(())
}

/// Creates a veth pair in namespace `ns`: `name` stays there, `peer` goes to `peer_ns` (`None`:
/// stays in `ns` too). Both ends get `queues` RX and TX queues: the agent gives each worker a
/// queue of every port it serves.
pub(crate) fn add_veth(
    ns: &str,
    name: &str,
    peer: &str,
    peer_ns: Option<&str>,
    queues: &str,
) -> Result<(), Error> {
    let q = ["numtxqueues", queues, "numrxqueues", queues];
    let mut args = vec!["ip", "-n", ns, "link", "add", name];
    args.extend_from_slice(&q);
    args.extend_from_slice(&["type", "veth", "peer", "name", peer]);
    if let Some(p) = peer_ns {
        args.extend_from_slice(&["netns", p]);
    }
    args.extend_from_slice(&q);
    process::run(&args).map(drop)
}

/// Turns TX checksum offload off on `ifname` in namespace `ns`: a frame's checksums must be
/// complete on the wire, since AF_XDP forwards bytes, not skbs with checksums still to fill in.
pub(crate) fn tx_offload_off(ns: &str, ifname: &str) -> Result<(), Error> {
    process::run(&exec_args(ns, &["ethtool", "-K", ifname, "tx", "off"])).map(drop)
}

/// The MAC address of `ifname` in namespace `netns`.
pub(crate) fn read_mac(netns: &str, ifname: &str) -> Result<MacAddr, Error> {
    let out = process::run(&["ip", "-n", netns, "-j", "link", "show", ifname])?;
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

/// Starts `netserver` (it daemonizes) in network namespace `netns` and returns once it
/// listens, so a netperf started right after never races it. Nothing owns the daemon: `lab
/// down` stops it with the lab's other processes.
pub fn start_netserver(netns: &str) -> Result<(), Error> {
    let port = NETSERVER_PORT.to_string();
    let args = exec_args(netns, &["netserver", "-4", "-p", &port]);
    process::run(&args)?;
    // A daemon that failed after forking is only seen as not listening: give it long enough
    // that a slow machine is not mistaken for a failure.
    wait_listening(
        netns,
        &process::cmd_line(&args),
        NETSERVER_PORT,
        None,
        Duration::from_secs(10),
    )
}

/// Runs `netserver` in the foreground in namespace `netns`, pinned to the CPU list `cpus` (as
/// `taskset -c` takes it), and returns once it listens; dropping the guard stops it, which must
/// happen before its namespace is deleted.
pub fn spawn_netserver(netns: &str, cpus: &str) -> Result<ChildGuard, Error> {
    let port = NETSERVER_PORT.to_string();
    let args = exec_args(
        netns,
        &["taskset", "-c", cpus, "netserver", "-D", "-p", &port],
    );
    let mut guard = process::spawn(&args)?;
    // An exit is seen at once here, so the limit only bounds a start that hangs.
    let cmd = guard.cmd().to_string();
    wait_listening(
        netns,
        &cmd,
        NETSERVER_PORT,
        Some(&mut guard),
        Duration::from_secs(5),
    )?;
    Ok(guard)
}

/// Polls `ss` in `netns` until something listens on TCP `port`; fails after `limit`, or as
/// soon as `child` (the server, when the caller owns it) has exited.
pub(crate) fn wait_listening(
    netns: &str,
    command: &str,
    port: u16,
    mut child: Option<&mut ChildGuard>,
    limit: Duration,
) -> Result<(), Error> {
    let filter = format!("sport = :{port}");
    let start = Instant::now();
    loop {
        let listening = process::run(&exec_args(netns, &["ss", "-Hltn", &filter]))
            .is_ok_and(|s| !s.trim().is_empty());
        if listening {
            return Ok(());
        }
        let exited = child.as_mut().is_some_and(|c| c.exited());
        if exited || start.elapsed() > limit {
            return Err(Error::NotListening {
                command: command.to_string(),
                port,
                secs: limit.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod port brought up by [`node_port_up`] has every setting it promises, and a port that
    /// is already up is refused.
    #[test]
    fn a_node_port_comes_up_closed_to_the_nodes_stack() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED a_node_port_comes_up_closed_to_the_nodes_stack: needs root");
            return;
        }
        let ns = Netns::create(&format!("xyltest-port-{}", std::process::id())).unwrap();
        ns.ip(&[
            "link", "add", "xyp0", "type", "veth", "peer", "name", "xyp0peer",
        ])
        .unwrap();
        ns.ip(&["link", "set", "xyp0peer", "up"]).unwrap();
        node_port_up(Some(ns.name()), "xyp0").unwrap();
        for (key, want) in [
            ("net.ipv6.conf.xyp0.disable_ipv6", "1"),
            ("net.ipv4.conf.xyp0.forwarding", "0"),
            ("net.ipv4.conf.xyp0.arp_ignore", "8"),
            ("net.ipv4.conf.xyp0.rp_filter", "1"),
        ] {
            let got = ns.exec(&["sysctl", "-n", key]).unwrap();
            assert_eq!(got.trim(), want, "{key}");
        }
        let link = ns.ip(&["-j", "addr", "show", "dev", "xyp0"]).unwrap();
        let link: serde_json::Value = serde_json::from_str(&link).unwrap();
        let flags = link[0]["flags"].as_array().unwrap();
        assert!(flags.iter().any(|f| f == "UP"), "{link}");
        assert!(flags.iter().any(|f| f == "NOARP"), "{link}");
        assert_eq!(link[0]["addr_info"], serde_json::json!([]), "no address");
        let rules = ns
            .exec(&["iptables", "-w", "-t", "raw", "-S", "PREROUTING"])
            .unwrap();
        assert_eq!(
            rules.matches("-A PREROUTING -i xyp0 -j DROP").count(),
            1,
            "{rules}"
        );

        let err = node_port_up(Some(ns.name()), "xyp0").unwrap_err();
        assert!(err.to_string().contains("xyp0 is already up"), "{err}");
        // The same name made again: the rule is there once.
        ns.ip(&["link", "del", "xyp0"]).unwrap();
        ns.ip(&[
            "link", "add", "xyp0", "type", "veth", "peer", "name", "xyp0peer",
        ])
        .unwrap();
        node_port_up(Some(ns.name()), "xyp0").unwrap();
        let rules = ns
            .exec(&["iptables", "-w", "-t", "raw", "-S", "PREROUTING"])
            .unwrap();
        assert_eq!(rules.matches("-i xyp0 ").count(), 1, "{rules}");
    }

    #[test]
    fn exec_args_prefix() {
        assert_eq!(
            exec_args("ns", &["ss", "-lt"]),
            vec!["ip", "netns", "exec", "ns", "ss", "-lt"]
        );
    }
}

//! The underlay of a multi-node lab: the network the nodes' uplinks share, standing in for the
//! physical network between Kubernetes nodes.
//!
//! - The underlay namespace, `xylem-<lab>-underlay`, holds a Linux bridge ([`UNDERLAY_BRIDGE`])
//!   that plays the switch. It is never the machine's own namespace, so nothing of the lab
//!   reaches the machine's network.
//! - Each node's uplink ([`UPLINK_IF`]) is one end of a veth whose other end is a port of the
//!   bridge. The agent attaches XDP to the uplink like to a pod's port, so the uplink is closed
//!   to the node namespace's own stack the same way ([`netns::node_port_up`]).
//! - The world namespace, `xylem-<lab>-world`, is on the bridge too, at [`WORLD_IP`]: every
//!   node's agent uses it as its next hop (the underlay router), and it serves netperf and TCP
//!   and UDP echo for traffic that leaves the cluster.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use xylem_api::config::{Ipv4Cidr, PortConfig, PortKind};

use crate::netns::{self, add_veth, exec_args, tx_offload_off};
use crate::process::{self, run, spawn_detached};
use crate::up::add_quiet_netns;
use crate::{
    Error, UNDERLAY_BRIDGE, UNDERLAY_BRIDGE_IP, UNDERLAY_CIDR, UPLINK_IF, WORLD_ECHO_PORT,
    WORLD_IF, WORLD_IP,
};

/// Creates the underlay namespace `ns` with its bridge up, at [`UNDERLAY_BRIDGE_IP`] so the
/// namespace itself can probe the underlay.
pub(crate) fn make_underlay(ns: &str) -> Result<(), Error> {
    add_quiet_netns(ns)?;
    run(&[
        "ip",
        "-n",
        ns,
        "link",
        "add",
        UNDERLAY_BRIDGE,
        "type",
        "bridge",
    ])?;
    let addr = format!("{UNDERLAY_BRIDGE_IP}/{}", UNDERLAY_CIDR.len);
    run(&["ip", "-n", ns, "addr", "add", &addr, "dev", UNDERLAY_BRIDGE])?;
    run(&["ip", "-n", ns, "link", "set", UNDERLAY_BRIDGE, "up"])?;
    Ok(())
}

/// The name of node `i`'s port on the bridge: `u<i>-<node>`, cut to the 15 characters an
/// interface name may have (the index keeps it unique when names share a long prefix).
pub(crate) fn bridge_port_name(i: usize, node: &str) -> String {
    let mut name = format!("u{i}-{node}");
    name.truncate(15);
    name
}

/// A bridge port in the underlay namespace: enslaved to the bridge, TX offload off, up.
fn bridge_port_up(underlay_ns: &str, ifname: &str) -> Result<(), Error> {
    tx_offload_off(underlay_ns, ifname)?;
    run(&[
        "ip",
        "-n",
        underlay_ns,
        "link",
        "set",
        ifname,
        "master",
        UNDERLAY_BRIDGE,
    ])?;
    run(&["ip", "-n", underlay_ns, "link", "set", ifname, "up"])?;
    Ok(())
}

/// What [`make_uplink`] needs of a node.
pub(crate) struct Uplink<'a> {
    /// The node's index in the lab (0-based), which picks its MAC and port name.
    pub index: usize,
    /// The node's name.
    pub name: &'a str,
    /// Its namespace.
    pub netns: &'a str,
    /// Queues per veth end: one per worker.
    pub queues: &'a str,
}

/// Makes node `up`'s uplink into the bridge of `underlay_ns`: [`UPLINK_IF`] in the node's
/// namespace with its MAC from [`crate::uplink_mac`], no address, closed to the node's stack;
/// returns the port for the agent's configuration, routing through the world.
pub(crate) fn make_uplink(up: &Uplink<'_>, underlay_ns: &str) -> Result<PortConfig, Error> {
    let port = bridge_port_name(up.index, up.name);
    add_veth(underlay_ns, &port, UPLINK_IF, Some(up.netns), up.queues)?;
    let mac = crate::uplink_mac(up.index);
    let mac_text = mac.to_string();
    run(&[
        "ip", "-n", up.netns, "link", "set", UPLINK_IF, "address", &mac_text,
    ])?;
    tx_offload_off(up.netns, UPLINK_IF)?;
    netns::node_port_up(Some(up.netns), UPLINK_IF)?;
    bridge_port_up(underlay_ns, &port)?;
    Ok(PortConfig {
        ifname: UPLINK_IF.into(),
        kind: PortKind::Uplink,
        ip: crate::node_ip(up.index),
        mac,
        next_hop: Some(WORLD_IP),
        name: None,
        namespace: None,
        labels: BTreeMap::new(),
    })
}

/// The bridge's port for the world.
const WORLD_PORT: &str = "u-world";

/// Makes the world namespace `ns` on the bridge of `underlay_ns` at [`WORLD_IP`], with a route
/// to each node's pod CIDR through that node (`routes`: pod CIDR, node IP), netserver, and TCP
/// and UDP echo on [`WORLD_ECHO_PORT`] (socat, logging under `log_dir`).
pub(crate) fn make_world(
    ns: &str,
    underlay_ns: &str,
    routes: &[(Ipv4Cidr, std::net::Ipv4Addr)],
    log_dir: &Path,
) -> Result<(), Error> {
    add_quiet_netns(ns)?;
    add_veth(underlay_ns, WORLD_PORT, WORLD_IF, Some(ns), "1")?;
    let addr = format!("{WORLD_IP}/{}", UNDERLAY_CIDR.len);
    run(&["ip", "-n", ns, "addr", "add", &addr, "dev", WORLD_IF])?;
    tx_offload_off(ns, WORLD_IF)?;
    run(&["ip", "-n", ns, "link", "set", WORLD_IF, "up"])?;
    bridge_port_up(underlay_ns, WORLD_PORT)?;
    for (cidr, via) in routes {
        let (cidr, via) = (cidr.to_string(), via.to_string());
        run(&["ip", "-n", ns, "route", "add", &cidr, "via", &via])?;
    }
    netns::start_netserver(ns)?;
    let port = WORLD_ECHO_PORT;
    let tcp = format!("socat TCP4-LISTEN:{port},fork,reuseaddr PIPE");
    let udp = format!("socat UDP4-RECVFROM:{port},fork PIPE");
    for (proto, cmd) in [("tcp", &tcp), ("udp", &udp)] {
        spawn_detached(ns, cmd, &[], &log_dir.join(format!("echo-{proto}.log")))?;
    }
    // socat binds in the background: wait for the TCP listener, so the world serves as soon
    // as `lab up` returns.
    let tcp = process::cmd_line(&exec_args(ns, &["sh", "-c", &tcp]));
    netns::wait_listening(ns, &tcp, port, None, Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_ports_fit_an_interface_name_and_stay_unique() {
        assert_eq!(bridge_port_name(0, "node1"), "u0-node1");
        let long = "a-very-long-node-nam";
        let (a, b) = (bridge_port_name(0, long), bridge_port_name(1, long));
        assert_eq!(a.len(), 15);
        assert_ne!(a, b);
    }
}

//! Kernel paths: namespaces, links and addresses built for one path, removed on drop.
//!
//! Every namespace is named `<prefix><path>-<role>` with the run's unique prefix
//! (`xnh<pid>-`). Links are created inside those namespaces (`ip -n NODE link add ... peer ...
//! netns POD`), so nothing is ever created in, or changed on, the host's own namespace.

use xylem_lab::netns::{self, Netns};
use xylem_lab::process::{self, ChildGuard};

use crate::error::{Error, Result};
use crate::results::PathKind;

/// Number of kube-proxy-style services loaded for `veth-netfilter`.
pub const NETFILTER_SERVICES: usize = 1000;

/// Where netperf runs and where it connects.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Namespace of the pod running netserver.
    pub server_ns: String,
    /// That pod's IP address.
    pub server_ip: String,
    /// Namespace of the pod running netperf.
    pub client_ns: String,
    /// The server pod's interface.
    pub server_if: String,
    /// The client pod's interface.
    pub client_if: String,
}

/// A built kernel path: its namespaces (dropped last) and its netserver.
#[derive(Debug)]
pub struct KernelPath {
    /// Server and client pods.
    pub endpoints: Endpoints,
    /// Extra facts recorded in the conditions (e.g. the iptables rule count).
    pub notes: Vec<String>,
    // Field order matters: netserver is stopped before its namespace is deleted.
    _netserver: ChildGuard,
    _namespaces: Vec<Netns>,
}

/// Turns off TX checksum offload on the pod's interface, as every path does for fairness.
fn tx_off(pod: &Netns, dev: &str) -> Result<()> {
    pod.exec(&["ethtool", "-K", dev, "tx", "off"])?;
    Ok(())
}

/// Addresses a pod's `eth0` and brings it up, with an optional default gateway.
fn address_pod(pod: &Netns, cidr: &str, gateway: Option<&str>) -> Result<()> {
    pod.ip(&["addr", "add", cidr, "dev", "eth0"])?;
    pod.ip(&["link", "set", "eth0", "up"])?;
    match gateway {
        Some(gw) => pod.ip(&["route", "add", "default", "via", gw])?,
        None => pod.ip(&["route", "add", "default", "dev", "eth0"])?,
    };
    tx_off(pod, "eth0")
}

/// Moves `dev` (created in `node`) into `pod` and names it `eth0`.
fn move_to_pod(node: &Netns, dev: &str, pod: &Netns) -> Result<()> {
    node.ip(&["link", "set", dev, "netns", pod.name()])?;
    pod.ip(&["link", "set", dev, "name", "eth0"])?;
    Ok(())
}

/// Short tag used in namespace names.
fn tag(kind: PathKind) -> &'static str {
    match kind {
        PathKind::Veth => "veth",
        PathKind::VethNetfilter => "vnf",
        PathKind::Bridge => "br",
        PathKind::Ipvlan => "ipvl",
        PathKind::Macvlan => "mvl",
        PathKind::XylemPassthrough
        | PathKind::Xylem
        | PathKind::XylemMonitored
        | PathKind::XylemMultinode
        | PathKind::XylemEncrypted => "xyl",
    }
}

/// Builds `kind` in fresh namespaces and starts netserver in the server pod.
pub fn build(kind: PathKind, prefix: &str, pod_cores: &str) -> Result<KernelPath> {
    let t = tag(kind);
    let node = Netns::create(&format!("{prefix}{t}-node"))?;
    let srv = Netns::create(&format!("{prefix}{t}-srv"))?;
    let cli = Netns::create(&format!("{prefix}{t}-cli"))?;
    let mut notes = Vec::new();
    let server_ip;
    match kind {
        PathKind::Veth | PathKind::VethNetfilter => {
            node.ip(&[
                "link",
                "add",
                "s0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                srv.name(),
            ])?;
            node.ip(&[
                "link",
                "add",
                "c0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                cli.name(),
            ])?;
            node.ip(&["addr", "add", "10.201.1.1/24", "dev", "s0"])?;
            node.ip(&["addr", "add", "10.201.2.1/24", "dev", "c0"])?;
            node.ip(&["link", "set", "s0", "up"])?;
            node.ip(&["link", "set", "c0", "up"])?;
            node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            address_pod(&srv, "10.201.1.2/24", Some("10.201.1.1"))?;
            address_pod(&cli, "10.201.2.2/24", Some("10.201.2.1"))?;
            server_ip = "10.201.1.2";
            if kind == PathKind::VethNetfilter {
                let rules = kube_proxy_ruleset(NETFILTER_SERVICES);
                process::run_with_input(
                    &netns::exec_args(node.name(), &["iptables-restore"]),
                    Some(&rules),
                )?;
                let n = rules.lines().filter(|l| l.starts_with("-A ")).count();
                notes.push(format!(
                    "veth-netfilter: {n} iptables rules for {NETFILTER_SERVICES} kube-proxy-style services loaded with one iptables-restore in the node namespace ({})",
                    process::run(&["iptables", "-V"]).unwrap_or_default().trim()
                ));
            }
        }
        PathKind::Bridge => {
            node.ip(&["link", "add", "br0", "type", "bridge"])?;
            node.ip(&["link", "set", "br0", "up"])?;
            for (dev, pod) in [("s0", &srv), ("c0", &cli)] {
                node.ip(&[
                    "link",
                    "add",
                    dev,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    pod.name(),
                ])?;
                node.ip(&["link", "set", dev, "master", "br0"])?;
                node.ip(&["link", "set", dev, "up"])?;
            }
            address_pod(&srv, "10.201.0.2/24", None)?;
            address_pod(&cli, "10.201.0.3/24", None)?;
            server_ip = "10.201.0.2";
        }
        PathKind::Macvlan | PathKind::Ipvlan => {
            // No dummy driver on every kernel: a veth pair inside the node namespace is the parent.
            node.ip(&[
                "link", "add", "parent0", "type", "veth", "peer", "name", "parent1",
            ])?;
            node.ip(&["link", "set", "parent0", "up"])?;
            node.ip(&["link", "set", "parent1", "up"])?;
            let (ty, mode) = if kind == PathKind::Macvlan {
                ("macvlan", "bridge")
            } else {
                ("ipvlan", "l3")
            };
            for (dev, pod) in [("s0", &srv), ("c0", &cli)] {
                node.ip(&[
                    "link", "add", dev, "link", "parent0", "type", ty, "mode", mode,
                ])?;
                move_to_pod(&node, dev, pod)?;
            }
            address_pod(&srv, "10.201.0.2/24", None)?;
            address_pod(&cli, "10.201.0.3/24", None)?;
            server_ip = "10.201.0.2";
        }
        PathKind::XylemPassthrough
        | PathKind::Xylem
        | PathKind::XylemMonitored
        | PathKind::XylemMultinode
        | PathKind::XylemEncrypted => {
            return Err(Error::Usage(format!("{kind} is not a kernel path")));
        }
    }
    let netserver = netns::spawn_netserver(srv.name(), pod_cores)?;
    Ok(KernelPath {
        endpoints: Endpoints {
            server_ns: srv.name().to_string(),
            server_ip: server_ip.to_string(),
            client_ns: cli.name().to_string(),
            server_if: "eth0".into(),
            client_if: "eth0".into(),
        },
        notes,
        _netserver: netserver,
        _namespaces: vec![cli, srv, node],
    })
}

/// Tries to create an IPVLAN link in a scratch namespace: `None` if the kernel has IPVLAN, or
/// the reason it is unavailable.
pub fn probe_ipvlan(prefix: &str) -> Option<String> {
    let ns = match Netns::create(&format!("{prefix}probe")) {
        Ok(ns) => ns,
        Err(e) => {
            let e = Error::from(e);
            return Some(format!("unavailable: could not probe IPVLAN: {e}"));
        }
    };
    let r = ns
        .ip(&["link", "add", "p0", "type", "veth", "peer", "name", "p1"])
        .and_then(|_| {
            ns.ip(&[
                "link", "add", "iv0", "link", "p0", "type", "ipvlan", "mode", "l3",
            ])
        })
        .map_err(Error::from);
    match r {
        Ok(_) => None,
        Err(Error::Command { stderr, .. })
            if stderr.contains("Unknown device type") || stderr.contains("not supported") =>
        {
            Some("unavailable: kernel lacks CONFIG_IPVLAN".into())
        }
        Err(e) => Some(format!("unavailable: IPVLAN link creation failed: {e}")),
    }
}

/// A kube-proxy (iptables mode) sized ruleset for `iptables-restore`: `services` ClusterIP
/// services, each with a service chain and one endpoint chain doing DNAT, and the usual filter
/// chains. Pod-to-pod benchmark traffic matches none of the services, so each new connection
/// walks the whole `KUBE-SERVICES` chain, as it does on a kube-proxy node.
pub fn kube_proxy_ruleset(services: usize) -> String {
    let mut nat = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-NODEPORTS - [0:0]\n",
    );
    let mut rules = String::new();
    for i in 0..services {
        let svc = format!("KUBE-SVC-{:016X}", i as u64 * 0x9E37_79B9 + 1);
        let sep = format!("KUBE-SEP-{:016X}", i as u64 * 0x85EB_CA6B + 7);
        nat.push_str(&format!(":{svc} - [0:0]\n:{sep} - [0:0]\n"));
        let cluster_ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        let endpoint = format!("10.244.{}.{}", i / 250, i % 250 + 1);
        rules.push_str(&format!(
            "-A KUBE-SERVICES -d {cluster_ip}/32 -p tcp -m comment --comment \"bench/svc-{i}:http cluster IP\" -m tcp --dport 80 -j {svc}\n\
             -A {svc} ! -s 10.244.0.0/16 -d {cluster_ip}/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ\n\
             -A {svc} -j {sep}\n\
             -A {sep} -s {endpoint}/32 -j KUBE-MARK-MASQ\n\
             -A {sep} -p tcp -m tcp -j DNAT --to-destination {endpoint}:8080\n"
        ));
    }
    nat.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    nat.push_str(
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    nat.push_str("-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n");
    nat.push_str("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n");
    nat.push_str("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n");
    nat.push_str("-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n");
    nat.push_str("-A KUBE-POSTROUTING -j MASQUERADE\n");
    nat.push_str(&rules);
    nat.push_str("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\nCOMMIT\n");
    let filter = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBE-FORWARD - [0:0]\n:KUBE-FIREWALL - [0:0]\n\
-A INPUT -j KUBE-FIREWALL\n\
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
-A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
-A KUBE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n\
COMMIT\n";
    nat + filter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_is_kube_proxy_sized() {
        let r = kube_proxy_ruleset(1000);
        let service_rules = r
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES -d "))
            .count();
        assert_eq!(service_rules, 1000);
        assert_eq!(r.matches("COMMIT").count(), 2);
        assert!(r.lines().filter(|l| l.starts_with("-A ")).count() > 5000);
        assert!(r.contains("10.96.3.250/32"), "1000th service address");
    }
}

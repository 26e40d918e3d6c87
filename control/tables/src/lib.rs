//! # xylem-tables
//!
//! The tables a node's workers run on, built from the agent's configuration, the ports' current
//! endpoint bindings, the network policies and the services: routes to the endpoints, the
//! compiled policy and the service tables, at one revision. It is the one builder of those
//! tables: the agent publishes what it builds, and `xylem replay` runs a capture against it, so
//! a replay sees the tables an agent with the same endpoints, policies and services would.
//!
//! What it does not do: publish tables to workers, keep state (the service ids and Maglev
//! tables that must outlive one build are the caller's [`services::ServiceBuildState`]), or
//! parse anything (the configuration is `xylem-api`'s, the policies `xylem-policy`'s, the
//! services `xylem-services`'). Pure: no I/O, no threads.

pub mod services;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use xylem_api::config::{GatewayConfig, Ipv4Cidr, NodeConfig, PortConfig, PortKind};
use xylem_dataplane::esp::PeerSas;
use xylem_dataplane::services::ServiceTables;
use xylem_dataplane::tables::{Gateway, MacAddr, Mode, Neighbor, Peer, Prefix, Tables, Uplink};
use xylem_policy::{
    AllowLocalhost, EndpointInfo, EndpointSpec, IdentityAllocator, Policy, compile_cluster,
};

/// The one way building tables fails: a route the dataplane's tables refuse.
pub type Error = xylem_dataplane::Error;

/// What the policy compiler needs from the port bindings: the pods as endpoints, and the
/// addresses that are the `host` entity (the gateway and the host ports).
pub fn policy_inputs(
    gateway: &GatewayConfig,
    bindings: &[Option<PortConfig>],
) -> (Vec<EndpointSpec>, Vec<Ipv4Addr>) {
    let mut specs = Vec::new();
    let mut host = vec![gateway.ip];
    for p in bindings.iter().flatten() {
        match p.kind {
            PortKind::Pod => specs.push(EndpointSpec {
                ip: p.ip,
                namespace: p.namespace.clone().unwrap_or_else(|| "default".into()),
                labels: p.labels.clone(),
            }),
            PortKind::Host => host.push(p.ip),
            // The node's underlay address is not the `host` entity: what arrives on the uplink
            // comes from other nodes and the world, never from this node's own stack.
            PortKind::Uplink => {}
        }
    }
    (specs, host)
}

/// What one revision of the tables is built from.
#[derive(Debug)]
pub struct TableInputs<'a> {
    /// The gateway's addresses.
    pub gateway: &'a GatewayConfig,
    /// `full` or `passthrough`.
    pub mode: Mode,
    /// What each port serves (port id = index; `None`: no route).
    pub bindings: &'a [Option<PortConfig>],
    /// The revision the tables carry.
    pub revision: u64,
    /// The network policies to compile in.
    pub policies: &'a [Policy],
    /// How the host reaches local endpoints.
    pub localhost: AllowLocalhost,
    /// The services, built by [`services::build_services`] (shared with the previous revision
    /// when no service changed); `ServiceTables::default()` for none.
    pub services: Arc<ServiceTables>,
    /// The other nodes, when the bindings have an uplink.
    pub underlay: Underlay<'a>,
}

/// What the tables need of the underlay besides the uplink's binding: the node's own pod CIDR,
/// the other nodes, the MACs resolved on the uplink and the SAs of the encrypted peers.
#[derive(Debug, Default)]
pub struct Underlay<'a> {
    /// This node's name: its own entry in `nodes` is skipped.
    pub node_name: &'a str,
    /// This node's pod CIDR (required with an uplink).
    pub pod_cidr: Option<Ipv4Cidr>,
    /// The cluster's nodes.
    pub nodes: &'a [NodeConfig],
    /// Whether the agent encrypts (a node's `encryption` defaults to it).
    pub encrypts: bool,
    /// MACs resolved on the underlay, by address.
    pub neighbors: Option<&'a BTreeMap<Ipv4Addr, MacAddr>>,
    /// The SAs of each encrypting node, by name. An encrypting node without an entry gets no
    /// SA at all: its traffic is dropped as `no-key`, never sent in clear.
    pub sas: Option<&'a BTreeMap<String, Arc<PeerSas>>>,
    /// The pods of the other nodes: policies select them by their labels, through the
    /// identities their labels have on this node.
    pub remote: &'a [EndpointSpec],
}

/// One revision of the tables and what compiling it said.
#[derive(Debug)]
pub struct Built {
    /// The tables.
    pub tables: Tables,
    /// Each local endpoint's identity and enforcement.
    pub endpoints: Vec<EndpointInfo>,
    /// Each remote pod's address and the identity its labels have here.
    pub remote: Vec<(Ipv4Addr, u32)>,
}

impl Built {
    /// Every identity the revision uses for an endpoint, local or remote: the ones an
    /// allocator must keep.
    pub fn identities(&self) -> std::collections::BTreeSet<u32> {
        (self.endpoints.iter().map(|e| e.identity))
            .chain(self.remote.iter().map(|r| r.1))
            .collect()
    }
}

/// The tables for `inputs.bindings` in `inputs.mode`, with the policies compiled in at the
/// same revision (the host let into local endpoints as `inputs.localhost` says, identities
/// taken from `ids`) and the services set. Returns what compilation said about each endpoint
/// too. The one builder of full tables: the agent publishes its result to the workers, and
/// `xylem replay` runs a capture against it, so a replay sees the tables an agent with the
/// same endpoints, policies and services would.
pub fn compile_tables(
    inputs: TableInputs<'_>,
    ids: &mut IdentityAllocator,
) -> Result<Built, Error> {
    let TableInputs {
        gateway,
        mode,
        bindings,
        revision,
        policies,
        localhost,
        services,
        underlay,
    } = inputs;
    let mut t = route_tables(gateway, mode, bindings, revision)?;
    add_underlay(&mut t, bindings, &underlay)?;
    let (specs, host) = policy_inputs(gateway, bindings);
    let compiled = compile_cluster(
        revision,
        policies,
        (&specs, underlay.remote),
        &host,
        localhost,
        ids,
    );
    t.set_policy(compiled.tables);
    t.set_services(services);
    Ok(Built {
        tables: t,
        endpoints: compiled.endpoints,
        remote: compiled.remote_endpoints,
    })
}

/// Routes only (no policy): the gateway and one host route per bound port.
fn route_tables(
    gateway: &GatewayConfig,
    mode: Mode,
    bindings: &[Option<PortConfig>],
    revision: u64,
) -> Result<Tables, Error> {
    let gw = Gateway {
        mac: gateway.mac,
        ipv4: gateway.ip,
    };
    let mut t = Tables::new(revision, mode, gw);
    for (i, p) in bindings.iter().enumerate() {
        let Some(p) = p.as_ref().filter(|p| p.kind != PortKind::Uplink) else {
            continue;
        };
        t.add_route(
            p.ip,
            Neighbor {
                port: i as u16,
                mac: p.mac,
            },
        )?;
    }
    Ok(t)
}

/// The uplink (the binding of kind uplink) and the other nodes, each with its MAC if resolved
/// and, when it encrypts, its SAs.
fn add_underlay(
    t: &mut Tables,
    bindings: &[Option<PortConfig>],
    underlay: &Underlay<'_>,
) -> Result<(), Error> {
    let uplink = bindings.iter().enumerate().find_map(|(i, p)| {
        p.as_ref()
            .filter(|p| p.kind == PortKind::Uplink)
            .map(|p| (i, p))
    });
    let Some((port, up)) = uplink else {
        return Ok(());
    };
    let Some(cidr) = underlay.pod_cidr else {
        return Err(Error::InvalidTable(
            "an uplink needs the node's pod CIDR".into(),
        ));
    };
    t.set_uplink(Uplink {
        port: port as u16,
        ip: up.ip,
        mac: up.mac,
        pod_cidr: Prefix::new(cidr.addr, cidr.len),
    })?;
    let mac_of = |ip: &Ipv4Addr| underlay.neighbors.and_then(|n| n.get(ip)).copied();
    if let Some(hop) = up.next_hop {
        t.set_world(hop, mac_of(&hop));
    }
    for n in underlay
        .nodes
        .iter()
        .filter(|n| n.name != underlay.node_name)
    {
        let esp = n.encrypted(underlay.encrypts).then(|| {
            underlay
                .sas
                .and_then(|s| s.get(&n.name))
                .cloned()
                .unwrap_or_default()
        });
        t.add_peer(Peer {
            name: n.name.as_str().into(),
            node_ip: n.node_ip,
            pod_cidr: Prefix::new(n.pod_cidr.addr, n.pod_cidr.len),
            mac: mac_of(&n.node_ip),
            esp,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use xylem_dataplane::conntrack::FlowKey;
    use xylem_dataplane::policy::evaluate;
    use xylem_dataplane::tables::MacAddr;
    use xylem_dataplane::wire::ip::proto;
    use xylem_policy::parse_policies;

    fn port(kind: PortKind, ip: [u8; 4], mac: u8) -> Option<PortConfig> {
        Some(PortConfig {
            ifname: format!("xyp{mac}"),
            kind,
            ip: ip.into(),
            mac: MacAddr([2, 0, 0, 0, 0, mac]),
            name: Some(format!("p{mac}")),
            namespace: None,
            labels: [("app".to_owned(), format!("p{mac}"))].into(),
            next_hop: None,
        })
    }

    #[test]
    fn the_host_ports_address_reaches_a_default_deny_pod_only_as_allow_localhost_says() {
        let gateway = GatewayConfig {
            ip: [10, 200, 0, 1].into(),
            mac: MacAddr([0x0e, 0, 0, 0, 0, 1]),
        };
        let bindings = [
            port(PortKind::Pod, [10, 200, 0, 10], 10),
            port(PortKind::Host, [10, 200, 0, 254], 254),
            port(PortKind::Pod, [10, 200, 0, 11], 11),
        ];
        let policies = parse_policies(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: deny}\n\
             spec:\n  endpointSelector: {matchLabels: {app: p10}}\n  ingress:\n  - {}\n",
        )
        .unwrap();
        let flow = |src: [u8; 4]| FlowKey {
            src: src.into(),
            dst: [10, 200, 0, 10].into(),
            sport: 40000,
            dport: 8080,
            proto: proto::TCP,
        };
        let mut ids = IdentityAllocator::new();
        for (localhost, host_allowed) in [
            (AllowLocalhost::Always, true),
            (AllowLocalhost::Policy, false),
        ] {
            let inputs = TableInputs {
                gateway: &gateway,
                mode: Mode::Full,
                bindings: &bindings,
                revision: 1,
                policies: &policies,
                localhost,
                services: Arc::default(),
                underlay: Underlay::default(),
            };
            let t = compile_tables(inputs, &mut ids).unwrap().tables;
            let allowed = |src| evaluate(t.policy(), &flow(src)).drop().is_none();
            assert_eq!(allowed([10, 200, 0, 254]), host_allowed, "{localhost:?}");
            assert!(
                !allowed([10, 200, 0, 11]),
                "a pod stays denied ({localhost:?})"
            );
        }
    }
}

//! The read-only tables a worker consults for every packet.
//!
//! A [`Tables`] value is built by the control side, then published to workers behind an atomic
//! pointer swap; workers never mutate it, so lookups take no lock. Every change produces a new
//! value with a higher [`Tables::revision`].

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use rustc_hash::FxHashMap;

use crate::Error;
use crate::dns::DnsOptions;
use crate::policy::PolicyTables;
use crate::services::ServiceTables;
use crate::stats::DropReason;

/// Identifies a pod-facing port (one veth and its AF_XDP socket) within a worker.
pub type PortId = u16;

/// An Ethernet MAC address. Displays as `aa:bb:cc:dd:ee:ff`; parses from that form (or with `-`).
/// Serialized as that string; deserialized from it or from an array of six bytes (stored state
/// written as arrays still loads).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            Bytes([u8; 6]),
        }
        match Form::deserialize(d)? {
            Form::Text(t) => t.parse().map_err(serde::de::Error::custom),
            Form::Bytes(b) => Ok(MacAddr(b)),
        }
    }
}

impl MacAddr {
    /// `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// Whether this is the broadcast address.
    #[inline]
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// Whether the group bit is set (multicast, broadcast included).
    #[inline]
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::InvalidMacAddr(s.to_owned());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

/// How much the pipeline does beyond plain forwarding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// L2/L3 forwarding only: the benchmark floor (no policy is enforced).
    Passthrough,
    /// Forwarding plus the later stages: network policy and connection tracking today (service
    /// DNAT and reverse NAT, DNS inspection and ESP later). The default: policy is on unless
    /// the passthrough floor is asked for.
    #[default]
    Full,
}

/// The gateway every pod uses as its default route: the dataplane answers for this address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gateway {
    /// The MAC pods resolve the gateway IP to; also the source MAC of every frame we send.
    pub mac: MacAddr,
    /// The gateway's IPv4 address on the pod network.
    pub ipv4: Ipv4Addr,
}

/// Where a host route leads: a port and the pod's MAC behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbor {
    /// The egress port.
    pub port: PortId,
    /// The pod's MAC address (destination MAC of forwarded frames).
    pub mac: MacAddr,
}

/// An IPv4 prefix as the per-packet path tests it: network and mask, both host-order words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prefix {
    net: u32,
    mask: u32,
}

impl Prefix {
    /// The prefix `addr/len` (host bits of `addr` are cleared; `len` is clamped to 32).
    pub fn new(addr: Ipv4Addr, len: u8) -> Prefix {
        let mask = match len.min(32) {
            0 => 0,
            l => u32::MAX << (32 - u32::from(l)),
        };
        Prefix {
            net: addr.to_bits() & mask,
            mask,
        }
    }

    /// Whether `ip` is inside.
    #[inline(always)]
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        ip.to_bits() & self.mask == self.net
    }

    /// Whether the two prefixes share an address.
    pub fn overlaps(&self, other: &Prefix) -> bool {
        let mask = self.mask & other.mask;
        self.net & mask == other.net & mask
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from_bits(self.net)
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.mask.count_ones() as u8
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.prefix_len())
    }
}

/// The node's uplink: the port towards the other nodes and the world (the underlay), the
/// node's own address and MAC there, and the node's own pod CIDR (which nothing on the
/// underlay may claim as its source).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uplink {
    /// The uplink's port.
    pub port: PortId,
    /// The node's address on the underlay: answered in ARP, the outer source of its ESP.
    pub ip: Ipv4Addr,
    /// The uplink interface's own MAC: frames to it are the node's; frames it sends come from it.
    pub mac: MacAddr,
    /// This node's pod CIDR.
    pub pod_cidr: Prefix,
}

/// Another node: where its pods are, and how they are reached.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The node's name (for status and counters; the per-packet path never reads it).
    pub name: std::sync::Arc<str>,
    /// The node's address on the underlay.
    pub node_ip: Ipv4Addr,
    /// Its pod CIDR: packets to it go over the uplink to `node_ip`.
    pub pod_cidr: Prefix,
    /// Its uplink's MAC, once resolved by ARP (`None`: not yet, and its packets are dropped as
    /// `neighbor-unresolved`).
    pub mac: Option<MacAddr>,
    /// `Some` when traffic with this node is encrypted: its SAs and counters. Traffic to an
    /// encrypting peer without a current key is dropped (`no-key`), never sent in clear.
    pub esp: Option<std::sync::Arc<crate::esp::PeerSas>>,
}

/// The most peers one table set holds: the peer index fits the per-packet path's small
/// integers, and the linear prefix scan stays within a few cache lines.
pub const MAX_PEERS: usize = 256;

/// A port id no port has: the uplink's when there is none.
pub const NO_PORT: PortId = PortId::MAX;

/// One revision of the forwarding tables: mode, gateway, exact-match IPv4 /32 host routes, the
/// compiled network policy and the services. Published as one value, so a worker never sees routes of one
/// revision with the policy of another.
#[derive(Clone, Debug)]
pub struct Tables {
    revision: u64,
    mode: Mode,
    gateway: Gateway,
    routes: FxHashMap<u32, Neighbor>,
    /// Per port, the endpoint of its first route: the common case of [`Tables::check_source`]
    /// without a hash lookup.
    sources: Vec<Option<(Ipv4Addr, MacAddr)>>,
    /// Behind an `Arc`: it is large (its LPM alone is 33 hash maps), and keeping it out of line
    /// keeps the fields every packet reads (mode, gateway, routes) together.
    policy: std::sync::Arc<PolicyTables>,
    /// Behind an `Arc` for the same reason, and so that a revision that changes no service
    /// shares the previous revision's.
    services: std::sync::Arc<ServiceTables>,
    /// Whether `services` has a frontend: kept beside the fields every packet reads, so a node
    /// without services pays one test of a byte already in cache for the service stage.
    has_services: bool,
    /// Whether the policy inspects any DNS or has any `toFQDNs` rule: beside the fields every
    /// packet reads, as `has_services` is, so a node without DNS rules pays one test.
    has_dns: bool,
    /// The DNS stage's options.
    dns: DnsOptions,
    /// The uplink's port ([`NO_PORT`] when there is none): beside the fields every packet
    /// reads, since every packet asks whether it came from the uplink.
    uplink_port: PortId,
    /// The uplink as the parse stage sees it: a gateway whose MAC and address are the
    /// uplink's own.
    uplink_gw: Gateway,
    /// The uplink.
    uplink: Option<Uplink>,
    /// The other nodes, scanned in order for a packet that no host route takes.
    peers: Vec<Peer>,
    /// Where the world is reached: the uplink's next hop, its MAC once resolved.
    world: Option<(Ipv4Addr, Option<MacAddr>)>,
}

impl Tables {
    /// Empty tables (no routes) for `gateway`, at `revision`, in `mode`.
    pub fn new(revision: u64, mode: Mode, gateway: Gateway) -> Self {
        Self {
            revision,
            mode,
            gateway,
            routes: FxHashMap::default(),
            sources: Vec::new(),
            policy: std::sync::Arc::new(PolicyTables::default()),
            services: std::sync::Arc::new(ServiceTables::default()),
            has_services: false,
            has_dns: false,
            dns: DnsOptions::default(),
            uplink_port: NO_PORT,
            uplink_gw: gateway,
            uplink: None,
            peers: Vec::new(),
            world: None,
        }
    }

    /// Sets the uplink. Its port must not also carry a host route, and its address must be
    /// outside its pod CIDR and not the gateway's.
    pub fn set_uplink(&mut self, uplink: Uplink) -> Result<(), Error> {
        if uplink.pod_cidr.contains(uplink.ip) || uplink.ip == self.gateway.ipv4 {
            return Err(Error::InvalidTable(format!(
                "the uplink's address {} is inside the node's pod CIDR {}: give the node an \
                 address on the underlay",
                uplink.ip, uplink.pod_cidr
            )));
        }
        if let Some((ip, _)) = self.routes().find(|(_, n)| n.port == uplink.port) {
            return Err(Error::InvalidTable(format!(
                "port {} is the uplink and also the route to {ip}",
                uplink.port
            )));
        }
        self.uplink_port = uplink.port;
        self.uplink_gw = Gateway {
            mac: uplink.mac,
            ipv4: uplink.ip,
        };
        self.uplink = Some(uplink);
        Ok(())
    }

    /// The uplink, if the node has one.
    #[inline]
    pub fn uplink(&self) -> Option<&Uplink> {
        self.uplink.as_ref()
    }

    /// The uplink's port, or [`NO_PORT`].
    #[inline(always)]
    pub fn uplink_port(&self) -> PortId {
        self.uplink_port
    }

    /// The addresses a frame arriving on `port` must be sent to: the uplink's own on the
    /// uplink, the gateway's on every other port.
    #[inline(always)]
    pub fn gateway_for(&self, port: PortId) -> &Gateway {
        if port == self.uplink_port {
            &self.uplink_gw
        } else {
            &self.gateway
        }
    }

    /// Adds another node. Needs the uplink set first; refuses a pod CIDR that overlaps this
    /// node's or another peer's, a node address used twice, and more than [`MAX_PEERS`].
    pub fn add_peer(&mut self, peer: Peer) -> Result<(), Error> {
        let Some(up) = self.uplink else {
            return Err(Error::InvalidTable(format!(
                "node {} is reached over the uplink, and there is none: configure a port of \
                 kind uplink",
                peer.name
            )));
        };
        if peer.pod_cidr.overlaps(&up.pod_cidr) || peer.pod_cidr.contains(self.gateway.ipv4) {
            return Err(Error::InvalidTable(format!(
                "node {}'s pod CIDR {} overlaps this node's {}",
                peer.name, peer.pod_cidr, up.pod_cidr
            )));
        }
        if peer.node_ip == up.ip {
            return Err(Error::InvalidTable(format!(
                "node {} has this node's own address {}",
                peer.name, peer.node_ip
            )));
        }
        if let Some(o) = self
            .peers
            .iter()
            .find(|o| o.pod_cidr.overlaps(&peer.pod_cidr) || o.node_ip == peer.node_ip)
        {
            return Err(Error::InvalidTable(format!(
                "node {} ({}, pods {}) clashes with node {} ({}, pods {})",
                peer.name, peer.node_ip, peer.pod_cidr, o.name, o.node_ip, o.pod_cidr
            )));
        }
        if self.peers.len() >= MAX_PEERS {
            return Err(Error::InvalidTable(format!(
                "more than {MAX_PEERS} other nodes"
            )));
        }
        self.peers.push(peer);
        Ok(())
    }

    /// The other nodes, in the order they were added (a peer's index is its place here).
    #[inline]
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// The peer whose pod CIDR holds `ip`, with its index.
    #[inline]
    pub fn peer_for(&self, ip: Ipv4Addr) -> Option<(usize, &Peer)> {
        self.peers
            .iter()
            .enumerate()
            .find(|(_, p)| p.pod_cidr.contains(ip))
    }

    /// The peer whose node address is `ip`, with its index.
    #[inline]
    pub fn peer_at(&self, ip: Ipv4Addr) -> Option<(usize, &Peer)> {
        self.peers.iter().enumerate().find(|(_, p)| p.node_ip == ip)
    }

    /// Sets the world's next hop on the underlay, with its MAC once resolved.
    pub fn set_world(&mut self, next_hop: Ipv4Addr, mac: Option<MacAddr>) {
        self.world = Some((next_hop, mac));
    }

    /// The world's next hop and its MAC, if resolved.
    #[inline]
    pub fn world(&self) -> Option<(Ipv4Addr, Option<MacAddr>)> {
        self.world
    }

    /// Whether the underlay address `ip` is one whose MAC the node needs: a peer's or the
    /// world's next hop. The slow path learns only these from the ARP it sees.
    pub fn wants_neighbor(&self, ip: Ipv4Addr) -> bool {
        self.world.is_some_and(|(w, _)| w == ip) || self.peer_at(ip).is_some()
    }

    /// Whether `ip` is the node's address on the underlay.
    #[inline]
    pub fn is_node_address(&self, ip: Ipv4Addr) -> bool {
        self.uplink.is_some_and(|u| u.ip == ip)
    }

    /// Whether `ip` is one of this node's own addresses or endpoints: the gateway, the node's
    /// underlay address, an address in its pod CIDR, or a host route's. Nothing arriving on
    /// the uplink may claim one as its source.
    #[inline]
    pub fn is_local(&self, ip: Ipv4Addr) -> bool {
        ip == self.gateway.ipv4
            || self
                .uplink
                .is_some_and(|u| u.ip == ip || u.pod_cidr.contains(ip))
            || self.routes.contains_key(&ip.to_bits())
    }

    /// Sets the services (consulted in [`Mode::Full`] only). New tables start with none.
    pub fn set_services(&mut self, services: std::sync::Arc<ServiceTables>) {
        self.has_services = !services.is_empty();
        self.services = services;
    }

    /// Whether there is any service (any frontend).
    #[inline(always)]
    pub fn has_services(&self) -> bool {
        self.has_services
    }

    /// The services.
    #[inline]
    pub fn services(&self) -> &ServiceTables {
        &self.services
    }

    /// Sets the compiled network policy (consulted in [`Mode::Full`] only). New tables start
    /// with [`PolicyTables::default`]: no rule, everything allowed.
    pub fn set_policy(&mut self, policy: PolicyTables) {
        self.has_dns = policy.dns().inspects_any();
        self.policy = std::sync::Arc::new(policy);
    }

    /// Whether the DNS stage has anything to inspect.
    #[inline(always)]
    pub fn has_dns(&self) -> bool {
        self.has_dns
    }

    /// Sets the DNS stage's options (new tables start with [`DnsOptions::default`]).
    pub fn set_dns_options(&mut self, options: DnsOptions) {
        self.dns = options;
    }

    /// The DNS stage's options.
    #[inline]
    pub fn dns_options(&self) -> &DnsOptions {
        &self.dns
    }

    /// The compiled network policy.
    #[inline]
    pub fn policy(&self) -> &PolicyTables {
        &self.policy
    }

    /// Adds the host route `ip/32 -> n`. Rejects the gateway's own address (packets to it go to
    /// the slow path) and an address that already has a route.
    pub fn add_route(&mut self, ip: Ipv4Addr, n: Neighbor) -> Result<(), Error> {
        if n.port == self.uplink_port {
            return Err(Error::InvalidTable(format!(
                "route for {ip} leads to port {}, the uplink: the uplink carries no endpoint",
                n.port
            )));
        }
        if ip == self.gateway.ipv4 {
            return Err(Error::InvalidTable(format!(
                "route for {ip} is the gateway's own address; the gateway answers for it itself, \
                 so give the pod another address"
            )));
        }
        match self.routes.entry(ip.to_bits()) {
            std::collections::hash_map::Entry::Occupied(e) => Err(Error::InvalidTable(format!(
                "duplicate route for {ip}: already via port {} to {}, asked for port {} to {}; \
                     remove the old one first",
                e.get().port,
                e.get().mac,
                n.port,
                n.mac
            ))),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(n);
                let port = usize::from(n.port);
                if self.sources.len() <= port {
                    self.sources.resize(port + 1, None);
                }
                self.sources[port].get_or_insert((ip, n.mac));
                Ok(())
            }
        }
    }

    /// Whether a frame arriving on `port` may claim source `ip` and `mac`: only if a route leads
    /// `ip` back to that very port and MAC. The port a frame arrived on is its identity; what
    /// the frame says of itself is checked against it, never believed. `None` if it may,
    /// else the drop reason: the address is not this port's ([`DropReason::InvalidSourceIp`],
    /// also for a port with no endpoint), or the MAC is not the address's
    /// ([`DropReason::InvalidSourceMac`]).
    #[inline]
    pub fn check_source(&self, port: PortId, ip: Ipv4Addr, mac: MacAddr) -> Option<DropReason> {
        let known = match self.sources.get(usize::from(port)) {
            Some(&Some((first_ip, first_mac))) if first_ip == ip => Some(first_mac),
            _ => self.route(ip).filter(|n| n.port == port).map(|n| n.mac),
        };
        match known {
            Some(m) if m == mac => None,
            Some(_) => Some(DropReason::InvalidSourceMac),
            None => Some(DropReason::InvalidSourceIp),
        }
    }

    /// The host route for `ip`, if any.
    #[inline]
    pub fn route(&self, ip: Ipv4Addr) -> Option<Neighbor> {
        self.routes.get(&ip.to_bits()).copied()
    }

    /// This table set's revision (increases with every published change).
    #[inline]
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The pipeline mode.
    #[inline]
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The gateway's addresses.
    #[inline]
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Every host route, in no particular order.
    pub fn routes(&self) -> impl Iterator<Item = (Ipv4Addr, Neighbor)> + '_ {
        self.routes
            .iter()
            .map(|(&ip, &n)| (Ipv4Addr::from_bits(ip), n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw() -> Gateway {
        Gateway {
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            ipv4: Ipv4Addr::new(10, 0, 0, 1),
        }
    }

    #[test]
    fn mac_display_and_parse_round_trip() {
        let m = MacAddr([0x02, 0xab, 0, 0x10, 0xff, 1]);
        assert_eq!(m.to_string(), "02:ab:00:10:ff:01");
        assert_eq!("02:ab:00:10:ff:01".parse::<MacAddr>().unwrap(), m);
        assert_eq!("02-AB-00-10-FF-01".parse::<MacAddr>().unwrap(), m);
        for bad in [
            "",
            "02:ab:00:10:ff",
            "02:ab:00:10:ff:01:02",
            "2:ab:00:10:ff:01",
            "zz:ab:00:10:ff:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert!(MacAddr::BROADCAST.is_broadcast() && MacAddr::BROADCAST.is_multicast());
        assert!(!m.is_multicast());
    }

    #[test]
    fn routes_add_lookup_and_reject() {
        let mut t = Tables::new(7, Mode::Full, gw());
        let n = Neighbor {
            port: 3,
            mac: MacAddr([2, 0, 0, 0, 0, 9]),
        };
        t.add_route(Ipv4Addr::new(10, 0, 0, 9), n).unwrap();
        assert_eq!(t.route(Ipv4Addr::new(10, 0, 0, 9)), Some(n));
        assert_eq!(t.route(Ipv4Addr::new(10, 0, 0, 8)), None);
        let e = t
            .add_route(Ipv4Addr::new(10, 0, 0, 9), n)
            .unwrap_err()
            .to_string();
        assert!(e.contains("duplicate route for 10.0.0.9"), "{e}");
        let e = t
            .add_route(Ipv4Addr::new(10, 0, 0, 1), n)
            .unwrap_err()
            .to_string();
        assert!(e.contains("gateway's own address"), "{e}");
        assert_eq!(
            t.routes().collect::<Vec<_>>(),
            vec![(Ipv4Addr::new(10, 0, 0, 9), n)]
        );
        assert_eq!(
            (t.revision(), t.mode(), *t.gateway()),
            (7, Mode::Full, gw())
        );
    }
}

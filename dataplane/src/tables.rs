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
        }
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

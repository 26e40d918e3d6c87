//! Compiled network policy: the read-only lookup structures a worker consults.
//!
//! What it does:
//! - [`PolicyTables`]: one revision of compiled policy. It maps addresses to security
//!   identities (local endpoints and host addresses exactly, everything else through a
//!   longest-prefix match over the CIDRs the policies mention, falling back to `world`), and holds
//!   for every local endpoint identity an ingress and an egress [`DirectionTable`] keyed by
//!   `(peer identity, protocol, port)`.
//! - [`evaluate`]: the verdict of both directions for a 5-tuple, with the deciding rule per
//!   direction: what the pipeline's policy stage asks of a new flow, what its conntrack stage
//!   asks again of a tracked flow after a policy change, and what `policy trace` shows.
//!
//! What it does not do: parse YAML, select endpoints or allocate identities (that is
//! `xylem_policy`, which builds these tables with [`PolicyTablesBuilder`]), track
//! connections (`crate::conntrack`, driven by `crate::pipeline::flow`), parse frames, count drops
//! or emit monitor events (the worker maps [`PolicyVerdict`] onto its counters).
//!
//! # Lookup cost
//! Resolving a peer is one hash probe, or (for addresses outside the cluster) one probe per
//! distinct CIDR prefix length present (at most 33). A direction lookup probes at most 8 exact
//! keys (`{peer, any} × {proto, any} × {port, any}`; a bitmask skips the combinations no rule
//! uses) and, only for `(peer, protocol)` pairs that have wide port ranges, one binary search
//! over that pair's range segments. Port ranges up to [`EXPAND_RANGE_LIMIT`] ports are expanded
//! into exact keys; wider ones become disjoint segments. None of this depends on the number of
//! rules. Established flows do not look at policy at all unless the revision changed.

use std::net::Ipv4Addr;

use rustc_hash::FxHashMap;

use crate::conntrack::FlowKey;
use crate::dns::{DnsRule, DnsTables, FqdnScope};
use crate::learned::LearnedTable;
use crate::wire::ip::proto;

/// A numeric security identity.
pub type Identity = u32;

/// Reserved identities (numbered as in Cilium) and identity ranges.
pub mod identity {
    use super::Identity;
    /// Wildcard peer in a [`super::DirectionTable`] key: matches every peer (entity `all`, or a
    /// rule with ports but no peer). Never the identity of an address.
    pub const ANY: Identity = 0;
    /// The node itself: the gateway address and the host port.
    pub const HOST: Identity = 1;
    /// Everything outside the cluster not matched by a policy CIDR.
    pub const WORLD: Identity = 2;
    /// First identity given to a set of endpoint labels.
    pub const FIRST_ENDPOINT: Identity = 256;
    /// First identity given to a `toFQDNs` selector, as the peer of its rules in an egress
    /// table. Never the identity of an address: the addresses a selector selects are learned
    /// from DNS answers per endpoint (see `crate::dns::rules`). Endpoint identities stay below.
    pub const FIRST_FQDN: Identity = 1 << 23;
    /// First identity given to a policy CIDR prefix (as Cilium's local CIDR identities).
    pub const FIRST_CIDR: Identity = 1 << 24;

    /// Whether `id` denotes addresses outside the cluster (`world` or a CIDR identity).
    pub fn is_world(id: Identity) -> bool {
        id == WORLD || id >= FIRST_CIDR
    }
}

/// Wider port ranges are kept as segments, narrower ones expanded into exact keys.
pub const EXPAND_RANGE_LIMIT: u32 = 64;

/// The "no port / any port" value in a key.
const ANY_PORT: u32 = 0x1_0000;
/// Protocol wildcard in a key.
pub const PROTO_ANY: u8 = 0;

/// Which section of a policy rule a compiled entry came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Section {
    /// `ingress`.
    Ingress,
    /// `egress`.
    Egress,
    /// `ingressDeny`.
    IngressDeny,
    /// `egressDeny`.
    EgressDeny,
    /// No policy's: the agent's `policy.allow_localhost: always`, which allows the node (the
    /// `host` identity) into every local endpoint whose ingress is enforced.
    AllowLocalhost,
}

impl Section {
    /// The field name as written in YAML (the policy's, or the agent configuration's).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
            Self::IngressDeny => "ingressDeny",
            Self::EgressDeny => "egressDeny",
            Self::AllowLocalhost => "policy.allow_localhost",
        }
    }

    /// Whether rules of this section deny.
    pub fn is_deny(self) -> bool {
        matches!(self, Self::IngressDeny | Self::EgressDeny)
    }
}

/// A traffic direction, seen from the local endpoint whose table is consulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Towards the endpoint.
    Ingress,
    /// From the endpoint.
    Egress,
}

/// Index of a rule in [`PolicyTables::origin`].
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct RuleRef(pub u32);

/// Where a compiled rule came from: enough to name it in `policy trace` and monitor events.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleOrigin {
    /// `namespace/name` of the policy.
    pub policy: String,
    /// Index in `specs` (0 for `spec`).
    pub spec: usize,
    /// The section.
    pub section: Section,
    /// Index of the rule within its section.
    pub index: usize,
}

impl std::fmt::Display for RuleOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.section == Section::AllowLocalhost {
            return f.write_str("the agent's policy.allow_localhost: always");
        }
        write!(
            f,
            "{} spec[{}] {}[{}]",
            self.policy,
            self.spec,
            self.section.as_str(),
            self.index
        )
    }
}

/// The rules matching one key: the first deny and the first allow (lowest [`RuleRef`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cell {
    deny: Option<RuleRef>,
    allow: Option<RuleRef>,
}

impl Cell {
    fn merge(&mut self, o: Cell) {
        self.deny = min_ref(self.deny, o.deny);
        self.allow = min_ref(self.allow, o.allow);
    }
}

fn min_ref(a: Option<RuleRef>, b: Option<RuleRef>) -> Option<RuleRef> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

#[inline]
fn key(peer: Identity, proto: u8, port: u32) -> u64 {
    ((peer as u64) << 32) | ((proto as u64) << 24) | port as u64
}

#[inline]
fn pair_key(peer: Identity, proto: u8) -> u64 {
    ((peer as u64) << 8) | proto as u64
}

/// A port range segment: ports `start..` up to the next segment's start have `cell`.
#[derive(Clone, Copy, Debug)]
struct Segment {
    start: u32,
    cell: Cell,
}

/// The verdict of one direction's table for one flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "verdict", content = "rule")]
pub enum DirVerdict {
    /// No policy selects the endpoint in this direction: everything is allowed.
    NotEnforced,
    /// An allow rule matched (and no deny rule).
    Allowed(RuleRef),
    /// A deny rule matched.
    DenyRule(RuleRef),
    /// Enforced and no rule allowed it.
    DefaultDeny,
}

impl DirVerdict {
    /// The stable kebab-case name (the `verdict` field of its JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotEnforced => "not-enforced",
            Self::Allowed(_) => "allowed",
            Self::DenyRule(_) => "deny-rule",
            Self::DefaultDeny => "default-deny",
        }
    }

    /// Whether traffic passes.
    pub fn allows(self) -> bool {
        matches!(self, Self::NotEnforced | Self::Allowed(_))
    }
}

/// The compiled rules of one direction of one endpoint identity.
#[derive(Clone, Debug, Default)]
pub struct DirectionTable {
    enforced: bool,
    exact: FxHashMap<u64, Cell>,
    /// Which of the 8 `(peer any?, proto any?, port any?)` combinations have exact keys.
    present: u8,
    ranges: FxHashMap<u64, Box<[Segment]>>,
    pending: Vec<(Identity, u8, u32, u32, Cell)>,
}

impl DirectionTable {
    /// An empty table; `enforced` makes the direction default-deny.
    pub fn new(enforced: bool) -> Self {
        Self {
            enforced,
            ..Self::default()
        }
    }

    /// Whether this direction is default-deny.
    pub fn enforced(&self) -> bool {
        self.enforced
    }

    /// Sets whether this direction is default-deny.
    pub fn set_enforced(&mut self, enforced: bool) {
        self.enforced = enforced;
    }

    /// Exact keys stored (for sizing and tests).
    pub fn exact_keys(&self) -> usize {
        self.exact.len()
    }

    /// Adds a rule entry: `peer` ([`identity::ANY`] for all), `proto` ([`PROTO_ANY`] for all),
    /// ports `lo..=hi` (`None` for all ports, which also matches port-less protocols such as
    /// ICMP), allowing or (`deny`) denying, decided by `rule`. Wide ranges take effect at
    /// [`Self::seal`], which [`PolicyTablesBuilder::build`] calls.
    pub fn add(
        &mut self,
        peer: Identity,
        proto: u8,
        ports: Option<(u16, u16)>,
        deny: bool,
        rule: RuleRef,
    ) {
        let cell = if deny {
            Cell {
                deny: Some(rule),
                allow: None,
            }
        } else {
            Cell {
                deny: None,
                allow: Some(rule),
            }
        };
        match ports {
            None => self.add_exact(peer, proto, ANY_PORT, cell),
            Some((lo, hi)) if (hi as u32 - lo as u32) < EXPAND_RANGE_LIMIT => {
                for p in lo..=hi {
                    self.add_exact(peer, proto, p as u32, cell);
                }
            }
            Some((lo, hi)) => self.pending.push((peer, proto, lo as u32, hi as u32, cell)),
        }
    }

    fn add_exact(&mut self, peer: Identity, proto: u8, port: u32, cell: Cell) {
        self.exact
            .entry(key(peer, proto, port))
            .or_default()
            .merge(cell);
        self.present |= combo(peer == identity::ANY, proto == PROTO_ANY, port == ANY_PORT);
    }

    /// Turns the wide ranges added so far into segments. Idempotent.
    pub fn seal(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut by_pair: FxHashMap<u64, Vec<(u32, u32, Cell)>> = FxHashMap::default();
        for (peer, proto, lo, hi, cell) in self.pending.drain(..) {
            by_pair
                .entry(pair_key(peer, proto))
                .or_default()
                .push((lo, hi, cell));
        }
        for (pk, mut list) in by_pair {
            // Keep the segments already built for this pair.
            if let Some(old) = self.ranges.remove(&pk) {
                for (i, s) in old.iter().enumerate() {
                    let end = old.get(i + 1).map_or(ANY_PORT, |n| n.start);
                    if s.cell != Cell::default() {
                        list.push((s.start, end - 1, s.cell));
                    }
                }
            }
            let mut bounds: Vec<u32> = list.iter().flat_map(|&(l, h, _)| [l, h + 1]).collect();
            bounds.push(0);
            bounds.sort_unstable();
            bounds.dedup();
            let mut segs: Vec<Segment> = Vec::with_capacity(bounds.len());
            for &b in &bounds {
                let mut cell = Cell::default();
                for &(l, h, c) in &list {
                    if l <= b && b <= h {
                        cell.merge(c);
                    }
                }
                if segs.last().is_none_or(|s| s.cell != cell) {
                    segs.push(Segment { start: b, cell });
                }
            }
            self.ranges.insert(pk, segs.into_boxed_slice());
        }
    }

    /// The verdict for traffic with `peer` on `proto` to `port` (`None` for port-less
    /// protocols).
    #[inline]
    pub fn lookup(&self, peer: Identity, proto: u8, port: Option<u16>) -> DirVerdict {
        if !self.enforced && self.exact.is_empty() && self.ranges.is_empty() {
            return DirVerdict::NotEnforced;
        }
        let mut acc = Cell::default();
        let port_k = port.map_or(ANY_PORT, u32::from);
        for c in 0..8u8 {
            if self.present & (1 << c) == 0 {
                continue;
            }
            let (pa, xa, oa) = (c & 4 != 0, c & 2 != 0, c & 1 != 0);
            if !oa && port.is_none() {
                continue;
            }
            let k = key(
                if pa { identity::ANY } else { peer },
                if xa { PROTO_ANY } else { proto },
                if oa { ANY_PORT } else { port_k },
            );
            if let Some(cell) = self.exact.get(&k) {
                acc.merge(*cell);
            }
        }
        if let (Some(p), false) = (port, self.ranges.is_empty()) {
            for pk in [
                pair_key(peer, proto),
                pair_key(peer, PROTO_ANY),
                pair_key(identity::ANY, proto),
                pair_key(identity::ANY, PROTO_ANY),
            ] {
                if let Some(segs) = self.ranges.get(&pk) {
                    let i = segs.partition_point(|s| s.start <= p as u32);
                    if i > 0 {
                        acc.merge(segs[i - 1].cell);
                    }
                }
            }
        }
        if let Some(r) = acc.deny {
            DirVerdict::DenyRule(r)
        } else if let Some(r) = acc.allow {
            DirVerdict::Allowed(r)
        } else if self.enforced {
            DirVerdict::DefaultDeny
        } else {
            DirVerdict::NotEnforced
        }
    }
}

#[inline]
fn combo(peer_any: bool, proto_any: bool, port_any: bool) -> u8 {
    1 << ((peer_any as u8) << 2 | (proto_any as u8) << 1 | port_any as u8)
}

/// The ingress and egress tables of one endpoint identity.
#[derive(Clone, Debug, Default)]
pub struct EndpointPolicy {
    /// Traffic towards the endpoint.
    pub ingress: DirectionTable,
    /// Traffic from the endpoint.
    pub egress: DirectionTable,
}

/// A local endpoint: its identity and the index of its [`EndpointPolicy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LocalEndpoint {
    identity: Identity,
    policy: u32,
}

/// Longest-prefix match over IPv4 prefixes: one hash map per prefix length present, probed from
/// the longest length down (at most 33 probes; typically a handful).
#[derive(Clone, Debug)]
struct Lpm {
    /// Prefix lengths present, longest first.
    lens: Vec<u8>,
    by_len: [FxHashMap<u32, Identity>; 33],
}

impl Default for Lpm {
    fn default() -> Self {
        Self {
            lens: Vec::new(),
            by_len: std::array::from_fn(|_| FxHashMap::default()),
        }
    }
}

#[inline]
fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

impl Lpm {
    fn insert(&mut self, net: u32, len: u8, id: Identity) {
        self.by_len[len as usize].insert(net & mask(len), id);
        if !self.lens.contains(&len) {
            self.lens.push(len);
            self.lens.sort_unstable_by(|a, b| b.cmp(a));
        }
    }

    #[inline]
    fn lookup(&self, ip: u32) -> Option<Identity> {
        self.lens
            .iter()
            .find_map(|&l| self.by_len[l as usize].get(&(ip & mask(l))).copied())
    }
}

/// One revision of compiled policy. Built by [`PolicyTablesBuilder`]; read-only afterwards.
#[derive(Clone, Debug)]
pub struct PolicyTables {
    revision: u64,
    endpoints: FxHashMap<u32, LocalEndpoint>,
    ipcache: FxHashMap<u32, Identity>,
    cidrs: Lpm,
    policies: Vec<EndpointPolicy>,
    origins: Vec<RuleOrigin>,
    dns: DnsTables,
}

impl Default for PolicyTables {
    /// Revision 0, no endpoint, no rule: everything allowed.
    fn default() -> Self {
        PolicyTablesBuilder::new(0).build()
    }
}

impl PolicyTables {
    /// The policy revision (increases with every published change).
    #[inline]
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The identity of `ip`: a local endpoint's, a host address's (`host`), a policy CIDR's, or
    /// `world`.
    #[inline]
    pub fn identity_of(&self, ip: Ipv4Addr) -> Identity {
        let ip = ip.to_bits();
        if let Some(e) = self.endpoints.get(&ip) {
            return e.identity;
        }
        if let Some(&id) = self.ipcache.get(&ip) {
            return id;
        }
        self.cidrs.lookup(ip).unwrap_or(identity::WORLD)
    }

    /// Whether `ip` is a local endpoint, and if so the tables of its identity.
    #[inline]
    pub fn endpoint(&self, ip: Ipv4Addr) -> Option<(Identity, &EndpointPolicy)> {
        self.endpoints
            .get(&ip.to_bits())
            .map(|e| (e.identity, &self.policies[e.policy as usize]))
    }

    /// Where rule `r` came from.
    pub fn origin(&self, r: RuleRef) -> Option<&RuleOrigin> {
        self.origins.get(r.0 as usize)
    }

    /// Every rule origin, indexed by [`RuleRef`].
    pub fn origins(&self) -> &[RuleOrigin] {
        &self.origins
    }

    /// The DNS rules and FQDN selectors of this revision.
    #[inline]
    pub fn dns(&self) -> &DnsTables {
        &self.dns
    }
}

/// Builds a [`PolicyTables`]: the control side's interface to the dataplane's policy.
#[derive(Debug)]
pub struct PolicyTablesBuilder {
    t: PolicyTables,
    by_identity: FxHashMap<Identity, u32>,
}

impl PolicyTablesBuilder {
    /// An empty builder for `revision`.
    pub fn new(revision: u64) -> Self {
        Self {
            t: PolicyTables {
                revision,
                endpoints: FxHashMap::default(),
                ipcache: FxHashMap::default(),
                cidrs: Lpm::default(),
                policies: Vec::new(),
                origins: Vec::new(),
                dns: DnsTables::default(),
            },
            by_identity: FxHashMap::default(),
        }
    }

    /// Registers a rule origin; entries added with the returned [`RuleRef`] are attributed to it.
    /// Register rules in precedence order: at equal verdict the lowest reference is reported.
    pub fn add_origin(&mut self, o: RuleOrigin) -> RuleRef {
        self.t.origins.push(o);
        RuleRef(self.t.origins.len() as u32 - 1)
    }

    /// The tables of local endpoint identity `id`, created (allowing everything) on first use.
    pub fn endpoint_policy(&mut self, id: Identity) -> &mut EndpointPolicy {
        let n = self.t.policies.len() as u32;
        let i = *self.by_identity.entry(id).or_insert(n);
        if i == n {
            self.t.policies.push(EndpointPolicy::default());
        }
        &mut self.t.policies[i as usize]
    }

    /// Declares a local endpoint at `ip` with identity `id`.
    pub fn add_endpoint(&mut self, ip: Ipv4Addr, id: Identity) {
        self.endpoint_policy(id);
        let policy = self.by_identity[&id];
        self.t.endpoints.insert(
            ip.to_bits(),
            LocalEndpoint {
                identity: id,
                policy,
            },
        );
    }

    /// Maps a non-endpoint address to an identity (the gateway and host-port addresses to
    /// [`identity::HOST`]).
    pub fn add_address(&mut self, ip: Ipv4Addr, id: Identity) {
        self.t.ipcache.insert(ip.to_bits(), id);
    }

    /// Maps the prefix `net/len` to CIDR identity `id` for addresses that are neither endpoints
    /// nor host addresses.
    pub fn add_cidr(&mut self, net: Ipv4Addr, len: u8, id: Identity) {
        self.t.cidrs.insert(net.to_bits(), len.min(32), id);
    }

    /// Adds a `rules.dns` entry of local endpoint identity `endpoint`. The flow it covers must
    /// also be allowed by an entry of the endpoint's egress table: this only says its DNS is
    /// inspected, and which names it may ask for.
    pub fn add_dns_rule(&mut self, endpoint: Identity, rule: DnsRule) {
        self.t.dns.add_rule(endpoint, rule);
    }

    /// Adds a `toFQDNs` selector of the local endpoint at `ip`.
    pub fn add_fqdn_scope(&mut self, ip: Ipv4Addr, scope: FqdnScope) {
        self.t.dns.add_scope(ip, scope);
    }

    /// Finishes the tables.
    pub fn build(mut self) -> PolicyTables {
        for p in &mut self.t.policies {
            p.ingress.seal();
            p.egress.seal();
        }
        self.t
    }
}

/// Why the policy (or the commit of a new flow) dropped a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyDropReason {
    /// The direction is default-deny and no rule allowed the flow.
    PolicyDenied,
    /// A deny rule matched.
    PolicyDenyRule,
    /// The flow is allowed but the conntrack table is full.
    CtFull,
    /// The flow is allowed but its endpoint has its limit of conntrack entries.
    CtEndpointLimit,
}

impl PolicyDropReason {
    /// The stable kebab-case name (the monitor's and the counters' drop reason).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PolicyDenied => "policy-denied",
            Self::PolicyDenyRule => "policy-deny-rule",
            Self::CtFull => "ct-full",
            Self::CtEndpointLimit => "ct-endpoint-limit",
        }
    }
}

/// The verdict of the conntrack and policy stages for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyVerdict {
    /// A packet of a tracked connection in its original direction.
    Established,
    /// A reply of a tracked connection.
    Reply,
    /// An ICMP error quoting a tracked connection.
    Related,
    /// A new connection allowed by policy; it is now tracked.
    New,
    /// Allowed by policy but not tracked: a TCP RST or an ICMP error with no connection, or a
    /// packet that goes nowhere (no route, TTL expired), which creates no state.
    Untracked,
    /// Dropped.
    Drop {
        /// Why.
        reason: PolicyDropReason,
        /// The direction that refused (`None` for `ct-full` and `ct-endpoint-limit`).
        direction: Option<Direction>,
        /// The deny rule that matched, for `policy-deny-rule`.
        rule: Option<RuleRef>,
    },
}

impl PolicyVerdict {
    /// Whether the packet passes.
    pub fn allows(&self) -> bool {
        !matches!(self, Self::Drop { .. })
    }
}

/// The policy verdict of a flow in both directions, without conntrack (see [`evaluate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Evaluation {
    /// Identity of the source address.
    pub src_identity: Identity,
    /// Identity of the destination address.
    pub dst_identity: Identity,
    /// The source endpoint's egress verdict (`None`: the source is not a local endpoint).
    pub egress: Option<DirVerdict>,
    /// The destination endpoint's ingress verdict (`None`: not a local endpoint).
    pub ingress: Option<DirVerdict>,
}

impl Evaluation {
    /// The drop this evaluation implies, if any: egress is checked before ingress.
    pub fn drop(&self) -> Option<PolicyVerdict> {
        for (dir, v) in [
            (Direction::Egress, self.egress),
            (Direction::Ingress, self.ingress),
        ] {
            match v {
                Some(DirVerdict::DenyRule(r)) => {
                    return Some(PolicyVerdict::Drop {
                        reason: PolicyDropReason::PolicyDenyRule,
                        direction: Some(dir),
                        rule: Some(r),
                    });
                }
                Some(DirVerdict::DefaultDeny) => {
                    return Some(PolicyVerdict::Drop {
                        reason: PolicyDropReason::PolicyDenied,
                        direction: Some(dir),
                        rule: None,
                    });
                }
                _ => {}
            }
        }
        None
    }
}

/// The addresses endpoints learned from DNS answers, as [`evaluate_with`] consults them for
/// `toFQDNs` rules.
#[derive(Clone, Copy, Debug)]
pub struct Learned<'a> {
    /// The FQDN table.
    pub table: &'a LearnedTable,
    /// Now, on the table's clock.
    pub now: u64,
    /// For a flow already open (a tracked flow judged again after a policy change): an
    /// address whose fact has expired but is still held counts, so an open connection outlives
    /// its address's TTL, as new connections do not.
    pub established: bool,
}

/// The policy verdict for a packet with 5-tuple `key`, ignoring conntrack and learned
/// addresses: the source's egress table (if it is a local endpoint) and the destination's
/// ingress table (likewise). The port looked up is the destination port for TCP and UDP, none
/// for other protocols.
#[inline]
pub fn evaluate(t: &PolicyTables, key: &FlowKey) -> Evaluation {
    evaluate_with(t, key, None)
}

/// [`evaluate`], where a source endpoint's egress that no rule allows may still be allowed by
/// a `toFQDNs` rule for an address the endpoint learned (`learned`; `None`: none counts).
#[inline]
pub fn evaluate_with(t: &PolicyTables, key: &FlowKey, learned: Option<Learned<'_>>) -> Evaluation {
    let port = match key.proto {
        proto::TCP | proto::UDP => Some(key.dport),
        _ => None,
    };
    let src_ep = t.endpoint(key.src);
    let dst_ep = t.endpoint(key.dst);
    let src_identity = src_ep.map_or_else(|| t.identity_of(key.src), |e| e.0);
    let dst_identity = dst_ep.map_or_else(|| t.identity_of(key.dst), |e| e.0);
    let egress = src_ep.map(|(_, p)| {
        let v = p.egress.lookup(dst_identity, key.proto, port);
        match (v, learned) {
            (DirVerdict::DefaultDeny, Some(l)) => fqdn_egress(t, p, key, port, l).unwrap_or(v),
            _ => v,
        }
    });
    Evaluation {
        src_identity,
        dst_identity,
        egress,
        ingress: dst_ep.map(|(_, p)| p.ingress.lookup(src_identity, key.proto, port)),
    }
}

/// The egress verdict through a `toFQDNs` rule of the endpoint at `key.src` for an address it
/// learned, if one allows the flow. Out of line: only flows no other rule allows get here.
#[inline(never)]
fn fqdn_egress(
    t: &PolicyTables,
    p: &EndpointPolicy,
    key: &FlowKey,
    port: Option<u16>,
    l: Learned<'_>,
) -> Option<DirVerdict> {
    t.dns().scopes(key.src).iter().find_map(|s| {
        let held = if l.established {
            l.table.lookup_held(s.scope, key.dst)
        } else {
            l.table.lookup(l.now, s.scope, key.dst)
        };
        held?;
        match p.egress.lookup(s.peer, key.proto, port) {
            v @ DirVerdict::Allowed(_) => Some(v),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
    const EXT: Ipv4Addr = Ipv4Addr::new(8, 8, 8, 8);
    const ID_CLIENT: Identity = 300;
    const ID_SERVER: Identity = 301;

    fn origin(b: &mut PolicyTablesBuilder, section: Section, index: usize) -> RuleRef {
        b.add_origin(RuleOrigin {
            policy: "default/p".into(),
            spec: 0,
            section,
            index,
        })
    }

    #[test]
    fn many_wide_ranges_on_one_key() {
        let mut b = PolicyTablesBuilder::new(1);
        b.add_endpoint(SERVER, ID_SERVER);
        let r = origin(&mut b, Section::Ingress, 0);
        let d = origin(&mut b, Section::IngressDeny, 0);
        let ing = &mut b.endpoint_policy(ID_SERVER).ingress;
        ing.set_enforced(true);
        // 500 disjoint 100-port ranges: 0-99 allowed, 100-199 not, 200-299 allowed, ...
        for i in 0..320u16 {
            ing.add(
                ID_CLIENT,
                proto::TCP,
                Some((i * 200, i * 200 + 99)),
                false,
                r,
            );
        }
        ing.add(ID_CLIENT, proto::TCP, Some((20_050, 20_149)), true, d);
        let t = b.build();
        let ing = &t.endpoint(SERVER).unwrap().1.ingress;
        for port in (0..64_000u16).step_by(37) {
            let want = if (20_050..=20_149).contains(&port) {
                DirVerdict::DenyRule(d)
            } else if port % 200 < 100 {
                DirVerdict::Allowed(r)
            } else {
                DirVerdict::DefaultDeny
            };
            assert_eq!(
                ing.lookup(ID_CLIENT, proto::TCP, Some(port)),
                want,
                "{port}"
            );
        }
        assert_eq!(
            ing.lookup(ID_CLIENT, proto::TCP, Some(65_535)),
            DirVerdict::DefaultDeny
        );
    }

    #[test]
    fn wide_ranges_and_cidrs() {
        let mut b = PolicyTablesBuilder::new(1);
        b.add_endpoint(SERVER, ID_SERVER);
        b.add_cidr(Ipv4Addr::new(8, 0, 0, 0), 8, identity::FIRST_CIDR);
        b.add_cidr(Ipv4Addr::new(8, 8, 0, 0), 16, identity::FIRST_CIDR + 1);
        let r0 = origin(&mut b, Section::Egress, 0);
        let r1 = origin(&mut b, Section::EgressDeny, 0);
        let e = &mut b.endpoint_policy(ID_SERVER).egress;
        e.set_enforced(true);
        e.add(
            identity::FIRST_CIDR,
            PROTO_ANY,
            Some((1000, 9000)),
            false,
            r0,
        );
        e.add(
            identity::FIRST_CIDR + 1,
            proto::TCP,
            Some((1000, 9000)),
            false,
            r0,
        );
        e.add(
            identity::FIRST_CIDR + 1,
            proto::TCP,
            Some((2000, 2999)),
            true,
            r1,
        );
        let t = b.build();
        assert_eq!(t.identity_of(EXT), identity::FIRST_CIDR + 1);
        assert_eq!(
            t.identity_of(Ipv4Addr::new(8, 1, 1, 1)),
            identity::FIRST_CIDR
        );
        assert_eq!(t.identity_of(Ipv4Addr::new(9, 1, 1, 1)), identity::WORLD);
        let eg = &t.endpoint(SERVER).unwrap().1.egress;
        let f = identity::FIRST_CIDR + 1;
        assert_eq!(eg.lookup(f, proto::TCP, Some(999)), DirVerdict::DefaultDeny);
        assert_eq!(
            eg.lookup(f, proto::TCP, Some(1000)),
            DirVerdict::Allowed(r0)
        );
        assert_eq!(
            eg.lookup(f, proto::TCP, Some(1999)),
            DirVerdict::Allowed(r0)
        );
        assert_eq!(
            eg.lookup(f, proto::TCP, Some(2000)),
            DirVerdict::DenyRule(r1)
        );
        assert_eq!(
            eg.lookup(f, proto::TCP, Some(2999)),
            DirVerdict::DenyRule(r1)
        );
        assert_eq!(
            eg.lookup(f, proto::TCP, Some(3000)),
            DirVerdict::Allowed(r0)
        );
        assert_eq!(
            eg.lookup(f, proto::TCP, Some(9000)),
            DirVerdict::Allowed(r0)
        );
        assert_eq!(
            eg.lookup(f, proto::TCP, Some(9001)),
            DirVerdict::DefaultDeny
        );
        assert_eq!(
            eg.lookup(f, proto::UDP, Some(5000)),
            DirVerdict::DefaultDeny
        );
        let g = identity::FIRST_CIDR;
        assert_eq!(
            eg.lookup(g, proto::UDP, Some(5000)),
            DirVerdict::Allowed(r0)
        );
        assert_eq!(eg.lookup(g, proto::ICMP, None), DirVerdict::DefaultDeny);
    }
}

//! The compiled DNS side of a policy revision: which flows have their DNS inspected and what
//! names they may ask for (`rules.dns`), and which learned addresses an endpoint's `toFQDNs`
//! rules let it reach.
//!
//! What it does:
//! - [`DnsRule`]: one `toPorts` entry carrying `rules.dns`, expanded to one peer identity, as
//!   the policy compiler expands every rule. Per local endpoint identity, keyed like its
//!   egress table by `(peer identity, protocol, port)`: a flow matching any of them is
//!   inspected, and a query passes when any of them allows its name.
//! - [`FqdnScope`]: one `toFQDNs` selector of one local endpoint (by address): the scope its
//!   learned addresses are kept under in the FQDN table (`crate::learned`), and the peer
//!   identity its rules use in the endpoint's egress table. Scopes are numbered by the control
//!   side, never reused while the agent runs, so an address learned by one pod is never
//!   an allowed destination of another.
//!
//! What it does not do: parse policy (`xylem_policy` builds these), look at packets (the
//! pipeline's DNS stage), or hold learned addresses.

use std::net::Ipv4Addr;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::NameSelector;
use crate::policy::{Identity, PROTO_ANY, RuleRef, identity};

/// A `toPorts` entry with `rules.dns`, for one peer identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsRule {
    /// The peer ([`identity::ANY`] for every peer).
    pub peer: Identity,
    /// TCP, UDP, or [`PROTO_ANY`].
    pub proto: u8,
    /// Destination ports, inclusive.
    pub ports: (u16, u16),
    /// The names queries may ask for.
    pub selectors: Arc<[NameSelector]>,
    /// The rule it came from (as `policy trace` names rules).
    pub rule: RuleRef,
}

impl DnsRule {
    /// Whether a flow to `peer` on `proto` port `port` is under this rule.
    #[inline]
    pub fn applies(&self, peer: Identity, proto: u8, port: u16) -> bool {
        (self.peer == identity::ANY || self.peer == peer)
            && (self.proto == PROTO_ANY || self.proto == proto)
            && (self.ports.0..=self.ports.1).contains(&port)
    }

    /// Whether it allows a query for `name` (as the wire layer gives names).
    #[inline]
    pub fn allows(&self, name: &[u8]) -> bool {
        self.selectors.iter().any(|s| s.matches(name))
    }
}

/// One `toFQDNs` selector of one local endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FqdnScope {
    /// The scope of its facts in the FQDN table.
    pub scope: u32,
    /// The identity its rules use as the peer in the endpoint's egress table.
    pub peer: Identity,
    /// The names whose addresses it selects.
    pub selector: NameSelector,
}

/// The DNS side of one policy revision. See the module documentation.
#[derive(Clone, Debug, Default)]
pub struct DnsTables {
    rules: FxHashMap<Identity, Box<[DnsRule]>>,
    scopes: FxHashMap<u32, Box<[FqdnScope]>>,
    /// The port ranges any rule covers (usually just 53): the first test the stage makes of
    /// every packet on a node with DNS rules, so that other traffic pays no hash lookup.
    ports: Vec<(u16, u16)>,
}

impl DnsTables {
    /// Whether no endpoint has DNS rules or FQDN selectors (the DNS stage then never runs).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.scopes.is_empty()
    }

    /// Whether any endpoint's DNS is inspected.
    #[inline]
    pub fn inspects_any(&self) -> bool {
        !self.rules.is_empty()
    }

    /// Whether any rule covers server port `port`.
    #[inline]
    pub fn covers_port(&self, port: u16) -> bool {
        self.ports.iter().any(|&(lo, hi)| lo <= port && port <= hi)
    }

    /// The DNS rules of local endpoint identity `endpoint`.
    #[inline]
    pub fn rules(&self, endpoint: Identity) -> &[DnsRule] {
        self.rules.get(&endpoint).map_or(&[], |r| r)
    }

    /// Whether a flow from `endpoint` to `peer` on `proto` port `port` is inspected.
    #[inline]
    pub fn inspects(&self, endpoint: Identity, peer: Identity, proto: u8, port: u16) -> bool {
        self.rules(endpoint)
            .iter()
            .any(|r| r.applies(peer, proto, port))
    }

    /// The first rule for that flow that allows a query for `name`, if any.
    #[inline]
    pub fn allowing(
        &self,
        endpoint: Identity,
        (peer, proto, port): (Identity, u8, u16),
        name: &[u8],
    ) -> Option<RuleRef> {
        self.rules(endpoint)
            .iter()
            .find(|r| r.applies(peer, proto, port) && r.allows(name))
            .map(|r| r.rule)
    }

    /// The FQDN selectors of the local endpoint at `ip`.
    #[inline]
    pub fn scopes(&self, ip: Ipv4Addr) -> &[FqdnScope] {
        self.scopes.get(&ip.to_bits()).map_or(&[], |s| s)
    }

    /// Every endpoint's FQDN selectors (the control side: restoring and listing the cache).
    pub fn all_scopes(&self) -> impl Iterator<Item = (Ipv4Addr, &FqdnScope)> {
        self.scopes
            .iter()
            .flat_map(|(ip, s)| s.iter().map(move |s| (Ipv4Addr::from_bits(*ip), s)))
    }

    /// Adds a DNS rule of local endpoint identity `endpoint`.
    pub fn add_rule(&mut self, endpoint: Identity, rule: DnsRule) {
        if !self.ports.contains(&rule.ports) {
            self.ports.push(rule.ports);
        }
        let mut v = self
            .rules
            .remove(&endpoint)
            .map(Vec::from)
            .unwrap_or_default();
        if !v.contains(&rule) {
            v.push(rule);
        }
        self.rules.insert(endpoint, v.into());
    }

    /// Adds an FQDN selector of the local endpoint at `ip`.
    pub fn add_scope(&mut self, ip: Ipv4Addr, scope: FqdnScope) {
        let mut v = self
            .scopes
            .remove(&ip.to_bits())
            .map(Vec::from)
            .unwrap_or_default();
        if !v.iter().any(|s| s.scope == scope.scope) {
            v.push(scope);
        }
        self.scopes.insert(ip.to_bits(), v.into());
    }
}

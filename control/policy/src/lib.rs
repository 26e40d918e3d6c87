//! # xylem-policy
//!
//! Network policy on the control side: CiliumNetworkPolicy YAML in, compiled
//! [`xylem_dataplane::policy::PolicyTables`] out, and `policy trace`. Pure: no I/O, no threads,
//! no async runtime, so the agent, the CLI, the replay and the benchmarks all link it alone.
//!
//! What it does:
//! - [`parse_policies`]: reads one document, several (`---`), or a `List`, accepting exactly the
//!   subset below and rejecting anything else with an [`Error`] that names the document and the
//!   field. All or nothing: one bad field rejects the whole input.
//! - [`IdentityAllocator`]: one numeric security identity per distinct endpoint label set
//!   (namespace included); equal label sets share it.
//! - [`compile`]: policies + endpoints + host addresses → per-identity tables keyed by
//!   `(peer identity, protocol, port)` and a longest-prefix match over the policy CIDRs.
//! - [`trace`]: the verdict for `src → dst:port/proto` with the deciding rule of each direction.
//!
//! What it does not do: publish tables to workers, track connections (that is
//! `xylem_dataplane::conntrack` and the pipeline's conntrack and policy stages), serve the API or keep
//! policies across restarts.
//!
//! # Supported subset
//! `apiVersion: cilium.io/v2`, `kind: CiliumNetworkPolicy` (or `kind: List` of them);
//! `metadata.{name, namespace, labels, annotations}`; `spec` and/or `specs` with
//! `endpointSelector` (`matchLabels`, `matchExpressions` with In/NotIn/Exists/DoesNotExist),
//! `description`, `ingress`/`ingressDeny` (`fromEndpoints`, `fromCIDR`, `fromCIDRSet` with
//! `except`, `fromEntities`, `toPorts`), `egress`/`egressDeny` (the `to*` equivalents);
//! entities `world`, `cluster`, `host`, `all`; `toPorts[].ports[]` with `port` (a number as a
//! string, `"0"` or absent for all ports), `endPort`, `protocol` TCP/UDP/ANY (default ANY).
//! In `egress` only: `toFQDNs` (each selector `matchName` or `matchPattern`, never both, with
//! no other peer field in the same rule) and `toPorts[].rules.dns` (the same selectors, at
//! least one, on a `toPorts` entry whose every port is explicit and non-zero, in a rule without
//! `toFQDNs`). Other L7 rules (`rules.http`, `rules.kafka`, `rules.l7proto`, `rules.l7`) are
//! rejected, as are `toFQDNs` and `rules` in `ingress` and the deny sections, where Cilium has
//! no DNS rules.
//!
//! # Semantics (as Cilium)
//! - A policy's `endpointSelector` only selects endpoints of its own `metadata.namespace`
//!   (default `default`); peer selectors too, unless they name
//!   `io.kubernetes.pod.namespace` (with or without `k8s:`) in `matchLabels` or
//!   `matchExpressions`.
//! - An endpoint no policy selects allows everything. A selecting rule with a non-empty
//!   `ingress` or `ingressDeny` makes ingress default-deny (`egress` likewise), so
//!   `ingress: [{}]` denies all ingress.
//! - A rule with `toPorts` but no peer applies to all peers; a rule with neither (`{}`) matches
//!   nothing. A rule with several peer fields matches their union.
//! - A deny rule beats any allow rule, whatever the policy.
//! - `host` is the node: the gateway address and the host port's address. `cluster` is every
//!   local endpoint identity plus `host`. `world` is every address that is neither (CIDR rules
//!   match only these addresses, as in Cilium, never an endpoint or the host). `all` is
//!   everything.
//! - Ports apply to TCP and UDP destination ports; a rule with ports never matches ICMP, a rule
//!   without ports matches every protocol.
//! - The node reaches its local endpoints whatever their ingress policy
//!   ([`AllowLocalhost::Always`], the default, as Cilium's `allow-localhost: always`), so kubelet
//!   probes work under default-deny; an `ingressDeny` naming `host` still wins. With
//!   [`AllowLocalhost::Policy`] it needs a rule like any peer (`fromEntities: [host]`).
//! - `rules.dns` makes the endpoint's DNS to that rule's peers on that entry's ports inspected:
//!   a query passes when one of the selectors matches its name. The entry's ports are allowed
//!   to those peers as without `rules`.
//! - `toFQDNs` allows the rule's ports (all, without `toPorts`) to the addresses the selecting
//!   endpoint itself learned from answers, seen under `rules.dns`, to queries whose name the
//!   selector matches, until the answer's TTL (or the agent's minimum) runs out: as in Cilium,
//!   without a `rules.dns` rule for its DNS traffic an endpoint learns nothing. Each distinct
//!   selector gets an identity from
//!   [`FIRST_FQDN`](xylem_dataplane::policy::identity::FIRST_FQDN) up, the peer of its entries in
//!   egress tables, and each (endpoint address, selector) pair a scope from
//!   [`IdentityAllocator::fqdn_scope`], so one pod's learned addresses never open another's
//!   egress. Selectors match as Cilium's: case-insensitive, a trailing dot optional, `*`
//!   matching within one label (`*.a.com` matches `b.a.com`, not `a.com` nor `c.b.a.com`), and
//!   `*` alone every name.

mod compile;
mod fqdn;
mod identity;
mod labels;
mod parse;
mod parse_ports;
mod trace;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_fqdn;
#[cfg(test)]
mod tests_parse;
#[cfg(test)]
mod tests_trace;

use std::net::Ipv4Addr;
use std::sync::Arc;

use xylem_dataplane::dns::NameSelector;

pub use compile::{Compiled, EndpointInfo, EndpointSpec, compile, compile_cluster};
pub use identity::{IdentityAllocator, reserved_name};
pub use labels::{Labels, NAMESPACE_LABEL, Requirement, Selector, endpoint_labels};
pub use parse::{API_VERSION, KIND, parse_cidr, parse_policies};
pub use trace::{DirectionTrace, Trace, TracePeer, trace, trace_tables};

/// Whether the node (the `host` entity) reaches its local endpoints whatever their ingress
/// policy: the agent's `policy.allow_localhost`, as Cilium's `allow-localhost`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllowLocalhost {
    /// Every local endpoint whose ingress is enforced allows the host, on every protocol and
    /// port, as if each had `fromEntities: [host]` after its own rules; an `ingressDeny` naming
    /// the host still wins. So kubelet probes work under default-deny. The default, as in
    /// Cilium.
    #[default]
    Always,
    /// The host reaches an endpoint only where a policy allows it, like any other peer.
    Policy,
}

/// What this crate can fail at.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A network policy document is invalid. Nothing from the input was applied.
    #[error("invalid policy in {document}: {field}: {why}; nothing was imported")]
    Invalid {
        /// Which document: its position in the file (and `items[N]` in a `List`), and the
        /// policy's `namespace/name` when known.
        document: String,
        /// The offending field, as a path (`spec.ingress[0].toPorts[0].ports[0].endPort`).
        field: String,
        /// What is wrong and what would be accepted.
        why: String,
    },
}

impl From<xylem_kube::Error> for Error {
    fn from(e: xylem_kube::Error) -> Self {
        let xylem_kube::Error::Invalid {
            document,
            field,
            why,
        } = e;
        Error::Invalid {
            document,
            field,
            why,
        }
    }
}

/// A validated CiliumNetworkPolicy.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (`default` when absent).
    pub namespace: String,
    /// Where it came from (`document 2 (policy default/web)`), for messages.
    pub document: String,
    /// `spec` then `specs[..]`, in order.
    pub rules: Vec<PolicyRule>,
    /// The document as written, for `policy get`.
    pub source: serde_norway::Value,
}

impl Policy {
    /// `namespace/name`, the policy's key.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One rule (`spec` or an element of `specs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRule {
    /// The endpoints it applies to (the policy's namespace included).
    pub selector: Selector,
    /// `ingress`.
    pub ingress: Vec<PeerRule>,
    /// `ingressDeny`.
    pub ingress_deny: Vec<PeerRule>,
    /// `egress`.
    pub egress: Vec<PeerRule>,
    /// `egressDeny`.
    pub egress_deny: Vec<PeerRule>,
}

/// One element of a direction section: peers (union) × ports (union).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRule {
    /// The peers; empty matches nothing.
    pub peers: Vec<Peer>,
    /// The ports; never empty (all ports and protocols when the rule has no `toPorts`).
    pub ports: Vec<PortSpec>,
    /// The `toPorts` entries that carry `rules.dns` (egress only), in order.
    pub dns: Vec<DnsPorts>,
}

/// A `toPorts` entry carrying `rules.dns`: flows to the rule's peers on these ports have their
/// DNS inspected, and a query passes when one of `names` matches its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsPorts {
    /// The entry's ports, each with an explicit non-zero port (`range` is always `Some`).
    pub ports: Vec<PortSpec>,
    /// `rules.dns`, normalized, in the order written; never empty.
    pub names: Arc<[NameSelector]>,
}

/// A peer of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// `fromEndpoints` / `toEndpoints` (namespace already applied).
    Endpoints(Selector),
    /// `fromCIDR`, `fromCIDRSet` and their `to` forms.
    Cidr {
        /// The prefix.
        net: Cidr,
        /// Prefixes within it that are excluded.
        except: Vec<Cidr>,
    },
    /// `fromEntities` / `toEntities`.
    Entity(Entity),
    /// One `toFQDNs` selector (egress only): the addresses the endpoint learned for names it
    /// matches.
    Fqdn(NameSelector),
}

/// A supported entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entity {
    /// Outside the cluster.
    World,
    /// Every local endpoint and the host.
    Cluster,
    /// The node.
    Host,
    /// Everything.
    All,
}

/// An IPv4 prefix with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    /// The network address.
    pub addr: Ipv4Addr,
    /// The prefix length, 0-32.
    pub len: u8,
}

impl Cidr {
    /// `addr/len` with host bits cleared (`len` clamped to 32).
    pub fn new(addr: Ipv4Addr, len: u8) -> Self {
        let len = len.min(32);
        Self {
            addr: Ipv4Addr::from_bits(addr.to_bits() & Self::mask(len)),
            len,
        }
    }

    fn mask(len: u8) -> u32 {
        if len == 0 { 0 } else { u32::MAX << (32 - len) }
    }

    /// Whether `other` lies within this prefix.
    pub fn contains(&self, other: &Cidr) -> bool {
        other.len >= self.len && other.addr.to_bits() & Self::mask(self.len) == self.addr.to_bits()
    }

    /// The last address of the prefix.
    pub fn last(&self) -> u32 {
        self.addr.to_bits() | !Self::mask(self.len)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// One `toPorts.ports` element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSpec {
    /// IP protocol number, or [`xylem_dataplane::policy::PROTO_ANY`].
    pub proto: u8,
    /// `port..=endPort`; `None` for all ports (and port-less protocols).
    pub range: Option<(u16, u16)>,
}

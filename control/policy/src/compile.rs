//! Policies + endpoints → [`PolicyTables`].
//!
//! Every distinct endpoint label set gets an identity; every prefix a policy mentions (including
//! `except` prefixes) gets a CIDR identity whose addresses are those for which it is the longest
//! match, so a `cidr` with `except` selects exactly the CIDR identities within the `cidr` and
//! not within an `except`. Then, for each local endpoint identity, every rule whose
//! `endpointSelector` matches it adds one entry per (selected peer identity × port spec) to the
//! identity's ingress or egress table. Compilation cost is O(rules × identities); per-packet
//! cost is independent of it (see [`xylem_dataplane::policy`]).
//!
//! DNS: every distinct `toFQDNs` selector gets an FQDN identity, a peer like any other in egress
//! tables; every local endpoint address selected by a rule with that selector gets an
//! [`FqdnScope`] tying the two; every `rules.dns` entry becomes one [`DnsRule`] per selected
//! peer identity and port spec, next to the allow entries it also makes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use xylem_dataplane::dns::{DnsRule, FqdnScope, NameSelector};
use xylem_dataplane::policy::{
    DirectionTable, Identity, PROTO_ANY, PolicyTables, PolicyTablesBuilder, RuleOrigin, RuleRef,
    Section, identity,
};

use super::labels::{Labels, endpoint_labels};
use super::{AllowLocalhost, Cidr, Entity, IdentityAllocator, Peer, PeerRule, Policy};

/// A local endpoint as the agent knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Its IPv4 address.
    pub ip: Ipv4Addr,
    /// Its namespace.
    pub namespace: String,
    /// Its labels (with or without `k8s:`).
    pub labels: BTreeMap<String, String>,
}

/// What compilation says about one endpoint (for `xylem endpoint list`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EndpointInfo {
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its security identity.
    pub identity: Identity,
    /// Its normalized labels, namespace included.
    pub labels: Labels,
    /// Whether ingress is default-deny.
    pub ingress_enforced: bool,
    /// Whether egress is default-deny.
    pub egress_enforced: bool,
}

/// The result of [`compile`].
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The tables to publish to workers.
    pub tables: PolicyTables,
    /// Per endpoint: identity and enforcement.
    pub endpoints: Vec<EndpointInfo>,
    /// Per pod of another node: its address and the identity its labels have here.
    pub remote_endpoints: Vec<(Ipv4Addr, Identity)>,
    /// The CIDR identities given to policy prefixes.
    pub cidr_identities: Vec<(Cidr, Identity)>,
    /// The FQDN identities given to `toFQDNs` selectors, in selector order.
    pub fqdn_identities: Vec<(NameSelector, Identity)>,
}

/// Compiles `policies` for `endpoints` at `revision`. `host_addrs` are the node's addresses on
/// the pod network (the gateway, the host port), which get the `host` identity; `localhost`
/// says whether they reach every local endpoint whatever its ingress policy. Identities and
/// FQDN scopes come from `ids`, so they stay stable across compilations; the scopes of
/// (address, selector) pairs this compilation no longer has are forgotten in `ids`, never to
/// be given again.
pub fn compile(
    revision: u64,
    policies: &[Policy],
    endpoints: &[EndpointSpec],
    host_addrs: &[Ipv4Addr],
    localhost: AllowLocalhost,
    ids: &mut IdentityAllocator,
) -> Compiled {
    compile_cluster(
        revision,
        policies,
        (endpoints, &[]),
        host_addrs,
        localhost,
        ids,
    )
}

/// [`compile`], with the pods of other nodes too (`remote`): each gets this node's identity for
/// its labels (allocated here, as a local pod's would be), so that policies select it by its
/// labels wherever it runs; its address maps to that identity. Only local endpoints get policy
/// tables: a remote pod's own policies are its node's to enforce.
pub fn compile_cluster(
    revision: u64,
    policies: &[Policy],
    (endpoints, remote): (&[EndpointSpec], &[EndpointSpec]),
    host_addrs: &[Ipv4Addr],
    localhost: AllowLocalhost,
    ids: &mut IdentityAllocator,
) -> Compiled {
    let mut b = PolicyTablesBuilder::new(revision);
    let mut remote_ids: BTreeMap<Identity, Labels> = BTreeMap::new();
    let mut remote_endpoints = Vec::with_capacity(remote.len());
    for e in remote {
        let labels = endpoint_labels(&e.namespace, &e.labels);
        let id = ids.identity(&labels);
        b.add_address(e.ip, id);
        remote_endpoints.push((e.ip, id));
        remote_ids.insert(id, labels);
    }
    // Identities of the local endpoints.
    let mut local: BTreeMap<Identity, Labels> = BTreeMap::new();
    let mut eps = Vec::with_capacity(endpoints.len());
    for e in endpoints {
        let labels = endpoint_labels(&e.namespace, &e.labels);
        let id = ids.identity(&labels);
        b.add_endpoint(e.ip, id);
        local.insert(id, labels.clone());
        eps.push((e.ip, id, labels));
    }
    for &h in host_addrs {
        b.add_address(h, identity::HOST);
    }
    // CIDR identities, sorted by (address, length).
    let prefixes = policy_prefixes(policies);
    let cidr_ids: Vec<(Cidr, Identity)> = prefixes
        .iter()
        .enumerate()
        .map(|(i, c)| (*c, identity::FIRST_CIDR + i as Identity))
        .collect();
    for (c, id) in &cidr_ids {
        b.add_cidr(c.addr, c.len, *id);
    }
    let fqdn_ids: Vec<(NameSelector, Identity)> = policy_fqdns(policies)
        .into_iter()
        .enumerate()
        .map(|(i, sel)| (sel, identity::FIRST_FQDN + i as Identity))
        .collect();
    let refs = rule_origins(&mut b, policies);
    // Registered after every policy's rules: where a policy allows the host too, its rule is
    // the one `policy trace` names.
    let localhost = (localhost == AllowLocalhost::Always).then(|| {
        b.add_origin(RuleOrigin {
            policy: String::new(),
            spec: 0,
            section: Section::AllowLocalhost,
            index: 0,
        })
    });
    let cx = PeerCx {
        local: &local,
        remote: &remote_ids,
        cidrs: &cidr_ids,
        fqdns: &fqdn_ids,
    };
    let mut per_id: BTreeMap<Identity, Selected> = BTreeMap::new();
    for (&id, labels) in &local {
        let sel = cx.endpoint(&mut b, policies, &refs, localhost, id, labels);
        per_id.insert(id, sel);
    }
    for (ip, id, _) in &eps {
        for &i in &per_id[id].fqdns {
            let (selector, peer) = &fqdn_ids[i];
            let scope = ids.fqdn_scope(*ip, selector);
            b.add_fqdn_scope(
                *ip,
                FqdnScope {
                    scope,
                    peer: *peer,
                    selector: selector.clone(),
                },
            );
        }
    }
    ids.sweep_scopes();
    let endpoints = eps
        .into_iter()
        .map(|(ip, id, labels)| EndpointInfo {
            ip,
            identity: id,
            labels,
            ingress_enforced: per_id[&id].ingress,
            egress_enforced: per_id[&id].egress,
        })
        .collect();
    Compiled {
        tables: b.build(),
        endpoints,
        remote_endpoints,
        cidr_identities: cidr_ids,
        fqdn_identities: fqdn_ids,
    }
}

/// What the policies say about one local identity besides its tables.
struct Selected {
    /// Whether ingress is default-deny.
    ingress: bool,
    /// Whether egress is default-deny.
    egress: bool,
    /// Its egress rules' `toFQDNs` selectors, as indices into the FQDN identities.
    fqdns: BTreeSet<usize>,
}

/// Every `toFQDNs` selector of the policies, sorted (kind, then text), without duplicates.
fn policy_fqdns(policies: &[Policy]) -> Vec<NameSelector> {
    let set: BTreeSet<&NameSelector> = policies
        .iter()
        .flat_map(|p| &p.rules)
        .flat_map(|r| &r.egress)
        .flat_map(|pr| &pr.peers)
        .filter_map(|peer| match peer {
            Peer::Fqdn(sel) => Some(sel),
            _ => None,
        })
        .collect();
    set.into_iter().cloned().collect()
}

/// Every prefix the policies' CIDR peers name (`except`s included), sorted by (address,
/// length), without duplicates.
fn policy_prefixes(policies: &[Policy]) -> Vec<Cidr> {
    let mut prefixes: Vec<Cidr> = policies
        .iter()
        .flat_map(|p| &p.rules)
        .flat_map(|r| [&r.ingress, &r.ingress_deny, &r.egress, &r.egress_deny])
        .flatten()
        .flat_map(|pr| &pr.peers)
        .flat_map(|peer| match peer {
            Peer::Cidr { net, except } => std::iter::once(*net)
                .chain(except.iter().copied())
                .collect(),
            _ => Vec::new(),
        })
        .collect();
    prefixes.sort_unstable();
    prefixes.dedup();
    prefixes
}

/// Registers the origin of every rule with `b`, in input order; returns their references as
/// `refs[policy][spec][section][index]`, sections in the order ingress, ingressDeny, egress,
/// egressDeny.
fn rule_origins(b: &mut PolicyTablesBuilder, policies: &[Policy]) -> Vec<Vec<[Vec<RuleRef>; 4]>> {
    let sections = [
        Section::Ingress,
        Section::IngressDeny,
        Section::Egress,
        Section::EgressDeny,
    ];
    let mut refs = Vec::with_capacity(policies.len());
    for p in policies {
        let key = p.key();
        let mut per_spec = Vec::with_capacity(p.rules.len());
        for (si, r) in p.rules.iter().enumerate() {
            let lists = [&r.ingress, &r.ingress_deny, &r.egress, &r.egress_deny];
            let per_section: [Vec<RuleRef>; 4] = std::array::from_fn(|k| {
                (0..lists[k].len())
                    .map(|index| {
                        b.add_origin(RuleOrigin {
                            policy: key.clone(),
                            spec: si,
                            section: sections[k],
                            index,
                        })
                    })
                    .collect()
            });
            per_spec.push(per_section);
        }
        refs.push(per_spec);
    }
    refs
}

struct PeerCx<'a> {
    local: &'a BTreeMap<Identity, Labels>,
    /// The identities of other nodes' pods: selected by labels as local ones are, never given
    /// tables.
    remote: &'a BTreeMap<Identity, Labels>,
    cidrs: &'a [(Cidr, Identity)],
    /// Sorted by selector.
    fqdns: &'a [(NameSelector, Identity)],
}

impl PeerCx<'_> {
    /// The remote identities that no local endpoint has (pods with the same labels on two
    /// nodes share one identity).
    fn remote_only(&self) -> impl Iterator<Item = (&Identity, &Labels)> {
        self.remote
            .iter()
            .filter(|(id, _)| !self.local.contains_key(id))
    }

    /// Fills the tables and DNS rules of local identity `id` from every rule selecting
    /// `labels`, and says what else the policies mean for it.
    fn endpoint(
        &self,
        b: &mut PolicyTablesBuilder,
        policies: &[Policy],
        refs: &[Vec<[Vec<RuleRef>; 4]>],
        localhost: Option<RuleRef>,
        id: Identity,
        labels: &Labels,
    ) -> Selected {
        let mut dns = Vec::new();
        let mut fqdns = BTreeSet::new();
        let ep = b.endpoint_policy(id);
        let (mut ing, mut eg) = (false, false);
        for (pi, p) in policies.iter().enumerate() {
            for (si, r) in p.rules.iter().enumerate() {
                if !r.selector.matches(labels) {
                    continue;
                }
                ing |= !r.ingress.is_empty() || !r.ingress_deny.is_empty();
                eg |= !r.egress.is_empty() || !r.egress_deny.is_empty();
                let lists = [&r.ingress, &r.ingress_deny, &r.egress, &r.egress_deny];
                for (k, list) in lists.iter().enumerate() {
                    let table = if k < 2 {
                        &mut ep.ingress
                    } else {
                        &mut ep.egress
                    };
                    for (i, pr) in list.iter().enumerate() {
                        let rule = refs[pi][si][k][i];
                        let peers = self.peers(pr);
                        add_entries(table, &peers, pr, k % 2 == 1, rule);
                        // DNS rules and FQDN peers exist only in egress allow rules.
                        if k == 2 {
                            dns_rules(&peers, pr, rule, &mut dns);
                            fqdns.extend(pr.peers.iter().filter_map(|p| self.fqdn_index(p)));
                        }
                    }
                }
            }
        }
        if let (true, Some(rule)) = (ing, localhost) {
            ep.ingress.add(identity::HOST, PROTO_ANY, None, false, rule);
        }
        ep.ingress.set_enforced(ing);
        ep.egress.set_enforced(eg);
        for r in dns {
            b.add_dns_rule(id, r);
        }
        Selected {
            ingress: ing,
            egress: eg,
            fqdns,
        }
    }

    /// The peer identities `pr` selects, sorted, without duplicates.
    fn peers(&self, pr: &PeerRule) -> Vec<Identity> {
        let mut peers: Vec<Identity> = Vec::new();
        for peer in &pr.peers {
            self.select(peer, &mut peers);
        }
        peers.sort_unstable();
        peers.dedup();
        peers
    }

    /// Where a `toFQDNs` peer's selector is among the FQDN identities.
    fn fqdn_index(&self, peer: &Peer) -> Option<usize> {
        match peer {
            Peer::Fqdn(sel) => self.fqdns.binary_search_by(|(s, _)| s.cmp(sel)).ok(),
            _ => None,
        }
    }

    fn select(&self, peer: &Peer, out: &mut Vec<Identity>) {
        match peer {
            Peer::Endpoints(sel) => out.extend(
                self.local
                    .iter()
                    .chain(self.remote_only())
                    .filter(|(_, l)| sel.matches(l))
                    .map(|(&id, _)| id),
            ),
            Peer::Cidr { net, except } => {
                let lo = self.cidrs.partition_point(|(c, _)| c.addr < net.addr);
                let hi = self
                    .cidrs
                    .partition_point(|(c, _)| c.addr.to_bits() <= net.last());
                out.extend(
                    self.cidrs[lo..hi]
                        .iter()
                        .filter(|(c, _)| net.contains(c) && !except.iter().any(|x| x.contains(c)))
                        .map(|&(_, id)| id),
                );
            }
            Peer::Entity(Entity::All) => out.push(identity::ANY),
            Peer::Entity(Entity::Host) => out.push(identity::HOST),
            Peer::Entity(Entity::World) => {
                out.push(identity::WORLD);
                out.extend(self.cidrs.iter().map(|&(_, id)| id));
            }
            Peer::Entity(Entity::Cluster) => {
                out.push(identity::HOST);
                out.extend(
                    self.local
                        .keys()
                        .chain(self.remote_only().map(|(id, _)| id))
                        .copied(),
                );
            }
            Peer::Fqdn(_) => out.extend(self.fqdn_index(peer).map(|i| self.fqdns[i].1)),
        }
    }
}

/// One table entry per peer × port spec of `pr`.
fn add_entries(
    table: &mut DirectionTable,
    peers: &[Identity],
    pr: &PeerRule,
    deny: bool,
    rule: RuleRef,
) {
    for &peer in peers {
        for ps in &pr.ports {
            table.add(peer, ps.proto, ps.range, deny, rule);
        }
    }
}

/// One [`DnsRule`] per peer × port spec of each `rules.dns` entry of `pr`.
fn dns_rules(peers: &[Identity], pr: &PeerRule, rule: RuleRef, out: &mut Vec<DnsRule>) {
    for d in &pr.dns {
        for &peer in peers {
            // The parser only lets through `rules.dns` entries whose ports are all explicit.
            for ports in d
                .ports
                .iter()
                .filter_map(|ps| ps.range.map(|r| (ps.proto, r)))
            {
                out.push(DnsRule {
                    peer,
                    proto: ports.0,
                    ports: ports.1,
                    selectors: d.names.clone(),
                    rule,
                });
            }
        }
    }
}

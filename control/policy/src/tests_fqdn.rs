//! `rules.dns` and `toFQDNs`: what compilation gives the dataplane, and FQDN scopes over
//! several compilations.

use std::collections::BTreeMap;

use xylem_dataplane::conntrack::{FlowKey, proto};
use xylem_dataplane::dns::{DnsRule, NameSelector};
use xylem_dataplane::learned::LearnedTable;
use xylem_dataplane::policy::{
    DirVerdict, Identity, Learned, PROTO_ANY, PolicyTables, Section, evaluate_with,
    identity::{self, FIRST_FQDN},
};

use crate::tests::{ip, pol};
use crate::*;

/// The issue's policy, as written there (the fuzz target's seed).
pub(crate) const ISSUE: &str = include_str!("../../fuzz/seeds/policy/fqdn-example.yaml");

const SVC_A: &str = "10.0.0.10";
const SVC_B: &str = "10.0.0.11";
const KUBE_DNS: &str = "10.0.5.2";
const OTHER: &str = "10.0.0.20";

fn ep(addr: &str, ns: &str, labels: &[(&str, &str)]) -> EndpointSpec {
    EndpointSpec {
        ip: ip(addr),
        namespace: ns.into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// Two `myService` pods, kube-dns and a bystander; `without` leaves out those addresses.
fn pods(without: &[&str]) -> Vec<EndpointSpec> {
    [
        ep(SVC_A, "default", &[("app", "myService")]),
        ep(SVC_B, "default", &[("app", "myService")]),
        ep(KUBE_DNS, "kube-system", &[("k8s-app", "kube-dns")]),
        ep(OTHER, "default", &[("app", "other")]),
    ]
    .into_iter()
    .filter(|e| !without.iter().any(|w| ip(w) == e.ip))
    .collect()
}

fn run(yaml: &str, eps: &[EndpointSpec], ids: &mut IdentityAllocator) -> Compiled {
    let policies = parse_policies(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    compile(
        1,
        &policies,
        eps,
        &[ip("10.0.0.1")],
        AllowLocalhost::Always,
        ids,
    )
}

fn id_of(c: &Compiled, addr: &str) -> Identity {
    c.endpoints
        .iter()
        .find(|e| e.ip == ip(addr))
        .unwrap()
        .identity
}

/// The (scope, peer, selector text) of every FQDN scope of the endpoint at `addr`, sorted.
fn scopes(t: &PolicyTables, addr: &str) -> Vec<(u32, Identity, String)> {
    let mut v: Vec<_> = t
        .dns()
        .scopes(ip(addr))
        .iter()
        .map(|s| (s.scope, s.peer, s.selector.as_str().to_owned()))
        .collect();
    v.sort();
    v
}

fn egress(t: &PolicyTables, addr: &str, peer: Identity, proto: u8, port: u16) -> DirVerdict {
    let (_, p) = t.endpoint(ip(addr)).unwrap();
    p.egress.lookup(peer, proto, Some(port))
}

#[test]
fn the_issue_policy_compiles_to_dns_rules_scopes_and_fqdn_peers() {
    let mut ids = IdentityAllocator::new();
    let c = run(ISSUE, &pods(&[]), &mut ids);
    let t = &c.tables;
    let (svc, dns) = (id_of(&c, SVC_A), id_of(&c, KUBE_DNS));
    assert_eq!(svc, id_of(&c, SVC_B));
    let wildcard = NameSelector::pattern("*.domain.com").unwrap();
    assert_eq!(wildcard.as_str(), "*.domain.com.");
    assert_eq!(c.fqdn_identities, vec![(wildcard.clone(), FIRST_FQDN)]);

    let rules = t.dns().rules(svc);
    assert_eq!(rules.len(), 1, "{rules:?}");
    let r = &rules[0];
    assert_eq!((r.peer, r.proto, r.ports), (dns, proto::UDP, (53, 53)));
    assert_eq!(&*r.selectors, std::slice::from_ref(&wildcard));
    let origin = t.origin(r.rule).unwrap();
    assert_eq!(origin.policy, "default/egress-domain-wildcard");
    assert_eq!(
        (origin.spec, origin.section, origin.index),
        (0, Section::Egress, 0)
    );
    assert!(t.dns().inspects(svc, dns, proto::UDP, 53));
    assert!(!t.dns().inspects(svc, dns, proto::TCP, 53));
    assert!(t.dns().rules(dns).is_empty() && t.dns().rules(id_of(&c, OTHER)).is_empty());

    let (a, b) = (scopes(t, SVC_A), scopes(t, SVC_B));
    assert_eq!(a.len(), 1);
    assert_eq!((a[0].1, a[0].2.as_str()), (FIRST_FQDN, "*.domain.com."));
    assert_eq!((b[0].1, b[0].2.as_str()), (FIRST_FQDN, "*.domain.com."));
    assert!(a[0].0 >= 1 && a[0].0 != b[0].0, "{a:?} {b:?}");
    assert!(scopes(t, KUBE_DNS).is_empty() && scopes(t, OTHER).is_empty());

    assert!(matches!(
        egress(t, SVC_A, FIRST_FQDN, proto::TCP, 80),
        DirVerdict::Allowed(_)
    ));
    assert_eq!(
        egress(t, SVC_A, identity::WORLD, proto::TCP, 80),
        DirVerdict::DefaultDeny
    );
    assert_eq!(
        egress(t, SVC_A, FIRST_FQDN, proto::TCP, 443),
        DirVerdict::DefaultDeny
    );
    assert!(matches!(
        egress(t, SVC_A, dns, proto::UDP, 53),
        DirVerdict::Allowed(_)
    ));
    assert_eq!(
        egress(t, SVC_A, dns, proto::TCP, 53),
        DirVerdict::DefaultDeny
    );
    let svc_info = c.endpoints.iter().find(|e| e.ip == ip(SVC_A)).unwrap();
    assert!(svc_info.egress_enforced && !svc_info.ingress_enforced);
}

#[test]
fn a_learned_address_opens_only_its_own_endpoints_egress() {
    let mut ids = IdentityAllocator::new();
    let c = run(ISSUE, &pods(&[]), &mut ids);
    let learned = LearnedTable::new(64, 16);
    let site = ip("93.184.216.34");
    let scope_a = scopes(&c.tables, SVC_A)[0].0;
    learned.learn(0, scope_a, site, 30, 0);
    let verdict = |src: &str, port: u16| {
        let key = FlowKey {
            src: ip(src),
            dst: site,
            sport: 40000,
            dport: port,
            proto: proto::TCP,
        };
        let l = Learned {
            table: &learned,
            now: 1,
            established: false,
        };
        evaluate_with(&c.tables, &key, Some(l)).egress.unwrap()
    };
    assert!(matches!(verdict(SVC_A, 80), DirVerdict::Allowed(_)));
    assert_eq!(verdict(SVC_A, 443), DirVerdict::DefaultDeny);
    assert_eq!(verdict(SVC_B, 80), DirVerdict::DefaultDeny);
}

#[test]
fn scopes_are_stable_and_never_reused() {
    let mut ids = IdentityAllocator::new();
    let first = run(ISSUE, &pods(&[]), &mut ids);
    let (a1, b1) = (scopes(&first.tables, SVC_A), scopes(&first.tables, SVC_B));
    let again = run(ISSUE, &pods(&[]), &mut ids);
    assert_eq!(scopes(&again.tables, SVC_A), a1);
    assert_eq!(scopes(&again.tables, SVC_B), b1);
    // The pod at SVC_A goes: its scope is forgotten, the other pod's stays.
    let gone = run(ISSUE, &pods(&[SVC_A]), &mut ids);
    assert!(scopes(&gone.tables, SVC_A).is_empty());
    assert_eq!(scopes(&gone.tables, SVC_B), b1);
    assert_eq!(ids.fqdn_scopes().count(), 1);
    // A new pod gets the address: a new scope, never one given before.
    let back = run(ISSUE, &pods(&[]), &mut ids);
    let a2 = scopes(&back.tables, SVC_A);
    assert_eq!(a2.len(), 1);
    assert!(a2[0].0 > a1[0].0.max(b1[0].0), "{a1:?} {b1:?} {a2:?}");
    assert_eq!(scopes(&back.tables, SVC_B), b1);
    // A policy without toFQDNs drops every scope; bringing it back numbers them afresh.
    let plain = pol(
        "p",
        "default",
        "  endpointSelector: {}\n  egress:\n  - {}\n",
    );
    let none = run(&plain, &pods(&[]), &mut ids);
    assert!(none.tables.dns().is_empty() && ids.fqdn_scopes().next().is_none());
    let b2 = scopes(&run(ISSUE, &pods(&[]), &mut ids).tables, SVC_B);
    assert!(b2[0].0 > a2[0].0, "{a2:?} {b2:?}");
    // The allocator's own answer agrees with what compilation published.
    let sel = NameSelector::pattern("*.domain.com.").unwrap();
    assert_eq!(ids.fqdn_scope(ip(SVC_B), &sel), b2[0].0);
}

#[test]
fn fqdn_identities_are_numbered_by_sorted_distinct_selector() {
    let one = pol(
        "one",
        "default",
        "  endpointSelector: {matchLabels: {app: myService}}\n  egress:\n  - toFQDNs: [{matchPattern: \"*.B.com\"}, {matchName: z.com}, {matchName: Z.COM}]\n",
    );
    let two = pol(
        "two",
        "default",
        "  endpointSelector: {matchLabels: {app: other}}\n  egress:\n  - toFQDNs: [{matchPattern: \"*.a.com.\"}, {matchName: Z.com.}]\n    toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]\n",
    );
    let mut ids = IdentityAllocator::new();
    let c = run(&format!("{one}---\n{two}"), &pods(&[]), &mut ids);
    let got: Vec<(String, Identity)> = c
        .fqdn_identities
        .iter()
        .map(|(s, id)| (s.describe(), *id))
        .collect();
    let want = [
        ("matchName: z.com.", FIRST_FQDN),
        ("matchPattern: *.a.com.", FIRST_FQDN + 1),
        ("matchPattern: *.b.com.", FIRST_FQDN + 2),
    ];
    let want: Vec<(String, Identity)> = want.iter().map(|(s, i)| ((*s).into(), *i)).collect();
    assert_eq!(got, want);
    let t = &c.tables;
    let peers = |addr| scopes(t, addr).into_iter().map(|s| s.1).collect::<Vec<_>>();
    assert_eq!(peers(SVC_A), [FIRST_FQDN, FIRST_FQDN + 2]);
    assert_eq!(peers(OTHER), [FIRST_FQDN, FIRST_FQDN + 1]);
    // Without toPorts, every port and protocol; with them, only those.
    assert!(matches!(
        egress(t, SVC_A, FIRST_FQDN + 2, proto::UDP, 9),
        DirVerdict::Allowed(_)
    ));
    assert!(matches!(
        egress(t, OTHER, FIRST_FQDN + 1, proto::TCP, 443),
        DirVerdict::Allowed(_)
    ));
    assert_eq!(
        egress(t, OTHER, FIRST_FQDN + 1, proto::TCP, 80),
        DirVerdict::DefaultDeny
    );
    assert_eq!(
        egress(t, OTHER, FIRST_FQDN + 2, proto::TCP, 443),
        DirVerdict::DefaultDeny
    );
    // One selector on two endpoints: two scopes.
    assert_ne!(scopes(t, SVC_A)[0].0, scopes(t, OTHER)[0].0);
}

#[test]
fn dns_rules_expand_like_allow_entries() {
    let yaml = pol(
        "names",
        "default",
        r#"  endpointSelector: {matchLabels: {app: myService}}
  egress:
  - toPorts:
    - ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]
      rules:
        dns: [{matchName: Example.com}, {matchPattern: "*.example.com"}]
    - ports: [{port: "5353", endPort: 5354}]
      rules: {dns: [{matchPattern: "*"}]}
  - toEntities: [cluster]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules: {dns: [{matchName: cluster.local}]}
"#,
    );
    let mut ids = IdentityAllocator::new();
    let c = run(&yaml, &pods(&[]), &mut ids);
    let t = &c.tables;
    let svc = id_of(&c, SVC_A);
    let rules = t.dns().rules(svc);
    let key = |r: &DnsRule| (r.peer, r.proto, r.ports, r.selectors.len());
    let any: Vec<_> = rules
        .iter()
        .filter(|r| r.peer == identity::ANY)
        .map(key)
        .collect();
    assert_eq!(
        any,
        [
            (identity::ANY, proto::UDP, (53, 53), 2),
            (identity::ANY, proto::TCP, (53, 53), 2),
            (identity::ANY, PROTO_ANY, (5353, 5354), 1),
        ]
    );
    let names: Vec<&str> = rules[0].selectors.iter().map(|s| s.as_str()).collect();
    assert_eq!(names, ["example.com.", "*.example.com."]);
    // `cluster`: the host and every local identity, one rule each, all from egress[1].
    let cluster: Vec<_> = rules.iter().filter(|r| r.peer != identity::ANY).collect();
    let mut want: Vec<Identity> = c.endpoints.iter().map(|e| e.identity).collect();
    want.push(identity::HOST);
    want.sort_unstable();
    want.dedup();
    assert_eq!(cluster.iter().map(|r| r.peer).collect::<Vec<_>>(), want);
    assert!(
        cluster
            .iter()
            .all(|r| r.proto == PROTO_ANY && r.ports == (53, 53))
    );
    assert!(cluster.iter().all(|r| t.origin(r.rule).unwrap().index == 1));
    // The entries are allowed as without `rules`, and the lookups inspect what they should.
    assert!(matches!(
        egress(t, SVC_A, identity::WORLD, proto::TCP, 53),
        DirVerdict::Allowed(_)
    ));
    assert!(t.dns().inspects(svc, identity::WORLD, proto::UDP, 5354));
    assert!(!t.dns().inspects(svc, identity::WORLD, proto::UDP, 5355));
    assert!(
        t.dns()
            .allowing(svc, (identity::WORLD, proto::UDP, 53), b"www.example.com.")
            .is_some()
    );
    assert!(
        t.dns()
            .allowing(svc, (identity::WORLD, proto::UDP, 53), b"example.org.")
            .is_none()
    );
    assert!(t.dns().scopes(ip(SVC_A)).is_empty());
}

#[test]
fn restored_endpoint_identities_stay_below_the_fqdn_range() {
    let labels = |app: &str| endpoint_labels("default", &[("app".into(), app.into())].into());
    let mut ids = IdentityAllocator::new();
    ids.restore(labels("a"), FIRST_FQDN);
    ids.restore(labels("b"), FIRST_FQDN - 1);
    let got: Vec<Identity> = ids.list().map(|(id, _)| id).collect();
    assert_eq!(got, [FIRST_FQDN - 1]);
}

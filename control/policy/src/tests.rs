//! Table-driven semantic and rejection tests (no root needed).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use xylem_dataplane::conntrack::{Conntrack, CtConfig, FlowKey, proto};
use xylem_dataplane::pipeline::{Meta, flow_and_policy};
use xylem_dataplane::policy::PolicyVerdict;
use xylem_dataplane::wire::tcp::flags as tcp_flags;

use super::*;

pub(crate) const HEAD: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n";

pub(crate) fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// name, namespace, labels, address
type Pod = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);
const PODS: &[Pod] = &[
    ("web", "default", &[("app", "web")], "10.0.0.10"),
    ("web2", "default", &[("k8s:app", "web")], "10.0.0.11"),
    (
        "client",
        "default",
        &[("app", "client"), ("tier", "fe")],
        "10.0.0.20",
    ),
    ("db", "default", &[("app", "db")], "10.0.0.30"),
    ("batch", "default", &[("app", "batch")], "10.0.0.40"),
    ("pclient", "prod", &[("app", "client")], "10.0.1.20"),
    ("prom", "monitoring", &[("app", "prom")], "10.0.2.5"),
];
const GATEWAY: &str = "10.0.0.1";
const HOSTPORT: &str = "10.200.0.254";

pub(crate) fn addr(name: &str) -> Ipv4Addr {
    match name {
        "gw" => ip(GATEWAY),
        "hostport" => ip(HOSTPORT),
        _ => PODS
            .iter()
            .find(|p| p.0 == name)
            .map(|p| ip(p.3))
            .unwrap_or_else(|| ip(name)),
    }
}

pub(crate) fn endpoints() -> Vec<EndpointSpec> {
    PODS.iter()
        .map(|(_, ns, labels, a)| EndpointSpec {
            ip: ip(a),
            namespace: (*ns).into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect::<BTreeMap<_, _>>(),
        })
        .collect()
}

/// Compiles `yaml` with the host judged by policy alone (the table of cases is about what the
/// policies say; `allow_localhost` has its own test).
pub(crate) fn build(yaml: &str) -> (Compiled, Vec<Policy>) {
    build_with(yaml, AllowLocalhost::Policy)
}

pub(crate) fn build_with(yaml: &str, localhost: AllowLocalhost) -> (Compiled, Vec<Policy>) {
    let policies = parse_policies(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let mut ids = IdentityAllocator::new();
    let c = compile(
        1,
        &policies,
        &endpoints(),
        &[ip(GATEWAY), ip(HOSTPORT)],
        localhost,
        &mut ids,
    );
    (c, policies)
}

/// `"src dst port/PROTO"`, e.g. `"client web 80/TCP"` or `"client web ICMP"`.
pub(crate) fn flow(spec: &str) -> FlowKey {
    let mut it = spec.split_whitespace();
    let src = addr(it.next().unwrap());
    let dst = addr(it.next().unwrap());
    let pp = it.next().unwrap();
    let (port, proto) = match pp.split_once('/') {
        Some((p, "TCP")) => (p.parse().unwrap(), proto::TCP),
        Some((p, "UDP")) => (p.parse().unwrap(), proto::UDP),
        None if pp == "ICMP" => (0, proto::ICMP),
        _ => panic!("bad flow {spec}"),
    };
    FlowKey {
        src,
        dst,
        sport: 40000,
        dport: port,
        proto,
    }
}

struct Case {
    name: &'static str,
    yaml: String,
    /// (flow, expected verdict, expected deciding rule or "")
    expect: Vec<(&'static str, &'static str, &'static str)>,
}

pub(crate) fn pol(name: &str, ns: &str, spec: &str) -> String {
    format!("{HEAD}metadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}")
}

fn cases() -> Vec<Case> {
    let mut all = cases_selectors();
    all.extend(cases_peers());
    all.extend(cases_ports());
    all.extend(cases_precedence());
    all
}

/// Which endpoints and peers selectors select.
fn cases_selectors() -> Vec<Case> {
    let web_from_client = pol(
        "web",
        "default",
        "  endpointSelector:\n    matchLabels: {app: web}\n  ingress:\n  - fromEndpoints:\n    - matchLabels: {k8s:app: client}\n    toPorts:\n    - ports:\n      - port: \"80\"\n        protocol: TCP\n",
    );
    vec![
        Case {
            name: "no policy allows everything",
            yaml: String::new(),
            expect: vec![
                ("client web 80/TCP", "allowed", ""),
                ("8.8.8.8 web 22/TCP", "allowed", ""),
                ("web 8.8.8.8 ICMP", "allowed", ""),
            ],
        },
        Case {
            name: "labels, shared identity, other direction open",
            yaml: web_from_client.clone(),
            expect: vec![
                (
                    "client web 80/TCP",
                    "allowed",
                    "default/web spec[0] ingress[0]",
                ),
                (
                    "client web2 80/TCP",
                    "allowed",
                    "default/web spec[0] ingress[0]",
                ),
                ("client web 81/TCP", "policy-denied", ""),
                ("client web 80/UDP", "policy-denied", ""),
                ("client web ICMP", "policy-denied", ""),
                ("db web 80/TCP", "policy-denied", ""),
                ("db web2 80/TCP", "policy-denied", ""),
                ("client db 80/TCP", "allowed", ""),
                ("web db 5432/TCP", "allowed", ""),
                ("8.8.8.8 web 80/TCP", "policy-denied", ""),
            ],
        },
        Case {
            name: "namespaces: selectors are limited to the policy's namespace unless named",
            yaml: format!(
                "{web_from_client}---\n{}---\n{}",
                pol(
                    "from-prod",
                    "default",
                    "  endpointSelector:\n    matchLabels: {app: db}\n  ingress:\n  - fromEndpoints:\n    - matchLabels: {k8s:io.kubernetes.pod.namespace: prod, app: client}\n",
                ),
                pol(
                    "lock-prod",
                    "prod",
                    "  endpointSelector: {}\n  ingress:\n  - fromEndpoints:\n    - {}\n",
                ),
            ) + &pol(
                "elsewhere",
                "prod",
                "  endpointSelector:\n    matchLabels: {k8s:io.kubernetes.pod.namespace: monitoring}\n  ingress:\n  - {}\n",
            ).replace("apiVersion", "---\napiVersion"),
            expect: vec![
                ("pclient web 80/TCP", "policy-denied", ""),
                (
                    "pclient db 5432/TCP",
                    "allowed",
                    "default/from-prod spec[0] ingress[0]",
                ),
                ("client db 5432/TCP", "policy-denied", ""),
                // lock-prod selects only prod's endpoints, and allows only prod's peers.
                ("client pclient 80/TCP", "policy-denied", ""),
                ("prom pclient 80/TCP", "policy-denied", ""),
                // A prod policy naming another namespace in its endpointSelector selects
                // nothing.
                ("batch prom 80/TCP", "allowed", ""),
            ],
        },
        Case {
            name: "matchExpressions In / NotIn / Exists / DoesNotExist",
            yaml: format!(
                "{}---\n{}",
                pol(
                    "exists",
                    "default",
                    "  endpointSelector:\n    matchExpressions:\n    - {key: app, operator: In, values: [web, db]}\n  ingress:\n  - fromEndpoints:\n    - matchExpressions:\n      - {key: tier, operator: Exists}\n",
                ),
                pol(
                    "batch",
                    "default",
                    "  endpointSelector:\n    matchExpressions:\n    - {key: tier, operator: DoesNotExist}\n    - {key: app, operator: NotIn, values: [web, db]}\n  ingress:\n  - fromEndpoints:\n    - matchExpressions:\n      - {key: app, operator: NotIn, values: [client]}\n",
                ),
            ),
            expect: vec![
                (
                    "client web 80/TCP",
                    "allowed",
                    "default/exists spec[0] ingress[0]",
                ),
                (
                    "client db 80/TCP",
                    "allowed",
                    "default/exists spec[0] ingress[0]",
                ),
                ("batch db 80/TCP", "policy-denied", ""),
                // batch: selected by `batch` (no tier, app not web/db).
                (
                    "db batch 80/TCP",
                    "allowed",
                    "default/batch spec[0] ingress[0]",
                ),
                ("client batch 80/TCP", "policy-denied", ""),
                // client has a tier: not selected by `batch`, so open.
                ("batch client 80/TCP", "allowed", ""),
            ],
        },
    ]
}

/// CIDRs and entities.
fn cases_peers() -> Vec<Case> {
    vec![
        Case {
            name: "CIDR with except; CIDRs never match cluster addresses",
            yaml: pol(
                "cidr",
                "default",
                "  endpointSelector:\n    matchLabels: {app: client}\n  egress:\n  - toCIDRSet:\n    - cidr: 8.0.0.0/8\n      except: [8.8.0.0/16]\n  - toCIDR: [8.8.4.4/32, 10.0.0.0/8]\n",
            ),
            expect: vec![
                (
                    "client 8.1.2.3 443/TCP",
                    "allowed",
                    "default/cidr spec[0] egress[0]",
                ),
                ("client 8.8.8.8 443/TCP", "policy-denied", ""),
                (
                    "client 8.8.4.4 53/UDP",
                    "allowed",
                    "default/cidr spec[0] egress[1]",
                ),
                ("client 1.1.1.1 443/TCP", "policy-denied", ""),
                ("client web 80/TCP", "policy-denied", ""),
                (
                    "client 10.9.9.9 80/TCP",
                    "allowed",
                    "default/cidr spec[0] egress[1]",
                ),
            ],
        },
        Case {
            name: "entities",
            yaml: format!(
                "{}---\n{}---\n{}",
                pol(
                    "world",
                    "default",
                    "  endpointSelector:\n    matchLabels: {app: client}\n  egress:\n  - toEntities: [world]\n",
                ),
                pol(
                    "cluster",
                    "default",
                    "  endpointSelector:\n    matchLabels: {app: batch}\n  egress:\n  - toEntities: [cluster]\n",
                ),
                pol(
                    "host",
                    "default",
                    "  endpointSelector:\n    matchLabels: {app: web}\n  ingress:\n  - fromEntities: [host]\n  egress:\n  - toEntities: [all]\n",
                ),
            ),
            expect: vec![
                (
                    "client 8.8.8.8 443/TCP",
                    "allowed",
                    "default/world spec[0] egress[0]",
                ),
                ("client web 80/TCP", "policy-denied", ""),
                ("client gw 53/UDP", "policy-denied", ""),
                ("batch web 80/TCP", "policy-denied", ""), // web's ingress: host only
                (
                    "batch db 80/TCP",
                    "allowed",
                    "default/cluster spec[0] egress[0]",
                ),
                (
                    "batch pclient 80/TCP",
                    "allowed",
                    "default/cluster spec[0] egress[0]",
                ),
                (
                    "batch gw 53/UDP",
                    "allowed",
                    "default/cluster spec[0] egress[0]",
                ),
                ("batch 8.8.8.8 443/TCP", "policy-denied", ""),
                (
                    "gw web 80/TCP",
                    "allowed",
                    "default/host spec[0] ingress[0]",
                ),
                (
                    "hostport web 8080/TCP",
                    "allowed",
                    "default/host spec[0] ingress[0]",
                ),
                (
                    "web 1.2.3.4 ICMP",
                    "allowed",
                    "default/host spec[0] egress[0]",
                ),
            ],
        },
    ]
}

/// Ports, ranges and protocols.
fn cases_ports() -> Vec<Case> {
    vec![Case {
        name: "ports, ranges, protocols",
        yaml: pol(
            "ports",
            "default",
            "  endpointSelector:\n    matchLabels: {app: web}\n  ingress:\n  - toPorts:\n    - ports:\n      - {port: \"8000\", endPort: 8999, protocol: TCP}\n      - {port: \"53\", protocol: UDP}\n      - {port: \"443\"}\n      - {port: \"100\", endPort: 110, protocol: ANY}\n",
        ),
        expect: vec![
            (
                "client web 8000/TCP",
                "allowed",
                "default/ports spec[0] ingress[0]",
            ),
            (
                "client web 8500/TCP",
                "allowed",
                "default/ports spec[0] ingress[0]",
            ),
            (
                "db web 8999/TCP",
                "allowed",
                "default/ports spec[0] ingress[0]",
            ),
            ("client web 9000/TCP", "policy-denied", ""),
            ("client web 7999/TCP", "policy-denied", ""),
            ("client web 8500/UDP", "policy-denied", ""),
            (
                "client web 53/UDP",
                "allowed",
                "default/ports spec[0] ingress[0]",
            ),
            ("client web 53/TCP", "policy-denied", ""),
            (
                "client web 443/UDP",
                "allowed",
                "default/ports spec[0] ingress[0]",
            ),
            (
                "client web 105/UDP",
                "allowed",
                "default/ports spec[0] ingress[0]",
            ),
            ("client web 111/TCP", "policy-denied", ""),
            ("client web ICMP", "policy-denied", ""),
        ],
    }]
}

/// Deny over allow, default-deny, and the ways to write several rules.
fn cases_precedence() -> Vec<Case> {
    vec![
        Case {
            name: "deny beats allow, across policies",
            yaml: format!(
                "{}---\n{}",
                pol(
                    "allow",
                    "default",
                    "  endpointSelector:\n    matchLabels: {app: web}\n  ingress:\n  - fromEntities: [all]\n  ingressDeny:\n  - fromEndpoints:\n    - matchLabels: {app: client}\n    toPorts:\n    - ports:\n      - {port: \"22\", protocol: TCP}\n",
                ),
                pol(
                    "deny",
                    "default",
                    "  endpointSelector:\n    matchLabels: {app: web}\n  ingressDeny:\n  - fromEndpoints:\n    - matchLabels: {app: db}\n  egressDeny:\n  - toCIDR: [8.8.8.8/32]\n",
                ),
            ),
            expect: vec![
                (
                    "client web 80/TCP",
                    "allowed",
                    "default/allow spec[0] ingress[0]",
                ),
                (
                    "client web 22/TCP",
                    "policy-deny-rule",
                    "default/allow spec[0] ingressDeny[0]",
                ),
                (
                    "db web 80/TCP",
                    "policy-deny-rule",
                    "default/deny spec[0] ingressDeny[0]",
                ),
                (
                    "web 8.8.8.8 53/UDP",
                    "policy-deny-rule",
                    "default/deny spec[0] egressDeny[0]",
                ),
                // The egressDeny section makes egress default-deny (as Cilium).
                ("web 1.1.1.1 53/UDP", "policy-denied", ""),
            ],
        },
        Case {
            name: "default-deny per direction; `ingress: [{}]` denies everything",
            yaml: format!(
                "{}---\n{}",
                pol(
                    "egress-only",
                    "default",
                    "  endpointSelector:\n    matchLabels: {app: client}\n  egress:\n  - toEndpoints:\n    - matchLabels: {app: web}\n",
                ),
                pol(
                    "deny-all-in",
                    "default",
                    "  endpointSelector:\n    matchLabels: {app: db}\n  ingress:\n  - {}\n",
                ),
            ),
            expect: vec![
                (
                    "client web 80/TCP",
                    "allowed",
                    "default/egress-only spec[0] egress[0]",
                ),
                ("client batch 80/TCP", "policy-denied", ""),
                ("batch client 80/TCP", "allowed", ""),
                ("web db 5432/TCP", "policy-denied", ""),
                ("gw db 5432/TCP", "policy-denied", ""),
                ("db web 80/TCP", "allowed", ""),
            ],
        },
        Case {
            name: "List kind and specs",
            yaml:                 "apiVersion: v1\nkind: List\nitems:\n- apiVersion: cilium.io/v2\n  kind: CiliumNetworkPolicy\n  metadata: {name: multi}\n  specs:\n  - endpointSelector: {matchLabels: {app: web}}\n    ingress:\n    - fromEndpoints: [{matchLabels: {app: client}}]\n  - endpointSelector: {matchLabels: {app: web}}\n    description: second\n    ingress:\n    - fromEndpoints: [{matchLabels: {app: db}}]\n"
                .into(),
            expect: vec![
                (
                    "client web 80/TCP",
                    "allowed",
                    "default/multi spec[0] ingress[0]",
                ),
                (
                    "db web 80/TCP",
                    "allowed",
                    "default/multi spec[1] ingress[0]",
                ),
                ("batch web 80/TCP", "policy-denied", ""),
            ],
        },
    ]
}

#[test]
fn semantics() {
    let mut failures = Vec::new();
    for case in cases() {
        let (c, _) = build(&case.yaml);
        for (f, verdict, rule) in &case.expect {
            let t = trace_tables(&c.tables, &flow(f));
            let got_rule = t.rule.as_ref().map(|r| r.to_string()).unwrap_or_default();
            if t.verdict != *verdict || got_rule != *rule {
                failures.push(format!(
                    "[{}] {f}: expected {verdict} {rule:?}, got {} {got_rule:?}\n{t}",
                    case.name, t.verdict
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn allow_localhost_lets_the_node_into_enforced_endpoints_unless_a_deny_names_it() {
    let deny_all = pol(
        "deny",
        "default",
        "  endpointSelector:\n    matchLabels: {app: web}\n  ingress:\n  - {}\n",
    );
    let from_host = pol(
        "fromhost",
        "default",
        "  endpointSelector:\n    matchLabels: {app: db}\n  ingress:\n  - fromEntities: [host]\n    toPorts: [{ports: [{port: \"5432\", protocol: TCP}]}]\n",
    );
    let deny_host = pol(
        "denyhost",
        "default",
        "  endpointSelector:\n    matchLabels: {app: batch}\n  ingressDeny:\n  - fromEntities: [host]\n",
    );
    let yaml = format!("{deny_all}---\n{from_host}---\n{deny_host}");
    let localhost = "the agent's policy.allow_localhost: always";
    // (flow, verdict and rule with `always`, verdict and rule with `policy`)
    let expect = [
        // Default-deny ingress: the node gets in only by the option.
        (
            "hostport web 8080/TCP",
            "allowed",
            localhost,
            "policy-denied",
            "",
        ),
        ("gw web ICMP", "allowed", localhost, "policy-denied", ""),
        (
            "client web 80/TCP",
            "policy-denied",
            "",
            "policy-denied",
            "",
        ),
        // A policy that allows the host names itself, whatever the option.
        (
            "hostport db 5432/TCP",
            "allowed",
            "default/fromhost spec[0] ingress[0]",
            "allowed",
            "default/fromhost spec[0] ingress[0]",
        ),
        (
            "hostport db 22/TCP",
            "allowed",
            localhost,
            "policy-denied",
            "",
        ),
        // A deny rule beats the option, as any allow.
        (
            "hostport batch 80/TCP",
            "policy-deny-rule",
            "default/denyhost spec[0] ingressDeny[0]",
            "policy-deny-rule",
            "default/denyhost spec[0] ingressDeny[0]",
        ),
        // Not enforced: open either way, and the option adds nothing to say.
        ("hostport client 80/TCP", "allowed", "", "allowed", ""),
        // Only ingress, only the host.
        ("web hostport 80/TCP", "allowed", "", "allowed", ""),
        (
            "8.8.8.8 web 80/TCP",
            "policy-denied",
            "",
            "policy-denied",
            "",
        ),
        (
            "pclient web 80/TCP",
            "policy-denied",
            "",
            "policy-denied",
            "",
        ),
    ];
    let (always, _) = build_with(&yaml, AllowLocalhost::Always);
    let (policy, _) = build_with(&yaml, AllowLocalhost::Policy);
    let mut failures = Vec::new();
    for (f, v_always, r_always, v_policy, r_policy) in expect {
        for (c, v, r) in [(&always, v_always, r_always), (&policy, v_policy, r_policy)] {
            let t = trace_tables(&c.tables, &flow(f));
            let rule = t.rule.as_ref().map(|r| r.to_string()).unwrap_or_default();
            if t.verdict != v || rule != r {
                failures.push(format!(
                    "{f}: expected {v} {r:?}, got {} {rule:?}\n{t}",
                    t.verdict
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // `policy trace` says why.
    let t = trace_tables(&always.tables, &flow("hostport web 8080/TCP")).to_string();
    assert!(
        t.contains("ingress of destination: allowed by the agent's policy.allow_localhost: always"),
        "{t}"
    );
}

#[test]
fn identities_shared_by_equal_labels_and_enforcement_reported() {
    let (c, _) = build(&pol(
        "p",
        "default",
        "  endpointSelector:\n    matchLabels: {app: web}\n  ingress:\n  - {}\n",
    ));
    let by_ip = |a: &str| c.endpoints.iter().find(|e| e.ip == ip(a)).unwrap();
    let (web, web2, client) = (by_ip("10.0.0.10"), by_ip("10.0.0.11"), by_ip("10.0.0.20"));
    assert_eq!(web.identity, web2.identity);
    assert_ne!(web.identity, client.identity);
    // Same labels in another namespace: another identity.
    let mut ids = IdentityAllocator::new();
    let a = ids.identity(&endpoint_labels(
        "default",
        &[("app".into(), "x".into())].into(),
    ));
    let b = ids.identity(&endpoint_labels(
        "prod",
        &[("app".into(), "x".into())].into(),
    ));
    let a2 = ids.identity(&endpoint_labels(
        "default",
        &[("k8s:app".into(), "x".into())].into(),
    ));
    assert_ne!(a, b);
    assert_eq!(a, a2);
    assert!(web.ingress_enforced && !web.egress_enforced);
    assert!(!client.ingress_enforced && !client.egress_enforced);
}

#[test]
fn replies_pass_through_conntrack() {
    // The client may reach web on 80; neither may otherwise reach the client.
    let (c, _) = build(&format!(
        "{}---\n{}",
        pol(
            "client",
            "default",
            "  endpointSelector:\n    matchLabels: {app: client}\n  ingress:\n  - {}\n  egress:\n  - toEndpoints: [{matchLabels: {app: web}}]\n",
        ),
        pol(
            "web",
            "default",
            "  endpointSelector:\n    matchLabels: {app: web}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n  egress:\n  - {}\n",
        )
    ));
    let mut ct = Conntrack::new(&CtConfig::default());
    let key = flow("client web 80/TCP");
    let f = |key: FlowKey, flags| Meta {
        tcp_flags: flags,
        ..Meta::from_key(key)
    };
    let decide = |now, t, ct: &mut Conntrack, m: &Meta| {
        flow_and_policy(now, 0, m, std::net::Ipv4Addr::new(10, 0, 0, 1), t, ct)
    };
    use tcp_flags::*;
    assert_eq!(
        decide(0, &c.tables, &mut ct, &f(key, SYN)),
        PolicyVerdict::New
    );
    assert_eq!(
        decide(1, &c.tables, &mut ct, &f(key.reversed(), SYN | ACK)),
        PolicyVerdict::Reply
    );
    // The same packet from web, not as a reply, is denied both by web's egress and the
    // client's ingress.
    let unsolicited = FlowKey {
        sport: 80,
        dport: 40001,
        ..key.reversed()
    };
    assert!(!decide(2, &c.tables, &mut ct, &f(unsolicited, SYN)).allows());
}

#[test]
fn pods_of_other_nodes_are_selected_by_their_labels_and_get_no_tables() {
    let policies = parse_policies(&format!(
        "{HEAD}metadata: {{name: db-from-client}}\nspec:\n  endpointSelector: {{matchLabels: \
         {{app: db}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n"
    ))
    .unwrap();
    let remote = |ip: &str, app: &str| EndpointSpec {
        ip: addr(ip),
        namespace: "default".into(),
        labels: [("app".to_string(), app.to_string())].into(),
    };
    // A client (its labels are not the local client's: no tier), a pod whose labels no local
    // pod has, and one with exactly the local batch pod's labels (so its identity).
    let others = [
        remote("10.200.1.10", "client"),
        remote("10.200.1.11", "scraper"),
        remote("10.200.1.12", "batch"),
    ];
    let mut ids = IdentityAllocator::new();
    let c = compile_cluster(
        1,
        &policies,
        (&endpoints(), &others),
        &[ip(GATEWAY)],
        AllowLocalhost::Always,
        &mut ids,
    );
    let flow = |src: &str| FlowKey {
        src: addr(src),
        dst: addr("db"),
        sport: 40000,
        dport: 5432,
        proto: proto::TCP,
    };
    let allowed = |src| {
        xylem_dataplane::policy::evaluate(&c.tables, &flow(src))
            .drop()
            .is_none()
    };
    assert!(allowed("client"), "the local client");
    assert!(
        allowed("10.200.1.10"),
        "a client on another node, by its labels"
    );
    assert!(!allowed("10.200.1.11"));
    assert!(!allowed("10.200.1.12"));
    let local_batch = c.endpoints.iter().find(|e| e.ip == addr("batch")).unwrap();
    assert_eq!(
        c.remote_endpoints[2],
        (addr("10.200.1.12"), local_batch.identity)
    );
    assert_eq!(c.remote_endpoints.len(), 3);
    assert_eq!(
        c.endpoints.len(),
        PODS.len(),
        "remote pods are no local endpoints"
    );
    // A policy selecting a remote pod's labels gives it no tables here: its ingress is its own
    // node's to enforce.
    let to_scraper = FlowKey {
        src: addr("db"),
        dst: addr("10.200.1.11"),
        sport: 40000,
        dport: 80,
        proto: proto::TCP,
    };
    assert!(
        xylem_dataplane::policy::evaluate(&c.tables, &to_scraper)
            .drop()
            .is_none()
    );
}

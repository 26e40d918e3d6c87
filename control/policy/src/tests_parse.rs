//! Rejections: every refused field is named, with a reason, and nothing is imported.

use crate::tests::{HEAD, pol};
use crate::*;

/// Each bad input, the field its error must name, and a phrase of the reason.
#[test]
fn rejections_name_the_field() {
    let spec = |s: &str| pol("bad", "default", s);
    let sel = "  endpointSelector: {}\n";
    let cases: Vec<(String, &str, &str)> = vec![
        (
            spec(&format!("{sel}  ingress:\n  - fromRequires: [{{}}]\n")),
            "spec.ingress[0].fromRequires",
            "not in the supported subset",
        ),
        (
            format!("{HEAD}metadata: {{name: bad}}\nspec:\n{sel}status: {{}}\n"),
            "status",
            "not in the supported subset",
        ),
        (
            spec("  nodeSelector: {}\n"),
            "spec.nodeSelector",
            "not in the supported subset",
        ),
        (
            spec(&format!("{sel}  egress:\n  - toEntities: [remote-node]\n")),
            "spec.egress[0].toEntities[0]",
            "remote-node",
        ),
        (
            "apiVersion: cilium.io/v1\nkind: CiliumNetworkPolicy\nmetadata: {name: bad}\nspec: {endpointSelector: {}}\n".into(),
            "apiVersion",
            "expected \"cilium.io/v2\"",
        ),
        (
            "apiVersion: cilium.io/v2\nkind: NetworkPolicy\nmetadata: {name: bad}\nspec: {endpointSelector: {}}\n".into(),
            "kind",
            "expected \"CiliumNetworkPolicy\"",
        ),
        (
            spec(&format!("{sel}  egress:\n  - toCIDR: [10.0.0.0/33]\n")),
            "spec.egress[0].toCIDR[0]",
            "prefix length",
        ),
        (
            spec(&format!("{sel}  ingress:\n  - fromCIDRSet:\n    - cidr: 10.0.0.0/8\n      except: [11.0.0.0/16]\n")),
            "spec.ingress[0].fromCIDRSet[0].except[0]",
            "not within",
        ),
        (
            spec(&format!("{sel}  ingress:\n  - fromCIDRSet:\n    - cidr: 10.0.0.x/8\n")),
            "spec.ingress[0].fromCIDRSet[0].cidr",
            "not a valid IPv4 CIDR",
        ),
        (
            spec(&format!("{sel}  ingress:\n  - toPorts:\n    - ports: [{{port: \"70000\"}}]\n")),
            "spec.ingress[0].toPorts[0].ports[0].port",
            "out of range",
        ),
        (
            spec(&format!("{sel}  ingress:\n  - toPorts:\n    - ports: [{{port: \"http\"}}]\n")),
            "spec.ingress[0].toPorts[0].ports[0].port",
            "not a number",
        ),
        (
            spec(&format!("{sel}  ingress:\n  - toPorts:\n    - ports: [{{port: \"8080\", endPort: 80}}]\n")),
            "spec.ingress[0].toPorts[0].ports[0].endPort",
            "below port 8080",
        ),
        (
            spec(&format!("{sel}  ingress:\n  - toPorts:\n    - ports: [{{port: \"80\", endPort: 70000}}]\n")),
            "spec.ingress[0].toPorts[0].ports[0].endPort",
            "out of range",
        ),
        (
            spec(&format!("{sel}  ingress:\n  - toPorts:\n    - ports: [{{port: \"80\", protocol: SCTP}}]\n")),
            "spec.ingress[0].toPorts[0].ports[0].protocol",
            "SCTP",
        ),
        (
            spec("  endpointSelector:\n    matchExpressions:\n    - {key: app, operator: Like, values: [x]}\n"),
            "spec.endpointSelector.matchExpressions[0].operator",
            "Like",
        ),
        (
            spec("  endpointSelector:\n    matchExpressions:\n    - {key: app, operator: In}\n"),
            "spec.endpointSelector.matchExpressions[0].values",
            "at least one value",
        ),
        (
            spec("  endpointSelector:\n    matchLabels: {reserved:host: \"\"}\n"),
            "spec.endpointSelector.matchLabels.reserved:host",
            "label key",
        ),
    ];
    check_rejections(cases);
}

/// Asserts each input is rejected naming `field` (exactly) and saying `why`.
pub(crate) fn check_rejections(cases: Vec<(String, &str, &str)>) {
    let mut failures = Vec::new();
    for (yaml, field, why) in cases {
        let e = match parse_policies(&yaml) {
            Ok(_) => {
                failures.push(format!("accepted:\n{yaml}"));
                continue;
            }
            Err(e) => e.to_string(),
        };
        if !e.contains(&format!(": {field}: ")) || !e.contains(why) || !e.contains("document 1") {
            failures.push(format!("wanted {field}: ...{why}..., got {e}\n{yaml}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn one_bad_document_rejects_the_whole_input() {
    let good = pol("good", "default", "  endpointSelector: {}\n");
    let bad = pol(
        "bad",
        "default",
        "  endpointSelector: {}\n  egress:\n  - toFQDNs: [{matchName: a/b}]\n",
    );
    let e = parse_policies(&format!("{good}---\n{bad}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("document 2 (policy default/bad)"), "{e}");
    let list = format!(
        "apiVersion: v1\nkind: List\nitems:\n- {}\n",
        bad.replace('\n', "\n  ").trim_end()
    );
    let e = parse_policies(&list).unwrap_err().to_string();
    assert!(e.contains("document 1 items[0]"), "{e}");
    let e = parse_policies(&format!("{good}---\n{good}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("appears twice"), "{e}");
    // Ports must be strings, as Cilium's schema says.
    let e = parse_policies(&pol(
        "p",
        "default",
        "  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: 80}]}]\n",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("spec.ingress[0].toPorts[0].ports[0].port"),
        "{e}"
    );
}

/// A policy selecting everything in `default` with `body` under `spec`.
fn spec_with(body: &str) -> String {
    pol(
        "bad",
        "default",
        &format!("  endpointSelector: {{}}\n{body}"),
    )
}

#[test]
fn to_fqdns_rejections_name_the_field() {
    let fq = |sel: &str| spec_with(&format!("  egress:\n  - toFQDNs: [{sel}]\n"));
    let with = |other: &str| {
        spec_with(&format!(
            "  egress:\n  - toFQDNs: [{{matchName: a.com}}]\n    {other}\n"
        ))
    };
    let at = "spec.egress[0].toFQDNs[0]";
    let cases: Vec<(String, &str, &str)> = vec![
        (
            fq("{matchName: a.com, matchPattern: \"*.a.com\"}"),
            at,
            "both matchName and matchPattern",
        ),
        (fq("{}"), at, "needs matchName"),
        (
            spec_with(
                "  egress:\n  - toEndpoints: [{}]\n  - toFQDNs: [{matchPattern: \"a/b.com\"}]\n",
            ),
            "spec.egress[1].toFQDNs[0].matchPattern",
            "'/'",
        ),
        (
            fq("{matchName: \"*.a.com\"}"),
            "spec.egress[0].toFQDNs[0].matchName",
            "'*'",
        ),
        (
            fq("{matchName: é.com}"),
            "spec.egress[0].toFQDNs[0].matchName",
            "'é'",
        ),
        (
            fq("{matchPattern: \"a *.com\"}"),
            "spec.egress[0].toFQDNs[0].matchPattern",
            "' '",
        ),
        (
            fq("{matchPattern: a..com}"),
            "spec.egress[0].toFQDNs[0].matchPattern",
            "empty label",
        ),
        (
            fq("{matchName: \"\"}"),
            "spec.egress[0].toFQDNs[0].matchName",
            "empty",
        ),
        (
            fq("{matchName: a.com, matchRegex: x}"),
            "spec.egress[0].toFQDNs[0].matchRegex",
            "not in the supported subset",
        ),
        (
            with("toEndpoints: [{}]"),
            "spec.egress[0].toFQDNs",
            "cannot be combined with toEndpoints",
        ),
        (
            with("toCIDR: [10.0.0.0/8]"),
            "spec.egress[0].toFQDNs",
            "cannot be combined with toCIDR",
        ),
        (
            with("toCIDRSet: [{cidr: 10.0.0.0/8}]"),
            "spec.egress[0].toFQDNs",
            "cannot be combined with toCIDRSet",
        ),
        (
            with("toEntities: [world]"),
            "spec.egress[0].toFQDNs",
            "cannot be combined with toEntities",
        ),
        (
            with("toServices: [{k8sService: {serviceName: a}}]"),
            "spec.egress[0].toServices",
            "not in the supported subset",
        ),
        (
            spec_with("  ingress:\n  - toFQDNs: [{matchName: a.com}]\n"),
            "spec.ingress[0].toFQDNs",
            "belongs in an egress rule",
        ),
        (
            spec_with("  ingressDeny:\n  - toFQDNs: [{matchName: a.com}]\n"),
            "spec.ingressDeny[0].toFQDNs",
            "belongs in an egress rule",
        ),
        (
            spec_with("  egressDeny:\n  - toFQDNs: [{matchName: a.com}]\n"),
            "spec.egressDeny[0].toFQDNs",
            "only supported in egress",
        ),
        (
            spec_with("  toFQDNs: [{matchName: a.com}]\n"),
            "spec.toFQDNs",
            "belongs in an egress rule",
        ),
    ];
    check_rejections(cases);
}

#[test]
fn l7_rules_rejections_name_the_field() {
    // `rules` on a UDP 53 entry of `section`'s first rule.
    let rules = |section: &str, rules: &str| {
        spec_with(&format!(
            "  {section}:\n  - toPorts:\n    - ports: [{{port: \"53\", protocol: UDP}}]\n      rules: {rules}\n"
        ))
    };
    let dns_on = |ports: &str| {
        spec_with(&format!(
            "  egress:\n  - toPorts:\n    - rules: {{dns: [{{matchPattern: \"*\"}}]}}\n      {ports}\n"
        ))
    };
    let only_dns = "; only rules.dns is";
    let cases: Vec<(String, &str, &str)> = vec![
        (
            rules("egress", "{http: [{method: GET}]}"),
            "spec.egress[0].toPorts[0].rules.http",
            "L7 HTTP policy is not supported; only rules.dns is",
        ),
        (
            rules("ingress", "{http: [{}]}"),
            "spec.ingress[0].toPorts[0].rules.http",
            "L7 HTTP policy",
        ),
        (
            rules("egress", "{kafka: [{}]}"),
            "spec.egress[0].toPorts[0].rules.kafka",
            "Kafka",
        ),
        (
            rules("egress", "{l7proto: x, l7: [{}]}"),
            "spec.egress[0].toPorts[0].rules.l7proto",
            only_dns,
        ),
        (
            rules("egress", "{l7: [{}]}"),
            "spec.egress[0].toPorts[0].rules.l7",
            only_dns,
        ),
        (
            rules("egress", "{dns: [{matchName: a.com}], grpc: 1}"),
            "spec.egress[0].toPorts[0].rules.grpc",
            only_dns,
        ),
        (
            rules("ingress", "{dns: [{matchName: a.com}]}"),
            "spec.ingress[0].toPorts[0].rules",
            "L7 rules in ingress",
        ),
        (
            rules("ingressDeny", "{dns: [{matchName: a.com}]}"),
            "spec.ingressDeny[0].toPorts[0].rules",
            "deny rules cannot carry",
        ),
        (
            rules("egressDeny", "{dns: [{matchName: a.com}]}"),
            "spec.egressDeny[0].toPorts[0].rules",
            "deny rules cannot carry",
        ),
        (
            rules("egress", "{dns: []}"),
            "spec.egress[0].toPorts[0].rules.dns",
            "is empty: list at least one",
        ),
        (
            rules("egress", "{}"),
            "spec.egress[0].toPorts[0].rules",
            "has no dns",
        ),
        (
            rules("egress", "{dns: [{matchName: a.com, matchPattern: b.com}]}"),
            "spec.egress[0].toPorts[0].rules.dns[0]",
            "both",
        ),
        (
            rules(
                "egress",
                "{dns: [{matchName: a.com}, {matchName: \"a b\"}]}",
            ),
            "spec.egress[0].toPorts[0].rules.dns[1].matchName",
            "' '",
        ),
        (
            rules("egress", "{dns: [{matchPattern: \"*\", matchRegex: x}]}"),
            "spec.egress[0].toPorts[0].rules.dns[0].matchRegex",
            "not in the supported subset",
        ),
        (
            dns_on(""),
            "spec.egress[0].toPorts[0].ports",
            "needs the ports",
        ),
        (
            dns_on("ports: []"),
            "spec.egress[0].toPorts[0].ports",
            "needs the ports",
        ),
        (
            dns_on("ports: [{protocol: UDP}]"),
            "spec.egress[0].toPorts[0].ports[0].port",
            "explicit non-zero port",
        ),
        (
            dns_on("ports: [{port: \"53\"}, {port: \"0\", protocol: TCP}]"),
            "spec.egress[0].toPorts[0].ports[1].port",
            "explicit non-zero port",
        ),
        (
            spec_with(
                "  egress:\n  - toFQDNs: [{matchName: a.com}]\n    toPorts:\n    - ports: [{port: \"53\"}]\n      rules: {dns: [{matchName: a.com}]}\n",
            ),
            "spec.egress[0].toPorts[0].rules",
            "in a toFQDNs rule",
        ),
    ];
    check_rejections(cases);
}

/// The fuzz seeds stay what their names say: `rejected-*` is refused, the rest parses and
/// compiles.
#[test]
fn fuzz_seeds_parse_unless_named_rejected() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/policy");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed = parse_policies(&text);
        if name.starts_with("rejected-") {
            assert!(parsed.is_err(), "{name} was accepted");
        } else {
            let policies = parsed.unwrap_or_else(|e| panic!("{name}: {e}"));
            let mut ids = IdentityAllocator::new();
            let eps = crate::tests::endpoints();
            compile(1, &policies, &eps, &[], AllowLocalhost::Always, &mut ids);
        }
        seen += 1;
    }
    assert!(seen >= 3, "no seeds in {}", dir.display());
}

//! `policy trace` with hypothetical pods, and its display.

use crate::tests::{ip, pol};
use crate::*;
use xylem_dataplane::conntrack::proto;

#[test]
fn trace_with_labels_and_display() {
    let policies = parse_policies(&pol(
        "web",
        "default",
        "  endpointSelector:\n    matchLabels: {app: web}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n",
    ))
    .unwrap();
    let ids = IdentityAllocator::new();
    let lbl = |app: &str| TracePeer::Labels {
        namespace: "default".into(),
        labels: [("app".to_owned(), app.to_owned())].into(),
    };
    let t = trace(
        &policies,
        &[],
        &[],
        AllowLocalhost::Policy,
        &ids,
        &lbl("client"),
        &lbl("web"),
        80,
        proto::TCP,
    );
    assert!(t.allowed, "{t}");
    let s = t.to_string();
    assert!(
        s.contains("ingress of destination: allowed by default/web spec[0] ingress[0]"),
        "{s}"
    );
    assert!(
        s.contains("egress of source: allowed: no policy selects it"),
        "{s}"
    );
    let t = trace(
        &policies,
        &[],
        &[],
        AllowLocalhost::Policy,
        &ids,
        &lbl("other"),
        &lbl("web"),
        80,
        proto::TCP,
    );
    assert_eq!(t.verdict, "policy-denied");
    assert!(
        t.to_string().contains("default-deny, no rule allows it"),
        "{t}"
    );
    let t = trace(
        &policies,
        &[],
        &[],
        AllowLocalhost::Policy,
        &ids,
        &lbl("web"),
        &TracePeer::Ip(ip("8.8.8.8")),
        53,
        proto::UDP,
    );
    assert!(t.allowed && t.ingress.is_none(), "{t}");
}

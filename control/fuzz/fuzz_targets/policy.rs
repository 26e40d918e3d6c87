//! Fuzzes the CiliumNetworkPolicy parser: any input is either parsed or rejected with an error,
//! never a panic; whatever parses also compiles, against endpoints that its selectors can match
//! (labels `app` in two namespaces, one with a `tier`), so the compiler's selector, CIDR and
//! port paths run too. Seeds: `seeds/policy/`.
#![no_main]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use xylem_policy::{EndpointSpec, IdentityAllocator, compile, parse_policies};

fn endpoints() -> Vec<EndpointSpec> {
    let ep = |i: u8, ns: &str, labels: &[(&str, &str)]| EndpointSpec {
        ip: Ipv4Addr::new(10, 200, 0, i),
        namespace: ns.to_owned(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
    };
    vec![
        ep(10, "default", &[("app", "web")]),
        ep(11, "default", &[("app", "client"), ("tier", "test")]),
        ep(12, "prod", &[("app", "web"), ("team", "a")]),
        ep(13, "other", &[("k8s:app", "two")]),
    ]
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(policies) = parse_policies(text) {
        let mut ids = IdentityAllocator::default();
        let _ = compile(
            1,
            &policies,
            &endpoints(),
            &[Ipv4Addr::new(10, 200, 0, 1)],
            xylem_policy::AllowLocalhost::Always,
            &mut ids,
        );
    }
});

//! Parsing, joining and rejection tests (no root needed).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::*;

const KUBECTL_LIST: &str = include_str!("../tests/kubectl-get-svc-endpointslices.yaml");

/// The issue's example.
const EXAMPLE: &str = include_str!("../tests/issue-example.yaml");

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn backend(addr: &str, port: u16, weight: u16, state: BackendState) -> Backend {
    Backend {
        ip: ip(addr),
        port,
        protocol: Protocol::Tcp,
        port_name: Some("http".into()),
        weight,
        state,
        node_name: None,
        target_ref: None,
    }
}

/// A one-port service `name` with `extra` lines appended to its spec and `annotations`.
fn svc(name: &str, annotations: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  annotations: {{{annotations}}}\n\
         spec:\n  clusterIP: 10.96.0.10\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n{extra}"
    )
}

/// An EndpointSlice of `service` with one ready endpoint per address.
fn slice(name: &str, service: &str, addrs: &[&str]) -> String {
    let mut s = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  \
         labels: {{kubernetes.io/service-name: {service}}}\naddressType: IPv4\n\
         ports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n"
    );
    for a in addrs {
        s.push_str(&format!(
            "- {{addresses: [{a}], conditions: {{ready: true}}}}\n"
        ));
    }
    s
}

#[test]
fn the_issues_example_parses_to_the_model() {
    let got = parse(EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
    let want = vec![Service {
        namespace: "default".into(),
        name: "web".into(),
        annotations: BTreeMap::from([
            ("lb.xylem.io/weights".into(), "10.200.0.12=2".into()),
            ("lb.xylem.io/health-check".into(), "tcp".into()),
        ]),
        frontends: vec![Frontend {
            ip: ip("10.96.0.10"),
            port: 80,
            protocol: Protocol::Tcp,
            port_name: Some("http".into()),
        }],
        ports: vec![ServicePort {
            name: Some("http".into()),
            port: 80,
            protocol: Protocol::Tcp,
            target_port: TargetPort::Number(8080),
        }],
        backends: vec![
            backend("10.200.0.11", 8080, 1, BackendState::Active),
            backend("10.200.0.12", 8080, 2, BackendState::Active),
            backend("10.200.0.13", 8080, 1, BackendState::Terminating),
        ],
        session_affinity: SessionAffinity::None,
        health_check: Some(HealthCheck {
            kind: HealthCheckKind::Tcp,
            interval_ms: DEFAULT_HEALTH_INTERVAL_MS,
            timeout_ms: DEFAULT_HEALTH_TIMEOUT_MS,
            rise: DEFAULT_HEALTH_RISE,
            fall: DEFAULT_HEALTH_FALL,
        }),
        cilium: CiliumAnnotations::default(),
    }];
    assert_eq!(got, want);
    // The model serializes snake_case and reads back the same.
    let json = serde_json::to_string(&got).unwrap();
    assert!(json.contains(r#""state":"terminating""#), "{json}");
    assert!(
        json.contains(r#""session_affinity":{"type":"none"}"#),
        "{json}"
    );
    assert!(json.contains(r#""kind":{"type":"tcp"}"#), "{json}");
    assert_eq!(serde_json::from_str::<Vec<Service>>(&json).unwrap(), got);
}

#[test]
fn real_kubectl_list_imports_unchanged() {
    let got = parse(KUBECTL_LIST).unwrap_or_else(|e| panic!("{e}"));
    let keys: Vec<_> = got.iter().map(Service::key).collect();
    assert_eq!(keys, ["default/kubernetes", "default/web", "infra/dns"]);

    let k8s = &got[0];
    assert_eq!(k8s.frontends.len(), 1);
    assert_eq!(k8s.backends.len(), 1);
    assert_eq!(
        (k8s.backends[0].ip, k8s.backends[0].port),
        (ip("172.18.0.2"), 6443)
    );

    // Named targetPort `http-web`: the controller names the slice's port after the service
    // port (`http`), and that is where the number comes from.
    let web = &got[1];
    assert_eq!(
        web.ports[0].target_port,
        TargetPort::Name("http-web".into())
    );
    let b: Vec<_> = web
        .backends
        .iter()
        .map(|b| (b.ip.to_string(), b.port, b.weight, b.state))
        .collect();
    assert_eq!(
        b,
        [
            ("10.200.0.11".into(), 8080, 1, BackendState::Active),
            ("10.200.0.12".into(), 8080, 2, BackendState::Active),
            ("10.200.0.13".into(), 8080, 1, BackendState::Terminating),
        ],
        "10.200.0.14 is neither ready nor serving: not a backend"
    );
    assert_eq!(web.backends[0].node_name.as_deref(), Some("node-a"));
    assert_eq!(
        web.backends[0].target_ref,
        Some(TargetRef {
            kind: Some("Pod".into()),
            namespace: Some("default".into()),
            name: Some("web-7d4b9c6f5-abcde".into()),
        })
    );
    assert_eq!(web.cilium.global, Some(true));
    assert!(
        web.annotations
            .contains_key("kubectl.kubernetes.io/last-applied-configuration")
    );

    // Two ports, two protocols, ClientIP with the timeout written out.
    let dns = &got[2];
    assert_eq!(
        dns.session_affinity,
        SessionAffinity::ClientIp { timeout_s: 10800 }
    );
    let f: Vec<_> = dns.frontends.iter().map(|f| (f.port, f.protocol)).collect();
    assert_eq!(f, [(53, Protocol::Udp), (53, Protocol::Tcp)]);
    let b: Vec<_> = dns
        .backends
        .iter()
        .map(|b| (b.port, b.protocol, b.port_name.clone().unwrap()))
        .collect();
    assert_eq!(
        b,
        [
            (5353, Protocol::Udp, "dns".into()),
            (5353, Protocol::Tcp, "dns-tcp".into())
        ]
    );
    // The second, empty slice (`endpoints: null`, `ports: null`) adds nothing.

    // An endpoint without conditions is ready, as kube-proxy reads it.
    let yaml = format!(
        "{}---\n{}",
        svc("web", "", ""),
        slice("web-1", "web", &["10.200.0.11"]).replace(", conditions: {ready: true}", "")
    );
    assert_eq!(
        parse(&yaml).unwrap()[0].backends[0].state,
        BackendState::Active
    );
}

#[test]
fn one_document_several_or_a_list_give_the_same_services() {
    let several = parse(EXAMPLE).unwrap();
    let mut items = String::new();
    for doc in EXAMPLE.split("---\n") {
        items.push_str("- ");
        items.push_str(&doc.trim_end().replace('\n', "\n  "));
        items.push('\n');
    }
    let list =
        format!("apiVersion: v1\nkind: List\nmetadata: {{resourceVersion: \"\"}}\nitems:\n{items}");
    assert_eq!(parse(&list).unwrap(), several);
    // A Service alone has no backends; an empty input has no services.
    let alone = parse(EXAMPLE.split("---").next().unwrap()).unwrap();
    assert!(alone[0].backends.is_empty());
    assert!(parse("").unwrap().is_empty());
    assert!(
        parse("apiVersion: v1\nkind: List\nitems: []\n")
            .unwrap()
            .is_empty()
    );
}

#[test]
fn named_target_port_resolves_through_the_slice() {
    let yaml = format!(
        "{}---\n{}",
        svc("web", "", "").replace("targetPort: 8080", "targetPort: web-http"),
        slice("web-1", "web", &["10.200.0.11"])
            .replace("{name: http, port: 8080", "{name: web-http, port: 9090")
    );
    let s = parse(&yaml).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s[0].backends[0].port, 9090,
        "looked up by the targetPort name"
    );

    // By the service port's name, as the EndpointSlice controller writes it.
    let yaml = format!(
        "{}---\n{}",
        svc("web", "", "").replace("targetPort: 8080", "targetPort: web-http"),
        slice("web-1", "web", &["10.200.0.11"]).replace("port: 8080", "port: 7070")
    );
    assert_eq!(parse(&yaml).unwrap()[0].backends[0].port, 7070);

    // A slice without the port contributes no backend to that service port.
    let yaml = format!(
        "{}---\n{}",
        svc("web", "", "").replace("targetPort: 8080", "targetPort: web-http"),
        slice("web-1", "web", &["10.200.0.11"]).replace("name: http,", "name: other,")
    );
    assert!(parse(&yaml).unwrap()[0].backends.is_empty());
}

#[test]
fn client_ip_affinity_defaults_its_timeout() {
    let s = parse(&svc("web", "", "  sessionAffinity: ClientIP\n")).unwrap();
    assert_eq!(
        s[0].session_affinity,
        SessionAffinity::ClientIp {
            timeout_s: DEFAULT_AFFINITY_TIMEOUT_S
        }
    );
    assert_eq!(DEFAULT_AFFINITY_TIMEOUT_S, 10800);
    let s = parse(&svc(
        "web",
        "",
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n",
    ))
    .unwrap();
    assert_eq!(
        s[0].session_affinity,
        SessionAffinity::ClientIp { timeout_s: 60 }
    );
    let json = serde_json::to_string(&s[0].session_affinity).unwrap();
    assert_eq!(json, r#"{"type":"client_ip","timeout_s":60}"#);
}

#[test]
fn weights_and_maintenance_annotations() {
    let yaml = format!(
        "{}---\n{}",
        svc(
            "web",
            "lb.xylem.io/weights: \" 10.200.0.11=10, 10.200.0.12=0,10.200.0.99=5\", \
             lb.xylem.io/maintenance: \"10.200.0.13\"",
            ""
        ),
        slice(
            "web-1",
            "web",
            &["10.200.0.11", "10.200.0.12", "10.200.0.13"]
        )
    );
    let s = parse(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let b: Vec<_> = s[0].backends.iter().map(|b| (b.weight, b.state)).collect();
    assert_eq!(
        b,
        [
            (10, BackendState::Active),
            (0, BackendState::Active),
            (1, BackendState::Maintenance)
        ]
    );
}

#[test]
fn health_check_and_cilium_annotations() {
    let s = parse(&svc(
        "web",
        "lb.xylem.io/health-check: \"http:/healthz:204\", lb.xylem.io/health-interval: 2s, \
         lb.xylem.io/health-timeout: 500ms, lb.xylem.io/health-rise: \"1\", \
         lb.xylem.io/health-fall: \"5\", service.cilium.io/global: \"true\", \
         service.cilium.io/shared: \"false\", service.cilium.io/affinity: local",
        "",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s[0].health_check,
        Some(HealthCheck {
            kind: HealthCheckKind::Http {
                path: "/healthz".into(),
                expect_status: 204
            },
            interval_ms: 2000,
            timeout_ms: 500,
            rise: 1,
            fall: 5,
        })
    );
    assert_eq!(
        s[0].cilium,
        CiliumAnnotations {
            global: Some(true),
            shared: Some(false),
            affinity: Some(CiliumAffinity::Local),
        }
    );
    let s = parse(&svc("web", "lb.xylem.io/health-check: \"http:/\"", "")).unwrap();
    assert_eq!(
        s[0].health_check.as_ref().unwrap().kind,
        HealthCheckKind::Http {
            path: "/".into(),
            expect_status: 200
        }
    );
}

#[test]
fn slices_of_services_the_agent_knows_come_back_for_join() {
    let yaml = slice("api-1", "api", &["10.200.0.21"]);
    let e = parse(&yaml).unwrap_err().to_string();
    assert!(e.contains("service default/api is in neither"), "{e}");
    let import = parse_with(&yaml, &|ns, name| ns == "default" && name == "api").unwrap();
    assert!(import.services.is_empty());
    assert_eq!(import.slices.len(), 1);
    let mut api = parse(&svc("api", "lb.xylem.io/weights: \"10.200.0.21=3\"", "")).unwrap();
    api[0].join(&import.slices).unwrap();
    assert_eq!(api[0].backends[0].weight, 3);
    let mut web = parse(&svc("web", "", "")).unwrap();
    let e = web[0].join(&import.slices).unwrap_err().to_string();
    assert!(e.contains("belongs to service default/api"), "{e}");
    assert!(import.joined.is_empty());
    // With its Service in the input, the slice is joined and also handed back as joined.
    let both = format!("{}---\n{yaml}", svc("api", "", ""));
    let import = parse_with(&both, &|_, _| false).unwrap();
    assert!(import.slices.is_empty());
    assert_eq!(import.joined.len(), 1);
    assert_eq!(import.joined[0].name, "api-1");
    assert_eq!(import.services[0].backends.len(), 1);
}

/// Each bad input, the field its error must name, and a phrase of the reason.
#[test]
fn rejections_name_the_field() {
    let web = |ann: &str, extra: &str| svc("web", ann, extra);
    let with_slice = |s: String, sl: String| format!("{s}---\n{sl}");
    let cases: Vec<(String, &str, &str)> = vec![
        // A duplicate frontend: two services on one virtual IP and port.
        (
            format!("{}---\n{}", web("", ""), svc("web2", "", "")),
            "spec.ports[0].port",
            "frontend 10.96.0.10:80/TCP is already service default/web's",
        ),
        (
            web("", "").replace(
                "ports: [{name: http, port: 80, targetPort: 8080}]",
                "ports: [{name: a, port: 80}, {name: b, port: 80}]",
            ),
            "spec.ports[1].port",
            "duplicate frontend",
        ),
        // A weight of 0 on every backend.
        (
            with_slice(
                web("lb.xylem.io/weights: \"10.200.0.11=0,10.200.0.12=0\"", ""),
                slice("web-1", "web", &["10.200.0.11", "10.200.0.12"]),
            ),
            "metadata.annotations.lb.xylem.io/weights",
            "every backend has weight 0",
        ),
        // Unknown protocols.
        (
            web("", "").replace("targetPort: 8080}", "targetPort: 8080, protocol: SCTP}"),
            "spec.ports[0].protocol",
            "\"SCTP\" is not supported",
        ),
        (
            with_slice(
                web("", ""),
                slice("web-1", "web", &["10.200.0.11"]).replace("protocol: TCP", "protocol: SCTP"),
            ),
            "ports[0].protocol",
            "\"SCTP\" is not supported",
        ),
        // Ports out of range.
        (
            web("", "").replace("port: 80,", "port: 70000,"),
            "spec.ports[0].port",
            "70000 is out of range",
        ),
        (
            web("", "").replace("port: 80,", "port: 0,"),
            "spec.ports[0].port",
            "out of range",
        ),
        (
            web("", "").replace("targetPort: 8080", "targetPort: 65536"),
            "spec.ports[0].targetPort",
            "out of range",
        ),
        (
            web("", "").replace("targetPort: 8080", "targetPort: \"8080\""),
            "spec.ports[0].targetPort",
            "a number written as a string",
        ),
        (
            with_slice(
                web("", ""),
                slice("web-1", "web", &["10.200.0.11"]).replace("port: 8080", "port: 99999"),
            ),
            "ports[0].port",
            "out of range",
        ),
        // Unknown fields, with their paths.
        (
            web("", "  externalIPs: [1.2.3.4]\n"),
            "spec.externalIPs",
            "rejected rather than ignored",
        ),
        (
            web("", "").replace("targetPort: 8080}", "targetPort: 8080, nodePort: 30080}"),
            "spec.ports[0].nodePort",
            "rejected rather than ignored",
        ),
        (
            web("", "").replace("metadata:\n", "metadata:\n  finalizers: [x]\n"),
            "metadata.finalizers",
            "rejected rather than ignored",
        ),
        (
            with_slice(
                web("", ""),
                slice("web-1", "web", &["10.200.0.11"]).replace(
                    "conditions: {ready: true}",
                    "conditions: {ready: true}, hints: {forZones: [{name: a}]}",
                ),
            ),
            "endpoints[0].hints",
            "rejected rather than ignored",
        ),
        (
            with_slice(
                web("", ""),
                slice("web-1", "web", &["10.200.0.11"])
                    .replace("{ready: true}", "{ready: true, healthy: true}"),
            ),
            "endpoints[0].conditions.healthy",
            "rejected rather than ignored",
        ),
        (
            web(
                "",
                "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeout: 5}}\n",
            ),
            "spec.sessionAffinityConfig.clientIP.timeout",
            "rejected rather than ignored",
        ),
        // An EndpointSlice whose service is missing.
        (
            with_slice(web("", ""), slice("api-1", "api", &["10.200.0.11"])),
            "metadata.labels.kubernetes.io/service-name",
            "service default/api is in neither the input nor the agent",
        ),
        (
            with_slice(
                web("", ""),
                slice("web-1", "web", &["10.200.0.11"]).replace(
                    "labels: {kubernetes.io/service-name: web}",
                    "labels: {app: web}",
                ),
            ),
            "metadata.labels.kubernetes.io/service-name",
            "required",
        ),
        // Non-ClusterIP types.
        (
            web("", "  type: NodePort\n"),
            "spec.type",
            "\"NodePort\" is not supported yet",
        ),
        (
            web("", "  type: LoadBalancer\n"),
            "spec.type",
            "\"LoadBalancer\" is not supported yet",
        ),
        // Addresses and families.
        (
            with_slice(
                web("", ""),
                slice("web-1", "web", &["10.200.0.11"]).replace("IPv4", "IPv6"),
            ),
            "addressType",
            "\"IPv6\" is not supported yet",
        ),
        (
            web("", "").replace("clusterIP: 10.96.0.10", "clusterIP: None"),
            "spec.clusterIP",
            "headless",
        ),
        (
            web("", "  clusterIPs: [10.96.0.10, \"fd00::10\"]\n"),
            "spec.clusterIPs[1]",
            "IPv6 is not supported yet",
        ),
        (
            web("", "  clusterIPs: [10.96.0.11]\n"),
            "spec.clusterIPs[0]",
            "must agree",
        ),
        (
            web("", "  ipFamilies: [IPv4, IPv6]\n"),
            "spec.ipFamilies[1]",
            "only IPv4",
        ),
        (
            web("", "  internalTrafficPolicy: Local\n"),
            "spec.internalTrafficPolicy",
            "\"Local\" is not supported",
        ),
        (
            web("", "  sessionAffinity: Cookie\n"),
            "spec.sessionAffinity",
            "expected None or ClientIP",
        ),
        (
            web(
                "",
                "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}\n",
            ),
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            "out of range",
        ),
        // Malformed annotations name their key.
        (
            web("lb.xylem.io/weights: \"10.200.0.11:2\"", ""),
            "metadata.annotations.lb.xylem.io/weights",
            "not ADDRESS=WEIGHT",
        ),
        (
            web("lb.xylem.io/weights: \"10.200.0.11=heavy\"", ""),
            "metadata.annotations.lb.xylem.io/weights",
            "not a number 0-65535",
        ),
        (
            web("lb.xylem.io/maintenance: \"10.200.0\"", ""),
            "metadata.annotations.lb.xylem.io/maintenance",
            "not an IPv4 address",
        ),
        (
            web("lb.xylem.io/health-check: icmp", ""),
            "metadata.annotations.lb.xylem.io/health-check",
            "expected tcp, http",
        ),
        (
            web("lb.xylem.io/health-check: \"http:/x:999\"", ""),
            "metadata.annotations.lb.xylem.io/health-check",
            "not an HTTP status",
        ),
        (
            web(
                "lb.xylem.io/health-check: tcp, lb.xylem.io/health-interval: soon",
                "",
            ),
            "metadata.annotations.lb.xylem.io/health-interval",
            "expected a duration",
        ),
        (
            web(
                "lb.xylem.io/health-check: tcp, lb.xylem.io/health-timeout: 10s",
                "",
            ),
            "metadata.annotations.lb.xylem.io/health-timeout",
            "longer than the interval",
        ),
        (
            web(
                "lb.xylem.io/health-check: tcp, lb.xylem.io/health-rise: \"0\"",
                "",
            ),
            "metadata.annotations.lb.xylem.io/health-rise",
            "1-100",
        ),
        (
            web("lb.xylem.io/health-fall: \"3\"", ""),
            "metadata.annotations.lb.xylem.io/health-fall",
            "without lb.xylem.io/health-check",
        ),
        (
            web("lb.xylem.io/weight: \"10.200.0.11=2\"", ""),
            "metadata.annotations.lb.xylem.io/weight",
            "unknown Xylem annotation",
        ),
        (
            web("service.cilium.io/global: yes", ""),
            "metadata.annotations.service.cilium.io/global",
            "not a boolean",
        ),
        (
            web("service.cilium.io/affinity: nearest", ""),
            "metadata.annotations.service.cilium.io/affinity",
            "expected local, remote or none",
        ),
        // Kinds and versions.
        (
            web("", "").replace("apiVersion: v1", "apiVersion: v2"),
            "apiVersion",
            "expected \"v1\"",
        ),
        (
            "apiVersion: v1\nkind: Endpoints\nmetadata: {name: web}\n".into(),
            "kind",
            "export EndpointSlices instead",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\n".into(),
            "kind",
            "expected \"Service\" or \"EndpointSlice\"",
        ),
        (
            web("", "").replace("metadata:\n", "metadata:\n  labels: {a: 1}\n"),
            "metadata.labels.a",
            "invalid type",
        ),
    ];
    for (yaml, field, why) in cases {
        let e = parse(&yaml)
            .expect_err(&format!("accepted:\n{yaml}"))
            .to_string();
        assert!(
            e.contains(&format!(": {field}: ")),
            "wanted field {field}: {e}"
        );
        assert!(e.contains(why), "wanted {why:?}: {e}");
        assert!(e.contains("document "), "{e}");
        assert!(e.ends_with("nothing was imported"), "{e}");
    }
}

#[test]
fn errors_name_the_document_kind_and_name() {
    let bad = slice("web-1", "web", &["10.200.0.11"]).replace("IPv4", "FQDN");
    let e = parse(&format!("{}---\n{bad}", svc("web", "", ""))).unwrap_err();
    let Error::Invalid {
        document, field, ..
    } = &e;
    assert_eq!(document, "document 2 (EndpointSlice default/web-1)");
    assert_eq!(field, "addressType");

    let list = format!(
        "apiVersion: v1\nkind: List\nitems:\n- {}\n",
        svc("web", "", "  type: ExternalName\n")
            .trim_end()
            .replace('\n', "\n  ")
    );
    let e = parse(&list).unwrap_err().to_string();
    assert!(
        e.starts_with(
            "invalid service spec in document 1 items[0] (Service default/web): spec.type: "
        ),
        "{e}"
    );
    let e = parse("apiVersion: v1\nkind: List\nitems: []\nextra: 1\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains(": extra: not a field of a List"), "{e}");
}

#[test]
fn all_or_nothing_and_duplicates() {
    // One bad document among good ones rejects the input.
    let good = format!(
        "{}---\n{}",
        svc("web", "", ""),
        slice("web-1", "web", &["10.200.0.11"])
    );
    let e = parse(&format!(
        "{good}---\n{}",
        svc("bad", "", "  type: NodePort\n")
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("document 3 (Service default/bad)"), "{e}");
    let e = parse(&format!("{good}---\n{}", svc("web", "", "")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("service default/web appears twice"), "{e}");
    let e = parse(&format!(
        "{good}---\n{}",
        slice("web-1", "web", &["10.200.0.12"])
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("EndpointSlice default/web-1 appears twice"),
        "{e}"
    );
    // The same frontend port in another namespace's service on another IP is fine; the same
    // address in two slices is one backend.
    let other = svc("web", "", "")
        .replace("name: web\n", "name: web\n  namespace: prod\n")
        .replace("10.96.0.10", "10.96.0.20");
    let two = format!(
        "{good}---\n{}---\n{other}",
        slice("web-2", "web", &["10.200.0.11", "10.200.0.12"])
    );
    let s = parse(&two).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].backends.len(), 2);
}

#[test]
fn a_backend_states_name_is_its_serialized_form() {
    for s in [
        BackendState::Active,
        BackendState::Terminating,
        BackendState::Maintenance,
    ] {
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            format!("\"{}\"", s.as_str())
        );
    }
}

use std::sync::Arc;

use super::*;
use xylem_dataplane::services::Algorithm;
use xylem_dataplane::wire::ip::proto;

/// The example: .11 and .12 active (.12 weight 2), .13 terminating.
const WEB: &str = include_str!("../../../services/tests/issue-example.yaml");

fn parse(yaml: &str) -> Vec<Service> {
    xylem_services::parse(yaml).unwrap()
}

fn cfg() -> ServicesConfig {
    ServicesConfig {
        algorithm: Algorithm::Maglev,
        maglev_table_size: 251,
    }
}

fn sa(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn all_unchecked(_: &str, _: SocketAddrV4) -> BackendHealth {
    BackendHealth::Unchecked
}

fn build(
    services: &[Service],
    health: &dyn Fn(&str, SocketAddrV4) -> BackendHealth,
    state: &mut ServiceBuildState,
) -> BuiltServices {
    let refs: Vec<&Service> = services.iter().collect();
    build_services(&refs, health, &cfg(), state).unwrap()
}

/// The addresses a frontend's new connections may reach.
fn reachable(b: &BuiltServices, vip: &str, port: u16) -> Vec<SocketAddrV4> {
    let f = b
        .tables
        .frontend(vip.parse().unwrap(), port, proto::TCP)
        .expect("frontend");
    f.backends.iter().map(|b| b.addr).collect()
}

#[test]
fn active_backends_take_new_connections_in_proportion_to_their_weights() {
    let mut st = ServiceBuildState::default();
    let b = build(&parse(WEB), &all_unchecked, &mut st);
    assert_eq!(
        reachable(&b, "10.96.0.10", 80),
        [sa("10.200.0.11:8080"), sa("10.200.0.12:8080")],
        "the terminating backend is left out while active ones remain"
    );
    let shares = &b.shares["default/web"];
    assert_eq!(shares.len(), 3);
    assert!((shares[0] - 1.0 / 3.0).abs() < 0.01, "{shares:?}");
    assert!((shares[1] - 2.0 / 3.0).abs() < 0.01, "{shares:?}");
    assert_eq!(shares[2], 0.0);
    assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    // Every backend, the terminating one included, is known by id for established connections.
    let id13 = st
        .ids
        .backends
        .get(&("10.200.0.13".parse().unwrap(), 8080, Protocol::Tcp))
        .unwrap();
    assert_eq!(b.tables.backend(id13), Some(sa("10.200.0.13:8080")));
    let f = b
        .tables
        .frontend("10.96.0.10".parse().unwrap(), 80, proto::TCP)
        .unwrap();
    assert_eq!(f.affinity_timeout_ns, 0);
    assert_eq!(b.tables.frontend_addr(f.id), Some(sa("10.96.0.10:80")));
}

#[test]
fn terminating_backends_serve_only_when_no_active_one_is_left_and_down_ones_never() {
    let mut st = ServiceBuildState::default();
    let down = |addrs: &'static [&'static str]| {
        move |svc: &str, a: SocketAddrV4| {
            assert_eq!(svc, "default/web");
            if addrs.iter().any(|d| sa(d) == a) {
                BackendHealth::Down
            } else {
                BackendHealth::Up
            }
        }
    };
    let b = build(&parse(WEB), &down(&["10.200.0.11:8080"]), &mut st);
    assert_eq!(reachable(&b, "10.96.0.10", 80), [sa("10.200.0.12:8080")]);
    assert_eq!(b.shares["default/web"], [0.0, 1.0, 0.0]);
    const BOTH: &[&str] = &["10.200.0.11:8080", "10.200.0.12:8080"];
    let b = build(&parse(WEB), &down(BOTH), &mut st);
    assert_eq!(
        reachable(&b, "10.96.0.10", 80),
        [sa("10.200.0.13:8080")],
        "no active backend is usable: the terminating one takes new connections"
    );
    const ALL: &[&str] = &["10.200.0.11:8080", "10.200.0.12:8080", "10.200.0.13:8080"];
    let b = build(&parse(WEB), &down(ALL), &mut st);
    let f = b
        .tables
        .frontend("10.96.0.10".parse().unwrap(), 80, proto::TCP)
        .unwrap();
    assert!(f.backends.is_empty() && f.maglev.is_none());
    assert_eq!(f.select(12345), None);
    assert_eq!(b.shares["default/web"], [0.0, 0.0, 0.0]);
}

#[test]
fn maintenance_and_weight_zero_take_no_new_connection_not_even_as_the_last_ones() {
    let mut st = ServiceBuildState::default();
    let yaml = WEB.replace(
        "lb.xylem.io/health-check: tcp",
        "lb.xylem.io/maintenance: \"10.200.0.12,10.200.0.13\"",
    );
    let b = build(&parse(&yaml), &all_unchecked, &mut st);
    assert_eq!(reachable(&b, "10.96.0.10", 80), [sa("10.200.0.11:8080")]);
    assert_eq!(b.shares["default/web"], [1.0, 0.0, 0.0]);
    // .11 at weight 0: nothing active is usable, and maintenance is never a fallback.
    let yaml = yaml.replace("10.200.0.12=2", "10.200.0.11=0,10.200.0.12=2");
    let b = build(&parse(&yaml), &all_unchecked, &mut st);
    assert!(reachable(&b, "10.96.0.10", 80).is_empty());
    assert_eq!(
        b.tables.backend(
            st.ids
                .backends
                .get(&("10.200.0.12".parse().unwrap(), 8080, Protocol::Tcp))
                .unwrap()
        ),
        Some(sa("10.200.0.12:8080")),
        "a backend in maintenance keeps its id for established connections"
    );
}

#[test]
fn ids_are_stable_across_rebuilds_and_a_gone_backends_id_is_not_given_to_a_new_one() {
    let mut st = ServiceBuildState::default();
    let key = |ip: &str| (ip.parse().unwrap(), 8080, Protocol::Tcp);
    build(&parse(WEB), &all_unchecked, &mut st);
    let (id11, id12) = (
        st.ids.backends.get(&key("10.200.0.11")).unwrap(),
        st.ids.backends.get(&key("10.200.0.12")).unwrap(),
    );
    let fid = st
        .ids
        .frontends
        .get(&("10.96.0.10".parse().unwrap(), 80, Protocol::Tcp))
        .unwrap();
    // .11 leaves, .14 arrives.
    let next = WEB.replace("10.200.0.11]", "10.200.0.14]");
    let b = build(&parse(&next), &all_unchecked, &mut st);
    assert_eq!(st.ids.backends.get(&key("10.200.0.11")), None, "freed");
    assert_eq!(st.ids.backends.get(&key("10.200.0.12")), Some(id12));
    let id14 = st.ids.backends.get(&key("10.200.0.14")).unwrap();
    assert_ne!(id14, id11, "a freed id is not reused soon");
    assert_eq!(b.tables.backend(id11), None);
    assert_eq!(b.tables.backend(id14), Some(sa("10.200.0.14:8080")));
    let f = b
        .tables
        .frontend("10.96.0.10".parse().unwrap(), 80, proto::TCP)
        .unwrap();
    assert_eq!(f.id, fid, "the frontend keeps its id");
    // .11 comes back: a new id again.
    build(&parse(WEB), &all_unchecked, &mut st);
    let again = st.ids.backends.get(&key("10.200.0.11")).unwrap();
    assert!(again != id11 && again != id14, "{again} {id11} {id14}");
}

const DNS: &str = "apiVersion: v1
kind: Service
metadata: {name: dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.53
  sessionAffinity: ClientIP
  ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dns-1
  namespace: kube-system
  labels: {kubernetes.io/service-name: dns}
addressType: IPv4
ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]
endpoints:
  - {addresses: [10.200.0.21]}
  - {addresses: [10.200.0.22]}
";

#[test]
fn a_change_to_one_service_rebuilds_no_other_services_maglev_table() {
    let mut st = ServiceBuildState::default();
    let mut both = parse(WEB);
    both.extend(parse(DNS));
    let table = |b: &BuiltServices, vip: &str, port: u16, p: u8| {
        let f = b.tables.frontend(vip.parse().unwrap(), port, p).unwrap();
        Arc::clone(f.maglev.as_ref().unwrap())
    };
    let first = build(&both, &all_unchecked, &mut st);
    let dns_udp = table(&first, "10.96.0.53", 53, proto::UDP);
    assert!(
        Arc::ptr_eq(&dns_udp, &table(&first, "10.96.0.53", 53, proto::TCP)),
        "dns's two ports have the same backends and weights: one table"
    );
    assert_eq!(st.cache.len(), 2, "web's and dns's");
    let web = table(&first, "10.96.0.10", 80, proto::TCP);
    let udp = first
        .tables
        .frontend("10.96.0.53".parse().unwrap(), 53, proto::UDP)
        .unwrap();
    assert_eq!(udp.affinity_timeout_ns, 10_800 * 1_000_000_000);
    assert_eq!(udp.backends.len(), 2);

    let mut changed = parse(&WEB.replace("10.200.0.12=2", "10.200.0.12=3"));
    changed.extend(parse(DNS));
    let second = build(&changed, &all_unchecked, &mut st);
    assert!(
        Arc::ptr_eq(&dns_udp, &table(&second, "10.96.0.53", 53, proto::UDP)),
        "dns's table is carried over, not rebuilt"
    );
    assert!(!Arc::ptr_eq(
        &web,
        &table(&second, "10.96.0.10", 80, proto::TCP)
    ));
    assert!((second.shares["default/web"][1] - 0.75).abs() < 0.01);
    assert_eq!(st.cache.len(), 2, "the old web table is no longer held");

    // A rebuild with nothing changed builds nothing.
    let third = build(&changed, &all_unchecked, &mut st);
    assert!(Arc::ptr_eq(
        &table(&second, "10.96.0.10", 80, proto::TCP),
        &table(&third, "10.96.0.10", 80, proto::TCP)
    ));
}

#[test]
fn the_algorithm_and_table_size_are_the_configurations() {
    let mut st = ServiceBuildState::default();
    let refs: Vec<Service> = parse(WEB);
    let refs: Vec<&Service> = refs.iter().collect();
    let c = ServicesConfig {
        algorithm: Algorithm::Random,
        maglev_table_size: 509,
    };
    let b = build_services(&refs, &all_unchecked, &c, &mut st).unwrap();
    assert_eq!(b.tables.algorithm(), Algorithm::Random);
    let f = b
        .tables
        .frontend("10.96.0.10".parse().unwrap(), 80, proto::TCP)
        .unwrap();
    assert_eq!(f.maglev.as_ref().unwrap().table_size(), 509);
}

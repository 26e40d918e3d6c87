//! Prometheus metrics, encoded by `prometheus-client`.
//!
//! Workers keep plain per-core counters (single-writer relaxed atomics); nothing is shared per
//! packet. At each scrape the control side takes a [`Status`] (which sums the workers) and
//! builds a fresh registry from it, so the exposition always reflects the counters' current
//! values and no metric object is touched outside a scrape.
//!
//! Names (with the `xylem_` prefix; counters get `_total` from the encoder):
//! `xylem_forward_count_total`, `xylem_forward_bytes_total`,
//! `xylem_drop_count_total{reason,direction}`, `xylem_xdp_redirect_total`,
//! `xylem_xdp_no_socket_total`, `xylem_worker_busy_ratio{worker,core}`,
//! `xylem_monitor_events_lost_total`, `xylem_rx_packets_total`, `xylem_rx_bytes_total`,
//! `xylem_tx_packets_total`, `xylem_tx_bytes_total`, `xylem_port_rx_packets_total{port}`,
//! `xylem_port_tx_packets_total{port}`, `xylem_port_drop_count_total{port}`,
//! `xylem_slowpath_rx_total`, `xylem_slowpath_tx_total`, `xylem_slowpath_tx_dropped_total`,
//! `xylem_slowpath_tx_unroutable_total`, `xylem_slowpath_probes_denied_total`,
//! `xylem_icmp_errors_sent_total`, `xylem_resets_sent_total`,
//! `xylem_dns_queries_total{verdict="forwarded|refused"}`, `xylem_dns_answers_total`,
//! `xylem_dns_learned_total`, `xylem_dns_log_lost_total`, `xylem_fqdn_cache_names`,
//! `xylem_endpoints`, `xylem_uptime_seconds`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use xylem_api::Status;

type Labels = Vec<(String, String)>;

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

fn labelled(reg: &mut Registry, name: &str, help: &str, values: Vec<(Labels, u64)>) {
    let f = Family::<Labels, Counter>::default();
    for (l, v) in values {
        f.get_or_create(&l).inc_by(v);
    }
    reg.register(name, help, f);
}

/// The exposition text for a status snapshot and the monitor's lost-event total.
pub fn render(st: &Status, monitor_lost: u64, endpoints: usize) -> String {
    let mut reg = Registry::default();
    let t = &st.totals;
    counters(
        &mut reg,
        &[
            (
                "xylem_forward_count",
                "Packets forwarded by the workers",
                t.forwarded,
            ),
            (
                "xylem_forward_bytes",
                "Bytes of forwarded packets sent by the workers",
                t.forwarded_bytes,
            ),
        ],
    );
    drops_and_redirector(&mut reg, st);
    let busy = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for w in &st.workers {
        busy.get_or_create(&vec![
            ("worker".into(), w.id.to_string()),
            ("core".into(), w.core.to_string()),
        ])
        .set(w.busy_ratio);
    }
    reg.register(
        "xylem_worker_busy_ratio",
        "Share of wall time each worker spent on batches that moved frames",
        busy,
    );
    counters(
        &mut reg,
        &[
            (
                "xylem_monitor_events_lost",
                "Flow events dropped because a monitor ring or client was full",
                monitor_lost,
            ),
            (
                "xylem_rx_packets",
                "Frames received by the workers",
                t.rx_packets,
            ),
            (
                "xylem_rx_bytes",
                "Bytes received by the workers",
                t.rx_bytes,
            ),
            (
                "xylem_tx_packets",
                "Frames sent by the workers",
                t.tx_packets,
            ),
            ("xylem_tx_bytes", "Bytes sent by the workers", t.tx_bytes),
        ],
    );
    ports(&mut reg, st);
    counters(
        &mut reg,
        &[
            (
                "xylem_slowpath_rx",
                "Frames handed to the slow path",
                st.slowpath.rx,
            ),
            (
                "xylem_slowpath_tx",
                "Frames the slow path sent",
                st.slowpath.tx,
            ),
            (
                "xylem_slowpath_tx_dropped",
                "Slow-path replies dropped for a full worker queue",
                st.slowpath.tx_dropped,
            ),
            (
                "xylem_slowpath_tx_unroutable",
                "Slow-path frames not sent because no route leads to their destination",
                st.slowpath.tx_unroutable,
            ),
            (
                "xylem_slowpath_probes_denied",
                "Health-check probe frames the policy did not let out of the gateway",
                t.slowpath_probes_denied,
            ),
            (
                "xylem_icmp_errors_sent",
                "ICMP errors the workers built (time exceeded; port unreachable from a service \
                 with no backend)",
                t.icmp_errors_sent,
            ),
            (
                "xylem_resets_sent",
                "TCP resets the workers built (a connection to a service with no backend)",
                t.resets_sent,
            ),
        ],
    );
    dns(&mut reg, st);
    let eps: Gauge = Gauge::default();
    eps.set(endpoints as i64);
    reg.register("xylem_endpoints", "Endpoints served", eps);
    let up: Gauge<f64, AtomicU64> = Gauge::default();
    up.set(st.uptime_s);
    reg.register(
        "xylem_uptime_seconds",
        "Seconds since the agent started",
        up,
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

/// Drops by reason, and the XDP program's counters.
fn drops_and_redirector(reg: &mut Registry, st: &Status) {
    labelled(
        reg,
        "xylem_drop_count",
        "Packets dropped by the dataplane, by reason and direction",
        st.totals
            .drops
            .iter()
            .map(|(r, v)| {
                (
                    vec![
                        ("reason".into(), (*r).to_string()),
                        ("direction".into(), "ingress".into()),
                    ],
                    *v,
                )
            })
            .collect(),
    );
    labelled(
        reg,
        "xylem_xsk_kernel",
        "The kernel's counters of the workers' AF_XDP sockets (XDP_STATISTICS), by name: \
         rx_dropped, rx_ring_full, rx_invalid_descs and tx_invalid_descs are frames lost before \
         the dataplane saw them; rx_fill_ring_empty_descs counts times the fill ring was empty",
        st.totals
            .xsk
            .iter()
            .map(|(k, v)| (vec![("counter".into(), (*k).to_string())], *v))
            .collect(),
    );
    counters(
        reg,
        &[
            (
                "xylem_xdp_redirect",
                "Frames the XDP program redirected into AF_XDP sockets",
                st.redirector.redirected,
            ),
            (
                "xylem_xdp_no_socket",
                "Frames the XDP program dropped because their queue had no AF_XDP socket",
                st.redirector.no_socket,
            ),
        ],
    );
}

/// DNS-aware policy: the DNS stage's counters and the FQDN cache's size.
fn dns(reg: &mut Registry, st: &Status) {
    let d = &st.dns;
    let verdict = |v: &str| vec![("verdict".to_string(), v.to_string())];
    labelled(
        reg,
        "xylem_dns_queries",
        "DNS queries the DNS stage inspected, by verdict (refused: answered by the dataplane)",
        vec![
            (verdict("forwarded"), d.queries_forwarded),
            (verdict("refused"), d.queries_refused),
        ],
    );
    counters(
        reg,
        &[
            (
                "xylem_dns_answers",
                "DNS answers the DNS stage inspected and sent on",
                d.answers,
            ),
            (
                "xylem_dns_learned",
                "Addresses learned (or refreshed) from DNS answers as allowed destinations",
                d.learned,
            ),
            (
                "xylem_dns_log_lost",
                "DNS records dropped because the DNS log was full (lost to the FQDN cache and \
                 the monitor; the addresses were learned)",
                d.log_lost,
            ),
        ],
    );
    let names: Gauge = Gauge::default();
    names.set(i64::try_from(d.cache_names).unwrap_or(i64::MAX));
    reg.register(
        "xylem_fqdn_cache_names",
        "(Endpoint, DNS name) entries in the FQDN cache",
        names,
    );
}

/// Registers plain counters: `(name, help, value)`, in order.
fn counters(reg: &mut Registry, list: &[(&'static str, &'static str, u64)]) {
    for &(name, help, v) in list {
        counter(reg, name, help, v);
    }
}

/// The per-port counters.
fn ports(reg: &mut Registry, st: &Status) {
    let port = |p: &xylem_api::PortStatus| vec![("port".to_string(), p.ifname.clone())];
    labelled(
        reg,
        "xylem_port_rx_packets",
        "Frames received per port",
        st.ports.iter().map(|p| (port(p), p.rx)).collect(),
    );
    labelled(
        reg,
        "xylem_port_tx_packets",
        "Frames sent per port",
        st.ports.iter().map(|p| (port(p), p.tx)).collect(),
    );
    labelled(
        reg,
        "xylem_port_drop_count",
        "Frames received on a port and dropped",
        st.ports.iter().map(|p| (port(p), p.drops)).collect(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use xylem_api::{DnsCounters, Health, SlowPathCounters};

    #[test]
    fn dns_counters_and_the_cache_size_are_exposed() {
        let st = Status {
            version: "0".into(),
            node: "n1".into(),
            uptime_s: 1.0,
            mode: xylem_dataplane::tables::Mode::Full,
            placement: xylem_dataplane::worker::Placement::Shared,
            batch_size: 64,
            tables_revision: 1,
            health: Health {
                ok: true,
                reason: None,
            },
            workers: Vec::new(),
            ports: Vec::new(),
            missing_interfaces: Vec::new(),
            redirector: Default::default(),
            slowpath: SlowPathCounters {
                rx: 0,
                tx: 0,
                tx_dropped: 0,
                tx_unroutable: 0,
            },
            totals: Default::default(),
            dns: DnsCounters {
                queries_forwarded: 7,
                queries_refused: 2,
                answers: 6,
                learned: 11,
                log_lost: 1,
                cache_names: 3,
            },
            encryption: "disabled".into(),
            network: Default::default(),
        };
        let text = render(&st, 0, 0);
        for line in [
            r#"xylem_dns_queries_total{verdict="forwarded"} 7"#,
            r#"xylem_dns_queries_total{verdict="refused"} 2"#,
            "xylem_dns_answers_total 6",
            "xylem_dns_learned_total 11",
            "xylem_dns_log_lost_total 1",
            "xylem_fqdn_cache_names 3",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }
}

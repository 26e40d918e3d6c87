//! `report.md` of the `dns` subcommand: the two figures issue 12 asks for, the tables behind
//! them, and the conditions.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use crate::dns_results::{
    Deltas, DnsResults, INSPECTION_P99_GOAL_US, RATE_GOAL_QPS, Setup, SetupSummary, Verdict,
    agent_side_cpu_ms, dataplane_drops, rcodes_text, socket_drops,
};
use crate::dnsperf::CLEAN_SHARE;

fn us(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.0}")).unwrap_or_else(|| "–".into())
}

fn signed(v: Option<f64>) -> String {
    v.map(|x| format!("{x:+.0}")).unwrap_or_else(|| "–".into())
}

/// A delta that may sit on the target: one decimal, so +20.5 does not read as +20.
fn signed1(v: Option<f64>) -> String {
    v.map(|x| format!("{x:+.1}")).unwrap_or_else(|| "–".into())
}

fn times(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.2}×")).unwrap_or_else(|| "–".into())
}

fn qps(v: Option<u32>) -> String {
    v.map(|x| format!("{x}")).unwrap_or_else(|| "none".into())
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::String(s) if s.is_empty() => "none".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn row(res: &DnsResults, s: Setup) -> Option<&SetupSummary> {
    res.summary.iter().find(|r| r.setup == s)
}

fn verdict_text(d: &Deltas) -> String {
    let v: Vec<f64> = d.per_rep.iter().filter_map(|x| x.minus_full_us).collect();
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    match d.verdict() {
        Verdict::Met => "**met** in every repetition".into(),
        Verdict::NotMet => "**not met** in any repetition".into(),
        Verdict::Inconclusive => format!(
            "**not resolved by this run**: the repetitions' deltas range from {lo:+.0} to {hi:+.0} µs, so the P99's run-to-run noise on this machine is larger than the target"
        ),
        Verdict::Unmeasured => "not measured".into(),
    }
}

fn goals(md: &mut String, res: &DnsResults) {
    let d = &res.deltas;
    md.push_str("## The two figures\n\n");
    let per_rep: Vec<String> = d
        .per_rep
        .iter()
        .map(|x| format!("{} µs", signed(x.minus_full_us)))
        .collect();
    let [f50, f90, f99] = d.pooled_minus_full_us;
    let [p50, p90, p99] = d.pooled_minus_passthrough_us;
    let _ = writeln!(
        md,
        "**(a) Latency inspection adds, P99(inspected) − P99(full)**, each repetition's setups run back to back: {}; median {} µs. Target ≤ {INSPECTION_P99_GOAL_US:.0} µs: {}.\n\n\
         All {} repetitions' queries pooled per setup, inspected − full: P99 {} µs, P90 {} µs, P50 {} µs. \
         Against passthrough, P99(inspected) − P99(passthrough): median {} µs per repetition ({} median ratio); pooled P99 {} µs, P90 {} µs, P50 {} µs.\n",
        per_rep.join(", "),
        signed1(d.median_minus_full_us),
        verdict_text(d),
        d.per_rep.len(),
        signed1(f99),
        signed1(f90),
        signed1(f50),
        signed1(d.median_minus_passthrough_us),
        times(d.median_ratio_passthrough),
        signed1(p99),
        signed1(p90),
        signed1(p50),
    );
    let _ = writeln!(
        md,
        "**(b) Highest clean dnsperf rate** (0 lost, ≥ {:.0} % of the offered rate achieved; with several passes, clean in every pass that ran the rate):\n",
        CLEAN_SHARE * 100.0
    );
    md.push_str("| setup | highest clean rate (q/s) | per pass | clean at 20,000 q/s | best achieved (q/s) | highest rate the path lost nothing at (q/s) | highest rate tried (q/s) |\n|---|---:|---|---|---:|---:|---:|\n");
    for r in &res.summary {
        let at_goal = match r.clean_at_goal {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not run",
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {at_goal} | {} | {} | {} |",
            r.setup,
            qps(r.highest_clean_qps),
            r.highest_clean_per_pass
                .iter()
                .map(|v| qps(*v))
                .collect::<Vec<_>>()
                .join(", "),
            r.best_achieved_qps
                .map(|v| format!("{v:.0}"))
                .unwrap_or_else(|| "–".into()),
            qps(r.highest_path_clean_qps),
            qps(r.highest_tried_qps),
        );
    }
    md.push_str("\n*The path lost nothing* at a step when the rate was achieved, the agent counted no drop, and every lost query is matched by a datagram the DNS pod's socket dropped for a full receive buffer (UDP RcvbufErrors in its namespace): dnsmasq falling behind, not the path. Stepping stops after two steps that were not clean in the strict sense, so this rate is a lower bound.\n");
    let insp = row(res, Setup::Inspected).and_then(|r| r.clean_at_goal);
    let _ = writeln!(
        md,
        "\nGoal: no lost query at {RATE_GOAL_QPS} q/s through the dataplane with inspection: {}.\n",
        match insp {
            Some(true) => "**met**",
            Some(false) => "**not met**",
            None => "not measured",
        }
    );
}

fn latency_tables(md: &mut String, res: &DnsResults) {
    md.push_str("## Latency, query by query\n\nMedians over repetitions of each repetition's percentile; max is the largest single query of all repetitions. µs.\n\n");
    md.push_str("| setup | reps | P50 | P90 | P99 | P99 range | max | timed out | P99 per repetition | pooled P50 / P90 / P99 / P99.9 |\n|---|---:|---:|---:|---:|---|---:|---:|---|---|\n");
    for r in &res.summary {
        let per: Vec<String> = r.p99_per_rep.iter().map(|v| us(*v)).collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {}–{} | {} | {} | {} | {} |",
            r.setup,
            r.reps,
            us(r.p50_us),
            us(r.p90_us),
            us(r.p99_us),
            us(r.p99_min_us),
            us(r.p99_max_us),
            us(r.max_us),
            r.timeouts,
            per.join(", "),
            r.pooled.map_or_else(
                || "–".to_string(),
                |p| format!(
                    "{:.0} / {:.0} / {:.0} / {:.0} ({} queries)",
                    p.p50_us, p.p90_us, p.p99_us, p.p999_us, p.n
                )
            )
        );
    }
    md.push_str("\nInspection's cost within each repetition (the setups of one repetition ran back to back):\n\n");
    md.push_str("| rep | P99 inspected | P99 full | P99 passthrough | inspected − full | inspected − passthrough | inspected / full | inspected / passthrough |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for d in &res.deltas.per_rep {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            d.rep,
            us(d.inspected_p99_us),
            us(d.full_p99_us),
            us(d.passthrough_p99_us),
            signed(d.minus_full_us),
            signed(d.minus_passthrough_us),
            times(d.ratio_full),
            times(d.ratio_passthrough)
        );
    }
    let d = &res.deltas;
    let _ = writeln!(
        md,
        "| median | | | | {} | {} | {} | {} |\n",
        signed1(d.median_minus_full_us),
        signed1(d.median_minus_passthrough_us),
        times(d.median_ratio_full),
        times(d.median_ratio_passthrough)
    );
    md.push_str("Every run:\n\n| setup | rep | sent (q/s) | answered | P50 | P90 | P99 | P99.9 | max | mean | timed out | rcodes | DNS stage | agent CPU (ms) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|\n");
    for r in &res.latency {
        let p = r.latency.as_ref();
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.setup,
            r.rep,
            r.summary.qps,
            p.map_or(0, |p| p.n),
            us(p.map(|p| p.p50_us)),
            us(p.map(|p| p.p90_us)),
            us(p.map(|p| p.p99_us)),
            us(p.map(|p| p.p999_us)),
            us(p.map(|p| p.max_us)),
            us(p.map(|p| p.mean_us)),
            r.timeouts,
            rcodes_text(&r.summary.rcodes),
            dns_stage(&r.counters),
            if r.setup.mode().is_some() {
                agent_side_cpu_ms(&r.counters).to_string()
            } else {
                "n/a".into()
            },
        );
    }
    md.push('\n');
}

fn dns_stage(c: &BTreeMap<String, u64>) -> String {
    let f = c.get("dns:queries_forwarded").copied().unwrap_or(0);
    let a = c.get("dns:answers").copied().unwrap_or(0);
    if f == 0 && a == 0 {
        "–".into()
    } else {
        format!("{f} / {a}")
    }
}

fn throughput_table(md: &mut String, res: &DnsResults) {
    md.push_str("## Throughput steps\n\nLost at dnsmasq's socket: datagrams the DNS pod's socket dropped for a full receive buffer during the step. Dataplane drops: the agent's drop counters and frames without an AF_XDP socket. DNS stage: queries the dataplane parsed and forwarded / answers it parsed. Agent CPU: the agent's threads besides the worker, ms during the step.\n\n| setup | pass | offered (q/s) | sent | completed | lost | achieved (q/s) | of offered | rcodes | lost at dnsmasq's socket | dataplane drops | DNS stage | agent CPU (ms) | clean | path lost nothing |\n|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---|---|\n");
    for s in &res.throughput {
        let xylem = s.setup.mode().is_some();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {:.0} | {:.1} % | {} | {} | {} | {} | {} | {} | {} |",
            s.setup,
            s.pass,
            s.target_qps,
            s.summary.sent,
            s.summary.completed,
            s.summary.lost,
            s.summary.qps,
            s.achieved_share * 100.0,
            rcodes_text(&s.summary.rcodes),
            socket_drops(&s.counters),
            if xylem {
                dataplane_drops(&s.counters).to_string()
            } else {
                "n/a".into()
            },
            dns_stage(&s.counters),
            if xylem {
                agent_side_cpu_ms(&s.counters).to_string()
            } else {
                "n/a".into()
            },
            if s.clean { "yes" } else { "**no**" },
            if s.path_clean() { "yes" } else { "**no**" },
        );
    }
    md.push('\n');
}

fn conditions(md: &mut String, c: &Value) {
    md.push_str("## Conditions\n\n");
    let items = [
        ("date", &c["date"]),
        ("CPU", &c["cpu_model"]),
        ("vCPUs", &c["cpus"]),
        ("under a hypervisor", &c["hypervisor"]),
        ("kernel", &c["kernel"]),
        ("clocksource", &c["clocksource"]),
        ("cpufreq governor", &c["cpufreq_governor"]),
        ("isolated CPUs", &c["isolated_cpus"]),
        ("load average at start", &c["loadavg_start"]),
        ("load average at end", &c["loadavg_end"]),
        ("XDP mode requested", &c["xdp"]["mode_requested"]),
        (
            "XDP mode in effect (agent's ports)",
            &c["xdp"]["mode_in_effect"],
        ),
        ("AF_XDP bind", &c["xdp"]["afxdp_bind"]),
        ("worker batch size", &c["xdp"]["batch_size"]),
        ("placement", &c["pinning"]["placement"]),
        ("worker cores", &c["pinning"]["worker_cores"]),
        ("dnsperf CPU", &c["pinning"]["dnsperf_cpu"]),
        ("dnsmasq CPU", &c["pinning"]["dnsmasq_cpu"]),
        ("harness CPUs", &c["pinning"]["harness_cores"]),
        ("worker polling", &c["busy_poll"]["worker"]),
        ("net.core.busy_read", &c["busy_poll"]["net.core.busy_read"]),
        ("net.core.busy_poll", &c["busy_poll"]["net.core.busy_poll"]),
        ("veth path", &c["pinning"]["veth"]),
        ("dnsperf", &c["dnsperf_version"]),
        ("dnsmasq", &c["dnsmasq_version"]),
        ("order", &c["method"]["order"]),
        ("latency runs", &c["method"]["latency"]),
        ("throughput steps", &c["method"]["throughput"]),
        ("query", &c["method"]["query"]),
    ];
    for (k, v) in items {
        let _ = writeln!(md, "- {k}: {}", text(v));
    }
    md.push_str("\nCommands:\n\n```\n");
    for k in [
        "dnsperf_latency",
        "dnsperf_step",
        "dnsmasq",
        "policy_import",
    ] {
        let _ = writeln!(md, "{}", text(&c["commands"][k]));
    }
    if let Some(ups) = c["commands"]["lab_up"].as_object() {
        for (setup, v) in ups {
            let _ = writeln!(md, "# {setup}\n{}", text(v));
        }
    }
    md.push_str("```\n\nThe lab file, the query file and both policies are beside this report (lab-dns.yaml, queries.txt, policy-full.yaml, policy-inspected.yaml).\n\n");
}

/// The whole report.
pub fn render(res: &DnsResults, notes: Option<&str>) -> String {
    let mut md =
        String::from("# DNS-aware policy (issue 12): inspection latency and dnsperf rate\n\n");
    md.push_str("Written by `netperf-harness dns`. Setups:\n\n");
    for r in &res.summary {
        let _ = writeln!(md, "- **{}**: {}", r.setup, r.setup.describe());
    }
    md.push('\n');
    goals(&mut md, res);
    if let Some(n) = notes {
        md.push_str("## Reading\n\n");
        md.push_str(n.trim());
        md.push_str("\n\n");
    }
    md.push_str(
        "![latency percentiles per setup and achieved against offered rate](chart.svg)\n\n",
    );
    latency_tables(&mut md, res);
    throughput_table(&mut md, res);
    if !res.errors.is_empty() {
        md.push_str("## Errors\n\n");
        for e in &res.errors {
            let at = match (e.rep, e.target_qps) {
                (Some(r), _) => format!(" rep {r}"),
                (None, Some(q)) => format!(" at {q} q/s"),
                _ => String::new(),
            };
            let _ = writeln!(
                md,
                "- {} {}{at}: {}",
                e.setup,
                e.phase,
                e.message.replace('\n', " ")
            );
        }
        md.push('\n');
    }
    conditions(&mut md, &res.conditions);
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns_results::{LatencyRun, Step, summarize};
    use crate::dnsperf::{Percentiles, Summary};

    #[test]
    fn the_report_states_both_figures() {
        let p = |p99| Percentiles {
            n: 10,
            p50_us: 40.0,
            p90_us: 50.0,
            p99_us: p99,
            p999_us: p99,
            max_us: 90.0,
            mean_us: 42.0,
        };
        let lat = [
            (Setup::Passthrough, 60.0),
            (Setup::Full, 62.0),
            (Setup::Inspected, 70.0),
        ]
        .map(|(s, v)| LatencyRun {
            setup: s,
            rep: 1,
            command: String::new(),
            latency: Some(p(v)),
            timeouts: 0,
            summary: Summary::default(),
            counters: Default::default(),
            histogram_us: vec![(v as u32, 1)],
        })
        .to_vec();
        let sum = Summary {
            sent: 100_000,
            completed: 100_000,
            lost: 0,
            qps: 19_990.0,
            ..Summary::default()
        };
        let steps = vec![Step::new(Setup::Inspected, 20_000, String::new(), sum)];
        let setups = [Setup::Passthrough, Setup::Full, Setup::Inspected];
        let (summary, deltas) = summarize(&setups, &lat, &steps, 1);
        let res = DnsResults {
            conditions: serde_json::json!({"cpus": 2}),
            latency: lat,
            throughput: steps,
            summary,
            deltas,
            errors: vec![],
        };
        let md = render(&res, Some("hand-written"));
        assert!(md.contains("median +8.0 µs"), "{md}");
        assert!(md.contains("inspected − full: P99 +8.0 µs"), "{md}");
        assert!(
            md.contains("Target ≤ 20 µs: **met** in every repetition"),
            "{md}"
        );
        assert!(
            md.contains("| inspected | 20000 | 20000 | yes | 19990 | 20000 | 20000 |"),
            "{md}"
        );
        assert!(
            md.contains("20000 q/s through the dataplane with inspection: **met**"),
            "{md}"
        );
        assert!(md.contains("hand-written"));
        assert!(md.contains("- vCPUs: 2"));
    }
}

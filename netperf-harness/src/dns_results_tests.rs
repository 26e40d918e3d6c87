//! Tests of the `dns` subcommand's results model and summary.

use super::*;

fn run(setup: Setup, rep: u32, p99: f64) -> LatencyRun {
    LatencyRun {
        setup,
        rep,
        command: String::new(),
        latency: Some(Percentiles {
            n: 100,
            p50_us: p99 / 2.0,
            p90_us: p99 * 0.8,
            p99_us: p99,
            p999_us: p99,
            max_us: p99 * 2.0,
            mean_us: p99 / 2.0,
        }),
        timeouts: 0,
        summary: Summary::default(),
        counters: BTreeMap::new(),
        histogram_us: vec![(p99 as u32, 1), (p99 as u32 + 10, 1)],
    }
}

fn step(setup: Setup, target: u32, lost: u64, qps: f64) -> Step {
    let s = Summary {
        sent: u64::from(target) * 5,
        completed: u64::from(target) * 5 - lost,
        lost,
        qps,
        ..Summary::default()
    };
    Step::new(setup, target, String::new(), s)
}

#[test]
fn deltas_pair_the_setups_within_each_repetition() {
    let lat = vec![
        run(Setup::Passthrough, 1, 50.0),
        run(Setup::Full, 1, 60.0),
        run(Setup::Inspected, 1, 70.0),
        run(Setup::Passthrough, 2, 40.0),
        run(Setup::Full, 2, 80.0),
        run(Setup::Inspected, 2, 85.0),
    ];
    let (sum, d) = summarize(
        &[Setup::Passthrough, Setup::Full, Setup::Inspected],
        &lat,
        &[],
        2,
    );
    assert_eq!(d.per_rep[0].minus_full_us, Some(10.0));
    assert_eq!(d.per_rep[1].minus_full_us, Some(5.0));
    assert_eq!(d.per_rep[1].minus_passthrough_us, Some(45.0));
    assert_eq!(d.median_minus_full_us, Some(7.5));
    assert_eq!(d.per_rep[0].ratio_full, Some(70.0 / 60.0));
    assert_eq!(sum[1].p99_us, Some(70.0));
    assert_eq!(sum[1].p99_per_rep, vec![Some(60.0), Some(80.0)]);
    assert_eq!(sum[1].max_us, Some(160.0));
    // Pooled: full's queries are 60, 70, 80, 90 µs; inspected's 70, 80, 85, 95.
    assert_eq!(sum[1].pooled.map(|p| p.n), Some(4));
    assert_eq!(d.pooled_minus_full_us[0], Some(82.5 - 75.0));
    assert_eq!(d.verdict(), Verdict::Met);
}

#[test]
fn the_verdict_needs_every_repetition_on_one_side() {
    let delta = |rep, v| Delta {
        rep,
        inspected_p99_us: None,
        full_p99_us: None,
        passthrough_p99_us: None,
        minus_full_us: v,
        minus_passthrough_us: None,
        ratio_full: None,
        ratio_passthrough: None,
    };
    let mut d = Deltas {
        per_rep: vec![delta(1, Some(25.0)), delta(2, Some(30.0)), delta(3, None)],
        ..Deltas::default()
    };
    assert_eq!(d.verdict(), Verdict::NotMet);
    d.per_rep[0].minus_full_us = Some(-3.0);
    assert_eq!(d.verdict(), Verdict::Inconclusive);
    d.per_rep[1].minus_full_us = Some(20.0);
    assert_eq!(d.verdict(), Verdict::Met);
    d.per_rep.clear();
    assert_eq!(d.verdict(), Verdict::Unmeasured);
}

#[test]
fn a_missing_repetition_leaves_its_delta_empty() {
    let lat = vec![run(Setup::Full, 1, 60.0)];
    let (sum, d) = summarize(&[Setup::Inspected], &lat, &[], 1);
    assert_eq!(d.per_rep[0].minus_full_us, None);
    assert_eq!(d.median_minus_full_us, None);
    assert_eq!(sum[0].p99_per_rep, vec![None]);
    assert_eq!(sum[0].reps, 0);
}

#[test]
fn the_summary_has_the_highest_clean_rate_and_the_goal_step() {
    let steps = vec![
        step(Setup::Full, 10_000, 0, 9_995.0),
        step(Setup::Full, 20_000, 0, 19_990.0),
        step(Setup::Full, 30_000, 12, 28_000.0),
        step(Setup::Inspected, 10_000, 0, 9_995.0),
        step(Setup::Inspected, 20_000, 0, 18_000.0),
    ];
    let (sum, _) = summarize(
        &[Setup::Full, Setup::Inspected, Setup::Veth],
        &[],
        &steps,
        1,
    );
    assert_eq!(sum[0].highest_clean_qps, Some(20_000));
    assert_eq!(sum[0].clean_at_goal, Some(true));
    assert_eq!(sum[0].best_achieved_qps, Some(28_000.0));
    assert_eq!(sum[1].highest_clean_qps, Some(10_000));
    assert_eq!(sum[1].clean_at_goal, Some(false), "short of 98 %");
    assert_eq!(sum[2].highest_clean_qps, None);
    assert_eq!(sum[2].clean_at_goal, None);
    assert!(!steps[2].clean && steps[1].clean);
    assert_eq!(sum[0].highest_tried_qps, Some(30_000));
    assert_eq!(sum[0].highest_path_clean_qps, Some(20_000));
}

#[test]
fn losses_at_the_dns_servers_socket_are_not_the_paths() {
    let mut s = step(Setup::Full, 30_000, 7, 29_990.0);
    assert!(!s.clean && !s.path_clean(), "7 lost, none accounted for");
    s.counters.insert("udp-dns:RcvbufErrors".into(), 7);
    s.counters.insert("udp-dns:InErrors".into(), 7);
    s.counters.insert("agent-cpu-ms:xylem-dns".into(), 40);
    s.counters
        .insert("agent-cpu-ms:xylem-worker-0".into(), 5000);
    assert_eq!(socket_drops(&s.counters), 7);
    assert_eq!(agent_side_cpu_ms(&s.counters), 40);
    assert!(!s.clean && s.path_clean());
    s.counters.insert("drop:ring-full".into(), 1);
    assert_eq!(dataplane_drops(&s.counters), 1);
    assert!(!s.path_clean(), "the agent dropped one");
    let (sum, _) = summarize(&[Setup::Full], &[], &[s], 1);
    assert_eq!(sum[0].highest_path_clean_qps, None);
}

#[test]
fn a_rate_is_clean_only_if_clean_in_every_pass() {
    let mut second = vec![
        step(Setup::Full, 10_000, 0, 9_995.0),
        step(Setup::Full, 20_000, 3, 19_990.0),
    ];
    for s in &mut second {
        s.pass = 2;
    }
    let mut steps = vec![
        step(Setup::Full, 10_000, 0, 9_995.0),
        step(Setup::Full, 20_000, 0, 19_990.0),
        step(Setup::Full, 30_000, 0, 29_990.0),
    ];
    steps.extend(second);
    let (sum, _) = summarize(&[Setup::Full], &[], &steps, 1);
    assert_eq!(
        sum[0].highest_clean_per_pass,
        vec![Some(30_000), Some(10_000)]
    );
    // 30,000 ran only in pass 1, clean there; 20,000 lost queries in pass 2.
    assert_eq!(sum[0].highest_clean_qps, Some(30_000));
    assert_eq!(sum[0].clean_at_goal, Some(false));
}

#[test]
fn setups_parse_by_name() {
    for s in Setup::ALL {
        assert_eq!(s.name().parse::<Setup>().ok(), Some(s));
    }
    assert!("bridge".parse::<Setup>().is_err());
    assert_eq!(Setup::Inspected.mode(), Some("full"));
    assert_eq!(Setup::Veth.mode(), None);
}

#[test]
fn rcodes_read_as_text() {
    let mut m = BTreeMap::new();
    assert_eq!(rcodes_text(&m), "–");
    m.insert("NOERROR".to_string(), 5);
    m.insert("REFUSED".to_string(), 1);
    assert_eq!(rcodes_text(&m), "NOERROR 5, REFUSED 1");
}

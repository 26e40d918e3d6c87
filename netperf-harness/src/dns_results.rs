//! The `dns` subcommand's results: what its `results.json` holds, and the summary (medians over
//! repetitions, the inspection deltas, the highest clean rate per setup).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::dnsperf::{self, Percentiles, Summary};
use crate::error::{Error, Result};
use crate::stats::{ratio, spread};

/// Issue 12's goal: P99 gained from inline inspection, µs.
pub const INSPECTION_P99_GOAL_US: f64 = 20.0;
/// Issue 12's goal: a clean dnsperf step at this rate.
pub const RATE_GOAL_QPS: u32 = 20_000;

/// One way the client's queries reach the DNS pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Setup {
    /// Xylem in passthrough mode (L2/L3 only), no policy.
    Passthrough,
    /// Xylem in full mode, a policy allowing the client UDP 53 to kube-dns without `rules.dns`.
    Full,
    /// Xylem in full mode, the policy: `rules.dns` `*.domain.com` (queries and answers
    /// inspected inline) and `toFQDNs`.
    Inspected,
    /// The kernel alone: both pods routed through a node namespace on veth pairs, no Xylem.
    Veth,
}

impl Setup {
    /// Every setup, in interleaving and report order.
    pub const ALL: [Setup; 4] = [
        Setup::Passthrough,
        Setup::Full,
        Setup::Inspected,
        Setup::Veth,
    ];

    /// The name used on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Setup::Passthrough => "passthrough",
            Setup::Full => "full",
            Setup::Inspected => "inspected",
            Setup::Veth => "veth",
        }
    }

    /// The worker mode of a Xylem setup, `None` for the kernel path.
    pub fn mode(self) -> Option<&'static str> {
        match self {
            Setup::Passthrough => Some("passthrough"),
            Setup::Full | Setup::Inspected => Some("full"),
            Setup::Veth => None,
        }
    }

    /// One line for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Setup::Passthrough => "Xylem `--mode passthrough`, no policy: the forwarding floor",
            Setup::Full => {
                "Xylem `--mode full`, a policy allowing the client UDP 53 to kube-dns, no `rules.dns`: policy and conntrack, no DNS inspection"
            }
            Setup::Inspected => {
                "Xylem `--mode full`, the issue's policy: `rules.dns` `*.domain.com` and `toFQDNs`; every query and answer parsed inline"
            }
            Setup::Veth => {
                "no Xylem: the same two pods on veth pairs routed by a node namespace (kernel reference)"
            }
        }
    }
}

impl fmt::Display for Setup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Setup {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Setup::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "unknown setup `{s}` (one of: passthrough, full, inspected, veth)"
                ))
            })
    }
}

/// One query-by-query latency run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyRun {
    /// The setup measured.
    pub setup: Setup,
    /// Repetition, from 1.
    pub rep: u32,
    /// The exact dnsperf command line.
    pub command: String,
    /// Percentiles over the answered queries' `-v` latencies (`None` if none was answered).
    pub latency: Option<Percentiles>,
    /// Queries dnsperf reported timed out.
    pub timeouts: u64,
    /// dnsperf's closing statistics.
    pub summary: Summary,
    /// Counters that grew during the run (see `dns_env::Env::counters`): agent drops and DNS
    /// stage, the pods' UDP errors.
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
    /// Every answered query's latency as `(µs, queries)`.
    #[serde(default)]
    pub histogram_us: Vec<(u32, u32)>,
}

/// One throughput step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// The setup measured.
    pub setup: Setup,
    /// Which pass over the rates, from 1 (pass N runs at the setup's N-th visit).
    #[serde(default = "first_pass")]
    pub pass: u32,
    /// The offered rate (`-Q`).
    pub target_qps: u32,
    /// The exact dnsperf command line.
    pub command: String,
    /// dnsperf's closing statistics.
    pub summary: Summary,
    /// Achieved rate / offered rate.
    pub achieved_share: f64,
    /// No query lost and at least 98 % of the offered rate achieved.
    pub clean: bool,
    /// Counters that grew during the step (see `dns_env::Env::counters`).
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
}

fn first_pass() -> u32 {
    1
}

impl Step {
    /// A step of pass 1, judged.
    pub fn new(setup: Setup, target_qps: u32, command: String, summary: Summary) -> Step {
        let clean = dnsperf::is_clean(target_qps, &summary);
        Step {
            setup,
            pass: 1,
            target_qps,
            command,
            achieved_share: summary.qps / f64::from(target_qps.max(1)),
            summary,
            clean,
            counters: BTreeMap::new(),
        }
    }
}

/// The sum of the counters whose name `pick` accepts.
pub fn sum_counters(c: &BTreeMap<String, u64>, pick: impl Fn(&str) -> bool) -> u64 {
    c.iter().filter(|(k, _)| pick(k)).map(|(_, v)| v).sum()
}

/// Datagrams a pod's socket dropped because its receive buffer was full (`udp-*:RcvbufErrors`).
pub fn socket_drops(c: &BTreeMap<String, u64>) -> u64 {
    sum_counters(c, |k| k.starts_with("udp-") && k.ends_with(":RcvbufErrors"))
}

/// Frames the agent dropped, any reason (`drop:*`, `redirect:no_socket`).
pub fn dataplane_drops(c: &BTreeMap<String, u64>) -> u64 {
    sum_counters(c, |k| k.starts_with("drop:") || k.starts_with("redirect:"))
}

/// CPU time of the agent's threads other than its workers, ms.
pub fn agent_side_cpu_ms(c: &BTreeMap<String, u64>) -> u64 {
    sum_counters(c, |k| {
        k.starts_with("agent-cpu-ms:") && !k.contains("worker")
    })
}

impl Step {
    /// The path lost nothing: the rate was achieved, the agent dropped nothing, and every lost
    /// query is accounted for by a pod's full socket buffer (the DNS server falling behind).
    pub fn path_clean(&self) -> bool {
        self.summary.sent > 0
            && self.achieved_share >= dnsperf::CLEAN_SHARE
            && dataplane_drops(&self.counters) == 0
            && self.summary.lost <= socket_drops(&self.counters)
    }
}

/// Something that failed, kept in the results next to what succeeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DnsError {
    /// The setup concerned.
    pub setup: Setup,
    /// `setup`, `latency` or `throughput`.
    pub phase: String,
    /// The repetition, if any.
    pub rep: Option<u32>,
    /// The offered rate, for a throughput step.
    pub target_qps: Option<u32>,
    /// What went wrong.
    pub message: String,
}

/// One setup over all repetitions and steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetupSummary {
    /// The setup.
    pub setup: Setup,
    /// Latency repetitions measured.
    pub reps: usize,
    /// Median over repetitions of each repetition's P50, µs.
    pub p50_us: Option<f64>,
    /// Median of the P90s, µs.
    pub p90_us: Option<f64>,
    /// Median of the P99s, µs.
    pub p99_us: Option<f64>,
    /// Smallest and largest P99 over repetitions, µs.
    pub p99_min_us: Option<f64>,
    /// Largest P99, µs.
    pub p99_max_us: Option<f64>,
    /// Largest single query latency over all repetitions, µs.
    pub max_us: Option<f64>,
    /// Each repetition's P99 in repetition order (`null` where it failed), µs.
    pub p99_per_rep: Vec<Option<f64>>,
    /// Percentiles over the queries of all repetitions together.
    #[serde(default)]
    pub pooled: Option<Percentiles>,
    /// Queries timed out over all latency repetitions.
    pub timeouts: u64,
    /// The highest offered rate that was clean in every pass that ran it.
    pub highest_clean_qps: Option<u32>,
    /// The highest clean rate of each pass, in pass order.
    #[serde(default)]
    pub highest_clean_per_pass: Vec<Option<u32>>,
    /// Whether the 20,000 queries/s step was clean in every pass (`null` if not run).
    pub clean_at_goal: Option<bool>,
    /// The highest rate any step achieved, queries/s.
    pub best_achieved_qps: Option<f64>,
    /// The highest offered rate at which the path itself lost nothing ([`Step::path_clean`]) in
    /// every pass that ran it.
    #[serde(default)]
    pub highest_path_clean_qps: Option<u32>,
    /// The highest rate stepped.
    #[serde(default)]
    pub highest_tried_qps: Option<u32>,
}

/// P99 of `inspected` set against a baseline, within one repetition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// Repetition.
    pub rep: u32,
    /// P99 with inspection, µs.
    pub inspected_p99_us: Option<f64>,
    /// P99 of `full` (policy, no inspection), µs.
    pub full_p99_us: Option<f64>,
    /// P99 of `passthrough`, µs.
    pub passthrough_p99_us: Option<f64>,
    /// inspected − full, µs: the inspection's own cost.
    pub minus_full_us: Option<f64>,
    /// inspected − passthrough, µs: inspection plus policy and conntrack.
    pub minus_passthrough_us: Option<f64>,
    /// inspected / full.
    pub ratio_full: Option<f64>,
    /// inspected / passthrough.
    pub ratio_passthrough: Option<f64>,
}

/// The deltas of every repetition and their medians.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Deltas {
    /// One per repetition.
    pub per_rep: Vec<Delta>,
    /// Median over repetitions of inspected − full, µs.
    pub median_minus_full_us: Option<f64>,
    /// Median of inspected − passthrough, µs.
    pub median_minus_passthrough_us: Option<f64>,
    /// Median of inspected / full.
    pub median_ratio_full: Option<f64>,
    /// Median of inspected / passthrough.
    pub median_ratio_passthrough: Option<f64>,
    /// Over all repetitions' queries pooled per setup: inspected − full at P50, P90, P99, µs.
    #[serde(default)]
    pub pooled_minus_full_us: [Option<f64>; 3],
    /// Pooled inspected − passthrough at P50, P90, P99, µs.
    #[serde(default)]
    pub pooled_minus_passthrough_us: [Option<f64>; 3],
}

/// What the repetitions say about the P99 goal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every repetition's inspected − full is within the goal.
    Met,
    /// Every repetition's is above it.
    NotMet,
    /// Some are within and some above: the run's noise is larger than the goal.
    Inconclusive,
    /// No repetition has both setups.
    Unmeasured,
}

impl Deltas {
    /// The P99 goal's verdict from the per-repetition deltas.
    pub fn verdict(&self) -> Verdict {
        let v: Vec<f64> = self
            .per_rep
            .iter()
            .filter_map(|d| d.minus_full_us)
            .collect();
        if v.is_empty() {
            Verdict::Unmeasured
        } else if v.iter().all(|d| *d <= INSPECTION_P99_GOAL_US) {
            Verdict::Met
        } else if v.iter().all(|d| *d > INSPECTION_P99_GOAL_US) {
            Verdict::NotMet
        } else {
            Verdict::Inconclusive
        }
    }
}

/// Everything `netperf-harness dns` writes to `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DnsResults {
    /// Machine, pinning, XDP mode, busy-poll settings, versions, commands.
    pub conditions: serde_json::Value,
    /// Every latency run, in the order run.
    pub latency: Vec<LatencyRun>,
    /// Every throughput step, in the order run.
    pub throughput: Vec<Step>,
    /// Per setup.
    pub summary: Vec<SetupSummary>,
    /// Inspection's P99 cost, per repetition.
    pub deltas: Deltas,
    /// What failed.
    pub errors: Vec<DnsError>,
}

fn summarize_setup(
    setup: Setup,
    latency: &[LatencyRun],
    steps: &[Step],
    reps: u32,
) -> SetupSummary {
    let mine: Vec<&LatencyRun> = latency.iter().filter(|r| r.setup == setup).collect();
    let pct: Vec<&Percentiles> = mine.iter().filter_map(|r| r.latency.as_ref()).collect();
    let med = |f: fn(&Percentiles) -> f64| spread(pct.iter().map(|p| f(p))).map(|s| s.median);
    let p99 = spread(pct.iter().map(|p| p.p99_us));
    let p99_per_rep = (1..=reps)
        .map(|rep| {
            mine.iter()
                .find(|r| r.rep == rep)
                .and_then(|r| r.latency.map(|p| p.p99_us))
        })
        .collect();
    let my_steps: Vec<(u32, &Summary)> = steps
        .iter()
        .filter(|s| s.setup == setup)
        .map(|s| (s.target_qps, &s.summary))
        .collect();
    let pooled: Vec<f64> = mine
        .iter()
        .flat_map(|r| dnsperf::expand(&r.histogram_us))
        .collect();
    SetupSummary {
        setup,
        reps: pct.len(),
        pooled: dnsperf::percentiles(&pooled),
        p50_us: med(|p| p.p50_us),
        p90_us: med(|p| p.p90_us),
        p99_us: p99.map(|s| s.median),
        p99_min_us: p99.map(|s| s.min),
        p99_max_us: p99.map(|s| s.max),
        max_us: pct.iter().map(|p| p.max_us).reduce(f64::max),
        p99_per_rep,
        timeouts: mine.iter().map(|r| r.timeouts).sum(),
        highest_clean_qps: highest_in_every_pass(setup, steps, |s| s.clean),
        highest_clean_per_pass: per_pass(setup, steps),
        clean_at_goal: at_rate(setup, steps, RATE_GOAL_QPS).map(|v| v.iter().all(|s| s.clean)),
        best_achieved_qps: my_steps.iter().map(|(_, s)| s.qps).reduce(f64::max),
        highest_path_clean_qps: highest_in_every_pass(setup, steps, Step::path_clean),
        highest_tried_qps: my_steps.iter().map(|(t, _)| *t).max(),
    }
}

/// `setup`'s steps at `rate`, every pass; `None` if no pass ran it.
fn at_rate(setup: Setup, steps: &[Step], rate: u32) -> Option<Vec<&Step>> {
    let v: Vec<&Step> = steps
        .iter()
        .filter(|s| s.setup == setup && s.target_qps == rate)
        .collect();
    (!v.is_empty()).then_some(v)
}

/// The highest rate whose steps all pass `ok`, over every pass that ran it.
fn highest_in_every_pass(setup: Setup, steps: &[Step], ok: fn(&Step) -> bool) -> Option<u32> {
    steps
        .iter()
        .filter(|s| s.setup == setup)
        .map(|s| s.target_qps)
        .filter(|&r| at_rate(setup, steps, r).is_some_and(|v| v.iter().all(|s| ok(s))))
        .max()
}

/// The highest clean rate of each pass of `setup`.
fn per_pass(setup: Setup, steps: &[Step]) -> Vec<Option<u32>> {
    let last = steps
        .iter()
        .filter(|s| s.setup == setup)
        .map(|s| s.pass)
        .max()
        .unwrap_or(0);
    (1..=last)
        .map(|p| {
            let mine: Vec<(u32, &Summary)> = steps
                .iter()
                .filter(|s| s.setup == setup && s.pass == p)
                .map(|s| (s.target_qps, &s.summary))
                .collect();
            dnsperf::highest_clean(&mine)
        })
        .collect()
}

fn pooled_minus(sum: &[SetupSummary], a: Setup, b: Setup) -> [Option<f64>; 3] {
    let get = |s: Setup| sum.iter().find(|r| r.setup == s).and_then(|r| r.pooled);
    match (get(a), get(b)) {
        (Some(x), Some(y)) => [
            Some(x.p50_us - y.p50_us),
            Some(x.p90_us - y.p90_us),
            Some(x.p99_us - y.p99_us),
        ],
        _ => [None; 3],
    }
}

fn deltas(latency: &[LatencyRun], reps: u32, sum: &[SetupSummary]) -> Deltas {
    let p99 = |setup: Setup, rep: u32| {
        latency
            .iter()
            .find(|r| r.setup == setup && r.rep == rep)
            .and_then(|r| r.latency.map(|p| p.p99_us))
    };
    let per_rep: Vec<Delta> = (1..=reps)
        .map(|rep| {
            let (i, f, p) = (
                p99(Setup::Inspected, rep),
                p99(Setup::Full, rep),
                p99(Setup::Passthrough, rep),
            );
            let minus = |b: Option<f64>| i.zip(b).map(|(a, b)| a - b);
            Delta {
                rep,
                inspected_p99_us: i,
                full_p99_us: f,
                passthrough_p99_us: p,
                minus_full_us: minus(f),
                minus_passthrough_us: minus(p),
                ratio_full: ratio(i, f),
                ratio_passthrough: ratio(i, p),
            }
        })
        .collect();
    let med = |f: fn(&Delta) -> Option<f64>| spread(per_rep.iter().filter_map(f)).map(|s| s.median);
    Deltas {
        median_minus_full_us: med(|d| d.minus_full_us),
        median_minus_passthrough_us: med(|d| d.minus_passthrough_us),
        median_ratio_full: med(|d| d.ratio_full),
        median_ratio_passthrough: med(|d| d.ratio_passthrough),
        pooled_minus_full_us: pooled_minus(sum, Setup::Inspected, Setup::Full),
        pooled_minus_passthrough_us: pooled_minus(sum, Setup::Inspected, Setup::Passthrough),
        per_rep,
    }
}

/// The per-setup summary and the deltas of `setups` over `reps` repetitions.
pub fn summarize(
    setups: &[Setup],
    latency: &[LatencyRun],
    steps: &[Step],
    reps: u32,
) -> (Vec<SetupSummary>, Deltas) {
    let summary: Vec<SetupSummary> = setups
        .iter()
        .map(|&s| summarize_setup(s, latency, steps, reps))
        .collect();
    let d = deltas(latency, reps, &summary);
    (summary, d)
}

impl DnsResults {
    /// Recomputes the summary and the deltas from the runs and steps (for `dns-report`, so an
    /// older results.json gains what the summary has learned since).
    pub fn resummarize(&mut self) {
        let setups: Vec<Setup> = self.summary.iter().map(|r| r.setup).collect();
        let reps = self.latency.iter().map(|r| r.rep).max().unwrap_or(0);
        let (summary, deltas) = summarize(&setups, &self.latency, &self.throughput, reps);
        self.summary = summary;
        self.deltas = deltas;
    }
}

/// rcode counts as `NOERROR 100000, REFUSED 2`.
pub fn rcodes_text(rcodes: &BTreeMap<String, u64>) -> String {
    if rcodes.is_empty() {
        return "–".into();
    }
    rcodes
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[path = "dns_results_tests.rs"]
mod tests;

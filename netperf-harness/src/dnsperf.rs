//! dnsperf: the command lines the `dns` subcommand runs, the parsing of its summary and of its
//! `-v` lines, the per-query latency percentiles, and the clean-rate rule of the throughput
//! steps.
//!
//! dnsperf 2.x prints, with `-v`, one line per query as it completes:
//! `> NOERROR a.domain.com A 0.000187` (rcode, the query line of the data file, latency in
//! seconds with microsecond resolution) or `> T a.domain.com A` for a query that timed out.
//! Its summary ends the output: `Queries sent:`, `Queries completed:`, `Queries lost:`,
//! `Response codes:`, `Run time (s):`, `Queries per second:`, `Average Latency (s):`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::stats;

/// What dnsperf's closing statistics say.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Queries sent.
    pub sent: u64,
    /// Queries answered (any rcode).
    pub completed: u64,
    /// Queries that timed out (never answered within `-t`).
    pub lost: u64,
    /// Answers per rcode name (`NOERROR`, `REFUSED`, ...).
    pub rcodes: BTreeMap<String, u64>,
    /// Wall time of the run, s.
    pub run_time_s: Option<f64>,
    /// Completed queries per second of run time: the achieved rate.
    pub qps: f64,
    /// dnsperf's own mean latency, µs.
    pub avg_latency_us: Option<f64>,
    /// dnsperf's own minimum latency, µs.
    pub min_latency_us: Option<f64>,
    /// dnsperf's own maximum latency, µs.
    pub max_latency_us: Option<f64>,
}

fn field<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    text.lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(label))
        .map(str::trim)
}

fn first_number<T: std::str::FromStr>(s: &str) -> Option<T> {
    s.split_whitespace().next()?.parse().ok()
}

fn need<T>(v: Option<T>, what: &str, text: &str) -> Result<T> {
    v.ok_or_else(|| {
        let tail: Vec<&str> = text.lines().rev().take(6).collect();
        Error::Parse(format!(
            "dnsperf printed no `{what}` line; is it dnsperf 2.x? Run the command shown by hand to see why. Last lines: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ))
    })
}

/// `NOERROR 50 (50.00%), REFUSED 50 (50.00%)` → {NOERROR: 50, REFUSED: 50}.
fn parse_rcodes(s: &str) -> BTreeMap<String, u64> {
    s.split(',')
        .filter_map(|part| {
            let mut it = part.split_whitespace();
            let name = it.next()?;
            let n = it.next()?.parse().ok()?;
            Some((name.to_string(), n))
        })
        .collect()
}

/// Parses dnsperf's closing statistics from its whole output.
pub fn parse_summary(text: &str) -> Result<Summary> {
    let sent = need(
        field(text, "Queries sent:").and_then(first_number),
        "Queries sent:",
        text,
    )?;
    let completed = need(
        field(text, "Queries completed:").and_then(first_number),
        "Queries completed:",
        text,
    )?;
    let lost = need(
        field(text, "Queries lost:").and_then(first_number),
        "Queries lost:",
        text,
    )?;
    let qps = need(
        field(text, "Queries per second:").and_then(first_number),
        "Queries per second:",
        text,
    )?;
    let us = |s: f64| s * 1e6;
    let avg = field(text, "Average Latency (s):");
    let (mut min, mut max) = (None, None);
    if let Some(a) = avg
        && let Some((_, rest)) = a.split_once('(')
    {
        for part in rest.trim_end_matches(')').split(',') {
            let mut it = part.split_whitespace();
            match (it.next(), it.next().and_then(|v| v.parse::<f64>().ok())) {
                (Some("min"), Some(v)) => min = Some(us(v)),
                (Some("max"), Some(v)) => max = Some(us(v)),
                _ => {}
            }
        }
    }
    Ok(Summary {
        sent,
        completed,
        lost,
        rcodes: field(text, "Response codes:")
            .map(parse_rcodes)
            .unwrap_or_default(),
        run_time_s: field(text, "Run time (s):").and_then(first_number),
        qps,
        avg_latency_us: avg.and_then(first_number::<f64>).map(us),
        min_latency_us: min,
        max_latency_us: max,
    })
}

/// The `-v` lines of one run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verbose {
    /// Latency of every answered query, µs, in completion order.
    pub latencies_us: Vec<f64>,
    /// Queries reported timed out (`> T ...`).
    pub timeouts: u64,
    /// Answers per rcode.
    pub rcodes: BTreeMap<String, u64>,
}

/// Collects the per-query lines (`> RCODE QUERY... SECONDS`, `> T QUERY...`) of a `-v` run;
/// every other line is ignored.
pub fn parse_verbose(text: &str) -> Verbose {
    let mut v = Verbose::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("> ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        match fields.as_slice() {
            ["T", ..] => v.timeouts += 1,
            [rcode, query @ .., secs] if !query.is_empty() => {
                if let Ok(s) = secs.parse::<f64>() {
                    v.latencies_us.push(s * 1e6);
                    *v.rcodes.entry((*rcode).to_string()).or_default() += 1;
                }
            }
            _ => {}
        }
    }
    v
}

/// Per-query latency percentiles of one run, µs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Answered queries the percentiles are taken over.
    pub n: usize,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

/// Percentiles over `latencies_us` (the harness's usual interpolated quantile), or `None` if
/// there is none.
pub fn percentiles(latencies_us: &[f64]) -> Option<Percentiles> {
    let mut v: Vec<f64> = latencies_us
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let q = |p| stats::quantile(&v, p);
    Some(Percentiles {
        n: v.len(),
        p50_us: q(0.5),
        p90_us: q(0.9),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: v[v.len() - 1],
        mean_us: v.iter().sum::<f64>() / v.len() as f64,
    })
}

/// Latencies counted per whole microsecond (dnsperf's resolution): `(µs, queries)`, ascending.
/// Kept in results.json so the repetitions of a setup can be pooled later.
pub fn histogram(latencies_us: &[f64]) -> Vec<(u32, u32)> {
    let mut m: BTreeMap<u32, u32> = BTreeMap::new();
    for &l in latencies_us.iter().filter(|l| l.is_finite() && **l >= 0.0) {
        // Rounded: the values are whole microseconds already, up to float error.
        let us = l.round().min(f64::from(u32::MAX)) as u32;
        *m.entry(us).or_default() += 1;
    }
    m.into_iter().collect()
}

/// The latencies a histogram counts, expanded again, µs.
pub fn expand(h: &[(u32, u32)]) -> Vec<f64> {
    h.iter()
        .flat_map(|&(us, n)| std::iter::repeat_n(f64::from(us), n as usize))
        .collect()
}

/// The share of the offered rate a step must achieve to count as clean.
pub const CLEAN_SHARE: f64 = 0.98;

/// How many unclean steps end the stepping of a setup.
pub const UNCLEAN_STEPS_TO_STOP: usize = 2;

/// A step is clean when dnsperf sent queries, lost none, and completed at least
/// [`CLEAN_SHARE`] of the offered rate.
pub fn is_clean(target_qps: u32, s: &Summary) -> bool {
    s.sent > 0 && s.lost == 0 && s.qps >= CLEAN_SHARE * f64::from(target_qps)
}

/// The highest offered rate among clean steps, or `None` when no step was clean.
pub fn highest_clean(steps: &[(u32, &Summary)]) -> Option<u32> {
    steps
        .iter()
        .filter(|(t, s)| is_clean(*t, s))
        .map(|(t, _)| *t)
        .max()
}

/// Whether to try the next rate after `steps` (offered rate, summary; in the order run):
/// stepping stops once [`UNCLEAN_STEPS_TO_STOP`] of them lost queries or fell short of the rate.
pub fn keep_stepping(steps: &[(u32, &Summary)]) -> bool {
    steps.iter().filter(|(t, s)| !is_clean(*t, s)).count() < UNCLEAN_STEPS_TO_STOP
}

/// dnsperf's arguments for `server` reading `data`: `-Q qps -l secs -c clients -q outstanding
/// -t 1`, plus `-v` for the query-by-query latency run.
pub fn args(
    server: &str,
    data: &str,
    qps: u32,
    secs: u32,
    clients: u32,
    outstanding: u32,
    verbose: bool,
) -> Vec<String> {
    let mut a: Vec<String> = [
        "dnsperf",
        "-s",
        server,
        "-d",
        data,
        "-Q",
        &qps.to_string(),
        "-l",
        &secs.to_string(),
        "-c",
        &clients.to_string(),
        "-q",
        &outstanding.to_string(),
        // A query unanswered after 1 s is lost either way; a short timeout keeps each step
        // from waiting 5 s for the stragglers.
        "-t",
        "1",
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect();
    if verbose {
        a.push("-v".into());
    }
    a
}

/// dnsperf's version from its `-h` output (`Version 2.10.0`).
pub fn version(help: &str) -> Option<String> {
    help.lines()
        .find_map(|l| l.trim().strip_prefix("Version "))
        .map(|v| v.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "DNS Performance Testing Tool
Version 2.10.0

[Status] Command line: dnsperf -s 10.200.0.11 -d q.txt -Q 100 -l 1 -c 1 -q 10 -v
[Status] Sending queries (to 10.200.0.11:53)
[Status] Started at: Sun Nov 29 22:40:55 2026
[Status] Stopping after 1.000000 seconds
> NOERROR a.domain.com A 0.000187
> REFUSED example.org A 0.000092
> T a.domain.com A
> NOERROR a.domain.com A 0.000050
> SERVFAIL a.domain.com A 0.001000
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         10
  Queries completed:    9 (90.00%)
  Queries lost:         1 (10.00%)

  Response codes:       NOERROR 7 (77.78%), REFUSED 1 (11.11%), SERVFAIL 1 (11.11%)
  Average packet size:  request 29, response 37
  Run time (s):         1.000219
  Queries per second:   8.998029

  Average Latency (s):  0.000920 (min 0.000101, max 0.004841)
  Latency StdDev (s):   0.001921
";

    #[test]
    fn summary_is_parsed() -> Result<()> {
        let s = parse_summary(OUTPUT)?;
        assert_eq!((s.sent, s.completed, s.lost), (10, 9, 1));
        assert_eq!(s.rcodes.get("NOERROR"), Some(&7));
        assert_eq!(s.rcodes.get("REFUSED"), Some(&1));
        assert_eq!(s.rcodes.get("SERVFAIL"), Some(&1));
        assert!((s.qps - 8.998029).abs() < 1e-9);
        assert_eq!(s.run_time_s, Some(1.000219));
        assert!((s.avg_latency_us.unwrap_or(0.0) - 920.0).abs() < 1e-6);
        assert!((s.min_latency_us.unwrap_or(0.0) - 101.0).abs() < 1e-6);
        assert!((s.max_latency_us.unwrap_or(0.0) - 4841.0).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn a_summary_without_answers_still_parses() -> Result<()> {
        let text = "  Queries sent:         5\n  Queries completed:    0 (0.00%)\n  \
                    Queries lost:         5 (100.00%)\n\n  Run time (s):         1.0\n  \
                    Queries per second:   0.000000\n";
        let s = parse_summary(text)?;
        assert_eq!((s.sent, s.completed, s.lost), (5, 0, 5));
        assert!(s.rcodes.is_empty());
        assert_eq!(s.avg_latency_us, None);
        Ok(())
    }

    #[test]
    fn output_without_a_summary_is_an_error_naming_the_line() {
        let e = parse_summary("Error: could not open q.txt\n");
        match e {
            Err(Error::Parse(m)) => {
                assert!(
                    m.contains("Queries sent:") && m.contains("could not open"),
                    "{m}"
                )
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn verbose_lines_give_latencies_timeouts_and_rcodes() {
        let v = parse_verbose(OUTPUT);
        assert_eq!(v.latencies_us.len(), 4);
        assert!((v.latencies_us[0] - 187.0).abs() < 1e-6);
        assert!((v.latencies_us[3] - 1000.0).abs() < 1e-6);
        assert_eq!(v.timeouts, 1);
        assert_eq!(v.rcodes.get("NOERROR"), Some(&2));
        assert_eq!(v.rcodes.get("SERVFAIL"), Some(&1));
        // Not a query line: the status lines and a malformed one.
        let v = parse_verbose("> NOERROR 0.1\n>NOERROR a A 0.1\n[Status] x\n");
        assert!(v.latencies_us.is_empty() && v.timeouts == 0);
    }

    #[test]
    fn histograms_round_trip() {
        let lat = [187.0, 92.0, 187.000_000_1, 50.0];
        let h = histogram(&lat);
        assert_eq!(h, vec![(50, 1), (92, 1), (187, 2)]);
        assert_eq!(expand(&h), vec![50.0, 92.0, 187.0, 187.0]);
        assert!(histogram(&[]).is_empty());
    }

    #[test]
    fn percentiles_interpolate() {
        let lat: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = percentiles(&lat).expect("non-empty");
        assert_eq!(p.n, 100);
        assert!((p.p50_us - 50.5).abs() < 1e-9);
        assert!((p.p99_us - 99.01).abs() < 1e-9);
        assert_eq!(p.max_us, 100.0);
        assert!((p.mean_us - 50.5).abs() < 1e-9);
        assert!(percentiles(&[]).is_none());
    }

    fn step(sent: u64, lost: u64, qps: f64) -> Summary {
        Summary {
            sent,
            completed: sent - lost,
            lost,
            qps,
            ..Summary::default()
        }
    }

    #[test]
    fn clean_means_no_loss_and_98_percent_of_the_rate() {
        assert!(is_clean(10_000, &step(50_000, 0, 9_990.0)));
        assert!(is_clean(10_000, &step(50_000, 0, 9_800.0)));
        assert!(
            !is_clean(10_000, &step(50_000, 0, 9_799.0)),
            "short of 98 %"
        );
        assert!(!is_clean(10_000, &step(50_000, 1, 9_999.0)), "one lost");
        assert!(!is_clean(10_000, &step(0, 0, 0.0)), "nothing sent");
    }

    #[test]
    fn highest_clean_rate_and_when_to_stop() {
        let (a, b, c, d) = (
            step(25_000, 0, 5_000.0),
            step(50_000, 0, 9_990.0),
            step(75_000, 3, 14_900.0),
            step(100_000, 0, 19_900.0),
        );
        let steps = [(5_000, &a), (10_000, &b), (15_000, &c), (20_000, &d)];
        // A clean step above a lossy one still counts: the rule is per step.
        assert_eq!(highest_clean(&steps), Some(20_000));
        assert_eq!(highest_clean(&steps[..3]), Some(10_000));
        assert_eq!(highest_clean(&[(15_000, &c)]), None);
        assert!(keep_stepping(&steps), "one unclean step");
        let e = step(100_000, 0, 15_000.0);
        let more = [(15_000, &c), (25_000, &e)];
        assert!(!keep_stepping(&more), "two unclean steps");
    }

    #[test]
    fn args_and_version() {
        let a = args("10.0.0.1", "q.txt", 2000, 5, 1, 10, true);
        assert_eq!(a[0], "dnsperf");
        assert!(a.windows(2).any(|w| w == ["-Q", "2000"]));
        assert_eq!(a.last().map(String::as_str), Some("-v"));
        assert!(!args("10.0.0.1", "q.txt", 2000, 5, 4, 200, false).contains(&"-v".to_string()));
        assert_eq!(version(OUTPUT), Some("2.10.0".to_string()));
    }
}

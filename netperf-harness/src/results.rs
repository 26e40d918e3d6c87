//! The results model: what `results.json` holds, and the summary (medians and ratios).
//!
//! Field names of [`Run`] and [`SummaryRow`] are a published schema: keep them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::netperf::{Measurement, Test};
use crate::stats::{ratio, spread};

/// A datapath between two pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    /// pod, veth, routing in a node namespace, veth, pod.
    Veth,
    /// `Veth` with a kube-proxy-sized iptables ruleset in the node namespace.
    VethNetfilter,
    /// Both pods on a Linux bridge.
    Bridge,
    /// IPVLAN L3 mode.
    Ipvlan,
    /// macvlan bridge mode.
    Macvlan,
    /// Xylem with the worker in passthrough mode.
    XylemPassthrough,
    /// Xylem with the full pipeline.
    Xylem,
    /// Xylem with ESP encryption between nodes.
    XylemEncrypted,
}

impl PathKind {
    /// Every path, in report order.
    pub const ALL: [PathKind; 8] = [
        PathKind::Veth,
        PathKind::VethNetfilter,
        PathKind::Bridge,
        PathKind::Ipvlan,
        PathKind::Macvlan,
        PathKind::XylemPassthrough,
        PathKind::Xylem,
        PathKind::XylemEncrypted,
    ];

    /// The path's name as used on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Veth => "veth",
            PathKind::VethNetfilter => "veth-netfilter",
            PathKind::Bridge => "bridge",
            PathKind::Ipvlan => "ipvlan",
            PathKind::Macvlan => "macvlan",
            PathKind::XylemPassthrough => "xylem-passthrough",
            PathKind::Xylem => "xylem",
            PathKind::XylemEncrypted => "xylem-encrypted",
        }
    }

    /// Xylem paths run once per worker placement; kernel paths have no placement.
    pub fn is_xylem(self) -> bool {
        matches!(
            self,
            PathKind::XylemPassthrough | PathKind::Xylem | PathKind::XylemEncrypted
        )
    }
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PathKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        PathKind::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let all: Vec<_> = PathKind::ALL.iter().map(|p| p.name()).collect();
                Error::Usage(format!("unknown path `{s}` (one of: {})", all.join(", ")))
            })
    }
}

/// Where the Xylem workers run relative to the pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Workers busy-poll on their own cores.
    Dedicated,
    /// Workers share the pods' cores and block when idle.
    Shared,
}

impl Placement {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Placement::Dedicated => "dedicated",
            Placement::Shared => "shared",
        }
    }
}

impl FromStr for Placement {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "dedicated" => Ok(Placement::Dedicated),
            "shared" => Ok(Placement::Shared),
            _ => Err(Error::Usage(format!(
                "unknown placement `{s}` (dedicated, shared)"
            ))),
        }
    }
}

/// Whether the pods' cores had other work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Load {
    /// Nothing else runs on the pod cores: they idle between transactions.
    Idle,
    /// A nice-19 spinner per pod core keeps them from idling.
    Busy,
}

impl Load {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Load::Idle => "idle",
            Load::Busy => "busy",
        }
    }
}

impl FromStr for Load {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "idle" => Ok(Load::Idle),
            "busy" => Ok(Load::Busy),
            _ => Err(Error::Usage(format!("unknown load `{s}` (idle, busy)"))),
        }
    }
}

/// One measured repetition of one test on one path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// The path measured.
    pub path: PathKind,
    /// Worker placement (Xylem paths) or `null` (kernel paths).
    pub placement: Option<Placement>,
    /// Pod-core load.
    pub load: Load,
    /// The netperf test.
    pub test: Test,
    /// Repetition number, from 1.
    pub rep: u32,
    /// Minimum latency, µs.
    pub min_us: Option<f64>,
    /// Mean latency, µs.
    pub mean_us: Option<f64>,
    /// Median latency, µs.
    pub p50_us: Option<f64>,
    /// 90th percentile latency, µs.
    pub p90_us: Option<f64>,
    /// 99th percentile latency, µs.
    pub p99_us: Option<f64>,
    /// Maximum latency, µs.
    pub max_us: Option<f64>,
    /// Standard deviation of latency, µs.
    pub stddev_us: Option<f64>,
    /// Transactions per second.
    pub rate_per_s: Option<f64>,
    /// Throughput, Mbit/s.
    pub throughput_mbps: Option<f64>,
    /// netperf's local CPU utilisation, %.
    pub local_cpu_util: Option<f64>,
    /// netperf's remote CPU utilisation, %.
    pub remote_cpu_util: Option<f64>,
    /// The exact netperf command line.
    pub command: String,
}

impl Run {
    /// Builds a run record from a measurement.
    pub fn new(cell: Cell, rep: u32, m: Measurement, command: String) -> Run {
        Run {
            path: cell.path,
            placement: cell.placement,
            load: cell.load,
            test: cell.test,
            rep,
            min_us: m.min_us,
            mean_us: m.mean_us,
            p50_us: m.p50_us,
            p90_us: m.p90_us,
            p99_us: m.p99_us,
            max_us: m.max_us,
            stddev_us: m.stddev_us,
            rate_per_s: m.rate_per_s,
            throughput_mbps: m.throughput_mbps,
            local_cpu_util: m.local_cpu_util,
            remote_cpu_util: m.remote_cpu_util,
            command,
        }
    }

    fn cell(&self) -> Cell {
        Cell {
            path: self.path,
            placement: self.placement,
            load: self.load,
            test: self.test,
        }
    }
}

/// A failure of one path (or one test on it) in one repetition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunError {
    /// The path.
    pub path: PathKind,
    /// Its placement, if a Xylem path.
    pub placement: Option<Placement>,
    /// The load at the time.
    pub load: Load,
    /// The test, or `null` when the path itself could not be set up.
    pub test: Option<Test>,
    /// Repetition (0 = set-up before the first repetition).
    pub rep: u32,
    /// What went wrong, naming the path and the cause.
    pub message: String,
}

/// One row of the summary: medians over repetitions for one (path, placement, load, test).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryRow {
    /// The path.
    pub path: PathKind,
    /// Worker placement, `null` for kernel paths.
    pub placement: Option<Placement>,
    /// Pod-core load.
    pub load: Load,
    /// The netperf test.
    pub test: Test,
    /// Median P50 latency, µs.
    pub p50_us: Option<f64>,
    /// Median P90 latency, µs.
    pub p90_us: Option<f64>,
    /// Median P99 latency, µs.
    pub p99_us: Option<f64>,
    /// Smallest P99 over repetitions, µs.
    pub p99_us_min: Option<f64>,
    /// Largest P99 over repetitions, µs.
    pub p99_us_max: Option<f64>,
    /// Interquartile range of P99 over repetitions, µs.
    pub p99_us_iqr: Option<f64>,
    /// Median transactions per second.
    pub rate_per_s: Option<f64>,
    /// Smallest rate over repetitions.
    pub rate_per_s_min: Option<f64>,
    /// Largest rate over repetitions.
    pub rate_per_s_max: Option<f64>,
    /// Median throughput, Mbit/s.
    pub throughput_mbps: Option<f64>,
    /// Smallest throughput over repetitions.
    pub throughput_mbps_min: Option<f64>,
    /// Largest throughput over repetitions.
    pub throughput_mbps_max: Option<f64>,
    /// P99 divided by `veth`'s P99 under the same load and test (`null` for `veth` itself).
    pub ratio_p99_vs_veth: Option<f64>,
    /// P99 divided by `xylem-passthrough`'s P99, same placement, load and test (Xylem paths other
    /// than passthrough only).
    pub ratio_p99_vs_passthrough: Option<f64>,
    /// Rate divided by `veth`'s rate, same load and test.
    pub ratio_rate_vs_veth: Option<f64>,
    /// Rate divided by `xylem-passthrough`'s rate, same placement, load and test.
    pub ratio_rate_vs_passthrough: Option<f64>,
    /// Repetitions that produced numbers.
    pub reps: usize,
    /// Why the path cannot run here (`null` if it can).
    pub unavailable: Option<String>,
    /// The first error, if repetitions failed.
    pub error: Option<String>,
}

/// Everything written to `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// Machine and method: kernel, CPUs, pinning, XDP mode, busy-poll, netperf version, commands.
    pub conditions: serde_json::Value,
    /// Every measured repetition.
    pub runs: Vec<Run>,
    /// Medians and ratios.
    pub summary: Vec<SummaryRow>,
    /// Failures, per path.
    pub errors: Vec<RunError>,
}

/// One (path, placement, load, test) combination of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cell {
    /// The path.
    pub path: PathKind,
    /// Placement for Xylem paths.
    pub placement: Option<Placement>,
    /// Pod-core load.
    pub load: Load,
    /// The test.
    pub test: Test,
}

/// Builds the summary for `cells`: medians over `runs`, reasons for unavailable paths, the first
/// error of failed cells, and the ratios.
pub fn summarize(
    cells: &[Cell],
    runs: &[Run],
    unavailable: &BTreeMap<PathKind, String>,
    errors: &[RunError],
) -> Vec<SummaryRow> {
    let mut rows: Vec<SummaryRow> = cells
        .iter()
        .map(|cell| {
            let mine: Vec<&Run> = runs.iter().filter(|r| r.cell() == *cell).collect();
            let med = |f: fn(&Run) -> Option<f64>| spread(mine.iter().filter_map(|r| f(r)));
            let p99 = med(|r| r.p99_us);
            let rate = med(|r| r.rate_per_s);
            let tput = med(|r| r.throughput_mbps);
            let error = if mine.is_empty() {
                errors
                    .iter()
                    .find(|e| {
                        e.path == cell.path
                            && e.placement == cell.placement
                            && e.load == cell.load
                            && e.test.is_none_or(|t| t == cell.test)
                    })
                    .map(|e| e.message.clone())
            } else {
                None
            };
            SummaryRow {
                path: cell.path,
                placement: cell.placement,
                load: cell.load,
                test: cell.test,
                p50_us: med(|r| r.p50_us).map(|s| s.median),
                p90_us: med(|r| r.p90_us).map(|s| s.median),
                p99_us: p99.map(|s| s.median),
                p99_us_min: p99.map(|s| s.min),
                p99_us_max: p99.map(|s| s.max),
                p99_us_iqr: p99.map(|s| s.iqr()),
                rate_per_s: rate.map(|s| s.median),
                rate_per_s_min: rate.map(|s| s.min),
                rate_per_s_max: rate.map(|s| s.max),
                throughput_mbps: tput.map(|s| s.median),
                throughput_mbps_min: tput.map(|s| s.min),
                throughput_mbps_max: tput.map(|s| s.max),
                ratio_p99_vs_veth: None,
                ratio_p99_vs_passthrough: None,
                ratio_rate_vs_veth: None,
                ratio_rate_vs_passthrough: None,
                reps: mine.len(),
                unavailable: unavailable.get(&cell.path).cloned(),
                error,
            }
        })
        .collect();
    apply_ratios(&mut rows);
    rows
}

/// Fills the ratio columns: against `veth` under the same load and test, and against
/// `xylem-passthrough` with the same placement, load and test.
pub fn apply_ratios(rows: &mut [SummaryRow]) {
    let find = |rows: &[SummaryRow],
                path: PathKind,
                placement: Option<Placement>,
                load: Load,
                test: Test| {
        rows.iter()
            .find(|r| {
                r.path == path && r.placement == placement && r.load == load && r.test == test
            })
            .map(|r| (r.p99_us, r.rate_per_s))
    };
    for i in 0..rows.len() {
        let r = &rows[i];
        let veth = if r.path == PathKind::Veth {
            None
        } else {
            find(rows, PathKind::Veth, None, r.load, r.test)
        };
        let pt = if r.path.is_xylem() && r.path != PathKind::XylemPassthrough {
            find(
                rows,
                PathKind::XylemPassthrough,
                r.placement,
                r.load,
                r.test,
            )
        } else {
            None
        };
        let (p99, rate) = (r.p99_us, r.rate_per_s);
        let row = &mut rows[i];
        row.ratio_p99_vs_veth = veth.and_then(|(b, _)| ratio(p99, b));
        row.ratio_rate_vs_veth = veth.and_then(|(_, b)| ratio(rate, b));
        row.ratio_p99_vs_passthrough = pt.and_then(|(b, _)| ratio(p99, b));
        row.ratio_rate_vs_passthrough = pt.and_then(|(_, b)| ratio(rate, b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        path: PathKind,
        placement: Option<Placement>,
        load: Load,
        rep: u32,
        p99: f64,
        rate: f64,
    ) -> Run {
        let cell = Cell {
            path,
            placement,
            load,
            test: Test::TcpRr,
        };
        let m = Measurement {
            p50_us: Some(p99 / 2.0),
            p99_us: Some(p99),
            rate_per_s: Some(rate),
            ..Measurement::default()
        };
        Run::new(cell, rep, m, "netperf ...".into())
    }

    fn cells() -> Vec<Cell> {
        let mut v = Vec::new();
        for load in [Load::Idle, Load::Busy] {
            v.push(Cell {
                path: PathKind::Veth,
                placement: None,
                load,
                test: Test::TcpRr,
            });
            v.push(Cell {
                path: PathKind::Bridge,
                placement: None,
                load,
                test: Test::TcpRr,
            });
            for pl in [Placement::Dedicated, Placement::Shared] {
                for path in [
                    PathKind::XylemPassthrough,
                    PathKind::Xylem,
                    PathKind::XylemEncrypted,
                ] {
                    v.push(Cell {
                        path,
                        placement: Some(pl),
                        load,
                        test: Test::TcpRr,
                    });
                }
            }
        }
        v
    }

    fn sample() -> Vec<SummaryRow> {
        let d = Some(Placement::Dedicated);
        let s = Some(Placement::Shared);
        let runs = vec![
            run(PathKind::Veth, None, Load::Idle, 1, 20.0, 100_000.0),
            run(PathKind::Veth, None, Load::Idle, 2, 30.0, 90_000.0),
            run(PathKind::Veth, None, Load::Idle, 3, 10.0, 110_000.0),
            run(PathKind::Veth, None, Load::Busy, 1, 40.0, 50_000.0),
            run(PathKind::Bridge, None, Load::Idle, 1, 30.0, 80_000.0),
            run(
                PathKind::XylemPassthrough,
                d,
                Load::Idle,
                1,
                100.0,
                10_000.0,
            ),
            run(PathKind::XylemPassthrough, s, Load::Idle, 1, 40.0, 50_000.0),
            run(PathKind::Xylem, d, Load::Idle, 1, 110.0, 9_000.0),
            run(PathKind::Xylem, s, Load::Idle, 1, 60.0, 40_000.0),
            run(PathKind::Xylem, s, Load::Busy, 1, 80.0, 20_000.0),
        ];
        let mut unavailable = BTreeMap::new();
        unavailable.insert(
            PathKind::XylemEncrypted,
            "unavailable: ESP encryption not implemented yet".to_string(),
        );
        let errors = vec![RunError {
            path: PathKind::Bridge,
            placement: None,
            load: Load::Busy,
            test: None,
            rep: 1,
            message: "path `bridge`: boom".into(),
        }];
        summarize(&cells(), &runs, &unavailable, &errors)
    }

    fn row(
        rows: &[SummaryRow],
        path: PathKind,
        placement: Option<Placement>,
        load: Load,
    ) -> SummaryRow {
        rows.iter()
            .find(|r| r.path == path && r.placement == placement && r.load == load)
            .cloned()
            .expect("row exists")
    }

    #[test]
    fn medians_and_spread() {
        let rows = sample();
        let v = row(&rows, PathKind::Veth, None, Load::Idle);
        assert_eq!(v.p99_us, Some(20.0));
        assert_eq!((v.p99_us_min, v.p99_us_max), (Some(10.0), Some(30.0)));
        assert_eq!(v.p99_us_iqr, Some(10.0));
        assert_eq!(v.rate_per_s, Some(100_000.0));
        assert_eq!(v.p50_us, Some(10.0));
        assert_eq!(v.reps, 3);
        assert_eq!(v.throughput_mbps, None, "RR tests have no throughput");
        assert_eq!(
            v.ratio_p99_vs_veth, None,
            "veth is not compared with itself"
        );
    }

    #[test]
    fn ratios_use_same_load_and_placement() {
        let rows = sample();
        let d = Some(Placement::Dedicated);
        let s = Some(Placement::Shared);
        let x = row(&rows, PathKind::Xylem, s, Load::Idle);
        assert_eq!(x.ratio_p99_vs_veth, Some(3.0));
        assert_eq!(
            x.ratio_p99_vs_passthrough,
            Some(1.5),
            "shared vs shared passthrough"
        );
        assert_eq!(x.ratio_rate_vs_passthrough, Some(0.8));
        let x = row(&rows, PathKind::Xylem, d, Load::Idle);
        assert_eq!(
            x.ratio_p99_vs_passthrough,
            Some(1.1),
            "dedicated vs dedicated passthrough"
        );
        let busy = row(&rows, PathKind::Xylem, s, Load::Busy);
        assert_eq!(busy.ratio_p99_vs_veth, Some(2.0), "busy vs busy veth");
        assert_eq!(
            busy.ratio_p99_vs_passthrough, None,
            "no busy passthrough measured"
        );
        let pt = row(&rows, PathKind::XylemPassthrough, d, Load::Idle);
        assert_eq!(
            pt.ratio_p99_vs_passthrough, None,
            "passthrough is not compared with itself"
        );
        assert_eq!(pt.ratio_p99_vs_veth, Some(5.0));
        let br = row(&rows, PathKind::Bridge, None, Load::Idle);
        assert_eq!(
            br.ratio_p99_vs_passthrough, None,
            "kernel paths have no passthrough ratio"
        );
        assert_eq!(br.ratio_p99_vs_veth, Some(1.5));
    }

    #[test]
    fn unavailable_and_errors_are_reported() {
        let rows = sample();
        let enc = row(
            &rows,
            PathKind::XylemEncrypted,
            Some(Placement::Shared),
            Load::Busy,
        );
        assert_eq!(
            enc.unavailable.as_deref(),
            Some("unavailable: ESP encryption not implemented yet")
        );
        assert_eq!(enc.p99_us, None);
        assert_eq!(enc.ratio_p99_vs_veth, None);
        let br = row(&rows, PathKind::Bridge, None, Load::Busy);
        assert_eq!(br.error.as_deref(), Some("path `bridge`: boom"));
        assert_eq!(br.reps, 0);
    }

    #[test]
    fn results_json_round_trip() -> Result<()> {
        let rows = sample();
        let results = Results {
            conditions: serde_json::json!({"kernel": "6.18", "cpus": 2}),
            runs: vec![run(PathKind::Veth, None, Load::Idle, 1, 20.0, 100_000.0)],
            summary: rows,
            errors: Vec::new(),
        };
        let text = serde_json::to_string_pretty(&results)?;
        let back: Results = serde_json::from_str(&text)?;
        assert_eq!(back, results);
        // The published names.
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let r = &v["runs"][0];
        for k in [
            "path",
            "placement",
            "load",
            "test",
            "rep",
            "min_us",
            "mean_us",
            "p50_us",
            "p90_us",
            "p99_us",
            "max_us",
            "stddev_us",
            "rate_per_s",
            "throughput_mbps",
        ] {
            assert!(r.get(k).is_some(), "runs[].{k} missing");
        }
        assert_eq!(r["path"], "veth");
        assert_eq!(r["placement"], serde_json::Value::Null);
        assert_eq!(r["load"], "idle");
        assert_eq!(r["test"], "TCP_RR");
        let s = &v["summary"][0];
        for k in [
            "path",
            "placement",
            "load",
            "test",
            "p50_us",
            "p99_us",
            "rate_per_s",
            "throughput_mbps",
            "ratio_p99_vs_veth",
            "ratio_p99_vs_passthrough",
            "unavailable",
        ] {
            assert!(s.get(k).is_some(), "summary[].{k} missing");
        }
        let x = v["summary"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["path"] == "xylem-passthrough"));
        assert_eq!(
            x.map(|x| &x["placement"]),
            Some(&serde_json::json!("dedicated"))
        );
        Ok(())
    }
}

//! `netperf-harness`: measures Xylem against the kernel's pod-to-pod datapaths with netperf.
//!
//! # What it does
//! - Builds each kernel path (`veth`, `veth-netfilter`, `bridge`, `ipvlan`, `macvlan`) in its own
//!   network namespaces named `xnh<pid>-...`; drives the Xylem paths (`xylem-passthrough`,
//!   `xylem`, `xylem-monitored`, `xylem-multinode`, `xylem-encrypted`) through
//!   `xylem lab up/status/down`.
//! - `xylem-multinode` and `xylem-encrypted` (module `multinode`) run the client pod on one node
//!   and netserver's on another of a two-node lab; `xylem-encrypted` adds ESP (AES-128-GCM)
//!   between the nodes with a random key the harness writes for the run. The report sets
//!   `xylem-encrypted` against `xylem-multinode` (ESP's cost) and `xylem-multinode` against
//!   `xylem` (crossing nodes' cost), each within the run.
//! - `xylem-monitored` is `xylem` (same lab, same 1,000-rule policy) with a
//!   `xylem monitor -o json` client receiving every event type for the whole of each test
//!   (module `monitor`): it measures what attaching a monitor costs the workers (issue 3's goal:
//!   within 5%), and records how many events the client carried and how many were lost.
//! - Runs netperf TCP_RR, TCP_CRR, TCP_STREAM and UDP_RR, pinned to the pod core set, after a
//!   warm-up, for N repetitions interleaved across paths, with the pod cores idle and busy, and
//!   each Xylem path in the `dedicated` and `shared` worker placements.
//! - Writes `results.json` (conditions, every run, medians and ratios), `report.md`, and
//!   `chart.svg`/`chart.png`. The report sets `xylem` against `xylem-passthrough` (the policy's
//!   cost) and `xylem-monitored` against `xylem` (the monitor's cost), each within the run.
//! - `dns` (module `dns`): issue 12's two figures for DNS-aware policy, with dnsperf against
//!   dnsmasq in a lab: the P99 a query gains from inline inspection (`inspected` against `full`
//!   and `passthrough`, interleaved repetitions), and the highest dnsperf rate without a lost
//!   query. `dns-report` re-renders its report from its results.json.
//! - `cni` (module `cni`): issue 14's figures for the `xylem-cni` plugin in a lab of its own:
//!   ADD, first-packet and DEL times over pods started one after another, against the
//!   reference `ptp` plugin in the same run; ADD/DEL churn with the agent's memory and frame
//!   ledger read before and after; the plugin's size and dependency tree. `cni-report`
//!   re-renders its README.md and chart from its results.json.
//! - Removes everything it created on success, on failure and on SIGINT/SIGTERM (RAII guards,
//!   a flag set by the signal handler, and a final sweep of its namespace prefix).
//!
//! # What it does not do
//! - It never touches the host's interfaces, addresses or routes, and sends no traffic outside
//!   its own namespaces (and those of the Xylem lab).
//! - It does not build or configure Xylem: the lab CLI owns the agent, the XDP program and the
//!   workers. If `xylem` is missing or `lab up` fails, those paths report the error and the
//!   kernel paths still run.
//! - It asserts no performance goal: ratios are reported, not enforced.
//! - It does not install netperf (run `docker/bootstrap.sh`) nor iptables.

mod chart;
mod cni;
mod dns;
mod dns_chart;
mod dns_env;
mod dns_report;
mod dns_results;
mod dnsperf;
mod error;
mod monitor;
mod multinode;
mod netperf;
mod report;
mod results;
mod runner;
mod stats;
mod sys;
mod topology;
mod xylem;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::{Error, Result};
use crate::netperf::Test;
use crate::results::{Load, PathKind, Placement, Results};

#[derive(Debug, Parser)]
#[command(
    name = "netperf-harness",
    version,
    about = "Compare Xylem with the kernel's pod-to-pod datapaths using netperf"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build the paths, run the tests, write results.json, report.md and the chart.
    Run(RunArgs),
    /// Re-render report.md and the chart from an existing results.json.
    Report {
        /// The results.json to read.
        #[arg(long)]
        results: PathBuf,
        /// Output directory (default: the directory of results.json).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Markdown file with a hand-written reading of the run, placed near the top.
        #[arg(long)]
        notes: Option<PathBuf>,
    },
    /// Measure DNS-aware policy (issue 12): inspection latency and the highest loss-free
    /// dnsperf rate; writes results.json, report.md and the chart.
    Dns(dns::DnsArgs),
    /// Re-render report.md and the chart of a `dns` run from its results.json.
    DnsReport {
        /// The results.json written by `dns`.
        #[arg(long)]
        results: PathBuf,
        /// Output directory (default: the directory of results.json).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Markdown file with a hand-written reading of the run, placed near the top.
        #[arg(long)]
        notes: Option<PathBuf>,
    },
    /// Measure `xylem-cni` (issue 14): ADD, first-packet and DEL times over pods started one
    /// after another (against the reference `ptp` plugin), ADD/DEL churn against the agent's
    /// memory and frame ledger, and the plugin's size and dependency tree; writes
    /// results.json, README.md and cni-setup.svg/png.
    Cni(cni::CniArgs),
    /// Re-render README.md and the chart of a `cni` run from its results.json.
    CniReport {
        /// The results.json written by `cni`.
        #[arg(long)]
        results: PathBuf,
        /// Output directory (default: the directory of results.json).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Markdown file with a hand-written reading of the run, placed near the top.
        #[arg(long)]
        notes: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Paths, comma-separated [default: all]: veth, veth-netfilter, bridge, ipvlan, macvlan,
    /// xylem-passthrough, xylem, xylem-monitored (xylem with a `xylem monitor` client attached),
    /// xylem-multinode (client and server pods on two nodes of a lab), xylem-encrypted
    /// (xylem-multinode with ESP between the nodes).
    #[arg(long, value_delimiter = ',')]
    paths: Vec<String>,
    /// Tests, comma-separated [default: TCP_RR,TCP_CRR,TCP_STREAM,UDP_RR].
    #[arg(long, value_delimiter = ',')]
    tests: Vec<String>,
    /// Worker placements for the Xylem paths [default: dedicated,shared].
    #[arg(long, value_delimiter = ',')]
    placements: Vec<String>,
    /// Pod-core loads [default: idle,busy].
    #[arg(long, value_delimiter = ',')]
    load: Vec<String>,
    /// Seconds per netperf test.
    #[arg(long, default_value_t = 10)]
    duration: u32,
    /// Recorded repetitions (after a warm-up).
    #[arg(long, default_value_t = 5)]
    repeat: u32,
    /// Output directory.
    #[arg(long, default_value = "netperf-results")]
    out: PathBuf,
    /// The `xylem` binary [default: `xylem` next to this executable].
    #[arg(long)]
    xylem_bin: Option<PathBuf>,
    /// Pod core set: netperf, netserver and the busy spinners run here [default: CPU 0].
    #[arg(long, default_value = "0")]
    pod_cores: String,
    /// Worker cores for the dedicated placement [default: the first CPU not in --pod-cores].
    /// Several cores mean several workers (one per core, sharing one flow table). One-node paths
    /// only: in the two-node paths the lab gives each node's agent a core of its own, from the
    /// last CPU down.
    #[arg(long)]
    worker_cores: Option<String>,
    /// XDP attach mode passed to `xylem lab up`.
    #[arg(long, default_value = "auto")]
    xdp_mode: String,
    /// Worker batch size passed to `xylem lab up`.
    #[arg(long, default_value_t = 64)]
    batch_size: u32,
    /// Markdown file with a hand-written reading of the run, placed near the top of report.md.
    #[arg(long)]
    notes: Option<PathBuf>,
}

fn parse_list<T: std::str::FromStr<Err = Error> + Clone>(
    values: &[String],
    default: &[T],
) -> Result<Vec<T>> {
    if values.is_empty() {
        return Ok(default.to_vec());
    }
    values.iter().map(|v| v.trim().parse()).collect()
}

fn options(a: &RunArgs) -> Result<runner::Options> {
    let pod_cores = sys::parse_cpu_list(&a.pod_cores)?;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if let Some(c) = pod_cores.iter().find(|c| **c >= cpus) {
        return Err(Error::Usage(format!(
            "--pod-cores: CPU {c} does not exist ({cpus} CPUs)"
        )));
    }
    let worker_cores = match &a.worker_cores {
        Some(w) => sys::parse_cpu_list(w)?,
        // One worker: a netperf test is one flow, which one worker carries; a second one would
        // only take a core from the pods.
        None => (0..cpus)
            .find(|c| !pod_cores.contains(c))
            .map_or_else(|| vec![pod_cores[0]], |c| vec![c]),
    };
    if a.duration == 0 || a.repeat == 0 {
        return Err(Error::Usage(
            "--duration and --repeat must be at least 1".into(),
        ));
    }
    Ok(runner::Options {
        paths: parse_list(&a.paths, &PathKind::ALL)?,
        tests: parse_list(&a.tests, &Test::ALL)?,
        placements: parse_list(&a.placements, &[Placement::Dedicated, Placement::Shared])?,
        loads: parse_list(&a.load, &[Load::Idle, Load::Busy])?,
        duration_s: a.duration,
        repeat: a.repeat,
        out: a.out.clone(),
        xylem_bin: a.xylem_bin.clone().unwrap_or_else(xylem::default_bin),
        pod_cores,
        worker_cores,
        xdp_mode: a.xdp_mode.clone(),
        batch_size: a.batch_size,
    })
}

fn read_notes(path: Option<&Path>) -> Result<Option<String>> {
    path.map(|p| {
        std::fs::read_to_string(p).map_err(|source| Error::Io {
            path: p.to_path_buf(),
            source,
        })
    })
    .transpose()
}

fn write_outputs(res: &Results, out: &Path, notes: Option<&str>) -> Result<()> {
    write_files(out, res, &report::render(res, notes))?;
    chart::write(res, out)
}

fn write_dns_outputs(res: &dns_results::DnsResults, out: &Path, notes: Option<&str>) -> Result<()> {
    write_files(out, res, &dns_report::render(res, notes))?;
    dns_chart::write(res, out)
}

/// Writes `results.json` (`res`) and `report.md` (`report`) into `out`, made if missing.
fn write_files(out: &Path, res: &impl serde::Serialize, report: &str) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let json = out.join("results.json");
    let text = serde_json::to_string_pretty(res)? + "\n";
    std::fs::write(&json, text).map_err(io(&json))?;
    let md = out.join("report.md");
    std::fs::write(&md, report).map_err(io(&md))
}

fn run_dns(a: &dns::DnsArgs) -> Result<()> {
    let opts = dns::options(a)?;
    let notes = read_notes(a.notes.as_deref())?;
    sys::install_signal_handlers();
    let res = dns::run(&opts)?;
    write_dns_outputs(&res, &opts.out, notes.as_deref())?;
    eprintln!(
        "wrote {}/results.json, report.md, chart.svg, chart.png: {} latency runs, {} throughput steps, {} errors",
        opts.out.display(),
        res.latency.len(),
        res.throughput.len(),
        res.errors.len()
    );
    for e in &res.errors {
        eprintln!("  {} {}: {}", e.setup, e.phase, e.message);
    }
    Ok(())
}

fn rerender_dns(results: &Path, out: Option<PathBuf>, notes: Option<&Path>) -> Result<()> {
    let text = std::fs::read_to_string(results).map_err(|source| Error::Io {
        path: results.to_path_buf(),
        source,
    })?;
    let mut res: dns_results::DnsResults = serde_json::from_str(&text)?;
    res.resummarize();
    let out = out.unwrap_or_else(|| results.parent().map(Path::to_path_buf).unwrap_or_default());
    let notes = read_notes(notes)?;
    write_dns_outputs(&res, &out, notes.as_deref())
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run(a) => {
            let opts = options(&a)?;
            let notes = read_notes(a.notes.as_deref())?;
            sys::install_signal_handlers();
            let res = runner::run(&opts)?;
            write_outputs(&res, &opts.out, notes.as_deref())?;
            let measured = res.summary.iter().filter(|r| r.reps > 0).count();
            eprintln!(
                "wrote {}/results.json, report.md, chart.svg, chart.png: {measured} of {} cells measured, {} errors",
                opts.out.display(),
                res.summary.len(),
                res.errors.len()
            );
            for r in res.summary.iter().filter(|r| r.reps == 0) {
                if let Some(u) = r.unavailable.as_ref().or(r.error.as_ref()) {
                    let pl = r
                        .placement
                        .map(|p| format!(" ({})", p.name()))
                        .unwrap_or_default();
                    eprintln!("  {}{} {} {}: {u}", r.path, pl, r.load.name(), r.test);
                }
            }
            Ok(())
        }
        Cmd::Report {
            results,
            out,
            notes,
        } => {
            let text = std::fs::read_to_string(&results).map_err(|source| Error::Io {
                path: results.clone(),
                source,
            })?;
            let res: Results = serde_json::from_str(&text)?;
            let out =
                out.unwrap_or_else(|| results.parent().map(Path::to_path_buf).unwrap_or_default());
            let notes = read_notes(notes.as_deref())?;
            write_outputs(&res, &out, notes.as_deref())
        }
        Cmd::Dns(a) => run_dns(&a),
        Cmd::DnsReport {
            results,
            out,
            notes,
        } => rerender_dns(&results, out, notes.as_deref()),
        Cmd::Cni(a) => {
            sys::install_signal_handlers();
            cni::run(&a).map(|_| ())
        }
        Cmd::CniReport {
            results,
            out,
            notes,
        } => cni::rerender(&results, out, notes.as_deref()),
    }
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netperf-harness: {e}");
            ExitCode::FAILURE
        }
    }
}

//! `netperf-harness dns`: what DNS-aware policy (issue 12) costs a query, and how many queries
//! per second the dataplane carries without losing one.
//!
//! Each visit of a setup builds it afresh: `xylem lab up` with a `client` pod
//! (`app: myService`) and a `kube-system/kube-dns` pod running dnsmasq, plus the setup's policy
//! (`env` module), or for `veth` the same two pods on veth pairs without Xylem. dnsperf runs in
//! the client pod. Latency: a `-v` run at a moderate fixed rate gives every query's latency;
//! repetitions interleave the setups (A B C A B C ...). Throughput: at the first visit, `-Q`
//! steps up until two steps were unclean. Everything the run creates is removed on success,
//! failure and SIGINT/SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use xylem_lab::netns;
use xylem_lab::process;

use crate::dns_env::{self, Env};
use crate::dns_results::{self, DnsError, DnsResults, LatencyRun, Setup, Step};
use crate::dnsperf;
use crate::error::{Error, Result};
use crate::results::Placement;
use crate::{sys, xylem};

/// Arguments of `netperf-harness dns`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Measure DNS-aware policy (issue 12): per-query latency added by inline inspection, and the highest loss-free dnsperf rate",
    long_about = "Measure DNS-aware policy (issue 12) with dnsperf against dnsmasq in a lab.\n\n\
Setups (each visit is a fresh `xylem lab up`): passthrough (no policy), full (a policy allowing \
the client UDP 53 to kube-dns, no rules.dns), inspected (the issue's policy with rules.dns \
*.domain.com), veth (no Xylem: the kernel reference).\n\n\
Latency: a `dnsperf -v` run per setup and repetition at --latency-qps, one query outstanding at \
a time in practice; every answered query's latency gives P50/P90/P99/max. Repetitions \
interleave the setups. Reports P99(inspected) − P99(full) and − P99(passthrough).\n\n\
Throughput: at each setup's first visit, dnsperf steps through --rates; a step is clean with no \
query lost and ≥ 98 % of the offered rate achieved; a setup stops after two unclean steps.\n\n\
Writes results.json, report.md, chart.svg and chart.png into --out. Needs root, dnsperf, \
dnsmasq, dig, and the `xylem` binaries (cargo build --release -p xylem-cli -p xylem-agent)."
)]
pub struct DnsArgs {
    /// Setups, comma-separated, in interleaving order [default: passthrough,full,inspected,veth].
    #[arg(long, value_delimiter = ',')]
    pub setups: Vec<String>,
    /// Latency repetitions per setup (each a fresh lab).
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,
    /// Offered rate of the latency runs, queries/s.
    #[arg(long, default_value_t = 2000)]
    pub latency_qps: u32,
    /// Seconds per latency run.
    #[arg(long, default_value_t = 5)]
    pub latency_duration: u32,
    /// Offered rates of the throughput steps, queries/s, ascending; empty (`--rates ''`) skips
    /// the throughput part.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "5000,10000,15000,20000,25000,30000,40000"
    )]
    pub rates: Vec<String>,
    /// Seconds per throughput step.
    #[arg(long, default_value_t = 5)]
    pub step_duration: u32,
    /// Passes over --rates per setup, at its first visits (losses are rare events: a second
    /// pass shows whether a rate's loss repeats).
    #[arg(long, default_value_t = 1)]
    pub throughput_passes: u32,
    /// dnsperf clients (sockets) in the throughput steps.
    #[arg(long, default_value_t = 4)]
    pub clients: u32,
    /// dnsperf's outstanding-query limit in the throughput steps.
    #[arg(long, default_value_t = 200)]
    pub outstanding: u32,
    /// Worker placement of the Xylem setups: dedicated (busy-polls its own cores) or shared
    /// (the pod core).
    #[arg(long, default_value = "dedicated")]
    pub placement: String,
    /// Pod core set: dnsperf and dnsmasq run on its first CPU.
    #[arg(long, default_value = "0")]
    pub pod_cores: String,
    /// Worker cores for the dedicated placement [default: the first CPU not in --pod-cores].
    #[arg(long)]
    pub worker_cores: Option<String>,
    /// XDP attach mode passed to `xylem lab up`.
    #[arg(long, default_value = "auto")]
    pub xdp_mode: String,
    /// Worker batch size passed to `xylem lab up`.
    #[arg(long, default_value_t = 64)]
    pub batch_size: u32,
    /// Output directory.
    #[arg(long, default_value = "dns-results")]
    pub out: PathBuf,
    /// The `xylem` binary [default: `xylem` next to this executable].
    #[arg(long)]
    pub xylem_bin: Option<PathBuf>,
    /// Markdown file with a hand-written reading of the run, placed near the top of report.md.
    #[arg(long)]
    pub notes: Option<PathBuf>,
}

/// What to run, validated.
#[derive(Debug, Clone)]
pub struct Options {
    /// Setups, in interleaving order.
    pub setups: Vec<Setup>,
    /// Latency repetitions.
    pub repeat: u32,
    /// Latency runs' `-Q`.
    pub latency_qps: u32,
    /// Latency runs' `-l`.
    pub latency_s: u32,
    /// Throughput steps' `-Q`, ascending.
    pub rates: Vec<u32>,
    /// Throughput steps' `-l`.
    pub step_s: u32,
    /// Passes over the rates, at the first visits.
    pub passes: u32,
    /// Throughput steps' `-c`.
    pub clients: u32,
    /// Throughput steps' `-q`.
    pub outstanding: u32,
    /// Worker placement.
    pub placement: Placement,
    /// Pod cores; dnsperf and dnsmasq run on the first.
    pub pod_cores: Vec<usize>,
    /// Dedicated worker cores.
    pub worker_cores: Vec<usize>,
    /// `xylem lab up --xdp-mode`.
    pub xdp_mode: String,
    /// `xylem lab up --batch-size`.
    pub batch_size: u32,
    /// Output directory.
    pub out: PathBuf,
    /// The `xylem` binary.
    pub xylem_bin: PathBuf,
}

impl Options {
    /// The CPU dnsperf and dnsmasq are pinned to.
    pub fn pod_cpu(&self) -> usize {
        self.pod_cores[0]
    }

    /// `--worker-cores` for `lab up`: the dedicated cores, or the pod CPU when shared.
    pub fn lab_worker_cores(&self) -> String {
        match self.placement {
            Placement::Dedicated => sys::cpu_list(&self.worker_cores),
            Placement::Shared => self.pod_cpu().to_string(),
        }
    }
}

/// Validates the arguments.
pub fn options(a: &DnsArgs) -> Result<Options> {
    let setups = if a.setups.is_empty() {
        Setup::ALL.to_vec()
    } else {
        a.setups
            .iter()
            .map(|s| s.trim().parse())
            .collect::<Result<_>>()?
    };
    let mut rates = Vec::new();
    for r in a.rates.iter().map(|r| r.trim()).filter(|r| !r.is_empty()) {
        let q: u32 = r.parse().map_err(|_| {
            Error::Usage(format!(
                "--rates: `{r}` is not a rate in queries/s (e.g. 5000,10000)"
            ))
        })?;
        rates.push(q);
    }
    if rates.windows(2).any(|w| w[0] >= w[1]) || rates.contains(&0) {
        return Err(Error::Usage(
            "--rates must be ascending and above 0, e.g. 5000,10000,20000".into(),
        ));
    }
    let pod_cores = sys::parse_cpu_list(&a.pod_cores)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if pod_cores.is_empty() || pod_cores.iter().any(|c| *c >= cpus) {
        return Err(Error::Usage(format!(
            "--pod-cores `{}`: give CPUs below {cpus}",
            a.pod_cores
        )));
    }
    let worker_cores = match &a.worker_cores {
        Some(w) => sys::parse_cpu_list(w)?,
        None => (0..cpus)
            .find(|c| !pod_cores.contains(c))
            .map_or_else(|| vec![pod_cores[0]], |c| vec![c]),
    };
    if a.repeat == 0 || a.latency_duration == 0 || a.step_duration == 0 || a.latency_qps == 0 {
        return Err(Error::Usage(
            "--repeat, --latency-qps, --latency-duration and --step-duration must be at least 1"
                .into(),
        ));
    }
    Ok(Options {
        setups,
        repeat: a.repeat,
        latency_qps: a.latency_qps,
        latency_s: a.latency_duration,
        rates,
        step_s: a.step_duration,
        passes: a.throughput_passes.min(a.repeat),
        clients: a.clients.max(1),
        outstanding: a.outstanding.max(1),
        placement: a.placement.parse()?,
        pod_cores,
        worker_cores,
        xdp_mode: a.xdp_mode.clone(),
        batch_size: a.batch_size,
        out: a.out.clone(),
        xylem_bin: a.xylem_bin.clone().unwrap_or_else(xylem::default_bin),
    })
}

fn preflight(opts: &Options) -> Result<()> {
    if !process::is_root() {
        return Err(Error::NotRoot);
    }
    let mut tools = vec!["dnsperf", "dnsmasq", "dig", "ip", "taskset"];
    if opts.setups.contains(&Setup::Veth) {
        // The kernel path's builder starts netserver in its server pod.
        tools.extend(["netserver", "ethtool"]);
    }
    for tool in tools {
        if process::which(tool).is_none() {
            return Err(Error::Usage(format!(
                "`{tool}` not found on PATH: run docker/bootstrap.sh (it installs dnsperf, dnsmasq-base, bind9-dnsutils, netperf, iproute2 and ethtool)"
            )));
        }
    }
    if opts.setups.iter().any(|s| s.mode().is_some()) && !opts.xylem_bin.is_file() {
        return Err(Error::Lab(format!(
            "xylem binary not found at {} (build it: cargo build --release -p xylem-cli -p xylem-agent, or pass --xylem-bin)",
            opts.xylem_bin.display()
        )));
    }
    Ok(())
}

/// Runs `args` with its output (stdout and stderr) going to the file `out` rather than a pipe:
/// a pipe would wake a harness thread on the worker's core for every block of `-v` lines while
/// the latency is being measured. Returns whether it exited successfully, and its status.
fn run_to_file(args: &[&str], out: &Path, timeout: Duration) -> Result<(bool, String)> {
    let cmd = process::cmd_line(args);
    let io = |source| Error::Io {
        path: out.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(out).map_err(io)?;
    let err = file.try_clone().map_err(io)?;
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .map_err(|source| Error::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(io)? {
            return Ok((status.success(), status.to_string()));
        }
        if sys::interrupted() || start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            if sys::interrupted() {
                return Err(Error::Interrupted);
            }
            return Err(Error::Timeout {
                cmd,
                secs: timeout.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs dnsperf in the client pod on the pod CPU; its command line and summary, and its whole
/// output when `verbose`.
fn dnsperf_run(
    env: &Env,
    opts: &Options,
    data: &Path,
    qps: u32,
    secs: u32,
    (clients, outstanding): (u32, u32),
    verbose: bool,
) -> Result<(String, dnsperf::Summary, String)> {
    let data = data.to_string_lossy();
    let dp = dnsperf::args(
        &env.server_ip,
        &data,
        qps,
        secs,
        clients,
        outstanding,
        verbose,
    );
    let cpu = opts.pod_cpu().to_string();
    let mut args = vec!["ip", "netns", "exec", &env.client_ns, "taskset", "-c", &cpu];
    args.extend(dp.iter().map(String::as_str));
    let cmd = process::cmd_line(&args);
    let file = std::env::temp_dir().join(format!(
        "netperf-harness-{}-dnsperf.out",
        std::process::id()
    ));
    let ran = run_to_file(&args, &file, Duration::from_secs(u64::from(secs) + 30));
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    let _ = std::fs::remove_file(&file);
    let (ok, status) = ran?;
    if !ok {
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        return Err(Error::Command {
            cmd,
            status,
            stderr: format!(
                "{} (run the command by hand in the lab to see why)",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ),
        });
    }
    let summary = dnsperf::parse_summary(&text)?;
    Ok((cmd, summary, if verbose { text } else { String::new() }))
}

/// Prints a line above the progress bar, or on stderr when there is no terminal to draw it on.
fn say(pb: &ProgressBar, line: String) {
    if pb.is_hidden() {
        eprintln!("{line}");
    } else {
        pb.println(line);
    }
}

/// Accumulates what a run produces.
#[derive(Debug, Default)]
struct Collected {
    latency: Vec<LatencyRun>,
    steps: Vec<Step>,
    errors: Vec<DnsError>,
    statuses: Vec<(Setup, serde_json::Value)>,
    lab_commands: Vec<(Setup, String)>,
}

impl Collected {
    fn error(&mut self, setup: Setup, phase: &str, rep: Option<u32>, qps: Option<u32>, e: &Error) {
        self.errors.push(DnsError {
            setup,
            phase: phase.into(),
            rep,
            target_qps: qps,
            message: e.to_string(),
        });
    }
}

fn latency_run(
    env: &Env,
    opts: &Options,
    data: &Path,
    setup: Setup,
    rep: u32,
) -> Result<LatencyRun> {
    // A second at the same rate, unrecorded: ARP, the flow's first packets, the FQDN cache.
    dnsperf_run(env, opts, data, opts.latency_qps, 1, (1, 10), false)?;
    let before = env.counters();
    let (command, summary, text) = dnsperf_run(
        env,
        opts,
        data,
        opts.latency_qps,
        opts.latency_s,
        (1, 10),
        true,
    )?;
    let v = dnsperf::parse_verbose(&text);
    let after = env.counters();
    Ok(LatencyRun {
        setup,
        rep,
        command,
        latency: dnsperf::percentiles(&v.latencies_us),
        timeouts: v.timeouts,
        summary,
        counters: dns_env::grown(&before, &after),
        histogram_us: dnsperf::histogram(&v.latencies_us),
    })
}

fn throughput(
    env: &Env,
    opts: &Options,
    data: &Path,
    (setup, pass): (Setup, u32),
    pb: &ProgressBar,
    got: &mut Collected,
) -> Result<()> {
    let mut mine: Vec<Step> = Vec::new();
    for (i, &qps) in opts.rates.iter().enumerate() {
        sys::check_interrupted()?;
        let judged: Vec<(u32, &dnsperf::Summary)> =
            mine.iter().map(|s| (s.target_qps, &s.summary)).collect();
        if !dnsperf::keep_stepping(&judged) {
            pb.inc((opts.rates.len() - i) as u64);
            break;
        }
        pb.set_message(format!("{setup}: throughput pass {pass} at {qps} q/s"));
        let c = (opts.clients, opts.outstanding);
        let before = env.counters();
        match dnsperf_run(env, opts, data, qps, opts.step_s, c, false) {
            Ok((cmd, summary, _)) => {
                let mut step = Step::new(setup, qps, cmd, summary);
                step.pass = pass;
                step.counters = dns_env::grown(&before, &env.counters());
                say(
                    pb,
                    format!(
                        "{setup} pass {pass} {qps} q/s: achieved {:.0}, lost {}, counters {}{}",
                        step.summary.qps,
                        step.summary.lost,
                        dns_results::rcodes_text(&step.counters),
                        if step.clean { " (clean)" } else { "" }
                    ),
                );
                mine.push(step);
            }
            Err(Error::Interrupted) => return Err(Error::Interrupted),
            Err(e) => {
                say(pb, format!("error: {setup} {qps} q/s: {e}"));
                got.error(setup, "throughput", None, Some(qps), &e);
            }
        }
        pb.inc(1);
    }
    got.steps.extend(mine);
    Ok(())
}

fn progress(total: u64) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] {pos}/{len} runs, ETA {eta} {msg}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

fn visit(
    opts: &Options,
    ctx: &dns_env::Context,
    setup: Setup,
    rep: u32,
    pb: &ProgressBar,
    got: &mut Collected,
) -> Result<()> {
    let steps = if rep <= opts.passes {
        opts.rates.len() as u64
    } else {
        0
    };
    pb.set_message(format!("rep {rep}: {setup}: bringing it up"));
    if pb.is_hidden() {
        eprintln!(
            "[{}/{} runs, {:.0?}] rep {rep}: {setup}",
            pb.position(),
            pb.length().unwrap_or(0),
            pb.elapsed()
        );
    }
    let env = match dns_env::up(setup, ctx) {
        Ok(env) => env,
        Err(Error::Interrupted) => return Err(Error::Interrupted),
        Err(e) => {
            say(pb, format!("error: rep {rep} {setup}: {e}"));
            got.error(setup, "setup", Some(rep), None, &e);
            pb.inc(1 + steps);
            return Ok(());
        }
    };
    if !got.statuses.iter().any(|(s, _)| *s == setup) {
        got.statuses.push((setup, env.status.clone()));
        if let Some(c) = &env.command {
            got.lab_commands.push((setup, c.clone()));
        }
    }
    pb.set_message(format!("rep {rep}: {setup}: latency"));
    match latency_run(&env, opts, &ctx.queries, setup, rep) {
        Ok(r) => {
            if let Some(p) = &r.latency {
                say(
                    pb,
                    format!(
                        "rep {rep} {setup}: P50 {:.0} µs, P99 {:.0} µs, max {:.0} µs over {} queries, {} timed out",
                        p.p50_us, p.p99_us, p.max_us, p.n, r.timeouts
                    ),
                );
            }
            got.latency.push(r);
        }
        Err(Error::Interrupted) => return Err(Error::Interrupted),
        Err(e) => {
            say(pb, format!("error: rep {rep} {setup}: latency: {e}"));
            got.error(setup, "latency", Some(rep), None, &e);
        }
    }
    pb.inc(1);
    if steps > 0 {
        throughput(&env, opts, &ctx.queries, (setup, rep), pb, got)?;
    }
    Ok(())
}

/// Runs every setup and returns the results (failures of a setup are inside them).
pub fn run(opts: &Options) -> Result<DnsResults> {
    preflight(opts)?;
    std::fs::create_dir_all(&opts.out).map_err(|source| Error::Io {
        path: opts.out.clone(),
        source,
    })?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let harness_cores: Vec<usize> = (0..cpus).filter(|c| !opts.pod_cores.contains(c)).collect();
    if !harness_cores.is_empty() {
        // Best effort: keep the harness's own wake-ups off the CPU dnsperf and dnsmasq share.
        let _ = sys::pin_self(&harness_cores);
    }
    let prefix = format!("xnh{}-", std::process::id());
    let ctx = dns_env::Context::new(opts, &prefix)?;
    let mut conditions = dns_env::conditions(opts, &ctx, &harness_cores, cpus);
    let total = u64::from(opts.repeat) * opts.setups.len() as u64
        + u64::from(opts.passes) * (opts.setups.len() * opts.rates.len()) as u64;
    let pb = progress(total);
    let mut got = Collected::default();
    let mut result = Ok(());
    'reps: for rep in 1..=opts.repeat {
        for &setup in &opts.setups {
            result = sys::check_interrupted()
                .and_then(|()| visit(opts, &ctx, setup, rep, &pb, &mut got));
            if result.is_err() {
                break 'reps;
            }
        }
    }
    pb.finish_with_message("done");
    // Final sweep: whatever a guard could not remove (it never should be needed).
    for ns in netns::list(&prefix) {
        netns::remove(&ns);
    }
    result?;
    dns_env::record_statuses(&mut conditions, &got.statuses, &got.lab_commands);
    conditions["loadavg_end"] = serde_json::json!(
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .map(|s| s.trim().to_string())
    );
    let (summary, deltas) =
        dns_results::summarize(&opts.setups, &got.latency, &got.steps, opts.repeat);
    Ok(DnsResults {
        conditions,
        latency: got.latency,
        throughput: got.steps,
        summary,
        deltas,
        errors: got.errors,
    })
}

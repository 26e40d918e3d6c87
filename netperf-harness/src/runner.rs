//! The run: preflight, conditions, building paths, the interleaved measurement loop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use xylem_lab::netns;
use xylem_lab::process::{self, ChildGuard};

use crate::error::{Error, Result};
use crate::monitor::{self, Monitor, MonitorCounts};
use crate::netperf::{self, Test};
use crate::results::{self, Cell, Load, PathKind, Placement, Results, Run, RunError};
use crate::sys;
use crate::topology::{self, Endpoints, KernelPath};
use crate::xylem::{Lab, LabConfig};

/// Seconds of the unrecorded TCP_RR warm-up at every visit of a path.
pub const WARMUP_S: u32 = 1;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Paths, in interleaving order.
    pub paths: Vec<PathKind>,
    /// Tests run at every visit of a path.
    pub tests: Vec<Test>,
    /// Worker placements for Xylem paths.
    pub placements: Vec<Placement>,
    /// Pod-core loads.
    pub loads: Vec<Load>,
    /// netperf `-l`, seconds.
    pub duration_s: u32,
    /// Recorded repetitions.
    pub repeat: u32,
    /// Output directory.
    pub out: PathBuf,
    /// The `xylem` binary.
    pub xylem_bin: PathBuf,
    /// Cores for netperf, netserver and the busy spinners.
    pub pod_cores: Vec<usize>,
    /// Cores for Xylem workers in the dedicated placement.
    pub worker_cores: Vec<usize>,
    /// XDP attach mode passed to the lab.
    pub xdp_mode: String,
    /// Worker batch size passed to the lab.
    pub batch_size: u32,
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Records the machine and method.
fn conditions(
    opts: &Options,
    prefix: &str,
    harness_cores: &[usize],
    cpus: usize,
) -> serde_json::Value {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    });
    let hypervisor = std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("flags") && l.contains(" hypervisor"))
        })
        .unwrap_or(false);
    let netperf_version = process::run(&["netperf", "-V"])
        .ok()
        .map(|s| s.trim().to_string());
    let kernel = process::run(&["uname", "-r"])
        .ok()
        .map(|s| s.trim().to_string());
    let date = process::run(&["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .ok()
        .map(|s| s.trim().to_string());
    let pod = sys::cpu_list(&opts.pod_cores);
    let xylem_bin = opts.xylem_bin.display().to_string();
    let example = netperf::netperf_args(
        Test::TcpRr,
        "<server-ip>",
        opts.duration_s,
        u32::try_from(opts.pod_cores[0]).unwrap_or(0),
    );
    json!({
        "date": date,
        "kernel": kernel,
        "cpu_model": cpu_model,
        "cpus": cpus,
        "hypervisor": hypervisor,
        "isolated_cpus": read_trim("/sys/devices/system/cpu/isolated"),
        "clocksource": read_trim("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
        "cpufreq_governor": read_trim("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "netperf_version": netperf_version,
        "pinning": {
            "pod_cores": pod,
            "netperf_cpu": opts.pod_cores[0],
            "netserver_cpu": opts.pod_cores[0],
            "worker_cores_dedicated": sys::cpu_list(&opts.worker_cores),
            "worker_cores_shared": opts.pod_cores[0].to_string(),
            "harness_cores": sys::cpu_list(harness_cores),
            "busy_load": "one `nice -n 19` shell spin loop per pod core, pinned with taskset, killed after the load block",
        },
        "xdp": {
            "mode_requested": opts.xdp_mode,
            "afxdp_bind": "copy (veth has no AF_XDP zero-copy: XDP_ZEROCOPY fails with EOPNOTSUPP)",
            "batch_size": opts.batch_size,
        },
        "busy_poll": {
            "net.core.busy_read": read_trim("/proc/sys/net/core/busy_read"),
            "net.core.busy_poll": read_trim("/proc/sys/net/core/busy_poll"),
            "dedicated_worker": "busy-polls its rings (per the lab's dedicated placement)",
            "shared_worker": "after traffic polls for idle_spin_us (50), yielding the core between polls, then blocks in epoll; after a yield that came back late, blocks at once for 1 s, at SCHED_FIFO priority 1 (workers.realtime: true; normal priority again after 2 ms busy without an empty poll) (per the lab's shared placement)",
        },
        "method": {
            "duration_s": opts.duration_s,
            "repeat": opts.repeat,
            "warmup": format!("{WARMUP_S} s TCP_RR, unrecorded, at every visit of a path"),
            "order": "for each repetition, for each load, visit every path in turn (A B C A B C ...) and run all tests there",
            "tests": opts.tests.iter().map(|t| t.name()).collect::<Vec<_>>(),
            "loads": opts.loads.iter().map(|l| l.name()).collect::<Vec<_>>(),
            "placements": opts.placements.iter().map(|p| p.name()).collect::<Vec<_>>(),
            "paths": opts.paths.iter().map(|p| p.name()).collect::<Vec<_>>(),
            "namespace_prefix": prefix,
            "pod_tx_checksum_offload": "off (ethtool -K eth0 tx off in each pod namespace)",
        },
        "commands": {
            "netperf": format!("ip netns exec <client-pod> taskset -c {pod} {}", process::cmd_line(&example)),
            "netserver": format!("ip netns exec <server-pod> taskset -c {pod} netserver -D -p {}", netperf::NETSERVER_PORT),
            "spinner": format!("taskset -c <pod-core> nice -n 19 sh -c 'while :; do :; done'"),
        },
        "xylem_bin": xylem_bin,
        "monitor": opts.paths.contains(&PathKind::XylemMonitored).then(|| json!({
            "path": "xylem-monitored: the xylem path's lab and policy, plus this client",
            "command": process::cmd_line(&Monitor::args(&xylem_bin, "<lab-api-socket>")),
            "event_types": "all (no --type): a trace event per forwarded frame, policy verdicts, drops",
            "pinning": "none: every CPU, wherever the scheduler puts it, like a user's shell",
            "attach": format!("per test, after the warm-up; netperf starts once it prints `{}` on stderr", monitor::LISTENING),
            "drain": format!("a harness thread (pinned with the harness) counts its stdout lines, reading a {} KiB pipe every {} ms rather than waking per line", monitor::PIPE_BYTES / 1024, monitor::DRAIN_PAUSE.as_millis()),
            "stop": format!("after netperf, once its output has been quiet for {} ms (at most {} s), SIGINT; events = its stdout lines before its final summary line, lost = that line's count", monitor::QUIET.as_millis(), monitor::DRAIN_LIMIT.as_secs()),
        })),
        "notes": [],
        "lab_status": null,
    })
}

/// Busy load: one nice-19 spinner per pod core; dropping it kills them.
#[derive(Debug)]
struct Spinners {
    _children: Vec<ChildGuard>,
}

impl Spinners {
    fn start(cores: &[usize]) -> Result<Spinners> {
        let mut v = Vec::new();
        for c in cores {
            let c = c.to_string();
            v.push(process::spawn(&[
                "taskset",
                "-c",
                &c,
                "nice",
                "-n",
                "19",
                "sh",
                "-c",
                "while :; do :; done",
            ])?);
        }
        Ok(Spinners { _children: v })
    }
}

/// A path configuration visited in the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Config {
    path: PathKind,
    placement: Option<Placement>,
}

/// Runs one netperf test against `ep`; returns the measurement and the exact command line.
fn measure(
    ep: &Endpoints,
    test: Test,
    duration_s: u32,
    pod_cores: &str,
    cpu: usize,
) -> Result<(netperf::Measurement, String)> {
    let np = netperf::netperf_args(
        test,
        &ep.server_ip,
        duration_s,
        u32::try_from(cpu).unwrap_or(0),
    );
    let mut args: Vec<&str> = vec![
        "ip",
        "netns",
        "exec",
        &ep.client_ns,
        "taskset",
        "-c",
        pod_cores,
    ];
    args.extend(np.iter().map(String::as_str));
    let cmd = process::cmd_line(&args);
    let out = process::run_timed(
        &args,
        &[],
        Duration::from_secs(u64::from(duration_s) + 60),
        sys::interrupted,
    )?;
    let text = format!("{}\n{}", out.stdout, out.stderr);
    match netperf::parse(test, &text) {
        Ok(m) if out.success => Ok((m, cmd)),
        Ok(_) => Err(Error::Netperf(format!(
            "exited {}: {}",
            out.status,
            netperf::find_error(&text).unwrap_or_else(|| text.trim().to_string())
        ))),
        Err(e) => Err(e),
    }
}

/// [`measure`] with a `xylem monitor` client attached to the agent at `socket` for the whole
/// test; returns what it carried too.
fn measure_monitored(
    ep: &Endpoints,
    test: Test,
    duration_s: u32,
    pod_cores: &str,
    cpu: usize,
    bin: &Path,
    socket: Option<&Path>,
) -> Result<(netperf::Measurement, String, MonitorCounts)> {
    let socket = socket.ok_or_else(|| {
        Error::Monitor("`xylem lab status -o json` reported no API socket to attach to".into())
    })?;
    let mon = Monitor::attach(bin, socket)?;
    let (m, cmd) = measure(ep, test, duration_s, pod_cores, cpu)?;
    let counts = mon.stop()?;
    Ok((m, cmd, counts))
}

/// Executes the whole plan and returns the results (per-path failures are inside them).
pub fn run(opts: &Options) -> Result<Results> {
    if !process::is_root() {
        return Err(Error::NotRoot);
    }
    for tool in [
        "netperf",
        "netserver",
        "ip",
        "taskset",
        "ethtool",
        "ss",
        "nice",
    ] {
        if process::which(tool).is_none() {
            return Err(Error::MissingTool(tool));
        }
    }
    if opts.pod_cores.is_empty() {
        return Err(Error::Usage("--pod-cores is empty".into()));
    }
    std::fs::create_dir_all(&opts.out).map_err(|source| Error::Io {
        path: opts.out.clone(),
        source,
    })?;
    let prefix = format!("xnh{}-", std::process::id());
    let pod = sys::cpu_list(&opts.pod_cores);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let harness_cores: Vec<usize> = (0..cpus).filter(|c| !opts.pod_cores.contains(c)).collect();
    if !harness_cores.is_empty() {
        // Best effort: keep the harness's own wake-ups off the pod cores.
        let _ = sys::pin_self(&harness_cores);
    }
    // Counted before pinning: available_parallelism() honours the affinity mask.
    let mut conditions = conditions(opts, &prefix, &harness_cores, cpus);
    let mut notes: Vec<String> = Vec::new();

    let result = run_inner(opts, &prefix, &pod, &mut notes, &mut conditions);
    // Final sweep: whatever a guard could not remove (it never should be needed).
    for ns in netns::list(&prefix) {
        netns::remove(&ns);
    }
    let (runs, errors, unavailable, cells) = result?;
    conditions["notes"] = json!(notes);
    let summary = results::summarize(&cells, &runs, &unavailable, &errors);
    Ok(Results {
        conditions,
        runs,
        summary,
        errors,
    })
}

type Inner = (
    Vec<Run>,
    Vec<RunError>,
    BTreeMap<PathKind, String>,
    Vec<Cell>,
);

fn run_inner(
    opts: &Options,
    prefix: &str,
    pod: &str,
    notes: &mut Vec<String>,
    conditions: &mut serde_json::Value,
) -> Result<Inner> {
    let mut runs = Vec::new();
    let mut errors: Vec<RunError> = Vec::new();
    let mut unavailable: BTreeMap<PathKind, String> = BTreeMap::new();

    // Which paths can run here at all.
    for &p in &opts.paths {
        let reason = match p {
            PathKind::XylemEncrypted => {
                Some("unavailable: ESP encryption not implemented yet".to_string())
            }
            PathKind::Ipvlan => topology::probe_ipvlan(prefix),
            PathKind::VethNetfilter if process::which("iptables-restore").is_none() => Some(
                "unavailable: iptables-restore not installed (Debian package `iptables`)"
                    .to_string(),
            ),
            _ => None,
        };
        if let Some(r) = reason {
            eprintln!("{p}: {r}");
            unavailable.insert(p, r);
        }
    }

    let mut configs = Vec::new();
    let mut cells = Vec::new();
    for &p in &opts.paths {
        let placements: Vec<Option<Placement>> = if p.is_xylem() {
            opts.placements.iter().copied().map(Some).collect()
        } else {
            vec![None]
        };
        for placement in placements {
            configs.push(Config { path: p, placement });
        }
    }
    for &load in &opts.loads {
        for c in &configs {
            for &test in &opts.tests {
                cells.push(Cell {
                    path: c.path,
                    placement: c.placement,
                    load,
                    test,
                });
            }
        }
    }

    // Build the kernel paths once; they stay up (idle) for the whole run.
    let mut kernel: BTreeMap<PathKind, KernelPath> = BTreeMap::new();
    let mut failed: BTreeMap<PathKind, String> = BTreeMap::new();
    for &p in &opts.paths {
        sys::check_interrupted()?;
        if p.is_xylem() || unavailable.contains_key(&p) {
            continue;
        }
        match topology::build(p, prefix, pod) {
            Ok(k) => {
                notes.extend(k.notes.iter().cloned());
                kernel.insert(p, k);
            }
            Err(Error::Interrupted) => return Err(Error::Interrupted),
            Err(e) => {
                let msg = e.in_path(p.name()).to_string();
                eprintln!("error: {msg}");
                failed.insert(p, msg);
            }
        }
    }
    let xylem_missing = (!opts.xylem_bin.is_file()).then(|| {
        format!(
            "xylem binary not found at {} (build it with `cargo build --release -p xylem-cli -p xylem-agent` or pass --xylem-bin)",
            opts.xylem_bin.display()
        )
    });
    for c in &configs {
        if let Some(m) = &xylem_missing
            && c.path.is_xylem()
            && !unavailable.contains_key(&c.path)
        {
            failed.insert(
                c.path,
                Error::Lab(m.clone()).in_path(c.path.name()).to_string(),
            );
        }
    }
    for (p, msg) in &failed {
        for c in configs.iter().filter(|c| c.path == *p) {
            for &load in &opts.loads {
                errors.push(RunError {
                    path: *p,
                    placement: c.placement,
                    load,
                    test: None,
                    rep: 0,
                    message: msg.clone(),
                });
            }
        }
    }

    let active: Vec<Config> = configs
        .iter()
        .copied()
        .filter(|c| !unavailable.contains_key(&c.path) && !failed.contains_key(&c.path))
        .collect();
    let total = u64::from(opts.repeat)
        * opts.loads.len() as u64
        * active.len() as u64
        * opts.tests.len() as u64;
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] {pos}/{len} runs, ETA {eta} {msg}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    let cpu = opts.pod_cores[0];
    let lab_dir = opts.out.clone();

    for rep in 1..=opts.repeat {
        for &load in &opts.loads {
            sys::check_interrupted()?;
            let _spinners = match load {
                Load::Busy => Some(Spinners::start(&opts.pod_cores)?),
                Load::Idle => None,
            };
            for c in &active {
                sys::check_interrupted()?;
                let label = match c.placement {
                    Some(p) => format!("{} {} {}", c.path, p.name(), load.name()),
                    None => format!("{} {}", c.path, load.name()),
                };
                pb.set_message(format!("rep {rep}: {label}"));
                if pb.is_hidden() {
                    // No terminal (CI, logs): one line per visit instead of a bar.
                    eprintln!(
                        "[{}/{} runs, {:.0?} elapsed] rep {rep}: {label}",
                        pb.position(),
                        total,
                        pb.elapsed()
                    );
                }
                // Set up the environment for this visit.
                let lab;
                let mut api_socket: Option<PathBuf> = None;
                let ep: &Endpoints = if c.path.is_xylem() {
                    let placement = c.placement.unwrap_or(Placement::Dedicated);
                    let cfg = LabConfig {
                        bin: opts.xylem_bin.clone(),
                        dir: lab_dir.clone(),
                        placement,
                        worker_cores: match placement {
                            Placement::Dedicated => sys::cpu_list(&opts.worker_cores),
                            // The core netperf and netserver run on: one worker.
                            Placement::Shared => opts.pod_cores[0].to_string(),
                        },
                        mode: LabConfig::mode_for(c.path),
                        xdp_mode: opts.xdp_mode.clone(),
                        batch_size: opts.batch_size,
                        lab_name: prefix.trim_end_matches('-').to_string(),
                    };
                    match Lab::up(&cfg, pod) {
                        Ok(l) => {
                            if conditions["lab_status"].is_null() {
                                conditions["lab_status"] = l.status.clone();
                                conditions["commands"]["lab_up_example"] = json!(l.command);
                            }
                            api_socket = l.api_socket.clone();
                            lab = l;
                            &lab.endpoints
                        }
                        Err(Error::Interrupted) => return Err(Error::Interrupted),
                        Err(e) => {
                            let msg = e.in_path(c.path.name()).to_string();
                            pb.println(format!("error: rep {rep} {label}: {msg}"));
                            errors.push(RunError {
                                path: c.path,
                                placement: c.placement,
                                load,
                                test: None,
                                rep,
                                message: msg,
                            });
                            pb.inc(opts.tests.len() as u64);
                            continue;
                        }
                    }
                } else {
                    match kernel.get(&c.path) {
                        Some(k) => &k.endpoints,
                        None => continue,
                    }
                };
                // Warm-up (ARP, caches, the lab's first packets); its result is discarded.
                match measure(ep, Test::TcpRr, WARMUP_S, pod, cpu) {
                    Err(Error::Interrupted) => return Err(Error::Interrupted),
                    Err(e) => {
                        pb.println(format!("warning: rep {rep} {label}: warm-up failed: {e}"))
                    }
                    Ok(_) => {}
                }
                for &test in &opts.tests {
                    sys::check_interrupted()?;
                    let cell = Cell {
                        path: c.path,
                        placement: c.placement,
                        load,
                        test,
                    };
                    let measured = if c.path == PathKind::XylemMonitored {
                        measure_monitored(
                            ep,
                            test,
                            opts.duration_s,
                            pod,
                            cpu,
                            &opts.xylem_bin,
                            api_socket.as_deref(),
                        )
                        .map(|(m, cmd, counts)| Run::new(cell, rep, m, cmd).with_monitor(counts))
                    } else {
                        measure(ep, test, opts.duration_s, pod, cpu)
                            .map(|(m, cmd)| Run::new(cell, rep, m, cmd))
                    };
                    match measured {
                        Ok(run) => runs.push(run),
                        Err(Error::Interrupted) => return Err(Error::Interrupted),
                        Err(e) => {
                            let msg = format!("path `{}`: {test}: {e}", c.path);
                            pb.println(format!("error: rep {rep} {label}: {msg}"));
                            errors.push(RunError {
                                path: c.path,
                                placement: c.placement,
                                load,
                                test: Some(test),
                                rep,
                                message: msg,
                            });
                        }
                    }
                    pb.inc(1);
                }
            }
        }
    }
    pb.finish_with_message("done");
    drop(kernel);
    Ok((runs, errors, unavailable, cells))
}

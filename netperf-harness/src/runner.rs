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
use crate::multinode::{self, KeyFile};
use crate::netperf::{self, Test};
use crate::results::{self, Cell, Load, PathKind, Placement, Results, Run, RunError, Unavailable};
use crate::sys;
use crate::topology::{self, Endpoints, KernelPath};
use crate::xylem::{Lab, LabConfig, Layout};

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
        "multinode": opts.paths.iter().any(|p| p.crosses_nodes()).then(|| two_node_conditions(opts, cpus)),
        "notes": [],
        "lab_status": null,
    })
}

/// The two-node paths' part of the conditions: what they share with the one-node paths (XDP,
/// busy-poll: the sections above apply to them too) is not repeated; their layout, placement
/// and encryption are. What the agents of each lab really ran is added per visited
/// configuration ([`record_two_node_lab`]).
fn two_node_conditions(opts: &Options, cpus: usize) -> serde_json::Value {
    use crate::xylem::{CLIENT_POD, SERVER_POD};
    let dedicated = multinode::dedicated_unavailable(cpus, &opts.pod_cores).unwrap_or_else(|| {
        format!(
            "no --worker-cores: `lab up` (run on CPUs 0-{}) gives node i's agent CPU {cpus}-1-i, one worker busy-polling each: CPUs {}; --worker-cores applies to the one-node paths only",
            cpus.max(1) - 1,
            sys::cpu_list(&multinode::lab_node_cores(cpus))
        )
    });
    json!({
        "paths": {
            "xylem-multinode": "two nodes, the pods one on each, no encryption",
            "xylem-encrypted": "xylem-multinode with ESP between the nodes",
        },
        "crosses_nodes": true,
        "nodes": [multinode::CLIENT_NODE, multinode::SERVER_NODE],
        "pods": {
            "client": format!("{CLIENT_POD} (netperf) on {}", multinode::CLIENT_NODE),
            "server": format!("{SERVER_POD} (netserver) on {}", multinode::SERVER_NODE),
            "pod_cores": sys::cpu_list(&opts.pod_cores),
        },
        "underlay": "each node's namespace has its own agent and an uplink (xyup, XDP and AF_XDP like the pod ports) on the lab's underlay bridge; client pod -> node1's agent -> uplink -> bridge -> node2's uplink -> node2's agent -> server pod",
        "mode_and_policy": format!("full, with the xylem path's policy ({} extra rules) imported into both agents; each peer rule also names the other pod's /32 in the same rule, so the peer is admitted whether the agent knows the other node's pods by labels or only by address", crate::xylem::POLICY_RULES),
        "pinning": {
            "dedicated": dedicated,
            "shared": format!("--worker-cores {}: both agents' one worker on the pods' core (the lab gives every node the same list)", opts.pod_cores[0]),
        },
        "encryption": opts.paths.contains(&PathKind::XylemEncrypted).then(|| json!({
            "path": "xylem-encrypted",
            "protocol": "ESP in tunnel mode between the nodes' underlay addresses",
            "algorithm": multinode::ESP_ALGORITHM,
            "key_file_line": format!("{} rfc4106(gcm(aes)) <40 hex digits: 16-byte AES key + 4-byte salt> 128", multinode::ESP_KEY_ID),
            "key": "random per run (/dev/urandom), written by the harness in a mode-0700 directory of its own under $TMPDIR, file mode 0600, given to the lab as encryption.key_file, removed at the end of the run",
            "pod_mtu": "lowered by the lab for the ESP overhead: see labs.*.status.nodes[].pod_mtu",
        })),
        "checked": "after each lab up, every agent's `status -o json` (and `encrypt status -o json`) must show the requested placement, dedicated workers off the pod cores and each other's, and ESP with the harness's key exactly on xylem-encrypted; else that visit is an error",
        "labs": {},
    })
}

/// After a visit of `xylem-encrypted`: its agents must have sealed packets with ESP, else the
/// visit's runs (from `visit_start` on) are plaintext numbers under the encrypted path's name
/// and are dropped. The first visit's count per placement goes into the conditions.
fn check_sealed(
    lab: &Lab,
    conditions: &mut serde_json::Value,
    placement: Placement,
    runs: &mut Vec<Run>,
    visit_start: usize,
) -> Result<()> {
    let sealed = lab.esp_sealed();
    if !matches!(sealed, Ok(n) if n > 0) {
        runs.truncate(visit_start);
    }
    match sealed? {
        0 => Err(Error::Lab(
            "the agents sealed no packet with ESP during this visit, so its numbers are not ESP's and were dropped: see `xylem encrypt status` (errors, peers) and the agents' logs in a lab of this path".into(),
        )),
        n => {
            let key = format!("{} ({})", PathKind::XylemEncrypted, placement.name());
            let lab = &mut conditions["multinode"]["labs"][key];
            if lab.get("esp_packets_sealed_first_visit").is_none() {
                lab["esp_packets_sealed_first_visit"] = json!(n);
            }
            Ok(())
        }
    }
}

/// Records, once per two-node configuration, the lab's `up` command, its status and what each
/// agent reported running.
fn record_two_node_lab(
    conditions: &mut serde_json::Value,
    path: PathKind,
    placement: Placement,
    lab: &Lab,
) {
    let key = format!("{path} ({})", placement.name());
    let labs = &mut conditions["multinode"]["labs"];
    if labs.get(&key).is_none() {
        labs[key] = json!({
            "lab_up": lab.command,
            "agents": lab.agents,
            "status": lab.status,
        });
    }
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

    let result = run_inner(opts, &prefix, &pod, cpus, &mut notes, &mut conditions);
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

type Inner = (Vec<Run>, Vec<RunError>, Unavailable, Vec<Cell>);

/// The lab for visiting `c`: its layout, its worker cores and placement, and the CPUs
/// `lab up` runs on.
///
/// One node: the dedicated placement gets `--worker-cores` (their own cores), the shared one
/// the pods' first core. Two nodes: the lab gives `--worker-cores` to every node alike, so the
/// shared placement gets the pods' first core for both agents (each shares the pods' core, as
/// the one-node shared agent does), and the dedicated placement gets none, so the lab picks a
/// core per node ([`multinode::lab_node_cores`]), counting the CPUs it may use through its
/// affinity mask: `lab up` runs on every CPU (`cpus`), not the harness's reduced set.
fn lab_config(
    opts: &Options,
    c: Config,
    prefix: &str,
    cpus: usize,
    keys: Option<&KeyFile>,
) -> LabConfig {
    let placement = c.placement.unwrap_or(Placement::Dedicated);
    let shared_core = opts.pod_cores[0].to_string();
    let (layout, worker_cores, lab_cpus) = if c.path.crosses_nodes() {
        let layout = Layout::TwoNodes {
            key_file: keys
                .filter(|_| c.path.encrypted())
                .map(|k| k.path().to_path_buf()),
        };
        match placement {
            Placement::Dedicated => (layout, None, Some(format!("0-{}", cpus.max(1) - 1))),
            Placement::Shared => (layout, Some(shared_core), None),
        }
    } else {
        let cores = match placement {
            Placement::Dedicated => sys::cpu_list(&opts.worker_cores),
            // The core netperf and netserver run on: one worker.
            Placement::Shared => shared_core,
        };
        (Layout::OneNode, Some(cores), None)
    };
    LabConfig {
        bin: opts.xylem_bin.clone(),
        dir: opts.out.clone(),
        placement,
        worker_cores,
        lab_cpus,
        layout,
        mode: LabConfig::mode_for(c.path),
        xdp_mode: opts.xdp_mode.clone(),
        batch_size: opts.batch_size,
        lab_name: prefix.trim_end_matches('-').to_string(),
    }
}

/// Why path configuration `c` cannot run here, if it cannot.
fn unavailable_reason(c: Config, prefix: &str, cpus: usize, pod_cores: &[usize]) -> Option<String> {
    match c.path {
        PathKind::Ipvlan => topology::probe_ipvlan(prefix),
        PathKind::VethNetfilter if process::which("iptables-restore").is_none() => Some(
            "unavailable: iptables-restore not installed (Debian package `iptables`)".to_string(),
        ),
        p if p.crosses_nodes() && c.placement == Some(Placement::Dedicated) => {
            multinode::dedicated_unavailable(cpus, pod_cores)
        }
        _ => None,
    }
}

fn run_inner(
    opts: &Options,
    prefix: &str,
    pod: &str,
    cpus: usize,
    notes: &mut Vec<String>,
    conditions: &mut serde_json::Value,
) -> Result<Inner> {
    let mut runs = Vec::new();
    let mut errors: Vec<RunError> = Vec::new();
    let mut unavailable = Unavailable::new();

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

    // Which path configurations can run here at all.
    for &c in &configs {
        if let Some(r) = unavailable_reason(c, prefix, cpus, &opts.pod_cores) {
            match c.placement {
                Some(pl) => eprintln!("{} ({}): {r}", c.path, pl.name()),
                None => eprintln!("{}: {r}", c.path),
            }
            unavailable.insert((c.path, c.placement), r);
        }
    }
    let is_unavailable = |p: PathKind| {
        configs
            .iter()
            .filter(|c| c.path == p)
            .all(|c| unavailable.contains_key(&(c.path, c.placement)))
    };
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
        if p.is_xylem() || is_unavailable(p) {
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
            && !is_unavailable(c.path)
        {
            failed.insert(
                c.path,
                Error::Lab(m.clone()).in_path(c.path.name()).to_string(),
            );
        }
    }
    // One random key for the whole run, removed with its directory when the run ends (after
    // every lab that used it is down). Without it only the encrypted path fails.
    let wants_keys = configs.iter().any(|c| {
        c.path.encrypted()
            && !unavailable.contains_key(&(c.path, c.placement))
            && !failed.contains_key(&c.path)
    });
    let keys = match wants_keys.then(KeyFile::create).transpose() {
        Ok(k) => k,
        Err(e) => {
            let p = PathKind::XylemEncrypted;
            let msg = format!(
                "path `{p}`: could not write the ESP key file: {e} (set TMPDIR to a writable directory)"
            );
            eprintln!("error: {msg}");
            failed.insert(p, msg);
            None
        }
    };
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
        .filter(|c| {
            !unavailable.contains_key(&(c.path, c.placement)) && !failed.contains_key(&c.path)
        })
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
                let mut lab: Option<Lab> = None;
                let mut api_socket: Option<PathBuf> = None;
                let ep: &Endpoints = if c.path.is_xylem() {
                    let cfg = lab_config(opts, *c, prefix, cpus, keys.as_ref());
                    let up = Lab::up(&cfg, pod).and_then(|l| {
                        if c.path.crosses_nodes() {
                            multinode::check_agents(
                                &l.agents,
                                c.path,
                                cfg.placement,
                                &opts.pod_cores,
                            )?;
                        }
                        Ok(l)
                    });
                    match up {
                        Ok(l) => {
                            if conditions["lab_status"].is_null() && !c.path.crosses_nodes() {
                                conditions["lab_status"] = l.status.clone();
                                conditions["commands"]["lab_up_example"] = json!(l.command);
                            }
                            if c.path.crosses_nodes() {
                                record_two_node_lab(conditions, c.path, cfg.placement, &l);
                            }
                            api_socket = l.api_socket.clone();
                            &lab.insert(l).endpoints
                        }
                        Err(Error::Interrupted) => return Err(Error::Interrupted),
                        Err(e) => {
                            let message = e.in_path(c.path.name()).to_string();
                            report(
                                &pb,
                                &label,
                                &mut errors,
                                RunError {
                                    path: c.path,
                                    placement: c.placement,
                                    load,
                                    test: None,
                                    rep,
                                    message,
                                },
                            );
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
                let visit_start = runs.len();
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
                            let message = format!("path `{}`: {test}: {e}", c.path);
                            report(
                                &pb,
                                &label,
                                &mut errors,
                                RunError {
                                    path: c.path,
                                    placement: c.placement,
                                    load,
                                    test: Some(test),
                                    rep,
                                    message,
                                },
                            );
                        }
                    }
                    pb.inc(1);
                }
                if c.path.encrypted()
                    && let Some(l) = &lab
                {
                    let placement = c.placement.unwrap_or(Placement::Dedicated);
                    if let Err(e) = check_sealed(l, conditions, placement, &mut runs, visit_start) {
                        let message = e.in_path(c.path.name()).to_string();
                        report(
                            &pb,
                            &label,
                            &mut errors,
                            RunError {
                                path: c.path,
                                placement: c.placement,
                                load,
                                test: None,
                                rep,
                                message,
                            },
                        );
                    }
                }
            }
        }
    }
    pb.finish_with_message("done");
    drop(kernel);
    Ok((runs, errors, unavailable, cells))
}

/// Records a failed visit or test, and says so above the progress bar (`label`: the visit's).
fn report(pb: &ProgressBar, label: &str, errors: &mut Vec<RunError>, e: RunError) {
    pb.println(format!("error: rep {} {label}: {}", e.rep, e.message));
    errors.push(e);
}

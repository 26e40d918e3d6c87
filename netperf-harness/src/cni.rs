//! `cni` subcommand: issue 14's figures for `xylem-cni`, as a kubelet sees the plugin.
//!
//! # What it measures
//! - **Set-up** over `--pods` pods started one after another in a lab of its own: for each pod
//!   a network namespace is made (not timed), then `xylem-cni ADD` is timed from `spawn` to
//!   exit (stdin written, stdout read, as a runtime does), and from that same start to the first
//!   ICMP echo reply the new pod receives from the lab's pod: right after ADD exits, the harness
//!   opens a raw ICMP socket in the pod's namespace and sends one echo request every
//!   [`PROBE_INTERVAL`] until a reply arrives. A reply proves the dataplane forwarded the pod's
//!   request to the other pod and that pod's reply back to it (and answered the pod's ARP for
//!   the gateway on the way). The pods stay until all are up; then each is deleted in order
//!   with `xylem-cni DEL`, timed from spawn to exit.
//! - **Baseline** in the same run, interleaved pod by pod: the reference `ptp` plugin with
//!   `host-local`, run in a node namespace of the harness's own (no agent, no dataplane), so
//!   the report carries the ratio of `xylem-cni` ADD to `ptp` ADD.
//! - **Churn**: `--churn` ADD/probe/DEL cycles against the same running agent, with the
//!   agent's memory (VmRSS, threads, open files), its frame ledger (every worker's frames:
//!   total, free, in fill rings), its port list, the node's `xyc…` links and the lease files
//!   read before (after the set-up phase, which serves as warm-up) and after; the run fails
//!   when any of them grew beyond noise.
//! - The plugin binary's size, unstripped and stripped, and its normal dependency tree
//!   (`cargo tree -p xylem-cni -e normal`), checked for XDP, AF_XDP and HTTP-server crates.
//!
//! The plugin runs in the lab node's namespace: the harness `setns`es the child into it before
//! `exec`, as a runtime running on the node would have it, without the `ip netns exec` wrapper
//! (which remounts `/sys` and would add its own milliseconds to every figure).
//!
//! # What it does not do
//! - It touches no host interface, route, `/etc/cni`, `/opt/cni` or `/var/lib/cni`: leases go
//!   to a temporary directory, every namespace is the harness's or the lab's, and everything is
//!   removed by guards on success, failure, panic and SIGINT/SIGTERM.
//! - It asserts no latency target: ADD and first-packet P99 are reported against theirs.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use xylem_lab::netns::{self, Netns};
use xylem_lab::process;

use crate::error::{Error, Result};
use crate::stats::quantile;
use crate::sys;
use crate::xylem::{self, DownGuard};

/// Target for ADD's P99 (issue 14).
pub const ADD_P99_TARGET_MS: f64 = 100.0;
/// Target for the first packet's P99, counted from ADD's start (issue 14).
pub const FIRST_PACKET_P99_TARGET_MS: f64 = 150.0;
/// How often the probe sends an echo request until the first reply.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(1);
/// The CNI network name in both configurations (and the lease directory's name).
const NETWORK: &str = "xnhcni";
/// The baseline's pod subnet: its own, in its own node namespace.
const PTP_SUBNET: &str = "10.201.0.0/16";
/// The lab's one pod, which every new pod pings.
const PEER_POD: &str = "peer";

/// Options of `netperf-harness cni`.
#[derive(Debug, clap::Args)]
pub struct CniArgs {
    /// Pods started one after another in the set-up phase.
    #[arg(long, default_value_t = 100)]
    pub pods: u32,
    /// ADD/DEL cycles in the churn phase (0: skip it).
    #[arg(long, default_value_t = 500)]
    pub churn: u32,
    /// The `xylem-cni` binary [default: `xylem-cni` next to this executable].
    #[arg(long)]
    pub cni_binary: Option<PathBuf>,
    /// The `xylem` binary, which brings the lab up [default: `xylem` next to this executable].
    #[arg(long)]
    pub xylem_bin: Option<PathBuf>,
    /// Where `host-local` and `ptp` are (the runtime's CNI_PATH).
    #[arg(long, default_value = "/usr/lib/cni")]
    pub cni_path: PathBuf,
    /// Worker placement passed to `xylem lab up` (`shared` or `dedicated`) [default: the lab's].
    #[arg(long)]
    pub placement: Option<String>,
    /// XDP attach mode passed to `xylem lab up`.
    #[arg(long, default_value = "auto")]
    pub xdp_mode: String,
    /// Skip the `ptp` baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// How long a new pod may wait for its first reply before the pod counts as failed.
    #[arg(long, default_value_t = 3000)]
    pub probe_timeout_ms: u64,
    /// How much the agent's VmRSS may grow over the churn before the check fails, in MiB.
    #[arg(long, default_value_t = 4)]
    pub rss_slack_mib: u64,
    /// Output directory for results.json, README.md and cni-setup.svg/png.
    #[arg(long, default_value = "cni-results")]
    pub out: PathBuf,
    /// The workspace whose `cargo tree -p xylem-cni` is checked [default: the current
    /// directory's, else the one the plugin binary was built in].
    #[arg(long)]
    pub workspace: Option<PathBuf>,
    /// Markdown file with a hand-written reading of the run, placed near the top of README.md.
    #[arg(long)]
    pub notes: Option<PathBuf>,
    /// What to print on stdout at the end: `text` (a summary) or `json` (results.json).
    #[arg(short = 'o', long, default_value = "text")]
    pub output: String,
}

/// P50, P99 and the range of a set of durations, in milliseconds. P99 interpolates between
/// order statistics (R-7): over 100 values it lies between the 99th and the largest.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Pct {
    /// How many values.
    pub n: usize,
    /// Median.
    pub p50_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// Smallest.
    pub min_ms: Option<f64>,
    /// Largest.
    pub max_ms: Option<f64>,
    /// Mean.
    pub mean_ms: Option<f64>,
}

impl Pct {
    /// The percentiles of the finite values of `ms`.
    pub fn of(ms: impl IntoIterator<Item = f64>) -> Pct {
        let mut v: Vec<f64> = ms.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Pct::default();
        }
        v.sort_by(f64::total_cmp);
        Pct {
            n: v.len(),
            p50_ms: Some(quantile(&v, 0.5)),
            p99_ms: Some(quantile(&v, 0.99)),
            min_ms: Some(v[0]),
            max_ms: Some(v[v.len() - 1]),
            mean_ms: Some(v.iter().sum::<f64>() / v.len() as f64),
        }
    }
}

/// One pod of the set-up phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PodTiming {
    /// Its position in the sequence (0-based).
    pub index: u32,
    /// The address IPAM gave it.
    pub ip: Option<String>,
    /// `xylem-cni ADD`, spawn to exit.
    pub add_ms: Option<f64>,
    /// ADD's start to the first echo reply received in the pod.
    pub first_packet_ms: Option<f64>,
    /// ADD's exit to that reply.
    pub first_packet_after_add_ms: Option<f64>,
    /// Echo requests sent until the reply.
    pub probes: Option<u32>,
    /// `xylem-cni DEL`, spawn to exit.
    pub del_ms: Option<f64>,
    /// The baseline's `ptp` ADD, spawn to exit.
    pub ptp_add_ms: Option<f64>,
    /// The baseline's `ptp` DEL, spawn to exit.
    pub ptp_del_ms: Option<f64>,
}

/// The agent and node at one moment, for the churn's before/after comparison.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    /// After how many churn cycles (`null`: before the set-up phase).
    pub after_cycles: Option<u32>,
    /// The agent's VmRSS, KiB.
    pub rss_kib: u64,
    /// The agent's VmHWM (peak RSS), KiB.
    pub hwm_kib: u64,
    /// The agent's threads.
    pub threads: u64,
    /// The agent's open file descriptors.
    pub fds: usize,
    /// Every worker's frames, as `xylem status` reports them.
    pub frames: Vec<Value>,
    /// The agent's ports (`ifname`s).
    pub ports: Vec<String>,
    /// `xyc…` links in the node's namespace.
    pub xyc_links: usize,
    /// Lease files (one per address) in the host-local data directory.
    pub lease_files: usize,
}

/// One before/after check of the churn.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    /// What is compared.
    pub name: String,
    /// Whether it held.
    pub ok: bool,
    /// Before → after.
    pub detail: String,
}

/// One churn cycle's times, ms: `(cycle, ADD, first packet from ADD's start, DEL)`, `null`
/// where that step failed.
pub type CycleSample = (u32, Option<f64>, Option<f64>, Option<f64>);

/// The churn phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Churn {
    /// Cycles run.
    pub cycles: u32,
    /// Cycles whose ADD, probe or DEL failed.
    pub failures: u32,
    /// What failed in those cycles.
    pub errors: Vec<String>,
    /// Before the set-up phase (fresh agent with the lab's one pod).
    pub start: Option<Snapshot>,
    /// Before the churn (after the set-up phase, the warm-up).
    pub before: Option<Snapshot>,
    /// After the churn.
    pub after: Option<Snapshot>,
    /// VmRSS every few cycles: `(cycle, KiB)`.
    pub rss_series: Vec<(u32, u64)>,
    /// Every cycle's times, ms: `(cycle, ADD, first packet from ADD's start, DEL)`, `null`
    /// where that step failed.
    pub samples: Vec<CycleSample>,
    /// ADD, spawn to exit, over the cycles.
    pub add: Pct,
    /// First reply, from ADD's start.
    pub first_packet: Pct,
    /// DEL, spawn to exit.
    pub del: Pct,
    /// The before/after checks.
    pub checks: Vec<Check>,
}

/// The plugin binary and its dependencies.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BinaryReport {
    /// The binary measured.
    pub path: String,
    /// Its size as built.
    pub bytes: u64,
    /// Its size after `strip`.
    pub stripped_bytes: Option<u64>,
    /// The command run for the dependency tree.
    pub tree_command: Option<String>,
    /// Distinct crates (`name vX.Y.Z`) in the normal dependency tree, the plugin included.
    pub crates: Vec<String>,
    /// Crates of the XDP/AF_XDP or HTTP-server kind found among them (should be empty).
    pub forbidden: Vec<String>,
    /// HTTP crates found (the agent client's), with the features they are built with.
    pub http: Vec<String>,
    /// Xylem's own dataplane crates in the tree (through `xylem-api`), with their features:
    /// which tells whether their XDP loader (`xdp-redirector/loader`, aya) and AF_XDP backend
    /// (`xylem-dataplane/afxdp`, xsk-rs) are built in.
    pub own_dataplane: Vec<String>,
    /// Why the tree could not be read, if it could not.
    pub tree_error: Option<String>,
}

/// Everything `cni` produces; results.json.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CniResults {
    /// What ran where: lab, placement, cores, XDP mode, machine, commands.
    pub conditions: Value,
    /// `xylem-cni` ADD, spawn to exit.
    pub add: Pct,
    /// First echo reply in the new pod, from ADD's start.
    pub first_packet: Pct,
    /// First echo reply, from ADD's exit.
    pub first_packet_after_add: Pct,
    /// `xylem-cni` DEL, spawn to exit.
    pub del: Pct,
    /// `ptp` ADD, spawn to exit.
    pub ptp_add: Pct,
    /// `ptp` DEL, spawn to exit.
    pub ptp_del: Pct,
    /// `xylem-cni` ADD / `ptp` ADD, at P50 and P99.
    pub add_ratio_vs_ptp: Value,
    /// Targets and whether they were met.
    pub targets: Value,
    /// Every pod of the set-up phase.
    pub pods: Vec<PodTiming>,
    /// The churn phase.
    pub churn: Churn,
    /// The plugin binary.
    pub binary: BinaryReport,
    /// Where the set-up phase's ADDs spent their time, from the plugin's own `logFile`: each
    /// step's P50 and P99 in ms, in the order the plugin runs them.
    #[serde(default)]
    pub add_steps: Vec<(String, Pct)>,
    /// What failed (a pod's ADD, a probe, a DEL, ...).
    pub errors: Vec<String>,
}

impl CniResults {
    /// Recomputes the summaries from the per-pod rows.
    pub fn summarize(&mut self) {
        let col = |f: fn(&PodTiming) -> Option<f64>| Pct::of(self.pods.iter().filter_map(f));
        self.add = col(|p| p.add_ms);
        self.first_packet = col(|p| p.first_packet_ms);
        self.first_packet_after_add = col(|p| p.first_packet_after_add_ms);
        self.del = col(|p| p.del_ms);
        self.ptp_add = col(|p| p.ptp_add_ms);
        self.ptp_del = col(|p| p.ptp_del_ms);
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        self.add_ratio_vs_ptp = json!({
            "p50": ratio(self.add.p50_ms, self.ptp_add.p50_ms),
            "p99": ratio(self.add.p99_ms, self.ptp_add.p99_ms),
        });
        let met = |p: Option<f64>, t: f64| p.map(|p| p <= t);
        self.targets = json!({
            "add_p99_ms": ADD_P99_TARGET_MS,
            "add_p99_met": met(self.add.p99_ms, ADD_P99_TARGET_MS),
            "first_packet_p99_ms": FIRST_PACKET_P99_TARGET_MS,
            "first_packet_p99_met": met(self.first_packet.p99_ms, FIRST_PACKET_P99_TARGET_MS),
        });
    }
}

/// Checked options.
#[derive(Debug)]
struct Options {
    pods: u32,
    churn: u32,
    cni_bin: PathBuf,
    xylem_bin: PathBuf,
    cni_path: PathBuf,
    placement: Option<String>,
    xdp_mode: String,
    baseline: bool,
    probe_timeout: Duration,
    rss_slack_kib: u64,
    out: PathBuf,
    workspace: Option<PathBuf>,
    json: bool,
}

fn next_to_self(name: &str) -> PathBuf {
    xylem::default_bin().with_file_name(name)
}

fn options(a: &CniArgs) -> Result<Options> {
    if a.pods == 0 {
        return Err(Error::Usage("--pods must be at least 1".into()));
    }
    if a.pods > 140 {
        return Err(Error::Usage(format!(
            "--pods {}: the pods share one /24 with the lab (addresses .100 to .250 at most); \
             give 140 or fewer",
            a.pods
        )));
    }
    if a.probe_timeout_ms == 0 {
        return Err(Error::Usage("--probe-timeout-ms must be at least 1".into()));
    }
    let json = match a.output.as_str() {
        "json" => true,
        "text" => false,
        o => {
            return Err(Error::Usage(format!(
                "-o/--output: `{o}` is not an output format: give `text` or `json`"
            )));
        }
    };
    if let Some(p) = &a.placement
        && p != "shared"
        && p != "dedicated"
    {
        return Err(Error::Usage(format!(
            "--placement: `{p}` is not a placement: give `shared` or `dedicated`"
        )));
    }
    Ok(Options {
        pods: a.pods,
        churn: a.churn,
        cni_bin: a
            .cni_binary
            .clone()
            .unwrap_or_else(|| next_to_self("xylem-cni")),
        xylem_bin: a.xylem_bin.clone().unwrap_or_else(xylem::default_bin),
        cni_path: a.cni_path.clone(),
        placement: a.placement.clone(),
        xdp_mode: a.xdp_mode.clone(),
        baseline: !a.no_baseline,
        probe_timeout: Duration::from_millis(a.probe_timeout_ms),
        rss_slack_kib: a.rss_slack_mib * 1024,
        out: a.out.clone(),
        workspace: a.workspace.clone(),
        json,
    })
}

fn preflight(o: &Options) -> Result<()> {
    if !process::is_root() {
        return Err(Error::NotRoot);
    }
    let need = |p: &Path, what: &str, fix: &str| {
        if p.is_file() {
            Ok(())
        } else {
            Err(Error::Usage(format!(
                "{what} not found at {}: {fix}",
                p.display()
            )))
        }
    };
    need(
        &o.cni_bin,
        "the xylem-cni binary",
        "build it (cargo build --release -p xylem-cni) or pass --cni-binary",
    )?;
    need(
        &o.xylem_bin,
        "the xylem binary",
        "build it (cargo build --release -p xylem-cli -p xylem-agent) or pass --xylem-bin",
    )?;
    need(
        &o.cni_path.join("host-local"),
        "the host-local IPAM plugin",
        "install the reference CNI plugins (containernetworking-plugins) or pass --cni-path",
    )?;
    if o.baseline {
        need(
            &o.cni_path.join("ptp"),
            "the ptp plugin",
            "install the reference CNI plugins, pass --cni-path, or --no-baseline",
        )?;
    }
    for tool in ["ip", "iptables"] {
        if process::which(tool).is_none() {
            return Err(Error::MissingTool(tool));
        }
    }
    Ok(())
}

/// A directory removed with everything in it when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes every namespace whose name starts with the prefix when dropped: the last sweep,
/// for namespaces whose own guard could not run (a panic between `ip netns add` and the guard).
struct Sweep(String);

impl Drop for Sweep {
    fn drop(&mut self) {
        for ns in netns::list(&self.0) {
            netns::remove(&ns);
        }
    }
}

/// What a plugin run gave.
struct PluginRun {
    elapsed: Duration,
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs a CNI plugin in the namespace `node_ns` (an open `/run/netns/...`), with the CNI
/// variables `env` and the configuration `conf` on stdin, and times it from spawn to exit.
fn run_plugin(bin: &Path, node_ns: &File, env: &[(&str, &str)], conf: &str) -> Result<PluginRun> {
    let fd: RawFd = node_ns.as_raw_fd();
    let mut c = Command::new(bin);
    c.envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec only setns(2) runs, a plain syscall that is
    // async-signal-safe and allocates nothing; `fd` stays open in the parent (borrowed from
    // `node_ns`) until `spawn` returns, and the child inherits it.
    unsafe {
        c.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let cmd = format!("{} ({})", bin.display(), env_line(env));
    let spawn_err = |source| Error::Spawn {
        cmd: cmd.clone(),
        source,
    };
    let start = Instant::now();
    let mut child = c.spawn().map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(conf.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    let elapsed = start.elapsed();
    Ok(PluginRun {
        elapsed,
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

fn env_line(env: &[(&str, &str)]) -> String {
    env.iter()
        .filter(|(k, _)| *k == "CNI_COMMAND" || *k == "CNI_CONTAINERID")
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn open_ns(name: &str) -> Result<File> {
    let path = PathBuf::from(format!("/run/netns/{name}"));
    File::open(&path).map_err(|source| Error::Io { path, source })
}

/// The internet checksum of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo request with `id` and `seq` and a 16-byte payload.
fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![8, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(b"xylem-cni-probe!");
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// Whether `pkt` (an IPv4 packet as a raw socket reads it) is an echo reply from `from` with
/// identifier `id`.
fn is_reply(pkt: &[u8], from: Ipv4Addr, id: u16) -> bool {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 {
        return false;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let Some(icmp) = pkt.get(ihl..) else {
        return false;
    };
    icmp.len() >= 8
        && icmp[0] == 0
        && pkt[12..16] == from.octets()
        && u16::from_be_bytes([icmp[4], icmp[5]]) == id
}

/// A raw ICMP socket in namespace `ns`, made on a thread that enters it (a thread's network
/// namespace is its own; the socket stays in the namespace it was made in).
fn icmp_socket_in(ns: &str) -> Result<OwnedFd> {
    let file = open_ns(ns)?;
    let made = std::thread::scope(|s| {
        s.spawn(|| -> std::io::Result<OwnedFd> {
            // SAFETY: setns(2) on this thread only, with a namespace fd open for the call.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: socket(2) has no memory preconditions; a non-negative result is a new
            // descriptor that nothing else owns.
            let fd = unsafe {
                libc::socket(
                    libc::AF_INET,
                    libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    libc::IPPROTO_ICMP,
                )
            };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .join()
    });
    match made {
        Ok(Ok(fd)) => Ok(fd),
        Ok(Err(source)) => Err(Error::Spawn {
            cmd: format!("raw ICMP socket in netns {ns}"),
            source,
        }),
        Err(_) => Err(Error::Lab(format!(
            "the thread opening a socket in {ns} panicked"
        ))),
    }
}

/// Sends echo requests to `to` from namespace `ns` every [`PROBE_INTERVAL`] until the first
/// reply; returns when it arrived and how many requests were sent, or `None` after `timeout`.
fn first_reply(
    ns: &str,
    to: Ipv4Addr,
    id: u16,
    timeout: Duration,
) -> Result<Option<(Instant, u32)>> {
    let sock = icmp_socket_in(ns)?;
    let fd = sock.as_raw_fd();
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(to.octets()),
        },
        sin_zero: [0; 8],
    };
    let start = Instant::now();
    let mut next = start;
    let mut sent: u32 = 0;
    let mut buf = [0u8; 2048];
    loop {
        let now = Instant::now();
        if now.duration_since(start) > timeout {
            return Ok(None);
        }
        if now >= next {
            let pkt = echo_request(id, sent as u16);
            // SAFETY: `pkt` and `addr` are valid for the lengths given; a failed send (the
            // gateway's address not yet resolved, say) is retried at the next interval.
            unsafe {
                libc::sendto(
                    fd,
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&raw const addr).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                );
            }
            sent += 1;
            next += PROBE_INTERVAL;
        }
        let wait = next.saturating_duration_since(Instant::now());
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: wait.as_nanos().min(999_999_999) as libc::c_long,
        };
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd and a valid timespec, both live for the call.
        let n = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        if n <= 0 {
            continue;
        }
        loop {
            // SAFETY: `buf` is valid for its length; the socket is non-blocking.
            let got = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            let Ok(len) = usize::try_from(got) else { break };
            if is_reply(&buf[..len], to, id) {
                return Ok(Some((Instant::now(), sent)));
            }
        }
    }
}

/// Reads `key:` (KiB or a count) from `/proc/<pid>/status`.
fn proc_status(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The running lab the benchmark uses, and what it needs of its status.
struct LabCtx {
    bin: String,
    name: String,
    node_ns: String,
    api_socket: String,
    agent_pid: u32,
    gateway: Ipv4Addr,
    peer_ip: Ipv4Addr,
    range: (Ipv4Addr, Ipv4Addr),
    status: Value,
    command: String,
}

impl LabCtx {
    fn agent_status(&self) -> Result<Value> {
        let text = xylem::check(
            &[&self.bin, "status", "-o", "json"],
            &self.name,
            Duration::from_secs(30),
        )?;
        serde_json::from_str(&text)
            .map_err(|e| Error::Lab(format!("`xylem status -o json` is not JSON: {e}")))
    }

    fn snapshot(&self, leases: &Path, after_cycles: Option<u32>) -> Result<Snapshot> {
        let st = self.agent_status()?;
        let frames = st["workers"]
            .as_array()
            .map(|w| w.iter().map(|w| w["frames"].clone()).collect())
            .unwrap_or_default();
        let ports = st["ports"]
            .as_array()
            .map(|p| {
                p.iter()
                    .filter_map(|p| p["ifname"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let links = process::run(&["ip", "-n", &self.node_ns, "-o", "link", "show"])?;
        let xyc_links = links
            .lines()
            .filter(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|n| n.trim().starts_with("xyc"))
            })
            .count();
        let pid = self.agent_pid;
        Ok(Snapshot {
            after_cycles,
            rss_kib: proc_status(pid, "VmRSS"),
            hwm_kib: proc_status(pid, "VmHWM"),
            threads: proc_status(pid, "Threads"),
            fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|d| d.count())
                .unwrap_or(0),
            frames,
            ports,
            xyc_links,
            lease_files: lease_files(leases),
        })
    }
}

/// host-local's lease files: one per leased address, named after it.
fn lease_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join(NETWORK))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().parse::<Ipv4Addr>().is_ok())
                .count()
        })
        .unwrap_or(0)
}

/// The range IPAM hands out: `.100` to `.250` of the lab's /24, starting past the lab's own
/// addresses (its pods) where they reach into it: the gateway (`.1`),
/// the host port (`.254`) and the lab's pods stay out of it.
fn pick_range(cidr: &str, reserved: &[Ipv4Addr], pods: u32) -> Result<(Ipv4Addr, Ipv4Addr)> {
    let (net, len) = cidr
        .split_once('/')
        .and_then(|(a, l)| Some((a.parse::<Ipv4Addr>().ok()?, l.parse::<u32>().ok()?)))
        .ok_or_else(|| Error::Lab(format!("the lab's pod CIDR `{cidr}` is not a.b.c.d/n")))?;
    if len > 24 {
        return Err(Error::Lab(format!(
            "the lab's pod CIDR {cidr} is smaller than a /24: no room for the benchmark's pods"
        )));
    }
    let base = u32::from(net);
    let mut start = base + 100;
    let end = base + 250;
    let mut reserved: Vec<u32> = reserved.iter().map(|r| u32::from(*r)).collect();
    reserved.sort_unstable();
    for r in reserved {
        if (start..=end).contains(&r) {
            start = r + 1;
        }
    }
    if end < start || end - start + 1 < pods {
        return Err(Error::Lab(format!(
            "only {} addresses left in {cidr} after the lab's own: give fewer --pods",
            (end + 1).saturating_sub(start)
        )));
    }
    Ok((Ipv4Addr::from(start), Ipv4Addr::from(end)))
}

fn xylem_conf(lab: &LabCtx, leases: &Path, cidr: &str, log: &Path) -> String {
    json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "type": "xylem-cni",
        "agentSocket": lab.api_socket,
        "logFile": log,
        "ipam": {
            "type": "host-local",
            "ranges": [[{
                "subnet": cidr,
                "rangeStart": lab.range.0.to_string(),
                "rangeEnd": lab.range.1.to_string(),
            }]],
            "dataDir": leases,
        },
    })
    .to_string()
}

fn ptp_conf(leases: &Path) -> String {
    json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "type": "ptp",
        "ipMasq": false,
        "ipam": {"type": "host-local", "subnet": PTP_SUBNET, "dataDir": leases},
    })
    .to_string()
}

/// Runs `cmd` of one plugin for container `id` in namespace `pod_ns`.
fn plugin(
    bin: &Path,
    node_ns: &File,
    cni_path: &Path,
    cmd: &str,
    id: &str,
    pod_ns: &str,
    conf: &str,
) -> Result<PluginRun> {
    let netns = format!("/var/run/netns/{pod_ns}");
    let path = cni_path.to_string_lossy();
    run_plugin(
        bin,
        node_ns,
        &[
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", &netns),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", &path),
        ],
        conf,
    )
}

fn failed(what: &str, r: &PluginRun) -> String {
    let msg = if r.stderr.is_empty() {
        r.stdout.trim()
    } else {
        &r.stderr
    };
    format!("{what} failed after {:.1} ms: {msg}", ms(r.elapsed))
}

/// The address of the ADD result's first IP, without its prefix length.
fn result_ip(stdout: &str) -> Option<String> {
    let v: Value = serde_json::from_str(stdout).ok()?;
    let a = v["ips"].get(0)?["address"].as_str()?;
    Some(a.split('/').next().unwrap_or(a).to_string())
}

struct Ctx<'a> {
    o: &'a Options,
    lab: &'a LabCtx,
    node_ns: File,
    xylem_conf: String,
    prefix: String,
}

impl Ctx<'_> {
    /// `xylem-cni ADD` and the first-reply probe for pod `id` in `ns`: (ADD, first reply from
    /// ADD's start, from ADD's exit, probes, ip).
    fn add_and_probe(
        &self,
        id: &str,
        ns: &str,
        icmp_id: u16,
    ) -> Result<(f64, f64, f64, u32, String)> {
        let r = plugin(
            &self.o.cni_bin,
            &self.node_ns,
            &self.o.cni_path,
            "ADD",
            id,
            ns,
            &self.xylem_conf,
        )?;
        let start = Instant::now() - r.elapsed;
        if !r.ok {
            return Err(Error::Lab(failed(&format!("xylem-cni ADD {id}"), &r)));
        }
        let ip = result_ip(&r.stdout).unwrap_or_default();
        let added = Instant::now();
        match first_reply(ns, self.lab.peer_ip, icmp_id, self.o.probe_timeout)? {
            Some((t, probes)) => Ok((ms(r.elapsed), ms(t - start), ms(t - added), probes, ip)),
            None => Err(Error::Lab(format!(
                "pod {id} ({ip}) got no echo reply from {} within {} ms of ADD's exit \
                 (ADD took {:.1} ms)",
                self.lab.peer_ip,
                self.o.probe_timeout.as_millis(),
                ms(r.elapsed)
            ))),
        }
    }

    fn del(&self, id: &str, ns: &str) -> Result<f64> {
        let r = plugin(
            &self.o.cni_bin,
            &self.node_ns,
            &self.o.cni_path,
            "DEL",
            id,
            ns,
            &self.xylem_conf,
        )?;
        if r.ok {
            Ok(ms(r.elapsed))
        } else {
            Err(Error::Lab(failed(&format!("xylem-cni DEL {id}"), &r)))
        }
    }
}

fn progress(total: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {what}, ETA {{eta}} {{msg}}"
    )) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

fn say(pb: &ProgressBar, line: String) {
    if pb.is_hidden() {
        eprintln!("{line}");
    } else {
        pb.println(line);
    }
}

/// The set-up phase: `pods` pods added one after another (each with its `ptp` twin), then
/// deleted in the same order.
fn setup_phase(c: &Ctx, ptp: Option<(&File, &str)>, res: &mut CniResults) -> Result<()> {
    let o = c.o;
    let pb = progress(u64::from(o.pods) * 2, "ADD then DEL");
    pb.set_message("ADD");
    let mut pods: Vec<(PodTiming, Netns, Option<Netns>)> = Vec::new();
    for i in 0..o.pods {
        sys::check_interrupted()?;
        let ns = Netns::create(&format!("{}p{i}", c.prefix))?;
        let mut row = PodTiming {
            index: i,
            ..PodTiming::default()
        };
        match c.add_and_probe(&format!("xnhcni-{i}"), ns.name(), 0x7000 + i as u16) {
            Ok((add, first, after, probes, ip)) => {
                row.add_ms = Some(add);
                row.first_packet_ms = Some(first);
                row.first_packet_after_add_ms = Some(after);
                row.probes = Some(probes);
                row.ip = Some(ip);
            }
            Err(Error::Interrupted) => return Err(Error::Interrupted),
            Err(e) => {
                say(&pb, format!("pod {i}: {e}"));
                res.errors.push(format!("set-up pod {i}: {e}"));
            }
        }
        let bns = match ptp {
            Some((node, conf)) => {
                let bns = Netns::create(&format!("{}b{i}", c.prefix))?;
                let r = plugin(
                    &o.cni_path.join("ptp"),
                    node,
                    &o.cni_path,
                    "ADD",
                    &format!("ptp-{i}"),
                    bns.name(),
                    conf,
                )?;
                if r.ok {
                    row.ptp_add_ms = Some(ms(r.elapsed));
                } else {
                    res.errors.push(failed(&format!("ptp ADD {i}"), &r));
                }
                Some(bns)
            }
            None => None,
        };
        pods.push((row, ns, bns));
        pb.inc(1);
    }
    pb.set_message("DEL");
    for (mut row, ns, bns) in pods {
        sys::check_interrupted()?;
        let i = row.index;
        match c.del(&format!("xnhcni-{i}"), ns.name()) {
            Ok(d) => row.del_ms = Some(d),
            Err(e) => res.errors.push(format!("set-up pod {i} DEL: {e}")),
        }
        if let (Some((node, conf)), Some(bns)) = (ptp, &bns) {
            let r = plugin(
                &o.cni_path.join("ptp"),
                node,
                &o.cni_path,
                "DEL",
                &format!("ptp-{i}"),
                bns.name(),
                conf,
            )?;
            if r.ok {
                row.ptp_del_ms = Some(ms(r.elapsed));
            } else {
                res.errors.push(failed(&format!("ptp DEL {i}"), &r));
            }
        }
        drop((ns, bns));
        res.pods.push(row);
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(())
}

/// The churn phase: `churn` ADD/probe/DEL cycles, with snapshots around it.
fn churn_phase(c: &Ctx, leases: &Path, churn: &mut Churn) -> Result<()> {
    let o = c.o;
    let pb = progress(u64::from(o.churn), "ADD/DEL cycles");
    churn.before = Some(c.lab.snapshot(leases, Some(0))?);
    let every = (o.churn / 20).max(1);
    let (mut adds, mut firsts, mut dels) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..o.churn {
        sys::check_interrupted()?;
        let ns = Netns::create(&format!("{}c", c.prefix))?;
        let id = format!("xnhcni-churn-{k}");
        let mut ok = true;
        let mut sample = (k, None, None, None);
        match c.add_and_probe(&id, ns.name(), 0x5000 + (k % 4096) as u16) {
            Ok((add, first, _, _, _)) => {
                adds.push(add);
                firsts.push(first);
                sample.1 = Some(add);
                sample.2 = Some(first);
            }
            Err(Error::Interrupted) => return Err(Error::Interrupted),
            Err(e) => {
                ok = false;
                say(&pb, format!("cycle {k}: {e}"));
                churn.errors.push(format!("cycle {k} ADD: {e}"));
            }
        }
        match c.del(&id, ns.name()) {
            Ok(d) => {
                dels.push(d);
                sample.3 = Some(d);
            }
            Err(e) => {
                ok = false;
                say(&pb, format!("cycle {k} DEL: {e}"));
                churn.errors.push(format!("cycle {k} DEL: {e}"));
            }
        }
        drop(ns);
        churn.samples.push(sample);
        if !ok {
            churn.failures += 1;
        }
        churn.cycles = k + 1;
        if (k + 1) % every == 0 {
            churn
                .rss_series
                .push((k + 1, proc_status(c.lab.agent_pid, "VmRSS")));
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    // The workers publish their frame counts at the end of a batch: give the last DEL's
    // frames a moment to come home before reading them.
    std::thread::sleep(Duration::from_millis(500));
    churn.after = Some(c.lab.snapshot(leases, Some(churn.cycles))?);
    churn.add = Pct::of(adds);
    churn.first_packet = Pct::of(firsts);
    churn.del = Pct::of(dels);
    if let (Some(b), Some(a)) = (&churn.before, &churn.after) {
        churn.checks = compare(b, a, o.rss_slack_kib);
    }
    churn.checks.push(Check {
        name: "cycles without a failure".into(),
        ok: churn.failures == 0,
        detail: format!("{} of {} cycles failed", churn.failures, churn.cycles),
    });
    Ok(())
}

/// The before/after checks of the churn.
pub fn compare(b: &Snapshot, a: &Snapshot, rss_slack_kib: u64) -> Vec<Check> {
    let frames = |s: &Snapshot, k: &str| -> Vec<u64> {
        s.frames
            .iter()
            .map(|f| f[k].as_u64().unwrap_or(0))
            .collect()
    };
    let mut v = vec![Check {
        name: format!("agent VmRSS grows by at most {} KiB", rss_slack_kib),
        ok: a.rss_kib <= b.rss_kib + rss_slack_kib,
        detail: format!(
            "{} → {} KiB ({:+} KiB)",
            b.rss_kib,
            a.rss_kib,
            a.rss_kib as i64 - b.rss_kib as i64
        ),
    }];
    for key in ["total", "free", "fill"] {
        let (x, y) = (frames(b, key), frames(a, key));
        v.push(Check {
            name: format!("worker frames {key} unchanged"),
            ok: x == y,
            detail: format!("{x:?} → {y:?}"),
        });
    }
    let same = |name: &str, x: usize, y: usize| Check {
        name: name.into(),
        ok: x == y,
        detail: format!("{x} → {y}"),
    };
    v.push(Check {
        name: "agent ports unchanged".into(),
        ok: a.ports == b.ports,
        detail: format!("{:?} → {:?}", b.ports, a.ports),
    });
    v.push(same("agent open files unchanged", b.fds, a.fds));
    v.push(same(
        "agent threads unchanged",
        b.threads as usize,
        a.threads as usize,
    ));
    v.push(Check {
        name: "no xyc links left in the node".into(),
        ok: a.xyc_links == 0,
        detail: format!("{} → {}", b.xyc_links, a.xyc_links),
    });
    v.push(Check {
        name: "no lease files left".into(),
        ok: a.lease_files == 0,
        detail: format!("{} → {}", b.lease_files, a.lease_files),
    });
    v
}

/// The lab file: only [`PEER_POD`], which every new pod pings. The agent gets room for the
/// benchmark's pods with `lab up --spare-ports`, so its workers' UMEMs are sized as those of a
/// node configured for that many pods.
fn lab_file() -> String {
    format!(
        "# Written by netperf-harness cni: the pod every new pod pings.\n\
         pods:\n  - name: {PEER_POD}\n"
    )
}

/// Brings the lab up with room for `pods` pods beyond the peer, and reads its status.
fn lab_up(o: &Options, dir: &Path, name: &str, pods: u32) -> Result<LabCtx> {
    let yaml = dir.join("lab.yaml");
    std::fs::write(&yaml, lab_file()).map_err(|source| Error::Io {
        path: yaml.clone(),
        source,
    })?;
    let bin = o.xylem_bin.to_string_lossy().into_owned();
    let yaml_s = yaml.to_string_lossy().into_owned();
    let spare = pods.to_string();
    let mut up = vec![
        bin.as_str(),
        "lab",
        "up",
        "-f",
        &yaml_s,
        "--spare-ports",
        &spare,
    ];
    if let Some(p) = &o.placement {
        up.extend(["--placement", p.as_str()]);
    }
    up.extend(["--xdp-mode", o.xdp_mode.as_str()]);
    xylem::check(&up, name, Duration::from_secs(600))?;
    let read_status = || -> Result<Value> {
        let text = xylem::check(
            &[&bin, "lab", "status", "-o", "json"],
            name,
            Duration::from_secs(30),
        )?;
        serde_json::from_str(&text)
            .map_err(|e| Error::Lab(format!("`lab status -o json` is not JSON: {e}")))
    };
    let status = read_status()?;
    let node = &status["nodes"][0];
    let field = |k: &str| {
        node[k]
            .as_str()
            .map(String::from)
            .ok_or_else(|| Error::Lab(format!("`lab status` has no nodes[0].{k}")))
    };
    let addr = |s: String, k: &str| {
        s.split('/')
            .next()
            .unwrap_or_default()
            .parse::<Ipv4Addr>()
            .map_err(|_| Error::Lab(format!("`lab status` nodes[0].{k} `{s}` is no address")))
    };
    let gateway = addr(field("gateway")?, "gateway")?;
    let host_ip = addr(field("host_ip")?, "host_ip")?;
    let pod_ips: Vec<Ipv4Addr> = status["pods"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter_map(|p| p["ip"].as_str()?.split('/').next()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let peer_ip = status["pods"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == PEER_POD))
        .and_then(|p| p["ip"].as_str()?.split('/').next()?.parse().ok())
        .ok_or_else(|| Error::Lab(format!("pod `{PEER_POD}` missing from `lab status`")))?;
    let mut reserved = pod_ips;
    reserved.extend([gateway, host_ip]);
    let cidr = field("pod_cidr")?;
    Ok(LabCtx {
        name: name.to_string(),
        node_ns: field("netns")?,
        api_socket: field("api_socket")?,
        agent_pid: node["agent_pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| Error::Lab("`lab status` has no nodes[0].agent_pid".into()))?,
        gateway,
        peer_ip,
        range: pick_range(&cidr, &reserved, pods)?,
        command: format!("XYLEM_LAB={name} {}", process::cmd_line(&up)),
        bin,
        status,
    })
}

fn text_of(args: &[&str]) -> Option<String> {
    process::run(args).ok().map(|s| s.trim().to_string())
}

/// Placement, cores, XDP mode, busy-poll settings and the machine, for results.json.
fn conditions(o: &Options, lab: &LabCtx, agent: &Value, cidr: &str) -> Value {
    let cfg_path = lab.status["nodes"][0]["agent_config"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let cfg = std::fs::read_to_string(&cfg_path).unwrap_or_default();
    let setting = |k: &str| {
        cfg.lines()
            .find_map(|l| l.trim().strip_prefix(k)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    };
    let xdp: BTreeSet<String> = agent["ports"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter_map(|p| p["xdp_mode"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let cores: Vec<Value> = agent["workers"]
        .as_array()
        .map(|w| w.iter().map(|w| w["core"].clone()).collect())
        .unwrap_or_default();
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split(':')
                .nth(1)
                .map(|s| s.trim().to_string())
        });
    json!({
        "date": text_of(&["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "kernel": text_of(&["uname", "-r"]),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu_model": cpu_model,
        "loadavg_at_start": std::fs::read_to_string("/proc/loadavg").ok().map(|s| s.trim().to_string()),
        "harness_affinity": text_of(&["taskset", "-cp", &std::process::id().to_string()]),
        "agent_affinity": text_of(&["taskset", "-cp", &lab.agent_pid.to_string()]),
        "lab": lab.name,
        "lab_up": lab.command,
        "lab_status": lab.status,
        "placement": agent["placement"],
        "worker_cores": cores,
        "mode": agent["mode"],
        "batch_size": agent["batch_size"],
        "xdp_mode_requested": o.xdp_mode,
        "xdp_modes_attached": xdp,
        "idle_spin_us": setting("idle_spin_us"),
        "realtime": setting("realtime"),
        "ring_size": setting("ring_size"),
        "busy_poll": "the workers poll their rings from user space: `dedicated` spins for ever, \
                      `shared` spins for idle_spin_us after traffic and then sleeps until woken; \
                      no SO_BUSY_POLL",
        "cni_binary": o.cni_bin,
        "cni_path": o.cni_path,
        "pod_cidr": cidr,
        "ipam_range": [lab.range.0.to_string(), lab.range.1.to_string()],
        "probe": format!(
            "raw ICMP echo from the new pod to the lab pod `{PEER_POD}` ({}) every {} µs until \
             the first reply; first_packet_ms counts from ADD's spawn to that reply",
            lab.peer_ip,
            PROBE_INTERVAL.as_micros()
        ),
        "plugin_launch": "spawned by the harness with setns(2) into the lab node's namespace \
                          (no `ip netns exec`), stdin piped, timed from spawn to exit",
        "ptp_baseline": if o.baseline {
            json!({"subnet": PTP_SUBNET, "node_namespace": "the harness's own, no agent", "ipMasq": false})
        } else {
            Value::Null
        },
        "pods": o.pods,
        "spare_ports": format!(
            "`lab up --spare-ports {}`: each worker's UMEM has one ring of frames per pod room, \
             as on a node configured for that many pods",
            o.pods
        ),
        "churn_cycles": o.churn,
        "gateway": lab.gateway.to_string(),
    })
}

/// Crate names that must not be in the plugin: XDP loaders, AF_XDP and HTTP servers.
const FORBIDDEN: &[&str] = &[
    "aya",
    "aya-obj",
    "aya-log",
    "xsk-rs",
    "libxdp-sys",
    "libbpf-sys",
    "libbpf-rs",
    "axum",
    "axum-core",
    "actix-web",
    "warp",
    "tower-http",
    "xylem-agent",
];

/// The workspace root: `--workspace`, else the nearest ancestor of the current directory whose
/// Cargo.toml has `[workspace]`, else that of the plugin binary (target/<profile>/xylem-cni).
fn workspace_root(o: &Options) -> Option<PathBuf> {
    if let Some(w) = &o.workspace {
        return Some(w.clone());
    }
    let is_ws = |d: &Path| {
        std::fs::read_to_string(d.join("Cargo.toml")).is_ok_and(|t| t.contains("[workspace]"))
    };
    let from = |start: PathBuf| start.ancestors().find(|d| is_ws(d)).map(Path::to_path_buf);
    std::env::current_dir()
        .ok()
        .and_then(from)
        .or_else(|| std::fs::canonicalize(&o.cni_bin).ok().and_then(from))
}

/// Crates (`name vX`) in `cargo tree --prefix none` output.
pub fn tree_crates(text: &str) -> Vec<String> {
    let set: BTreeSet<String> = text
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (name, ver) = (w.next()?, w.next()?);
            ver.starts_with('v').then(|| format!("{name} {ver}"))
        })
        .collect();
    set.into_iter().collect()
}

fn binary_report(o: &Options, tmp: &Path) -> BinaryReport {
    let mut r = BinaryReport {
        path: o.cni_bin.display().to_string(),
        bytes: std::fs::metadata(&o.cni_bin).map(|m| m.len()).unwrap_or(0),
        ..BinaryReport::default()
    };
    let stripped = tmp.join("xylem-cni.stripped");
    let (b, s) = (o.cni_bin.to_string_lossy(), stripped.to_string_lossy());
    if process::run(&["strip", "-o", &s, &b]).is_ok() {
        r.stripped_bytes = std::fs::metadata(&stripped).map(|m| m.len()).ok();
    }
    let Some(ws) = workspace_root(o) else {
        r.tree_error = Some("no Cargo workspace found: pass --workspace".into());
        return r;
    };
    let manifest = ws.join("Cargo.toml").to_string_lossy().into_owned();
    let tree = [
        "cargo",
        "tree",
        "--manifest-path",
        &manifest,
        "-p",
        "xylem-cni",
        "-e",
        "normal",
        "--prefix",
        "none",
    ];
    r.tree_command = Some(process::cmd_line(&tree));
    match process::run_timed(&tree, &[], Duration::from_secs(300), sys::interrupted) {
        Ok(out) if out.success => {
            r.crates = tree_crates(&out.stdout);
            r.forbidden = r
                .crates
                .iter()
                .filter(|c| {
                    let name = c.split(' ').next().unwrap_or_default();
                    FORBIDDEN.contains(&name)
                })
                .cloned()
                .collect();
        }
        Ok(out) => r.tree_error = Some(out.stderr.trim().to_string()),
        Err(e) => r.tree_error = Some(Error::from(e).to_string()),
    }
    let has = |name: &str| r.crates.iter().any(|c| c.split(' ').next() == Some(name));
    let with_features = |name: &str| {
        let f = crate_features(&manifest, name);
        let f: Vec<String> = f.into_iter().collect();
        if f.is_empty() {
            format!("{name} (no features)")
        } else {
            format!("{name} (features: {})", f.join(", "))
        }
    };
    let mut http = Vec::new();
    for name in ["hyper", "hyper-util", "h2", "http", "tower"] {
        if has(name) {
            if matches!(name, "hyper" | "hyper-util")
                && crate_features(&manifest, name).contains("server")
            {
                r.forbidden
                    .push(format!("{name} with its `server` feature"));
            }
            http.push(with_features(name));
        }
    }
    r.http = http;
    r.own_dataplane = ["xylem-dataplane", "xdp-redirector"]
        .into_iter()
        .filter(|n| has(n))
        .map(with_features)
        .collect();
    r
}

/// The features `name` is built with for `xylem-cni` (`cargo tree -e features -i NAME`).
fn crate_features(manifest: &str, name: &str) -> BTreeSet<String> {
    let args = [
        "cargo",
        "tree",
        "--manifest-path",
        manifest,
        "-p",
        "xylem-cni",
        "-e",
        "features",
        "-i",
        name,
        "--prefix",
        "none",
    ];
    process::run_timed(&args, &[], Duration::from_secs(120), sys::interrupted)
        .map(|o| o.stdout)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix(name)?.strip_prefix(" feature \"")?;
            Some(rest.split('"').next()?.to_string())
        })
        .collect()
}

/// Runs the benchmark.
pub fn run(a: &CniArgs) -> Result<CniResults> {
    let o = options(a)?;
    preflight(&o)?;
    let notes = crate::read_notes(a.notes.as_deref())?;
    let pid = std::process::id();
    let lab_name = format!("xnhcni{pid}");
    let prefix = format!("xnhc{pid}-");
    let dir = PathBuf::from(format!("/tmp/xnhcni-{pid}"));
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        path: dir.clone(),
        source,
    })?;
    // Dropped in reverse: the pods' namespaces (owned by the phases) and the ptp node first,
    // then the sweep of the prefix, then the lab, then the directory with the leases.
    let _tmp = TempDir(dir.clone());
    let _down = DownGuard::new(&o.xylem_bin, &lab_name);
    let _sweep = Sweep(prefix.clone());
    let mut res = CniResults::default();
    eprintln!("binary size and dependency tree of {}", o.cni_bin.display());
    res.binary = binary_report(&o, &dir);
    sys::check_interrupted()?;
    eprintln!("bringing lab {lab_name} up");
    let lab = lab_up(&o, &dir, &lab_name, o.pods)?;
    let cidr = lab.status["nodes"][0]["pod_cidr"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let leases = dir.join("leases");
    let agent = lab.agent_status()?;
    res.conditions = conditions(&o, &lab, &agent, &cidr);
    let ctx = Ctx {
        o: &o,
        lab: &lab,
        node_ns: open_ns(&lab.node_ns)?,
        xylem_conf: xylem_conf(&lab, &leases, &cidr, &dir.join("xylem-cni.log")),
        prefix: prefix.clone(),
    };
    res.churn.start = Some(lab.snapshot(&leases, None)?);
    let ptp_node = if o.baseline {
        Some(Netns::create(&format!("{prefix}bnode"))?)
    } else {
        None
    };
    let ptp_node_file = ptp_node.as_ref().map(|n| open_ns(n.name())).transpose()?;
    let ptp = ptp_conf(&dir.join("ptp-leases"));
    eprintln!(
        "set-up: {} pods, ADD + first reply{}, then DEL",
        o.pods,
        if o.baseline { " (and ptp ADD)" } else { "" }
    );
    setup_phase(
        &ctx,
        ptp_node_file.as_ref().map(|f| (f, ptp.as_str())),
        &mut res,
    )?;
    res.summarize();
    res.add_steps = add_steps(&dir.join("xylem-cni.log"), o.pods as usize);
    if o.churn > 0 {
        eprintln!("churn: {} ADD/DEL cycles", o.churn);
        churn_phase(&ctx, &leases, &mut res.churn)?;
    }
    if let Value::Object(m) = &mut res.conditions {
        m.insert(
            "loadavg_at_end".into(),
            json!(
                std::fs::read_to_string("/proc/loadavg")
                    .ok()
                    .map(|s| s.trim().to_string())
            ),
        );
    }
    write_outputs(&res, &o.out, notes.as_deref())?;
    if o.json {
        println!("{}", serde_json::to_string_pretty(&res)?);
    } else {
        print!("{}", summary_text(&res));
    }
    eprintln!(
        "wrote {}/results.json, README.md, cni-setup.svg, cni-setup.png",
        o.out.display()
    );
    let failed: Vec<String> = res
        .churn
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .chain(
            res.binary
                .forbidden
                .iter()
                .map(|c| format!("forbidden crate {c}")),
        )
        .collect();
    if failed.is_empty() {
        Ok(res)
    } else {
        Err(Error::Command {
            cmd: "netperf-harness cni".into(),
            status: "checks failed".into(),
            stderr: failed.join("; "),
        })
    }
}

/// The steps of the first `n` ADDs in the plugin's log (the set-up phase's), each step's
/// percentiles, in the order the plugin logged them.
fn add_steps(log: &Path, n: usize) -> Vec<(String, Pct)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let adds: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["command"] == "ADD" && v["code"].is_null())
        .take(n)
        .collect();
    // Each line's `steps_ms` is a list of [name, ms] in the order the plugin ran them.
    let steps = |a: &Value| -> Vec<(String, f64)> {
        (a["steps_ms"].as_array().into_iter().flatten())
            .filter_map(|p| Some((p[0].as_str()?.to_string(), p[1].as_f64()?)))
            .collect()
    };
    let mut names: Vec<String> = Vec::new();
    for a in &adds {
        for (k, _) in steps(a) {
            if !names.contains(&k) {
                names.push(k);
            }
        }
    }
    names
        .into_iter()
        .map(|k| {
            let pct = Pct::of(
                adds.iter()
                    .filter_map(|a| steps(a).into_iter().find(|(n, _)| *n == k).map(|(_, v)| v)),
            );
            (k, pct)
        })
        .collect()
}

fn f(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.1}"))
}

fn row(name: &str, p: &Pct) -> String {
    format!(
        "| {name} | {} | {} | {} | {} | {} |\n",
        p.n,
        f(p.p50_ms),
        f(p.p99_ms),
        f(p.max_ms),
        f(p.min_ms)
    )
}

fn summary_text(r: &CniResults) -> String {
    let mut s = String::from(
        "| what | n | P50 ms | P99 ms | max ms | min ms |\n|---|---|---|---|---|---|\n",
    );
    s += &row("xylem-cni ADD", &r.add);
    s += &row("first packet (from ADD start)", &r.first_packet);
    s += &row("first packet (from ADD exit)", &r.first_packet_after_add);
    s += &row("xylem-cni DEL", &r.del);
    s += &row("ptp ADD", &r.ptp_add);
    s += &row("ptp DEL", &r.ptp_del);
    for (step, p) in &r.add_steps {
        s += &row(&format!("ADD step: {step}"), p);
    }
    s += &format!(
        "\nADD ratio xylem-cni / ptp: P50 {} , P99 {}\n",
        r.add_ratio_vs_ptp["p50"]
            .as_f64()
            .map_or("–".into(), |v| format!("{v:.2}×")),
        r.add_ratio_vs_ptp["p99"]
            .as_f64()
            .map_or("–".into(), |v| format!("{v:.2}×")),
    );
    for c in &r.churn.checks {
        s += &format!(
            "churn: [{}] {}: {}\n",
            if c.ok { "ok" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    s
}

fn kib(v: u64) -> String {
    format!("{:.1} MiB", v as f64 / 1024.0)
}

/// README.md for docs/benchmarks/issue-14: numbers, conditions, ratios.
pub fn render(r: &CniResults, notes: Option<&str>) -> String {
    let c = &r.conditions;
    let t = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "–".into(),
        v => v.to_string(),
    };
    let mut s = String::from("# Issue 14: `xylem-cni` set-up time, churn and size\n\n");
    s += "Written by `netperf-harness cni`; every number is in `results.json`.\n\n";
    if let Some(n) = notes {
        s += n.trim();
        s += "\n\n";
    }
    s += "## Set-up time (as a kubelet sees it)\n\n";
    s += &format!(
        "{} pods started one after another, then deleted one after another. Targets: ADD P99 ≤ \
         {ADD_P99_TARGET_MS:.0} ms ({}), first packet P99 ≤ {FIRST_PACKET_P99_TARGET_MS:.0} ms ({}).\n\n",
        r.pods.len(),
        met(&r.targets["add_p99_met"]),
        met(&r.targets["first_packet_p99_met"]),
    );
    s += summary_text(r)
        .split("\nADD ratio")
        .next()
        .unwrap_or_default();
    s += &format!(
        "\n\n`xylem-cni` ADD / `ptp` ADD: **{}** at P50, **{}** at P99.\n\n",
        r.add_ratio_vs_ptp["p50"]
            .as_f64()
            .map_or("–".into(), |v| format!("{v:.2}×")),
        r.add_ratio_vs_ptp["p99"]
            .as_f64()
            .map_or("–".into(), |v| format!("{v:.2}×")),
    );
    s += "- **ADD / DEL**: the plugin's process from spawn to exit (configuration written to its \
          stdin, result read from its stdout), run in the lab node's namespace.\n";
    s += &format!("- **First packet**: {}.\n", t(&c["probe"]));
    s += "- **ADD step** rows: the same ADDs as the plugin itself timed them (its `logFile`), \
          step by step in the order it runs them; the steps add up to a little less than ADD \
          (the process's start and exit are outside them).\n";
    s += "- **ptp**: the reference `ptp` plugin with `host-local`, in a node namespace of the \
          harness's own (no agent), interleaved pod by pod with `xylem-cni` in the same run.\n";
    s += "- P99 interpolates between order statistics: over 100 pods it lies between the 99th \
          value and the largest.\n\n";
    s += "![ADD, first packet and DEL latency](cni-setup.svg)\n\n";
    s += "## Churn\n\n";
    let ch = &r.churn;
    s += &format!(
        "{} ADD/probe/DEL cycles in the running agent ({} failed); before = after the set-up \
         phase (the warm-up), after = at the end.\n\n",
        ch.cycles, ch.failures
    );
    s += "| | start (fresh agent) | before churn | after churn |\n|---|---|---|---|\n";
    let snaps = [&ch.start, &ch.before, &ch.after];
    let cell = |g: &dyn Fn(&Snapshot) -> String| {
        snaps
            .iter()
            .map(|x| x.as_ref().map_or("–".into(), g))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    s += &format!("| agent VmRSS | {} |\n", cell(&|x| kib(x.rss_kib)));
    s += &format!("| agent VmHWM | {} |\n", cell(&|x| kib(x.hwm_kib)));
    s += &format!(
        "| agent threads / open files | {} |\n",
        cell(&|x| format!("{} / {}", x.threads, x.fds))
    );
    s += &format!(
        "| frames (total/free/fill per worker) | {} |\n",
        cell(&|x| x
            .frames
            .iter()
            .map(|f| format!("{}/{}/{}", f["total"], f["free"], f["fill"]))
            .collect::<Vec<_>>()
            .join(", "))
    );
    s += &format!("| ports | {} |\n", cell(&|x| x.ports.join(" ")));
    s += &format!(
        "| xyc links / lease files | {} |\n\n",
        cell(&|x| format!("{} / {}", x.xyc_links, x.lease_files))
    );
    for e in &ch.errors {
        s += &format!("- failed: {e}\n");
    }
    if !ch.errors.is_empty() {
        s += "\n";
    }
    for k in &ch.checks {
        s += &format!(
            "- [{}] {}: {}\n",
            if k.ok { "x" } else { " " },
            k.name,
            k.detail
        );
    }
    s += &format!(
        "\nDuring the churn: ADD P50 {} / P99 {} ms, first packet P50 {} / P99 {} ms, DEL P50 {} / P99 {} ms.\n\n",
        f(ch.add.p50_ms),
        f(ch.add.p99_ms),
        f(ch.first_packet.p50_ms),
        f(ch.first_packet.p99_ms),
        f(ch.del.p50_ms),
        f(ch.del.p99_ms)
    );
    s += "## The plugin binary\n\n";
    let b = &r.binary;
    s += &format!(
        "- `{}`: {} bytes ({:.2} MiB) as built, {} stripped.\n",
        b.path,
        b.bytes,
        b.bytes as f64 / 1048576.0,
        b.stripped_bytes.map_or("–".into(), |v| format!(
            "{v} bytes ({:.2} MiB)",
            v as f64 / 1048576.0
        ))
    );
    match &b.tree_error {
        Some(e) => s += &format!("- Dependency tree not read: {e}\n"),
        None => {
            s += &format!(
                "- `{}`: {} distinct crates (the plugin included).\n",
                b.tree_command.clone().unwrap_or_default(),
                b.crates.len()
            );
            s += &format!(
                "- XDP, AF_XDP and HTTP-server crates ({}): {}.\n",
                FORBIDDEN.join(", "),
                if b.forbidden.is_empty() {
                    "none".into()
                } else {
                    b.forbidden.join(", ")
                }
            );
            s += &format!(
                "- HTTP crates present (the agent API client's, over the unix socket): {}.\n",
                if b.http.is_empty() {
                    "none".into()
                } else {
                    b.http.join("; ")
                }
            );
            s += &format!(
                "- Xylem's own dataplane crates in the tree (through `xylem-api`): {}.\n",
                if b.own_dataplane.is_empty() {
                    "none".into()
                } else {
                    b.own_dataplane.join("; ")
                }
            );
        }
    }
    s += "\n## Conditions\n\n";
    for (k, label) in [
        ("date", "date"),
        ("kernel", "kernel"),
        ("cpus", "CPUs"),
        ("cpu_model", "CPU"),
        ("loadavg_at_start", "load average at start"),
        ("loadavg_at_end", "load average at end"),
        ("placement", "worker placement"),
        ("worker_cores", "worker cores"),
        ("agent_affinity", "agent affinity"),
        ("harness_affinity", "harness affinity"),
        ("xdp_mode_requested", "XDP mode requested"),
        ("xdp_modes_attached", "XDP modes attached"),
        ("mode", "pipeline mode"),
        ("batch_size", "batch size"),
        ("idle_spin_us", "idle_spin_us"),
        ("realtime", "realtime (shared placement)"),
        ("ring_size", "ring size"),
        ("busy_poll", "busy-poll"),
        ("plugin_launch", "plugin launch"),
        ("port_room", "room for the pods"),
        ("ipam_range", "IPAM range"),
        ("lab_up", "lab"),
    ] {
        s += &format!("- {label}: {}\n", t(&c[k]));
    }
    if !r.errors.is_empty() {
        s += "\n## Errors\n\n";
        for e in &r.errors {
            s += &format!("- {e}\n");
        }
    }
    s
}

fn met(v: &Value) -> &'static str {
    match v.as_bool() {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

fn write_outputs(r: &CniResults, out: &Path, notes: Option<&str>) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let json = out.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(r)? + "\n").map_err(io(&json))?;
    let md = out.join("README.md");
    std::fs::write(&md, render(r, notes)).map_err(io(&md))?;
    let svg = out.join("cni-setup.svg");
    draw(SVGBackend::new(&svg, CHART).into_drawing_area(), r)?;
    let png = out.join("cni-setup.png");
    draw(BitMapBackend::new(&png, CHART).into_drawing_area(), r)
}

/// Re-renders README.md and the chart from a results.json.
pub fn rerender(results: &Path, out: Option<PathBuf>, notes: Option<&Path>) -> Result<()> {
    let text = std::fs::read_to_string(results).map_err(|source| Error::Io {
        path: results.to_path_buf(),
        source,
    })?;
    let mut r: CniResults = serde_json::from_str(&text)?;
    r.summarize();
    let out = out.unwrap_or_else(|| results.parent().map(Path::to_path_buf).unwrap_or_default());
    let notes = crate::read_notes(notes)?;
    write_outputs(&r, &out, notes.as_deref())
}

const CHART: (u32, u32) = (1600, 700);

fn chart_err<E: std::fmt::Display>(e: E) -> Error {
    Error::Chart(e.to_string())
}

type Series = (&'static str, RGBColor, fn(&PodTiming) -> Option<f64>);

const SERIES: [Series; 4] = [
    ("xylem-cni ADD", RGBColor(41, 98, 255), |p| p.add_ms),
    (
        "first packet (from ADD start)",
        RGBColor(255, 143, 0),
        |p| p.first_packet_ms,
    ),
    ("xylem-cni DEL", RGBColor(198, 40, 40), |p| p.del_ms),
    ("ptp ADD", RGBColor(67, 160, 71), |p| p.ptp_add_ms),
];

/// Left: the CDF of each series with the targets; right: each pod's values in start order.
fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, r: &CniResults) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(chart_err)?;
    let title = format!(
        "xylem-cni, {} pods one after another ({} placement, XDP {}): ADD P99 {} ms (target ≤ {:.0}), first packet P99 {} ms (target ≤ {:.0})",
        r.pods.len(),
        r.conditions["placement"].as_str().unwrap_or("?"),
        r.conditions["xdp_modes_attached"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("/"))
            .unwrap_or_default(),
        f(r.add.p99_ms),
        ADD_P99_TARGET_MS,
        f(r.first_packet.p99_ms),
        FIRST_PACKET_P99_TARGET_MS,
    );
    let body = root.titled(&title, ("sans-serif", 20)).map_err(chart_err)?;
    let panels = body.split_evenly((1, 2));
    let top = r
        .pods
        .iter()
        .flat_map(|p| SERIES.iter().filter_map(move |s| (s.2)(p)))
        .fold(FIRST_PACKET_P99_TARGET_MS, f64::max)
        * 1.05;
    let mut cdf = ChartBuilder::on(&panels[0])
        .margin(15)
        .caption("CDF over pods", ("sans-serif", 18))
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..top, 0.0..1.0)
        .map_err(chart_err)?;
    cdf.configure_mesh()
        .x_desc("ms")
        .y_desc("fraction of pods")
        .draw()
        .map_err(chart_err)?;
    for (x, c) in [
        (ADD_P99_TARGET_MS, RGBColor(41, 98, 255)),
        (FIRST_PACKET_P99_TARGET_MS, RGBColor(255, 143, 0)),
    ] {
        cdf.draw_series(std::iter::once(PathElement::new(
            vec![(x, 0.0), (x, 1.0)],
            c.mix(0.5).stroke_width(1),
        )))
        .map_err(chart_err)?;
    }
    for (name, color, get) in SERIES {
        let mut v: Vec<f64> = r.pods.iter().filter_map(get).collect();
        if v.is_empty() {
            continue;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len() as f64;
        cdf.draw_series(LineSeries::new(
            v.iter().enumerate().map(|(i, x)| (*x, (i + 1) as f64 / n)),
            color.stroke_width(2),
        ))
        .map_err(chart_err)?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3)));
    }
    cdf.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(chart_err)?;
    let n = r.pods.len().max(1) as f64;
    let mut per = ChartBuilder::on(&panels[1])
        .margin(15)
        .caption(
            "per pod, in start order (pods accumulate; DEL in the same order)",
            ("sans-serif", 18),
        )
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..n, 0.0..top)
        .map_err(chart_err)?;
    per.configure_mesh()
        .x_desc("pod")
        .y_desc("ms")
        .draw()
        .map_err(chart_err)?;
    for (_, color, get) in SERIES {
        per.draw_series(
            r.pods
                .iter()
                .filter_map(|p| Some((f64::from(p.index), get(p)?)))
                .map(|(x, y)| Circle::new((x, y), 3, color.filled())),
        )
        .map_err(chart_err)?;
    }
    root.present().map_err(chart_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_hundred_values() {
        let p = Pct::of((1..=100).map(f64::from));
        assert_eq!(p.n, 100);
        assert_eq!(p.p50_ms, Some(50.5));
        assert!((p.p99_ms.unwrap() - 99.01).abs() < 1e-9);
        assert_eq!((p.min_ms, p.max_ms), (Some(1.0), Some(100.0)));
        assert_eq!(Pct::of([f64::NAN]), Pct::default());
    }

    #[test]
    fn the_range_leaves_out_the_labs_addresses() -> Result<()> {
        let gw: Ipv4Addr = "10.200.0.1".parse().unwrap();
        let host: Ipv4Addr = "10.200.0.254".parse().unwrap();
        let pod: Ipv4Addr = "10.200.0.10".parse().unwrap();
        let (a, b) = pick_range("10.200.0.0/24", &[gw, host, pod], 100)?;
        assert_eq!(
            (a.to_string(), b.to_string()),
            ("10.200.0.100".into(), "10.200.0.250".into())
        );
        let far: Ipv4Addr = "10.200.0.120".parse().unwrap();
        let (a, _) = pick_range("10.200.0.0/24", &[far], 100)?;
        assert_eq!(a.to_string(), "10.200.0.121");
        assert!(pick_range("10.200.0.0/24", &[far], 140).is_err());
        assert!(pick_range("10.200.0.0/28", &[], 1).is_err());
        assert!(pick_range("nonsense", &[], 1).is_err());
        Ok(())
    }

    #[test]
    fn echo_requests_carry_a_valid_checksum() {
        let p = echo_request(0x1234, 7);
        assert_eq!(checksum(&p), 0, "a packet with its checksum sums to zero");
        // An IPv4 header from 10.0.0.2 followed by the matching reply.
        let mut reply = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 2, 10, 0, 0, 3,
        ];
        reply.extend_from_slice(&[0, 0, 0, 0, 0x12, 0x34, 0, 7]);
        let from: Ipv4Addr = "10.0.0.2".parse().unwrap();
        assert!(is_reply(&reply, from, 0x1234));
        assert!(!is_reply(&reply, from, 0x1235));
        assert!(!is_reply(&reply, "10.0.0.9".parse().unwrap(), 0x1234));
        reply[20] = 8;
        assert!(!is_reply(&reply, from, 0x1234), "a request is no reply");
    }

    #[test]
    fn tree_lines_become_distinct_crates() {
        let t = "xylem-cni v0.1.0 (/w/control/cni)\nlibc v0.2.1\nserde v1.0.0\nlibc v0.2.1 (*)\n\n";
        assert_eq!(
            tree_crates(t),
            ["libc v0.2.1", "serde v1.0.0", "xylem-cni v0.1.0"]
        );
    }

    #[test]
    fn churn_checks_flag_growth() {
        let b = Snapshot {
            rss_kib: 10_000,
            frames: vec![json!({"total": 8448, "free": 6400, "fill": 2048})],
            ports: vec!["xyp0".into()],
            ..Snapshot::default()
        };
        let mut a = b.clone();
        a.rss_kib += 1000;
        assert!(compare(&b, &a, 4096).iter().all(|c| c.ok));
        a.rss_kib += 8000;
        a.frames[0]["free"] = json!(6300);
        a.lease_files = 1;
        let bad: Vec<String> = compare(&b, &a, 4096)
            .into_iter()
            .filter(|c| !c.ok)
            .map(|c| c.name)
            .collect();
        assert_eq!(bad.len(), 3, "{bad:?}");
    }
}

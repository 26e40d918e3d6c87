//! `xylem replay`: what Xylem would do with recorded traffic, without a node.
//!
//! What it does: builds the [`Tables`] an agent with the given endpoints and policies would
//! publish (through [`crate::agent::compile_tables`], the agent's own builder), runs a real
//! [`Worker`] over a [`PcapBackend`] fed from a capture file, one frame per
//! [`Worker::run_once`] with `now` taken from the capture's timestamps (so connection tracking
//! times out in capture time), and reports for every frame: where it entered, its 5-tuple, the
//! verdict, the drop reason, the connection-tracking state it met, and which header fields the
//! dataplane changed.
//!
//! How a frame's fate is found, and why so:
//! - **Verdict and drop reason: the worker's [`WorkerStats`], read before and after the
//!   frame.** The pipeline moves exactly one verdict counter per frame (`forwarded`,
//!   `to_slowpath` or one drop reason; the worker adds its own drop when it cannot carry out a
//!   verdict), so the delta names the outcome exactly, for every frame, slow path included. The
//!   flow monitor was the other candidate and is not used: its events exist only while a type
//!   is enabled, its rings are bounded and lose events by design, it has no event for the slow
//!   path, and it reports a TTL expiry answered with an ICMP error as a forward. A delta that
//!   is not one of the expected shapes is reported as verdict `unknown` (a dataplane bug), not
//!   guessed.
//! - **Egress port and rewrite: what the backend actually transmitted** for that frame, compared
//!   with the captured bytes field by field (Ethernet, IPv4, TCP/UDP/ICMP headers, payload) from
//!   the layout of the input: nothing is assumed about what the pipeline rewrites.
//! - **Connection tracking: the worker's conntrack looked up before and after the frame**
//!   (outside the worker's loop): `new` (an entry was created), `established` / `reply` (a live
//!   entry matched in the original or reply direction), `related` (an ICMP error quoting a live
//!   entry), or `untracked`.
//!
//! Which port a frame entered by: the capture does not say. With `ingress` set, every frame
//! enters by that endpoint's port (a capture taken on one pod's interface); otherwise by the
//! port of the endpoint whose MAC is the frame's source MAC. Frames that could not have reached
//! a worker are reported, not processed: sent by the gateway itself (Xylem's own output, in a
//! capture taken in both directions), from a MAC no endpoint has, of an EtherType the XDP
//! redirector passes to the kernel, cut by the capture's snap length, or longer than an AF_XDP
//! frame.
//!
//! What it does not do: run the slow path (frames for the gateway are reported as handed to it;
//! its ARP and ICMP answers are not produced), the XDP program (its ethertype selection is
//! modelled from [`RedirectFlags::default`], which the agent uses), several workers, or
//! policies changing during the capture.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam::queue::ArrayQueue;
use serde::Serialize;
use xdp_redirector::RedirectFlags;
use xylem_dataplane::io::pcap::{Capture, FrameInfo, PcapBackend, SentFrame, Undelivered};
use xylem_dataplane::pipeline::{Parsed, parse};
use xylem_dataplane::slowpath::Signal;
use xylem_dataplane::stats::{DropReason, WorkerStats};
use xylem_dataplane::tables::{Gateway, MacAddr, Mode, Tables};
use xylem_dataplane::wire::ethernet::{self, EtherType};
use xylem_dataplane::wire::ipv4;
use xylem_dataplane::worker::{
    DEFAULT_CT_CAPACITY, Placement, SlowFrame, Worker, WorkerConfig, WorkerLink,
};

use crate::Error;
use xylem_api::Endpoint;

use crate::agent::compile_tables;
use crate::config::{GatewayConfig, PortConfig, PortKind};
use crate::lab::GATEWAY_MAC;
use crate::policy::{IdentityAllocator, Policy, parse_policies};

/// The lab's gateway address, the default of `--gateway-ip`.
pub const LAB_GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);

/// The latest `now` a replay gives the worker (about 146 years after the first frame): far
/// enough for any real capture, and far enough from `u64::MAX` that conntrack's expiry times
/// (`now` plus hours) cannot overflow.
const MAX_NOW: u64 = 1 << 62;

/// Entries of each port's rings: one frame is replayed at a time, so a few are plenty.
const RING: usize = 8;

/// The node's own port (the host entity on the pod network), when the capture has its traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPort {
    /// Its address on the pod network.
    pub ip: Ipv4Addr,
    /// The MAC of the node's end of the host veth.
    pub mac: MacAddr,
}

/// What a replay runs against.
#[derive(Clone, Debug)]
pub struct ReplayConfig {
    /// The pods' gateway.
    pub gateway: GatewayConfig,
    /// `full` (policy and conntrack) or `passthrough`.
    pub mode: Mode,
    /// The endpoints, in the form `xylem endpoint list -o json` prints; port ids follow this
    /// order.
    pub endpoints: Vec<Endpoint>,
    /// The host port, if the capture has its traffic (the last port).
    pub host: Option<HostPort>,
    /// The policies, as `xylem policy import` takes them.
    pub policies: Vec<Policy>,
    /// Every frame enters by this endpoint (`NAMESPACE/NAME`, `NAME`, its interface, or
    /// `host`), instead of by its source MAC.
    pub ingress: Option<String>,
    /// The worker's conntrack capacity (the agent's default unless a test wants less memory).
    pub ct_capacity: usize,
}

impl ReplayConfig {
    /// The lab's gateway, `full` mode, no endpoint, no policy.
    pub fn new() -> Self {
        ReplayConfig {
            gateway: GatewayConfig {
                ip: LAB_GATEWAY_IP,
                mac: GATEWAY_MAC,
            },
            mode: Mode::Full,
            endpoints: Vec::new(),
            host: None,
            policies: Vec::new(),
            ingress: None,
            ct_capacity: DEFAULT_CT_CAPACITY,
        }
    }
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// One port of the replay: its endpoint's name and interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortRef {
    /// The port id.
    pub port: u16,
    /// `NAMESPACE/NAME` of the endpoint, or `host`.
    pub endpoint: String,
}

/// A header field the dataplane changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `eth.dst`, `ip.ttl`, `tcp.csum`, `payload`, `frame.len`, …
    pub field: String,
    /// The captured value.
    pub from: String,
    /// The transmitted value.
    pub to: String,
}

/// A frame's headers, as far as they parse (every read bounds-checked).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Flow {
    /// `TCP`, `UDP`, `ICMP`, `ARP`, `IPv6`, `IP proto N`, or `ethertype 0xNNNN`.
    pub proto: String,
    /// IPv4 source (sender address for ARP).
    pub src: Option<Ipv4Addr>,
    /// IPv4 destination (target address for ARP).
    pub dst: Option<Ipv4Addr>,
    /// TCP/UDP source port.
    pub sport: Option<u16>,
    /// TCP/UDP destination port.
    pub dport: Option<u16>,
    /// ICMP type.
    pub icmp_type: Option<u8>,
    /// ICMP code.
    pub icmp_code: Option<u8>,
    /// TCP flags, tcpdump's letters (`S`, `S.`, `F.`, `R`, `P.`).
    pub tcp_flags: Option<String>,
    /// The whole, in one line.
    pub summary: String,
}

/// An answer the dataplane sent instead of forwarding (ICMP time exceeded).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Answer {
    /// Where it went.
    pub egress: PortRef,
    /// What it is.
    pub flow: Flow,
}

/// What happened to one frame of the capture.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FrameReport {
    /// Its number in the file, from 1.
    pub number: u64,
    /// Capture time, nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
    /// Seconds since the first frame (the `now` the worker was given, in seconds).
    pub time: f64,
    /// Bytes captured.
    pub len: usize,
    /// The port it entered by (`None`: not processed).
    pub ingress: Option<PortRef>,
    /// Its headers.
    pub flow: Flow,
    /// `forwarded`, `slowpath`, `dropped`, `not-processed`, or `unknown` (the counters moved
    /// in a way the pipeline's accounting rule excludes: a dataplane bug; see `note`).
    pub verdict: &'static str,
    /// Where it was forwarded.
    pub egress: Option<PortRef>,
    /// Why it was dropped (the dataplane's drop reason) or not processed.
    pub reason: Option<String>,
    /// The connection-tracking state it met (`full` mode, IPv4 past the policy stage): `new`,
    /// `established`, `reply`, `related` or `untracked`.
    pub ct: Option<&'static str>,
    /// The tracked connection's state after the frame (`syn-sent`, `established`, `udp`, …).
    pub ct_state: Option<&'static str>,
    /// The header fields that differ between the captured and the transmitted frame.
    pub rewrite: Vec<Change>,
    /// An ICMP error sent back instead (TTL expired).
    pub answer: Option<Answer>,
    /// More about a frame not processed, or an `unknown` verdict.
    pub note: Option<String>,
}

/// Totals over the replay.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Frames in the capture.
    pub frames: u64,
    /// Frames by verdict.
    pub verdicts: BTreeMap<&'static str, u64>,
    /// Dropped frames by drop reason.
    pub drops: BTreeMap<String, u64>,
    /// Frames not processed, by reason.
    pub not_processed: BTreeMap<String, u64>,
    /// `ok`, or what the worker's frame accounting found wrong after the replay (a bug).
    pub frame_accounting: String,
}

/// A replay's result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The capture file.
    pub file: String,
    /// `pcap` or `pcapng`.
    pub format: &'static str,
    /// `full` or `passthrough`.
    pub mode: Mode,
    /// The ports, in port-id order.
    pub ports: Vec<PortRef>,
    /// Every frame, in file order.
    pub frames: Vec<FrameReport>,
    /// Totals.
    pub summary: Summary,
}

/// What a replay says before its first frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Head {
    /// The capture file.
    pub file: String,
    /// `pcap` or `pcapng`.
    pub format: &'static str,
    /// `full` or `passthrough`.
    pub mode: Mode,
    /// The ports, in port-id order.
    pub ports: Vec<PortRef>,
}

/// Where a replay's results go as they come: [`replay_stream`] calls `start` once, then
/// `sent` for each frame the worker transmits and `frame` for each frame of the capture, in
/// file order, and `progress` every few hundred frames. An error from the sink stops the
/// replay. A whole capture's results are never held in memory unless the sink keeps them.
pub trait Sink {
    /// The capture's header was read.
    fn start(&mut self, _head: &Head) -> Result<(), Error> {
        Ok(())
    }
    /// What happened to one frame.
    fn frame(&mut self, frame: FrameReport) -> Result<(), Error>;
    /// A frame the worker transmitted (before the [`FrameReport`] of the frame it came from).
    fn sent(&mut self, _frame: &SentFrame) -> Result<(), Error> {
        Ok(())
    }
    /// `read` of the capture's `total` bytes are done.
    fn progress(&mut self, _read: usize, _total: usize) {}
}

impl Report {
    /// Whether the replay itself went right (every verdict understood, frames accounted for);
    /// drops are not failures.
    pub fn ok(&self) -> bool {
        self.summary.frame_accounting == "ok" && !self.summary.verdicts.contains_key("unknown")
    }
}

/// Reads the endpoints file: the JSON array `xylem endpoint list -o json` prints.
pub fn load_endpoints(path: &Path) -> Result<Vec<Endpoint>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::File {
        what: "reading the endpoints file",
        path: path.to_owned(),
        source,
    })?;
    parse_endpoints(&text).map_err(|(field, why)| {
        Error::config(
            format!("--endpoints {}: {field}", path.display()),
            format!(
                "{why}; give the JSON array `xylem endpoint list -o json` prints (name, \
                 namespace, labels, ip, interface, mac)"
            ),
        )
    })
}

/// Parses endpoints JSON; the error is (field path, why).
pub fn parse_endpoints(text: &str) -> Result<Vec<Endpoint>, (String, String)> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "(top)".into() } else { path };
        (field, e.into_inner().to_string())
    })
}

/// Reads CiliumNetworkPolicy YAML exactly as `xylem policy import` does (one document,
/// several, or a `List`; all or nothing; a later policy of the same `namespace/name` replaces
/// an earlier one). `-` reads standard input.
pub fn load_policies(path: &Path) -> Result<Vec<Policy>, Error> {
    let text = if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|source| {
            Error::File {
                what: "reading the policy from",
                path: path.to_owned(),
                source,
            }
        })?;
        s
    } else {
        std::fs::read_to_string(path).map_err(|source| Error::File {
            what: "reading the policy file",
            path: path.to_owned(),
            source,
        })?
    };
    let parsed = parse_policies(&text)?;
    if parsed.is_empty() {
        return Err(Error::config(
            format!("--policy {}", path.display()),
            "no policy in the file: give CiliumNetworkPolicy YAML, as `xylem policy import` takes",
        ));
    }
    let by_key: BTreeMap<String, Policy> = parsed.into_iter().map(|p| (p.key(), p)).collect();
    Ok(by_key.into_values().collect())
}

/// The ports and tables of a replay.
struct Setup {
    tables: Tables,
    ports: Vec<PortRef>,
    interfaces: Vec<String>,
    /// Source MAC → port.
    by_mac: BTreeMap<[u8; 6], u16>,
    ingress: Option<u16>,
}

fn setup(cfg: &ReplayConfig) -> Result<Setup, Error> {
    let mut bindings = Vec::new();
    let mut ports: Vec<PortRef> = Vec::new();
    let mut interfaces = Vec::new();
    let mut by_mac = BTreeMap::new();
    let gw_mac = cfg.gateway.mac;
    let mut add = |field: String, pc: PortConfig, name: String| -> Result<(), Error> {
        let port = bindings.len() as u16;
        if pc.mac == gw_mac {
            return Err(Error::config(
                format!("{field}.mac"),
                format!("{} is the gateway's MAC", pc.mac),
            ));
        }
        if let Some(other) = by_mac.insert(pc.mac.0, port) {
            return Err(Error::config(
                format!("{field}.mac"),
                format!(
                    "{} is also the MAC of {}: each endpoint needs its own, since a frame's source \
                     MAC picks its ingress port",
                    pc.mac,
                    ports[usize::from(other)].endpoint
                ),
            ));
        }
        ports.push(PortRef {
            port,
            endpoint: name,
        });
        interfaces.push(pc.ifname.clone());
        bindings.push(Some(pc));
        Ok(())
    };
    for (i, e) in cfg.endpoints.iter().enumerate() {
        let field = format!("endpoints[{i}]");
        let mac: MacAddr = e.mac.parse().map_err(|err: xylem_dataplane::Error| {
            Error::config(format!("{field}.mac"), err.to_string())
        })?;
        add(
            field,
            PortConfig {
                ifname: e.interface.clone(),
                kind: PortKind::Pod,
                ip: e.ip,
                mac,
                name: Some(e.name.clone()),
                namespace: Some(e.namespace.clone()),
                labels: e.labels.clone(),
            },
            format!("{}/{}", e.namespace, e.name),
        )?;
    }
    if let Some(h) = cfg.host {
        add(
            "host".into(),
            PortConfig {
                ifname: "host".into(),
                kind: PortKind::Host,
                ip: h.ip,
                mac: h.mac,
                name: None,
                namespace: None,
                labels: BTreeMap::new(),
            },
            "host".into(),
        )?;
    }
    if bindings.is_empty() {
        return Err(Error::config(
            "--endpoints",
            "no endpoint to replay against: give the endpoints (`xylem endpoint list -o json > \
             endpoints.json` on the node) and/or --host-ip with --host-mac",
        ));
    }
    let ingress = match &cfg.ingress {
        None => None,
        Some(want) => {
            let found = ports.iter().zip(&interfaces).find(|(p, ifname)| {
                p.endpoint == *want
                    || *ifname == want
                    || p.endpoint.strip_prefix("default/") == Some(want.as_str())
            });
            let Some((p, _)) = found else {
                let names: Vec<&str> = ports.iter().map(|p| p.endpoint.as_str()).collect();
                return Err(Error::config(
                    "--ingress",
                    format!(
                        "no endpoint {want}: use one of {} (or its interface)",
                        names.join(", ")
                    ),
                ));
            };
            Some(p.port)
        }
    };
    let (tables, _) = compile_tables(
        &cfg.gateway,
        cfg.mode,
        &bindings,
        1,
        &cfg.policies,
        &mut IdentityAllocator::default(),
    )
    .map_err(|e| match e {
        Error::Dataplane(xylem_dataplane::Error::InvalidTable(why)) => {
            Error::config("--endpoints", why)
        }
        e => e,
    })?;
    Ok(Setup {
        tables,
        ports,
        interfaces,
        by_mac,
        ingress,
    })
}

/// The names of the ports' interfaces (for [`xylem_dataplane::io::pcap::TxWriter`]), in
/// port-id order, or why the configuration is unusable.
pub fn port_interfaces(cfg: &ReplayConfig) -> Result<Vec<String>, Error> {
    Ok(setup(cfg)?.interfaces)
}

/// Turns the dataplane's capture error into one that names the file.
fn capture_error(path: &Path, e: xylem_dataplane::Error) -> Error {
    match e {
        xylem_dataplane::Error::Io { source, .. } => Error::File {
            what: "cannot replay",
            path: path.to_owned(),
            source,
        },
        e => Error::Dataplane(e),
    }
}

/// Replays the capture file `path`. `progress(read, total)` is called every few hundred frames
/// with the bytes read so far; `sent` gets every frame the worker transmitted.
pub fn replay_file(
    path: &Path,
    cfg: &ReplayConfig,
    progress: &mut dyn FnMut(usize, usize),
    sent: &mut dyn FnMut(&SentFrame) -> Result<(), Error>,
) -> Result<Report, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::File {
        what: "reading the capture",
        path: path.to_owned(),
        source,
    })?;
    replay_bytes(bytes, path, cfg, progress, sent)
}

/// The verdict counters of a [`WorkerStats`], plus the ICMP errors sent.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Verdicts {
    rx: u64,
    forwarded: u64,
    slow: u64,
    icmp_errors: u64,
    drops: [u64; DropReason::COUNT],
}

impl Verdicts {
    fn of(s: &WorkerStats) -> Self {
        Verdicts {
            rx: s.rx_packets.get(),
            forwarded: s.forwarded.get(),
            slow: s.to_slowpath.get(),
            icmp_errors: s.icmp_errors_sent.get(),
            drops: std::array::from_fn(|i| s.drops_of(DropReason::ALL[i])),
        }
    }
}

/// The outcome the counters and the transmitted frames say.
enum Outcome {
    Forwarded(u16),
    SlowPath,
    Dropped(DropReason),
    /// Dropped, and answered with an ICMP error on this port.
    Answered(DropReason, u16),
    Unknown(String),
}

fn outcome(before: &Verdicts, after: &Verdicts, sent: &[SentFrame], slow: usize) -> Outcome {
    let d = |a: u64, b: u64| a.wrapping_sub(b);
    let (fwd, to_slow, icmp) = (
        d(after.forwarded, before.forwarded),
        d(after.slow, before.slow),
        d(after.icmp_errors, before.icmp_errors),
    );
    let drops: Vec<(DropReason, u64)> = DropReason::ALL
        .iter()
        .map(|&r| (r, d(after.drops[r as usize], before.drops[r as usize])))
        .filter(|&(_, n)| n > 0)
        .collect();
    let total = fwd + to_slow + drops.iter().map(|&(_, n)| n).sum::<u64>();
    let rx = d(after.rx, before.rx);
    let unknown = || {
        Outcome::Unknown(format!(
            "the worker received {rx} frames and moved forwarded +{fwd}, to_slowpath +{to_slow}, \
             icmp_errors_sent +{icmp}, drops {:?}, and sent {} frames: the pipeline's accounting \
             rule (one verdict counter per frame) does not hold; this is a bug in Xylem, please \
             report it with the capture",
            drops
                .iter()
                .map(|(r, n)| format!("{} +{n}", r.as_str()))
                .collect::<Vec<_>>(),
            sent.len()
        ))
    };
    if rx != 1 {
        return unknown();
    }
    match (total, fwd, to_slow, drops.as_slice()) {
        (1, 1, 0, []) if sent.len() == 1 && icmp == 0 => Outcome::Forwarded(sent[0].port),
        (1, 0, 1, []) if slow == 1 && sent.is_empty() => Outcome::SlowPath,
        (1, 0, 0, [(r, 1)]) if icmp == 1 && sent.len() == 1 => Outcome::Answered(*r, sent[0].port),
        (1, 0, 0, [(r, 1)]) if icmp == 0 && sent.is_empty() => Outcome::Dropped(*r),
        // The worker could not carry out the pipeline's verdict and counted its own drop.
        (2, 1, 0, [(r @ (DropReason::NoRoute | DropReason::TxRingFull), 1)]) if sent.is_empty() => {
            Outcome::Dropped(*r)
        }
        (2, 0, 1, [(DropReason::SlowPathFull, 1)]) if slow == 0 && sent.is_empty() => {
            Outcome::Dropped(DropReason::SlowPathFull)
        }
        _ => unknown(),
    }
}

/// Reads `bytes` (a capture named `path` in messages) and replays it, keeping every frame's
/// report. See [`replay_file`].
pub fn replay_bytes(
    bytes: Vec<u8>,
    path: &Path,
    cfg: &ReplayConfig,
    progress: &mut dyn FnMut(usize, usize),
    sent: &mut dyn FnMut(&SentFrame) -> Result<(), Error>,
) -> Result<Report, Error> {
    struct Collect<'a> {
        frames: Vec<FrameReport>,
        progress: &'a mut dyn FnMut(usize, usize),
        sent: &'a mut dyn FnMut(&SentFrame) -> Result<(), Error>,
    }
    impl Sink for Collect<'_> {
        fn frame(&mut self, f: FrameReport) -> Result<(), Error> {
            self.frames.push(f);
            Ok(())
        }
        fn sent(&mut self, f: &SentFrame) -> Result<(), Error> {
            (self.sent)(f)
        }
        fn progress(&mut self, read: usize, total: usize) {
            (self.progress)(read, total)
        }
    }
    let mut c = Collect {
        frames: Vec::new(),
        progress,
        sent,
    };
    let (head, summary) = replay_stream(bytes, path, cfg, &mut c)?;
    Ok(Report {
        file: head.file,
        format: head.format,
        mode: head.mode,
        ports: head.ports,
        frames: c.frames,
        summary,
    })
}

/// Reads `bytes` (a capture named `path` in messages) and replays it into `sink`, frame by
/// frame. Returns the header and the totals.
pub fn replay_stream(
    bytes: Vec<u8>,
    path: &Path,
    cfg: &ReplayConfig,
    sink: &mut dyn Sink,
) -> Result<(Head, Summary), Error> {
    let setup = setup(cfg)?;
    let capture = Capture::from_bytes(bytes).map_err(|e| capture_error(path, e))?;
    let format = capture.format().as_str();
    let total_bytes = capture.len();
    let nports = setup.ports.len();
    let backend = PcapBackend::new(capture, nports, RING, (nports * RING + 16) as u32);
    let to_slow = Arc::new(ArrayQueue::<SlowFrame>::new(4));
    let link = WorkerLink::new(
        Arc::new(ArcSwap::from_pointee(setup.tables)),
        Arc::clone(&to_slow),
        Arc::new(Signal::default()),
    );
    let wcfg = WorkerConfig {
        placement: Placement::Dedicated,
        ct_capacity: cfg.ct_capacity,
        ..WorkerConfig::default()
    };
    let mut w = Worker::new(wcfg, backend, link.clone())?;
    let stats = Arc::clone(&link.stats);
    let redirect = RedirectFlags::default();
    let gw_mac = cfg.gateway.mac.0;
    let gw = Gateway {
        mac: cfg.gateway.mac,
        ipv4: cfg.gateway.ip,
    };
    let port_ref = |p: u16| setup.ports.get(usize::from(p)).cloned();
    let head = Head {
        file: path.display().to_string(),
        format,
        mode: cfg.mode,
        ports: setup.ports.clone(),
    };
    sink.start(&head)?;

    let mut summary = Summary::default();
    let mut first: Option<Duration> = None;
    let mut now: u64 = 0;
    // The first batch fills the fill rings, so the first frame has somewhere to land.
    w.run_once(now);
    loop {
        let Some(info) = w
            .backend_mut()
            .read_next()
            .map_err(|e| capture_error(path, e))?
        else {
            break;
        };
        let FrameInfo {
            number, timestamp, ..
        } = info;
        let t0 = *first.get_or_insert(timestamp);
        // Capture time, never backwards (a merged capture may step back by a little), and
        // bounded: the dataplane's clock is nanoseconds since its start, and conntrack adds its
        // timeouts to it.
        let elapsed = timestamp.saturating_sub(t0).as_nanos();
        let clamped = elapsed > u128::from(MAX_NOW);
        now = now.max(elapsed.min(u128::from(MAX_NOW)) as u64);
        let input = w.backend_mut().input().to_vec();
        let flow = describe(&input);
        let mut r = FrameReport {
            number,
            timestamp_ns: timestamp.as_nanos().min(u128::from(u64::MAX)) as u64,
            time: now as f64 / 1e9,
            len: input.len(),
            ingress: None,
            flow,
            verdict: "not-processed",
            egress: None,
            reason: None,
            ct: None,
            ct_state: None,
            rewrite: Vec::new(),
            answer: None,
            note: None,
        };
        if clamped {
            r.note = Some(format!(
                "captured {} s after the first frame: replayed at {} s, the most the replay's \
                 clock covers (a timestamp from another clock, or a corrupt one)",
                elapsed / 1_000_000_000,
                MAX_NOW / 1_000_000_000
            ));
        }
        if number % 256 == 0 {
            sink.progress(w.backend_mut().capture().position(), total_bytes);
        }

        // Which port, if any, the frame enters by.
        let src_mac: Option<[u8; 6]> = input.get(6..12).and_then(|m| m.try_into().ok());
        let ethertype = input.get(12..14).map(|t| u16::from_be_bytes([t[0], t[1]]));
        let redirected = match ethertype {
            Some(0x0800) => redirect.ipv4,
            Some(0x86dd) => redirect.ipv6,
            Some(0x0806) => redirect.arp,
            _ => false,
        };
        let port: Result<u16, (&str, String)> = if src_mac == Some(gw_mac) {
            Err((
                "from-gateway",
                "sent by the gateway: Xylem's own output in the capture (capture with \
                 `tcpdump -Q out` to leave it out)"
                    .into(),
            ))
        } else if !redirected {
            Err((
                "xdp-pass",
                match ethertype {
                    None => "shorter than an Ethernet header: the XDP redirector passes it to \
                             the node's kernel"
                        .into(),
                    Some(t) => format!(
                        "EtherType {t:#06x}: the XDP redirector passes it to the node's kernel \
                         (it redirects IPv4, IPv6 and ARP)"
                    ),
                },
            ))
        } else if let Some(p) = setup.ingress {
            Ok(p)
        } else {
            match src_mac.and_then(|m| setup.by_mac.get(&m)) {
                Some(&p) => Ok(p),
                None => Err((
                    "no-ingress",
                    format!(
                        "no endpoint has source MAC {}: give the endpoints of the node where \
                         it was captured, or --ingress ENDPOINT for a capture taken on one pod",
                        src_mac.map_or("-".into(), |m| MacAddr(m).to_string())
                    ),
                )),
            }
        };
        let port = match port {
            Ok(p) => p,
            Err((reason, note)) => {
                r.reason = Some(reason.into());
                r.note = Some(note);
                count(&mut summary, &r);
                sink.frame(r)?;
                continue;
            }
        };
        r.ingress = port_ref(port);
        if let Err(u) = w.backend_mut().deliver(usize::from(port)) {
            r.reason = Some(u.as_str().into());
            r.note = Some(match u {
                Undelivered::CaptureTruncated { captured, original } => format!(
                    "the capture kept {captured} of its {original} bytes (its snap length): \
                     the dataplane decided on the whole frame; capture with `tcpdump -s 0`"
                ),
                Undelivered::TooLong { len } => format!(
                    "{len} bytes: longer than an AF_XDP frame holds ({}), so it could not have \
                     reached a worker (captured above GRO/TSO, or an MTU beyond ~3.8 KB)",
                    xylem_dataplane::io::pcap::FRAME_DATA
                ),
                Undelivered::NoFillFrame | Undelivered::NoFrame => {
                    "the replay had no frame to receive it into: a bug in Xylem, please report \
                     it with the capture"
                        .into()
                }
            });
            count(&mut summary, &r);
            sink.frame(r)?;
            continue;
        }

        // Connection tracking before the frame, under the keys the pipeline's parse stage
        // finds (a frame it refuses is not tracked).
        let (key, quoted) = match parse(&input, &gw) {
            Ok(Parsed::Ipv4(m)) => (Some(m.key), m.quoted),
            _ => (None, None),
        };
        let (pre, pre_quoted, created) = {
            let ct = w.conntrack();
            (
                key.and_then(|k| ct.get(now, &k)),
                quoted.and_then(|k| ct.get(now, &k)),
                ct.stats().created,
            )
        };
        let before = Verdicts::of(&stats);
        w.run_once(now);
        let after = Verdicts::of(&stats);
        let sent = w.backend_mut().take_sent();
        let mut slow = 0;
        while to_slow.pop().is_some() {
            slow += 1;
        }
        for f in &sent {
            sink.sent(f)?;
        }
        let passed_policy = match outcome(&before, &after, &sent, slow) {
            Outcome::Forwarded(p) => {
                r.verdict = "forwarded";
                r.egress = port_ref(p);
                r.rewrite = rewrite(&input, &sent[0].data);
                true
            }
            Outcome::SlowPath => {
                r.verdict = "slowpath";
                true
            }
            Outcome::Answered(reason, p) => {
                r.verdict = "dropped";
                r.reason = Some(reason.as_str().into());
                r.answer = port_ref(p).map(|egress| Answer {
                    egress,
                    flow: describe(&sent[0].data),
                });
                true
            }
            Outcome::Dropped(reason) => {
                r.verdict = "dropped";
                r.reason = Some(reason.as_str().into());
                matches!(
                    reason,
                    DropReason::NoRoute
                        | DropReason::TtlExceeded
                        | DropReason::TtlExceededUnroutable
                        | DropReason::IcmpNoRoom
                )
            }
            Outcome::Unknown(note) => {
                r.verdict = "unknown";
                r.note = Some(note);
                false
            }
        };
        if cfg.mode == Mode::Full
            && passed_policy
            && let Some(k) = key
        {
            let ct = w.conntrack();
            r.ct = Some(if ct.stats().created != created {
                "new"
            } else if pre_quoted.is_some() {
                "related"
            } else {
                match pre {
                    Some((_, true)) => "established",
                    Some((_, false)) => "reply",
                    None => "untracked",
                }
            });
            r.ct_state = ct.get(now, &k).map(|(s, _)| s.as_str());
        }
        count(&mut summary, &r);
        sink.frame(r)?;
    }
    sink.progress(total_bytes, total_bytes);
    // Let the last sent frames complete, then check every frame is back where it belongs.
    w.drain(now);
    summary.frame_accounting = match w.check_quiescent() {
        Ok(()) => "ok".into(),
        Err(e) => format!("{e}: this is a bug in Xylem, please report it with the capture"),
    };
    Ok((head, summary))
}

fn count(s: &mut Summary, r: &FrameReport) {
    s.frames += 1;
    *s.verdicts.entry(r.verdict).or_insert(0) += 1;
    if let Some(reason) = &r.reason {
        let map = if r.verdict == "not-processed" {
            &mut s.not_processed
        } else {
            &mut s.drops
        };
        *map.entry(reason.clone()).or_insert(0) += 1;
    }
}

/// The IPv4 header of an Ethernet frame, if it has one: (header, everything after it up to
/// the total length, or to the end of the frame when that is shorter). Checked by the wire
/// layer's header-only view, so a frame cut short by the capture is still described.
fn ipv4(frame: &[u8]) -> Option<(&[u8], &[u8])> {
    if ethernet::Frame::new_checked(frame).ok()?.ethertype() != EtherType::IPV4 {
        return None;
    }
    let l3 = frame.get(ethernet::HEADER_LEN..)?;
    let ip = ipv4::Packet::new_checked_header(l3).ok()?;
    let header_len = ip.header_len();
    let end = usize::from(ip.total_len()).clamp(header_len, l3.len());
    Some((&l3[..header_len], &l3[header_len..end]))
}

fn tcp_flags(f: u8) -> String {
    let mut s: String = [
        (0x02, 'S'),
        (0x01, 'F'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x20, 'U'),
    ]
    .iter()
    .filter(|(b, _)| f & b != 0)
    .map(|&(_, c)| c)
    .collect();
    if f & 0x10 != 0 {
        s.push('.');
    }
    if s.is_empty() { "none".into() } else { s }
}

fn icmp_name(t: u8, c: u8) -> String {
    match (t, c) {
        (0, _) => "echo-reply".into(),
        (8, _) => "echo-request".into(),
        (3, c) => format!("unreachable code {c}"),
        (11, 0) => "time-exceeded in transit".into(),
        (11, c) => format!("time-exceeded code {c}"),
        (t, c) => format!("type {t} code {c}"),
    }
}

/// The headers of `frame`, described. Every read is bounds-checked: any bytes give a
/// description, never a panic.
pub fn describe(frame: &[u8]) -> Flow {
    let mut f = Flow::default();
    let Some(t) = frame.get(12..14) else {
        f.proto = "-".into();
        f.summary = format!("{} bytes: shorter than an Ethernet header", frame.len());
        return f;
    };
    let ethertype = u16::from_be_bytes([t[0], t[1]]);
    match ethertype {
        0x0806 => {
            f.proto = "ARP".into();
            let arp = &frame[14..];
            let ip = |o: usize| {
                arp.get(o..o + 4)
                    .map(|b| Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            };
            // Ethernet/IPv4 ARP: sender IP at 14, target IP at 24.
            f.src = ip(14);
            f.dst = ip(24);
            let op = arp.get(6..8).map(|o| u16::from_be_bytes([o[0], o[1]]));
            let show = |a: Option<Ipv4Addr>| a.map_or("?".into(), |a| a.to_string());
            f.summary = match op {
                Some(1) => format!("ARP who-has {} tell {}", show(f.dst), show(f.src)),
                Some(2) => format!("ARP reply {} is-at", show(f.src)),
                Some(o) => format!("ARP op {o}"),
                None => "ARP (truncated)".into(),
            };
        }
        0x86dd => {
            f.proto = "IPv6".into();
            f.summary = "IPv6".into();
        }
        0x0800 => {
            let Some((h, l4)) = ipv4(frame) else {
                f.proto = "IPv4".into();
                f.summary = "IPv4 (malformed header)".into();
                return f;
            };
            let (src, dst) = (
                Ipv4Addr::new(h[12], h[13], h[14], h[15]),
                Ipv4Addr::new(h[16], h[17], h[18], h[19]),
            );
            f.src = Some(src);
            f.dst = Some(dst);
            let later_fragment = u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0;
            let proto = h[9];
            let ports = if later_fragment {
                None
            } else {
                l4.get(0..4).map(|p| {
                    (
                        u16::from_be_bytes([p[0], p[1]]),
                        u16::from_be_bytes([p[2], p[3]]),
                    )
                })
            };
            match proto {
                6 | 17 => {
                    f.proto = if proto == 6 { "TCP" } else { "UDP" }.into();
                    f.sport = ports.map(|p| p.0);
                    f.dport = ports.map(|p| p.1);
                    if proto == 6 && !later_fragment {
                        f.tcp_flags = l4.get(13).map(|&b| tcp_flags(b));
                    }
                    f.summary = match ports {
                        Some((s, d)) => format!("{} {src}:{s} → {dst}:{d}", f.proto),
                        None => format!("{} {src} → {dst}", f.proto),
                    };
                    if let Some(fl) = &f.tcp_flags {
                        f.summary.push_str(&format!(" [{fl}]"));
                    }
                }
                1 => {
                    f.proto = "ICMP".into();
                    if !later_fragment {
                        f.icmp_type = l4.first().copied();
                        f.icmp_code = l4.get(1).copied();
                    }
                    f.summary = format!("ICMP {src} → {dst}");
                    if let (Some(t), Some(c)) = (f.icmp_type, f.icmp_code) {
                        f.summary.push(' ');
                        f.summary.push_str(&icmp_name(t, c));
                        if matches!(t, 0 | 8)
                            && let Some(b) = l4.get(4..8)
                        {
                            f.summary.push_str(&format!(
                                " id {} seq {}",
                                u16::from_be_bytes([b[0], b[1]]),
                                u16::from_be_bytes([b[2], b[3]])
                            ));
                        }
                    }
                }
                p => {
                    f.proto = format!("IP proto {p}");
                    f.summary = format!("IP proto {p} {src} → {dst}");
                }
            }
            if later_fragment {
                f.summary.push_str(" (fragment)");
            }
        }
        t => {
            f.proto = format!("ethertype {t:#06x}");
            f.summary = f.proto.clone();
        }
    }
    f
}

#[derive(Clone, Copy)]
enum Fmt {
    Mac,
    Ip,
    Dec,
    Hex,
}

/// Named fields of `frame`'s headers: (name, offset, length, how to show it), then the
/// payload's offset.
fn layout(frame: &[u8]) -> (Vec<(&'static str, usize, usize, Fmt)>, usize) {
    let mut v = vec![
        ("eth.dst", 0, 6, Fmt::Mac),
        ("eth.src", 6, 6, Fmt::Mac),
        ("eth.type", 12, 2, Fmt::Hex),
    ];
    let Some((h, _)) = ipv4(frame) else {
        return (v, 14);
    };
    let ihl = h.len();
    for (name, off, len, fmt) in [
        ("ip.tos", 1, 1, Fmt::Hex),
        ("ip.len", 2, 2, Fmt::Dec),
        ("ip.id", 4, 2, Fmt::Dec),
        ("ip.frag", 6, 2, Fmt::Hex),
        ("ip.ttl", 8, 1, Fmt::Dec),
        ("ip.proto", 9, 1, Fmt::Dec),
        ("ip.csum", 10, 2, Fmt::Hex),
        ("ip.src", 12, 4, Fmt::Ip),
        ("ip.dst", 16, 4, Fmt::Ip),
    ] {
        v.push((name, 14 + off, len, fmt));
    }
    if ihl > 20 {
        v.push(("ip.options", 34, ihl - 20, Fmt::Hex));
    }
    let l4 = 14 + ihl;
    if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
        return (v, l4);
    }
    let fields: &[(&'static str, usize, usize, Fmt)] = match h[9] {
        6 => &[
            ("tcp.sport", 0, 2, Fmt::Dec),
            ("tcp.dport", 2, 2, Fmt::Dec),
            ("tcp.seq", 4, 4, Fmt::Dec),
            ("tcp.ack", 8, 4, Fmt::Dec),
            ("tcp.flags", 12, 2, Fmt::Hex),
            ("tcp.window", 14, 2, Fmt::Dec),
            ("tcp.csum", 16, 2, Fmt::Hex),
            ("tcp.urg", 18, 2, Fmt::Dec),
        ],
        17 => &[
            ("udp.sport", 0, 2, Fmt::Dec),
            ("udp.dport", 2, 2, Fmt::Dec),
            ("udp.len", 4, 2, Fmt::Dec),
            ("udp.csum", 6, 2, Fmt::Hex),
        ],
        1 => &[
            ("icmp.type", 0, 1, Fmt::Dec),
            ("icmp.code", 1, 1, Fmt::Dec),
            ("icmp.csum", 2, 2, Fmt::Hex),
            ("icmp.rest", 4, 4, Fmt::Hex),
        ],
        _ => &[],
    };
    let mut end = l4;
    for &(name, off, len, fmt) in fields {
        v.push((name, l4 + off, len, fmt));
        end = l4 + off + len;
    }
    (v, end)
}

fn show(b: &[u8], fmt: Fmt) -> String {
    match fmt {
        Fmt::Mac if b.len() == 6 => MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]]).to_string(),
        Fmt::Ip if b.len() == 4 => Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string(),
        Fmt::Dec if b.len() <= 8 => b
            .iter()
            .fold(0u64, |a, &x| (a << 8) | u64::from(x))
            .to_string(),
        _ => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!("0x{hex}")
        }
    }
}

/// The fields that differ between `input` and `output`, named by `input`'s headers. Bytes
/// beyond the named headers are compared as `payload`; a change of length is `frame.len`.
pub fn rewrite(input: &[u8], output: &[u8]) -> Vec<Change> {
    let (fields, payload) = layout(input);
    let mut out = Vec::new();
    for (name, off, len, fmt) in fields {
        let (Some(a), Some(b)) = (input.get(off..off + len), output.get(off..off + len)) else {
            continue;
        };
        if a != b {
            out.push(Change {
                field: name.into(),
                from: show(a, fmt),
                to: show(b, fmt),
            });
        }
    }
    let (a, b) = (
        input.get(payload..).unwrap_or(&[]),
        output.get(payload..).unwrap_or(&[]),
    );
    let differ: Vec<usize> = a
        .iter()
        .zip(b)
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(i, _)| i)
        .collect();
    if let (Some(&lo), Some(&hi)) = (differ.first(), differ.last()) {
        out.push(Change {
            field: "payload".into(),
            from: format!("{} bytes differ", differ.len()),
            to: format!("at payload bytes {lo}..={hi}"),
        });
    }
    if input.len() != output.len() {
        out.push(Change {
            field: "frame.len".into(),
            from: input.len().to_string(),
            to: output.len().to_string(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_and_rewrite_take_any_bytes() {
        // Every prefix of a real frame, and a few bytes of garbage: no panic, a description.
        let mut frame = vec![
            0x0e, 0x78, 0x79, 0x6c, 0, 1, 2, 0, 0, 0, 0, 10, 0x08, 0x00, 0x45, 0, 0, 28, 0, 1, 0,
            0, 64, 17, 0, 0, 10, 0, 0, 10, 10, 0, 0, 11, 0x9c, 0x40, 0, 53, 0, 8, 0, 0,
        ];
        for n in 0..=frame.len() {
            let _ = describe(&frame[..n]);
            let _ = rewrite(&frame[..n], &frame);
            let _ = rewrite(&frame, &frame[..n]);
        }
        let d = describe(&frame);
        assert_eq!(d.summary, "UDP 10.0.0.10:40000 → 10.0.0.11:53");
        let mut out = frame.clone();
        out[22] = 63;
        out[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 11]);
        out.push(0);
        let c = rewrite(&frame, &out);
        let names: Vec<&str> = c.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(names, ["eth.dst", "ip.ttl", "frame.len"]);
        assert_eq!((c[1].from.as_str(), c[1].to.as_str()), ("64", "63"));
        assert_eq!(c[0].to, "02:00:00:00:00:0b");
        frame[14] = 0x4f;
        assert_eq!(describe(&frame).summary, "IPv4 (malformed header)");
    }

    #[test]
    fn tcp_flags_read_like_tcpdump() {
        assert_eq!(tcp_flags(0x02), "S");
        assert_eq!(tcp_flags(0x12), "S.");
        assert_eq!(tcp_flags(0x11), "F.");
        assert_eq!(tcp_flags(0x18), "P.");
        assert_eq!(tcp_flags(0x04), "R");
        assert_eq!(tcp_flags(0), "none");
    }
}

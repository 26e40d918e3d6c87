//! The replay loop: each frame of the capture delivered to the worker, run, and reported.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam::queue::ArrayQueue;
use xylem_dataplane::io::pcap::{Capture, FrameInfo, PcapBackend, SentFrame, Undelivered};
use xylem_dataplane::pipeline::{Parsed, parse};
use xylem_dataplane::slowpath::Signal;
use xylem_dataplane::stats::{DropReason, WorkerStats};
use xylem_dataplane::tables::{Gateway, MacAddr, Mode, Tables};
use xylem_dataplane::worker::{Placement, SlowFrame, Worker, WorkerConfig, WorkerLink};

use super::describe::{describe, rewrite};
use super::setup::{capture_error, setup};
use super::*;

/// Replays the capture file `path`. `progress(read, total)` is called every few hundred frames
/// with the bytes read so far; `sent` gets every frame the worker transmitted.
pub fn replay_file(
    path: &Path,
    cfg: &ReplayConfig,
    progress: &mut dyn FnMut(usize, usize),
    sent: &mut dyn FnMut(&SentFrame) -> Result<(), Error>,
) -> Result<Report, Error> {
    let bytes = std::fs::read(path).map_err(|source| {
        Error::File(xylem_api::FileError {
            what: "reading the capture",
            path: path.to_owned(),
            source,
        })
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
    let (mut w, to_slow, stats) = replay_worker(setup.tables, nports, capture, cfg)?;
    let gw_mac = cfg.gateway.mac.0;
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
    while let Some(info) = w
        .backend_mut()
        .read_next()
        .map_err(|e| capture_error(path, e))?
    {
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
        let mut r = FrameReport::new(number, timestamp, now, &input);
        if clamped {
            r.note = Some(clamped_note(elapsed));
        }
        if number % 256 == 0 {
            sink.progress(w.backend_mut().capture().position(), total_bytes);
        }

        // Which port, if any, the frame enters by.
        let port = ingress_port(setup.ingress, &setup.by_mac, &input, gw_mac);
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
        r.ingress = setup.ports.get(usize::from(port)).cloned();
        if let Err(u) = w.backend_mut().deliver(usize::from(port)) {
            r.reason = Some(u.as_str().into());
            r.note = Some(undelivered_note(u));
            count(&mut summary, &r);
            sink.frame(r)?;
            continue;
        }

        decide_frame(
            &mut w,
            &to_slow,
            &stats,
            now,
            &input,
            &mut r,
            cfg,
            &setup.ports,
            sink,
        )?;
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

/// The replay's worker, its queue to the slow path (which the replay empties and counts), and
/// its counters.
type ReplayWorker = (
    Worker<PcapBackend>,
    Arc<ArrayQueue<SlowFrame>>,
    Arc<WorkerStats>,
);

/// The worker a replay runs: one, on the pcap backend (`nports` ports) fed from `capture`, with
/// `tables`.
fn replay_worker(
    tables: Tables,
    nports: usize,
    capture: Capture,
    cfg: &ReplayConfig,
) -> Result<ReplayWorker, Error> {
    let backend = PcapBackend::new(capture, nports, RING, (nports * RING + 16) as u32);
    let to_slow = Arc::new(ArrayQueue::<SlowFrame>::new(4));
    let link = WorkerLink::new(
        Arc::new(ArcSwap::from_pointee(tables)),
        Arc::clone(&to_slow),
        Arc::new(Signal::default()),
    );
    let wcfg = WorkerConfig {
        placement: Placement::Dedicated,
        ct_capacity: cfg.ct_capacity,
        ..WorkerConfig::default()
    };
    let w = Worker::new(wcfg, backend, link.clone())?;
    Ok((w, to_slow, Arc::clone(&link.stats)))
}

/// Runs the worker once on the frame `input` just delivered to it, and writes its fate into
/// `r`: verdict, egress, rewrite, and the conntrack state it met (looked up before and after,
/// under the keys the pipeline's parse stage finds; a frame it refuses is not tracked). What
/// the worker sent goes to `sink`.
#[allow(clippy::too_many_arguments)]
fn decide_frame(
    w: &mut Worker<PcapBackend>,
    to_slow: &ArrayQueue<SlowFrame>,
    stats: &WorkerStats,
    now: u64,
    input: &[u8],
    r: &mut FrameReport,
    cfg: &ReplayConfig,
    ports: &[PortRef],
    sink: &mut dyn Sink,
) -> Result<(), Error> {
    let gw = Gateway {
        mac: cfg.gateway.mac,
        ipv4: cfg.gateway.ip,
    };
    let (key, quoted) = match parse(input, &gw) {
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
    let before = Verdicts::of(stats);
    w.run_once(now);
    let after = Verdicts::of(stats);
    let sent = w.backend_mut().take_sent();
    let mut slow = 0;
    while to_slow.pop().is_some() {
        slow += 1;
    }
    for f in &sent {
        sink.sent(f)?;
    }
    let o = outcome(&before, &after, &sent, slow);
    let passed_policy = record_outcome(r, o, input, &sent, ports);
    if cfg.mode == Mode::Full
        && passed_policy
        && let Some(k) = key
    {
        let ct = w.conntrack();
        r.ct = Some(ct_label(
            ct.stats().created != created,
            pre_quoted.is_some(),
            pre,
        ));
        r.ct_state = ct.get(now, &k).map(|(s, _)| s.as_str());
    }
    Ok(())
}

impl FrameReport {
    /// The report of frame `number` of `input` before anything is known of its fate.
    fn new(number: u64, timestamp: Duration, now: u64, input: &[u8]) -> Self {
        FrameReport {
            number,
            timestamp_ns: timestamp.as_nanos().min(u128::from(u64::MAX)) as u64,
            time: now as f64 / 1e9,
            len: input.len(),
            ingress: None,
            flow: describe(input),
            verdict: "not-processed",
            egress: None,
            reason: None,
            ct: None,
            ct_state: None,
            rewrite: Vec::new(),
            answer: None,
            note: None,
        }
    }
}

/// The note of a frame captured `elapsed_ns` after the first, beyond the replay's clock.
fn clamped_note(elapsed_ns: u128) -> String {
    format!(
        "captured {} s after the first frame: replayed at {} s, the most the replay's \
         clock covers (a timestamp from another clock, or a corrupt one)",
        elapsed_ns / 1_000_000_000,
        MAX_NOW / 1_000_000_000
    )
}

/// The port a frame enters by, or why it could not have reached a worker: the reason and a
/// note saying what to do.
fn ingress_port(
    ingress: Option<u16>,
    by_mac: &BTreeMap<[u8; 6], u16>,
    input: &[u8],
    gw_mac: [u8; 6],
) -> Result<u16, (&'static str, String)> {
    let src_mac: Option<[u8; 6]> = input.get(6..12).and_then(|m| m.try_into().ok());
    if src_mac == Some(gw_mac) {
        return Err((
            "from-gateway",
            "sent by the gateway: Xylem's own output in the capture (capture with \
             `tcpdump -Q out` to leave it out)"
                .into(),
        ));
    }
    if let Some(p) = ingress {
        return Ok(p);
    }
    match src_mac.and_then(|m| by_mac.get(&m)) {
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
}

/// Why a frame the backend could not deliver to a worker never reached one, and what to do.
fn undelivered_note(u: Undelivered) -> String {
    match u {
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
    }
}

/// Writes what the worker did with the frame (`o`, with what it `sent`) into `r`. Returns
/// whether the frame went past the policy stage, so that its conntrack state means something.
fn record_outcome(
    r: &mut FrameReport,
    o: Outcome,
    input: &[u8],
    sent: &[SentFrame],
    ports: &[PortRef],
) -> bool {
    let port_ref = |p: u16| ports.get(usize::from(p)).cloned();
    match o {
        Outcome::Forwarded(p) => {
            r.verdict = "forwarded";
            r.egress = port_ref(p);
            r.rewrite = rewrite(input, &sent[0].data);
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
    }
}

/// The conntrack state a frame met: it `created` an entry, or it quotes a live one
/// (`related`), or the entry found before it, `pre` (with whether in the original direction).
fn ct_label(
    created: bool,
    related: bool,
    pre: Option<(xylem_dataplane::conntrack::CtState, bool)>,
) -> &'static str {
    if created {
        "new"
    } else if related {
        "related"
    } else {
        match pre {
            Some((_, true)) => "established",
            Some((_, false)) => "reply",
            None => "untracked",
        }
    }
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

//! # xylem-replay
//!
//! `xylem replay`: what Xylem would do with recorded traffic, without a node.
//!
//! What it does: builds the [`Tables`](xylem_dataplane::tables::Tables) an agent with the given endpoints and policies would
//! publish (through [`xylem_tables::compile_tables`], the agent's own builder), runs a real
//! [`Worker`](xylem_dataplane::worker::Worker) over a [`PcapBackend`](xylem_dataplane::io::pcap::PcapBackend) fed from a capture file, one frame per
//! [`Worker::run_once`](xylem_dataplane::worker::Worker::run_once) with `now` taken from the capture's timestamps (so connection tracking
//! times out in capture time), and reports for every frame: where it entered, its 5-tuple, the
//! verdict, the drop reason, the connection-tracking state it met, and which header fields the
//! dataplane changed.
//!
//! How a frame's fate is found, and why so:
//! - **Verdict and drop reason: the worker's [`WorkerStats`](xylem_dataplane::stats::WorkerStats), read before and after the
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
//! capture taken in both directions), from a MAC no endpoint has, cut by the capture's snap
//! length, or longer than an AF_XDP frame. Every other frame reaches the worker, whatever its
//! EtherType, as on a node: the XDP program hands every frame of a pod-facing interface to the
//! dataplane.
//!
//! What it does not do: run the slow path (frames for the gateway are reported as handed to it;
//! its ARP and ICMP answers are not produced), the XDP program, several workers, or policies
//! changing during the capture.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::Serialize;
use xylem_dataplane::io::pcap::SentFrame;
use xylem_dataplane::tables::{MacAddr, Mode};
use xylem_dataplane::worker::DEFAULT_CT_CAPACITY;

mod describe;
mod run;
mod setup;

pub use describe::{describe, rewrite};
pub use run::{replay_bytes, replay_file, replay_stream};
pub use setup::port_interfaces;

mod error;

pub use error::Error;
use xylem_api::Endpoint;

use xylem_api::config::{GatewayConfig, PortConfig, PortKind};
use xylem_lab::GATEWAY_MAC;
use xylem_policy::{IdentityAllocator, Policy, parse_policies};
use xylem_tables::{TableInputs, compile_tables};

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
    let text = std::fs::read_to_string(path).map_err(|source| {
        Error::File(xylem_api::FileError {
            what: "reading the endpoints file",
            path: path.to_owned(),
            source,
        })
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
            Error::File(xylem_api::FileError {
                what: "reading the policy from",
                path: path.to_owned(),
                source,
            })
        })?;
        s
    } else {
        std::fs::read_to_string(path).map_err(|source| {
            Error::File(xylem_api::FileError {
                what: "reading the policy file",
                path: path.to_owned(),
                source,
            })
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

#[cfg(test)]
mod tests {
    use super::describe::tcp_flags;
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

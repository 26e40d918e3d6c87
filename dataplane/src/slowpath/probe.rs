//! Active health-check probes from the gateway's address: TCP connects and HTTP GETs that the
//! slow path's smoltcp interface makes on the agent's behalf.
//!
//! The agent and the slow-path thread talk through [`ProbeQueues`]: two bounded queues, one of
//! [`ProbeRequest`]s and one of [`ProbeResult`]s, and the slow path's [`Signal`] to wake it. The
//! slow path takes a request only while the results queue has room for every probe in flight,
//! so it never has a result it cannot hand back, and it never blocks on the agent; a request
//! beyond that waits in its queue. A full request queue is the agent's to handle
//! ([`ProbeQueues::submit`] hands the request back).
//!
//! Each probe is one smoltcp TCP socket, bound to a local port of [`PROBE_PORTS`] no other probe
//! in flight holds, and removed from the socket set only once smoltcp has nothing left to send
//! for it: a probe that got its answer closes with a FIN (and is aborted with a RST if the peer
//! does not finish the close within [`LINGER`]); a probe that timed out is aborted with a RST.
//! The workers send every frame from these ports through conntrack and policy
//! ([`is_probe_frame`]), so a probe reaches a backend only if the backend's policy lets the
//! node (the `host` entity) in, and its replies come back as a tracked flow's.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::IpAddress;

use super::Signal;
use crate::pipeline::{Meta, Parsed, parse};
use crate::tables::{Gateway, MacAddr};
use crate::wire::ip::proto;

/// The gateway's local ports for probes. The workers judge every TCP and UDP frame the slow
/// path sends from these ports by conntrack and policy ([`is_probe_frame`]); frames from its
/// other ports are replies to pods' own flows to the gateway, judged on their way in.
pub const PROBE_PORTS: RangeInclusive<u16> = 40000..=40999;

/// How long a probe that has its answer waits for the peer to finish the close its FIN began
/// before it is aborted with a RST.
pub const LINGER: Duration = Duration::from_secs(1);

/// The most bytes of an HTTP answer read for its status line.
const HTTP_HEAD_MAX: usize = 512;

/// What a probe does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// A TCP connect: healthy when the handshake completes.
    Tcp,
    /// An HTTP/1.0 GET of `path`: healthy when the status line says `expect_status`.
    Http {
        /// The request path (starts with `/`; no whitespace or control characters).
        path: String,
        /// The status that counts as healthy.
        expect_status: u16,
    },
}

/// One probe the agent asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeRequest {
    /// The agent's number for it, returned in its [`ProbeResult`].
    pub id: u64,
    /// The backend's address and port.
    pub target: SocketAddrV4,
    /// What to do.
    pub kind: ProbeKind,
    /// How long it may take, from when the slow path starts it.
    pub timeout: Duration,
}

/// How a probe ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The backend answered as expected.
    Healthy,
    /// The connection was refused or reset (a RST), before an answer.
    Refused,
    /// No (complete) answer within the timeout: nothing listening, a policy drop, no route.
    TimedOut,
    /// HTTP: the backend answered with this status instead of the expected one.
    BadStatus(u16),
    /// HTTP: the answer was not an HTTP status line, or the connection closed before one.
    BadResponse,
    /// The request cannot be sent: an HTTP path with whitespace or control characters, or a
    /// zero port.
    BadRequest,
    /// Every port of [`PROBE_PORTS`] is held by a probe in flight.
    NoLocalPort,
}

impl ProbeOutcome {
    /// Whether the backend counts as healthy.
    pub fn healthy(self) -> bool {
        self == ProbeOutcome::Healthy
    }
}

impl std::fmt::Display for ProbeOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeOutcome::Healthy => write!(f, "healthy"),
            ProbeOutcome::Refused => write!(f, "connection refused or reset"),
            ProbeOutcome::TimedOut => write!(f, "timed out"),
            ProbeOutcome::BadStatus(s) => write!(f, "answered HTTP status {s}"),
            ProbeOutcome::BadResponse => write!(f, "no HTTP status line in the answer"),
            ProbeOutcome::BadRequest => write!(f, "request cannot be sent"),
            ProbeOutcome::NoLocalPort => write!(f, "no free local port for the probe"),
        }
    }
}

/// What became of one [`ProbeRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    /// The request's [`ProbeRequest::id`].
    pub id: u64,
    /// The request's target.
    pub target: SocketAddrV4,
    /// How it ended.
    pub outcome: ProbeOutcome,
    /// From its start to its outcome.
    pub took: Duration,
}

/// The agent's and the slow path's ends of the probe channel (see the module documentation).
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct ProbeQueues {
    requests: Arc<ArrayQueue<ProbeRequest>>,
    results: Arc<ArrayQueue<ProbeResult>>,
    signal: Arc<Signal>,
}

impl ProbeQueues {
    /// Queues for at most `capacity` probes waiting or in flight (at least 1), waking the slow
    /// path through `signal` (its [`super::SlowPathLink::signal`]).
    pub fn new(capacity: usize, signal: Arc<Signal>) -> Self {
        let capacity = capacity.max(1);
        ProbeQueues {
            requests: Arc::new(ArrayQueue::new(capacity)),
            results: Arc::new(ArrayQueue::new(capacity)),
            signal,
        }
    }

    /// Queues `req` and wakes the slow path; hands it back when the queue is full (the caller
    /// tries again later). Never blocks.
    pub fn submit(&self, req: ProbeRequest) -> Result<(), ProbeRequest> {
        self.requests.push(req)?;
        self.signal.notify();
        Ok(())
    }

    /// The next finished probe, if any. Never blocks.
    pub fn take_result(&self) -> Option<ProbeResult> {
        self.results.pop()
    }
}

/// Whether a frame the slow path sends belongs to a probe: IPv4 from `gateway`, TCP or UDP,
/// from a port of [`PROBE_PORTS`]. Returns its [`Meta`] for the workers' conntrack and policy
/// stages (parsed as the frame's destination would see it: the parser checks that a frame is
/// addressed to the MAC it is given).
pub fn is_probe_frame(frame: &[u8], gateway: Ipv4Addr) -> Option<Meta> {
    let dst: [u8; 6] = frame.get(0..6)?.try_into().ok()?;
    let as_seen = Gateway {
        mac: MacAddr(dst),
        ipv4: gateway,
    };
    let Ok(Parsed::Ipv4(m)) = parse(frame, &as_seen) else {
        return None;
    };
    let ours = m.key.src == gateway
        && (m.key.proto == proto::TCP || m.key.proto == proto::UDP)
        && PROBE_PORTS.contains(&m.key.sport);
    ours.then_some(m)
}

/// Where a probe is.
#[derive(Debug)]
enum Phase {
    /// Connecting, then (HTTP) sending the request and reading the status line.
    Running { sent: usize },
    /// Its outcome is out; waiting for smoltcp to finish the close (FIN, else RST) until
    /// `until`; `aborted` once the RST was asked for.
    Closing { until: Instant, aborted: bool },
}

#[derive(Debug)]
struct Probe {
    req: ProbeRequest,
    handle: SocketHandle,
    local_port: u16,
    started: Instant,
    head: Vec<u8>,
    phase: Phase,
}

/// The slow path's side: the probes in flight on its socket set.
#[derive(Debug)]
pub(super) struct Prober {
    queues: ProbeQueues,
    active: Vec<Probe>,
    next_port: u16,
}

impl Prober {
    pub(super) fn new(queues: ProbeQueues) -> Self {
        Prober {
            queues,
            active: Vec::new(),
            next_port: *PROBE_PORTS.start(),
        }
    }

    /// Probes in flight (closing ones included).
    pub(super) fn in_flight(&self) -> usize {
        self.active.len()
    }

    /// Starts the queued requests while every probe in flight would still find room for its
    /// result; `seed(ip)` is called for each target before its connection is opened, for the
    /// slow path to give smoltcp the target's MAC.
    pub(super) fn start(
        &mut self,
        iface: &mut Interface,
        sockets: &mut SocketSet<'static>,
        mut seed: impl FnMut(Ipv4Addr),
    ) {
        let now = Instant::now();
        while self.active.len() + self.queues.results.len() < self.queues.results.capacity() {
            let Some(req) = self.queues.requests.pop() else {
                return;
            };
            seed(*req.target.ip());
            if let Err(outcome) = self.connect(iface, sockets, &req, now) {
                self.finish(&req, outcome, now);
            }
        }
    }

    fn connect(
        &mut self,
        iface: &mut Interface,
        sockets: &mut SocketSet<'static>,
        req: &ProbeRequest,
        now: Instant,
    ) -> Result<(), ProbeOutcome> {
        if let ProbeKind::Http { path, .. } = &req.kind
            && (!path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(ProbeOutcome::BadRequest);
        }
        let local_port = self.free_port().ok_or(ProbeOutcome::NoLocalPort)?;
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; HTTP_HEAD_MAX * 2]),
            tcp::SocketBuffer::new(vec![0; 1024]),
        );
        let remote = (IpAddress::Ipv4(*req.target.ip()), req.target.port());
        socket
            .connect(iface.context(), remote, local_port)
            .map_err(|_| ProbeOutcome::BadRequest)?;
        let handle = sockets.add(socket);
        self.active.push(Probe {
            req: req.clone(),
            handle,
            local_port,
            started: now,
            head: Vec::new(),
            phase: Phase::Running { sent: 0 },
        });
        Ok(())
    }

    /// The next port of [`PROBE_PORTS`] after the last one given that no probe in flight
    /// holds: probes to one backend do not reuse a 4-tuple whose TIME-WAIT the backend may
    /// still keep.
    fn free_port(&mut self) -> Option<u16> {
        let (lo, hi) = (*PROBE_PORTS.start(), *PROBE_PORTS.end());
        for _ in PROBE_PORTS {
            let p = self.next_port;
            self.next_port = if p >= hi { lo } else { p + 1 };
            if !self.active.iter().any(|a| a.local_port == p) {
                return Some(p);
            }
        }
        None
    }

    fn finish(&self, req: &ProbeRequest, outcome: ProbeOutcome, started: Instant) {
        let result = ProbeResult {
            id: req.id,
            target: req.target,
            outcome,
            took: started.elapsed(),
        };
        // Room was checked before the probe started (see `start`).
        let _ = self.queues.results.push(result);
    }

    /// Moves every probe on after a poll of the interface: outcomes, closes, and the removal
    /// of sockets smoltcp is done with. Returns whether a socket has something new to send
    /// (the caller polls the interface again).
    pub(super) fn advance(&mut self, sockets: &mut SocketSet<'static>) -> bool {
        let now = Instant::now();
        let mut to_send = false;
        let mut i = 0;
        while i < self.active.len() {
            let p = &mut self.active[i];
            let socket = sockets.get_mut::<tcp::Socket>(p.handle);
            match &mut p.phase {
                Phase::Running { sent } => {
                    let outcome = if now.duration_since(p.started) >= p.req.timeout {
                        socket.abort();
                        Some(ProbeOutcome::TimedOut)
                    } else {
                        step(socket, &p.req.kind, sent, &mut p.head)
                    };
                    if let Some(outcome) = outcome {
                        if outcome != ProbeOutcome::TimedOut {
                            // A graceful close after an answer, as a kubelet probe does; a
                            // refused connection is closed already.
                            socket.close();
                        }
                        let result = ProbeResult {
                            id: p.req.id,
                            target: p.req.target,
                            outcome,
                            took: now.duration_since(p.started),
                        };
                        let _ = self.queues.results.push(result);
                        p.phase = Phase::Closing {
                            until: now + LINGER,
                            aborted: outcome == ProbeOutcome::TimedOut,
                        };
                        to_send = true;
                    }
                }
                Phase::Closing { until, aborted } => {
                    // Closed with nothing left to send (smoltcp forgets the peer once its RST
                    // is out), or in TIME-WAIT (the final ACK is sent): smoltcp is done.
                    let done = (socket.state() == tcp::State::Closed
                        && socket.remote_endpoint().is_none())
                        || socket.state() == tcp::State::TimeWait;
                    if done || (now >= *until && *aborted) {
                        sockets.remove(p.handle);
                        self.active.swap_remove(i);
                        continue;
                    }
                    if now >= *until {
                        socket.abort();
                        *until = now + LINGER;
                        *aborted = true;
                        to_send = true;
                    }
                }
            }
            i += 1;
        }
        to_send
    }

    /// Aborts every probe in flight (the slow path is stopping): each socket's RST goes out on
    /// the caller's next poll.
    pub(super) fn abort_all(&mut self, sockets: &mut SocketSet<'static>) {
        for p in &self.active {
            sockets.get_mut::<tcp::Socket>(p.handle).abort();
        }
    }

    /// The earliest time a probe needs looking at without a frame arriving.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.active
            .iter()
            .map(|p| match p.phase {
                Phase::Running { .. } => p.started + p.req.timeout,
                Phase::Closing { until, .. } => until,
            })
            .min()
    }
}

/// One running probe's progress on its socket: its outcome once known.
fn step(
    socket: &mut tcp::Socket<'_>,
    kind: &ProbeKind,
    sent: &mut usize,
    head: &mut Vec<u8>,
) -> Option<ProbeOutcome> {
    match socket.state() {
        tcp::State::Closed => return Some(ProbeOutcome::Refused),
        tcp::State::SynSent | tcp::State::SynReceived => return None,
        _ => {}
    }
    let (path, expect) = match kind {
        ProbeKind::Tcp => return Some(ProbeOutcome::Healthy),
        ProbeKind::Http {
            path,
            expect_status,
        } => (path, *expect_status),
    };
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {}\r\nUser-Agent: xylem-health\r\nConnection: close\r\n\r\n",
        socket
            .remote_endpoint()
            .map(|e| e.to_string())
            .unwrap_or_default()
    );
    if *sent < request.len() && socket.can_send() {
        *sent += socket.send_slice(&request.as_bytes()[*sent..]).unwrap_or(0);
    }
    while socket.can_recv() && head.len() < HTTP_HEAD_MAX {
        let mut buf = [0u8; HTTP_HEAD_MAX];
        let room = HTTP_HEAD_MAX - head.len();
        match socket.recv_slice(&mut buf[..room]) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    if let Some(end) = head.windows(2).position(|w| w == b"\r\n") {
        return Some(match http_status(&head[..end]) {
            Some(s) if s == expect => ProbeOutcome::Healthy,
            Some(s) => ProbeOutcome::BadStatus(s),
            None => ProbeOutcome::BadResponse,
        });
    }
    if head.len() >= HTTP_HEAD_MAX || !socket.may_recv() {
        return Some(ProbeOutcome::BadResponse);
    }
    None
}

/// The status of an HTTP/1.x status line (`HTTP/1.1 200 OK`).
fn http_status(line: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests;

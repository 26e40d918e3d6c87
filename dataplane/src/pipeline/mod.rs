//! The per-packet decision: a pure function of `(now, ingress port, frame, tables)` and the
//! worker's flow state.
//!
//! [`process`] takes a frame received on a pod-facing port, rewrites it in place when it is to
//! be sent on, and returns an [`Outcome`]: what to do with the frame and what happened on the
//! way. It performs no I/O, reads no clock, allocates nothing, takes no lock, logs nothing and
//! counts nothing (the worker counts each frame once, from its outcome), so it is unit-tested
//! and fuzzed on byte arrays.
//!
//! # Stages
//! One module per stage, called in this order by [`decide`], which reads top to bottom:
//!
//! | # | stage | module | what it does |
//! |---|---|---|---|
//! | 1 | parse | [`mod@parse`] | Ethernet, ARP, IPv4, the transport header: once, into a [`Meta`] |
//! | 2 | ingress checks | [`ingress`], [`underlay`] | is the frame's source the port's own endpoint? On the uplink: is it none of this node's addresses, and does a peer that encrypts send only ESP? |
//! | 3 | decapsulation | [`underlay`] | an ESP packet from another node opened in place: the stages after it see the inner packet |
//! | 3b | fragments | [`fragment`] | a later IPv4 fragment takes its datagram's ports, or its first fragment's drop; a first fragment's ports and fate are recorded after 6 |
//! | 4 | conntrack lookup | [`flow`] | the flow's state (an ICMP error: the flow it quotes, if its addresses match); revalidates it after a policy change |
//! | 5 | service translation | [`service`] | a new connection to a frontend balanced (Maglev, affinity) or refused; a balanced connection's packets to its backend, its replies back from its frontend |
//! | 6 | policy | [`policy`] | a new flow against the sender's egress and the receiver's ingress |
//! | 7 | DNS inspection | [`dns`] | a query on a flow whose policy has `rules.dns` is checked against its names (a denied one answered REFUSED in its own buffer); an answer's addresses are learned for the endpoint's `toFQDNs` rules before it goes on |
//! | 8 | routing | [`route`] | local delivery (slow path), `/32` lookup, another node's pod CIDR over the uplink, the world through the uplink's next hop, TTL expiry |
//! | 8b | conntrack commit | [`flow`], [`masq`] | an allowed new flow that routing sends on is tracked, owned by its ingress port (within the port's limit; a full table evicts an unanswered entry); a new connection to the world gets its port on the node's address |
//! | 9 | NAT rewrite | [`nat`] | the service stage's translation, and masquerade's ([`masq`]: a pod's packet to the world from the node's address, the world's reply back to the pod), with incremental checksums |
//! | 10 | encapsulation | [`underlay`] | a packet for a peer that encrypts sealed in ESP tunnel mode behind outer IPv4 and Ethernet headers, prepended into the headroom |
//! | 11 | emit | [`emit`] | completes partial checksums (before 9), decrements TTL, rewrites MACs; builds ICMP errors and a refused connection's answer |
//!
//! Stage 10 runs after emit's rewrite of the inner packet (TTL, MACs), which it then seals.
//! ARP frames leave after stage 2 ([`arp`], or [`underlay::arp`] on the uplink). Stages 2, 3
//! and 10 run in both modes: the underlay's checks and encryption are never skipped. In [`Mode::Passthrough`]
//! (the benchmark floor) stages 3b to 7, 8b and 9 are skipped. The commit comes after routing so
//! that a packet going nowhere creates no state; a packet of a tracked flow passes it by.
//!
//! A frame is parsed once: the worker may call [`parse()`] for a whole batch first (to prefetch
//! flow state) and then [`decide`] on each frame with its [`Parsed`]; [`process`] does both for
//! one frame. Stages read the [`Meta`], never the headers again; emit writes through the
//! [`crate::wire`] views.
//!
//! Input is untrusted. A malformed frame is an [`Outcome`] with a [`DropReason`], never a panic.

pub mod arp;
pub mod dns;
pub mod emit;
pub mod flow;
pub mod fragment;
pub mod ingress;
pub mod masq;
pub mod nat;
pub mod parse;
pub mod policy;
pub mod route;
pub mod service;
pub mod underlay;

pub use crate::frame::Frame;
pub use parse::{Meta, Parsed, parse};

use crate::conntrack::{Annex, Conntrack};
use crate::policy::{PolicyTables, PolicyVerdict};
use crate::stats::DropReason;
use crate::tables::{Mode, PortId, Tables};

/// What to do with a frame after [`process`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit the (rewritten) frame on this port.
    Forward(PortId),
    /// The packet was dropped because its TTL expired ([`DropReason::TtlExceeded`]), and its
    /// buffer now holds the ICMP time exceeded for its source: transmit that on this port.
    IcmpError(PortId),
    /// A new connection to a service that has no backend for it was refused
    /// ([`DropReason::NoServiceBackend`]), and the buffer now holds the refusal for its source, a
    /// TCP RST (`reset`) or an ICMP port unreachable: transmit that on `port`.
    Refused {
        /// The port the connection came from.
        port: PortId,
        /// Whether the refusal is a TCP RST (else an ICMP port unreachable).
        reset: bool,
    },
    /// The packet was too big to encapsulate for another node and forbids fragmenting
    /// ([`DropReason::EspTooBig`]), and its buffer now holds the ICMP fragmentation needed,
    /// with the MTU that fits, for its source: transmit that on this port.
    TooBig(PortId),
    /// Hand the frame, unchanged apart from checksum completion, to the slow path.
    SlowPath,
    /// Drop the frame.
    Drop(DropReason),
}

/// What happened to a frame: the worker's only source for counting it and for its monitor
/// events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Where the frame goes.
    pub verdict: Verdict,
    /// The policy verdict, when the conntrack and policy stages ran (`full` mode, a valid IPv4
    /// packet).
    pub policy: Option<PolicyVerdict>,
    /// A partial TCP or UDP checksum (left by a pod's TX offload) was completed.
    pub checksum_completed: bool,
}

impl Outcome {
    /// An outcome with only a verdict.
    #[inline(always)]
    pub fn verdict(verdict: Verdict) -> Self {
        Outcome {
            verdict,
            policy: None,
            checksum_completed: false,
        }
    }

    /// A drop.
    #[inline(always)]
    pub fn drop(reason: DropReason) -> Self {
        Self::verdict(Verdict::Drop(reason))
    }

    /// The drop reason this frame counts as, if it is not sent on as it came: a drop, or a
    /// packet answered with an ICMP error.
    #[inline]
    pub fn drop_reason(&self) -> Option<DropReason> {
        match self.verdict {
            Verdict::Drop(r) => Some(r),
            Verdict::IcmpError(_) => Some(DropReason::TtlExceeded),
            Verdict::TooBig(_) => Some(DropReason::EspTooBig),
            Verdict::Refused { .. } => Some(DropReason::NoServiceBackend),
            Verdict::Forward(_) | Verdict::SlowPath => None,
        }
    }
}

/// The whole per-packet decision for one frame: [`parse()`], then [`decide`].
///
/// `now_ns` is a monotonic time read once per batch by the caller (flow-state timestamps).
/// `ct` is the flow state, used (and written) in [`Mode::Full`] only. On `Verdict::Forward` and
/// `Verdict::IcmpError` the frame has been rewritten in place (and its length may have changed:
/// see [`Frame::len`]); on `SlowPath` it is otherwise unchanged; on `Drop` its contents are
/// unspecified.
// Always inlined, as `decide` is: out of line, the `Outcome` goes back through memory and the
// frame's view is rebuilt around the call (about 9 ns in the `forward` benchmark).
#[inline(always)]
pub fn process(
    now_ns: u64,
    ingress: PortId,
    frame: &mut Frame<'_>,
    tables: &Tables,
    ct: &mut Conntrack,
) -> Outcome {
    // Matched by reference: binding the `Parsed` by value would copy it out of the `Result`.
    match &parse(frame.data(), tables.gateway_for(ingress)) {
        Ok(parsed) => decide(now_ns, ingress, frame, parsed, tables, ct),
        Err(reason) => Outcome::drop(*reason),
    }
}

/// Stages 2 to 11 for a frame that [`parse()`] accepted, as `parsed`. Same contract as
/// [`process`]; `parsed` must come from this very frame, unchanged since.
#[inline(always)]
pub fn decide(
    now_ns: u64,
    ingress: PortId,
    frame: &mut Frame<'_>,
    parsed: &Parsed,
    tables: &Tables,
    ct: &mut Conntrack,
) -> Outcome {
    // Stage 2: ingress checks. The port the frame arrived on is its sender's identity.
    let meta = match parsed {
        Parsed::Arp {
            target,
            sender_ip,
            sender_mac,
            eth_src,
        } => {
            if ingress == tables.uplink_port() {
                return underlay::arp(*target, *sender_ip, *sender_mac, *eth_src, tables);
            }
            if let Some(r) = ingress::arp(ingress, *sender_ip, *sender_mac, *eth_src, tables) {
                return Outcome::drop(r);
            }
            return arp::to_gateway(*target, tables.gateway());
        }
        Parsed::Ipv4(meta) => meta,
    };
    // Stage 3 (on the uplink): decapsulation. The stages after it see the inner packet.
    let opened;
    let meta = if ingress == tables.uplink_port() {
        match underlay::ingress(frame, meta, tables) {
            Ok(underlay::Ingress::Plain) if tables.is_node_address(meta.key.dst) => {
                return match tables.mode() {
                    Mode::Full => masq::inbound(now_ns, frame, meta, tables, ct),
                    Mode::Passthrough => Outcome::drop(DropReason::NoRoute),
                };
            }
            Ok(underlay::Ingress::Plain) => meta,
            Ok(underlay::Ingress::Opened(inner)) => {
                opened = inner;
                &opened
            }
            Err(r) => return Outcome::drop(r),
        }
    } else if let Some(r) = ingress::ipv4(ingress, frame, meta, tables) {
        return Outcome::drop(r);
    } else {
        meta
    };

    // Stages 3b to 6: fragments, flow state, services and policy.
    let judged = match tables.mode() {
        Mode::Passthrough => None,
        // Out of line, so that the path without services (and the passthrough floor) keeps
        // its size: the tail below is inlined into both with the translation a constant here.
        Mode::Full if tables.has_services() => {
            return with_services(now_ns, ingress, frame, meta, tables, ct);
        }
        Mode::Full => {
            let (gateway, rules) = (tables.gateway().ipv4, tables.policy());
            let j = if meta.has(Meta::FRAGMENT) {
                match fragment::judge(now_ns, meta, gateway, rules, ct) {
                    Ok(j) => j,
                    Err(reason) => return Outcome::drop(reason),
                }
            } else {
                judge(now_ns, meta, gateway, rules, ct)
            };
            if let Judged::Done(v @ PolicyVerdict::Drop { reason, .. }) = j {
                return Outcome {
                    policy: Some(v),
                    ..Outcome::drop(reason.into())
                };
            }
            // Stage 7: DNS inspection.
            if tables.has_dns()
                && let Some(o) = dns::inspect(now_ns, frame, (meta, meta), &j, tables, ct)
            {
                return o;
            }
            Some(j)
        }
    };
    let plain = Judgement {
        judged,
        nat: service::Nat::None,
        balanced: None,
    };
    tail(now_ns, ingress, frame, (meta, meta), tables, ct, plain)
}

/// Stages 3b to 11 of [`decide`] in [`Mode::Full`] on tables with services: the fragment and
/// service stages' judgement (or refusal), then the tail with its translation.
#[inline(never)]
fn with_services(
    now_ns: u64,
    ingress: PortId,
    frame: &mut Frame<'_>,
    meta: &Meta,
    tables: &Tables,
    ct: &mut Conntrack,
) -> Outcome {
    let j = if meta.has(Meta::FRAGMENT) {
        match fragment::judge_services(now_ns, meta, tables, ct) {
            Ok(j) => j,
            Err(fragment::Refused::Drop(reason)) => return Outcome::drop(reason),
            Err(fragment::Refused::NoBackend(f)) => return refuse(frame, meta, tables, f),
        }
    } else {
        match service::judge(now_ns, meta, tables, ct, true) {
            Ok(j) => j,
            Err(n) => return refuse(frame, meta, tables, n.frontend),
        }
    };
    if let Judged::Done(v @ PolicyVerdict::Drop { reason, .. }) = j.judged {
        return Outcome {
            policy: Some(v),
            ..Outcome::drop(reason.into())
        };
    }
    // The packet as the stages after the service stage see it: translated to its backend.
    let translated;
    let routed = match j.nat {
        service::Nat::ToBackend(b) => {
            translated = service::translate(meta, b);
            &translated
        }
        _ => meta,
    };
    // Stage 7: DNS inspection, of the packet as routing sees it.
    if tables.has_dns()
        && let Some(o) = dns::inspect(now_ns, frame, (meta, routed), &j.judged, tables, ct)
    {
        return o;
    }
    let judgement = Judgement {
        judged: Some(j.judged),
        nat: j.nat,
        balanced: j.service,
    };
    tail(
        now_ns,
        ingress,
        frame,
        (meta, routed),
        tables,
        ct,
        judgement,
    )
}

/// What the tail of [`decide`] is given: the judgement of stages 4 to 6 (`None`: not judged,
/// the passthrough floor), the service stage's translation and, for a new balanced connection,
/// what its entries hold. The path without services builds it of constants, which the
/// inlined tail then folds away.
struct Judgement {
    judged: Option<Judged>,
    nat: service::Nat,
    balanced: Option<service::Balanced>,
}

/// Stages 8 to 11 for a packet as `judgement` says, `meta` as it came and `routed` as the
/// stages after the service stage see it.
#[inline(always)]
fn tail(
    now_ns: u64,
    ingress: PortId,
    frame: &mut Frame<'_>,
    (meta, routed): (&Meta, &Meta),
    tables: &Tables,
    ct: &mut Conntrack,
    Judgement {
        judged,
        nat,
        balanced,
    }: Judgement,
) -> Outcome {
    // Stage 8: routing.
    let route = route::route(routed, tables, ingress);

    // Stage 8b: conntrack commit. Only an allowed new flow that leaves is tracked: a packet
    // with no route, or whose TTL ran out, creates no state.
    let mut masq_port = None;
    let policy = match judged {
        None => None,
        Some(Judged::Done(v)) => Some(v),
        Some(Judged::Admitted(vacancy)) => match route {
            route::Route::World(_) => {
                if balanced.is_some() {
                    return Outcome::drop(DropReason::SnatFailed);
                }
                let revision = tables.policy().revision();
                match masq::commit(now_ns, ingress, ct, meta, vacancy, revision, tables) {
                    Ok(port) => masq_port = Some(port),
                    Err(o) => return o,
                }
                Some(PolicyVerdict::New)
            }
            route::Route::Local | route::Route::Next(_) | route::Route::Tunnel { .. } => {
                let revision = tables.policy().revision();
                let v = match balanced {
                    None => flow::commit(now_ns, ingress, ct, meta, vacancy, revision, Annex::NONE),
                    Some(b) => {
                        service::commit(now_ns, ingress, ct, (meta, routed), vacancy, revision, b)
                    }
                };
                if let PolicyVerdict::Drop { reason, .. } = v {
                    return Outcome {
                        policy: Some(v),
                        ..Outcome::drop(reason.into())
                    };
                }
                Some(v)
            }
            route::Route::TtlExpired { .. } | route::Route::Drop(_) => {
                Some(PolicyVerdict::Untracked)
            }
        },
    };

    // Stages 9 and 11: NAT and emit. A partial checksum is completed first, on the packet as
    // it came, so the NAT's incremental updates start from a whole one. An expired packet is
    // answered untranslated: its quote is what its sender sent.
    let (verdict, checksum_completed) = match route {
        route::Route::Local => (Verdict::SlowPath, emit::complete_checksum(frame, meta)),
        route::Route::Next(next) => {
            let completed = emit::complete_checksum(frame, meta);
            if nat != service::Nat::None && !nat::rewrite(frame, meta, nat) {
                return Outcome::drop(DropReason::Ipv4Truncated);
            }
            // Sent from the uplink's own MAC when it leaves by the uplink.
            (
                emit::forward(frame, meta, &next, tables.gateway_for(next.port)),
                completed,
            )
        }
        route::Route::World(next) => {
            return masq::outbound(now_ns, frame, (meta, next), tables, ct, (masq_port, policy));
        }
        route::Route::Tunnel { next, peer } => {
            if let Some(v) = underlay::too_big(frame, meta, tables) {
                return Outcome {
                    verdict: v,
                    policy,
                    checksum_completed: false,
                };
            }
            let completed = emit::complete_checksum(frame, meta);
            if nat != service::Nat::None && !nat::rewrite(frame, meta, nat) {
                return Outcome::drop(DropReason::Ipv4Truncated);
            }
            // Stage 10: encapsulation, of the packet as emit readied it.
            let v = match emit::forward(frame, meta, &next, tables.gateway()) {
                Verdict::Forward(_) => underlay::encap(frame, meta, tables, peer),
                v => v,
            };
            (v, completed)
        }
        route::Route::TtlExpired { back } => (
            emit::time_exceeded(frame, meta, &back, tables.gateway()),
            false,
        ),
        route::Route::Drop(reason) => (Verdict::Drop(reason), false),
    };
    Outcome {
        verdict,
        policy,
        checksum_completed,
    }
}

/// A new connection to `frontend` refused for want of a backend: answered to its source, if
/// a route leads back to it.
#[cold]
#[inline(never)]
fn refuse(
    frame: &mut Frame<'_>,
    meta: &Meta,
    tables: &Tables,
    frontend: std::net::SocketAddrV4,
) -> Outcome {
    Outcome::verdict(match tables.route(meta.key.src) {
        Some(back) => emit::refuse(frame, meta, &back, tables.gateway(), frontend),
        None => Verdict::Drop(DropReason::NoServiceBackend),
    })
}

/// What stages 4 and 6 made of a packet ([`judge`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judged {
    /// Decided: a packet of a tracked flow, a related or untracked one, or a drop.
    Done(PolicyVerdict),
    /// A new flow the policy allows: the commit stage tracks it at this place once routing has
    /// found it a way on.
    Admitted(flow::Vacancy),
}

/// Stages 4 and 6 (conntrack lookup, then policy for what it does not know), which [`decide`]
/// runs in [`Mode::Full`] on unfragmented packets and first fragments, for the packet `meta` describes, with `rules` and the flow state
/// `ct`, on the node whose gateway address is `gateway`. Out of line, so the passthrough path's
/// code stays small.
#[inline(never)]
pub fn judge(
    now_ns: u64,
    meta: &Meta,
    gateway: std::net::Ipv4Addr,
    rules: &PolicyTables,
    ct: &mut Conntrack,
) -> Judged {
    match flow::lookup(now_ns, ct, meta, gateway, rules) {
        flow::Tracking::Known(v) => Judged::Done(v),
        flow::Tracking::Unrelated => Judged::Done(policy::admit(rules, meta, now_ns, ct)),
        // A balanced connection's entries, on tables without services: its service is gone,
        // its virtual address leads nowhere and its replies go back as they are.
        flow::Tracking::Service { .. } | flow::Tracking::RevNat { .. } => {
            Judged::Done(match policy::admit(rules, meta, now_ns, ct) {
                PolicyVerdict::New => PolicyVerdict::Untracked,
                v => v,
            })
        }
        flow::Tracking::New(vacancy) => match policy::admit(rules, meta, now_ns, ct) {
            PolicyVerdict::New => Judged::Admitted(vacancy),
            v => Judged::Done(v),
        },
    }
}

/// Stages 4, 6 and 8b as [`decide`] runs them on a packet that routing sends on (received on
/// port `ingress`): the policy verdict, with any new flow committed. For benchmarks and tests
/// that judge flows without frames.
pub fn flow_and_policy(
    now_ns: u64,
    ingress: PortId,
    meta: &Meta,
    gateway: std::net::Ipv4Addr,
    rules: &PolicyTables,
    ct: &mut Conntrack,
) -> PolicyVerdict {
    match judge(now_ns, meta, gateway, rules, ct) {
        Judged::Done(v) => v,
        Judged::Admitted(vacancy) => flow::commit(
            now_ns,
            ingress,
            ct,
            meta,
            vacancy,
            rules.revision(),
            Annex::NONE,
        ),
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod state_tests;

#[cfg(test)]
mod service_tests;

#[cfg(test)]
mod dns_tests;

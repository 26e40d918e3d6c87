//! **Masquerade**: a pod's connection to the world leaves the uplink from the node's underlay
//! address, and the world's replies find their way back to the pod, through the connection
//! tracking every worker shares.
//!
//! A masqueraded connection has two entries, as a balanced connection does:
//! - the **connection's entry**, under the pod's own 5-tuple `P:p → W:w`, stage byte
//!   [`STAGE_MASQ`], with its state and policy revision, and in `ext` the port `n` the
//!   connection uses on the node's address `N`;
//! - the **reverse entry**, under `N:n → W:w`, stage byte [`STAGE_MASQ_REV`], which the
//!   world's replies find; its revision field holds the slot index of the connection's entry
//!   ([`Conntrack::entry_at`]), and its state follows the connection's on every reply.
//!
//! The port is the pod's own when `N:p → W:w` is free (so a capture on either side shows the
//! same port), else the first free one of 16 candidates from the flow's hash in
//! 32768..=60999, else the connection is refused (`snat-failed`). ICMP echo keeps its
//! identifier (the reply carries it back; two pods pinging one host with one identifier at
//! once: the second is refused).
//!
//! What it does not do (yet): fragments, ICMP errors from the world about a masqueraded
//! connection (they are dropped: no reverse entry names them), and connections a service
//! balanced to a backend in the world. Each is refused as `snat-failed`, never sent with the
//! pod's address.
//!
//! Costs: a tracked connection's packet to the world probes the table once more than a pod
//! to pod packet (for its port), and refreshes its reverse entry with one more probe; a reply
//! costs its probe and one slot read for the connection's entry.

use std::net::SocketAddrV4;

use super::flow::{self, Vacancy};
use super::service::Nat;
use super::{Meta, Outcome, emit, nat};
use crate::conntrack::{Annex, Conntrack, CtRefusal, FlowKey, Probe};
use crate::frame::Frame;
use crate::policy::{PolicyDropReason, PolicyVerdict};
use crate::stats::DropReason;
use crate::tables::{PortId, Tables};
use crate::wire::ip::proto;

/// The stage byte of a masqueraded connection's entry (see the module documentation).
pub const STAGE_MASQ: u8 = 3;
/// The stage byte of a masqueraded connection's reverse entry.
pub const STAGE_MASQ_REV: u8 = 4;

/// The ports masquerade picks from when a pod's own is taken on the node's address.
const PORTS: std::ops::RangeInclusive<u16> = 32768..=60999;
/// Candidates tried before a new connection is refused.
const TRIES: u32 = 16;

/// The key of the connection `key` as the world sees it, from `node`'s port `port`.
#[inline]
fn outside(key: &FlowKey, node: std::net::Ipv4Addr, port: u16) -> FlowKey {
    FlowKey {
        src: node,
        sport: port,
        // ICMP echo's identifier is both "ports" of its key.
        dport: if key.proto == proto::ICMP {
            port
        } else {
            key.dport
        },
        ..*key
    }
}

/// Whether `meta` can be masqueraded at all: a whole TCP segment, UDP datagram or ICMP echo.
#[inline]
fn supported(meta: &Meta) -> bool {
    !meta.has(Meta::FRAGMENT)
        && !meta.has(Meta::ICMP_ERROR)
        && matches!(meta.key.proto, proto::TCP | proto::UDP | proto::ICMP)
}

/// Stage 8b for a new connection to the world the policy allowed, at `vacancy` (from the
/// probe of `meta`'s key), owned by `ingress`: picks its port on the node's address and
/// creates both entries. The port, or the drop.
#[inline(never)]
pub fn commit(
    now: u64,
    ingress: PortId,
    ct: &mut Conntrack,
    meta: &Meta,
    vacancy: Vacancy,
    revision: u64,
    tables: &Tables,
) -> Result<u16, Outcome> {
    let (Some(up), true) = (tables.uplink(), supported(meta)) else {
        return Err(Outcome::drop(DropReason::SnatFailed));
    };
    let k = &meta.key;
    let hash = super::service::flow_hash(k);
    let candidates =
        std::iter::once(k.sport).chain((0..TRIES).filter(|_| k.proto != proto::ICMP).map(|i| {
            let span = u32::from(PORTS.end() - PORTS.start()) + 1;
            PORTS.start() + (hash.wrapping_add(i.wrapping_mul(0x9e37)) % span) as u16
        }));
    for port in candidates {
        let out = outside(k, up.ip, port);
        let (slot, reuse) = match ct.probe(now, &out) {
            Probe::Vacant { slot, reuse } => (slot, reuse),
            _ => continue,
        };
        let own = Annex {
            ext: u32::from(port),
            stage: STAGE_MASQ,
        };
        let entry = ct
            .insert_with(
                now,
                vacancy.0,
                vacancy.1,
                k,
                meta.tcp_flags,
                revision,
                ingress,
                own,
            )
            .map_err(refused)?;
        let reverse = Annex {
            ext: 0,
            stage: STAGE_MASQ_REV,
        };
        let leader = u64::from(Conntrack::index_of(entry));
        ct.insert_with(
            now,
            slot,
            reuse,
            &out,
            meta.tcp_flags,
            leader,
            ingress,
            reverse,
        )
        .map_err(refused)?;
        return Ok(port);
    }
    Err(Outcome::drop(DropReason::SnatFailed))
}

fn refused(r: CtRefusal) -> Outcome {
    let reason = match r {
        CtRefusal::Full => PolicyDropReason::CtFull,
        CtRefusal::EndpointLimit => PolicyDropReason::CtEndpointLimit,
    };
    Outcome {
        policy: Some(PolicyVerdict::Drop {
            reason,
            direction: None,
            rule: None,
        }),
        ..Outcome::drop(reason.into())
    }
}

/// The node port of the tracked masqueraded connection `meta` belongs to (a pod's packet to
/// the world), with its reverse entry refreshed to follow it. `None` if `meta`'s flow is no
/// masqueraded connection.
#[inline(never)]
pub fn port_of(now: u64, ct: &Conntrack, meta: &Meta, tables: &Tables) -> Option<u16> {
    let up = tables.uplink()?;
    if !supported(meta) {
        return None;
    }
    let Probe::Hit {
        slot,
        orig: true,
        stage: STAGE_MASQ,
    } = ct.probe(now, &meta.key)
    else {
        return None;
    };
    let port = ct.ext(slot) as u16;
    if let Probe::Hit {
        slot: rev,
        stage: STAGE_MASQ_REV,
        ..
    } = ct.probe(now, &outside(&meta.key, up.ip, port))
    {
        ct.follow(now, rev, slot);
    }
    Some(port)
}

/// Stages 9 to 11 for a pod's packet to the world (`next`: the world's next hop), judged
/// `policy`, whose connection's port is `port` if it was committed just now: masqueraded to
/// the node's address and sent from the uplink's MAC. A packet of a tracked connection finds
/// its port in the table; the world's own connection to a pod (a reply here) goes back as it
/// is.
#[inline(never)]
pub fn outbound(
    now: u64,
    frame: &mut Frame<'_>,
    (meta, next): (&Meta, crate::tables::Neighbor),
    tables: &Tables,
    ct: &mut Conntrack,
    (port, policy): (Option<u16>, Option<PolicyVerdict>),
) -> Outcome {
    let Some(up) = tables.uplink() else {
        return Outcome::drop(DropReason::NoRoute);
    };
    let port = port.or_else(|| port_of(now, ct, meta, tables));
    let nat = match (port, policy) {
        (Some(p), _) => Nat::Masquerade(SocketAddrV4::new(up.ip, p)),
        (None, Some(PolicyVerdict::Reply)) => Nat::None,
        (None, _) => return Outcome::drop(DropReason::SnatFailed),
    };
    let completed = emit::complete_checksum(frame, meta);
    if nat != Nat::None && !nat::rewrite(frame, meta, nat) {
        return Outcome::drop(DropReason::Ipv4Truncated);
    }
    Outcome {
        verdict: emit::forward(frame, meta, &next, tables.gateway_for(next.port)),
        policy,
        checksum_completed: completed,
    }
}

/// A packet from the uplink to the node's own address that is not ESP: a reply of a
/// masqueraded connection, translated back to its pod and sent on; anything else is for no
/// one (`no-route`). The connection's policy is checked again if it changed, as for any
/// tracked flow.
#[inline(never)]
pub fn inbound(
    now: u64,
    frame: &mut Frame<'_>,
    meta: &Meta,
    tables: &Tables,
    ct: &mut Conntrack,
) -> Outcome {
    let no_route = Outcome::drop(DropReason::NoRoute);
    if !supported(meta) {
        return no_route;
    }
    let Probe::Hit {
        slot: rev,
        orig: false,
        stage: STAGE_MASQ_REV,
    } = ct.probe(now, &meta.key)
    else {
        return no_route;
    };
    let Some((leader, conn, STAGE_MASQ, port)) = ct.entry_at(now, ct.revision(rev)) else {
        return no_route;
    };
    // The slot may hold another connection since: it must be this reply's.
    let ours = conn.dst == meta.key.src
        && conn.proto == meta.key.proto
        && port == u32::from(meta.key.dport)
        && (conn.proto == proto::ICMP || conn.dport == meta.key.sport);
    if !ours {
        return no_route;
    }
    let verdict = flow::track(
        now,
        ct,
        leader,
        false,
        meta.tcp_flags,
        tables.policy(),
        |_| None,
    );
    if let PolicyVerdict::Drop { reason, .. } = verdict {
        return Outcome {
            policy: Some(verdict),
            ..Outcome::drop(reason.into())
        };
    }
    ct.follow(now, rev, leader);
    let pod = SocketAddrV4::new(conn.src, conn.sport);
    let Some(next) = tables.route(conn.src) else {
        return no_route;
    };
    if meta.ttl <= 1 {
        return Outcome::drop(DropReason::TtlExceeded);
    }
    let completed = emit::complete_checksum(frame, meta);
    let to = if conn.proto == proto::ICMP {
        SocketAddrV4::new(conn.src, meta.key.dport)
    } else {
        pod
    };
    if !nat::rewrite(frame, meta, Nat::Unmasquerade(to)) {
        return Outcome::drop(DropReason::Ipv4Truncated);
    }
    Outcome {
        verdict: emit::forward(frame, meta, &next, tables.gateway()),
        policy: Some(verdict),
        checksum_completed: completed,
    }
}

#[cfg(test)]
#[path = "masq_tests.rs"]
mod tests;

//! Stage 3b, **fragments**: an IPv4 fragment is judged as part of its datagram.
//!
//! Only a datagram's first fragment carries the transport header, so only it can be judged on
//! its ports. [`judge`] runs the conntrack and policy stages (4 and 6) on a first fragment as on
//! any packet and records its ports and its fate in the fragment table
//! ([`crate::fragments`], on the conntrack handle). A later fragment takes its datagram's
//! record:
//! - none (its first fragment was not seen, or long ago): dropped, `frag-no-head`;
//! - the first fragment was dropped: dropped with the same reason;
//! - the first fragment passed: the conntrack lookup and the policy stage run on the packet with
//!   the datagram's ports, so it refreshes the flow its first fragment opened or belongs to, and
//!   a policy narrowed since stops it too. A later fragment never opens a flow: if the flow is
//!   not tracked (its first fragment was a TCP RST or an ICMP error, or the entry went since),
//!   it passes untracked when the policy allows its ports.
//!
//! So an allowed datagram arrives whole and a denied one is dropped whole, every fragment
//! counted by the same reason; the receiver reassembles. Runs in `full` mode only: in
//! `passthrough` nothing is judged on ports. Unfragmented packets never come here.
//!
//! A first fragment the policy allows is recorded as passed before the commit stage (8b) tracks
//! its flow. If routing finds it no way on, or the commit refuses it (`ct-full`,
//! `ct-endpoint-limit`), its later fragments still pass, untracked, where the policy allows their
//! ports: they carry nothing the policy would not let through, and the receiver discards a
//! datagram it cannot reassemble.

use std::net::Ipv4Addr;

use super::{Judged, Meta, flow, policy, service};
use crate::conntrack::{Conntrack, FlowKey};
use crate::fragments::{Datagram, Head};
use crate::policy::{PolicyTables, PolicyVerdict};
use crate::stats::DropReason;
use crate::tables::Tables;

/// What stages 3b to 6 make of a fragment (`meta` has [`Meta::FRAGMENT`]), as
/// [`super::judge`] says for other packets (a first fragment's new flow is `Admitted`, for the
/// commit stage), or the drop of a later fragment by its datagram's record (`frag-no-head`, or
/// its first fragment's reason). Mutates only `ct` (its flow entries and fragment records).
#[inline(never)]
pub fn judge(
    now: u64,
    meta: &Meta,
    gateway: Ipv4Addr,
    rules: &PolicyTables,
    ct: &mut Conntrack,
) -> Result<Judged, DropReason> {
    if !meta.has(Meta::LATER_FRAGMENT) {
        let j = super::judge(now, meta, gateway, rules, ct);
        record(now, meta, ct, dropped(&j));
        return Ok(j);
    }
    let m = later(now, meta, ct)?;
    Ok(Judged::Done(
        match flow::lookup(now, ct, &m, gateway, rules) {
            flow::Tracking::Known(v) => v,
            // A later fragment never opens a flow (nor, on tables without services, is it
            // translated).
            flow::Tracking::Unrelated
            | flow::Tracking::New(_)
            | flow::Tracking::Service { .. }
            | flow::Tracking::RevNat { .. } => untracked(rules, &m, now, ct),
        },
    ))
}

/// [`judge`] on tables with services: a first fragment goes through the service stage as any
/// packet (balanced, or refused for want of a backend: recorded as `no-service-backend`), and
/// a later fragment takes its datagram's ports and then the translation of the connection its
/// first fragment opened or belongs to (its addresses only: it has no transport header). A
/// later fragment never opens a connection, nor is it balanced.
#[inline(never)]
pub fn judge_services(
    now: u64,
    meta: &Meta,
    tables: &Tables,
    ct: &mut Conntrack,
) -> Result<service::Judgement, Refused> {
    if !meta.has(Meta::LATER_FRAGMENT) {
        let j = service::judge(now, meta, tables, ct, true);
        let fate = match &j {
            Ok(j) => dropped(&j.judged),
            Err(_) => Some(DropReason::NoServiceBackend),
        };
        record(now, meta, ct, fate);
        return j.map_err(|n| Refused::NoBackend(n.frontend));
    }
    let m = later(now, meta, ct).map_err(Refused::Drop)?;
    service::judge(now, &m, tables, ct, false).map_err(|n| Refused::NoBackend(n.frontend))
}

/// Why [`judge_services`] ends a fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Dropped for this reason (`frag-no-head`, or its first fragment's).
    Drop(DropReason),
    /// A first fragment opening a connection to this frontend, which has no backend.
    NoBackend(std::net::SocketAddrV4),
}

/// The drop reason of a judgement, if it is one.
fn dropped(j: &Judged) -> Option<DropReason> {
    match j {
        Judged::Done(PolicyVerdict::Drop { reason, .. }) => Some((*reason).into()),
        _ => None,
    }
}

/// Records a first fragment's ports and fate for its datagram's later fragments.
fn record(now: u64, meta: &Meta, ct: &mut Conntrack, dropped: Option<DropReason>) {
    let head = Head {
        sport: meta.key.sport,
        dport: meta.key.dport,
        dropped,
    };
    ct.fragments().record(now, &datagram(meta), head);
}

/// A later fragment as its datagram's first fragment was: with its ports. Its drop when the
/// first fragment was dropped, or was not seen (`frag-no-head`).
fn later(now: u64, meta: &Meta, ct: &mut Conntrack) -> Result<Meta, DropReason> {
    let head = ct
        .fragments()
        .lookup(now, &datagram(meta))
        .ok_or(DropReason::FragNoHead)?;
    if let Some(r) = head.dropped {
        return Err(r);
    }
    Ok(Meta {
        key: FlowKey {
            sport: head.sport,
            dport: head.dport,
            ..meta.key
        },
        ..*meta
    })
}

/// What identifies a fragment's datagram.
fn datagram(meta: &Meta) -> Datagram {
    Datagram {
        src: meta.key.src,
        dst: meta.key.dst,
        proto: meta.key.proto,
        id: meta.ip_id,
    }
}

/// The policy's verdict on a packet that is never tracked.
fn untracked(rules: &PolicyTables, m: &Meta, now: u64, ct: &Conntrack) -> PolicyVerdict {
    match policy::admit(rules, m, now, ct) {
        PolicyVerdict::New => PolicyVerdict::Untracked,
        v => v,
    }
}

#[cfg(test)]
#[path = "fragment_tests.rs"]
mod tests;

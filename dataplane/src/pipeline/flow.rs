//! Stages 4 and 8b, **conntrack lookup** and **commit**: the flow state of a packet.
//!
//! [`lookup`] finds the packet's flow (either direction, one probe) or the flow an ICMP error
//! quotes (if the error's addresses match the quote: see [`lookup`]), advances a TCP flow's
//! state, and revalidates an entry that was allowed under an older policy revision. It answers
//! [`Tracking::Known`] with the verdict for a packet of a tracked flow, [`Tracking::New`] with
//! where a new entry would go, or [`Tracking::Unrelated`] for an ICMP error that relates to
//! nothing. The policy stage judges a new flow; [`commit`] tracks it once allowed and routed (a
//! packet that goes nowhere creates no state), owned by the port it came from, within that
//! port's share of the table.
//!
//! Later stages that keep per-flow state find it on the entry this stage found (its `ext`
//! field and its `stage` byte), without a second lookup. The service stage has two kinds of
//! entry ([`STAGE_SERVICE`], [`STAGE_REVNAT`]): a hit on either is not the end of the story, and
//! this stage says so ([`Tracking::Service`], [`Tracking::RevNat`]) rather than deciding.
//!
//! The table is shared by every worker ([`Conntrack`] is a handle): a flow's two directions may
//! arrive on different workers and still meet one entry. A slot handle can go stale if another
//! worker moves the entry in the nanoseconds between probe and use: the table then refuses the
//! write, and a SYN on such a handle takes the new-flow path, whose `insert` looks again under
//! the table's lock.
//!
//! # Narrowed policy
//! Each entry stores the policy revision (low 32 bits) that last allowed it. On a hit whose
//! revision differs from the tables', the entry's original direction is evaluated again: still
//! allowed → the revision is updated; denied → the entry is removed and the packet dropped. So
//! a narrowed policy stops established connections on their very next packet after the swap, at
//! the cost of one policy evaluation per live flow per change.

use std::net::Ipv4Addr;

use super::Meta;
use crate::conntrack::{Annex, Conntrack, CtRefusal, Probe};
use crate::policy::{PolicyDropReason, PolicyTables, PolicyVerdict, evaluate};
use crate::services::{BackendId, FrontendId};
use crate::tables::PortId;
use crate::wire::ip::proto;
use crate::wire::tcp::flags;

/// Where a new flow's entry would go: a slot, and whether it holds an expired entry to reuse.
pub type Vacancy = (usize, bool);

/// The stage byte of a service connection's entry under its **virtual** address (client →
/// frontend): its `ext` is the [`BackendId`] the connection was balanced to. It carries no
/// policy decision of its own: the connection's state lives in its [`STAGE_REVNAT`] entry.
pub const STAGE_SERVICE: u8 = 1;

/// The stage byte of a service connection's own entry, under the backend's address (client →
/// backend, the flow the policy allowed): its `ext` is the [`FrontendId`] whose address the
/// backend's replies take back.
pub const STAGE_REVNAT: u8 = 2;

/// What [`lookup`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tracking {
    /// A packet of a tracked flow (`Established`, `Reply`), an ICMP error about one
    /// (`Related`), or a packet of a flow the current policy no longer allows (`Drop`).
    Known(PolicyVerdict),
    /// Not tracked: the policy stage decides.
    New(Vacancy),
    /// An ICMP error related to no tracked flow: the policy stage decides, and it is never
    /// tracked.
    Unrelated,
    /// A packet of a balanced connection from its backend (`Reply`), or an ICMP error about
    /// the connection's packet to its backend (`Related`): the source must become frontend
    /// `FrontendId`'s address again.
    RevNat(PolicyVerdict, FrontendId),
    /// A packet of a balanced connection addressed to its virtual address: the entry at `slot`
    /// says it goes to `backend`; the service stage carries on from there.
    Service {
        /// The service entry.
        slot: usize,
        /// The backend the connection was balanced to.
        backend: BackendId,
    },
}

/// Stage 4. See the module documentation. Mutates only `ct`. `gateway` is the gateway's
/// address: an ICMP error it sends may quote any flow to its destination.
#[inline]
pub fn lookup(
    now: u64,
    ct: &mut Conntrack,
    meta: &Meta,
    gateway: Ipv4Addr,
    rules: &PolicyTables,
) -> Tracking {
    if meta.has(Meta::ICMP_ERROR) {
        // An error is related to the flow it quotes only if it is what it claims: sent to the
        // quoted packet's source, by its destination (or by the gateway, which builds errors
        // itself), as Linux conntrack checks. Otherwise it is judged on its own, and never
        // tracked: a pod cannot slip a packet past policy by quoting someone else's flow.
        if let Some(inner) = &meta.quoted
            && meta.key.dst == inner.src
            && (meta.key.src == inner.dst || meta.key.src == gateway)
            && let Probe::Hit { slot, orig, stage } = ct.probe(now, inner)
            && revalidate(ct, slot, rules).is_none()
        {
            // An error about the client's packet to a backend goes back to the client, which
            // only ever knew the virtual address.
            if stage == STAGE_REVNAT && orig {
                return Tracking::RevNat(PolicyVerdict::Related, ct.ext(slot));
            }
            return Tracking::Known(PolicyVerdict::Related);
        }
        return Tracking::Unrelated;
    }
    let fresh_syn =
        meta.key.proto == proto::TCP && meta.tcp_flags & (flags::SYN | flags::ACK) == flags::SYN;
    match ct.probe(now, &meta.key) {
        // A SYN on a closing entry starts a new connection on the same tuple.
        Probe::Hit { slot, .. } if fresh_syn && ct.is_closing(slot) => Tracking::New((slot, true)),
        Probe::Hit {
            slot,
            orig: true,
            stage: STAGE_SERVICE,
        } => Tracking::Service {
            slot,
            backend: ct.ext(slot),
        },
        Probe::Hit { slot, orig, stage } => {
            let v = track(now, ct, slot, orig, meta.tcp_flags, rules);
            if stage == STAGE_REVNAT && v == PolicyVerdict::Reply {
                return Tracking::RevNat(v, ct.ext(slot));
            }
            Tracking::Known(v)
        }
        Probe::Vacant { slot, reuse } => Tracking::New((slot, reuse)),
    }
}

/// A packet of the tracked flow at `slot`, in direction `orig`: revalidated against the
/// current policy (a drop if it no longer allows the flow), else its state advanced and
/// `Established` or `Reply`.
#[inline]
pub fn track(
    now: u64,
    ct: &mut Conntrack,
    slot: usize,
    orig: bool,
    tcp_flags: u8,
    rules: &PolicyTables,
) -> PolicyVerdict {
    if let Some(drop) = revalidate(ct, slot, rules) {
        return drop;
    }
    ct.update(now, slot, orig, tcp_flags);
    if orig {
        PolicyVerdict::Established
    } else {
        PolicyVerdict::Reply
    }
}

/// Checks the entry at `slot` against the current policy if it was allowed under another
/// revision: allowed → stamps the revision and returns `None`; denied → removes the entry and
/// returns the drop.
#[inline(always)]
fn revalidate(ct: &mut Conntrack, slot: usize, rules: &PolicyTables) -> Option<PolicyVerdict> {
    if ct.revision(slot) == rules.revision() as u32 {
        return None;
    }
    recheck(ct, slot, rules)
}

#[cold]
fn recheck(ct: &mut Conntrack, slot: usize, rules: &PolicyTables) -> Option<PolicyVerdict> {
    match evaluate(rules, &ct.orig_key(slot)).drop() {
        None => {
            ct.set_revision(slot, rules.revision());
            None
        }
        Some(d) => {
            ct.remove_for_policy(slot);
            Some(d)
        }
    }
}

/// Stage 8b: tracks a new flow the policy stage allowed and routing sent on, at the place
/// [`lookup`] found, owned by `ingress` (the port it came from). `New`; or a drop:
/// `ct-endpoint-limit` when that port has its share of the table, `ct-full` when the table is
/// full and the flow's probe path holds nothing to evict (both counted in the table's stats).
/// The entry is written with `annex` (a later stage's state for it).
#[inline]
pub fn commit(
    now: u64,
    ingress: PortId,
    ct: &mut Conntrack,
    meta: &Meta,
    (slot, reuse): Vacancy,
    revision: u64,
    annex: Annex,
) -> PolicyVerdict {
    let reason = match ct.insert_with(
        now,
        slot,
        reuse,
        &meta.key,
        meta.tcp_flags,
        revision,
        ingress,
        annex,
    ) {
        Ok(_) => return PolicyVerdict::New,
        Err(CtRefusal::Full) => PolicyDropReason::CtFull,
        Err(CtRefusal::EndpointLimit) => PolicyDropReason::CtEndpointLimit,
    };
    PolicyVerdict::Drop {
        reason,
        direction: None,
        rule: None,
    }
}

#[cfg(test)]
#[path = "flow_tests.rs"]
mod tests;

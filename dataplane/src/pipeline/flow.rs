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
//! entry ([`STAGE_SERVICE`], [`STAGE_REVNAT`]): a hit on either is not the end of the story
//! (the policy must recheck a balanced connection as translated, and a reply must reach the
//! connection's entry), and this stage says so ([`Tracking::Service`], [`Tracking::RevNat`])
//! rather than deciding.
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

use std::net::{Ipv4Addr, SocketAddrV4};

use super::Meta;
use crate::conntrack::{Annex, Conntrack, CtRefusal, Probe};
use crate::policy::{Learned, PolicyDropReason, PolicyTables, PolicyVerdict, evaluate_with};
use crate::services::{BackendId, FrontendId};
use crate::tables::PortId;
use crate::wire::ip::proto;
use crate::wire::tcp::flags;

/// Where a new flow's entry would go: a slot, and whether it holds an expired entry to reuse.
pub type Vacancy = (usize, bool);

/// The stage byte of a balanced connection's entry, under the client's own 5-tuple (client →
/// frontend): its state, its policy revision (of the translated flow, which the policy judged)
/// and, in `ext`, the [`BackendId`] it was balanced to.
pub const STAGE_SERVICE: u8 = 1;

/// The stage byte of a balanced connection's reverse entry, under the backend's 5-tuple (client
/// → backend), which the backend's replies find: `ext` is the [`FrontendId`] whose address
/// they take back, and the revision field holds the slot index of the connection's entry
/// ([`Conntrack::find_at`]) instead of a policy revision. Its state follows the connection's.
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
    /// A packet of a balanced connection from its backend (or, `related`, an ICMP error about
    /// the client's packet to its backend), which found the connection's reverse entry at
    /// `slot`; nothing is advanced yet: the service stage finds the connection's entry (at
    /// slot index `leader`, or by its key) and gives the packet `frontend`'s address back.
    RevNat {
        /// The reverse entry.
        slot: usize,
        /// The frontend whose address the packet takes back.
        frontend: FrontendId,
        /// Where the connection's entry was when the reverse entry was made.
        leader: u32,
        /// An ICMP error about the connection (`Related`), not a packet of it.
        related: bool,
    },
    /// A client's packet of a balanced connection, whose entry is at `slot` (not advanced yet:
    /// the policy must recheck it as translated); it goes to `backend`.
    Service {
        /// The connection's entry.
        slot: usize,
        /// The backend the connection was balanced to.
        backend: BackendId,
    },
}

/// Stage 4. See the module documentation. Mutates only `ct`. `gateway` is the gateway's
/// address: an ICMP error it sends may quote any flow to its destination.
#[inline(always)]
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
        {
            match stage {
                // An error about the client's packet to a backend goes back to the client,
                // which only ever knew the virtual address.
                STAGE_REVNAT if orig => {
                    return Tracking::RevNat {
                        slot,
                        frontend: ct.ext(slot),
                        leader: ct.revision(slot),
                        related: true,
                    };
                }
                // A balanced connection's entry is rechecked as translated, by its packets.
                STAGE_SERVICE | STAGE_REVNAT => return Tracking::Known(PolicyVerdict::Related),
                _ if revalidate(ct, slot, rules, |_| None).is_none() => {
                    return Tracking::Known(PolicyVerdict::Related);
                }
                _ => {}
            }
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
        Probe::Hit {
            slot,
            orig: false,
            stage: STAGE_REVNAT,
        } => Tracking::RevNat {
            slot,
            frontend: ct.ext(slot),
            leader: ct.revision(slot),
            related: false,
        },
        Probe::Hit { slot, orig, .. } => {
            Tracking::Known(track(now, ct, slot, orig, meta.tcp_flags, rules, |_| None))
        }
        Probe::Vacant { slot, reuse } => Tracking::New((slot, reuse)),
    }
}

/// A packet of the tracked flow at `slot`, in direction `orig`: revalidated against the
/// current policy (a drop if it no longer allows the flow; `to` gives, only if the policy
/// must be asked, the address the flow goes to as the policy sees it, where that is not the
/// one its entry holds: a balanced connection's backend), else its state advanced and
/// `Established` or `Reply`.
#[inline]
pub fn track(
    now: u64,
    ct: &mut Conntrack,
    slot: usize,
    orig: bool,
    tcp_flags: u8,
    rules: &PolicyTables,
    to: impl FnOnce(&Conntrack) -> Option<SocketAddrV4>,
) -> PolicyVerdict {
    if let Some(drop) = revalidate(ct, slot, rules, to) {
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
fn revalidate(
    ct: &mut Conntrack,
    slot: usize,
    rules: &PolicyTables,
    to: impl FnOnce(&Conntrack) -> Option<SocketAddrV4>,
) -> Option<PolicyVerdict> {
    if ct.revision(slot) == rules.revision() as u32 {
        return None;
    }
    let to = to(ct);
    recheck(ct, slot, rules, to)
}

#[cold]
fn recheck(
    ct: &mut Conntrack,
    slot: usize,
    rules: &PolicyTables,
    to: Option<SocketAddrV4>,
) -> Option<PolicyVerdict> {
    let mut flow = ct.orig_key(slot);
    if let Some(to) = to {
        flow.dst = *to.ip();
        flow.dport = to.port();
    }
    // A flow already open: an address its endpoint learned counts while the table holds it,
    // past its TTL (no clock needed).
    let learned = Learned {
        table: ct.fqdn(),
        now: 0,
        established: true,
    };
    match evaluate_with(rules, &flow, Some(learned)).drop() {
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

//! Stage 5, **service translation**: a connection to a service's virtual address is balanced
//! to a backend and kept there; a backend's replies take the virtual address back.
//!
//! # Two entries per balanced connection, one probe per packet
//! A connection from client `C:c` to frontend `V:v`, balanced to backend `B:b`, has two entries
//! in the flow table, both owned by the client's port:
//! - the **connection's entry**, under `C:c → V:v` (the client's own 5-tuple, so its packets
//!   find it in one probe, and the worker's prefetch pass finds it too), stage byte
//!   [`STAGE_SERVICE`]: the TCP state, the policy revision, and in `ext` the [`BackendId`].
//!   It is how a connection stays on its backend whatever the service's Maglev table becomes;
//!   the policy rechecks it as the flow to the backend;
//! - the **reverse entry**, under `C:c → B:b`, stage byte [`STAGE_REVNAT`], which the
//!   backend's replies find in one probe: in `ext` the [`FrontendId`] whose address they take
//!   back, and in its revision field the slot index of the connection's entry, which a reply
//!   then reads directly ([`Conntrack::find_at`]: one slot, no hashing) to advance the
//!   connection's state; only if that entry moved since (a removal shifted it back) does the
//!   reply probe for it by its key, and the index is corrected. The reverse entry follows the
//!   connection's state on every reply ([`Conntrack::follow`]), so it expires with it.
//!
//! One entry cannot serve both directions: the table finds an entry by its 5-tuple, and the
//! client's packets and the backend's replies share none. Cilium has the same two (its
//! `CT_SERVICE` entry and the connection's own), at two lookups for a client's packet.
//!
//! # A new connection
//! A packet to a frontend that no entry knows picks its backend ([`select`]): the client's
//! affinity record when the service has `ClientIP` affinity and the backend still takes
//! connections, else the Maglev table at the hash of the 5-tuple (or a random slot of it, with
//! the `random` algorithm). Then the policy stage judges the translated flow, routing routes
//! it, and the commit stage creates both entries. A frontend with no usable backend refuses
//! the connection (`no-service-backend`): a TCP RST, an ICMP port unreachable for UDP.
//!
//! # Fragments
//! A datagram's first fragment is balanced as any packet; a later fragment, which has no
//! ports, takes its datagram's from the fragment stage and then the translation of the
//! connection its first fragment opened (addresses only), so a fragmented datagram reaches one
//! backend whole, and a backend's fragmented answer comes back from the virtual address whole.
//! A later fragment never opens a connection.
//!
//! What it does not do: it rewrites nothing (the NAT stage does, from the [`Nat`] this stage
//! returns), and it chooses no backend set (the control side gives each frontend only the
//! backends that take new connections).

use std::net::SocketAddrV4;

use super::flow::{self, STAGE_REVNAT, STAGE_SERVICE, Tracking, Vacancy};
use super::{Judged, Meta, policy};
use crate::conntrack::{Annex, Conntrack, FlowKey, Probe};
use crate::maglev::mix;
use crate::policy::PolicyVerdict;
use crate::services::{Algorithm, Backend, BackendId, Frontend, FrontendId, ServiceTables};
use crate::tables::Tables;

/// What the NAT stage (9) does to a packet the service stage translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// Nothing.
    None,
    /// A client's packet: the destination becomes the backend.
    ToBackend(SocketAddrV4),
    /// A backend's reply: the source becomes the frontend.
    FromFrontend(SocketAddrV4),
    /// A pod's packet to the world: the source becomes the node's underlay address and the
    /// connection's port there (masquerade).
    Masquerade(SocketAddrV4),
    /// The world's reply to a masqueraded connection: the destination becomes the pod's.
    Unmasquerade(SocketAddrV4),
    /// An ICMP error from the network about a client's packet to a backend: the error's source
    /// (if it is the backend) and the quoted destination become the frontend.
    ErrorFromFrontend {
        /// The backend's address, as the error and its quote hold it.
        backend: SocketAddrV4,
        /// The frontend's address, which the client knows.
        frontend: SocketAddrV4,
    },
}

/// What the commit stage needs to create a new balanced connection's two entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Balanced {
    /// The backend the connection's entry names.
    pub backend: BackendId,
    /// The frontend the reverse entry names.
    pub frontend: FrontendId,
}

/// What stages 4 to 6 made of a packet, services included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Judgement {
    /// The flow-state and policy decision.
    pub judged: Judged,
    /// The translation the NAT stage applies if the packet is sent on.
    pub nat: Nat,
    /// For a new balanced connection: what its entries hold.
    pub service: Option<Balanced>,
}

impl Judgement {
    /// A judgement without translation.
    #[inline(always)]
    pub fn plain(judged: Judged) -> Self {
        Judgement {
            judged,
            nat: Nat::None,
            service: None,
        }
    }
}

/// Why a new connection to a frontend was not balanced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoBackend {
    /// The frontend, whose address answers the refusal.
    pub frontend: SocketAddrV4,
}

/// Stages 4 to 6 in [`crate::tables::Mode::Full`], on tables that have services: the
/// conntrack lookup, the service stage on what it found, and the policy stage on the
/// (translated) flow. `Err` when a new connection to a frontend finds no backend. `open`:
/// whether the packet may open a connection (a later fragment may not: it is translated as
/// its datagram's connection is, or judged untranslated and never tracked).
#[inline(never)]
pub fn judge(
    now: u64,
    meta: &Meta,
    tables: &Tables,
    ct: &mut Conntrack,
    open: bool,
) -> Result<Judgement, NoBackend> {
    let untracked = |rules, ct: &Conntrack| {
        Judgement::plain(Judged::Done(match policy::admit(rules, meta, now, ct) {
            PolicyVerdict::New => PolicyVerdict::Untracked,
            v => v,
        }))
    };
    let (gateway, rules, services) = (tables.gateway().ipv4, tables.policy(), tables.services());
    let (vacancy, f) = match flow::lookup(now, ct, meta, gateway, rules) {
        Tracking::Known(v) => return Ok(Judgement::plain(Judged::Done(v))),
        Tracking::Unrelated => {
            return Ok(Judgement::plain(Judged::Done(policy::admit(
                rules, meta, now, ct,
            ))));
        }
        Tracking::RevNat {
            slot,
            frontend,
            leader,
            related,
        } => {
            return Ok(reply(
                now,
                meta,
                rules,
                services,
                ct,
                (slot, frontend, leader),
                related,
            ));
        }
        Tracking::Service { slot, backend } => match services.backend(backend) {
            Some(to) => {
                let v = flow::track(now, ct, slot, true, meta.tcp_flags, rules, |_| Some(to));
                return Ok(Judgement {
                    nat: Nat::ToBackend(to),
                    ..Judgement::plain(Judged::Done(v))
                });
            }
            // The backend is gone from every service: the connection is balanced again, its
            // entry taken over in place (the new backend resets it, knowing nothing of it).
            None => match frontend_of(services, meta) {
                Some(f) if open => ((slot, true), f),
                _ => return Ok(untracked(rules, ct)),
            },
        },
        Tracking::New(_) if !open => return Ok(untracked(rules, ct)),
        Tracking::New(vacancy) => match frontend_of(services, meta) {
            Some(f) => (vacancy, f),
            None => {
                return Ok(Judgement::plain(
                    match policy::admit(rules, meta, now, ct) {
                        PolicyVerdict::New => Judged::Admitted(vacancy),
                        v => Judged::Done(v),
                    },
                ));
            }
        },
    };
    let backend = select(now, &meta.key, f, services.algorithm(), ct)
        .ok_or(NoBackend { frontend: f.addr })?;
    let nat = Nat::ToBackend(backend.addr);
    Ok(
        match policy::admit(rules, &translate(meta, backend.addr), now, ct) {
            PolicyVerdict::New => Judgement {
                judged: Judged::Admitted(vacancy),
                nat,
                service: Some(Balanced {
                    backend: backend.id,
                    frontend: f.id,
                }),
            },
            // Denied, or a packet that opens nothing (a RST, say): sent on translated if allowed.
            v => Judgement {
                nat,
                ..Judgement::plain(Judged::Done(v))
            },
        },
    )
}

/// `meta` as the stages after the service stage see it: addressed to `to`.
#[inline(always)]
pub fn translate(meta: &Meta, to: SocketAddrV4) -> Meta {
    Meta {
        key: FlowKey {
            dst: *to.ip(),
            dport: to.port(),
            ..meta.key
        },
        ..*meta
    }
}

/// A backend's packet that found a balanced connection's reverse entry (`slot`, naming
/// `frontend`, the connection's entry last at `leader`): the connection's entry advanced as
/// for a reply (and rechecked as translated), the reverse entry following it, and the source
/// given the frontend's address back. An ICMP error about the connection (`related`) is only
/// translated. With the connection's entry gone (expired, or removed by a narrowed policy),
/// the packet is judged as a new one would be, untranslated, and never tracked.
#[inline]
fn reply(
    now: u64,
    meta: &Meta,
    rules: &crate::policy::PolicyTables,
    services: &ServiceTables,
    ct: &mut Conntrack,
    (slot, frontend, leader): (usize, FrontendId, u32),
    related: bool,
) -> Judgement {
    let unknown = || {
        Judgement::plain(Judged::Done(match policy::admit(rules, meta, now, ct) {
            PolicyVerdict::New => PolicyVerdict::Untracked,
            v => v,
        }))
    };
    // A service deleted since: its replies go back as they are.
    let Some(fa) = services.frontend_addr(frontend) else {
        return unknown();
    };
    if related {
        let Some(q) = meta.quoted else {
            return unknown();
        };
        return Judgement {
            nat: Nat::ErrorFromFrontend {
                backend: SocketAddrV4::new(q.dst, q.dport),
                frontend: fa,
            },
            ..Judgement::plain(Judged::Done(PolicyVerdict::Related))
        };
    }
    let connection = FlowKey {
        src: meta.key.dst,
        sport: meta.key.dport,
        dst: *fa.ip(),
        dport: fa.port(),
        proto: meta.key.proto,
    };
    let found = ct
        .find_at(now, leader, &connection)
        .map(|(s, _)| s)
        .or_else(|| {
            match ct.probe(now, &connection) {
                Probe::Hit { slot: s, .. } => {
                    // It moved: remember where it is now.
                    ct.set_revision(slot, u64::from(Conntrack::index_of(s)));
                    Some(s)
                }
                Probe::Vacant { .. } => None,
            }
        });
    let Some(s) = found else {
        return unknown();
    };
    let to = |ct: &Conntrack| services.backend(ct.ext(s));
    let v = flow::track(now, ct, s, false, meta.tcp_flags, rules, to);
    ct.follow(now, slot, s);
    match v {
        PolicyVerdict::Drop { .. } => Judgement::plain(Judged::Done(v)),
        v => Judgement {
            nat: Nat::FromFrontend(fa),
            ..Judgement::plain(Judged::Done(v))
        },
    }
}

/// The frontend a packet is addressed to, if any (and if it may open a connection: an ICMP
/// error never does).
#[inline]
fn frontend_of<'s>(services: &'s ServiceTables, meta: &Meta) -> Option<&'s Frontend> {
    if meta.has(Meta::ICMP_ERROR) || services.is_empty() {
        return None;
    }
    services.frontend(meta.key.dst, meta.key.dport, meta.key.proto)
}

/// The backend for a new connection `key` to frontend `f`. With session affinity, a client
/// that has a backend keeps it while that backend still takes new connections; a client that
/// has none (or whose backend stopped) is balanced, and the backend it gets is remembered for
/// the service's timeout, refreshed by each of its connections. `None` if `f` has no backend.
#[inline]
pub fn select(
    now: u64,
    key: &FlowKey,
    f: &Frontend,
    algorithm: Algorithm,
    ct: &Conntrack,
) -> Option<Backend> {
    let affinity = f.affinity_timeout_ns;
    if affinity > 0
        && let Some(fact) = ct.affinity().lookup(now, f.id, key.src)
        && let Some(b) = f.backends.iter().find(|b| b.id == fact.tag)
    {
        ct.affinity()
            .learn(now, f.id, key.src, now.saturating_add(affinity), b.id);
        return Some(*b);
    }
    let hash = match algorithm {
        Algorithm::Maglev => flow_hash(key),
        Algorithm::Random => flow_hash(key) ^ mix(now) as u32,
    };
    let b = f.select(hash)?;
    if affinity > 0 {
        // A client whose remembered backend stopped taking connections keeps the record it
        // has until it expires (a record keeps its first backend): until then each of its
        // connections is balanced on its own.
        ct.affinity()
            .learn(now, f.id, key.src, now.saturating_add(affinity), b.id);
    }
    Some(b)
}

/// The selection hash of a 5-tuple: the same on every worker and every node (no seed), so a
/// flow is balanced alike wherever it is first seen.
#[inline]
pub fn flow_hash(k: &FlowKey) -> u32 {
    let addrs = (u64::from(k.src.to_bits()) << 32) | u64::from(k.dst.to_bits());
    let ports = (u64::from(k.sport) << 32) | (u64::from(k.dport) << 16) | u64::from(k.proto);
    (mix(addrs ^ mix(ports)) >> 32) as u32
}

/// Stage 8b for a new balanced connection the policy allowed (`from` as it came, `to` as
/// translated), at `vacancy` (from the probe of `from`): the connection's entry, then its
/// reverse entry pointing at it. `New`, or the drop of the first refused. If a flow of the
/// client's own holds the translated 5-tuple already (it reached the backend directly from the
/// same port), the reverse entry cannot be made: the connection is tracked, but its replies
/// cannot be told from that flow's.
#[inline(never)]
pub fn commit(
    now: u64,
    ingress: crate::tables::PortId,
    ct: &mut Conntrack,
    (from, to): (&Meta, &Meta),
    vacancy: Vacancy,
    revision: u64,
    b: Balanced,
) -> PolicyVerdict {
    let own = Annex {
        ext: b.backend,
        stage: STAGE_SERVICE,
    };
    let entry = match ct.insert_with(
        now,
        vacancy.0,
        vacancy.1,
        &from.key,
        from.tcp_flags,
        revision,
        ingress,
        own,
    ) {
        Ok(h) => h,
        Err(r) => return refused(r),
    };
    let (slot, reuse) = match ct.probe(now, &to.key) {
        Probe::Vacant { slot, reuse } => (slot, reuse),
        // An earlier connection's reverse entry on the same tuple: taken over.
        Probe::Hit {
            slot,
            stage: STAGE_REVNAT,
            ..
        } => (slot, true),
        Probe::Hit { .. } => return PolicyVerdict::New,
    };
    let reverse = Annex {
        ext: b.frontend,
        stage: STAGE_REVNAT,
    };
    let leader = u64::from(Conntrack::index_of(entry));
    match ct.insert_with(
        now,
        slot,
        reuse,
        &to.key,
        to.tcp_flags,
        leader,
        ingress,
        reverse,
    ) {
        Ok(_) => PolicyVerdict::New,
        Err(r) => refused(r),
    }
}

fn refused(r: crate::conntrack::CtRefusal) -> PolicyVerdict {
    PolicyVerdict::Drop {
        reason: match r {
            crate::conntrack::CtRefusal::Full => crate::policy::PolicyDropReason::CtFull,
            crate::conntrack::CtRefusal::EndpointLimit => {
                crate::policy::PolicyDropReason::CtEndpointLimit
            }
        },
        direction: None,
        rule: None,
    }
}

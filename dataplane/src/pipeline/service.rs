//! Stage 5, **service translation**: a connection to a service's virtual address is balanced
//! to a backend and kept there; a backend's replies take the virtual address back.
//!
//! # Two entries per balanced connection
//! A connection from client `C:c` to frontend `V:v`, balanced to backend `B:b`, has two entries
//! in the flow table, both owned by the client's port:
//! - the **service entry**, under `C:c → V:v`, stage byte [`STAGE_SERVICE`], `ext` = the
//!   [`BackendId`]: what the client's packets find. It is how a connection stays on its backend
//!   whatever happens to the service's Maglev table;
//! - the **connection's entry**, under `C:c → B:b` (the flow the policy judged, as Cilium has
//!   policy see the backend), stage byte [`STAGE_REVNAT`], `ext` = the [`FrontendId`]: its TCP
//!   state, its policy revision, and what the backend's replies find, in one probe.
//!
//! One entry cannot serve both: the table finds an entry by its 5-tuple, and the client's
//! packets and the backend's replies share no 5-tuple. So a reply costs one probe, as any
//! packet, and a packet from the client two: its service entry, then its connection's entry,
//! whose state it advances (the service entry then follows that state, so the two expire
//! together: [`Conntrack::follow`]). This is Cilium's layout too (its `CT_SERVICE` entry and
//! the connection's own).
//!
//! # A new connection
//! A packet to a frontend that no entry knows picks its backend ([`select`]): the client's
//! affinity record when the service has `ClientIP` affinity and the backend still takes
//! connections, else the Maglev table at the hash of the 5-tuple (or a random slot of it, with
//! the `random` algorithm). Then the policy stage judges the translated flow, routing routes
//! it, and the commit stage creates both entries. A frontend with no usable backend refuses
//! the connection (`no-service-backend`): a TCP RST, an ICMP port unreachable for UDP.
//!
//! What it does not do: it rewrites nothing (the NAT stage does, from the [`Nat`] this stage
//! returns), it chooses no backend set (the control side gives each frontend only the
//! backends that take new connections), and it translates no fragment: a fragmented datagram to
//! a virtual address is not balanced (it has no route), nor is a later fragment of a backend's
//! reply given its virtual address back.

use std::net::SocketAddrV4;

use super::flow::{self, STAGE_REVNAT, STAGE_SERVICE, Tracking, Vacancy};
use super::{Judged, Meta, policy};
use crate::conntrack::{Annex, Conntrack, FlowKey, Probe};
use crate::maglev::mix;
use crate::policy::PolicyVerdict;
use crate::services::{Algorithm, Backend, BackendId, Frontend, FrontendId, ServiceTables};
use crate::tables::Tables;
use crate::wire::tcp::flags;

/// What the NAT stage (9) does to a packet the service stage translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// Nothing.
    None,
    /// A client's packet: the destination becomes the backend.
    ToBackend(SocketAddrV4),
    /// A backend's reply: the source becomes the frontend.
    FromFrontend(SocketAddrV4),
    /// An ICMP error from the network about a client's packet to a backend: the error's source
    /// (if it is the backend) and the quoted destination become the frontend.
    ErrorFromFrontend {
        /// The backend's address, as the error and its quote hold it.
        backend: SocketAddrV4,
        /// The frontend's address, which the client knows.
        frontend: SocketAddrV4,
    },
}

/// The service entry a new balanced connection needs, created by the commit stage with its
/// connection's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// Where it goes (from the probe of the client's 5-tuple); `None` if it exists already.
    pub vacancy: Option<Vacancy>,
    /// The backend it holds.
    pub backend: BackendId,
}

/// What stages 4 to 6 made of a packet, services included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Judgement {
    /// The flow-state and policy decision.
    pub judged: Judged,
    /// The translation the NAT stage applies if the packet is sent on.
    pub nat: Nat,
    /// For a new balanced connection: the service entry to create beside its own, and the
    /// frontend its own entry names.
    pub service: Option<(ServiceEntry, FrontendId)>,
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

/// Stages 4 to 6 in [`crate::tables::Mode::Full`] for an unfragmented packet, on tables that
/// have services: the conntrack lookup, the service stage on what it found, and the policy
/// stage on the (translated) flow. `Err` when a new connection to a frontend finds no backend.
#[inline(never)]
pub fn judge(
    now: u64,
    meta: &Meta,
    tables: &Tables,
    ct: &mut Conntrack,
) -> Result<Judgement, NoBackend> {
    let (gateway, rules, services) = (tables.gateway().ipv4, tables.policy(), tables.services());
    let (service_slot, backend) = match flow::lookup(now, ct, meta, gateway, rules) {
        Tracking::Known(v) => return Ok(Judgement::plain(Judged::Done(v))),
        Tracking::Unrelated => {
            return Ok(Judgement::plain(Judged::Done(policy::admit(rules, meta))));
        }
        Tracking::RevNat(v, frontend) => {
            let nat = match services.frontend_addr(frontend) {
                // A service deleted since: the reply goes back as it is.
                None => Nat::None,
                Some(f) if meta.has(Meta::ICMP_ERROR) => match meta.quoted {
                    Some(q) => Nat::ErrorFromFrontend {
                        backend: SocketAddrV4::new(q.dst, q.dport),
                        frontend: f,
                    },
                    None => Nat::None,
                },
                Some(f) => Nat::FromFrontend(f),
            };
            return Ok(Judgement {
                nat,
                ..Judgement::plain(Judged::Done(v))
            });
        }
        Tracking::Service { slot, backend } => match services.backend(backend) {
            Some(addr) => (Ok(slot), Backend { id: backend, addr }),
            // The backend is gone from every service: the connection is balanced again, its
            // service entry taken over in place.
            None => {
                let Some(f) = frontend_of(services, meta) else {
                    return Ok(Judgement::plain(Judged::Done(PolicyVerdict::Untracked)));
                };
                (Err((slot, true)), pick(now, meta, f, services, ct)?)
            }
        },
        Tracking::New(vacancy) => match frontend_of(services, meta) {
            None => {
                return Ok(Judgement::plain(match policy::admit(rules, meta) {
                    PolicyVerdict::New => Judged::Admitted(vacancy),
                    v => Judged::Done(v),
                }));
            }
            Some(f) => (Err(vacancy), pick(now, meta, f, services, ct)?),
        },
    };
    Ok(translated(now, meta, tables, ct, service_slot, backend))
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

/// A new connection's backend at `f`, or the refusal.
#[inline]
fn pick(
    now: u64,
    meta: &Meta,
    f: &Frontend,
    services: &ServiceTables,
    ct: &Conntrack,
) -> Result<Backend, NoBackend> {
    select(now, &meta.key, f, services.algorithm(), ct).ok_or(NoBackend { frontend: f.addr })
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

/// A packet to a frontend, balanced to `backend`: the connection's own entry looked up (and
/// advanced) under the translated 5-tuple, or the policy's judgement of the translated flow if
/// it is new. `service` is the service entry: `Ok(slot)` if it exists, `Err(vacancy)` where
/// it goes if not.
#[inline]
fn translated(
    now: u64,
    meta: &Meta,
    tables: &Tables,
    ct: &mut Conntrack,
    service: Result<usize, Vacancy>,
    backend: Backend,
) -> Judgement {
    let rules = tables.policy();
    // Only a packet that creates an entry needs it: not looked up on the established path.
    let frontend = || {
        tables
            .services()
            .frontend(meta.key.dst, meta.key.dport, meta.key.proto)
            .map(|f| f.id)
    };
    let to = Meta {
        key: FlowKey {
            dst: *backend.addr.ip(),
            dport: backend.addr.port(),
            ..meta.key
        },
        ..*meta
    };
    let nat = Nat::ToBackend(backend.addr);
    let fresh_syn = meta.tcp_flags & (flags::SYN | flags::ACK) == flags::SYN
        && meta.key.proto == crate::wire::ip::proto::TCP;
    let vacancy = match ct.probe(now, &to.key) {
        Probe::Hit { slot, .. } if fresh_syn && ct.is_closing(slot) => (slot, true),
        Probe::Hit { slot, orig, .. } => {
            let v = flow::track(now, ct, slot, orig, meta.tcp_flags, rules);
            match service {
                Ok(s) => {
                    ct.follow(now, s, slot);
                }
                // The connection outlived its service entry (it expired while only the backend
                // spoke): it is made again, so the connection stays where it is.
                Err((s, reuse)) if frontend().is_some() => {
                    let annex = Annex {
                        ext: backend.id,
                        stage: STAGE_SERVICE,
                    };
                    let owner = ct.owner(slot);
                    let _ = ct.insert_with(
                        now,
                        s,
                        reuse,
                        &meta.key,
                        meta.tcp_flags,
                        rules.revision(),
                        owner,
                        annex,
                    );
                }
                Err(_) => {}
            }
            return Judgement {
                nat,
                ..Judgement::plain(Judged::Done(v))
            };
        }
        Probe::Vacant { slot, reuse } => (slot, reuse),
    };
    match (policy::admit(rules, &to), frontend()) {
        (PolicyVerdict::New, Some(frontend)) => Judgement {
            judged: Judged::Admitted(vacancy),
            nat,
            service: Some((
                ServiceEntry {
                    // An existing service entry (its connection's entry went: a narrowed
                    // policy, or it expired first) is kept: only the connection's is missing.
                    vacancy: service.err(),
                    backend: backend.id,
                },
                frontend,
            )),
        },
        // The frontend was deleted since the service entry was made: its virtual address
        // leads nowhere now (routing drops the packet untranslated), as the backend's replies
        // are no longer given it back either.
        (PolicyVerdict::New, None) => Judgement::plain(Judged::Done(PolicyVerdict::Untracked)),
        (v, _) => Judgement {
            nat,
            ..Judgement::plain(Judged::Done(v))
        },
    }
}

/// Stage 8b for a balanced connection the policy allowed: its own entry (under the translated
/// 5-tuple `to`, naming `frontend`) and, unless it exists, its service entry (under the
/// client's 5-tuple `from`, naming the backend). `New`, or the drop of the first refused.
#[inline(never)]
pub fn commit(
    now: u64,
    ingress: crate::tables::PortId,
    ct: &mut Conntrack,
    (from, to): (&Meta, &Meta),
    vacancy: Vacancy,
    revision: u64,
    (entry, frontend): (ServiceEntry, FrontendId),
) -> PolicyVerdict {
    let own = Annex {
        ext: frontend,
        stage: STAGE_REVNAT,
    };
    let v = flow::commit(now, ingress, ct, to, vacancy, revision, own);
    let (PolicyVerdict::New, Some((slot, reuse))) = (v, entry.vacancy) else {
        return v;
    };
    let annex = Annex {
        ext: entry.backend,
        stage: STAGE_SERVICE,
    };
    // If the service entry is refused (the table or the port's share is full), the connection
    // still has its own entry: its next packet is balanced again to the same backend while the
    // backend set stays as it is.
    let _ = ct.insert_with(
        now,
        slot,
        reuse,
        &from.key,
        from.tcp_flags,
        revision,
        ingress,
        annex,
    );
    v
}

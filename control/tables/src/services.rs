//! The services' tables: the agent's services (parsed by `xylem-services`) and what it knows of
//! each backend's health, built into the dataplane's [`ServiceTables`].
//!
//! What it does:
//! - gives each frontend (virtual IP, port, protocol) and each backend (IP, port, protocol) a
//!   stable id through [`ServiceIds`], which the agent keeps across revisions (see [`ids`]);
//! - picks, for each frontend, the backends its new connections may use: those of its service
//!   port that are `active`, not down and of positive weight; when there is none, the
//!   `terminating` ones that are not down and of positive weight; never one in `maintenance`.
//!   Every backend of every service, whatever its state, is added to the tables by id, so an
//!   established connection keeps its backend;
//! - builds each frontend's Maglev table over those backends, weights honoured, reusing the
//!   table of the previous build when the same (M, backends, weights) was built before
//!   ([`MaglevCache`]): a change to one service rebuilds no other service's table;
//! - says which share of the table each backend holds ([`BuiltServices::shares`]), for
//!   `xylem service list`.
//!
//! What it does not do: parse Kubernetes objects, probe backends or decide their health (the
//! agent does and passes [`BackendHealth`] in), keep anything itself beyond what the caller's
//! [`ServiceIds`] and [`MaglevCache`] hold, or translate packets.

pub mod ids;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use xylem_api::BackendHealth;
use xylem_api::config::ServicesConfig;
use xylem_dataplane::maglev::{MaglevBackend, MaglevTable};
use xylem_dataplane::services::{self as dp, ServiceTables};
use xylem_services::{Backend, BackendState, Frontend, Protocol, Service, SessionAffinity};

use crate::Error;
pub use ids::IdAllocator;

/// What names a frontend: virtual IP, port, protocol.
pub type FrontendKey = (Ipv4Addr, u16, Protocol);
/// What names a backend: IP, port, protocol.
pub type BackendKey = (Ipv4Addr, u16, Protocol);

/// The ids the agent keeps across revisions: one per frontend and one per backend, freed when
/// the frontend or backend is gone from a build.
#[derive(Clone, Debug, Default)]
pub struct ServiceIds {
    /// By (virtual IP, port, protocol).
    pub frontends: IdAllocator<FrontendKey>,
    /// By (IP, port, protocol).
    pub backends: IdAllocator<BackendKey>,
}

/// What a Maglev table is built from: M and the (address, weight) list, sorted by address.
type CacheKey = (u32, Vec<(SocketAddrV4, u32)>);

/// The Maglev tables of the last build, by what they were built from, so the next build reuses
/// them. Holds only the tables the last build used.
#[derive(Clone, Debug, Default)]
pub struct MaglevCache {
    tables: HashMap<CacheKey, Arc<MaglevTable>>,
}

impl MaglevCache {
    /// How many tables it holds.
    pub fn len(&self) -> usize {
        self.tables.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

/// What the agent keeps from one build to the next. Clone it, build with the clone, and keep
/// the clone only if the revision is published: a refused change then leaves ids and cache as
/// they were.
#[derive(Clone, Debug, Default)]
pub struct ServiceBuildState {
    /// Frontend and backend ids.
    pub ids: ServiceIds,
    /// Maglev tables by what they were built from.
    pub cache: MaglevCache,
}

/// The result of [`build_services`].
#[derive(Clone, Debug)]
pub struct BuiltServices {
    /// The dataplane's tables, for [`xylem_dataplane::tables::Tables::set_services`].
    pub tables: Arc<ServiceTables>,
    /// By service key (`namespace/name`): for each of its [`Service::backends`], in order, the
    /// fraction of M it holds in the table of its service port's frontends (0 when it takes
    /// no new connection).
    pub shares: BTreeMap<String, Vec<f64>>,
}

/// Whether `b` may take new connections of its state's tier: weight above 0 and not down.
fn usable(b: &Backend, health: BackendHealth) -> bool {
    b.weight > 0 && health != BackendHealth::Down
}

/// The backends of `svc` that new connections to a frontend of service port (`port_name`,
/// `protocol`) may use, as indices into `svc.backends`: the active ones, else the terminating
/// ones (see the module documentation).
pub fn selectable(
    svc: &Service,
    port_name: &Option<String>,
    protocol: Protocol,
    health: &dyn Fn(&str, SocketAddrV4) -> BackendHealth,
) -> Vec<usize> {
    let key = svc.key();
    let of_port: Vec<usize> = (0..svc.backends.len())
        .filter(|&i| {
            let b = &svc.backends[i];
            b.port_name == *port_name && b.protocol == protocol
        })
        .collect();
    let tier = |state: BackendState| -> Vec<usize> {
        of_port
            .iter()
            .copied()
            .filter(|&i| {
                let b = &svc.backends[i];
                b.state == state && usable(b, health(&key, SocketAddrV4::new(b.ip, b.port)))
            })
            .collect()
    };
    let active = tier(BackendState::Active);
    if active.is_empty() {
        tier(BackendState::Terminating)
    } else {
        active
    }
}

/// Builds the service tables of `services` with `cfg`'s algorithm and M. `health(service key,
/// backend address)` says what the agent knows of a backend. Ids come from `state.ids` (those of
/// frontends and backends no longer present are freed) and Maglev tables from `state.cache`
/// when built before (the cache then holds exactly the tables of this build).
///
/// Errors: more frontends or backends than ids, a Maglev table that cannot be built (more than
/// 65,535 backends), or two services with the same frontend (the agent checks that first, so
/// it can name the field).
pub fn build_services(
    services: &[&Service],
    health: &dyn Fn(&str, SocketAddrV4) -> BackendHealth,
    cfg: &ServicesConfig,
    state: &mut ServiceBuildState,
) -> Result<BuiltServices, Error> {
    let mut t = ServiceTables::new(cfg.algorithm);
    let mut cache = HashMap::new();
    let mut shares = BTreeMap::new();
    for svc in services {
        for b in &svc.backends {
            let id = backend_id(&mut state.ids, (b.ip, b.port, b.protocol))?;
            t.add_backend(id, SocketAddrV4::new(b.ip, b.port))?;
        }
        let mut svc_shares = vec![0.0; svc.backends.len()];
        for f in &svc.frontends {
            let mut picked = selectable(svc, &f.port_name, f.protocol, health);
            // By address: the order of the cache key's list, and so of the table's indices.
            let addr = |i: &usize| SocketAddrV4::new(svc.backends[*i].ip, svc.backends[*i].port);
            picked.sort_by_key(addr);
            picked.dedup_by_key(|i| addr(i));
            let frontend = frontend(svc, f, &picked, cfg, state, &mut cache)?;
            if let Some(table) = &frontend.maglev {
                for (slot_owner, &i) in picked.iter().enumerate() {
                    // `picked` is in the order the table was built from (see `frontend`).
                    svc_shares[i] = table.share(slot_owner);
                }
            }
            t.add_frontend(frontend)?;
        }
        shares.insert(svc.key(), svc_shares);
    }
    let keep_f: std::collections::BTreeSet<FrontendKey> = services
        .iter()
        .flat_map(|s| s.frontends.iter().map(|f| (f.ip, f.port, f.protocol)))
        .collect();
    let keep_b: std::collections::BTreeSet<BackendKey> = services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| (b.ip, b.port, b.protocol)))
        .collect();
    state.ids.frontends.retain(|k| keep_f.contains(k));
    state.ids.backends.retain(|k| keep_b.contains(k));
    state.cache.tables = cache;
    Ok(BuiltServices {
        tables: Arc::new(t),
        shares,
    })
}

fn backend_id(ids: &mut ServiceIds, key: BackendKey) -> Result<u32, Error> {
    ids.backends.id(&key).ok_or_else(|| {
        Error::InvalidTable(format!(
            "backend {}:{}/{}: every backend id (1 to {}) is in use; remove backends",
            key.0,
            key.1,
            key.2,
            dp::MAX_ID
        ))
    })
}

/// The dataplane frontend of `f` with the backends `picked` (indices into `svc.backends`, in
/// the order the Maglev table indexes them).
fn frontend(
    svc: &Service,
    f: &Frontend,
    picked: &[usize],
    cfg: &ServicesConfig,
    state: &mut ServiceBuildState,
    cache: &mut HashMap<CacheKey, Arc<MaglevTable>>,
) -> Result<dp::Frontend, Error> {
    let id = state
        .ids
        .frontends
        .id(&(f.ip, f.port, f.protocol))
        .ok_or_else(|| {
            Error::InvalidTable(format!(
                "frontend {}:{}/{} of service {}: every frontend id (1 to {}) is in use; \
                 remove services",
                f.ip,
                f.port,
                f.protocol,
                svc.key(),
                dp::MAX_ID
            ))
        })?;
    let mut list = Vec::with_capacity(picked.len());
    let mut backends = Vec::with_capacity(picked.len());
    for &i in picked {
        let b = &svc.backends[i];
        let addr = SocketAddrV4::new(b.ip, b.port);
        list.push((addr, u32::from(b.weight)));
        let id = backend_id(&mut state.ids, (b.ip, b.port, b.protocol))?;
        backends.push(dp::Backend { id, addr });
    }
    let maglev = if list.is_empty() {
        None
    } else {
        Some(maglev_table(cfg.maglev_table_size, list, state, cache)?)
    };
    Ok(dp::Frontend {
        id,
        addr: SocketAddrV4::new(f.ip, f.port),
        proto: f.protocol.number(),
        affinity_timeout_ns: match svc.session_affinity {
            SessionAffinity::None => 0,
            SessionAffinity::ClientIp { timeout_s } => u64::from(timeout_s) * 1_000_000_000,
        },
        backends: backends.into(),
        maglev,
    })
}

/// The table for `list` (in the order given) at M `m`: the previous build's if it had one for
/// the same list, else a new one.
fn maglev_table(
    m: u32,
    list: Vec<(SocketAddrV4, u32)>,
    state: &ServiceBuildState,
    cache: &mut HashMap<CacheKey, Arc<MaglevTable>>,
) -> Result<Arc<MaglevTable>, Error> {
    let key = (m, list);
    if let Some(t) = cache.get(&key).or_else(|| state.cache.tables.get(&key)) {
        let t = Arc::clone(t);
        cache.insert(key, Arc::clone(&t));
        return Ok(t);
    }
    let mb: Vec<MaglevBackend> = key
        .1
        .iter()
        .map(|&(key, weight)| MaglevBackend { key, weight })
        .collect();
    let t = Arc::new(MaglevTable::new(&mb, m)?);
    cache.insert(key, Arc::clone(&t));
    Ok(t)
}

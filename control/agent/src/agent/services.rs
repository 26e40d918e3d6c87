//! Services: import, delete and list them, record what health checks say of their backends,
//! and restore them from the state store at start. Every change goes through
//! [`AgentState::publish_with`], so a service change reaches the workers in the same tables
//! revision as the routes and policy it was built with, and a refused change leaves the
//! services, health, ids and Maglev tables as they were (and the store too, unless one of its
//! own writes is what failed).
//!
//! Services and their EndpointSlices are independent objects, as in Kubernetes, so an import
//! changes only what it contains:
//! - a Service with EndpointSlices in the same input gets exactly those slices (a
//!   `kubectl get svc,endpointslices -o yaml` export replaces what the agent held, and a slice
//!   gone from the cluster is gone from the agent);
//! - a Service alone keeps the slices held for it, joined again with the new Service (its
//!   ports, weights and maintenance list);
//! - EndpointSlices alone, for a held service, each replace the held slice of the same name or
//!   are added to it, and the service is joined again with all its slices.
//!
//! Stored as the parsed model (kind `services`: per `namespace/name` the [`Service`] and its
//! [`EndpointSlice`]s as JSON), not as the imported YAML: one import may hold several services
//! and another only some of their slices, so no imported document is what the agent serves,
//! while the model is, validated and joined.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::sync::Arc;

use xylem_api::config::ServicesConfig;
use xylem_api::{BackendHealth, BackendView, FrontendView, ServiceView};
use xylem_dataplane::services::ServiceTables;
use xylem_services::{
    BackendState, EndpointSlice, HealthCheck, Service, SessionAffinity, parse_with,
};
use xylem_tables::services::{BuiltServices, ServiceBuildState, build_services};

use super::*;
use crate::Error;
use crate::state::{StateStore, TypedStore, kind};

/// A backend a health check must probe: what the health-check loop gets from
/// [`AgentState::health_targets`] and reports back through [`AgentState::set_backend_health`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthTarget {
    /// The service, `namespace/name`.
    pub service: String,
    /// The backend's address and target port.
    pub backend: SocketAddrV4,
    /// The service's check (`lb.xylem.io/health-*`).
    pub check: HealthCheck,
}

/// Health results by (service key, backend address): `true` up, `false` down. A backend of a
/// checked service with no entry has not been decided yet ([`BackendHealth::Unknown`]).
type HealthMap = BTreeMap<(String, SocketAddrV4), bool>;

/// Each service's EndpointSlices, by service key.
type SliceMap = BTreeMap<String, Vec<EndpointSlice>>;

/// The services the agent holds and what their tables were built from. Locked after `policy`.
#[derive(Debug, Default)]
pub(super) struct ServiceState {
    /// By `namespace/name`.
    services: BTreeMap<String, Service>,
    /// The slices each service's backends were joined from.
    slices: SliceMap,
    health: HealthMap,
    /// Ids and Maglev tables kept from one build to the next.
    build: ServiceBuildState,
    /// The service tables of the published revision.
    pub(super) tables: Arc<ServiceTables>,
    /// Per service, each backend's share of its frontends' table.
    shares: BTreeMap<String, Vec<f64>>,
}

/// A change of the services, built on copies: [`ServiceState::commit`] makes it current once
/// its revision is published.
pub(super) struct NextServices {
    services: BTreeMap<String, Service>,
    slices: SliceMap,
    health: HealthMap,
    build: ServiceBuildState,
    pub(super) built: BuiltServices,
}

/// What the agent knows of `backend` of `services[service]`.
fn health_of(
    services: &BTreeMap<String, Service>,
    health: &HealthMap,
    service: &str,
    backend: SocketAddrV4,
) -> BackendHealth {
    match services.get(service).map(|s| s.health_check.is_some()) {
        Some(true) => match health.get(&(service.to_owned(), backend)) {
            Some(true) => BackendHealth::Up,
            Some(false) => BackendHealth::Down,
            None => BackendHealth::Unknown,
        },
        _ => BackendHealth::Unchecked,
    }
}

/// Whether `s` has a backend at `addr`.
fn has_backend(s: &Service, addr: SocketAddrV4) -> bool {
    s.backends
        .iter()
        .any(|b| SocketAddrV4::new(b.ip, b.port) == addr)
}

impl ServiceState {
    /// Builds the tables of `services` with `health` (forgetting the health of backends that
    /// are gone or no longer checked), on copies of the ids and Maglev tables.
    pub(super) fn prepare(
        &self,
        cfg: &ServicesConfig,
        services: BTreeMap<String, Service>,
        mut slices: SliceMap,
        mut health: HealthMap,
    ) -> Result<NextServices, Error> {
        slices.retain(|k, _| services.contains_key(k));
        health.retain(|(svc, addr), _| {
            services
                .get(svc)
                .is_some_and(|s| s.health_check.is_some() && has_backend(s, *addr))
        });
        let mut build = self.build.clone();
        let refs: Vec<&Service> = services.values().collect();
        let of = |svc: &str, addr| health_of(&services, &health, svc, addr);
        let built = build_services(&refs, &of, cfg, &mut build)?;
        Ok(NextServices {
            services,
            slices,
            health,
            build,
            built,
        })
    }

    /// Makes `next` current (its revision was published).
    pub(super) fn commit(&mut self, next: NextServices) {
        self.services = next.services;
        self.slices = next.slices;
        self.health = next.health;
        self.build = next.build;
        self.tables = next.built.tables;
        self.shares = next.built.shares;
    }

    /// The stored services, built: what the agent serves from its first revision. A stored
    /// service that cannot be read or built stops the agent.
    pub(super) fn restore(cfg: &ServicesConfig, store: &dyn StateStore) -> Result<Self, Error> {
        let mut services = BTreeMap::new();
        let mut slices = SliceMap::new();
        for (key, stored) in store.list_as::<kind::Services>()? {
            services.insert(key.clone(), stored.service);
            slices.insert(key, stored.slices);
        }
        let mut st = ServiceState::default();
        let count = services.len();
        let next = st
            .prepare(cfg, services, slices, HealthMap::new())
            .map_err(|e| {
                Error::State(format!(
                    "the stored services (services.json in the state directory) cannot be \
                 restored: {e}; start with --start-empty to discard the stored state"
                ))
            })?;
        st.commit(next);
        if count > 0 {
            tracing::info!(services = count, "restored services from the state store");
        }
        Ok(st)
    }

    fn view(&self, s: &Service) -> ServiceView {
        let key = s.key();
        let shares = self.shares.get(&key);
        let (session_affinity, affinity_timeout_s) = match s.session_affinity {
            SessionAffinity::None => ("None", None),
            SessionAffinity::ClientIp { timeout_s } => ("ClientIP", Some(timeout_s)),
        };
        ServiceView {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            annotations: s.annotations.clone(),
            session_affinity: session_affinity.into(),
            affinity_timeout_s,
            frontends: s
                .frontends
                .iter()
                .map(|f| FrontendView {
                    ip: f.ip,
                    port: f.port,
                    protocol: f.protocol.to_string(),
                })
                .collect(),
            backends: s
                .backends
                .iter()
                .enumerate()
                .map(|(i, b)| BackendView {
                    ip: b.ip,
                    port: b.port,
                    weight: b.weight,
                    state: b.state.as_str().into(),
                    health: health_of(
                        &self.services,
                        &self.health,
                        &key,
                        SocketAddrV4::new(b.ip, b.port),
                    ),
                    table_share: shares.and_then(|v| v.get(i).copied()).unwrap_or(0.0),
                })
                .collect(),
        }
    }
}

fn services_rejected(e: xylem_services::Error) -> Rejected {
    match e {
        xylem_services::Error::Invalid {
            document,
            field,
            why,
        } => reject(
            Refusal::Invalid,
            &field,
            format!("{why} (in {document}); nothing was imported"),
        ),
        other => reject(Refusal::Invalid, "body", other.to_string()),
    }
}

/// No frontend of a service in `changed` belongs to another service of `next`: the agent's
/// half of the rule that `xylem-services` checks within one input.
fn check_frontends(next: &BTreeMap<String, Service>, changed: &[String]) -> Result<(), Rejected> {
    for key in changed {
        let s = &next[key];
        for (k, f) in s.frontends.iter().enumerate() {
            let other = next.values().find(|o| {
                o.key() != *key
                    && o.frontends
                        .iter()
                        .any(|g| (g.ip, g.port, g.protocol) == (f.ip, f.port, f.protocol))
            });
            if let Some(other) = other {
                return Err(reject(
                    Refusal::Invalid,
                    &format!("spec.ports[{}].port", k % s.ports.len().max(1)),
                    format!(
                        "frontend {}:{}/{} of service {key} is already service {}'s in the \
                         agent; a virtual IP, port and protocol belong to one service: delete \
                         that service first, or change spec.clusterIP or the port; nothing was \
                         imported",
                        f.ip,
                        f.port,
                        f.protocol,
                        other.key()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// What an import leads to: every service and its slices, and the keys that changed.
type Merged = (BTreeMap<String, Service>, SliceMap, Vec<String>);

/// `import` merged into what `st` holds, as the module documentation says.
fn merge(st: &ServiceState, import: xylem_services::Import) -> Result<Merged, Rejected> {
    let mut services = st.services.clone();
    let mut slices = st.slices.clone();
    let mut changed = Vec::new();
    let mut in_input = SliceMap::new();
    for sl in import.joined {
        let key = format!("{}/{}", sl.namespace, sl.service);
        in_input.entry(key).or_default().push(sl);
    }
    for svc in import.services {
        let key = svc.key();
        if let Some(mine) = in_input.remove(&key) {
            slices.insert(key.clone(), mine);
        }
        services.insert(key.clone(), svc);
        changed.push(key);
    }
    for sl in import.slices {
        let key = format!("{}/{}", sl.namespace, sl.service);
        let held = slices.entry(key.clone()).or_default();
        match held.iter_mut().find(|h| h.name == sl.name) {
            Some(h) => *h = sl,
            None => held.push(sl),
        }
        if !changed.contains(&key) {
            changed.push(key);
        }
    }
    for key in &changed {
        let (Some(svc), Some(held)) = (services.get_mut(key), slices.get(key)) else {
            continue;
        };
        // A Service alone with the slices held for it, a held service with its new slices
        // (for a Service with its slices in the input this gives what `parse_with` joined).
        if !held.is_empty() {
            svc.join(held).map_err(services_rejected)?;
        }
    }
    Ok((services, slices, changed))
}

impl AgentState {
    /// The service state, locked (after the bindings and the policy state, by callers that
    /// hold them).
    pub(super) fn lock_services(
        &self,
    ) -> Result<std::sync::MutexGuard<'_, ServiceState>, Rejected> {
        self.services
            .lock()
            .map_err(|_| reject(Refusal::Failed, "-", "agent state poisoned"))
    }

    /// Imports the Services and EndpointSlices of `yaml` (one document, several, or a `List`):
    /// all or nothing. A Service replaces the one of its `namespace/name`, and slices replace
    /// or join those held, as the module documentation says. Each changed service is stored
    /// durably, then the tables are rebuilt and published in one swap. Returns the new
    /// revision.
    pub fn import_services(&self, yaml: &str) -> Result<u64, Rejected> {
        let bindings = self
            .bindings
            .lock()
            .map_err(|_| reject(Refusal::Failed, "-", "agent state poisoned"))?;
        let mut ps = self.lock_policy()?;
        let mut svc = self.lock_services()?;
        let import = parse_with(yaml, &|ns, name| {
            svc.services.contains_key(&format!("{ns}/{name}"))
        })
        .map_err(services_rejected)?;
        if import.services.is_empty() && import.slices.is_empty() {
            return Err(reject(
                Refusal::Invalid,
                "body",
                "no Service or EndpointSlice in the input",
            ));
        }
        let (next, slices, changed) = merge(&svc, import)?;
        check_frontends(&next, &changed)?;
        let health = svc.health.clone();
        let prepared = svc
            .prepare(&self.cfg.services, next, slices, health)
            .map_err(|e| reject(Refusal::Invalid, "body", e.to_string()))?;
        let stored: Vec<(&String, kind::StoredService)> = changed
            .iter()
            .map(|k| {
                let v = kind::StoredService {
                    service: prepared.services[k].clone(),
                    slices: prepared.slices.get(k).cloned().unwrap_or_default(),
                };
                (k, v)
            })
            .collect();
        let ops = stored
            .iter()
            .map(|(k, v)| StoreOp::put::<kind::Services>(k, v))
            .collect::<Result<_, _>>()?;
        let revision = self
            .publish_with(&bindings, &mut ps, None, &mut svc, Some(prepared), ops)
            .map_err(|e| e.rejected(Refusal::Invalid, "body"))?;
        tracing::info!(revision, services = ?changed, "services imported");
        Ok(revision)
    }

    /// Deletes the service `namespace/name`, durably, and publishes the rebuilt tables. Returns
    /// the new revision, or `None` if there was no such service.
    pub fn delete_service(&self, namespace: &str, name: &str) -> Result<Option<u64>, Rejected> {
        check_name("namespace", namespace)?;
        check_name("name", name)?;
        let key = format!("{namespace}/{name}");
        let bindings = self
            .bindings
            .lock()
            .map_err(|_| reject(Refusal::Failed, "-", "agent state poisoned"))?;
        let mut ps = self.lock_policy()?;
        let mut svc = self.lock_services()?;
        if !svc.services.contains_key(&key) {
            return Ok(None);
        }
        let mut next = svc.services.clone();
        next.remove(&key);
        let (slices, health) = (svc.slices.clone(), svc.health.clone());
        let prepared = svc
            .prepare(&self.cfg.services, next, slices, health)
            .map_err(|e| reject(Refusal::Failed, "-", e.to_string()))?;
        let ops = vec![StoreOp::delete::<kind::Services>(&key)];
        let revision = self
            .publish_with(&bindings, &mut ps, None, &mut svc, Some(prepared), ops)
            .map_err(|e| e.rejected(Refusal::Failed, "-"))?;
        tracing::info!(service = %key, revision, "service deleted");
        Ok(Some(revision))
    }

    /// Every service, by `namespace/name`.
    pub fn services(&self) -> Vec<ServiceView> {
        self.services
            .lock()
            .map(|st| st.services.values().map(|s| st.view(s)).collect())
            .unwrap_or_default()
    }

    /// The service `namespace/name`, if the agent holds it.
    pub fn service(&self, namespace: &str, name: &str) -> Option<ServiceView> {
        let st = self.services.lock().ok()?;
        let s = st.services.get(&format!("{namespace}/{name}"))?;
        Some(st.view(s))
    }

    /// Every backend a health check must probe: those of every service with a check, in any
    /// state but `maintenance` (which takes no connection whatever its health), once per
    /// (service, address) even when the address serves several service ports.
    pub fn health_targets(&self) -> Vec<HealthTarget> {
        let Ok(st) = self.services.lock() else {
            return Vec::new();
        };
        let mut out: Vec<HealthTarget> = Vec::new();
        for s in st.services.values() {
            let Some(check) = &s.health_check else {
                continue;
            };
            for b in &s.backends {
                let backend = SocketAddrV4::new(b.ip, b.port);
                let seen = out
                    .iter()
                    .any(|t| t.backend == backend && t.service == s.key());
                if b.state != BackendState::Maintenance && !seen {
                    out.push(HealthTarget {
                        service: s.key(),
                        backend,
                        check: check.clone(),
                    });
                }
            }
        }
        out
    }

    /// Records a health check's verdict on `backend` of `service` (`namespace/name`). If the
    /// backend's health changed, the tables are rebuilt and published (a down backend takes no
    /// new connection) and the change is returned as `(from, to)` health names
    /// ([`BackendHealth::as_str`]); `None` when nothing changed or the service or backend (or
    /// its check) is gone.
    pub fn set_backend_health(
        &self,
        service: &str,
        backend: SocketAddrV4,
        up: bool,
    ) -> Result<Option<(String, String)>, Rejected> {
        let bindings = self
            .bindings
            .lock()
            .map_err(|_| reject(Refusal::Failed, "-", "agent state poisoned"))?;
        let mut ps = self.lock_policy()?;
        let mut svc = self.lock_services()?;
        let checked = svc
            .services
            .get(service)
            .is_some_and(|s| s.health_check.is_some() && has_backend(s, backend));
        if !checked {
            return Ok(None);
        }
        let from = health_of(&svc.services, &svc.health, service, backend);
        let to = if up {
            BackendHealth::Up
        } else {
            BackendHealth::Down
        };
        if from == to {
            return Ok(None);
        }
        let mut health = svc.health.clone();
        health.insert((service.to_owned(), backend), up);
        let (services, slices) = (svc.services.clone(), svc.slices.clone());
        let prepared = svc
            .prepare(&self.cfg.services, services, slices, health)
            .map_err(|e| reject(Refusal::Failed, "-", e.to_string()))?;
        let revision = self
            .publish_with(
                &bindings,
                &mut ps,
                None,
                &mut svc,
                Some(prepared),
                Vec::new(),
            )
            .map_err(|e| e.rejected(Refusal::Failed, "-"))?;
        tracing::info!(service, %backend, from = from.as_str(), to = to.as_str(), revision, "backend health changed");
        Ok(Some((from.as_str().to_owned(), to.as_str().to_owned())))
    }
}

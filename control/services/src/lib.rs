//! # xylem-services
//!
//! Services on the control side: Kubernetes `Service` (v1) and `EndpointSlice`
//! (`discovery.k8s.io/v1`) YAML in, as `kubectl get svc,endpointslices -o yaml` prints it, and
//! Xylem's load-balancing model out: per service its frontends (virtual IP × port × protocol)
//! and its backends (IP, port, weight, state), session affinity, health check and the Cilium
//! annotations. Pure: no I/O, no threads, no async runtime, so the agent, the CLI and the tests
//! link it alone.
//!
//! What it does:
//! - [`parse`]: reads one document, several (`---`), or a `List` (`apiVersion: v1`,
//!   `kind: List`, `items`), accepting exactly the fields below and rejecting anything else with
//!   an [`Error`] that names the document (its position, `items[N]` in a `List`, its kind and
//!   `namespace/name`) and the field. All or nothing: one bad field rejects the whole input.
//! - Joins each EndpointSlice to its Service by the label `kubernetes.io/service-name` and the
//!   slice's namespace, and turns its endpoints into [`Backend`]s, one per address and service
//!   port (a named `targetPort` is resolved through the slice's `ports`).
//! - [`parse_with`]: the same, for an agent that already holds services: an EndpointSlice
//!   whose Service is not in the file but that the agent knows (its `known` callback says so)
//!   is returned in [`Import::slices`], to be joined with [`Service::join`].
//!
//! What it does not do: read files or talk to the API server, keep services across imports or
//! restarts, build the dataplane's tables, build Maglev tables (that is the dataplane's
//! `maglev` module), probe backends, or check a frontend against the services the agent
//! already holds (the agent does, with the same rule).
//!
//! # What is acted on
//! - Service: `metadata.name`, `metadata.namespace` (default `default`),
//!   `metadata.annotations`, `spec.type` (`ClusterIP`, the default; any other type is rejected,
//!   naming `spec.type`), `spec.clusterIP` and `spec.clusterIPs` (IPv4; `None`, a headless
//!   service, is rejected: it has no virtual IP), `spec.ports[]` (`name`, `port` 1-65535,
//!   `targetPort` a number 1-65535 or a port name, default the `port`; `protocol` `TCP` (the
//!   default) or `UDP`), `spec.sessionAffinity` (`None`, `ClientIP`) and
//!   `spec.sessionAffinityConfig.clientIP.timeoutSeconds` (1-86400, default 10800).
//! - EndpointSlice: `metadata.name`, `metadata.namespace`, the label
//!   `kubernetes.io/service-name`, `addressType` (`IPv4` only), `endpoints[]` (`addresses`:
//!   exactly one, as the EndpointSlice controller writes them; `conditions.ready`, `.serving`,
//!   `.terminating`; `nodeName`; `targetRef` `kind`, `namespace`, `name`), `ports[]` (`name`,
//!   `port`, `protocol`).
//! - Annotations on the Service, in Xylem's prefix (any other `lb.xylem.io/` key is rejected as
//!   a likely typo): [`ANNOTATION_WEIGHTS`], [`ANNOTATION_MAINTENANCE`],
//!   [`ANNOTATION_HEALTH_CHECK`] and its `health-interval`, `health-timeout`, `health-rise`,
//!   `health-fall`; and Cilium's [`ANNOTATION_CILIUM_GLOBAL`], [`ANNOTATION_CILIUM_SHARED`],
//!   [`ANNOTATION_CILIUM_AFFINITY`], parsed into [`CiliumAnnotations`] and not acted on yet
//!   (cluster mesh). Every other annotation is kept as written in [`Service::annotations`].
//!
//! # Annotation formats and defaults
//! - `lb.xylem.io/weights: "10.200.0.12=2,10.200.0.13=3"`: weights 0-65535, default 1; an
//!   address may appear once.
//! - `lb.xylem.io/maintenance: "10.200.0.12,10.200.0.13"`.
//! - `lb.xylem.io/health-check`: `tcp`, `http` (GET `/`, expect 200), `http:/path` (expect 200)
//!   or `http:/path:status` (100-599). Without it, no other `health-*` annotation is allowed.
//! - `lb.xylem.io/health-interval` and `…/health-timeout`: `500ms`, `5s`, `1m` or a bare number
//!   of seconds, 1 ms to 1 h, timeout at most the interval; defaults 5 s and 1 s
//!   ([`DEFAULT_HEALTH_INTERVAL_MS`], [`DEFAULT_HEALTH_TIMEOUT_MS`]).
//! - `lb.xylem.io/health-rise` and `…/health-fall`: 1-100; defaults 2 and 3, as HAProxy
//!   ([`DEFAULT_HEALTH_RISE`], [`DEFAULT_HEALTH_FALL`]).
//! - `service.cilium.io/global` and `…/shared`: `true` or `false` (any case);
//!   `service.cilium.io/affinity`: `local`, `remote` or `none` (any case).
//!
//! # Accepted and ignored
//! Set by the API server or by a controller, or purely informational, so real `kubectl` output
//! imports unchanged:
//! - on both kinds: `metadata.uid`, `resourceVersion`, `creationTimestamp`, `managedFields`,
//!   `generation`, `selfLink`, `generateName` (the slice controller's `web-`; the name is
//!   already generated), `ownerReferences` (a slice's owner is its Service, which the label
//!   already names), and `status`;
//! - `metadata.labels` (on a Service: user metadata with no load-balancing meaning; on a slice,
//!   every label but `kubernetes.io/service-name`, such as
//!   `endpointslice.kubernetes.io/managed-by`, which the controller copies or sets);
//! - `metadata.annotations` on a slice (the controller's
//!   `endpoints.kubernetes.io/last-change-trigger-time`);
//! - Service `spec.selector`: the slice controller already applied it, and Xylem takes the
//!   endpoints from the slices, as kube-proxy and Cilium do;
//! - `spec.ipFamilies` (must list only `IPv4`) and `spec.ipFamilyPolicy` (`SingleStack`,
//!   `PreferDualStack` or `RequireDualStack`; the addresses themselves are checked), defaulted
//!   by the server;
//! - `spec.internalTrafficPolicy: Cluster`, the server's default and what Xylem does (`Local`
//!   is rejected: Xylem does not restrict backends to the node);
//! - `spec.ports[].appProtocol` and a slice's `ports[].appProtocol`: a hint for L7 proxies, no
//!   meaning for L4 balancing;
//! - a slice's `endpoints[].zone` (topology information, only used with hints, which are
//!   rejected) and `endpoints[].targetRef.uid`, `.resourceVersion`, `.apiVersion`,
//!   `.fieldPath`.
//!
//! # Rejected
//! Anything else, with its path, for instance `spec.externalIPs`, `spec.externalTrafficPolicy`,
//! `spec.publishNotReadyAddresses`, `spec.trafficDistribution`, `spec.ports[].nodePort`,
//! `endpoints[].hints`, `endpoints[].hostname`, `metadata.finalizers`: each changes how
//! Kubernetes routes the traffic, so importing it without acting on it would balance
//! differently from kube-proxy without saying so.
//!
//! # Backends
//! For each service port and each endpoint of the service's slices:
//! - the backend's port is the `targetPort` if it is a number (or the `port` when absent);
//!   if it is a name, the port of the slice's `ports[]` entry of that name and protocol, or
//!   else of the entry named like the service port (what the EndpointSlice controller
//!   writes). A slice without such a port contributes no backend to that service port, as in
//!   kube-proxy (the controller puts pods lacking a named port in a slice of their own);
//! - conditions are read as kube-proxy does: `ready` and `serving` absent mean true,
//!   `terminating` absent means false. Ready → [`BackendState::Active`]; serving and
//!   terminating → [`BackendState::Terminating`]; otherwise the endpoint is not a backend. An
//!   address listed in [`ANNOTATION_MAINTENANCE`] that is a backend is
//!   [`BackendState::Maintenance`];
//! - the weight is the address's entry in [`ANNOTATION_WEIGHTS`], 1 when absent. Weights of
//!   addresses that are not (yet) backends are allowed; a weight of 0 on every backend is an
//!   error;
//! - an address appearing twice for the same service port (in two slices) is one backend,
//!   active if either copy is.

mod annotations;
mod convert;
mod parse;
mod raw;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

pub use annotations::{
    ANNOTATION_CILIUM_AFFINITY, ANNOTATION_CILIUM_GLOBAL, ANNOTATION_CILIUM_SHARED,
    ANNOTATION_HEALTH_CHECK, ANNOTATION_HEALTH_FALL, ANNOTATION_HEALTH_INTERVAL,
    ANNOTATION_HEALTH_RISE, ANNOTATION_HEALTH_TIMEOUT, ANNOTATION_MAINTENANCE, ANNOTATION_WEIGHTS,
    DEFAULT_HEALTH_FALL, DEFAULT_HEALTH_INTERVAL_MS, DEFAULT_HEALTH_RISE,
    DEFAULT_HEALTH_TIMEOUT_MS, XYLEM_PREFIX,
};
pub use parse::{
    DEFAULT_AFFINITY_TIMEOUT_S, ENDPOINTSLICE_API_VERSION, ENDPOINTSLICE_KIND, SERVICE_API_VERSION,
    SERVICE_KIND, SERVICE_NAME_LABEL, parse, parse_with,
};

/// What this crate can fail at.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A Service or EndpointSlice document is invalid, or the documents do not fit together.
    /// Nothing from the input was applied.
    #[error("invalid service spec in {document}: {field}: {why}; nothing was imported")]
    Invalid {
        /// Which document: its position in the file (and `items[N]` in a `List`), and its kind
        /// and `namespace/name` when known (`document 2 items[1] (EndpointSlice default/web-abc12)`).
        document: String,
        /// The offending field, as a path (`spec.ports[0].protocol`,
        /// `metadata.annotations.lb.xylem.io/weights`).
        field: String,
        /// What is wrong and what would be accepted.
        why: String,
    },
}

impl From<xylem_kube::Error> for Error {
    fn from(e: xylem_kube::Error) -> Self {
        let xylem_kube::Error::Invalid {
            document,
            field,
            why,
        } = e;
        Error::Invalid {
            document,
            field,
            why,
        }
    }
}

/// The result of [`parse_with`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Import {
    /// The file's Services, in input order, joined with the file's EndpointSlices.
    pub services: Vec<Service>,
    /// The file's EndpointSlices whose Service is not in the file but known to the agent, in
    /// input order, validated; join them with [`Service::join`].
    pub slices: Vec<EndpointSlice>,
    /// The file's EndpointSlices whose Service is in the file, in input order: already joined
    /// into [`Import::services`], and given here too for an agent that keeps each service's
    /// slices (to join them again when the Service alone is imported later).
    pub joined: Vec<EndpointSlice>,
}

/// A validated ClusterIP Service with its backends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// `metadata.namespace` (`default` when absent).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.annotations`, every one as written (Xylem's and Cilium's included).
    pub annotations: BTreeMap<String, String>,
    /// Every `clusterIPs` address × every `spec.ports` entry, addresses first; unique in the
    /// whole input.
    pub frontends: Vec<Frontend>,
    /// `spec.ports` as written, target ports unresolved: what [`Service::join`] resolves
    /// against EndpointSlices.
    pub ports: Vec<ServicePort>,
    /// One per serving endpoint address and service port, in slice and endpoint order.
    pub backends: Vec<Backend>,
    /// `spec.sessionAffinity` and its timeout.
    pub session_affinity: SessionAffinity,
    /// From the `lb.xylem.io/health-*` annotations; `None` without
    /// [`ANNOTATION_HEALTH_CHECK`].
    pub health_check: Option<HealthCheck>,
    /// Cilium's cluster-mesh annotations, parsed, not acted on yet.
    pub cilium: CiliumAnnotations,
}

impl Service {
    /// `namespace/name`, the service's key.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Replaces the backends with those of `slices` (their own namespace and service label
    /// must name this service). For the agent, which keeps a service and receives its slices
    /// later; [`parse`] already joins the slices of its own input.
    pub fn join(&mut self, slices: &[EndpointSlice]) -> Result<(), Error> {
        let doc = format!("Service {}", self.key());
        for s in slices {
            if s.namespace != self.namespace || s.service != self.name {
                return Err(Error::Invalid {
                    document: s.document.clone(),
                    field: format!("metadata.labels.{SERVICE_NAME_LABEL}"),
                    why: format!(
                        "this slice belongs to service {}/{}, not {}",
                        s.namespace,
                        s.service,
                        self.key()
                    ),
                });
            }
        }
        self.backends = convert::backends(&doc, self, slices)?;
        Ok(())
    }
}

/// The transport protocol of a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// `TCP`.
    Tcp,
    /// `UDP`.
    Udp,
}

impl Protocol {
    /// The IP protocol number (6 or 17).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// A virtual IP, port and protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frontend {
    /// One of `spec.clusterIPs`.
    pub ip: Ipv4Addr,
    /// `spec.ports[].port`.
    pub port: u16,
    /// `spec.ports[].protocol`.
    pub protocol: Protocol,
    /// `spec.ports[].name`; `None` when unnamed (a single-port service).
    pub port_name: Option<String>,
}

/// One `spec.ports` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// `name`; `None` when unnamed.
    pub name: Option<String>,
    /// `port`.
    pub port: u16,
    /// `protocol`.
    pub protocol: Protocol,
    /// `targetPort` (the `port` when absent).
    pub target_port: TargetPort,
}

/// A `targetPort`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A container port's name, resolved through an EndpointSlice's `ports`.
    Name(String),
}

/// A backend of one service port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    /// The endpoint's address.
    pub ip: Ipv4Addr,
    /// The resolved target port.
    pub port: u16,
    /// The service port's protocol.
    pub protocol: Protocol,
    /// The name of the service port (and so of the frontends) it serves.
    pub port_name: Option<String>,
    /// From [`ANNOTATION_WEIGHTS`], 1 by default.
    pub weight: u16,
    /// From the endpoint's conditions and [`ANNOTATION_MAINTENANCE`].
    pub state: BackendState,
    /// `endpoints[].nodeName`.
    pub node_name: Option<String>,
    /// `endpoints[].targetRef`.
    pub target_ref: Option<TargetRef>,
}

/// Whether a backend takes new connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendState {
    /// Ready: takes new connections.
    Active,
    /// Serving and terminating: takes new connections only when no backend is active.
    Terminating,
    /// Listed in [`ANNOTATION_MAINTENANCE`]: takes no new connections.
    Maintenance,
}

impl BackendState {
    /// The name, as serialized and shown (`active`, `terminating`, `maintenance`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Terminating => "terminating",
            Self::Maintenance => "maintenance",
        }
    }
}

/// What an endpoint stands for (usually a Pod).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRef {
    /// `kind` (`Pod`).
    pub kind: Option<String>,
    /// `namespace`.
    pub namespace: Option<String>,
    /// `name`.
    pub name: Option<String>,
}

/// `spec.sessionAffinity`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SessionAffinity {
    /// `None`: every new connection is balanced on its own.
    #[default]
    None,
    /// `ClientIP`: a client IP keeps its backend until `timeout_s` seconds without traffic.
    ClientIp {
        /// `sessionAffinityConfig.clientIP.timeoutSeconds`, default 10800.
        timeout_s: u32,
    },
}

/// An active health check, from the `lb.xylem.io/health-*` annotations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// What a probe does.
    pub kind: HealthCheckKind,
    /// Time between probes of one backend, in milliseconds (default 5000).
    pub interval_ms: u64,
    /// How long a probe may take, in milliseconds, at most `interval_ms` (default 1000).
    pub timeout_ms: u64,
    /// Consecutive successes that bring a backend up (default 2).
    pub rise: u32,
    /// Consecutive failures that take a backend down (default 3).
    pub fall: u32,
}

/// A probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HealthCheckKind {
    /// `tcp`: a TCP connect to the backend's port.
    Tcp,
    /// `http:/path:status`: an HTTP GET of `path` on the backend's port, healthy when it
    /// answers `expect_status`.
    Http {
        /// Starts with `/` (default `/`).
        path: String,
        /// 100-599 (default 200).
        expect_status: u16,
    },
}

/// Cilium's service annotations, as parsed values. Absent annotations are `None`: Cilium's own
/// defaults (not global; shared when global) are for the cluster-mesh work to apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CiliumAnnotations {
    /// [`ANNOTATION_CILIUM_GLOBAL`].
    pub global: Option<bool>,
    /// [`ANNOTATION_CILIUM_SHARED`].
    pub shared: Option<bool>,
    /// [`ANNOTATION_CILIUM_AFFINITY`].
    pub affinity: Option<CiliumAffinity>,
}

/// `service.cilium.io/affinity`: which cluster's backends a global service prefers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CiliumAffinity {
    /// `local`.
    Local,
    /// `remote`.
    Remote,
    /// `none`.
    None,
}

/// A validated EndpointSlice, for [`Service::join`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSlice {
    /// `metadata.namespace` (`default` when absent).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// The label `kubernetes.io/service-name`.
    pub service: String,
    /// Where it came from (`document 2 (EndpointSlice default/web-abc12)`), for messages.
    pub document: String,
    /// `ports`.
    pub ports: Vec<SlicePort>,
    /// `endpoints`.
    pub endpoints: Vec<Endpoint>,
}

/// One `ports` entry of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlicePort {
    /// `name` (`None` when absent or empty).
    pub name: Option<String>,
    /// `port`; `None` when absent.
    pub port: Option<u16>,
    /// `protocol` (default TCP).
    pub protocol: Protocol,
}

/// One `endpoints` entry of an EndpointSlice, its conditions read as kube-proxy does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `addresses[0]`.
    pub ip: Ipv4Addr,
    /// `conditions.ready` (absent: true).
    pub ready: bool,
    /// `conditions.serving` (absent: true).
    pub serving: bool,
    /// `conditions.terminating` (absent: false).
    pub terminating: bool,
    /// `nodeName`.
    pub node_name: Option<String>,
    /// `targetRef`.
    pub target_ref: Option<TargetRef>,
}

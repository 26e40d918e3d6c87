//! Checked conversion of the raw objects into the crate's model: one field at a time, each
//! error naming its field, and the join of a service's EndpointSlices into its backends.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::parse::{DEFAULT_AFFINITY_TIMEOUT_S, SERVICE_NAME_LABEL, perr};
use super::raw::*;
use super::{
    Backend, BackendState, Endpoint, EndpointSlice, Error, Frontend, Protocol, Service,
    ServicePort, SessionAffinity, SlicePort, TargetPort, TargetRef, annotations,
};

pub(crate) struct Cx<'a> {
    pub(crate) doc: &'a str,
}

impl Cx<'_> {
    fn err(&self, field: impl Into<String>, why: impl Into<String>) -> Error {
        perr(self.doc, field, why)
    }

    fn meta(&self, m: &RawMeta) -> Result<(String, String), Error> {
        if m.name.is_empty() {
            return Err(self.err("metadata.name", "must not be empty"));
        }
        let namespace = m.namespace.clone().unwrap_or_else(|| "default".into());
        if namespace.is_empty() {
            return Err(self.err("metadata.namespace", "must not be empty"));
        }
        Ok((namespace, m.name.clone()))
    }

    fn protocol(&self, path: &str, p: Option<&str>) -> Result<Protocol, Error> {
        match p {
            None | Some("TCP") => Ok(Protocol::Tcp),
            Some("UDP") => Ok(Protocol::Udp),
            Some(other) => Err(self.err(
                path,
                format!("protocol {other:?} is not supported: expected TCP or UDP"),
            )),
        }
    }

    fn port(&self, path: &str, n: i64) -> Result<u16, Error> {
        match u16::try_from(n) {
            Ok(p) if p != 0 => Ok(p),
            _ => Err(self.err(path, format!("port {n} is out of range: expected 1-65535"))),
        }
    }

    pub(crate) fn service(&self, raw: RawService) -> Result<Service, Error> {
        let (namespace, name) = self.meta(&raw.metadata)?;
        let spec = raw.spec;
        self.supported(&spec)?;
        let ips = self.cluster_ips(spec.cluster_ip.as_deref(), spec.cluster_ips.as_deref())?;
        let ports = self.ports(spec.ports.unwrap_or_default())?;
        let frontends = ips
            .iter()
            .flat_map(|&ip| {
                ports.iter().map(move |p| Frontend {
                    ip,
                    port: p.port,
                    protocol: p.protocol,
                    port_name: p.name.clone(),
                })
            })
            .collect();
        let session_affinity = self.affinity(
            spec.session_affinity.as_deref(),
            spec.session_affinity_config,
        )?;
        let annotations = raw.metadata.annotations.unwrap_or_default();
        let parsed = annotations::parse(&annotations)
            .map_err(|(k, why)| self.err(format!("metadata.annotations.{k}"), why))?;
        Ok(Service {
            namespace,
            name,
            annotations,
            frontends,
            ports,
            backends: Vec::new(),
            session_affinity,
            health_check: parsed.health_check,
            cilium: parsed.cilium,
        })
    }

    /// The spec's kind of service and traffic policies, which must be what Xylem balances.
    fn supported(&self, spec: &RawServiceSpec) -> Result<(), Error> {
        match spec.type_.as_deref() {
            None | Some("ClusterIP") => {}
            Some(other) => {
                return Err(self.err(
                    "spec.type",
                    format!(
                        "type {other:?} is not supported yet: only ClusterIP services are \
                         balanced; leave this service out of the import (or set type: ClusterIP \
                         and remove its nodePorts)"
                    ),
                ));
            }
        }
        if let Some(fams) = &spec.ip_families {
            for (i, f) in fams.iter().enumerate() {
                if f != "IPv4" {
                    return Err(self.err(
                        format!("spec.ipFamilies[{i}]"),
                        format!("{f:?}: only IPv4 is supported yet"),
                    ));
                }
            }
        }
        match spec.ip_family_policy.as_deref() {
            None | Some("SingleStack" | "PreferDualStack" | "RequireDualStack") => {}
            Some(other) => {
                return Err(self.err(
                    "spec.ipFamilyPolicy",
                    format!("{other:?}: expected SingleStack, PreferDualStack or RequireDualStack"),
                ));
            }
        }
        match spec.internal_traffic_policy.as_deref() {
            None | Some("Cluster") => {}
            Some(other) => {
                return Err(self.err(
                    "spec.internalTrafficPolicy",
                    format!(
                        "{other:?} is not supported: Xylem balances over every backend of the \
                         cluster (Cluster); remove the field or set it to Cluster"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `spec.ports`: at least one, each port and protocol once, each named when there are
    /// several.
    fn ports(&self, raw_ports: Vec<RawServicePort>) -> Result<Vec<ServicePort>, Error> {
        if raw_ports.is_empty() {
            return Err(self.err("spec.ports", "a ClusterIP service needs at least one port"));
        }
        let mut ports = Vec::with_capacity(raw_ports.len());
        let mut names = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for (i, p) in raw_ports.into_iter().enumerate() {
            let path = format!("spec.ports[{i}]");
            let port = self.port(&format!("{path}.port"), p.port)?;
            let protocol = self.protocol(&format!("{path}.protocol"), p.protocol.as_deref())?;
            let name = p.name.filter(|n| !n.is_empty());
            if let Some(n) = &name
                && !names.insert(n.clone())
            {
                return Err(self.err(
                    format!("{path}.name"),
                    format!("port name {n:?} is used twice; give each port its own name"),
                ));
            }
            if !keys.insert((port, protocol)) {
                return Err(self.err(
                    format!("{path}.port"),
                    format!(
                        "duplicate frontend: port {port}/{protocol} is listed twice; list each \
                         port and protocol once"
                    ),
                ));
            }
            let target_port = self.target_port(&path, port, p.target_port)?;
            ports.push(ServicePort {
                name,
                port,
                protocol,
                target_port,
            });
        }
        if ports.len() > 1
            && let Some(i) = ports.iter().position(|p| p.name.is_none())
        {
            return Err(self.err(
                format!("spec.ports[{i}].name"),
                "a service with several ports must name each of them",
            ));
        }
        Ok(ports)
    }

    /// A port's `targetPort` (`path` is the port's): a number, a port name, or by default the
    /// service port itself.
    fn target_port(
        &self,
        path: &str,
        port: u16,
        target: Option<IntOrString>,
    ) -> Result<TargetPort, Error> {
        Ok(match target {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => {
                TargetPort::Number(self.port(&format!("{path}.targetPort"), n)?)
            }
            Some(IntOrString::Str(s)) => {
                if let Ok(n) = s.parse::<i64>() {
                    return Err(self.err(
                        format!("{path}.targetPort"),
                        format!(
                            "{s:?} is a number written as a string: write targetPort: {n} \
                             (a string is a port name)"
                        ),
                    ));
                }
                if s.is_empty() || s.len() > 15 {
                    return Err(self.err(
                        format!("{path}.targetPort"),
                        format!("{s:?} is not a port name (1-15 characters)"),
                    ));
                }
                TargetPort::Name(s)
            }
        })
    }

    /// `spec.sessionAffinity` and its configuration.
    fn affinity(
        &self,
        kind: Option<&str>,
        config: Option<RawAffinityConfig>,
    ) -> Result<SessionAffinity, Error> {
        Ok(match kind {
            None | Some("None") => {
                if config.is_some() {
                    return Err(self.err(
                        "spec.sessionAffinityConfig",
                        "only meaningful with sessionAffinity: ClientIP; set that or remove this",
                    ));
                }
                SessionAffinity::None
            }
            Some("ClientIP") => {
                let t = config
                    .and_then(|c| c.client_ip)
                    .and_then(|c| c.timeout_seconds);
                let timeout_s = match t {
                    None => DEFAULT_AFFINITY_TIMEOUT_S,
                    Some(n @ 1..=86_400) => n as u32,
                    Some(n) => {
                        return Err(self.err(
                            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                            format!("{n} is out of range: expected 1-86400 seconds"),
                        ));
                    }
                };
                SessionAffinity::ClientIp { timeout_s }
            }
            Some(other) => {
                return Err(self.err(
                    "spec.sessionAffinity",
                    format!("{other:?}: expected None or ClientIP"),
                ));
            }
        })
    }

    fn cluster_ips(
        &self,
        ip: Option<&str>,
        ips: Option<&[String]>,
    ) -> Result<Vec<Ipv4Addr>, Error> {
        let headless = |field: &str| {
            self.err(
                field,
                "a headless service (clusterIP: None) has no virtual IP to balance; leave it \
                 out of the import",
            )
        };
        let addr = |field: &str, s: &str| -> Result<Ipv4Addr, Error> {
            if s == "None" {
                return Err(headless(field));
            }
            s.parse::<Ipv4Addr>().map_err(|_| {
                let why = if s.contains(':') {
                    format!("{s:?}: IPv6 is not supported yet")
                } else {
                    format!("{s:?} is not an IPv4 address")
                };
                self.err(field, why)
            })
        };
        let first = ip
            .filter(|s| !s.is_empty())
            .map(|s| addr("spec.clusterIP", s))
            .transpose()?;
        let mut out = Vec::new();
        for (i, s) in ips.unwrap_or_default().iter().enumerate() {
            let a = addr(&format!("spec.clusterIPs[{i}]"), s)?;
            if out.contains(&a) {
                return Err(self.err(
                    format!("spec.clusterIPs[{i}]"),
                    format!("{a} is listed twice"),
                ));
            }
            out.push(a);
        }
        match (first, out.first()) {
            (None, None) => Err(self.err(
                "spec.clusterIP",
                "required: Xylem does not allocate virtual IPs; export the Service after the \
                 server assigned one",
            )),
            (Some(a), None) => Ok(vec![a]),
            (None, Some(_)) => Ok(out),
            (Some(a), Some(&b)) if a == b => Ok(out),
            (Some(a), Some(&b)) => Err(self.err(
                "spec.clusterIPs[0]",
                format!("{b} differs from spec.clusterIP {a}; they must agree"),
            )),
        }
    }

    pub(crate) fn slice(&self, raw: RawSlice) -> Result<EndpointSlice, Error> {
        let (namespace, name) = self.meta(&raw.metadata)?;
        let label = format!("metadata.labels.{SERVICE_NAME_LABEL}");
        let service = match raw
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        {
            Some(s) if !s.is_empty() => s.clone(),
            _ => {
                return Err(self.err(
                    label,
                    "required: it names the Service (in the slice's namespace) this slice \
                     belongs to",
                ));
            }
        };
        if raw.address_type != "IPv4" {
            return Err(self.err(
                "addressType",
                format!("{:?} is not supported yet: expected IPv4", raw.address_type),
            ));
        }
        let mut ports = Vec::new();
        for (i, p) in raw.ports.into_iter().flatten().enumerate() {
            let path = format!("ports[{i}]");
            ports.push(SlicePort {
                name: p.name.filter(|n| !n.is_empty()),
                port: p
                    .port
                    .map(|n| self.port(&format!("{path}.port"), n))
                    .transpose()?,
                protocol: self.protocol(&format!("{path}.protocol"), p.protocol.as_deref())?,
            });
        }
        let mut endpoints = Vec::new();
        for (i, e) in raw.endpoints.into_iter().flatten().enumerate() {
            let path = format!("endpoints[{i}]");
            let ip = match e.addresses.as_slice() {
                [a] => a.parse::<Ipv4Addr>().map_err(|_| {
                    self.err(
                        format!("{path}.addresses[0]"),
                        format!("{a:?} is not an IPv4 address"),
                    )
                })?,
                [] => {
                    return Err(
                        self.err(format!("{path}.addresses"), "an endpoint needs an address")
                    );
                }
                _ => {
                    return Err(self.err(
                        format!("{path}.addresses"),
                        "only one address per endpoint is read (Kubernetes gives the others no \
                         meaning): write one endpoint per address",
                    ));
                }
            };
            let c = e.conditions.unwrap_or_default();
            endpoints.push(Endpoint {
                ip,
                ready: c.ready.unwrap_or(true),
                serving: c.serving.unwrap_or(true),
                terminating: c.terminating.unwrap_or(false),
                node_name: e.node_name,
                target_ref: e.target_ref.map(|t| TargetRef {
                    kind: t.kind,
                    namespace: t.namespace,
                    name: t.name,
                }),
            });
        }
        Ok(EndpointSlice {
            namespace,
            name,
            service,
            document: self.doc.to_owned(),
            ports,
            endpoints,
        })
    }
}

/// The backends of `svc` from `slices` (all of them its own), with its annotations applied.
pub(crate) fn backends(
    doc: &str,
    svc: &Service,
    slices: &[EndpointSlice],
) -> Result<Vec<Backend>, Error> {
    let ann = annotations::parse(&svc.annotations)
        .map_err(|(k, why)| perr(doc, format!("metadata.annotations.{k}"), why))?;
    let mut out: Vec<Backend> = Vec::new();
    for sp in &svc.ports {
        for slice in slices {
            let port = match &sp.target_port {
                TargetPort::Number(n) => Some(*n),
                TargetPort::Name(n) => {
                    let by = |name: Option<&str>| {
                        slice
                            .ports
                            .iter()
                            .find(|p| p.protocol == sp.protocol && p.name.as_deref() == name)
                            .and_then(|p| p.port)
                    };
                    by(Some(n)).or_else(|| by(sp.name.as_deref()))
                }
            };
            let Some(port) = port else { continue };
            for e in &slice.endpoints {
                let state = if e.ready {
                    BackendState::Active
                } else if e.serving && e.terminating {
                    BackendState::Terminating
                } else {
                    continue;
                };
                let state = if ann.maintenance.contains(&e.ip) {
                    BackendState::Maintenance
                } else {
                    state
                };
                let b = Backend {
                    ip: e.ip,
                    port,
                    protocol: sp.protocol,
                    port_name: sp.name.clone(),
                    weight: ann.weights.get(&e.ip).copied().unwrap_or(1),
                    state,
                    node_name: e.node_name.clone(),
                    target_ref: e.target_ref.clone(),
                };
                match out.iter_mut().find(|x| {
                    x.ip == b.ip
                        && x.port == b.port
                        && x.protocol == b.protocol
                        && x.port_name == b.port_name
                }) {
                    Some(x) => {
                        if x.state == BackendState::Terminating && b.state == BackendState::Active {
                            *x = b;
                        }
                    }
                    None => out.push(b),
                }
            }
        }
    }
    if !out.is_empty() && out.iter().all(|b| b.weight == 0) {
        return Err(perr(
            doc,
            format!("metadata.annotations.{}", annotations::ANNOTATION_WEIGHTS),
            "every backend has weight 0, so none could take a connection; give at least one a \
             weight above 0",
        ));
    }
    Ok(out)
}

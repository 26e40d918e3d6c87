//! Service and EndpointSlice YAML → validated [`Service`] values.
//!
//! Documents are read into the raw types ([`super::raw`]), checked and converted one field at a
//! time ([`super::convert`]), then the slices are joined to their services.

use std::collections::{BTreeMap, BTreeSet};

use serde_norway::Value;

use super::convert::{Cx, backends};
use super::raw::{RawService, RawSlice};

use super::{EndpointSlice, Error, Import, Service};

/// The accepted `apiVersion` of a Service.
pub const SERVICE_API_VERSION: &str = "v1";
/// The Service `kind`.
pub const SERVICE_KIND: &str = "Service";
/// The accepted `apiVersion` of an EndpointSlice.
pub const ENDPOINTSLICE_API_VERSION: &str = "discovery.k8s.io/v1";
/// The EndpointSlice `kind`.
pub const ENDPOINTSLICE_KIND: &str = "EndpointSlice";
/// The label tying an EndpointSlice to its Service (in the slice's namespace).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when absent (Kubernetes' default, 3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;

/// Parses, validates and joins every Service and EndpointSlice in `yaml`: one document,
/// several (`---`), or `List`s. All or nothing: the first invalid field anywhere fails the
/// whole input. Every EndpointSlice's Service must be in the input; see [`parse_with`] for an
/// agent that already holds services.
pub fn parse(yaml: &str) -> Result<Vec<Service>, Error> {
    parse_with(yaml, &|_, _| false).map(|i| i.services)
}

/// As [`parse`], for an agent that already holds services: `known(namespace, name)` says
/// whether the agent has that Service. An EndpointSlice whose Service is in neither the input
/// nor the agent is an error naming it; one whose Service is only in the agent comes back in
/// [`Import::slices`], validated, for [`Service::join`]. A Service in the input is joined
/// with the input's slices only (which come back in [`Import::joined`]); what to do with
/// slices the agent already holds for it is the agent's decision ([`Service::join`] again).
/// Frontends are checked for uniqueness within the input only: the agent checks them against
/// the services it holds.
pub fn parse_with(yaml: &str, known: &dyn Fn(&str, &str) -> bool) -> Result<Import, Error> {
    let (services, slices) = read(yaml)?;
    check_unique(&services, &slices)?;
    let mut for_agent = Vec::new();
    let mut by_service: BTreeMap<(String, String), Vec<EndpointSlice>> = BTreeMap::new();
    for s in slices {
        let in_file = services
            .iter()
            .any(|(_, x)| x.namespace == s.namespace && x.name == s.service);
        if in_file {
            by_service
                .entry((s.namespace.clone(), s.service.clone()))
                .or_default()
                .push(s);
        } else if known(&s.namespace, &s.service) {
            for_agent.push(s);
        } else {
            return Err(perr(
                &s.document,
                format!("metadata.labels.{SERVICE_NAME_LABEL}"),
                format!(
                    "service {}/{} is in neither the input nor the agent; import the Service \
                     with its EndpointSlices (kubectl get svc,endpointslices -o yaml)",
                    s.namespace, s.service
                ),
            ));
        }
    }
    let mut out = Vec::with_capacity(services.len());
    let mut joined = Vec::new();
    for (doc, mut s) in services {
        let mine = by_service
            .remove(&(s.namespace.clone(), s.name.clone()))
            .unwrap_or_default();
        s.backends = backends(&doc, &s, &mine)?;
        out.push(s);
        joined.extend(mine);
    }
    Ok(Import {
        services: out,
        slices: for_agent,
        joined,
    })
}

/// The services of an input, each with the document it came from, and its EndpointSlices.
type Read = (Vec<(String, Service)>, Vec<EndpointSlice>);

/// Every Service and EndpointSlice of `yaml` (documents, or the items of a `List`), checked and
/// converted one at a time.
fn read(yaml: &str) -> Result<Read, Error> {
    let mut services: Vec<(String, Service)> = Vec::new();
    let mut slices: Vec<EndpointSlice> = Vec::new();
    for o in xylem_kube::objects(yaml, "Services and EndpointSlices").map_err(Error::from)? {
        one(&o.document, o.value, &mut services, &mut slices)?;
    }
    Ok((services, slices))
}

/// No service, frontend or EndpointSlice twice in one input.
fn check_unique(services: &[(String, Service)], slices: &[EndpointSlice]) -> Result<(), Error> {
    let mut seen = BTreeSet::new();
    let mut frontends = BTreeMap::new();
    for (doc, s) in services {
        if !seen.insert(s.key()) {
            return Err(perr(
                doc,
                "metadata.name",
                format!("service {} appears twice in the input; keep one", s.key()),
            ));
        }
        for (k, f) in s.frontends.iter().enumerate() {
            let key = (f.ip, f.port, f.protocol);
            if let Some(other) = frontends.insert(key, s.key()) {
                let port_index = k % s.ports.len();
                return Err(perr(
                    doc,
                    format!("spec.ports[{port_index}].port"),
                    format!(
                        "frontend {}:{}/{} is already service {other}'s; a virtual IP, port and \
                         protocol belong to one service",
                        f.ip, f.port, f.protocol
                    ),
                ));
            }
        }
    }
    let mut seen = BTreeSet::new();
    for s in slices {
        if !seen.insert((s.namespace.clone(), s.name.clone())) {
            return Err(perr(
                &s.document,
                "metadata.name",
                format!(
                    "EndpointSlice {}/{} appears twice in the input; keep one",
                    s.namespace, s.name
                ),
            ));
        }
    }

    Ok(())
}

pub(crate) fn perr(doc: &str, field: impl Into<String>, why: impl Into<String>) -> Error {
    Error::Invalid {
        document: doc.to_owned(),
        field: field.into(),
        why: why.into(),
    }
}

/// One object: checks apiVersion and kind on the untyped value, then deserializes it.
fn one(
    doc: &str,
    value: Value,
    services: &mut Vec<(String, Service)>,
    slices: &mut Vec<EndpointSlice>,
) -> Result<(), Error> {
    let Some(map) = value.as_mapping() else {
        return Err(perr(
            doc,
            "(document)",
            "expected a mapping (a Service or an EndpointSlice)",
        ));
    };
    let get_str = |k: &str| map.get(k).and_then(Value::as_str).map(str::to_owned);
    let kind = get_str("kind");
    let meta = |k: &str| {
        value
            .get("metadata")
            .and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let ns = meta("namespace").unwrap_or_else(|| "default".into());
    let doc = match (&kind, meta("name")) {
        (Some(k), Some(n)) if k == SERVICE_KIND || k == ENDPOINTSLICE_KIND => {
            format!("{doc} ({k} {ns}/{n})")
        }
        _ => doc.to_owned(),
    };
    let want_api = match kind.as_deref() {
        Some(SERVICE_KIND) => SERVICE_API_VERSION,
        Some(ENDPOINTSLICE_KIND) => ENDPOINTSLICE_API_VERSION,
        Some("Endpoints") => {
            return Err(perr(
                &doc,
                "kind",
                "Endpoints (v1) are not read: export EndpointSlices instead (kubectl get \
                 svc,endpointslices -o yaml)",
            ));
        }
        other => {
            return Err(perr(
                &doc,
                "kind",
                format!(
                    "expected \"Service\" or \"EndpointSlice\" (or \"List\" of them), got {}",
                    shown(other.map(str::to_owned))
                ),
            ));
        }
    };
    match get_str("apiVersion") {
        Some(v) if v == want_api => {}
        other => {
            return Err(perr(
                &doc,
                "apiVersion",
                format!(
                    "expected {want_api:?} for a {}, got {}",
                    kind.as_deref().unwrap_or(""),
                    shown(other)
                ),
            ));
        }
    }
    if kind.as_deref() == Some(SERVICE_KIND) {
        let raw: RawService = typed(&doc, value)?;
        let svc = Cx { doc: &doc }.service(raw)?;
        services.push((doc, svc));
    } else {
        let raw: RawSlice = typed(&doc, value)?;
        slices.push(Cx { doc: &doc }.slice(raw)?);
    }
    Ok(())
}

/// Deserializes with the failing field's path; an unknown field is named by its full path.
fn typed<T: serde::de::DeserializeOwned>(doc: &str, value: Value) -> Result<T, Error> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut path = e.path().to_string();
        let msg = e.inner().to_string();
        if let Some(rest) = msg.strip_prefix("unknown field `") {
            let field = rest.split('`').next().unwrap_or("");
            // serde_path_to_error already ends the path with the unknown field; older
            // versions stop at its parent.
            if path == "." {
                path = field.to_owned();
            } else if path != field && !path.ends_with(&format!(".{field}")) {
                path = format!("{path}.{field}");
            }
            return perr(
                doc,
                path,
                "Xylem does not act on this field, so it is rejected rather than ignored \
                 (see xylem-services' documentation for the accepted fields); remove it",
            );
        }
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
        perr(doc, path, msg)
    })
}

fn shown(v: Option<String>) -> String {
    v.map_or_else(|| "nothing".into(), |v| format!("{v:?}"))
}

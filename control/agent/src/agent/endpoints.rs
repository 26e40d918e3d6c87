//! Endpoints: the pods bound to the agent's ports, their validation, restore and hot-add (the
//! ports themselves are opened and closed in the `ports` module).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use xdp_redirector::XdpMode;
use xylem_dataplane::Error as DpError;
use xylem_dataplane::tables::MacAddr;

use xylem_policy::EndpointInfo;

use xylem_api::{Endpoint, EndpointRequest};

use super::*;
use crate::Error;
use crate::state::kind::{CniAttachment, StoredEndpoint};
use crate::state::{StateStore, TypedStore, kind};
use xylem_api::config::{AgentConfig, PortConfig, PortKind};

/// Checks a Kubernetes-style name (RFC 1123 label: lowercase alphanumerics and `-`, 1–63).
pub fn check_name(field: &str, v: &str) -> Result<(), Rejected> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(reject(
            Refusal::Invalid,
            field,
            format!("{v:?} is not a valid name: use 1 to 63 lowercase letters, digits and '-'"),
        ))
    }
}

/// Checks a label as Kubernetes would take it (key and value, naming `labels.<key>`).
pub(super) fn check_label(k: &str, v: &str) -> Result<(), Rejected> {
    let good = |s: &str, max: usize| {
        s.len() <= max
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
    };
    if k.is_empty() || !good(k, 253) {
        return Err(reject(
            Refusal::Invalid,
            &format!("labels.{k}"),
            "invalid label key",
        ));
    }
    if !good(v, 63) {
        return Err(reject(
            Refusal::Invalid,
            &format!("labels.{k}"),
            format!("{v:?} is not a valid label value (at most 63 of [A-Za-z0-9-_./])"),
        ));
    }
    Ok(())
}

/// The longest container id the CNI specification allows.
const MAX_CONTAINER_ID: usize = 256;

/// Checks a request's CNI fields, naming the one at fault; returns the attachment to keep.
/// `netns` and `cni_ifname` describe a container, so they come only with `container_id`.
pub(super) fn check_cni(req: &EndpointRequest) -> Result<Option<CniAttachment>, Rejected> {
    let Some(id) = &req.container_id else {
        for (field, v) in [("netns", &req.netns), ("cni_ifname", &req.cni_ifname)] {
            if v.is_some() {
                return Err(reject(
                    Refusal::Invalid,
                    field,
                    "is given without container_id: give the container's id too, or leave it \
                     out",
                ));
            }
        }
        return Ok(None);
    };
    let id_ok = id.len() <= MAX_CONTAINER_ID
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !id_ok {
        return Err(reject(
            Refusal::Invalid,
            "container_id",
            format!(
                "{id:?} is not a container id: as the CNI specification has it, 1 to \
                 {MAX_CONTAINER_ID} letters, digits, '_', '.' and '-', starting with a letter or \
                 digit"
            ),
        ));
    }
    if let Some(netns) = &req.netns
        && !netns.starts_with('/')
    {
        return Err(reject(
            Refusal::Invalid,
            "netns",
            format!("{netns:?} is not an absolute path: give the namespace's path, as CNI_NETNS"),
        ));
    }
    if let Some(ifname) = &req.cni_ifname {
        let ok = !ifname.is_empty()
            && ifname.len() <= 15
            && ifname != "."
            && ifname != ".."
            && !ifname
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace());
        if !ok {
            return Err(reject(
                Refusal::Invalid,
                "cni_ifname",
                format!(
                    "{ifname:?} is not an interface name: 1 to 15 characters, without '/', ':' \
                     or whitespace, and not '.' or '..'"
                ),
            ));
        }
    }
    Ok(Some(CniAttachment {
        container_id: id.clone(),
        netns: req.netns.clone(),
        ifname: req.cni_ifname.clone(),
    }))
}

/// Shows `cni` in the endpoint's view.
fn with_cni(mut e: Endpoint, cni: Option<&CniAttachment>) -> Endpoint {
    if let Some(c) = cni {
        e.container_id = Some(c.container_id.clone());
        e.netns.clone_from(&c.netns);
        e.cni_ifname.clone_from(&c.ifname);
    }
    e
}

/// `namespace/name` of a pod port.
pub(super) fn endpoint_key(p: &PortConfig) -> String {
    format!(
        "{}/{}",
        p.namespace.as_deref().unwrap_or("default"),
        p.name.as_deref().unwrap_or(&p.ifname)
    )
}

fn endpoint_of(p: &PortConfig) -> Endpoint {
    Endpoint {
        name: p.name.clone().unwrap_or_default(),
        namespace: p.namespace.clone().unwrap_or_else(|| "default".into()),
        labels: p.labels.clone(),
        ip: p.ip,
        interface: p.ifname.clone(),
        mac: p.mac.to_string(),
        identity: None,
        ingress_enforced: None,
        egress_enforced: None,
        interface_missing: false,
        container_id: None,
        netns: None,
        cni_ifname: None,
    }
}

/// The ports and their bindings: the configuration's ports, then the interfaces that stored
/// endpoints added at runtime; bound as the configuration says, overridden by the endpoints kept
/// in the store (and by deletions recorded there). A stored endpoint that cannot be restored
/// (its interface is gone, its address outside the pod CIDR) is an error: the agent refuses to
/// start rather than run half-configured. Except one a CNI plugin added (it has a container
/// id) whose interface is gone: its container was deleted while the agent was down, which
/// destroys the veth, and the runtime's DEL could not reach the agent. It is deleted from the
/// store with a warning, so that one pod gone does not keep the node's dataplane down.
pub(super) fn restore_bindings(
    cfg: &AgentConfig,
    store: &dyn StateStore,
) -> Result<(Vec<PortConfig>, Vec<Option<PortConfig>>), Error> {
    let mut all: Vec<PortConfig> = cfg.ports.clone();
    let mut b: Vec<Option<PortConfig>> = cfg.ports.iter().cloned().map(Some).collect();
    for ifname in store.list_as::<kind::UnboundPorts>()?.keys() {
        if let Some(i) = cfg.ports.iter().position(|p| &p.ifname == ifname) {
            b[i] = None;
        }
    }
    let stored = store.list_as::<kind::Endpoints>()?;
    let mut n = 0;
    for (key, StoredEndpoint { port: p, cni }) in stored {
        let bad = |why: String| {
            Error::State(format!(
                "stored endpoint {key} cannot be restored: {why}; fix the configuration, or start \
                 with --start-empty to discard the stored state"
            ))
        };
        let i = match all.iter().position(|c| c.ifname == p.ifname) {
            Some(i) => i,
            None => {
                // Added through the API: its interface must still be there.
                if ifindex(&p.ifname).is_err() {
                    if let Some(cni) = &cni {
                        drop_stale_cni_endpoint(store, &key, &p.ifname, cni)?;
                        continue;
                    }
                    return Err(bad(format!(
                        "its interface {} does not exist in the agent's network namespace",
                        p.ifname
                    )));
                }
                all.push(p.clone());
                b.push(None);
                all.len() - 1
            }
        };
        if !cfg.pod_cidr.contains(p.ip) {
            return Err(bad(format!("{} is outside the pod CIDR", p.ip)));
        }
        // A configured endpoint that was moved elsewhere through the API leaves its old port.
        for (j, other) in b.iter_mut().enumerate() {
            if j != i
                && other
                    .as_ref()
                    .is_some_and(|o| o.kind == PortKind::Pod && endpoint_key(o) == key)
            {
                *other = None;
            }
        }
        b[i] = Some(p);
        n += 1;
    }
    if n > 0 {
        tracing::info!(endpoints = n, "restored endpoints from the state store");
    }
    Ok((all, b))
}

/// Deletes the stored endpoint `key`, added by a CNI plugin for `cni`'s container, whose
/// interface `ifname` is gone (see [`restore_bindings`]), with its FQDN cache.
fn drop_stale_cni_endpoint(
    store: &dyn StateStore,
    key: &str,
    ifname: &str,
    cni: &CniAttachment,
) -> Result<(), Error> {
    store.delete(kind::Endpoints::NAME, key)?;
    store.delete(kind::FqdnCache::NAME, key)?;
    tracing::warn!(
        endpoint = %key,
        %ifname,
        container_id = %cni.container_id,
        "stored endpoint dropped: its interface is gone (its container was deleted while the \
         agent was down)"
    );
    Ok(())
}

impl AgentState {
    pub(super) fn ports_snapshot(&self) -> Vec<Option<(PortConfig, u32, XdpMode)>> {
        self.ports.lock().map(|p| p.clone()).unwrap_or_default()
    }

    pub(super) fn bindings_snapshot(&self) -> Vec<Option<PortConfig>> {
        self.bindings.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// The pods this agent serves, then those whose interface is missing (see the `links`
    /// module).
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let info: BTreeMap<Ipv4Addr, EndpointInfo> = self
            .policy
            .lock()
            .map(|p| p.endpoints.iter().map(|e| (e.ip, e.clone())).collect())
            .unwrap_or_default();
        let cni = self.cni_attachments();
        self.bindings_snapshot()
            .iter()
            .flatten()
            .filter(|p| p.kind == PortKind::Pod)
            .map(|p| {
                let mut e = with_cni(endpoint_of(p), cni.get(&endpoint_key(p)));
                if let Some(i) = info.get(&p.ip) {
                    e.identity = Some(i.identity);
                    e.ingress_enforced = Some(i.ingress_enforced);
                    e.egress_enforced = Some(i.egress_enforced);
                }
                e
            })
            .chain(self.missing_snapshot().iter().filter_map(|m| {
                let p = m.endpoint()?;
                let mut e = with_cni(endpoint_of(p), cni.get(&endpoint_key(p)));
                e.interface_missing = true;
                Some(e)
            }))
            .collect()
    }

    /// The CNI attachments of the stored endpoints, by `namespace/name`. Read from the store,
    /// where each is written with its endpoint in the same transaction, so they never disagree.
    fn cni_attachments(&self) -> BTreeMap<String, CniAttachment> {
        self.store
            .list_as::<kind::Endpoints>()
            .map(|all| {
                all.into_iter()
                    .filter_map(|(k, e)| Some((k, e.cni?)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Creates or replaces the endpoint `namespace/name`: validates, stores it durably, then
    /// publishes new tables. A refused request changes nothing. Returns the endpoint and whether
    /// it is new.
    pub fn put_endpoint(
        &self,
        namespace: &str,
        name: &str,
        req: EndpointRequest,
    ) -> Result<(Endpoint, bool), Rejected> {
        check_name("namespace", namespace)?;
        check_name("name", name)?;
        let (ip, mac) = self.check_addresses(&req)?;
        for (k, v) in &req.labels {
            check_label(k, v)?;
        }
        let cni = check_cni(&req)?;
        let mut bindings = self
            .bindings
            .lock()
            .map_err(|_| reject(Refusal::Failed, "-", "agent state poisoned"))?;
        let port_opt = self.check_interface(&req.ifname)?;
        let key = format!("{namespace}/{name}");
        check_conflicts(&bindings, &key, ip, port_opt)?;
        // Every check passed: open the new interface now (attach, a socket per worker).
        let port = match port_opt {
            Some(p) => p,
            None => {
                let record = PortConfig {
                    ifname: req.ifname.clone(),
                    kind: PortKind::Pod,
                    ip: Ipv4Addr::UNSPECIFIED,
                    mac: MacAddr::default(),
                    name: None,
                    namespace: None,
                    labels: BTreeMap::new(),
                    next_hop: None,
                };
                let p = self.open_port(record).map_err(|e| match e {
                    // The frames are all spoken for: nothing was changed, and only the
                    // configuration (workers.spare_ports) makes room.
                    Error::Dataplane(DpError::PortBudget { .. }) => reject(
                        Refusal::Unavailable,
                        "ifname",
                        format!("no room for a port on {}: {e}", req.ifname),
                    ),
                    e => reject(Refusal::Failed, "ifname", e.to_string()),
                })?;
                if bindings.len() <= p {
                    bindings.resize(p + 1, None);
                }
                p
            }
        };
        let created = bindings[port].is_none()
            || bindings[port]
                .as_ref()
                .is_some_and(|b| endpoint_key(b) != key);
        let new_port = PortConfig {
            ifname: req.ifname.clone(),
            kind: PortKind::Pod,
            ip,
            mac,
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: req.labels,
            next_hop: None,
        };
        let mut next = bindings.clone();
        next[port] = Some(new_port.clone());
        let stored = StoredEndpoint {
            port: new_port.clone(),
            cni,
        };
        let ops = vec![
            StoreOp::put::<kind::Endpoints>(&key, &stored)?,
            StoreOp::delete::<kind::UnboundPorts>(&req.ifname),
        ];
        let revision = self
            .publish(&next, &mut *self.lock_policy()?, None, ops)
            .map_err(|e| e.rejected(Refusal::Invalid, "ip"))?;
        *bindings = next;
        // A port that went missing with this endpoint, or with this interface, is replaced.
        self.forget_missing(&key, Some(&req.ifname));
        tracing::info!(
            endpoint = %key,
            ifname = %req.ifname,
            %ip,
            container_id = stored.cni.as_ref().map_or("-", |c| c.container_id.as_str()),
            revision,
            "endpoint set"
        );
        Ok((
            with_cni(endpoint_of(&new_port), stored.cni.as_ref()),
            created,
        ))
    }

    /// An endpoint request's IP (inside the pod CIDR, neither the gateway's nor the network's)
    /// and MAC (unicast).
    fn check_addresses(&self, req: &EndpointRequest) -> Result<(Ipv4Addr, MacAddr), Rejected> {
        let ip: Ipv4Addr = req.ip.parse().map_err(|_| {
            reject(
                Refusal::Invalid,
                "ip",
                format!("{:?} is not an IPv4 address", req.ip),
            )
        })?;
        if !self.cfg.pod_cidr.contains(ip) {
            return Err(reject(
                Refusal::Invalid,
                "ip",
                format!("{ip} is outside the pod CIDR {}", self.cfg.pod_cidr),
            ));
        }
        if ip == self.cfg.gateway.ip || ip == self.cfg.pod_cidr.addr {
            return Err(reject(
                Refusal::Invalid,
                "ip",
                format!("{ip} is reserved (gateway or network)"),
            ));
        }
        let mac: MacAddr = req.mac.parse().map_err(|_| {
            reject(
                Refusal::Invalid,
                "mac",
                format!(
                    "{:?} is not a MAC address (write it 02:00:00:00:00:0a)",
                    req.mac
                ),
            )
        })?;
        if mac.is_multicast() || mac.0 == [0; 6] {
            return Err(reject(
                Refusal::Invalid,
                "mac",
                format!("{:?} is not a unicast MAC address", req.mac),
            ));
        }
        Ok((ip, mac))
    }

    /// The port of `ifname` if the agent has it already (it must be a pod port), else `None`
    /// once the interface is known to exist in the agent's namespace: checked before anything
    /// is attached.
    fn check_interface(&self, ifname: &str) -> Result<Option<usize>, Rejected> {
        let ports = self.ports_snapshot();
        let Some(i) = ports
            .iter()
            .position(|p| p.as_ref().is_some_and(|(p, _, _)| p.ifname == ifname))
        else {
            if ifname.is_empty() || ifname.len() > 15 {
                return Err(reject(
                    Refusal::Invalid,
                    "ifname",
                    "an interface name has 1 to 15 characters",
                ));
            }
            if ifindex(ifname).is_err() {
                return Err(reject(
                    Refusal::Invalid,
                    "ifname",
                    format!("interface {ifname:?} does not exist in the agent's network namespace"),
                ));
            }
            return Ok(None);
        };
        if ports[i]
            .as_ref()
            .is_some_and(|(p, _, _)| p.kind != PortKind::Pod)
        {
            return Err(reject(
                Refusal::Invalid,
                "ifname",
                format!("{ifname} is the host port"),
            ));
        }
        Ok(Some(i))
    }

    /// Deletes the endpoint `namespace/name`: its route goes (its port stays attached and
    /// serves nothing), durably. Returns whether it existed.
    pub fn delete_endpoint(&self, namespace: &str, name: &str) -> Result<bool, Rejected> {
        check_name("namespace", namespace)?;
        check_name("name", name)?;
        let key = format!("{namespace}/{name}");
        let mut bindings = self
            .bindings
            .lock()
            .map_err(|_| reject(Refusal::Failed, "-", "agent state poisoned"))?;
        let Some(port) = bindings.iter().position(|b| {
            b.as_ref()
                .is_some_and(|b| b.kind == PortKind::Pod && endpoint_key(b) == key)
        }) else {
            return self.delete_missing_endpoint(&key);
        };
        let ifname = bindings[port]
            .as_ref()
            .map_or_else(String::new, |b| b.ifname.clone());
        let mut next = bindings.clone();
        next[port] = None;
        let ops = vec![
            StoreOp::delete::<kind::UnboundPorts>(&ifname),
            StoreOp::delete::<kind::Endpoints>(&key),
            StoreOp::delete::<kind::FqdnCache>(&key),
        ];
        // Its names first, so the DNS thread cannot write them back once the key is deleted.
        self.dns.drop_endpoint(&key);
        // The route goes first (the tables swap), then the port: by then no worker sends to it.
        let revision = self
            .publish(&next, &mut *self.lock_policy()?, None, ops)
            .map_err(|e| e.rejected(Refusal::Failed, "-"))?;
        *bindings = next;
        tracing::info!(endpoint = %key, %ifname, revision, "endpoint deleted");
        self.close_port(port)
            .map_err(|e| reject(Refusal::Failed, "ifname", e.to_string()))?;
        Ok(true)
    }
}

impl AgentState {
    /// Deletes endpoint `key` if its interface is missing: it has no route and no port, only
    /// its record. Returns whether it was there. Called with the bindings lock held.
    fn delete_missing_endpoint(&self, key: &str) -> Result<bool, Rejected> {
        let Some(m) = self
            .missing_snapshot()
            .into_iter()
            .find(|m| m.endpoint().is_some_and(|b| endpoint_key(b) == key))
        else {
            return Ok(false);
        };
        let ifname = m.endpoint().map_or("", |b| b.ifname.as_str());
        self.dns.drop_endpoint(key);
        self.store
            .delete(kind::Endpoints::NAME, key)
            .and_then(|_| self.store.delete(kind::UnboundPorts::NAME, ifname))
            .and_then(|_| self.store.delete(kind::FqdnCache::NAME, key))
            .map_err(|e| reject(Refusal::Failed, "-", e.to_string()))?;
        self.forget_missing(key, None);
        tracing::info!(endpoint = %key, %ifname, "endpoint deleted (its interface was missing)");
        Ok(true)
    }
}

/// Refuses an endpoint `key` at `ip` on `port` (`None`: a port not opened yet) that would
/// collide with the current `bindings`: the endpoint on another port, its IP used elsewhere,
/// or the port serving another endpoint.
pub(super) fn check_conflicts(
    bindings: &[Option<PortConfig>],
    key: &str,
    ip: Ipv4Addr,
    port: Option<usize>,
) -> Result<(), Rejected> {
    let port = port.unwrap_or(usize::MAX);
    for (i, b) in bindings.iter().enumerate() {
        let Some(b) = b else { continue };
        let same = b.kind == PortKind::Pod && endpoint_key(b) == key;
        if i != port && same {
            return Err(reject(
                Refusal::Conflict,
                "ifname",
                format!("{key} is already on {}: delete it first", b.ifname),
            ));
        }
        if i != port && b.ip == ip {
            return Err(reject(
                Refusal::Conflict,
                "ip",
                format!("{ip} is already used by {}", b.ifname),
            ));
        }
        if i == port && b.kind == PortKind::Pod && !same {
            return Err(reject(
                Refusal::Conflict,
                "ifname",
                format!(
                    "{} already serves {}: delete it first",
                    b.ifname,
                    endpoint_key(b)
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request for `xyc0` at 10.200.0.20 with the CNI fields given.
    fn req(id: Option<&str>, netns: Option<&str>, ifname: Option<&str>) -> EndpointRequest {
        EndpointRequest {
            ifname: "xyc0".into(),
            ip: "10.200.0.20".into(),
            mac: "02:00:00:00:00:14".into(),
            labels: BTreeMap::new(),
            container_id: id.map(String::from),
            netns: netns.map(String::from),
            cni_ifname: ifname.map(String::from),
        }
    }

    /// The field `check_cni` names for `r`, or `None` when it accepts it.
    fn refused(r: &EndpointRequest) -> Option<String> {
        check_cni(r).err().map(|e| {
            assert_eq!(e.refusal, Refusal::Invalid);
            assert!(!e.why.is_empty());
            e.field
        })
    }

    #[test]
    fn a_request_without_cni_fields_has_no_attachment() {
        assert_eq!(check_cni(&req(None, None, None)).unwrap(), None);
    }

    #[test]
    fn cni_fields_are_kept_as_given() {
        let a = check_cni(&req(
            Some("3f2a9b_c.d-e"),
            Some("/var/run/netns/cni-1234"),
            Some("eth0"),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(a.container_id, "3f2a9b_c.d-e");
        assert_eq!(a.netns.as_deref(), Some("/var/run/netns/cni-1234"));
        assert_eq!(a.ifname.as_deref(), Some("eth0"));
        // netns and ifname are each optional with a container id.
        let a = check_cni(&req(Some("c1"), None, None)).unwrap().unwrap();
        assert_eq!((a.netns, a.ifname), (None, None));
        // The longest id the specification allows.
        let long = "a".repeat(256);
        assert!(check_cni(&req(Some(&long), None, None)).is_ok());
    }

    #[test]
    fn a_bad_container_id_is_refused_by_name() {
        let long = "a".repeat(257);
        for id in [
            "",
            "-abc",
            "_abc",
            ".abc",
            "ab c",
            "ab/c",
            "ab:c",
            "é1",
            long.as_str(),
        ] {
            assert_eq!(
                refused(&req(Some(id), None, None)).as_deref(),
                Some("container_id"),
                "{id:?}"
            );
        }
    }

    #[test]
    fn a_relative_netns_is_refused_by_name() {
        for netns in ["", "netns/cni-1", "cni-1"] {
            assert_eq!(
                refused(&req(Some("c1"), Some(netns), None)).as_deref(),
                Some("netns"),
                "{netns:?}"
            );
        }
        assert_eq!(
            refused(&req(Some("c1"), Some("/proc/1/ns/net"), None)),
            None
        );
    }

    #[test]
    fn a_bad_cni_ifname_is_refused_by_name() {
        for name in [
            "",
            ".",
            "..",
            "eth/0",
            "eth:0",
            "eth 0",
            "eth\t0",
            "abcdefghijklmnop",
        ] {
            assert_eq!(
                refused(&req(Some("c1"), None, Some(name))).as_deref(),
                Some("cni_ifname"),
                "{name:?}"
            );
        }
        for name in ["eth0", "net1", "abcdefghijklmno", "a.b", "...", "e-th_0"] {
            assert_eq!(
                refused(&req(Some("c1"), None, Some(name))),
                None,
                "{name:?}"
            );
        }
    }

    #[test]
    fn netns_and_cni_ifname_need_a_container_id() {
        assert_eq!(
            refused(&req(None, Some("/var/run/netns/x"), None)).as_deref(),
            Some("netns")
        );
        assert_eq!(
            refused(&req(None, None, Some("eth0"))).as_deref(),
            Some("cni_ifname")
        );
    }

    #[test]
    fn the_request_body_takes_the_cni_fields_and_still_refuses_unknown_ones() {
        let r: EndpointRequest = serde_json::from_str(
            r#"{"ifname": "xyc0", "ip": "10.200.0.20", "mac": "02:00:00:00:00:14",
                "container_id": "c1", "netns": "/var/run/netns/x", "cni_ifname": "eth0"}"#,
        )
        .unwrap();
        assert_eq!(r.container_id.as_deref(), Some("c1"));
        assert_eq!(r.netns.as_deref(), Some("/var/run/netns/x"));
        assert_eq!(r.cni_ifname.as_deref(), Some("eth0"));
        let r: EndpointRequest = serde_json::from_str(
            r#"{"ifname": "xyc0", "ip": "10.200.0.20", "mac": "02:00:00:00:00:14"}"#,
        )
        .unwrap();
        assert_eq!((r.container_id, r.netns, r.cni_ifname), (None, None, None));
        // Absent fields are not written: an older agent takes the body.
        let text = serde_json::to_string(&req(None, None, None)).unwrap();
        assert!(
            !text.contains("container_id") && !text.contains("netns"),
            "{text}"
        );
        let e = serde_json::from_str::<EndpointRequest>(
            r#"{"ifname": "xyc0", "ip": "10.200.0.20", "mac": "02:00:00:00:00:14",
                "containerid": "c1"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("containerid"), "{e}");
    }
}

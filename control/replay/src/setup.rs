//! From a replay's configuration to the tables and ports its worker runs with.

use std::collections::BTreeMap;
use std::path::Path;

use xylem_dataplane::tables::{MacAddr, Tables};
use xylem_policy::AllowLocalhost;

use super::*;

/// The ports and tables of a replay.
pub(crate) struct Setup {
    pub(crate) tables: Tables,
    pub(crate) ports: Vec<PortRef>,
    pub(crate) interfaces: Vec<String>,
    /// Source MAC → port.
    pub(crate) by_mac: BTreeMap<[u8; 6], u16>,
    pub(crate) ingress: Option<u16>,
}

pub(crate) fn setup(cfg: &ReplayConfig) -> Result<Setup, Error> {
    let mut bindings = Vec::new();
    let mut ports: Vec<PortRef> = Vec::new();
    let mut interfaces = Vec::new();
    let mut by_mac = BTreeMap::new();
    let gw_mac = cfg.gateway.mac;
    let mut add = |field: String, pc: PortConfig, name: String| -> Result<(), Error> {
        let port = bindings.len() as u16;
        if pc.mac == gw_mac {
            return Err(Error::config(
                format!("{field}.mac"),
                format!("{} is the gateway's MAC", pc.mac),
            ));
        }
        if let Some(other) = by_mac.insert(pc.mac.0, port) {
            return Err(Error::config(
                format!("{field}.mac"),
                format!(
                    "{} is also the MAC of {}: each endpoint needs its own, since a frame's source \
                     MAC picks its ingress port",
                    pc.mac,
                    ports[usize::from(other)].endpoint
                ),
            ));
        }
        ports.push(PortRef {
            port,
            endpoint: name,
        });
        interfaces.push(pc.ifname.clone());
        bindings.push(Some(pc));
        Ok(())
    };
    for (i, e) in cfg.endpoints.iter().enumerate() {
        let field = format!("endpoints[{i}]");
        let mac: MacAddr = e.mac.parse().map_err(|err: xylem_dataplane::Error| {
            Error::config(format!("{field}.mac"), err.to_string())
        })?;
        add(
            field,
            PortConfig {
                ifname: e.interface.clone(),
                kind: PortKind::Pod,
                ip: e.ip,
                mac,
                name: Some(e.name.clone()),
                namespace: Some(e.namespace.clone()),
                labels: e.labels.clone(),
                next_hop: None,
            },
            format!("{}/{}", e.namespace, e.name),
        )?;
    }
    if let Some(h) = cfg.host {
        add(
            "host".into(),
            PortConfig {
                ifname: "host".into(),
                kind: PortKind::Host,
                ip: h.ip,
                mac: h.mac,
                name: None,
                namespace: None,
                labels: BTreeMap::new(),
                next_hop: None,
            },
            "host".into(),
        )?;
    }
    if bindings.is_empty() {
        return Err(Error::config(
            "--endpoints",
            "no endpoint to replay against: give the endpoints (`xylem endpoint list -o json > \
             endpoints.json` on the node) and/or --host-ip with --host-mac",
        ));
    }
    let ingress = match &cfg.ingress {
        None => None,
        Some(want) => {
            let found = ports.iter().zip(&interfaces).find(|(p, ifname)| {
                p.endpoint == *want
                    || *ifname == want
                    || p.endpoint.strip_prefix("default/") == Some(want.as_str())
            });
            let Some((p, _)) = found else {
                let names: Vec<&str> = ports.iter().map(|p| p.endpoint.as_str()).collect();
                return Err(Error::config(
                    "--ingress",
                    format!(
                        "no endpoint {want}: use one of {} (or its interface)",
                        names.join(", ")
                    ),
                ));
            };
            Some(p.port)
        }
    };
    let inputs = TableInputs {
        gateway: &cfg.gateway,
        mode: cfg.mode,
        bindings: &bindings,
        revision: 1,
        policies: &cfg.policies,
        // As an agent with the default configuration.
        localhost: AllowLocalhost::default(),
        // No service: a replay is given endpoints and policies only.
        services: Default::default(),
        // Nor other nodes: a replay runs one node's pods.
        underlay: Default::default(),
    };
    let tables = compile_tables(inputs, &mut IdentityAllocator::default())
        .map(|b| b.tables)
        .map_err(|e| match e {
            xylem_dataplane::Error::InvalidTable(why) => Error::config("--endpoints", why),
            e => Error::Dataplane(e),
        })?;
    Ok(Setup {
        tables,
        ports,
        interfaces,
        by_mac,
        ingress,
    })
}

/// The names of the ports' interfaces (for [`xylem_dataplane::io::pcap::TxWriter`]), in
/// port-id order, or why the configuration is unusable.
pub fn port_interfaces(cfg: &ReplayConfig) -> Result<Vec<String>, Error> {
    Ok(setup(cfg)?.interfaces)
}

/// Turns the dataplane's capture error into one that names the file.
pub(crate) fn capture_error(path: &Path, e: xylem_dataplane::Error) -> Error {
    match e {
        xylem_dataplane::Error::Io { source, .. } => Error::File(xylem_api::FileError {
            what: "cannot replay",
            path: path.to_owned(),
            source,
        }),
        e => Error::Dataplane(e),
    }
}

//! `xylem remote-endpoint`: the other nodes' pods this agent's policies select by label.

use std::net::Ipv4Addr;

use crate::agent_cmd::{labels_cell, parse_labels};
use crate::error::Error;
use crate::input::namespaced;
use crate::output::{Format, print_json, print_table};
use crate::{Cli, socket};
use xylem_api::{Client, RemoteEndpointRequest, RemoteEndpointView};

/// `xylem remote-endpoint list`: one row per remote endpoint; `-o json` prints the agent's
/// array as it is.
pub(crate) fn list(cli: &Cli, output: Format) -> Result<(), Error> {
    let client = Client::new(socket(cli)?);
    if output == Format::Json {
        let v: serde_json::Value = client.get("/v1/remote-endpoints")?;
        print_json(&v);
        return Ok(());
    }
    print_table(
        &["NAMESPACE/NAME", "NODE", "IP", "IDENTITY", "LABELS"],
        &rows(&client.remote_endpoints()?),
    );
    Ok(())
}

fn rows(eps: &[RemoteEndpointView]) -> Vec<Vec<String>> {
    eps.iter()
        .map(|e| {
            vec![
                format!("{}/{}", e.namespace, e.name),
                e.node.clone(),
                e.ip.to_string(),
                e.identity.map_or("-".into(), |i| i.to_string()),
                labels_cell(&e.labels),
            ]
        })
        .collect()
}

/// `xylem remote-endpoint put NS/NAME --node N --ip IP [--label k=v]...`.
pub(crate) fn put(
    cli: &Cli,
    endpoint: &str,
    node: &str,
    ip: Ipv4Addr,
    labels: &[String],
) -> Result<(), Error> {
    let (ns, name) = namespaced(endpoint, "remote-endpoint")?;
    let req = RemoteEndpointRequest {
        node: node.to_string(),
        ip,
        labels: parse_labels(labels)?,
    };
    let e = Client::new(socket(cli)?).put_remote_endpoint(ns, name, &req)?;
    println!(
        "remote endpoint {}/{} set: {} on node {}, identity {}",
        e.namespace,
        e.name,
        e.ip,
        e.node,
        e.identity.map_or("-".into(), |i| i.to_string())
    );
    Ok(())
}

/// `xylem remote-endpoint delete NS/NAME`.
pub(crate) fn delete(cli: &Cli, endpoint: &str) -> Result<(), Error> {
    let (ns, name) = namespaced(endpoint, "remote-endpoint")?;
    Client::new(socket(cli)?).delete_remote_endpoint(ns, name)?;
    println!("remote endpoint {ns}/{name} deleted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_shows_the_identity_or_a_dash_and_the_labels() {
        let e = RemoteEndpointView {
            namespace: "default".into(),
            name: "server".into(),
            node: "node2".into(),
            ip: [10, 200, 1, 10].into(),
            identity: Some(300),
            labels: [("app".to_string(), "server".to_string())].into(),
        };
        let mut none = e.clone();
        none.identity = None;
        none.labels.clear();
        let r = rows(&[e, none]);
        assert_eq!(
            r[0],
            [
                "default/server",
                "node2",
                "10.200.1.10",
                "300",
                "app=server"
            ]
        );
        assert_eq!(r[1][3], "-");
        assert_eq!(r[1][4], "-");
    }
}

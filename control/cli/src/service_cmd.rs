//! `xylem service`: import, delete and list load-balanced services through the agent.

use crate::error::Error;
use crate::output::{Format, print_json, print_table};
use crate::{Cli, socket};
use xylem_api::{Client, ServiceView};

/// `NAMESPACE/NAME` or `NAME` (in `default`) as (namespace, name).
pub(crate) fn service_name(n: &str) -> Result<(&str, &str), Error> {
    crate::input::namespaced(n, "service")
}

/// `xylem service import FILE`: prints the new revision.
pub(crate) fn import(cli: &Cli, file: &std::path::Path) -> Result<(), Error> {
    let text = crate::input::read(file, "the services")?;
    println!("{}", Client::new(socket(cli)?).import_services(&text)?);
    Ok(())
}

/// `xylem service delete NAME`: prints the new revision.
pub(crate) fn delete(cli: &Cli, name: &str) -> Result<(), Error> {
    let (ns, n) = service_name(name)?;
    println!("{}", Client::new(socket(cli)?).delete_service(ns, n)?);
    Ok(())
}

/// `xylem service list`: one row per backend, the service and its frontends on its first row.
pub(crate) fn list(cli: &Cli, output: Format) -> Result<(), Error> {
    let client = Client::new(socket(cli)?);
    if output == Format::Json {
        let v: serde_json::Value = client.get("/v1/services")?;
        print_json(&v);
        return Ok(());
    }
    let services: Vec<ServiceView> = client.services()?;
    print_table(
        &[
            "SERVICE",
            "FRONTENDS",
            "AFFINITY",
            "BACKEND",
            "STATE",
            "HEALTH",
            "WEIGHT",
            "SHARE",
        ],
        &rows(&services),
    );
    Ok(())
}

fn rows(services: &[ServiceView]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for s in services {
        let frontends: Vec<String> = s
            .frontends
            .iter()
            .map(|f| format!("{}:{}/{}", f.ip, f.port, f.protocol))
            .collect();
        let affinity = match s.affinity_timeout_s {
            Some(t) => format!("{} {t}s", s.session_affinity),
            None => s.session_affinity.clone(),
        };
        let mut head = vec![
            format!("{}/{}", s.namespace, s.name),
            frontends.join(","),
            affinity,
        ];
        if s.backends.is_empty() {
            head.extend(["(no backend)".into(), "-".into(), "-".into(), "-".into()]);
            head.push("-".into());
            rows.push(head);
            continue;
        }
        for (i, b) in s.backends.iter().enumerate() {
            let mut row = if i == 0 {
                std::mem::take(&mut head)
            } else {
                vec![String::new(), String::new(), String::new()]
            };
            row.extend([
                format!("{}:{}", b.ip, b.port),
                b.state.clone(),
                b.health.as_str().to_owned(),
                b.weight.to_string(),
                format!("{:.1}%", b.table_share * 100.0),
            ]);
            rows.push(row);
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use xylem_api::{BackendHealth, BackendView, FrontendView};

    #[test]
    fn names_default_to_the_default_namespace() {
        assert_eq!(service_name("web").unwrap(), ("default", "web"));
        assert_eq!(service_name("prod/web").unwrap(), ("prod", "web"));
        for bad in ["", "/web", "prod/", "a/b/c"] {
            let e = service_name(bad).unwrap_err().to_string();
            assert!(e.contains("service") && e.contains("NAMESPACE/NAME"), "{e}");
        }
    }

    #[test]
    fn the_table_shows_each_backend_with_its_share_as_a_percentage() {
        let s = ServiceView {
            namespace: "default".into(),
            name: "web".into(),
            annotations: Default::default(),
            session_affinity: "ClientIP".into(),
            affinity_timeout_s: Some(60),
            frontends: vec![FrontendView {
                ip: [10, 96, 0, 10].into(),
                port: 80,
                protocol: "TCP".into(),
            }],
            backends: vec![
                BackendView {
                    ip: [10, 200, 0, 11].into(),
                    port: 8080,
                    weight: 1,
                    state: "active".into(),
                    health: BackendHealth::Up,
                    table_share: 1.0 / 3.0,
                },
                BackendView {
                    ip: [10, 200, 0, 13].into(),
                    port: 8080,
                    weight: 1,
                    state: "terminating".into(),
                    health: BackendHealth::Unknown,
                    table_share: 0.0,
                },
            ],
        };
        let r = rows(&[s]);
        assert_eq!(
            r[0],
            [
                "default/web",
                "10.96.0.10:80/TCP",
                "ClientIP 60s",
                "10.200.0.11:8080",
                "active",
                "up",
                "1",
                "33.3%"
            ]
        );
        assert_eq!(r[1][0], "");
        assert_eq!(
            r[1][3..],
            ["10.200.0.13:8080", "terminating", "unknown", "1", "0.0%"]
        );
    }
}

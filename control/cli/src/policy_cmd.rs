//! `xylem policy`: import, get, delete and trace network policies through the agent.

use crate::error::Error;
use crate::output::{Format, print_json, print_table};
use crate::{Cli, PolicyFormat, socket};
use xylem_api::{Client, PolicyView, TraceRequest};
use xylem_dataplane::policy::RuleOrigin;
use xylem_policy::Trace;

pub(crate) fn policy_path(n: &str) -> Result<String, Error> {
    let (ns, name) = crate::input::namespaced(n, "policy")?;
    Ok(format!("/v1/policies/{ns}/{name}"))
}

pub(crate) fn policy_import(cli: &Cli, file: &std::path::Path) -> Result<(), Error> {
    let text = crate::input::read(file, "the policy")?;
    let r: serde_json::Value =
        Client::new(socket(cli)?).post_raw("/v1/policies", text.into_bytes())?;
    println!("{}", r["revision"]);
    Ok(())
}

pub(crate) fn policy_get(cli: &Cli, name: Option<&str>, output: PolicyFormat) -> Result<(), Error> {
    let client = Client::new(socket(cli)?);
    let path = match name {
        Some(n) => policy_path(n)?,
        None => "/v1/policies".into(),
    };
    if output == PolicyFormat::Json {
        let v: serde_json::Value = client.get(&path)?;
        print_json(&v);
        return Ok(());
    }
    let list: Vec<PolicyView> = match name {
        Some(_) => vec![client.get(&path)?],
        None => client.get(&path)?,
    };
    match output {
        PolicyFormat::Json => {}
        PolicyFormat::Yaml => {
            for p in &list {
                let y = serde_norway::to_string(&p.source).map_err(|e| Error::Render {
                    format: "YAML",
                    why: e.to_string(),
                })?;
                print!("---\n{y}");
            }
        }
        PolicyFormat::Table => {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|p| {
                    // The document as imported: counted as written, whatever its shape.
                    let spec = &p.source;
                    let count = |k: &str| {
                        let mut n = 0;
                        for r in std::iter::once(&spec["spec"])
                            .chain(spec["specs"].as_array().into_iter().flatten())
                        {
                            n += r[k].as_array().map_or(0, |a| a.len());
                        }
                        n.to_string()
                    };
                    vec![
                        p.namespace.clone(),
                        p.name.clone(),
                        count("ingress"),
                        count("ingressDeny"),
                        count("egress"),
                        count("egressDeny"),
                    ]
                })
                .collect();
            print_table(
                &[
                    "NAMESPACE",
                    "NAME",
                    "INGRESS",
                    "INGRESS-DENY",
                    "EGRESS",
                    "EGRESS-DENY",
                ],
                &rows,
            );
        }
    }
    Ok(())
}

pub(crate) fn policy_trace(
    cli: &Cli,
    src: &str,
    dst: &str,
    dport: &str,
    output: Format,
) -> Result<(), Error> {
    let body = TraceRequest {
        src: src.to_owned(),
        dst: dst.to_owned(),
        dport: dport.to_owned(),
    };
    let client = Client::new(socket(cli)?);
    if output == Format::Json {
        let t: serde_json::Value = client.post("/v1/policy/trace", &body)?;
        print_json(&t);
        return Ok(());
    }
    let t: Trace = client.post("/v1/policy/trace", &body)?;
    let rule = |r: &Option<RuleOrigin>| {
        r.as_ref()
            .map_or_else(|| "-".to_string(), |r| r.to_string())
    };
    println!(
        "{src} (identity {}) -> {dst} (identity {}) {dport}: {}",
        t.src_identity, t.dst_identity, t.verdict
    );
    for (d, v) in [("egress", &t.egress), ("ingress", &t.ingress)] {
        match v {
            None => println!("  {d}: not a local endpoint"),
            Some(v) => println!("  {d}: {} (rule: {})", v.verdict.as_str(), rule(&v.rule)),
        }
    }
    println!("  decided by: {}", rule(&t.rule));
    Ok(())
}

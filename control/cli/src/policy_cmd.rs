//! `xylem policy`: import, get, delete and trace network policies through the agent.

use crate::error::Error;
use crate::output::{Format, print_json, print_table};
use crate::{Cli, PolicyFormat, socket};
use xylem_api::{Client, TraceRequest};

pub(crate) fn policy_path(n: &str) -> Result<String, Error> {
    let (ns, name) = n.split_once('/').unwrap_or(("default", n));
    if ns.is_empty() || name.is_empty() || name.contains('/') {
        return Err(Error::config(
            "policy",
            format!("'{n}' is not NAMESPACE/NAME or NAME"),
        ));
    }
    Ok(format!("/v1/policies/{ns}/{name}"))
}

pub(crate) fn policy_import(cli: &Cli, file: &std::path::Path) -> Result<(), Error> {
    let text = if file.as_os_str() == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t).map_err(|source| {
            Error::Io {
                what: "reading the policy from standard input".into(),
                source,
            }
        })?;
        t
    } else {
        std::fs::read_to_string(file).map_err(|source| Error::File {
            what: "reading the policy file",
            path: file.to_owned(),
            source,
        })?
    };
    let r: serde_json::Value =
        Client::new(socket(cli)?).post_raw("/v1/policies", text.into_bytes())?;
    println!("{}", r["revision"]);
    Ok(())
}

pub(crate) fn policy_get(cli: &Cli, name: Option<&str>, output: PolicyFormat) -> Result<(), Error> {
    let client = Client::new(socket(cli)?);
    let list: Vec<serde_json::Value> = match name {
        Some(n) => vec![client.get(&policy_path(n)?)?],
        None => client.get("/v1/policies")?,
    };
    match output {
        PolicyFormat::Json => match name {
            Some(_) => print_json(&list[0]),
            None => print_json(&list),
        },
        PolicyFormat::Yaml => {
            for p in &list {
                let y = serde_norway::to_string(&p["source"]).map_err(|e| Error::Render {
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
                    let spec = &p["source"];
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
                        p["namespace"].as_str().unwrap_or("").into(),
                        p["name"].as_str().unwrap_or("").into(),
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
    let t: serde_json::Value = Client::new(socket(cli)?).post("/v1/policy/trace", &body)?;
    if output == Format::Json {
        print_json(&t);
        return Ok(());
    }
    let rule = |r: &serde_json::Value| {
        if r.is_null() {
            "-".to_string()
        } else {
            format!(
                "{} spec[{}] {}[{}]",
                r["policy"].as_str().unwrap_or(""),
                r["spec"],
                r["section"].as_str().unwrap_or(""),
                r["index"]
            )
        }
    };
    println!(
        "{src} (identity {}) -> {dst} (identity {}) {dport}: {}",
        t["src_identity"],
        t["dst_identity"],
        t["verdict"].as_str().unwrap_or("")
    );
    for d in ["egress", "ingress"] {
        let v = &t[d];
        if v.is_null() {
            println!("  {d}: not a local endpoint");
        } else {
            println!(
                "  {d}: {} (rule: {})",
                v["verdict"]["verdict"]
                    .as_str()
                    .or(v["verdict"].as_str())
                    .unwrap_or(""),
                rule(&v["rule"])
            );
        }
    }
    println!("  decided by: {}", rule(&t["rule"]));
    Ok(())
}

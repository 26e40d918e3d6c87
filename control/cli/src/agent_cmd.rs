//! The commands that talk to the agent: status, endpoints, identities, connection tracking,
//! metrics and the flow monitor, rendered as tables for people or as the agent's JSON.

use crate::error::Error;
use crate::output::{Format, print_json, print_table};
use crate::{Cli, socket};
use std::collections::BTreeMap;
use xylem_api::{Client, CtView, Endpoint, EndpointRequest, IdentityView, Status};

pub(crate) fn status(cli: &Cli, output: Format) -> Result<(), Error> {
    let client = Client::new(socket(cli)?);
    if output == Format::Json {
        // The agent's JSON as it is, keys sorted as every listing prints them.
        let st: serde_json::Value = client.get("/v1/status")?;
        print_json(&st);
        return Ok(());
    }
    let st: Status = client.get("/v1/status")?;
    print_status(&st);
    Ok(())
}

/// The name a value has in the agent's JSON (a mode, a placement): its one spelling.
fn json_name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "-".into(),
    }
}

pub(crate) fn print_status(st: &Status) {
    println!(
        "xylem-agent {} on {}: {} (up {:.0} s, mode {}, placement {}, batch {})",
        st.version,
        st.node,
        if st.health.ok {
            "OK".to_string()
        } else {
            format!("NOT OK: {}", st.health.reason.as_deref().unwrap_or("-"))
        },
        st.uptime_s,
        json_name(&st.mode),
        json_name(&st.placement),
        st.batch_size,
    );
    println!(
        "encryption: {} (details: xylem encrypt status)",
        st.encryption
    );
    let workers: Vec<Vec<String>> = st
        .workers
        .iter()
        .map(|w| {
            vec![
                w.id.to_string(),
                w.core.to_string(),
                format!("{:.3}", w.busy_ratio),
                w.stats.rx_packets.to_string(),
                w.stats.tx_packets.to_string(),
                w.stats.forwarded.to_string(),
                w.frames.total.to_string(),
                w.frames.free.to_string(),
                w.frames.fill.to_string(),
            ]
        })
        .collect();
    println!();
    print_table(
        &[
            "WORKER",
            "CORE",
            "BUSY",
            "RX",
            "TX",
            "FORWARDED",
            "FRAMES",
            "FREE",
            "IN FILL",
        ],
        &workers,
    );
    let ports: Vec<Vec<String>> = st
        .ports
        .iter()
        .map(|p| {
            vec![
                p.ifname.clone(),
                p.endpoint.clone(),
                p.ip.to_string(),
                json_name(&p.xdp_mode),
                json_name(&p.queues),
                p.rx.to_string(),
                p.tx.to_string(),
                p.drops.to_string(),
            ]
        })
        .collect();
    println!();
    print_table(
        &[
            "PORT", "ENDPOINT", "IP", "XDP", "QUEUES", "RX", "TX", "DROPS",
        ],
        &ports,
    );
    if !st.missing_interfaces.is_empty() {
        let missing: Vec<String> = st
            .missing_interfaces
            .iter()
            .map(|m| format!("{} ({})", m.ifname, m.endpoint))
            .collect();
        println!(
            "\ninterfaces missing (ports closed until they are back): {}",
            missing.join("  ")
        );
    }
    let r = &st.redirector;
    println!(
        "\nredirector: redirected {}  dropped without a socket {}",
        r.redirected, r.no_socket
    );
    let sp = &st.slowpath;
    println!(
        "slow path:  rx {}  tx {}  tx dropped {}  tx unroutable {}  probes denied by policy {}",
        sp.rx, sp.tx, sp.tx_dropped, sp.tx_unroutable, st.totals.slowpath_probes_denied
    );
    let d = &st.dns;
    println!(
        "dns:        queries forwarded {}  refused {}  answers {}  learned {}  log lost {}  \
         cached names {}",
        d.queries_forwarded, d.queries_refused, d.answers, d.learned, d.log_lost, d.cache_names
    );
    println!("drops:      {}", nonzero(&st.totals.drops, "none"));
    // The kernel's own counters: frames lost at the sockets, before the dataplane saw them.
    println!("af_xdp:     {}", nonzero(&st.totals.xsk, "no kernel drops"));
}

/// `name value` for each counter above zero, or `none` when all are zero.
fn nonzero<K: std::fmt::Display>(counts: &BTreeMap<K, u64>, none: &str) -> String {
    let set: Vec<String> = counts
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    if set.is_empty() {
        none.to_string()
    } else {
        set.join("  ")
    }
}

pub(crate) fn endpoints(cli: &Cli, output: Format) -> Result<(), Error> {
    let client = Client::new(socket(cli)?);
    if output == Format::Json {
        let eps: serde_json::Value = client.get("/v1/endpoints")?;
        print_json(&eps);
        return Ok(());
    }
    let eps: Vec<Endpoint> = client.get("/v1/endpoints")?;
    let rows: Vec<Vec<String>> = eps
        .iter()
        .map(|e| {
            vec![
                e.name.clone(),
                e.namespace.clone(),
                labels_cell(&e.labels),
                e.ip.to_string(),
                if e.interface_missing {
                    format!("{} (missing)", e.interface)
                } else {
                    e.interface.clone()
                },
                e.identity.map_or("-".into(), |i| i.to_string()),
                enforcement(e.ingress_enforced),
                enforcement(e.egress_enforced),
                // A runtime's ids are 64 hex digits; 12 tell them apart, as `ctr` and
                // `crictl` print them.
                e.container_id
                    .as_deref()
                    .map_or("-".into(), |c| c.chars().take(12).collect()),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "NAMESPACE",
            "LABELS",
            "IP",
            "INTERFACE",
            "IDENTITY",
            "INGRESS",
            "EGRESS",
            "CONTAINER",
        ],
        &rows,
    );
    Ok(())
}

fn enforcement(v: Option<bool>) -> String {
    match v {
        Some(true) => "enforced".into(),
        Some(false) => "open".into(),
        None => "-".into(),
    }
}

pub(crate) fn identity_list(cli: &Cli, output: Format) -> Result<(), Error> {
    let client = Client::new(socket(cli)?);
    if output == Format::Json {
        let list: serde_json::Value = client.get("/v1/identities")?;
        print_json(&list);
        return Ok(());
    }
    let list: Vec<IdentityView> = client.get("/v1/identities")?;
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            // A reserved identity's name is a label without a value.
            let labels = i
                .labels
                .iter()
                .map(|(k, v)| {
                    if v.is_empty() {
                        k.clone()
                    } else {
                        format!("{k}={v}")
                    }
                })
                .collect::<Vec<_>>()
                .join(",");
            let eps = i.endpoints.join(",");
            vec![
                i.identity.to_string(),
                labels,
                if eps.is_empty() { "-".into() } else { eps },
            ]
        })
        .collect();
    print_table(&["IDENTITY", "LABELS", "ENDPOINTS"], &rows);
    Ok(())
}

pub(crate) fn ct_list(cli: &Cli, output: Format, max: usize) -> Result<(), Error> {
    let client = Client::new(socket(cli)?);
    let path = format!("/v1/ct?max={max}");
    if output == Format::Json {
        let v: serde_json::Value = client.get(&path)?;
        print_json(&v);
        return Ok(());
    }
    let v: CtView = client.get(&path)?;
    let rows: Vec<Vec<String>> = v
        .table
        .entries
        .iter()
        .map(|e| {
            let o = &e.orig;
            let proto = match o.proto {
                6 => "TCP".to_string(),
                17 => "UDP".to_string(),
                1 => "ICMP".to_string(),
                p => p.to_string(),
            };
            vec![
                proto,
                format!("{}:{}", o.src, o.sport),
                format!("{}:{}", o.dst, o.dport),
                e.state.as_str().into(),
                format!("{:.0}", e.expires_in_ns as f64 / 1e9),
            ]
        })
        .collect();
    print_table(
        &["PROTO", "SOURCE", "DESTINATION", "STATE", "EXPIRES-S"],
        &rows,
    );
    println!(
        "{} entries of {} ({:.1} bytes each at capacity), shared by {} workers",
        v.table.len, v.table.capacity, v.table.bytes_per_entry, v.workers
    );
    Ok(())
}

pub(crate) fn endpoint_path(e: &str) -> Result<String, Error> {
    let (ns, name) = crate::input::namespaced(e, "endpoint")?;
    Ok(format!("/v1/endpoints/{ns}/{name}"))
}

/// `--label KEY=VALUE` options as a label map.
pub(crate) fn parse_labels(
    labels: &[String],
) -> Result<std::collections::BTreeMap<String, String>, Error> {
    labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| Error::config("--label", format!("'{l}' is not KEY=VALUE")))
        })
        .collect()
}

/// Labels as one cell: `k=v,k2=v2`, or `-` for none.
pub(crate) fn labels_cell(labels: &std::collections::BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn endpoint_put(
    cli: &Cli,
    endpoint: &str,
    ifname: &str,
    ip: &str,
    mac: &str,
    labels: &[String],
    output: Format,
) -> Result<(), Error> {
    let body = EndpointRequest {
        ifname: ifname.to_string(),
        ip: ip.to_string(),
        mac: mac.to_string(),
        labels: parse_labels(labels)?,
        container_id: None,
        netns: None,
        cni_ifname: None,
    };
    let client = Client::new(socket(cli)?);
    let path = endpoint_path(endpoint)?;
    match output {
        Format::Json => {
            let ep: serde_json::Value = client.put(&path, &body)?;
            print_json(&ep);
        }
        Format::Table => {
            let ep: Endpoint = client.put(&path, &body)?;
            println!(
                "endpoint {}/{} on {} ({})",
                ep.namespace, ep.name, ep.interface, ep.ip
            );
        }
    }
    Ok(())
}

pub(crate) fn metrics(cli: &Cli) -> Result<(), Error> {
    let text = Client::new(socket(cli)?).get_bytes("/v1/metrics")?;
    print!("{}", String::from_utf8_lossy(&text));
    Ok(())
}

pub(crate) fn monitor(cli: &Cli, types: &[String], output: Format) -> Result<(), Error> {
    let client = Client::new(socket(cli)?);
    let path = if types.is_empty() {
        "/v1/monitor".to_string()
    } else {
        format!("/v1/monitor?type={}", types.join(","))
    };
    let mut lost = 0u64;
    let mut shown = 0u64;
    // On stderr in both formats, once the agent has attached this client: from then on no
    // event of the chosen types is missed (scripts wait for this line before sending traffic).
    let listening = format!(
        "Listening for events on {}; press Ctrl-C to quit",
        client_socket(cli)?
    );
    use std::io::Write as _;
    let on_open = || eprintln!("{listening}");
    // Buffered, flushed once per piece of stream the agent sent (one per 5 ms of events at
    // most): a write per event would cost the machine a syscall per packet seen.
    let out = std::cell::RefCell::new(std::io::BufWriter::with_capacity(
        1 << 16,
        std::io::stdout().lock(),
    ));
    let end = client.stream_lines(
        &path,
        on_open,
        |l| {
            // The agent's own lines (`lost`, `end`) are few; events are passed through as they
            // are in JSON output, without parsing them. Inside a JSON string a quote is always
            // escaped, so this pattern only matches the `type` field itself.
            if l.contains(r#""type":"lost""#) || l.contains(r#""type":"end""#) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
                    lost = v["lost"].as_u64().unwrap_or(lost);
                }
                return true;
            }
            let mut out = out.borrow_mut();
            // A closed stdout (`xylem monitor | head`) ends the stream.
            let written = match output {
                Format::Json => writeln!(out, "{l}"),
                Format::Table => match serde_json::from_str::<serde_json::Value>(l) {
                    Ok(v) => writeln!(out, "{}", monitor_line(&v)),
                    Err(_) => return true,
                },
            };
            shown += 1;
            written.is_ok()
        },
        || {
            let _ = out.borrow_mut().flush();
        },
    )?;
    let _ = out.borrow_mut().flush();
    drop(out);
    if end == xylem_api::StreamEnd::Ended {
        eprintln!("the agent ended the stream (stopping?)");
    }
    match output {
        Format::Json => println!("{}", serde_json::json!({"events": shown, "lost": lost})),
        Format::Table => println!("\n{shown} events shown, {lost} events lost"),
    }
    Ok(())
}

pub(crate) fn client_socket(cli: &Cli) -> Result<String, Error> {
    Ok(socket(cli)?.display().to_string())
}

/// One side of a flow in a monitor line: `ip:port (endpoint)`, without the port for ICMP.
fn monitor_end(v: &serde_json::Value, e: &serde_json::Value, port: &serde_json::Value) -> String {
    let ip = e["ip"].as_str().unwrap_or("-");
    let p = port.as_u64().unwrap_or(0);
    let name = e["endpoint"]
        .as_str()
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    if p != 0 && v["protocol"] != "ICMP" {
        format!("{ip}:{p}{name}")
    } else {
        format!("{ip}{name}")
    }
}

/// A `dns` event: time, verdict, the question (and for an answer its rcode and addresses),
/// the flow, and the rule that allowed the query.
fn dns_monitor_line(v: &serde_json::Value) -> String {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    let d = &v["dns"];
    let what = if d["response"].as_bool().unwrap_or(false) {
        let answers: Vec<String> = d["answers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| format!("{} ttl {}", s(&x["ip"]), x["ttl"]))
                    .collect()
            })
            .unwrap_or_default();
        format!(
            "answer {} {} {} [{}]",
            s(&d["query"]),
            s(&d["qtype"]),
            s(&d["rcode"]),
            answers.join(", ")
        )
    } else {
        format!("query {} {}", s(&d["query"]), s(&d["qtype"]))
    };
    let rule = match &d["rule"] {
        serde_json::Value::Null => String::new(),
        r => format!(
            " rule {} {}[{}] of spec {}",
            s(&r["policy"]),
            s(&r["section"]),
            r["index"],
            r["spec"]
        ),
    };
    format!(
        "{} {:<6} {:<28} {} id {} from {} -> {} {}{}",
        s(&v["time"]),
        "dns",
        s(&v["verdict"]),
        what,
        d["id"],
        monitor_end(v, &v["source"], &v["src_port"]),
        monitor_end(v, &v["destination"], &v["dst_port"]),
        s(&v["protocol"]),
        rule
    )
}

/// `cilium monitor`-style: time, type, verdict/reason, ingress port, then the flow; for an
/// `agent` event, what changed instead of a flow; for a `dns` event, the question and answer.
pub(crate) fn monitor_line(v: &serde_json::Value) -> String {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    if v["type"] == "dns" {
        return dns_monitor_line(v);
    }
    if v["type"] == "agent" {
        return format!(
            "{} {:<6} {:<28} service {} backend {}: {} -> {}",
            s(&v["time"]),
            "agent",
            s(&v["event"]),
            s(&v["service"]),
            s(&v["backend"]),
            s(&v["from"]),
            s(&v["to"]),
        );
    }
    let end = |e: &serde_json::Value, port: &serde_json::Value| monitor_end(v, e, port);
    let proto = match &v["protocol"] {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(p) if p == "ICMP" => {
            format!("ICMP type {} code {}", v["src_port"], v["dst_port"])
        }
        p => p
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| p.to_string()),
    };
    let verdict = match v["drop_reason"].as_str() {
        Some(r) => format!("DROPPED ({r})"),
        None => s(&v["verdict"]),
    };
    format!(
        "{} {:<6} {:<28} from {} -> {} {} via {}{}",
        s(&v["time"]),
        s(&v["type"]),
        verdict,
        end(&v["source"], &v["src_port"]),
        end(&v["destination"], &v["dst_port"]),
        proto,
        s(&v["ingress"]),
        v["egress"]
            .as_str()
            .map(|e| format!(" -> {e}"))
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::monitor_line;

    #[test]
    fn a_dns_event_reads_as_its_question_and_answer() {
        let v = serde_json::json!({
            "time": "2026-11-29T19:39:07.311333077Z",
            "type": "dns",
            "worker": 0,
            "source": {"ip": "10.96.0.10", "endpoint": null},
            "destination": {"ip": "10.200.0.10", "endpoint": "default/pod-a"},
            "protocol": "UDP",
            "src_port": 53,
            "dst_port": 40000,
            "verdict": "FORWARDED",
            "drop_reason": null,
            "dns": {
                "id": 4242, "response": true, "query": "a.domain.com.", "qtype": "A",
                "rcode": "NOERROR", "answers": [{"ip": "192.0.2.10", "ttl": 30}],
                "rule": {"policy": "default/dns", "spec": 0, "section": "egress", "index": 1}
            }
        });
        assert_eq!(
            monitor_line(&v),
            "2026-11-29T19:39:07.311333077Z dns    FORWARDED                    answer \
             a.domain.com. A NOERROR [192.0.2.10 ttl 30] id 4242 from 10.96.0.10:53 -> \
             10.200.0.10:40000 (default/pod-a) UDP rule default/dns egress[1] of spec 0"
        );
        let mut q = v.clone();
        q["verdict"] = "REFUSED".into();
        q["dns"]["response"] = false.into();
        q["dns"]["rule"] = serde_json::Value::Null;
        assert!(
            monitor_line(&q).contains("REFUSED                      query a.domain.com. A id 4242"),
            "{}",
            monitor_line(&q)
        );
    }

    #[test]
    fn an_agent_event_reads_as_its_change() {
        let v = serde_json::json!({
            "time": "2026-11-29T19:39:07.311333077Z",
            "type": "agent",
            "event": "backend-health",
            "service": "default/web",
            "backend": "10.200.0.11:8080",
            "from": "up",
            "to": "down",
        });
        assert_eq!(
            monitor_line(&v),
            "2026-11-29T19:39:07.311333077Z agent  backend-health               \
             service default/web backend 10.200.0.11:8080: up -> down"
        );
    }
}

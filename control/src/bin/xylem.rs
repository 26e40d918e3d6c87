//! `xylem`: the command-line tool. See `xylem --help`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xylem_control::Error;
use xylem_control::api::Client;
use xylem_control::lab::{self, DEFAULT_LAB, Lab, LabFile, LabOptions};
use xylem_control::output::{Format, print_json, print_table};
use xylem_dataplane::tables::Mode;
use xylem_dataplane::worker::Placement;

/// Xylem's command-line tool: inspect a running agent, or build a lab of pods on this machine.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// The agent's API socket (default: the lab's agent, or /run/xylem/agent.sock).
    #[arg(long, global = true, env = "XYLEM_SOCKET")]
    socket: Option<PathBuf>,
    /// Which lab `xylem lab …` works on (several labs can coexist; each gets its own namespaces).
    #[arg(long, global = true, env = "XYLEM_LAB", default_value = DEFAULT_LAB)]
    lab: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The agent's health, workers, ports and counters.
    Status {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
    /// Endpoints (pods) the agent serves.
    Endpoint {
        #[command(subcommand)]
        cmd: EndpointCmd,
    },
    /// The agent's Prometheus metrics (the same text as its --metrics-addr serves).
    Metrics,
    /// Stream flow events live (like `cilium monitor`) until Ctrl-C; ends with the number of
    /// events lost.
    Monitor {
        /// Event types to show (repeat or comma-separate); all when absent.
        #[arg(long = "type", short = 't', value_delimiter = ',', value_parser = ["drop", "trace", "policy-verdict", "dns"])]
        types: Vec<String>,
        /// Output format: one line per event, or one JSON object per line.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
    /// A lab: a node namespace running xylem-agent, and pod namespaces behind it.
    Lab {
        #[command(subcommand)]
        cmd: LabCmd,
    },
}

#[derive(Subcommand, Debug)]
enum EndpointCmd {
    /// List endpoints.
    List {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
    /// Create or replace an endpoint on one of the agent's pod ports (kept across restarts).
    Put {
        /// `NAMESPACE/NAME` (or `NAME` in namespace `default`).
        endpoint: String,
        /// The dataplane's end of the pod's veth.
        #[arg(long)]
        ifname: String,
        /// The pod's IPv4 address.
        #[arg(long)]
        ip: String,
        /// The pod's MAC address.
        #[arg(long)]
        mac: String,
        /// A label `KEY=VALUE` (repeatable).
        #[arg(long = "label", short = 'l')]
        labels: Vec<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
    /// Delete an endpoint: its port stays attached but routes nothing to it.
    Delete {
        /// `NAMESPACE/NAME` (or `NAME` in namespace `default`).
        endpoint: String,
    },
}

#[derive(clap::Args, Debug, Clone)]
struct UpArgs {
    /// LAB.yaml: `pods: [{name, namespace, labels}]`. Default: pods pod-a, pod-b, pod-c.
    #[arg(short = 'f', long)]
    file: Option<PathBuf>,
    /// Worker placement: `dedicated` (busy-poll) or `shared` (block when idle).
    #[arg(long)]
    placement: Option<Placement>,
    /// Worker CPUs, comma-separated.
    #[arg(long, value_delimiter = ',')]
    worker_cores: Vec<usize>,
    /// `passthrough` (L2/L3 only) or `full`.
    #[arg(long, default_value = "passthrough", value_parser = parse_mode)]
    mode: Mode,
    /// `auto`, `native` or `generic`.
    #[arg(long)]
    xdp_mode: Option<String>,
    /// Frames per RX batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Microseconds of polling after traffic before blocking (shared placement).
    #[arg(long)]
    idle_spin_us: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum LabCmd {
    /// Create the lab (idempotent) and print its topology.
    Up(UpArgs),
    /// Show the lab's nodes and pods.
    Status {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
    /// Run a command in a pod's network namespace: `xylem lab exec POD -- CMD...`.
    Exec {
        /// The pod.
        pod: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Add a pod to the running lab, registered with the agent through its API.
    AddPod {
        /// Pod name.
        name: String,
        /// Kubernetes namespace.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// A label `KEY=VALUE` (repeatable).
        #[arg(long = "label", short = 'l')]
        labels: Vec<String>,
    },
    /// Remove everything the lab created (also after a crash).
    Down,
    /// Bring a lab up, ping and run netperf TCP_RR through the dataplane, print the results
    /// and the counters, and bring it down.
    Demo(UpArgs),
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "passthrough" => Ok(Mode::Passthrough),
        "full" => Ok(Mode::Full),
        o => Err(format!("unknown mode '{o}': use 'passthrough' or 'full'")),
    }
}

fn socket(cli: &Cli) -> Result<PathBuf, Error> {
    Ok(match &cli.socket {
        Some(s) => s.clone(),
        None => Lab::new(&cli.lab)?.api_socket(),
    })
}

fn options(a: &UpArgs) -> LabOptions {
    LabOptions {
        placement: a.placement,
        worker_cores: a.worker_cores.clone(),
        mode: a.mode,
        xdp_mode: a.xdp_mode.clone(),
        batch_size: a.batch_size,
        idle_spin_us: a.idle_spin_us,
    }
}

fn lab_file(a: &UpArgs) -> Result<LabFile, Error> {
    match &a.file {
        None => Ok(LabFile::default_pods()),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| Error::File {
                what: "reading the lab file",
                path: p.clone(),
                source,
            })?;
            LabFile::parse(&text)
        }
    }
}

fn status(cli: &Cli, output: Format) -> Result<(), Error> {
    let client = Client::new(socket(cli)?);
    let st: serde_json::Value = client.get("/v1/status")?;
    if output == Format::Json {
        print_json(&st);
        return Ok(());
    }
    print_status(&st);
    Ok(())
}

fn print_status(st: &serde_json::Value) {
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        o => o.to_string(),
    };
    let health = &st["health"];
    println!(
        "xylem-agent {} on {}: {} (up {:.0} s, mode {}, placement {}, batch {})",
        s(&st["version"]),
        s(&st["node"]),
        if health["ok"] == true {
            "OK".to_string()
        } else {
            format!("NOT OK: {}", s(&health["reason"]))
        },
        st["uptime_s"].as_f64().unwrap_or(0.0),
        s(&st["mode"]),
        s(&st["placement"]),
        s(&st["batch_size"]),
    );
    let empty = Vec::new();
    let workers: Vec<Vec<String>> = st["workers"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|w| {
            vec![
                s(&w["id"]),
                s(&w["core"]),
                format!("{:.3}", w["busy_ratio"].as_f64().unwrap_or(0.0)),
                s(&w["stats"]["rx_packets"]),
                s(&w["stats"]["tx_packets"]),
                s(&w["stats"]["forwarded"]),
            ]
        })
        .collect();
    println!();
    print_table(
        &["WORKER", "CORE", "BUSY", "RX", "TX", "FORWARDED"],
        &workers,
    );
    let ports: Vec<Vec<String>> = st["ports"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|p| {
            vec![
                s(&p["ifname"]),
                s(&p["endpoint"]),
                s(&p["ip"]),
                s(&p["xdp_mode"]),
                s(&p["queues"]),
                s(&p["rx"]),
                s(&p["tx"]),
                s(&p["drops"]),
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
    let r = &st["redirector"];
    println!(
        "\nredirector: redirected {}  passed {}  errors {}",
        s(&r["redirected"]),
        s(&r["passed"]),
        s(&r["errors"])
    );
    let sp = &st["slowpath"];
    println!(
        "slow path:  rx {}  tx {}  tx dropped {}",
        s(&sp["rx"]),
        s(&sp["tx"]),
        s(&sp["tx_dropped"])
    );
    if let Some(drops) = st["totals"]["drops"].as_object() {
        let nonzero: Vec<String> = drops
            .iter()
            .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!(
            "drops:      {}",
            if nonzero.is_empty() {
                "none".into()
            } else {
                nonzero.join("  ")
            }
        );
    }
}

fn endpoints(cli: &Cli, output: Format) -> Result<(), Error> {
    let client = Client::new(socket(cli)?);
    let eps: serde_json::Value = client.get("/v1/endpoints")?;
    if output == Format::Json {
        print_json(&eps);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = eps
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let labels = e["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                e["name"].as_str().unwrap_or("").into(),
                e["namespace"].as_str().unwrap_or("").into(),
                if labels.is_empty() {
                    "-".into()
                } else {
                    labels
                },
                e["ip"].as_str().unwrap_or("").into(),
                e["interface"].as_str().unwrap_or("").into(),
                e["identity"].as_u64().map_or("-".into(), |i| i.to_string()),
            ]
        })
        .collect();
    print_table(
        &["NAME", "NAMESPACE", "LABELS", "IP", "INTERFACE", "IDENTITY"],
        &rows,
    );
    Ok(())
}

fn endpoint_path(e: &str) -> Result<String, Error> {
    let (ns, name) = e.split_once('/').unwrap_or(("default", e));
    if ns.is_empty() || name.is_empty() || name.contains('/') {
        return Err(Error::config(
            "endpoint",
            format!("'{e}' is not NAMESPACE/NAME or NAME"),
        ));
    }
    Ok(format!("/v1/endpoints/{ns}/{name}"))
}

#[allow(clippy::too_many_arguments)]
fn endpoint_put(
    cli: &Cli,
    endpoint: &str,
    ifname: &str,
    ip: &str,
    mac: &str,
    labels: &[String],
    output: Format,
) -> Result<(), Error> {
    let mut map = serde_json::Map::new();
    for l in labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| Error::config("--label", format!("'{l}' is not KEY=VALUE")))?;
        map.insert(k.into(), v.into());
    }
    let body = serde_json::json!({"ifname": ifname, "ip": ip, "mac": mac, "labels": map});
    let ep: serde_json::Value = Client::new(socket(cli)?).put(&endpoint_path(endpoint)?, &body)?;
    match output {
        Format::Json => print_json(&ep),
        Format::Table => println!(
            "endpoint {}/{} on {} ({})",
            ep["namespace"].as_str().unwrap_or(""),
            ep["name"].as_str().unwrap_or(""),
            ep["interface"].as_str().unwrap_or(""),
            ep["ip"].as_str().unwrap_or("")
        ),
    }
    Ok(())
}

fn metrics(cli: &Cli) -> Result<(), Error> {
    let text = Client::new(socket(cli)?).get_bytes("/v1/metrics")?;
    print!("{}", String::from_utf8_lossy(&text));
    Ok(())
}

fn monitor(cli: &Cli, types: &[String], output: Format) -> Result<(), Error> {
    let client = Client::new(socket(cli)?);
    let path = if types.is_empty() {
        "/v1/monitor".to_string()
    } else {
        format!("/v1/monitor?type={}", types.join(","))
    };
    let mut lost = 0u64;
    let mut shown = 0u64;
    if output == Format::Table {
        eprintln!(
            "Listening for events on {}; press Ctrl-C to quit",
            client_socket(cli)?
        );
    }
    let end = client.stream_lines(&path, |l| {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            return true;
        };
        match v["type"].as_str() {
            Some("lost") | Some("end") => {
                lost = v["lost"].as_u64().unwrap_or(lost);
                return true;
            }
            _ => {}
        }
        shown += 1;
        match output {
            Format::Json => println!("{l}"),
            Format::Table => println!("{}", monitor_line(&v)),
        }
        true
    })?;
    if end == xylem_control::api::StreamEnd::Ended {
        eprintln!("the agent ended the stream (stopping?)");
    }
    match output {
        Format::Json => println!("{}", serde_json::json!({"events": shown, "lost": lost})),
        Format::Table => println!("\n{shown} events shown, {lost} events lost"),
    }
    Ok(())
}

fn client_socket(cli: &Cli) -> Result<String, Error> {
    Ok(socket(cli)?.display().to_string())
}

/// `cilium monitor`-style: time, type, verdict/reason, ingress port, then the flow.
fn monitor_line(v: &serde_json::Value) -> String {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    let end = |e: &serde_json::Value, port: &serde_json::Value| {
        let ip = s(&e["ip"]);
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
    };
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

fn demo(cli: &Cli, a: &UpArgs) -> Result<(), Error> {
    let lab = Lab::new(&cli.lab)?;
    if lab.state()?.is_some() {
        return Err(Error::Lab(format!(
            "lab '{}' is already up: the demo builds its own; run `xylem lab down` first",
            cli.lab
        )));
    }
    println!("== bringing the lab up");
    let st = lab.up(&lab_file(a)?, &options(a))?;
    lab::print_topology(&st);
    let result = demo_traffic(&lab, &st);
    println!("\n== bringing the lab down");
    let down = lab.down();
    result?;
    down?;
    println!("demo finished: lab removed");
    Ok(())
}

fn demo_traffic(lab: &Lab, st: &lab::LabState) -> Result<(), Error> {
    let (a, b) = match st.pods.as_slice() {
        [a, b, ..] => (a, b),
        _ => return Err(Error::Lab("the demo needs at least two pods".into())),
    };
    let node = &st.nodes[0];
    let b_ip = b.ip.to_string();
    let a_ip = a.ip.to_string();

    println!(
        "\n== ping {} -> {} ({b_ip}) through the dataplane",
        a.name, b.name
    );
    let out = lab::run(&[
        "ip", "netns", "exec", &a.netns, "ping", "-c", "5", "-i", "0.2", "-W", "2", &b_ip,
    ])?;
    print_ping_summary(&out);

    println!(
        "\n== ping host ({}) -> {} ({a_ip}) through the host port",
        node.host_ip, a.name
    );
    let out = lab::run(&[
        "ip",
        "netns",
        "exec",
        &node.netns,
        "ping",
        "-c",
        "5",
        "-i",
        "0.2",
        "-W",
        "2",
        &a_ip,
    ])?;
    print_ping_summary(&out);

    println!(
        "\n== netperf TCP_RR {} -> {} (5 s, 1-byte request/response)",
        a.name, b.name
    );
    lab::run(&["ip", "netns", "exec", &b.netns, "netserver", "-4"])?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = lab::run(&[
        "ip",
        "netns",
        "exec",
        &a.netns,
        "netperf",
        "-4",
        "-H",
        &b_ip,
        "-t",
        "TCP_RR",
        "-l",
        "5",
        "--",
        "-r",
        "1,1",
        "-o",
        "MIN_LATENCY,P50_LATENCY,P90_LATENCY,P99_LATENCY,MAX_LATENCY,TRANSACTION_RATE",
    ])?;
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    if let [.., header, values] = lines.as_slice() {
        let h: Vec<&str> = header.split(',').collect();
        let v: Vec<&str> = values.split(',').collect();
        for (k, val) in h.iter().zip(v) {
            println!("  {k:<32} {val}");
        }
    } else {
        println!("{out}");
    }

    println!("\n== dataplane counters");
    let _ = lab;
    let client = Client::new(&node.api_socket);
    let status: serde_json::Value = client.get("/v1/status")?;
    print_status(&status);
    Ok(())
}

fn print_ping_summary(out: &str) {
    for l in out.lines() {
        if l.contains("packets transmitted") || l.starts_with("rtt") {
            println!("  {l}");
        }
    }
}

fn run(cli: &Cli) -> Result<(), Error> {
    match &cli.cmd {
        Cmd::Status { output } => status(cli, *output),
        Cmd::Endpoint { cmd } => match cmd {
            EndpointCmd::List { output } => endpoints(cli, *output),
            EndpointCmd::Put {
                endpoint,
                ifname,
                ip,
                mac,
                labels,
                output,
            } => endpoint_put(cli, endpoint, ifname, ip, mac, labels, *output),
            EndpointCmd::Delete { endpoint } => {
                Client::new(socket(cli)?).delete(&endpoint_path(endpoint)?)?;
                println!("endpoint {endpoint} deleted");
                Ok(())
            }
        },
        Cmd::Metrics => metrics(cli),
        Cmd::Monitor { types, output } => monitor(cli, types, *output),
        Cmd::Lab { cmd } => {
            let lab = Lab::new(&cli.lab)?;
            match cmd {
                LabCmd::Up(a) => {
                    let st = lab.up(&lab_file(a)?, &options(a))?;
                    lab::print_topology(&st);
                    Ok(())
                }
                LabCmd::Status { output } => {
                    let st = lab.state()?.ok_or_else(|| {
                        Error::Lab(format!("lab '{}' is not up: run `xylem lab up`", cli.lab))
                    })?;
                    match output {
                        Format::Json => print_json(&st),
                        Format::Table => lab::print_topology(&st),
                    }
                    Ok(())
                }
                LabCmd::Exec { pod, cmd } => {
                    let p = lab.pod(pod)?;
                    use std::os::unix::process::CommandExt;
                    let err = std::process::Command::new("ip")
                        .args(["netns", "exec", &p.netns])
                        .args(cmd)
                        .exec();
                    Err(Error::Command {
                        command: format!("ip netns exec {} {}", p.netns, cmd.join(" ")),
                        detail: err.to_string(),
                    })
                }
                LabCmd::AddPod {
                    name,
                    namespace,
                    labels,
                } => {
                    let mut map = std::collections::BTreeMap::new();
                    for l in labels {
                        let (k, v) = l.split_once('=').ok_or_else(|| {
                            Error::config("--label", format!("'{l}' is not KEY=VALUE"))
                        })?;
                        map.insert(k.to_string(), v.to_string());
                    }
                    let p = lab.add_pod(&lab::LabPod {
                        name: name.clone(),
                        namespace: namespace.clone(),
                        labels: map,
                    })?;
                    println!(
                        "pod {}/{} at {} (netns {}, port {})",
                        p.namespace, p.name, p.ip, p.netns, p.interface
                    );
                    Ok(())
                }
                LabCmd::Down => {
                    lab.down()?;
                    println!("lab '{}' removed", cli.lab);
                    Ok(())
                }
                LabCmd::Demo(a) => demo(cli, a),
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xylem: {e}");
            ExitCode::FAILURE
        }
    }
}

//! `xylem`: the command-line tool. See `xylem --help`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xylem_api::{Client, TraceRequest};
use xylem_control::Error;
use xylem_control::config::XdpModeSetting;
use xylem_control::lab::{self, DEFAULT_LAB, Lab, LabFile, LabOptions};
use xylem_control::output::{Format, print_json, print_table};
use xylem_dataplane::tables::{MacAddr, Mode};
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
    /// Network policy (CiliumNetworkPolicy YAML).
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Security identities.
    Identity {
        #[command(subcommand)]
        cmd: IdentityCmd,
    },
    /// Connection tracking: one table shared by every worker (its size is the agent's
    /// `workers.ct_capacity`, for all workers together).
    Ct {
        #[command(subcommand)]
        cmd: CtCmd,
    },
    /// What Xylem would do with a capture, frame by frame, without a node or an agent.
    ///
    /// Runs a pcap or pcapng capture through the real worker and pipeline, against the tables
    /// an agent with the given endpoints and policy would build, with connection tracking in
    /// capture time. Prints for each frame its number, time, ingress endpoint, 5-tuple, verdict
    /// (forwarded to which endpoint, to the slow path, dropped), drop reason, the connection
    /// state it met, and the header fields the dataplane rewrote; then totals.
    #[command(after_help = REPLAY_HELP)]
    Replay(ReplayArgs),
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

/// Output of `policy get`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
enum PolicyFormat {
    /// A table.
    #[default]
    Table,
    /// JSON.
    Json,
    /// The policies as YAML documents (importable again).
    Yaml,
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// Import the policies of a file (one document, several, or a List): all or nothing.
    /// Prints the new policy revision.
    Import {
        /// The YAML file (`-` for standard input).
        file: PathBuf,
    },
    /// Show the stored policies, or one.
    Get {
        /// `NAMESPACE/NAME` (or `NAME` in namespace `default`).
        name: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: PolicyFormat,
    },
    /// Delete a policy. Prints the new policy revision.
    Delete {
        /// `NAMESPACE/NAME` (or `NAME` in namespace `default`).
        name: String,
    },
    /// Explain the verdict for a new connection, and the rule that decided it.
    Trace {
        /// A pod (`NAME` or `NAMESPACE/NAME`), labels (`k=v,k2=v2`) or an IPv4 address.
        #[arg(long)]
        src: String,
        /// A pod, labels or an IPv4 address.
        #[arg(long)]
        dst: String,
        /// `PORT/PROTO` (80/TCP, 53/UDP) or ICMP.
        #[arg(long)]
        dport: String,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
}

#[derive(Subcommand, Debug)]
enum IdentityCmd {
    /// List the identities.
    List {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
}

#[derive(Subcommand, Debug)]
enum CtCmd {
    /// List tracked connections (the table every worker shares, once).
    List {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
        /// At most this many entries (the agent caps it at 65,536).
        #[arg(long, default_value_t = 4096)]
        max: usize,
    },
    /// Remove every tracked connection, on every worker (established flows are then checked as
    /// new ones).
    Flush,
}

const REPLAY_HELP: &str = "\
Capturing: XDP takes a pod's frames before tcpdump on the node's side of the veth sees them,
so capture in the pods' network namespaces, what each pod sends:
  tcpdump -i eth0 -Q out -w pod-a.pcap        (in each pod's namespace)
  mergecap -w all.pcapng pod-a.pcap pod-b.pcap
A capture of one pod in both directions works too, with --ingress POD; the frames the gateway
sent in it are reported as `from-gateway`, not replayed. Frames whose source MAC no endpoint
has are reported as `no-ingress`.

Endpoints: `xylem endpoint list -o json > endpoints.json` on the node. The gateway defaults to
the lab's (10.200.0.1, 0e:78:79:6c:00:01); the host port (--host-ip, --host-mac) is needed only
for the node's own traffic.

Exit status: 0 when every frame was replayed (drops are verdicts, not failures); 1 for a bad
file or options, or when the replay found the dataplane's accounting broken (a bug).";

/// `xylem replay`.
#[derive(clap::Args, Debug, Clone)]
struct ReplayArgs {
    /// The capture: pcap (`tcpdump -w`) or pcapng, Ethernet link type.
    file: PathBuf,
    /// The endpoints, as `xylem endpoint list -o json` prints them (port ids follow their
    /// order).
    #[arg(long)]
    endpoints: Option<PathBuf>,
    /// CiliumNetworkPolicy YAML, as `xylem policy import` takes it (`-` for standard input).
    /// Without it nothing is enforced.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Every frame enters by this endpoint (`NAMESPACE/NAME`, `NAME`, its interface, or
    /// `host`), for a capture taken on one pod's interface. Default: the endpoint whose MAC is
    /// the frame's source MAC.
    #[arg(long)]
    ingress: Option<String>,
    /// The gateway's IPv4 address (default: the lab's).
    #[arg(long, default_value = "10.200.0.1")]
    gateway_ip: std::net::Ipv4Addr,
    /// The gateway's MAC (default: the lab's).
    #[arg(long, default_value = "0e:78:79:6c:00:01")]
    gateway_mac: MacAddr,
    /// The host port's IPv4 address (the node's own address on the pod network; the lab's is
    /// 10.200.0.254), for captures with the node's own traffic. Needs --host-mac.
    #[arg(long, requires = "host_mac")]
    host_ip: Option<std::net::Ipv4Addr>,
    /// The MAC of the node's end of the host port (`ip link show xyhost` in the lab's node
    /// namespace). Needs --host-ip.
    #[arg(long, requires = "host_ip")]
    host_mac: Option<MacAddr>,
    /// `full` (policy and connection tracking, the agent's default) or `passthrough`.
    #[arg(long, default_value = "full", value_parser = parse_mode)]
    mode: Mode,
    /// Also write the frames the dataplane transmitted to this pcapng file, one interface per
    /// port (named after its veth).
    #[arg(short = 'w', long)]
    write: Option<PathBuf>,
    /// Output format: a table and totals, or one JSON document (`frames` and `summary`).
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Format,
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
    /// `full` (network policy and connection tracking) or `passthrough` (L2/L3 only, the
    /// benchmark floor).
    #[arg(long, default_value = "full", value_parser = parse_mode)]
    mode: Mode,
    /// XDP attach mode: `auto` (native, falling back to generic), `native` or `generic`.
    #[arg(long, value_enum)]
    xdp_mode: Option<XdpModeSetting>,
    /// Frames per RX batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Microseconds of polling after traffic before blocking (shared placement).
    #[arg(long)]
    idle_spin_us: Option<u64>,
    /// Run workers at SCHED_FIFO priority while frames flow (shared placement) [default: true]
    #[arg(long)]
    realtime: Option<bool>,
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
        xdp_mode: a.xdp_mode,
        batch_size: a.batch_size,
        idle_spin_us: a.idle_spin_us,
        realtime: a.realtime,
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
                enforcement(&e["ingress_enforced"]),
                enforcement(&e["egress_enforced"]),
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
        ],
        &rows,
    );
    Ok(())
}

fn enforcement(v: &serde_json::Value) -> String {
    match v.as_bool() {
        Some(true) => "enforced".into(),
        Some(false) => "open".into(),
        None => "-".into(),
    }
}

fn policy_path(n: &str) -> Result<String, Error> {
    let (ns, name) = n.split_once('/').unwrap_or(("default", n));
    if ns.is_empty() || name.is_empty() || name.contains('/') {
        return Err(Error::config(
            "policy",
            format!("'{n}' is not NAMESPACE/NAME or NAME"),
        ));
    }
    Ok(format!("/v1/policies/{ns}/{name}"))
}

fn policy_import(cli: &Cli, file: &std::path::Path) -> Result<(), Error> {
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

fn policy_get(cli: &Cli, name: Option<&str>, output: PolicyFormat) -> Result<(), Error> {
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

fn policy_trace(cli: &Cli, src: &str, dst: &str, dport: &str, output: Format) -> Result<(), Error> {
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

fn identity_list(cli: &Cli, output: Format) -> Result<(), Error> {
    let list: serde_json::Value = Client::new(socket(cli)?).get("/v1/identities")?;
    if output == Format::Json {
        print_json(&list);
        return Ok(());
    }
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = list
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|i| {
            let labels = i["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| match v.as_str() {
                            Some("") => k.clone(),
                            Some(v) => format!("{k}={v}"),
                            None => k.clone(),
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let eps = i["endpoints"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                i["identity"].to_string(),
                labels,
                if eps.is_empty() { "-".into() } else { eps },
            ]
        })
        .collect();
    print_table(&["IDENTITY", "LABELS", "ENDPOINTS"], &rows);
    Ok(())
}

fn ct_list(cli: &Cli, output: Format, max: usize) -> Result<(), Error> {
    let v: serde_json::Value = Client::new(socket(cli)?).get(&format!("/v1/ct?max={max}"))?;
    if output == Format::Json {
        print_json(&v);
        return Ok(());
    }
    let empty = Vec::new();
    let mut rows = Vec::new();
    for e in v["entries"].as_array().unwrap_or(&empty) {
        let o = &e["orig"];
        let proto = match o["proto"].as_u64() {
            Some(6) => "TCP".to_string(),
            Some(17) => "UDP".to_string(),
            Some(1) => "ICMP".to_string(),
            Some(p) => p.to_string(),
            None => "-".to_string(),
        };
        rows.push(vec![
            proto,
            format!("{}:{}", o["src"].as_str().unwrap_or(""), o["sport"]),
            format!("{}:{}", o["dst"].as_str().unwrap_or(""), o["dport"]),
            e["state"].as_str().unwrap_or("").into(),
            format!("{:.0}", e["expires_in_ns"].as_f64().unwrap_or(0.0) / 1e9),
        ]);
    }
    print_table(
        &["PROTO", "SOURCE", "DESTINATION", "STATE", "EXPIRES-S"],
        &rows,
    );
    println!(
        "{} entries of {} ({:.1} bytes each at capacity), shared by {} workers",
        v["len"],
        v["capacity"],
        v["bytes_per_entry"].as_f64().unwrap_or(0.0),
        v["workers"]
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
    lab::start_netserver(&b.netns)?;
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
            println!("  {k:<40} {val}");
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
        Cmd::Policy { cmd } => match cmd {
            PolicyCmd::Import { file } => policy_import(cli, file),
            PolicyCmd::Get { name, output } => policy_get(cli, name.as_deref(), *output),
            PolicyCmd::Delete { name } => {
                let r: serde_json::Value =
                    Client::new(socket(cli)?).delete_json(&policy_path(name)?)?;
                println!("{}", r["revision"]);
                Ok(())
            }
            PolicyCmd::Trace {
                src,
                dst,
                dport,
                output,
            } => policy_trace(cli, src, dst, dport, *output),
        },
        Cmd::Identity { cmd } => match cmd {
            IdentityCmd::List { output } => identity_list(cli, *output),
        },
        Cmd::Ct { cmd } => match cmd {
            CtCmd::List { output, max } => ct_list(cli, *output, *max),
            CtCmd::Flush => {
                let r: serde_json::Value = Client::new(socket(cli)?).delete_json("/v1/ct")?;
                println!("{} connections flushed", r["flushed"]);
                Ok(())
            }
        },
        Cmd::Metrics => metrics(cli),
        Cmd::Monitor { types, output } => monitor(cli, types, *output),
        Cmd::Replay(a) => replay(a),
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

fn replay(a: &ReplayArgs) -> Result<(), Error> {
    use std::io::IsTerminal;
    use xylem_control::replay::{self, HostPort, ReplayConfig};
    use xylem_dataplane::io::pcap::TxWriter;

    let mut cfg = ReplayConfig::new();
    cfg.gateway.ip = a.gateway_ip;
    cfg.gateway.mac = a.gateway_mac;
    cfg.mode = a.mode;
    cfg.ingress = a.ingress.clone();
    if let Some(p) = &a.endpoints {
        cfg.endpoints = replay::load_endpoints(p)?;
    }
    if let (Some(ip), Some(mac)) = (a.host_ip, a.host_mac) {
        cfg.host = Some(HostPort { ip, mac });
    }
    if let Some(p) = &a.policy {
        cfg.policies = replay::load_policies(p)?;
    }
    let tx = match &a.write {
        None => None,
        Some(path) => {
            let f = std::fs::File::create(path).map_err(|source| Error::File {
                what: "creating",
                path: path.clone(),
                source,
            })?;
            let names = replay::port_interfaces(&cfg)?;
            Some(TxWriter::new(std::io::BufWriter::new(f), &names)?)
        }
    };
    let bytes = std::fs::read(&a.file).map_err(|source| Error::File {
        what: "reading the capture",
        path: a.file.clone(),
        source,
    })?;
    // A progress bar for long captures, on stderr, only when a person watches stdout.
    let bar = (std::io::stdout().is_terminal() && bytes.len() > 1 << 20).then(|| {
        let b = indicatif::ProgressBar::new(bytes.len() as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "replaying {bar:40} {bytes}/{total_bytes} ({eta} left)",
        ) {
            b.set_style(style);
        }
        b
    });
    let mut out = ReplayPrinter {
        format: a.output,
        out: std::io::BufWriter::new(std::io::stdout().lock()),
        bar,
        tx,
        widths: Vec::new(),
        first: true,
        pending: String::new(),
    };
    let (head, summary) = replay::replay_stream(bytes, &a.file, &cfg, &mut out)?;
    out.finish(&head, &summary)?;
    if let (Some(w), Some(path)) = (out.tx.take(), &a.write) {
        use std::io::Write;
        w.into_inner().flush().map_err(|source| Error::File {
            what: "writing",
            path: path.clone(),
            source,
        })?;
    }
    let ok = summary.frame_accounting == "ok" && !summary.verdicts.contains_key("unknown");
    if !ok {
        eprintln!(
            "xylem: the replay of {} found the dataplane's accounting broken (frame accounting: \
             {}; see the frames with verdict `unknown`): this is a bug in Xylem, please report \
             it with the capture",
            head.file, summary.frame_accounting
        );
        std::process::exit(1);
    }
    Ok(())
}

/// Prints a replay as it runs: a table with columns sized from what is known before the first
/// frame (wider cells push their line out), or one JSON document written piece by piece, so a
/// capture of millions of frames needs no more memory than one.
struct ReplayPrinter<W: std::io::Write> {
    format: Format,
    out: W,
    bar: Option<indicatif::ProgressBar>,
    tx: Option<xylem_dataplane::io::pcap::TxWriter<std::io::BufWriter<std::fs::File>>>,
    widths: Vec<usize>,
    first: bool,
    /// Text waiting to be written past the progress bar.
    pending: String,
}

/// `v` as pretty JSON, its lines after the first indented by `indent` spaces.
fn json_indented<T: serde::Serialize>(v: &T, indent: usize) -> Result<String, Error> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Error::Io {
        what: "encoding the replay as JSON".into(),
        source: std::io::Error::other(e),
    })?;
    Ok(s.replace('\n', &format!("\n{}", " ".repeat(indent))))
}

const REPLAY_HEADER: [&str; 9] = [
    "#", "TIME", "INGRESS", "FLOW", "VERDICT", "EGRESS", "REASON", "CT", "REWRITE",
];

impl<W: std::io::Write> ReplayPrinter<W> {
    fn write(&mut self, text: &str) -> Result<(), Error> {
        let r = match &self.bar {
            // Gathered, then written through the bar in chunks, which hides it while the
            // text goes out and redraws it below (once per chunk, not per line).
            Some(b) => {
                self.pending.push_str(text);
                if self.pending.len() < 1 << 16 {
                    return Ok(());
                }
                let chunk = std::mem::take(&mut self.pending);
                b.suspend(|| std::io::Write::write_all(&mut std::io::stdout(), chunk.as_bytes()))
            }
            None => self.out.write_all(text.as_bytes()),
        };
        r.map_err(|source| Error::Io {
            what: "writing the replay".into(),
            source,
        })
    }

    fn row(&self, cells: &[String]) -> String {
        let mut line = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                line.push_str(c);
            } else {
                let w = self.widths.get(i).copied().unwrap_or(0);
                line.push_str(&format!("{c:<w$}  "));
            }
        }
        let mut line = line.trim_end().to_string();
        line.push('\n');
        line
    }

    fn finish(
        &mut self,
        head: &xylem_control::replay::Head,
        s: &xylem_control::replay::Summary,
    ) -> Result<(), Error> {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        let pending = std::mem::take(&mut self.pending);
        self.write(&pending)?;
        let text = match self.format {
            Format::Json => format!(
                "{}],\n  \"summary\": {}\n}}\n",
                if self.first { "" } else { "\n  " },
                json_indented(s, 2)?
            ),
            Format::Table => {
                let join = |m: &std::collections::BTreeMap<String, u64>| {
                    if m.is_empty() {
                        "-".to_string()
                    } else {
                        m.iter()
                            .map(|(k, v)| format!("{k} {v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                };
                let verdicts: Vec<String> =
                    s.verdicts.iter().map(|(k, v)| format!("{v} {k}")).collect();
                format!(
                    "\n{} ({}, {} mode): {} frames: {}\ndrops: {}\nnot processed: {}\nframe \
                     accounting: {}\n",
                    head.file,
                    head.format,
                    match head.mode {
                        Mode::Full => "full",
                        Mode::Passthrough => "passthrough",
                    },
                    s.frames,
                    if verdicts.is_empty() {
                        "-".into()
                    } else {
                        verdicts.join(", ")
                    },
                    join(&s.drops),
                    join(&s.not_processed),
                    s.frame_accounting
                )
            }
        };
        self.write(&text)?;
        self.out.flush().map_err(|source| Error::Io {
            what: "writing the replay".into(),
            source,
        })
    }
}

impl<W: std::io::Write> xylem_control::replay::Sink for ReplayPrinter<W> {
    fn start(&mut self, head: &xylem_control::replay::Head) -> Result<(), Error> {
        let text = match self.format {
            Format::Json => format!(
                "{{\n  \"file\": {},\n  \"format\": {},\n  \"mode\": {},\n  \"ports\": {},\n  \
                 \"frames\": [",
                json_indented(&head.file, 2)?,
                json_indented(&head.format, 2)?,
                json_indented(&head.mode, 2)?,
                json_indented(&head.ports, 2)?
            ),
            Format::Table => {
                let names = head
                    .ports
                    .iter()
                    .map(|p| p.endpoint.len())
                    .max()
                    .unwrap_or(0);
                // Frame number, time, endpoints, the longest usual flow (an ICMP echo between
                // two addresses of 15 characters), verdict, reason and state names.
                self.widths = vec![6, 11, names, 60, 13, names, 23, 25];
                for (w, h) in self.widths.iter_mut().zip(REPLAY_HEADER) {
                    *w = (*w).max(h.len());
                }
                self.row(&REPLAY_HEADER.map(String::from))
            }
        };
        self.write(&text)
    }

    fn frame(&mut self, f: xylem_control::replay::FrameReport) -> Result<(), Error> {
        let text = match self.format {
            Format::Json => {
                let sep = if self.first { "\n    " } else { ",\n    " };
                self.first = false;
                format!("{sep}{}", json_indented(&f, 4)?)
            }
            Format::Table => {
                let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
                let (egress, rewrite) = match &f.answer {
                    Some(a) => (
                        a.egress.endpoint.clone(),
                        format!("answered: {}", a.flow.summary),
                    ),
                    None => (
                        f.egress.as_ref().map_or("-".into(), |e| e.endpoint.clone()),
                        f.rewrite
                            .iter()
                            .map(|c| format!("{} {}→{}", c.field, c.from, c.to))
                            .collect::<Vec<_>>()
                            .join(", "),
                    ),
                };
                self.row(&[
                    f.number.to_string(),
                    format!("{:.6}", f.time),
                    f.ingress
                        .as_ref()
                        .map_or("-".into(), |p| p.endpoint.clone()),
                    f.flow.summary.clone(),
                    f.verdict.to_string(),
                    egress,
                    opt(&f.reason),
                    match (f.ct, f.ct_state) {
                        (Some(c), Some(s)) => format!("{c} ({s})"),
                        (Some(c), None) => c.to_string(),
                        _ => "-".into(),
                    },
                    if rewrite.is_empty() {
                        "-".into()
                    } else {
                        rewrite
                    },
                ])
            }
        };
        self.write(&text)
    }

    fn sent(&mut self, f: &xylem_dataplane::io::pcap::SentFrame) -> Result<(), Error> {
        match &mut self.tx {
            Some(w) => Ok(w.write(f)?),
            None => Ok(()),
        }
    }

    fn progress(&mut self, read: usize, _total: usize) {
        if let Some(b) = &self.bar {
            b.set_position(read as u64);
        }
    }
}

fn main() -> ExitCode {
    // Die quietly when the reader of our output goes away (`xylem replay … | head`), as Unix
    // tools do, instead of panicking on the failed write: Rust ignores SIGPIPE by default.
    // SAFETY: called first thing in `main`, before any other thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xylem: {e}");
            ExitCode::FAILURE
        }
    }
}

//! `xylem`: the command-line tool. See `xylem --help`.
//!
//! What it does: parses the command line and renders answers, as tables for people or as the
//! agent's JSON (`-o json`). The agent is reached through `xylem-api`'s client; `xylem lab`
//! drives `xylem-lab`, `xylem replay` drives `xylem-replay`.
//!
//! What it does not do: hold domain logic (validation, policy, tables are the agent's and the
//! libraries'), or link the agent: its dependency tree has no aya, xsk-rs or HTTP server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xylem_api::Client;
use xylem_api::config::XdpModeSetting;
use xylem_lab::{DEFAULT_LAB, Lab};

mod agent_cmd;
mod error;
mod fqdn_cmd;
mod input;
mod lab_cmd;
mod node_cmd;
mod output;
mod policy_cmd;
mod remote_cmd;
mod replay_cmd;
mod service_cmd;

use error::Error;
use output::Format;
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
    /// Stream flow events live (like `cilium monitor`) until Ctrl-C; with `--type dns` every
    /// DNS query and answer the dataplane inspected (forwarded or refused, the rule that
    /// allowed it, the addresses answered), and with `--type agent` the agent's own events (a
    /// backend's health changed); ends with the number of events lost.
    Monitor {
        /// Event types to show (repeat or comma-separate); all when absent.
        #[arg(long = "type", short = 't', value_delimiter = ',', value_parser = ["drop", "trace", "policy-verdict", "dns", "agent"])]
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
    /// Load-balanced services (Kubernetes Service and EndpointSlice YAML).
    Service {
        #[command(subcommand)]
        cmd: ServiceCmd,
    },
    /// DNS-aware policy: the FQDN cache (names the pods resolved, and their addresses).
    Fqdn {
        #[command(subcommand)]
        cmd: FqdnCmd,
    },
    /// The cluster's nodes: where each one's pods are, over the uplink, and whether traffic
    /// with it is encrypted.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// The other nodes' pods, which this agent's policies select by their labels (identity
    /// numbers are per node, so each node is told the others' pods).
    RemoteEndpoint {
        #[command(subcommand)]
        cmd: RemoteEndpointCmd,
    },
    /// Transparent encryption (ESP) between nodes.
    Encrypt {
        #[command(subcommand)]
        cmd: EncryptCmd,
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
enum ServiceCmd {
    /// Import Services and EndpointSlices as `kubectl get svc,endpointslices -o yaml` prints
    /// them (one document, several, or a List): all or nothing. Prints the new revision.
    Import {
        /// The YAML file (`-` for standard input).
        file: PathBuf,
    },
    /// Delete a service. Prints the new revision.
    Delete {
        /// `NAMESPACE/NAME` (or `NAME` in namespace `default`).
        name: String,
    },
    /// List the services: frontends, and each backend's state, health, weight and share of the
    /// Maglev table.
    List {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
}

#[derive(Subcommand, Debug)]
enum FqdnCmd {
    /// The FQDN cache: per endpoint, the DNS names it resolved and the addresses the answers
    /// gave, which its `toFQDNs` rules let it reach until they expire (kept across restarts).
    Cache {
        #[command(subcommand)]
        cmd: FqdnCacheCmd,
    },
}

#[derive(Subcommand, Debug)]
enum FqdnCacheCmd {
    /// List every endpoint's names and addresses, when each expires and whether a live
    /// connection uses it.
    List {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
    /// Remove names from the cache, and the addresses they let their endpoint reach (a pod
    /// reaches them again once it resolves the name again).
    Clean {
        /// Only the names this Cilium `matchPattern` matches (`*.domain.com`); every name when
        /// absent.
        #[arg(long)]
        matchpattern: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum NodeCmd {
    /// List the nodes: address, pod CIDR, encryption, the MAC resolved on the underlay, and
    /// whether the entry comes from the configuration file or the API.
    List {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
    /// Add or replace a node (kept across restarts; wins over the configuration's entry of
    /// the same name). Checked as the configuration's `nodes` are: nothing changes on error.
    Put {
        /// The node's name (an RFC 1123 label).
        name: String,
        /// Its address on the underlay.
        #[arg(long)]
        node_ip: std::net::Ipv4Addr,
        /// Its pod CIDR.
        #[arg(long)]
        pod_cidr: xylem_api::config::Ipv4Cidr,
        /// Encrypt traffic with it (default: as the agent, on when it has an `encryption`
        /// section).
        #[arg(long, value_enum)]
        encryption: Option<node_cmd::OnOff>,
    },
    /// Delete a node put through the API (its configuration entry, if any, is used again).
    Delete {
        /// The node's name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum RemoteEndpointCmd {
    /// List the remote endpoints: node, address, the identity their labels have here, labels.
    List {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
    /// Add or replace a pod of another node (kept across restarts). Its node must be in the
    /// node table and its address in that node's pod CIDR: nothing changes on error.
    Put {
        /// `NAMESPACE/NAME` (or `NAME` in namespace `default`).
        endpoint: String,
        /// The node the pod runs on.
        #[arg(long)]
        node: String,
        /// The pod's IPv4 address.
        #[arg(long)]
        ip: std::net::Ipv4Addr,
        /// A label `KEY=VALUE` (repeatable).
        #[arg(long = "label", short = 'l')]
        labels: Vec<String>,
    },
    /// Delete a remote endpoint: policies no longer select it by its labels.
    Delete {
        /// `NAMESPACE/NAME` (or `NAME` in namespace `default`).
        endpoint: String,
    },
}

#[derive(Subcommand, Debug)]
enum EncryptCmd {
    /// Mode, key file, the keys in use (current and in grace), per-peer counters and the ESP
    /// errors.
    Status {
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
    /// LAB.yaml: `pods: [{name, namespace, labels}]` (`pods: []`: a node without pods, for
    /// `lab add-pod` or a CNI plugin). Default: pods pod-a, pod-b, pod-c.
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
    /// Pods each node's agent can take beyond the lab file's (`lab add-pod`, a CNI plugin's
    /// ADD); each costs every worker one ring of frames [default: 4]
    #[arg(long)]
    spare_ports: Option<u32>,
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
    /// Add a pod to the running lab, registered with its node's agent through its API (and,
    /// in a lab of several nodes, with the other nodes' agents as a remote endpoint).
    AddPod {
        /// Pod name.
        name: String,
        /// The node to add it to (default: the lab's first node).
        #[arg(long)]
        node: Option<String>,
        /// Kubernetes namespace.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// A label `KEY=VALUE` (repeatable).
        #[arg(long = "label", short = 'l')]
        labels: Vec<String>,
        /// A command to start in the pod's namespace once it is up (through `sh -c`, detached,
        /// with POD_NAME, POD_NAMESPACE and POD_IP set; its output goes to the log `lab
        /// status` names), e.g. `socat TCP-LISTEN:8080,fork,reuseaddr SYSTEM:'echo $POD_NAME'`.
        #[arg(long)]
        run: Option<String>,
    },
    /// Delete a pod from the running lab: its endpoint (and its port on every worker), then
    /// its namespace.
    DeletePod {
        /// Pod name.
        name: String,
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

fn run(cli: &Cli) -> Result<(), Error> {
    match &cli.cmd {
        Cmd::Status { output } => agent_cmd::status(cli, *output),
        Cmd::Endpoint { cmd } => match cmd {
            EndpointCmd::List { output } => agent_cmd::endpoints(cli, *output),
            EndpointCmd::Put {
                endpoint,
                ifname,
                ip,
                mac,
                labels,
                output,
            } => agent_cmd::endpoint_put(cli, endpoint, ifname, ip, mac, labels, *output),
            EndpointCmd::Delete { endpoint } => {
                Client::new(socket(cli)?).delete(&agent_cmd::endpoint_path(endpoint)?)?;
                println!("endpoint {endpoint} deleted");
                Ok(())
            }
        },
        Cmd::Policy { cmd } => match cmd {
            PolicyCmd::Import { file } => policy_cmd::policy_import(cli, file),
            PolicyCmd::Get { name, output } => {
                policy_cmd::policy_get(cli, name.as_deref(), *output)
            }
            PolicyCmd::Delete { name } => {
                let r: serde_json::Value =
                    Client::new(socket(cli)?).delete_json(&policy_cmd::policy_path(name)?)?;
                println!("{}", r["revision"]);
                Ok(())
            }
            PolicyCmd::Trace {
                src,
                dst,
                dport,
                output,
            } => policy_cmd::policy_trace(cli, src, dst, dport, *output),
        },
        Cmd::Service { cmd } => match cmd {
            ServiceCmd::Import { file } => service_cmd::import(cli, file),
            ServiceCmd::Delete { name } => service_cmd::delete(cli, name),
            ServiceCmd::List { output } => service_cmd::list(cli, *output),
        },
        Cmd::Fqdn {
            cmd: FqdnCmd::Cache { cmd },
        } => match cmd {
            FqdnCacheCmd::List { output } => fqdn_cmd::list(cli, *output),
            FqdnCacheCmd::Clean { matchpattern } => fqdn_cmd::clean(cli, matchpattern.as_deref()),
        },
        Cmd::Node { cmd } => match cmd {
            NodeCmd::List { output } => node_cmd::list(cli, *output),
            NodeCmd::Put {
                name,
                node_ip,
                pod_cidr,
                encryption,
            } => node_cmd::put(cli, name, *node_ip, *pod_cidr, *encryption),
            NodeCmd::Delete { name } => node_cmd::delete(cli, name),
        },
        Cmd::RemoteEndpoint { cmd } => match cmd {
            RemoteEndpointCmd::List { output } => remote_cmd::list(cli, *output),
            RemoteEndpointCmd::Put {
                endpoint,
                node,
                ip,
                labels,
            } => remote_cmd::put(cli, endpoint, node, *ip, labels),
            RemoteEndpointCmd::Delete { endpoint } => remote_cmd::delete(cli, endpoint),
        },
        Cmd::Encrypt {
            cmd: EncryptCmd::Status { output },
        } => node_cmd::status(cli, *output),
        Cmd::Identity { cmd } => match cmd {
            IdentityCmd::List { output } => agent_cmd::identity_list(cli, *output),
        },
        Cmd::Ct { cmd } => match cmd {
            CtCmd::List { output, max } => agent_cmd::ct_list(cli, *output, *max),
            CtCmd::Flush => {
                let r: serde_json::Value = Client::new(socket(cli)?).delete_json("/v1/ct")?;
                println!("{} connections flushed", r["flushed"]);
                Ok(())
            }
        },
        Cmd::Metrics => agent_cmd::metrics(cli),
        Cmd::Monitor { types, output } => agent_cmd::monitor(cli, types, *output),
        Cmd::Replay(a) => Ok(replay_cmd::replay(a)?),
        Cmd::Lab { cmd } => lab_cmd::run(cli, cmd),
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

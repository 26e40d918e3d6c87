//! `xylem-agent`: runs a node's dataplane. See `xylem-agent --help`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use tracing_subscriber::EnvFilter;
use xylem_agent::Error;
use xylem_agent::agent::AgentState;
use xylem_agent::state::FileStore;
use xylem_api::config::{AgentConfig, RejectResponse, XdpModeSetting};
use xylem_dataplane::services::Algorithm;
use xylem_dataplane::tables::Mode;
use xylem_dataplane::worker::Placement;

/// Runs a node's Xylem dataplane: attaches the XDP redirector to the configured interfaces,
/// binds AF_XDP sockets, starts pinned workers and serves the local API. Stops cleanly (and
/// detaches its XDP programs) on SIGTERM or SIGINT.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The configuration file (YAML or JSON): node name, pod CIDR, gateway, ports.
    #[arg(long, short = 'c')]
    config: PathBuf,
    /// Worker CPUs, comma-separated (one worker per CPU). Overrides `workers.cores`.
    #[arg(long, value_delimiter = ',')]
    worker_cores: Option<Vec<usize>>,
    /// `dedicated` (busy-poll) or `shared` (block when idle). Overrides `workers.placement`.
    #[arg(long)]
    placement: Option<Placement>,
    /// Frames per RX batch. Overrides `workers.batch_size`.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Microseconds to keep busy-polling after traffic in `shared` placement.
    #[arg(long)]
    idle_spin_us: Option<u64>,
    /// Overrides `xdp_mode`.
    #[arg(long, value_enum)]
    xdp_mode: Option<XdpModeSetting>,
    /// `passthrough` or `full`. Overrides `mode`.
    #[arg(long, value_parser = parse_mode)]
    mode: Option<Mode>,
    /// `maglev` or `random`: how a new connection to a service picks its backend. Overrides
    /// `services.algorithm`.
    #[arg(long, value_parser = parse_algorithm)]
    lb_algorithm: Option<Algorithm>,
    /// M, the slots of each service frontend's Maglev table: a supported prime (251 to
    /// 131071; default 16381). Overrides `services.maglev_table_size`.
    #[arg(long)]
    maglev_table_size: Option<u32>,
    /// Seconds a learned DNS address stays allowed at least, whatever its TTL (0: the TTL).
    /// Overrides `fqdn.min_ttl_s`.
    #[arg(long = "tofqdns-min-ttl")]
    tofqdns_min_ttl: Option<u32>,
    /// Addresses kept per endpoint and DNS name, at least 1 (the oldest unused ones beyond it
    /// are forgotten). Overrides `fqdn.max_ips_per_name`.
    #[arg(long = "tofqdns-endpoint-max-ip-per-hostname")]
    tofqdns_endpoint_max_ip_per_hostname: Option<u16>,
    /// The answer to a DNS query no policy allows: `refused` or `nameError` (NXDOMAIN; also
    /// `nxdomain`). Overrides `fqdn.reject_response`.
    #[arg(long = "tofqdns-dns-reject-response-code")]
    tofqdns_dns_reject_response_code: Option<RejectResponse>,
    /// State directory. Overrides `state_dir`.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// API socket path. Overrides `api_socket`.
    #[arg(long)]
    api_socket: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (`/metrics`); `--metrics-addr` alone means
    /// 127.0.0.1:9962. Overrides `metrics_addr`. Off by default.
    #[arg(long, num_args = 0..=1, default_missing_value = xylem_api::config::DEFAULT_METRICS_ADDR)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Discard the stored state (files are moved aside as `*.json.discarded`) instead of
    /// refusing to start when it cannot be read.
    #[arg(long)]
    start_empty: bool,
    /// Log filter (tracing's EnvFilter syntax); RUST_LOG otherwise, `info` by default.
    #[arg(long)]
    log: Option<String>,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "passthrough" => Ok(Mode::Passthrough),
        "full" => Ok(Mode::Full),
        o => Err(format!("unknown mode '{o}': use 'passthrough' or 'full'")),
    }
}

fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    s.parse()
}

fn load(args: &Args) -> Result<AgentConfig, Error> {
    let text = std::fs::read_to_string(&args.config).map_err(|source| {
        Error::File(xylem_api::FileError {
            what: "reading the configuration",
            path: args.config.clone(),
            source,
        })
    })?;
    let mut cfg = AgentConfig::parse(&text)?;
    if let Some(c) = &args.worker_cores {
        cfg.workers.cores = c.clone();
    }
    if let Some(p) = args.placement {
        cfg.workers.placement = Some(p);
    }
    if let Some(b) = args.batch_size {
        cfg.workers.batch_size = b;
    }
    if let Some(s) = args.idle_spin_us {
        cfg.workers.idle_spin_us = s;
    }
    if let Some(m) = args.xdp_mode {
        cfg.xdp_mode = m;
    }
    if let Some(m) = args.mode {
        cfg.mode = m;
    }
    if let Some(a) = args.lb_algorithm {
        cfg.services.algorithm = a;
    }
    if let Some(m) = args.maglev_table_size {
        cfg.services.maglev_table_size = m;
    }
    if let Some(t) = args.tofqdns_min_ttl {
        cfg.fqdn.min_ttl_s = t;
    }
    if let Some(n) = args.tofqdns_endpoint_max_ip_per_hostname {
        cfg.fqdn.max_ips_per_name = n;
    }
    if let Some(r) = args.tofqdns_dns_reject_response_code {
        cfg.fqdn.reject_response = r;
    }
    if let Some(d) = &args.state_dir {
        cfg.state_dir = d.clone();
    }
    if let Some(s) = &args.api_socket {
        cfg.api_socket = s.clone();
    }
    if let Some(a) = args.metrics_addr {
        cfg.metrics_addr = Some(a);
    }
    cfg.validate()?;
    Ok(cfg)
}

fn run(args: Args) -> Result<(), Error> {
    let cfg = load(&args)?;
    std::fs::create_dir_all(&cfg.state_dir).map_err(|source| {
        Error::File(xylem_api::FileError {
            what: "creating the state directory",
            path: cfg.state_dir.clone(),
            source,
        })
    })?;
    // Before anything is attached: a corrupt store stops the start here.
    let store = if args.start_empty {
        FileStore::open_empty(&cfg.state_dir)?
    } else {
        FileStore::open(&cfg.state_dir)?
    };
    xylem_agent::server::claim_socket(&cfg.api_socket)?;

    // Block the stop signals in every thread (threads inherit the mask), so only the main
    // thread's sigwait sees them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().map_err(|e| Error::Io {
        what: "blocking SIGTERM/SIGINT".into(),
        source: e.into(),
    })?;

    let socket = cfg.api_socket.clone();
    tracing::info!(
        node = %cfg.node_name,
        placement = cfg.placement().as_str(),
        cores = ?cfg.worker_cores(),
        mode = ?cfg.mode,
        "starting"
    );
    let agent = AgentState::start(cfg, Box::new(store))?;
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel();
    let api_agent = std::sync::Arc::clone(&agent);
    let api_socket = socket.clone();
    let metrics_addr = agent.config().metrics_addr;
    let api = std::thread::Builder::new()
        .name("xylem-api".into())
        .spawn(move || xylem_agent::server::serve(api_agent, api_socket, metrics_addr, api_stopped))
        .map_err(|source| Error::Io {
            what: "starting the API thread".into(),
            source,
        })?;
    tracing::info!(socket = %socket.display(), "ready");

    let sig = signals.wait().map_err(|e| Error::Io {
        what: "waiting for a signal".into(),
        source: e.into(),
    })?;
    tracing::info!(signal = ?sig, "stopping");
    let _ = stop_api.send(());
    match api.join() {
        Ok(Err(e)) => tracing::error!(error = %e, "API server failed"),
        Err(_) => tracing::error!("API server panicked"),
        Ok(Ok(())) => {}
    }
    let _ = std::fs::remove_file(&socket);
    agent.shutdown()?;
    tracing::info!("stopped; XDP programs detached");
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = args.log.clone().map(EnvFilter::new).unwrap_or_else(|| {
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("xylem-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

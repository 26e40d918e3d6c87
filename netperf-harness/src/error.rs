//! The harness's one error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while building paths, running netperf or writing the report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required program is not on `PATH`.
    #[error(
        "`{0}` not found on PATH: run docker/bootstrap.sh (it installs netperf from Debian non-free, iproute2 and ethtool)"
    )]
    MissingTool(&'static str),
    /// The harness creates network namespaces and needs root.
    #[error("must run as root: the harness creates network namespaces, veths and iptables rules")]
    NotRoot,
    /// A helper command could not be started.
    #[error("could not start `{cmd}`: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why `exec` failed.
        source: io::Error,
    },
    /// A helper command ran and failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// Exit status as text.
        status: String,
        /// The trimmed standard error (or output) of the command.
        stderr: String,
    },
    /// A command did not finish in time and was killed.
    #[error("`{cmd}` did not finish within {secs} s and was killed")]
    Timeout {
        /// The command line.
        cmd: String,
        /// The limit in seconds.
        secs: u64,
    },
    /// netperf ran but reported an error (no netserver, connection refused, ...).
    #[error("netperf: {0}")]
    Netperf(String),
    /// netperf's output could not be understood.
    #[error("could not parse netperf output: {0}")]
    Parse(String),
    /// The `xylem lab` CLI failed or returned something unusable.
    #[error("xylem lab: {0}")]
    Lab(String),
    /// The `xylem monitor` client of the `xylem-monitored` path failed to attach, exited early,
    /// or ended without its summary line.
    #[error("xylem monitor: {0}")]
    Monitor(String),
    /// A path could not be built or measured; wraps the cause and names the path.
    #[error("path `{path}`: {source}")]
    Path {
        /// The path's name, e.g. `veth-netfilter`.
        path: String,
        /// The underlying failure.
        source: Box<Error>,
    },
    /// SIGINT or SIGTERM arrived; everything created is being removed.
    #[error("interrupted by a signal; cleaned up")]
    Interrupted,
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// results.json could not be encoded or decoded.
    #[error("results.json: {0}")]
    Json(#[from] serde_json::Error),
    /// Drawing the chart failed.
    #[error("chart: {0}")]
    Chart(String),
    /// A command-line value is not valid.
    #[error("invalid argument: {0}")]
    Usage(String),
}

impl Error {
    /// Attaches the path's name to an error (once).
    pub fn in_path(self, path: &str) -> Error {
        match self {
            e @ Error::Path { .. } | e @ Error::Interrupted => e,
            other => Error::Path {
                path: path.to_string(),
                source: Box::new(other),
            },
        }
    }
}

/// The lab's process and namespace helpers fail with the lab's error; the harness reports each
/// failure with its own variant and message, so its output does not depend on which crate ran
/// the command.
impl From<xylem_lab::Error> for Error {
    fn from(e: xylem_lab::Error) -> Error {
        use xylem_lab::Error as Lab;
        match e {
            Lab::Spawn { command, source } => Error::Spawn {
                cmd: command,
                source,
            },
            Lab::Exit {
                command,
                status,
                stderr,
            } => Error::Command {
                cmd: command,
                status,
                stderr,
            },
            Lab::Timeout { command, secs } => Error::Timeout { cmd: command, secs },
            Lab::Stopped { .. } => Error::Interrupted,
            Lab::NotListening {
                command,
                port,
                secs,
            } => Error::Command {
                cmd: command,
                status: format!("not listening after {secs} s"),
                stderr: format!("netserver did not open port {port}"),
            },
            Lab::EmptyCommand => Error::Usage("empty command".into()),
            other => Error::Lab(other.to_string()),
        }
    }
}

/// The harness's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

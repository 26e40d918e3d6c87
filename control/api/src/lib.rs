//! # xylem-api
//!
//! The contract between the agent and whoever drives it: the agent's configuration file
//! ([`config`]), the views its API answers with and the bodies it takes ([`views`]), and a
//! [`Client`] for its unix socket.
//!
//! What it does not do: serve the API, run a dataplane, load XDP or open AF_XDP sockets (that
//! is the agent). It links the dataplane and the redirector without their `afxdp` and `loader`
//! features, for their plain types only, so the CLI and the CNI plugin that link this crate
//! carry neither libxdp nor aya nor an HTTP server.

pub mod client;
pub mod config;
pub mod keyfile;
pub mod views;

use std::path::PathBuf;

pub use client::{Client, StreamEnd};
pub use views::{
    BackendHealth, BackendView, CtView, DnsCounters, ENCRYPTED_POD_MTU, ENCRYPTION_DISABLED,
    ENCRYPTION_IPSEC, EncryptionKeyView, EncryptionPeerView, EncryptionStatus, Endpoint,
    EndpointRequest, FqdnCacheEntry, FqdnCacheIp, FqdnCleaned, FrontendView, Health, IdentityView,
    MissingInterface, NetworkView, NodeRequest, NodeSource, NodeView, POD_MTU, PolicyView,
    PortStatus, RemoteEndpointRequest, RemoteEndpointView, ServiceView, SlowPathCounters, Status,
    TraceRequest, WorkerStatus,
};

/// A configuration value or an option is invalid: which, and why. Nothing was applied. Every
/// control-side crate reports it in these words, through its own error enum.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {field}: {why}")]
pub struct ConfigError {
    /// The offending field, as written in the file or flag.
    pub field: String,
    /// Why it is invalid and what would be accepted.
    pub why: String,
}

/// A file could not be read or written: what was being done, the file, and why. Every
/// control-side crate reports it in these words, through its own error enum.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", path.display())]
pub struct FileError {
    /// What was being done.
    pub what: &'static str,
    /// The file.
    pub path: PathBuf,
    /// The underlying error.
    #[source]
    pub source: std::io::Error,
}

/// What this crate can fail at. Messages say what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is invalid. Nothing was applied.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The agent's API could not be reached.
    #[error("cannot reach xylem-agent at {}: is it running? (start it, or `xylem lab up` for a lab; --socket picks another agent)", socket.display())]
    AgentUnreachable {
        /// The socket tried.
        socket: PathBuf,
    },
    /// The agent accepted the connection but did not answer within the client's timeout
    /// ([`Client::with_timeout`]).
    #[error("xylem-agent at {} did not answer within {after:?}: it may be stuck or overloaded; see its log and `xylem status`, restart it if it stays so, or retry later", socket.display())]
    Timeout {
        /// The socket tried.
        socket: PathBuf,
        /// The timeout that passed.
        after: std::time::Duration,
    },
    /// The agent answered with an error, or with something this client cannot decode.
    #[error("xylem-agent answered {status}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// The ESP key file does not parse: which line (0: the whole file), which field, and what
    /// to write instead. Never quotes key material.
    #[error("key file line {line}: {field}: {why}")]
    KeyFile {
        /// The line, 1-based; 0 when the file as a whole is wrong (no key).
        line: usize,
        /// `keyid`, `algorithm`, `key`, `icv`, `line` or `keys`.
        field: &'static str,
        /// Why, and what to write.
        why: String,
    },
    /// The client could not run (its runtime or a signal handler could not be set up).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl Error {
    /// Shorthand for a configuration error.
    pub fn config(field: impl Into<String>, why: impl Into<String>) -> Self {
        Error::Config(ConfigError::new(field, why))
    }
}

impl ConfigError {
    /// `field` is invalid because `why`.
    pub fn new(field: impl Into<String>, why: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            why: why.into(),
        }
    }
}

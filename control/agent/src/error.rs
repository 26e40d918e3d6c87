//! The control crate's one error type.

/// Everything the agent, the CLI and the lab can fail at. Messages say what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value or an option is invalid. Nothing was applied.
    #[error(transparent)]
    Config(#[from] xylem_api::ConfigError),
    /// A file could not be read or written.
    #[error(transparent)]
    File(#[from] xylem_api::FileError),
    /// The agent's configuration, or a call to its API, failed.
    #[error(transparent)]
    Api(#[from] xylem_api::Error),
    /// An answer could not be rendered for output.
    #[error("rendering the answer as {format} failed: {why}")]
    Render {
        /// The output format.
        format: &'static str,
        /// What the encoder said.
        why: String,
    },
    /// An external command failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its stderr, or why it could not run.
        detail: String,
    },
    /// The lab is not in the state the command needs.
    #[error("{0}")]
    Lab(String),
    /// The running agent could not carry out a change: a worker did not open a port, its
    /// mailbox was full, shared state was poisoned by a panic, another agent holds the socket.
    #[error("{0}")]
    Agent(String),
    /// The dataplane failed.
    #[error(transparent)]
    Dataplane(#[from] xylem_dataplane::Error),
    /// The XDP redirector failed.
    #[error(transparent)]
    Redirector(#[from] xdp_redirector::Error),
    /// The state store cannot be used (corrupt file, failed write).
    #[error("{0}")]
    State(String),
    /// Some other I/O failure.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A network policy file is invalid. Nothing from it was applied.
    #[error(transparent)]
    Policy(#[from] xylem_policy::Error),
}

impl Error {
    /// Shorthand for a configuration error.
    pub fn config(field: impl Into<String>, why: impl Into<String>) -> Self {
        Error::Config(xylem_api::ConfigError::new(field, why))
    }
}

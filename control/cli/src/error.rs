//! The CLI's one error type.

/// What a `xylem` command can fail at. Messages say what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value or an option is invalid. Nothing was applied.
    #[error(transparent)]
    Config(#[from] xylem_api::ConfigError),
    /// A file could not be read or written.
    #[error(transparent)]
    File(#[from] xylem_api::FileError),
    /// Writing the output failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
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
    LabState(String),
    /// An answer could not be rendered for output.
    #[error("rendering the answer as {format} failed: {why}")]
    Render {
        /// The output format.
        format: &'static str,
        /// What the encoder said.
        why: String,
    },
    /// The agent's configuration, or a call to its API, failed.
    #[error(transparent)]
    Api(#[from] xylem_api::Error),
    /// Building or removing a lab failed.
    #[error(transparent)]
    Lab(#[from] xylem_lab::Error),
    /// A replay failed.
    #[error(transparent)]
    Replay(#[from] xylem_replay::Error),
}

impl Error {
    /// Shorthand for a configuration error.
    pub fn config(field: impl Into<String>, why: impl Into<String>) -> Self {
        Error::Config(xylem_api::ConfigError::new(field, why))
    }
}

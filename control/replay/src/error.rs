//! The replay's one error type.

/// What a replay can fail at: its inputs, never a frame (a frame is reported, whatever it is).
/// Messages say what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value or an option is invalid. Nothing was applied.
    #[error(transparent)]
    Config(#[from] xylem_api::ConfigError),
    /// A file could not be read or written.
    #[error(transparent)]
    File(#[from] xylem_api::FileError),
    /// Some other I/O failure (writing the report).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The dataplane refused the capture or the tables.
    #[error(transparent)]
    Dataplane(#[from] xylem_dataplane::Error),
    /// The policy file is invalid.
    #[error(transparent)]
    Policy(#[from] xylem_policy::Error),
}

impl Error {
    /// Shorthand for a configuration error.
    pub fn config(field: impl Into<String>, why: impl Into<String>) -> Self {
        Error::Config(xylem_api::ConfigError::new(field, why))
    }
}

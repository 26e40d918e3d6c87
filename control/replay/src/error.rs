//! The replay's one error type.

use std::path::PathBuf;

/// What a replay can fail at: its inputs, never a frame (a frame is reported, whatever it is).
/// Messages say what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An option or an endpoints file value is invalid. Nothing was replayed.
    #[error("invalid configuration: {field}: {why}")]
    Config {
        /// The offending field or option.
        field: String,
        /// Why it is invalid and what would be accepted.
        why: String,
    },
    /// A file could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    File {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
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
        Error::Config {
            field: field.into(),
            why: why.into(),
        }
    }
}

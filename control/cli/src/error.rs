//! The CLI's one error type.

use std::path::PathBuf;

/// What a `xylem` command can fail at. Messages say what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An option is invalid. Nothing was done.
    #[error("invalid configuration: {field}: {why}")]
    Config {
        /// The offending option.
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
        Error::Config {
            field: field.into(),
            why: why.into(),
        }
    }
}

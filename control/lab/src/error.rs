//! The lab's one error type, also the error of its process and namespace helpers.

/// What building, running or removing a lab, or running one of its helper commands, can fail
/// at. Messages say what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value or an option is invalid. Nothing was applied.
    #[error(transparent)]
    Config(#[from] xylem_api::ConfigError),
    /// A file could not be read or written.
    #[error(transparent)]
    File(#[from] xylem_api::FileError),
    /// An external command (`ip`, `ethtool`, `netserver`, the agent) failed.
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
    /// The lab's agent could not be configured or reached.
    #[error(transparent)]
    Api(#[from] xylem_api::Error),
    /// A helper command could not be started, or its input or output could not be passed.
    #[error(
        "could not run `{command}`: {source} (is it installed? docker/bootstrap.sh installs everything)"
    )]
    Spawn {
        /// The command line.
        command: String,
        /// Why `exec`, the write to its stdin or the wait failed.
        source: std::io::Error,
    },
    /// A helper command ran and exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr} (run the command by hand to reproduce it)")]
    Exit {
        /// The command line.
        command: String,
        /// Its exit status, as text.
        status: String,
        /// Its trimmed standard error, or its standard output when it wrote no error.
        stderr: String,
    },
    /// A command did not finish within its time limit and was killed.
    #[error(
        "`{command}` did not finish within {secs} s and was killed: run it by hand to see where it stops"
    )]
    Timeout {
        /// The command line.
        command: String,
        /// The limit in seconds.
        secs: u64,
    },
    /// The caller was asked to stop (a signal) while a command ran; the command was killed.
    #[error("`{command}` was killed because its caller was asked to stop: run it again")]
    Stopped {
        /// The command line.
        command: String,
    },
    /// A server (netserver, the world's socat) was started but did not listen in time (or
    /// exited).
    #[error(
        "`{command}` failed: it did not listen on port {port} within {secs} s; \
         run it by hand in that namespace to see why"
    )]
    NotListening {
        /// The command line that started netserver.
        command: String,
        /// The port it should listen on.
        port: u16,
        /// How long it was given, in seconds.
        secs: u64,
    },
    /// A helper was asked to run an empty command line.
    #[error("asked to run an empty command line: this is a bug in the caller, please report it")]
    EmptyCommand,
}

impl Error {
    /// Shorthand for a configuration error.
    pub fn config(field: impl Into<String>, why: impl Into<String>) -> Self {
        Error::Config(xylem_api::ConfigError::new(field, why))
    }
}

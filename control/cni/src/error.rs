//! The plugin's one error type: a CNI error code with the message and details the runtime
//! shows, written on stdout in the specification's error format.

use serde::Serialize;

/// The specification's well-known error codes (CNI 1.1.0, "Error"), and the plugin's own from
/// 100 up, where the specification leaves room for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1: the configuration's `cniVersion` is not one the plugin supports.
    IncompatibleVersion,
    /// 2: a field the plugin does not support.
    UnsupportedField,
    /// 3: the container is unknown or does not exist.
    UnknownContainer,
    /// 4: an environment variable is missing or invalid.
    InvalidEnvironment,
    /// 5: reading or writing failed (stdin, a file, a process).
    Io,
    /// 6: the configuration or a delegated plugin's output does not decode.
    Decoding,
    /// 7: the configuration decodes but is not valid.
    InvalidConfig,
    /// 11: a transient condition (the agent is unreachable or busy): the runtime retries.
    TryAgainLater,
    /// 50: STATUS: the plugin cannot serve ADD now.
    NotAvailable,
    /// 51: STATUS: the plugin cannot serve ADD, and existing pods may have lost connectivity.
    LimitedConnectivity,
    /// 100: the agent refused the endpoint (its message says why).
    AgentRefused,
    /// 101: a link, address or route operation failed.
    Netlink,
    /// A delegated IPAM plugin's own code, passed on as it gave it.
    Delegated(u32),
}

impl ErrorCode {
    /// The number written in the error's `code`.
    pub fn as_u32(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::UnsupportedField => 2,
            ErrorCode::UnknownContainer => 3,
            ErrorCode::InvalidEnvironment => 4,
            ErrorCode::Io => 5,
            ErrorCode::Decoding => 6,
            ErrorCode::InvalidConfig => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::NotAvailable => 50,
            ErrorCode::LimitedConnectivity => 51,
            ErrorCode::AgentRefused => 100,
            ErrorCode::Netlink => 101,
            ErrorCode::Delegated(c) => c,
        }
    }
}

/// A failed command: what the runtime gets on stdout (with the exit status 1).
#[derive(Debug, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    /// Which of the specification's codes.
    pub code: ErrorCode,
    /// A short message: what failed.
    pub msg: String,
    /// Details: why, and what to do next.
    pub details: String,
}

impl CniError {
    /// An error with code `code`.
    pub fn new(code: ErrorCode, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// Code 7 for the configuration field `field`.
    pub fn config(field: &str, why: impl std::fmt::Display) -> Self {
        CniError::new(
            ErrorCode::InvalidConfig,
            format!("invalid network configuration: {field}"),
            why.to_string(),
        )
    }

    /// Code 4 for the environment variable `var`.
    pub fn env(var: &str, why: impl std::fmt::Display) -> Self {
        CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("invalid environment: {var}"),
            why.to_string(),
        )
    }

    /// Code 101: a netlink step `what` failed.
    pub fn netlink(what: impl Into<String>, why: impl std::fmt::Display) -> Self {
        CniError::new(ErrorCode::Netlink, what, why.to_string())
    }

    /// Code 5: an I/O step `what` failed.
    pub fn io(what: impl Into<String>, why: impl std::fmt::Display) -> Self {
        CniError::new(ErrorCode::Io, what, why.to_string())
    }

    /// The error as the specification's JSON object, for `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Out<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            details: &'a str,
        }
        serde_json::to_value(Out {
            cni_version,
            code: self.code.as_u32(),
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_default()
    }
}

impl From<xylem_api::Error> for CniError {
    /// The agent's answers: unreachable or timed out is "try again later" (the runtime
    /// retries an ADD; a DEL retried later finds the agent back); a refusal names the agent's
    /// reason.
    fn from(e: xylem_api::Error) -> Self {
        match &e {
            xylem_api::Error::AgentUnreachable { .. } | xylem_api::Error::Timeout { .. } => {
                CniError::new(
                    ErrorCode::TryAgainLater,
                    "the Xylem agent is not answering",
                    e.to_string(),
                )
            }
            xylem_api::Error::Api { status, .. } if *status >= 500 => CniError::new(
                ErrorCode::TryAgainLater,
                "the Xylem agent failed the request",
                e.to_string(),
            ),
            _ => CniError::new(
                ErrorCode::AgentRefused,
                "the Xylem agent refused the request",
                e.to_string(),
            ),
        }
    }
}

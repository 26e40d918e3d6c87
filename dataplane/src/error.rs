//! The dataplane's one error type.

use std::io;

/// Everything that can go wrong in the dataplane outside the per-packet path (which never
/// fails: a bad frame is a counted drop, not an error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A table could not be built from the configuration given.
    #[error("invalid table entry: {0}")]
    InvalidTable(String),
    /// An AF_XDP socket or UMEM could not be created.
    #[error(
        "AF_XDP setup failed on {ifname}: {reason}; check that the interface exists, that you are root (or have CAP_NET_RAW, CAP_BPF and CAP_IPC_LOCK) and that the kernel has CONFIG_XDP_SOCKETS"
    )]
    Xsk {
        /// The interface the socket was meant for.
        ifname: String,
        /// What failed, as the library reported it.
        reason: String,
    },
    /// A system call made while setting up or waiting failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// A worker was asked to open a port beyond the frames it has: every port its UMEM was
    /// sized for is open. Nothing was changed.
    #[error(
        "this worker's frames are sized for {max} open ports and all {max} are open: raise the \
         spare ports its frames are sized for (the agent's workers.spare_ports) and restart \
         it, or remove a port first"
    )]
    PortBudget {
        /// The ports the frames were sized for.
        max: usize,
    },
    /// The worker configuration is not usable.
    #[error("invalid worker configuration: {0}")]
    Config(String),
    /// A Maglev table could not be built: `field` names the setting or input at fault
    /// (`maglev_table_size`, `backends`), `reason` says why.
    #[error("{field}: {reason}")]
    Maglev {
        /// The configuration field or input the error is about.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// A MAC address string could not be parsed.
    #[error(
        "invalid MAC address {0:?}: expected six two-digit hex bytes separated by ':' or '-', like 02:00:00:00:00:01"
    )]
    InvalidMacAddr(String),
}

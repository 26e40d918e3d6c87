//! Xylem's XDP redirector: the small XDP program that sits on every
//! pod-facing veth, and the loader that attaches it and fills its maps.
//!
//! # What it does
//!
//! - Loads `bpf/xylem_redirect.o` (C, built by `bpf/build.sh`, committed and
//!   embedded in this crate so no clang is needed at build time).
//! - Attaches the program `xylem_redirect` to interfaces ([`Redirector::attach`]),
//!   native (driver) mode first, generic (skb) mode only where the driver has
//!   no XDP support. A program left behind by a crashed agent is removed first
//!   ([`detach_stale`]).
//! - Keeps the program's maps: which slot of the `xsks` XSKMAP belongs to
//!   each (ifindex, rx queue) (`xsk_slots`), the AF_XDP socket in each slot
//!   (`xsks`), and per-CPU counters ([`Redirector::counters`]).
//!
//! Every veth receives on queue 0, so the XSKMAP is indexed by a *slot* that
//! this crate hands out per (ifindex, queue), not by the queue number.
//!
//! Every frame on an interface the program is attached to goes to the
//! dataplane, whatever its ethertype (VLAN-tagged, IPv6, LLDP, anything), and
//! there is no way to configure otherwise: a frame the kernel saw instead
//! could reach the node's own stack around the dataplane (the kernel strips a
//! VLAN 0 tag and delivers the frame as untagged). A frame on a queue without
//! a socket is dropped (`XDP_DROP`), never passed to the kernel. The program
//! never returns `XDP_PASS`.
//!
//! # What it does not do
//!
//! - It creates no AF_XDP sockets and owns no UMEM: the dataplane crate
//!   creates and binds them, then lends their fds to
//!   [`Redirector::register_socket`] for the call. A socket that closes
//!   while registered leaves the XSKMAP (the kernel removes it), and the
//!   program passes its queue's frames to the kernel until another is
//!   registered.
//! - It does not pin programs, links or maps: when the [`Redirector`] is
//!   dropped (or the process dies) the kernel detaches the program, because
//!   the attachment is a bpf_link owned by this process.
//! - It does not forward, read the frame, or touch routes/addresses.
//! - It does not switch network namespaces: interface names and indexes are
//!   resolved in the calling thread's namespace.
//!
//! Everything the loader does needs root (CAP_BPF and CAP_NET_ADMIN).
//!
//! # Features
//!
//! `loader` (on by default) is everything that touches the kernel, through aya. Without it the
//! crate is only its plain types ([`XdpMode`], [`XdpModeRequest`], [`RedirectCounters`],
//! [`AttachedProgram`]), for crates that report or configure the
//! redirector without loading it (the API types, the CLI).

#[cfg(feature = "loader")]
mod bpf_sys;
#[cfg(feature = "loader")]
mod loader;
#[cfg(feature = "loader")]
mod netlink;

use std::fmt;
use std::io;
use std::str::FromStr;

#[cfg(feature = "loader")]
pub use loader::{Redirector, attached_program, detach_stale};

/// Name of the XDP program (its C function and `SEC("xdp")`).
pub const PROGRAM_NAME: &str = "xylem_redirect";

/// `max_entries` of `xsks` and `xsk_slots`: the number of slots.
pub const MAX_SLOTS: u32 = 1024;

/// Indices of the program's per-CPU `counters` map (see `bpf/xylem_redirect.c`).
///
/// Every frame the program sees lands in exactly one of
/// [`REDIRECTED`](counter::REDIRECTED) and [`NO_SOCKET`](counter::NO_SOCKET).
pub mod counter {
    /// Handed to an AF_XDP socket.
    pub const REDIRECTED: u32 = 0;
    /// Dropped: no slot for the (ifindex, queue), or the slot held no socket.
    pub const NO_SOCKET: u32 = 1;
    /// Number of counters.
    pub const COUNT: u32 = 2;
}

/// Errors of the XDP redirector. Each message says what to check next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The embedded BPF object could not be loaded (maps created).
    #[cfg(feature = "loader")]
    #[error("loading the XDP object failed: {0}; are you root (CAP_BPF, CAP_NET_ADMIN)?")]
    Load(#[source] aya::EbpfError),

    /// The kernel refused the program; the verifier log is in the source.
    #[cfg(feature = "loader")]
    #[error(
        "loading program {PROGRAM_NAME} into the kernel failed: {0}; are you root? \
         if the verifier complained, fix bpf/xylem_redirect.c and rerun bpf/build.sh"
    )]
    ProgramLoad(#[source] aya::programs::ProgramError),

    /// The embedded object lacks a program or map this crate expects.
    #[error(
        "the embedded BPF object has no usable {what}: rerun bpf/build.sh and commit \
         bpf/xylem_redirect.o"
    )]
    BadObject {
        /// The missing or mistyped part.
        what: String,
    },

    /// A BPF map operation failed.
    #[cfg(feature = "loader")]
    #[error("BPF map {map}: {source}")]
    Map {
        /// Which map.
        map: &'static str,
        /// What aya reported.
        #[source]
        source: aya::maps::MapError,
    },

    /// No interface of that name in the calling thread's network namespace.
    #[error(
        "interface {ifname} does not exist (in this network namespace); check the name \
         with `ip link`"
    )]
    InterfaceNotFound {
        /// The name asked for.
        ifname: String,
    },

    /// Native mode was requested but the driver has no XDP support.
    #[error(
        "interface {ifname} does not support native XDP (EOPNOTSUPP); use mode generic or auto"
    )]
    NativeUnsupported {
        /// The interface.
        ifname: String,
    },

    /// Another XDP program is attached and could not be removed first.
    #[error(
        "another XDP program is already attached to {ifname} ({source}); remove it with \
         `xylem lab down` or `ip link set dev {ifname} xdp off`"
    )]
    ProgramAlreadyAttached {
        /// The interface.
        ifname: String,
        /// EBUSY (driver mode) or EEXIST (skb mode).
        #[source]
        source: io::Error,
    },

    /// Attaching failed for another reason.
    #[cfg(feature = "loader")]
    #[error("attaching {PROGRAM_NAME} to {ifname} in {mode} mode failed: {source}; are you root?")]
    Attach {
        /// The interface.
        ifname: String,
        /// The mode tried.
        mode: XdpMode,
        /// What aya reported.
        #[source]
        source: aya::programs::ProgramError,
    },

    /// Detaching our own link failed.
    #[cfg(feature = "loader")]
    #[error("detaching {PROGRAM_NAME} from {ifname} failed: {source}")]
    Detach {
        /// The interface.
        ifname: String,
        /// What aya reported.
        #[source]
        source: aya::programs::ProgramError,
    },

    /// `detach` on an interface this `Redirector` did not attach to.
    #[error("{PROGRAM_NAME} is not attached to {ifname} by this process; nothing to detach")]
    NotAttached {
        /// The interface.
        ifname: String,
    },

    /// `unregister_socket` for an (ifindex, queue) without a socket.
    #[error("no AF_XDP socket is registered for ifindex {ifindex} queue {queue}")]
    SocketNotRegistered {
        /// Interface index.
        ifindex: u32,
        /// Rx queue.
        queue: u32,
    },

    /// All slots are taken.
    #[error("all {MAX_SLOTS} XSKMAP slots are in use; unregister sockets of removed pods")]
    NoFreeSlot,

    /// The kernel refused the fd for the XSKMAP.
    #[cfg(feature = "loader")]
    #[error(
        "putting fd {fd} for ifindex {ifindex} queue {queue} into XSKMAP slot {slot} failed: \
         {source}; is it an AF_XDP socket bound to that interface and queue?"
    )]
    RegisterSocket {
        /// Interface index.
        ifindex: u32,
        /// Rx queue.
        queue: u32,
        /// The slot tried.
        slot: u32,
        /// The fd given.
        fd: std::os::fd::RawFd,
        /// What aya reported.
        #[source]
        source: aya::maps::MapError,
    },

    /// A netlink request (reading or clearing a device's XDP state) failed.
    #[error("netlink {op} on {ifname} failed: {source}; are you root (CAP_NET_ADMIN)?")]
    Netlink {
        /// Which request.
        op: &'static str,
        /// The interface.
        ifname: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },

    /// A raw `bpf(2)` command (link lookup/detach, program info) failed.
    #[error("bpf(2) {op} failed: {source}; are you root (CAP_BPF/CAP_SYS_ADMIN)?")]
    BpfSyscall {
        /// Which command.
        op: &'static str,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },

    /// A stale program owned by a bpf_link could not be found or stayed attached.
    #[error(
        "XDP program id {prog_id} on {ifname} could not be removed; inspect it with \
         `bpftool net show dev {ifname}` and `bpftool link`"
    )]
    StaleNotRemoved {
        /// The interface.
        ifname: String,
        /// The program that stayed.
        prog_id: u32,
    },

    /// The only program on the interface is hardware-offloaded, which [`XdpMode`] cannot describe.
    #[error(
        "interface {ifname} has a hardware-offloaded XDP program (id {prog_id}); Xylem never attaches one"
    )]
    HardwareOffloaded {
        /// The interface.
        ifname: String,
        /// The offloaded program.
        prog_id: u32,
    },

    /// An unknown mode string.
    #[error("unknown XDP mode {0:?}: choose one of auto, native, generic")]
    InvalidMode(String),
}

/// The XDP mode in effect on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Driver mode: runs in the driver's receive path (veth supports it).
    Native,
    /// Generic (skb) mode: runs after the kernel allocated an skb; slower, works everywhere.
    Generic,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Generic => "generic",
        })
    }
}

/// The XDP mode asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum XdpModeRequest {
    /// Native, falling back to generic only when the driver says EOPNOTSUPP.
    #[default]
    Auto,
    /// Native only.
    Native,
    /// Generic only.
    Generic,
}

impl XdpModeRequest {
    /// Whether an attachment in `mode` satisfies this request.
    pub fn accepts(self, mode: XdpMode) -> bool {
        match self {
            Self::Auto => true,
            Self::Native => mode == XdpMode::Native,
            Self::Generic => mode == XdpMode::Generic,
        }
    }
}

impl FromStr for XdpModeRequest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "auto" => Ok(Self::Auto),
            "native" => Ok(Self::Native),
            "generic" => Ok(Self::Generic),
            other => Err(Error::InvalidMode(other.to_owned())),
        }
    }
}

impl fmt::Display for XdpModeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Generic => "generic",
        })
    }
}

/// The program's counters, summed over CPUs, over all interfaces it runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RedirectCounters {
    /// Frames handed to an AF_XDP socket.
    pub redirected: u64,
    /// Frames dropped because their queue had no socket (the agent starting, a port being
    /// removed, or a worker's socket closed).
    pub no_socket: u64,
}

/// An XDP program found on an interface.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AttachedProgram {
    /// Kernel program id.
    pub id: u32,
    /// Program name as the kernel keeps it (at most 15 bytes).
    pub name: String,
    /// The mode it is attached in.
    pub mode: XdpMode,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_request_parses_and_lists_choices() {
        assert_eq!(
            "auto".parse::<XdpModeRequest>().ok(),
            Some(XdpModeRequest::Auto)
        );
        assert_eq!(
            "native".parse::<XdpModeRequest>().ok(),
            Some(XdpModeRequest::Native)
        );
        assert_eq!(
            "generic".parse::<XdpModeRequest>().ok(),
            Some(XdpModeRequest::Generic)
        );
        let err = "skb".parse::<XdpModeRequest>().unwrap_err().to_string();
        assert!(err.contains("auto, native, generic"), "{err}");
        assert_eq!(XdpModeRequest::default(), XdpModeRequest::Auto);
    }

    #[test]
    fn mode_display_and_serde() {
        assert_eq!(XdpMode::Native.to_string(), "native");
        assert_eq!(XdpMode::Generic.to_string(), "generic");
        assert_eq!(
            serde_json::to_string(&XdpMode::Native).unwrap(),
            "\"native\""
        );
        let m: XdpMode = serde_json::from_str("\"generic\"").unwrap();
        assert_eq!(m, XdpMode::Generic);
        let p = AttachedProgram {
            id: 7,
            name: PROGRAM_NAME.into(),
            mode: XdpMode::Native,
        };
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"id":7,"name":"xylem_redirect","mode":"native"}"#
        );
    }

    #[test]
    fn unknown_interface_is_reported_by_name() {
        let err = detach_stale("xyl-no-such-if0").unwrap_err();
        assert!(matches!(err, Error::InterfaceNotFound { .. }));
        assert!(err.to_string().contains("xyl-no-such-if0 does not exist"));
        assert!(matches!(
            attached_program("bad\0name"),
            Err(Error::InterfaceNotFound { .. })
        ));
    }
}

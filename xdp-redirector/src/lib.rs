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
//! - Keeps the program's maps: which interfaces are pod-facing and which
//!   ethertypes to redirect (`if_config`), which slot of the `xsks` XSKMAP
//!   belongs to each (ifindex, rx queue) (`xsk_slots`), the AF_XDP socket in
//!   each slot (`xsks`), and per-CPU counters ([`Redirector::counters`]).
//!
//! Every veth receives on queue 0, so the XSKMAP is indexed by a *slot* that
//! this crate hands out per (ifindex, queue), not by the queue number.
//!
//! The program fails open: a frame on an interface without configuration, of
//! an ethertype not selected, too short to parse, or on a queue without a
//! socket goes to the kernel stack (`XDP_PASS`). It never drops.
//!
//! # What it does not do
//!
//! - It creates no AF_XDP sockets and owns no UMEM: the dataplane crate
//!   creates and binds them, then hands their fds to
//!   [`Redirector::register_socket`]. The fd must stay open while registered.
//! - It does not pin programs, links or maps: when the [`Redirector`] is
//!   dropped (or the process dies) the kernel detaches the program, because
//!   the attachment is a bpf_link owned by this process.
//! - It does not forward, parse beyond Ethernet, or touch routes/addresses.
//! - It does not switch network namespaces: interface names and indexes are
//!   resolved in the calling thread's namespace.
//!
//! Everything here needs root (CAP_BPF and CAP_NET_ADMIN).

mod bpf_sys;
mod netlink;

use std::collections::HashMap as StdHashMap;
use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::str::FromStr;

use aya::Ebpf;
use aya::maps::{HashMap, MapData, MapError, PerCpuArray, XskMap};
use aya::programs::links::FdLink;
use aya::programs::{ProgramError, Xdp, XdpMode as AyaXdpMode, xdp::XdpLinkId};

/// The BPF object, built by `bpf/build.sh` and committed.
static OBJECT: &[u8] = aya::include_bytes_aligned!("../bpf/xylem_redirect.o");

/// Name of the XDP program (its C function and `SEC("xdp")`).
pub const PROGRAM_NAME: &str = "xylem_redirect";

/// `max_entries` of `xsks`, `xsk_slots` and `if_config`: the number of slots.
pub const MAX_SLOTS: u32 = 1024;

/// Indices of the program's per-CPU `counters` map (see `bpf/xylem_redirect.c`).
///
/// Frames on an interface with configuration land in exactly one of
/// [`REDIRECTED`](counter::REDIRECTED), [`PASSED`](counter::PASSED),
/// [`ERRORS`](counter::ERRORS).
pub mod counter {
    /// Handed to an AF_XDP socket.
    pub const REDIRECTED: u32 = 0;
    /// Given to the kernel: ethertype not selected, no slot, or an empty slot.
    pub const PASSED: u32 = 1;
    /// Malformed or short frame (then passed to the kernel).
    pub const ERRORS: u32 = 2;
    /// Subset of `PASSED`: no slot for the (ifindex, queue), or the slot held no socket.
    pub const PASSED_NO_SOCKET: u32 = 3;
    /// Frames on an interface with the program but no `if_config` entry (not in `PASSED`).
    pub const UNCONFIGURED: u32 = 4;
    /// Number of counters.
    pub const COUNT: u32 = 5;
}

const FLAG_IPV4: u32 = 1;
const FLAG_IPV6: u32 = 2;
const FLAG_ARP: u32 = 4;

/// Errors of the XDP redirector. Each message says what to check next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The embedded BPF object could not be loaded (maps created).
    #[error("loading the XDP object failed: {0}; are you root (CAP_BPF, CAP_NET_ADMIN)?")]
    Load(#[source] aya::EbpfError),

    /// The kernel refused the program; the verifier log is in the source.
    #[error(
        "loading program {PROGRAM_NAME} into the kernel failed: {0}; are you root? \
         if the verifier complained, fix bpf/xylem_redirect.c and rerun bpf/build.sh"
    )]
    ProgramLoad(#[source] ProgramError),

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
    #[error("BPF map {map}: {source}")]
    Map {
        /// Which map.
        map: &'static str,
        /// What aya reported.
        #[source]
        source: MapError,
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
    #[error("attaching {PROGRAM_NAME} to {ifname} in {mode} mode failed: {source}; are you root?")]
    Attach {
        /// The interface.
        ifname: String,
        /// The mode tried.
        mode: XdpMode,
        /// What aya reported.
        #[source]
        source: ProgramError,
    },

    /// Detaching our own link failed.
    #[error("detaching {PROGRAM_NAME} from {ifname} failed: {source}")]
    Detach {
        /// The interface.
        ifname: String,
        /// What aya reported.
        #[source]
        source: ProgramError,
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
        fd: RawFd,
        /// What aya reported.
        #[source]
        source: MapError,
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
    fn accepts(self, mode: XdpMode) -> bool {
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

/// Which ethertypes to redirect on an interface (others are passed to the kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedirectFlags {
    /// Redirect IPv4 (0x0800).
    pub ipv4: bool,
    /// Redirect IPv6 (0x86DD).
    pub ipv6: bool,
    /// Redirect ARP (0x0806).
    pub arp: bool,
}

impl Default for RedirectFlags {
    fn default() -> Self {
        Self {
            ipv4: true,
            ipv6: true,
            arp: true,
        }
    }
}

impl RedirectFlags {
    /// The `if_config` value bits (`REDIRECT_IPV4 | REDIRECT_IPV6 | REDIRECT_ARP`).
    fn bits(self) -> u32 {
        (if self.ipv4 { FLAG_IPV4 } else { 0 })
            | (if self.ipv6 { FLAG_IPV6 } else { 0 })
            | (if self.arp { FLAG_ARP } else { 0 })
    }
}

/// The program's counters, summed over CPUs, over all interfaces it runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RedirectCounters {
    /// Frames handed to an AF_XDP socket.
    pub redirected: u64,
    /// Frames on configured interfaces given to the kernel (not selected, or no socket).
    pub passed: u64,
    /// Malformed or short frames (passed to the kernel).
    pub errors: u64,
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

/// Key of `xsk_slots`: `struct { __u32 ifindex; __u32 queue; }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
struct SlotKey {
    ifindex: u32,
    queue: u32,
}

// SAFETY: `SlotKey` is `repr(C)`, `Copy`, made of two `u32` with no padding,
// so every bit pattern is valid and its bytes match the C key.
unsafe impl aya::Pod for SlotKey {}

#[derive(Debug)]
struct Attachment {
    ifindex: u32,
    mode: XdpMode,
    link: XdpLinkId,
}

/// The loaded program and its maps, and the interfaces it is attached to.
///
/// Dropping it detaches every attachment it made.
pub struct Redirector {
    // Field order matters for drop: maps and links go before `ebpf`.
    attachments: StdHashMap<String, Attachment>,
    slots: StdHashMap<SlotKey, u32>,
    xsks: XskMap<MapData>,
    xsk_slots: HashMap<MapData, SlotKey, u32>,
    if_config: HashMap<MapData, u32, u32>,
    counters: PerCpuArray<MapData, u64>,
    /// Owns the program (and so its links); must outlive the attachments.
    ebpf: Ebpf,
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> Error {
    move |source| Error::Map { map, source }
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map, Error> {
    ebpf.take_map(name).ok_or_else(|| Error::BadObject {
        what: format!("map {name}"),
    })
}

impl Redirector {
    /// Loads the embedded object: creates the maps and loads the program
    /// into the kernel. Nothing is attached yet.
    pub fn load() -> Result<Self, Error> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(Error::Load)?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| Error::BadObject {
                what: format!("program {PROGRAM_NAME}"),
            })?
            .try_into()
            .map_err(|_| Error::BadObject {
                what: format!("XDP program {PROGRAM_NAME}"),
            })?;
        prog.load().map_err(Error::ProgramLoad)?;

        let xsks = XskMap::try_from(take_map(&mut ebpf, "xsks")?).map_err(map_err("xsks"))?;
        let xsk_slots =
            HashMap::try_from(take_map(&mut ebpf, "xsk_slots")?).map_err(map_err("xsk_slots"))?;
        let if_config =
            HashMap::try_from(take_map(&mut ebpf, "if_config")?).map_err(map_err("if_config"))?;
        let counters =
            PerCpuArray::try_from(take_map(&mut ebpf, "counters")?).map_err(map_err("counters"))?;
        Ok(Self {
            attachments: StdHashMap::new(),
            slots: StdHashMap::new(),
            xsks,
            xsk_slots,
            if_config,
            counters,
            ebpf,
        })
    }

    fn program_mut(&mut self) -> Result<&mut Xdp, Error> {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .and_then(|p| <&mut Xdp>::try_from(p).ok())
            .ok_or_else(|| Error::BadObject {
                what: format!("XDP program {PROGRAM_NAME}"),
            })
    }

    /// Attach to `ifname`. Auto = native (driver) mode, falling back to
    /// generic (skb) ONLY on EOPNOTSUPP (EBUSY/EEXIST mean "a program is
    /// already there", never "no native support"). Before attaching, remove
    /// any stale XDP program left on the interface by a crashed agent (see
    /// [`detach_stale`]). Writes the if_config entry with `flags`. Returns the
    /// mode in effect.
    ///
    /// Attaching again to an interface this `Redirector` is attached to only
    /// updates the flags when the mode in effect satisfies `mode`; otherwise
    /// it re-attaches in the requested mode (registered sockets stay).
    pub fn attach(
        &mut self,
        ifname: &str,
        mode: XdpModeRequest,
        flags: RedirectFlags,
    ) -> Result<XdpMode, Error> {
        let ifindex = ifindex_of(ifname)?;
        if let Some(existing) = self.attachments.get(ifname) {
            if existing.ifindex == ifindex && mode.accepts(existing.mode) {
                let mode = existing.mode;
                self.if_config
                    .insert(ifindex, flags.bits(), 0)
                    .map_err(map_err("if_config"))?;
                return Ok(mode);
            }
            if existing.ifindex == ifindex {
                self.detach_link(ifname)?;
            } else {
                // The interface was re-created under the same name: the old
                // link died with the old device; forget its state entirely.
                self.detach(ifname)?;
            }
        }

        if detach_stale(ifname)? {
            tracing::warn!(ifname, "removed a stale XDP program before attaching");
        }

        let had_config = self.if_config.get(&ifindex, 0).is_ok();
        self.if_config
            .insert(ifindex, flags.bits(), 0)
            .map_err(map_err("if_config"))?;

        let result = match mode {
            XdpModeRequest::Native => self.attach_mode(ifname, XdpMode::Native),
            XdpModeRequest::Generic => self.attach_mode(ifname, XdpMode::Generic),
            XdpModeRequest::Auto => match self.attach_mode(ifname, XdpMode::Native) {
                Err(Error::NativeUnsupported { .. }) => {
                    tracing::info!(ifname, "no native XDP support, using generic mode");
                    self.attach_mode(ifname, XdpMode::Generic)
                }
                other => other,
            },
        };
        match result {
            Ok((link, mode)) => {
                self.attachments.insert(
                    ifname.to_owned(),
                    Attachment {
                        ifindex,
                        mode,
                        link,
                    },
                );
                tracing::info!(ifname, ifindex, %mode, "attached {PROGRAM_NAME}");
                Ok(mode)
            }
            Err(e) => {
                if !had_config {
                    // Best effort: the entry is harmless without the program.
                    let _ = self.if_config.remove(&ifindex);
                }
                Err(e)
            }
        }
    }

    fn attach_mode(&mut self, ifname: &str, mode: XdpMode) -> Result<(XdpLinkId, XdpMode), Error> {
        let aya_mode = match mode {
            XdpMode::Native => AyaXdpMode::Driver,
            XdpMode::Generic => AyaXdpMode::Skb,
        };
        let prog = self.program_mut()?;
        match prog.attach(ifname, aya_mode) {
            Ok(link) => Ok((link, mode)),
            Err(source) => Err(match errno_of(&source) {
                Some(libc::EOPNOTSUPP) if mode == XdpMode::Native => Error::NativeUnsupported {
                    ifname: ifname.to_owned(),
                },
                Some(code @ (libc::EBUSY | libc::EEXIST)) => Error::ProgramAlreadyAttached {
                    ifname: ifname.to_owned(),
                    source: io::Error::from_raw_os_error(code),
                },
                _ => match source {
                    ProgramError::UnknownInterface { .. } => Error::InterfaceNotFound {
                        ifname: ifname.to_owned(),
                    },
                    source => Error::Attach {
                        ifname: ifname.to_owned(),
                        mode,
                        source,
                    },
                },
            }),
        }
    }

    /// Detaches only the program (keeps if_config and slots).
    fn detach_link(&mut self, ifname: &str) -> Result<(), Error> {
        let att = self
            .attachments
            .remove(ifname)
            .ok_or_else(|| Error::NotAttached {
                ifname: ifname.to_owned(),
            })?;
        let prog = self.program_mut()?;
        let link = prog.take_link(att.link).map_err(|source| Error::Detach {
            ifname: ifname.to_owned(),
            source,
        })?;
        // A bpf_link detaches when its last descriptor closes, and dropping
        // ours is not always the last: a process forked by another thread
        // holds a copy until it execs. Detach explicitly so the program is
        // gone when this returns. A netlink attachment (kernels without XDP
        // links) detaches synchronously when dropped.
        if let Ok(fd_link) = FdLink::try_from(link) {
            let link_id = fd_link
                .info()
                .map_err(|e| Error::BpfSyscall {
                    op: "BPF_OBJ_GET_INFO_BY_FD (link)",
                    source: io::Error::other(e),
                })?
                .id();
            bpf_sys::link_detach_by_id(link_id).map_err(|source| Error::BpfSyscall {
                op: "BPF_LINK_DETACH",
                source,
            })?;
        }
        Ok(())
    }

    /// Detaches the program from `ifname` and removes the interface's
    /// `if_config` entry and all its socket slots. The sockets themselves
    /// stay open: they belong to the caller.
    pub fn detach(&mut self, ifname: &str) -> Result<(), Error> {
        let ifindex = self
            .attachments
            .get(ifname)
            .map(|a| a.ifindex)
            .ok_or_else(|| Error::NotAttached {
                ifname: ifname.to_owned(),
            })?;
        let detached = self.detach_link(ifname);
        let mut first_err = detached.err();
        if let Err(e) = self.if_config.remove(&ifindex)
            && !is_not_found(&e)
        {
            first_err.get_or_insert(Error::Map {
                map: "if_config",
                source: e,
            });
        }
        let keys: Vec<SlotKey> = self
            .slots
            .keys()
            .filter(|k| k.ifindex == ifindex)
            .copied()
            .collect();
        for key in keys {
            if let Err(e) = self.unregister_socket(key.ifindex, key.queue) {
                first_err.get_or_insert(e);
            }
        }
        tracing::info!(ifname, ifindex, "detached {PROGRAM_NAME}");
        first_err.map_or(Ok(()), Err)
    }

    /// Give (ifindex, queue) a slot, put the AF_XDP socket fd in `xsks[slot]`.
    /// Returns the slot. Re-registering the same (ifindex, queue) replaces the
    /// socket in the same slot.
    ///
    /// The fd must be an AF_XDP socket bound to that interface and queue, or
    /// the kernel refuses it ([`Error::RegisterSocket`]). The socket is put in
    /// `xsks` before the slot becomes visible in `xsk_slots`, so the program
    /// never sees a half-registered queue.
    pub fn register_socket(&mut self, ifindex: u32, queue: u32, fd: RawFd) -> Result<u32, Error> {
        let key = SlotKey { ifindex, queue };
        let existing = self.slots.get(&key).copied();
        let slot = match existing {
            Some(slot) => slot,
            None => self.free_slot()?,
        };
        // SAFETY: the caller promises `fd` is open for the duration of this call;
        // the XSKMAP update only reads it (the kernel takes its own reference).
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        self.xsks
            .set(slot, borrowed, 0)
            .map_err(|source| Error::RegisterSocket {
                ifindex,
                queue,
                slot,
                fd,
                source,
            })?;
        if existing.is_none() {
            if let Err(e) = self.xsk_slots.insert(key, slot, 0) {
                let _ = self.xsks.unset(slot);
                return Err(Error::Map {
                    map: "xsk_slots",
                    source: e,
                });
            }
            self.slots.insert(key, slot);
        }
        tracing::debug!(ifindex, queue, slot, "registered AF_XDP socket");
        Ok(slot)
    }

    fn free_slot(&self) -> Result<u32, Error> {
        let mut used: Vec<u32> = self.slots.values().copied().collect();
        used.sort_unstable();
        let mut candidate = 0;
        for slot in used {
            if slot != candidate {
                break;
            }
            candidate += 1;
        }
        if candidate < MAX_SLOTS {
            Ok(candidate)
        } else {
            Err(Error::NoFreeSlot)
        }
    }

    /// Removes the socket of (ifindex, queue): the slot disappears from
    /// `xsk_slots` first (frames fall back to the kernel), then `xsks[slot]`
    /// is cleared and the slot is free for reuse.
    pub fn unregister_socket(&mut self, ifindex: u32, queue: u32) -> Result<(), Error> {
        let key = SlotKey { ifindex, queue };
        let slot = self
            .slots
            .get(&key)
            .copied()
            .ok_or(Error::SocketNotRegistered { ifindex, queue })?;
        match self.xsk_slots.remove(&key) {
            Err(e) if !is_not_found(&e) => {
                return Err(Error::Map {
                    map: "xsk_slots",
                    source: e,
                });
            }
            _ => {}
        }
        self.slots.remove(&key);
        match self.xsks.unset(slot) {
            Err(e) if !is_not_found(&e) => Err(Error::Map {
                map: "xsks",
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// The program's counters, summed over all CPUs.
    pub fn counters(&self) -> Result<RedirectCounters, Error> {
        Ok(RedirectCounters {
            redirected: self.raw_counter(counter::REDIRECTED)?,
            passed: self.raw_counter(counter::PASSED)?,
            errors: self.raw_counter(counter::ERRORS)?,
        })
    }

    /// One counter of the [`counter`] module, summed over all CPUs.
    pub fn raw_counter(&self, index: u32) -> Result<u64, Error> {
        let values = self.counters.get(&index, 0).map_err(map_err("counters"))?;
        Ok(values.iter().fold(0u64, |acc, v| acc.wrapping_add(*v)))
    }

    /// The interfaces this `Redirector` is attached to, with their modes, sorted by name.
    pub fn attached(&self) -> Vec<(String, XdpMode)> {
        let mut v: Vec<_> = self
            .attachments
            .iter()
            .map(|(name, a)| (name.clone(), a.mode))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

impl fmt::Debug for Redirector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redirector")
            .field("attachments", &self.attachments)
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

impl Drop for Redirector {
    fn drop(&mut self) {
        let names: Vec<String> = self.attachments.keys().cloned().collect();
        for ifname in names {
            if let Err(e) = self.detach(&ifname) {
                tracing::warn!(ifname, error = %e, "detach on drop failed");
            }
        }
    }
}

/// Remove whatever XDP program is attached to `ifname` in any mode (driver
/// or generic, netlink-attached or a bpf_link that is still alive because it
/// was pinned), returning whether one was removed. Used at agent start and by
/// `xylem lab down`.
///
/// A bpf_link-attached program whose owning process died is already gone:
/// the kernel detaches it when the link's last fd closes. What a restart must
/// clean up are netlink-attached programs (e.g. `ip link set dev X xdpgeneric
/// obj ...`) and links kept alive by a pin in bpffs (the link is detached and
/// becomes defunct; the pin itself is left for its owner to remove).
///
/// This also removes a program that a live process (even this one) holds
/// through a bpf_link. Links are matched by (ifindex, program id); the
/// kernel's link info does not name the network namespace.
pub fn detach_stale(ifname: &str) -> Result<bool, Error> {
    let ifindex = ifindex_of(ifname)?;
    let nl_err = |op: &'static str| {
        move |source| Error::Netlink {
            op,
            ifname: ifname.to_owned(),
            source,
        }
    };
    let state = netlink::xdp_state(ifindex).map_err(nl_err("RTM_GETLINK"))?;
    let mut removed = false;
    for (prog_id, mode_flags) in state.attached() {
        match netlink::clear_xdp(ifindex, mode_flags) {
            Ok(()) => {}
            // EBUSY: owned by a bpf_link, which netlink may not replace.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                let link = bpf_sys::find_xdp_link(ifindex, prog_id).map_err(|source| {
                    Error::BpfSyscall {
                        op: "BPF_LINK_GET_NEXT_ID/BPF_OBJ_GET_INFO_BY_FD",
                        source,
                    }
                })?;
                let link = link.ok_or_else(|| Error::StaleNotRemoved {
                    ifname: ifname.to_owned(),
                    prog_id,
                })?;
                bpf_sys::link_detach(&link).map_err(|source| Error::BpfSyscall {
                    op: "BPF_LINK_DETACH",
                    source,
                })?;
            }
            Err(e) => return Err(nl_err("RTM_SETLINK (IFLA_XDP_FD=-1)")(e)),
        }
        tracing::info!(ifname, prog_id, "removed XDP program");
        removed = true;
    }
    if removed {
        let after = netlink::xdp_state(ifindex).map_err(nl_err("RTM_GETLINK"))?;
        if let Some((prog_id, _)) = after.attached().next() {
            return Err(Error::StaleNotRemoved {
                ifname: ifname.to_owned(),
                prog_id,
            });
        }
    }
    Ok(removed)
}

/// What XDP program, if any, is attached to `ifname`: id, name and mode.
/// Used by tests and by `lab down` to prove nothing is left behind.
///
/// If programs are attached in both modes, the native one is reported.
pub fn attached_program(ifname: &str) -> Result<Option<AttachedProgram>, Error> {
    let ifindex = ifindex_of(ifname)?;
    let state = netlink::xdp_state(ifindex).map_err(|source| Error::Netlink {
        op: "RTM_GETLINK",
        ifname: ifname.to_owned(),
        source,
    })?;
    let (id, mode) = match (state.drv, state.skb, state.hw) {
        (Some(id), _, _) => (id, XdpMode::Native),
        (None, Some(id), _) => (id, XdpMode::Generic),
        (None, None, Some(prog_id)) => {
            return Err(Error::HardwareOffloaded {
                ifname: ifname.to_owned(),
                prog_id,
            });
        }
        (None, None, None) => return Ok(None),
    };
    let name = bpf_sys::prog_name(id).map_err(|source| Error::BpfSyscall {
        op: "BPF_PROG_GET_FD_BY_ID/BPF_OBJ_GET_INFO_BY_FD",
        source,
    })?;
    Ok(Some(AttachedProgram { id, name, mode }))
}

/// Resolves `ifname` in the calling thread's network namespace.
fn ifindex_of(ifname: &str) -> Result<u32, Error> {
    let not_found = || Error::InterfaceNotFound {
        ifname: ifname.to_owned(),
    };
    let c = CString::new(ifname).map_err(|_| not_found())?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        Err(not_found())
    } else {
        Ok(index)
    }
}

fn errno_of(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        ProgramError::XdpError(aya::programs::XdpError::NetlinkError(n)) => n.raw_os_error(),
        _ => None,
    }
}

fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// The agent moves the `Redirector` between threads (control plane, signal
/// handling); keep it `Send`.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Redirector>();
};

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
    fn flags_bits() {
        assert_eq!(RedirectFlags::default().bits(), 7);
        let f = RedirectFlags {
            ipv4: true,
            ipv6: false,
            arp: true,
        };
        assert_eq!(f.bits(), FLAG_IPV4 | FLAG_ARP);
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

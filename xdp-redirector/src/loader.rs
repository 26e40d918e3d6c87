//! The loader: the embedded BPF object loaded with aya, attached to interfaces, its maps kept.

use std::collections::HashMap as StdHashMap;
use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use aya::Ebpf;
use aya::maps::{HashMap, MapData, MapError, PerCpuArray, XskMap};
use aya::programs::links::FdLink;
use aya::programs::{ProgramError, Xdp, XdpMode as AyaXdpMode, xdp::XdpLinkId};

use crate::{
    AttachedProgram, Error, MAX_SLOTS, PROGRAM_NAME, RedirectCounters, XdpMode, XdpModeRequest,
    bpf_sys, counter, netlink,
};

/// The BPF object, built by `bpf/build.sh` and committed.
static OBJECT: &[u8] = aya::include_bytes_aligned!("../bpf/xylem_redirect.o");

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
        let counters =
            PerCpuArray::try_from(take_map(&mut ebpf, "counters")?).map_err(map_err("counters"))?;
        Ok(Self {
            attachments: StdHashMap::new(),
            slots: StdHashMap::new(),
            xsks,
            xsk_slots,
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
    /// [`detach_stale`]). Returns the mode in effect.
    ///
    /// From then on every frame received on `ifname` goes to the socket
    /// registered for its queue, or is dropped while there is none: the
    /// program has no per-interface setting.
    ///
    /// Attaching again to an interface this `Redirector` is attached to keeps
    /// the attachment when the mode in effect satisfies `mode`; otherwise it
    /// re-attaches in the requested mode (registered sockets stay).
    pub fn attach(&mut self, ifname: &str, mode: XdpModeRequest) -> Result<XdpMode, Error> {
        let ifindex = ifindex_of(ifname)?;
        if let Some(existing) = self.attachments.get(ifname) {
            if existing.ifindex == ifindex && mode.accepts(existing.mode) {
                return Ok(existing.mode);
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
        let (link, mode) = result?;
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

    /// Detaches only the program (keeps the slots).
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

    /// Detaches the program from `ifname` and removes all the interface's
    /// socket slots. The sockets themselves
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
    pub fn register_socket(
        &mut self,
        ifindex: u32,
        queue: u32,
        fd: BorrowedFd<'_>,
    ) -> Result<u32, Error> {
        let key = SlotKey { ifindex, queue };
        let existing = self.slots.get(&key).copied();
        let slot = match existing {
            Some(slot) => slot,
            None => self.free_slot()?,
        };
        self.xsks
            .set(slot, fd, 0)
            .map_err(|source| Error::RegisterSocket {
                ifindex,
                queue,
                slot,
                fd: fd.as_raw_fd(),
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
    /// `xsk_slots` first (the queue's frames are dropped from then on), then `xsks[slot]`
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
            no_socket: self.raw_counter(counter::NO_SOCKET)?,
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

//! The AF_XDP backend: one `xsk-rs` UMEM per worker, one socket per port bound with
//! `XDP_SHARED_UMEM`, so a frame received on one port is sent on another without a copy.
//!
//! libxdp is told not to load an XDP program of its own (`XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD`):
//! Xylem's redirector owns the XDP program and its XSKMAP, and the caller registers each socket
//! there ([`XskBackend::socket_fds`]).
//!
//! On veth the kernel binds in copy mode (`XDP_COPY`): zero-copy needs driver support that veth
//! does not have. In copy mode the fill ring never asks to be woken, while TX always does, so
//! [`Backend::tx`] kicks the kernel (`sendto`) once per batch when the ring's need-wakeup flag is
//! set. The kernel then copies at most 32 frames per kick, so the worker kicks again on every
//! batch while frames are left on a TX ring ([`Backend::tx_kick`]). Those kicks are the only
//! system calls on the per-packet path.
//!
//! # Headroom
//!
//! A UMEM frame is laid out as the UMEM's own frame headroom, then the kernel's 256-byte XDP
//! headroom (`XDP_PACKET_HEADROOM`, room for the XDP program's `bpf_xdp_adjust_head`), then
//! the packet: a received descriptor's address points `frame headroom + 256` bytes into its
//! frame. Once the worker holds the frame, all of it is the worker's (in copy mode the kernel
//! writes only the packet, and the XDP metadata in front of it if the program set any, which
//! Xylem's does not), so [`Backend::with_frame`] hands the pipeline the whole frame with the
//! packet's first byte where the descriptor points, and everything before it is headroom. The
//! UMEM's frame headroom is only added when the configured headroom
//! ([`XskBackend::with_headroom`], default [`DEFAULT_HEADROOM`]) is more than the XDP
//! headroom gives: with the default, the layout is the kernel's own.
//!
//! A frame whose head was moved back (a prepend) is sent from its new first byte: the TX
//! descriptor's address is moved back with it. The kernel accepts that: in an aligned UMEM a
//! TX descriptor is valid when it stays inside one chunk (`xp_aligned_validate_desc`: the
//! offset in the chunk plus the length is at most the chunk size); the headroom is not
//! checked on TX, copy mode sends `len` bytes from the address, the completion ring returns
//! the address as submitted, and the fill ring masks any address back to its chunk's start.
//! The privileged test `xsk_headroom` checks the bytes that arrive. xsk-rs 0.11 handles such
//! addresses everywhere (it finds a frame's start by masking) but offers no way to set one:
//! `FrameDesc`'s fields are private and it has no setter. `DescAddr` (below) does it, after
//! checking once, at start-up, where the field is. A `FrameDesc::set_addr` in xsk-rs would
//! replace it.

use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

use super::{Backend, DEFAULT_HEADROOM};
pub use super::{FRAME_SIZE, MAX_HEADROOM};
use crate::Error;
use crate::frame::Frame;

/// The UMEM's frame headroom is a multiple of this, so that a received packet starts on a
/// cache line, as it does with the XDP headroom alone.
const CACHE_LINE: usize = 64;

/// Sets the address of a `FrameDesc`, which xsk-rs 0.11 keeps private (see the module
/// documentation). Only [`DescAddr::find`] makes one, after checking where the field is.
#[derive(Clone, Copy, Debug)]
struct DescAddr {
    /// Byte offset of the address field in a `FrameDesc`; a multiple of `size_of::<usize>()`.
    offset: usize,
}

// What `DescAddr` relies on, checked at compile time: a `FrameDesc` is four words (xsk-rs
// 0.11's address, options, and the headroom and data lengths), word-aligned. A different
// xsk-rs stops the build here rather than writing the wrong bytes.
const _: () = assert!(std::mem::size_of::<FrameDesc>() == 4 * std::mem::size_of::<usize>());
const _: () = assert!(std::mem::align_of::<FrameDesc>() == std::mem::align_of::<usize>());

impl DescAddr {
    /// How xsk-rs 0.11 prints a blank descriptor. Derived `Debug` lists every field, so this
    /// says the descriptor holds exactly these five fields and that they are integers.
    const BLANK: &'static str =
        "FrameDesc { addr: 0, options: 0, lengths: SegmentLengths { headroom: 0, data: 0 } }";

    /// Finds the word of a `FrameDesc` that holds its address: the one word which, once
    /// written, changes `addr()` and nothing else. Runs once, at start-up.
    fn find() -> Result<Self, Error> {
        let unknown = |why: String| {
            Error::Config(format!(
                "this xsk-rs's frame descriptor is not the one Xylem knows ({why}): build \
                 with xsk-rs 0.11 as in Cargo.lock"
            ))
        };
        let blank = FrameDesc::default();
        let printed = format!("{blank:?}");
        if printed != Self::BLANK {
            return Err(unknown(format!("it prints as {printed}")));
        }
        // Both halves non-zero, so a write over the 32-bit options field shows in `options()`.
        const MARK: usize = 0x5a5a_5a5a_a5a5_a5a5;
        let word = std::mem::size_of::<usize>();
        let mut found = None;
        for offset in (0..std::mem::size_of::<FrameDesc>()).step_by(word) {
            let mut d = FrameDesc::default();
            // SAFETY: `offset` is a multiple of the word size inside a word-aligned struct of
            // four words (checked at compile time), so the write is aligned and in bounds. The
            // struct's fields are integers only (checked just above through `Debug`): three
            // words and a u32 that with its padding fills the fourth word. A word-aligned word
            // therefore covers exactly one field (and maybe padding), and any value is a valid
            // integer.
            unsafe {
                std::ptr::from_mut(&mut d)
                    .cast::<u8>()
                    .add(offset)
                    .cast::<usize>()
                    .write(MARK);
            }
            if d.addr() == MARK
                && d.options() == 0
                && d.lengths().headroom() == 0
                && d.lengths().data() == 0
            {
                if found.is_some() {
                    return Err(unknown("two words hold its address".into()));
                }
                found = Some(offset);
            }
        }
        found
            .map(|offset| DescAddr { offset })
            .ok_or_else(|| unknown("no word holds its address".into()))
    }

    /// Points `desc` at `addr`, keeping its lengths and options.
    #[inline]
    fn set(self, desc: &mut FrameDesc, addr: usize) {
        // SAFETY: `find` checked that the word at `offset` is the descriptor's address field (an
        // integer: any value is valid), aligned and inside the struct.
        unsafe {
            std::ptr::from_mut(desc)
                .cast::<u8>()
                .add(self.offset)
                .cast::<usize>()
                .write(addr);
        }
        debug_assert_eq!(desc.addr(), addr);
    }
}

/// The start of the frame `addr` points into: frames are `FRAME_SIZE` bytes, a power of two,
/// and the UMEM is aligned.
#[inline]
fn frame_start(addr: usize) -> usize {
    addr & !(FRAME_SIZE as usize - 1)
}

/// How one port's socket is bound.
#[derive(Clone, Debug)]
pub struct PortSpec {
    /// Interface name (the dataplane's end of a pod veth, or of the host port).
    pub ifname: String,
    /// Interface index.
    pub ifindex: u32,
    /// The queue to bind (the worker's index on multi-queue veths; 0 otherwise).
    pub queue: u32,
}

/// Ring sizes and binding options for a worker's sockets.
#[derive(Clone, Copy, Debug)]
pub struct XskOptions {
    /// Entries in each RX and TX ring, and in each fill and completion ring.
    pub ring_size: u32,
    /// Ask for zero-copy; copy mode otherwise (veth only supports copy mode).
    pub zero_copy: bool,
}

impl Default for XskOptions {
    fn default() -> Self {
        XskOptions {
            ring_size: 1024,
            zero_copy: false,
        }
    }
}

struct XskPort {
    spec: PortSpec,
    tx: TxQueue,
    rx: RxQueue,
    fill: FillQueue,
    comp: CompQueue,
}

impl XskPort {
    /// The socket, borrowed for as long as the port is.
    fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the RX queue owns the socket (xsk-rs closes it when the last of the port's
        // queues drops), and `self` holds that queue for the borrow's whole lifetime, so the
        // descriptor stays open and names this socket while it is borrowed.
        unsafe { BorrowedFd::borrow_raw(self.rx.fd().as_raw_fd()) }
    }
}

/// See the module documentation.
pub struct XskBackend {
    sock_cfg: SocketConfig,
    umem: Umem,
    /// `None`: a closed port whose index is free for the next one.
    ports: Vec<Option<XskPort>>,
    frames: Option<Vec<FrameDesc>>,
    frame_count: u32,
    ring_size: u32,
    /// The ports the frames were sized for: the first ones and the spare ones.
    max_ports: usize,
    /// Offset in its frame of a received packet's first byte: the UMEM's frame headroom plus
    /// the kernel's XDP headroom.
    rx_head: usize,
    addr: DescAddr,
}

impl std::fmt::Debug for XskBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskBackend")
            .field("ports", &self.ports().collect::<Vec<_>>())
            .field("frame_count", &self.frame_count)
            .field("headroom", &self.rx_head)
            .finish()
    }
}

fn xsk_err(ifname: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Xsk {
        ifname: ifname.to_string(),
        reason: format!("{what}: {e}"),
    }
}

/// Binds one port's socket to `umem`.
fn bind_port(spec: &PortSpec, sock_cfg: SocketConfig, umem: &Umem) -> Result<XskPort, Error> {
    let iface: Interface = spec
        .ifname
        .parse()
        .map_err(|e| xsk_err(&spec.ifname, "interface name", e))?;
    // SAFETY: every socket on this UMEM is created with XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD
    // (the contract xsk-rs states for shared UMEMs), and each (interface, queue) pair is
    // bound once, so no two sockets share fill/completion rings.
    let (tx, rx, fq_cq) =
        unsafe { Socket::new(sock_cfg, umem, &iface, spec.queue) }.map_err(|e| {
            xsk_err(
                &spec.ifname,
                &format!("binding an AF_XDP socket to queue {}", spec.queue),
                e,
            )
        })?;
    let (fill, comp) = fq_cq.ok_or_else(|| {
        xsk_err(
            &spec.ifname,
            "binding",
            format!("queue {} is already bound to this UMEM", spec.queue),
        )
    })?;
    Ok(XskPort {
        spec: spec.clone(),
        tx,
        rx,
        fill,
        comp,
    })
}

impl XskBackend {
    /// Creates one UMEM big enough for every port's fill and TX rings plus `spare` frames in
    /// flight, and binds one socket per port to it.
    pub fn new(ports: &[PortSpec], opts: XskOptions, spare: u32) -> Result<Self, Error> {
        Self::with_spare_ports(ports, opts, spare, 0)
    }

    /// As [`Self::new`], with room for `spare_ports` more ports added later
    /// ([`Backend::add_port`]): one ring's worth of frames each. The fill rings are topped up
    /// from the shared free list, so a port added later takes its frames from there.
    pub fn with_spare_ports(
        ports: &[PortSpec],
        opts: XskOptions,
        spare: u32,
        spare_ports: u32,
    ) -> Result<Self, Error> {
        Self::with_headroom(ports, opts, spare, spare_ports, DEFAULT_HEADROOM)
    }

    /// As [`Self::with_spare_ports`], with at least `headroom` bytes (at most
    /// [`MAX_HEADROOM`]) in front of every received packet (see the module documentation):
    /// the kernel's 256-byte XDP headroom, plus as much UMEM frame headroom as it takes to
    /// reach `headroom`, rounded up to a cache line. [`Self::headroom`] says what it came to.
    pub fn with_headroom(
        ports: &[PortSpec],
        opts: XskOptions,
        spare: u32,
        spare_ports: u32,
        headroom: usize,
    ) -> Result<Self, Error> {
        let first = ports
            .first()
            .ok_or_else(|| Error::Config("a worker needs at least one port".into()))?;
        if headroom > MAX_HEADROOM {
            return Err(Error::Config(format!(
                "a headroom of {headroom} bytes is more than half a {FRAME_SIZE}-byte frame: \
                 use at most {MAX_HEADROOM}"
            )));
        }
        let addr = DescAddr::find()?;
        let ring = QueueSize::new(opts.ring_size)
            .map_err(|e| Error::Config(format!("ring size {}: {e}", opts.ring_size)))?;
        let frame_size = FrameSize::new(FRAME_SIZE)
            .map_err(|e| Error::Config(format!("frame size {FRAME_SIZE}: {e}")))?;
        let xdp_headroom = UmemConfig::default().xdp_headroom() as usize;
        let frame_headroom = headroom
            .saturating_sub(xdp_headroom)
            .next_multiple_of(CACHE_LINE);
        let umem_cfg = UmemConfig::builder()
            .frame_size(frame_size)
            .frame_headroom(frame_headroom as u32)
            .fill_queue_size(ring)
            .comp_queue_size(ring)
            .build()
            .map_err(|e| Error::Config(format!("UMEM configuration: {e}")))?;
        let rings = 2 * ports.len() as u64 + u64::from(spare_ports);
        let frame_count = u32::try_from(rings * u64::from(opts.ring_size) + u64::from(spare))
            .map_err(|_| {
                Error::Config(format!(
                    "{rings} rings of {} frames do not fit one UMEM: use fewer spare ports or \
                     a smaller ring size",
                    opts.ring_size
                ))
            })?;
        let count = NonZeroU32::new(frame_count)
            .ok_or_else(|| Error::Config("UMEM of zero frames".into()))?;
        let (umem, frames) = Umem::new(umem_cfg, count, false)
            .map_err(|e| xsk_err(&first.ifname, "creating the UMEM", e))?;

        let mut bind = BindFlags::XDP_USE_NEED_WAKEUP;
        bind |= if opts.zero_copy {
            BindFlags::XDP_ZEROCOPY
        } else {
            BindFlags::XDP_COPY
        };
        let sock_cfg = SocketConfig::builder()
            .rx_queue_size(ring)
            .tx_queue_size(ring)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(bind)
            .build();

        let mut xports = Vec::with_capacity(ports.len());
        for spec in ports {
            xports.push(Some(bind_port(spec, sock_cfg, &umem)?));
        }
        Ok(XskBackend {
            sock_cfg,
            umem,
            ports: xports,
            frames: Some(frames),
            frame_count,
            ring_size: opts.ring_size,
            max_ports: ports.len() + spare_ports as usize,
            rx_head: xdp_headroom + frame_headroom,
            addr,
        })
    }

    /// The headroom in front of a received packet, and of a frame from the completion ring
    /// or the initial set: the kernel's XDP headroom plus the UMEM's frame headroom.
    pub fn headroom(&self) -> usize {
        self.rx_head
    }

    /// `(ifindex, queue, socket)` of every port, for the redirector's XSKMAP.
    pub fn socket_fds(&self) -> Vec<(u32, u32, BorrowedFd<'_>)> {
        self.ports
            .iter()
            .flatten()
            .map(|p| (p.spec.ifindex, p.spec.queue, p.fd()))
            .collect()
    }

    /// The open ports, in index order.
    pub fn ports(&self) -> impl Iterator<Item = &PortSpec> {
        self.ports.iter().flatten().map(|p| &p.spec)
    }
}

impl Backend for XskBackend {
    type Desc = FrameDesc;
    type PortSpec = PortSpec;

    fn add_port(&mut self, spec: &PortSpec) -> Result<(usize, Option<BorrowedFd<'_>>), Error> {
        if self
            .ports()
            .any(|p| p.ifindex == spec.ifindex && p.queue == spec.queue)
        {
            return Err(xsk_err(&spec.ifname, "adding a port", "already bound"));
        }
        let port = bind_port(spec, self.sock_cfg, &self.umem)?;
        let index = match self.ports.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.ports.push(None);
                self.ports.len() - 1
            }
        };
        let port = self.ports[index].insert(port);
        Ok((index, Some(port.fd())))
    }

    fn max_ports(&self) -> usize {
        self.max_ports
    }

    fn kernel_stats(&self, port: usize) -> Option<super::KernelStats> {
        // A socket that cannot answer (it always can while open) reads as no counters: the
        // worker keeps what it counted and tries again next second.
        let s = self
            .ports
            .get(port)?
            .as_ref()?
            .rx
            .fd()
            .xdp_statistics()
            .ok()?;
        Some(super::KernelStats {
            rx_dropped: s.rx_dropped(),
            rx_ring_full: s.rx_ring_full(),
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs(),
            rx_invalid_descs: s.rx_invalid_descs(),
            tx_invalid_descs: s.tx_invalid_descs(),
        })
    }

    fn remove_port(&mut self, port: usize) {
        // Dropping the socket closes it: the kernel stops using its rings, and the frames on
        // them are the caller's again (it takes them back with `frame_desc`).
        if let Some(slot) = self.ports.get_mut(port) {
            *slot = None;
        }
    }

    fn frame_desc(&self, index: u32) -> FrameDesc {
        let mut d = FrameDesc::default();
        self.addr
            .set(&mut d, index as usize * FRAME_SIZE as usize + self.rx_head);
        d
    }

    fn port_count(&self) -> usize {
        self.ports.len()
    }
    fn frame_count(&self) -> u32 {
        self.frame_count
    }
    #[inline]
    fn frame_index(&self, desc: &FrameDesc) -> u32 {
        (desc.addr() / FRAME_SIZE as usize) as u32
    }
    #[inline]
    fn desc_len(&self, desc: &FrameDesc) -> usize {
        desc.lengths().data()
    }
    fn take_frames(&mut self) -> Vec<FrameDesc> {
        self.frames.take().unwrap_or_default()
    }
    #[inline]
    fn fill_room(&mut self, port: usize, want: u32) -> u32 {
        match &mut self.ports[port] {
            Some(p) => p.fill.nb_free(want).min(want),
            None => 0,
        }
    }
    /// # Safety
    ///
    /// As [`Backend::fill`]: frames of this backend the caller holds, each once.
    #[inline]
    unsafe fn fill(&mut self, port: usize, descs: &[FrameDesc]) -> usize {
        let Some(p) = &mut self.ports[port] else {
            return 0;
        };
        // SAFETY: the caller's contract (`Backend::fill`): frames of this UMEM that it holds,
        // each once, left alone until the RX ring hands them back. That is what `produce` asks.
        unsafe { p.fill.produce(descs) }
    }
    #[inline]
    fn rx(&mut self, port: usize, out: &mut [FrameDesc]) -> usize {
        let Some(p) = &mut self.ports[port] else {
            return 0;
        };
        // SAFETY: the descriptors written come from this UMEM's RX ring; the kernel has
        // released the frames to us.
        unsafe { p.rx.consume(out) }
    }
    /// # Safety
    ///
    /// As [`Backend::tx`]: frames of this backend the caller holds, each once.
    #[inline]
    unsafe fn tx(&mut self, port: usize, descs: &[FrameDesc]) -> usize {
        let Some(p) = &mut self.ports[port] else {
            return 0;
        };
        let room = p.tx.nb_free(descs.len() as u32) as usize;
        let n = room.min(descs.len());
        if n == 0 {
            // Still kick: a full ring the kernel is not draining needs a wake-up.
            if p.tx.needs_wakeup() {
                let _ = p.tx.wakeup();
            }
            return 0;
        }
        // SAFETY: the caller's contract (`Backend::tx`): frames of this UMEM that it holds,
        // each once, left alone until the completion ring returns them.
        let queued = unsafe { p.tx.produce(&descs[..n]) };
        if p.tx.needs_wakeup() {
            // A failed kick (EAGAIN/ENOBUFS are already swallowed by xsk-rs) leaves the frames
            // queued; the next batch kicks again.
            let _ = p.tx.wakeup();
        }
        queued
    }
    #[inline]
    fn tx_queued(&mut self, port: usize) -> u32 {
        match &mut self.ports[port] {
            Some(p) => self.ring_size.saturating_sub(p.tx.nb_free_exact()),
            None => 0,
        }
    }
    #[inline]
    fn tx_kick(&mut self, port: usize) {
        let Some(p) = &mut self.ports[port] else {
            return;
        };
        let tx = &mut p.tx;
        if tx.needs_wakeup() {
            // EAGAIN/ENOBUFS are swallowed by xsk-rs; anything else shows up as frames that stay
            // queued, and the next batch kicks again.
            let _ = tx.wakeup();
        }
    }
    #[inline]
    fn complete(&mut self, port: usize, out: &mut [FrameDesc]) -> usize {
        let Some(p) = &mut self.ports[port] else {
            return 0;
        };
        // SAFETY: descriptors come back from this UMEM's completion ring.
        let n = unsafe { p.comp.consume(out) };
        // A frame sent after a prepend or a strip comes back with the address it was sent
        // from; put its head back where a received packet's is, so a frame reused from the
        // free list has the full headroom.
        for d in &mut out[..n] {
            let addr = d.addr();
            let home = frame_start(addr) + self.rx_head;
            if addr != home {
                self.addr.set(d, home);
            }
        }
        n
    }
    fn fill_ring_occupancy(&mut self, port: usize) -> u32 {
        // nb_free_exact counts the free slots of a ring of `ring_size` entries.
        match &mut self.ports[port] {
            Some(p) => self.ring_size.saturating_sub(p.fill.nb_free_exact()),
            None => 0,
        }
    }
    /// # Safety
    ///
    /// As [`Backend::with_frame`]: a frame of this backend the caller holds.
    #[inline]
    unsafe fn with_frame<R>(
        &mut self,
        desc: &mut FrameDesc,
        f: impl FnOnce(&mut Frame<'_>) -> R,
    ) -> R {
        let addr = desc.addr();
        let start = frame_start(addr);
        let head = addr - start;
        let len = desc.lengths().data();
        // The whole frame, headroom included: the data segment of a copy of the descriptor
        // pointed at the frame's first byte runs to the frame's end.
        let mut whole = *desc;
        self.addr.set(&mut whole, start);
        let (r, new_head, new_len) = {
            // SAFETY: by the caller's contract (`Backend::with_frame`) `desc` is a frame of this
            // UMEM that the caller holds, so the kernel does not touch it while `f` runs, and
            // `&mut self` keeps any other reference through this backend out; `whole` points
            // at the start of that same frame.
            let mut data = unsafe { self.umem.data_mut(&mut whole) };
            let mut cursor = data.cursor();
            let cap = cursor.buf_len();
            cursor.set_pos(cap);
            let mut frame = Frame::with_headroom(data.contents_mut(), head, len);
            let r = f(&mut frame);
            (r, frame.headroom(), frame.len())
        };
        if new_head != head {
            self.addr.set(desc, start + new_head);
        }
        // SAFETY: as above; `desc` still points into the frame the worker holds, and `data` of
        // `whole` is gone.
        let mut data = unsafe { self.umem.data_mut(desc) };
        // The frame keeps `new_head + new_len` within the frame, so this is not clamped.
        data.cursor().set_pos(new_len);
        r
    }
    fn raw_fds(&self) -> Vec<(usize, RawFd)> {
        self.ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i, p.fd().as_raw_fd())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_field_of_a_frame_descriptor_is_found_and_set_alone() {
        let field = DescAddr::find().expect("xsk-rs 0.11's FrameDesc");
        let mut d = FrameDesc::default();
        d.set_options(3);
        for addr in [0, 4096 + 256, 7 * 4096 + 206, usize::MAX] {
            field.set(&mut d, addr);
            assert_eq!(d.addr(), addr);
            assert_eq!(d.options(), 3);
            assert_eq!((d.lengths().headroom(), d.lengths().data()), (0, 0));
        }
    }

    #[test]
    fn frame_start_masks_any_address_inside_a_frame() {
        for i in 0..4usize {
            let start = i * FRAME_SIZE as usize;
            for off in [0, 1, 206, 256, FRAME_SIZE as usize - 1] {
                assert_eq!(frame_start(start + off), start);
            }
        }
    }
}

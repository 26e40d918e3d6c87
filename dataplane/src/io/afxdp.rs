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

use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};

use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

use super::Backend;
use crate::Error;
use crate::frame::Frame;

/// The frame size: one page, so the UMEM is aligned and a frame holds any Ethernet frame of
/// MTU 1500 (or up to ~3.8 KB) after the kernel's 256-byte XDP headroom.
pub const FRAME_SIZE: u32 = 4096;

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

/// See the module documentation.
pub struct XskBackend {
    sock_cfg: SocketConfig,
    umem: Umem,
    ports: Vec<XskPort>,
    frames: Option<Vec<FrameDesc>>,
    frame_count: u32,
    ring_size: u32,
}

impl std::fmt::Debug for XskBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskBackend")
            .field(
                "ports",
                &self.ports.iter().map(|p| &p.spec).collect::<Vec<_>>(),
            )
            .field("frame_count", &self.frame_count)
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
        let first = ports
            .first()
            .ok_or_else(|| Error::Config("a worker needs at least one port".into()))?;
        let ring = QueueSize::new(opts.ring_size)
            .map_err(|e| Error::Config(format!("ring size {}: {e}", opts.ring_size)))?;
        let frame_size = FrameSize::new(FRAME_SIZE)
            .map_err(|e| Error::Config(format!("frame size {FRAME_SIZE}: {e}")))?;
        let umem_cfg = UmemConfig::builder()
            .frame_size(frame_size)
            .fill_queue_size(ring)
            .comp_queue_size(ring)
            .build()
            .map_err(|e| Error::Config(format!("UMEM configuration: {e}")))?;
        let frame_count =
            (ports.len() as u32) * opts.ring_size * 2 + spare_ports * opts.ring_size + spare;
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
            xports.push(bind_port(spec, sock_cfg, &umem)?);
        }
        Ok(XskBackend {
            sock_cfg,
            umem,
            ports: xports,
            frames: Some(frames),
            frame_count,
            ring_size: opts.ring_size,
        })
    }

    /// `(ifindex, queue, fd)` of every port's socket, for the redirector's XSKMAP.
    pub fn socket_fds(&self) -> Vec<(u32, u32, RawFd)> {
        self.ports
            .iter()
            .map(|p| (p.spec.ifindex, p.spec.queue, p.rx.fd().as_raw_fd()))
            .collect()
    }

    /// The kernel's own counters for port `port`'s socket (drops for a full RX ring or an empty
    /// fill ring, invalid descriptors).
    pub fn kernel_stats(&self, port: usize) -> Result<xsk_rs::socket::XdpStatistics, Error> {
        let p = &self.ports[port];
        p.rx.fd().xdp_statistics().map_err(|source| Error::Io {
            what: "reading XDP_STATISTICS",
            source,
        })
    }

    /// The ports, in index order.
    pub fn ports(&self) -> impl Iterator<Item = &PortSpec> {
        self.ports.iter().map(|p| &p.spec)
    }
}

impl Backend for XskBackend {
    type Desc = FrameDesc;
    type PortSpec = PortSpec;

    fn add_port(&mut self, spec: &PortSpec) -> Result<Option<RawFd>, Error> {
        if self
            .ports
            .iter()
            .any(|p| p.spec.ifindex == spec.ifindex && p.spec.queue == spec.queue)
        {
            return Err(xsk_err(&spec.ifname, "adding a port", "already bound"));
        }
        let port = bind_port(spec, self.sock_cfg, &self.umem)?;
        let fd = port.rx.fd().as_raw_fd();
        self.ports.push(port);
        Ok(Some(fd))
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
        self.ports[port].fill.nb_free(want).min(want)
    }
    #[inline]
    fn fill(&mut self, port: usize, descs: &[FrameDesc]) -> usize {
        // SAFETY: the worker gives the kernel only frames of this UMEM that it holds (the ledger
        // checks it) and does not touch them again until the RX ring hands them back.
        unsafe { self.ports[port].fill.produce(descs) }
    }
    #[inline]
    fn rx(&mut self, port: usize, out: &mut [FrameDesc]) -> usize {
        // SAFETY: the descriptors written come from this UMEM's RX ring; the kernel has
        // released the frames to us.
        unsafe { self.ports[port].rx.consume(out) }
    }
    #[inline]
    fn tx(&mut self, port: usize, descs: &[FrameDesc]) -> usize {
        let p = &mut self.ports[port];
        let room = p.tx.nb_free(descs.len() as u32) as usize;
        let n = room.min(descs.len());
        if n == 0 {
            // Still kick: a full ring the kernel is not draining needs a wake-up.
            if p.tx.needs_wakeup() {
                let _ = p.tx.wakeup();
            }
            return 0;
        }
        // SAFETY: frames of this UMEM held by the worker; not touched again until the
        // completion ring returns them.
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
        let free = self.ports[port].tx.nb_free_exact();
        self.ring_size.saturating_sub(free)
    }
    #[inline]
    fn tx_kick(&mut self, port: usize) {
        let tx = &mut self.ports[port].tx;
        if tx.needs_wakeup() {
            // EAGAIN/ENOBUFS are swallowed by xsk-rs; anything else shows up as frames that stay
            // queued, and the next batch kicks again.
            let _ = tx.wakeup();
        }
    }
    #[inline]
    fn complete(&mut self, port: usize, out: &mut [FrameDesc]) -> usize {
        // SAFETY: descriptors come back from this UMEM's completion ring.
        unsafe { self.ports[port].comp.consume(out) }
    }
    fn fill_ring_occupancy(&mut self, port: usize) -> u32 {
        // nb_free_exact counts the free slots of a ring of `ring_size` entries.
        let free = self.ports[port].fill.nb_free_exact();
        self.ring_size.saturating_sub(free)
    }
    #[inline]
    fn with_frame<R>(&mut self, desc: &mut FrameDesc, f: impl FnOnce(&mut Frame<'_>) -> R) -> R {
        // SAFETY: `desc` is a frame of this UMEM that the worker holds (it came from an RX or
        // completion ring, or the initial set, and has not been produced to a ring since), so
        // neither the kernel nor any other reference touches it while `f` runs.
        let mut data = unsafe { self.umem.data_mut(desc) };
        let len = data.contents().len();
        let mut cursor = data.cursor();
        let cap = cursor.buf_len();
        cursor.set_pos(cap);
        let (r, new_len) = {
            let buf = data.contents_mut();
            let mut frame = Frame::new(buf, len);
            let r = f(&mut frame);
            (r, frame.len())
        };
        data.cursor().set_pos(new_len);
        r
    }
    fn raw_fds(&self) -> Vec<RawFd> {
        self.ports.iter().map(|p| p.rx.fd().as_raw_fd()).collect()
    }
}

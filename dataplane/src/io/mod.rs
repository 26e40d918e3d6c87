//! I/O backends: where a worker's frames come from and go to.
//!
//! A [`Backend`] is the set of ports one worker owns, all sharing one region of frames (a UMEM).
//! It exposes the four AF_XDP rings per port — fill, RX, TX, completion — and access to the
//! bytes of a frame. The worker ([`crate::worker`]) moves frame descriptors between those rings
//! and its free list, and runs [`crate::pipeline::process`] on each received frame; it never
//! knows which backend it runs on.
//!
//! - `afxdp::XskBackend` (the `afxdp` feature, on by default): real AF_XDP sockets from
//!   `xsk-rs`, one UMEM per worker shared by every port (`XDP_SHARED_UMEM`), so forwarding from
//!   one port to another copies nothing in userspace. Without the feature the crate builds
//!   without `xsk-rs` and libxdp, for programs that only replay captures.
//! - [`memory::MemoryBackend`]: the same rings in memory, with the kernel's side (taking fill
//!   frames for arriving packets, completing sent ones) driven by the test. It runs the very same
//!   worker without root.
//! - [`pcap::PcapBackend`]: the same rings fed from a pcap or pcapng capture file, with what the
//!   worker transmits collected per port (`xylem replay`: what Xylem would do with recorded
//!   traffic, without a node).
//!
//! # Who owns a frame
//!
//! A descriptor is a plain `Copy` value (an address and a length, as on the rings themselves),
//! so holding one proves nothing: a copy kept after the frame went to the kernel still names
//! it. What may touch a frame is decided by where the frame is, and the worker's
//! [`crate::ledger::Ledger`] records that: free, in a fill ring, held, in a TX ring. The three
//! methods through which a frame is handed to the kernel or its bytes are reached —
//! [`Backend::fill`], [`Backend::tx`] and [`Backend::with_frame`] — are therefore `unsafe`,
//! and their callers argue, with the ledger, that they hold the frames they pass.
//!
//! The alternative, a descriptor that is an owned, non-`Copy` token consumed by `fill` and
//! `tx`, was not taken. It would not be sound on its own either: a token from another
//! worker's UMEM, or one made by [`Backend::frame_desc`] for a frame still on a closed port's
//! rings, names a frame this backend's kernel side may be writing, so tokens would need a brand
//! per backend and `frame_desc` would stay `unsafe`. And the hot path would pay in churn for
//! it: the RX scratch array, the free list and the per-port TX queues are reused `Copy`
//! buffers, refilled in place every batch; tokens would turn each slot into an `Option` or
//! each hand-off into a drain. The ledger already checks every move in debug builds; the
//! `unsafe` contracts make the rule it checks explicit at every call.

use std::os::fd::{BorrowedFd, RawFd};

use crate::frame::Frame;

#[cfg(feature = "afxdp")]
pub mod afxdp;
pub mod memory;
pub mod pcap;

/// The frame size of every backend: one page, so an AF_XDP UMEM is aligned and a frame holds
/// any Ethernet frame of MTU 1500 (or up to ~3.8 KB) after the kernel's 256-byte XDP headroom.
pub const FRAME_SIZE: u32 = 4096;

/// The most headroom a backend accepts: half a frame, which leaves 2 KiB for the packet and its
/// trailer.
pub const MAX_HEADROOM: usize = FRAME_SIZE as usize / 2;

/// The headroom a backend gives its frames unless told otherwise: room in front of each
/// received packet for outer headers, without moving the packet.
///
/// 128 bytes: two cache lines, so a packet that started on a cache-line boundary still does,
/// and enough for the largest encapsulation in sight — Ethernet (14) + IPv6 (40) + UDP for NAT
/// traversal (8) + ESP header (8) + a 16-byte IV (AES-CBC) = 86 bytes, plus a VLAN tag (4) —
/// where ESP tunnel mode over IPv4 with an 8-byte IV needs 50. It is DPDK's default mbuf
/// headroom for the same reasons. On AF_XDP it costs nothing: it fits inside the 256 bytes the
/// kernel already leaves in front of every received packet.
pub const DEFAULT_HEADROOM: usize = 128;

/// One socket's counters as the kernel keeps them (`struct xdp_statistics`), from the socket's
/// opening. Only `rx_dropped`, `rx_ring_full` and the invalid descriptors are frames lost; the
/// fill ring's empty count says how often the kernel looked for a frame and found none (each
/// such frame is also in `rx_dropped`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Received frames dropped: the fill ring had no frame for them, or they did not fit one.
    pub rx_dropped: u64,
    /// Received frames dropped because the RX ring was full (the worker fell behind).
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty when a frame arrived.
    pub rx_fill_ring_empty_descs: u64,
    /// Fill-ring descriptors the kernel refused.
    pub rx_invalid_descs: u64,
    /// TX descriptors the kernel refused (out of the UMEM, or longer than a frame).
    pub tx_invalid_descs: u64,
}

impl KernelStats {
    /// The counters with their kernel names, in the order [`crate::stats::XskCounter::ALL`]
    /// lists them.
    pub fn values(&self) -> [u64; crate::stats::XskCounter::COUNT] {
        [
            self.rx_dropped,
            self.rx_ring_full,
            self.rx_fill_ring_empty_descs,
            self.rx_invalid_descs,
            self.tx_invalid_descs,
        ]
    }
}

/// The rings and frames of the ports one worker owns. See the module documentation.
///
/// Port indices are `0..port_count()` and equal the [`crate::tables::PortId`]s the tables use.
pub trait Backend {
    /// A frame descriptor: which frame, where in it the packet starts, and how long it is.
    type Desc: Copy + std::fmt::Debug;
    /// What [`Self::add_port`] needs to open one more port.
    type PortSpec: Send + std::fmt::Debug + 'static;

    /// Opens one more port on the same frames, at the lowest index no open port holds (a
    /// closed port's, else `port_count()`): every worker given the same requests in the same
    /// order picks the same index. Returns that index, and the socket to wait on and to
    /// register in the XSKMAP if the backend has one (borrowed: the backend owns it until
    /// [`Self::remove_port`]). Called by the worker between batches, never per packet.
    fn add_port(
        &mut self,
        spec: &Self::PortSpec,
    ) -> Result<(usize, Option<BorrowedFd<'_>>), crate::Error>;

    /// How many ports may be open at once: as many as the shared frames were sized for (each
    /// open port keeps up to a fill ring's worth of them with the kernel). The worker refuses
    /// to open more ([`crate::Error::PortBudget`]) rather than let the ports' fill rings go
    /// short.
    fn max_ports(&self) -> usize;

    /// Closes `port`: its socket and rings go, and its index is free for [`Self::add_port`]
    /// (`port_count` does not shrink). Frames still on its rings are not handed back: the
    /// caller knows which they are and takes them back with [`Self::frame_desc`]. Every other
    /// method treats a closed port as one whose rings are empty and full. Called by the worker
    /// between batches.
    fn remove_port(&mut self, port: usize);

    /// A descriptor of frame `index` with the backend's headroom and no packet: how the caller
    /// takes back a frame the kernel will never return (it was on the rings of a closed port).
    fn frame_desc(&self, index: u32) -> Self::Desc;

    /// How many port indices this backend has: open ports and closed ones not reused yet.
    fn port_count(&self) -> usize;
    /// How many frames the shared region holds.
    fn frame_count(&self) -> u32;
    /// The index (0..frame_count) of the frame a descriptor points at.
    fn frame_index(&self, desc: &Self::Desc) -> u32;
    /// The packet length a descriptor carries.
    fn desc_len(&self, desc: &Self::Desc) -> usize;
    /// Hands every frame to the caller, once, at start-up. Later calls return nothing.
    fn take_frames(&mut self) -> Vec<Self::Desc>;

    /// How many of the next `want` frames `port`'s fill ring has room for.
    fn fill_room(&mut self, port: usize, want: u32) -> u32;
    /// Gives frames to the kernel for receiving on `port`. All or nothing: returns `descs.len()`
    /// or 0. Call [`Self::fill_room`] first.
    ///
    /// # Safety
    ///
    /// Every descriptor in `descs` names a frame of this backend that the caller holds (it
    /// came from [`Self::take_frames`], [`Self::rx`], [`Self::complete`] or, for a frame of a
    /// closed port, [`Self::frame_desc`], and has not been given to a ring since), each frame
    /// once. When the call returns `descs.len()` the frames are the kernel's: the caller must
    /// not pass them to any method of this trait again, nor read or write them, until
    /// [`Self::rx`] hands them back (or, once `port` is closed, it takes them back with
    /// [`Self::frame_desc`]). When it returns 0 they are still the caller's.
    unsafe fn fill(&mut self, port: usize, descs: &[Self::Desc]) -> usize;
    /// Takes up to `out.len()` received frames from `port`.
    fn rx(&mut self, port: usize, out: &mut [Self::Desc]) -> usize;
    /// Queues frames for sending on `port` and wakes the kernel if it asks to be woken. Returns
    /// how many were queued (a prefix of `descs`); the rest are still the caller's.
    ///
    /// # Safety
    ///
    /// As for [`Self::fill`]: every descriptor names a frame of this backend that the caller
    /// holds, each frame once. The queued prefix is the kernel's until [`Self::complete`]
    /// hands it back (or `port` is closed and the caller takes it back with
    /// [`Self::frame_desc`]); the caller must not pass those frames to any method of this trait
    /// again, nor read or write them, until then.
    unsafe fn tx(&mut self, port: usize, descs: &[Self::Desc]) -> usize;
    /// Frames on `port`'s TX ring that the kernel has not taken yet.
    fn tx_queued(&mut self, port: usize) -> u32;
    /// Wakes the kernel to send what sits on `port`'s TX ring, if the ring asks to be woken.
    /// In copy mode the kernel sends at most a small batch (32 frames) per wake-up, so a ring
    /// with frames left needs another kick.
    fn tx_kick(&mut self, port: usize);
    /// Takes up to `out.len()` frames whose sending on `port` completed.
    fn complete(&mut self, port: usize, out: &mut [Self::Desc]) -> usize;
    /// How many frames sit in `port`'s fill ring right now, as the ring itself says. Used by
    /// the quiescence check of the frame accounting.
    fn fill_ring_occupancy(&mut self, port: usize) -> u32;

    /// Runs `f` on the frame `desc` points at. The [`Frame`]'s buffer is the whole writable
    /// area of the descriptor's buffer; its packet starts where the descriptor says. Wherever
    /// `f` leaves the packet's first byte ([`Frame::prepend`], [`Frame::strip_front`]) and
    /// whatever length it leaves become the descriptor's, so a frame sent after a prepend goes
    /// out whole, headers in front.
    ///
    /// Headroom: a frame fresh from `rx`, from `complete` or from `take_frames` has at least
    /// the backend's configured headroom in front of its packet ([`DEFAULT_HEADROOM`] unless
    /// the constructor was given another; the AF_XDP backend's frames have at least the
    /// kernel's 256-byte XDP headroom as well, see the `afxdp` module). A descriptor the caller moved
    /// keeps its head where the caller left it until it comes back from `rx` or `complete`.
    ///
    /// # Safety
    ///
    /// `desc` names a frame of this backend that the caller holds, as [`Self::fill`] defines
    /// it: the kernel may be writing a frame on a fill or RX ring, and reading one on a TX or
    /// completion ring, at any moment.
    unsafe fn with_frame<R>(
        &mut self,
        desc: &mut Self::Desc,
        f: impl FnOnce(&mut Frame<'_>) -> R,
    ) -> R;

    /// `(port, fd)` of every open port with a file descriptor to wait on for readiness when
    /// idle (none for in-memory backends).
    fn raw_fds(&self) -> Vec<(usize, RawFd)>;

    /// What the kernel counted at `port`'s socket since it was opened (`XDP_STATISTICS`):
    /// frames lost before the dataplane could see them. One system call on AF_XDP: the worker
    /// reads it at most once a second, never per packet. `None` for a closed port, or a
    /// backend without such counters.
    fn kernel_stats(&self, port: usize) -> Option<KernelStats> {
        let _ = port;
        None
    }
}

//! An in-memory backend: AF_XDP's four rings per port, with the kernel's side played by the
//! caller. Used by tests and benchmarks to run the real worker without root or sockets.
//!
//! The "kernel" methods ([`MemoryBackend::inject`], [`MemoryBackend::deliver`]) behave like the
//! kernel does: an arriving packet needs a frame from the port's fill ring (without one it is
//! dropped and counted, like `rx_fill_ring_empty_descs`); a sent frame lands on the "wire" (a
//! per-port queue of byte vectors the test reads) and its descriptor moves to the completion
//! ring.
//!
//! Each frame is `frame_size` bytes: `headroom` bytes of room, then the packet, as in a UMEM
//! frame. An arriving packet is written right after the headroom; a descriptor carries the
//! offset of its packet's first byte, so a frame whose head was moved (a prepend or a strip)
//! goes on the wire from its new first byte. Completed descriptors come back with the head
//! where an arriving packet's would be, like the AF_XDP backend's.

use std::collections::VecDeque;
use std::os::fd::{BorrowedFd, RawFd};

use super::{Backend, DEFAULT_HEADROOM};
use crate::frame::Frame;

/// A frame descriptor of the in-memory backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemDesc {
    /// Frame index.
    pub index: u32,
    /// Offset of the packet's first byte in the frame: the frame's headroom.
    pub offset: u32,
    /// Packet length.
    pub len: u32,
}

#[derive(Debug)]
struct MemPort {
    fill: VecDeque<MemDesc>,
    rx: VecDeque<MemDesc>,
    tx: VecDeque<MemDesc>,
    comp: VecDeque<MemDesc>,
    wire: VecDeque<Vec<u8>>,
    ring_size: usize,
    rx_dropped_no_fill: u64,
    rx_ring_full: u64,
    keep_wire: bool,
    sent: u64,
    /// False once closed: rings of no entries, which take nothing and hold nothing.
    open: bool,
}

/// See the module documentation.
#[derive(Debug)]
pub struct MemoryBackend {
    frame_size: usize,
    /// Where an arriving packet starts in its frame. Invariant: `headroom <= frame_size`.
    headroom: usize,
    mem: Vec<u8>,
    frames: Option<Vec<MemDesc>>,
    ports: Vec<MemPort>,
    /// See [`Backend::max_ports`]: one ring's worth of frames per port.
    max_ports: usize,
}

impl MemPort {
    fn new(ring_size: usize) -> Self {
        MemPort {
            fill: VecDeque::with_capacity(ring_size),
            rx: VecDeque::with_capacity(ring_size),
            tx: VecDeque::with_capacity(ring_size),
            comp: VecDeque::with_capacity(ring_size),
            wire: VecDeque::new(),
            ring_size,
            rx_dropped_no_fill: 0,
            rx_ring_full: 0,
            keep_wire: true,
            sent: 0,
            open: true,
        }
    }

    /// A closed port: what is left of a removed one until its index is reused.
    fn closed() -> Self {
        MemPort {
            open: false,
            ..MemPort::new(0)
        }
    }
}

impl MemoryBackend {
    /// `ports` ports with rings of `ring_size` entries, sharing `frame_count` frames of
    /// `frame_size` bytes, each with [`DEFAULT_HEADROOM`] bytes of headroom (none when
    /// `frame_size` is not larger than that). As many ports may be open at once as the frames
    /// fill rings of `ring_size` ([`Backend::max_ports`]), and at least `ports`.
    pub fn new(ports: usize, ring_size: usize, frame_count: u32, frame_size: usize) -> Self {
        let headroom = if frame_size > DEFAULT_HEADROOM {
            DEFAULT_HEADROOM
        } else {
            0
        };
        Self::build(ports, ring_size, frame_count, frame_size, headroom)
    }

    /// As [`Self::new`], with `headroom` bytes of headroom in each frame: a packet arriving in
    /// a frame starts `headroom` bytes into it, and has `frame_size - headroom` bytes of room.
    /// Fails when the headroom leaves no room for a packet.
    pub fn with_headroom(
        ports: usize,
        ring_size: usize,
        frame_count: u32,
        frame_size: usize,
        headroom: usize,
    ) -> Result<Self, crate::Error> {
        if headroom >= frame_size {
            return Err(crate::Error::Config(format!(
                "a headroom of {headroom} bytes leaves no room for a packet in a frame of \
                 {frame_size} bytes: use a headroom smaller than the frame"
            )));
        }
        Ok(Self::build(
            ports,
            ring_size,
            frame_count,
            frame_size,
            headroom,
        ))
    }

    fn build(
        ports: usize,
        ring_size: usize,
        frame_count: u32,
        frame_size: usize,
        headroom: usize,
    ) -> Self {
        let port = || MemPort::new(ring_size);
        let offset = headroom as u32;
        MemoryBackend {
            frame_size,
            headroom,
            mem: vec![0; frame_count as usize * frame_size],
            frames: Some(
                (0..frame_count)
                    .map(|index| MemDesc {
                        index,
                        offset,
                        len: 0,
                    })
                    .collect(),
            ),
            ports: (0..ports).map(|_| port()).collect(),
            max_ports: (frame_count as usize / ring_size.max(1)).max(ports),
        }
    }

    /// The headroom of a frame fresh from the RX or completion ring.
    pub fn headroom(&self) -> usize {
        self.headroom
    }

    /// Kernel side: a packet arrives on `port`. Returns false (and counts it) if the port's fill
    /// ring had no frame for it, or the RX ring was full.
    pub fn inject(&mut self, port: usize, bytes: &[u8]) -> bool {
        let p = &mut self.ports[port];
        if p.rx.len() >= p.ring_size {
            p.rx_ring_full += 1;
            return false;
        }
        let Some(mut d) = p.fill.pop_front() else {
            p.rx_dropped_no_fill += 1;
            return false;
        };
        // Like the kernel: the packet goes after the headroom, wherever the descriptor
        // given to the fill ring pointed.
        let n = bytes.len().min(self.frame_size - self.headroom);
        let start = d.index as usize * self.frame_size + self.headroom;
        self.mem[start..start + n].copy_from_slice(&bytes[..n]);
        d.offset = self.headroom as u32;
        d.len = n as u32;
        p.rx.push_back(d);
        true
    }

    /// Kernel side: sends everything queued on every TX ring. Sent frames go to the wire (if
    /// kept) and their descriptors to the completion ring. Returns how many were sent.
    pub fn deliver(&mut self) -> usize {
        let mut n = 0;
        for p in &mut self.ports {
            while p.comp.len() < p.ring_size {
                let Some(d) = p.tx.pop_front() else { break };
                if p.keep_wire {
                    // The packet from its first byte, wherever the worker left it; clamped to
                    // the frame, as the kernel rejects a descriptor that crosses it.
                    let frame = d.index as usize * self.frame_size;
                    let start = frame + (d.offset as usize).min(self.frame_size);
                    let end = (start + d.len as usize).min(frame + self.frame_size);
                    p.wire.push_back(self.mem[start..end].to_vec());
                }
                p.sent += 1;
                p.comp.push_back(d);
                n += 1;
            }
        }
        n
    }

    /// Takes the frames sent on `port` so far, oldest first.
    pub fn take_wire(&mut self, port: usize) -> Vec<Vec<u8>> {
        self.ports[port].wire.drain(..).collect()
    }

    /// Whether sent frames are kept for [`Self::take_wire`] (default true). Turn it off for
    /// long runs that only count.
    pub fn keep_wire(&mut self, keep: bool) {
        for p in &mut self.ports {
            p.keep_wire = keep;
        }
    }

    /// Frames sent on `port` so far.
    pub fn sent(&self, port: usize) -> u64 {
        self.ports[port].sent
    }

    /// Packets that arrived on `port` and were dropped: its fill ring was empty, or its RX ring
    /// full.
    pub fn rx_dropped(&self, port: usize) -> u64 {
        self.ports[port].rx_dropped_no_fill + self.ports[port].rx_ring_full
    }

    /// Frames that are in the kernel's hands on `port` (fill + RX, TX + completion).
    pub fn in_kernel(&self, port: usize) -> (usize, usize) {
        let p = &self.ports[port];
        (p.fill.len() + p.rx.len(), p.tx.len() + p.comp.len())
    }
}

impl Backend for MemoryBackend {
    type Desc = MemDesc;
    /// The new port's ring size.
    type PortSpec = usize;

    fn add_port(
        &mut self,
        ring_size: &usize,
    ) -> Result<(usize, Option<BorrowedFd<'_>>), crate::Error> {
        let port = MemPort::new(*ring_size);
        match self.ports.iter().position(|p| !p.open) {
            Some(i) => {
                self.ports[i] = port;
                Ok((i, None))
            }
            None => {
                self.ports.push(port);
                Ok((self.ports.len() - 1, None))
            }
        }
    }

    fn max_ports(&self) -> usize {
        self.max_ports
    }

    fn remove_port(&mut self, port: usize) {
        // The frames on its rings go with it, as they do with a closed socket's.
        if let Some(p) = self.ports.get_mut(port) {
            *p = MemPort::closed();
        }
    }

    fn frame_desc(&self, index: u32) -> MemDesc {
        MemDesc {
            index,
            offset: self.headroom as u32,
            len: 0,
        }
    }

    fn port_count(&self) -> usize {
        self.ports.len()
    }
    fn frame_count(&self) -> u32 {
        (self.mem.len() / self.frame_size) as u32
    }
    fn frame_index(&self, desc: &MemDesc) -> u32 {
        desc.index
    }
    fn desc_len(&self, desc: &MemDesc) -> usize {
        desc.len as usize
    }
    fn take_frames(&mut self) -> Vec<MemDesc> {
        self.frames.take().unwrap_or_default()
    }
    fn fill_room(&mut self, port: usize, want: u32) -> u32 {
        let p = &self.ports[port];
        want.min((p.ring_size - p.fill.len()) as u32)
    }
    /// # Safety
    ///
    /// As [`Backend::fill`]: frames of this backend the caller holds, each once.
    unsafe fn fill(&mut self, port: usize, descs: &[MemDesc]) -> usize {
        let p = &mut self.ports[port];
        if p.ring_size - p.fill.len() < descs.len() {
            return 0;
        }
        p.fill.extend(descs.iter().copied());
        descs.len()
    }
    fn rx(&mut self, port: usize, out: &mut [MemDesc]) -> usize {
        let p = &mut self.ports[port];
        let n = out.len().min(p.rx.len());
        for slot in out.iter_mut().take(n) {
            // `n` is bounded by the ring's length, so the ring has an entry.
            *slot = p.rx.pop_front().unwrap_or_default();
        }
        n
    }
    /// # Safety
    ///
    /// As [`Backend::tx`]: frames of this backend the caller holds, each once.
    unsafe fn tx(&mut self, port: usize, descs: &[MemDesc]) -> usize {
        let p = &mut self.ports[port];
        let n = descs.len().min(p.ring_size - p.tx.len());
        p.tx.extend(descs[..n].iter().copied());
        n
    }
    fn tx_queued(&mut self, port: usize) -> u32 {
        self.ports[port].tx.len() as u32
    }
    fn tx_kick(&mut self, _port: usize) {}
    fn complete(&mut self, port: usize, out: &mut [MemDesc]) -> usize {
        let p = &mut self.ports[port];
        let n = out.len().min(p.comp.len());
        for slot in out.iter_mut().take(n) {
            let mut d = p.comp.pop_front().unwrap_or_default();
            // Back to the configured headroom, so a frame reused from the free list has it
            // whatever the last packet sent in it did to its head.
            d.offset = self.headroom as u32;
            *slot = d;
        }
        n
    }
    fn fill_ring_occupancy(&mut self, port: usize) -> u32 {
        self.ports[port].fill.len() as u32
    }
    /// # Safety
    ///
    /// As [`Backend::with_frame`]: a frame of this backend the caller holds.
    unsafe fn with_frame<R>(
        &mut self,
        desc: &mut MemDesc,
        f: impl FnOnce(&mut Frame<'_>) -> R,
    ) -> R {
        let start = desc.index as usize * self.frame_size;
        let buf = &mut self.mem[start..start + self.frame_size];
        let mut frame = Frame::with_headroom(buf, desc.offset as usize, desc.len as usize);
        let r = f(&mut frame);
        desc.offset = frame.headroom() as u32;
        desc.len = frame.len() as u32;
        r
    }
    fn raw_fds(&self) -> Vec<(usize, RawFd)> {
        Vec::new()
    }

    /// As the kernel counts them: a packet with no frame in the fill ring is both an empty
    /// fill ring and a drop.
    fn kernel_stats(&self, port: usize) -> Option<super::KernelStats> {
        let p = self.ports.get(port).filter(|p| p.open)?;
        Some(super::KernelStats {
            rx_dropped: p.rx_dropped_no_fill,
            rx_ring_full: p.rx_ring_full,
            rx_fill_ring_empty_descs: p.rx_dropped_no_fill,
            ..Default::default()
        })
    }
}

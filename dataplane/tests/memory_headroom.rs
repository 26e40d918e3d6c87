//! Headroom through the in-memory backend: a frame whose first byte was moved back (a prepend)
//! or forward (a strip) goes on the wire from its new first byte, completed frames come back
//! with the full headroom, and the real worker's frame accounting holds while every frame it
//! handles has bytes prepended. No root needed.

use std::net::Ipv4Addr;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::Arc;

use arc_swap::ArcSwap;
use crossbeam::queue::ArrayQueue;
use etherparse::{NetSlice, PacketBuilder, SlicedPacket};
use xylem_dataplane::frame::Frame;
use xylem_dataplane::io::memory::{MemDesc, MemoryBackend};
use xylem_dataplane::io::{Backend, DEFAULT_HEADROOM};
use xylem_dataplane::ledger::Place;
use xylem_dataplane::slowpath::Signal;
use xylem_dataplane::tables::{Gateway, MacAddr, Mode, Neighbor, Tables};
use xylem_dataplane::worker::{Placement, Worker, WorkerConfig, WorkerLink};

const GW_MAC: [u8; 6] = [0x0e, 0x78, 0x79, 0x6c, 0, 1];
const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
/// What ESP tunnel mode puts in front of a packet: Ethernet (14) + IPv4 (20) + ESP (8) + IV (8).
const OUTER: usize = 50;

fn pod_mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, 0x10 + i]
}
fn pod_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 0, 10 + i)
}

fn udp(from: u8, to: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(pod_mac(from), GW_MAC)
        .ipv4(pod_ip(from).octets(), pod_ip(to).octets(), 64)
        .udp(40000, 5001)
        .write(&mut v, payload)
        .unwrap();
    v
}

fn outer(seq: u8) -> [u8; OUTER] {
    std::array::from_fn(|i| (i as u8).wrapping_mul(7) ^ seq)
}

/// Receives `bytes` on port 0 of `b` and hands back the received descriptor.
fn receive(b: &mut MemoryBackend, bytes: &[u8], frame: MemDesc) -> MemDesc {
    // SAFETY: every caller passes a frame it holds (from `take_frames` or `complete`) and
    // uses it again only once `rx` hands it back below.
    assert_eq!(unsafe { b.fill(0, &[frame]) }, 1);
    assert!(b.inject(0, bytes));
    let mut out = [MemDesc::default(); 1];
    assert_eq!(b.rx(0, &mut out), 1);
    out[0]
}

/// Sends `d` on port 1 and returns what reached the wire and the completed descriptor.
fn send(b: &mut MemoryBackend, d: MemDesc) -> (Vec<u8>, MemDesc) {
    // SAFETY: every caller passes a frame it holds (from `rx`) and uses it again only once
    // `complete` hands it back below.
    assert_eq!(unsafe { b.tx(1, &[d]) }, 1);
    assert_eq!(b.deliver(), 1);
    let wire = b.take_wire(1);
    assert_eq!(wire.len(), 1);
    let mut out = [MemDesc::default(); 1];
    assert_eq!(b.complete(1, &mut out), 1);
    (wire.into_iter().next().unwrap(), out[0])
}

#[test]
fn a_prepended_frame_goes_out_with_the_new_bytes_in_front() {
    let mut b = MemoryBackend::new(2, 8, 4, 2048);
    assert_eq!(b.headroom(), DEFAULT_HEADROOM);
    let frames = b.take_frames();
    assert!(frames.iter().all(|d| d.offset as usize == DEFAULT_HEADROOM));
    let pkt = udp(0, 1, b"inner packet");
    let mut d = receive(&mut b, &pkt, frames[2]);
    assert_eq!((d.index, d.offset as usize), (2, DEFAULT_HEADROOM));

    let hdr = outer(1);
    // SAFETY: `d` came from `rx` and has not been given back.
    unsafe {
        b.with_frame(&mut d, |f| {
            assert_eq!(f.headroom(), DEFAULT_HEADROOM);
            assert_eq!(f.data(), &pkt[..]);
            f.prepend(OUTER)
                .expect("default headroom fits ESP")
                .copy_from_slice(&hdr);
        });
    }
    assert_eq!(d.offset as usize, DEFAULT_HEADROOM - OUTER);
    assert_eq!(d.len as usize, OUTER + pkt.len());
    assert_eq!(b.desc_len(&d), OUTER + pkt.len());

    let (wire, done) = send(&mut b, d);
    assert_eq!(&wire[..OUTER], &hdr[..]);
    assert_eq!(&wire[OUTER..], &pkt[..]);
    // Back from the completion ring with the whole headroom, ready for reuse.
    assert_eq!((done.index, done.offset as usize), (2, DEFAULT_HEADROOM));

    // Reused straight from the free list (as the slow path does): the full headroom again.
    let mut reused = done;
    // SAFETY: `complete` handed the frame back and it has not been given out since.
    unsafe {
        b.with_frame(&mut reused, |f| {
            assert_eq!(f.headroom(), DEFAULT_HEADROOM);
            assert_eq!(f.capacity(), 2048 - DEFAULT_HEADROOM);
        });
    }
    // And given to the fill ring: the next packet lands after the headroom.
    let again = receive(&mut b, &pkt, reused);
    assert_eq!(again.offset as usize, DEFAULT_HEADROOM);
    // SAFETY: `again` came from `rx` and has not been given back.
    unsafe { b.with_frame(&mut { again }, |f| assert_eq!(f.data(), &pkt[..])) };
}

#[test]
fn a_stripped_frame_goes_out_without_the_stripped_bytes() {
    let mut b = MemoryBackend::new(2, 8, 4, 2048);
    let frames = b.take_frames();
    let mut wrapped = outer(9).to_vec();
    let inner = udp(0, 1, b"decapsulated");
    wrapped.extend_from_slice(&inner);
    let mut d = receive(&mut b, &wrapped, frames[0]);
    // SAFETY: `d` came from `rx` and has not been given back.
    unsafe { b.with_frame(&mut d, |f| assert!(f.strip_front(OUTER))) };
    assert_eq!(d.offset as usize, DEFAULT_HEADROOM + OUTER);
    let (wire, done) = send(&mut b, d);
    assert_eq!(wire, inner);
    assert_eq!(done.offset as usize, DEFAULT_HEADROOM);
}

#[test]
fn a_prepend_beyond_the_configured_headroom_fails_and_the_frame_goes_out_unchanged() {
    let mut b = MemoryBackend::with_headroom(2, 8, 4, 2048, 32).unwrap();
    assert_eq!(b.headroom(), 32);
    let frames = b.take_frames();
    let pkt = udp(0, 1, b"no room");
    let mut d = receive(&mut b, &pkt, frames[1]);
    // SAFETY: `d` came from `rx` and has not been given back.
    unsafe {
        b.with_frame(&mut d, |f| {
            assert_eq!(f.headroom(), 32);
            assert!(f.prepend(OUTER).is_none());
            assert_eq!(f.data(), &pkt[..]);
        });
    }
    let (wire, _) = send(&mut b, d);
    assert_eq!(wire, pkt);

    let err = MemoryBackend::with_headroom(2, 8, 4, 2048, 2048).unwrap_err();
    assert!(err.to_string().contains("headroom"), "{err}");
}

/// A backend that prepends `OUTER` bytes to every frame the worker has finished with, the way
/// an encapsulating stage of the pipeline will: after the worker's own code ran on the frame,
/// inside the same `with_frame`.
struct Encapsulating {
    inner: MemoryBackend,
}

impl Backend for Encapsulating {
    type Desc = MemDesc;
    type PortSpec = usize;

    fn add_port(
        &mut self,
        spec: &usize,
    ) -> Result<(usize, Option<BorrowedFd<'_>>), xylem_dataplane::Error> {
        self.inner.add_port(spec)
    }
    fn max_ports(&self) -> usize {
        self.inner.max_ports()
    }
    fn remove_port(&mut self, port: usize) {
        self.inner.remove_port(port)
    }
    fn frame_desc(&self, index: u32) -> MemDesc {
        self.inner.frame_desc(index)
    }
    fn port_count(&self) -> usize {
        self.inner.port_count()
    }
    fn frame_count(&self) -> u32 {
        self.inner.frame_count()
    }
    fn frame_index(&self, desc: &MemDesc) -> u32 {
        self.inner.frame_index(desc)
    }
    fn desc_len(&self, desc: &MemDesc) -> usize {
        self.inner.desc_len(desc)
    }
    fn take_frames(&mut self) -> Vec<MemDesc> {
        self.inner.take_frames()
    }
    fn fill_room(&mut self, port: usize, want: u32) -> u32 {
        self.inner.fill_room(port, want)
    }
    /// # Safety
    ///
    /// As [`Backend::fill`].
    unsafe fn fill(&mut self, port: usize, descs: &[MemDesc]) -> usize {
        // SAFETY: the caller's contract is the inner backend's.
        unsafe { self.inner.fill(port, descs) }
    }
    fn rx(&mut self, port: usize, out: &mut [MemDesc]) -> usize {
        self.inner.rx(port, out)
    }
    /// # Safety
    ///
    /// As [`Backend::tx`].
    unsafe fn tx(&mut self, port: usize, descs: &[MemDesc]) -> usize {
        // SAFETY: the caller's contract is the inner backend's.
        unsafe { self.inner.tx(port, descs) }
    }
    fn tx_queued(&mut self, port: usize) -> u32 {
        self.inner.tx_queued(port)
    }
    fn tx_kick(&mut self, port: usize) {
        self.inner.tx_kick(port)
    }
    fn complete(&mut self, port: usize, out: &mut [MemDesc]) -> usize {
        self.inner.complete(port, out)
    }
    fn fill_ring_occupancy(&mut self, port: usize) -> u32 {
        self.inner.fill_ring_occupancy(port)
    }
    /// # Safety
    ///
    /// As [`Backend::with_frame`].
    unsafe fn with_frame<R>(
        &mut self,
        desc: &mut MemDesc,
        f: impl FnOnce(&mut Frame<'_>) -> R,
    ) -> R {
        let seq = desc.index as u8;
        // SAFETY: the caller's contract is the inner backend's.
        unsafe {
            self.inner.with_frame(desc, |frame| {
                let r = f(frame);
                let front = frame
                    .prepend(OUTER)
                    .expect("every frame the worker holds has the default headroom");
                front.copy_from_slice(&outer(seq));
                r
            })
        }
    }
    fn raw_fds(&self) -> Vec<(usize, RawFd)> {
        self.inner.raw_fds()
    }
}

#[test]
fn the_worker_sends_frames_whose_head_moved_whole_and_its_frame_accounting_holds() {
    let mut t = Tables::new(
        1,
        Mode::Passthrough,
        Gateway {
            mac: MacAddr(GW_MAC),
            ipv4: GW_IP,
        },
    );
    for i in 0..2u8 {
        t.add_route(
            pod_ip(i),
            Neighbor {
                port: u16::from(i),
                mac: MacAddr(pod_mac(i)),
            },
        )
        .unwrap();
    }
    let link = WorkerLink::new(
        Arc::new(ArcSwap::from_pointee(t)),
        Arc::new(ArrayQueue::new(64)),
        Arc::new(Signal::default()),
    );
    let cfg = WorkerConfig {
        placement: Placement::Dedicated,
        batch_size: 32,
        ..WorkerConfig::default()
    };
    // Few frames, so each is reused many times: received, prepended, sent, completed, filled.
    let backend = Encapsulating {
        inner: MemoryBackend::new(2, 64, 160, 2048),
    };
    let mut w = Worker::new(cfg, backend, link.clone()).unwrap();
    w.run_once(0); // fill rings

    const PACKETS: usize = 20_000;
    let mut received = 0;
    let mut sent = 0;
    while sent < PACKETS {
        let b = &mut w.backend_mut().inner;
        while sent < PACKETS {
            let payload = (sent as u32).to_be_bytes();
            // Refused when the fill ring is empty: the worker has not caught up yet.
            if !b.inject(0, &udp(0, 1, &payload)) {
                break;
            }
            sent += 1;
        }
        w.run_once(0);
        let b = &mut w.backend_mut().inner;
        b.deliver();
        for bytes in b.take_wire(1) {
            // OUTER bytes in front, then the forwarded packet whole: MACs rewritten, TTL - 1,
            // the payload in the order it was sent.
            assert_eq!(bytes.len(), OUTER + udp(0, 1, &[0; 4]).len());
            let seq = bytes[0] ^ outer(0)[0];
            assert_eq!(&bytes[..OUTER], &outer(seq)[..]);
            let inner = &bytes[OUTER..];
            assert_eq!(&inner[..6], &pod_mac(1));
            assert_eq!(&inner[6..12], &GW_MAC);
            let p = SlicedPacket::from_ethernet(inner).unwrap();
            let Some(NetSlice::Ipv4(ip)) = p.net else {
                panic!("not IPv4: {inner:02x?}")
            };
            assert_eq!(ip.header().ttl(), 63);
            let n = u32::from_be_bytes(inner[inner.len() - 4..].try_into().unwrap());
            assert_eq!(n as usize, received, "frames out of order or lost");
            received += 1;
        }
    }
    for _ in 0..8 {
        w.run_once(0);
        w.backend_mut().inner.deliver();
        received += w.backend_mut().inner.take_wire(1).len();
    }
    assert_eq!(received, PACKETS);
    w.check_quiescent().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(w.ledger().count(Place::Held), 0);
    assert_eq!(w.ledger().count(Place::Tx), 0);
    let s = link.stats.snapshot();
    assert_eq!(s.forwarded, PACKETS as u64, "{s:?}");
    assert_eq!(s.tx_packets, PACKETS as u64, "{s:?}");
}

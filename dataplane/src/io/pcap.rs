//! A capture-file backend: a worker's ports fed from a pcap or pcapng file instead of sockets,
//! so the very same [`crate::worker::Worker`] decides on recorded traffic without a node, root
//! or sockets (`xylem replay`).
//!
//! What it does:
//! - [`Capture`] reads a capture held in memory: classic pcap (either byte order, micro- or
//!   nanosecond timestamps) and pcapng (every section, interface and timestamp resolution;
//!   enhanced, simple and obsolete packet blocks; other blocks are skipped), through the
//!   `pcap-file` crate's slice parsers. Only Ethernet link types are accepted (a pod's veth
//!   carries Ethernet frames); anything else, a file that is neither format, or a record cut
//!   short is an [`Error`] that names the frame and says what to do. Never a panic.
//! - [`PcapBackend`] is an [`super::Backend`] with AF_XDP's four rings per port, like
//!   [`super::memory::MemoryBackend`], whose kernel side is the capture: [`PcapBackend::read_next`]
//!   takes the next frame of the file and [`PcapBackend::deliver`] makes it arrive on a port
//!   (which port is the caller's decision: the capture does not say). Frames that the real
//!   dataplane could not have received as recorded are refused, not processed: a frame cut by
//!   the capture's snap length, or one longer than an AF_XDP frame holds.
//! - What the worker transmits is "sent" at once: copied out with the port and the timestamp
//!   of the frame being replayed ([`PcapBackend::take_sent`]), its descriptor completed. A
//!   [`TxWriter`] writes such frames to a pcapng file, one interface per port.
//!
//! What it does not do: decide anything (the worker and its pipeline do), read the clock (the
//! caller passes the capture's timestamps to [`crate::worker::Worker::run_once`]), or stream a
//! capture from disk: the file is held in memory whole, so a capture of N bytes needs N bytes
//! (exact positions in error messages and a progress measure come with it).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

use pcap_file::DataLink;
use pcap_file::pcap::{PcapParseError, PcapParser};
use pcap_file::pcapng::blocks::Block;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::{PcapNgParseError, PcapNgParser, PcapNgWriter};

use super::Backend;
use crate::Error;
use crate::frame::Frame;
use crate::tables::PortId;

/// Bytes of an AF_XDP frame the pipeline can use: [`super::FRAME_SIZE`] less the
/// kernel's XDP headroom (256 bytes). A captured frame longer than this could not have reached
/// a worker, and the room beyond a frame decides whether an ICMP error fits, so replay frames
/// get exactly this capacity.
pub const FRAME_DATA: usize = super::FRAME_SIZE as usize - 256;

/// Which file format a [`Capture`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureFormat {
    /// Classic libpcap (`tcpdump -w`).
    Pcap,
    /// pcapng (Wireshark, dumpcap, `mergecap`).
    PcapNg,
}

impl CaptureFormat {
    /// `pcap` or `pcapng`.
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureFormat::Pcap => "pcap",
            CaptureFormat::PcapNg => "pcapng",
        }
    }
}

/// One frame of a capture, borrowed from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapturedFrame<'a> {
    /// Its number in the file, from 1 (as `tcpdump -r` and Wireshark count).
    pub number: u64,
    /// When it was captured, since the Unix epoch. A pcapng simple packet block has none; it
    /// gets the timestamp of the frame before it.
    pub timestamp: Duration,
    /// Its length on the wire (more than `data.len()` when the capture cut it).
    pub orig_len: u32,
    /// The bytes captured, from the Ethernet header on.
    pub data: &'a [u8],
}

/// (interface, timestamp, original length, data) of a pcapng packet block.
type PacketParts<'a> = (u32, Option<Duration>, u32, Cow<'a, [u8]>);

enum Parser {
    Pcap(PcapParser),
    PcapNg(Box<PcapNgParser>),
}

/// A pcap or pcapng capture held in memory, read frame by frame. See the module documentation.
pub struct Capture {
    bytes: Vec<u8>,
    pos: usize,
    parser: Parser,
    number: u64,
    last_ts: Duration,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("format", &self.format())
            .field("len", &self.bytes.len())
            .field("pos", &self.pos)
            .field("frames_read", &self.number)
            .finish()
    }
}

/// A capture that cannot be read: `Error::Io` with `InvalidData` and a message that names what
/// is wrong and what to do.
fn bad(msg: String) -> Error {
    Error::Io {
        what: "reading the capture",
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, msg),
    }
}

/// `e` and its sources, joined with `: ` (the parser's messages are short and nested).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Why a link type is refused, and what to do instead.
fn not_ethernet(what: &str, link: DataLink) -> Error {
    let hint = match link {
        DataLink::LINUX_SLL | DataLink::LINUX_SLL2 => {
            " (a capture on `-i any`): capture on one interface instead, e.g. \
             `tcpdump -i eth0 -w FILE` in the pod's network namespace"
        }
        _ => ": capture on the pod's Ethernet interface (its veth) instead",
    };
    bad(format!(
        "{what} has link type {link:?} ({}), not Ethernet (1); Xylem replays Ethernet frames as \
         a pod's veth carries them{hint}",
        u32::from(link)
    ))
}

const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

impl Capture {
    /// Parses the file header of `bytes` (pcap or pcapng, told apart by their magic numbers).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Capture, Error> {
        let (parser, pos) = match bytes.get(..4) {
            None if bytes.is_empty() => {
                return Err(bad(
                    "the file is empty: a capture starts with a pcap or pcapng header (write one \
                     with `tcpdump -w FILE`)"
                        .into(),
                ));
            }
            None => {
                return Err(bad(format!(
                    "the file has only {} bytes: too short for a pcap or pcapng header",
                    bytes.len()
                )));
            }
            Some(m) if m == PCAPNG_MAGIC => Capture::pcapng_header(&bytes)?,
            Some(
                [0xa1, 0xb2, 0xc3, 0xd4]
                | [0xd4, 0xc3, 0xb2, 0xa1]
                | [0xa1, 0xb2, 0x3c, 0x4d]
                | [0x4d, 0x3c, 0xb2, 0xa1],
            ) => Capture::pcap_header(&bytes)?,
            Some([0x1f, 0x8b, ..]) => {
                return Err(bad(
                    "the file is gzip-compressed: decompress it first (`gunzip -k FILE`)".into(),
                ));
            }
            Some(m) => {
                return Err(bad(format!(
                    "not a pcap or pcapng capture: it starts with {:02x} {:02x} {:02x} {:02x}, \
                     not a pcap magic (a1 b2 c3 d4, or a1 b2 3c 4d for nanoseconds, either byte \
                     order) or the pcapng one (0a 0d 0d 0a); write captures with `tcpdump -w \
                     FILE`, not as tcpdump's text output",
                    m[0], m[1], m[2], m[3]
                )));
            }
        };
        Ok(Capture {
            bytes,
            pos,
            parser,
            number: 0,
            last_ts: Duration::ZERO,
        })
    }

    fn pcap_header(bytes: &[u8]) -> Result<(Parser, usize), Error> {
        match PcapParser::new(bytes) {
            Ok((rem, p)) => {
                let link = p.header().datalink;
                if link != DataLink::ETHERNET {
                    return Err(not_ethernet("the capture", link));
                }
                Ok((Parser::Pcap(p), bytes.len() - rem.len()))
            }
            Err(PcapParseError::IncompleteBuffer(need, got)) => Err(bad(format!(
                "the pcap file header is cut short ({got} of {need} bytes): the file is truncated"
            ))),
            Err(e) => Err(bad(format!("bad pcap file header: {}", chain(&e)))),
        }
    }

    fn pcapng_header(bytes: &[u8]) -> Result<(Parser, usize), Error> {
        match PcapNgParser::new(bytes) {
            Ok((rem, p)) => Ok((Parser::PcapNg(Box::new(p)), bytes.len() - rem.len())),
            Err(PcapNgParseError::IncompleteBuffer(need, got)) => Err(bad(format!(
                "the pcapng section header block is cut short ({got} of {need} bytes): the file \
                 is truncated"
            ))),
            Err(e) => Err(bad(format!(
                "bad pcapng section header block: {}",
                chain(&e)
            ))),
        }
    }

    /// The file's format.
    pub fn format(&self) -> CaptureFormat {
        match self.parser {
            Parser::Pcap(_) => CaptureFormat::Pcap,
            Parser::PcapNg(_) => CaptureFormat::PcapNg,
        }
    }

    /// The file's size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the file has no bytes (never true: [`Capture::from_bytes`] refuses it).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Bytes read so far (for progress).
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Frames read so far.
    pub fn frames_read(&self) -> u64 {
        self.number
    }

    /// The next frame, or `None` at the end of the file. A record that does not parse is an
    /// error naming the frame number and the byte offset; the frames before it were good.
    pub fn next_frame(&mut self) -> Result<Option<CapturedFrame<'_>>, Error> {
        loop {
            let src = &self.bytes[self.pos..];
            if src.is_empty() {
                return Ok(None);
            }
            let at = self.pos;
            let number = self.number + 1;
            let cut = |need: usize, got: usize| {
                bad(format!(
                    "frame {number} (byte {at}) is cut short: its record needs {need} bytes and \
                     the file has {got} left; the capture was truncated (copied while tcpdump was \
                     still writing, or tcpdump was killed); the {} frames before it are whole: \
                     `editcap -r FILE OUT.pcap 1-{}` keeps them",
                    number - 1,
                    number - 1
                ))
            };
            match &mut self.parser {
                Parser::Pcap(p) => {
                    let (rem, pkt) = p.next_packet(src).map_err(|e| match e {
                        PcapParseError::IncompleteBuffer(need, got) => cut(need, got),
                        e => bad(format!(
                            "frame {number} (byte {at}) has a bad record header: {}",
                            chain(&e)
                        )),
                    })?;
                    let (ts, orig_len, len) = (pkt.timestamp(), pkt.orig_len(), pkt.data().len());
                    let end = self.bytes.len() - rem.len();
                    // The packet's data is the tail of its record.
                    let data = &self.bytes[end - len..end];
                    self.pos = end;
                    self.number = number;
                    self.last_ts = ts;
                    return Ok(Some(CapturedFrame {
                        number,
                        timestamp: ts,
                        orig_len,
                        data,
                    }));
                }
                Parser::PcapNg(p) => {
                    let (rem, block) = p.next_block(src).map_err(|e| match e {
                        PcapNgParseError::IncompleteBuffer(need, got) => cut(need, got),
                        e => bad(format!(
                            "the pcapng block at byte {at} (before frame {number}) is malformed: {}",
                            chain(&e)
                        )),
                    })?;
                    let next = self.bytes.len() - rem.len();
                    let pkt: Option<PacketParts<'_>> = match block {
                        Block::EnhancedPacket(EnhancedPacketBlock {
                            interface_id,
                            timestamp,
                            original_len,
                            data,
                            ..
                        }) => Some((interface_id, Some(timestamp), original_len, data)),
                        Block::SimplePacket(b) => Some((0, None, b.original_len, b.data)),
                        Block::Packet(b) => Some((
                            u32::from(b.interface_id),
                            Some(b.timestamp),
                            b.original_len,
                            b.data,
                        )),
                        _ => None,
                    };
                    let Some((iface, ts, orig_len, data)) = pkt else {
                        self.pos = next;
                        continue;
                    };
                    let link = p.interfaces().get(iface as usize).map(|i| i.linktype);
                    match link {
                        Some(DataLink::ETHERNET) => {}
                        Some(l) => {
                            return Err(not_ethernet(
                                &format!(
                                    "frame {number} (byte {at}) is on interface {iface}, which"
                                ),
                                l,
                            ));
                        }
                        None => {
                            return Err(bad(format!(
                                "frame {number} (byte {at}) names interface {iface}, which no \
                                 interface description block before it declares: the file is \
                                 malformed"
                            )));
                        }
                    }
                    // The data of a block parsed from a slice borrows from it; find it in
                    // the file by its address (the block's bytes lie within `src`).
                    let range = match &data {
                        Cow::Borrowed(d) => {
                            let start =
                                (d.as_ptr() as usize).checked_sub(self.bytes.as_ptr() as usize);
                            start.map(|s| s..s + d.len())
                        }
                        Cow::Owned(_) => None,
                    };
                    let Some(range) = range.filter(|r| r.end <= self.bytes.len()) else {
                        return Err(bad(format!(
                            "frame {number} (byte {at}): the pcapng parser did not return the \
                             packet's bytes in place; this is a bug in Xylem, please report it \
                             with the capture"
                        )));
                    };
                    let ts = ts.unwrap_or(self.last_ts);
                    self.pos = next;
                    self.number = number;
                    self.last_ts = ts;
                    return Ok(Some(CapturedFrame {
                        number,
                        timestamp: ts,
                        orig_len,
                        data: &self.bytes[range],
                    }));
                }
            }
        }
    }
}

/// A frame descriptor of the capture backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PcapDesc {
    /// Frame index.
    pub index: u32,
    /// Packet length.
    pub len: u32,
}

/// A frame the worker transmitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentFrame {
    /// The port it left by.
    pub port: PortId,
    /// The timestamp of the captured frame being replayed when it was sent.
    pub timestamp: Duration,
    /// Its bytes, from the Ethernet header on.
    pub data: Vec<u8>,
}

/// The frame last read by [`PcapBackend::read_next`], without its bytes (see
/// [`PcapBackend::input`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    /// Its number in the file, from 1.
    pub number: u64,
    /// When it was captured, since the Unix epoch.
    pub timestamp: Duration,
    /// Bytes captured.
    pub captured_len: usize,
    /// Its length on the wire.
    pub orig_len: u32,
}

/// Why [`PcapBackend::deliver`] did not put a frame on a port's RX ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Undelivered {
    /// The capture kept only part of the frame (its snap length): the dataplane received the
    /// whole frame, so a decision on the part would be on bytes it never saw.
    CaptureTruncated {
        /// Bytes kept.
        captured: usize,
        /// Bytes on the wire.
        original: u32,
    },
    /// Longer than an AF_XDP frame holds ([`FRAME_DATA`]): it could not have reached a worker
    /// (an MTU above about 3,800 bytes, or a capture taken above GRO/TSO).
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The port's fill ring had no frame (the worker has not topped it up).
    NoFillFrame,
    /// Nothing was read, or the port does not exist.
    NoFrame,
}

impl Undelivered {
    /// A stable kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Undelivered::CaptureTruncated { .. } => "capture-truncated",
            Undelivered::TooLong { .. } => "too-long",
            Undelivered::NoFillFrame => "no-fill-frame",
            Undelivered::NoFrame => "no-frame",
        }
    }
}

#[derive(Debug)]
struct PcapPort {
    fill: VecDeque<PcapDesc>,
    rx: VecDeque<PcapDesc>,
    comp: VecDeque<PcapDesc>,
    ring_size: usize,
    received: u64,
    sent: u64,
    /// False once closed: rings of no entries.
    open: bool,
}

impl PcapPort {
    fn new(ring_size: usize) -> Self {
        PcapPort {
            fill: VecDeque::with_capacity(ring_size),
            rx: VecDeque::with_capacity(ring_size),
            comp: VecDeque::with_capacity(ring_size),
            ring_size,
            received: 0,
            sent: 0,
            open: true,
        }
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct PcapBackend {
    capture: Capture,
    mem: Vec<u8>,
    frames: Option<Vec<PcapDesc>>,
    ports: Vec<PcapPort>,
    /// The last frame read, as captured.
    input: Vec<u8>,
    info: Option<FrameInfo>,
    sent: Vec<SentFrame>,
    /// See [`Backend::max_ports`]: one ring's worth of frames per port.
    max_ports: usize,
}

impl PcapBackend {
    /// `ports` ports with rings of `ring_size` entries, sharing `frame_count` frames of
    /// [`FRAME_DATA`] bytes, fed from `capture`. As many ports may be open at once as the
    /// frames fill rings of `ring_size` ([`Backend::max_ports`]), and at least `ports`.
    pub fn new(capture: Capture, ports: usize, ring_size: usize, frame_count: u32) -> Self {
        PcapBackend {
            capture,
            mem: vec![0; frame_count as usize * FRAME_DATA],
            frames: Some(
                (0..frame_count)
                    .map(|index| PcapDesc { index, len: 0 })
                    .collect(),
            ),
            ports: (0..ports).map(|_| PcapPort::new(ring_size)).collect(),
            input: Vec::with_capacity(FRAME_DATA),
            info: None,
            sent: Vec::new(),
            max_ports: (frame_count as usize / ring_size.max(1)).max(ports),
        }
    }

    /// The capture (for its format and progress).
    pub fn capture(&self) -> &Capture {
        &self.capture
    }

    /// Kernel side: reads the next frame of the capture (its bytes: [`Self::input`]). `None`
    /// at the end of the file.
    pub fn read_next(&mut self) -> Result<Option<FrameInfo>, Error> {
        self.info = None;
        self.input.clear();
        let Some(f) = self.capture.next_frame()? else {
            return Ok(None);
        };
        self.input.extend_from_slice(f.data);
        let info = FrameInfo {
            number: f.number,
            timestamp: f.timestamp,
            captured_len: f.data.len(),
            orig_len: f.orig_len,
        };
        self.info = Some(info);
        Ok(Some(info))
    }

    /// The bytes of the frame last read, as captured.
    pub fn input(&self) -> &[u8] {
        &self.input
    }

    /// Kernel side: the frame last read arrives on `port`: it is copied into a frame from the
    /// port's fill ring and put on its RX ring, unless the real dataplane could not have
    /// received it like that (see [`Undelivered`]).
    pub fn deliver(&mut self, port: usize) -> Result<(), Undelivered> {
        let Some(info) = self.info else {
            return Err(Undelivered::NoFrame);
        };
        let len = self.input.len();
        if (len as u64) < u64::from(info.orig_len) {
            return Err(Undelivered::CaptureTruncated {
                captured: len,
                original: info.orig_len,
            });
        }
        if len > FRAME_DATA {
            return Err(Undelivered::TooLong { len });
        }
        let Some(p) = self.ports.get_mut(port) else {
            return Err(Undelivered::NoFrame);
        };
        if p.rx.len() >= p.ring_size {
            return Err(Undelivered::NoFillFrame);
        }
        let Some(mut d) = p.fill.pop_front() else {
            return Err(Undelivered::NoFillFrame);
        };
        let start = d.index as usize * FRAME_DATA;
        self.mem[start..start + len].copy_from_slice(&self.input);
        d.len = len as u32;
        p.rx.push_back(d);
        p.received += 1;
        Ok(())
    }

    /// Takes the frames transmitted since the last call, in the order they were sent.
    pub fn take_sent(&mut self) -> Vec<SentFrame> {
        std::mem::take(&mut self.sent)
    }

    /// Frames delivered to `port`'s RX ring so far.
    pub fn received(&self, port: usize) -> u64 {
        self.ports.get(port).map_or(0, |p| p.received)
    }

    /// Frames sent on `port` so far.
    pub fn sent(&self, port: usize) -> u64 {
        self.ports.get(port).map_or(0, |p| p.sent)
    }
}

impl Backend for PcapBackend {
    type Desc = PcapDesc;
    /// The new port's ring size.
    type PortSpec = usize;

    fn add_port(&mut self, ring_size: &usize) -> Result<(usize, Option<BorrowedFd<'_>>), Error> {
        let port = PcapPort::new(*ring_size);
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
        if let Some(p) = self.ports.get_mut(port) {
            *p = PcapPort {
                open: false,
                ..PcapPort::new(0)
            };
        }
    }
    fn frame_desc(&self, index: u32) -> PcapDesc {
        PcapDesc { index, len: 0 }
    }
    fn port_count(&self) -> usize {
        self.ports.len()
    }
    fn frame_count(&self) -> u32 {
        (self.mem.len() / FRAME_DATA) as u32
    }
    fn frame_index(&self, desc: &PcapDesc) -> u32 {
        desc.index
    }
    fn desc_len(&self, desc: &PcapDesc) -> usize {
        desc.len as usize
    }
    fn take_frames(&mut self) -> Vec<PcapDesc> {
        self.frames.take().unwrap_or_default()
    }
    fn fill_room(&mut self, port: usize, want: u32) -> u32 {
        let p = &self.ports[port];
        want.min((p.ring_size - p.fill.len()) as u32)
    }
    /// # Safety
    ///
    /// As [`Backend::fill`]: frames of this backend the caller holds, each once.
    unsafe fn fill(&mut self, port: usize, descs: &[PcapDesc]) -> usize {
        let p = &mut self.ports[port];
        if p.ring_size - p.fill.len() < descs.len() {
            return 0;
        }
        p.fill.extend(descs.iter().copied());
        descs.len()
    }
    fn rx(&mut self, port: usize, out: &mut [PcapDesc]) -> usize {
        let p = &mut self.ports[port];
        let n = out.len().min(p.rx.len());
        for slot in out.iter_mut().take(n) {
            // `n` is bounded by the ring's length, so the ring has an entry.
            *slot = p.rx.pop_front().unwrap_or_default();
        }
        n
    }
    /// Sends at once: the bytes are copied out, the descriptor goes to the completion ring
    /// (as many as it has room for; the rest stay the caller's, like a full TX ring).
    ///
    /// # Safety
    ///
    /// As [`Backend::tx`]: frames of this backend the caller holds, each once.
    unsafe fn tx(&mut self, port: usize, descs: &[PcapDesc]) -> usize {
        let ts = self.info.map_or(Duration::ZERO, |i| i.timestamp);
        let p = &mut self.ports[port];
        let n = descs.len().min(p.ring_size - p.comp.len());
        for d in &descs[..n] {
            let start = d.index as usize * FRAME_DATA;
            self.sent.push(SentFrame {
                port: port as PortId,
                timestamp: ts,
                data: self.mem[start..start + d.len as usize].to_vec(),
            });
            p.comp.push_back(*d);
        }
        p.sent += n as u64;
        n
    }
    fn tx_queued(&mut self, _port: usize) -> u32 {
        0
    }
    fn tx_kick(&mut self, _port: usize) {}
    fn complete(&mut self, port: usize, out: &mut [PcapDesc]) -> usize {
        let p = &mut self.ports[port];
        let n = out.len().min(p.comp.len());
        for slot in out.iter_mut().take(n) {
            *slot = p.comp.pop_front().unwrap_or_default();
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
        desc: &mut PcapDesc,
        f: impl FnOnce(&mut Frame<'_>) -> R,
    ) -> R {
        let start = desc.index as usize * FRAME_DATA;
        let buf = &mut self.mem[start..start + FRAME_DATA];
        let mut frame = Frame::new(buf, desc.len as usize);
        let r = f(&mut frame);
        desc.len = frame.len() as u32;
        r
    }
    fn raw_fds(&self) -> Vec<(usize, RawFd)> {
        Vec::new()
    }
}

/// Writes transmitted frames to a pcapng file: one interface per port (named as the caller
/// says, e.g. the endpoint's veth), each frame on its port's interface, nanosecond timestamps.
pub struct TxWriter<W: Write> {
    w: PcapNgWriter<W>,
}

impl<W: Write> std::fmt::Debug for TxWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxWriter")
            .field("interfaces", &self.w.interfaces().len())
            .finish()
    }
}

fn write_err(e: &dyn std::error::Error) -> Error {
    Error::Io {
        what: "writing the transmitted frames",
        source: std::io::Error::other(chain(e)),
    }
}

impl<W: Write> TxWriter<W> {
    /// Writes the section header and one Ethernet interface per name in `ports` (port id =
    /// index).
    pub fn new(w: W, ports: &[String]) -> Result<Self, Error> {
        let mut w = PcapNgWriter::new(w).map_err(|e| write_err(&e))?;
        for name in ports {
            let mut idb = InterfaceDescriptionBlock::new(DataLink::ETHERNET, 0);
            idb.options = vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(name.clone())),
                // Nanoseconds: 10^-9.
                InterfaceDescriptionOption::IfTsResol(
                    pcap_file::pcapng::blocks::interface_description::InterfaceTsResolution::new(
                        false, 9,
                    )
                    .map_err(|e| write_err(&e))?,
                ),
            ];
            w.write_pcapng_block(idb).map_err(|e| write_err(&e))?;
        }
        Ok(TxWriter { w })
    }

    /// Writes one frame on its port's interface.
    pub fn write(&mut self, f: &SentFrame) -> Result<(), Error> {
        let epb = EnhancedPacketBlock {
            interface_id: u32::from(f.port),
            timestamp: f.timestamp,
            original_len: f.data.len() as u32,
            data: Cow::Borrowed(&f.data),
            options: Vec::new(),
        };
        self.w.write_pcapng_block(epb).map_err(|e| write_err(&e))?;
        Ok(())
    }

    /// The writer, after the last frame.
    pub fn into_inner(self) -> W {
        self.w.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    use arc_swap::ArcSwap;
    use crossbeam::queue::ArrayQueue;
    use etherparse::PacketBuilder;
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};

    use super::*;
    use crate::slowpath::Signal;
    use crate::tables::{Gateway, MacAddr, Mode, Neighbor, Tables};
    use crate::worker::{Placement, Worker, WorkerConfig, WorkerLink};

    const GW: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const A_MAC: [u8; 6] = [2, 0, 0, 0, 0, 10];
    const B_MAC: [u8; 6] = [2, 0, 0, 0, 0, 11];
    const A: [u8; 4] = [10, 0, 0, 10];
    const B: [u8; 4] = [10, 0, 0, 11];

    fn udp(src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], ttl: u8) -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(src_mac, GW)
            .ipv4(src, dst, ttl)
            .udp(4000, 53)
            .write(&mut v, &[7; 20])
            .unwrap();
        v
    }

    /// A pcap file (microseconds, little-endian, Ethernet) of `frames`: (timestamp in µs,
    /// original length, bytes kept).
    fn pcap(frames: &[(u64, u32, &[u8])]) -> Vec<u8> {
        let header = PcapHeader {
            datalink: DataLink::ETHERNET,
            ..PcapHeader::default()
        };
        let mut w = PcapWriter::with_header(Vec::new(), header).unwrap();
        for &(us, orig, data) in frames {
            let p = PcapPacket::new(Duration::from_micros(us), orig, data).unwrap();
            w.write_packet(&p).unwrap();
        }
        w.into_inner()
    }

    fn tables() -> Tables {
        let mut t = Tables::new(
            1,
            Mode::Full,
            Gateway {
                mac: MacAddr(GW),
                ipv4: Ipv4Addr::new(10, 0, 0, 1),
            },
        );
        for (port, ip, mac) in [(0, A, A_MAC), (1, B, B_MAC)] {
            t.add_route(
                ip.into(),
                Neighbor {
                    port,
                    mac: MacAddr(mac),
                },
            )
            .unwrap();
        }
        t
    }

    fn worker(capture: Capture) -> (Worker<PcapBackend>, WorkerLink) {
        let link = WorkerLink::new(
            Arc::new(ArcSwap::from_pointee(tables())),
            Arc::new(ArrayQueue::new(16)),
            Arc::new(Signal::default()),
        );
        let cfg = WorkerConfig {
            placement: Placement::Dedicated,
            ct_capacity: 1024,
            ..WorkerConfig::default()
        };
        let w = Worker::new(cfg, PcapBackend::new(capture, 2, 8, 32), link.clone()).unwrap();
        (w, link)
    }

    fn err(bytes: Vec<u8>) -> String {
        Capture::from_bytes(bytes).unwrap_err().to_string()
    }

    #[test]
    fn the_worker_forwards_captured_frames_and_accounts_for_every_frame() {
        let fwd = udp(A_MAC, A, B, 64);
        let back = udp(B_MAC, B, A, 64);
        let no_route = udp(A_MAC, A, [10, 0, 0, 99], 64);
        let file = pcap(&[
            (1_000_000, fwd.len() as u32, &fwd),
            (1_000_500, back.len() as u32, &back),
            (1_002_000, no_route.len() as u32, &no_route),
        ]);
        let cap = Capture::from_bytes(file).unwrap();
        assert_eq!(cap.format(), CaptureFormat::Pcap);
        let (mut w, link) = worker(cap);
        // The first batch fills the fill rings.
        w.run_once(0);
        let mut sent = Vec::new();
        let mut numbers = Vec::new();
        while let Some(info) = w.backend_mut().read_next().unwrap() {
            numbers.push(info.number);
            let port = if w.backend_mut().input()[6..12] == A_MAC {
                0
            } else {
                1
            };
            w.backend_mut().deliver(port).unwrap();
            let now = (info.timestamp - Duration::from_secs(1)).as_nanos() as u64;
            // Moved: this frame, and the completion of the one sent before it.
            assert_eq!(w.run_once(now), 1 + usize::from(info.number > 1));
            sent.extend(w.backend_mut().take_sent());
        }
        assert_eq!(numbers, [1, 2, 3]);
        // Both UDP frames crossed, rewritten: gateway source MAC, the pod's destination MAC,
        // TTL one less; the one without a route was dropped.
        assert_eq!(sent.len(), 2);
        assert_eq!((sent[0].port, sent[1].port), (1, 0));
        assert_eq!(sent[0].timestamp, Duration::from_micros(1_000_000));
        assert_eq!(sent[1].timestamp, Duration::from_micros(1_000_500));
        assert_eq!(&sent[0].data[0..6], &B_MAC);
        assert_eq!(&sent[0].data[6..12], &GW);
        assert_eq!(sent[0].data[14 + 8], 63);
        assert_eq!(sent[0].data.len(), fwd.len());
        assert_eq!(&sent[1].data[0..6], &A_MAC);
        let s = link.stats.snapshot();
        assert_eq!((s.rx_packets, s.forwarded, s.tx_packets), (3, 2, 2));
        assert_eq!(s.drops["no-route"], 1);
        // The worker's per-port counters agree with what the backend delivered and sent.
        for port in 0..2 {
            assert_eq!(link.port_rx(port), w.backend_mut().received(port));
            assert_eq!(link.port_tx(port), w.backend_mut().sent(port));
        }
        // Sent frames complete and come back: every frame is free or in a fill ring again.
        w.drain(10_000_000);
        w.check_quiescent().unwrap();
        assert_eq!(w.backend_mut().deliver(0), Err(Undelivered::NoFrame));
    }

    #[test]
    fn frames_the_dataplane_could_not_have_received_are_refused() {
        let f = udp(A_MAC, A, B, 64);
        let long = vec![0u8; FRAME_DATA + 1];
        let file = pcap(&[
            (0, f.len() as u32 + 100, &f),
            (1, long.len() as u32, &long),
            (2, f.len() as u32, &f),
        ]);
        let (mut w, link) = worker(Capture::from_bytes(file).unwrap());
        let b = w.backend_mut();
        b.read_next().unwrap();
        assert_eq!(
            b.deliver(0),
            Err(Undelivered::CaptureTruncated {
                captured: f.len(),
                original: f.len() as u32 + 100
            })
        );
        b.read_next().unwrap();
        assert_eq!(
            b.deliver(0),
            Err(Undelivered::TooLong {
                len: FRAME_DATA + 1
            })
        );
        // Before the worker's first batch the fill rings are empty.
        b.read_next().unwrap();
        assert_eq!(b.deliver(0), Err(Undelivered::NoFillFrame));
        assert_eq!(b.deliver(7), Err(Undelivered::NoFrame));
        assert_eq!(b.read_next().unwrap(), None);
        w.drain(0);
        w.check_quiescent().unwrap();
        assert_eq!(link.stats.snapshot().rx_packets, 0);
    }

    #[test]
    fn pcapng_interfaces_resolutions_and_simple_packets_are_read_and_written_back() {
        let f1 = udp(A_MAC, A, B, 64);
        let f2 = udp(B_MAC, B, A, 5);
        // Written with our own writer: two interfaces, nanosecond timestamps.
        let mut w = TxWriter::new(Vec::new(), &["xyp0".into(), "xyp1".into()]).unwrap();
        let frames = [
            SentFrame {
                port: 1,
                timestamp: Duration::new(1_700_000_000, 123_456_789),
                data: f1.clone(),
            },
            SentFrame {
                port: 0,
                timestamp: Duration::new(1_700_000_001, 1),
                data: f2.clone(),
            },
        ];
        for f in &frames {
            w.write(f).unwrap();
        }
        let mut file = w.into_inner();
        // A simple packet block (no interface, no timestamp): interface 0, the previous
        // frame's time. Block type 3, total length, original length, data padded to 4.
        let pad = (4 - f1.len() % 4) % 4;
        let total = (16 + f1.len() + pad) as u32;
        file.extend_from_slice(&3u32.to_le_bytes());
        file.extend_from_slice(&total.to_le_bytes());
        file.extend_from_slice(&(f1.len() as u32).to_le_bytes());
        file.extend_from_slice(&f1);
        file.extend(std::iter::repeat_n(0, pad));
        file.extend_from_slice(&total.to_le_bytes());

        let mut cap = Capture::from_bytes(file.clone()).unwrap();
        assert_eq!(cap.format(), CaptureFormat::PcapNg);
        let a = cap.next_frame().unwrap().unwrap();
        assert_eq!(
            (a.number, a.timestamp, a.data),
            (1, frames[0].timestamp, &f1[..])
        );
        let b = cap.next_frame().unwrap().unwrap();
        assert_eq!(
            (b.number, b.timestamp, b.data),
            (2, frames[1].timestamp, &f2[..])
        );
        let c = cap.next_frame().unwrap().unwrap();
        assert_eq!(
            (c.number, c.timestamp, c.data),
            (3, frames[1].timestamp, &f1[..])
        );
        assert_eq!(c.orig_len, f1.len() as u32);
        assert!(cap.next_frame().unwrap().is_none());
        assert_eq!(cap.position(), file.len());
    }

    #[test]
    fn a_non_ethernet_interface_is_refused_naming_the_frame_and_the_fix() {
        // A pcapng file whose second interface is Linux cooked capture (`tcpdump -i any`).
        let mut w = PcapNgWriter::new(Vec::new()).unwrap();
        w.write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::ETHERNET, 0))
            .unwrap();
        w.write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::LINUX_SLL, 0))
            .unwrap();
        let f = udp(A_MAC, A, B, 64);
        for iface in [0, 1] {
            w.write_pcapng_block(EnhancedPacketBlock {
                interface_id: iface,
                timestamp: Duration::from_secs(1),
                original_len: f.len() as u32,
                data: Cow::Borrowed(&f),
                options: vec![],
            })
            .unwrap();
        }
        let mut cap = Capture::from_bytes(w.into_inner()).unwrap();
        assert!(cap.next_frame().unwrap().is_some());
        let e = cap.next_frame().unwrap_err().to_string();
        assert!(e.contains("frame 2"), "{e}");
        assert!(e.contains("interface 1"), "{e}");
        assert!(e.contains("LINUX_SLL (113), not Ethernet (1)"), "{e}");
        assert!(e.contains("-i any"), "{e}");

        // The same in a pcap file header.
        let mut file = pcap(&[]);
        file[20..24].copy_from_slice(&276u32.to_le_bytes());
        let e = err(file);
        assert!(e.contains("LINUX_SLL2 (276)"), "{e}");
    }

    #[test]
    fn bad_files_are_errors_that_say_what_to_do() {
        let e = err(Vec::new());
        assert!(e.contains("the file is empty"), "{e}");
        let e = err(b"12:00:01.000 IP 10.0.0.1 > 10.0.0.2: ICMP echo request".to_vec());
        assert!(e.contains("not a pcap or pcapng capture"), "{e}");
        assert!(e.contains("31 32 3a 30"), "{e}");
        let e = err(vec![0x1f, 0x8b, 8, 0, 0]);
        assert!(e.contains("gzip"), "{e}");
        let e = err(pcap(&[])[..10].to_vec());
        assert!(e.contains("header is cut short (10 of 24 bytes)"), "{e}");

        // A record cut short: the frames before it are read, then the error names the frame.
        let f = udp(A_MAC, A, B, 64);
        let whole = pcap(&[(0, f.len() as u32, &f), (1, f.len() as u32, &f)]);
        let mut cap = Capture::from_bytes(whole[..whole.len() - 5].to_vec()).unwrap();
        assert_eq!(cap.next_frame().unwrap().unwrap().number, 1);
        let e = cap.next_frame().unwrap_err().to_string();
        assert!(e.contains("frame 2 (byte"), "{e}");
        assert!(e.contains("cut short"), "{e}");
        assert!(e.contains("the 1 frames before it are whole"), "{e}");

        // A record that claims more than the snap length.
        let mut bad = pcap(&[(0, f.len() as u32, &f)]);
        bad[24 + 8..24 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut cap = Capture::from_bytes(bad).unwrap();
        let e = cap.next_frame().unwrap_err().to_string();
        assert!(e.contains("frame 1 (byte 24)"), "{e}");

        // Arbitrary bytes after a valid pcapng header never panic.
        let mut w = PcapNgWriter::new(Vec::new()).unwrap();
        w.write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::ETHERNET, 0))
            .unwrap();
        let head = w.into_inner();
        for tail in [
            &[0xffu8; 3][..],
            &[6, 0, 0, 0, 12, 0, 0, 0, 12, 0, 0, 0],
            &[0; 40],
        ] {
            let mut file = head.clone();
            file.extend_from_slice(tail);
            let mut cap = Capture::from_bytes(file).unwrap();
            assert!(cap.next_frame().is_err(), "{tail:?}");
        }
    }
}

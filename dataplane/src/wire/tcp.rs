//! TCP headers (RFC 9293): the fields the dataplane reads (ports, flags, sequence numbers,
//! checksum), and the one segment it builds, a reset ([`ResetRepr`]).

use super::be16;
use crate::checksum;
use crate::wire::ip::proto;

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const CHECKSUM: usize = 16;
}

/// Length of a header without options.
pub const MIN_HEADER_LEN: usize = 20;
/// Offset of the checksum field in the header.
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM;

/// TCP flag bits as they appear in byte 13 of the header.
pub mod flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// A view of a TCP segment (the IP payload).
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view of untrusted bytes: `None` unless the segment holds a header whose data offset is
    /// at least 5 and within the segment. (A segment that fails is still forwarded by the
    /// pipeline, as the kernel would route it: only its flags and checksum are not read.)
    #[inline(always)]
    pub fn new_checked(buf: T) -> Option<Self> {
        let b = buf.as_ref();
        let h = b.first_chunk::<MIN_HEADER_LEN>()?;
        let off = usize::from(h[field::DATA_OFFSET] >> 4) * 4;
        (off >= MIN_HEADER_LEN && off <= b.len()).then_some(Self { buf })
    }

    /// The source port.
    #[inline(always)]
    pub fn src_port(&self) -> u16 {
        be16(self.buf.as_ref(), field::SRC_PORT)
    }

    /// The destination port.
    #[inline(always)]
    pub fn dst_port(&self) -> u16 {
        be16(self.buf.as_ref(), field::DST_PORT)
    }

    /// The FIN, SYN, RST, PSH, ACK, URG, ECE and CWR bits (see [`flags`]).
    #[inline(always)]
    pub fn flags(&self) -> u8 {
        self.buf.as_ref()[field::FLAGS]
    }

    /// The checksum field.
    #[inline(always)]
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), field::CHECKSUM)
    }

    /// The sequence number.
    #[inline]
    pub fn seq(&self) -> u32 {
        be32(self.buf.as_ref(), field::SEQ)
    }

    /// The acknowledgment number.
    #[inline]
    pub fn ack(&self) -> u32 {
        be32(self.buf.as_ref(), field::ACK)
    }

    /// The length of the header, options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buf.as_ref()[field::DATA_OFFSET] >> 4) * 4
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A TCP reset answering a segment, as RFC 9293 §3.10.7.1 has a closed port answer it: if the
/// segment carried an ACK, the reset's sequence number is that acknowledgment; otherwise the
/// reset has sequence 0 and acknowledges everything the segment occupied (its data, plus one
/// for a SYN and one for a FIN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetRepr {
    /// The reset's source port (the segment's destination port).
    pub src_port: u16,
    /// The reset's destination port (the segment's source port).
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number, with the ACK flag; `None` for a bare RST.
    pub ack: Option<u32>,
}

impl ResetRepr {
    /// The reset for `segment` (a TCP header and its data, `len` bytes of it in all).
    pub fn answering<T: AsRef<[u8]>>(segment: &Packet<T>, len: usize) -> Self {
        let f = segment.flags();
        let (seq, ack) = if f & flags::ACK != 0 {
            (segment.ack(), None)
        } else {
            let data = len.saturating_sub(segment.header_len()) as u32;
            let occupied = data + u32::from(f & flags::SYN != 0) + u32::from(f & flags::FIN != 0);
            (0, Some(segment.seq().wrapping_add(occupied)))
        };
        ResetRepr {
            src_port: segment.dst_port(),
            dst_port: segment.src_port(),
            seq,
            ack,
        }
    }

    /// Writes the 20-byte reset, checksummed for the addresses `src` → `dst`.
    pub fn emit(&self, buf: &mut [u8; MIN_HEADER_LEN], src: [u8; 4], dst: [u8; 4]) {
        *buf = [0; MIN_HEADER_LEN];
        buf[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        buf[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        buf[4..8].copy_from_slice(&self.seq.to_be_bytes());
        buf[field::DATA_OFFSET] = (MIN_HEADER_LEN as u8 / 4) << 4;
        buf[field::FLAGS] = flags::RST;
        if let Some(a) = self.ack {
            buf[8..12].copy_from_slice(&a.to_be_bytes());
            buf[field::FLAGS] |= flags::ACK;
        }
        let sum = checksum::ipv4_pseudo_header(src, dst, proto::TCP, MIN_HEADER_LEN as u16)
            .add_bytes(buf)
            .checksum();
        buf[field::CHECKSUM..field::CHECKSUM + 2].copy_from_slice(&sum.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::TcpHeader;

    #[test]
    fn reads_what_etherparse_writes_and_rejects_bad_offsets() {
        let mut h = TcpHeader::new(40000, 80, 7, 1024);
        h.syn = true;
        h.ack = true;
        h.checksum = 0xbeef;
        let mut b = h.to_bytes().to_vec();
        b.extend_from_slice(b"data");
        let t = Packet::new_checked(&b[..]).unwrap();
        assert_eq!((t.src_port(), t.dst_port()), (40000, 80));
        assert_eq!(
            t.flags() & (flags::SYN | flags::ACK),
            flags::SYN | flags::ACK
        );
        assert_eq!(t.checksum(), 0xbeef);
        for off in [0u8, 4, 7] {
            let mut bad = b.clone();
            bad[12] = off << 4;
            assert!(Packet::new_checked(&bad[..]).is_none(), "{off}");
        }
        assert!(Packet::new_checked(&b[..19]).is_none());
    }

    #[test]
    fn a_reset_answers_as_rfc_9293_says_and_verifies_with_etherparse() {
        let (src, dst) = ([10, 96, 0, 10], [10, 200, 0, 11]);
        let mut syn = TcpHeader::new(40000, 80, 1000, 1024);
        syn.syn = true;
        let b = syn.to_bytes().to_vec();
        let r = ResetRepr::answering(&Packet::new_checked(&b[..]).unwrap(), b.len());
        assert_eq!(
            r,
            ResetRepr {
                src_port: 80,
                dst_port: 40000,
                seq: 0,
                ack: Some(1001)
            }
        );
        let mut data = TcpHeader::new(40000, 80, 1000, 1024);
        data.ack = true;
        data.acknowledgment_number = 77;
        let mut b = data.to_bytes().to_vec();
        b.extend_from_slice(b"hello");
        let r = ResetRepr::answering(&Packet::new_checked(&b[..]).unwrap(), b.len());
        assert_eq!((r.seq, r.ack), (77, None));

        let mut out = [0u8; MIN_HEADER_LEN];
        ResetRepr {
            ack: Some(1001),
            ..r
        }
        .emit(&mut out, src, dst);
        let (h, _) = TcpHeader::from_slice(&out).unwrap();
        assert!(h.rst && h.ack && !h.syn);
        assert_eq!((h.source_port, h.destination_port), (80, 40000));
        assert_eq!(h.calc_checksum_ipv4_raw(src, dst, &[]).unwrap(), h.checksum);
    }
}

//! TCP headers (RFC 9293): the fields the dataplane reads (ports, flags, checksum).

use super::be16;

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
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
}

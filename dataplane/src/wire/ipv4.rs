//! IPv4 headers (RFC 791). Options are carried, not interpreted.

use super::ip::Protocol;
use super::{DropReason, Field, addr, be16, put16};
use crate::checksum;

mod field {
    use super::Field;
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const TOTAL_LEN: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLAGS_FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: Field = 12..16;
    pub const DST: Field = 16..20;
}

/// Length of a header without options (IHL 5).
pub const MIN_HEADER_LEN: usize = 20;
/// Length of a header with the most options (IHL 15).
pub const MAX_HEADER_LEN: usize = 60;

/// A view of an IPv4 packet. After [`Packet::new_checked`], `header_len() <= total_len() <=
/// buffer length`, so every accessor, [`Packet::payload`] included, is in bounds. Bytes after
/// the total length (Ethernet padding) belong to no accessor.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view without checks, for a buffer the caller sized and filled.
    #[inline(always)]
    pub fn new_unchecked(buf: T) -> Self {
        Self { buf }
    }

    /// A view of untrusted bytes. Checks, in this order: 20 bytes present
    /// (`ipv4-truncated`), version 4 (`ipv4-bad-version`), IHL at least 5 and within the buffer
    /// (`ipv4-bad-ihl`), total length at least the header and within the buffer
    /// (`ipv4-bad-total-length`). It does not verify the header checksum: see
    /// [`Packet::verify_checksum`].
    #[inline(always)]
    pub fn new_checked(buf: T) -> Result<Self, DropReason> {
        let b = buf.as_ref();
        let Some(h) = b.first_chunk::<MIN_HEADER_LEN>() else {
            return Err(DropReason::Ipv4Truncated);
        };
        if h[field::VER_IHL] >> 4 != 4 {
            return Err(DropReason::Ipv4BadVersion);
        }
        let header_len = usize::from(h[field::VER_IHL] & 0x0f) * 4;
        if header_len < MIN_HEADER_LEN || header_len > b.len() {
            return Err(DropReason::Ipv4BadIhl);
        }
        let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
        if total < header_len || total > b.len() {
            return Err(DropReason::Ipv4BadTotalLength);
        }
        Ok(Self { buf })
    }

    /// A view of a header quoted by an ICMP error, whose packet was cut short: the same checks
    /// as [`Packet::new_checked`] but the total length's, which describes the original packet.
    /// [`Packet::payload`] is then what follows the header, up to the total length or the end
    /// of the buffer, whichever comes first.
    #[inline(always)]
    pub fn new_checked_header(buf: T) -> Result<Self, DropReason> {
        let b = buf.as_ref();
        let Some(&vihl) = b.first() else {
            return Err(DropReason::Ipv4Truncated);
        };
        if b.len() < MIN_HEADER_LEN {
            return Err(DropReason::Ipv4Truncated);
        }
        if vihl >> 4 != 4 {
            return Err(DropReason::Ipv4BadVersion);
        }
        let header_len = usize::from(vihl & 0x0f) * 4;
        if header_len < MIN_HEADER_LEN || header_len > b.len() {
            return Err(DropReason::Ipv4BadIhl);
        }
        Ok(Self { buf })
    }

    /// The header length in bytes (20..=60).
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        usize::from(self.buf.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// The total length field.
    #[inline(always)]
    pub fn total_len(&self) -> u16 {
        be16(self.buf.as_ref(), field::TOTAL_LEN)
    }

    /// Total length minus header length.
    #[inline(always)]
    pub fn payload_len(&self) -> u16 {
        // Cannot underflow after `new_checked`; saturating keeps `new_unchecked` views sane.
        self.total_len().saturating_sub(self.header_len() as u16)
    }

    /// DSCP and ECN.
    #[inline(always)]
    pub fn tos(&self) -> u8 {
        self.buf.as_ref()[field::TOS]
    }

    /// The identification field.
    #[inline(always)]
    pub fn ident(&self) -> u16 {
        be16(self.buf.as_ref(), field::IDENT)
    }

    /// The "more fragments" flag.
    #[inline(always)]
    pub fn more_fragments(&self) -> bool {
        self.buf.as_ref()[field::FLAGS_FRAG] & 0x20 != 0
    }

    /// The fragment offset in 8-byte units.
    #[inline(always)]
    pub fn frag_offset(&self) -> u16 {
        be16(self.buf.as_ref(), field::FLAGS_FRAG) & 0x1fff
    }

    /// A fragment (first or later) rather than a whole datagram.
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        self.more_fragments() || self.frag_offset() != 0
    }

    /// The time to live.
    #[inline(always)]
    pub fn ttl(&self) -> u8 {
        self.buf.as_ref()[field::TTL]
    }

    /// The payload's protocol.
    #[inline(always)]
    pub fn protocol(&self) -> Protocol {
        Protocol(self.buf.as_ref()[field::PROTOCOL])
    }

    /// The header checksum field.
    #[inline(always)]
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), field::CHECKSUM)
    }

    /// The source address.
    #[inline(always)]
    pub fn src(&self) -> [u8; 4] {
        addr(self.buf.as_ref(), field::SRC)
    }

    /// The destination address.
    #[inline(always)]
    pub fn dst(&self) -> [u8; 4] {
        addr(self.buf.as_ref(), field::DST)
    }

    /// Whether the header checksum verifies.
    #[inline(always)]
    pub fn verify_checksum(&self) -> bool {
        checksum::verify(self.header())
    }

    /// The header, options included.
    #[inline(always)]
    pub fn header(&self) -> &[u8] {
        &self.buf.as_ref()[..self.header_len()]
    }

    /// The payload: from the end of the header to the total length (or, for a view made by
    /// [`Packet::new_checked_header`], to the end of the buffer if that comes first).
    #[inline(always)]
    pub fn payload(&self) -> &[u8] {
        let b = self.buf.as_ref();
        let end = usize::from(self.total_len()).min(b.len());
        b.get(self.header_len()..end).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the time to live, and updates the header checksum incrementally (RFC 1624).
    #[inline(always)]
    pub fn set_ttl_and_update_checksum(&mut self, ttl: u8) {
        // TTL is the high byte of the 16-bit word TTL|protocol covered by the checksum.
        let proto = self.protocol().0;
        let old = u16::from_be_bytes([self.ttl(), proto]);
        let new = u16::from_be_bytes([ttl, proto]);
        let c = checksum::update_u16(self.checksum(), old, new);
        let b = self.buf.as_mut();
        b[field::TTL] = ttl;
        put16(b, field::CHECKSUM, c);
    }
}

/// An IPv4 header without options, for the packets the dataplane builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
    /// Payload protocol.
    pub protocol: Protocol,
    /// Payload length in bytes.
    pub payload_len: u16,
    /// Time to live.
    pub ttl: u8,
    /// DSCP and ECN.
    pub tos: u8,
}

impl Repr {
    /// The header's length: [`MIN_HEADER_LEN`].
    pub const fn header_len(&self) -> usize {
        MIN_HEADER_LEN
    }

    /// Writes the header (identification 0, no flags, checksum filled) into the first
    /// [`MIN_HEADER_LEN`] bytes of `buf`.
    #[inline(always)]
    pub fn emit(&self, buf: &mut [u8; MIN_HEADER_LEN]) {
        *buf = [0; MIN_HEADER_LEN];
        buf[field::VER_IHL] = 0x45;
        buf[field::TOS] = self.tos;
        let total = self.payload_len.saturating_add(MIN_HEADER_LEN as u16);
        put16(buf, field::TOTAL_LEN, total);
        buf[field::TTL] = self.ttl;
        buf[field::PROTOCOL] = self.protocol.0;
        buf[field::SRC].copy_from_slice(&self.src);
        buf[field::DST].copy_from_slice(&self.dst);
        let c = checksum::checksum(buf);
        put16(buf, field::CHECKSUM, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{IpNumber, Ipv4Header};

    fn packet(payload: &[u8], options: usize) -> Vec<u8> {
        let mut h = Ipv4Header::new(
            payload.len() as u16,
            33,
            IpNumber::UDP,
            [10, 0, 0, 1],
            [10, 0, 0, 2],
        )
        .unwrap();
        h.options = vec![1u8; options][..].try_into().unwrap();
        h.total_len = (h.header_len() + payload.len()) as u16;
        h.header_checksum = h.calc_header_checksum();
        let mut b = h.to_bytes().to_vec();
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn reads_what_etherparse_writes() {
        for options in [0, 4, 40] {
            let b = packet(b"hello", options);
            let p = Packet::new_checked(&b[..]).unwrap();
            assert!(p.verify_checksum());
            assert_eq!(p.header_len(), 20 + options);
            assert_eq!(p.payload(), b"hello");
            assert_eq!(p.payload_len(), 5);
            assert_eq!((p.ttl(), p.protocol()), (33, Protocol::UDP));
            assert_eq!((p.src(), p.dst()), ([10, 0, 0, 1], [10, 0, 0, 2]));
            assert!(!p.is_fragment());
        }
    }

    #[test]
    fn each_defect_has_its_reason() {
        let good = packet(b"x", 0);
        let cases: [(&str, Vec<u8>, DropReason); 6] = [
            ("short", good[..19].to_vec(), DropReason::Ipv4Truncated),
            (
                "v6",
                {
                    let mut b = good.clone();
                    b[0] = 0x65;
                    b
                },
                DropReason::Ipv4BadVersion,
            ),
            (
                "ihl 4",
                {
                    let mut b = good.clone();
                    b[0] = 0x44;
                    b
                },
                DropReason::Ipv4BadIhl,
            ),
            (
                "ihl 6",
                {
                    let mut b = good.clone();
                    b[0] = 0x46;
                    b
                },
                DropReason::Ipv4BadIhl,
            ),
            (
                "total 19",
                {
                    let mut b = good.clone();
                    b[3] = 19;
                    b
                },
                DropReason::Ipv4BadTotalLength,
            ),
            (
                "total 22",
                {
                    let mut b = good.clone();
                    b[3] = 22;
                    b
                },
                DropReason::Ipv4BadTotalLength,
            ),
        ];
        for (name, b, want) in cases {
            assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), want, "{name}");
        }
        let mut b = good.clone();
        b[8] ^= 1;
        assert!(!Packet::new_checked(&b[..]).unwrap().verify_checksum());
    }

    #[test]
    fn ttl_update_keeps_the_checksum_valid_and_repr_matches_etherparse() {
        let mut b = packet(b"abc", 4);
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        p.set_ttl_and_update_checksum(32);
        assert!(p.verify_checksum());
        let r = Repr {
            src: [1, 2, 3, 4],
            dst: [5, 6, 7, 8],
            protocol: Protocol::ICMP,
            payload_len: 36,
            ttl: 64,
            tos: 0xc0,
        };
        let mut h = [0u8; MIN_HEADER_LEN];
        r.emit(&mut h);
        let e = Ipv4Header::from_slice(&h).unwrap().0;
        assert_eq!(e.header_checksum, e.calc_header_checksum());
        assert_eq!(
            (e.total_len, e.time_to_live, e.source),
            (56, 64, [1, 2, 3, 4])
        );
    }
}

//! ICMP for IPv4 (RFC 792): what the pipeline reads of any ICMP message, and the error messages
//! it builds ([`ErrorRepr`]).
//!
//! Reads are deliberately byte-wise rather than through an 8-byte header view: the type byte
//! decides whether an expired packet may be answered (RFC 1122 §3.2.2) even when the message is
//! shorter than a header, and the echo identifier needs 6 bytes, not 8.

use super::be16;
use crate::checksum;

/// Length of the ICMP header (type, code, checksum, 4 bytes of rest-of-header).
pub const HEADER_LEN: usize = 8;
/// How many payload bytes of the offending datagram an ICMP error quotes after its IP header.
pub const QUOTED_PAYLOAD: usize = 8;

/// Type: echo reply.
pub const ECHO_REPLY: u8 = 0;
/// Type: destination unreachable.
pub const DEST_UNREACHABLE: u8 = 3;
/// Type: echo request.
pub const ECHO_REQUEST: u8 = 8;
/// Type: time exceeded.
pub const TIME_EXCEEDED: u8 = 11;

/// Whether an ICMP type is an error message (destination unreachable, source quench,
/// redirect, time exceeded, parameter problem), about which no ICMP error may be sent
/// (RFC 1122 §3.2.2), and which quotes the packet it is about.
#[inline]
pub fn is_error(icmp_type: u8) -> bool {
    matches!(icmp_type, 3 | 4 | 5 | 11 | 12)
}

/// The type of the message `msg` (the IP payload), if it has a byte.
#[inline]
pub fn msg_type(msg: &[u8]) -> Option<u8> {
    msg.first().copied()
}

/// The identifier of an echo request or reply, if `msg` is one and is long enough to carry it.
#[inline]
pub fn echo_ident(msg: &[u8]) -> Option<u16> {
    match (msg.first(), msg.get(4..6)) {
        (Some(&(ECHO_REPLY | ECHO_REQUEST)), Some(_)) => Some(be16(msg, 4)),
        _ => None,
    }
}

/// What an error message quotes: the bytes after its header (the offending IP header and the
/// first bytes of its payload), if `msg` is an error message.
#[inline]
pub fn error_quote(msg: &[u8]) -> Option<&[u8]> {
    match msg.first() {
        Some(&t) if is_error(t) => msg.get(HEADER_LEN..),
        _ => None,
    }
}

/// An ICMP error message the dataplane sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Time exceeded in transit (type 11, code 0).
    TtlExceeded,
    /// Destination unreachable, port unreachable (type 3, code 3): what a host answers a UDP
    /// datagram to a port nobody listens on, and what a service with no backend answers.
    PortUnreachable,
    /// Destination unreachable, fragmentation needed and DF set (type 3, code 4), with the
    /// next hop's MTU (RFC 1191): path MTU discovery's answer to a packet too big to pass.
    FragmentationNeeded {
        /// The largest packet that passes.
        mtu: u16,
    },
}

impl ErrorKind {
    fn type_code(self) -> (u8, u8) {
        match self {
            ErrorKind::TtlExceeded => (TIME_EXCEEDED, 0),
            ErrorKind::PortUnreachable => (DEST_UNREACHABLE, 3),
            ErrorKind::FragmentationNeeded { .. } => (DEST_UNREACHABLE, 4),
        }
    }

    /// The header's last four bytes: unused, or RFC 1191's next-hop MTU.
    fn rest(self) -> [u8; 4] {
        match self {
            ErrorKind::FragmentationNeeded { mtu } => {
                let m = mtu.to_be_bytes();
                [0, 0, m[0], m[1]]
            }
            _ => [0; 4],
        }
    }
}

/// An ICMP error message: its kind and the quote of the packet it is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorRepr<'q> {
    /// Which error.
    pub kind: ErrorKind,
    /// The offending packet's IP header and the first [`QUOTED_PAYLOAD`] bytes of its payload.
    pub quote: &'q [u8],
}

impl ErrorRepr<'_> {
    /// The message's length: header plus quote.
    #[inline]
    pub fn len(&self) -> usize {
        HEADER_LEN + self.quote.len()
    }

    /// Whether the message is empty (never: it has a header).
    #[inline]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes the message, checksum included, into the first [`Self::len`] bytes of `buf`.
    /// `None` (and nothing written) if `buf` is shorter.
    #[inline]
    pub fn emit(&self, buf: &mut [u8]) -> Option<()> {
        let (h, rest) = buf.split_first_chunk_mut::<HEADER_LEN>()?;
        let q = rest.get_mut(..self.quote.len())?;
        let (t, c) = self.kind.type_code();
        let r = self.kind.rest();
        *h = [t, c, 0, 0, r[0], r[1], r[2], r[3]];
        q.copy_from_slice(self.quote);
        let sum = checksum::Sum::new().add_bytes(h).add_bytes(q).checksum();
        h[2..4].copy_from_slice(&sum.to_be_bytes());
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{Icmpv4Slice, Icmpv4Type};

    #[test]
    fn partial_reads() {
        assert_eq!(msg_type(&[]), None);
        assert_eq!(echo_ident(&[8, 0, 0, 0, 0x12, 0x34]), Some(0x1234));
        assert_eq!(echo_ident(&[8, 0, 0, 0, 0x12]), None);
        assert_eq!(echo_ident(&[3, 0, 0, 0, 0x12, 0x34]), None);
        assert_eq!(
            error_quote(&[11, 0, 0, 0, 0, 0, 0, 0, 0x45]),
            Some(&[0x45][..])
        );
        assert_eq!(error_quote(&[8, 0, 0, 0, 0, 0, 0, 0, 0x45]), None);
        assert!(is_error(11) && !is_error(8) && !is_error(0));
    }

    #[test]
    fn time_exceeded_verifies_with_etherparse() {
        let quote = [0x45u8; 28];
        let r = ErrorRepr {
            kind: ErrorKind::TtlExceeded,
            quote: &quote,
        };
        let mut b = vec![0u8; r.len()];
        r.emit(&mut b).unwrap();
        let s = Icmpv4Slice::from_slice(&b).unwrap();
        assert!(matches!(s.icmp_type(), Icmpv4Type::TimeExceeded(_)));
        assert_eq!(s.checksum(), s.icmp_type().calc_checksum(s.payload()));
        assert!(r.emit(&mut [0u8; 10]).is_none());
    }
}

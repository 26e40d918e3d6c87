//! Wire-format constants and in-place field writers for the headers the pipeline rewrites.
//!
//! Reading is etherparse's job: the pipeline parses every header it looks at with etherparse
//! 0.21 slices (see `pipeline`'s module doc), which are read-only views. What is left here is
//! what they cannot do: *write* fields in place (MAC rewrite, TTL and checksum updates, the ICMP
//! time exceeded built in the received buffer). The offsets below are those writes' offsets. Two
//! reads stay outside etherparse, for reasons given there: the IPv4 header checksum sum
//! (`crate::checksum`) and the ICMP type byte ([`icmpv4::is_error`]).
//!
//! The pipeline takes a fixed-size array view of a header with `split_first_chunk_mut` (that is
//! the one bounds check) and writes through [`put`] and [`put_be16`], whose offsets are const
//! generics checked against the array length *at compile time*: after the view is taken, no
//! writer can panic. [`put_be16_at`] is for a runtime offset (the L4 checksum, after IPv4
//! options) and fails without writing when the field does not fit.

/// Ethernet II header layout.
pub mod eth {
    /// Length of an untagged Ethernet II header.
    pub const HEADER_LEN: usize = 14;
    /// Offset of the destination MAC.
    pub const DST: usize = 0;
    /// Offset of the source MAC.
    pub const SRC: usize = 6;
    /// Offset of the EtherType.
    pub const ETHERTYPE: usize = 12;
}

/// IPv4 header layout (RFC 791).
pub mod ipv4 {
    /// Length of a header without options (IHL 5).
    pub const MIN_HEADER_LEN: usize = 20;
    /// Length of a header with the most options (IHL 15).
    pub const MAX_HEADER_LEN: usize = 60;
    /// Offset of version (high nibble) and IHL (low nibble).
    pub const VER_IHL: usize = 0;
    /// Offset of DSCP/ECN.
    pub const TOS: usize = 1;
    /// Offset of the total length.
    pub const TOTAL_LEN: usize = 2;
    /// Offset of the TTL (the high byte of the 16-bit word TTL|protocol).
    pub const TTL: usize = 8;
    /// Offset of the protocol.
    pub const PROTOCOL: usize = 9;
    /// Offset of the header checksum.
    pub const CHECKSUM: usize = 10;
    /// Offset of the source address.
    pub const SRC: usize = 12;
    /// Offset of the destination address.
    pub const DST: usize = 16;
}

/// ICMPv4 (RFC 792).
pub mod icmpv4 {
    /// Length of the ICMP header (type, code, checksum, 4 bytes of rest-of-header).
    pub const HEADER_LEN: usize = 8;
    /// Type: time exceeded.
    pub const TIME_EXCEEDED: u8 = 11;
    /// How many payload bytes of the offending datagram an ICMP error quotes after its header.
    pub const QUOTED_PAYLOAD: usize = 8;

    /// Whether an ICMP type is an error message (destination unreachable, source quench,
    /// redirect, time exceeded, parameter problem), about which no ICMP error may be sent
    /// (RFC 1122 §3.2.2).
    #[inline]
    pub fn is_error(icmp_type: u8) -> bool {
        matches!(icmp_type, 3 | 4 | 5 | 11 | 12)
    }
}

/// TCP header layout.
pub mod tcp {
    /// Offset of the checksum.
    pub const CHECKSUM: usize = 16;
}

/// UDP header layout.
pub mod udp {
    /// Offset of the checksum.
    pub const CHECKSUM: usize = 6;
}

/// Writes `v` at offset `AT`. Out-of-range offsets fail to compile.
#[inline(always)]
pub fn put<const AT: usize, const L: usize, const N: usize>(b: &mut [u8; N], v: [u8; L]) {
    const { assert!(AT + L <= N, "field beyond the header view") };
    b[AT..AT + L].copy_from_slice(&v);
}

/// Writes the big-endian `u16` `v` at offset `AT`. Out-of-range offsets fail to compile.
#[inline(always)]
pub fn put_be16<const AT: usize, const N: usize>(b: &mut [u8; N], v: u16) {
    put::<AT, 2, N>(b, v.to_be_bytes());
}

/// Writes a big-endian `u16` at a runtime offset of a slice; `false` (and no write) if it does
/// not fit.
#[inline(always)]
pub fn put_be16_at(b: &mut [u8], at: usize, v: u16) -> bool {
    match at.checked_add(2).and_then(|end| b.get_mut(at..end)) {
        Some(w) => {
            w.copy_from_slice(&v.to_be_bytes());
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accessors() {
        let mut b = [0u8; 6];
        put_be16::<2, _>(&mut b, 0xabcd);
        assert_eq!(b, [0, 0, 0xab, 0xcd, 0, 0]);
        put::<4, 2, _>(&mut b, [1, 2]);
        assert_eq!(b, [0, 0, 0xab, 0xcd, 1, 2]);
        assert!(put_be16_at(&mut b, 0, 0x0a0b));
        assert!(!put_be16_at(&mut b, 5, 0));
        assert!(!put_be16_at(&mut b, usize::MAX, 0));
        assert_eq!(b, [0x0a, 0x0b, 0xab, 0xcd, 1, 2]);
        assert!(icmpv4::is_error(11) && !icmpv4::is_error(8) && !icmpv4::is_error(0));
    }
}

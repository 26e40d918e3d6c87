//! Wire-format constants and zero-copy field accessors for the few headers the pipeline reads.
//!
//! The pipeline first takes a fixed-size array view of a header with `<[u8]>::first_chunk` or
//! `split_first_chunk_mut` (that is the one bounds check, and it can fail: a malformed frame is a
//! counted drop). Fields are then read and written through [`get`], [`be16`], [`put`] and
//! [`put_be16`], whose offsets are const generics checked against the array length *at compile
//! time*: after the view is taken, no accessor can panic. Variable-offset parts (the L4 header
//! after IPv4 options, the ICMP quote) use `get`/`get_mut` on slices instead.
//!
//! etherparse is the oracle in tests; the hot path reads fixed offsets because it needs only a
//! handful of fields and must tell apart the exact reason a header is bad.

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

/// EtherType values.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
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
    /// Offset of the identification.
    pub const IDENT: usize = 4;
    /// Offset of flags (3 high bits) and fragment offset (13 low bits).
    pub const FLAGS_FRAG: usize = 6;
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
    /// The More Fragments flag in the flags/fragment word.
    pub const MORE_FRAGMENTS: u16 = 0x2000;
    /// The fragment offset mask in the flags/fragment word.
    pub const FRAG_OFFSET_MASK: u16 = 0x1fff;
}

/// IP protocol numbers.
pub mod ip_proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
}

/// ARP for Ethernet/IPv4 (RFC 826).
pub mod arp {
    /// Length of an Ethernet/IPv4 ARP packet.
    pub const LEN: usize = 28;
    /// Offset of the hardware type (1 = Ethernet).
    pub const HTYPE: usize = 0;
    /// Offset of the protocol type (0x0800 = IPv4).
    pub const PTYPE: usize = 2;
    /// Offset of the hardware address length (6).
    pub const HLEN: usize = 4;
    /// Offset of the protocol address length (4).
    pub const PLEN: usize = 5;
    /// Offset of the operation (1 request, 2 reply).
    pub const OPER: usize = 6;
    /// Offset of the target protocol address.
    pub const TPA: usize = 24;
    /// Hardware type Ethernet.
    pub const HTYPE_ETHERNET: u16 = 1;
    /// Operation: request.
    pub const OP_REQUEST: u16 = 1;
    /// Operation: reply.
    pub const OP_REPLY: u16 = 2;
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
    /// Length of a header without options.
    pub const MIN_HEADER_LEN: usize = 20;
    /// Offset of the checksum.
    pub const CHECKSUM: usize = 16;
}

/// UDP header layout.
pub mod udp {
    /// Length of the header.
    pub const HEADER_LEN: usize = 8;
    /// Offset of the checksum.
    pub const CHECKSUM: usize = 6;
}

/// Copies `L` bytes at offset `AT` out of a fixed-size view. Out-of-range offsets fail to compile.
#[inline(always)]
pub fn get<const AT: usize, const L: usize, const N: usize>(b: &[u8; N]) -> [u8; L] {
    const { assert!(AT + L <= N, "field beyond the header view") };
    let mut out = [0u8; L];
    out.copy_from_slice(&b[AT..AT + L]);
    out
}

/// Reads the big-endian `u16` at offset `AT`. Out-of-range offsets fail to compile.
#[inline(always)]
pub fn be16<const AT: usize, const N: usize>(b: &[u8; N]) -> u16 {
    u16::from_be_bytes(get::<AT, 2, N>(b))
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

/// Reads a big-endian `u16` at a runtime offset of a slice; `None` if it does not fit.
#[inline(always)]
pub fn be16_at(b: &[u8], at: usize) -> Option<u16> {
    let w = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([w[0], w[1]]))
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
        assert_eq!(be16::<2, _>(&b), 0xabcd);
        assert_eq!(get::<1, 3, _>(&b), [0, 0xab, 0xcd]);
        put::<4, 2, _>(&mut b, [1, 2]);
        assert_eq!(b, [0, 0, 0xab, 0xcd, 1, 2]);
        assert_eq!(be16_at(&b, 4), Some(0x0102));
        assert_eq!(be16_at(&b, 5), None);
        assert_eq!(be16_at(&b, usize::MAX), None);
        assert!(put_be16_at(&mut b, 0, 0x0a0b));
        assert!(!put_be16_at(&mut b, 5, 0));
        assert_eq!(b[..2], [0x0a, 0x0b]);
        assert!(icmpv4::is_error(11) && !icmpv4::is_error(8) && !icmpv4::is_error(0));
    }
}

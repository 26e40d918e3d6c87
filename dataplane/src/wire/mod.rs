//! Zero-copy views of the headers the dataplane reads and writes, in the style of smoltcp's
//! `wire` module.
//!
//! Each protocol has a view `Packet<T: AsRef<[u8]>>` over a buffer that starts at its header:
//! - `Packet::new_checked(buf)` checks, once, every length the accessors rely on; afterwards no
//!   accessor can panic. Its error is the [`DropReason`] the pipeline counts for that defect, so
//!   a malformed frame maps onto its counter without a translation table.
//! - getters live in one `impl` over `T: AsRef<[u8]>`; setters in another over
//!   `T: AsMut<[u8]>`, so a read-only view cannot write.
//! - the packets the dataplane builds itself have a `Repr` (what the packet says) with `emit`
//!   (write it into a buffer). Today: ICMP errors ([`icmpv4::ErrorRepr`]); TCP RST, DNS and ESP
//!   come with their features.
//!
//! On untrusted input use `new_checked`, never `new_unchecked` (which tests and the builders use
//! on buffers they sized themselves). Field offsets live in a private `field` module per protocol;
//! protocol numbers live here ([`ip::Protocol`]), and nowhere else.
//!
//! What this module does not do: decide anything (see `crate::pipeline`), compute checksums over
//! more than a header (see `crate::checksum`), or allocate. IPv6, ESP and DNS will get their own
//! files here.

pub mod arp;
pub mod dns;
pub mod ethernet;
pub mod icmpv4;
pub mod ip;
pub mod ipv4;
pub mod tcp;
pub mod udp;

pub use crate::stats::DropReason;

/// A byte range of a header.
type Field = core::ops::Range<usize>;

/// Reads the big-endian `u16` at `at`. The caller has checked that `b` is long enough.
#[inline(always)]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Writes the big-endian `u16` `v` at `at`. The caller has checked that `b` is long enough.
#[inline(always)]
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Reads the four bytes at `f` as an array (an IPv4 address). The caller has checked the length.
#[inline(always)]
fn addr(b: &[u8], f: Field) -> [u8; 4] {
    [b[f.start], b[f.start + 1], b[f.start + 2], b[f.start + 3]]
}

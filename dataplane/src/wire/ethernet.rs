//! Ethernet II frames (no FCS: AF_XDP hands frames without it).

use super::{DropReason, be16, put16};

/// An EtherType.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EtherType(pub u16);

impl EtherType {
    /// IPv4.
    pub const IPV4: EtherType = EtherType(0x0800);
    /// ARP.
    pub const ARP: EtherType = EtherType(0x0806);
    /// IPv6.
    pub const IPV6: EtherType = EtherType(0x86dd);
    /// An IEEE 802.1Q VLAN tag.
    pub const VLAN: EtherType = EtherType(0x8100);
}

mod field {
    use super::super::Field;
    pub const DST: Field = 0..6;
    pub const SRC: Field = 6..12;
    pub const ETHERTYPE: usize = 12;
    pub const PAYLOAD: usize = 14;
}

/// Length of an untagged Ethernet II header.
pub const HEADER_LEN: usize = field::PAYLOAD;

/// A view of an Ethernet II frame. See the module documentation of [`crate::wire`].
#[derive(Debug, Clone, Copy)]
pub struct Frame<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// A view without checks: for buffers the caller sized (at least [`HEADER_LEN`] bytes).
    #[inline(always)]
    pub fn new_unchecked(buf: T) -> Self {
        Self { buf }
    }

    /// A view of an untrusted frame: at least [`HEADER_LEN`] bytes, else `zero-length` (no byte
    /// at all) or `eth-truncated`.
    #[inline(always)]
    pub fn new_checked(buf: T) -> Result<Self, DropReason> {
        match buf.as_ref().len() {
            0 => Err(DropReason::ZeroLength),
            n if n < HEADER_LEN => Err(DropReason::EthTruncated),
            _ => Ok(Self { buf }),
        }
    }

    /// The destination MAC.
    #[inline(always)]
    pub fn dst(&self) -> [u8; 6] {
        let b = self.buf.as_ref();
        [b[0], b[1], b[2], b[3], b[4], b[5]]
    }

    /// The source MAC.
    #[inline(always)]
    pub fn src(&self) -> [u8; 6] {
        let b = &self.buf.as_ref()[field::SRC];
        [b[0], b[1], b[2], b[3], b[4], b[5]]
    }

    /// The EtherType.
    #[inline(always)]
    pub fn ethertype(&self) -> EtherType {
        EtherType(be16(self.buf.as_ref(), field::ETHERTYPE))
    }

    /// The bytes after the header.
    #[inline(always)]
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Sets the destination MAC.
    #[inline(always)]
    pub fn set_dst(&mut self, mac: [u8; 6]) {
        self.buf.as_mut()[field::DST].copy_from_slice(&mac);
    }

    /// Sets the source MAC.
    #[inline(always)]
    pub fn set_src(&mut self, mac: [u8; 6]) {
        self.buf.as_mut()[field::SRC].copy_from_slice(&mac);
    }

    /// Sets the EtherType.
    #[inline(always)]
    pub fn set_ethertype(&mut self, t: EtherType) {
        put16(self.buf.as_mut(), field::ETHERTYPE, t.0);
    }

    /// The bytes after the header, writable.
    #[inline(always)]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buf.as_mut()[field::PAYLOAD..]
    }
}

/// What an Ethernet header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    /// Source MAC.
    pub src: [u8; 6],
    /// Destination MAC.
    pub dst: [u8; 6],
    /// EtherType.
    pub ethertype: EtherType,
}

impl Repr {
    /// Writes the header into the first [`HEADER_LEN`] bytes of `frame`.
    #[inline(always)]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut Frame<T>) {
        frame.set_dst(self.dst);
        frame.set_src(self.src);
        frame.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_fields() {
        assert_eq!(
            Frame::new_checked(&[][..]).unwrap_err(),
            DropReason::ZeroLength
        );
        assert_eq!(
            Frame::new_checked(&[0u8; 13][..]).unwrap_err(),
            DropReason::EthTruncated
        );
        let mut b = [0u8; 14];
        let mut f = Frame::new_checked(&mut b[..]).unwrap();
        Repr {
            src: [2, 0, 0, 0, 0, 1],
            dst: [0xff; 6],
            ethertype: EtherType::ARP,
        }
        .emit(&mut f);
        let e = etherparse::Ethernet2HeaderSlice::from_slice(&b).unwrap();
        assert_eq!(e.destination(), [0xff; 6]);
        assert_eq!(e.source(), [2, 0, 0, 0, 0, 1]);
        assert_eq!(e.ether_type(), etherparse::EtherType::ARP);
        let f = Frame::new_checked(&b[..]).unwrap();
        assert_eq!(f.ethertype(), EtherType::ARP);
        assert!(f.payload().is_empty());
    }
}

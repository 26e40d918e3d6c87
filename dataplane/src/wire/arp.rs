//! ARP for IPv4 over Ethernet (RFC 826). Other hardware or protocol types are malformed for us.

use super::{DropReason, Field, addr, be16};

mod field {
    use super::Field;
    pub const HTYPE: usize = 0;
    pub const PTYPE: usize = 2;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: usize = 6;
    pub const SHA: Field = 8..14;
    pub const SPA: Field = 14..18;
    pub const THA: Field = 18..24;
    pub const TPA: Field = 24..28;
}

/// Length of an Ethernet/IPv4 ARP packet.
pub const LEN: usize = field::TPA.end;

/// ARP operation: request.
pub const REQUEST: u16 = 1;
/// ARP operation: reply.
pub const REPLY: u16 = 2;

/// A view of an Ethernet/IPv4 ARP request or reply.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view of untrusted bytes: `arp-malformed` unless it is a whole Ethernet/IPv4 request or
    /// reply (hardware type 1, protocol 0x0800, address sizes 6 and 4, operation 1 or 2).
    #[inline(always)]
    pub fn new_checked(buf: T) -> Result<Self, DropReason> {
        let b = buf.as_ref();
        if b.len() < LEN {
            return Err(DropReason::ArpMalformed);
        }
        let op = be16(b, field::OPER);
        let ok = be16(b, field::HTYPE) == 1
            && be16(b, field::PTYPE) == 0x0800
            && b[field::HLEN] == 6
            && b[field::PLEN] == 4
            && (op == REQUEST || op == REPLY);
        if ok {
            Ok(Self { buf })
        } else {
            Err(DropReason::ArpMalformed)
        }
    }

    /// The operation ([`REQUEST`] or [`REPLY`]).
    #[inline(always)]
    pub fn operation(&self) -> u16 {
        be16(self.buf.as_ref(), field::OPER)
    }

    /// The sender's MAC.
    #[inline(always)]
    pub fn sender_mac(&self) -> [u8; 6] {
        let b = &self.buf.as_ref()[field::SHA];
        [b[0], b[1], b[2], b[3], b[4], b[5]]
    }

    /// The sender's IPv4 address.
    #[inline(always)]
    pub fn sender_ip(&self) -> [u8; 4] {
        addr(self.buf.as_ref(), field::SPA)
    }

    /// The target's MAC.
    #[inline(always)]
    pub fn target_mac(&self) -> [u8; 6] {
        let b = &self.buf.as_ref()[field::THA];
        [b[0], b[1], b[2], b[3], b[4], b[5]]
    }

    /// The target's IPv4 address.
    #[inline(always)]
    pub fn target_ip(&self) -> [u8; 4] {
        addr(self.buf.as_ref(), field::TPA)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{ArpHardwareId, ArpOperation, ArpPacket, EtherType};

    fn arp(op: ArpOperation) -> Vec<u8> {
        ArpPacket::new(
            ArpHardwareId::ETHERNET,
            EtherType::IPV4,
            op,
            &[2, 0, 0, 0, 0, 10],
            &[10, 0, 0, 10],
            &[0; 6],
            &[10, 0, 0, 1],
        )
        .unwrap()
        .to_bytes()
        .to_vec()
    }

    #[test]
    fn reads_what_etherparse_writes() {
        let b = arp(ArpOperation::REQUEST);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.operation(), REQUEST);
        assert_eq!(p.sender_mac(), [2, 0, 0, 0, 0, 10]);
        assert_eq!(p.sender_ip(), [10, 0, 0, 10]);
        assert_eq!(p.target_mac(), [0; 6]);
        assert_eq!(p.target_ip(), [10, 0, 0, 1]);
        assert_eq!(
            Packet::new_checked(&arp(ArpOperation::REPLY)[..])
                .unwrap()
                .operation(),
            REPLY
        );
    }

    #[test]
    fn anything_else_is_malformed() {
        let good = arp(ArpOperation::REQUEST);
        for (at, v) in [(1, 6u8), (3, 0xdd), (4, 8), (5, 16), (7, 3), (7, 0)] {
            let mut b = good.clone();
            b[at] = v;
            assert_eq!(
                Packet::new_checked(&b[..]).unwrap_err(),
                DropReason::ArpMalformed
            );
        }
        for n in 0..LEN {
            assert!(Packet::new_checked(&good[..n]).is_err(), "{n}");
        }
    }
}

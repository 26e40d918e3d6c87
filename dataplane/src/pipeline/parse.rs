//! Stage 1, **parse**: the one pass over a frame's headers. Everything later stages (and the
//! worker's prefetch pass, and the monitor) know of a frame's headers comes from the [`Parsed`]
//! it returns; nothing re-reads them.
//!
//! It is also where a frame is first refused: a frame not addressed to the gateway, of an
//! EtherType the dataplane does not handle, or with a malformed Ethernet, ARP or IPv4 header is
//! a [`DropReason`] here. Checks come in the order of the headers, and the Ethernet destination
//! is judged before the packet behind it, so a frame for another MAC is `not-for-gateway`
//! whatever it carries. The transport header is read, not validated: a truncated or odd TCP or
//! UDP header leaves its fields at 0 and the packet is routed as the kernel would route it.

use crate::conntrack::FlowKey;
use crate::stats::DropReason;
use crate::tables::{Gateway, MacAddr};
use crate::wire::ethernet::{self, EtherType};
use crate::wire::ip::proto;
use crate::wire::{arp, icmpv4, ipv4, tcp, udp};

/// A frame that passed the parse stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A well-formed Ethernet/IPv4 ARP request or reply, sent to the gateway's MAC or to
    /// broadcast.
    Arp {
        /// The address asked or told about.
        target: [u8; 4],
        /// The sender's address, as the ARP packet claims it.
        sender_ip: [u8; 4],
        /// The sender's MAC, as the ARP packet claims it.
        sender_mac: [u8; 6],
        /// The frame's Ethernet source.
        eth_src: [u8; 6],
    },
    /// A valid IPv4 packet sent to the gateway's MAC.
    Ipv4(Meta),
}

/// What the parse stage learnt of an IPv4 packet: offsets, the 5-tuple, flags. Small and
/// `Copy`, so a worker keeps a batch of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// The 5-tuple: TCP and UDP ports; for ICMP echo the identifier as both ports; otherwise
    /// (a non-initial fragment, another protocol, a header too short to hold them) ports 0.
    /// This is the connection-tracking key in the packet's own direction.
    pub key: FlowKey,
    /// For an ICMP error message: the 5-tuple of the packet it quotes, as quoted (its source is
    /// this error's destination). `None` for everything else, and for an error whose quote does
    /// not hold an IPv4 header.
    pub quoted: Option<FlowKey>,
    /// Offset of the IP payload (the transport header) from the start of the frame.
    pub l4_offset: u16,
    /// Length of the IP payload (total length minus header length).
    pub l4_len: u16,
    /// The TTL as received.
    pub ttl: u8,
    /// TCP flags ([`tcp::flags`]); 0 for other protocols and unreadable TCP headers.
    pub tcp_flags: u8,
    /// ICMP type and code, when the protocol is ICMP and the bytes are there (else 0).
    pub icmp_type: u8,
    /// See `icmp_type`.
    pub icmp_code: u8,
    /// The TCP or UDP checksum field, when [`Meta::CHECKSUM_FIELD`] is set.
    pub l4_checksum: u16,
    /// The `FRAGMENT`, `LATER_FRAGMENT`, `CHECKSUM_FIELD` and `ICMP_ERROR` bits.
    pub flags: u8,
    /// The IP identification: with the addresses and protocol, the datagram a fragment belongs
    /// to (the fragment stage's key).
    pub ip_id: u16,
}

impl Meta {
    /// The packet is a fragment (first or later).
    pub const FRAGMENT: u8 = 1;
    /// The packet is a non-initial fragment: it carries no transport header.
    pub const LATER_FRAGMENT: u8 = 2;
    /// A whole (unfragmented) TCP segment with a valid header, or UDP datagram with a checksum:
    /// [`Meta::l4_checksum`] holds its checksum field.
    pub const CHECKSUM_FIELD: u8 = 4;
    /// An ICMP error message (which must never be answered with another).
    pub const ICMP_ERROR: u8 = 8;

    /// The description of a packet known only by its 5-tuple (no TCP flags, not an ICMP error,
    /// a 20-byte IP header, no payload): for benchmarks and tests that judge flows without
    /// frames.
    pub fn from_key(key: FlowKey) -> Meta {
        Meta {
            key,
            quoted: None,
            l4_offset: (ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN) as u16,
            l4_len: 0,
            ttl: 64,
            tcp_flags: 0,
            icmp_type: 0,
            icmp_code: 0,
            l4_checksum: 0,
            flags: 0,
            ip_id: 0,
        }
    }

    /// Whether `bit` is set in [`Meta::flags`].
    #[inline(always)]
    pub fn has(&self, bit: u8) -> bool {
        self.flags & bit != 0
    }
}

/// Parses `frame` as seen by the gateway whose MAC is `gw.mac`.
#[inline(always)]
pub fn parse(frame: &[u8], gw: &Gateway) -> Result<Parsed, DropReason> {
    let eth = ethernet::Frame::new_checked(frame)?;
    let dst = MacAddr(eth.dst());
    let to_gateway = dst == gw.mac;
    if !to_gateway && !dst.is_multicast() {
        return Err(DropReason::NotForGateway);
    }
    match eth.ethertype() {
        EtherType::IPV4 if to_gateway => ipv4_meta(eth.payload()).map(Parsed::Ipv4),
        EtherType::ARP if to_gateway || dst.is_broadcast() => {
            let a = arp::Packet::new_checked(eth.payload())?;
            Ok(Parsed::Arp {
                target: a.target_ip(),
                sender_ip: a.sender_ip(),
                sender_mac: a.sender_mac(),
                eth_src: eth.src(),
            })
        }
        EtherType::IPV4 | EtherType::ARP => Err(DropReason::NotForGateway),
        EtherType::IPV6 => Err(DropReason::Ipv6Unsupported),
        _ => Err(DropReason::UnsupportedEthertype),
    }
}

/// The IPv4 part of [`parse`]; `l3` is the Ethernet payload.
#[inline(always)]
fn ipv4_meta(l3: &[u8]) -> Result<Meta, DropReason> {
    let ip = ipv4::Packet::new_checked(l3)?;
    if !ip.verify_checksum() {
        return Err(DropReason::Ipv4BadChecksum);
    }
    let later = ip.frag_offset() != 0;
    let fragment = later || ip.more_fragments();
    let protocol = ip.protocol().0;
    let l4 = ip.payload();
    let mut m = Meta {
        key: FlowKey::from_l4(ip.src(), ip.dst(), protocol, l4, later),
        quoted: None,
        // At most 14 + 60: fits.
        l4_offset: (ethernet::HEADER_LEN + ip.header_len()) as u16,
        l4_len: ip.payload_len(),
        ttl: ip.ttl(),
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        l4_checksum: 0,
        flags: if later {
            Meta::FRAGMENT | Meta::LATER_FRAGMENT
        } else if fragment {
            Meta::FRAGMENT
        } else {
            0
        },
        ip_id: ip.ident(),
    };
    if later {
        return Ok(m);
    }
    match protocol {
        proto::TCP => {
            if let Some(t) = tcp::Packet::new_checked(l4) {
                m.tcp_flags = t.flags()
                    & (tcp::flags::FIN | tcp::flags::SYN | tcp::flags::RST | tcp::flags::ACK);
                if !fragment {
                    m.l4_checksum = t.checksum();
                    m.flags |= Meta::CHECKSUM_FIELD;
                }
            }
        }
        proto::UDP => {
            // Checksum 0: the sender computed none, and there is nothing to complete.
            if let Some(u) = udp::Packet::new_checked(l4)
                && u.checksum() != 0
                && !fragment
            {
                m.l4_checksum = u.checksum();
                m.flags |= Meta::CHECKSUM_FIELD;
            }
        }
        proto::ICMP => {
            if let Some(t) = icmpv4::msg_type(l4) {
                m.icmp_type = t;
                m.icmp_code = l4.get(1).copied().unwrap_or(0);
                if icmpv4::is_error(t) {
                    m.flags |= Meta::ICMP_ERROR;
                    m.quoted = icmpv4::error_quote(l4).and_then(quoted_key);
                }
            }
        }
        _ => {}
    }
    Ok(m)
}

/// The 5-tuple quoted by an ICMP error (`quote`: the original IP header and at least 8 bytes
/// of its payload; its total length describes the original packet, not the quote).
#[inline]
fn quoted_key(quote: &[u8]) -> Option<FlowKey> {
    let h = ipv4::Packet::new_checked_header(quote).ok()?;
    Some(FlowKey::from_l4(
        h.src(),
        h.dst(),
        h.protocol().0,
        h.payload(),
        h.frag_offset() != 0,
    ))
}

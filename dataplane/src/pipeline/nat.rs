//! Stage 9, **NAT rewrite**: the addresses and ports the service and masquerade stages decided
//! (see [`super::masq`]), written into
//! the packet with incremental checksum updates (RFC 1624), so a packet is never summed whole
//! again.
//!
//! A client's packet to a frontend gets the backend as destination; a backend's reply gets the
//! frontend as source; an ICMP error about a client's packet to a backend gets the frontend
//! back in its quote (and as its own source, if the backend sent it), so the client matches it
//! to the connection it knows. Every checksum that covers a changed word is updated: the IP
//! header's; the TCP or UDP checksum, whose pseudo-header covers the addresses (a UDP checksum
//! of 0, "none", stays 0); inside an ICMP error, the quoted header's checksums and the ICMP
//! checksum over all of them.
//!
//! Runs after routing and after the emit stage completed a partial checksum, so the updates
//! start from a whole checksum. A non-initial fragment has no transport header: only its
//! addresses change.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::Meta;
use super::service::Nat;
use crate::checksum::{Delta, update_u16};
use crate::frame::Frame;
use crate::wire::ethernet;
use crate::wire::ip::proto;
use crate::wire::{icmpv4, tcp, udp};

/// Offsets within the IPv4 header.
const IP_CHECKSUM: usize = 10;
const IP_SRC: usize = 12;
const IP_DST: usize = 16;
/// The source and destination ports' offsets in a TCP or UDP header (the same in both).
const SRC_PORT: usize = 0;
const DST_PORT: usize = 2;

/// A run of edits to one buffer, each returning the checksum update it needs.
struct Words<'b>(&'b mut [u8]);

impl Words<'_> {
    fn get(&self, at: usize) -> Option<u16> {
        let w = self.0.get(at..at + 2)?;
        Some(u16::from_be_bytes([w[0], w[1]]))
    }

    fn put(&mut self, at: usize, v: u16) -> Option<()> {
        self.0
            .get_mut(at..at + 2)?
            .copy_from_slice(&v.to_be_bytes());
        Some(())
    }

    /// Writes `new` at `at` and folds the change into the checksum at `sum_at` (if any).
    fn swap(&mut self, at: usize, new: u16, sums: &[usize]) -> Option<u16> {
        let old = self.get(at)?;
        self.put(at, new)?;
        for &s in sums {
            let c = self.get(s)?;
            self.put(s, update_u16(c, old, new))?;
        }
        Some(old)
    }

    /// Changes the checksum at `at` as if the word `old` it covers had become `new`. A UDP
    /// checksum (`udp`) of 0 means "none" and stays so; a computed 0 is sent as all ones.
    fn adjust(&mut self, at: usize, old: u16, new: u16, udp: bool) -> Option<()> {
        let c = self.get(at)?;
        if udp && c == 0 {
            return Some(());
        }
        let mut n = update_u16(c, old, new);
        if udp && n == 0 {
            n = 0xffff;
        }
        self.put(at, n)
    }
}

fn halves(ip: Ipv4Addr) -> [u16; 2] {
    let o = ip.octets();
    [
        u16::from_be_bytes([o[0], o[1]]),
        u16::from_be_bytes([o[2], o[3]]),
    ]
}

/// Applies `nat` to the packet `meta` describes. Returns `false` if the packet was too short
/// for a field it should have had (nothing can be trusted then: drop it).
#[inline(never)]
pub fn rewrite(frame: &mut Frame<'_>, meta: &Meta, nat: Nat) -> bool {
    match nat {
        Nat::None => true,
        Nat::ToBackend(to) | Nat::Unmasquerade(to) => {
            endpoint(frame, meta, IP_DST, DST_PORT, to).is_some()
        }
        Nat::FromFrontend(from) | Nat::Masquerade(from) => {
            endpoint(frame, meta, IP_SRC, SRC_PORT, from).is_some()
        }
        Nat::ErrorFromFrontend { backend, frontend } => {
            error(frame, meta, backend, frontend).is_some()
        }
    }
}

/// Rewrites one end of the packet: the address at `ip_field` (source or destination) and the
/// transport port at `port_at` to `to`; each checksum is updated once, for all its changed
/// words.
fn endpoint(
    frame: &mut Frame<'_>,
    meta: &Meta,
    ip_field: usize,
    port_at: usize,
    to: SocketAddrV4,
) -> Option<()> {
    let l3 = ethernet::HEADER_LEN;
    let l4 = usize::from(meta.l4_offset);
    let (old_ip, old_port) = if ip_field == IP_DST {
        (meta.key.dst, meta.key.dport)
    } else {
        (meta.key.src, meta.key.sport)
    };
    let (old, new) = (halves(old_ip), halves(*to.ip()));
    let ip_delta = Delta::new().word(old[0], new[0]).word(old[1], new[1]);
    let mut w = Words(frame.data_mut());
    w.put(l3 + ip_field, new[0])?;
    w.put(l3 + ip_field + 2, new[1])?;
    w.put(l3 + IP_CHECKSUM, ip_delta.apply(w.get(l3 + IP_CHECKSUM)?))?;
    // A later fragment carries no transport header; a first fragment's checksum covers the
    // whole datagram, which the same update keeps right.
    let end = l4 + usize::from(meta.l4_len);
    let (at, udp) = match meta.key.proto {
        _ if meta.has(Meta::LATER_FRAGMENT) => return Some(()),
        proto::TCP => (l4 + tcp::CHECKSUM_OFFSET, false),
        proto::UDP => (l4 + udp::CHECKSUM_OFFSET, true),
        _ => return Some(()),
    };
    if l4 + port_at + 2 > end {
        return None;
    }
    // The pseudo-header covers the addresses: the transport checksum takes their change too.
    let l4_delta = ip_delta.word(old_port, to.port());
    w.put(l4 + port_at, to.port())?;
    if at + 2 > end {
        return Some(()); // A header cut short before its checksum: none to update.
    }
    let c = w.get(at)?;
    if udp && c == 0 {
        return Some(()); // No checksum ("none") stays none.
    }
    let mut n = l4_delta.apply(c);
    if udp && n == 0 {
        n = 0xffff; // RFC 768: a computed zero is sent as all ones.
    }
    w.put(at, n)
}

/// Rewrites an ICMP error about a client's packet to `backend` so that it is about the
/// packet the client sent, to `frontend`.
fn error(
    frame: &mut Frame<'_>,
    meta: &Meta,
    backend: SocketAddrV4,
    frontend: SocketAddrV4,
) -> Option<()> {
    let l3 = ethernet::HEADER_LEN;
    let icmp = usize::from(meta.l4_offset);
    let icmp_sum = icmp + 2;
    let inner = icmp + icmpv4::HEADER_LEN;
    let mut w = Words(frame.data_mut());
    if meta.key.src == *backend.ip() {
        for (i, new) in halves(*frontend.ip()).into_iter().enumerate() {
            w.swap(l3 + IP_SRC + 2 * i, new, &[l3 + IP_CHECKSUM])?;
        }
    }
    let inner_ihl = usize::from(w.0.get(inner)? & 0x0f) * 4;
    let inner_l4 = inner + inner_ihl;
    let inner_proto = *w.0.get(inner + 9)?;
    let inner_sum = match inner_proto {
        proto::UDP => Some((inner_l4 + udp::CHECKSUM_OFFSET, true)),
        proto::TCP => Some((inner_l4 + tcp::CHECKSUM_OFFSET, false)),
        _ => None,
    }
    // The quote may stop before the transport checksum (8 bytes of a TCP header): then there
    // is none to update.
    .filter(|&(at, _)| at + 2 <= icmp + usize::from(meta.l4_len));
    for (i, (old, new)) in halves(*backend.ip())
        .into_iter()
        .zip(halves(*frontend.ip()))
        .enumerate()
    {
        let old_sum = w.get(inner + IP_CHECKSUM)?;
        w.swap(
            inner + IP_DST + 2 * i,
            new,
            &[inner + IP_CHECKSUM, icmp_sum],
        )?;
        let new_sum = w.get(inner + IP_CHECKSUM)?;
        w.adjust(icmp_sum, old_sum, new_sum, false)?;
        if let Some((at, udp)) = inner_sum {
            let before = w.get(at)?;
            w.adjust(at, old, new, udp)?;
            let after = w.get(at)?;
            w.adjust(icmp_sum, before, after, false)?;
        }
    }
    if matches!(inner_proto, proto::TCP | proto::UDP) {
        let old = w.swap(inner_l4 + DST_PORT, frontend.port(), &[icmp_sum])?;
        if let Some((at, udp)) = inner_sum {
            let before = w.get(at)?;
            w.adjust(at, old, frontend.port(), udp)?;
            let after = w.get(at)?;
            w.adjust(icmp_sum, before, after, false)?;
        }
    }
    Some(())
}

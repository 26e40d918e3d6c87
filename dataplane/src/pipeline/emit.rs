//! Stage 11, **emit**: the writes that make a decided packet ready for the wire, through the
//! [`crate::wire`] views: completing partial transport checksums, the TTL decrement and the MAC
//! rewrite of a forwarded packet, and the ICMP errors the dataplane answers with.

use super::{Meta, Verdict};
use crate::checksum;
use crate::frame::Frame;
use crate::stats::DropReason;
use crate::tables::{Gateway, Neighbor};
use crate::wire::ethernet::{self, EtherType};
use crate::wire::icmpv4::{self, ErrorKind, ErrorRepr};
use crate::wire::ip::{Protocol, proto};
use crate::wire::{ipv4, tcp, udp};

/// If the TCP or UDP checksum field holds only the pseudo-header sum (a partial checksum left
/// by a pod's TX checksum offload), computes and writes the full checksum; returns whether it
/// did. A correct checksum that happens to equal the pseudo-header sum is recomputed to the
/// same value. Fragments and unreadable headers are left alone (the parse stage did not mark
/// their checksum field): there is no whole segment to sum, and the kernel completes checksums
/// before it fragments.
#[inline(always)]
pub fn complete_checksum(frame: &mut Frame<'_>, meta: &Meta) -> bool {
    if !meta.has(Meta::CHECKSUM_FIELD) {
        return false;
    }
    let k = &meta.key;
    let pseudo = checksum::ipv4_pseudo_header(k.src.octets(), k.dst.octets(), k.proto, meta.l4_len);
    if meta.l4_checksum != pseudo.fold() {
        return false;
    }
    complete(frame, meta)
}

#[inline(never)]
fn complete(frame: &mut Frame<'_>, meta: &Meta) -> bool {
    let start = usize::from(meta.l4_offset);
    let field = if meta.key.proto == proto::TCP {
        tcp::CHECKSUM_OFFSET
    } else {
        udp::CHECKSUM_OFFSET
    };
    let Some(segment) = frame
        .data_mut()
        .get_mut(start..start + usize::from(meta.l4_len))
    else {
        return false; // Unreachable: the parse stage checked the total length against the frame.
    };
    // The field holds the folded pseudo-header sum, so summing the segment as it is gives
    // pseudo-header + segment-with-zero-checksum (mod 0xFFFF): exactly the sum the checksum
    // covers. Not zeroing the field first also spares a store-to-load forwarding stall.
    let mut full = checksum::Sum::new().add_bytes(segment).checksum();
    if meta.key.proto == proto::UDP && full == 0 {
        full = 0xffff; // RFC 768: a computed zero is sent as all ones.
    }
    match segment.get_mut(field..field + 2) {
        Some(w) => {
            w.copy_from_slice(&full.to_be_bytes());
            true
        }
        None => false, // Unreachable: the parse stage read this field.
    }
}

/// Readies a routed packet for `next`: TTL − 1 (with an incremental header checksum update),
/// destination MAC the neighbour's, source MAC the gateway's.
#[inline(always)]
pub fn forward(frame: &mut Frame<'_>, meta: &Meta, next: &Neighbor, gw: &Gateway) -> Verdict {
    // Fixed-size views: every offset below is checked against the array length at compile
    // time, and the parse stage guaranteed both headers are there.
    let Some((eth, l3)) = frame
        .data_mut()
        .split_first_chunk_mut::<{ ethernet::HEADER_LEN }>()
    else {
        return Verdict::Drop(DropReason::EthTruncated);
    };
    let Some(ip) = l3.first_chunk_mut::<{ ipv4::MIN_HEADER_LEN }>() else {
        return Verdict::Drop(DropReason::Ipv4Truncated);
    };
    ipv4::Packet::new_unchecked(ip).set_ttl_and_update_checksum(meta.ttl - 1);
    let mut eth = ethernet::Frame::new_unchecked(eth);
    eth.set_dst(next.mac.0);
    eth.set_src(gw.mac.0);
    Verdict::Forward(next.port)
}

/// Rewrites the frame into an ICMP time exceeded (type 11, code 0) for the packet's source,
/// reached through `back`, from the gateway. See [`icmp_error`].
#[cold]
#[inline(never)]
pub fn time_exceeded(frame: &mut Frame<'_>, meta: &Meta, back: &Neighbor, gw: &Gateway) -> Verdict {
    match icmp_error(frame, meta, back, gw, gw.ipv4, ErrorKind::TtlExceeded) {
        Ok(()) => Verdict::IcmpError(back.port),
        Err(r) => Verdict::Drop(r),
    }
}

/// Rewrites the frame into the ICMP fragmentation needed (with `mtu`) for its source, through
/// `back`, from the gateway's address: the answer to a packet too big to encapsulate.
#[cold]
#[inline(never)]
pub fn frag_needed(
    frame: &mut Frame<'_>,
    meta: &Meta,
    back: &Neighbor,
    gw: &Gateway,
    mtu: u16,
) -> Verdict {
    match icmp_error(
        frame,
        meta,
        back,
        gw,
        gw.ipv4,
        ErrorKind::FragmentationNeeded { mtu },
    ) {
        Ok(()) => Verdict::TooBig(back.port),
        Err(r) => Verdict::Drop(r),
    }
}

/// Rewrites the frame into a refusal of a new connection to `frontend`, a service with no
/// backend for it, sent back to the packet's source through `back` from the frontend's
/// address, as a host with nothing listening would answer: a TCP RST, an ICMP port unreachable
/// for UDP. A TCP RST is not answered (RFC 9293), nor is anything else: those are dropped.
#[cold]
#[inline(never)]
pub fn refuse(
    frame: &mut Frame<'_>,
    meta: &Meta,
    back: &Neighbor,
    gw: &Gateway,
    frontend: std::net::SocketAddrV4,
) -> Verdict {
    let refused = DropReason::NoServiceBackend;
    let r = match meta.key.proto {
        proto::UDP => icmp_error(
            frame,
            meta,
            back,
            gw,
            *frontend.ip(),
            ErrorKind::PortUnreachable,
        )
        .map(|()| Verdict::Refused {
            port: back.port,
            reset: false,
        }),
        proto::TCP if meta.tcp_flags & tcp::flags::RST == 0 => {
            reset(frame, meta, back, gw, frontend).map(|()| Verdict::Refused {
                port: back.port,
                reset: true,
            })
        }
        _ => Err(refused),
    };
    r.unwrap_or(Verdict::Drop(refused))
}

/// The TCP RST answering the segment in `frame`, written over it.
fn reset(
    frame: &mut Frame<'_>,
    meta: &Meta,
    back: &Neighbor,
    gw: &Gateway,
    frontend: std::net::SocketAddrV4,
) -> Result<(), DropReason> {
    let no_room = DropReason::NoServiceBackend;
    let l4 = usize::from(meta.l4_offset);
    let segment = frame
        .data()
        .get(l4..l4 + usize::from(meta.l4_len))
        .and_then(tcp::Packet::new_checked)
        .ok_or(no_room)?;
    let rst = tcp::ResetRepr::answering(&segment, usize::from(meta.l4_len));
    let ip = ipv4::Repr {
        src: frontend.ip().octets(),
        dst: meta.key.src.octets(),
        protocol: Protocol::TCP,
        payload_len: tcp::MIN_HEADER_LEN as u16,
        ttl: 64,
        tos: 0,
    };
    frame.set_len(ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN + tcp::MIN_HEADER_LEN);
    let (e, rest) = frame
        .data_mut()
        .split_first_chunk_mut::<{ ethernet::HEADER_LEN }>()
        .ok_or(no_room)?;
    let (h, rest) = rest
        .split_first_chunk_mut::<{ ipv4::MIN_HEADER_LEN }>()
        .ok_or(no_room)?;
    let t = rest
        .first_chunk_mut::<{ tcp::MIN_HEADER_LEN }>()
        .ok_or(no_room)?;
    ethernet::Repr {
        src: gw.mac.0,
        dst: back.mac.0,
        ethertype: EtherType::IPV4,
    }
    .emit(&mut ethernet::Frame::new_unchecked(e));
    ip.emit(h);
    rst.emit(t, ip.src, ip.dst);
    Ok(())
}

/// Rewrites the frame into the ICMP error `kind` about the packet in it, for the packet's
/// source, reached through `back`, from `src`, quoting the packet's IP header and the first 8
/// bytes of its payload (RFC 792). The IP header is sent with precedence "internetwork
/// control" (RFC 1812 §4.3.2.5).
fn icmp_error(
    frame: &mut Frame<'_>,
    meta: &Meta,
    back: &Neighbor,
    gw: &Gateway,
    src: std::net::Ipv4Addr,
    kind: ErrorKind,
) -> Result<(), DropReason> {
    let l3 = ethernet::HEADER_LEN;
    let header_len = usize::from(meta.l4_offset) - l3;
    let quote_len = header_len + usize::from(meta.l4_len).min(icmpv4::QUOTED_PAYLOAD);
    // Copy the quote out first: it overlaps where the new headers go.
    let mut quote = [0u8; ipv4::MAX_HEADER_LEN + icmpv4::QUOTED_PAYLOAD];
    let (Some(q), Some(from)) = (
        quote.get_mut(..quote_len),
        frame.data().get(l3..l3 + quote_len),
    ) else {
        // Unreachable: the header is at most 60 bytes and the quote lies within the packet.
        return Err(DropReason::IcmpNoRoom);
    };
    q.copy_from_slice(from);
    let icmp = ErrorRepr { kind, quote: q };
    let ip = ipv4::Repr {
        src: src.octets(),
        dst: meta.key.src.octets(),
        protocol: Protocol::ICMP,
        payload_len: icmp.len() as u16, // At most 8 + 68.
        ttl: 64,
        tos: 0xc0,
    };
    let frame_len = l3 + ip.header_len() + icmp.len();
    if frame.capacity() < frame_len {
        return Err(DropReason::IcmpNoRoom);
    }
    frame.set_len(frame_len);
    let Some((e, rest)) = frame
        .data_mut()
        .split_first_chunk_mut::<{ ethernet::HEADER_LEN }>()
    else {
        return Err(DropReason::IcmpNoRoom);
    };
    let Some((h, rest)) = rest.split_first_chunk_mut::<{ ipv4::MIN_HEADER_LEN }>() else {
        return Err(DropReason::IcmpNoRoom);
    };
    ethernet::Repr {
        src: gw.mac.0,
        dst: back.mac.0,
        ethertype: EtherType::IPV4,
    }
    .emit(&mut ethernet::Frame::new_unchecked(e));
    ip.emit(h);
    icmp.emit(rest).ok_or(DropReason::IcmpNoRoom)
}

//! The underlay: what the pipeline does differently for the uplink, the node's port towards the
//! other nodes and the world.
//!
//! - **Stage 2 on the uplink** ([`arp`], [`ingress`]). Nothing on the underlay is one of this
//!   node's endpoints, so no frame from it may claim a local address as its source (the
//!   gateway, the node's own underlay address, its pod CIDR, a host route's address). A packet
//!   in clear from the pods of a peer whose traffic is encrypted is dropped (`esp-required`): an
//!   attacker on the underlay cannot skip the encryption by sending in clear. One from a peer in
//!   clear must come from that peer's MAC.
//! - **Stage 3, decapsulation** ([`ingress`] on an ESP packet to the node's address): the
//!   sender is found by its outer source among the peers; its SAs open the packet in place
//!   ([`crate::esp::open`]: length, SPI, replay window, ICV, then the window is marked); the
//!   inner packet, with the frame's Ethernet header moved in front of it, is parsed again and
//!   goes through the stages after this one as any packet from the uplink. It must come from
//!   its sender's pod CIDR: a node speaks only for its own pods.
//! - **Routing to another node** ([`route_off_node`]): a destination in a peer's pod CIDR goes
//!   over the uplink to that peer's MAC ([`Route::Next`]), or, when the peer encrypts, to be
//!   encapsulated first ([`Route::Tunnel`]); any other destination goes to the world through
//!   the uplink's next hop ([`Route::World`]), masqueraded ([`super::masq`]). Nothing that came
//!   from the uplink goes back out of it: the node is no transit router for the underlay.
//! - **Stage 10, encapsulation** ([`encap`]): the routed inner packet is sealed in place behind
//!   an outer IPv4 header (node to peer, protocol 50) and a new Ethernet header, prepended into
//!   the frame's headroom.
//!
//! The SAs' sequence counters and replay windows, and the peers' counters, are shared by every
//! worker (atomics in [`crate::esp::PeerSas`]): an ESP packet may reach any worker, whichever
//! sent the request it answers.

use super::route::Route;
use super::{Meta, Outcome, Parsed, Verdict, parse};
use crate::esp::{self, EspError, HEADROOM};
use crate::frame::Frame;
use crate::stats::DropReason;
use crate::tables::{MacAddr, Mode, Neighbor, PortId, Tables};
use crate::wire::ethernet::{self, EtherType};
use crate::wire::ip::{Protocol, proto};
use crate::wire::ipv4;

/// The uplink's MTU: the most an encapsulated packet may be, outer IPv4 header included.
pub const UPLINK_MTU: usize = 1500;

/// The outer headers [`encap`] writes in front of the ESP header: Ethernet and IPv4.
const OUTER: usize = ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN;

/// What stage 2 (and 3) made of an IPv4 packet from the uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingress {
    /// A packet in clear that may go on as it is.
    Plain,
    /// An ESP packet opened: the frame now holds its inner packet, described by this.
    Opened(Meta),
}

/// Stage 2 for an ARP packet on the uplink: a request or reply for the node's underlay address
/// goes to the slow path (which answers the one and learns from the other); a sender claiming
/// one of this node's addresses, or whose Ethernet source differs from its ARP sender, is
/// `arp-spoofed`; any other ARP (between other hosts of the underlay) is not the node's.
#[cold]
#[inline(never)]
pub fn arp(
    target: [u8; 4],
    sender_ip: [u8; 4],
    sender_mac: [u8; 6],
    eth_src: [u8; 6],
    tables: &Tables,
) -> Outcome {
    if sender_mac != eth_src || tables.is_local(sender_ip.into()) {
        return Outcome::drop(DropReason::ArpSpoofed);
    }
    match tables.uplink() {
        Some(up) if up.ip.octets() == target => Outcome::verdict(Verdict::SlowPath),
        _ => Outcome::drop(DropReason::ArpNotForGateway),
    }
}

/// Stages 2 and 3 for an IPv4 packet `meta` (in `frame`) that arrived on the uplink. See the
/// module documentation.
#[inline(never)]
pub fn ingress(frame: &mut Frame<'_>, meta: &Meta, tables: &Tables) -> Result<Ingress, DropReason> {
    let Some(up) = tables.uplink() else {
        return Err(DropReason::InvalidSourceIp);
    };
    let src = meta.key.src;
    if tables.is_local(src) {
        return Err(DropReason::InvalidSourceIp);
    }
    if meta.key.proto == proto::ESP && meta.key.dst == up.ip {
        return decap(frame, meta, tables).map(Ingress::Opened);
    }
    if let Some((_, peer)) = tables.peer_for(src) {
        if peer.esp.is_some() {
            return Err(DropReason::EspRequired);
        }
        let eth_src = MacAddr(ethernet::Frame::new_unchecked(frame.data()).src());
        if peer.mac.is_some_and(|m| m != eth_src) {
            return Err(DropReason::InvalidSourceMac);
        }
    }
    Ok(Ingress::Plain)
}

/// Stage 3: opens the ESP packet `meta` describes, moves the frame's Ethernet header in front
/// of the inner packet, and parses that.
fn decap(frame: &mut Frame<'_>, meta: &Meta, tables: &Tables) -> Result<Meta, DropReason> {
    let Some((_, peer)) = tables.peer_at(meta.key.src) else {
        return Err(DropReason::EspUnknownPeer);
    };
    let Some(sas) = peer.esp.as_deref() else {
        return Err(DropReason::EspUnknownPeer);
    };
    // No reassembly of the outer packet: a node never fragments what it seals (pods' MTU
    // leaves room for the overhead), so a fragment is not one of ours.
    if meta.has(Meta::FRAGMENT) {
        return Err(DropReason::EspTruncated);
    }
    let (at, len) = (usize::from(meta.l4_offset), usize::from(meta.l4_len));
    let Some(payload) = frame.data_mut().get_mut(at..at + len) else {
        return Err(DropReason::EspTruncated);
    };
    let opened = esp::open(&sas.inbound, payload).map_err(|e| match e {
        EspError::Truncated => DropReason::EspTruncated,
        EspError::UnknownSpi => DropReason::EspUnknownSpi,
        EspError::Replay => DropReason::EspReplay,
        EspError::AuthFailed => DropReason::EspAuthFailed,
        _ => DropReason::EspBadPayload,
    })?;
    sas.counters.count(false, at - ethernet::HEADER_LEN + len);
    let (start, end) = (at + opened.inner.start, at + opened.inner.end);
    let eth = start - ethernet::HEADER_LEN;
    frame.data_mut().copy_within(0..ethernet::HEADER_LEN, eth);
    if !frame.strip_front(eth) {
        return Err(DropReason::EspTruncated); // Unreachable: `eth` is inside the frame.
    }
    frame.set_len(end - eth);
    let inner = match parse(frame.data(), tables.gateway_for(tables.uplink_port())) {
        Ok(Parsed::Ipv4(m)) => m,
        _ => return Err(DropReason::EspBadPayload),
    };
    if !peer.pod_cidr.contains(inner.key.src) {
        return Err(DropReason::InvalidSourceIp);
    }
    Ok(inner)
}

/// Routing for a destination no host route takes: another node's pods (see the module
/// documentation), or nowhere. `ingress` is the port the packet came from.
#[cold]
#[inline(never)]
pub fn route_off_node(meta: &Meta, tables: &Tables, ingress: PortId) -> Route {
    let uplink = tables.uplink_port();
    if ingress == uplink {
        return Route::Drop(DropReason::NoRoute);
    }
    let Some((i, peer)) = tables.peer_for(meta.key.dst) else {
        return world(meta, tables);
    };
    let Some(mac) = peer.mac else {
        return Route::Drop(DropReason::NeighborUnresolved);
    };
    if meta.ttl <= 1 {
        return super::route::expired(meta, tables);
    }
    let next = Neighbor { port: uplink, mac };
    match peer.esp {
        Some(_) => Route::Tunnel {
            next,
            peer: i as u16,
        },
        None => Route::Next(next),
    }
}

/// Routing to the world: through the uplink's next hop, in `full` mode only (masquerade needs
/// the connection tracking).
fn world(meta: &Meta, tables: &Tables) -> Route {
    let (Some(up), Some((_, mac)), Mode::Full) = (tables.uplink(), tables.world(), tables.mode())
    else {
        return Route::Drop(DropReason::NoRoute);
    };
    let Some(mac) = mac else {
        return Route::Drop(DropReason::NeighborUnresolved);
    };
    if meta.ttl <= 1 {
        return super::route::expired(meta, tables);
    }
    Route::World(Neighbor { port: up.port, mac })
}

/// The largest inner packet [`encap`] seals within [`UPLINK_MTU`]: what the ICMP fragmentation
/// needed it answers a too-big packet with says (1,446: the outer header, ESP header and IV,
/// trailer and ICV, with the padding that length needs).
pub const INNER_MTU: usize = inner_mtu(UPLINK_MTU);

const fn inner_mtu(link: usize) -> usize {
    let mut n = link - ipv4::MIN_HEADER_LEN;
    while ipv4::MIN_HEADER_LEN + esp::sealed_len(n) > link {
        n -= 1;
    }
    n
}

/// Before stage 10: the verdict for a packet too big to encapsulate, if it is one. One that
/// forbids fragmenting (DF), from a source with a route back, is answered with an ICMP
/// fragmentation needed naming [`INNER_MTU`] (path MTU discovery then sends smaller packets,
/// as through any tunnel); any other is dropped as `esp-too-big`. `None` if it fits.
#[inline]
pub fn too_big(frame: &mut Frame<'_>, meta: &Meta, tables: &Tables) -> Option<Verdict> {
    let inner_len = usize::from(meta.l4_offset) - ethernet::HEADER_LEN + usize::from(meta.l4_len);
    if inner_len <= INNER_MTU {
        return None;
    }
    Some(answer_too_big(frame, meta, tables))
}

#[cold]
#[inline(never)]
fn answer_too_big(frame: &mut Frame<'_>, meta: &Meta, tables: &Tables) -> Verdict {
    const DF: u8 = 0x40;
    let df = frame
        .data()
        .get(ethernet::HEADER_LEN + 6)
        .is_some_and(|f| f & DF != 0);
    let answerable = df && !meta.has(Meta::ICMP_ERROR) && !meta.has(Meta::LATER_FRAGMENT);
    match tables.route(meta.key.src).filter(|_| answerable) {
        Some(back) => {
            super::emit::frag_needed(frame, meta, &back, tables.gateway(), INNER_MTU as u16)
        }
        None => Verdict::Drop(DropReason::EspTooBig),
    }
}

/// Stage 10: seals the routed packet `meta` describes (the frame's Ethernet header already
/// rewritten by emit, its IPv4 packet after it) for peer `peer`, behind an outer IPv4 header
/// from the node to the peer and an Ethernet header from the uplink to the peer's MAC. The
/// verdict sends it on the uplink, or drops it: `no-key` without a current key,
/// `esp-seq-exhausted` when the SA is spent, `esp-too-big` past the uplink's MTU.
#[inline(never)]
pub fn encap(frame: &mut Frame<'_>, meta: &Meta, tables: &Tables, peer: u16) -> Verdict {
    let (Some(up), Some(p)) = (tables.uplink(), tables.peers().get(usize::from(peer))) else {
        return Verdict::Drop(DropReason::NoRoute);
    };
    let (Some(sas), Some(mac)) = (p.esp.as_deref(), p.mac) else {
        return Verdict::Drop(DropReason::NoKey);
    };
    let Some(sa) = sas.out.as_deref() else {
        return Verdict::Drop(DropReason::NoKey);
    };
    let inner_len = usize::from(meta.l4_offset) - ethernet::HEADER_LEN + usize::from(meta.l4_len);
    let sealed = esp::sealed_len(inner_len);
    let wire = OUTER + sealed;
    let room = ipv4::MIN_HEADER_LEN + HEADROOM;
    if wire - ethernet::HEADER_LEN > UPLINK_MTU || frame.capacity() + room < wire {
        return Verdict::Drop(DropReason::EspTooBig);
    }
    let tos = frame
        .data()
        .get(ethernet::HEADER_LEN + 1)
        .copied()
        .unwrap_or(0);
    if frame.prepend(room).is_none() {
        return Verdict::Drop(DropReason::EspTooBig);
    }
    frame.set_len(wire);
    let data = frame.data_mut();
    match esp::seal(sa, &mut data[OUTER..wire], inner_len) {
        Ok(_) => {}
        Err(EspError::SeqExhausted) => return Verdict::Drop(DropReason::EspSeqExhausted),
        Err(_) => return Verdict::Drop(DropReason::EspTooBig),
    }
    let Some((eth, rest)) = data.split_first_chunk_mut::<{ ethernet::HEADER_LEN }>() else {
        return Verdict::Drop(DropReason::EspTooBig); // Unreachable: `wire` > OUTER.
    };
    let Some(ip) = rest.first_chunk_mut::<{ ipv4::MIN_HEADER_LEN }>() else {
        return Verdict::Drop(DropReason::EspTooBig);
    };
    ipv4::Repr {
        src: up.ip.octets(),
        dst: p.node_ip.octets(),
        protocol: Protocol::ESP,
        payload_len: sealed as u16,
        ttl: 64,
        // DSCP and ECN are copied to the outer header (RFC 4301 §5.1.2.1), so the underlay
        // sees the pod's marking.
        tos,
    }
    .emit(ip);
    let mut e = ethernet::Frame::new_unchecked(&mut eth[..]);
    e.set_dst(mac.0);
    e.set_src(up.mac.0);
    e.set_ethertype(EtherType::IPV4);
    sas.counters.count(true, wire - ethernet::HEADER_LEN);
    Verdict::Forward(up.port)
}

#[cfg(test)]
#[path = "underlay_tests.rs"]
mod tests;

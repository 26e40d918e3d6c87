//! Stage 2, **ingress checks**: a pod is only itself. The port a frame arrived on is its
//! sender's identity; what the frame claims is checked against it: its source IP and MAC (an
//! ARP frame's sender IP and MAC, and its Ethernet source) must be the endpoint's behind that
//! port, as the tables' routes say ([`Tables::check_source`]). A forged source would otherwise be
//! judged by the policy of the endpoint it claims to be, and could open a connection-tracking
//! entry whose "replies" walk past the victim's policy.

use super::Meta;
use crate::frame::Frame;
use crate::stats::DropReason;
use crate::tables::{MacAddr, PortId, Tables};
use crate::wire::ethernet;

/// The drop reason of an IPv4 packet `meta` (in `frame`) arriving on `port` with a source that
/// is not the endpoint's behind it, if so.
#[inline(always)]
pub fn ipv4(port: PortId, frame: &Frame<'_>, meta: &Meta, tables: &Tables) -> Option<DropReason> {
    // Parse checked the Ethernet header is there.
    let src = MacAddr(ethernet::Frame::new_unchecked(frame.data()).src());
    tables.check_source(port, meta.key.src, src)
}

/// The drop reason of an ARP frame arriving on `port` whose sender (`sender_ip`,
/// `sender_mac`, and the Ethernet source `eth_src`) is not the endpoint behind it, if so.
#[inline]
pub fn arp(
    port: PortId,
    sender_ip: [u8; 4],
    sender_mac: [u8; 6],
    eth_src: [u8; 6],
    tables: &Tables,
) -> Option<DropReason> {
    let claimed = tables.check_source(port, sender_ip.into(), MacAddr(sender_mac));
    (claimed.is_some() || sender_mac != eth_src).then_some(DropReason::ArpSpoofed)
}

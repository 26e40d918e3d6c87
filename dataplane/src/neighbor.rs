//! The MACs of the underlay neighbours the node sends to (the other nodes' uplinks and the
//! world's next hop), and the ARP the uplink speaks to learn them and to be found.
//!
//! The XDP program hands every frame of the uplink to the dataplane, so the kernel never sees
//! the uplink's ARP: the slow path answers requests for the node's address and learns the
//! senders it wants ([`crate::tables::Tables::wants_neighbor`]) into [`Neighbors`], and asks by
//! ARP, once a second, for the wanted ones it does not know ([`request`]). The agent publishes
//! what it learned in the next table revision; until then packets to that neighbour are dropped
//! as `neighbor-unresolved`.
//!
//! What it does not do: age entries out (a neighbour's MAC stays until it answers with another
//! one: a replaced node answers the next request), or learn anything a frame merely claims
//! about an address nobody asked for, so a host on the underlay cannot fill the table.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::tables::MacAddr;
use crate::wire::arp;

/// The MACs learned on the uplink, by address. Written by the slow path, read by the agent;
/// never by a worker (they see MACs only through the tables).
#[derive(Debug, Default)]
pub struct Neighbors {
    map: Mutex<BTreeMap<Ipv4Addr, MacAddr>>,
    /// Bumped on every change, so the agent republishes only when something changed.
    generation: AtomicU64,
}

impl Neighbors {
    /// An empty table.
    pub fn new() -> Neighbors {
        Neighbors::default()
    }

    /// Records that `ip` is at `mac`; whether that changed anything.
    pub fn learn(&self, ip: Ipv4Addr, mac: MacAddr) -> bool {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if m.insert(ip, mac) == Some(mac) {
            return false;
        }
        self.generation.fetch_add(1, Ordering::Release);
        true
    }

    /// The MAC of `ip`, if learned.
    pub fn get(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        let m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&ip).copied()
    }

    /// Every entry.
    pub fn snapshot(&self) -> BTreeMap<Ipv4Addr, MacAddr> {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many changes there were so far.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// The length of an Ethernet frame holding an ARP packet (without padding).
pub const ARP_FRAME_LEN: usize = 42;

/// An ARP packet on the uplink, as the slow path sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpSeen {
    /// 1: request, 2: reply.
    pub op: u16,
    /// The sender's addresses.
    pub sender: (Ipv4Addr, MacAddr),
    /// The target address.
    pub target: Ipv4Addr,
}

/// Reads the Ethernet/IPv4 ARP request or reply in `frame` (the worker's parse stage already checked it
/// is one; this checks again, since the slow path trusts no frame).
pub fn read(frame: &[u8]) -> Option<ArpSeen> {
    let body = frame.get(14..ARP_FRAME_LEN)?;
    if frame.get(12..14)? != [0x08, 0x06] {
        return None;
    }
    let p = arp::Packet::new_checked(body).ok()?;
    Some(ArpSeen {
        op: p.operation(),
        sender: (p.sender_ip().into(), MacAddr(p.sender_mac())),
        target: p.target_ip().into(),
    })
}

/// Writes an ARP frame: `op` (1 request, 2 reply) from `from` to `to` (for a request, the
/// target MAC is unknown: zeros in the packet, broadcast on the wire).
pub fn write(op: u16, from: (Ipv4Addr, MacAddr), to: (Ipv4Addr, MacAddr)) -> [u8; ARP_FRAME_LEN] {
    let mut f = [0u8; ARP_FRAME_LEN];
    let (dst, target_mac) = if op == 1 {
        (MacAddr::BROADCAST, MacAddr([0; 6]))
    } else {
        (to.1, to.1)
    };
    f[0..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&from.1.0);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..20].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(&from.1.0);
    f[28..32].copy_from_slice(&from.0.octets());
    f[32..38].copy_from_slice(&target_mac.0);
    f[38..42].copy_from_slice(&to.0.octets());
    f
}

/// An ARP request from the node (`own`: its underlay address and uplink MAC) for `ip`.
pub fn request(own: (Ipv4Addr, MacAddr), ip: Ipv4Addr) -> [u8; ARP_FRAME_LEN] {
    write(1, own, (ip, MacAddr::BROADCAST))
}

/// What the slow path does with an ARP packet `seen` on the uplink of a node whose own
/// addresses are `own`: learns its sender if `wanted` says so, and answers a request for the
/// node's address. Returns the reply to send, if any.
pub fn handle(
    seen: &ArpSeen,
    own: (Ipv4Addr, MacAddr),
    wanted: impl Fn(Ipv4Addr) -> bool,
    neighbors: &Neighbors,
) -> Option<[u8; ARP_FRAME_LEN]> {
    let (ip, mac) = seen.sender;
    if wanted(ip) && !mac.is_multicast() && mac != MacAddr([0; 6]) {
        neighbors.learn(ip, mac);
    }
    (seen.op == 1 && seen.target == own.0).then(|| write(2, own, seen.sender))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: (Ipv4Addr, MacAddr) = (
        Ipv4Addr::new(10, 199, 0, 11),
        MacAddr([0x0e, 0x78, 0x79, 0x75, 0, 1]),
    );
    const PEER: (Ipv4Addr, MacAddr) = (
        Ipv4Addr::new(10, 199, 0, 12),
        MacAddr([0x0e, 0x78, 0x79, 0x75, 0, 2]),
    );

    #[test]
    fn a_request_for_the_node_is_answered_and_its_wanted_sender_learned() {
        let n = Neighbors::new();
        let req = request(PEER, OWN.0);
        let seen = read(&req).unwrap();
        assert_eq!((seen.op, seen.sender, seen.target), (1, PEER, OWN.0));
        let reply = handle(&seen, OWN, |ip| ip == PEER.0, &n).expect("answered");
        let r = read(&reply).unwrap();
        assert_eq!((r.op, r.sender, r.target), (2, OWN, PEER.0));
        assert_eq!(&reply[0..6], &PEER.1.0, "sent to the asker");
        assert_eq!(n.get(PEER.0), Some(PEER.1));
        assert_eq!(n.generation(), 1);
        // The same again changes nothing.
        handle(&seen, OWN, |ip| ip == PEER.0, &n);
        assert_eq!(n.generation(), 1);
    }

    #[test]
    fn unwanted_senders_and_requests_for_others_teach_and_answer_nothing() {
        let n = Neighbors::new();
        let other = Ipv4Addr::new(10, 199, 0, 50);
        let seen = read(&request(PEER, other)).unwrap();
        assert_eq!(handle(&seen, OWN, |_| false, &n), None);
        assert!(n.snapshot().is_empty());
        // A reply to the node's own request teaches its sender.
        let seen = read(&write(2, PEER, OWN)).unwrap();
        assert_eq!(handle(&seen, OWN, |ip| ip == PEER.0, &n), None);
        assert_eq!(n.get(PEER.0), Some(PEER.1));
        // A broadcast sender MAC is never learned.
        let n = Neighbors::new();
        let seen = read(&write(2, (PEER.0, MacAddr::BROADCAST), OWN)).unwrap();
        handle(&seen, OWN, |_| true, &n);
        assert!(n.snapshot().is_empty());
    }

    #[test]
    fn read_refuses_what_is_not_ethernet_ipv4_arp() {
        let mut f = request(OWN, PEER.0);
        assert!(read(&f[..41]).is_none());
        f[12] = 0x86;
        assert!(read(&f).is_none());
        let mut f = request(OWN, PEER.0);
        f[18] = 8; // hardware length
        assert!(read(&f).is_none());
    }
}

//! Stage 8, **routing**: where a valid IPv4 packet goes. The gateway's own address is local
//! (the slow path answers it); a destination with an exact `/32` host route goes to its port;
//! one in another node's pod CIDR goes over the uplink ([`super::underlay::route_off_node`]);
//! every one needs a TTL left to spend.

use super::Meta;
use crate::stats::DropReason;
use crate::tables::{Neighbor, PortId, Tables};

/// What routing decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// For the gateway itself.
    Local,
    /// Send on towards this neighbour.
    Next(Neighbor),
    /// Send on to the world through this next hop (over the uplink), masqueraded to the node's
    /// address.
    World(Neighbor),
    /// Send on towards this neighbour (over the uplink) once encapsulated for peer `peer`
    /// (its index in the tables' peers): stage 10 seals it.
    Tunnel {
        /// The peer's uplink, behind this node's.
        next: Neighbor,
        /// The peer's index.
        peer: u16,
    },
    /// The TTL expired: answer the source, which is reached through `back`.
    TtlExpired {
        /// The route back to the packet's source.
        back: Neighbor,
    },
    /// Not deliverable.
    Drop(DropReason),
}

/// Routes the packet `meta` describes. An expired packet is answered with an ICMP error unless
/// RFC 1122 §3.2.2 forbids it (a non-initial fragment, or itself an ICMP error) or its source
/// has no route.
/// `ingress` is the port the packet arrived on.
#[inline(always)]
pub fn route(meta: &Meta, tables: &Tables, ingress: PortId) -> Route {
    if meta.key.dst == tables.gateway().ipv4 {
        return Route::Local;
    }
    let Some(next) = tables.route(meta.key.dst) else {
        return super::underlay::route_off_node(meta, tables, ingress);
    };
    if meta.ttl > 1 {
        return Route::Next(next);
    }
    expired(meta, tables)
}

/// The route of a packet whose TTL ran out: an ICMP error back to its source, if allowed and
/// routable.
#[cold]
#[inline(never)]
pub(super) fn expired(meta: &Meta, tables: &Tables) -> Route {
    if meta.has(Meta::LATER_FRAGMENT) || meta.has(Meta::ICMP_ERROR) {
        return Route::Drop(DropReason::TtlExceeded);
    }
    match tables.route(meta.key.src) {
        Some(back) => Route::TtlExpired { back },
        None => Route::Drop(DropReason::TtlExceededUnroutable),
    }
}

//! Stage 8, **routing**: where a valid IPv4 packet goes. The gateway's own address is local
//! (the slow path answers it); every other destination needs an exact `/32` route to a port,
//! and a TTL left to spend.

use super::Meta;
use crate::stats::DropReason;
use crate::tables::{Neighbor, Tables};

/// What routing decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// For the gateway itself.
    Local,
    /// Send on towards this neighbour.
    Next(Neighbor),
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
#[inline(always)]
pub fn route(meta: &Meta, tables: &Tables) -> Route {
    if meta.key.dst == tables.gateway().ipv4 {
        return Route::Local;
    }
    let Some(next) = tables.route(meta.key.dst) else {
        return Route::Drop(DropReason::NoRoute);
    };
    if meta.ttl > 1 {
        return Route::Next(next);
    }
    expired(meta, tables)
}

#[cold]
#[inline(never)]
fn expired(meta: &Meta, tables: &Tables) -> Route {
    if meta.has(Meta::LATER_FRAGMENT) || meta.has(Meta::ICMP_ERROR) {
        return Route::Drop(DropReason::TtlExceeded);
    }
    match tables.route(meta.key.src) {
        Some(back) => Route::TtlExpired { back },
        None => Route::Drop(DropReason::TtlExceededUnroutable),
    }
}

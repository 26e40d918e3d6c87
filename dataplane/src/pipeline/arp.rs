//! ARP frames, after stage 1: those about the gateway go to the slow path, whose `smoltcp`
//! interface answers them. ARP is not subject to policy (as in Cilium).

use super::{Outcome, Verdict};
use crate::stats::DropReason;
use crate::tables::Gateway;

/// The outcome of a well-formed ARP request or reply about `target`.
#[inline]
pub fn to_gateway(target: [u8; 4], gw: &Gateway) -> Outcome {
    if target == gw.ipv4.octets() {
        Outcome::verdict(Verdict::SlowPath)
    } else {
        Outcome::drop(DropReason::ArpNotForGateway)
    }
}

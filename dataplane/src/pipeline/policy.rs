//! Stage 6, **policy**: a flow the conntrack lookup did not know is judged against the sender's
//! egress table and the receiver's ingress table ([`crate::policy::evaluate_with`]), where a
//! `toFQDNs` rule allows the addresses its endpoint learned from DNS answers (the FQDN table of
//! [`Conntrack::fqdn`]). Packets of tracked flows never reach this stage.

use super::Meta;
use crate::conntrack::Conntrack;
use crate::policy::{Learned, PolicyTables, PolicyVerdict, evaluate_with};
use crate::wire::ip::proto;
use crate::wire::tcp::flags;

/// The verdict for a new flow: a drop, `Untracked` (allowed, but a TCP RST or an ICMP error,
/// which start no connection), or `New` (allowed: the commit stage tracks it).
#[inline]
pub fn admit(rules: &PolicyTables, meta: &Meta, now: u64, ct: &Conntrack) -> PolicyVerdict {
    let learned = Learned {
        table: ct.fqdn(),
        now,
        established: false,
    };
    if let Some(drop) = evaluate_with(rules, &meta.key, Some(learned)).drop() {
        return drop;
    }
    let untracked = meta.has(Meta::ICMP_ERROR)
        || (meta.key.proto == proto::TCP && meta.tcp_flags & flags::RST != 0);
    if untracked {
        PolicyVerdict::Untracked
    } else {
        PolicyVerdict::New
    }
}

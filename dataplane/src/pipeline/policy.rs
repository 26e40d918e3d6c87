//! Stage 6, **policy**: a flow the conntrack lookup did not know is judged against the sender's
//! egress table and the receiver's ingress table ([`crate::policy::evaluate`]). Packets of
//! tracked flows never reach this stage.

use super::Meta;
use crate::policy::{PolicyTables, PolicyVerdict, evaluate};
use crate::wire::ip::proto;
use crate::wire::tcp::flags;

/// The verdict for a new flow: a drop, `Untracked` (allowed, but a TCP RST or an ICMP error,
/// which start no connection), or `New` (allowed: the commit stage tracks it).
#[inline]
pub fn admit(rules: &PolicyTables, meta: &Meta) -> PolicyVerdict {
    if let Some(drop) = evaluate(rules, &meta.key).drop() {
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

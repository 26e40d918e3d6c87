//! DNS-aware policy's pieces that are not a pipeline stage.
//!
//! What it does:
//! - [`pattern`]: `matchName` and `matchPattern` selectors, normalized once and matched against
//!   names from the wire without allocating.
//! - [`rules`]: the compiled `rules.dns` and `toFQDNs` of a policy revision, which travel in
//!   `crate::policy::PolicyTables`.
//! - [`log`]: the bounded carrier of DNS observations from the workers to the control side,
//!   which feeds both the FQDN cache and `xylem monitor --type dns`.
//!
//! What it does not do: parse DNS messages (that is `crate::wire::dns`), decide what a query
//! may ask or learn what an answer says (the pipeline's DNS stage, `crate::pipeline::dns`), or
//! keep the learned addresses (`crate::learned`).

pub mod log;
pub mod pattern;
pub mod rules;

pub use pattern::{NameSelector, SelectorKind};
pub use rules::{DnsRule, DnsTables, FqdnScope};

/// What the DNS stage does beyond what policy says: the agent's `fqdn` options, published in
/// [`crate::tables::Tables`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsOptions {
    /// The rcode a denied query is answered with: REFUSED (5, the default) or NXDOMAIN (3).
    pub reject_rcode: u8,
    /// A learned address stays allowed at least this long, whatever its TTL (0: the TTL).
    pub min_ttl_s: u32,
    /// The most addresses one answer teaches an endpoint for its name (the agent's cache
    /// evicts beyond this across answers, oldest first).
    pub max_ips_per_name: u16,
}

impl Default for DnsOptions {
    fn default() -> Self {
        Self {
            reject_rcode: crate::wire::dns::RCODE_REFUSED,
            min_ttl_s: 0,
            max_ips_per_name: 50,
        }
    }
}

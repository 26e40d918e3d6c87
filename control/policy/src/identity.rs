//! Security identities: one number per distinct endpoint label set; and FQDN scopes: one
//! number per (endpoint address, `toFQDNs` selector) in use.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use xylem_dataplane::dns::NameSelector;
use xylem_dataplane::policy::{Identity, identity};

use super::labels::Labels;

/// Gives each distinct label set a numeric identity, stable for the allocator's lifetime:
/// endpoints with equal labels (namespace included) share one. Reserved identities (`host`,
/// `world`) and CIDR identities are not allocated here (see
/// [`xylem_dataplane::policy::identity`]).
///
/// It also numbers FQDN scopes ([`Self::fqdn_scope`]), which live as long as the identities:
/// the agent keeps one allocator for its whole run.
#[derive(Clone, Debug)]
pub struct IdentityAllocator {
    by_labels: BTreeMap<Labels, Identity>,
    next: Identity,
    scopes: BTreeMap<Ipv4Addr, BTreeMap<NameSelector, Scope>>,
    next_scope: u32,
}

/// A scope number and whether it was asked for since the last [`IdentityAllocator::sweep_scopes`].
#[derive(Clone, Copy, Debug)]
struct Scope {
    number: u32,
    used: bool,
}

impl Default for IdentityAllocator {
    fn default() -> Self {
        Self {
            by_labels: BTreeMap::new(),
            next: identity::FIRST_ENDPOINT,
            scopes: BTreeMap::new(),
            next_scope: 1,
        }
    }
}

impl IdentityAllocator {
    /// An allocator with no identity given yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The identity of `labels`, allocated on first use.
    pub fn identity(&mut self, labels: &Labels) -> Identity {
        if let Some(&id) = self.by_labels.get(labels) {
            return id;
        }
        let id = self.next;
        self.next += 1;
        self.by_labels.insert(labels.clone(), id);
        id
    }

    /// Every allocated identity with its labels (for `xylem identity list`), in label order.
    pub fn list(&self) -> impl Iterator<Item = (Identity, &Labels)> {
        self.by_labels.iter().map(|(l, &id)| (id, l))
    }

    /// Gives `labels` the identity `id` again (restoring a stored allocation, so identities stay
    /// the same across agent restarts). Identities outside the endpoint range
    /// ([`identity::FIRST_ENDPOINT`] up to [`identity::FIRST_FQDN`], where FQDN selectors'
    /// identities start), and a label set or number already taken, are ignored.
    pub fn restore(&mut self, labels: Labels, id: Identity) {
        if !(identity::FIRST_ENDPOINT..identity::FIRST_FQDN).contains(&id)
            || self.by_labels.contains_key(&labels)
            || self.by_labels.values().any(|&v| v == id)
        {
            return;
        }
        self.by_labels.insert(labels, id);
        self.next = self.next.max(id + 1);
    }

    /// Forgets identities not in `keep` (call after endpoints are removed).
    pub fn retain(&mut self, keep: impl Fn(Identity) -> bool) {
        self.by_labels.retain(|_, id| keep(*id));
    }

    /// The FQDN scope of `selector` on the local endpoint at `ip`: the number the addresses
    /// that endpoint learns for it are kept under. Numbered from 1, the same for the pair for
    /// as long as every compilation uses it, and never given to another pair: [`crate::compile`]
    /// forgets the pairs it did not use, so a deleted pod's address reused by a new pod starts
    /// from an empty scope instead of inheriting what the old pod learned.
    pub fn fqdn_scope(&mut self, ip: Ipv4Addr, selector: &NameSelector) -> u32 {
        let per_ip = self.scopes.entry(ip).or_default();
        if let Some(s) = per_ip.get_mut(selector) {
            s.used = true;
            return s.number;
        }
        let number = self.next_scope;
        // Four billion pairs would take a new pod every millisecond for fifty days of one
        // agent's run; past that, saturating beats panicking in the agent.
        self.next_scope = self.next_scope.saturating_add(1);
        per_ip.insert(selector.clone(), Scope { number, used: true });
        number
    }

    /// Every FQDN scope held, as (endpoint address, selector, scope).
    pub fn fqdn_scopes(&self) -> impl Iterator<Item = (Ipv4Addr, &NameSelector, u32)> {
        self.scopes
            .iter()
            .flat_map(|(&ip, m)| m.iter().map(move |(sel, s)| (ip, sel, s.number)))
    }

    /// Forgets the FQDN scopes not asked for since the previous call, and starts the next
    /// round. [`crate::compile`] calls it at its end.
    pub(crate) fn sweep_scopes(&mut self) {
        for m in self.scopes.values_mut() {
            m.retain(|_, s| std::mem::take(&mut s.used));
        }
        self.scopes.retain(|_, m| !m.is_empty());
    }
}

/// The name of a reserved identity, if `id` is one.
pub fn reserved_name(id: Identity) -> Option<&'static str> {
    match id {
        identity::ANY => Some("all"),
        identity::HOST => Some("reserved:host"),
        identity::WORLD => Some("reserved:world"),
        _ => None,
    }
}

//! Security identities: one number per distinct endpoint label set.

use std::collections::BTreeMap;

use xylem_dataplane::policy::{Identity, identity};

use super::labels::Labels;

/// Gives each distinct label set a numeric identity, stable for the allocator's lifetime:
/// endpoints with equal labels (namespace included) share one. Reserved identities (`host`,
/// `world`) and CIDR identities are not allocated here (see
/// [`xylem_dataplane::policy::identity`]).
#[derive(Clone, Debug)]
pub struct IdentityAllocator {
    by_labels: BTreeMap<Labels, Identity>,
    next: Identity,
}

impl Default for IdentityAllocator {
    fn default() -> Self {
        Self {
            by_labels: BTreeMap::new(),
            next: identity::FIRST_ENDPOINT,
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
    /// the same across agent restarts). Identities below [`identity::FIRST_ENDPOINT`], and a
    /// label set or number already taken, are ignored.
    pub fn restore(&mut self, labels: Labels, id: Identity) {
        if !(identity::FIRST_ENDPOINT..identity::FIRST_CIDR).contains(&id)
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

//! Stable ids for frontends and backends.
//!
//! A tracked connection keeps the ids of its backend and frontend, not their addresses, so an id
//! must name the same address for as long as a connection may hold it. Ids are therefore
//! allocated in increasing order and wrap at the maximum, skipping ids still in use: an id
//! freed now comes back only after every other id has been handed out, long after the
//! connections that held it have expired. Not persisted: connection tracking does not survive
//! a restart of the agent either.

use std::collections::{BTreeMap, BTreeSet};

use xylem_dataplane::services::MAX_ID;

/// Ids `1..=max` for keys of type `K`, stable while the key is kept (see the module
/// documentation).
#[derive(Clone, Debug)]
pub struct IdAllocator<K: Ord> {
    ids: BTreeMap<K, u32>,
    used: BTreeSet<u32>,
    /// The id to try first for the next key.
    next: u32,
    max: u32,
}

impl<K: Ord + Clone> Default for IdAllocator<K> {
    fn default() -> Self {
        Self::with_max(MAX_ID)
    }
}

impl<K: Ord + Clone> IdAllocator<K> {
    /// Ids `1..=max` (the dataplane's range is `1..=`[`MAX_ID`]; tests use small ones to
    /// wrap).
    pub fn with_max(max: u32) -> Self {
        Self {
            ids: BTreeMap::new(),
            used: BTreeSet::new(),
            next: 1,
            max: max.max(1),
        }
    }

    /// The id of `key`: its current one, or the next free id after the last one allocated.
    /// `None` when all `max` ids are in use.
    pub fn id(&mut self, key: &K) -> Option<u32> {
        if let Some(&id) = self.ids.get(key) {
            return Some(id);
        }
        if self.used.len() as u64 >= u64::from(self.max) {
            return None;
        }
        let mut id = self.next;
        while self.used.contains(&id) {
            id = if id >= self.max { 1 } else { id + 1 };
        }
        self.next = if id >= self.max { 1 } else { id + 1 };
        self.used.insert(id);
        self.ids.insert(key.clone(), id);
        Some(id)
    }

    /// The id of `key`, if it has one.
    pub fn get(&self, key: &K) -> Option<u32> {
        self.ids.get(key).copied()
    }

    /// Frees the ids of the keys `keep` rejects.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        let used = &mut self.used;
        self.ids.retain(|k, id| {
            let kept = keep(k);
            if !kept {
                used.remove(id);
            }
            kept
        });
    }

    /// How many ids are in use.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no id is in use.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_increasing_and_a_freed_id_comes_back_only_after_wrapping() {
        let mut a: IdAllocator<&str> = IdAllocator::with_max(4);
        assert_eq!(a.id(&"a"), Some(1));
        assert_eq!(a.id(&"b"), Some(2));
        assert_eq!(a.id(&"a"), Some(1), "stable");
        a.retain(|k| *k != "a");
        assert_eq!(a.get(&"a"), None);
        assert_eq!(a.id(&"c"), Some(3), "1 is free but not reused yet");
        assert_eq!(a.id(&"a"), Some(4), "a key that comes back gets a new id");
        // Wrapped: 1 is free, 2 (b) is skipped.
        assert_eq!(a.id(&"d"), Some(1));
        assert_eq!(a.id(&"e"), None, "all four in use");
        a.retain(|k| *k != "c");
        assert_eq!(a.id(&"e"), Some(3), "skips 2 and finds 3");
        assert_eq!(a.len(), 4);
    }
}

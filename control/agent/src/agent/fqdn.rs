//! The FQDN cache: per endpoint and DNS name, the addresses its answers gave, until when (wall
//! clock) and since when. The dataplane learns each address as an allowed destination itself,
//! before the answer reaches the pod (`xylem_dataplane::learned`); this cache is the control
//! side's memory of the same answers, for what the dataplane's table cannot do alone:
//! - keep at most `fqdn.max_ips_per_name` addresses per endpoint and name across answers,
//!   forgetting the oldest ones no connection uses ([`FqdnCache::evict`]);
//! - teach the facts again to every new tables revision, whose `toFQDNs` selectors may be new
//!   (a policy imported after the name was resolved) and whose scopes are numbered afresh after
//!   a restart ([`FqdnCache::relearn`]);
//! - survive restarts (stored as kind `fqdn-cache`, see [`crate::state::kind::FqdnCache`]);
//! - be listed and cleaned through the API.
//!
//! Pure data and rules: the thread that feeds it, the store and the API are the `dns` module's.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use xylem_dataplane::dns::{DnsTables, NameSelector};
use xylem_dataplane::learned::LearnedTable;

use crate::state::kind::{StoredFqdnIp, StoredFqdnName};

/// One address of a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct IpEntry {
    /// When it stops being an allowed destination (the latest answer's TTL, or the minimum).
    pub(super) expires: SystemTime,
    /// When an answer first gave it: eviction goes oldest first.
    pub(super) learned: SystemTime,
}

/// The addresses of one name, by address.
pub(super) type Ips = BTreeMap<Ipv4Addr, IpEntry>;

/// The names of one endpoint.
pub(super) type Names = BTreeMap<String, Ips>;

/// Addresses live connections use, as (endpoint address, destination).
pub(super) type InUse = HashSet<(Ipv4Addr, Ipv4Addr)>;

/// See the module documentation. Keyed by endpoint `namespace/name`, then by name as the wire
/// gives it (lowercase, fully qualified).
#[derive(Debug, Default)]
pub(super) struct FqdnCache {
    endpoints: BTreeMap<String, Names>,
    /// Endpoints changed since they were last written to the store.
    dirty: BTreeSet<String>,
}

/// Whether the fact `(scope, ip)` that `selector` made out of `name`'s answers may go: no other
/// cached name of the endpoint that the selector also matches still holds `ip`.
fn unheld(names: &Names, selector: &NameSelector, name: &str, ip: Ipv4Addr) -> bool {
    !names
        .iter()
        .any(|(n, ips)| n != name && ips.contains_key(&ip) && selector.matches(n.as_bytes()))
}

/// Forgets in `table` the facts of `endpoint` that `gone` (the addresses `name` no longer
/// holds) taught through its `toFQDNs` selectors, unless another of its `names` still holds
/// them. Returns the slots freed.
pub(super) fn forget(
    table: &LearnedTable,
    dns: &DnsTables,
    endpoint: Ipv4Addr,
    names: &Names,
    name: &str,
    gone: &[Ipv4Addr],
) -> usize {
    let mut freed = 0;
    for s in dns.scopes(endpoint) {
        if !s.selector.matches(name.as_bytes()) {
            continue;
        }
        for ip in gone {
            if unheld(names, &s.selector, name, *ip) {
                freed += table.forget(s.scope, *ip);
            }
        }
    }
    freed
}

/// Unix seconds of `t` (0 before 1970), rounded up so a stored fact never ends early.
fn unix_secs(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl FqdnCache {
    /// Records an answer of `endpoint` for `name` received at `at`: each address expires at
    /// `at` + its TTL, or + `min_ttl_s` if that is longer, and never earlier than it already
    /// did. Returns how many addresses the name has now.
    pub(super) fn observe(
        &mut self,
        endpoint: &str,
        name: &str,
        answers: &[(Ipv4Addr, u32)],
        at: SystemTime,
        min_ttl_s: u32,
    ) -> usize {
        let ips = self
            .endpoints
            .entry(endpoint.to_owned())
            .or_default()
            .entry(name.to_owned())
            .or_default();
        for &(ip, ttl) in answers {
            let expires = at + Duration::from_secs(u64::from(ttl.max(min_ttl_s)));
            let e = ips.entry(ip).or_insert(IpEntry {
                expires,
                learned: at,
            });
            e.expires = e.expires.max(expires);
        }
        self.dirty.insert(endpoint.to_owned());
        ips.len()
    }

    /// Keeps at most `cap` addresses of `name` of `endpoint` (at `endpoint_ip`): removes the
    /// oldest ones that `in_use` does not list (addresses in use stay, even beyond the cap).
    /// Returns what went.
    pub(super) fn evict(
        &mut self,
        endpoint: &str,
        endpoint_ip: Ipv4Addr,
        name: &str,
        cap: usize,
        in_use: &InUse,
    ) -> Vec<Ipv4Addr> {
        let Some(ips) = self
            .endpoints
            .get_mut(endpoint)
            .and_then(|n| n.get_mut(name))
        else {
            return Vec::new();
        };
        let excess = ips.len().saturating_sub(cap);
        if excess == 0 {
            return Vec::new();
        }
        let mut free: Vec<(SystemTime, SystemTime, Ipv4Addr)> = ips
            .iter()
            .filter(|(ip, _)| !in_use.contains(&(endpoint_ip, **ip)))
            .map(|(ip, e)| (e.learned, e.expires, *ip))
            .collect();
        free.sort();
        let gone: Vec<Ipv4Addr> = free.into_iter().take(excess).map(|(_, _, ip)| ip).collect();
        for ip in &gone {
            ips.remove(ip);
        }
        self.dirty.insert(endpoint.to_owned());
        gone
    }

    /// The names of `endpoint`.
    pub(super) fn names(&self, endpoint: &str) -> Option<&Names> {
        self.endpoints.get(endpoint)
    }

    /// Every endpoint's names.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&String, &Names)> {
        self.endpoints.iter()
    }

    /// How many (endpoint, name) entries there are.
    pub(super) fn len(&self) -> usize {
        self.endpoints.values().map(BTreeMap::len).sum()
    }

    /// Whether an address expired by `now`.
    pub(super) fn any_expired(&self, now: SystemTime) -> bool {
        self.endpoints
            .values()
            .flat_map(|n| n.values())
            .flat_map(|ips| ips.values())
            .any(|e| e.expires <= now)
    }

    /// Drops the addresses expired by `now` that no live connection of their endpoint uses
    /// (`in_use`, with each endpoint's address from `ips_of`), then the names left without an
    /// address and the endpoints left without a name. Returns how many addresses went.
    pub(super) fn expire(
        &mut self,
        now: SystemTime,
        ips_of: &BTreeMap<String, Ipv4Addr>,
        in_use: &InUse,
    ) -> usize {
        let mut dropped = 0;
        for (key, names) in &mut self.endpoints {
            let ep = ips_of.get(key).copied().unwrap_or(Ipv4Addr::UNSPECIFIED);
            let before: usize = names.values().map(BTreeMap::len).sum();
            for ips in names.values_mut() {
                ips.retain(|ip, e| e.expires > now || in_use.contains(&(ep, *ip)));
            }
            names.retain(|_, ips| !ips.is_empty());
            let after: usize = names.values().map(BTreeMap::len).sum();
            if after != before {
                dropped += before - after;
                self.dirty.insert(key.clone());
            }
        }
        self.endpoints.retain(|_, n| !n.is_empty());
        dropped
    }

    /// Teaches `table` every unexpired address again, under each `toFQDNs` scope (in `dns`) of
    /// its endpoint (at `ips_of[endpoint]`) whose selector matches the name: the monotonic
    /// expiry is `now_mono` plus what is left of the wall-clock one. Returns the facts taught.
    pub(super) fn relearn(
        &self,
        ips_of: &BTreeMap<String, Ipv4Addr>,
        dns: &DnsTables,
        table: &LearnedTable,
        (now_mono, now_wall): (u64, SystemTime),
    ) -> usize {
        let mut taught = 0;
        for (key, names) in &self.endpoints {
            let Some(&ep) = ips_of.get(key) else {
                continue;
            };
            for s in dns.scopes(ep) {
                let selected = names
                    .iter()
                    .filter(|(n, _)| s.selector.matches(n.as_bytes()));
                for (ip, e) in selected.flat_map(|(_, ips)| ips) {
                    let Ok(left) = e.expires.duration_since(now_wall) else {
                        continue;
                    };
                    let left = u64::try_from(left.as_nanos()).unwrap_or(u64::MAX / 2);
                    let expiry = now_mono.saturating_add(left);
                    table.learn(now_mono, s.scope, *ip, expiry, 0);
                    taught += 1;
                }
            }
        }
        taught
    }

    /// Removes the names `selector` matches (every name when `None`) and forgets the facts
    /// their addresses taught, as [`forget`] says. Returns (names, addresses) removed and marks
    /// the endpoints changed.
    pub(super) fn clean(
        &mut self,
        selector: Option<&NameSelector>,
        ips_of: &BTreeMap<String, Ipv4Addr>,
        dns: &DnsTables,
        table: &LearnedTable,
    ) -> (usize, usize) {
        let (mut names_gone, mut ips_gone) = (0, 0);
        for (key, names) in &mut self.endpoints {
            let matching: Vec<String> = names
                .keys()
                .filter(|n| selector.is_none_or(|s| s.matches(n.as_bytes())))
                .cloned()
                .collect();
            for name in matching {
                let Some(ips) = names.remove(&name) else {
                    continue;
                };
                let gone: Vec<Ipv4Addr> = ips.into_keys().collect();
                if let Some(&ep) = ips_of.get(key) {
                    forget(table, dns, ep, names, &name, &gone);
                }
                names_gone += 1;
                ips_gone += gone.len();
                self.dirty.insert(key.clone());
            }
        }
        self.endpoints.retain(|_, n| !n.is_empty());
        (names_gone, ips_gone)
    }

    /// Drops the cache of every endpoint not in `keep`; returns their keys.
    pub(super) fn retain_endpoints(&mut self, keep: &BTreeSet<&str>) -> Vec<String> {
        let gone: Vec<String> = self
            .endpoints
            .keys()
            .filter(|k| !keep.contains(k.as_str()))
            .cloned()
            .collect();
        for k in &gone {
            self.endpoints.remove(k);
            self.dirty.insert(k.clone());
        }
        gone
    }

    /// Drops the cache of `endpoint` (deleted), without marking it for the store: its key is
    /// deleted there with the endpoint.
    pub(super) fn remove_endpoint(&mut self, endpoint: &str) {
        self.endpoints.remove(endpoint);
        self.dirty.remove(endpoint);
    }

    /// Marks `endpoints` changed again (their write failed).
    pub(super) fn redirty(&mut self, endpoints: Vec<String>) {
        self.dirty.extend(endpoints);
    }

    /// Whether an endpoint changed since the last [`Self::take_dirty`].
    pub(super) fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The changed endpoints, as the store keeps them (`None`: nothing left, delete the key).
    pub(super) fn take_dirty(&mut self) -> Vec<(String, Option<Vec<StoredFqdnName>>)> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|k| {
                let v = self.stored(&k);
                (k, v)
            })
            .collect()
    }

    /// Every endpoint, as the store keeps it.
    pub(super) fn all_stored(&self) -> Vec<(String, Option<Vec<StoredFqdnName>>)> {
        self.endpoints
            .keys()
            .map(|k| (k.clone(), self.stored(k)))
            .collect()
    }

    /// `endpoint`'s names as stored: each name's addresses oldest first.
    fn stored(&self, endpoint: &str) -> Option<Vec<StoredFqdnName>> {
        let names = self.endpoints.get(endpoint)?;
        Some(
            names
                .iter()
                .map(|(name, ips)| {
                    let mut v: Vec<(&Ipv4Addr, &IpEntry)> = ips.iter().collect();
                    v.sort_by_key(|(ip, e)| (e.learned, **ip));
                    StoredFqdnName {
                        name: name.clone(),
                        ips: v
                            .into_iter()
                            .map(|(ip, e)| StoredFqdnIp {
                                ip: *ip,
                                expires_at: unix_secs(e.expires),
                            })
                            .collect(),
                    }
                })
                .collect(),
        )
    }

    /// Restores `endpoint`'s stored names at `now`: names normalized as the wire gives them,
    /// addresses already expired left out, at most `cap` per name (the newest, for a cap
    /// lowered since they were stored). Stored order is learning order.
    pub(super) fn restore(
        &mut self,
        endpoint: &str,
        stored: Vec<StoredFqdnName>,
        now: SystemTime,
        cap: usize,
    ) {
        let names = self.endpoints.entry(endpoint.to_owned()).or_default();
        for s in stored {
            let name = xylem_dataplane::dns::pattern::normalize(&s.name);
            let ips = names.entry(name).or_default();
            let n = s.ips.len();
            for (i, stored_ip) in s.ips.into_iter().enumerate().skip(n.saturating_sub(cap)) {
                let expires = UNIX_EPOCH + Duration::from_secs(stored_ip.expires_at);
                if expires <= now {
                    continue;
                }
                // Earlier in the list, learned earlier: a nanosecond apart keeps the order.
                let learned = now - Duration::from_nanos((n - i) as u64);
                ips.insert(stored_ip.ip, IpEntry { expires, learned });
            }
        }
        names.retain(|_, ips| !ips.is_empty());
        if names.is_empty() {
            self.endpoints.remove(endpoint);
        }
    }
}

#[cfg(test)]
mod tests;

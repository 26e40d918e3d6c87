//! The key manager: which ESP keys are in use, and the SAs built from them.
//!
//! The key file (see [`xylem_api::keyfile`]) is read at start and polled every
//! [`KEY_POLL`] by the underlay thread (see the `underlay` module). Its last key is the
//! current one: every encrypting peer's outbound SA uses it as soon as it appears. A key that
//! stops being current, or an earlier line of the file, is accepted on receipt for the grace
//! period, then dropped: peers switch to a new key within seconds of each other, and a key
//! nobody sends with should not stay trusted. A file that does not parse keeps the keys in use
//! and is reported; a file missing at start leaves the agent without a key, so encrypting
//! peers' traffic is dropped (`no-key`), never sent in clear.
//!
//! The SAs, and each peer's counters, are kept across table revisions (by peer and SPI, with
//! their key material): a rebuild of the tables for any other reason neither restarts an
//! outbound sequence counter (which would make the peer drop our packets as replays) nor
//! forgets a replay window.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use xylem_api::config::{AgentConfig, NodeConfig};
use xylem_api::keyfile::{KeyFile, Secret};
use xylem_api::{EncryptionKeyView, EncryptionPeerView};
use xylem_dataplane::esp::{KEYS_IN_MAX, Key, KeysIn, PeerCounters, PeerSas, SaIn, SaOut};

/// How often the key file is checked for a change.
pub(super) const KEY_POLL: Duration = Duration::from_secs(1);

/// The drop reasons `GET /v1/encryption` reports, zeros included.
pub(super) const ESP_DROP_REASONS: [&str; 10] = [
    "no-key",
    "esp-auth-failed",
    "esp-replay",
    "esp-unknown-spi",
    "esp-truncated",
    "esp-bad-payload",
    "esp-unknown-peer",
    "esp-required",
    "esp-seq-exhausted",
    "esp-too-big",
];

/// The keys in use: the current one (sent and received with) and those in their grace period
/// (received only), by key id. Pure: changed only by [`KeyRing::apply`] and
/// [`KeyRing::expire`], given the time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct KeyRing {
    /// The key sent with, with its id; `None` before any valid file.
    current: Option<(u8, Secret)>,
    /// Keys accepted on receipt until their deadline, by id (never the current id).
    grace: BTreeMap<u8, (Secret, Instant)>,
}

impl KeyRing {
    /// The ring once `file` is read at `now`: its last key becomes current; the previous
    /// current key and the file's other keys are accepted for `grace` from the moment they
    /// stopped being current or were first seen (a deadline already running is kept). A key
    /// id that comes back with other key material replaces the old key.
    pub(super) fn apply(&self, file: &KeyFile, now: Instant, grace: Duration) -> KeyRing {
        let cur = file.current();
        let mut next = KeyRing {
            current: Some((cur.id, cur.material.clone())),
            grace: BTreeMap::new(),
        };
        let until = now + grace;
        let mut keep = |id: u8, material: &Secret, deadline: Instant| {
            if id != cur.id {
                next.grace
                    .entry(id)
                    .or_insert_with(|| (material.clone(), deadline));
            }
        };
        // Older first so that a key id rewritten in the file takes the file's material.
        for k in &file.keys()[..file.keys().len() - 1] {
            let deadline = match self.grace.get(&k.id) {
                Some((m, d)) if *m == k.material => *d,
                _ => until,
            };
            keep(k.id, &k.material, deadline);
        }
        if let Some((id, m)) = &self.current {
            keep(*id, m, until);
        }
        for (id, (m, d)) in &self.grace {
            keep(*id, m, *d);
        }
        next
    }

    /// Drops the grace keys whose deadline passed; whether any did.
    pub(super) fn expire(&mut self, now: Instant) -> bool {
        let before = self.grace.len();
        self.grace.retain(|_, (_, d)| *d > now);
        self.grace.len() != before
    }

    /// The current key id.
    pub(super) fn current_id(&self) -> Option<u8> {
        self.current.as_ref().map(|(id, _)| *id)
    }

    /// The keys accepted on receipt: the current one, then the grace keys that expire last,
    /// at most [`KEYS_IN_MAX`] in all (the dataplane's per-peer limit).
    pub(super) fn inbound(&self) -> Vec<(u8, &Secret)> {
        let mut out: Vec<(u8, &Secret)> = self.current.iter().map(|(id, m)| (*id, m)).collect();
        let mut grace: Vec<(&u8, &(Secret, Instant))> = self.grace.iter().collect();
        grace.sort_by_key(|(_, (_, d))| std::cmp::Reverse(*d));
        out.extend(grace.into_iter().map(|(id, (m, _))| (*id, m)));
        out.truncate(KEYS_IN_MAX);
        out
    }

    /// As the status reports them.
    pub(super) fn views(&self, now: Instant) -> Vec<EncryptionKeyView> {
        let view = |id: u8, m: &Secret, state: &str, left: Option<u64>| EncryptionKeyView {
            id,
            spi: u32::from(id),
            state: state.into(),
            algorithm: m.algorithm().into(),
            expires_in_s: left,
        };
        let inbound: BTreeSet<u8> = self.inbound().iter().map(|(id, _)| *id).collect();
        self.current
            .iter()
            .map(|(id, m)| view(*id, m, "current", None))
            .chain(
                self.grace
                    .iter()
                    .filter(|(id, _)| inbound.contains(id))
                    .map(|(id, (m, d))| {
                        let left = d.saturating_duration_since(now).as_secs();
                        view(*id, m, "grace", Some(left))
                    }),
            )
            .collect()
    }
}

/// What the key file looked like when last read: a change of any part reads it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FileSignature {
    mtime: Option<SystemTime>,
    size: u64,
    content: u64,
}

/// The key file's text (or why it could not be read) and its signature.
pub(super) fn read_key_file(path: &Path) -> (Result<String, String>, Option<FileSignature>) {
    let meta = std::fs::metadata(path);
    match std::fs::read(path) {
        Ok(bytes) => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            let sig = FileSignature {
                mtime: meta.as_ref().ok().and_then(|m| m.modified().ok()),
                size: bytes.len() as u64,
                content: h.finish(),
            };
            let text = String::from_utf8(bytes)
                .map_err(|_| "is not UTF-8 text: write one key per line".to_string());
            (text, Some(sig))
        }
        Err(e) => (
            Err(format!(
                "cannot be read ({e}): create it with one `KEYID rfc4106(gcm(aes)) HEXKEY 128` \
                 line per key"
            )),
            None,
        ),
    }
}

/// The key manager's state: the ring, what the file looked like, its last error, and the SAs
/// and counters kept across revisions.
#[derive(Clone, Debug, Default)]
pub(super) struct KeyState {
    pub(super) ring: KeyRing,
    /// The signature of the file last read (`None`: not read, or unreadable).
    signature: Option<FileSignature>,
    /// Why the file was last refused, while it still is.
    pub(super) last_error: Option<String>,
    out: BTreeMap<(String, u8), (Secret, Arc<SaOut>)>,
    inbound: BTreeMap<(String, u8), (Secret, Arc<SaIn>)>,
    counters: BTreeMap<String, Arc<PeerCounters>>,
}

impl KeyState {
    /// Takes the file as read at `now` (its text or why it could not be read); whether the
    /// keys changed. A file whose signature did not change is not parsed again; a bad one
    /// keeps the ring and sets [`Self::last_error`] (logged once per change).
    pub(super) fn load(
        &mut self,
        path: &Path,
        read: (Result<String, String>, Option<FileSignature>),
        now: Instant,
        grace: Duration,
    ) -> bool {
        let (text, sig) = read;
        if sig.is_some() && sig == self.signature {
            return false;
        }
        let parsed = text.and_then(|t| KeyFile::parse(&t).map_err(|e| e.to_string()));
        self.signature = sig;
        match parsed {
            Ok(file) => {
                let next = self.ring.apply(&file, now, grace);
                self.last_error = None;
                if next == self.ring {
                    return false;
                }
                tracing::info!(
                    key_file = %path.display(),
                    current = file.current().id,
                    keys = file.keys().len(),
                    "ESP keys loaded"
                );
                self.ring = next;
                true
            }
            Err(why) => {
                let why = format!("key file {}: {why}", path.display());
                if self.last_error.as_ref() != Some(&why) {
                    let kept = match self.ring.current_id() {
                        Some(id) => format!("still sending with key {id}"),
                        None => "no key: encrypted peers' traffic is dropped (no-key)".into(),
                    };
                    tracing::error!(error = %why, "ESP key file refused; {kept}");
                }
                self.last_error = Some(why);
                false
            }
        }
    }

    /// Whether a grace key's deadline passed (a cheap check before [`KeyRing::expire`]).
    pub(super) fn due(&self, now: Instant) -> bool {
        self.ring.grace.values().any(|(_, d)| *d <= now)
    }

    /// The SAs of every peer in `peers` (those that encrypt), built from the ring and from the
    /// SAs and counters already in use (kept by peer, SPI and key material); those of keys and
    /// peers gone are forgotten.
    pub(super) fn peer_sas<'a>(
        &mut self,
        peers: impl Iterator<Item = &'a NodeConfig>,
    ) -> BTreeMap<String, Arc<PeerSas>> {
        let mut out_kept = BTreeMap::new();
        let mut in_kept = BTreeMap::new();
        let mut counters_kept = BTreeMap::new();
        let mut sas = BTreeMap::new();
        for n in peers {
            let counters = self.counters.get(&n.name).cloned().unwrap_or_default();
            counters_kept.insert(n.name.clone(), Arc::clone(&counters));
            let mut sa = PeerSas {
                out: None,
                inbound: KeysIn::new(),
                counters,
            };
            if let Some((id, m)) = &self.ring.current {
                let k = (n.name.clone(), *id);
                let so = reuse(&self.out, &k, m)
                    .or_else(|| key(*id, m).map(|key| Arc::new(SaOut::new(key))));
                if let Some(so) = so {
                    sa.out = Some(Arc::clone(&so));
                    out_kept.insert(k, (m.clone(), so));
                }
            }
            for (id, m) in self.ring.inbound() {
                let k = (n.name.clone(), id);
                let si = reuse(&self.inbound, &k, m)
                    .or_else(|| key(id, m).map(|key| Arc::new(SaIn::new(key))));
                if let Some(si) = si
                    && sa.inbound.insert_shared(Arc::clone(&si)).is_ok()
                {
                    in_kept.insert(k, (m.clone(), si));
                }
            }
            sas.insert(n.name.clone(), Arc::new(sa));
        }
        self.out = out_kept;
        self.inbound = in_kept;
        self.counters = counters_kept;
        sas
    }

    /// Every encrypting peer's counters, as the status reports them.
    pub(super) fn peer_views<'a>(
        &self,
        peers: impl Iterator<Item = &'a NodeConfig>,
    ) -> Vec<EncryptionPeerView> {
        use std::sync::atomic::Ordering::Relaxed;
        peers
            .map(|n| {
                let mut v = EncryptionPeerView {
                    node: n.name.clone(),
                    node_ip: Some(n.node_ip),
                    ..Default::default()
                };
                if let Some(c) = self.counters.get(&n.name) {
                    v.tx_packets = c.tx_packets.load(Relaxed);
                    v.tx_bytes = c.tx_bytes.load(Relaxed);
                    v.rx_packets = c.rx_packets.load(Relaxed);
                    v.rx_bytes = c.rx_bytes.load(Relaxed);
                }
                v
            })
            .collect()
    }
}

/// The SA kept for `k`, if it was built from the same key material.
fn reuse<T>(
    kept: &BTreeMap<(String, u8), (Secret, Arc<T>)>,
    k: &(String, u8),
    m: &Secret,
) -> Option<Arc<T>> {
    kept.get(k)
        .filter(|(old, _)| old == m)
        .map(|(_, sa)| Arc::clone(sa))
}

/// The dataplane key of `id` (its SPI) from `m`. The parser already checked its length, so a
/// refusal is logged, not returned: that peer gets no SA and drops (`no-key`).
fn key(id: u8, m: &Secret) -> Option<Key> {
    match Key::new(u32::from(id), m.expose()) {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::error!(key_id = id, error = %e, "ESP key refused by the dataplane");
            None
        }
    }
}

/// The nodes of `nodes` traffic with which `cfg`'s agent encrypts.
pub(super) fn encrypting_peers<'a>(
    cfg: &'a AgentConfig,
    nodes: impl Iterator<Item = &'a NodeConfig> + 'a,
) -> impl Iterator<Item = &'a NodeConfig> + 'a {
    let encrypts = cfg.encryption.is_some();
    nodes.filter(move |n| n.name != cfg.node_name && n.encrypted(encrypts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const K1: &str = "0102030405060708090a0b0c0d0e0f1011121314";
    const K2: &str = "a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4";
    const K3: &str = "b1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4";
    const GRACE: Duration = Duration::from_secs(300);

    fn file(lines: &[(u8, &str)]) -> String {
        lines
            .iter()
            .map(|(id, k)| format!("{id} rfc4106(gcm(aes)) {k} 128\n"))
            .collect()
    }

    fn load(s: &mut KeyState, text: &str, now: Instant) -> bool {
        let sig = FileSignature {
            mtime: None,
            size: text.len() as u64,
            content: {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                text.hash(&mut h);
                h.finish()
            },
        };
        s.load(
            &PathBuf::from("/k"),
            (Ok(text.to_string()), Some(sig)),
            now,
            GRACE,
        )
    }

    fn peer(name: &str) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            node_ip: [10, 199, 0, 12].into(),
            pod_cidr: "10.200.1.0/24".parse().unwrap(),
            encryption: None,
        }
    }

    fn ids(s: &KeyState) -> Vec<(u8, String)> {
        s.ring
            .views(Instant::now())
            .into_iter()
            .map(|v| (v.id, v.state))
            .collect()
    }

    #[test]
    fn a_rotation_sends_with_the_new_key_at_once_and_accepts_the_old_for_the_grace_period() {
        let t0 = Instant::now();
        let mut s = KeyState::default();
        assert!(load(&mut s, &file(&[(1, K1)]), t0));
        assert_eq!(s.ring.current_id(), Some(1));
        let n = [peer("node2")];
        let before = s.peer_sas(n.iter());
        let out1 = before["node2"].out.clone().unwrap();
        assert_eq!(out1.next_seq().unwrap(), 1);

        // Rotation: key 2 replaces key 1 in the file.
        assert!(load(
            &mut s,
            &file(&[(2, K2)]),
            t0 + Duration::from_secs(10)
        ));
        assert_eq!(ids(&s), [(2, "current".into()), (1, "grace".into())]);
        let after = s.peer_sas(n.iter());
        assert_eq!(after["node2"].out.as_ref().unwrap().key().spi(), 2);
        assert_eq!(after["node2"].inbound.len(), 2);
        // Counters are the same across rebuilds.
        assert!(Arc::ptr_eq(
            &before["node2"].counters,
            &after["node2"].counters
        ));

        // Within the grace period nothing expires; after it key 1 goes.
        assert!(!s.ring.clone().expire(t0 + Duration::from_secs(300)));
        assert!(s.due(t0 + Duration::from_secs(311)));
        assert!(s.ring.expire(t0 + Duration::from_secs(311)));
        assert_eq!(ids(&s), [(2, "current".into())]);
        assert_eq!(s.peer_sas(n.iter())["node2"].inbound.len(), 1);
    }

    #[test]
    fn a_rebuild_keeps_the_sequence_counter_and_a_changed_key_under_the_same_id_does_not() {
        let t0 = Instant::now();
        let mut s = KeyState::default();
        load(&mut s, &file(&[(1, K1)]), t0);
        let n = [peer("node2")];
        let a = s.peer_sas(n.iter())["node2"].out.clone().unwrap();
        a.next_seq().unwrap();
        let b = s.peer_sas(n.iter())["node2"].out.clone().unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(b.next_seq().unwrap(), 2);
        // Same id, new material: a new SA (and no grace key under the same SPI).
        load(&mut s, &file(&[(1, K2)]), t0);
        let c = s.peer_sas(n.iter())["node2"].out.clone().unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c.next_seq().unwrap(), 1);
        assert_eq!(ids(&s), [(1, "current".into())]);
    }

    #[test]
    fn an_invalid_file_keeps_the_keys_and_says_why_and_at_most_four_keys_are_accepted() {
        let t0 = Instant::now();
        let mut s = KeyState::default();
        load(&mut s, &file(&[(1, K1), (2, K2)]), t0);
        assert!(!load(&mut s, "1 cbc(aes) 00 128\n", t0));
        assert_eq!(s.ring.current_id(), Some(2));
        assert!(
            s.last_error
                .as_deref()
                .unwrap()
                .contains("line 1: algorithm")
        );
        // Fixed again: the error goes.
        load(&mut s, &file(&[(1, K1), (2, K2), (3, K3)]), t0);
        assert!(s.last_error.is_none());
        for (i, id) in [4u8, 5, 6].into_iter().enumerate() {
            let later = t0 + Duration::from_secs(i as u64 + 1);
            let k = format!("{id:02x}").repeat(20);
            // Each new current key pushes the previous one into grace.
            load(&mut s, &file(&[(1, K1), (2, K2), (3, K3), (id, &k)]), later);
        }
        let inbound = s.ring.inbound();
        assert_eq!(inbound.len(), KEYS_IN_MAX);
        assert_eq!(inbound[0].0, 6);
        assert_eq!(
            s.peer_sas([peer("n")].iter())["n"].inbound.len(),
            KEYS_IN_MAX
        );
    }

    #[test]
    fn without_a_file_there_is_no_key_and_no_sa_to_send_with() {
        let mut s = KeyState::default();
        assert!(!s.load(
            &PathBuf::from("/nope"),
            read_key_file(Path::new("/nonexistent/xylem-keys")),
            Instant::now(),
            GRACE,
        ));
        assert!(s.last_error.as_deref().unwrap().contains("create it"));
        let sas = s.peer_sas([peer("node2")].iter());
        assert!(sas["node2"].out.is_none() && sas["node2"].inbound.is_empty());
    }
}

//! The control side of DNS-aware policy: the `xylem-dns` thread, which drains the workers' DNS
//! log every [`TICK`] into the FQDN cache (the `fqdn` module) and, while a monitor client
//! listens for `dns`, into the monitor's DNS queue; the cache's restore, store writes, listing
//! and cleaning.
//!
//! - Every answer with rcode NOERROR and IPv4 addresses updates its endpoint's entry for the
//!   name; a name over `fqdn.max_ips_per_name` loses its oldest addresses that no live
//!   connection uses, and their facts in the FQDN table (conntrack is read only then).
//! - Every [`SWEEP_EVERY`]: addresses expired and unused are dropped, and the caches of
//!   endpoints that are gone.
//! - Changed endpoints are written at most once per [`WRITE_EVERY`], from this thread, never
//!   from a worker; the whole cache at a clean stop.
//! - After every tables revision is built (and at start, before any socket is registered) the
//!   cache's unexpired facts are taught to the FQDN table under the revision's scopes.
//!
//! Locks: the cache is taken last (after `bindings`, `policy` and `services`, whose holders
//! relearn under it) and never held while taking another; the store is written under it, so
//! writes of the cache reach the store in the order they were made.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam::queue::ArrayQueue;
use xylem_dataplane::conntrack::{Conntrack, DNS_LOG_CAPACITY};
use xylem_dataplane::dns::NameSelector;
use xylem_dataplane::dns::log::{DnsAction, DnsLog, DnsRecord};
use xylem_dataplane::learned::LearnedTable;
use xylem_dataplane::monitor::EventType;
use xylem_dataplane::policy::RuleOrigin;
use xylem_dataplane::tables::Tables;

use xylem_api::config::{FqdnConfig, PortConfig, PortKind};
use xylem_api::{DnsCounters, FqdnCacheEntry, FqdnCacheIp, FqdnCleaned};

use super::endpoints::endpoint_key;
use super::fqdn::{FqdnCache, InUse, forget};
use super::{AgentState, Refusal, Rejected, reject};
use crate::Error;
use crate::state::{Kind, StateStore, kind};

/// How often the thread drains the DNS log: the monitor's tick.
pub const TICK: Duration = Duration::from_millis(5);

/// How often changed cache entries are written at most.
pub const WRITE_EVERY: Duration = Duration::from_secs(1);

/// How often expired addresses and gone endpoints are dropped.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// DNS events the thread may queue for the monitor dispatcher before new ones count as lost:
/// a full log's worth.
pub const DNS_EVENT_QUEUE: usize = DNS_LOG_CAPACITY;

/// A DNS record as the monitor shows it: built by the `xylem-dns` thread, with its wall-clock
/// time and the rule's origin resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsEvent {
    /// When the worker saw it.
    pub time: SystemTime,
    /// The worker.
    pub worker: u16,
    /// The packet's source.
    pub src: Ipv4Addr,
    /// The packet's destination.
    pub dst: Ipv4Addr,
    /// Its source port.
    pub sport: u16,
    /// Its destination port.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// The DNS message ID.
    pub id: u16,
    /// An answer, else a query.
    pub response: bool,
    /// The question's name, fully qualified.
    pub query: String,
    /// The question's type.
    pub qtype: u16,
    /// The rcode (for a refused query, the one the dataplane answered with).
    pub rcode: u16,
    /// Whether the dataplane refused the query (else it was forwarded).
    pub refused: bool,
    /// The `rules.dns` rule that allowed it, if any.
    pub rule: Option<RuleOrigin>,
    /// The IPv4 answers, with their TTLs in seconds.
    pub answers: Vec<(Ipv4Addr, u32)>,
}

impl DnsEvent {
    fn new(r: &DnsRecord, time: SystemTime, tables: &Tables) -> Self {
        DnsEvent {
            time,
            worker: r.worker,
            src: r.src,
            dst: r.dst,
            sport: r.sport,
            dport: r.dport,
            proto: r.proto,
            id: r.id,
            response: r.response,
            query: r.qname.as_str().to_owned(),
            qtype: r.qtype,
            rcode: r.rcode,
            refused: r.action == DnsAction::Refused,
            rule: r.rule.and_then(|x| tables.policy().origin(x).cloned()),
            answers: r.answers().to_vec(),
        }
    }
}

/// The agent's DNS side: see the module documentation.
pub(super) struct DnsSide {
    cache: Mutex<FqdnCache>,
    table: Arc<LearnedTable>,
    log: Arc<DnsLog>,
    /// The workers' clock's epoch.
    epoch: Instant,
    opts: FqdnConfig,
    events: ArrayQueue<DnsEvent>,
    events_lost: AtomicU64,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for DnsSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsSide").field("opts", &self.opts).finish()
    }
}

/// `namespace/name` → address of every pod endpoint of `bindings`.
fn pod_ips(bindings: &[Option<PortConfig>]) -> BTreeMap<String, Ipv4Addr> {
    bindings
        .iter()
        .flatten()
        .filter(|p| p.kind == PortKind::Pod)
        .map(|p| (endpoint_key(p), p.ip))
        .collect()
}

/// The stored cache: each endpoint's value decoded, or skipped with a warning.
fn stored_cache(store: &dyn StateStore) -> Result<Vec<(String, Vec<kind::StoredFqdnName>)>, Error> {
    let mut out = Vec::new();
    for (key, v) in store.list(kind::FqdnCache::NAME)? {
        match serde_json::from_value(v) {
            Ok(names) => out.push((key, names)),
            Err(e) => tracing::warn!(
                endpoint = %key,
                error = %e,
                "stored FQDN cache entry skipped (fqdn-cache.json in the state directory); its \
                 pod resolves its names again"
            ),
        }
    }
    Ok(out)
}

impl DnsSide {
    /// The DNS side of an agent starting with `bindings` and its first tables `first`: the
    /// stored cache restored (endpoints no longer bound are dropped from the store) and taught
    /// to `ct`'s FQDN table, so that it holds before any socket is registered.
    pub(super) fn restore(
        cfg: &FqdnConfig,
        store: &dyn StateStore,
        bindings: &[Option<PortConfig>],
        first: &Tables,
        ct: &Conntrack,
        epoch: Instant,
    ) -> Result<Self, Error> {
        let ips_of = pod_ips(bindings);
        let now = SystemTime::now();
        let mut cache = FqdnCache::default();
        let mut stale = Vec::new();
        for (key, names) in stored_cache(store)? {
            if ips_of.contains_key(&key) {
                cache.restore(&key, names, now, usize::from(cfg.max_ips_per_name));
            } else {
                stale.push((key, None));
            }
        }
        if !stale.is_empty() {
            store.put_many(kind::FqdnCache::NAME, stale)?;
        }
        let side = DnsSide {
            cache: Mutex::new(cache),
            table: ct.fqdn_table(),
            log: Arc::clone(ct.dns_log()),
            epoch,
            opts: *cfg,
            events: ArrayQueue::new(DNS_EVENT_QUEUE),
            events_lost: AtomicU64::new(0),
            stop: Arc::new(AtomicBool::new(false)),
            thread: Mutex::new(None),
        };
        let names = side.lock().map(|c| c.len()).unwrap_or(0);
        let taught = side.relearn(first, bindings);
        if names > 0 {
            tracing::info!(
                names,
                taught,
                "restored the FQDN cache from the state store"
            );
        }
        Ok(side)
    }

    fn lock(&self) -> Result<MutexGuard<'_, FqdnCache>, Rejected> {
        self.cache
            .lock()
            .map_err(|_| reject(Refusal::Failed, "-", "agent state poisoned"))
    }

    /// Now on the workers' clock (ns) and on the wall clock.
    fn now(&self) -> (u64, SystemTime) {
        let mono = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        (mono, SystemTime::now())
    }

    /// Teaches the cache's unexpired facts to the FQDN table under the scopes of `tables`,
    /// built for `bindings`. Returns how many.
    pub(super) fn relearn(&self, tables: &Tables, bindings: &[Option<PortConfig>]) -> usize {
        let ips_of = pod_ips(bindings);
        let Ok(cache) = self.lock() else {
            return 0;
        };
        cache.relearn(&ips_of, tables.policy().dns(), &self.table, self.now())
    }

    /// Drops the cache of `endpoint`, which is being deleted (its key goes from the store with
    /// the endpoint's).
    pub(super) fn drop_endpoint(&self, endpoint: &str) {
        if let Ok(mut c) = self.lock() {
            c.remove_endpoint(endpoint);
        }
    }

    /// The DNS stage's counters and the cache's size.
    pub(super) fn counters(&self) -> DnsCounters {
        let s = self.log.stats();
        DnsCounters {
            queries_forwarded: s.queries_forwarded,
            queries_refused: s.queries_refused,
            answers: s.answers,
            learned: s.learned,
            log_lost: s.lost,
            cache_names: self.lock().map_or(0, |c| c.len() as u64),
        }
    }

    /// DNS events the monitor could not queue.
    pub(super) fn events_lost(&self) -> u64 {
        self.events_lost.load(Ordering::Relaxed)
    }

    /// Writes the changed endpoints of `cache` (every endpoint when `all`), under its lock.
    fn save(&self, store: &dyn StateStore, cache: &mut FqdnCache, all: bool) -> Result<(), Error> {
        let changes = if all {
            let mut c = cache.all_stored();
            c.extend(cache.take_dirty().into_iter().filter(|(_, v)| v.is_none()));
            c
        } else {
            cache.take_dirty()
        };
        if changes.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = changes.iter().map(|(k, _)| k.clone()).collect();
        let values = changes
            .into_iter()
            .map(|(k, v)| Ok((k, v.map(serde_json::to_value).transpose()?)))
            .collect::<Result<Vec<_>, serde_json::Error>>()
            .map_err(|e| Error::State(format!("the FQDN cache cannot be encoded for the store: {e}; it is kept in memory and written again in a second")));
        let r = values.and_then(|v| store.put_many(kind::FqdnCache::NAME, v));
        if r.is_err() {
            cache.redirty(keys);
        }
        r
    }

    /// Writes the whole cache (a clean stop).
    pub(super) fn save_all(&self, store: &dyn StateStore) -> Result<(), Error> {
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| Error::Agent("FQDN cache poisoned".into()))?;
        self.save(store, &mut cache, true)
    }

    /// Stops the thread and waits for it.
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// When the thread's periodic work is due next.
struct Ticker {
    sweep: Instant,
    write: Instant,
}

/// Starts the `xylem-dns` thread, which runs until the agent's DNS side is stopped or the
/// agent is gone; it holds the agent for one tick at a time.
pub(super) fn start(agent: &Arc<AgentState>) -> Result<(), Error> {
    let weak: Weak<AgentState> = Arc::downgrade(agent);
    let stop = Arc::clone(&agent.dns.stop);
    let thread = std::thread::Builder::new()
        .name("xylem-dns".into())
        .spawn(move || {
            let now = Instant::now();
            let mut t = Ticker {
                sweep: now + SWEEP_EVERY,
                write: now,
            };
            while !stop.load(Ordering::Relaxed) {
                let Some(agent) = weak.upgrade() else {
                    return;
                };
                agent.dns_tick(&mut t);
                drop(agent);
                std::thread::sleep(TICK);
            }
        })
        .map_err(|source| Error::Io {
            what: "starting the DNS thread".into(),
            source,
        })?;
    if let Ok(mut slot) = agent.dns.thread.lock() {
        *slot = Some(thread);
    }
    Ok(())
}

impl AgentState {
    /// `namespace/name` → address of every endpoint, those whose interface is missing too.
    fn endpoint_ips(&self) -> BTreeMap<String, Ipv4Addr> {
        self.endpoints()
            .into_iter()
            .map(|e| (format!("{}/{}", e.namespace, e.name), e.ip))
            .collect()
    }

    /// The (endpoint, destination) pairs of the live connections from the endpoints at
    /// `srcs`: one walk of the conntrack.
    fn in_use(&self, srcs: &BTreeSet<Ipv4Addr>) -> InUse {
        if srcs.is_empty() {
            return InUse::default();
        }
        let (now, _) = self.dns.now();
        self.ct
            .entries(now)
            .filter(|e| e.expires_in_ns > 0 && srcs.contains(&e.orig.src))
            .map(|e| (e.orig.src, e.orig.dst))
            .collect()
    }

    /// One tick of the `xylem-dns` thread (see the module documentation).
    fn dns_tick(&self, t: &mut Ticker) {
        let now = Instant::now();
        let sweep = now >= t.sweep;
        let write = now >= t.write && self.dns.lock().is_ok_and(|c| c.is_dirty());
        if self.dns.log.is_empty() && !sweep && !write {
            return;
        }
        let ips_of = self.endpoint_ips();
        let tables = self.tables.load();
        let over = self.take_records(&ips_of, &tables);
        if !over.is_empty() {
            self.evict_over(over, &tables);
        }
        if sweep {
            self.sweep(&ips_of);
            t.sweep = now + SWEEP_EVERY;
        }
        if now >= t.write
            && let Ok(mut cache) = self.dns.lock()
            && cache.is_dirty()
        {
            if let Err(e) = self.dns.save(self.store.as_ref(), &mut cache, false) {
                tracing::warn!(error = %e, "writing the FQDN cache failed; retrying in a second");
            }
            t.write = now + WRITE_EVERY;
        }
    }

    /// Drains the DNS log into the cache (and the monitor's queue while a client listens for
    /// `dns`); returns the (endpoint, its address, name) entries now over the cap.
    fn take_records(
        &self,
        ips_of: &BTreeMap<String, Ipv4Addr>,
        tables: &Tables,
    ) -> Vec<(String, Ipv4Addr, String)> {
        let by_ip: BTreeMap<Ipv4Addr, &str> =
            ips_of.iter().map(|(k, ip)| (*ip, k.as_str())).collect();
        let monitor = self.monitor_mask.load(Ordering::Relaxed) & EventType::Dns.bit() != 0;
        let (cap, min_ttl) = (
            usize::from(self.dns.opts.max_ips_per_name),
            self.dns.opts.min_ttl_s,
        );
        let mut over = Vec::new();
        let Ok(mut cache) = self.dns.lock() else {
            return over;
        };
        for _ in 0..DNS_LOG_CAPACITY {
            let Some(r) = self.dns.log.pop() else {
                break;
            };
            let at = self.wall_time(usize::from(r.worker), r.time_ns);
            if monitor && self.dns.events.push(DnsEvent::new(&r, at, tables)).is_err() {
                self.dns.events_lost.fetch_add(1, Ordering::Relaxed);
            }
            if !r.response || r.rcode != 0 || r.answer_count == 0 {
                continue;
            }
            let Some(key) = by_ip.get(&r.endpoint) else {
                continue;
            };
            let name = r.qname.as_str();
            if cache.observe(key, name, r.answers(), at, min_ttl) > cap
                && !over.iter().any(|(k, _, n)| k == key && n == name)
            {
                over.push((key.to_string(), r.endpoint, name.to_owned()));
            }
        }
        over
    }

    /// Evicts the addresses of `over` beyond the cap, and forgets their facts.
    fn evict_over(&self, over: Vec<(String, Ipv4Addr, String)>, tables: &Tables) {
        let srcs = over.iter().map(|(_, ip, _)| *ip).collect();
        let in_use = self.in_use(&srcs);
        let cap = usize::from(self.dns.opts.max_ips_per_name);
        let Ok(mut cache) = self.dns.lock() else {
            return;
        };
        for (key, ep, name) in over {
            let gone = cache.evict(&key, ep, &name, cap, &in_use);
            if gone.is_empty() {
                continue;
            }
            if let Some(names) = cache.names(&key) {
                forget(
                    &self.dns.table,
                    tables.policy().dns(),
                    ep,
                    names,
                    &name,
                    &gone,
                );
            }
            tracing::debug!(endpoint = %key, %name, evicted = ?gone, "FQDN cache over fqdn.max_ips_per_name");
        }
    }

    /// Drops the caches of endpoints that are gone and the addresses expired and unused.
    fn sweep(&self, ips_of: &BTreeMap<String, Ipv4Addr>) {
        let keep: BTreeSet<&str> = ips_of.keys().map(String::as_str).collect();
        let now = SystemTime::now();
        let expired = match self.dns.lock() {
            Ok(mut cache) => {
                cache.retain_endpoints(&keep);
                cache.any_expired(now)
            }
            Err(_) => return,
        };
        if !expired {
            return;
        }
        // Outside the lock: a conntrack walk takes milliseconds on a large table.
        let in_use = self.in_use(&ips_of.values().copied().collect());
        if let Ok(mut cache) = self.dns.lock() {
            cache.expire(now, ips_of, &in_use);
        }
    }

    /// Takes every queued DNS event into `out` (the monitor's dispatcher).
    pub fn drain_dns_events(&self, out: &mut Vec<DnsEvent>) {
        while let Some(ev) = self.dns.events.pop() {
            out.push(ev);
        }
    }

    /// The FQDN cache: per endpoint and name, the addresses, when they expire and whether a
    /// live connection uses them.
    pub fn fqdn_cache(&self) -> Vec<FqdnCacheEntry> {
        let ips_of = self.endpoint_ips();
        let in_use = self.in_use(&ips_of.values().copied().collect());
        let Ok(cache) = self.dns.lock() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, names) in cache.iter() {
            let ep = ips_of.get(key).copied().unwrap_or(Ipv4Addr::UNSPECIFIED);
            for (name, ips) in names {
                out.push(FqdnCacheEntry {
                    endpoint: key.clone(),
                    name: name.clone(),
                    ips: ips
                        .iter()
                        .map(|(ip, e)| FqdnCacheIp {
                            ip: *ip,
                            expires_at: crate::server::rfc3339(e.expires),
                            in_use: in_use.contains(&(ep, *ip)),
                        })
                        .collect(),
                });
            }
        }
        out
    }

    /// Removes from the FQDN cache the names `matchpattern` (a Cilium `matchPattern`) matches,
    /// every name when `None`, forgets the facts they taught, and writes the change.
    pub fn fqdn_clean(&self, matchpattern: Option<&str>) -> Result<FqdnCleaned, Rejected> {
        let selector = matchpattern
            .map(|p| {
                NameSelector::pattern(p).map_err(|why| {
                    reject(
                        Refusal::Invalid,
                        "matchpattern",
                        format!(
                            "pattern {p:?} is invalid: {why}; write a Cilium matchPattern such \
                             as '*.domain.com', or leave it out to clean every name"
                        ),
                    )
                })
            })
            .transpose()?;
        let ips_of = self.endpoint_ips();
        let tables = self.tables.load();
        let mut cache = self.dns.lock()?;
        let (names, ips) = cache.clean(
            selector.as_ref(),
            &ips_of,
            tables.policy().dns(),
            &self.dns.table,
        );
        self.dns
            .save(self.store.as_ref(), &mut cache, false)
            .map_err(|e| reject(Refusal::Failed, "-", e.to_string()))?;
        tracing::info!(
            pattern = matchpattern.unwrap_or("*"),
            names,
            ips,
            "FQDN cache cleaned"
        );
        Ok(FqdnCleaned { names, ips })
    }
}

//! The table shared by several threads (one handle each, as workers hold them): racing inserts
//! of the same flows, churn checked against per-thread models, lookups racing the backward
//! shifts of another thread's garbage collection, shared GC, flush racing inserts.
//!
//! Threads run in rounds separated by barriers: within a round every thread uses the same
//! `now`, so expiry means the same thing to all of them and the models can be exact; between
//! rounds the main thread checks the table against the models.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Barrier, Mutex};

use super::*;

fn table(capacity: usize, timeouts: CtTimeouts) -> Conntrack {
    Conntrack::new(&CtConfig {
        capacity,
        endpoint_limit: capacity,
        timeouts,
        seed: 7,
    })
}

fn key(thread: u32, i: u32, proto: u8) -> FlowKey {
    FlowKey {
        src: Ipv4Addr::from_bits(0x0a00_0000 | (thread << 16) | i),
        dst: Ipv4Addr::new(10, 255, 0, 1),
        sport: 1000 + (i % 7) as u16,
        dport: 53,
        proto,
    }
}

fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

/// What `decide` does for a packet of `k` that policy allows: hit → update, else insert.
/// Returns whether the flow is tracked afterwards.
fn packet(ct: &Conntrack, now: u64, k: &FlowKey, tcp: u8) -> bool {
    match ct.probe(now, k) {
        Probe::Hit { slot, orig, .. } => {
            ct.update(now, slot, orig, tcp);
            true
        }
        Probe::Vacant { slot, reuse } => ct.insert(now, slot, reuse, k, tcp, 1, 0).is_ok(),
    }
}

/// The canonical flows of every listed entry, each exactly once.
fn listed_once(ct: &Conntrack, now: u64) -> HashSet<(Canon, u8)> {
    let mut seen = HashSet::new();
    for e in ct.entries(now) {
        let (c, _) = canon(&e.orig);
        assert!(seen.insert((c, e.orig.proto)), "{:?} listed twice", e.orig);
    }
    seen
}

#[test]
fn two_threads_inserting_the_same_flows_leave_one_entry_each() {
    const FLOWS: u32 = 20_000;
    const ROUND: u32 = 250;
    let ct = table(FLOWS as usize, CtTimeouts::default());
    let barrier = Arc::new(Barrier::new(2));
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let ct = ct.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                for round in 0..FLOWS / ROUND {
                    // Both start each round together, on the same flows: worker 1 sees them in
                    // the reply direction, half of them first.
                    barrier.wait();
                    for i in round * ROUND..(round + 1) * ROUND {
                        let k = key(0, i, proto::TCP);
                        let k = if w == 1 && i % 2 == 1 {
                            k.reversed()
                        } else {
                            k
                        };
                        assert!(packet(&ct, 1, &k, tcp_flags::SYN));
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(ct.len(), FLOWS as usize);
    let s = ct.stats();
    assert_eq!(s.created, u64::from(FLOWS), "{s:?}");
    assert_eq!(s.reused + s.full + s.gc_removed, 0, "{s:?}");
    assert_eq!(listed_once(&ct, 1).len(), FLOWS as usize);
    for i in 0..FLOWS {
        let k = key(0, i, proto::TCP);
        assert!(ct.get(1, &k).is_some(), "{k:?}");
    }
    eprintln!("{} of {FLOWS} inserts raced", s.races);
}

/// What one thread of [`concurrent_churn_matches_per_thread_models`] knows of its entries: per
/// key, the expiry before its last refresh, and its expiry now.
type Model = HashMap<FlowKey, (u64, u64)>;

/// Three threads, each with its own flows, share a small table (long clusters): inserts,
/// refreshes, policy removals and GC of all of them move each other's entries around. After
/// every round each thread's model must match the table (but for what no model can know of:
/// see the checks), the table must list every entry once, and the counters must add up.

#[test]
fn concurrent_churn_matches_per_thread_models() {
    const THREADS: u32 = 3;
    const KEYS: u32 = 1_000;
    const ROUNDS: u64 = 120;
    const STEPS: u32 = 600;
    let udp = CtTimeouts::default().udp;
    let ct = table(3_000, CtTimeouts::default());
    let barrier = Arc::new(Barrier::new(THREADS as usize + 1));
    let models: Vec<Arc<Mutex<Model>>> = (0..THREADS)
        .map(|_| Arc::new(Mutex::new(HashMap::new())))
        .collect();
    // Entries live four rounds: the table stays near its capacity, with expired entries to
    // collect and to reuse.
    let now_of = move |round: u64| round * (udp / 4);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let ct = ct.clone();
            let barrier = Arc::clone(&barrier);
            let model = Arc::clone(&models[t as usize]);
            std::thread::spawn(move || {
                let mut next = rng(0x9e37_79b9 + u64::from(t));
                let (mut removed, mut stale) = (0u64, 0u64);
                for round in 0..ROUNDS {
                    barrier.wait();
                    let now = now_of(round);
                    let mut model = model.lock().unwrap();
                    for step in 0..STEPS {
                        let k = key(t + 1, (next() % u64::from(KEYS)) as u32, proto::UDP);
                        match ct.probe(now, &k) {
                            Probe::Hit { slot, .. } if next().is_multiple_of(16) => {
                                if ct.remove_for_policy(slot) {
                                    model.remove(&k);
                                    removed += 1;
                                } else {
                                    stale += 1;
                                }
                            }
                            Probe::Hit { slot, orig, .. } => {
                                // A moved entry keeps its old time: so does the model.
                                if ct.update(now, slot, orig, 0) {
                                    let before = model.get(&k).map_or(0, |&(_, e)| e);
                                    model.insert(k, (before, now + udp));
                                } else {
                                    stale += 1;
                                }
                            }
                            Probe::Vacant { slot, reuse } => {
                                // Each thread is an owner of its own.
                                let owner = t as PortId + 1;
                                if ct.insert(now, slot, reuse, &k, 0, 1, owner).is_ok() {
                                    model.insert(k, (now + udp, now + udp));
                                }
                            }
                        }
                        if step % 5 == 0 {
                            ct.gc(now, (next() % 64) as usize);
                        }
                    }
                    drop(model);
                    barrier.wait();
                }
                (removed, stale)
            })
        })
        .collect();
    let mut evicted_before = 0;
    for round in 0..ROUNDS {
        barrier.wait();
        barrier.wait();
        // Every thread waits for the next round: the table is quiet.
        let now = now_of(round);
        let mut live = 0;
        // Two things no thread's model can know of. When a full table's probe path holds
        // nothing expired, an insert evicts another thread's unanswered entry (every entry here
        // is one): as many live entries may be missing as were evicted this round. And a
        // refresh is two stores, the state word and then the time, without a lock: an entry
        // moved between the two keeps its earlier time (the refresh is lost: the entry may be
        // missing once its expiry before that refresh has passed), and the time may land on
        // the entry that took its slot (that one lives on: a few may be there past their
        // model's expiry, never past a refresh's lifetime from now). Anything else is wrong.
        // Either kind leaves the model for what the table says.
        let evicted = ct.stats().evicted;
        let mut evictions = evicted - evicted_before;
        let mut extra = 0;
        for (t, model) in models.iter().enumerate() {
            let mut model = model.lock().unwrap();
            for i in 0..KEYS {
                let k = key(t as u32 + 1, i, proto::UDP);
                let (before, expiry) = model.get(&k).copied().unwrap_or((0, 0));
                let want = now < expiry;
                let there = ct.get(now, &k).is_some();
                if want && !there {
                    if now < before {
                        assert!(evictions > 0, "round {round} {k:?}: missing, not evicted");
                        evictions -= 1;
                    }
                    model.remove(&k);
                    continue;
                }
                if there && !want {
                    let left = ct
                        .entries(now)
                        .find(|e| e.orig == k && e.expires_in_ns > 0)
                        .map_or(0, |e| e.expires_in_ns);
                    assert!(left <= udp, "round {round} {k:?}: {left} ns left");
                    extra += 1;
                    model.insert(k, (now + left, now + left));
                    live += 1;
                    continue;
                }
                live += usize::from(want);
                assert_eq!(there, want, "round {round} {k:?}");
                assert_eq!(ct.get(now, &k.reversed()).is_some(), want);
            }
        }
        assert!(
            extra <= 3,
            "round {round}: {extra} entries past their expiry"
        );
        evicted_before = evicted;
        let listed = listed_once(&ct, now);
        assert_eq!(listed.len(), ct.len(), "round {round}");
        assert!(ct.len() >= live && ct.len() <= ct.capacity());
        let s = ct.stats();
        assert_eq!(
            ct.len() as u64,
            s.created - s.reused - s.evicted - s.gc_removed - s.policy_removed,
            "round {round}: {s:?}"
        );
        // Each thread's count is exactly its entries, whatever the others did to them.
        for t in 0..THREADS {
            let owner = t as PortId + 1;
            let mine = ct.entries(now).filter(|e| e.owner == owner).count();
            assert_eq!(ct.owned_by(owner), mine, "round {round}, owner {owner}");
        }
    }
    let mut removed = 0;
    for h in handles {
        let (r, stale) = h.join().unwrap();
        removed += r;
        eprintln!("thread: {r} policy removals, {stale} stale handles");
    }
    let s = ct.stats();
    assert_eq!(s.policy_removed, removed);
    assert!(s.gc_removed > 1_000 && s.reused > 100, "{s:?}");
    assert_eq!(s.races, 0, "each thread has its own flows");
}

/// A reader looks up long-lived entries without pause while a writer fills the same clusters
/// with short-lived ones and collects them, shifting the long-lived entries back and forth:
/// the reader never misses one and always gets its direction right.
#[test]
fn lookups_never_miss_an_entry_another_thread_is_moving() {
    let timeouts = CtTimeouts {
        // About 1,400 short-lived entries at a time (one created every 10 ns of `now`): with
        // the 600 long-lived ones the table runs at its full load, in long clusters.
        udp: 14_000,
        tcp_syn: u64::MAX / 4,
        ..CtTimeouts::default()
    };
    let ct = table(2_000, timeouts);
    let stable: Vec<FlowKey> = (0..600).map(|i| key(1, i, proto::TCP)).collect();
    for k in &stable {
        assert!(packet(&ct, 0, k, tcp_flags::SYN));
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let ct = ct.clone();
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut next = rng(42);
            let mut now = 0u64;
            for _ in 0..400_000 {
                now += 10;
                let k = key(2, (next() % 3_000) as u32, proto::UDP);
                packet(&ct, now, &k, 0);
                ct.gc(now, 16);
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            ct.stats().gc_removed
        })
    };
    let mut lookups = 0u64;
    let mut next = rng(7);
    while !done.load(std::sync::atomic::Ordering::Relaxed) || lookups < 100_000 {
        let k = &stable[(next() % stable.len() as u64) as usize];
        let (k, orig) = if next().is_multiple_of(2) {
            (*k, true)
        } else {
            (k.reversed(), false)
        };
        assert_eq!(
            ct.get(1, &k),
            Some((CtState::SynSent, orig)),
            "lookup {lookups}"
        );
        lookups += 1;
    }
    let removed = writer.join().unwrap();
    assert!(removed > 100_000, "the writer collected only {removed}");
    for k in &stable {
        assert!(ct.get(1, k).is_some());
    }
    let listed = listed_once(&ct, 1);
    assert!(
        stable
            .iter()
            .all(|k| listed.contains(&(canon(k).0, proto::TCP)))
    );
}

#[test]
fn two_threads_collecting_remove_each_expired_entry_once() {
    const N: u32 = 30_000;
    let udp = CtTimeouts::default().udp;
    let ct = table(40_000, CtTimeouts::default());
    for i in 0..N {
        // Even entries expire at `udp`, odd ones at `2 × udp - 1` (created while the even ones
        // are still live, so none is reused).
        let now = if i % 2 == 0 { 0 } else { udp - 1 };
        assert!(packet(&ct, now, &key(0, i, proto::UDP), 0));
    }
    let now = udp + 1;
    let barrier = Arc::new(Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let ct = ct.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let mut removed = 0;
                for _ in 0..1_000_000 {
                    if ct.len() == (N / 2) as usize {
                        break;
                    }
                    let r = ct.gc(now, 64);
                    assert!(r <= 64);
                    removed += r;
                }
                removed
            })
        })
        .collect();
    let removed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(removed, (N / 2) as usize);
    assert_eq!(ct.stats().gc_removed, u64::from(N / 2));
    assert_eq!(ct.stats().reused, 0);
    assert_eq!(ct.len(), (N / 2) as usize);
    for i in 0..N {
        assert_eq!(
            ct.get(now, &key(0, i, proto::UDP)).is_some(),
            i % 2 == 1,
            "{i}"
        );
    }
    assert_eq!(listed_once(&ct, now).len(), (N / 2) as usize);
}

/// A flush on one thread while another keeps creating flows: afterwards the count matches
/// the entries, each listed once and each findable.
#[test]
fn a_flush_racing_inserts_keeps_the_table_consistent() {
    let ct = table(20_000, CtTimeouts::default());
    for i in 0..10_000 {
        assert!(packet(&ct, 0, &key(0, i, proto::UDP), 0));
    }
    let inserter = {
        let ct = ct.clone();
        std::thread::spawn(move || {
            for i in 0..10_000 {
                packet(&ct, 1, &key(1, i, proto::UDP), 0);
            }
        })
    };
    for _ in 0..5 {
        ct.flush();
    }
    inserter.join().unwrap();
    let listed = listed_once(&ct, 1);
    assert_eq!(listed.len(), ct.len());
    for e in ct.entries(1) {
        assert!(ct.get(1, &e.orig).is_some(), "{:?}", e.orig);
    }
    ct.flush();
    assert!(ct.is_empty());
    assert_eq!(ct.entries(1).count(), 0);
}

/// Three threads create flows for one owner at once: the owner ends with exactly its limit,
/// never more, and every flow beyond it is counted as refused.
#[test]
fn an_owner_s_limit_holds_with_several_workers_creating_its_flows_at_once() {
    const THREADS: u32 = 3;
    const FLOWS: u32 = 2_000;
    const LIMIT: usize = 500;
    let ct = Conntrack::new(&CtConfig {
        capacity: 10_000,
        endpoint_limit: LIMIT,
        timeouts: CtTimeouts::default(),
        seed: 11,
    });
    let barrier = Arc::new(Barrier::new(THREADS as usize));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let ct = ct.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let mut refused = 0u64;
                for i in 0..FLOWS {
                    let k = key(t + 1, i, proto::UDP);
                    let Probe::Vacant { slot, reuse } = ct.probe(0, &k) else {
                        panic!("{k:?} is new")
                    };
                    match ct.insert(0, slot, reuse, &k, 0, 1, 7) {
                        Ok(_) => assert!(ct.owned_by(7) <= LIMIT),
                        Err(r) => {
                            assert_eq!(r, CtRefusal::EndpointLimit);
                            refused += 1;
                        }
                    }
                }
                refused
            })
        })
        .collect();
    let refused: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!((ct.owned_by(7), ct.len()), (LIMIT, LIMIT));
    assert_eq!(refused, u64::from(THREADS * FLOWS) - LIMIT as u64);
    assert_eq!(ct.stats().endpoint_limit, refused);
    assert_eq!(ct.entries(0).filter(|e| e.owner == 7).count(), LIMIT);
}

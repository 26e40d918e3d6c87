//! Single-threaded behaviour of the tracker: layout, both directions on one entry, capacity,
//! expiry and GC, TCP states.

use std::collections::HashSet;

use super::*;

/// A table of `capacity` whose owners may each fill it (the limit has tests of its own).
fn cfg(capacity: usize) -> CtConfig {
    CtConfig {
        capacity,
        endpoint_limit: capacity,
        timeouts: CtTimeouts::default(),
        seed: 1,
    }
}

fn key(i: u32, sport: u16, dport: u16, proto: u8) -> FlowKey {
    FlowKey {
        src: Ipv4Addr::from_bits(0x0a00_0000 | i),
        dst: Ipv4Addr::new(10, 1, 0, 1),
        sport,
        dport,
        proto,
    }
}

/// Tracks `k` (a new flow owned by port 0) unless it is; whether it is tracked afterwards.
fn add(ct: &mut Conntrack, now: u64, k: &FlowKey) -> bool {
    match ct.probe(now, k) {
        Probe::Vacant { slot, reuse } => {
            ct.insert(now, slot, reuse, k, tcp_flags::SYN, 1, 0).is_ok()
        }
        Probe::Hit { .. } => true,
    }
}

#[test]
fn slot_is_32_bytes() {
    assert_eq!(Conntrack::BYTES_PER_SLOT, 32);
    let ct = Conntrack::new(&cfg(30_000));
    assert!(ct.bytes_per_entry() < 43.0, "{}", ct.bytes_per_entry());
}

#[test]
fn both_directions_hit_one_entry() {
    let mut ct = Conntrack::new(&cfg(16));
    let k = key(5, 40000, 80, proto::TCP);
    assert!(add(&mut ct, 0, &k));
    assert!(matches!(ct.probe(1, &k), Probe::Hit { orig: true, .. }));
    assert!(matches!(
        ct.probe(1, &k.reversed()),
        Probe::Hit { orig: false, .. }
    ));
    assert_eq!(ct.get(1, &k.reversed()), Some((CtState::SynSent, false)));
    assert_eq!(ct.entries(1).next().unwrap().orig, k);
}

#[test]
fn full_refuses_and_counts_then_gc_frees() {
    let mut ct = Conntrack::new(&cfg(100));
    for i in 0..100 {
        let k = key(i, 1, 80, proto::TCP);
        assert!(add(&mut ct, 0, &k));
        // Answered: nothing to evict.
        let Probe::Hit { slot, .. } = ct.probe(0, &k) else {
            panic!()
        };
        ct.update(0, slot, false, tcp_flags::SYN | tcp_flags::ACK);
    }
    assert!(!add(&mut ct, 0, &key(1000, 1, 80, proto::TCP)));
    assert_eq!(ct.stats().full, 1);
    assert_eq!(ct.len(), 100);
    // After the SYN timeout everything is collectable, in bounded steps.
    let later = CtTimeouts::default().tcp_syn + 1;
    let mut removed = 0;
    let mut calls = 0;
    while !ct.is_empty() {
        let r = ct.gc(later, 16);
        removed += r;
        calls += 1;
        assert!(r <= 16);
        assert!(calls < 1000);
    }
    assert_eq!(removed, 100);
    assert!(add(&mut ct, later, &key(1000, 1, 80, proto::TCP)));
}

/// A full table makes room for a new flow by evicting the oldest entry on its probe path that
/// never saw a reply; answered entries stay, and a path with none to evict refuses the flow.
#[test]
fn a_full_table_evicts_the_oldest_unanswered_entry_on_the_path() {
    let ct = Conntrack::new(&cfg(64));
    let old: Vec<FlowKey> = (0..64).map(|i| key(i, 1, 53, proto::UDP)).collect();
    for (i, k) in old.iter().enumerate() {
        let h = insert_new(&ct, i as u64, k);
        if i % 2 == 0 {
            ct.update(i as u64, h, false, 0);
        }
    }
    let (mut evicted, mut full) = (0, 0);
    let mut new = Vec::new();
    for j in 0..400 {
        let k = key(1000 + j, 1, 53, proto::UDP);
        let before: HashSet<FlowKey> = ct.entries(100).map(|e| e.orig).collect();
        let Probe::Vacant { slot, reuse } = ct.probe(100, &k) else {
            panic!("{k:?} is new")
        };
        match ct.insert(100, slot, reuse, &k, 0, 1, 0) {
            Ok(_) => {
                evicted += 1;
                let after: HashSet<FlowKey> = ct.entries(100).map(|e| e.orig).collect();
                let gone: Vec<&FlowKey> = before.difference(&after).collect();
                assert_eq!(gone.len(), 1, "one entry made room");
                // Never an answered one; an old unanswered one before any newer (all new
                // flows are younger than every old one) on the same path.
                let i = old.iter().position(|o| o == gone[0]);
                assert!(i.is_none_or(|i| i % 2 == 1), "{:?} was answered", gone[0]);
                if i.is_none() {
                    assert!(new.contains(gone[0]));
                }
                new.push(k);
            }
            Err(r) => {
                assert_eq!(r, CtRefusal::Full);
                full += 1;
            }
        }
        assert_eq!(ct.len(), 64);
    }
    for (i, k) in old.iter().enumerate() {
        if i % 2 == 0 {
            assert!(ct.get(100, k).is_some(), "answered {k:?} kept");
        }
    }
    assert!(evicted > 0 && full > 0, "{evicted} evicted, {full} refused");
    let s = ct.stats();
    assert_eq!((s.evicted, s.full), (evicted, full));
    assert_eq!(ct.owned_by(0), 64);
}

/// An owner gets at most its limit of entries; its count follows its entries through every
/// way they leave: reuse by another owner, eviction, GC, policy removal, flush.
#[test]
fn an_owner_gets_at_most_its_limit_and_its_count_follows_every_removal() {
    let ct = Conntrack::new(&CtConfig {
        endpoint_limit: 10,
        ..cfg(64)
    });
    assert_eq!(ct.endpoint_limit(), 10);
    let new = |now, k: &FlowKey, owner| match ct.probe(now, k) {
        Probe::Vacant { slot, reuse } => ct.insert(now, slot, reuse, k, 0, 1, owner),
        p => panic!("{k:?} is not new: {p:?}"),
    };
    let a: Vec<FlowKey> = (0..11).map(|i| key(i, 1, 53, proto::UDP)).collect();
    for k in &a[..10] {
        assert!(new(0, k, 1).is_ok());
    }
    assert_eq!(new(0, &a[10], 1), Err(CtRefusal::EndpointLimit));
    assert_eq!(ct.stats().endpoint_limit, 1);
    assert_eq!((ct.owned_by(1), ct.len()), (10, 10));
    // Another owner is not limited by it.
    for i in 0..5 {
        assert!(new(0, &key(100 + i, 1, 53, proto::UDP), 2).is_ok());
    }
    assert_eq!(ct.owned_by(2), 5);
    assert_eq!(
        ct.entries(0).filter(|e| e.owner == 2).count(),
        5,
        "listed with their owner"
    );
    // An exempt owner (the host port) is counted, not limited.
    ct.exempt_from_endpoint_limit(9);
    for i in 0..12 {
        assert!(new(0, &key(300 + i, 1, 53, proto::UDP), 9).is_ok());
    }
    assert_eq!(ct.owned_by(9), 12);
    // A policy removal gives one back.
    assert!(ct.remove_for_policy(hit(&ct, 0, &a[0])));
    assert_eq!(ct.owned_by(1), 9);
    assert!(new(0, &a[10], 1).is_ok());
    assert_eq!(ct.owned_by(1), 10);
    // Expired: GC gives them back.
    let later = CtTimeouts::default().udp;
    let mut spins = 0;
    while !ct.is_empty() && spins < 100 {
        ct.gc(later, 64);
        spins += 1;
    }
    assert_eq!((ct.owned_by(1), ct.owned_by(2), ct.owned_by(9)), (0, 0, 0));
    // Reuse in place moves the count from the expired entry's owner to the new one's.
    for k in &a[..4] {
        assert!(new(later, k, 1).is_ok());
    }
    let t2 = 2 * later;
    let mut reused = ct.stats().reused;
    for i in 0..40 {
        let _ = new(t2, &key(200 + i, 1, 53, proto::UDP), 3);
        assert_eq!(ct.owned_by(1) + ct.owned_by(3), ct.len());
    }
    reused = ct.stats().reused - reused;
    assert!(reused > 0 || ct.owned_by(1) == 4);
    assert_eq!(ct.owned_by(1), 4 - reused as usize);
    // A flush gives everything back.
    ct.flush();
    assert_eq!((ct.owned_by(1), ct.owned_by(3)), (0, 0));
}

#[test]
fn expired_entries_are_reused_on_insert() {
    let mut ct = Conntrack::new(&cfg(10));
    for i in 0..10 {
        assert!(add(&mut ct, 0, &key(i, 1, 53, proto::UDP)));
    }
    let later = CtTimeouts::default().udp;
    // Full, but every entry is expired: a new flow reuses a slot on its probe path or the
    // table is full for it. Run GC a little and it must succeed.
    let k = key(77, 1, 53, proto::UDP);
    if !add(&mut ct, later, &k) {
        ct.gc(later, 1000);
        assert!(add(&mut ct, later, &k));
    }
    assert!(ct.get(later, &k).is_some());
}

#[test]
fn deletion_keeps_every_other_entry_reachable() {
    let mut ct = Conntrack::new(&cfg(2000));
    let keys: Vec<_> = (0..2000).map(|i| key(i, 7, 80, proto::UDP)).collect();
    for (n, k) in keys.iter().enumerate() {
        // Half expire at t=60s, half at t=120s.
        let now = if n % 2 == 0 { 0 } else { 60 * SEC };
        assert!(add(&mut ct, now, k));
    }
    let t = 60 * SEC + 1;
    while ct.len() > 1000 {
        ct.gc(t, 50);
    }
    for (n, k) in keys.iter().enumerate() {
        assert_eq!(ct.get(t, k).is_some(), n % 2 == 1, "{n}");
    }
}

/// Random inserts, refreshes and bounded GC against a model: every key the model says is
/// live must be found, every other must not (backward-shift deletion and slot reuse keep
/// probe chains intact).
#[test]
fn matches_a_model_under_churn() {
    let ct = Conntrack::new(&cfg(500));
    let mut model: std::collections::HashMap<FlowKey, u64> = Default::default();
    let udp = CtTimeouts::default().udp;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut now = 0u64;
    for step in 0..20_000 {
        now += next() % (udp / 50);
        let k = key((next() % 900) as u32, (next() % 3) as u16, 53, proto::UDP);
        match ct.probe(now, &k) {
            Probe::Hit { slot, orig, .. } => {
                ct.update(now, slot, orig, 0);
                model.insert(k, now + udp);
            }
            Probe::Vacant { slot, reuse } => {
                ct.insert(now, slot, reuse, &k, 0, 1, 0).unwrap();
                model.insert(k, now + udp);
            }
        }
        if step % 7 == 0 {
            ct.gc(now, (next() % 40) as usize);
        }
        if step % 1000 == 0 {
            for (k, &exp) in &model {
                assert_eq!(ct.get(now, k).is_some(), now < exp, "step {step} {k:?}");
            }
            let live = model.values().filter(|&&e| now < e).count();
            assert!(ct.len() >= live && ct.len() <= ct.capacity());
        }
    }
    assert!(
        ct.stats().gc_removed > 0 && ct.stats().reused > 0,
        "{:?}",
        ct.stats()
    );
}

#[test]
fn tcp_states_and_timeouts() {
    use tcp_flags::*;
    let t = CtTimeouts::default();
    let ct = Conntrack::new(&cfg(8));
    let k = key(1, 1234, 80, proto::TCP);
    let Probe::Vacant { slot, reuse } = ct.probe(0, &k) else {
        panic!()
    };
    ct.insert(0, slot, reuse, &k, SYN, 1, 0).unwrap();
    assert_eq!(ct.get(0, &k), Some((CtState::SynSent, true)));
    ct.update(1, slot, false, SYN | ACK);
    assert_eq!(ct.get(1, &k).unwrap().0, CtState::SynRecv);
    // Still the SYN timeout.
    assert!(ct.get(1 + t.tcp_syn, &k).is_none());
    ct.update(2, slot, true, ACK);
    assert_eq!(ct.get(2, &k).unwrap().0, CtState::Established);
    assert!(ct.get(2 + t.tcp_syn, &k).is_some());
    assert!(ct.get(1 + t.tcp_established, &k).is_some());
    assert!(ct.get(2 + t.tcp_established, &k).is_none());
    // The responder's FIN closes its direction only: the originator may go on sending, and
    // the entry keeps the established timeout.
    ct.update(3, slot, false, FIN | ACK);
    assert_eq!(ct.get(3, &k).unwrap().0, CtState::HalfClosedReply);
    ct.update(4, slot, true, ACK);
    ct.update(4, slot, false, FIN | ACK);
    assert_eq!(ct.get(4, &k).unwrap().0, CtState::HalfClosedReply);
    assert!(ct.get(4 + t.tcp_fin, &k).is_some());
    assert!(ct.get(3 + t.tcp_established, &k).is_some());
    assert!(ct.get(4 + t.tcp_established, &k).is_none());
    // The originator's FIN too: now it is closing, with the short timeout.
    ct.update(5, slot, true, FIN | ACK);
    assert_eq!(ct.get(5, &k).unwrap().0, CtState::Fin);
    assert!(ct.get(4 + t.tcp_fin, &k).is_some());
    assert!(ct.get(5 + t.tcp_fin, &k).is_none());
    ct.update(5, slot, true, RST);
    assert_eq!(ct.get(5, &k).unwrap().0, CtState::Rst);
    // More packets do not extend a RST entry.
    ct.update(6, slot, false, ACK);
    assert!(ct.get(5 + t.tcp_rst, &k).is_none());
}

#[test]
fn a_half_close_keeps_the_established_timeout_until_both_sides_fin_or_a_rst() {
    use tcp_flags::*;
    let t = CtTimeouts::default();
    let ct = Conntrack::new(&cfg(8));
    let open = |i: u32| {
        let k = key(i, 1234, 80, proto::TCP);
        let slot = insert_new(&ct, 0, &k);
        ct.update(0, slot, false, SYN | ACK);
        ct.update(0, slot, true, ACK);
        (k, slot)
    };
    // The originator half-closes; the responder's data keeps it alive past any close timeout.
    let (k, slot) = open(1);
    ct.update(1, slot, true, FIN | ACK);
    assert_eq!(ct.get(1, &k).unwrap().0, CtState::HalfClosedOrig);
    ct.update(1, slot, true, FIN | ACK);
    assert_eq!(ct.get(1, &k).unwrap().0, CtState::HalfClosedOrig);
    let idle = 1 + 10 * t.tcp_fin;
    assert_eq!(ct.get(idle, &k), Some((CtState::HalfClosedOrig, true)));
    assert!(ct.update(idle, slot, false, ACK));
    assert_eq!(ct.get(idle, &k).unwrap().0, CtState::HalfClosedOrig);
    // The responder's FIN closes the other half.
    ct.update(idle + 1, slot, false, FIN | ACK);
    assert_eq!(ct.get(idle + 1, &k).unwrap().0, CtState::Fin);
    assert!(ct.get(idle + 1 + t.tcp_fin, &k).is_none());
    // A RST ends a half-closed connection at once.
    let (k, slot) = open(2);
    ct.update(1, slot, false, FIN | ACK);
    ct.update(2, slot, true, RST);
    assert_eq!(ct.get(2, &k).unwrap().0, CtState::Rst);
    assert!(ct.get(2 + t.tcp_rst, &k).is_none());
    // A FIN before the handshake completed closes at once (a bare FIN parks nothing).
    let k = key(3, 1234, 80, proto::TCP);
    let slot = insert_new(&ct, 0, &k);
    ct.update(1, slot, true, FIN);
    assert_eq!(ct.get(1, &k).unwrap().0, CtState::Fin);
    // The final ACK of the handshake may carry the originator's FIN: half-closed.
    let k = key(4, 1234, 80, proto::TCP);
    let slot = insert_new(&ct, 0, &k);
    ct.update(0, slot, false, SYN | ACK);
    ct.update(1, slot, true, ACK | FIN);
    assert_eq!(ct.get(1, &k).unwrap().0, CtState::HalfClosedOrig);
}

/// Inserts `k` as a new flow the way the pipeline's commit stage does; returns the entry's handle.
fn insert_new(ct: &Conntrack, now: u64, k: &FlowKey) -> usize {
    match ct.probe(now, k) {
        Probe::Vacant { slot, reuse } => ct
            .insert(now, slot, reuse, k, tcp_flags::SYN, 1, 0)
            .expect("room"),
        p => panic!("{k:?} is not new: {p:?}"),
    }
}

fn hit(ct: &Conntrack, now: u64, k: &FlowKey) -> usize {
    match ct.probe(now, k) {
        Probe::Hit { slot, .. } => slot,
        p => panic!("{k:?} is not tracked: {p:?}"),
    }
}

#[test]
fn ext_and_stage_start_at_zero_are_kept_by_updates_and_follow_a_moved_entry() {
    let ct = Conntrack::new(&cfg(64));
    // Keys sharing one home slot: the second and third sit behind the first.
    let mut keys = Vec::new();
    let target = {
        let (c, _) = canon(&key(0, 1, 80, proto::TCP));
        ct.t.home(&c)
    };
    let mut i = 1;
    while keys.len() < 3 {
        let k = key(i, 1, 80, proto::TCP);
        if ct.t.home(&canon(&k).0) == target {
            keys.push(k);
        }
        i += 1;
    }
    let handles: Vec<usize> = keys.iter().map(|k| insert_new(&ct, 0, k)).collect();
    let last = handles[2];
    assert_eq!((ct.ext(last), ct.stage(last)), (0, 0));
    // An index beyond the field is refused, and changes nothing.
    assert!(!ct.set_ext(last, Conntrack::MAX_EXT + 1));
    assert_eq!(ct.ext(last), 0);
    assert!(ct.set_ext(last, 0xad_beef));
    assert!(ct.set_stage(last, 7));
    assert!(ct.update(1, last, false, tcp_flags::SYN | tcp_flags::ACK));
    assert_eq!((ct.ext(last), ct.stage(last)), (0xad_beef, 7));
    assert_eq!(ct.get(1, &keys[2]), Some((CtState::SynRecv, true)));
    // Removing the first entry shifts the other two back: ext and stage move with the entry,
    // and the old handle no longer names it.
    assert!(ct.remove_for_policy(handles[0]));
    let moved = hit(&ct, 2, &keys[2]);
    assert_ne!(moved & 0xffff_ffff, last & 0xffff_ffff);
    assert_eq!((ct.ext(moved), ct.stage(moved)), (0xad_beef, 7));
    assert_eq!(ct.revision(moved), 1);
    assert_eq!(ct.get(2, &keys[2]), Some((CtState::SynRecv, true)));
    assert!(!ct.set_ext(last, 1), "a stale handle changes nothing");
    assert_eq!(ct.len(), 2);
}

#[test]
fn a_stale_handle_changes_nothing_and_sends_a_syn_down_the_new_flow_path() {
    let ct = Conntrack::new(&cfg(16));
    let k = key(1, 1000, 80, proto::TCP);
    let old = insert_new(&ct, 0, &k);
    assert!(ct.remove_for_policy(old));
    let k2 = key(2, 1000, 80, proto::TCP);
    let fresh = insert_new(&ct, 0, &k2);
    let fresh_entry = (ct.revision(fresh), ct.get(0, &k2));
    // Whatever the slots now hold, the old handle is refused by every setter.
    assert!(!ct.update(5, old, false, tcp_flags::RST));
    assert!(!ct.set_revision(old, 99));
    assert!(!ct.set_ext(old, 5));
    assert!(!ct.set_stage(old, 5));
    assert!(!ct.remove_for_policy(old));
    assert!(ct.is_closing(old));
    assert_eq!((ct.revision(fresh), ct.get(0, &k2)), fresh_entry);
    assert_eq!(ct.stage(old), 0);
    assert_eq!(ct.len(), 1);
    assert_eq!(ct.stats().policy_removed, 1);
}

/// Two workers (two handles) both see a new flow's first packet as new: the second insert
/// joins the first worker's entry.
#[test]
fn a_racing_insert_joins_the_entry_the_other_worker_created() {
    let w1 = Conntrack::new(&cfg(16));
    let w2 = w1.clone();
    assert!(w1.shares_table_with(&w2));
    let k = key(3, 40000, 443, proto::TCP);
    let (
        Probe::Vacant {
            slot: s1,
            reuse: r1,
        },
        Probe::Vacant {
            slot: s2,
            reuse: r2,
        },
    ) = (w1.probe(0, &k), w2.probe(0, &k))
    else {
        panic!("new flow")
    };
    let h2 = w2.insert(0, s2, r2, &k, tcp_flags::SYN, 1, 0).unwrap();
    // Worker 1's packet is the reply (SYN-ACK), decided as new by a probe that ran before
    // worker 2's insert: it advances worker 2's entry.
    let h1 = w1
        .insert(
            1,
            s1,
            r1,
            &k.reversed(),
            tcp_flags::SYN | tcp_flags::ACK,
            1,
            0,
        )
        .unwrap();
    assert_eq!(h1, h2);
    assert_eq!(w1.len(), 1);
    assert_eq!(w1.get(1, &k), Some((CtState::SynRecv, true)));
    let s = w2.stats();
    assert_eq!((s.created, s.races), (1, 1));
    assert_eq!(w1.entries(1).count(), 1);
}

#[test]
fn handles_count_into_their_own_shards_and_stats_sum_them() {
    let a = Conntrack::new(&cfg(64));
    let b = a.clone();
    for i in 0..5 {
        insert_new(&a, 0, &key(i, 1, 80, proto::UDP));
    }
    for i in 5..8 {
        insert_new(&b, 0, &key(i, 1, 80, proto::UDP));
    }
    assert_ne!(a.shard, b.shard);
    assert_eq!(a.t.shards[a.shard].created.load(Relaxed), 5);
    assert_eq!(b.t.shards[b.shard].created.load(Relaxed), 3);
    assert_eq!(a.stats(), b.stats());
    assert_eq!(a.stats().created, 8);
}

/// Probes that all saw room before any insert do not take the table past its capacity: the
/// inserts count it again under their locks.
#[test]
fn inserts_racing_past_a_probe_never_exceed_the_capacity() {
    let ct = Conntrack::new(&cfg(2));
    let n = ct.t.slot_count();
    let keys: Vec<FlowKey> = (0..n as u32).map(|i| key(i, 1, 80, proto::UDP)).collect();
    let vacant: Vec<(usize, bool)> = keys
        .iter()
        .map(|k| match ct.probe(0, k) {
            Probe::Vacant { slot, reuse } => (slot, reuse),
            p => panic!("{p:?}"),
        })
        .collect();
    for (k, (slot, reuse)) in keys.iter().zip(&vacant) {
        let _ = ct.insert(0, *slot, *reuse, k, 0, 1, 0);
        assert!(ct.len() <= 2);
    }
    assert_eq!(ct.len(), 2);
    let s = ct.stats();
    assert_eq!(s.created, 2 + s.evicted);
    assert_eq!(s.created + s.full, n as u64);
}

#[test]
fn handles_can_be_shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Conntrack>();
}

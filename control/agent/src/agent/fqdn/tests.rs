use super::*;

use xylem_dataplane::dns::FqdnScope;

const POD: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 10);
const KEY: &str = "default/pod-a";

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, last)
}

fn t(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
}

fn ips_of() -> BTreeMap<String, Ipv4Addr> {
    BTreeMap::from([(KEY.to_string(), POD)])
}

/// The pod's toFQDNs: scope 7 `*.domain.com`, scope 8 `a.domain.com`.
fn dns() -> DnsTables {
    let mut d = DnsTables::default();
    for (scope, sel) in [
        (7, NameSelector::pattern("*.domain.com").unwrap()),
        (8, NameSelector::name("a.domain.com").unwrap()),
    ] {
        d.add_scope(
            POD,
            FqdnScope {
                scope,
                peer: 1000 + scope,
                selector: sel,
            },
        );
    }
    d
}

fn table() -> LearnedTable {
    LearnedTable::new(4096, 64)
}

#[test]
fn an_answer_sets_expiry_from_the_ttl_or_the_minimum_and_never_shortens_it() {
    let mut c = FqdnCache::default();
    assert_eq!(
        c.observe(KEY, "a.domain.com.", &[(ip(1), 30), (ip(2), 5)], t(0), 10),
        2
    );
    let ips = &c.names(KEY).unwrap()["a.domain.com."];
    assert_eq!(ips[&ip(1)].expires, t(30));
    assert_eq!(
        ips[&ip(2)].expires,
        t(10),
        "min_ttl_s wins over a shorter TTL"
    );
    // A later answer with a shorter TTL keeps the later expiry, and the first learning time.
    c.observe(KEY, "a.domain.com.", &[(ip(1), 1)], t(5), 0);
    let e = c.names(KEY).unwrap()["a.domain.com."][&ip(1)];
    assert_eq!((e.expires, e.learned), (t(30), t(0)));
    assert!(c.is_dirty());
    assert_eq!(c.len(), 1);
}

#[test]
fn eviction_takes_the_oldest_unused_addresses_and_forgets_their_facts() {
    let (d, tbl) = (dns(), table());
    let mut c = FqdnCache::default();
    for (i, last) in [1u8, 2, 3].into_iter().enumerate() {
        c.observe(KEY, "a.domain.com.", &[(ip(last), 600)], t(i as u64), 0);
    }
    c.relearn(&ips_of(), &d, &tbl, (1, t(0)));
    // ip 1 is the oldest but in use: ip 2 goes instead.
    let in_use = InUse::from([(POD, ip(1))]);
    let gone = c.evict(KEY, POD, "a.domain.com.", 2, &in_use);
    assert_eq!(gone, [ip(2)]);
    let names = c.names(KEY).unwrap();
    forget(&tbl, &d, POD, names, "a.domain.com.", &gone);
    for scope in [7, 8] {
        assert!(tbl.lookup(1, scope, ip(2)).is_none(), "scope {scope}");
        assert!(tbl.lookup(1, scope, ip(1)).is_some(), "scope {scope}");
    }
    // Within the cap: nothing goes.
    assert!(c.evict(KEY, POD, "a.domain.com.", 2, &in_use).is_empty());
}

#[test]
fn a_fact_another_selected_name_still_holds_is_not_forgotten() {
    let (d, tbl) = (dns(), table());
    let mut c = FqdnCache::default();
    // Both names resolve to ip 1; `*.domain.com` (scope 7) selects both, scope 8 only `a`.
    c.observe(KEY, "a.domain.com.", &[(ip(1), 600)], t(0), 0);
    c.observe(KEY, "b.domain.com.", &[(ip(1), 600)], t(0), 0);
    c.observe(KEY, "other.org.", &[(ip(9), 600)], t(0), 0);
    assert_eq!(c.relearn(&ips_of(), &d, &tbl, (1, t(0))), 3);
    assert!(
        tbl.lookup(1, 7, ip(9)).is_none(),
        "no selector matches other.org."
    );
    let sel = NameSelector::pattern("a.domain.com").unwrap();
    assert_eq!(c.clean(Some(&sel), &ips_of(), &d, &tbl), (1, 1));
    assert!(
        tbl.lookup(1, 7, ip(1)).is_some(),
        "b.domain.com. still holds it"
    );
    assert!(
        tbl.lookup(1, 8, ip(1)).is_none(),
        "only a.domain.com. gave it to scope 8"
    );
    assert_eq!(c.clean(None, &ips_of(), &d, &tbl), (2, 2));
    assert!(tbl.lookup(1, 7, ip(1)).is_none());
    assert_eq!(c.len(), 0);
}

#[test]
fn relearning_teaches_what_is_left_of_each_unexpired_address() {
    let (d, tbl) = (dns(), table());
    let mut c = FqdnCache::default();
    c.observe(KEY, "x.domain.com.", &[(ip(1), 60), (ip(2), 5)], t(0), 0);
    // 10 s later on the wall clock, at 1000 s on the workers' clock: ip 2 has expired.
    let mono = 1_000_000_000_000;
    assert_eq!(c.relearn(&ips_of(), &d, &tbl, (mono, t(10))), 1);
    let f = tbl.lookup(mono, 7, ip(1)).unwrap();
    let left = f.expiry - mono;
    assert!((50_000_000_000..50_001_000_000).contains(&left), "{left}");
    assert!(tbl.lookup(mono, 7, ip(2)).is_none());
    // An endpoint the tables do not know teaches nothing.
    assert_eq!(c.relearn(&BTreeMap::new(), &d, &tbl, (mono, t(10))), 0);
}

#[test]
fn expiry_keeps_addresses_in_use_and_drops_empty_names() {
    let mut c = FqdnCache::default();
    c.observe(KEY, "a.domain.com.", &[(ip(1), 10), (ip(2), 10)], t(0), 0);
    c.observe(KEY, "b.domain.com.", &[(ip(3), 10)], t(0), 0);
    c.take_dirty();
    assert!(!c.any_expired(t(5)));
    assert!(c.any_expired(t(10)));
    let in_use = InUse::from([(POD, ip(1))]);
    assert_eq!(c.expire(t(11), &ips_of(), &in_use), 2);
    let names = c.names(KEY).unwrap();
    assert_eq!(names.keys().collect::<Vec<_>>(), ["a.domain.com."]);
    assert_eq!(names["a.domain.com."].keys().collect::<Vec<_>>(), [&ip(1)]);
    assert!(c.is_dirty());
    assert_eq!(c.expire(t(11), &ips_of(), &InUse::default()), 1);
    assert!(c.names(KEY).is_none());
}

#[test]
fn the_stored_form_round_trips_in_learning_order_and_drops_the_expired() {
    let mut c = FqdnCache::default();
    c.observe(KEY, "a.domain.com.", &[(ip(9), 100)], t(0), 0);
    c.observe(KEY, "a.domain.com.", &[(ip(1), 100)], t(1), 0);
    let stored = c.take_dirty();
    assert_eq!(stored.len(), 1);
    let (key, Some(names)) = &stored[0] else {
        panic!("{stored:?}")
    };
    assert_eq!(key, KEY);
    let order: Vec<Ipv4Addr> = names[0].ips.iter().map(|i| i.ip).collect();
    assert_eq!(order, [ip(9), ip(1)], "oldest first");
    assert_eq!(names[0].ips[0].expires_at, 1_800_000_100);
    let mut r = FqdnCache::default();
    let mut seeded = names.clone();
    seeded[0].name = "A.Domain.COM".into();
    seeded[0].ips.push(StoredFqdnIp {
        ip: ip(5),
        expires_at: 1_800_000_000,
    });
    r.restore(KEY, seeded, t(50), 50);
    let ips = &r.names(KEY).unwrap()["a.domain.com."];
    assert_eq!(
        ips.keys().collect::<Vec<_>>(),
        [&ip(1), &ip(9)],
        "ip 5 expired"
    );
    assert!(ips[&ip(9)].learned < ips[&ip(1)].learned);
    assert!(!r.is_dirty(), "restoring writes nothing back");
    // A lowered cap keeps the newest.
    let mut small = FqdnCache::default();
    small.restore(KEY, names.clone(), t(50), 1);
    let kept = &small.names(KEY).unwrap()["a.domain.com."];
    assert_eq!(kept.keys().collect::<Vec<_>>(), [&ip(1)]);
}

#[test]
fn gone_endpoints_are_dropped_and_a_deleted_one_is_not_written_back() {
    let mut c = FqdnCache::default();
    c.observe(KEY, "a.domain.com.", &[(ip(1), 100)], t(0), 0);
    c.observe("default/gone", "a.domain.com.", &[(ip(1), 100)], t(0), 0);
    c.take_dirty();
    assert_eq!(c.retain_endpoints(&BTreeSet::from([KEY])), ["default/gone"]);
    assert_eq!(c.take_dirty(), [("default/gone".to_string(), None)]);
    c.observe(KEY, "b.domain.com.", &[(ip(2), 100)], t(0), 0);
    c.remove_endpoint(KEY);
    assert!(!c.is_dirty());
    assert_eq!(c.len(), 0);
}

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderValue;

use super::*;
use crate::config::LimitsConfig;
use crate::keys::{Access, KeyEntry, KeyUsage, Rare};

fn entry(access: Access, own: Option<&str>) -> KeyEntry {
    KeyEntry::new(
        access,
        Arc::new(KeyUsage::new(HeaderValue::from_static("key_a"))),
        Rare {
            rate_limit: own.map(|s| s.parse().unwrap_or_else(|e| panic!("{e}"))),
            ..Rare::default()
        },
    )
}

fn lim(s: &str) -> Option<RateLimit> {
    Some(s.parse().unwrap_or_else(|e| panic!("{e}")))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

fn run(l: &Limiter, key: &KeyEntry, client: &str, n: usize) -> Vec<Verdict> {
    (0..n).map(|_| l.check(key, || ip(client))).collect()
}

fn allowed(v: &[Verdict]) -> usize {
    v.iter()
        .filter(|v| !matches!(v, Verdict::Limited(_)))
        .count()
}

#[test]
fn no_limit_anywhere_is_unlimited() {
    let l = Limiter::new(&LimitsConfig::default());
    let key = entry(Access::FullAccess, None);
    assert!(
        run(&l, &key, "1.2.3.4", 100)
            .iter()
            .all(|v| *v == Verdict::Unlimited)
    );
    assert!(!l.is_active());
}

#[test]
fn a_keys_own_limit_wins_over_its_access_default() {
    let l = Limiter::new(&LimitsConfig {
        read_only: lim("2/min"),
        full_access: lim("3/min"),
        ..LimitsConfig::default()
    });
    assert_eq!(
        allowed(&run(&l, &entry(Access::ReadOnly, None), "1.1.1.1", 10)),
        2
    );
    assert_eq!(
        allowed(&run(&l, &entry(Access::FullAccess, None), "1.1.1.1", 10)),
        3
    );
    assert_eq!(
        allowed(&run(
            &l,
            &entry(Access::FullAccess, Some("5/min")),
            "1.1.1.1",
            10
        )),
        5
    );
}

#[test]
fn quotas_count_down_and_a_refusal_says_when_to_retry() {
    let l = Limiter::new(&LimitsConfig::default());
    let key = entry(Access::FullAccess, Some("3/min"));
    let v = run(&l, &key, "1.1.1.1", 4);
    let remaining: Vec<u64> = v[..3]
        .iter()
        .map(|v| match v {
            Verdict::Allowed(q) => q.remaining,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(remaining, vec![2, 1, 0]);
    let Verdict::Limited(q) = v[3] else {
        panic!("{:?}", v[3])
    };
    assert_eq!(q.scope, Scope::Key);
    // One request every 20 s.
    assert!((19..=20).contains(&q.reset_secs), "{q:?}");
    assert_eq!(q.policy_header(), "\"key\";q=3;w=60");
    assert_eq!(q.state_header(), format!("\"key\";r=0;t={}", q.reset_secs));
}

#[test]
fn per_client_limits_apply_to_read_only_keys_per_address() {
    let l = Limiter::new(&LimitsConfig {
        read_only_per_client: lim("2/min"),
        read_only: lim("5/min"),
        ..LimitsConfig::default()
    });
    let key = entry(Access::ReadOnly, None);
    assert_eq!(allowed(&run(&l, &key, "1.1.1.1", 4)), 2);
    // Another visitor has their own two; the key's five are shared.
    let v = run(&l, &key, "2.2.2.2", 3);
    assert_eq!(allowed(&v), 2);
    let Verdict::Limited(q) = v[2] else {
        panic!("{:?}", v[2])
    };
    assert_eq!(q.scope, Scope::Client);
    // A refusal by the client limit gave the key's request back: the key
    // has consumed 4 of 5, so one more visitor gets one.
    assert_eq!(allowed(&run(&l, &key, "3.3.3.3", 3)), 1);
    let Verdict::Limited(q) = l.check(&key, || ip("4.4.4.4")) else {
        panic!("the key's limit")
    };
    assert_eq!(q.scope, Scope::Key);
    // Full-access keys have no per-client limit.
    let full = entry(Access::FullAccess, None);
    assert!(
        run(&l, &full, "1.1.1.1", 10)
            .iter()
            .all(|v| *v == Verdict::Unlimited)
    );
}

#[test]
fn the_client_table_is_bounded_and_swept() {
    let l = Limiter::new(&LimitsConfig {
        read_only_per_client: lim("1000/s"),
        max_clients: 2,
        ..LimitsConfig::default()
    });
    let key = entry(Access::ReadOnly, None);
    assert!(matches!(
        l.check(&key, || ip("1.1.1.1")),
        Verdict::Allowed(_)
    ));
    assert!(matches!(
        l.check(&key, || ip("2.2.2.2")),
        Verdict::Allowed(_)
    ));
    // Full: a third address waits (it is not let through unlimited).
    assert!(matches!(
        l.check(&key, || ip("3.3.3.3")),
        Verdict::Limited(Quota {
            scope: Scope::Client,
            reset_secs: 1,
            ..
        })
    ));
    // Known addresses go on.
    assert!(matches!(
        l.check(&key, || ip("1.1.1.1")),
        Verdict::Allowed(_)
    ));
    // Not while their buckets still hold requests...
    let now = l.now();
    assert_eq!(l.sweep_at(now), 2);
    // ...but once they are full again, the sweep makes room.
    let later = now + 1_000_000_000;
    assert_eq!(l.sweep_at(later), 0);
    assert!(matches!(
        l.check_at(&key, || ip("3.3.3.3"), later),
        Verdict::Allowed(_)
    ));
}

/// A limiter set to share through Redis (no Redis needed: the tests play
/// the sync's part).
fn shared_limiter() -> Limiter {
    let shared = crate::config::SharedLimits {
        redis: crate::config::RedisTarget::parse("redis://127.0.0.1")
            .unwrap_or_else(|e| panic!("{e}")),
        prefix: "t".into(),
        sync_interval: std::time::Duration::from_millis(50),
    };
    Limiter::new(&LimitsConfig {
        shared: Some(shared),
        ..LimitsConfig::default()
    })
}

#[test]
fn in_a_fleet_each_gateway_takes_its_share_of_a_burst_between_syncs() {
    let l = shared_limiter();
    let key = entry(Access::FullAccess, Some("40/s"));
    // Alone (Redis not heard from): the whole bucket.
    assert_eq!(allowed(&run(&l, &key, "1.1.1.1", 50)), 40);
    let key = entry(Access::FullAccess, Some("40/s"));
    l.set_fleet_size(4);
    let v = run(&l, &key, "1.1.1.1", 50);
    assert_eq!(allowed(&v), 10);
    assert!(matches!(
        v[10],
        Verdict::Limited(Quota {
            scope: Scope::Key,
            reset_secs: 1,
            ..
        })
    ));
    // After a sync has reported them, the next share.
    assert_eq!(key.usage.rate.take_pending(), 10);
    assert_eq!(allowed(&run(&l, &key, "1.1.1.1", 50)), 10);
}

#[test]
fn fields_are_written_in_the_draft_syntax() {
    let q = Quota {
        scope: Scope::Client,
        limit: RateLimit {
            count: 1_000_000,
            per: crate::keys::rate::Per::Hour,
        },
        remaining: 0,
        reset_secs: 18_446_744_073_709_551_615,
    };
    assert_eq!(q.policy_header(), "\"client\";q=1000000;w=3600");
    assert_eq!(q.state_header(), "\"client\";r=0;t=18446744073709551615");
}

#[test]
fn an_ipv6_client_counts_by_its_64() {
    assert_eq!(
        client_group(ip("2001:db8:1:2:aaaa::1")),
        ip("2001:db8:1:2::")
    );
    assert_eq!(
        client_group(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
        ip("2001:db8:1:2::")
    );
    assert_eq!(client_group(ip("203.0.113.9")), ip("203.0.113.9"));
    let l = Limiter::new(&LimitsConfig {
        read_only_per_client: lim("2/min"),
        ..LimitsConfig::default()
    });
    let key = entry(Access::ReadOnly, None);
    // Two addresses of one /64 share a bucket; another /64 has its own.
    assert_eq!(allowed(&run(&l, &key, "2001:db8:0:1::1", 2)), 2);
    assert_eq!(allowed(&run(&l, &key, "2001:db8:0:1::2", 2)), 0);
    assert_eq!(allowed(&run(&l, &key, "2001:db8:0:2::1", 2)), 2);
}

#[test]
fn the_fleet_share_lapses_when_syncs_stop_coming() {
    let l = shared_limiter();
    l.set_fleet_size(4);
    let key = entry(Access::FullAccess, Some("40/s"));
    // Two intervals after the last sync the share still holds...
    let at = l.now() + 100_000_000;
    let n = (0..50)
        .filter(|_| matches!(l.check_at(&key, || ip("1.1.1.1"), at), Verdict::Allowed(_)))
        .count();
    assert_eq!(n, 10);
    // ...after three, a gateway decides alone (the whole bucket).
    let key = entry(Access::FullAccess, Some("40/s"));
    let late = l.now() + 200_000_000;
    let n = (0..50)
        .filter(|_| {
            matches!(
                l.check_at(&key, || ip("1.1.1.1"), late),
                Verdict::Allowed(_)
            )
        })
        .count();
    assert_eq!(n, 40);
}

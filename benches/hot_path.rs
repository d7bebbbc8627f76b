//! Micro benchmarks of the per-request work and of reloads:
//! - `decide/<n>`: the whole decision path (extract the key from the headers,
//!   check its checksum, BLAKE3 it, look it up, apply the policy) with n keys;
//! - `index_build/<n>`: parse + validate a store of n keys and build the index,
//!   as a reload does;
//! - `index_apply/<case>`: one pushed change (PostgreSQL store) applied to a
//!   1M-key index, with an empty overlay and with one about to be folded;
//!   `decide/allowed_overlay/1000000`: a lookup that misses a full overlay;
//! - `metrics/record_decision`: counting one request;
//! - `usage/record_*`: counting one allowed request's use of its key;
//! - `limits/*`: the rate-limit check of an allowed request (row 7).
//!
//! Run: `cargo bench --bench hot_path` (add `-- decide` to pick some).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use keygate::config::BrowserFullAccess;
use keygate::keys::{
    Access, IndexDelta, KeyHash, KeyId, KeyIndex, KeyRecord, KeySet, Lookup, StoreSnapshot,
    storefile, token,
};
use keygate::metrics::{AccessLabel, DecisionLabel, Metrics};
use keygate::policy::{Decision, PolicySettings, RequestHead, decide};

/// n keys, every 10th full-access; returns the set and one read-only secret.
fn keyset(n: usize) -> (KeySet, String) {
    let mut probe = String::new();
    let records = (0..n)
        .map(|i| {
            let secret = token::generate("kg").unwrap();
            if i == n / 2 {
                probe = secret.clone();
            }
            KeyRecord {
                id: KeyId::parse(&format!("key_{i}")).unwrap(),
                name: format!("customer {i}"),
                access: if i % 10 == 0 && i != n / 2 {
                    Access::FullAccess
                } else {
                    Access::ReadOnly
                },
                hash: KeyHash::of(secret.as_bytes()),
                created: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
                expires: None,
                origins: vec![],
                previous: None,
                rate_limit: None,
            }
        })
        .collect();
    (KeySet::from_records(records).unwrap(), probe)
}

fn headers(key: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("api.example.com"));
    h.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    h.insert("accept", HeaderValue::from_static("application/json"));
    h.insert("x-api-key", HeaderValue::from_str(key).unwrap());
    h
}

fn bench_decide(c: &mut Criterion) {
    let header = HeaderName::from_static("x-api-key");
    let settings = PolicySettings {
        header: header.clone(),
        query_param: None,
        prefix: "kg".into(),
        browser_full_access: BrowserFullAccess::Deny,
        cors: None,
    };
    let now = SystemTime::now();
    let mut group = c.benchmark_group("decide");
    // KG_BENCH_DECIDE_SIZES=1000000,10000000 for the 10M-key figure (about
    // 5 GB and a minute to build).
    let sizes: Vec<usize> = std::env::var("KG_BENCH_DECIDE_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 100_000, 1_000_000]);
    for n in sizes {
        let (keys, probe) = keyset(n);
        // 65,536 keys of the store, for lookups that each go to another
        // key (at 1M keys, mostly out of the CPU caches).
        let spread: Vec<KeyHash> = keys
            .records()
            .iter()
            .step_by((n / 65_536).max(1))
            .map(|r| r.hash)
            .collect();
        let index = KeyIndex::build(&StoreSnapshot {
            keys,
            revoked: Default::default(),
            revoked_later: Default::default(),
        });
        if let Ok(status) = std::fs::read_to_string("/proc/self/status")
            && let Some(rss) = status.lines().find(|l| l.starts_with("VmRSS:"))
        {
            eprintln!("decide/{n}: index built; {rss}");
        }
        let allowed = headers(&probe);
        let unknown = headers(&token::generate("kg").unwrap());
        group.bench_with_input(BenchmarkId::new("allowed", n), &allowed, |b, h| {
            b.iter(|| {
                let head = RequestHead {
                    method: &Method::GET,
                    headers: h,
                    query: None,
                };
                let d = decide(head, &index, &settings, now);
                assert!(matches!(d, Decision::Allow { .. }));
                black_box(d);
            })
        });
        group.bench_with_input(BenchmarkId::new("lookup_spread", n), &spread, |b, s| {
            // An odd stride visits every key in an order that defeats the
            // prefetcher.
            let mut i = 0;
            b.iter(|| {
                i = (i + 40_503) % s.len();
                black_box(matches!(index.lookup(&s[i]), Lookup::Found(_)))
            })
        });
        group.bench_with_input(BenchmarkId::new("unknown_key", n), &unknown, |b, h| {
            b.iter(|| {
                let head = RequestHead {
                    method: &Method::GET,
                    headers: h,
                    query: None,
                };
                black_box(decide(head, &index, &settings, now));
            })
        });
    }
    group.finish();
}

fn bench_index_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("index_build");
    group.sample_size(10);
    for n in [100_000, 1_000_000] {
        let (keys, _) = keyset(n);
        let text = storefile::render_store(&keys).unwrap();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &text, |b, text| {
            b.iter(|| {
                let keys = storefile::parse_store(text).unwrap();
                black_box(KeyIndex::build(&StoreSnapshot {
                    keys,
                    revoked: Default::default(),
                    revoked_later: Default::default(),
                }))
            })
        });
    }
    group.finish();
}

fn one_key(i: usize) -> KeyRecord {
    KeyRecord {
        id: KeyId::parse(&format!("key_new_{i}")).unwrap(),
        name: "pushed".into(),
        access: Access::ReadOnly,
        hash: KeyHash::of(format!("pushed secret {i}").as_bytes()),
        created: UNIX_EPOCH,
        expires: None,
        origins: vec![],
        previous: None,
        rate_limit: None,
    }
}

fn bench_index_apply(c: &mut Criterion) {
    let n = 1_000_000;
    let (keys, probe) = keyset(n);
    let base = KeyIndex::build(&StoreSnapshot {
        keys,
        revoked: Default::default(),
        revoked_later: Default::default(),
    });
    // 4000 earlier changes: the overlay is near its fold threshold (4096).
    let mut full = base.apply(&IndexDelta::default());
    for i in 0..4000 {
        full = full.apply(&IndexDelta {
            upserts: vec![one_key(i)],
            ..IndexDelta::default()
        });
    }
    let change = IndexDelta {
        upserts: vec![one_key(n)],
        ..IndexDelta::default()
    };
    let mut group = c.benchmark_group("index_apply");
    group.sample_size(20);
    group.bench_function("1000000/empty_overlay", |b| {
        b.iter(|| black_box(base.apply(&change)))
    });
    group.bench_function("1000000/overlay_4000", |b| {
        b.iter(|| black_box(full.apply(&change)))
    });
    // 97 more changes in one delta: the overlay passes 4096 and is folded
    // into a new base, the cost paid once every ~4096 changes.
    let fold = IndexDelta {
        upserts: (0..97).map(|i| one_key(n + 1 + i)).collect(),
        ..IndexDelta::default()
    };
    group.sample_size(10);
    group.bench_function("1000000/fold", |b| b.iter(|| black_box(full.apply(&fold))));
    group.finish();

    let header = HeaderName::from_static("x-api-key");
    let settings = PolicySettings {
        header: header.clone(),
        query_param: None,
        prefix: "kg".into(),
        browser_full_access: BrowserFullAccess::Deny,
        cors: None,
    };
    let now = SystemTime::now();
    let allowed = headers(&probe);
    c.bench_function("decide/allowed_overlay/1000000", |b| {
        b.iter(|| {
            let head = RequestHead {
                method: &Method::GET,
                headers: &allowed,
                query: None,
            };
            let d = decide(head, &full, &settings, now);
            assert!(matches!(d, Decision::Allow { .. }));
            black_box(d);
        })
    });
}

fn bench_metrics(c: &mut Criterion) {
    let metrics = Metrics::new().unwrap();
    c.bench_function("metrics/record_decision", |b| {
        b.iter(|| {
            metrics.record_decision(
                black_box(DecisionLabel::Allowed),
                AccessLabel::ReadOnly,
                black_box(0.000_3),
            )
        })
    });
    // The usage count of an allowed request: the same second (a load and an
    // add), and a new second (a load, a store and an add).
    let usage = keygate::keys::UsageTable::default().for_key("k").unwrap();
    c.bench_function("usage/record_same_second", |b| {
        b.iter(|| usage.record(black_box(1_800_000_000)))
    });
    let mut t = 1_800_000_000u64;
    c.bench_function("usage/record_new_second", |b| {
        b.iter(|| {
            t += 1;
            usage.record(black_box(t))
        })
    });
}

/// Row 7 on the allowed path: a key under its limit (simulated time moves
/// one emission interval per request, so every check is allowed), alone and
/// with a per-client limit; and a key with no limit anywhere (the cost every
/// request pays once limits exist in the config).
fn bench_limits(c: &mut Criterion) {
    use keygate::config::LimitsConfig;
    use keygate::keys::{KeyEntry, KeyUsage, Rare};
    use keygate::limits::Limiter;
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;

    let entry = |access, own: Option<&str>| {
        KeyEntry::new(
            access,
            Arc::new(KeyUsage::new(HeaderValue::from_static("key_bench"))),
            Rare {
                rate_limit: own.map(|s| s.parse().unwrap()),
                ..Rare::default()
            },
        )
    };
    let client = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
    let limiter = Limiter::new(&LimitsConfig {
        read_only_per_client: Some("1000000/s".parse().unwrap()),
        ..LimitsConfig::default()
    });
    let full = entry(Access::FullAccess, Some("1000000/s"));
    let mut now = 1_000_000_000u64;
    c.bench_function("limits/check_key", |b| {
        b.iter(|| {
            now += 1_000;
            black_box(limiter.check_at(&full, || client, now))
        })
    });
    let read_only = entry(Access::ReadOnly, Some("1000000/s"));
    c.bench_function("limits/check_key_and_client", |b| {
        b.iter(|| {
            now += 1_000;
            black_box(limiter.check_at(&read_only, || client, now))
        })
    });
    let unlimited = entry(Access::FullAccess, None);
    c.bench_function("limits/check_unlimited", |b| {
        b.iter(|| black_box(limiter.check(&unlimited, || client)))
    });
    // The clock read a real request adds to check_key.
    c.bench_function("limits/clock", |b| b.iter(|| black_box(limiter.now())));
    // The two fields an allowed response of a limited key carries, added to
    // a response's headers (as the upstream's response has some already).
    let keygate::limits::Verdict::Allowed(quota) =
        limiter.check_at(&full, || client, now + 1_000_000_000)
    else {
        panic!("allowed")
    };
    let mut response = HeaderMap::new();
    for (k, v) in [
        ("content-type", "application/json"),
        ("content-length", "27"),
        ("date", "Mon, 30 Nov 2026 12:00:00 GMT"),
    ] {
        response.insert(k, HeaderValue::from_static(v));
    }
    c.bench_function("limits/response_fields", |b| {
        b.iter(|| {
            let mut h = response.clone();
            keygate::proxy::respond::add_quota(&mut h, black_box(&quota));
            black_box(h)
        })
    });
    c.bench_function("limits/response_clone_only", |b| {
        b.iter(|| black_box(response.clone()))
    });
}

criterion_group!(
    benches,
    bench_decide,
    bench_index_build,
    bench_index_apply,
    bench_metrics,
    bench_parts,
    bench_limits
);
criterion_main!(benches);

fn bench_parts(c: &mut Criterion) {
    let t = token::generate("kg").unwrap();
    c.bench_function("parts/blake3_token", |b| {
        b.iter(|| KeyHash::of(black_box(t.as_bytes())))
    });
    c.bench_function("parts/token_check", |b| {
        b.iter(|| token::check(black_box(t.as_bytes()), "kg"))
    });
    let h = headers(&t);
    let name = HeaderName::from_static("x-api-key");
    c.bench_function("parts/extract", |b| {
        b.iter(|| keygate::policy::credentials::extract(black_box(&h), None, &name, None))
    });
    c.bench_function("parts/is_browser", |b| {
        b.iter(|| keygate::policy::is_browser(black_box(&h)))
    });
}

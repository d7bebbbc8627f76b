//! Rate limits (decision row 7) through the real binary: per key, per
//! access type, per (read-only key, client) with and without trusted
//! proxies; 429 with Retry-After and the RateLimit fields; only requests
//! that passed the policy consume; limits follow reloads; a fleet on one
//! Redis holds a key to its limit; Redis away or restarted changes nothing
//! for requests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::redis::{OwnRedis, RedisPrefix};
use support::*;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Creates a key through the CLI; returns (id, secret).
fn create(gw: &TestGateway, access: &str, limit: Option<&str>) -> (String, String) {
    let mut args = vec!["create", "--name", "limited", "--access", access, "--json"];
    if let Some(l) = limit {
        args.extend(["--rate-limit", l]);
    }
    let v: serde_json::Value = serde_json::from_str(&gw.keys(&args)).unwrap();
    assert_eq!(v["rate_limit"].as_str(), limit);
    (
        v["id"].as_str().unwrap().to_string(),
        v["key"].as_str().unwrap().to_string(),
    )
}

/// The status of a GET of `url` with `secret`.
async fn status(url: &str, secret: &str) -> u16 {
    get(url, &[("x-api-key", secret)]).await.status.as_u16()
}

/// Polls until the gateway answers `secret` with `status` (after a reload).
async fn wait_for_status(gw: &TestGateway, secret: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if self::status(&gw.url("/"), secret).await == status {
            return;
        }
        assert!(Instant::now() < deadline, "never got {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_spent_limit_is_429_with_retry_after_and_the_ratelimit_fields() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let (_, secret) = create(&gw, "full-access", Some("3/min"));
    wait_for_status(&gw, &secret, 200).await;
    // That poll used one request. Two more are allowed, counting down.
    for left in [1, 0] {
        let r = get(&gw.url("/"), &[("x-api-key", &secret)]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("ratelimit-policy"), Some("\"key\";q=3;w=60"));
        let state = r.header("ratelimit").unwrap();
        assert!(
            state.starts_with(&format!("\"key\";r={left};t=")),
            "{state}"
        );
    }
    let r = get(&gw.url("/"), &[("x-api-key", &secret)]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.code(), "rate_limited");
    assert_eq!(r.header("content-type"), Some("application/json"));
    // One request every 20 s: the next is allowed in 20 s at most.
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    assert_eq!(r.header("ratelimit-policy"), Some("\"key\";q=3;w=60"));
    assert_eq!(
        r.header("ratelimit"),
        Some(format!("\"key\";r=0;t={retry}").as_str())
    );
    // The upstream saw only the allowed three.
    assert_eq!(upstream.seen().len(), 3);
    wait_for_metric(
        gw.ops,
        "keygate_decisions_total{access=\"full-access\",decision=\"rate_limited\"}",
        |v| v == 1.0,
    )
    .await;
    // The refusal is logged with the key id, never the secret.
    gw.wait_for_output("rate_limited");
    assert!(!gw.output().contains(&secret));
    // Other keys are not limited.
    let r = get(&gw.url("/"), &[("x-api-key", &gw.keys.full)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit"), None);
}

#[tokio::test]
async fn only_requests_that_pass_the_policy_consume() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let (_, secret) = create(&gw, "read-only", Some("2/min"));
    wait_for_status(&gw, &secret, 200).await;
    // Refused by rows 4-6 (a read-only key writing): no consumption.
    for _ in 0..5 {
        let r = send("POST", &gw.url("/"), &[("x-api-key", &secret)], "x").await;
        assert_eq!(r.code(), "read_only_method");
    }
    assert_eq!(status(&gw.url("/"), &secret).await, 200);
    assert_eq!(status(&gw.url("/"), &secret).await, 429);
}

#[tokio::test]
async fn limits_follow_the_store_on_reload() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let (id, secret) = create(&gw, "full-access", None);
    wait_for_status(&gw, &secret, 200).await;
    for _ in 0..10 {
        assert_eq!(status(&gw.url("/"), &secret).await, 200);
    }
    gw.keys(&["update", &id, "--rate-limit", "2/min"]);
    wait_for_status(&gw, &secret, 429).await;
    let shown: serde_json::Value =
        serde_json::from_str(&gw.keys(&["show", &id, "--json"])).unwrap();
    assert_eq!(shown["rate_limit"], "2/min");
    gw.keys(&["update", &id, "--rate-limit", "none"]);
    wait_for_status(&gw, &secret, 200).await;
    let shown: serde_json::Value =
        serde_json::from_str(&gw.keys(&["show", &id, "--json"])).unwrap();
    assert!(shown["rate_limit"].is_null());
}

#[tokio::test]
async fn access_defaults_and_per_client_limits() {
    let upstream = TestUpstream::start().await;
    let limits = "[limits]\nread_only = \"5/min\"\nread_only_per_client = \"2/min\"\n";
    let direct = TestGateway::start_with(
        &upstream.url(),
        Setup {
            tables: limits.into(),
            ..Setup::default()
        },
    );
    let ro = &direct.keys.read_only;
    let from = |ip: &'static str| [("x-api-key", ro.as_str()), ("x-forwarded-for", ip)];
    // Without trusted proxies X-Forwarded-For names nobody: every request
    // is the peer's (127.0.0.1), whatever it claims.
    assert_eq!(get(&direct.url("/"), &from("1.1.1.1")).await.status, 200);
    assert_eq!(get(&direct.url("/"), &from("2.2.2.2")).await.status, 200);
    let r = get(&direct.url("/"), &from("3.3.3.3")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("ratelimit-policy"), Some("\"client\";q=2;w=60"));
    // Full-access keys have no default here: unlimited.
    for _ in 0..10 {
        let r = get(&direct.url("/"), &[("x-api-key", &direct.keys.full)]).await;
        assert_eq!(r.status, 200);
    }

    let proxied = TestGateway::start_with(
        &upstream.url(),
        Setup {
            server: "trusted_proxies = [\"127.0.0.0/8\"]\n".into(),
            tables: limits.into(),
            ..Setup::default()
        },
    );
    let ro = &proxied.keys.read_only;
    let from = |ip: &'static str| [("x-api-key", ro.as_str()), ("x-forwarded-for", ip)];
    // Behind a trusted proxy each client has its own two...
    for ip in ["1.1.1.1", "1.1.1.1", "2.2.2.2", "2.2.2.2"] {
        let r = get(&proxied.url("/"), &from(ip)).await;
        assert_eq!(r.status, 200, "{ip}");
        // The allowed response names the limit nearest to running out.
        assert!(r.header("ratelimit-policy").is_some());
    }
    let r = get(&proxied.url("/"), &from("1.1.1.1")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("ratelimit-policy"), Some("\"client\";q=2;w=60"));
    // ...and the key's five are shared by all of them (the refusal above
    // gave its request back to the key).
    assert_eq!(get(&proxied.url("/"), &from("3.3.3.3")).await.status, 200);
    let r = get(&proxied.url("/"), &from("4.4.4.4")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("ratelimit-policy"), Some("\"key\";q=5;w=60"));
}

/// Runs `gateways` gateways sharing one store and one Redis prefix, sends
/// to them round robin faster than the limit for `secs` seconds, and
/// returns the number of requests the fleet allowed.
async fn fleet_allowed(gateways: usize, limit_per_s: u64, secs: u64, shared: bool) -> u64 {
    let upstream = TestUpstream::start().await;
    let redis = RedisPrefix::new();
    let limits = if shared {
        format!(
            "[limits]\nshared = \"{}\"\nshared_prefix = \"{}\"\n",
            redis.url, redis.prefix
        )
    } else {
        String::new()
    };
    let first = TestGateway::start_with(
        &upstream.url(),
        Setup {
            server: "workers = 1\n".into(),
            tables: limits,
            ..Setup::default()
        },
    );
    let limit = format!("{limit_per_s}/s");
    let (_, secret) = create(&first, "full-access", Some(&limit));
    // The first gateway has the key once it lets it through (the others
    // load the store as they start). That request is outside the count.
    wait_for_status(&first, &secret, 200).await;
    let mut addrs = vec![first.addr];
    let mut others = Vec::new();
    for _ in 1..gateways {
        let (process, addr, ops, _) = spawn_serve(&first.config_path());
        addrs.push(addr);
        others.push((process, ops));
    }
    if shared {
        for ops in std::iter::once(first.ops).chain(others.iter().map(|o| o.1)) {
            wait_for_metric(ops, "keygate_ratelimit_shared_connected", |v| v == 1.0).await;
        }
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let get_status = |client: Client<_, Full<Bytes>>, url: String, secret: String| async move {
        let req = http::Request::get(url)
            .header("x-api-key", secret)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        status
    };
    let allowed = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(secs);
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (client, addrs, secret) = (client.clone(), addrs.clone(), secret.clone());
        let (allowed, next) = (allowed.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            while Instant::now() < end {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize % addrs.len();
                let url = format!("http://{}/", addrs[i]);
                match get_status(client.clone(), url, secret.clone()).await {
                    200 => {
                        allowed.fetch_add(1, Ordering::Relaxed);
                    }
                    429 => {}
                    other => panic!("status {other}"),
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let sent = next.load(Ordering::Relaxed);
    let allowed = allowed.load(Ordering::Relaxed);
    let ideal = limit_per_s * secs + limit_per_s;
    eprintln!(
        "fleet of {gateways} (shared: {shared}): {allowed} allowed of {sent} sent in {secs} s at {limit}; one gateway's ideal {ideal}; ratio {:.3}",
        allowed as f64 / ideal as f64
    );
    assert!(
        sent > 3 * ideal,
        "the load ({sent}) must exceed the limit by far"
    );
    allowed
}

/// Measures (and bounds) what a fleet lets through of one key's limit: the
/// README's "Rate limits across a fleet" quotes these lines.
#[tokio::test]
async fn a_fleet_on_one_redis_holds_a_key_to_its_limit() {
    let (rate, secs) = (40, 4);
    let ideal = (rate * secs + rate) as f64;
    for gateways in [1, 3, 10] {
        let allowed = fleet_allowed(gateways, rate, secs, true).await as f64;
        // The bound the README states: 1.1 x the limit over the window,
        // plus what the fleet can let through in one sync interval (50 ms).
        let bound = 1.1 * ideal + gateways as f64 * rate as f64 * 0.05;
        assert!(allowed <= bound, "{gateways} gateways: {allowed} > {bound}");
        // And the fleet does not starve the key either.
        assert!(
            allowed >= 0.8 * (rate * secs) as f64,
            "{gateways} gateways: only {allowed}"
        );
    }
    // Without sharing, each gateway holds the limit by itself: three
    // gateways let about three times as much through.
    let alone = fleet_allowed(3, rate, secs, false).await as f64;
    assert!(alone > 2.0 * ideal, "{alone}");
}

#[tokio::test]
async fn redis_unreachable_leaves_limits_local_and_requests_fast() {
    let upstream = TestUpstream::start().await;
    // Port 1 on loopback: nothing listens there.
    let gw = TestGateway::start_with(
        &upstream.url(),
        Setup {
            tables: "[limits]\nshared = \"redis://127.0.0.1:1\"\n".into(),
            ..Setup::default()
        },
    );
    let (_, secret) = create(&gw, "full-access", Some("3/min"));
    wait_for_status(&gw, &secret, 200).await;
    assert_eq!(
        metric(gw.ops, "keygate_ratelimit_shared_connected").await,
        0.0
    );
    let start = Instant::now();
    assert_eq!(status(&gw.url("/"), &secret).await, 200);
    assert_eq!(status(&gw.url("/"), &secret).await, 200);
    assert_eq!(status(&gw.url("/"), &secret).await, 429);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    gw.wait_for_output("Redis unreachable");
    // One warning, not one per request or per retry.
    assert_eq!(gw.output().matches("Redis unreachable").count(), 1);
}

#[tokio::test]
async fn a_redis_restart_mid_test_changes_nothing_for_requests() {
    let upstream = TestUpstream::start().await;
    let mut redis = OwnRedis::start();
    let gw = TestGateway::start_with(
        &upstream.url(),
        Setup {
            tables: format!(
                "[limits]\nshared = \"{}\"\nshared_prefix = \"restart\"\n",
                redis.url()
            ),
            ..Setup::default()
        },
    );
    let full = r#"keygate_keys{access="full-access"}"#;
    let before = metric(gw.ops, full).await;
    let (id, secret) = create(&gw, "full-access", Some("1000/min"));
    let (_, tight) = create(&gw, "full-access", Some("2/min"));
    // Both keys loaded: a reload between the two writes takes the first
    // alone, and `tight` (not polled here, each request counts) must not
    // meet a 401 further on.
    wait_for_metric(gw.ops, full, |v| v == before + 2.0).await;
    wait_for_status(&gw, &secret, 200).await;
    wait_for_metric(gw.ops, "keygate_ratelimit_shared_connected", |v| v == 1.0).await;
    // The consumption reaches Redis.
    // Named with the limit's spacing in µs: 1000/min is one per 60 ms.
    let key = format!("restart:k:{id}:60000");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "exists", &key])
            .output();
        if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "1") {
            break;
        }
        assert!(Instant::now() < deadline, "{key} never written to Redis");
        assert_eq!(status(&gw.url("/"), &secret).await, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    redis.stop();
    wait_for_metric(gw.ops, "keygate_ratelimit_shared_connected", |v| v == 0.0).await;
    let start = Instant::now();
    for _ in 0..20 {
        assert_eq!(status(&gw.url("/"), &secret).await, 200);
    }
    // Limits still hold, locally.
    assert_eq!(status(&gw.url("/"), &tight).await, 200);
    assert_eq!(status(&gw.url("/"), &tight).await, 200);
    assert_eq!(status(&gw.url("/"), &tight).await, 429);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );

    redis.restart();
    // Reconnection backs off to at most 5 s between tries.
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(gw.ops, "keygate_ratelimit_shared_connected").await != 1.0 {
        assert!(Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status(&gw.url("/"), &secret).await, 200);
    gw.wait_for_output("Redis lost");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_limit_lives_in_postgresql_too() {
    use support::pg::{PgGateway, TestDb, keys_cli};
    let db = TestDb::migrated();
    let upstream = TestUpstream::start().await;
    let created: serde_json::Value = serde_json::from_str(&keys_cli(
        &db,
        &[
            "create",
            "--name",
            "pg",
            "--access",
            "full-access",
            "--rate-limit",
            "2/min",
            "--json",
        ],
    ))
    .unwrap();
    let (id, secret) = (
        created["id"].as_str().unwrap().to_string(),
        created["key"].as_str().unwrap().to_string(),
    );
    assert_eq!(
        db.query_text(&format!(
            "SELECT rate_limit FROM keygate_keys WHERE id = '{id}'"
        )),
        "2/min"
    );
    // The database refuses a limit the CLI would never write.
    let e = db.exec_err(&format!(
        "UPDATE keygate_keys SET rate_limit = '2 per minute' WHERE id = '{id}'"
    ));
    assert!(e.contains("check constraint"), "{e}");
    let gw = PgGateway::start(&db.url(), &upstream.url(), "1s");
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&gw.url("/"), &secret).await != 200 {
        assert!(
            Instant::now() < deadline,
            "the gateway never loaded the key"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status(&gw.url("/"), &secret).await, 200);
    assert_eq!(status(&gw.url("/"), &secret).await, 429);
    // A change pushed by the database reaches the gateway.
    keys_cli(&db, &["update", &id, "--rate-limit", "none"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&gw.url("/"), &secret).await != 200 {
        assert!(Instant::now() < deadline, "the new limit never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_redis_that_never_answers_slows_no_request() {
    let upstream = TestUpstream::start().await;
    // A "Redis" that accepts connections and reads, but never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    let gw = TestGateway::start_with(
        &upstream.url(),
        Setup {
            tables: format!("[limits]\nshared = \"redis://{addr}\"\n"),
            ..Setup::default()
        },
    );
    let (_, secret) = create(&gw, "full-access", Some("5/min"));
    wait_for_status(&gw, &secret, 200).await;
    let start = Instant::now();
    for _ in 0..4 {
        assert_eq!(status(&gw.url("/"), &secret).await, 200);
    }
    assert_eq!(status(&gw.url("/"), &secret).await, 429);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    // Never counted as connected: it never answered PING.
    gw.wait_for_output("Redis unreachable");
    assert_eq!(
        metric(gw.ops, "keygate_ratelimit_shared_connected").await,
        0.0
    );
}

//! Fleet propagation: how long a key change made once takes to hold on every
//! gateway of a fleet sharing one PostgreSQL store.
//!
//! Three `keygate serve` processes (the release binary) on one database; 100
//! changes in a cycle create (full-access) → downgrade to read-only → delete.
//! Each change is timed from just before its transaction starts to the moment
//! all three gateways answer accordingly (POST 200 → POST 403 → GET 401),
//! each gateway polled every millisecond over a kept-alive connection. The
//! figure is an upper bound: it includes the writer's connect and commit.
//!
//! Run: `cargo bench --bench propagation` (needs the PostgreSQL server of
//! `$KEYGATE_TEST_PG`, default postgres://postgres@127.0.0.1:5432).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use keygate::keys::{Access, KeyHash, KeyId, KeyRecord, KeyUpdate, token};
use keygate::store::{Store, StoreLocation};
use support::pg::{PgGateway, TestDb};
use support::upstream::TestUpstream;

const CHANGES: usize = 100;

type Http = Client<HttpConnector, Full<Bytes>>;

async fn status(client: &Http, gw: &PgGateway, method: &str, key: &str) -> u16 {
    let req = http::Request::builder()
        .method(method)
        .uri(gw.url("/"))
        .header("x-api-key", key)
        .body(Full::new(Bytes::new()))
        .unwrap();
    match client.request(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
            status
        }
        Err(_) => 0,
    }
}

/// Polls every gateway until each answers `want`; returns when the last does.
async fn all_see(client: &Http, gws: &[PgGateway], method: &str, key: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for gw in gws {
        while status(client, gw, method, key).await != want {
            assert!(
                Instant::now() < deadline,
                "{} never answered {want}",
                gw.addr
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Runs a store change on the blocking pool (the store's CLI-side API is synchronous).
async fn change(store: &Store, f: impl FnOnce(&Store) + Send + 'static) {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing we use.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

async fn run() {
    let db = TestDb::migrated();
    let upstream = TestUpstream::start().await;
    let gws: Vec<PgGateway> = (0..3)
        .map(|_| PgGateway::start(&db.url(), &upstream.url(), "5s"))
        .collect();
    let store = Store::open(&StoreLocation::Postgres(db.url())).unwrap();
    let client: Http = Client::builder(TokioExecutor::new()).build_http();
    for gw in &gws {
        let deadline = Instant::now() + Duration::from_secs(10);
        while status(&client, gw, "GET", "kg_none").await != 401 {
            assert!(Instant::now() < deadline, "gateway not ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    let mut times = Vec::with_capacity(CHANGES);
    let mut after_commit = Vec::with_capacity(CHANGES);
    let (mut id, mut secret) = (String::new(), String::new());
    for i in 0..CHANGES {
        let started = Instant::now();
        match i % 3 {
            0 => {
                secret = token::generate("kg").unwrap();
                id = KeyId::generate().unwrap().as_str().to_string();
                let record = KeyRecord {
                    id: KeyId::parse(&id).unwrap(),
                    name: format!("bench {i}"),
                    access: Access::FullAccess,
                    hash: KeyHash::of(secret.as_bytes()),
                    created: SystemTime::now(),
                    expires: None,
                    origins: vec![],
                    previous: None,
                    rate_limit: None,
                };
                change(&store, move |s| {
                    s.modify(|keys, _| Ok(keys.add(record)?)).unwrap();
                })
                .await;
                let committed = Instant::now();
                all_see(&client, &gws, "POST", &secret, 200).await;
                after_commit.push(committed.elapsed());
            }
            1 => {
                let id = id.clone();
                change(&store, move |s| {
                    let update = KeyUpdate {
                        name: None,
                        access: Some(Access::ReadOnly),
                        ..KeyUpdate::default()
                    };
                    s.modify(|keys, _| Ok(keys.update(&id, update, false).map(|_| ())?))
                        .unwrap();
                })
                .await;
                let committed = Instant::now();
                all_see(&client, &gws, "POST", &secret, 403).await;
                after_commit.push(committed.elapsed());
            }
            _ => {
                let id = id.clone();
                change(&store, move |s| {
                    s.delete(&id).unwrap();
                })
                .await;
                let committed = Instant::now();
                all_see(&client, &gws, "GET", &secret, 401).await;
                after_commit.push(committed.elapsed());
            }
        }
        times.push(started.elapsed());
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for (what, mut t) in [
        (
            "from the change's start (connect, lock, write, commit, push, apply)",
            times,
        ),
        ("from its commit (push, apply)", after_commit),
    ] {
        t.sort();
        println!(
            "propagation to 3 gateways over {CHANGES} changes (create/downgrade/delete), {what}: \
             p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(percentile(&t, 0.50)),
            ms(percentile(&t, 0.90)),
            ms(percentile(&t, 0.99)),
            ms(t[t.len() - 1]),
        );
    }
}

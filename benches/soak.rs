//! Soak: mixed allow/deny traffic at a fixed rate for a long time, with a
//! key store change (and so a reload) every few seconds. Prints the
//! gateway's RSS and the error counts every 30 s, and fails if any request
//! got an unexpected answer or if RSS kept growing.
//!
//! Run (not in CI): `cargo bench --bench soak`; `SOAK_SECONDS` (default 600),
//! `SOAK_RATE` requests per second (default 1000), `SOAK_RELOAD_SECONDS`
//! (default 3). The gateway is the release binary, the upstream in-process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;

use keygate::keys::Access;
use support::{SHOP, TestGateway, TestUpstream, add_key, metric, rss_kib};

type Http = Client<HttpConnector, Full<Bytes>>;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    unexpected: AtomicU64,
    transport: AtomicU64,
    /// Ticks at which every request slot was busy (the generator fell behind).
    behind: AtomicU64,
}

fn main() {
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
    let seconds = env_u64("SOAK_SECONDS", 600);
    let rate = env_u64("SOAK_RATE", 1000);
    let reload_every = Duration::from_secs(env_u64("SOAK_RELOAD_SECONDS", 3));
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let keys = gw.keys.clone();
    let client: Http = Client::builder(TokioExecutor::new()).build_http();
    let counts = Arc::new(Counts::default());
    let slots = Arc::new(Semaphore::new(256));
    // (method, key, origin, expected status): 70% allowed reads, 10% allowed
    // writes, 20% denials of four kinds.
    let unknown = "kg_unknownunknownunknownunknownun000000".to_string();
    let mix: Vec<(&str, String, Option<&str>, u16)> = [
        vec![("GET", keys.read_only.clone(), None, 200); 7],
        vec![("POST", keys.full.clone(), None, 200)],
        vec![("GET", unknown, None, 401)],
        vec![("POST", keys.read_only.clone(), None, 403)],
    ]
    .concat();
    let browser_full = ("GET", keys.full.clone(), Some(SHOP), 403u16);
    let mix: Arc<Vec<_>> = Arc::new(mix.into_iter().chain([browser_full]).collect());

    println!(
        "soak: {seconds} s at {rate} req/s, a store change every {reload_every:?}; gateway pid {}",
        gw.pid()
    );
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let per_tick = (rate / 100).max(1);
    let (mut next_report, mut next_reload) = (Duration::from_secs(30), reload_every);
    let mut samples = vec![(0u64, rss_kib(gw.pid()))];
    let mut changes = 0u64;
    let mut i = 0usize;
    while start.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        for _ in 0..per_tick {
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                counts.behind.fetch_add(1, Ordering::Relaxed);
                break;
            };
            let (method, key, origin, want) = mix[i % mix.len()].clone();
            i += 1;
            let (client, counts, url) = (client.clone(), counts.clone(), gw.url("/soak"));
            tokio::spawn(async move {
                let _permit = permit;
                let mut req = http::Request::builder()
                    .method(method)
                    .uri(url)
                    .header("x-api-key", key);
                if let Some(o) = origin {
                    req = req
                        .header("origin", o)
                        .header("sec-fetch-site", "cross-site");
                }
                counts.sent.fetch_add(1, Ordering::Relaxed);
                match client
                    .request(req.body(Full::new(Bytes::new())).unwrap())
                    .await
                {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let _ = resp.into_body().collect().await;
                        if status != want {
                            counts.unexpected.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        counts.transport.fetch_add(1, Ordering::Relaxed);
                    }
                };
            });
        }
        if start.elapsed() >= next_reload {
            next_reload += reload_every;
            changes += 1;
            // Add a key, and every other time delete the previous one: the
            // store and the revocation list both change, as in real use.
            let store = gw.store();
            tokio::task::spawn_blocking(move || {
                add_key(
                    &store,
                    &format!("soak_{changes}"),
                    Access::ReadOnly,
                    None,
                    &[],
                );
                if changes.is_multiple_of(2) {
                    let _ = store.delete(&format!("soak_{}", changes - 1));
                }
            })
            .await
            .unwrap();
        }
        if start.elapsed() >= next_report {
            next_report += Duration::from_secs(30);
            let rss = rss_kib(gw.pid());
            samples.push((start.elapsed().as_secs(), rss));
            println!(
                "{:>4} s  RSS {rss} KiB  sent {}  unexpected {}  transport errors {}  generator behind {}  reloads {}",
                start.elapsed().as_secs(),
                counts.sent.load(Ordering::Relaxed),
                counts.unexpected.load(Ordering::Relaxed),
                counts.transport.load(Ordering::Relaxed),
                counts.behind.load(Ordering::Relaxed),
                metric(gw.ops, "keygate_reloads_total{result=\"success\"}").await,
            );
        }
    }
    // Let the last requests finish.
    let _ = slots.acquire_many(256).await;
    let (unexpected, transport) = (
        counts.unexpected.load(Ordering::Relaxed),
        counts.transport.load(Ordering::Relaxed),
    );
    // Flat: compare the last sample with the one a third of the way in
    // (after warm-up: pools, allocator arenas at the highest concurrency the
    // run reached, the first reloads).
    let warm = samples
        .iter()
        .find(|(t, _)| *t >= (seconds / 3).max(60))
        .or(samples.last())
        .map_or(0, |s| s.1);
    let last = samples.last().map_or(0, |s| s.1);
    let drift = (last as f64 - warm as f64) / warm.max(1) as f64 * 100.0;
    println!(
        "soak done: {} requests, {unexpected} unexpected answers, {transport} transport errors, \
         {changes} store changes; RSS {} KiB at start, {warm} KiB after warm-up, {last} KiB at the end ({drift:+.1}%)",
        counts.sent.load(Ordering::Relaxed),
        samples[0].1
    );
    assert_eq!(unexpected + transport, 0, "requests failed");
    assert!(drift < 10.0, "RSS grew {drift:.1}% after warm-up");
}

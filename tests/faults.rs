//! Faults: the upstream going away and coming back, a store written badly
//! again and again, and shutdown under load.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::*;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[tokio::test]
async fn gateway_recovers_when_the_upstream_restarts() {
    let upstream = TestUpstream::start().await;
    let addr = upstream.addr;
    let gw = TestGateway::start(&upstream.url());
    let key = gw.keys.read_only.clone();
    assert_eq!(get(&gw.url("/"), &[("x-api-key", &key)]).await.status, 200);

    upstream.stop();
    drop(upstream);
    let down = get(&gw.url("/"), &[("x-api-key", &key)]).await;
    assert_eq!(down.code(), "upstream_unavailable");

    let _again = TestUpstream::start_on(addr).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if get(&gw.url("/"), &[("x-api-key", &key)]).await.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the gateway did not recover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_hundred_corrupt_writes_never_unseat_the_last_good_index() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let key = gw.keys.read_only.clone();
    let garbage = [
        "[[keys]]\nid = \"x\"\n",
        "not toml at all [[[",
        "[[keys]]\nid = \"Bad Id\"\nname = \"n\"\naccess = \"read-only\"\nhash = \"00\"\ncreated = \"2026-01-01\"\n",
        "\u{0}\u{1}\u{2}",
    ];
    for i in 0..100 {
        let tmp = gw.dir.path().join(format!(".keys.toml.{i}"));
        std::fs::write(&tmp, garbage[i % garbage.len()]).unwrap();
        std::fs::rename(&tmp, gw.store_path()).unwrap();
        if i % 10 == 0 {
            assert_eq!(
                get(&gw.url("/"), &[("x-api-key", &key)]).await.status,
                200,
                "write {i}"
            );
        }
    }
    wait_for_metric(gw.ops, "keygate_reloads_total{result=\"failure\"}", |v| {
        v >= 1.0
    })
    .await;
    assert_eq!(
        metric(gw.ops, "keygate_config_last_reload_successful").await,
        0.0
    );
    assert_eq!(get(&gw.url("/"), &[("x-api-key", &key)]).await.status, 200);
}

// Multi-threaded: the test upstream must keep answering while this thread
// blocks waiting for the gateway to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_every_accepted_request() {
    let upstream = TestUpstream::start().await;
    let mut gw = TestGateway::start(&upstream.url());
    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    for _ in 0..8 {
        let (url, key, stop) = (gw.url("/slow/20"), gw.keys.read_only.clone(), stop.clone());
        loops.push(tokio::spawn(async move {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Empty<bytes::Bytes>>();
            let (mut ok, mut refused, mut bad) = (0u32, 0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let req = http::Request::get(&url)
                    .header("x-api-key", &key)
                    .body(http_body_util::Empty::new())
                    .unwrap();
                match client.request(req).await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => bad.push(r.status().as_u16()),
                    // Not accepted: the listener is closed, or the kept-alive
                    // connection was closed before this request was read.
                    Err(_) => {
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            (ok, refused, bad)
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.seen().len() < 40 {
        assert!(Instant::now() < deadline, "the load did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.signal("TERM");
    assert!(gw.wait_exit().success());
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut refused) = (0, 0);
    for l in loops {
        let (o, r, bad) = l.await.unwrap();
        assert!(
            bad.is_empty(),
            "requests answered with an error status during the drain: {bad:?}"
        );
        ok += o;
        refused += r;
    }
    eprintln!("SIGTERM under load: {ok} answered 200, {refused} not accepted");
    // Every request the upstream saw was answered to its client.
    assert!(
        ok as usize >= upstream.seen().len(),
        "{ok} answered, upstream saw {}",
        upstream.seen().len()
    );
}

//! Capacity: 10,000 kept-alive client connections held open while the
//! gateway goes on serving, and what each idle connection costs in memory.
//!
//! Needs 10,000+ file descriptors in both this process and the gateway
//! (`ulimit -n` 20000 on this project's machines and CI); the test says so
//! plainly if the limit is lower.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::*;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

const HELD: usize = 10_000;

fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

/// Sends one kept-alive GET and reads the whole response; returns its status.
async fn request(s: &mut TcpStream, key: &str) -> u16 {
    let req = format!("GET /held HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed mid-response");
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        if buf.len() >= end + 4 + length {
            return head[9..12].parse().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_kept_alive_connections_are_held_while_serving() {
    let limit = open_files_limit();
    assert!(
        limit >= HELD as u64 + 1000,
        "this test holds {HELD} connections: raise the open-files limit (ulimit -n {}) first; it is {limit}",
        HELD + 1000
    );
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start_with(
        &upstream.url(),
        Setup {
            server: "max_connections = 12000\nidle_timeout = \"300s\"".into(),
            ..Setup::default()
        },
    );
    assert_serving(&gw).await;
    let rss_before = rss_kib(gw.pid());

    // Open them 500 at a time; each makes one request and stays open.
    let started = Instant::now();
    let mut held = Vec::with_capacity(HELD);
    while held.len() < HELD {
        let mut batch = JoinSet::new();
        for _ in 0..500 {
            let (addr, key) = (gw.addr, gw.keys.read_only.clone());
            batch.spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                assert_eq!(request(&mut s, &key).await, 200);
                s
            });
        }
        while let Some(s) = batch.join_next().await {
            held.push(s.unwrap());
        }
    }
    let opened_in = started.elapsed();
    wait_for_metric(gw.ops, "keygate_connections_active", |v| v >= HELD as f64).await;
    let rss_held = rss_kib(gw.pid());

    // Fresh clients are still served, promptly.
    let (p50, p99) = served_latencies(&gw, 200).await;

    // And the held connections are alive: every 100th serves a second request.
    for s in held.iter_mut().step_by(100) {
        assert_eq!(request(s, &gw.keys.read_only).await, 200);
    }
    let per_conn = (rss_held.saturating_sub(rss_before)) as f64 / HELD as f64;
    eprintln!(
        "{HELD} kept-alive connections opened in {opened_in:?}; gateway RSS {rss_before} KiB → {rss_held} KiB \
         ({per_conn:.1} KiB per idle connection); 200 fresh requests meanwhile: p50 {:?}, p99 {p99:?}",
        p50
    );
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?}");
    drop(held);
    wait_for_metric(gw.ops, "keygate_connections_active", |v| v < 10.0).await;
}

//! Hostile input over raw sockets: smuggling probes, malformed heads, bad
//! bytes in keys and paths, slowloris, and a client that stops reading.
//! Each probe is either refused (400/431/401) or handled as exactly one
//! request; none may reach the upstream as something else.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::*;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn status_of(response: &str) -> u16 {
    response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn smuggling_probes_are_refused_before_the_upstream() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let key = format!("authorization: Bearer {}\r\n", gw.keys.full);
    let probes: Vec<(&str, String)> = vec![
        (
            "differing content-lengths",
            format!(
                "POST / HTTP/1.1\r\nhost: x\r\n{key}content-length: 3\r\ncontent-length: 4\r\n\r\nabcd"
            ),
        ),
        (
            "transfer-encoding not chunked last",
            format!(
                "POST / HTTP/1.1\r\nhost: x\r\n{key}transfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "transfer-encoding xchunked",
            format!(
                "POST / HTTP/1.1\r\nhost: x\r\n{key}transfer-encoding: xchunked\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "space before colon",
            format!(
                "POST / HTTP/1.1\r\nhost: x\r\n{key}transfer-encoding : chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "obs-fold",
            format!("GET / HTTP/1.1\r\nhost: x\r\n{key}x-folded: a\r\n b\r\n\r\n"),
        ),
        (
            "transfer-encoding on HTTP/1.0",
            format!(
                "POST / HTTP/1.0\r\nhost: x\r\n{key}transfer-encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "invalid content-length",
            format!("POST / HTTP/1.1\r\nhost: x\r\n{key}content-length: +3\r\n\r\nabc"),
        ),
        (
            "NUL in a header value",
            format!("GET / HTTP/1.1\r\nhost: x\r\n{key}x-a: a\0b\r\n\r\n"),
        ),
    ];
    for (name, probe) in probes {
        let out = raw(gw.addr, probe.as_bytes()).await;
        assert_eq!(status_of(&out), 400, "{name}: {out:?}");
    }
    assert!(
        upstream.seen().is_empty(),
        "a probe reached the upstream: {:?}",
        upstream.seen()
    );
    assert_serving(&gw).await;
}

#[tokio::test]
async fn invalid_chunk_size_never_completes_a_request_upstream() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let probe = format!(
        "POST /echo-body HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        gw.keys.full
    );
    let out = raw(gw.addr, probe.as_bytes()).await;
    // The head may already be forwarded (bodies stream), but the body never
    // completes: the client gets no 200 with "hello" echoed.
    assert!(!out.contains("hello"), "{out:?}");
    assert_serving(&gw).await;
}

#[tokio::test]
async fn bare_lf_is_one_request_or_refused() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let probe = format!(
        "GET /lf HTTP/1.1\nhost: x\nx-api-key: {}\n\n",
        gw.keys.read_only
    );
    let out = raw(gw.addr, probe.as_bytes()).await;
    match status_of(&out) {
        400 => assert!(upstream.seen().is_empty()),
        200 => assert_eq!(upstream.seen().len(), 1),
        other => panic!("unexpected {other}: {out:?}"),
    }
}

#[tokio::test]
async fn bad_bytes_in_keys_and_paths_are_clear_errors() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    for key in [
        &b"kg_\xff\xfe"[..],
        b"kg_abc\x7f",
        b"\xc3\xa9t\xc3\xa9",
        b"a\tb",
    ] {
        let mut probe = b"GET / HTTP/1.1\r\nhost: x\r\nx-api-key: ".to_vec();
        probe.extend_from_slice(key);
        probe.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
        let out = raw(gw.addr, &probe).await;
        let status = status_of(&out);
        assert!(status == 401 || status == 400, "{key:?}: {out:?}");
        if status == 401 {
            assert!(out.contains("\"invalid_key\""), "{out:?}");
        }
    }
    for path in [&b"/a\x01b"[..], b"/\xff", b"/a b"] {
        let mut probe = b"GET ".to_vec();
        probe.extend_from_slice(path);
        probe.extend_from_slice(
            format!(
                " HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\n\r\n",
                gw.keys.read_only
            )
            .as_bytes(),
        );
        let out = raw(gw.addr, &probe).await;
        assert_eq!(status_of(&out), 400, "{path:?}: {out:?}");
    }
    assert!(upstream.seen().is_empty());
    // Percent-encoded bytes are fine and forwarded exactly as received.
    let r = get(
        &gw.url("/caf%C3%A9/%2e%2e/x?q=%00"),
        &[("x-api-key", &gw.keys.read_only)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(upstream.last().uri, "/caf%C3%A9/%2e%2e/x?q=%00");
}

#[tokio::test]
async fn absolute_form_targets_still_go_to_the_configured_upstream() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let probe = format!(
        "GET http://evil.example/steal?x=1 HTTP/1.1\r\nhost: evil.example\r\nx-api-key: {}\r\nconnection: close\r\n\r\n",
        gw.keys.read_only
    );
    let out = raw(gw.addr, probe.as_bytes()).await;
    assert_eq!(status_of(&out), 200, "{out:?}");
    assert_eq!(upstream.last().uri, "/steal?x=1");
}

#[tokio::test]
async fn slowloris_does_not_stop_legitimate_requests() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let mut idle = Vec::new();
    for _ in 0..1000 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ")
            .await
            .unwrap();
        idle.push(s);
    }
    let (p50, p99) = served_latencies(&gw, 200).await;
    eprintln!(
        "legitimate requests under 1,000 slowloris connections: p50 {:?}, p99 {p99:?}",
        p50
    );
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?}");
    drop(idle);
}

#[tokio::test]
async fn a_client_that_stops_reading_does_not_grow_memory() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let rss = || rss_kib(gw.pid());
    let before = rss();
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let req = format!(
        "GET /bytes/209715200 HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\n\r\n",
        gw.keys.read_only
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = [0u8; 64];
    let _ = s.read(&mut head).await.unwrap();
    // Stop reading; give the upstream time to push as much as it can.
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut peak = before;
    while Instant::now() < deadline {
        peak = peak.max(rss());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("gateway RSS: {before} KiB before, {peak} KiB peak with a 200 MiB response unread");
    assert!(
        peak < before + 32 * 1024,
        "RSS grew from {before} KiB to {peak} KiB"
    );
    drop(s);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_after_the_idle_timeout() {
    let upstream = TestUpstream::start().await;
    let setup = Setup {
        server: "idle_timeout = \"500ms\"".into(),
        ..Setup::default()
    };
    let gw = TestGateway::start_with(&upstream.url(), setup);
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let req = format!(
        "GET /bytes/209715200 HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\n\r\n",
        gw.keys.read_only
    );
    s.write_all(req.as_bytes()).await.unwrap();
    // Read nothing while the gateway's writes block, well past the timeout.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut received = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let read_all = async {
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            received += n;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read_all).await;
    assert!(
        received < 209_715_200,
        "the stalled response was kept open and completed"
    );
    assert_serving(&gw).await;
}

/// A denial flood while nobody reads the gateway's stderr (a stuck log
/// shipper): the pipe and the log queue fill, then log lines are dropped
/// and counted; no request waits on the log.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_stderr_never_stalls_requests() {
    use std::io::BufRead;
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    standard_keys(dir.path());
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n[keys]\nstore = \"keys.toml\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"info\"\n",
            upstream.url()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--config", config.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read until the gateway says where it listens, then never again.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("keygate listening") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "gateway exited");
    }
    let pid = child.id();
    let _child = Process(child);
    let addr_of = |name: &str| -> std::net::SocketAddr {
        let rest = &line[line.find(name).unwrap() + name.len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    let (addr, ops) = (addr_of("client.addr="), addr_of("ops.addr="));

    // More denials (one log line each) than the 16,384-line queue, the
    // pipe and the writer's buffer can hold together; each with a 16 KiB
    // path, which a log line carries cut to 256 bytes, in a queue bounded
    // at 4 MiB.
    let path = format!("/{}", "p".repeat(16 * 1024));
    let rss_before = rss_kib(pid);
    let started = Instant::now();
    let flood = async {
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let path = path.clone();
            tasks.push(tokio::spawn(async move {
                let client = hyper_util::client::legacy::Client::builder(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .build_http::<http_body_util::Full<bytes::Bytes>>();
                for _ in 0..1250 {
                    let req = http::Request::get(format!("http://{addr}{path}"))
                        .header("x-api-key", "kg_unknownunknownunknownunknownun000000")
                        .body(http_body_util::Full::default())
                        .unwrap();
                    let resp = client.request(req).await.unwrap();
                    assert_eq!(resp.status(), 401);
                    let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(120), flood)
        .await
        .expect("requests stalled behind the log");
    let dropped = metric(ops, "keygate_log_lines_dropped_total").await;
    let rss_after = rss_kib(pid);
    eprintln!(
        "20,000 denials with 16 KiB paths, stderr unread: {:?}; {dropped} log lines dropped; RSS {rss_before} KiB -> {rss_after} KiB",
        started.elapsed()
    );
    // The bound (README, "Memory"): the log queue holds at most 4 MiB; with
    // the 16 connections' buffers and the allocator's slack, the process
    // grows by well under 24 MiB. Unbounded, 16,384 queued lines of 16 KiB
    // would be some 270 MiB.
    assert!(
        rss_after < rss_before + 24 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert!(
        dropped > 0.0,
        "the queue never filled: the test proves nothing"
    );
    assert_eq!(
        metric(
            ops,
            "keygate_decisions_total{access=\"none\",decision=\"invalid_key\"}"
        )
        .await,
        20_000.0
    );
    drop(stderr);
}

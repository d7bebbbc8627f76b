//! Forwarding end to end: headers, streaming bodies, HTTP/2, TLS, WebSocket,
//! upstream failures and malformed requests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::*;

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn rewrites_headers_for_the_backend() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let r = get(
        &gw.url("/h"),
        &[
            ("x-api-key", &gw.keys.read_only),
            ("x-keygate-key-id", "spoofed"),
            ("x-keygate-anything", "spoofed"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("connection", "x-private-hop"),
            ("x-private-hop", "1"),
            ("accept", "application/json"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let h = upstream.last().headers;
    assert!(h.get("x-api-key").is_none(), "key forwarded");
    assert_eq!(h.get_all("x-keygate-key-id").iter().count(), 1);
    assert_eq!(h["x-keygate-key-id"], "ro");
    assert!(h.get("x-keygate-anything").is_none());
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h.get_all("x-forwarded-proto").iter().count(), 1);
    assert!(h.get("x-private-hop").is_none());
    assert_eq!(h["accept"], "application/json");
    // Response side: the upstream's hop-by-hop headers are stripped too.
    assert_eq!(r.header("x-upstream"), Some("yes"));
    assert_eq!(r.header("x-hop"), None);
}

#[tokio::test]
async fn forward_key_option_keeps_the_key() {
    let upstream = TestUpstream::start().await;
    let setup = Setup {
        keys: "forward_key = true".into(),
        ..Setup::default()
    };
    let gw = TestGateway::start_with(&upstream.url(), setup);
    get(&gw.url("/"), &[("x-api-key", &gw.keys.read_only)]).await;
    assert_eq!(
        upstream.last().headers["x-api-key"],
        gw.keys.read_only.as_str()
    );
}

#[tokio::test]
async fn large_bodies_stream_both_ways_intact() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let bearer = format!("Bearer {}", gw.keys.full);
    let sent: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let r = send(
        "POST",
        &gw.url("/echo-body"),
        &[("authorization", &bearer)],
        Bytes::from(sent.clone()),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), sent.len());
    assert!(r.body == sent, "request body changed on the way");

    let r = get(
        &gw.url("/bytes/6291456"),
        &[("x-api-key", &gw.keys.read_only)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 6 * 1024 * 1024);
}

#[tokio::test]
async fn http2_prior_knowledge_on_plaintext() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let r = get_h2c(gw.addr, "/over-h2c", &[("x-api-key", &gw.keys.read_only)]).await;
    assert_eq!(r.status, 200);
    let seen = upstream.last();
    assert_eq!(seen.uri, "/over-h2c");
    assert_eq!(seen.headers["host"], gw.addr.to_string().as_str());
    let denied = get_h2c(
        gw.addr,
        "/",
        &[("x-api-key", &gw.keys.full), ("origin", SHOP)],
    )
    .await;
    assert_eq!(denied.code(), "browser_full_access");
}

/// A spawned exchange's result, or a failure after 20 s rather than a hung
/// test.
async fn within<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("no answer within 20 s")
        .unwrap()
}

/// One h2c connection carries, at once, a slow forward, a refusal, a
/// download and an upload each larger than a stream's flow-control window
/// (64 KiB): each gets its own answer, the refusal (with a `Date` and its
/// `Content-Length`) before the slow one.
#[tokio::test]
async fn http2_streams_of_one_connection_are_answered_side_by_side() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let sender = h2c_connect(gw.addr).await;
    let url = |path: &str| format!("http://{}{path}", gw.addr);
    let full = gw.keys.full.clone();
    let upload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let started = Instant::now();
    let slow = {
        let (mut s, u, k) = (sender.clone(), url("/slow/400"), full.clone());
        tokio::spawn(async move {
            let r = send_on(&mut s, "GET", &u, &[("x-api-key", &k)], Bytes::new()).await;
            (r.map(|r| (r.status, r.body)), started.elapsed())
        })
    };
    let refused = {
        let (mut s, u) = (sender.clone(), url("/v1"));
        tokio::spawn(async move {
            let r = send_on(&mut s, "GET", &u, &[], Bytes::new()).await;
            // The gateway's own answer gets a Date, as the backend's have,
            // and its length.
            let r = r.map(|r| {
                let length = r.header("content-length").map(str::to_owned);
                let whole = length == Some(r.body.len().to_string());
                (r.code(), r.header("date").is_some(), whole)
            });
            (r, started.elapsed())
        })
    };
    let download = {
        let (mut s, u, k) = (sender.clone(), url("/bytes/700000"), full.clone());
        tokio::spawn(async move {
            let r = send_on(&mut s, "GET", &u, &[("x-api-key", &k)], Bytes::new()).await;
            r.map(|r| {
                (
                    r.status,
                    r.body.len(),
                    r.header("content-length").map(str::to_owned),
                )
            })
        })
    };
    let echoed = {
        let (mut s, u, k, body) = (sender.clone(), url("/echo-body"), full, upload.clone());
        tokio::spawn(async move {
            let r = send_on(&mut s, "POST", &u, &[("x-api-key", &k)], body).await;
            r.map(|r| (r.status, r.body))
        })
    };
    let (slow, slow_at) = within(slow).await;
    let (refused, refused_at) = within(refused).await;
    assert_eq!(
        slow.unwrap(),
        (http::StatusCode::OK, Bytes::from("slow done"))
    );
    assert_eq!(refused.unwrap(), ("missing_key".to_owned(), true, true));
    assert!(
        refused_at < slow_at,
        "the refusal waited for the slow forward"
    );
    assert_eq!(
        within(download).await.unwrap(),
        (http::StatusCode::OK, 700_000, Some("700000".to_owned()))
    );
    let (status, body) = within(echoed).await.unwrap();
    assert_eq!(status, 200);
    assert!(
        body == upload,
        "the upload came back altered ({} bytes)",
        body.len()
    );
}

/// A drain over HTTP/2: while a request is still in flight the client is
/// told (GOAWAY) to open no more streams; the request in flight is then
/// answered, and the gateway exits 0.
#[tokio::test]
async fn an_http2_connection_drains_on_shutdown() {
    let upstream = TestUpstream::start().await;
    let mut gw = TestGateway::start(&upstream.url());
    let sender = h2c_connect(gw.addr).await;
    let slow = format!("http://{}/slow/1500", gw.addr);
    let key = gw.keys.read_only.clone();
    let in_flight = {
        let (mut s, u, k) = (sender.clone(), slow.clone(), key.clone());
        tokio::spawn(
            async move { send_on(&mut s, "GET", &u, &[("x-api-key", &k)], Bytes::new()).await },
        )
    };
    // The request has reached the upstream before the signal.
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.seen().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw.signal("TERM");
    // New streams (each a refusal, answered at once while they are taken)
    // until one is turned away: that must happen while the slow one waits.
    let probe = format!("http://{}/probe", gw.addr);
    let mut s = sender.clone();
    let mut answered_after_signal = 0;
    while let Ok(r) = send_on(&mut s, "GET", &probe, &[], Bytes::new()).await {
        assert_eq!(r.code(), "missing_key");
        answered_after_signal += 1;
        assert!(
            answered_after_signal < 100,
            "no GOAWAY: 100 new streams served in the drain"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        !in_flight.is_finished(),
        "streams were taken until the slow request was done"
    );
    let answered = within(in_flight).await.unwrap();
    assert_eq!(answered.status, 200);
    assert_eq!(answered.body, "slow done");
    assert_eq!(upstream.seen().len(), 1);
    assert!(gw.wait_exit().success());
}

fn tls_setup(dir: &std::path::Path) -> (Setup, String) {
    let (cert, key) = self_signed();
    std::fs::write(dir.join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.join("key.pem"), &key).unwrap();
    let server = format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    );
    (
        Setup {
            server,
            ..Setup::default()
        },
        cert,
    )
}

#[tokio::test]
async fn tls_termination_with_h2_and_http11_by_alpn() {
    let upstream = TestUpstream::start().await;
    let certs = tempfile::tempdir().unwrap();
    let (setup, ca) = tls_setup(certs.path());
    let gw = TestGateway::start_with(&upstream.url(), setup);

    let tls = tls_connect(gw.addr, &ca, &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let r = send_h2(
        tls,
        "GET",
        &format!("https://localhost:{}/tls", gw.addr.port()),
        &[("x-api-key", &gw.keys.read_only)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(upstream.last().headers["x-forwarded-proto"], "https");

    let mut tls = tls_connect(gw.addr, &ca, &[b"http/1.1"]).await;
    let req = format!(
        "GET /h1 HTTP/1.1\r\nhost: localhost\r\nx-api-key: {}\r\nconnection: close\r\n\r\n",
        gw.keys.read_only
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[tokio::test]
async fn websocket_upgrade_passes_through_both_ways() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let (mut tcp, head) = websocket_upgrade(gw.addr, &gw.keys.read_only).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"));
    tcp.write_all(b"ping through the tunnel").await.unwrap();
    let mut echoed = [0u8; 23];
    tcp.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping through the tunnel");
    // The tunnel is still a client connection.
    wait_for_metric(gw.ops, "keygate_connections_active", |v| v == 1.0).await;
    drop(tcp);
    wait_for_metric(gw.ops, "keygate_connections_active", |v| v == 0.0).await;
    assert_eq!(
        upstream.last().headers["sec-websocket-key"],
        "dGhlIHNhbXBsZSBub25jZQ=="
    );
}

/// Opens a WebSocket tunnel through the gateway and checks it echoes.
async fn open_tunnel(gw: &TestGateway) -> tokio::net::TcpStream {
    open_echo_tunnel(gw.addr, &gw.keys.read_only, b"ping").await
}

#[tokio::test]
async fn websocket_tunnels_count_against_max_connections() {
    let upstream = TestUpstream::start().await;
    let setup = Setup {
        server: "max_connections = 2".into(),
        ..Setup::default()
    };
    let gw = TestGateway::start_with(&upstream.url(), setup);
    // Two tunnels: hyper is done with both connections, the tunnels are not.
    let a = open_tunnel(&gw).await;
    let b = open_tunnel(&gw).await;
    wait_for_metric(gw.ops, "keygate_connections_active", |v| v == 2.0).await;
    let url = gw.url("/");
    let key = gw.keys.read_only.clone();
    let third = tokio::spawn(async move { get(&url, &[("x-api-key", &key)]).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served while two tunnels held max_connections = 2"
    );
    drop(a);
    let third = tokio::time::timeout(std::time::Duration::from_secs(10), third)
        .await
        .expect("the slot of a closed tunnel was never released");
    assert_eq!(third.unwrap().status, 200);
    drop(b);
}

#[tokio::test]
async fn an_idle_websocket_tunnel_is_closed_after_idle_timeout() {
    let upstream = TestUpstream::start().await;
    let setup = Setup {
        server: "idle_timeout = \"600ms\"".into(),
        ..Setup::default()
    };
    let gw = TestGateway::start_with(&upstream.url(), setup);
    // A tunnel that talks every 200 ms for 1.5 s stays open...
    let mut busy = open_tunnel(&gw).await;
    for _ in 0..7 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        busy.write_all(b"ping").await.unwrap();
        let mut echoed = [0u8; 4];
        busy.read_exact(&mut echoed).await.unwrap();
    }
    // ...and one left silent is closed.
    let started = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), busy.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "an idle tunnel was never closed");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed after {:?}",
        started.elapsed()
    );
    wait_for_metric(gw.ops, "keygate_connections_active", |v| v == 0.0).await;
}

#[tokio::test]
async fn upstream_down_is_502_and_counted() {
    let upstream = TestUpstream::start().await;
    let url = upstream.url();
    drop(upstream);
    // Nothing listens there any more (the port was just released).
    let gw = TestGateway::start(&url);
    let r = get(&gw.url("/"), &[("x-api-key", &gw.keys.read_only)]).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (502, "upstream_unavailable")
    );
    assert_eq!(
        metric(gw.ops, "keygate_upstream_errors_total{kind=\"connect\"}").await,
        1.0
    );
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let upstream = TestUpstream::start().await;
    let setup = Setup {
        upstream: "response_timeout = \"300ms\"".into(),
        ..Setup::default()
    };
    let gw = TestGateway::start_with(&upstream.url(), setup);
    let r = get(&gw.url("/slow/3000"), &[("x-api-key", &gw.keys.read_only)]).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (504, "upstream_timeout")
    );
    assert_eq!(
        metric(gw.ops, "keygate_upstream_errors_total{kind=\"timeout\"}").await,
        1.0
    );
}

#[tokio::test]
async fn upstream_dying_mid_body_aborts_the_client_response() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let req = format!(
        "GET /die-mid-body HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\n\r\n",
        gw.keys.read_only
    );
    let out = raw(gw.addr, req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let body = &out[out.find("\r\n\r\n").unwrap() + 4..];
    assert!(body.len() < 1_048_576, "the response must not complete");
    assert_eq!(
        metric(gw.ops, "keygate_upstream_errors_total{kind=\"protocol\"}").await,
        1.0
    );
    // The gateway keeps serving.
    assert_serving(&gw).await;
}

#[tokio::test]
async fn an_upstream_silent_mid_body_is_cut_after_read_timeout() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start_with(
        &upstream.url(),
        Setup {
            upstream: "response_timeout = \"300ms\"".into(),
            ..Setup::default()
        },
    );
    let req = format!(
        "GET /stall-mid-body HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\n\r\n",
        gw.keys.read_only
    );
    let started = Instant::now();
    // `raw` reads until the gateway closes the connection (or gives up at 5 s).
    let out = raw(gw.addr, req.as_bytes()).await;
    let took = started.elapsed();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let body = &out[out.find("\r\n\r\n").unwrap() + 4..];
    assert_eq!(
        body.len(),
        1000,
        "the bytes sent before the silence arrive, then the cut"
    );
    assert!(took < Duration::from_secs(4), "cut after {took:?}");
    assert_eq!(
        metric(gw.ops, "keygate_upstream_errors_total{kind=\"timeout\"}").await,
        1.0
    );
    assert_serving(&gw).await;
}

#[tokio::test]
async fn a_slow_reader_is_not_mistaken_for_a_silent_upstream() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start_with(
        &upstream.url(),
        Setup {
            upstream: "response_timeout = \"300ms\"".into(),
            ..Setup::default()
        },
    );
    let total = 8 * 1024 * 1024;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let req = format!(
        "GET /bytes/{total} HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\n\r\n",
        gw.keys.read_only
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    // Read 1 MiB, then pause longer than response_timeout, eight times: the
    // gateway is held back by this client, not by the upstream.
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let mut next_pause = 1024 * 1024;
    loop {
        let n = tcp.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got += n;
        if got >= next_pause {
            next_pause += 1024 * 1024;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if got > total {
            break;
        }
    }
    assert!(got > total, "the response was cut after {got} bytes");
    assert_eq!(
        metric(gw.ops, "keygate_upstream_errors_total{kind=\"timeout\"}").await,
        0.0
    );
}

#[tokio::test]
async fn malformed_request_gets_400_and_the_gateway_goes_on() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let out = raw(gw.addr, b"GET /\x01bad HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
    let out = raw(gw.addr, b"NOT-HTTP\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
    assert_serving(&gw).await;
    assert!(upstream.seen().len() == 1);
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let big = "a".repeat(40 * 1024);
    let req = format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n");
    let out = raw(gw.addr, req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out:?}");
    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let out = raw(
        gw.addr,
        format!("GET / HTTP/1.1\r\nhost: x\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out:?}");
    // HTTP/2 too: too many fields is 431, nothing reaches the upstream.
    let names: Vec<String> = (0..150).map(|i| format!("x-h{i}")).collect();
    let mut headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    headers.push(("x-api-key", &gw.keys.read_only));
    let seen = upstream.seen().len();
    let r = get_h2c(gw.addr, "/", &headers).await;
    assert_eq!(r.status, 431);
    assert_eq!(r.code(), "headers_too_large");
    assert_eq!(upstream.seen().len(), seen);
    let r = get_h2c(gw.addr, "/", &headers[headers.len() - 50..]).await;
    assert_eq!(r.status, 200);
    assert_serving(&gw).await;
}

#[tokio::test]
async fn a_silent_client_is_closed_after_the_header_read_timeout() {
    let upstream = TestUpstream::start().await;
    let setup = Setup {
        server: "header_read_timeout = \"300ms\"".into(),
        ..Setup::default()
    };
    let gw = TestGateway::start_with(&upstream.url(), setup);
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed =
        tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the connection was not closed");
}

#[tokio::test]
async fn an_idle_kept_alive_connection_outlives_the_header_timeout() {
    let upstream = TestUpstream::start().await;
    let setup = Setup {
        server: "header_read_timeout = \"200ms\"\nidle_timeout = \"60s\"".into(),
        ..Setup::default()
    };
    let gw = TestGateway::start_with(&upstream.url(), setup);
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let req = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\n\r\n",
        gw.keys.read_only
    );
    for _ in 0..2 {
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        // Idle for longer than header_read_timeout but far less than idle_timeout.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn https_upstream_trusted_through_upstream_ca() {
    let (cert, key) = self_signed();
    let upstream = TestUpstream::start_tls(&cert, &key).await;
    let certs = tempfile::tempdir().unwrap();
    std::fs::write(certs.path().join("ca.pem"), &cert).unwrap();
    let setup = Setup {
        upstream: format!("ca = \"{}\"", certs.path().join("ca.pem").display()),
        ..Setup::default()
    };
    let gw = TestGateway::start_with(&upstream.https_url(), setup);
    let r = get(&gw.url("/over-tls"), &[("x-api-key", &gw.keys.read_only)]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(upstream.last().uri, "/over-tls");

    // Without the CA, the certificate is not trusted: 502.
    let untrusted = TestGateway::start(&upstream.https_url());
    let r = get(
        &untrusted.url("/"),
        &[("x-api-key", &untrusted.keys.read_only)],
    )
    .await;
    assert_eq!(r.code(), "upstream_unavailable");
}

#[tokio::test]
async fn renewed_certificate_is_served_to_new_connections() {
    let upstream = TestUpstream::start().await;
    let certs = tempfile::tempdir().unwrap();
    let (setup, first) = tls_setup(certs.path());
    let gw = TestGateway::start_with(&upstream.url(), setup);
    let old = tls_connect(gw.addr, &first, &[b"http/1.1"]).await;
    // rcgen's default: valid until 4096-01-01.
    let expiry = "keygate_tls_certificate_expiry_timestamp_seconds";
    assert_eq!(metric(gw.ops, expiry).await, 67_090_118_400.0);

    let (second, key) = self_signed_until(2031, 6, 1);
    std::fs::write(certs.path().join("key.pem.tmp"), &key).unwrap();
    std::fs::write(certs.path().join("cert.pem.tmp"), &second).unwrap();
    std::fs::rename(
        certs.path().join("key.pem.tmp"),
        certs.path().join("key.pem"),
    )
    .unwrap();
    std::fs::rename(
        certs.path().join("cert.pem.tmp"),
        certs.path().join("cert.pem"),
    )
    .unwrap();
    gw.wait_for_output("TLS certificate reloaded");
    let fresh = tls_connect(gw.addr, &second, &[b"http/1.1"]).await;
    let served = fresh.get_ref().1.peer_certificates().unwrap()[0].clone();
    use rustls_pki_types::pem::PemObject;
    assert_eq!(
        served,
        rustls_pki_types::CertificateDer::from_pem_slice(second.as_bytes()).unwrap()
    );
    drop(old);
    let reloads =
        |result: &str| format!("keygate_tls_certificate_reloads_total{{result=\"{result}\"}}");
    wait_for_metric(gw.ops, &reloads("success"), |v| v >= 1.0).await;
    assert_eq!(metric(gw.ops, expiry).await, 1_938_038_400.0, "2031-06-01");
    assert_eq!(
        metric(gw.ops, "keygate_tls_certificate_last_reload_successful").await,
        1.0
    );

    // A broken certificate: counted, flagged, and the renewed one stays.
    std::fs::write(certs.path().join("cert.pem"), "not a certificate\n").unwrap();
    wait_for_metric(gw.ops, &reloads("failure"), |v| v >= 1.0).await;
    assert_eq!(
        metric(gw.ops, "keygate_tls_certificate_last_reload_successful").await,
        0.0
    );
    assert_eq!(metric(gw.ops, expiry).await, 1_938_038_400.0);
    let still = tls_connect(gw.addr, &second, &[b"http/1.1"]).await;
    drop(still);
}

#[tokio::test]
async fn content_length_with_transfer_encoding_gets_one_framing_and_a_closed_connection() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let req = format!(
        "POST /echo-body HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        gw.keys.full
    );
    let out = raw(gw.addr, req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("hello"), "{out}");
    assert!(out.to_lowercase().contains("connection: close"), "{out}");
    let seen = upstream.last().headers;
    assert!(
        !(seen.contains_key("content-length") && seen.contains_key("transfer-encoding")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn connections_past_max_connections_wait_in_the_backlog() {
    let upstream = TestUpstream::start().await;
    let setup = Setup {
        server: "max_connections = 2".into(),
        ..Setup::default()
    };
    let gw = TestGateway::start_with(&upstream.url(), setup);
    let ops = gw.ops;
    let a = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let b = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    wait_for_metric(ops, "keygate_connections_active", |v| v >= 2.0).await;
    let url = gw.url("/");
    let key = gw.keys.read_only.clone();
    let third = tokio::spawn(async move { get(&url, &[("x-api-key", &key)]).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served past max_connections = 2"
    );
    assert_eq!(metric(ops, "keygate_connections_active").await, 2.0);
    drop(a);
    assert_eq!(third.await.unwrap().status, 200);
    drop(b);
}

#[tokio::test]
async fn a_stalled_second_request_head_is_closed_too() {
    let upstream = TestUpstream::start().await;
    let setup = Setup {
        server: "header_read_timeout = \"300ms\"".into(),
        ..Setup::default()
    };
    let gw = TestGateway::start_with(&upstream.url(), setup);
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let req = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\n\r\n",
        gw.keys.read_only
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // The next head starts, then stalls: cut within 1.5 × the timeout, not the idle timeout.
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let start = std::time::Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tcp.read_to_end(&mut rest),
    )
    .await;
    assert!(closed.is_ok(), "the stalled connection was not closed");
    eprintln!("stalled second head closed after {:?}", start.elapsed());
}

#[tokio::test]
async fn a_slow_upload_is_not_cut_by_the_response_timeout() {
    let upstream = TestUpstream::start().await;
    let setup = Setup {
        upstream: "response_timeout = \"300ms\"".into(),
        ..Setup::default()
    };
    let gw = TestGateway::start_with(&upstream.url(), setup);
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /echo-body HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-length: 8\r\nconnection: close\r\n\r\n",
        gw.keys.full
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    // 8 bytes over ~800 ms: the upload outlasts response_timeout, the
    // upstream (which answers after the whole body) does not.
    for b in b"uploaded" {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        tcp.write_all(&[*b]).await.unwrap();
    }
    let mut out = Vec::new();
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("uploaded"), "{out}");
}

/// Reads one response from `tcp` (what follows it stays in `buf`): its
/// head, and its body by `Content-Length` or chunked; an interim 1xx or a
/// HEAD answer (`no_body`) has none.
async fn read_response(
    tcp: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    no_body: bool,
) -> (String, Vec<u8>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut fields);
        let httparse::Status::Complete(at) = response.parse(buf).unwrap() else {
            more(tcp, buf, deadline).await;
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..at]).into_owned();
        let field = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        let length = field("content-length").map(|v| v.parse::<usize>().unwrap());
        let chunked = field("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let interim = response.code.is_some_and(|c| c < 200);
        if no_body || interim {
            buf.drain(..at);
            return (head, Vec::new());
        }
        if let Some(length) = length {
            while buf.len() < at + length {
                more(tcp, buf, deadline).await;
            }
            let body = buf[at..at + length].to_vec();
            buf.drain(..at + length);
            return (head, body);
        }
        assert!(chunked, "neither length nor chunked: {head}");
        let mut body = Vec::new();
        let mut pos = at;
        loop {
            let Some(eol) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
                more(tcp, buf, deadline).await;
                continue;
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&buf[pos..pos + eol]).unwrap(), 16)
                    .unwrap();
            if buf.len() < pos + eol + 2 + size + 2 {
                more(tcp, buf, deadline).await;
                continue;
            }
            body.extend_from_slice(&buf[pos + eol + 2..pos + eol + 2 + size]);
            pos += eol + 2 + size + 2;
            if size == 0 {
                buf.drain(..pos);
                return (head, body);
            }
        }
    }
}

async fn more(tcp: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    let mut chunk = [0u8; 4096];
    let n = tokio::time::timeout(left, tcp.read(&mut chunk))
        .await
        .expect("no whole response within 5 s")
        .unwrap();
    assert!(
        n > 0,
        "closed mid-response: {:?}",
        String::from_utf8_lossy(buf)
    );
    buf.extend_from_slice(&chunk[..n]);
}

#[tokio::test]
async fn one_connection_carries_pipelined_refused_continued_and_head_requests() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let (ro, full) = (&gw.keys.read_only, &gw.keys.full);
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();

    // Two requests in one write: two answers, in order.
    let two = format!(
        "GET /a HTTP/1.1\r\nhost: x\r\nx-api-key: {ro}\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\nx-api-key: {ro}\r\n\r\n"
    );
    tcp.write_all(two.as_bytes()).await.unwrap();
    let (a, _) = read_response(&mut tcp, &mut buf, false).await;
    let (b, _) = read_response(&mut tcp, &mut buf, false).await;
    assert!(
        a.starts_with("HTTP/1.1 200") && b.starts_with("HTTP/1.1 200"),
        "{a}{b}"
    );
    assert!(a.to_lowercase().contains("\r\ndate: "), "{a}");

    // A body the upstream streams without a length goes chunked, whole.
    let stream = format!("GET /stream/200000 HTTP/1.1\r\nhost: x\r\nx-api-key: {ro}\r\n\r\n");
    tcp.write_all(stream.as_bytes()).await.unwrap();
    let (streamed, body) = read_response(&mut tcp, &mut buf, false).await;
    assert!(
        streamed.contains("transfer-encoding: chunked"),
        "{streamed}"
    );
    assert_eq!(body.len(), 200_000);

    // A refused request whose body came with it: the next one on the same
    // connection is still read as a request of its own.
    let refused = format!(
        "POST /c HTTP/1.1\r\nhost: x\r\nx-api-key: kg_nope\r\ncontent-length: 11\r\n\r\nGET /smuggl\
         GET /d HTTP/1.1\r\nhost: x\r\nx-api-key: {ro}\r\n\r\n"
    );
    tcp.write_all(refused.as_bytes()).await.unwrap();
    let (c, _) = read_response(&mut tcp, &mut buf, false).await;
    assert!(c.starts_with("HTTP/1.1 401"), "{c}");
    assert!(!c.to_lowercase().contains("connection: close"), "{c}");
    let (d, _) = read_response(&mut tcp, &mut buf, false).await;
    assert!(d.starts_with("HTTP/1.1 200"), "{d}");

    // Expect: 100-continue refused: the final answer, with no interim one,
    // and the connection closes (the body never came).
    let mut other = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let refused = "POST /g HTTP/1.1\r\nhost: x\r\nx-api-key: kg_nope\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n";
    other.write_all(refused.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), other.read_to_end(&mut out))
        .await
        .expect("the refused connection did not close")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    assert!(!out.contains("100 Continue"), "{out}");
    assert!(out.to_lowercase().contains("connection: close"), "{out}");

    // Expect: 100-continue: the interim answer first, then the body is read.
    let head = format!(
        "POST /echo-body HTTP/1.1\r\nhost: x\r\nx-api-key: {full}\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let (interim, _) = read_response(&mut tcp, &mut buf, false).await;
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    tcp.write_all(b"hello").await.unwrap();
    let (echoed, body) = read_response(&mut tcp, &mut buf, false).await;
    assert!(echoed.starts_with("HTTP/1.1 200"), "{echoed}");
    assert_eq!(body, b"hello");

    // HEAD: a head without a body; the request after it still parses.
    let head_then_get = format!(
        "HEAD /e HTTP/1.1\r\nhost: x\r\nx-api-key: {ro}\r\n\r\nGET /f HTTP/1.1\r\nhost: x\r\nx-api-key: {ro}\r\n\r\n"
    );
    tcp.write_all(head_then_get.as_bytes()).await.unwrap();
    let (e, _) = read_response(&mut tcp, &mut buf, true).await;
    assert!(e.starts_with("HTTP/1.1 200"), "{e}");
    let (f, _) = read_response(&mut tcp, &mut buf, false).await;
    assert!(f.starts_with("HTTP/1.1 200"), "{f}");
    assert!(buf.is_empty(), "{:?}", String::from_utf8_lossy(&buf));

    let paths: Vec<String> = upstream.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(
        paths,
        ["/a", "/b", "/stream/200000", "/d", "/echo-body", "/e", "/f"]
    );
}

#[tokio::test]
async fn an_http10_client_gets_its_answer_delimited_and_the_connection_closed() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    // The upstream streams this body without a length: the client gets
    // it to the connection's end, not chunked (HTTP/1.0 has no chunks).
    let req = format!(
        "GET /stream/100000 HTTP/1.0\r\nhost: x\r\nx-api-key: {}\r\n\r\n",
        gw.keys.read_only
    );
    let out = raw(gw.addr, req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out:.200}");
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(!head.to_lowercase().contains("transfer-encoding"), "{head}");
    assert!(head.to_lowercase().contains("connection: close"), "{head}");
    assert_eq!(body.len(), 100_000);
    let kept = format!(
        "GET /x HTTP/1.0\r\nhost: x\r\nconnection: keep-alive\r\nx-api-key: {}\r\n\r\n",
        gw.keys.read_only
    );
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(kept.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let (head, _) = read_response(&mut tcp, &mut buf, false).await;
    assert!(
        head.to_lowercase().contains("connection: keep-alive"),
        "{head}"
    );
}

#[tokio::test]
async fn an_http10_answer_cut_short_ends_in_a_reset_not_an_end() {
    // Delimited by the connection's end, a body cut short would look
    // whole to an HTTP/1.0 client if the connection ended normally.
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let req = format!(
        "GET /die-mid-stream HTTP/1.0\r\nhost: x\r\nx-api-key: {}\r\n\r\n",
        gw.keys.read_only
    );
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out))
        .await
        .expect("the connection did not end within 5 s");
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    let error = ended.expect_err("the connection ended as if the body were whole");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
}

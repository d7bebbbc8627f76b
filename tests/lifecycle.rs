//! Process lifecycle: graceful drain on SIGTERM, readiness, ops endpoints.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::*;

use std::time::{Duration, Instant};

async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let upstream = TestUpstream::start().await;
    let mut gw = TestGateway::start(&upstream.url());
    assert_eq!(
        get(&format!("http://{}/readyz", gw.ops), &[]).await.status,
        200
    );

    let url = gw.url("/slow/1500");
    let key = gw.keys.read_only.clone();
    let in_flight = tokio::spawn(async move { get(&url, &[("x-api-key", &key)]).await });
    wait_until("the upstream to see the request", || async {
        !upstream.seen().is_empty()
    })
    .await;

    gw.signal("TERM");
    let ops = gw.ops;
    wait_until("/readyz to turn 503", || async move {
        get(&format!("http://{ops}/readyz"), &[]).await.status == 503
    })
    .await;
    let addr = gw.addr;
    wait_until("the listener to stop accepting", || async move {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;

    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "slow done");
    assert!(gw.wait_exit().success());
    assert!(
        gw.output().contains("every connection finished"),
        "{}",
        gw.output()
    );
}

// Multi-thread: `wait_exit` blocks, and the in-process upstream must still run.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_waits_for_an_open_websocket_tunnel() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = TestUpstream::start().await;
    let mut gw = TestGateway::start(&upstream.url());
    let (mut tcp, head) = websocket_upgrade(gw.addr, &gw.keys.read_only).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");

    gw.signal("TERM");
    let ops = gw.ops;
    wait_until("/readyz to turn 503", || async move {
        get(&format!("http://{ops}/readyz"), &[]).await.status == 503
    })
    .await;
    // Draining: the tunnel still carries data...
    tcp.write_all(b"still here").await.unwrap();
    let mut echoed = [0u8; 10];
    tcp.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"still here");
    // ...and the gateway exits once it closes, well before drain_timeout (30 s).
    drop(tcp);
    assert!(gw.wait_exit().success());
    assert!(
        gw.output().contains("every connection finished"),
        "{}",
        gw.output()
    );
}

/// `workers = 1` serves on one single-threaded runtime (no work-stealing
/// scheduler, PERFORMANCE.md): everything still works on it: forwarding, a
/// WebSocket tunnel, a reload on SIGHUP, a drain that waits for a request.
#[tokio::test(flavor = "multi_thread")]
async fn one_worker_forwards_tunnels_reloads_and_drains() {
    let upstream = TestUpstream::start().await;
    let mut gw = TestGateway::start_with(
        &upstream.url(),
        Setup {
            server: "workers = 1".into(),
            ..Setup::default()
        },
    );
    let r = get(&gw.url("/"), &[("x-api-key", &gw.keys.read_only)]).await;
    assert_eq!(r.status, 200);
    drop(open_echo_tunnel(gw.addr, &gw.keys.read_only, b"one thread").await);

    gw.signal("HUP");
    wait_until("the reload", || async {
        gw.output().matches("key store loaded").count() >= 2
    })
    .await;

    let url = gw.url("/slow/1000");
    let key = gw.keys.read_only.clone();
    let in_flight = tokio::spawn(async move { get(&url, &[("x-api-key", &key)]).await });
    wait_until("the upstream to see the slow request", || async {
        upstream.seen().iter().any(|s| s.uri.contains("/slow/"))
    })
    .await;
    gw.signal("TERM");
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "slow done");
    assert!(gw.wait_exit().success());
}

#[tokio::test]
async fn drain_timeout_bounds_the_wait() {
    let upstream = TestUpstream::start().await;
    let setup = Setup {
        server: "drain_timeout = \"200ms\"".into(),
        ..Setup::default()
    };
    let mut gw = TestGateway::start_with(&upstream.url(), setup);
    let url = gw.url("/slow/10000");
    let key = gw.keys.read_only.clone();
    let _in_flight = tokio::spawn(async move { get(&url, &[("x-api-key", &key)]).await });
    wait_until("the upstream to see the request", || async {
        !upstream.seen().is_empty()
    })
    .await;
    gw.signal("TERM");
    assert!(gw.wait_exit().success());
    assert!(
        gw.output().contains("drain timeout cut off"),
        "{}",
        gw.output()
    );
}

#[tokio::test]
async fn ops_listener_serves_health_readiness_and_metrics() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    assert_eq!(
        get(&format!("http://{}/healthz", gw.ops), &[]).await.status,
        200
    );
    assert_eq!(
        get(&format!("http://{}/readyz", gw.ops), &[]).await.status,
        200
    );
    let m = get(&format!("http://{}/metrics", gw.ops), &[]).await;
    assert_eq!(m.status, 200);
    let text = String::from_utf8_lossy(&m.body);
    for name in [
        "keygate_decisions_total",
        "keygate_request_duration_seconds",
        "keygate_upstream_errors_total",
        "keygate_keys",
        "keygate_reloads_total",
        "keygate_config_last_reload_successful",
        "keygate_config_last_reload_success_timestamp_seconds",
        "keygate_connections_active",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(&format!("# TYPE {name} ")), "missing {name}");
    }
    assert_eq!(
        get(&format!("http://{}/nope", gw.ops), &[]).await.status,
        404
    );
}

#[tokio::test]
async fn every_decision_moves_its_series() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let k = gw.keys.clone();
    let series =
        |d: &str, a: &str| format!("keygate_decisions_total{{access=\"{a}\",decision=\"{d}\"}}");
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, String);
    let cases: Vec<Case> = vec![
        ("GET", vec![], series("missing_key", "none")),
        (
            "GET",
            vec![("x-api-key", "nope")],
            series("invalid_key", "none"),
        ),
        (
            "GET",
            vec![("x-api-key", &k.expired)],
            series("expired_key", "read-only"),
        ),
        (
            "GET",
            vec![("x-api-key", &k.full), ("origin", SHOP)],
            series("browser_full_access", "full-access"),
        ),
        (
            "GET",
            vec![("x-api-key", &k.pinned), ("origin", "https://x.example")],
            series("origin_not_allowed", "read-only"),
        ),
        (
            "PUT",
            vec![("x-api-key", &k.read_only)],
            series("read_only_method", "read-only"),
        ),
        (
            "GET",
            vec![("x-api-key", &k.read_only)],
            series("allowed", "read-only"),
        ),
        (
            "PATCH",
            vec![("x-api-key", &k.full)],
            series("allowed", "full-access"),
        ),
    ];
    for (method, headers, name) in cases {
        let before = metric(gw.ops, &name).await;
        send(method, &gw.url("/"), &headers, "").await;
        assert_eq!(metric(gw.ops, &name).await, before + 1.0, "{name}");
    }
    let hist = "keygate_request_duration_seconds_count{decision=\"allowed\"}";
    assert_eq!(metric(gw.ops, hist).await, 2.0);
    assert_eq!(
        metric(gw.ops, "keygate_keys{access=\"read-only\"}").await,
        3.0
    );
    assert_eq!(
        metric(gw.ops, "keygate_keys{access=\"full-access\"}").await,
        1.0
    );
}

#[tokio::test]
async fn connections_gauge_counts_open_client_connections() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let ops = gw.ops;
    let held = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    wait_until("the gauge to count the connection", || async move {
        metric(ops, "keygate_connections_active").await >= 1.0
    })
    .await;
    drop(held);
    wait_until("the gauge to drop back", || async move {
        metric(ops, "keygate_connections_active").await == 0.0
    })
    .await;
}

#[tokio::test]
async fn json_logs_and_the_optional_access_log() {
    let upstream = TestUpstream::start().await;
    let setup = Setup {
        log: "format = \"json\"\naccess_log = true".into(),
        ..Setup::default()
    };
    let gw = TestGateway::start_with(&upstream.url(), setup);
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let allowed_reply = get(
        &gw.url("/allowed?q=secret-looking"),
        &[
            ("x-api-key", &gw.keys.read_only),
            ("traceparent", traceparent),
        ],
    )
    .await;
    // A request id is made, sent upstream and returned; traceparent passes
    // through untouched.
    let made_id = allowed_reply
        .header("x-request-id")
        .expect("a request id on the response")
        .to_string();
    assert_eq!(made_id.len(), 36, "a UUID: {made_id}");
    let seen = upstream.last();
    assert_eq!(seen.headers["x-request-id"], made_id.as_str());
    assert_eq!(seen.headers["traceparent"], traceparent);
    // A valid incoming id is kept, end to end.
    let kept = get(
        &gw.url("/kept"),
        &[
            ("x-api-key", &gw.keys.read_only),
            ("x-request-id", "req-42"),
        ],
    )
    .await;
    assert_eq!(kept.header("x-request-id"), Some("req-42"));
    assert_eq!(upstream.last().headers["x-request-id"], "req-42");
    let denied_reply = get(
        &gw.url("/denied"),
        &[("x-api-key", &gw.keys.full), ("origin", SHOP)],
    )
    .await;
    assert_eq!(denied_reply.status, 403);
    let denied_id = denied_reply
        .header("x-request-id")
        .expect("denials carry the request id too")
        .to_string();
    // Unknown and malformed keys are logged as denials, never quoted.
    let unknown = "kg_thisKeyIsNotInTheStoreButLooksReal00";
    let malformed = "not-a-key-but-maybe-someone-s-password";
    for key in [unknown, malformed] {
        get(&gw.url("/denied"), &[("x-api-key", key)]).await;
    }
    // Every line these requests cause, the last included, before looking.
    gw.wait_for_lines("request allowed", 2);
    gw.wait_for_lines("request denied", 3);
    for secret in [
        gw.keys.read_only.as_str(),
        gw.keys.full.as_str(),
        unknown,
        malformed,
    ] {
        assert!(
            !gw.output().contains(secret),
            "a presented key reached the log"
        );
    }
    let lines: Vec<serde_json::Value> = gw
        .output()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let denied = lines
        .iter()
        .find(|l| l["fields"]["message"] == "request denied")
        .unwrap();
    let f = &denied["fields"];
    assert_eq!(f["decision"], "browser_full_access");
    assert_eq!(f["key.id"], "full");
    assert_eq!(f["url.path"], "/denied");
    assert_eq!(f["http.request.method"], "GET");
    assert_eq!(f["http.response.status_code"], 403);
    assert_eq!(f["client.address"], "127.0.0.1");
    assert_eq!(f["network.peer.address"], "127.0.0.1");
    assert!(f["network.peer.port"].as_u64().is_some_and(|p| p > 0));
    assert_eq!(f["network.protocol.version"], "1.1");
    assert_eq!(f["request.id"], denied_id.as_str());
    assert!(f["http.response.body.size"].as_u64().is_some_and(|n| n > 0));
    assert!(f["duration_us"].as_u64().is_some());
    let allowed = lines
        .iter()
        .find(|l| l["fields"]["message"] == "request allowed")
        .unwrap();
    let f = &allowed["fields"];
    assert_eq!(f["key.id"], "ro");
    assert_eq!(f["url.path"], "/allowed", "the query must not be logged");
    assert_eq!(f["decision"], "allowed");
    assert_eq!(f["http.response.status_code"], 200);
    assert_eq!(f["request.id"], made_id.as_str());
    assert_eq!(f["http.request.body.size"], 0);
    assert_eq!(
        f["http.response.body.size"].as_u64(),
        Some(allowed_reply.body.len() as u64),
        "written after the response: its size is known"
    );
    assert_eq!(f["response.complete"], true);
    let (total, upstream_us) = (
        f["duration_us"].as_u64().unwrap(),
        f["upstream.duration_us"].as_u64().unwrap(),
    );
    assert!(upstream_us <= total, "{upstream_us} <= {total}");
    // The upstream's time has its own histogram; responses count by class.
    assert!(
        support::client::metric(gw.ops, "keygate_upstream_duration_seconds_count").await >= 2.0
    );
    let class = |c: &str| format!("keygate_responses_total{{class=\"{c}\"}}");
    assert_eq!(support::client::metric(gw.ops, &class("2xx")).await, 2.0);
    assert_eq!(support::client::metric(gw.ops, &class("4xx")).await, 3.0);
    assert_eq!(support::client::metric(gw.ops, &class("5xx")).await, 0.0);
    // A forward that fails has its line too, with the path it was sent for.
    upstream.stop();
    let failed = get(
        &gw.url("/unreachable?q=1"),
        &[("x-api-key", &gw.keys.read_only)],
    )
    .await;
    assert_eq!(failed.status, 502);
    gw.wait_for_lines("request failed", 1);
    let line = gw
        .output()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["fields"]["message"] == "request failed")
        .unwrap();
    assert_eq!(line["fields"]["url.path"], "/unreachable");
    assert_eq!(line["fields"]["http.response.status_code"], 502);
}

#[tokio::test]
async fn access_log_is_off_by_default() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    get(&gw.url("/"), &[("x-api-key", &gw.keys.read_only)]).await;
    get(&gw.url("/"), &[]).await;
    gw.wait_for_output("request denied");
    assert!(!gw.output().contains("request allowed"));
}

/// Request lines are written apart from `tracing` (`cli::logging::access`),
/// so the log filter's verdict for them is taken at start: off when the
/// level leaves INFO out, on when their target is named.
#[tokio::test]
async fn the_log_filter_decides_whether_denials_are_logged() {
    let upstream = TestUpstream::start().await;
    for (level, logged) in [
        ("warn,keygate::cli=info", false),
        ("warn,keygate::cli=info,keygate::proxy::access=info", true),
    ] {
        let mut gw = TestGateway::start_with(
            &upstream.url(),
            Setup {
                log: format!("level = \"{level}\"\n"),
                ..Setup::default()
            },
        );
        assert_eq!(get(&gw.url("/"), &[]).await.status, 401);
        // Lines leave in the order they were logged: once the last is
        // read, a denial line would have been too.
        gw.signal("TERM");
        assert!(gw.wait_exit().success());
        gw.wait_for_output("shutdown complete");
        assert_eq!(gw.output().contains("request denied"), logged, "{level}");
    }
}

/// systemd's `Type=notify`: READY=1 once the gateway serves, STOPPING=1 when
/// it starts draining, over the datagram socket `$NOTIFY_SOCKET` names.
#[tokio::test]
async fn systemd_hears_ready_once_serving_and_stopping_on_drain() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut gw = TestGateway::start_with(
        &upstream.url(),
        Setup {
            env: vec![("NOTIFY_SOCKET".into(), path.display().to_string())],
            ..Setup::default()
        },
    );
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("READY=1 within 10 s");
    let ready = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert_serving(&gw).await;
    gw.signal("TERM");
    let n = socket.recv(&mut buf).expect("STOPPING=1 within 10 s");
    let stopping = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    assert!(gw.wait_exit().success());
}

/// 12-factor: an option set by `KEYGATE_<SECTION>_<OPTION>` reaches the
/// running gateway (the file leaves the access log off).
#[tokio::test]
async fn the_access_log_switched_on_from_the_environment() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start_with(
        &upstream.url(),
        Setup {
            env: vec![("KEYGATE_LOG_ACCESS_LOG".into(), "true".into())],
            ..Setup::default()
        },
    );
    let r = get(&gw.url("/from-env"), &[("x-api-key", &gw.keys.read_only)]).await;
    assert_eq!(r.status, 200);
    assert!(r.header("x-request-id").is_some());
    gw.wait_for_output("request allowed");
}

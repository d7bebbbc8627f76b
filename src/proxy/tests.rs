//! The whole pipeline (decide, forward, respond, count) in process: requests
//! are `http::Request`s with in-memory bodies handed to `Gateway::handle`, no
//! client socket and no server. The upstream is a real hyper server on
//! 127.0.0.1 in the same process, echoing what reached it, so that the
//! headers sent upstream are checked on the wire. A table of requests →
//! status, upstream headers and metric series; each row takes microseconds.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::{ConnInfo, Gateway};
use crate::config::Config;
use crate::keys::{Access, KeyHash, KeyId, KeyIndex, KeyRecord, KeySet, StoreSnapshot, token};
use crate::metrics::Metrics;

const SHOP: &str = "https://shop.example.com";

/// An upstream that answers 200 with the request's method, path and headers
/// as JSON, so a test sees exactly what the gateway forwarded.
async fn echo_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let headers: serde_json::Map<String, serde_json::Value> = req
                        .headers()
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.as_str().to_string(),
                                String::from_utf8_lossy(v.as_bytes()).into(),
                            )
                        })
                        .collect();
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|c| c.to_bytes())
                        .unwrap_or_default();
                    let echo = serde_json::json!({
                        "method": parts.method.as_str(),
                        "path": parts.uri.to_string(),
                        "headers": headers,
                        "body": String::from_utf8_lossy(&body),
                    });
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                        echo.to_string(),
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

struct Pipeline {
    gateway: Gateway,
    metrics: Arc<Metrics>,
    read_only: String,
    full: String,
    pinned: String,
    expired: String,
    revoked: String,
}

fn record(
    id: &str,
    secret: &str,
    access: Access,
    expires: Option<SystemTime>,
    origins: &[&str],
) -> KeyRecord {
    KeyRecord {
        id: KeyId::parse(id).unwrap_or_else(|e| panic!("{e}")),
        name: id.into(),
        access,
        hash: KeyHash::of(secret.as_bytes()),
        created: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        expires,
        origins: origins.iter().map(|o| o.to_string()).collect(),
        previous: None,
        rate_limit: None,
    }
}

fn secret() -> String {
    token::generate("kg").unwrap_or_else(|e| panic!("{e}"))
}

async fn pipeline(extra: &str) -> Pipeline {
    pipeline_with(extra, Metrics::new().unwrap_or_else(|e| panic!("{e}"))).await
}

async fn pipeline_with(extra: &str, metrics: Metrics) -> Pipeline {
    let upstream = echo_upstream().await;
    let text =
        format!("[upstream]\nurl = \"http://{upstream}\"\nresponse_timeout = \"5s\"\n{extra}");
    let config =
        Config::from_toml(&text, Path::new("/"), &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let (read_only, full, pinned, expired, revoked) =
        (secret(), secret(), secret(), secret(), secret());
    let past = SystemTime::now() - Duration::from_secs(60);
    let keys = KeySet::from_records(vec![
        record("ro", &read_only, Access::ReadOnly, None, &[]),
        record("fa", &full, Access::FullAccess, None, &[]),
        record("pinned", &pinned, Access::ReadOnly, None, &[SHOP]),
        record("old", &expired, Access::ReadOnly, Some(past), &[]),
    ])
    .unwrap_or_else(|(_, e)| panic!("{e}"));
    let index = KeyIndex::build(&StoreSnapshot {
        keys,
        revoked: HashSet::from([KeyHash::of(revoked.as_bytes())]),
        revoked_later: Default::default(),
    });
    let metrics = Arc::new(metrics);
    let gateway = Gateway::new(
        &config,
        Arc::new(ArcSwap::from_pointee(index)),
        metrics.clone(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    Pipeline {
        gateway,
        metrics,
        read_only,
        full,
        pinned,
        expired,
        revoked,
    }
}

/// What came back: status, headers, and the body as JSON.
struct Reply {
    status: u16,
    headers: HeaderMap,
    json: serde_json::Value,
}

impl Reply {
    /// A header the upstream received (from the echo).
    fn upstream(&self, name: &str) -> Option<&str> {
        self.json["headers"][name].as_str()
    }
}

impl Pipeline {
    async fn send(&self, method: Method, headers: &[(&str, &str)], body: &'static str) -> Reply {
        let mut req = Request::builder().method(method).uri("/v1/points?page=2");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap_or_else(|e| panic!("{e}"));
        let conn = ConnInfo::new(SocketAddr::from(([192, 0, 2, 7], 40000)), false);
        let response = self.gateway.handle(req, &conn).await;
        let (parts, body) = response.into_parts();
        let bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            json: serde_json::from_slice(&bytes).unwrap_or_default(),
        }
    }

    fn series(&self, line: &str) -> bool {
        self.metrics.render().lines().any(|l| l == line)
    }
}

/// Method, headers, status, and the error code or the key id seen upstream.
type Row<'a> = (Method, Vec<(&'a str, &'a str)>, u16, &'a str);

#[tokio::test]
async fn the_decision_table_end_to_end_in_process() {
    let p = pipeline("").await;
    let (ro, fa, pinned, expired, revoked) =
        (&p.read_only, &p.full, &p.pinned, &p.expired, &p.revoked);
    // The last character changed (to anything but itself).
    let last = if ro.ends_with('x') { "y" } else { "x" };
    let malformed = format!("{}{last}", &ro[..ro.len() - 1]);
    let twice = [("x-api-key", ro.as_str()), ("authorization", "Bearer x")];
    let bearer = format!("Bearer {fa}");
    let rows: Vec<Row> = vec![
        (Method::GET, vec![], 401, "missing_key"),
        (
            Method::GET,
            vec![("x-api-key", &malformed)],
            401,
            "invalid_key",
        ),
        (
            Method::GET,
            vec![("x-api-key", revoked)],
            401,
            "invalid_key",
        ),
        (Method::GET, twice.to_vec(), 401, "invalid_key"),
        (
            Method::GET,
            vec![("x-api-key", expired)],
            401,
            "expired_key",
        ),
        (
            Method::GET,
            vec![("x-api-key", fa), ("origin", SHOP)],
            403,
            "browser_full_access",
        ),
        (
            Method::GET,
            vec![("x-api-key", fa), ("sec-fetch-site", "cross-site")],
            403,
            "browser_full_access",
        ),
        (
            Method::GET,
            vec![("x-api-key", pinned), ("origin", "https://evil.example")],
            403,
            "origin_not_allowed",
        ),
        (
            Method::POST,
            vec![("x-api-key", ro)],
            403,
            "read_only_method",
        ),
        (Method::GET, vec![("x-api-key", ro)], 200, "ro"),
        (Method::GET, vec![("authorization", &bearer)], 200, "fa"),
        (
            Method::POST,
            vec![("x-api-key", fa), ("sec-fetch-mode", "cors")],
            200,
            "fa",
        ),
        (
            Method::GET,
            vec![("x-api-key", pinned), ("origin", SHOP)],
            200,
            "pinned",
        ),
    ];
    for (method, headers, status, expected) in rows {
        let what = format!("{method} {headers:?}");
        let r = p.send(method, &headers, "").await;
        assert_eq!(r.status, status, "{what}");
        if status == 200 {
            assert_eq!(r.upstream("x-keygate-key-id"), Some(expected), "{what}");
            // The key never reaches the backend.
            assert_eq!(r.upstream("x-api-key"), None, "{what}");
            assert_eq!(r.upstream("authorization"), None, "{what}");
            assert_eq!(r.upstream("x-forwarded-for"), Some("192.0.2.7"), "{what}");
            assert_eq!(r.upstream("x-forwarded-proto"), Some("http"), "{what}");
            assert_eq!(r.json["path"], "/v1/points?page=2", "{what}");
        } else {
            assert_eq!(r.json["error"], expected, "{what}");
            assert_eq!(
                r.headers.get("content-type").map(|v| v.as_bytes()),
                Some(&b"application/json"[..]),
                "{what}"
            );
        }
    }
    for line in [
        r#"keygate_decisions_total{access="none",decision="missing_key"} 1"#,
        r#"keygate_decisions_total{access="none",decision="invalid_key"} 3"#,
        r#"keygate_decisions_total{access="read-only",decision="expired_key"} 1"#,
        r#"keygate_decisions_total{access="full-access",decision="browser_full_access"} 2"#,
        r#"keygate_decisions_total{access="read-only",decision="origin_not_allowed"} 1"#,
        r#"keygate_decisions_total{access="read-only",decision="read_only_method"} 1"#,
        r#"keygate_decisions_total{access="read-only",decision="allowed"} 2"#,
        r#"keygate_decisions_total{access="full-access",decision="allowed"} 2"#,
    ] {
        assert!(p.series(line), "missing {line}");
    }
}

#[tokio::test]
async fn allowed_bodies_stream_upstream_and_identity_is_ours_alone() {
    let p = pipeline("").await;
    let r = p
        .send(
            Method::PUT,
            &[
                ("x-api-key", &p.full),
                ("x-keygate-key-id", "spoofed"),
                ("x-keygate-access", "full-access"),
                ("x-keygate-anything", "1"),
            ],
            "{\"points\": 5}",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["method"], "PUT");
    assert_eq!(r.json["body"], "{\"points\": 5}");
    assert_eq!(r.upstream("x-keygate-key-id"), Some("fa"));
    assert_eq!(r.upstream("x-keygate-access"), Some("full-access"));
    assert_eq!(r.upstream("x-keygate-anything"), None);
}

#[tokio::test]
async fn preflights_are_answered_or_forwarded_without_identity_or_key() {
    let cors = format!("[cors]\nallowed_origins = [\"{SHOP}\"]\n");
    let p = pipeline(&cors).await;
    let asked = [("origin", SHOP), ("access-control-request-method", "GET")];
    let r = p.send(Method::OPTIONS, &asked, "").await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.headers
            .get("access-control-allow-methods")
            .map(|v| v.as_bytes()),
        Some(&b"GET, HEAD, OPTIONS"[..])
    );
    assert_eq!(
        r.headers
            .get("access-control-allow-origin")
            .map(|v| v.as_bytes()),
        Some(SHOP.as_bytes())
    );
    let post = [("origin", SHOP), ("access-control-request-method", "POST")];
    let r = p.send(Method::OPTIONS, &post, "").await;
    assert_eq!(
        (r.status, r.json["error"].as_str()),
        (403, Some("read_only_method"))
    );
    // A denial to a listed origin carries the CORS header too.
    let r = p
        .send(Method::GET, &[("origin", SHOP), ("x-api-key", &p.full)], "")
        .await;
    assert_eq!(r.status, 403);
    assert!(r.headers.contains_key("access-control-allow-origin"));
    assert!(p.series(r#"keygate_decisions_total{access="none",decision="preflight"} 1"#));

    // Without [cors] the backend answers preflights: forwarded with no
    // identity headers and no (unchecked) key.
    let p = pipeline("").await;
    let mut headers = asked.to_vec();
    headers.push(("x-api-key", &p.full));
    headers.push(("x-keygate-key-id", "spoofed"));
    let r = p.send(Method::OPTIONS, &headers, "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["method"], "OPTIONS");
    assert_eq!(r.upstream("x-keygate-key-id"), None);
    assert_eq!(r.upstream("x-keygate-access"), None);
    assert_eq!(r.upstream("x-api-key"), None);
    assert!(p.series(r#"keygate_decisions_total{access="none",decision="preflight"} 1"#));
}

#[tokio::test]
async fn no_index_yet_answers_not_ready_and_counts_it() {
    let p = pipeline("").await;
    let empty = Gateway::new(
        &Config::from_toml(
            "[upstream]\nurl = \"http://127.0.0.1:9\"\n",
            Path::new("/"),
            &|_| None,
        )
        .unwrap_or_else(|e| panic!("{e}")),
        Arc::new(ArcSwap::from_pointee(KeyIndex::default())),
        p.metrics.clone(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let p = Pipeline {
        gateway: empty,
        ..p
    };
    let r = p
        .send(Method::GET, &[("x-api-key", &p.read_only)], "")
        .await;
    assert_eq!(
        (r.status, r.json["error"].as_str()),
        (503, Some("not_ready"))
    );
    assert_eq!(
        r.headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert!(p.series(r#"keygate_decisions_total{access="none",decision="not_ready"} 1"#));
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_counted_502() {
    let p = pipeline("").await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        l.local_addr().unwrap_or_else(|e| panic!("{e}"))
    };
    let config = Config::from_toml(
        &format!("[upstream]\nurl = \"http://{closed}\"\n"),
        Path::new("/"),
        &|_| None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let gateway = Gateway::new(&config, p.gateway.index.clone(), p.metrics.clone())
        .unwrap_or_else(|e| panic!("{e}"));
    let p = Pipeline { gateway, ..p };
    let r = p
        .send(Method::GET, &[("x-api-key", &p.read_only)], "")
        .await;
    assert_eq!(
        (r.status, r.json["error"].as_str()),
        (502, Some("upstream_unavailable"))
    );
    assert!(p.series(
        r#"keygate_decisions_total{access="read-only",decision="upstream_unavailable"} 1"#
    ));
    assert!(p.series(r#"keygate_upstream_errors_total{kind="connect"} 1"#));
}

#[tokio::test]
async fn too_many_http2_header_fields_is_a_counted_431_with_cors() {
    let cors = format!("[cors]\nallowed_origins = [\"{SHOP}\"]\n[server]\nmax_headers = 8\n");
    let p = pipeline(&cors).await;
    let mut req = Request::builder()
        .method(Method::GET)
        .uri("/")
        .version(http::Version::HTTP_2)
        .header("origin", SHOP);
    for i in 0..9 {
        req = req.header(format!("x-filler-{i}"), "1");
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .unwrap_or_else(|e| panic!("{e}"));
    let conn = ConnInfo::new(SocketAddr::from(([192, 0, 2, 7], 40000)), false);
    let r = p.gateway.handle(req, &conn).await;
    assert_eq!(r.status().as_u16(), 431);
    assert!(r.headers().contains_key("access-control-allow-origin"));
    assert!(p.series(r#"keygate_decisions_total{access="none",decision="headers_too_large"} 1"#));
}

#[tokio::test]
async fn per_key_counting_is_off_by_default_and_labels_known_keys_when_on() {
    let p = pipeline("").await;
    p.send(Method::GET, &[("x-api-key", &p.read_only)], "")
        .await;
    assert!(!p.metrics.render().contains("keygate_key_requests_total"));

    let per_key = Metrics::new()
        .and_then(Metrics::with_per_key)
        .unwrap_or_else(|e| panic!("{e}"));
    let p = pipeline_with("", per_key).await;
    p.send(Method::GET, &[("x-api-key", &p.read_only)], "")
        .await;
    p.send(Method::POST, &[("x-api-key", &p.read_only)], "")
        .await;
    p.send(Method::GET, &[("x-api-key", "kg_not_a_key")], "")
        .await;
    for line in [
        r#"keygate_key_requests_total{decision="allowed",key_id="ro"} 1"#,
        r#"keygate_key_requests_total{decision="read_only_method",key_id="ro"} 1"#,
    ] {
        assert!(p.series(line), "missing {line}");
    }
    // No series for a request whose key is not known.
    assert_eq!(
        p.metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("keygate_key_requests_total{"))
            .count(),
        2
    );
}

/// The future of a forward is moved (copied) at least once per level that
/// awaits it, on every request: before `prepare` ran in `begin`, the
/// request, the encoded head and the connect futures were each held at
/// several levels, and it took 3,656 bytes (3,688 in a debug build); now
/// 1,520 (2,000). Room for modest growth; a request held across a wait
/// again would break it.
#[tokio::test]
async fn the_forward_future_stays_small() {
    let p = pipeline("").await;
    let req = Request::builder()
        .uri("/")
        .header("x-api-key", p.read_only.as_str())
        .body(Full::new(Bytes::new()))
        .unwrap_or_else(|e| panic!("{e}"));
    let conn = ConnInfo::new(SocketAddr::from(([192, 0, 2, 7], 40000)), false);
    let super::Begun::Forward(pending) = p.gateway.begin(req, &conn) else {
        panic!("an allowed GET was not forwarded");
    };
    let forward = p.gateway.forward_pending(pending, &conn);
    let size = std::mem::size_of_val(&forward);
    assert!(size <= 2560, "the forward future takes {size} bytes");
    assert_eq!(forward.await.status(), 200);
}

//! Every row of SPEC's decision table, end to end: client → keygate → upstream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::*;

#[tokio::test]
async fn allows_a_read_only_key_on_get_and_names_it_to_the_backend() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let r = get(
        &gw.url("/rewards?page=2"),
        &[("x-api-key", &gw.keys.read_only)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "{\"upstream\":true}");
    let seen = upstream.last();
    assert_eq!(seen.uri, "/rewards?page=2");
    assert_eq!(seen.headers["x-keygate-key-id"], "ro");
    assert_eq!(seen.headers["x-keygate-access"], "read-only");
}

#[tokio::test]
async fn each_refusal_gets_its_status_and_code() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let k = gw.keys.clone();
    let bearer_full = format!("Bearer {}", k.full);
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("GET", vec![], 401, "missing_key"),
        ("GET", vec![("x-api-key", "kg_short")], 401, "invalid_key"),
        (
            "GET",
            vec![("x-api-key", "not-a-known-key")],
            401,
            "invalid_key",
        ),
        ("GET", vec![("x-api-key", &k.revoked)], 401, "invalid_key"),
        (
            "GET",
            vec![("x-api-key", &k.read_only), ("authorization", &bearer_full)],
            401,
            "invalid_key",
        ),
        ("GET", vec![("x-api-key", &k.expired)], 401, "expired_key"),
        (
            "GET",
            vec![("x-api-key", &k.full), ("origin", "null")],
            403,
            "browser_full_access",
        ),
        (
            "GET",
            vec![
                ("authorization", &bearer_full),
                ("sec-fetch-site", "cross-site"),
            ],
            403,
            "browser_full_access",
        ),
        (
            "GET",
            vec![("x-api-key", &k.pinned), ("origin", "https://evil.example")],
            403,
            "origin_not_allowed",
        ),
        (
            "POST",
            vec![("x-api-key", &k.read_only)],
            403,
            "read_only_method",
        ),
        (
            "DELETE",
            vec![("x-api-key", &k.read_only)],
            403,
            "read_only_method",
        ),
    ];
    for (method, headers, status, code) in cases {
        let r = send(method, &gw.url("/x"), &headers, "").await;
        assert_eq!(
            (r.status.as_u16(), r.code().as_str()),
            (status, code),
            "{method} {headers:?}"
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.json()["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert!(
        upstream.seen().is_empty(),
        "a refused request reached the upstream"
    );
}

#[tokio::test]
async fn full_access_from_a_server_may_write_and_node_fetch_is_not_a_browser() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let bearer = format!("Bearer {}", gw.keys.full);
    let r = send(
        "POST",
        &gw.url("/orders"),
        &[("authorization", &bearer), ("sec-fetch-mode", "cors")],
        "{}",
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = upstream.last();
    assert_eq!(seen.headers["x-keygate-access"], "full-access");
    assert!(
        seen.headers.get("authorization").is_none(),
        "the key must not reach the backend"
    );
}

#[tokio::test]
async fn pinned_key_works_from_its_origin() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let r = get(
        &gw.url("/"),
        &[("x-api-key", &gw.keys.pinned), ("origin", SHOP)],
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn report_mode_forwards_full_access_from_a_browser_and_counts_it() {
    let upstream = TestUpstream::start().await;
    let setup = Setup {
        policy: "browser_full_access = \"report\"".into(),
        ..Setup::default()
    };
    let gw = TestGateway::start_with(&upstream.url(), setup);
    let r = get(
        &gw.url("/"),
        &[("x-api-key", &gw.keys.full), ("origin", SHOP)],
    )
    .await;
    assert_eq!(r.status, 200);
    let series =
        "keygate_decisions_total{access=\"full-access\",decision=\"browser_full_access_reported\"}";
    assert_eq!(metric(gw.ops, series).await, 1.0);
    gw.wait_for_output("report-only mode");
}

#[tokio::test]
async fn query_string_keys_only_when_switched_on_and_never_forwarded() {
    let upstream = TestUpstream::start().await;
    let off = TestGateway::start(&upstream.url());
    let r = get(&off.url(&format!("/a?api_key={}", off.keys.read_only)), &[]).await;
    assert_eq!(r.code(), "missing_key");

    let setup = Setup {
        keys: "query_param = \"api_key\"".into(),
        ..Setup::default()
    };
    let on = TestGateway::start_with(&upstream.url(), setup);
    let r = get(
        &on.url(&format!("/a?x=1&api_key={}&y=2", on.keys.read_only)),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(upstream.last().uri, "/a?x=1&y=2");
}

fn cors_setup() -> Setup {
    Setup {
        tables: format!("[cors]\nallowed_origins = [\"{SHOP}\"]\n"),
        ..Setup::default()
    }
}

#[tokio::test]
async fn gateway_answers_preflights_when_cors_is_configured() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start_with(&upstream.url(), cors_setup());
    let ok = send(
        "OPTIONS",
        &gw.url("/rewards"),
        &[
            ("origin", SHOP),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "x-api-key"),
        ],
        "",
    )
    .await;
    assert_eq!(ok.status, 204);
    assert_eq!(ok.header("access-control-allow-origin"), Some(SHOP));
    assert_eq!(
        ok.header("access-control-allow-methods"),
        Some("GET, HEAD, OPTIONS")
    );
    assert_eq!(ok.header("access-control-allow-headers"), Some("x-api-key"));
    let post = send(
        "OPTIONS",
        &gw.url("/rewards"),
        &[("origin", SHOP), ("access-control-request-method", "POST")],
        "",
    )
    .await;
    assert_eq!(
        (post.status.as_u16(), post.code().as_str()),
        (403, "read_only_method")
    );
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn denials_to_listed_origins_carry_cors_headers_so_pages_can_read_them() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start_with(&upstream.url(), cors_setup());
    let r = get(
        &gw.url("/"),
        &[("x-api-key", &gw.keys.full), ("origin", SHOP)],
    )
    .await;
    assert_eq!(r.code(), "browser_full_access");
    assert_eq!(r.header("access-control-allow-origin"), Some(SHOP));
    let other = get(
        &gw.url("/"),
        &[
            ("x-api-key", &gw.keys.full),
            ("origin", "https://evil.example"),
        ],
    )
    .await;
    assert_eq!(other.header("access-control-allow-origin"), None);
    let allowed = get(
        &gw.url("/"),
        &[("x-api-key", &gw.keys.read_only), ("origin", SHOP)],
    )
    .await;
    assert_eq!(allowed.status, 200);
    assert_eq!(allowed.header("access-control-allow-origin"), Some(SHOP));
}

#[tokio::test]
async fn without_cors_preflights_go_to_the_backend_unchanged() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    // The preflight carries a key (a page's script may add one) and
    // spoofed identity headers: none of them may reach the backend.
    let r = send(
        "OPTIONS",
        &gw.url("/p"),
        &[
            ("origin", SHOP),
            ("access-control-request-method", "POST"),
            ("x-api-key", &gw.keys.full),
            ("authorization", &format!("Bearer {}", gw.keys.read_only)),
            ("x-keygate-key-id", "spoofed"),
            ("x-keygate-access", "full-access"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = upstream.last();
    assert_eq!(seen.method, "OPTIONS");
    assert_eq!(seen.headers["access-control-request-method"], "POST");
    assert!(seen.headers.get("x-keygate-key-id").is_none());
    assert!(seen.headers.get("x-keygate-access").is_none());
    // Preflights are not checked, so no key rides along to the backend.
    assert!(seen.headers.get("x-api-key").is_none());
    assert!(seen.headers.get("authorization").is_none());
}

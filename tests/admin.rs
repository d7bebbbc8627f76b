//! The admin API and console back end through the real binary: admin
//! tokens (and their roles) from `keygate tokens`, every route of SPEC's
//! table with its errors, writes that reach the gateway by its normal
//! reload, console sessions with CSRF and same-origin checks, the sign-in
//! throttle, the audit trail, and `keygate admin` on its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::*;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\npublic_url = \"https://api.example.com\"\ndocs_url = \"https://docs.example.com/api\"\n";

/// A gateway with the admin listener; returns it and the admin address.
fn start(upstream: &str) -> (TestGateway, SocketAddr) {
    let gw = TestGateway::start_with(
        upstream,
        Setup {
            tables: ADMIN.into(),
            ..Setup::default()
        },
    );
    let addr = gw.admin_addr();
    (gw, addr)
}

/// Runs `keygate admin --config config`; returns it and its address.
fn spawn_admin(config: &std::path::Path) -> (Process, SocketAddr) {
    let mut child = Process(
        Command::new(BIN)
            .args(["admin", "--config", config.to_str().unwrap()])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let line = std::io::BufRead::lines(std::io::BufReader::new(stderr))
        .map_while(Result::ok)
        .find(|l| l.contains("keygate admin listening"))
        .unwrap();
    (child, address_in(&line, "admin.addr="))
}

async fn call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Reply {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("authorization", auth.as_str())];
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    send(method, &format!("http://{admin}{path}"), &headers, body).await
}

async fn until_status(gw: &TestGateway, secret: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&gw.url("/"), &[("x-api-key", secret)]).await.status != status {
        assert!(Instant::now() < deadline, "never {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_api_does_what_the_cli_does_with_roles_and_errors() {
    let upstream = TestUpstream::start().await;
    let (gw, admin) = start(&upstream.url());
    // No admin token yet: everything is 401, and the log says what to do.
    let r = call(admin, "GET", "/admin/v1/keys", "kga_nothing", None).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (401, "unauthorized")
    );
    gw.wait_for_output("there is no admin token yet");
    let alice = gw.admin_token("alice", "admin");
    let viewer = gw.admin_token("dashboard", "viewer");

    // Who may call: never an API key, never nobody; a viewer only reads.
    let r = send("GET", &format!("http://{admin}/admin/v1/keys"), &[], "").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = call(admin, "GET", "/admin/v1/keys", &gw.keys.full, None).await;
    assert_eq!(r.status, 401);
    let r = call(admin, "GET", "/admin/v1/keys", &viewer, None).await;
    assert_eq!(r.status, 200);
    let r = call(
        admin,
        "POST",
        "/admin/v1/keys",
        &viewer,
        Some(json!({"name": "x", "access": "read-only"})),
    )
    .await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (403, "forbidden"));
    // An admin token is refused on the data plane.
    assert_eq!(
        get(&gw.url("/"), &[("x-api-key", &alice)]).await.status,
        401
    );

    // Create: 201 with the secret once; it works through the gateway.
    let r = call(admin, "POST", "/admin/v1/keys", &alice, Some(json!({"name": "Boutique front", "access": "read-only", "origins": ["https://Shop.example"], "rate_limit": "100/min"}))).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let created = r.json();
    let id = created["id"].as_str().unwrap().to_string();
    let secret = created["key"].as_str().unwrap().to_string();
    assert_eq!(created["origins"], json!(["https://shop.example"]));
    assert_eq!(created["rate_limit"], "100/min");
    until_status(&gw, &secret, 200).await;

    // Reads: the key object, never a secret or hash.
    let list = call(admin, "GET", "/admin/v1/keys", &viewer, None).await;
    let text = String::from_utf8_lossy(&list.body).into_owned();
    assert!(!text.contains(&secret) && !text.contains("hash"), "{text}");
    // No stored hash appears in any answer.
    let store = std::fs::read_to_string(gw.store_path()).unwrap();
    let hashes: Vec<String> = store
        .lines()
        .filter_map(|l| l.strip_prefix("hash = \""))
        .map(|h| h.trim_end_matches('"').to_string())
        .collect();
    assert!(hashes.len() >= 5);
    for h in &hashes {
        assert!(!text.contains(h.as_str()));
    }
    let listed = list.json();
    assert!(
        listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == id.as_str())
    );
    let one = call(admin, "GET", &format!("/admin/v1/keys/{id}"), &viewer, None)
        .await
        .json();
    for field in [
        "id",
        "name",
        "access",
        "created",
        "expires",
        "origins",
        "rate_limit",
        "last_used",
        "rotating_until",
    ] {
        assert!(one.get(field).is_some(), "{field} missing: {one}");
    }
    assert!(one["last_used"].is_string(), "{one}");
    assert_eq!(
        call(admin, "GET", "/admin/v1/keys/nope", &alice, None)
            .await
            .code(),
        "not_found"
    );
    assert_eq!(
        call(admin, "GET", "/admin/v1/keys/NOT!AN!ID", &alice, None)
            .await
            .status,
        404
    );

    // Bad input: a precise answer and nothing written.
    let before = std::fs::read_to_string(gw.store_path()).unwrap();
    let raw = send(
        "POST",
        &format!("http://{admin}/admin/v1/keys"),
        &[("authorization", &format!("Bearer {alice}"))],
        "{not json",
    )
    .await;
    assert_eq!(
        (raw.status.as_u16(), raw.code().as_str()),
        (400, "bad_request")
    );
    for (body, field) in [
        (json!({"access": "read-only"}), "name"),
        (json!({"name": "x"}), "access"),
        (json!({"name": 7, "access": "read-only"}), "name"),
        (json!({"name": "x", "access": "admin"}), "access"),
        (
            json!({"name": "x", "access": "read-only", "expires": "2001-01-01"}),
            "expires",
        ),
        (
            json!({"name": "x", "access": "read-only", "origins": ["ftp://x"]}),
            "origins",
        ),
        (
            json!({"name": "x", "access": "read-only", "rate_limit": "lots"}),
            "rate_limit",
        ),
        (
            json!({"name": "x", "access": "read-only", "colour": "red"}),
            "colour",
        ),
    ] {
        let r = call(admin, "POST", "/admin/v1/keys", &alice, Some(body.clone())).await;
        assert_eq!(
            (r.status.as_u16(), r.code().as_str()),
            (422, "invalid"),
            "{body}"
        );
        assert_eq!(r.json()["field"], field, "{body}");
    }
    let huge = json!({"name": "x".repeat(70 * 1024), "access": "read-only"});
    let r = call(admin, "POST", "/admin/v1/keys", &alice, Some(huge)).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (413, "payload_too_large")
    );
    assert!(r.json()["message"].as_str().unwrap().contains("65536"));
    assert_eq!(std::fs::read_to_string(gw.store_path()).unwrap(), before);

    // Update: rename and downgrade freely; an upgrade needs force.
    let path = format!("/admin/v1/keys/{id}");
    let r = call(
        admin,
        "PATCH",
        &path,
        &alice,
        Some(json!({"name": "Boutique frontend"})),
    )
    .await;
    assert_eq!(r.json()["name"], "Boutique frontend");
    let r = call(
        admin,
        "PATCH",
        &path,
        &alice,
        Some(json!({"access": "full-access"})),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (409, "upgrade_needs_force")
    );
    let r = call(
        admin,
        "PATCH",
        &path,
        &alice,
        Some(json!({"access": "full-access", "force": true, "origins": []})),
    )
    .await;
    assert_eq!(r.json()["access"], "full-access", "{:?}", r.body);
    let r = call(
        admin,
        "PATCH",
        &path,
        &alice,
        Some(json!({"access": "read-only"})),
    )
    .await;
    assert_eq!(r.json()["access"], "read-only");
    let r = call(
        admin,
        "PATCH",
        &path,
        &alice,
        Some(json!({"name": "x", "force": "yes"})),
    )
    .await;
    assert_eq!(r.json()["field"], "force");
    let r = call(admin, "PATCH", &path, &alice, Some(json!({"force": true}))).await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (400, "bad_request"));

    // Snippets: a browser one for read-only keys only; never the secret.
    let s = call(admin, "GET", &format!("{path}/snippets"), &viewer, None)
        .await
        .json();
    let ids: Vec<String> = s["snippets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["curl", "node", "python", "browser"]);
    assert!(s.to_string().contains("https://api.example.com/"));
    assert!(!s.to_string().contains(&secret));
    let full = call(
        admin,
        "POST",
        "/admin/v1/keys",
        &alice,
        Some(json!({"name": "ERP", "access": "full-access"})),
    )
    .await
    .json();
    let full_id = full["id"].as_str().unwrap();
    let s = call(
        admin,
        "GET",
        &format!("/admin/v1/keys/{full_id}/snippets"),
        &alice,
        None,
    )
    .await
    .json();
    assert!(!s.to_string().contains("\"browser\""), "{s}");

    // Rotate: a new secret; the old one works during the grace.
    let r = call(
        admin,
        "POST",
        &format!("{path}/rotate"),
        &alice,
        Some(json!({"grace": "1h"})),
    )
    .await;
    assert_eq!(r.status, 200);
    let rotated = r.json();
    let new_secret = rotated["key"].as_str().unwrap().to_string();
    assert!(rotated["rotating_until"].is_string());
    until_status(&gw, &new_secret, 200).await;
    assert_eq!(
        get(&gw.url("/"), &[("x-api-key", &secret)]).await.status,
        200
    );
    let r = call(
        admin,
        "POST",
        &format!("{path}/rotate"),
        &alice,
        Some(json!({"grace": "soon"})),
    )
    .await;
    assert_eq!(r.json()["field"], "grace");

    // Delete: 204, then refused everywhere.
    let r = call(admin, "DELETE", &path, &alice, None).await;
    assert_eq!(r.status, 204);
    until_status(&gw, &new_secret, 401).await;
    assert_eq!(
        get(&gw.url("/"), &[("x-api-key", &secret)]).await.status,
        401
    );
    assert_eq!(call(admin, "GET", &path, &alice, None).await.status, 404);
    assert_eq!(call(admin, "DELETE", &path, &alice, None).await.status, 404);

    // The audit trail: who did what, newest first, never a secret.
    let events = call(admin, "GET", "/admin/v1/audit?limit=50", &viewer, None)
        .await
        .json();
    let actions: Vec<String> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["actor"].as_str().unwrap(),
                e["action"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(actions[0], "alice key.delete", "{actions:?}");
    assert!(actions.contains(&"alice key.rotate".to_string()));
    assert!(actions.contains(&"alice key.create".to_string()));
    assert!(
        actions
            .iter()
            .any(|a| a.ends_with("token.create") && a.starts_with("cli:")),
        "{actions:?}"
    );
    assert_eq!(events["events"][0]["client"], "127.0.0.1");
    assert_eq!(
        call(admin, "GET", "/admin/v1/audit?limit=0", &viewer, None)
            .await
            .json()["field"],
        "limit"
    );
    let log = std::fs::read_to_string(gw.dir.path().join("audit.log")).unwrap();
    for s in [&secret, &new_secret, &alice, &viewer] {
        assert!(!log.contains(s.as_str()));
    }
    for h in &hashes {
        assert!(!log.contains(h.as_str()));
    }

    // The description and its page need no token.
    let spec = send(
        "GET",
        &format!("http://{admin}/admin/v1/openapi.json"),
        &[],
        "",
    )
    .await;
    assert_eq!(spec.json()["openapi"], "3.1.0");
    let docs = send("GET", &format!("http://{admin}/admin/docs"), &[], "").await;
    assert!(String::from_utf8_lossy(&docs.body).contains("/admin/v1/keys/{id}/rotate"));
    assert_eq!(docs.header("x-frame-options"), Some("DENY"));
    wait_for_metric(
        gw.ops,
        "keygate_admin_requests_total{route=\"keys\",status=\"201\"}",
        |v| v >= 2.0,
    )
    .await;
}

#[tokio::test]
async fn a_deleted_token_stops_working_at_once() {
    let upstream = TestUpstream::start().await;
    let (gw, admin) = start(&upstream.url());
    let t = gw.admin_token("temp", "admin");
    assert_eq!(
        call(admin, "GET", "/admin/v1/keys", &t, None).await.status,
        200
    );
    let out = Command::new(BIN)
        .args([
            "tokens",
            "delete",
            "temp",
            "--config",
            gw.config_path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_succeeded(&out);
    assert_eq!(
        call(admin, "GET", "/admin/v1/keys", &t, None).await.status,
        401
    );
    let list = Command::new(BIN)
        .args([
            "tokens",
            "list",
            "--json",
            "--config",
            gw.config_path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "[]");
}

#[tokio::test]
async fn console_sessions_need_csrf_and_the_same_origin() {
    let upstream = TestUpstream::start().await;
    let (gw, admin) = start(&upstream.url());
    let t = gw.admin_token("alice", "admin");
    let base = format!("http://{admin}");
    let origin = base.clone();
    // The page itself: strict policy, not frameable, no inline script.
    let page = send("GET", &format!("{base}/"), &[], "").await;
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let html = String::from_utf8_lossy(&page.body).into_owned();
    assert!(!html.contains("<script>") && html.contains("https://docs.example.com/api"));

    // Sign-in from another site is refused; from the page it sets a cookie.
    let body = json!({"token": t}).to_string();
    let r = send(
        "POST",
        &format!("{base}/admin/session"),
        &[("origin", "https://evil.example")],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, 403);
    let r = send(
        "POST",
        &format!("{base}/admin/session"),
        &[("origin", &origin)],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let cookie = r.header("set-cookie").unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && !cookie.contains("Secure"),
        "{cookie}"
    );
    // Only sent to the console's API: never to the gateway's backend paths.
    assert!(cookie.contains("Path=/admin;"), "{cookie}");
    let csrf = r.json()["csrf"].as_str().unwrap().to_string();
    let session = cookie.split(';').next().unwrap().to_string();

    let keys = send(
        "GET",
        &format!("{base}/admin/v1/keys"),
        &[("cookie", &session)],
        "",
    )
    .await;
    assert_eq!(keys.status, 200);
    let new = json!({"name": "from the console", "access": "read-only"}).to_string();
    let post = |headers: Vec<(&'static str, String)>| {
        let url = format!("{base}/admin/v1/keys");
        let body = new.clone();
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            send("POST", &url, &h, body).await
        }
    };
    // No CSRF token; a wrong one; the right one from another origin: refused.
    let r = post(vec![
        ("cookie", session.clone()),
        ("origin", origin.clone()),
    ])
    .await;
    assert_eq!(r.status, 403);
    let r = post(vec![
        ("cookie", session.clone()),
        ("origin", origin.clone()),
        ("x-csrf-token", "0".repeat(64)),
    ])
    .await;
    assert_eq!(r.status, 403);
    let r = post(vec![
        ("cookie", session.clone()),
        ("origin", "https://evil.example".into()),
        ("x-csrf-token", csrf.clone()),
    ])
    .await;
    assert_eq!(r.status, 403);
    let r = post(vec![
        ("cookie", session.clone()),
        ("origin", origin.clone()),
        ("x-csrf-token", csrf.clone()),
        ("content-type", "application/json".into()),
    ])
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);

    // Sign out ends the session (from the page only).
    let r = send(
        "DELETE",
        &format!("{base}/admin/session"),
        &[("cookie", &session), ("origin", "https://evil.example")],
        "",
    )
    .await;
    assert_eq!(r.status, 403);
    let r = send(
        "DELETE",
        &format!("{base}/admin/session"),
        &[("cookie", &session), ("origin", &origin)],
        "",
    )
    .await;
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    let r = send(
        "GET",
        &format!("{base}/admin/v1/keys"),
        &[("cookie", &session)],
        "",
    )
    .await;
    assert_eq!(r.status, 401);

    // Guessing tokens: counted, and slowed down after five tries.
    for i in 0..5 {
        let r = send(
            "POST",
            &format!("{base}/admin/session"),
            &[("origin", &origin)],
            json!({"token": format!("kga_wrong{i}")}).to_string(),
        )
        .await;
        assert_eq!(r.status, 401);
    }
    let r = send(
        "POST",
        &format!("{base}/admin/session"),
        &[("origin", &origin)],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, 429, "even the right token waits");
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        metric(gw.ops, "keygate_admin_signin_failures_total").await,
        5.0
    );
}

#[tokio::test]
async fn api_and_cli_writing_at_once_lose_nothing() {
    let upstream = TestUpstream::start().await;
    let (gw, admin) = start(&upstream.url());
    let t = gw.admin_token("alice", "admin");
    let before = serde_json::from_str::<Value>(&gw.keys(&["list", "--json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .len();
    let store = gw.store_path();
    let cli = std::thread::spawn(move || {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let store = store.clone();
                std::thread::spawn(move || {
                    Command::new(BIN)
                        .args([
                            "keys",
                            "--store",
                            store.to_str().unwrap(),
                            "create",
                            "--name",
                            &format!("cli {i}"),
                            "--access",
                            "read-only",
                        ])
                        .output()
                        .unwrap()
                        .status
                        .success()
                })
            })
            .collect();
        handles.into_iter().all(|h| h.join().unwrap())
    });
    let api: Vec<_> = (0..20)
        .map(|i| {
            let t = t.clone();
            tokio::spawn(async move {
                call(
                    admin,
                    "POST",
                    "/admin/v1/keys",
                    &t,
                    Some(json!({"name": format!("api {i}"), "access": "read-only"})),
                )
                .await
                .status
                .as_u16()
            })
        })
        .collect();
    for a in api {
        assert_eq!(a.await.unwrap(), 201);
    }
    assert!(cli.join().unwrap());
    let after = serde_json::from_str::<Value>(&gw.keys(&["list", "--json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .len();
    assert_eq!(after, before + 40);
}

#[test]
fn keygate_admin_runs_alone_and_fails_fast_on_a_bad_start() {
    let dir = tempfile::tempdir().unwrap();
    standard_keys(dir.path());
    let config = dir.path().join("admin.toml");
    std::fs::write(
        &config,
        "[upstream]\nurl = \"http://127.0.0.1:9\"\n[keys]\nstore = \"keys.toml\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["admin", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("keygate: ") && err.contains("[admin] listen"),
        "{err}"
    );

    // A port that cannot be bound: exit 1 within 2 s.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    std::fs::write(
        &config,
        format!("[upstream]\nurl = \"http://127.0.0.1:9\"\n[keys]\nstore = \"keys.toml\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let start = Instant::now();
    let out = Command::new(BIN)
        .args(["admin", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin.listen"));

    // On a free port it serves the console until SIGTERM.
    std::fs::write(
        &config,
        "[upstream]\nurl = \"http://127.0.0.1:9\"\n[keys]\nstore = \"keys.toml\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let (mut child, addr) = spawn_admin(&config);
    let page = std::net::TcpStream::connect(addr).and_then(|mut s| {
        use std::io::{Read, Write};
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    });
    assert!(page.unwrap().contains("API Keys &amp; Docs"));
    let _ = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status();
    assert!(child.0.wait().unwrap().success());
}

#[test]
fn on_postgresql_tokens_and_the_audit_trail_are_tables() {
    use support::pg::TestDb;
    let db = TestDb::migrated();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        format!(
            "[upstream]\nurl = \"http://127.0.0.1:9\"\n[keys]\nstore = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            db.url()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["tokens", "create", "--config", config.to_str().unwrap()])
        .args(["--name", "ops", "--role", "admin", "--json"])
        .output()
        .unwrap();
    assert_succeeded(&out);
    let token = serde_json::from_slice::<Value>(&out.stdout).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        db.query_text("SELECT name FROM keygate_admin_tokens"),
        "ops"
    );
    // No token file anywhere: the table is the only copy.
    assert!(!dir.path().join("admin.tokens").exists());

    let (mut child, admin) = spawn_admin(&config);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let r = call(
            admin,
            "POST",
            "/admin/v1/keys",
            &token,
            Some(json!({"name": "fleet key", "access": "read-only", "rate_limit": "10/s"})),
        )
        .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        let id = r.json()["id"].as_str().unwrap().to_string();
        assert_eq!(
            db.query_text(&format!(
                "SELECT rate_limit FROM keygate_keys WHERE id = '{id}'"
            )),
            "10/s"
        );
        let events = call(admin, "GET", "/admin/v1/audit", &token, None)
            .await
            .json();
        let actions: Vec<&str> = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        assert_eq!(actions, ["key.create", "token.create"], "{events}");

        // The rest of the table on this store, through the same code.
        let path = format!("/admin/v1/keys/{id}");
        let r = call(admin, "GET", "/admin/v1/keys", &token, None).await;
        assert_eq!(r.json()["keys"][0]["id"], id.as_str());
        assert!(!String::from_utf8_lossy(&r.body).contains("hash"));
        let r = call(admin, "GET", &path, &token, None).await;
        assert_eq!(r.json()["rate_limit"], "10/s");
        let r = call(
            admin,
            "PATCH",
            &path,
            &token,
            Some(json!({"access": "full-access"})),
        )
        .await;
        assert_eq!(r.code(), "upgrade_needs_force");
        let r = call(
            admin,
            "PATCH",
            &path,
            &token,
            Some(json!({"name": "fleet key (web)", "rate_limit": null})),
        )
        .await;
        assert_eq!(r.json()["name"], "fleet key (web)", "{:?}", r.body);
        assert_eq!(
            db.query_text(&format!(
                "SELECT coalesce(rate_limit, 'none') FROM keygate_keys WHERE id = '{id}'"
            )),
            "none"
        );
        let r = call(
            admin,
            "POST",
            &format!("{path}/rotate"),
            &token,
            Some(json!({"grace": "0s"})),
        )
        .await;
        assert!(r.json()["key"].as_str().unwrap().starts_with("kg_"));
        let r = call(admin, "GET", &format!("{path}/snippets"), &token, None).await;
        assert_eq!(r.json()["snippets"].as_array().unwrap().len(), 4);
        let r = call(
            admin,
            "POST",
            "/admin/v1/keys",
            &token,
            Some(json!({"name": 1})),
        )
        .await;
        assert_eq!(
            (r.status.as_u16(), r.json()["field"].as_str()),
            (422, Some("name"))
        );
        assert_eq!(call(admin, "DELETE", &path, &token, None).await.status, 204);
        assert_eq!(call(admin, "GET", &path, &token, None).await.status, 404);
        assert_eq!(
            db.query_text("SELECT count(*) FROM keygate_revoked"),
            "2",
            "the rotated-away hash and the deleted one"
        );
        let events = call(admin, "GET", "/admin/v1/audit?limit=3", &token, None)
            .await
            .json();
        let actions: Vec<&str> = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        assert_eq!(
            actions,
            ["key.delete", "key.rotate", "key.update"],
            "{events}"
        );
    });
    // The trail only grows.
    assert!(
        db.exec_err("UPDATE keygate_audit SET actor = 'someone else'")
            .contains("append-only")
    );
    assert!(
        db.exec_err("DELETE FROM keygate_audit")
            .contains("append-only")
    );
    assert!(
        db.exec_err("TRUNCATE keygate_audit")
            .contains("append-only")
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status();
    assert!(child.0.wait().unwrap().success());
}

#[tokio::test]
async fn over_tls_the_session_cookie_is_secure() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = TestUpstream::start().await;
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed();
    std::fs::write(certs.path().join("cert.pem"), &cert).unwrap();
    std::fs::write(certs.path().join("key.pem"), &key).unwrap();
    let gw = TestGateway::start_with(
        &upstream.url(),
        Setup {
            tables: format!(
                "[admin]\nlisten = \"127.0.0.1:0\"\n[admin.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                certs.path().join("cert.pem").display(),
                certs.path().join("key.pem").display()
            ),
            ..Setup::default()
        },
    );
    let admin = gw.admin_addr();
    let t = gw.admin_token("alice", "admin");
    // A client offering h2 first still gets HTTP/1.1, the admin's protocol.
    let mut tls = tls_connect(admin, &cert, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let body = json!({"token": t}).to_string();
    let req = format!(
        "POST /admin/session HTTP/1.1\r\nhost: localhost\r\norigin: https://localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    let cookie = answer
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .unwrap();
    assert!(
        cookie.contains("; secure") && cookie.contains("httponly"),
        "{cookie}"
    );
}

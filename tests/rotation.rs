//! Key rotation (`keygate keys rotate`) through the real binary, on the file
//! store and on PostgreSQL: both secrets work during the grace period, only
//! the new one after it (without any store write at that moment), the old one
//! is on the revocation list, a second rotation ends the first at once, and a
//! restart during the grace keeps it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::pg::{PgGateway, TestDb, create_key, keys_cli};
use support::*;

use std::time::{Duration, Instant};

const SOON: Duration = Duration::from_secs(10);

/// Polls until `key` gets `want` on `url`, failing after `SOON`.
async fn until_status(url: &str, key: &str, want: u16) {
    let started = Instant::now();
    loop {
        let got = get(url, &[("x-api-key", key)]).await.status;
        if got == want {
            return;
        }
        assert!(
            started.elapsed() < SOON,
            "{url} still answers {got}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rotate_file(gw: &TestGateway, id: &str, grace: &str) -> serde_json::Value {
    serde_json::from_str(&gw.keys(&["rotate", id, "--grace", grace, "--json"])).unwrap()
}

#[tokio::test]
async fn a_rotated_file_store_key_takes_both_secrets_until_the_grace_ends() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let old = gw.keys.full.clone();
    let rotated = rotate_file(&gw, "full", "2s");
    let new = rotated["key"].as_str().unwrap().to_string();
    assert_eq!(rotated["id"], "full");
    assert_eq!(rotated["access"], "full-access");
    assert!(rotated["rotating_until"].is_string(), "{rotated}");
    // The store holds hashes only, the revocation list the old one's from
    // the end of the grace.
    let store = std::fs::read_to_string(gw.store_path()).unwrap();
    assert!(!store.contains(&new) && !store.contains(&old));
    let old_hash = blake3::hash(old.as_bytes()).to_hex().to_string();
    assert!(store.contains(&format!("previous_hash = \"{old_hash}\"")));
    let revoked = std::fs::read_to_string(gw.dir.path().join("keys.revoked")).unwrap();
    assert!(revoked.contains(&old_hash), "{revoked}");

    until_status(&gw.url("/"), &new, 200).await;
    let r = get(&gw.url("/"), &[("x-api-key", &old)]).await;
    assert_eq!(r.status, 200, "the previous secret works during the grace");
    assert_eq!(upstream.last().headers["x-keygate-key-id"], "full");
    assert!(metric(gw.ops, "keygate_previous_secret_requests_total").await >= 1.0);

    // No write happens when the grace ends: the gateway refuses by itself.
    let written = std::fs::metadata(gw.store_path())
        .unwrap()
        .modified()
        .unwrap();
    until_status(&gw.url("/"), &old, 401).await;
    let r = get(&gw.url("/"), &[("x-api-key", &old)]).await;
    assert_eq!(r.code(), "invalid_key");
    assert_eq!(
        std::fs::metadata(gw.store_path())
            .unwrap()
            .modified()
            .unwrap(),
        written
    );
    assert_eq!(get(&gw.url("/"), &[("x-api-key", &new)]).await.status, 200);
}

#[tokio::test]
async fn a_second_rotation_ends_the_first_at_once_and_zero_grace_ends_it_now() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let first = gw.keys.read_only.clone();
    let second = rotate_file(&gw, "ro", "1h")["key"]
        .as_str()
        .unwrap()
        .to_string();
    until_status(&gw.url("/"), &second, 200).await;
    assert_eq!(
        get(&gw.url("/"), &[("x-api-key", &first)]).await.status,
        200
    );
    let third = rotate_file(&gw, "ro", "1h")["key"]
        .as_str()
        .unwrap()
        .to_string();
    until_status(&gw.url("/"), &third, 200).await;
    until_status(&gw.url("/"), &first, 401).await;
    assert_eq!(
        get(&gw.url("/"), &[("x-api-key", &second)]).await.status,
        200
    );
    let fourth = rotate_file(&gw, "ro", "0s");
    assert!(fourth["rotating_until"].is_null(), "{fourth}");
    let fourth = fourth["key"].as_str().unwrap().to_string();
    until_status(&gw.url("/"), &fourth, 200).await;
    until_status(&gw.url("/"), &third, 401).await;
    until_status(&gw.url("/"), &second, 401).await;
    // `show` says nothing is rotating any more.
    let shown: serde_json::Value =
        serde_json::from_str(&gw.keys(&["show", "ro", "--json"])).unwrap();
    assert!(shown["rotating_until"].is_null(), "{shown}");
}

#[tokio::test]
async fn the_grace_survives_a_restart_and_an_old_store_copy_cannot_bring_the_secret_back() {
    let upstream = TestUpstream::start().await;
    let mut gw = TestGateway::start(&upstream.url());
    let old = gw.keys.full.clone();
    let before_rotation = std::fs::read(gw.store_path()).unwrap();
    let new = rotate_file(&gw, "full", "3s")["key"]
        .as_str()
        .unwrap()
        .to_string();
    // Restart during the grace: both secrets still work.
    gw.signal("TERM");
    gw.wait_exit();
    let (child, addr, _ops, _out) = spawn_serve(&gw.config_path());
    let url = format!("http://{addr}/");
    until_status(&url, &new, 200).await;
    assert_eq!(get(&url, &[("x-api-key", &old)]).await.status, 200);
    // After the grace, the pre-rotation store (where the old secret is the
    // key's current one) is restored: the revocation list still refuses it.
    until_status(&url, &old, 401).await;
    std::fs::write(gw.store_path(), before_rotation).unwrap();
    until_status(&url, &new, 401).await;
    assert_eq!(get(&url, &[("x-api-key", &old)]).await.status, 401);
    drop(child);
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_on_postgresql_follows_the_same_rules() {
    let db = TestDb::migrated();
    let upstream = TestUpstream::start().await;
    let (id, old) = create_key(&db, "full-access");
    let gw = PgGateway::start(&db.url(), &upstream.url(), "1s");
    until_status(&gw.url("/"), &old, 200).await;

    let rotated: serde_json::Value =
        serde_json::from_str(&keys_cli(&db, &["rotate", &id, "--grace", "2s", "--json"])).unwrap();
    let new = rotated["key"].as_str().unwrap().to_string();
    assert!(rotated["rotating_until"].is_string(), "{rotated}");
    until_status(&gw.url("/"), &new, 200).await;
    assert_eq!(get(&gw.url("/"), &[("x-api-key", &old)]).await.status, 200);
    // The database holds the old hash as the previous one, and revoked from
    // the end of the grace.
    let old_hash = blake3::hash(old.as_bytes()).to_hex().to_string();
    assert_eq!(
        db.query_text(&format!(
            "SELECT count(*) FROM keygate_revoked WHERE hash = decode('{old_hash}', 'hex') AND revoked_at > now()"
        )),
        "1"
    );
    // The grace ends on the gateway by itself.
    until_status(&gw.url("/"), &old, 401).await;
    assert_eq!(get(&gw.url("/"), &[("x-api-key", &new)]).await.status, 200);

    // A second rotation ends the first at once; deleting the key during a
    // grace ends both secrets.
    let third: serde_json::Value =
        serde_json::from_str(&keys_cli(&db, &["rotate", &id, "--grace", "1h", "--json"])).unwrap();
    let third = third["key"].as_str().unwrap().to_string();
    until_status(&gw.url("/"), &third, 200).await;
    assert_eq!(get(&gw.url("/"), &[("x-api-key", &new)]).await.status, 200);
    let fourth: serde_json::Value =
        serde_json::from_str(&keys_cli(&db, &["rotate", &id, "--grace", "1h", "--json"])).unwrap();
    let fourth = fourth["key"].as_str().unwrap().to_string();
    until_status(&gw.url("/"), &fourth, 200).await;
    until_status(&gw.url("/"), &new, 401).await;
    assert_eq!(
        get(&gw.url("/"), &[("x-api-key", &third)]).await.status,
        200
    );
    keys_cli(&db, &["delete", &id, "--yes"]);
    until_status(&gw.url("/"), &fourth, 401).await;
    until_status(&gw.url("/"), &third, 401).await;
    // The database's own rules: a hash changes only with the old one
    // revoked, and a revocation only ever comes sooner.
    let (other, _) = create_key(&db, "read-only");
    let refused = db.exec_err(&format!(
        "UPDATE keygate_keys SET hash = decode('{}', 'hex') WHERE id = '{other}'",
        "11".repeat(32)
    ));
    assert!(refused.contains("changes only by rotation"), "{refused}");
    let refused = db.exec_err(&format!(
        "UPDATE keygate_revoked SET revoked_at = revoked_at + interval '1 day' WHERE hash = decode('{old_hash}', 'hex')"
    ));
    assert!(refused.contains("revocations are permanent"), "{refused}");
}

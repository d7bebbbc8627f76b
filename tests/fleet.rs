//! The PostgreSQL fleet store, against the real PostgreSQL server: schema
//! migrations, the CLI, propagation to several gateways, lost notifications,
//! and the database going away while requests flow.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::pg::*;
use support::*;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const SOON: Duration = Duration::from_secs(10);
/// Reconnection after an outage: the backoff may be at its 10 s cap.
const RECONNECT: Duration = Duration::from_secs(30);

async fn until_ready(gw: &PgGateway) {
    eventually(&format!("{} ready", gw.addr), SOON, async || {
        get(&format!("http://{}/readyz", gw.ops), &[]).await.status == 200
    })
    .await;
}

async fn status(gw: &PgGateway, method: &str, key: &str) -> u16 {
    send(method, &gw.url("/"), &[("x-api-key", key)], "")
        .await
        .status
        .as_u16()
}

async fn until_status(gw: &PgGateway, method: &str, key: &str, want: u16) {
    eventually(
        &format!("{method} on {} gets {want}", gw.addr),
        SOON,
        async || status(gw, method, key).await == want,
    )
    .await;
}

#[test]
fn migrations_are_idempotent_and_check_reports_the_schema() {
    let db = TestDb::create();
    let config = db.config_file();
    let config = config.to_str().unwrap();

    let check = keygate(&["check", "--config", config]);
    assert_eq!(check.status.code(), Some(1));
    assert!(
        check
            .stderr
            .contains("no keygate schema in this database: run `keygate migrate`"),
        "{}",
        check.stderr
    );
    // The CLI refuses to write into an unmigrated database, and says why.
    let create = keygate(&[
        "keys",
        "--config",
        config,
        "create",
        "--name",
        "x",
        "--access",
        "read-only",
    ]);
    assert_eq!(create.status.code(), Some(1));
    assert!(
        create.stderr.contains("run `keygate migrate`"),
        "{}",
        create.stderr
    );

    // Two migrations at once: the advisory lock applies each step once.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| keygate(&["migrate", "--config", config]));
        let b = s.spawn(|| keygate(&["migrate", "--config", config]));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(
        a.status.success() && b.status.success(),
        "{} {}",
        a.stderr,
        b.stderr
    );
    let outs = format!("{}{}", a.stdout, b.stdout);
    assert!(
        outs.contains("schema migrated from version 0 to 6"),
        "{outs}"
    );
    assert!(
        outs.contains("schema already at version 6 (current): nothing to do"),
        "{outs}"
    );
    assert_eq!(db.query_text("SELECT count(*) FROM keygate_schema"), "6");

    let again = keygate(&["migrate", "--config", config]);
    assert!(again.stdout.contains("nothing to do"), "{}", again.stdout);
    let check = keygate(&["check", "--config", config]);
    assert!(check.status.success(), "{}", check.stderr);
    assert!(
        check
            .stdout
            .contains("schema version 6 (current); 0 key(s)"),
        "{}",
        check.stdout
    );

    // A schema from a newer keygate is refused, not misread.
    db.exec("INSERT INTO keygate_schema (version, description) VALUES (99, 'future')");
    let check = keygate(&["check", "--config", config]);
    assert_eq!(check.status.code(), Some(1));
    assert!(
        check.stderr.contains("newer than this keygate knows"),
        "{}",
        check.stderr
    );
}

#[test]
fn every_keys_command_works_against_postgres_and_stores_hashes_only() {
    let db = TestDb::migrated();
    let (ro_id, ro_secret) = create_key(&db, "read-only");
    let (full_id, full_secret) = create_key(&db, "full-access");

    let list = keys_cli(&db, &["list"]);
    assert!(list.contains(&ro_id) && list.contains(&full_id), "{list}");
    let show = keys_cli(&db, &["show", &full_id, "--json"]);
    assert!(show.contains("\"access\":\"full-access\""), "{show}");

    keys_cli(
        &db,
        &[
            "update",
            &full_id,
            "--name",
            "renamed",
            "--access",
            "read-only",
        ],
    );
    let show = keys_cli(&db, &["show", &full_id, "--json"]);
    assert!(
        show.contains("\"name\":\"renamed\"") && show.contains("\"access\":\"read-only\""),
        "{show}"
    );
    // Upgrading back needs --force, as with the file store.
    let config = db.config_file();
    let up = keygate(&[
        "keys",
        "--config",
        config.to_str().unwrap(),
        "update",
        &full_id,
        "--access",
        "full-access",
    ]);
    assert_eq!(up.status.code(), Some(1));
    assert!(up.stderr.contains("--force"), "{}", up.stderr);

    let snippet = keys_cli(&db, &["snippet", &ro_id]);
    assert!(snippet.contains("x-api-key"), "{snippet}");

    keys_cli(&db, &["delete", &ro_id, "--yes"]);
    assert_eq!(db.query_text("SELECT count(*) FROM keygate_revoked"), "1");
    let show = keygate(&["keys", "--config", config.to_str().unwrap(), "show", &ro_id]);
    assert_eq!(show.status.code(), Some(1));

    // Import: one transaction; a deleted secret is refused with its line,
    // and then nothing at all is written.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("import.tsv");
    std::fs::write(
        &file,
        format!("legacy-secret-number-one\tread-only\tone\n{ro_secret}\tread-only\tback\n"),
    )
    .unwrap();
    let imp = keygate(&[
        "keys",
        "--config",
        config.to_str().unwrap(),
        "import",
        file.to_str().unwrap(),
    ]);
    assert_eq!(imp.status.code(), Some(1));
    assert!(imp.stderr.contains("line 2"), "{}", imp.stderr);
    assert_eq!(db.query_text("SELECT count(*) FROM keygate_keys"), "1");
    std::fs::write(
        &file,
        "legacy-secret-number-one\tread-only\tone\nlegacy-secret-number-two\tfull-access\ttwo\n",
    )
    .unwrap();
    let out = keys_cli(&db, &["import", file.to_str().unwrap()]);
    assert!(out.contains("Imported 2 key(s)"), "{out}");

    // No secret anywhere in the database, in any column of any table.
    let dump = db.query_text(
        "SELECT string_agg(t::text, ' ') FROM (SELECT k::text AS t FROM keygate_keys k \
         UNION ALL SELECT r::text FROM keygate_revoked r) x",
    );
    for secret in [
        &ro_secret,
        &full_secret,
        &"legacy-secret-number-one".to_string(),
    ] {
        assert!(
            !dump.contains(secret.as_str()),
            "a secret is stored in the database"
        );
    }
    let check = keygate(&["check", "--config", config.to_str().unwrap()]);
    assert!(
        check
            .stdout
            .contains("3 key(s): 2 read-only, 1 full-access; 1 revoked"),
        "{}",
        check.stdout
    );
}

#[test]
fn the_database_enforces_the_rules_for_hand_written_sql_too() {
    let db = TestDb::migrated();
    let (id, _) = create_key(&db, "read-only");
    // A hash changes only by rotation (its old one revoked); revocations
    // are permanent; no TRUNCATE.
    let e = db.exec_err(&format!(
        "UPDATE keygate_keys SET hash = decode(repeat('00', 32), 'hex') WHERE id = '{id}'"
    ));
    assert!(e.contains("changes only by rotation"), "{e}");
    db.exec(&format!("DELETE FROM keygate_keys WHERE id = '{id}'"));
    assert_eq!(
        db.query_text("SELECT count(*) FROM keygate_revoked"),
        "1",
        "a hand delete must revoke"
    );
    let e = db.exec_err("DELETE FROM keygate_revoked");
    assert!(e.contains("permanent"), "{e}");
    let e = db.exec_err("UPDATE keygate_revoked SET hash = decode(repeat('00', 32), 'hex')");
    assert!(e.contains("permanent"), "{e}");
    let e = db.exec_err("TRUNCATE keygate_keys");
    assert!(e.contains("cannot be truncated"), "{e}");
    let e = db.exec_err("DELETE FROM keygate_state");
    assert!(e.contains("cannot be deleted"), "{e}");
    // A revoked hash cannot come back under a new id.
    let e = db.exec_err(&format!(
        "INSERT INTO keygate_keys (id, name, access, hash, created) \
         SELECT 'key_again', 'again', 'full-access', hash, now() FROM keygate_revoked WHERE id = '{id}'"
    ));
    assert!(e.contains("deleted (revoked) key"), "{e}");
    // Rows the CLI would never write are refused by CHECK constraints.
    for (column, values) in [
        ("name", "'key_a', E'bad\\nname', 'read-only'"),
        ("id", "'KEY A', 'name', 'read-only'"),
        ("access", "'key_a', 'name', 'admin'"),
    ] {
        let e = db.exec_err(&format!(
            "INSERT INTO keygate_keys (id, name, access, hash, created) \
             VALUES ({values}, decode(repeat('ab', 32), 'hex'), now())"
        ));
        assert!(e.contains("check constraint"), "{column}: {e}");
    }
    let e = db.exec_err(
        "INSERT INTO keygate_keys (id, name, access, hash, created, expires) \
         VALUES ('key_a', 'n', 'read-only', decode(repeat('ab', 32), 'hex'), now(), 'infinity')",
    );
    assert!(e.contains("check constraint"), "{e}");
    // Should one get in anyway (constraints dropped by hand), `check`
    // names the key and the column.
    db.exec("ALTER TABLE keygate_keys DROP CONSTRAINT keygate_keys_name_check");
    db.exec(
        "INSERT INTO keygate_keys (id, name, access, hash, created) \
         VALUES ('key_handmade', E'bad\\nname', 'read-only', decode(repeat('ab', 32), 'hex'), now())",
    );
    let config = db.config_file();
    let check = keygate(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(1));
    assert!(
        check.stderr.contains(
            "keygate_keys row id=\"key_handmade\": name: name must not contain control characters"
        ),
        "{}",
        check.stderr
    );
}

#[test]
fn concurrent_cli_writers_lose_no_update() {
    let db = TestDb::migrated();
    let (target, _) = create_key(&db, "full-access");
    std::thread::scope(|s| {
        for _ in 0..6 {
            s.spawn(|| {
                for _ in 0..4 {
                    create_key(&db, "read-only");
                }
            });
        }
        // Meanwhile, one key renamed by one operator and its access
        // switched by another: each write reads the other's result, so both
        // last changes land (without the writers' lock, one would undo the
        // other's field).
        s.spawn(|| {
            for i in 0..12 {
                keys_cli(&db, &["update", &target, "--name", &format!("name {i}")]);
            }
        });
        s.spawn(|| {
            for i in 0..12 {
                let access = if i % 2 == 0 {
                    "read-only"
                } else {
                    "full-access"
                };
                keys_cli(&db, &["update", &target, "--access", access, "--force"]);
            }
        });
    });
    assert_eq!(
        db.query_text(&format!(
            "SELECT access FROM keygate_keys WHERE id = '{target}'"
        )),
        "full-access"
    );
    assert_eq!(db.query_text("SELECT count(*) FROM keygate_keys"), "25");
    assert_eq!(
        db.query_text(&format!(
            "SELECT name FROM keygate_keys WHERE id = '{target}'"
        )),
        "name 11"
    );
    let listed: serde_json::Value =
        serde_json::from_str(&keys_cli(&db, &["list", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 25);
}

#[tokio::test(flavor = "multi_thread")]
async fn three_gateways_follow_create_downgrade_and_delete() {
    let db = TestDb::migrated();
    let upstream = TestUpstream::start().await;
    let gws: Vec<PgGateway> = (0..3)
        .map(|_| PgGateway::start(&db.url(), &upstream.url(), "5s"))
        .collect();
    for gw in &gws {
        until_ready(gw).await;
        assert_eq!(metric(gw.ops, "keygate_store_connected").await, 1.0);
    }

    let (id, secret) = create_key(&db, "full-access");
    for gw in &gws {
        until_status(gw, "POST", &secret, 200).await;
    }
    keys_cli(&db, &["update", &id, "--access", "read-only"]);
    for gw in &gws {
        until_status(gw, "POST", &secret, 403).await;
        assert_eq!(status(gw, "GET", &secret).await, 200);
    }
    keys_cli(&db, &["delete", &id, "--yes"]);
    for gw in &gws {
        until_status(gw, "GET", &secret, 401).await;
        let r = get(&gw.url("/"), &[("x-api-key", &secret)]).await;
        assert_eq!(r.code(), "invalid_key");
        // Create, downgrade, delete: three changes applied, none by rebuild.
        wait_for_metric(gw.ops, "keygate_store_changes_applied_total", |v| v >= 3.0).await;
        assert_eq!(
            metric(gw.ops, "keygate_keys{access=\"full-access\"}").await,
            0.0
        );
        gw.wait_for_output("key store changes applied");
        assert!(!gw.output().contains(&secret), "a secret reached the log");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_notification_is_caught_by_the_resync_timer() {
    let db = TestDb::migrated();
    let upstream = TestUpstream::start().await;
    let (id, secret) = create_key(&db, "full-access");
    let gw = PgGateway::start(&db.url(), &upstream.url(), "1s");
    until_status(&gw, "POST", &secret, 200).await;

    // A change committed without its notification.
    silent_downgrade(&db, &id);
    until_status(&gw, "POST", &secret, 403).await;

    // The listening connection killed (pg_terminate_backend): the gateway
    // notices, reconnects, and converges on what changed meanwhile.
    let (_, second) = create_key(&db, "read-only");
    until_status(&gw, "GET", &second, 200).await;
    assert!(db.terminate_gateways() >= 1);
    keys_cli(&db, &["delete", &id, "--yes"]);
    eventually("the deletion is applied", RECONNECT, async || {
        status(&gw, "GET", &secret).await == 401
    })
    .await;
    eventually("the gateway reconnects", RECONNECT, async || {
        db.gateway_connections() == 1
    })
    .await;
}

/// A change committed without its notification (as if lost with the
/// listening connection): the transaction takes its version itself, so the
/// trigger stamps the rows with it but sends nothing.
fn silent_downgrade(db: &TestDb, id: &str) {
    db.exec(&format!(
        "DO $$ BEGIN \
           UPDATE keygate_state SET version = version + 1, xid = pg_current_xact_id(); \
           UPDATE keygate_keys SET access = 'read-only' WHERE id = '{id}'; \
         END $$;"
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_syncs_at_once() {
    let db = TestDb::migrated();
    let upstream = TestUpstream::start().await;
    let (id, secret) = create_key(&db, "full-access");
    let gw = PgGateway::start(&db.url(), &upstream.url(), "1h");
    until_status(&gw, "POST", &secret, 200).await;
    silent_downgrade(&db, &id);
    // Nothing tells the gateway (no notification, resync in an hour)...
    for _ in 0..20 {
        assert_eq!(status(&gw, "POST", &secret).await, 200);
    }
    // ...until SIGHUP.
    gw.signal("HUP");
    until_status(&gw, "POST", &secret, 403).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_database_going_away_fails_no_request() {
    let db = TestDb::migrated();
    let upstream = TestUpstream::start().await;
    let gate = TcpGate::start(server_addr(), true).await;
    let (_, secret) = create_key(&db, "read-only");
    let gw = Arc::new(PgGateway::start(
        &db.url_via(gate.addr),
        &upstream.url(),
        "1s",
    ));
    until_status(&gw, "GET", &secret, 200).await;

    // Requests flow the whole time, on several connections.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut flows = Vec::new();
    for _ in 0..4 {
        let (gw, secret, stop, ok, failed) = (
            gw.clone(),
            secret.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
        );
        flows.push(tokio::spawn(async move {
            // One kept-alive client per flow, a request every 2 ms: steady
            // traffic that leaves the machine's two cores to the gateway.
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Full<bytes::Bytes>>();
            while !stop.load(Ordering::Relaxed) {
                let req = http::Request::get(gw.url("/"))
                    .header("x-api-key", &secret)
                    .body(http_body_util::Full::default())
                    .unwrap();
                match client.request(req).await {
                    Ok(r) if r.status() == 200 => {
                        let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }

    gate.down();
    wait_for_metric(gw.ops, "keygate_store_connected", |v| v == 0.0).await;
    // While it is away, an operator keeps working on the database directly.
    let (_, created_meanwhile) = create_key(&db, "read-only");
    let served_during_outage = ok.load(Ordering::Relaxed);
    // The sync lag grows while the gateway retries, and requests keep flowing.
    eventually("the sync lag grows past 1 s", SOON, async || {
        metric(gw.ops, "keygate_store_sync_lag_seconds").await >= 1.0
    })
    .await;
    eventually("reconnection is retried", SOON, async || {
        gw.output().contains("attempt=2")
    })
    .await;
    assert!(
        ok.load(Ordering::Relaxed) > served_during_outage,
        "requests stalled while the database was away"
    );
    assert_eq!(
        get(&format!("http://{}/readyz", gw.ops), &[]).await.status,
        200
    );

    gate.up();
    // Reconnection waits out the backoff in force (up to 10 s).
    eventually("reconnected", RECONNECT, async || {
        metric(gw.ops, "keygate_store_connected").await == 1.0
    })
    .await;
    until_status(&gw, "GET", &created_meanwhile, 200).await;

    // And once more by terminating its connection from the server side.
    assert!(db.terminate_gateways() >= 1);
    let (_, after_kill) = create_key(&db, "read-only");
    eventually("served after reconnection", RECONNECT, async || {
        status(&gw, "GET", &after_kill).await == 200
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    for f in flows {
        f.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed while the database was away"
    );
    assert!(ok.load(Ordering::Relaxed) > 100);
    assert!(
        gw.output()
            .contains("key store unreachable; serving the last good index"),
        "{}",
        gw.output()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_unreachable_at_start_means_not_ready_until_the_first_load() {
    let db = TestDb::migrated();
    let upstream = TestUpstream::start().await;
    let gate = TcpGate::start(server_addr(), false).await;
    let (_, secret) = create_key(&db, "read-only");
    let gw = PgGateway::start(&db.url_via(gate.addr), &upstream.url(), "5s");

    let ready = get(&format!("http://{}/readyz", gw.ops), &[]).await;
    assert_eq!(ready.status, 503);
    let r = get(&gw.url("/"), &[("x-api-key", &secret)]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.code(), "not_ready");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(metric(gw.ops, "keygate_store_connected").await, 0.0);
    assert!(
        upstream.seen().is_empty(),
        "a request reached the upstream before any key was loaded"
    );

    gate.up();
    eventually("ready after the database comes up", SOON, async || {
        get(&format!("http://{}/readyz", gw.ops), &[]).await.status == 200
    })
    .await;
    assert_eq!(status(&gw, "GET", &secret).await, 200);
    assert_eq!(
        metric(
            gw.ops,
            "keygate_decisions_total{access=\"none\",decision=\"not_ready\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_counter_that_went_backwards_means_a_full_load_and_revocations_stick() {
    let db = TestDb::migrated();
    let upstream = TestUpstream::start().await;
    let (deleted_id, deleted) = create_key(&db, "full-access");
    let (_, kept) = create_key(&db, "read-only");
    let gw = PgGateway::start(&db.url(), &upstream.url(), "1s");
    until_status(&gw, "GET", &kept, 200).await;
    keys_cli(&db, &["delete", &deleted_id, "--yes"]);
    until_status(&gw, "GET", &deleted, 401).await;
    // As after restoring an older backup: the counter is back at 0, the
    // revocation is gone, and the deleted key's row is back.
    db.exec(&format!(
        "ALTER TABLE keygate_revoked DISABLE TRIGGER USER; \
         ALTER TABLE keygate_keys DISABLE TRIGGER USER; \
         DELETE FROM keygate_revoked; \
         INSERT INTO keygate_keys (id, name, access, hash, created) \
           VALUES ('{deleted_id}', 'restored', 'full-access', \
                   decode('{}', 'hex'), now()); \
         ALTER TABLE keygate_keys ENABLE TRIGGER USER; \
         ALTER TABLE keygate_revoked ENABLE TRIGGER USER; \
         UPDATE keygate_state SET version = 0, xid = NULL;",
        blake3::hash(deleted.as_bytes()).to_hex()
    ));
    let (_, after_restore) = create_key(&db, "read-only");
    // The gateway sees version 1 < its own: it loads everything...
    until_status(&gw, "GET", &after_restore, 200).await;
    gw.wait_for_output("went backwards");
    // ...and the key it saw deleted stays refused.
    assert_eq!(status(&gw, "GET", &deleted).await, 401);
    assert_eq!(status(&gw, "GET", &kept).await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_row_does_not_stop_the_fleet() {
    let db = TestDb::migrated();
    let upstream = TestUpstream::start().await;
    let (bad_id, bad) = create_key(&db, "read-only");
    let gw = PgGateway::start(&db.url(), &upstream.url(), "1s");
    until_status(&gw, "GET", &bad, 200).await;
    // Someone drops a constraint and stores a row keygate would not write.
    db.exec("ALTER TABLE keygate_keys DROP CONSTRAINT keygate_keys_name_check");
    db.exec(&format!(
        "UPDATE keygate_keys SET name = E'bad\\nname' WHERE id = '{bad_id}'"
    ));
    // The running gateway refuses that key (fail closed) and goes on
    // applying other changes.
    until_status(&gw, "GET", &bad, 401).await;
    let (_, good) = create_key(&db, "read-only");
    until_status(&gw, "GET", &good, 200).await;
    assert!(
        gw.output()
            .contains("invalid key row left out of the index"),
        "{}",
        gw.output()
    );
    // A gateway starting now becomes ready and serves the good keys.
    let fresh = PgGateway::start(&db.url(), &upstream.url(), "1s");
    until_ready(&fresh).await;
    assert_eq!(status(&fresh, "GET", &good).await, 200);
    assert_eq!(status(&fresh, "GET", &bad).await, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_null_inside_origins_refuses_that_key_only() {
    let db = TestDb::migrated();
    let upstream = TestUpstream::start().await;
    let (bad_id, bad) = create_key(&db, "read-only");
    // The schema refuses the row...
    let refused = db.exec_err(&format!(
        "UPDATE keygate_keys SET origins = ARRAY[NULL]::text[] WHERE id = '{bad_id}'"
    ));
    assert!(
        refused.contains("keygate_keys_origins_no_null"),
        "{refused}"
    );
    let gw = PgGateway::start(&db.url(), &upstream.url(), "1s");
    until_status(&gw, "GET", &bad, 200).await;
    // ...but a row written before schema version 2 may hold one.
    db.exec("ALTER TABLE keygate_keys DROP CONSTRAINT keygate_keys_origins_no_null");
    db.exec(&format!(
        "UPDATE keygate_keys SET origins = ARRAY['https://shop.example', NULL] WHERE id = '{bad_id}'"
    ));
    // That key is refused (fail closed), and later changes still arrive.
    until_status(&gw, "GET", &bad, 401).await;
    let (_, good) = create_key(&db, "read-only");
    until_status(&gw, "GET", &good, 200).await;
    gw.wait_for_output("origins: a NULL element");
    // The CLI reports the row instead of failing on it.
    let list = keygate(&["keys", "list", "--store", &db.url()]);
    assert!(
        list.stderr.contains("origins: a NULL element"),
        "{}",
        list.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_database_password_never_reaches_the_log() {
    let upstream = TestUpstream::start().await;
    // Nothing listens on port 1: every attempt fails and is logged.
    let gw = PgGateway::start(
        "postgres://keygate:s3cret-pw@127.0.0.1:1/keygate?sslmode=disable&connect_timeout=1",
        &upstream.url(),
        "1s",
    );
    eventually("a failed attempt is logged", SOON, async || {
        gw.output().contains("key store unreachable")
    })
    .await;
    assert!(
        gw.output()
            .contains("postgres://keygate@127.0.0.1:1/keygate"),
        "{}",
        gw.output()
    );
    assert!(!gw.output().contains("s3cret"), "{}", gw.output());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_snapshot_starts_a_gateway_without_the_database_and_keeps_revocations() {
    let db = TestDb::migrated();
    let upstream = TestUpstream::start().await;
    let gate = TcpGate::start(server_addr(), true).await;
    let (_, kept) = create_key(&db, "read-only");
    let (deleted_id, deleted) = create_key(&db, "full-access");
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("snapshot.toml");
    let keys = format!("snapshot = \"{}\"", snapshot.display());
    {
        // An hour-long resync: a revocation must reach the snapshot at once,
        // not with the next timed write.
        let first = PgGateway::start_with(&db.url_via(gate.addr), &upstream.url(), "1h", &keys);
        until_status(&first, "GET", &deleted, 200).await;
        keys_cli(&db, &["delete", &deleted_id, "--yes"]);
        until_status(&first, "GET", &deleted, 401).await;
        let revoked_hex = blake3::hash(deleted.as_bytes()).to_hex().to_string();
        eventually("the snapshot records the revocation", SOON, async || {
            std::fs::read_to_string(dir.path().join("snapshot.revoked"))
                .is_ok_and(|t| t.contains(&revoked_hex))
        })
        .await;
    }
    // The database is away; a new gateway starts from the snapshot.
    gate.down();
    let second = PgGateway::start_with(&db.url_via(gate.addr), &upstream.url(), "1s", &keys);
    until_ready(&second).await;
    assert_eq!(metric(second.ops, "keygate_store_connected").await, 0.0);
    assert_eq!(status(&second, "GET", &kept).await, 200);
    assert_eq!(status(&second, "GET", &deleted).await, 401);
    second.wait_for_output("serving from the local snapshot");
    // The database comes back restored from before the deletion: the
    // snapshot's revocation still wins.
    db.exec(&format!(
        "ALTER TABLE keygate_revoked DISABLE TRIGGER USER; \
         ALTER TABLE keygate_keys DISABLE TRIGGER USER; \
         DELETE FROM keygate_revoked; \
         INSERT INTO keygate_keys (id, name, access, hash, created) \
           VALUES ('{deleted_id}', 'restored', 'full-access', decode('{}', 'hex'), now()); \
         ALTER TABLE keygate_keys ENABLE TRIGGER USER; \
         ALTER TABLE keygate_revoked ENABLE TRIGGER USER;",
        blake3::hash(deleted.as_bytes()).to_hex()
    ));
    let (_, new_key) = create_key(&db, "read-only");
    gate.up();
    eventually("reconnected and loaded", RECONNECT, async || {
        status(&second, "GET", &new_key).await == 200
    })
    .await;
    assert_eq!(status(&second, "GET", &deleted).await, 401);
}

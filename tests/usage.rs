//! Key usage (last allowed request, request counts) through the real binary:
//! recorded by the gateway off the request path, persisted beside a file
//! store or in PostgreSQL, shown by `keys list` / `show`; denied requests do
//! not count; it survives a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::pg::{PgGateway, TestDb, create_key, keys_cli};
use support::*;

use std::process::Command;
use std::time::{Duration, Instant};

fn show(gw: &TestGateway, id: &str) -> serde_json::Value {
    serde_json::from_str(&gw.keys(&["show", id, "--json"])).unwrap()
}

#[tokio::test]
async fn usage_is_recorded_beside_a_file_store_and_survives_a_restart() {
    let upstream = TestUpstream::start().await;
    let mut gw = TestGateway::start(&upstream.url());
    assert!(show(&gw, "ro")["last_used"].is_null());
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for _ in 0..3 {
        assert_eq!(
            get(&gw.url("/"), &[("x-api-key", &gw.keys.read_only)])
                .await
                .status,
            200
        );
    }
    // Denied requests are not use: a read-only key trying to write, a
    // full-access key from a browser.
    let denied = send("POST", &gw.url("/"), &[("x-api-key", &gw.keys.pinned)], "x").await;
    assert_eq!(denied.status, 403);
    let denied = get(
        &gw.url("/"),
        &[("x-api-key", &gw.keys.full), ("origin", SHOP)],
    )
    .await;
    assert_eq!(denied.status, 403);
    // A clean stop writes what was counted since the last periodic write.
    gw.signal("TERM");
    gw.wait_exit();
    let usage = std::fs::read_to_string(gw.dir.path().join("keys.usage")).unwrap();
    assert!(
        usage
            .lines()
            .any(|l| l.starts_with("ro ") && l.ends_with(" 3")),
        "{usage}"
    );
    assert!(!usage.lines().any(|l| l.starts_with("full ")), "{usage}");
    assert!(!usage.lines().any(|l| l.starts_with("pinned ")), "{usage}");
    let shown = show(&gw, "ro");
    let last = humantime::parse_rfc3339(shown["last_used"].as_str().unwrap()).unwrap();
    let last = last
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(last >= before, "{shown}");
    assert!(show(&gw, "pinned")["last_used"].is_null());
    assert!(show(&gw, "full")["last_used"].is_null());
    // A new run counts on from the persisted figures.
    let (mut child, addr, _ops, _out) = spawn_serve(&gw.config_path());
    let r = get(
        &format!("http://{addr}/"),
        &[("x-api-key", &gw.keys.read_only)],
    )
    .await;
    assert_eq!(r.status, 200);
    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(child.0.wait().unwrap().success());
    let usage = std::fs::read_to_string(gw.dir.path().join("keys.usage")).unwrap();
    assert!(
        usage
            .lines()
            .any(|l| l.starts_with("ro ") && l.ends_with(" 4")),
        "{usage}"
    );
    let list = gw.keys(&["list"]);
    assert!(list.contains("LAST USED"), "{list}");
}

#[tokio::test]
async fn usage_that_cannot_be_written_is_logged_and_serving_goes_on() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    // A folder where keys.usage should be: every write of it fails. (The
    // gateway may have written the file at start; it writes again only
    // when a count changes.)
    // Its first write may land between the two steps: then again.
    let usage = gw.dir.path().join("keys.usage");
    let started = Instant::now();
    loop {
        let _ = std::fs::remove_file(&usage);
        match std::fs::create_dir(&usage) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                assert!(started.elapsed() < Duration::from_secs(10), "{e}");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("{e}"),
        }
    }
    let r = get(&gw.url("/"), &[("x-api-key", &gw.keys.read_only)]).await;
    assert_eq!(r.status, 200);
    // The next write comes within one flush interval (10 s).
    let started = Instant::now();
    while !gw.output().contains("cannot write key usage") {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{}",
            gw.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_serving(&gw).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_from_a_fleet_is_merged_in_postgresql() {
    let db = TestDb::migrated();
    let upstream = TestUpstream::start().await;
    let (id, secret) = create_key(&db, "read-only");
    let (other, _) = create_key(&db, "read-only");
    let a = PgGateway::start(&db.url(), &upstream.url(), "1s");
    let b = PgGateway::start(&db.url(), &upstream.url(), "1s");
    for gw in [&a, &b] {
        let started = Instant::now();
        loop {
            if get(&gw.url("/"), &[("x-api-key", &secret)]).await.status == 200 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "key never served"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for _ in 0..2 {
            assert_eq!(
                get(&gw.url("/"), &[("x-api-key", &secret)]).await.status,
                200
            );
        }
    }
    // Each gateway adds its count within one flush interval (10 s).
    let started = Instant::now();
    loop {
        let n = db.query_text(&format!(
            "SELECT coalesce((SELECT requests FROM keygate_usage WHERE id = '{id}'), 0)"
        ));
        if n.parse::<u64>().unwrap() >= 6 {
            assert_eq!(n, "6", "counts add up across gateways, once each");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "usage never reached the database: {n}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let listed: serde_json::Value =
        serde_json::from_str(&keys_cli(&db, &["list", "--json"])).unwrap();
    let find = |want: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == want)
            .cloned()
            .unwrap()
    };
    assert!(find(&id)["last_used"].is_string(), "{listed}");
    assert!(find(&other)["last_used"].is_null(), "{listed}");
}

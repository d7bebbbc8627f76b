//! Hot reload of the key store while the gateway serves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::*;

use std::time::{Duration, Instant};

use keygate::keys::Access;

/// Polls until `key` gets `status`, returning how long it took.
async fn until_status(gw: &TestGateway, key: &str, method: &str, status: u16) -> Duration {
    let start = Instant::now();
    loop {
        let r = send(method, &gw.url("/"), &[("x-api-key", key)], "").await;
        if r.status == status {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "still {} instead of {status}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn cli_create_downgrade_and_delete_take_effect_within_a_second() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());

    let created: serde_json::Value = serde_json::from_str(&gw.keys(&[
        "create",
        "--name",
        "new",
        "--access",
        "full-access",
        "--json",
    ]))
    .unwrap();
    let (id, key) = (
        created["id"].as_str().unwrap().to_string(),
        created["key"].as_str().unwrap().to_string(),
    );
    // SPEC: in force within 1 s (polling every 250 ms plus the reload).
    // `cargo bench --bench propagation` measures the distribution.
    let took = until_status(&gw, &key, "POST", 200).await;
    assert!(took < Duration::from_secs(1), "create took {took:?}");

    gw.keys(&["update", &id, "--access", "read-only"]);
    let took = until_status(&gw, &key, "POST", 403).await;
    assert!(took < Duration::from_secs(1), "downgrade took {took:?}");

    gw.keys(&["delete", &id, "--yes"]);
    let took = until_status(&gw, &key, "GET", 401).await;
    assert!(took < Duration::from_secs(1), "delete took {took:?}");
}

#[tokio::test]
async fn editor_style_replacement_is_applied() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let text = std::fs::read_to_string(gw.store_path()).unwrap();
    // Hand edit: downgrade "full" by rewriting its access line, written as
    // editors do (new file, then rename over the old one).
    let edited = text.replacen(
        "id = \"full\"\nname = \"test key full\"\naccess = \"full-access\"",
        "id = \"full\"\nname = \"test key full\"\naccess = \"read-only\"",
        1,
    );
    assert_ne!(text, edited);
    let tmp = gw.dir.path().join(".keys.toml.swp");
    std::fs::write(&tmp, edited).unwrap();
    std::fs::rename(&tmp, gw.store_path()).unwrap();
    until_status(&gw, &gw.keys.full, "POST", 403).await;
}

#[tokio::test]
async fn invalid_store_keeps_the_last_good_index_and_reports_it() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let good = std::fs::read_to_string(gw.store_path()).unwrap();
    // Written whole (new file, renamed over): written in place, the watcher
    // may read the file between its truncation and the write, load an empty
    // store, and then keep that as the last good index.
    let tmp = gw.dir.path().join(".keys.toml.swp");
    std::fs::write(
        &tmp,
        format!("{good}\n[[keys]]\nid = \"broken\"\naccess = \"admin\"\n"),
    )
    .unwrap();
    std::fs::rename(&tmp, gw.store_path()).unwrap();
    let ops = gw.ops;
    wait_for_metric(ops, "keygate_reloads_total{result=\"failure\"}", |v| {
        v >= 1.0
    })
    .await;
    assert_eq!(
        metric(ops, "keygate_config_last_reload_successful").await,
        0.0
    );
    assert_serving(&gw).await;
    gw.wait_for_output("keys.toml:");

    std::fs::write(gw.store_path(), good).unwrap();
    wait_for_metric(ops, "keygate_config_last_reload_successful", |v| v == 1.0).await;
}

#[tokio::test]
async fn deleted_store_file_keeps_the_last_good_index() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    std::fs::remove_file(gw.store_path()).unwrap();
    wait_for_metric(gw.ops, "keygate_config_last_reload_successful", |v| {
        v == 0.0
    })
    .await;
    assert_serving(&gw).await;
}

#[tokio::test]
async fn sighup_forces_a_reload() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    gw.signal("HUP");
    gw.wait_for_output("cause=\"sighup\"");
}

#[tokio::test]
async fn kubernetes_style_symlink_swap_is_picked_up() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The kubelet's layout: keys.toml -> ..data/keys.toml, ..data -> ..v1.
    let v1 = dir.path().join("..v1");
    std::fs::create_dir(&v1).unwrap();
    let keys = standard_keys(&v1);
    std::os::unix::fs::symlink("..v1", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/keys.toml", dir.path().join("keys.toml")).unwrap();
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n[keys]\nstore = \"keys.toml\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n", upstream.url()),
    )
    .unwrap();
    let (_child, addr, _, _) = spawn_serve(&config);

    // A new version with one more key, swapped in atomically.
    let v2 = dir.path().join("..v2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::copy(v1.join("keys.toml"), v2.join("keys.toml")).unwrap();
    let added = add_key(
        &keygate::store::FileStore::new(v2.join("keys.toml")),
        "added",
        Access::ReadOnly,
        None,
        &[],
    );
    std::os::unix::fs::symlink("..v2", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();

    let url = format!("http://{addr}/");
    let start = Instant::now();
    while get(&url, &[("x-api-key", &added)]).await.status != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the swapped store was not loaded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        get(&url, &[("x-api-key", &keys.read_only)]).await.status,
        200
    );
}

#[tokio::test]
async fn reloads_under_load_never_fail_a_request() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let url = gw.url("/");
    let key = gw.keys.read_only.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let load = tokio::spawn(async move {
        let (mut ok, mut bad) = (0u32, Vec::new());
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            let r = get(&url, &[("x-api-key", &key)]).await;
            if r.status == 200 {
                ok += 1
            } else {
                bad.push(r.status)
            }
        }
        (ok, bad)
    });
    for i in 0..20 {
        add_key(
            &gw.store(),
            &format!("churn_{i}"),
            Access::ReadOnly,
            None,
            &[],
        );
        let ops = gw.ops;
        let want = f64::from(i + 2);
        wait_for_metric(ops, "keygate_reloads_total{result=\"success\"}", |v| {
            v >= want
        })
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, bad) = load.await.unwrap();
    assert!(ok > 20, "too few requests ran: {ok}");
    assert!(bad.is_empty(), "unexpected statuses: {bad:?}");
}

#[tokio::test]
async fn no_secret_ever_appears_in_output_or_metrics() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    let k = gw.keys.clone();
    let secrets = [&k.read_only, &k.full, &k.expired, &k.pinned, &k.revoked];
    let mut typo = k.read_only.clone().into_bytes();
    typo[4] = if typo[4] == b'A' { b'B' } else { b'A' };
    let typo = String::from_utf8(typo).unwrap();
    for key in secrets.iter().map(|s| s.as_str()).chain([typo.as_str()]) {
        for (method, extra) in [
            ("GET", None),
            ("POST", None),
            ("GET", Some(("origin", SHOP))),
            ("GET", Some(("origin", "https://evil.example"))),
        ] {
            let mut headers = vec![("x-api-key", key)];
            headers.extend(extra);
            send(method, &gw.url("/p"), &headers, "").await;
            let bearer = format!("Bearer {key}");
            send(method, &gw.url("/p"), &[("authorization", &bearer)], "").await;
        }
    }
    let metrics =
        String::from_utf8_lossy(&get(&format!("http://{}/metrics", gw.ops), &[]).await.body)
            .into_owned();
    let store = std::fs::read_to_string(gw.store_path()).unwrap();
    gw.wait_for_output("request denied");
    let output = gw.output();
    for s in secrets.iter().map(|s| s.as_str()).chain([typo.as_str()]) {
        assert!(!output.contains(s), "a secret was logged");
        assert!(!metrics.contains(s), "a secret is in the metrics");
        assert!(!store.contains(s), "a secret is in the store");
        // Nor the part after the prefix, in case something trimmed it.
        assert!(!output.contains(&s[3..]));
    }
}

#[tokio::test]
async fn a_lost_revocation_list_does_not_bring_deleted_keys_back() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(&upstream.url());
    assert_eq!(
        get(&gw.url("/"), &[("x-api-key", &gw.keys.revoked)])
            .await
            .code(),
        "invalid_key"
    );
    // An old copy of the store that still lists the deleted key, and no revocation list.
    let store = std::fs::read_to_string(gw.store_path()).unwrap();
    let old = format!(
        "{store}\n[[keys]]\nid = \"gone\"\nname = \"restored\"\naccess = \"full-access\"\nhash = \"{}\"\ncreated = \"2026-01-01\"\n",
        blake3::hash(gw.keys.revoked.as_bytes()).to_hex()
    );
    std::fs::remove_file(gw.dir.path().join("keys.revoked")).unwrap();
    std::fs::write(gw.store_path(), old).unwrap();
    gw.wait_for_output("the revocation list lost entries");
    assert_eq!(
        get(&gw.url("/"), &[("x-api-key", &gw.keys.revoked)])
            .await
            .code(),
        "invalid_key"
    );
    assert_serving(&gw).await;
}

//! The `keygate` command line, run as a real process against temporary folders.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::{BIN, assert_succeeded};

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn keygate(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("KEYGATE_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn keys(dir: &Path, args: &[&str]) -> Output {
    let mut all = vec!["keys", "--store", "keys.toml"];
    all.extend_from_slice(args);
    keygate(dir, &all)
}

fn ok(out: Output) -> String {
    assert_succeeded(&out);
    String::from_utf8(out.stdout).unwrap()
}

fn stderr_line(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "expected one line on stderr, got: {err}"
    );
    err
}

fn create(dir: &Path, name: &str, access: &str) -> serde_json::Value {
    serde_json::from_str(&ok(keys(
        dir,
        &["create", "--name", name, "--access", access, "--json"],
    )))
    .unwrap()
}

#[test]
fn create_prints_the_secret_once_and_stores_only_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let key = create(dir.path(), "Boutique Café 東京", "read-only");
    let secret = key["key"].as_str().unwrap();
    assert!(secret.starts_with("kg_"));
    assert_eq!(key["access"], "read-only");
    assert_eq!(key["name"], "Boutique Café 東京");
    let store = std::fs::read_to_string(dir.path().join("keys.toml")).unwrap();
    assert!(!store.contains(secret) && !store.contains(&secret[3..]));
    assert!(store.contains(&blake3::hash(secret.as_bytes()).to_hex().to_string()));
    let mode = std::fs::metadata(dir.path().join("keys.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let text = ok(keys(
        dir.path(),
        &["create", "--name", "ERP", "--access", "full-access"],
    ));
    assert!(text.contains("shown only this once"));
    assert!(text.contains("never in a browser"));
}

#[test]
fn list_and_show_never_print_secrets_or_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let key = create(dir.path(), "shop", "read-only");
    let id = key["id"].as_str().unwrap();
    let secret = key["key"].as_str().unwrap();
    let hash = blake3::hash(secret.as_bytes()).to_hex().to_string();
    let list: serde_json::Value =
        serde_json::from_str(&ok(keys(dir.path(), &["list", "--json"]))).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id);
    assert!(list[0].get("key").is_none() && list[0].get("hash").is_none());
    for out in [
        ok(keys(dir.path(), &["list"])),
        ok(keys(dir.path(), &["show", id])),
        ok(keys(dir.path(), &["show", id, "--json"])),
    ] {
        assert!(out.contains(id));
        assert!(!out.contains(secret) && !out.contains(&hash));
    }
}

#[test]
fn update_renames_downgrades_and_refuses_unforced_upgrades() {
    let dir = tempfile::tempdir().unwrap();
    let full = create(dir.path(), "erp", "full-access");
    let id = full["id"].as_str().unwrap();
    ok(keys(
        dir.path(),
        &["update", id, "--name", "ERP prod", "--access", "read-only"],
    ));
    let shown: serde_json::Value =
        serde_json::from_str(&ok(keys(dir.path(), &["show", id, "--json"]))).unwrap();
    assert_eq!(
        (shown["name"].as_str(), shown["access"].as_str()),
        (Some("ERP prod"), Some("read-only"))
    );

    let refused = keys(dir.path(), &["update", id, "--access", "full-access"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr_line(&refused).contains("may already be public"));
    ok(keys(
        dir.path(),
        &["update", id, "--access", "full-access", "--force"],
    ));

    let nothing = keys(dir.path(), &["update", id]);
    assert_eq!(nothing.status.code(), Some(2));
}

#[test]
fn delete_needs_confirmation_off_a_terminal_and_revokes_the_hash() {
    let dir = tempfile::tempdir().unwrap();
    let key = create(dir.path(), "old", "read-only");
    let id = key["id"].as_str().unwrap();
    let unconfirmed = keys(dir.path(), &["delete", id]);
    assert_eq!(unconfirmed.status.code(), Some(1));
    assert!(stderr_line(&unconfirmed).contains("--yes"));
    ok(keys(dir.path(), &["delete", id, "--yes"]));
    let list: serde_json::Value =
        serde_json::from_str(&ok(keys(dir.path(), &["list", "--json"]))).unwrap();
    assert!(list.as_array().unwrap().is_empty());
    let revoked = std::fs::read_to_string(dir.path().join("keys.revoked")).unwrap();
    let hash = blake3::hash(key["key"].as_str().unwrap().as_bytes())
        .to_hex()
        .to_string();
    assert!(revoked.starts_with(&hash));

    let again = keys(dir.path(), &["delete", id, "--yes"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr_line(&again).contains("no key with id"));
}

#[test]
fn snippet_uses_a_placeholder_and_has_a_browser_example_only_for_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let ro = create(dir.path(), "shop", "read-only");
    let full = create(dir.path(), "erp", "full-access");
    let text = ok(keys(
        dir.path(),
        &[
            "snippet",
            ro["id"].as_str().unwrap(),
            "--gateway-url",
            "https://api.example.com",
        ],
    ));
    assert!(text.contains("curl -H \"x-api-key: $KEYGATE_API_KEY\" https://api.example.com/"));
    assert!(text.contains("fetch("));
    assert!(text.contains("## Browser"));
    assert!(!text.contains(ro["key"].as_str().unwrap()));
    let text = ok(keys(dir.path(), &["snippet", full["id"].as_str().unwrap()]));
    assert!(!text.contains("## Browser"));
    assert!(!text.contains(full["key"].as_str().unwrap()));
}

#[test]
fn import_stores_hashes_and_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("good.tsv"),
        "legacy-secret-1\tread-only\tShop A\nlegacy-secret-2\tfull-access\tERP\n",
    )
    .unwrap();
    let imported: serde_json::Value =
        serde_json::from_str(&ok(keys(dir.path(), &["import", "good.tsv", "--json"]))).unwrap();
    assert_eq!(imported.as_array().unwrap().len(), 2);
    let store = std::fs::read_to_string(dir.path().join("keys.toml")).unwrap();
    assert!(!store.contains("legacy-secret-1"));
    assert!(store.contains(&blake3::hash(b"legacy-secret-1").to_hex().to_string()));

    std::fs::write(
        dir.path().join("bad.tsv"),
        "new-secret\tread-only\tOK\nsecret with space\tread-only\tX\nother\tadmin\tY\n",
    )
    .unwrap();
    let bad = keys(dir.path(), &["import", "bad.tsv"]);
    assert_eq!(bad.status.code(), Some(1));
    let err = stderr_line(&bad);
    assert!(err.contains("line 2") && err.contains("line 3"), "{err}");
    assert!(!err.contains("secret with space"));
    let after = std::fs::read_to_string(dir.path().join("keys.toml")).unwrap();
    assert_eq!(store, after, "a failed import changed the store");

    // Re-importing a stored secret is refused, naming the line.
    let dup = keys(dir.path(), &["import", "good.tsv"]);
    assert_eq!(dup.status.code(), Some(1));
    assert!(stderr_line(&dup).contains("line 1"));
}

#[test]
fn import_errors_never_echo_a_secret_even_with_swapped_columns() {
    let dir = tempfile::tempdir().unwrap();
    let secret = keygate::keys::token::generate("kg").unwrap();
    // Columns in the wrong order, three ways.
    let lines = format!(
        "read-only\t{secret}\tShop A\nShop B\tread-only\t{secret}x\nfull-access\tERP\t{secret}y\n"
    );
    std::fs::write(dir.path().join("swapped.tsv"), lines).unwrap();
    let out = keys(dir.path(), &["import", "swapped.tsv"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_line(&out);
    assert!(err.contains("3 bad line(s)"), "{err}");
    assert!(
        !err.contains(&secret[3..]),
        "a secret reached stderr: {err}"
    );
    assert!(
        !dir.path().join("keys.toml").exists(),
        "something was imported"
    );
}

#[test]
fn origins_are_stored_as_browsers_send_them() {
    let dir = tempfile::tempdir().unwrap();
    let created: serde_json::Value = serde_json::from_str(&ok(keys(
        dir.path(),
        &[
            "create",
            "--name",
            "shop",
            "--access",
            "read-only",
            "--origin",
            "https://Shop.Example.com:443",
            "--origin",
            "https://bücher.example",
            "--json",
        ],
    )))
    .unwrap();
    assert_eq!(
        created["origins"],
        serde_json::json!(["https://shop.example.com", "https://xn--bcher-kva.example"])
    );
    for bad in [
        "https://shop.example.com/path",
        "shop.example.com",
        "https://a b",
    ] {
        let out = keys(
            dir.path(),
            &[
                "create",
                "--name",
                "x",
                "--access",
                "read-only",
                "--origin",
                bad,
            ],
        );
        assert_eq!(out.status.code(), Some(1), "{bad}");
        assert!(stderr_line(&out).contains("--origin"), "{bad}");
    }
    // A hand-edited store with a malformed origin: file, line and field.
    let store = std::fs::read_to_string(dir.path().join("keys.toml")).unwrap();
    let broken = store.replace("https://shop.example.com", "https://shop.example.com/x");
    std::fs::write(dir.path().join("keys.toml"), broken).unwrap();
    let out = keys(dir.path(), &["list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_line(&out);
    assert!(
        err.contains("keys.toml:") && err.contains("origins"),
        "{err}"
    );
}

#[test]
fn import_of_100k_lines_is_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let lines: String = (0..100_000)
        .map(|i| format!("legacy-{i:06}\tread-only\tcustomer {i}\n"))
        .collect();
    std::fs::write(dir.path().join("many.tsv"), lines).unwrap();
    let start = std::time::Instant::now();
    ok(keys(dir.path(), &["import", "many.tsv"]));
    eprintln!("imported 100k keys in {:?}", start.elapsed());
    let list: serde_json::Value =
        serde_json::from_str(&ok(keys(dir.path(), &["list", "--json"]))).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 100_000);
}

#[test]
fn concurrent_creates_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..20)
        .map(|i| {
            Command::new(BIN)
                .args([
                    "keys",
                    "--store",
                    "keys.toml",
                    "create",
                    "--name",
                    &format!("k{i}"),
                    "--access",
                    "read-only",
                    "--json",
                ])
                .current_dir(dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert_succeeded(&out);
    }
    let list: serde_json::Value =
        serde_json::from_str(&ok(keys(dir.path(), &["list", "--json"]))).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 20);
}

#[test]
fn check_reports_file_and_line_of_a_broken_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keygate.toml"),
        "[upstream]\nurl = \"http://127.0.0.1:3000\"\n",
    )
    .unwrap();
    create(dir.path(), "shop", "read-only");
    let good = keygate(dir.path(), &["check", "--config", "keygate.toml"]);
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(String::from_utf8_lossy(&good.stdout).contains("1 key(s)"));

    let mut store = std::fs::read_to_string(dir.path().join("keys.toml")).unwrap();
    store = store.replace("access = \"read-only\"", "access = \"admin\"");
    std::fs::write(dir.path().join("keys.toml"), &store).unwrap();
    let line = store.lines().position(|l| l.contains("admin")).unwrap() + 1;
    let bad = keygate(dir.path(), &["check", "--config", "keygate.toml"]);
    assert_eq!(bad.status.code(), Some(1));
    let err = stderr_line(&bad);
    assert!(err.contains(&format!("keys.toml:{line}: access")), "{err}");
}

#[test]
fn check_names_a_misspelt_config_option() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keygate.toml"),
        "[upstream]\nurl = \"http://a\"\nconect_timeout = \"1s\"\n",
    )
    .unwrap();
    let out = keygate(dir.path(), &["check", "--config", "keygate.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_line(&out);
    assert!(
        err.contains("keygate.toml:3") && err.contains("conect_timeout"),
        "{err}"
    );
}

#[test]
fn keygate_config_env_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("custom.toml"),
        "[upstream]\nurl = \"http://a\"\n[keys]\nstore = \"k.toml\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["keys", "create", "--name", "x", "--access", "read-only"])
        .current_dir(dir.path())
        .env("KEYGATE_CONFIG", dir.path().join("custom.toml"))
        .output()
        .unwrap();
    assert_succeeded(&out);
    assert!(dir.path().join("k.toml").exists());
}

#[test]
fn usage_errors_exit_2_and_user_errors_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        keys(dir.path(), &["create", "--name", "x", "--access", "admin"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(keygate(dir.path(), &["frobnicate"]).status.code(), Some(2));
    let missing = keys(dir.path(), &["list"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr_line(&missing).contains("keys.toml"));
    let bad_name = keys(
        dir.path(),
        &["create", "--name", "", "--access", "read-only"],
    );
    assert_eq!(bad_name.status.code(), Some(1));
    stderr_line(&bad_name);
    let no_config = keygate(dir.path(), &["check"]);
    assert_eq!(no_config.status.code(), Some(1));
    assert!(stderr_line(&no_config).contains("config/keygate.toml"));
}

#[test]
fn the_shipped_config_and_store_check_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = keygate(root, &["check"]);
    assert_succeeded(&out);
}

/// Runs `keygate keys --store keys.toml <args>` in `dir` through bash, with
/// `setup` run first in the same shell (a ulimit, a trap).
fn keys_in_shell(dir: &Path, setup: &str, args: &[&str]) -> Output {
    let script = format!("{setup}; exec \"$0\" keys --store keys.toml \"$@\"");
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("KEYGATE_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn a_full_disk_on_create_fails_cleanly_and_leaves_the_store_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..8 {
        create(dir.path(), &format!("existing key {i}"), "read-only");
    }
    let before = std::fs::read(dir.path().join("keys.toml")).unwrap();
    assert!(
        before.len() > 2048,
        "the store must outgrow the limit below"
    );
    // A file-size limit of 1 KiB makes the write of the new store fail part
    // way, as a full disk would (EFBIG instead of ENOSPC; SIGXFSZ ignored so
    // that the write returns the error instead of killing the process).
    let out = keys_in_shell(
        dir.path(),
        "trap '' XFSZ; ulimit -f 1",
        &["create", "--name", "one too many", "--access", "read-only"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_line(&out);
    assert!(
        err.contains("cannot write") && err.contains("File too large"),
        "{err}"
    );
    assert_eq!(std::fs::read(dir.path().join("keys.toml")).unwrap(), before);
    // No temporary file left behind, and the store still works.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp.")), "{names:?}");
    create(dir.path(), "after the disk was freed", "read-only");
}

#[test]
fn a_read_only_folder_on_create_fails_cleanly_and_leaves_the_store_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    create(dir.path(), "existing", "full-access");
    let store = dir.path().join("keys.toml");
    let before = std::fs::read(&store).unwrap();
    // Root ignores permission bits, so as root the CLI runs as `nobody`,
    // owning the store in a folder it cannot write to.
    let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    // The lock file (made by the first create) is handed over too, so that
    // the run gets past the lock to the step this test is about: the
    // temporary file the new store is written to.
    let lock = dir.path().join(".keys.toml.lock");
    assert!(lock.exists());
    let setup = if root {
        let _ = Command::new("chown")
            .args([
                "65534:65534",
                store.to_str().unwrap(),
                lock.to_str().unwrap(),
            ])
            .status();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
        "exec setpriv --reuid=65534 --regid=65534 --clear-groups \"$0\" keys --store keys.toml \"$@\""
    } else {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
        "true"
    };
    let out = keys_in_shell(
        dir.path(),
        setup,
        &["create", "--name", "new", "--access", "read-only"],
    );
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_line(&out);
    assert!(
        err.contains("cannot create")
            && err.contains(".keys.toml.tmp.")
            && err.contains("Permission denied"),
        "{err}"
    );
    assert_eq!(std::fs::read(&store).unwrap(), before);
}

#[test]
fn version_names_the_commit_and_the_compiler() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.starts_with(&format!("keygate {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains("rustc "), "{text}");
    // In a git checkout, the commit being built.
    if let Ok(head) = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        && head.status.success()
    {
        let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
        assert!(
            text.contains(&format!("(commit {head},")),
            "{text} vs {head}"
        );
    }
}

#[test]
fn list_filters_and_the_store_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    create(dir.path(), "front", "read-only");
    create(dir.path(), "erp", "full-access");
    ok(keys(
        dir.path(),
        &[
            "create",
            "--name",
            "soon",
            "--access",
            "read-only",
            "--expires-in",
            "10d",
        ],
    ));
    let names = |args: &[&str]| -> Vec<String> {
        let out = ok(keys(dir.path(), &[&["list", "--json"], args].concat()));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|k| k["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&[]), ["front", "erp", "soon"]);
    assert_eq!(names(&["--access", "full-access"]), ["erp"]);
    assert_eq!(names(&["--expiring-within", "30d"]), ["soon"]);
    assert!(names(&["--expiring-within", "5d"]).is_empty());
    // Just created: nobody is unused for 90 days yet.
    assert!(names(&["--unused-for", "90d"]).is_empty());
    assert_eq!(names(&["--unused-for", "0s"]).len(), 3);

    // --access lists its values, and a typo is a usage error (exit 2).
    let out = keys(dir.path(), &["list", "--access", "admin"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("read-only") && err.contains("full-access"),
        "{err}"
    );

    // --store-env: the location from a variable, never on the command line.
    let store = dir.path().join("keys.toml");
    let out = Command::new(BIN)
        .args(["keys", "--store-env", "KG_TEST_STORE", "list", "--json"])
        .env("KG_TEST_STORE", &store)
        .env_remove("KEYGATE_CONFIG")
        .current_dir("/")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(out)).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);
    let out = Command::new(BIN)
        .args(["keys", "--store-env", "KG_TEST_UNSET_VAR", "list"])
        .env_remove("KG_TEST_UNSET_VAR")
        .env_remove("KEYGATE_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_line(&out).contains("$KG_TEST_UNSET_VAR"));
}

#[test]
fn completions_for_bash_zsh_and_fish_and_a_man_page() {
    let dir = tempfile::tempdir().unwrap();
    let bash = ok(keygate(dir.path(), &["completions", "bash"]));
    assert!(
        bash.contains("_keygate()") && bash.contains("rotate"),
        "{bash}"
    );
    // The script is valid bash.
    let script = dir.path().join("keygate.bash");
    std::fs::write(&script, &bash).unwrap();
    let syntax = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    let zsh = ok(keygate(dir.path(), &["completions", "zsh"]));
    assert!(zsh.starts_with("#compdef keygate"), "{zsh}");
    let fish = ok(keygate(dir.path(), &["completions", "fish"]));
    assert!(fish.contains("complete -c keygate"), "{fish}");
    // --access lists its values in every shell.
    for script in [&bash, &zsh, &fish] {
        assert!(script.contains("full-access"));
    }
    let bad = keygate(dir.path(), &["completions", "powershell"]);
    assert_eq!(bad.status.code(), Some(2));
    let man = ok(keygate(dir.path(), &["man"]));
    assert!(
        man.starts_with(".ie") || man.contains(".TH keygate"),
        "{man}"
    );
    assert!(man.contains("completions"));
}

/// `keygate` with extra environment variables.
fn keygate_env(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("KEYGATE_CONFIG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn options_from_the_environment_override_the_file_and_name_themselves() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keygate.toml"),
        "[upstream]\nurl = \"http://file.example\"\n[keys]\nstore = \"keys.toml\"\n",
    )
    .unwrap();
    create(dir.path(), "shop", "read-only");
    let cfg = ["--config", "keygate.toml"];
    let shown = ok(keygate_env(
        dir.path(),
        &[
            ("KEYGATE_UPSTREAM_URL", "http://env.example:8000"),
            ("KEYGATE_SERVER_WORKERS", "3"),
            ("KEYGATE_LIMITS_SHARED", "redis://app:hunter2@redis:6379"),
        ],
        &["check", "--print-effective", cfg[0], cfg[1]],
    ));
    assert!(
        shown.contains("url = \"http://env.example:8000\""),
        "{shown}"
    );
    assert!(shown.contains("workers = 3"), "{shown}");
    assert!(
        shown.contains("# upstream.url from KEYGATE_UPSTREAM_URL"),
        "{shown}"
    );
    assert!(
        !shown.contains("hunter2"),
        "a password was printed: {shown}"
    );
    assert!(shown.contains("redis://app:****@redis:6379"), "{shown}");
    assert!(
        shown.contains("keys.toml: ok"),
        "then the usual check: {shown}"
    );

    // A misspelt option, a value of the wrong kind, a value the option
    // refuses: exit 1, one line naming the variable.
    for (var, value) in [
        ("KEYGATE_UPSTREAM_URLL", "http://x"),
        ("KEYGATE_SERVER_WORKERS", "two"),
        ("KEYGATE_UPSTREAM_CONNECT_TIMEOUT", "soon"),
        ("KEYGATE_UPSTREAM_URL", "ftp://nope"),
    ] {
        let out = keygate_env(dir.path(), &[(var, value)], &["check", cfg[0], cfg[1]]);
        assert_eq!(out.status.code(), Some(1), "{var}");
        let line = stderr_line(&out);
        assert!(line.contains(var), "{var}: {line}");
    }
    // With --json, errors are JSON on stderr, same exit code.
    let out = keygate_env(
        dir.path(),
        &[("KEYGATE_SERVER_WORKERS", "two")],
        &["check", "--json", cfg[0], cfg[1]],
    );
    assert_eq!(out.status.code(), Some(1));
    let err: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["error"], "error");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("KEYGATE_SERVER_WORKERS")
    );
}

#[test]
fn every_printing_command_speaks_json_and_so_do_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let json = |out: Output| -> serde_json::Value { serde_json::from_str(&ok(out)).unwrap() };
    let key = create(dir.path(), "shop", "read-only");
    let id = key["id"].as_str().unwrap().to_string();
    let updated = json(keys(
        dir.path(),
        &["update", &id, "--name", "Shop 2", "--json"],
    ));
    assert_eq!(updated["name"], "Shop 2");
    assert_eq!(updated["access"], "read-only");
    let rotated = json(keys(dir.path(), &["rotate", &id, "--json"]));
    assert!(
        rotated["key"]
            .as_str()
            .is_some_and(|k| k.starts_with("kg_"))
    );
    let deleted = json(keys(dir.path(), &["delete", &id, "--yes", "--json"]));
    assert_eq!(deleted["id"], id.as_str());
    assert_eq!(deleted["deleted"], true);
    std::fs::write(
        dir.path().join("keygate.toml"),
        "[upstream]\nurl = \"http://a\"\n[keys]\nstore = \"keys.toml\"\n",
    )
    .unwrap();
    let checked = json(keygate(
        dir.path(),
        &["check", "--json", "--config", "keygate.toml"],
    ));
    assert_eq!(checked["ok"], true);
    assert_eq!(checked["keys"], 0);
    // The deleted key's secret and the one it had before its rotation.
    assert_eq!(checked["revoked_hashes"], 2);
    let migrated = json(keygate(
        dir.path(),
        &["migrate", "--json", "--config", "keygate.toml"],
    ));
    assert_eq!(migrated["store"], "file");
    let token = json(keygate(
        dir.path(),
        &[
            "tokens",
            "create",
            "--name",
            "ops",
            "--json",
            "--config",
            "keygate.toml",
        ],
    ));
    assert_eq!(token["name"], "ops");
    let gone = json(keygate(
        dir.path(),
        &[
            "tokens",
            "delete",
            "ops",
            "--json",
            "--config",
            "keygate.toml",
        ],
    ));
    assert_eq!(gone["deleted"], true);

    // Errors: JSON on stderr, exit codes unchanged.
    let missing = keys(dir.path(), &["show", "nope", "--json"]);
    assert_eq!(missing.status.code(), Some(1));
    let err: serde_json::Value = serde_json::from_slice(&missing.stderr).unwrap();
    assert_eq!(err["error"], "not_found");
    assert!(err["message"].as_str().unwrap().contains("nope"));
    let usage = keys(
        dir.path(),
        &["create", "--json", "--name", "x", "--access", "admin"],
    );
    assert_eq!(usage.status.code(), Some(2));
    let err: serde_json::Value = serde_json::from_slice(&usage.stderr).unwrap();
    assert_eq!(err["error"], "usage");
    assert!(err["message"].as_str().unwrap().contains("admin"), "{err}");
}

/// The store is edited in place: comments, blank lines and untouched keys
/// stay as the operator wrote them, through every `keys` command.
#[test]
fn hand_written_comments_survive_every_keys_command() {
    let dir = tempfile::tempdir().unwrap();
    let shop = create(dir.path(), "Shop", "read-only");
    let erp = create(dir.path(), "ERP", "full-access");
    let (shop, erp) = (shop["id"].as_str().unwrap(), erp["id"].as_str().unwrap());
    let path = dir.path().join("keys.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let second = text.rfind("[[keys]]").unwrap();
    let mut hand = format!(
        "# Hand-written: ask Ana before deleting anything.\n{}# ERP: server side only!\n{}",
        &text[..second],
        &text[second..]
    );
    hand = hand.replace("name = \"Shop\"", "name = \"Shop\"   # the storefront");
    std::fs::write(&path, &hand).unwrap();
    let store = || std::fs::read_to_string(&path).unwrap();

    ok(keys(dir.path(), &["update", shop, "--name", "Shop 2"]));
    let now = store();
    assert_eq!(
        now,
        hand.replace("name = \"Shop\"   #", "name = \"Shop 2\"   #"),
        "a rename changes that value only"
    );
    ok(keys(dir.path(), &["update", shop, "--rate-limit", "10/s"]));
    assert!(store().contains("rate_limit = \"10/s\""));
    ok(keys(dir.path(), &["update", shop, "--rate-limit", "none"]));
    assert!(!store().contains("rate_limit = "));
    ok(keys(dir.path(), &["rotate", erp, "--grace", "1h"]));
    assert!(store().contains("previous_hash = "));
    ok(keys(
        dir.path(),
        &["create", "--name", "New", "--access", "read-only"],
    ));
    let import = dir.path().join("import.tsv");
    std::fs::write(
        &import,
        "legacy-secret-for-the-comment-test\tread-only\tImported\n",
    )
    .unwrap();
    ok(keys(dir.path(), &["import", import.to_str().unwrap()]));
    let now = store();
    for kept in [
        "# Hand-written: ask Ana before deleting anything.",
        "# ERP: server side only!",
        "name = \"Shop 2\"   # the storefront",
        "name = \"New\"",
        "name = \"Imported\"",
    ] {
        assert!(now.contains(kept), "{kept:?} lost:\n{now}");
    }
    // A deleted key's table goes with the comment above it; the rest stays.
    ok(keys(dir.path(), &["delete", erp, "--yes"]));
    let now = store();
    assert!(!now.contains("ERP"), "{now}");
    assert!(
        now.starts_with("# Hand-written: ask Ana before deleting anything.\n"),
        "{now}"
    );
    assert!(
        now.contains("name = \"Shop 2\"   # the storefront"),
        "{now}"
    );
    ok(keys(dir.path(), &["list"]));
}

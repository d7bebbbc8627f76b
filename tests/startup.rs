//! A start that cannot succeed ends: `serve` (and `check`) exit 1 within 2 s
//! with one last line on stderr, `keygate: <cause>`, for every bad input a
//! new user meets. Each case runs the real binary and waits with a bound, so
//! a hang fails the test instead of stalling the suite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::*;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// SPEC: a failed start exits within 2 s.
const EXIT_WITHIN: Duration = Duration::from_secs(2);

struct Exit {
    code: Option<i32>,
    stderr: String,
    took: Duration,
}

/// Runs `keygate <command> --config <dir>/keygate.toml` and waits for it to
/// exit, at most `EXIT_WITHIN` (then kills it and fails).
fn run(dir: &Path, command: &str) -> Exit {
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args([
            command,
            "--config",
            dir.join("keygate.toml").to_str().unwrap(),
        ])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > EXIT_WITHIN {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "keygate {command} still running after {EXIT_WITHIN:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let took = started.elapsed();
    let out = child.wait_with_output().unwrap();
    Exit {
        code: status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took,
    }
}

/// A config folder: the config (`[upstream]` to a closed port unless given)
/// and a valid store, each changed by the case.
fn folder(config: &str, store: Option<&[u8]>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keygate.toml"), config).unwrap();
    if let Some(store) = store {
        std::fs::write(dir.path().join("keys.toml"), store).unwrap();
    }
    dir
}

const GOOD_STORE: &[u8] = b"# keys\n";

fn config(extra_server: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{extra_server}\n[upstream]\nurl = \"http://127.0.0.1:9\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n{extra}\n"
    )
}

/// The last line is `keygate: ...` naming the cause; the command ended in time.
fn assert_failed(exit: &Exit, cause: &[&str]) {
    assert_eq!(exit.code, Some(1), "stderr:\n{}", exit.stderr);
    let last = exit.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("keygate: "),
        "last line: {last:?}\n{}",
        exit.stderr
    );
    for c in cause {
        assert!(last.contains(c), "{c:?} not in {last:?}");
    }
    assert!(exit.took < EXIT_WITHIN, "took {:?}", exit.took);
}

#[test]
fn a_missing_store_ends_serve_and_check() {
    let dir = folder(&config("", ""), None);
    for command in ["serve", "check"] {
        let exit = run(dir.path(), command);
        assert_failed(&exit, &["keys.toml", "No such file"]);
    }
    // serve's log line about it came out before the last line, not after.
    let exit = run(dir.path(), "serve");
    assert!(
        exit.stderr.contains("key store reload failed"),
        "{}",
        exit.stderr
    );
}

#[test]
fn an_unparsable_or_non_utf8_store_ends_serve_and_check() {
    for (store, cause) in [
        (&b"[[keys]]\nid = \n"[..], "keys.toml:2"),
        (&b"[[keys]]\nid = \"a\"\nbogus = 1\n"[..], "bogus"),
        (&b"\xff\xfe not text"[..], "not UTF-8"),
    ] {
        let dir = folder(&config("", ""), Some(store));
        for command in ["serve", "check"] {
            let exit = run(dir.path(), command);
            assert_failed(&exit, &[cause]);
        }
    }
}

#[test]
fn an_unknown_config_field_or_a_bad_value_ends_serve_and_check() {
    for (text, cause) in [
        (config("listen_typo = 1", ""), "unknown field `listen_typo`"),
        (config("body_timeout = \"0s\"", ""), "server.body_timeout"),
        (config("", "[keys]\nstore = 7"), "keygate.toml:"),
        ("[server\n".to_string(), "keygate.toml:1"),
    ] {
        let dir = folder(&text, Some(GOOD_STORE));
        for command in ["serve", "check"] {
            let exit = run(dir.path(), command);
            assert_failed(&exit, &[cause]);
        }
    }
}

#[test]
fn a_listen_or_metrics_port_in_use_ends_serve() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let client = config("", "").replace(
        "listen = \"127.0.0.1:0\"\n\n[upstream]",
        &format!("listen = \"127.0.0.1:{port}\"\n\n[upstream]"),
    );
    let ops = config("", "").replace(
        "[metrics]\nlisten = \"127.0.0.1:0\"",
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\""),
    );
    for (text, option) in [(client, "server.listen"), (ops, "metrics.listen")] {
        assert!(text.contains(&port.to_string()));
        let dir = folder(&text, Some(GOOD_STORE));
        let exit = run(dir.path(), "serve");
        assert_failed(&exit, &[option, "in use"]);
    }
}

#[test]
fn missing_or_non_pem_tls_files_end_serve_and_check() {
    let (cert, key) = self_signed();
    let tls = "[server.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n";
    for (cert_text, key_text, cause) in [
        (None, None, "server.tls.cert"),
        (
            Some("not a certificate"),
            Some(key.as_str()),
            "server.tls.cert",
        ),
        (Some(cert.as_str()), Some("not a key"), "server.tls.key"),
        (Some(cert.as_str()), None, "server.tls.key"),
    ] {
        let dir = folder(&format!("{}{tls}", config("", "")), Some(GOOD_STORE));
        if let Some(c) = cert_text {
            std::fs::write(dir.path().join("cert.pem"), c).unwrap();
        }
        if let Some(k) = key_text {
            std::fs::write(dir.path().join("key.pem"), k).unwrap();
        }
        for command in ["serve", "check"] {
            let exit = run(dir.path(), command);
            assert_failed(&exit, &[cause]);
        }
    }
}

#[test]
fn an_unreadable_upstream_ca_ends_serve_and_check() {
    let text = config("", "").replace(
        "url = \"http://127.0.0.1:9\"",
        "url = \"https://127.0.0.1:9\"\nca = \"missing-ca.pem\"",
    );
    let dir = folder(&text, Some(GOOD_STORE));
    for command in ["serve", "check"] {
        let exit = run(dir.path(), command);
        assert_failed(&exit, &["upstream.ca", "missing-ca.pem"]);
    }
    std::fs::write(dir.path().join("missing-ca.pem"), "garbage").unwrap();
    for command in ["serve", "check"] {
        let exit = run(dir.path(), command);
        assert_failed(&exit, &["upstream.ca"]);
    }
}

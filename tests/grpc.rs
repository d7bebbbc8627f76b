//! gRPC through the gateway with a real gRPC server and client (Python's
//! grpcio, over h2c both ways; `upstream.protocol = "http2"`): allowed
//! unary and streaming calls with trailers passed through, and the gateway's
//! own refusals seen by the client as gRPC statuses.
//!
//! Needs a Python with grpcio: `$KEYGATE_TEST_PYTHON`, else
//! `~/.cache/keygate-test-tools/grpc/bin/python` (`.ci/run` makes it:
//! `python3 -m venv ~/.cache/keygate-test-tools/grpc && ~/.cache/keygate-test-tools/grpc/bin/pip install grpcio==1.68.1`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::*;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

fn python() -> PathBuf {
    let path = std::env::var_os("KEYGATE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/keygate-test-tools/grpc/bin/python")
        });
    let ok = Command::new(&path)
        .args(["-c", "import grpc"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the gRPC test needs a Python with grpcio at {} (or $KEYGATE_TEST_PYTHON): \
         python3 -m venv ~/.cache/keygate-test-tools/grpc && \
         ~/.cache/keygate-test-tools/grpc/bin/pip install grpcio==1.68.1 (.ci/run does)",
        path.display()
    );
    path
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/grpc")
        .join(name)
}

/// The gRPC backend, stopped (stdin closed, then killed) when dropped.
struct Backend {
    child: Child,
    port: u16,
}

impl Backend {
    fn start(python: &PathBuf) -> Backend {
        let mut child = Command::new(python)
            .arg(script("server.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the gRPC server's port");
        Backend { child, port }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn calls(python: &PathBuf, target: &str, calls: serde_json::Value) -> serde_json::Value {
    let out = Command::new(python)
        .arg(script("client.py"))
        .arg(target)
        .arg(calls.to_string())
        .output()
        .unwrap();
    assert_succeeded(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn grpc_calls_pass_and_refusals_are_grpc_statuses() {
    let python = python();
    let backend = Backend::start(&python);
    let gw = TestGateway::start_with(
        &format!("http://127.0.0.1:{}", backend.port),
        Setup {
            upstream: "protocol = \"http2\"\nresponse_timeout = \"1s\"".into(),
            ..Setup::default()
        },
    );
    // A key with room for two requests a minute: one spent here, once the
    // gateway knows it, one by the gRPC call below.
    let limited: serde_json::Value = serde_json::from_str(&gw.keys(&[
        "create",
        "--name",
        "limited",
        "--access",
        "full-access",
        "--rate-limit",
        "2/min",
        "--json",
    ]))
    .unwrap();
    let limited = limited["key"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while get(&gw.url("/"), &[("x-api-key", &limited)]).await.status == 401 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new key never loaded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let (full, ro) = (gw.keys.full.as_str(), gw.keys.read_only.as_str());
    let got = calls(
        &python,
        &gw.addr.to_string(),
        serde_json::json!([
            ["unary", "unary", "/kg.Test/Echo", "hello", full],
            [
                "server_stream",
                "server_stream",
                "/kg.Test/Count",
                "5",
                full
            ],
            [
                "client_stream",
                "client_stream",
                "/kg.Test/Sum",
                ["1", "2", "39"],
                full
            ],
            ["no_key", "unary", "/kg.Test/Echo", "x", null],
            ["bad_key", "unary", "/kg.Test/Echo", "x", "kg_notakeyatall"],
            ["read_only", "unary", "/kg.Test/Echo", "x", ro],
            ["limited_1", "unary", "/kg.Test/Echo", "x", limited],
            ["limited_2", "unary", "/kg.Test/Echo", "x", limited],
            ["slow", "unary", "/kg.Test/Slow", "x", full],
        ]),
    );
    // Allowed: through, with our identity and without the key; trailers kept.
    let echoed: serde_json::Value =
        serde_json::from_str(got["unary"]["ok"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["echo"], "hello");
    assert_eq!(echoed["key_id"], "full");
    assert_eq!(echoed["access"], "full-access");
    assert_eq!(echoed["saw_key"], false);
    assert_eq!(got["unary"]["trailers"]["x-backend-trailer"], "kept");
    assert_eq!(
        got["server_stream"]["ok"],
        serde_json::json!(["0", "1", "2", "3", "4"])
    );
    assert_eq!(got["client_stream"]["ok"], "42");
    assert!(got["limited_1"]["ok"].as_str().is_some(), "{got}");
    // Refused: gRPC statuses, the wire code in the message.
    for (name, code, wire) in [
        ("no_key", "UNAUTHENTICATED", "missing_key"),
        ("bad_key", "UNAUTHENTICATED", "invalid_key"),
        ("read_only", "PERMISSION_DENIED", "read_only_method"),
        ("limited_2", "RESOURCE_EXHAUSTED", "rate_limited"),
        ("slow", "DEADLINE_EXCEEDED", "upstream_timeout"),
    ] {
        assert_eq!(got[name]["code"], code, "{name}: {got}");
        assert!(
            got[name]["details"].as_str().unwrap().starts_with(wire),
            "{name}: {got}"
        );
    }

    // The backend gone: UNAVAILABLE.
    let target = gw.addr.to_string();
    drop(backend);
    let got = calls(
        &python,
        &target,
        serde_json::json!([["down", "unary", "/kg.Test/Echo", "x", full]]),
    );
    assert_eq!(got["down"]["code"], "UNAVAILABLE", "{got}");
    assert!(
        got["down"]["details"]
            .as_str()
            .unwrap()
            .starts_with("upstream_unavailable")
    );
}

use std::time::Duration;

use http::{HeaderValue, Method, Version};

use super::super::format::tests::{capture, taken, untimed};
use super::*;
use crate::config::LogFormat;
use crate::proxy::access::log_with_tracing;

/// The line `log_with_tracing` writes through the `tracing` layer, and the
/// one the typed writer writes, for the same request.
fn both(json: bool, r: &Request<'_>, o: &Outcome<'_>) -> (String, String) {
    use tracing_subscriber::prelude::*;
    let format = if json {
        LogFormat::Json
    } else {
        LogFormat::Text
    };
    taken();
    let subscriber = tracing_subscriber::registry().with(format::Lines::new(format, capture));
    tracing::subscriber::with_default(subscriber, || log_with_tracing(r, o));
    let traced = taken();
    AccessLines {
        json,
        enabled: true,
        sink: capture,
    }
    .write(r, o);
    let typed = taken();
    assert_eq!((traced.len(), typed.len()), (1, 1), "{traced:?} {typed:?}");
    (untimed(json, &traced[0]), untimed(json, &typed[0]))
}

fn request<'a>(method: &'a Method, path: &'a str, id: Option<&'a HeaderValue>) -> Request<'a> {
    Request {
        method,
        path,
        version: Version::HTTP_11,
        request_id: id,
        client: "203.0.113.7",
        peer: "127.0.0.1:54321".parse().unwrap_or_else(|e| panic!("{e}")),
        peer_ip: "127.0.0.1",
        bytes_in: None,
    }
}

fn denied() -> Outcome<'static> {
    Outcome {
        message: "request denied",
        decision: "invalid_key",
        reason: Some("unknown key"),
        key_id: None,
        status: 401,
        bytes_out: Some(61),
        duration: Duration::from_nanos(4_321),
        upstream: None,
        complete: None,
        limit: None,
        scope: None,
    }
}

#[test]
fn typed_lines_are_the_lines_tracing_writes_in_both_formats() {
    let get = Method::GET;
    let post = Method::POST;
    let id = HeaderValue::from_static("0f8fad5b-d9cb-469f-a165-70867728950e");
    let limit = "10/s";
    // A refusal: the fields SPEC asks of every refusal, the rest absent.
    let refusal = (request(&get, "/v1/things", None), denied());
    // A forwarded request with every field there is.
    let forwarded = (
        Request {
            version: Version::HTTP_2,
            bytes_in: Some(81),
            ..request(&post, "/v1/points", Some(&id))
        },
        Outcome {
            message: "request allowed",
            decision: "allowed",
            reason: None,
            key_id: Some("k_7f3a"),
            status: 201,
            bytes_out: Some(1_048_576),
            duration: Duration::from_millis(12),
            upstream: Some(Duration::from_micros(11_950)),
            complete: Some(false),
            limit: None,
            scope: None,
        },
    );
    // A rate-limited one: the limit is a `Display` value.
    let limited = (
        request(&get, "/v1/things", None),
        Outcome {
            decision: "rate_limited",
            status: 429,
            key_id: Some("k_7f3a"),
            limit: Some(&limit),
            scope: Some("key"),
            ..denied()
        },
    );
    // Values a client chose, which need escaping in one format or both.
    let odd = (
        Request {
            client: "cl\u{e9}ent \"x\"",
            ..request(&get, "/v1/\"odd\"\\path\t\u{1}", None)
        },
        Outcome {
            key_id: Some("k_\u{2028}"),
            complete: Some(true),
            ..denied()
        },
    );
    for (r, o) in [&refusal, &forwarded, &limited, &odd] {
        for json in [false, true] {
            let (traced, typed) = both(json, r, o);
            assert_eq!(typed, traced, "json: {json}");
        }
    }
    // What the two agree on is the line SPEC describes, not an empty one.
    let (_, text) = both(false, &refusal.0, &refusal.1);
    assert_eq!(
        text,
        "  INFO keygate::proxy::access: request denied decision=\"invalid_key\" \
         reason=\"unknown key\" http.request.method=\"GET\" url.path=\"/v1/things\" \
         http.response.status_code=401 client.address=\"203.0.113.7\" \
         network.peer.address=\"127.0.0.1\" network.peer.port=54321 \
         network.protocol.version=\"1.1\" http.response.body.size=61 duration_us=4\n"
    );
    let (_, json) = both(true, &limited.0, &limited.1);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v["fields"]["ratelimit.limit"], "10/s");
    assert_eq!(v["fields"]["http.response.status_code"], 429);
    assert_eq!(v["target"], "keygate::proxy::access");
}

#[test]
fn a_writer_the_filter_turned_off_writes_nothing() {
    let get = Method::GET;
    taken();
    AccessLines {
        json: false,
        enabled: false,
        sink: capture,
    }
    .write(&request(&get, "/", None), &denied());
    assert!(taken().is_empty());
}

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::BytesMut;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Version};
use proptest::prelude::*;

use super::body::Decoding;
use super::head::{self, Framing, HeadError, Limits, Persist, Send};
use super::{behind_the_ready_tasks, size_line};
use crate::proxy::h1::Chunk;

const LIMITS: Limits = Limits {
    max_head_bytes: 1024,
    max_headers: 8,
};

fn parse(text: &str) -> Result<Option<head::RequestHead>, HeadError> {
    parse_bytes(&mut BytesMut::from(text.as_bytes()))
}

fn parse_bytes(buf: &mut BytesMut) -> Result<Option<head::RequestHead>, HeadError> {
    head::parse_request(
        buf,
        LIMITS,
        &mut HeaderMap::new(),
        &mut Vec::new(),
        &mut head::Names::default(),
    )
}

fn head(text: &str) -> head::RequestHead {
    parse(text).unwrap().unwrap()
}

#[test]
fn a_request_head_is_parsed_whole_and_the_rest_left() {
    let mut buf = BytesMut::from(
        &b"GET /v1/things?x=1 HTTP/1.1\r\nhost: a\r\nx-api-key: k\r\nx-two: 1\r\nx-two: 2\r\n\r\nGET /next"[..],
    );
    let parsed = parse_bytes(&mut buf).unwrap().unwrap();
    assert_eq!(&buf[..], b"GET /next");
    let req = parsed.request;
    assert_eq!(req.method(), Method::GET);
    assert_eq!(req.uri(), "/v1/things?x=1");
    assert_eq!(req.version(), Version::HTTP_11);
    assert_eq!(req.headers()["x-api-key"], "k");
    let twos: Vec<_> = req.headers().get_all("x-two").iter().collect();
    assert_eq!(twos, ["1", "2"]);
    assert_eq!(parsed.framing, Framing::None);
    assert!(parsed.keep_alive);
    assert!(!parsed.expect_continue);
}

#[test]
fn a_partial_head_waits_for_more() {
    let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nhost: a\r\n"[..]);
    assert!(parse_bytes(&mut buf).unwrap().is_none());
    assert_eq!(buf.len(), 25, "nothing is consumed until the head is whole");
    buf.extend_from_slice(b"\r\n");
    assert!(parse_bytes(&mut buf).unwrap().is_some());
    assert!(buf.is_empty());
}

#[test]
fn heads_over_the_limits_are_too_large() {
    let long = format!("GET / HTTP/1.1\r\nx-a: {}\r\n\r\n", "a".repeat(1024));
    assert_eq!(parse(&long).unwrap_err(), HeadError::TooLarge);
    // Incomplete, but already past the limit.
    let partial = format!("GET / HTTP/1.1\r\nx-a: {}", "a".repeat(1100));
    assert_eq!(parse(&partial).unwrap_err(), HeadError::TooLarge);
    let many: String = (0..9).map(|i| format!("x-{i}: 1\r\n")).collect();
    assert_eq!(
        parse(&format!("GET / HTTP/1.1\r\n{many}\r\n")).unwrap_err(),
        HeadError::TooLarge
    );
    let eight: String = (0..8).map(|i| format!("x-{i}: 1\r\n")).collect();
    assert!(parse(&format!("GET / HTTP/1.1\r\n{eight}\r\n")).is_ok());
    assert_eq!(
        HeadError::TooLarge.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
}

#[test]
fn more_fields_than_the_stack_holds_are_parsed_when_allowed() {
    let limits = Limits {
        max_head_bytes: 64 * 1024,
        max_headers: 300,
    };
    let many: String = (0..200).map(|i| format!("x-{i}: {i}\r\n")).collect();
    let mut buf = BytesMut::from(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes());
    let parsed = head::parse_request(
        &mut buf,
        limits,
        &mut HeaderMap::new(),
        &mut Vec::new(),
        &mut head::Names::default(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(parsed.request.headers().len(), 200);
    assert_eq!(parsed.request.headers()["x-199"], "199");
}

#[test]
fn content_length_frames_the_body_when_it_is_one_clean_number() {
    assert_eq!(
        head("POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\n").framing,
        Framing::Length(5)
    );
    assert_eq!(
        head("POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n").framing,
        Framing::None
    );
    let repeated = head("POST / HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n");
    assert_eq!(repeated.framing, Framing::Length(5));
    assert_eq!(
        repeated
            .request
            .headers()
            .get_all("content-length")
            .iter()
            .count(),
        1
    );
    assert_eq!(
        head("POST / HTTP/1.1\r\ncontent-length: 5, 5\r\n\r\n").framing,
        Framing::Length(5)
    );
    for bad in ["+5", "5, 6", "-1", "0x5", "", "5 5", "99999999999999999999"] {
        let text = format!("POST / HTTP/1.1\r\ncontent-length: {bad}\r\n\r\n");
        assert!(
            matches!(parse(&text), Err(HeadError::Malformed(_))),
            "{bad:?} was accepted"
        );
    }
    assert!(matches!(
        parse("POST / HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"),
        Err(HeadError::Malformed("differing content-lengths"))
    ));
}

#[test]
fn transfer_encoding_must_end_in_chunked_and_wins_over_a_length() {
    let chunked = head("POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n");
    assert_eq!(chunked.framing, Framing::Chunked);
    assert!(chunked.keep_alive);
    let both = head("POST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n");
    assert_eq!(both.framing, Framing::Chunked);
    assert!(!both.request.headers().contains_key("content-length"));
    assert!(
        !both.keep_alive,
        "framed twice: the connection closes after"
    );
    let other_order =
        head("POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n");
    assert!(!other_order.request.headers().contains_key("content-length"));
    assert!(!other_order.keep_alive);
    for bad in ["chunked, identity", "xchunked", "identity"] {
        let text = format!("POST / HTTP/1.1\r\ntransfer-encoding: {bad}\r\n\r\n");
        assert!(
            matches!(parse(&text), Err(HeadError::Malformed(_))),
            "{bad}"
        );
    }
    assert!(matches!(
        parse("POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n"),
        Err(HeadError::Malformed("transfer-encoding on HTTP/1.0"))
    ));
}

#[test]
fn bad_syntax_is_malformed() {
    for bad in [
        "GET / HTTP/1.1\r\nx-folded: a\r\n b\r\n\r\n",
        "GET / HTTP/1.1\r\nx-a: a\0b\r\n\r\n",
        "GET / HTTP/1.1\r\nx a: b\r\n\r\n",
        "GET / HTTP/1.1\r\nx-a : b\r\n\r\n",
        "G(T / HTTP/1.1\r\n\r\n",
        "GET / HTTP/2.0\r\n\r\n",
        "GET /a b HTTP/1.1\r\n\r\n",
    ] {
        assert!(
            matches!(parse(bad), Err(HeadError::Malformed(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn keep_alive_follows_the_version_and_connection() {
    assert!(!head("GET / HTTP/1.1\r\nconnection: close\r\n\r\n").keep_alive);
    assert!(!head("GET / HTTP/1.1\r\nconnection: upgrade, Close\r\n\r\n").keep_alive);
    assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
    let kept = head("GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n");
    assert!(kept.keep_alive);
    assert_eq!(kept.request.version(), Version::HTTP_10);
    assert!(!head("GET / HTTP/1.0\r\nconnection: keep-alive, close\r\n\r\n").keep_alive);
}

#[test]
fn expect_continue_is_noted() {
    let h = head("POST / HTTP/1.1\r\nexpect: 100-Continue\r\ncontent-length: 1\r\n\r\n");
    assert!(h.expect_continue);
    assert!(!head("POST / HTTP/1.1\r\nexpect: other\r\n\r\n").expect_continue);
}

#[test]
fn absolute_and_asterisk_targets_parse() {
    let abs = head("GET http://elsewhere.example/v1?x=1 HTTP/1.1\r\n\r\n");
    assert_eq!(abs.request.uri().path_and_query().unwrap(), "/v1?x=1");
    let star = head("OPTIONS * HTTP/1.1\r\n\r\n");
    assert_eq!(star.request.uri(), "*");
}

#[test]
fn the_room_map_is_reused_and_emptied() {
    let mut room = HeaderMap::with_capacity(64);
    room.insert("x-old", HeaderValue::from_static("1"));
    let capacity = room.capacity();
    let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nx-new: 2\r\n\r\n"[..]);
    let parsed = head::parse_request(
        &mut buf,
        LIMITS,
        &mut room,
        &mut Vec::new(),
        &mut head::Names::default(),
    )
    .unwrap()
    .unwrap();
    let headers = parsed.request.headers();
    assert!(!headers.contains_key("x-old"));
    assert_eq!(headers["x-new"], "2");
    assert!(headers.capacity() >= capacity);
}

#[test]
fn names_are_made_once_per_connection_and_still_read_as_sent() {
    let mut names = head::Names::default();
    let mut parse = |text: &str| {
        let mut buf = BytesMut::from(text.as_bytes());
        head::parse_request(
            &mut buf,
            LIMITS,
            &mut HeaderMap::new(),
            &mut Vec::new(),
            &mut names,
        )
        .unwrap()
        .unwrap()
        .request
    };
    let first = parse("GET / HTTP/1.1\r\nX-Api-Key: a\r\nx-other: b\r\n\r\n");
    let second = parse("GET / HTTP/1.1\r\nx-api-key: c\r\nX-Api-Key: d\r\nX-OTHER: e\r\n\r\n");
    assert_eq!(first.headers()["x-api-key"], "a");
    let keys: Vec<_> = second.headers().get_all("x-api-key").iter().collect();
    assert_eq!(keys, ["c", "d"]);
    assert_eq!(second.headers()["x-other"], "e");
    // Past the bound, new names still parse.
    let many: String = (0..20).map(|i| format!("x-n{i}: {i}\r\n")).collect();
    let limits = Limits {
        max_head_bytes: 4096,
        max_headers: 32,
    };
    let mut buf = BytesMut::from(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes());
    let third = head::parse_request(
        &mut buf,
        limits,
        &mut HeaderMap::new(),
        &mut Vec::new(),
        &mut names,
    )
    .unwrap()
    .unwrap()
    .request;
    assert_eq!(third.headers()["x-n19"], "19");
    assert_eq!(third.headers().len(), 20);
}

#[test]
fn a_response_is_framed_by_its_length_else_chunked_else_by_close() {
    let none = HeaderMap::new();
    let mut stated = HeaderMap::new();
    stated.insert("content-length", HeaderValue::from_static("12"));
    let ok = StatusCode::OK;
    assert_eq!(
        head::plan(ok, false, &stated, None, true),
        (Send::Length(12), Some(12))
    );
    assert_eq!(
        head::plan(ok, false, &none, Some(3), true),
        (Send::Length(3), Some(3))
    );
    assert_eq!(
        head::plan(ok, false, &none, None, true),
        (Send::Chunked, None)
    );
    assert_eq!(
        head::plan(ok, false, &none, None, false),
        (Send::UntilClose, None)
    );
    // HEAD keeps the length it would have had, and sends nothing.
    assert_eq!(
        head::plan(ok, true, &stated, Some(0), true),
        (Send::Nothing, Some(12))
    );
    assert_eq!(
        head::plan(ok, true, &none, Some(0), true),
        (Send::Nothing, None)
    );
    assert_eq!(
        head::plan(ok, true, &none, Some(7), true),
        (Send::Nothing, Some(7))
    );
    assert_eq!(
        head::plan(StatusCode::NOT_MODIFIED, false, &stated, Some(0), true),
        (Send::Nothing, Some(12))
    );
    for status in [StatusCode::NO_CONTENT, StatusCode::SWITCHING_PROTOCOLS] {
        assert_eq!(
            head::plan(status, false, &stated, Some(0), true),
            (Send::Nothing, None)
        );
    }
}

#[test]
fn a_response_head_carries_one_framing_and_what_the_connection_does() {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("text/plain"));
    headers.insert("content-length", HeaderValue::from_static("99"));
    headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
    headers.insert("connection", HeaderValue::from_static("keep-alive"));
    let date = b"Tue, 01 Dec 2026 10:00:00 GMT";
    let mut out = Vec::new();
    head::encode_response(
        &mut out,
        StatusCode::OK,
        &headers,
        Send::Length(5),
        Some(5),
        Persist::Default,
        date,
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\
         date: Tue, 01 Dec 2026 10:00:00 GMT\r\n\r\n"
    );
    let mut out = Vec::new();
    headers.insert("date", HeaderValue::from_static("upstream's"));
    head::encode_response(
        &mut out,
        StatusCode::NOT_FOUND,
        &headers,
        Send::Chunked,
        None,
        Persist::Close,
        date,
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ndate: upstream's\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    let mut switch = HeaderMap::new();
    switch.insert("connection", HeaderValue::from_static("upgrade"));
    switch.insert("upgrade", HeaderValue::from_static("websocket"));
    let mut out = Vec::new();
    head::encode_response(
        &mut out,
        StatusCode::SWITCHING_PROTOCOLS,
        &switch,
        Send::Nothing,
        None,
        Persist::Default,
        date,
    );
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
    assert!(text.contains("connection: upgrade\r\n"), "{text}");
    let mut out = Vec::new();
    head::encode_response(
        &mut out,
        StatusCode::OK,
        &HeaderMap::new(),
        Send::Length(0),
        Some(0),
        Persist::KeepAlive,
        date,
    );
    assert!(
        String::from_utf8(out)
            .unwrap()
            .contains("connection: keep-alive\r\n")
    );
}

#[test]
fn a_refused_body_is_dropped_only_as_far_as_it_came() {
    let mut buf = BytesMut::from(&b"abcGET"[..]);
    let mut state = Decoding::Length(3);
    assert!(head::discard(&mut state, &mut buf));
    assert_eq!(&buf[..], b"GET");
    let mut buf = BytesMut::from(&b"ab"[..]);
    let mut state = Decoding::Length(3);
    assert!(!head::discard(&mut state, &mut buf));
    assert_eq!(state, Decoding::Length(1));
    let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\n\r\nGET"[..]);
    let mut state = Decoding::Chunked(Chunk::Size);
    assert!(head::discard(&mut state, &mut buf));
    assert_eq!(&buf[..], b"GET");
    let mut buf = BytesMut::from(&b"3\r\nab"[..]);
    let mut state = Decoding::Chunked(Chunk::Size);
    assert!(!head::discard(&mut state, &mut buf));
    let mut buf = BytesMut::from(&b"zz\r\n"[..]);
    let mut state = Decoding::Chunked(Chunk::Size);
    assert!(!head::discard(&mut state, &mut buf));
    assert_eq!(state, Decoding::Failed);
}

#[test]
fn size_lines_are_hex_and_close_the_previous_chunk() {
    for n in [
        1usize,
        9,
        10,
        15,
        16,
        255,
        4096,
        65_535,
        1 << 40,
        usize::MAX,
    ] {
        let mut line = [0u8; 20];
        assert_eq!(
            size_line(false, n, &mut line),
            format!("{n:x}\r\n").as_bytes()
        );
        let mut line = [0u8; 20];
        assert_eq!(
            size_line(true, n, &mut line),
            format!("\r\n{n:x}\r\n").as_bytes()
        );
    }
}

proptest! {
    /// Whatever arrives, the parser answers without panicking, and a head
    /// it accepts says one framing.
    #[test]
    fn any_bytes_get_an_answer(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut buf = BytesMut::from(&bytes[..]);
        if let Ok(Some(parsed)) = parse_bytes(&mut buf) {
            let headers = parsed.request.headers();
            prop_assert!(!(headers.contains_key("content-length") && headers.contains_key("transfer-encoding")));
        }
    }

    /// A valid head with arbitrary field values parses, whatever the split
    /// of its bytes over reads.
    #[test]
    fn a_head_parses_however_it_is_split(value in "[ -~]{0,40}", split in 0usize..80) {
        let text = format!("GET /p HTTP/1.1\r\nx-v: {value}\r\n\r\n");
        let split = split.min(text.len() - 1);
        let mut buf = BytesMut::from(&text.as_bytes()[..split]);
        prop_assert!(parse_bytes(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&text.as_bytes()[split..]);
        let parsed = parse_bytes(&mut buf).unwrap().unwrap();
        prop_assert_eq!(parsed.request.headers()["x-v"].as_bytes(), value.trim().as_bytes());
    }
}

#[test]
fn a_request_waits_behind_the_tasks_ready_with_it() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    rt.block_on(async {
        let (first, second) = (order.clone(), order.clone());
        let a = tokio::spawn(async move {
            first.lock().unwrap().push("a read");
            behind_the_ready_tasks().await;
            first.lock().unwrap().push("a written");
        });
        let b = tokio::spawn(async move {
            second.lock().unwrap().push("b read");
        });
        a.await.unwrap();
        b.await.unwrap();
    });
    assert_eq!(*order.lock().unwrap(), ["a read", "b read", "a written"]);
}

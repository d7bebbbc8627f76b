//! The wire format exhaustively (pure), then the client against a scripted
//! upstream on 127.0.0.1 that checks the bytes it receives.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::BodyExt;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

use super::wire::{self, BodyFraming, Chunk, Decoder, ProtocolError, Step};
use super::*;

fn parts(method: Method, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut req = Request::builder().method(method).uri("/a?b=c");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    req.body(())
        .unwrap_or_else(|e| panic!("{e}"))
        .into_parts()
        .0
}

fn text(b: &Bytes) -> &str {
    std::str::from_utf8(b).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn added_fields_follow_the_requests_own_before_the_framing() {
    let (ip, proto) = (
        http::HeaderValue::from_static("192.0.2.7"),
        http::HeaderValue::from_static("http"),
    );
    let added = [("x-forwarded-for", &ip), ("x-forwarded-proto", &proto)];
    let (head, _) = wire::encode_head(
        &parts(Method::POST, &[("host", "up")]),
        Some(Some(2)),
        added.into_iter(),
    );
    assert_eq!(
        text(&head),
        "POST /a?b=c HTTP/1.1\r\nhost: up\r\nx-forwarded-for: 192.0.2.7\r\n\
         x-forwarded-proto: http\r\ncontent-length: 2\r\n\r\n"
    );
}

#[test]
fn request_heads_frame_their_bodies_as_nginx_does() {
    let (head, framing) = wire::encode_head(
        &parts(Method::GET, &[("host", "up")]),
        None,
        std::iter::empty(),
    );
    assert_eq!(text(&head), "GET /a?b=c HTTP/1.1\r\nhost: up\r\n\r\n");
    assert_eq!(framing, BodyFraming::Length(0));

    let (head, _) = wire::encode_head(&parts(Method::POST, &[]), None, std::iter::empty());
    assert_eq!(
        text(&head),
        "POST /a?b=c HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
    );

    let (head, framing) =
        wire::encode_head(&parts(Method::PUT, &[]), Some(Some(12)), std::iter::empty());
    assert_eq!(
        text(&head),
        "PUT /a?b=c HTTP/1.1\r\ncontent-length: 12\r\n\r\n"
    );
    assert_eq!(framing, BodyFraming::Length(12));

    let (head, framing) = wire::encode_head(
        &parts(Method::POST, &[("content-length", "5")]),
        Some(None),
        std::iter::empty(),
    );
    assert_eq!(
        text(&head),
        "POST /a?b=c HTTP/1.1\r\ncontent-length: 5\r\n\r\n"
    );
    assert_eq!(framing, BodyFraming::Length(5));

    let (head, framing) =
        wire::encode_head(&parts(Method::POST, &[]), Some(None), std::iter::empty());
    assert_eq!(
        text(&head),
        "POST /a?b=c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    assert_eq!(framing, BodyFraming::Chunked);

    // One framing header, whatever the client's said: a length that does
    // not parse is dropped, not sent beside the chunked framing.
    let (head, framing) = wire::encode_head(
        &parts(Method::POST, &[("content-length", "x"), ("a", "b")]),
        Some(None),
        std::iter::empty(),
    );
    assert_eq!(
        text(&head),
        "POST /a?b=c HTTP/1.1\r\na: b\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    assert_eq!(framing, BodyFraming::Chunked);
    let (head, framing) = wire::encode_head(
        &parts(Method::POST, &[("content-length", "x")]),
        Some(Some(3)),
        std::iter::empty(),
    );
    assert_eq!(
        text(&head),
        "POST /a?b=c HTTP/1.1\r\ncontent-length: 3\r\n\r\n"
    );
    assert_eq!(framing, BodyFraming::Length(3));
    let (head, _) = wire::encode_head(
        &parts(Method::GET, &[("content-length", "0")]),
        None,
        std::iter::empty(),
    );
    assert_eq!(
        text(&head),
        "GET /a?b=c HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
    );
}

fn head(raw: &str, head_request: bool) -> Result<Option<wire::Head>, ProtocolError> {
    let mut buf = BytesMut::from(raw);
    wire::parse_head(&mut buf, head_request, &mut HeaderMap::new())
}

fn whole(raw: &str, head_request: bool) -> wire::Head {
    match head(raw, head_request) {
        Ok(Some(h)) => h,
        other => panic!("{raw:?}: {other:?}"),
    }
}

#[test]
fn response_heads_are_framed_by_rfc_9112() {
    let h = whole(
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: 1\r\nX-A: 2\r\n\r\n",
        false,
    );
    assert_eq!(h.response.status(), StatusCode::OK);
    assert_eq!(h.decoder, Decoder::Length(3));
    assert!(h.keep_alive);
    let xa: Vec<_> = h.response.headers().get_all("x-a").iter().collect();
    assert_eq!(xa, ["1", "2"]);

    let h = whole(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        false,
    );
    assert_eq!(h.decoder, Decoder::Chunked(Chunk::Size));
    assert!(h.keep_alive);
    // Framed twice: chunked wins, and the connection is not reused.
    let h = whole(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
        false,
    );
    assert_eq!(h.decoder, Decoder::Chunked(Chunk::Size));
    assert!(!h.keep_alive);
    let h = whole("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false);
    assert_eq!((h.decoder, h.keep_alive), (Decoder::Eof, false));
    let h = whole("HTTP/1.1 200 OK\r\n\r\n", false);
    assert_eq!((h.decoder, h.keep_alive), (Decoder::Eof, false));

    for raw in [
        "HTTP/1.1 204 No Content\r\n\r\n",
        "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
    ] {
        assert_eq!(whole(raw, false).decoder, Decoder::Done, "{raw}");
    }
    let h = whole("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true);
    assert_eq!((h.decoder, h.keep_alive), (Decoder::Done, true));

    let h = whole(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        false,
    );
    assert_eq!(h.response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(!h.keep_alive);

    // Interim responses are skipped.
    let h = whole(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        false,
    );
    assert_eq!(h.response.status(), StatusCode::CREATED);

    let h = whole(
        "HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n",
        false,
    );
    assert!(!h.keep_alive);
    let h = whole("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false);
    assert_eq!(h.response.version(), Version::HTTP_10);
    assert!(!h.keep_alive);
    let h = whole(
        "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
        false,
    );
    assert!(h.keep_alive);

    let h = whole(
        "HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\nContent-Length: 4\r\n\r\n",
        false,
    );
    assert_eq!(h.decoder, Decoder::Length(4));
}

#[test]
fn bad_response_heads_are_errors_and_partial_ones_wait() {
    assert!(matches!(
        head("HTTP/1.1 200 OK\r\nContent-Le", false),
        Ok(None)
    ));
    assert!(matches!(head("", false), Ok(None)));
    for raw in [
        "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: +4\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    ] {
        assert_eq!(
            head(raw, false).err(),
            Some(ProtocolError::BadContentLength),
            "{raw}"
        );
    }
    assert!(matches!(
        head("SSH-2.0-OpenSSH\r\n\r\n", false),
        Err(ProtocolError::Head(_))
    ));
    assert!(matches!(
        head("HTTP/1.1 099 What\r\n\r\n", false),
        Err(ProtocolError::Head(_))
    ));
    let mut many = String::from("HTTP/1.1 200 OK\r\n");
    for i in 0..200 {
        many.push_str(&format!("x-{i}: y\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(head(&many, false).err(), Some(ProtocolError::HeadTooLarge));
    let endless = format!("HTTP/1.1 200 OK\r\nx: {}", "y".repeat(wire::MAX_HEAD_BYTES));
    assert_eq!(
        head(&endless, false).err(),
        Some(ProtocolError::HeadTooLarge)
    );
}

/// Decodes a whole chunked body fed in the given pieces.
fn decode(pieces: &[&[u8]]) -> Result<(Vec<u8>, Option<HeaderMap>), ProtocolError> {
    let mut state = Chunk::Size;
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    let mut trailers = None;
    let mut pieces = pieces.iter();
    loop {
        match wire::decode_chunk(&mut state, &mut buf)? {
            Step::Data(d) => data.extend_from_slice(&d),
            Step::Trailers(t) => {
                trailers = Some(t);
            }
            Step::End => return Ok((data, trailers)),
            Step::More => match pieces.next() {
                Some(p) => buf.extend_from_slice(p),
                None => return Err(ProtocolError::IncompleteBody),
            },
        }
        if trailers.is_some() {
            return Ok((data, trailers));
        }
    }
}

#[test]
fn chunked_bodies_decode_with_extensions_and_trailers() {
    let raw = b"5;name=value\r\nhello\r\n6 \r\n world\r\n0\r\nx-sum: 1\r\n\r\n";
    let (data, trailers) = decode(&[raw]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(data, b"hello world");
    assert_eq!(
        trailers.and_then(|t| t.get("x-sum").cloned()),
        Some(http::HeaderValue::from_static("1"))
    );
    let (data, trailers) = decode(&[b"0\r\n\r\n"]).unwrap_or_else(|e| panic!("{e}"));
    assert!(data.is_empty() && trailers.is_none());
    for bad in [
        &b"x\r\n"[..],
        b"5;a\nb\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"-5\r\nhello\r\n",
        b"11111111111111111\r\n",
        b"5 5\r\nhello\r\n",
    ] {
        assert_eq!(
            decode(&[bad]).err(),
            Some(ProtocolError::BadChunk),
            "{bad:?}"
        );
    }
    let long_line = vec![b'1'; 2000];
    assert_eq!(decode(&[&long_line]).err(), Some(ProtocolError::BadChunk));
}

proptest! {
    /// Whatever the chunks and however the bytes arrive, what the encoder
    /// writes the decoder reads back whole.
    #[test]
    fn chunked_encoding_round_trips_however_it_is_split(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..8),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut wire_bytes = Vec::new();
        let mut open = false;
        for c in &chunks {
            wire_bytes.extend_from_slice(&wire::chunk_size_line(open, c.len()));
            wire_bytes.extend_from_slice(c);
            open = true;
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        wire_bytes.extend_from_slice(&wire::last_chunk(open, Some(&trailers)));
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(wire_bytes.len() + 1)).collect();
        at.push(0);
        at.push(wire_bytes.len());
        at.sort_unstable();
        let pieces: Vec<&[u8]> = at.windows(2).map(|w| &wire_bytes[w[0]..w[1]]).collect();
        let (data, got) = decode(&pieces).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(data, chunks.concat());
        prop_assert_eq!(got, Some(trailers));
    }
}

/// A listener on an ephemeral port of 127.0.0.1, and its address.
async fn bound() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    (listener, addr.to_string())
}

/// A scripted upstream: for each connection it accepts, reads one request
/// head (and a body as `read_body` says), sends it back on `seen`, and
/// writes the next answer from `answers`; keeps the connection open unless
/// the answer says `Connection: close`.
async fn scripted(
    answers: Vec<&'static str>,
) -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(usize, String)>,
) {
    let (listener, addr) = bound().await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut answers = answers.into_iter();
        let mut conn_no = 0;
        while let Ok((mut tcp, _)) = listener.accept().await {
            conn_no += 1;
            loop {
                // Requests in these tests end with an empty line or a
                // last chunk, and fit in one read.
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                loop {
                    let n = tcp.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let s = String::from_utf8_lossy(&got);
                    let head_end = s.find("\r\n\r\n");
                    let chunked = s.contains("transfer-encoding: chunked");
                    let length = s
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    let done = match head_end {
                        Some(end) if chunked => s[end..].ends_with("0\r\n\r\n"),
                        Some(end) => got.len() >= end + 4 + length,
                        None => false,
                    };
                    if done {
                        break;
                    }
                }
                if got.is_empty() {
                    break;
                }
                let _ = tx.send((conn_no, String::from_utf8_lossy(&got).into_owned()));
                let Some(answer) = answers.next() else { return };
                if tcp.write_all(answer.as_bytes()).await.is_err() {
                    break;
                }
                if answer.contains("Connection: close") {
                    break;
                }
            }
        }
    });
    (addr, rx)
}

fn client(addr: &str) -> Client {
    let (host, port) = addr.rsplit_once(':').unwrap_or_else(|| panic!("{addr}"));
    Client::new(
        host.to_owned(),
        port.parse().unwrap_or_else(|e| panic!("{e}")),
        Duration::from_secs(2),
        4,
        Duration::from_secs(30),
    )
}

fn request(method: Method, body: Option<Vec<Bytes>>) -> Request<SentBody> {
    let body: super::super::upstream::RequestBody = match body {
        None => http_body_util::Empty::new()
            .map_err(|e| match e {})
            .boxed_unsync(),
        Some(pieces) => http_body_util::StreamBody::new(futures_util::stream::iter(
            pieces.into_iter().map(|p| Ok(http_body::Frame::data(p))),
        ))
        .boxed_unsync(),
    };
    let progress = std::sync::Arc::new(super::super::upstream::Progress::for_test());
    Request::builder()
        .method(method)
        .uri("/x")
        .header("host", "up")
        .body(SentBody::for_test(body, progress))
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn body_of(resp: Response<ResponseBody>) -> String {
    let bytes = resp
        .into_body()
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn kept_alive_connections_carry_one_exchange_after_another() {
    let (addr, mut seen) = scripted(vec![
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n1\r\nb\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nc",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nd",
    ])
    .await;
    let client = client(&addr);
    for want in ["ok", "ab", "c", "d"] {
        let resp = client
            .send(
                Outgoing::new(request(Method::GET, None), std::iter::empty()),
                Instant::now(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(body_of(resp).await, want);
    }
    let mut conns = Vec::new();
    while let Ok((conn, req)) = seen.try_recv() {
        assert_eq!(req, "GET /x HTTP/1.1\r\nhost: up\r\n\r\n");
        conns.push(conn);
    }
    // The third answer closed its connection: the fourth needed another.
    assert_eq!(conns, [1, 1, 1, 2]);
    assert_eq!(client.idle(), 1);
}

#[tokio::test]
async fn request_bodies_go_chunked_or_by_length_and_whole() {
    let (addr, mut seen) = scripted(vec![
        "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    ])
    .await;
    let client = client(&addr);
    let pieces = vec![Bytes::from_static(b"hello"), Bytes::from_static(b" world")];
    let resp = client
        .send(
            Outgoing::new(request(Method::POST, Some(pieces)), std::iter::empty()),
            Instant::now(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(body_of(resp).await, "");
    let (_, req) = seen.recv().await.unwrap_or_else(|| panic!("no request"));
    assert_eq!(
        req,
        "POST /x HTTP/1.1\r\nhost: up\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    );

    let mut req = request(Method::PUT, Some(vec![Bytes::from_static(b"abc")]));
    req.headers_mut()
        .insert("content-length", http::HeaderValue::from_static("3"));
    let resp = client
        .send(Outgoing::new(req, std::iter::empty()), Instant::now())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body_of(resp).await, "");
    let (conn, req) = seen.recv().await.unwrap_or_else(|| panic!("no request"));
    assert_eq!(
        req,
        "PUT /x HTTP/1.1\r\nhost: up\r\ncontent-length: 3\r\n\r\nabc"
    );
    assert_eq!(conn, 1, "the connection was reused");
}

#[tokio::test]
async fn a_kept_alive_connection_the_upstream_closed_is_not_used() {
    // Answers once per connection, then closes it without saying so.
    let (listener, addr) = bound().await;
    let (tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let _ = tcp.read(&mut buf).await;
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
            drop(tcp);
            let _ = tx.send(());
        }
    });
    let client = client(&addr);
    for _ in 0..3 {
        let resp = client
            .send(
                Outgoing::new(request(Method::GET, None), std::iter::empty()),
                Instant::now(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(body_of(resp).await, "ok");
        closed.recv().await;
    }
}

#[tokio::test]
async fn an_upstream_cut_mid_body_is_an_error_not_an_end() {
    let (addr, _seen) = scripted(vec![
        "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nshort",
    ])
    .await;
    let client = client(&addr);
    let resp = client
        .send(
            Outgoing::new(request(Method::GET, None), std::iter::empty()),
            Instant::now(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let err = loop {
        match body.frame().await {
            Some(Ok(frame)) => got.extend_from_slice(&frame.into_data().unwrap_or_default()),
            Some(Err(e)) => break e,
            None => panic!("a cut body read as whole"),
        }
    };
    assert_eq!(got, b"short");
    assert!(err.to_string().contains("mid-body"), "{err}");
    // The access log asks this to tell a whole body from a cut one.
    assert!(!body.is_end_stream());
    assert_eq!(client.idle(), 0);
}

#[tokio::test]
async fn a_response_without_a_body_gives_its_connection_back_unread() {
    let (addr, mut seen) = scripted(vec![
        "HTTP/1.1 204 No Content\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        // To a HEAD: the length of what a GET would get, and no body.
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
    ])
    .await;
    let client = client(&addr);
    // hyper never polls a body that says it has ended: these are dropped
    // unread, as hyper's server drops them.
    for status in [StatusCode::NO_CONTENT, StatusCode::OK] {
        let resp = client
            .send(
                Outgoing::new(request(Method::GET, None), std::iter::empty()),
                Instant::now(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resp.status(), status);
        assert!(resp.body().is_end_stream());
        drop(resp);
        assert_eq!(client.idle(), 1, "after {status}");
    }
    let mut head_req = request(Method::HEAD, None);
    *head_req.method_mut() = Method::HEAD;
    let resp = client
        .send(Outgoing::new(head_req, std::iter::empty()), Instant::now())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        resp.body().is_end_stream(),
        "HEAD: no body whatever the length says"
    );
    drop(resp);
    assert_eq!(client.idle(), 1);
    let mut conns = Vec::new();
    while let Ok((conn, _)) = seen.try_recv() {
        conns.push(conn);
    }
    assert_eq!(conns, [1, 1, 1]);
}

#[tokio::test]
async fn request_trailers_are_not_forwarded() {
    let (addr, mut seen) = scripted(vec!["HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]).await;
    let client = client(&addr);
    let mut trailers = HeaderMap::new();
    trailers.insert("x-keygate-key-id", http::HeaderValue::from_static("forged"));
    let frames = vec![
        Ok(http_body::Frame::data(Bytes::from_static(b"abc"))),
        Ok(http_body::Frame::trailers(trailers)),
    ];
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
    let progress = std::sync::Arc::new(super::super::upstream::Progress::for_test());
    let req = Request::builder()
        .method(Method::POST)
        .uri("/x")
        .header("host", "up")
        .body(SentBody::for_test(body, progress))
        .unwrap_or_else(|e| panic!("{e}"));
    let resp = client
        .send(Outgoing::new(req, std::iter::empty()), Instant::now())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop(resp);
    let (_, got) = seen.recv().await.unwrap_or_else(|| panic!("no request"));
    assert_eq!(
        got,
        "POST /x HTTP/1.1\r\nhost: up\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    );
}

/// An upstream that answers 413 as soon as it has the request head, then
/// reads nothing more: it closes the connection (`close`, so the writes
/// that follow fail) or holds it open (so the upload is stuck). Either way
/// the answer is the answer, read whole, and the connection is not reused.
async fn early_answer(close: bool) {
    let (listener, addr) = bound().await;
    let (hold, mut held) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        if let Ok((mut tcp, _)) = listener.accept().await {
            let mut buf = vec![0u8; 1024];
            let _ = tcp.read(&mut buf).await;
            let _ = tcp
                .write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 4\r\n\r\nnope")
                .await;
            if !close {
                let _ = hold.send(tcp);
            }
        }
    });
    let client = client(&addr);
    // 64 MiB in 64 KiB pieces: far more than the sockets buffer.
    static PIECE: [u8; 65536] = [b'x'; 65536];
    let pieces = vec![Bytes::from_static(&PIECE); 1024];
    let resp = client
        .send(
            Outgoing::new(request(Method::POST, Some(pieces)), std::iter::empty()),
            Instant::now(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body_of(resp).await, "nope");
    assert_eq!(
        client.idle(),
        0,
        "a connection with half a request is not reused"
    );
    drop(held.recv().await);
}

#[tokio::test]
async fn an_early_answer_stands_when_the_upstream_closes_mid_upload() {
    early_answer(true).await;
}

#[tokio::test]
async fn an_early_answer_is_read_whole_while_the_upload_is_stuck() {
    early_answer(false).await;
}

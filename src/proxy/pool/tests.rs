//! The pool against a real hyper upstream on 127.0.0.1 that counts the
//! connections it accepts: what is reused, what is not, and that a request
//! never fails because of a connection the pool kept.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::config::UpstreamConfig;
use crate::metrics::Metrics;
use crate::proxy::ProxyBody;
use crate::proxy::upstream::Upstream;

/// An upstream answering by path: `/close` with `Connection: close`,
/// `/chunked` with a chunked body, `/big` with 1 MiB, anything else "ok".
/// Returns its address and the number of connections it has accepted.
async fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let path = req.uri().path().to_string();
                    // Read the request body whole before answering.
                    let _ = req.into_body().collect().await;
                    let body: http_body_util::combinators::BoxBody<Bytes, Infallible> =
                        match path.as_str() {
                            "/chunked" => StreamBody::new(futures_util::stream::iter([
                                Ok(Frame::data(Bytes::from_static(b"o"))),
                                Ok(Frame::data(Bytes::from_static(b"k"))),
                            ]))
                            .boxed(),
                            "/big" => Full::new(Bytes::from(vec![b'x'; 1 << 20])).boxed(),
                            _ => Full::new(Bytes::from_static(b"ok")).boxed(),
                        };
                    let mut resp = Response::new(body);
                    if path == "/close" {
                        resp.headers_mut().insert(
                            http::header::CONNECTION,
                            "close".parse().unwrap_or_else(|e| panic!("{e:?}")),
                        );
                    }
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, accepted)
}

fn upstream(addr: SocketAddr, idle_timeout: Duration) -> Upstream {
    let cfg = UpstreamConfig {
        url: format!("http://{addr}")
            .parse()
            .unwrap_or_else(|e| panic!("{e}")),
        connect_timeout: Duration::from_secs(5),
        response_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
        ca: None,
        pool_idle_timeout: idle_timeout,
        pool_max_idle: 16,
        protocol: crate::config::UpstreamProtocol::Http1,
    };
    Upstream::new(&cfg, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}"))
}

/// One exchange through the upstream; reads the response `read` bytes far
/// (all of it with `usize::MAX`) and drops it, as hyper's server does.
async fn exchange(up: &Upstream, path: &str, body: &'static [u8], read: usize) -> u16 {
    let req = Request::builder()
        .method(if body.is_empty() { "GET" } else { "POST" })
        .uri(path)
        .body(
            Full::new(Bytes::from_static(body))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let out = up
        .prepare(
            req,
            crate::proxy::headers::Added::for_test(),
            tokio::time::Instant::now(),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
    let timer = std::pin::pin!(tokio::time::sleep_until(tokio::time::Instant::now()));
    let (resp, progress, lease) = up
        .send(out, timer)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let status = resp.status().as_u16();
    let mut body = ProxyBody::upstream(
        resp.into_body(),
        Arc::new(Metrics::new().unwrap_or_else(|e| panic!("{e}"))),
        Duration::from_secs(5),
        progress,
        Some(lease),
    );
    let mut seen = 0;
    while seen < read {
        match body.frame().await {
            Some(Ok(f)) => seen += f.data_ref().map_or(0, |d| d.len()),
            Some(Err(e)) => panic!("{e}"),
            None => break,
        }
    }
    drop(body);
    status
}

#[tokio::test]
async fn whole_exchanges_reuse_one_connection() {
    let (addr, accepted) = counting_upstream().await;
    let up = upstream(addr, Duration::from_secs(90));
    for i in 0..30 {
        let (path, body): (&str, &'static [u8]) = match i % 3 {
            0 => ("/", b""),
            1 => ("/post", b"{\"points\": 5}"),
            _ => ("/chunked", b""),
        };
        assert_eq!(exchange(&up, path, body, usize::MAX).await, 200);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "GET, POST and chunked answers share one connection"
    );
    assert_eq!(up.pool_idle(), 1);
}

#[tokio::test]
async fn connection_close_and_cut_bodies_are_not_reused_and_nothing_fails() {
    let (addr, accepted) = counting_upstream().await;
    let up = upstream(addr, Duration::from_secs(90));
    for _ in 0..10 {
        assert_eq!(exchange(&up, "/close", b"", usize::MAX).await, 200);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        10,
        "each Connection: close answer ends its connection"
    );
    // A response dropped half-read leaves its connection mid-body: closed.
    for _ in 0..5 {
        assert_eq!(exchange(&up, "/big", b"", 1).await, 200);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 15);
    assert_eq!(exchange(&up, "/", b"", usize::MAX).await, 200);
    assert_eq!(exchange(&up, "/", b"", usize::MAX).await, 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 16);
}

#[tokio::test]
async fn idle_connections_past_the_timeout_are_not_taken() {
    let (addr, accepted) = counting_upstream().await;
    // Zero: every idle connection has been idle too long when next looked at.
    let up = upstream(addr, Duration::ZERO);
    for _ in 0..5 {
        assert_eq!(exchange(&up, "/", b"", usize::MAX).await, 200);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 5);
}

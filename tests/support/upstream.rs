//! `TestUpstream`: a hyper HTTP/1.1 server on 127.0.0.1:0 that records every
//! request it receives and answers according to the path:
//! - `/slow/<ms>`: waits, then answers;
//! - `/bytes/<n>`: streams n bytes (in 64 KiB chunks);
//! - `/stream/<n>`: the same without a length (chunked);
//! - `/echo-body`: streams the request body back;
//! - `/die-mid-body`: sends a head promising 1 MiB, some bytes, then drops;
//! - `/die-mid-stream`: the same without a length (chunked);
//! - `/stall-mid-body`: the same head and bytes, then silence for ever;
//! - `/ws`: answers 101 and echoes bytes on the upgraded connection;
//! - anything else: 200 with a small JSON body.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
}

pub struct TestUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
    /// Connection tasks, so that `stop` really takes the server down.
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

type Body = BoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// `total` bytes in 64 KiB chunks, then (if `fail`) an error instead of the end.
struct Chunks {
    left: usize,
    index: usize,
    fail: bool,
    /// Before failing, a pause, so that the head and first bytes are flushed.
    pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// After the bytes, neither an end nor an error: silence.
    stall: bool,
}

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.left == 0 {
            if this.stall {
                return std::task::Poll::Pending;
            }
            if this.fail {
                let pause = this.pause.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep(Duration::from_millis(100)))
                });
                std::task::ready!(pause.as_mut().poll(cx));
            }
            return std::task::Poll::Ready(
                this.fail
                    .then(|| Err(std::io::Error::other("upstream died"))),
            );
        }
        let len = this.left.min(65536);
        this.left -= len;
        this.index += 1;
        std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![
            (this.index % 251)
                as u8;
            len
        ])))))
    }
}

impl TestUpstream {
    pub async fn start() -> TestUpstream {
        Self::start_inner(None).await
    }

    /// The same upstream behind TLS with the given PEM certificate and key.
    pub async fn start_tls(cert_pem: &str, key_pem: &str) -> TestUpstream {
        use rustls_pki_types::pem::PemObject;
        let certs =
            vec![rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()];
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        Self::start_inner(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_inner(tls: Option<tokio_rustls::TlsAcceptor>) -> TestUpstream {
        Self::start_at("127.0.0.1:0".parse().unwrap(), tls).await
    }

    /// A plain upstream on a given address (to restart one where it was).
    pub async fn start_on(addr: SocketAddr) -> TestUpstream {
        Self::start_at(addr, None).await
    }

    async fn start_at(addr: SocketAddr, tls: Option<tokio_rustls::TlsAcceptor>) -> TestUpstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let handles = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                let tls = tls.clone();
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let record = record.clone();
                        async move { Ok::<_, Infallible>(answer(req, &record).await) }
                    });
                    let builder = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        None => {
                            builder
                                .serve_connection(TokioIo::new(stream), svc)
                                .with_upgrades()
                                .await
                        }
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(s) => {
                                builder
                                    .serve_connection(TokioIo::new(s), svc)
                                    .with_upgrades()
                                    .await
                            }
                            Err(_) => Ok(()),
                        },
                    };
                });
                handles.lock().unwrap().push(conn.abort_handle());
            }
        });
        TestUpstream {
            addr,
            seen,
            task,
            conns,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL for a TLS upstream, by the certificate's name.
    pub fn https_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The last request seen; panics if there was none.
    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream saw no request")
    }

    /// Stops accepting and closes every open connection.
    pub fn stop(&self) {
        self.task.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn answer(mut req: Request<Incoming>, record: &Mutex<Vec<Seen>>) -> Response<Body> {
    record.lock().unwrap().push(Seen {
        method: req.method().clone(),
        uri: req.uri().to_string(),
        headers: req.headers().clone(),
    });
    let path = req.uri().path().to_string();
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        return Response::new(full("slow done"));
    }
    let sized = path.strip_prefix("/bytes/");
    if let Some(n) = sized.or_else(|| path.strip_prefix("/stream/")) {
        let total: usize = n.parse().unwrap_or(0);
        let mut r = Response::new(
            Chunks {
                left: total,
                index: 0,
                fail: false,
                pause: None,
                stall: false,
            }
            .boxed(),
        );
        if sized.is_some() {
            r.headers_mut()
                .insert("content-length", total.to_string().parse().unwrap());
        }
        return r;
    }
    if path == "/echo-body" {
        let (parts, body) = req.into_parts();
        let bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let mut r = Response::new(full(bytes));
        if let Some(ct) = parts.headers.get("content-type") {
            r.headers_mut().insert("content-type", ct.clone());
        }
        return r;
    }
    if path == "/die-mid-body" || path == "/die-mid-stream" {
        // Some bytes, then an error: hyper aborts the connection mid-body.
        let mut r = Response::new(
            Chunks {
                left: 1000,
                index: 0,
                fail: true,
                pause: None,
                stall: false,
            }
            .boxed(),
        );
        if path == "/die-mid-body" {
            r.headers_mut()
                .insert("content-length", "1048576".parse().unwrap());
        }
        return r;
    }
    if path == "/stall-mid-body" {
        let mut r = Response::new(
            Chunks {
                left: 1000,
                index: 0,
                fail: false,
                pause: None,
                stall: true,
            }
            .boxed(),
        );
        r.headers_mut()
            .insert("content-length", "1048576".parse().unwrap());
        return r;
    }
    if path == "/ws" {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = upgrade.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut r = Response::new(full(""));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        r.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        return r;
    }
    let mut r = Response::new(full("{\"upstream\":true}"));
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r.headers_mut().insert("x-upstream", "yes".parse().unwrap());
    r.headers_mut()
        .insert("connection", "keep-alive, x-hop".parse().unwrap());
    r.headers_mut()
        .insert("x-hop", "must be stripped".parse().unwrap());
    r
}

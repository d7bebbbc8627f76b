//! Small clients: HTTP/1.1 via hyper's pooled client, HTTP/2 (h2c prior
//! knowledge and TLS with ALPN) via hyper's connection API, and raw TCP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// Collects a whole response.
    pub async fn read(resp: http::Response<hyper::body::Incoming>) -> Reply {
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The gateway's error code, or "" for a non-JSON body.
    pub fn code(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn build(method: &str, url: &str, headers: &[(&str, &str)], body: Bytes) -> Request<Full<Bytes>> {
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Full::new(body)).unwrap()
}

/// One HTTP/1.1 request.
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let resp = client
        .request(build(method, url, headers, body.into()))
        .await
        .unwrap();
    Reply::read(resp).await
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    send("GET", url, headers, Bytes::new()).await
}

/// One request over HTTP/2 on an already-connected stream.
pub async fn send_h2<S>(io: S, method: &str, url: &str, headers: &[(&str, &str)]) -> Reply
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(build(method, url, headers, Bytes::new()))
        .await
        .unwrap();
    Reply::read(resp).await
}

/// An h2c connection (prior knowledge) to send several requests on; the
/// connection's driver runs in a task of its own.
pub async fn h2c_connect(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// One request on a connection from `h2c_connect`; the error when the
/// stream was refused or reset.
pub async fn send_on(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Reply, hyper::Error> {
    let resp = sender
        .send_request(build(method, url, headers, body.into()))
        .await?;
    Ok(Reply::read(resp).await)
}

/// HTTP/2 with prior knowledge over plain TCP (h2c).
pub async fn get_h2c(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let tcp = TcpStream::connect(addr).await.unwrap();
    send_h2(tcp, "GET", &format!("http://{addr}{path}"), headers).await
}

/// A TLS client trusting `ca_pem`, offering `alpn`.
pub async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

/// A self-signed certificate for `localhost`: (cert PEM, key PEM).
pub fn self_signed() -> (String, String) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    (cert.cert.pem(), cert.signing_key.serialize_pem())
}

/// A self-signed certificate for localhost valid until the given day, and
/// its key, in PEM.
pub fn self_signed_until(year: i32, month: u8, day: u8) -> (String, String) {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    params.not_after = rcgen::date_time_ymd(year, month, day);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Writes raw bytes and reads until the server closes (or 5 s pass).
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Scrapes `/metrics` and returns the value of one exact series, or 0.
pub async fn metric(ops: SocketAddr, series: &str) -> f64 {
    let text = get(&format!("http://{ops}/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&text.body).into_owned();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Polls `/metrics` until `series` satisfies `wanted`; panics after 5 s.
pub async fn wait_for_metric(ops: SocketAddr, series: &str, wanted: impl Fn(f64) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let value = metric(ops, series).await;
        if wanted(value) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} stayed at {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a WebSocket upgrade for `/ws` with `key` and reads the response
/// head; returns the connection (a tunnel if the head is 101) and the head,
/// lowercased.
pub async fn websocket_upgrade(addr: SocketAddr, key: &str) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nx-api-key: {key}\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    (tcp, String::from_utf8_lossy(&head).to_lowercase())
}

/// Opens a WebSocket tunnel to `addr` with `key` and checks that the
/// backend echoes `probe` through it.
pub async fn open_echo_tunnel(addr: SocketAddr, key: &str, probe: &[u8]) -> TcpStream {
    let (mut tcp, head) = websocket_upgrade(addr, key).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    tcp.write_all(probe).await.unwrap();
    let mut echoed = vec![0u8; probe.len()];
    tcp.read_exact(&mut echoed).await.unwrap();
    assert_eq!(echoed, probe);
    tcp
}

/// The resident set size of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

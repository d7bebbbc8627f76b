//! The upstream: a pooled, kept-alive hyper client (plain HTTP or HTTPS via
//! rustls), with the connect and response timeouts from the config, and the
//! classification of its failures into 502/504 and metric kinds.
//!
//! The bounds on a forwarded request, stage by stage:
//! - `connect_timeout` covers the TCP connect and the TLS handshake;
//! - `response_timeout` runs from forwarding until the response head, but
//!   only while the upstream owes the next step: it is restarted each time
//!   the upstream accepts a piece of the request body, and paused while the
//!   gateway waits for the client's next piece. So an upstream that stops
//!   reading the body is cut (504), while a slow upload that keeps moving is
//!   not;
//! - `server.body_timeout` bounds the client's silence mid-body (408, or a
//!   closed connection if the response has started).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, Uri};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::time::Instant;

use super::body::BodyError;
use super::h1;
use super::headers::Added;
use super::pool::{Connect, Lease, Pool, Sender};
use super::respond::ProxyError;
use super::stall::Stall;
use crate::config::UpstreamConfig;
use crate::metrics::UpstreamErrorKind;

/// Bytes one upstream connection buffers at most in each direction.
pub const UPSTREAM_BUFFER_BYTES: usize = 64 * 1024;

/// A request body on its way upstream, whatever it came from.
pub type RequestBody = UnsyncBoxBody<Bytes, BodyError>;

/// The upstream cannot be set up from the config (its TLS, its CA file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamError(pub String);

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UpstreamError {}

/// Who speaks to the upstream: keygate itself (`h1`) for plain HTTP/1.1,
/// hyper's client for HTTPS and HTTP/2.
enum Engine {
    Own(h1::Client),
    Hyper(Pool),
}

/// A response body from the upstream, whichever engine read its head.
pub enum UpstreamBody {
    Own(h1::ResponseBody),
    Hyper(Incoming),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            UpstreamBody::Own(b) => Pin::new(b).poll_frame(cx),
            UpstreamBody::Hyper(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BodyError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Own(b) => b.is_end_stream(),
            UpstreamBody::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Own(b) => b.size_hint(),
            UpstreamBody::Hyper(b) => b.size_hint(),
        }
    }
}

/// The backend every allowed request goes to.
pub struct Upstream {
    engine: Engine,
    /// `upstream.protocol = "http2"`: requests go as HTTP/2 with an
    /// absolute target (`:scheme`, `:authority`).
    http2: Option<(http::uri::Scheme, http::uri::Authority)>,
    /// `Host` for a request that came without one (HTTP/2 without
    /// `:authority`).
    host: HeaderValue,
    response_timeout: Duration,
    read_timeout: Duration,
    body_timeout: Duration,
}

/// Why a forwarded request failed: what to answer, and what to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendError {
    pub error: ProxyError,
    /// The upstream's failure, for `keygate_upstream_errors_total`; `None`
    /// when the client was at fault (silent mid-body).
    pub kind: Option<UpstreamErrorKind>,
}

impl Upstream {
    /// `body_timeout` is `server.body_timeout`: the client's silence mid-body.
    pub fn new(cfg: &UpstreamConfig, body_timeout: Duration) -> Result<Upstream, UpstreamError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        let tls = client_tls(cfg).map_err(UpstreamError)?;
        let http2 = cfg.protocol == crate::config::UpstreamProtocol::Http2;
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        // h2 over TLS is chosen by ALPN; h2c (http://) speaks it at once.
        let connector = if http2 {
            tls.enable_http2().wrap_connector(http)
        } else {
            tls.enable_http1().wrap_connector(http)
        };
        let (scheme, authority) = match (cfg.url.scheme(), cfg.url.authority()) {
            (Some(s), Some(a)) => (s.clone(), a.clone()),
            _ => {
                return Err(UpstreamError(format!(
                    "upstream.url {} needs a scheme and a host",
                    cfg.url
                )));
            }
        };
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|e| UpstreamError(format!("upstream.url {}: {e}", cfg.url)))?;
        let origin = Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query("/")
            .build()
            .map_err(|e| UpstreamError(format!("upstream.url {}: {e}", cfg.url)))?;
        let mut h1 = http1::Builder::new();
        // What one upstream connection may buffer of a request body the
        // upstream is slow to take (and of a response head): part of the
        // memory bound per request in the README.
        h1.max_buf_size(UPSTREAM_BUFFER_BYTES);
        let connector = BoundedConnector {
            inner: connector,
            limit: cfg.connect_timeout,
        };
        let target = match (origin.scheme(), origin.authority()) {
            (Some(s), Some(a)) => (s.clone(), a.clone()),
            _ => return Err(UpstreamError(format!("upstream.url {}: no host", cfg.url))),
        };
        let connect = if http2 {
            http2_connect(connector, origin)
        } else {
            http1_connect(connector, origin, h1)
        };
        let plain = !http2 && target.0 == http::uri::Scheme::HTTP;
        let engine = if plain {
            let host = target.1.host();
            // An IPv6 literal comes in brackets, which a socket address
            // does not take.
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            Engine::Own(h1::Client::new(
                host.to_owned(),
                target.1.port_u16().unwrap_or(80),
                cfg.connect_timeout,
                cfg.pool_max_idle,
                cfg.pool_idle_timeout,
            ))
        } else {
            Engine::Hyper(Pool::new(
                connect,
                cfg.pool_max_idle,
                cfg.pool_idle_timeout,
                http2,
            ))
        };
        Ok(Upstream {
            engine,
            http2: http2.then_some(target),
            host,
            response_timeout: cfg.response_timeout,
            read_timeout: cfg.read_timeout,
            body_timeout,
        })
    }

    /// True when the upstream speaks HTTP/2.
    pub fn is_http2(&self) -> bool {
        self.http2.is_some()
    }

    /// The request target sent upstream: origin-form, the path and query.
    pub fn target(&self, path_and_query: Option<PathAndQuery>) -> Uri {
        Uri::from(path_and_query.unwrap_or_else(|| PathAndQuery::from_static("/")))
    }

    /// Connections waiting in the pool now.
    #[cfg(test)]
    pub fn pool_idle(&self) -> usize {
        match &self.engine {
            Engine::Own(client) => client.idle(),
            Engine::Hyper(pool) => pool.idle(),
        }
    }

    /// The longest silence allowed mid-body (see `ProxyBody`).
    pub fn read_timeout(&self) -> std::time::Duration {
        self.read_timeout
    }

    /// Readies a request for `send`, before any wait: its target and Host,
    /// its `Progress`, and for our own HTTP/1.1 engine its head encoded. So
    /// the future that sends it carries what is left, not the request.
    /// `sent_at` is now: the response timer runs from it.
    pub fn prepare(
        &self,
        mut req: Request<RequestBody>,
        added: Added,
        sent_at: Instant,
    ) -> Result<Outgoing, SendError> {
        if let Some((scheme, authority)) = &self.http2 {
            // HTTP/2 carries the host in `:authority`: the client's Host,
            // else the upstream's.
            let authority = req
                .headers_mut()
                .remove(HOST)
                .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
                .unwrap_or_else(|| authority.clone());
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            parts.scheme = Some(scheme.clone());
            parts.authority = Some(authority);
            if parts.path_and_query.is_none() {
                parts.path_and_query = Some(PathAndQuery::from_static("/"));
            }
            *req.uri_mut() = Uri::from_parts(parts).map_err(|_| SendError {
                error: ProxyError::BadTarget,
                kind: None,
            })?;
            *req.version_mut() = http::Version::HTTP_2;
        } else if !req.headers().contains_key(HOST) {
            req.headers_mut().insert(HOST, self.host.clone());
        }
        let progress = Arc::new(Progress::new(sent_at));
        let req = req.map(|inner| SentBody::new(inner, progress.clone(), self.body_timeout));
        let message = match &self.engine {
            Engine::Own(_) => Message::Own(h1::Outgoing::new(req, added.fields())),
            // Boxed: HTTPS and HTTP/2 backends only, and the request
            // would make every `Outgoing` (and the futures holding one) larger.
            Engine::Hyper(_) => {
                let mut req = req;
                added.insert_into(req.headers_mut());
                Message::Hyper(Box::new(req))
            }
        };
        Ok(Outgoing {
            message,
            progress,
            sent_at,
        })
    }

    /// Sends what `prepare` readied and waits for the response head, within
    /// the bounds described at the top of this file. With the response, the
    /// request's `Progress`: its body may still be on its way (and the client
    /// may still go silent) while the response streams back.
    pub async fn send(
        &self,
        out: Outgoing,
        timer: Pin<&mut tokio::time::Sleep>,
    ) -> Result<(Response<UpstreamBody>, Arc<Progress>, Lease), SendError> {
        let Outgoing {
            message,
            progress,
            sent_at,
        } = out;
        let fail = |error, kind| SendError { error, kind };
        let exchange = async {
            match (&self.engine, message) {
                (Engine::Own(client), Message::Own(out)) => match client.send(out, sent_at).await {
                    Ok(resp) => Ok((resp.map(UpstreamBody::Own), Lease::none())),
                    Err(e) => {
                        tracing::debug!(error = %e, "upstream exchange failed");
                        match e {
                            h1::Error::Connect(_) => Err(Failure::Connect),
                            _ => Err(Failure::Protocol),
                        }
                    }
                },
                // Boxed: HTTPS and HTTP/2 backends only, and every
                // plain request's future would otherwise carry its size.
                (Engine::Hyper(pool), Message::Hyper(req)) => {
                    Box::pin(self.via_hyper(pool, *req, sent_at)).await
                }
                // `prepare` makes the message for the engine it sees.
                (Engine::Own(_), Message::Hyper(_)) | (Engine::Hyper(_), Message::Own(_)) => {
                    Err(Failure::Protocol)
                }
            }
        };
        // Pinned where they are: moved into `select!`, each would be laid
        // out twice in this future, and copied on the first poll.
        let exchange = std::pin::pin!(exchange);
        let overdue = std::pin::pin!(progress.response_overdue(self.response_timeout, timer));
        tokio::select! {
            result = exchange => match result {
                Ok((resp, lease)) => Ok((resp, progress.clone(), lease)),
                Err(_) if progress.client_timed_out.load(Ordering::Acquire) => {
                    Err(fail(ProxyError::RequestTimeout, None))
                }
                Err(Failure::Connect) => Err(fail(ProxyError::Unavailable, Some(UpstreamErrorKind::Connect))),
                Err(Failure::Protocol) => Err(fail(ProxyError::Unavailable, Some(UpstreamErrorKind::Protocol))),
            },
            () = overdue => {
                Err(fail(ProxyError::Timeout, Some(UpstreamErrorKind::Timeout)))
            }
        }
    }

    /// Sends a request on a connection of hyper's client.
    async fn via_hyper(
        &self,
        pool: &Pool,
        req: Request<SentBody>,
        sent_at: Instant,
    ) -> Result<(Response<UpstreamBody>, Lease), Failure> {
        let mut lease = pool.checkout(sent_at).await.map_err(|_| Failure::Connect)?;
        let Some(sender) = lease.sender() else {
            return Err(Failure::Protocol);
        };
        let (resp, lease) = match sender.try_send(req).await {
            Ok(resp) => (resp, lease),
            // Never written: the pooled connection closed as it was
            // taken (the upstream's keep-alive ran out). Once more, on a
            // new connection, as hyper-util's client does. Boxed: rare,
            // and every request's future would carry its size.
            Err(mut e) => match e.take_message() {
                Some(req) => Box::pin(Self::resend(pool, req)).await?,
                None => return Err(Failure::Protocol),
            },
        };
        Ok((resp.map(UpstreamBody::Hyper), lease))
    }

    /// Sends a request a pooled connection gave back unwritten, on a new
    /// connection.
    async fn resend(
        pool: &Pool,
        req: Request<SentBody>,
    ) -> Result<(Response<Incoming>, Lease), Failure> {
        let mut lease = pool.fresh().await.map_err(|_| Failure::Connect)?;
        let Some(sender) = lease.sender() else {
            return Err(Failure::Protocol);
        };
        match sender.try_send(req).await {
            Ok(resp) => Ok((resp, lease)),
            Err(_) => Err(Failure::Protocol),
        }
    }
}

/// A request readied by `Upstream::prepare`.
pub struct Outgoing {
    message: Message,
    progress: Arc<Progress>,
    sent_at: Instant,
}

/// The request in the form its engine takes.
enum Message {
    Own(h1::Outgoing),
    Hyper(Box<Request<SentBody>>),
}

/// How an exchange with the upstream failed before its response head.
enum Failure {
    Connect,
    Protocol,
}

/// Where a forwarded request stands, shared by its body (which moves it on)
/// and the response timer (which reads it).
pub struct Progress {
    started: Instant,
    /// One of the `AWAITING_*` states below.
    state: AtomicU8,
    /// Milliseconds after `started` when `state` was last set.
    since_ms: AtomicU64,
    client_timed_out: AtomicBool,
    /// The whole request body was handed to the upstream connection.
    request_done: AtomicBool,
    /// Request body bytes handed over so far.
    bytes_in: AtomicU64,
}

/// The upstream owes the next step: take the body or send the head.
const AWAITING_UPSTREAM: u8 = 0;
/// The gateway waits for the client's next piece of the body.
const AWAITING_CLIENT: u8 = 1;

impl Progress {
    fn new(started: Instant) -> Self {
        Progress {
            started,
            state: AtomicU8::new(AWAITING_UPSTREAM),
            since_ms: AtomicU64::new(0),
            client_timed_out: AtomicBool::new(false),
            request_done: AtomicBool::new(false),
            bytes_in: AtomicU64::new(0),
        }
    }

    #[cfg(test)]
    pub fn for_test() -> Self {
        Progress::new(Instant::now())
    }

    /// Request body bytes handed to the upstream so far.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    /// True once the request body has been handed over whole: with the
    /// response read to its end, the connection can carry another exchange.
    pub fn request_done(&self) -> bool {
        self.request_done.load(Ordering::Acquire)
    }

    /// True once the client went silent mid-body for `server.body_timeout`:
    /// whatever breaks after that is the client's doing, not the upstream's.
    pub fn client_timed_out(&self) -> bool {
        self.client_timed_out.load(Ordering::Acquire)
    }

    fn set(&self, state: u8) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.since_ms.store(ms, Ordering::Relaxed);
        self.state.store(state, Ordering::Release);
    }

    /// Resolves once the upstream has owed the next step for `limit`. While
    /// the client owes it, the clock stops (the body timer bounds that);
    /// nothing wakes this future on a change, it looks again at its own
    /// deadlines, so a request costs one timer, not one per body chunk (and
    /// no clock reading of its own: the timer knows when its deadline has
    /// passed).
    ///
    /// `timer` is the caller's, reset here: a server that hands the same
    /// one to each request of a connection pays for registering it once.
    /// Each request's deadline is later than the last, so tokio only moves
    /// the registered one's expiry on (an atomic update, where a new timer
    /// costs an insertion into the timer wheel and a removal).
    async fn response_overdue(&self, limit: Duration, mut timer: Pin<&mut tokio::time::Sleep>) {
        let mut slept_until = None;
        loop {
            let state = self.state.load(Ordering::Acquire);
            let since = Duration::from_millis(self.since_ms.load(Ordering::Relaxed));
            if state == AWAITING_CLIENT {
                slept_until = None;
                timer.as_mut().reset(Instant::now() + limit);
                timer.as_mut().await;
                continue;
            }
            let deadline = self.started + since + limit;
            if slept_until == Some(deadline) {
                // The upstream owed the same step for the whole wait.
                return;
            }
            timer.as_mut().reset(deadline);
            timer.as_mut().await;
            slept_until = Some(deadline);
        }
    }
}

/// The client's request body on its way upstream: records each step in the
/// request's `Progress`, and ends with an error when the client stays silent
/// for `server.body_timeout` mid-body.
pub struct SentBody {
    inner: RequestBody,
    progress: Arc<Progress>,
    silence: Stall,
}

/// The client sent no body byte for `server.body_timeout`.
#[derive(Debug)]
pub struct ClientSilent(Duration);

impl std::fmt::Display for ClientSilent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the client sent no body byte for {:?}", self.0)
    }
}

impl std::error::Error for ClientSilent {}

impl SentBody {
    fn new(inner: RequestBody, progress: Arc<Progress>, body_timeout: Duration) -> Self {
        if inner.is_end_stream() {
            progress.request_done.store(true, Ordering::Release);
        }
        SentBody {
            inner,
            progress,
            silence: Stall::new(body_timeout),
        }
    }
}

#[cfg(test)]
impl SentBody {
    pub fn for_test(inner: RequestBody, progress: Arc<Progress>) -> Self {
        SentBody::new(inner, progress, Duration::from_secs(10))
    }
}

impl Body for SentBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.silence.progressed();
                // A piece (or the end) handed over: the upstream owes the
                // next step, from now. The end polled right after the last
                // piece (which said so) changes nothing: no clock reading.
                if frame.is_some() || !this.progress.request_done.load(Ordering::Relaxed) {
                    this.progress.set(AWAITING_UPSTREAM);
                }
                let done = match &frame {
                    None => true,
                    Some(Ok(f)) => {
                        if let Some(d) = f.data_ref() {
                            this.progress
                                .bytes_in
                                .fetch_add(d.len() as u64, Ordering::Relaxed);
                        }
                        this.inner.is_end_stream()
                    }
                    Some(Err(_)) => false,
                };
                if done {
                    this.progress.request_done.store(true, Ordering::Release);
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                if this.progress.state.load(Ordering::Relaxed) != AWAITING_CLIENT {
                    this.progress.set(AWAITING_CLIENT);
                }
                if !this.silence.waiting(cx) {
                    return Poll::Pending;
                }
                this.progress
                    .client_timed_out
                    .store(true, Ordering::Release);
                Poll::Ready(Some(Err(Box::new(ClientSilent(this.silence.limit())))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connector with `connect_timeout` around all of it: TCP connect and,
/// for an `https://` upstream, the TLS handshake (hyper's own connect
/// timeout covers only the first).
#[derive(Clone)]
struct BoundedConnector {
    inner: HttpsConnector<HttpConnector>,
    limit: Duration,
}

/// The connection (TCP and TLS) was not up within `connect_timeout`.
#[derive(Debug)]
struct ConnectTimedOut(Duration);

impl std::fmt::Display for ConnectTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no connection to the upstream within {:?}", self.0)
    }
}

impl std::error::Error for ConnectTimedOut {}

type Connection = <HttpsConnector<HttpConnector> as tower_service::Service<Uri>>::Response;

impl tower_service::Service<Uri> for BoundedConnector {
    type Response = Connection;
    type Error = BodyError;
    type Future = Pin<Box<dyn Future<Output = Result<Connection, BodyError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BodyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(result) => result,
                Err(_) => Err(Box::new(ConnectTimedOut(limit)) as BodyError),
            }
        })
    }
}

/// Opens a connection with `connector` and starts hyper's HTTP/1.1 on it;
/// the connection's task runs with upgrades on, for WebSocket tunnels.
fn http1_connect(connector: BoundedConnector, origin: Uri, h1: http1::Builder) -> Connect {
    Box::new(move || {
        let mut connector = connector.clone();
        let origin = origin.clone();
        let h1 = h1.clone();
        Box::pin(async move {
            let io = tower_service::Service::call(&mut connector, origin).await?;
            let (sender, conn) = h1.handshake(io).await?;
            tokio::spawn(async move {
                // Its end (closed, broken) is seen by the pool through the
                // sender; nothing to report here.
                let _ = conn.with_upgrades().await;
            });
            Ok(Sender::H1(sender))
        })
    })
}

/// Opens a connection with `connector` and starts hyper's HTTP/2 on it
/// (prior knowledge for `http://`, ALPN for `https://`), with keep-alive
/// pings so that a dead shared connection is noticed.
fn http2_connect(connector: BoundedConnector, origin: Uri) -> Connect {
    Box::new(move || {
        let mut connector = connector.clone();
        let origin = origin.clone();
        Box::pin(async move {
            let io = tower_service::Service::call(&mut connector, origin).await?;
            let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(20))
                .keep_alive_timeout(Duration::from_secs(10))
                .max_send_buf_size(UPSTREAM_BUFFER_BYTES)
                .handshake(io)
                .await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Sender::H2(sender))
        })
    })
}

/// TLS to an `https://` upstream: the system's roots plus `upstream.ca`.
fn client_tls(cfg: &UpstreamConfig) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    // Missing system roots are not fatal: an internal upstream may be trusted
    // through `upstream.ca` alone.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(ca) = &cfg.ca {
        let certs = CertificateDer::pem_file_iter(ca)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("upstream.ca {}: {e}", ca.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "upstream.ca {}: no certificate in the file",
                ca.display()
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("upstream.ca {}: {e}", ca.display()))?;
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .map_err(|e| format!("TLS setup: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_millis(300);

    #[tokio::test(start_paused = true)]
    async fn the_response_timer_restarts_each_time_the_upstream_takes_a_piece() {
        let progress = Progress::new(Instant::now());
        let timer = std::pin::pin!(tokio::time::sleep(LIMIT));
        let overdue = progress.response_overdue(LIMIT, timer);
        tokio::pin!(overdue);
        // A piece taken every 200 ms for a second: never 300 ms owed.
        for _ in 0..5 {
            tokio::select! {
                () = &mut overdue => panic!("cut while the upstream kept taking the body"),
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            progress.set(AWAITING_UPSTREAM);
        }
        let last = Instant::now();
        overdue.await;
        assert_eq!(last.elapsed(), LIMIT, "overdue 300 ms after the last piece");
    }

    #[tokio::test(start_paused = true)]
    async fn the_response_timer_stops_while_the_client_owes_the_next_piece() {
        let progress = Progress::new(Instant::now());
        progress.set(AWAITING_CLIENT);
        let timer = std::pin::pin!(tokio::time::sleep(LIMIT));
        let overdue = progress.response_overdue(LIMIT, timer);
        tokio::pin!(overdue);
        tokio::select! {
            () = &mut overdue => panic!("cut while the client owed the body"),
            () = tokio::time::sleep(LIMIT * 10) => {}
        }
        progress.set(AWAITING_UPSTREAM);
        let handed = Instant::now();
        overdue.await;
        assert!(handed.elapsed() <= LIMIT, "{:?}", handed.elapsed());
    }
}

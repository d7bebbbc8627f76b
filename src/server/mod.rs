//! The client listener: accept (bounded by `max_connections`), optional TLS,
//! HTTP/1.1 (`h1`, keygate's own) or HTTP/2 (hyper's) on the same port,
//! per-connection timeouts, and the graceful drain on shutdown. Requests go
//! to `proxy::Gateway::begin` and, when forwarded, `forward_pending`.

pub mod activity;
mod h1;
mod io;
pub mod tls;
mod watchers;
mod x509;

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_rustls::TlsAcceptor;

use activity::{Activity, InFlight};
use io::{ClientIo, Stream, sniff_h2};
use watchers::{Watched, Watchers};

use crate::config::ServerConfig;
use crate::metrics::{Health, Metrics};
use crate::proxy::{Begun, BodyError, ConnInfo, Gateway, ProxyBody};

/// Binds the client listener with a listen backlog that follows
/// `max_connections`, as HAProxy's does (the kernel caps it at
/// `net.core.somaxconn`). The usual 128 drops the handshakes of a burst of
/// new clients beyond it, and each dropped client waits a second or more
/// for its retry, or sees a reset.
pub fn listen(addr: SocketAddr, max_connections: usize) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As `TcpListener::bind`: a restart may bind while old connections
    // linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog(max_connections))
}

fn backlog(max_connections: usize) -> u32 {
    u32::try_from(max_connections)
        .unwrap_or(u32::MAX)
        .clamp(128, 65_535)
}

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Every connection finished within `drain_timeout`.
    Complete,
    /// The bound ran out with this many connections still open.
    CutOff(usize),
}

struct Shared {
    gateway: Arc<Gateway>,
    metrics: Arc<Metrics>,
    tls: Option<TlsAcceptor>,
    h1: h1::Limits,
    h2: http2::Builder<TokioExecutor>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
}

/// Serves client connections on `listener` until `shutdown` resolves, then
/// drains: `/readyz` turns 503, no new connections, kept-alive ones are told
/// to close, in-flight requests get up to `drain_timeout`.
pub async fn run(
    listener: TcpListener,
    config: &ServerConfig,
    gateway: Arc<Gateway>,
    tls: Option<Arc<rustls::ServerConfig>>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) -> Drain {
    let h1 = h1::Limits {
        max_head_bytes: config.max_header_bytes,
        max_headers: config.max_headers,
    };
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    // Flow control bounds what a client can make the gateway buffer per
    // connection (README, "Memory").
    h2.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(config.h2.max_concurrent_streams)
        .initial_stream_window_size(config.h2.stream_window_bytes)
        .initial_connection_window_size(config.h2.connection_window_bytes)
        .max_send_buf_size(config.h2.send_buffer_bytes);
    let shared = Arc::new(Shared {
        gateway,
        metrics,
        tls: tls.map(TlsAcceptor::from),
        h1,
        h2,
        header_read_timeout: config.header_read_timeout,
        idle_timeout: config.idle_timeout,
    });
    let max = config.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);

    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    // Out of file descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let shared = shared.clone();
        let stop = stop_rx.clone();
        // Shared with a WebSocket tunnel if the connection becomes one: the
        // slot is free only once both are done.
        let slot = Arc::new(permit);
        tokio::spawn(async move {
            serve_connection(stream, peer, &shared, stop, slot).await;
        });
    }

    health.set_draining();
    drop(listener);
    let _ = stop_tx.send(true);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let drained = timeout(config.drain_timeout, slots.acquire_many(all)).await;
    match drained {
        Ok(_) => Drain::Complete,
        Err(_) => Drain::CutOff(max - slots.available_permits()),
    }
}

/// The per-connection hyper service of an HTTP/2 connection: marks each
/// request in flight and hands it to the gateway.
#[derive(Clone)]
struct ConnService {
    gateway: Arc<Gateway>,
    activity: Arc<Activity>,
    /// Shared by the connection's requests: one reference count per
    /// request instead of a copy of each field.
    info: Arc<ConnInfo>,
}

type Reply = Result<Response<ServedBody>, Infallible>;

/// A request's answer: ready at once when the gateway answered it itself
/// (no future to allocate), or the forward's boxed future.
type ResponseFuture = futures_util::future::Either<
    std::future::Ready<Reply>,
    Pin<Box<dyn Future<Output = Reply> + Send>>,
>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<ServedBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, req: Request<Incoming>) -> ResponseFuture {
        use futures_util::future::Either;
        let busy = self.activity.begin(true);
        match self.gateway.begin(req, &self.info) {
            Begun::Answered(response) => Either::Left(std::future::ready(Ok(
                response.map(|body| ServedBody { body, _busy: busy })
            ))),
            Begun::Forward(pending) => {
                let gateway = self.gateway.clone();
                let info = self.info.clone();
                Either::Right(Box::pin(async move {
                    let response = gateway.forward_pending(pending, &info).await;
                    Ok(response.map(|body| ServedBody { body, _busy: busy }))
                }))
            }
        }
    }
}

/// A response body on its way to the client, holding the request's
/// in-flight mark for as long as it is being sent, so that the connection
/// counts as busy (an idle timeout must not cut a long download).
pub struct ServedBody {
    body: ProxyBody,
    _busy: InFlight,
}

impl http_body::Body for ServedBody {
    type Data = bytes::Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, BodyError>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// An HTTP/1.x connection (keygate's own server, `h1`) or an HTTP/2 one
/// (hyper's) being served.
enum Served {
    H1(Pin<Box<dyn Future<Output = ()> + Send>>, Arc<AtomicBool>),
    H2(Pin<Box<http2::Connection<TokioIo<ClientIo>, ConnService, TokioExecutor>>>),
}

impl Served {
    fn graceful_shutdown(&mut self) {
        match self {
            // Seen when the connection is next polled, which the
            // supervisor's loop does at once.
            Served::H1(_, draining) => draining.store(true, Ordering::Relaxed),
            Served::H2(c) => c.as_mut().graceful_shutdown(),
        }
    }
}

impl Future for Served {
    type Output = hyper::Result<()>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Served::H1(c, _) => c.as_mut().poll(cx).map(Ok),
            Served::H2(c) => c.as_mut().poll(cx),
        }
    }
}

async fn serve_connection(
    mut tcp: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
    slot: Arc<tokio::sync::OwnedSemaphorePermit>,
) {
    let _ = tcp.set_nodelay(true);
    tracing::debug!(client.addr = %peer, "connection accepted");
    shared.metrics.connection_opened();
    let _open = OpenConnection(&shared.metrics);
    let activity = Activity::new();

    // TLS handshake and protocol sniffing count against the header timeout.
    let setup = async {
        match &shared.tls {
            None => sniff_h2(&mut tcp)
                .await
                .map(|(h2, replay)| (Stream::Plain(tcp), replay, h2, false)),
            Some(acceptor) => {
                let tls = acceptor.accept(tcp).await?;
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                Ok((Stream::Tls(Box::new(tls)), bytes::Bytes::new(), h2, true))
            }
        }
    };
    let (stream, replay, h2, is_tls) = match timeout(shared.header_read_timeout, setup).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(client.addr = %peer, error = %e, "connection setup failed");
            return;
        }
        Err(_) => {
            tracing::debug!(client.addr = %peer, "connection closed: no request head in time");
            return;
        }
    };
    let io = ClientIo::new(stream, replay, activity.clone());
    let info = Arc::new(ConnInfo::new(peer, is_tls).with_slot(slot));
    let mut conn = if h2 {
        let service = ConnService {
            gateway: shared.gateway.clone(),
            activity: activity.clone(),
            info,
        };
        Served::H2(Box::pin(
            shared.h2.serve_connection(TokioIo::new(io), service),
        ))
    } else {
        let draining = Arc::new(AtomicBool::new(false));
        let serve = h1::Serve {
            gateway: shared.gateway.clone(),
            activity: activity.clone(),
            info,
            limits: shared.h1,
            draining: draining.clone(),
        };
        Served::H1(Box::pin(h1::serve(io, serve)), draining)
    };

    let (header_read, idle) = (shared.header_read_timeout, shared.idle_timeout);
    let mut draining = false;
    let mut watchers = Watchers::new();
    loop {
        let now = Instant::now();
        let deadline = activity.deadline(header_read, idle);
        tracing::trace!(client.addr = %peer, ?deadline, "connection check");
        if deadline.expired(now) {
            tracing::debug!(client.addr = %peer, ?deadline, "connection closed: timed out");
            break;
        }
        let was_draining = draining;
        // The watchers: the drain signal first, then the next check.
        let mut drain = std::pin::pin!(async {
            if was_draining {
                std::future::pending::<()>().await;
            }
            // An error means the server is gone: drain as well.
            let _ = stop.changed().await;
        });
        let mut check = std::pin::pin!(sleep_until(deadline.check_at(now, header_read, idle)));
        watchers.arm();
        // The connection first: most wake-ups are its own.
        let woke = poll_fn(|cx| {
            if let Poll::Ready(result) = Pin::new(&mut conn).poll(cx) {
                return Poll::Ready(Woke::Ended(result));
            }
            watchers
                .poll(cx, drain.as_mut(), check.as_mut())
                .map(Woke::Watcher)
        })
        .await;
        match woke {
            Woke::Ended(result) => {
                if let Err(e) = result {
                    tracing::debug!(client.addr = %peer, error = %e, "connection ended with an error");
                }
                break;
            }
            Woke::Watcher(Watched::First) => {
                draining = true;
                tracing::debug!(client.addr = %peer, "draining connection");
                conn.graceful_shutdown();
            }
            Woke::Watcher(Watched::Second) => {}
        }
    }
}

/// Why a connection's supervisor woke.
enum Woke {
    Ended(hyper::Result<()>),
    Watcher(Watched),
}

/// Decrements the open-connections gauge however the connection ends.
struct OpenConnection<'a>(&'a Metrics);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_follows_max_connections_within_bounds() {
        assert_eq!(backlog(1), 128);
        assert_eq!(backlog(10_000), 10_000);
        assert_eq!(backlog(usize::MAX), 65_535);
    }

    #[tokio::test]
    async fn a_burst_of_new_clients_is_taken_in_before_any_is_accepted() {
        // Nothing accepts here: the kernel completes handshakes into the
        // backlog alone. With the usual 128 the 130th handshake is dropped
        // and its connect waits a second for the retry.
        let addr = "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"));
        let listener = listen(addr, 1000).unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let mut held = Vec::new();
        for i in 0..600 {
            let connected = timeout(Duration::from_millis(500), TcpStream::connect(addr))
                .await
                .unwrap_or_else(|_| {
                    panic!("connection {i} was not taken in (is net.core.somaxconn under 600?)")
                });
            held.push(connected.unwrap_or_else(|e| panic!("{e}")));
        }
    }
}

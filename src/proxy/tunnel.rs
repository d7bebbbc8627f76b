//! WebSocket (and other upgraded) tunnels: bytes copied both ways until either
//! side closes, or until nothing has moved either way for `server.idle_timeout`
//! (nginx closes an idle WebSocket after `proxy_read_timeout` the same way), so
//! that forgotten tunnels cannot hold `max_connections` slots for ever.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, sleep_until};

use crate::metrics::Metrics;

/// A client connection handed over for a tunnel, by whichever server read
/// the request (the proxy knows no connection type).
pub trait ClientStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ClientStream for T {}

/// The server's half of a protocol switch: it hands the connection over
/// once the 101 response is written.
pub struct Handover(tokio::sync::oneshot::Sender<Box<dyn ClientStream>>);

type Waiting = tokio::sync::oneshot::Receiver<Box<dyn ClientStream>>;

impl Handover {
    /// Gives the connection to the tunnel; gives it back when nobody waits
    /// for it (the upstream did not switch, or the request was refused).
    pub fn give(self, client: Box<dyn ClientStream>) -> Result<(), Box<dyn ClientStream>> {
        self.0.send(client)
    }
}

/// The proxy's half, carried in the request's extensions (which need
/// `Clone`, hence the shared slot; only requests that ask to upgrade carry
/// one).
#[derive(Clone)]
pub struct OnClientUpgrade(Arc<std::sync::Mutex<Option<Waiting>>>);

impl OnClientUpgrade {
    /// The connection, once the server has written the 101; `None` when it
    /// was closed instead.
    pub async fn connection(self) -> Option<Box<dyn ClientStream>> {
        let receiver = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()?;
        receiver.await.ok()
    }
}

/// A protocol switch's two halves.
pub fn handover() -> (Handover, OnClientUpgrade) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    (
        Handover(tx),
        OnClientUpgrade(Arc::new(std::sync::Mutex::new(Some(rx)))),
    )
}

/// Runs a tunnel to its end. The client connection lives on as the tunnel
/// once the server has handed it over: it counts as open until then.
pub async fn run<C, U>(client: C, upstream: U, idle: Duration, metrics: &Metrics)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    metrics.connection_opened();
    relay(client, upstream, idle).await;
    metrics.connection_closed();
}

async fn relay<C, U>(client: C, mut upstream: U, idle: Duration)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let seen = Arc::new(AtomicU64::new(0));
    let mut client = Watched {
        inner: client,
        seen: seen.clone(),
        start,
    };
    let idle_out = async {
        loop {
            let last = start + Duration::from_millis(seen.load(Ordering::Relaxed));
            let deadline = last.checked_add(idle).unwrap_or(last);
            if Instant::now() >= deadline {
                return;
            }
            sleep_until(deadline).await;
        }
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        () = idle_out => tracing::debug!(?idle, "tunnel idle: closed"),
    }
}

/// The client side of a tunnel, noting when a byte last moved either way
/// (everything the tunnel carries passes through it).
struct Watched<T> {
    inner: T,
    /// Milliseconds from `start` to the last byte moved.
    seen: Arc<AtomicU64>,
    start: Instant,
}

impl<T> Watched<T> {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.seen.store(ms, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

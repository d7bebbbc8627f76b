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

/// Runs a tunnel to its end. The client connection lives on as the tunnel
/// once hyper has handed it over: it counts as open until then.
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

//! `ClientIo`: a client connection's byte stream (plain TCP or TLS), with the
//! bytes read while sniffing the protocol replayed first, and every read
//! reported to the connection's `Activity`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::activity::Activity;

/// The HTTP/2 connection preface a prior-knowledge (h2c) client starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

pub struct ClientIo {
    stream: Stream,
    replay: Bytes,
    activity: Arc<Activity>,
}

impl ClientIo {
    pub fn new(stream: Stream, replay: Bytes, activity: Arc<Activity>) -> Self {
        ClientIo {
            stream,
            replay,
            activity,
        }
    }
}

impl ClientIo {
    /// Makes the close that follows a reset, not an orderly end: a client
    /// that reads a body to the connection's end must not take a body cut
    /// short for a whole one.
    pub fn abort_on_close(&self) {
        let tcp = match &self.stream {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        };
        let _ = tcp.set_zero_linger();
    }

    /// The stream with `rest` (bytes read from it but not used) to be read
    /// again first: what a client sent after the request that switched
    /// protocols belongs to the tunnel.
    pub fn replaying(mut self, rest: Bytes) -> Self {
        if self.replay.is_empty() {
            self.replay = rest;
        } else if !rest.is_empty() {
            let mut both = Vec::with_capacity(self.replay.len() + rest.len());
            both.extend_from_slice(&self.replay);
            both.extend_from_slice(&rest);
            self.replay = both.into();
        }
        self
    }
}

/// Reads from a plaintext connection until its first bytes tell HTTP/2 prior
/// knowledge from HTTP/1; returns the verdict and the bytes read.
pub async fn sniff_h2(stream: &mut TcpStream) -> io::Result<(bool, Bytes)> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let n = stream.read_buf(&mut buf).await?;
        let seen = buf.len().min(H2_PREFACE.len());
        if buf[..seen] != H2_PREFACE[..seen] {
            return Ok((false, buf.into()));
        }
        if seen == H2_PREFACE.len() {
            return Ok((true, buf.into()));
        }
        if n == 0 {
            // Closed mid-preface: let HTTP/1 report the garbage.
            return Ok((false, buf.into()));
        }
    }
}

impl ClientIo {
    /// Tells the activity whether the client is taking our bytes.
    fn track_write(&self, polled: &Poll<io::Result<usize>>) {
        match polled {
            Poll::Pending => self.activity.on_write_blocked(),
            Poll::Ready(Ok(n)) if *n > 0 => self.activity.on_write_progress(),
            Poll::Ready(_) => {}
        }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.advance(n);
            this.activity.on_read();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.on_read();
        }
        polled
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, data),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        };
        this.track_write(&polled);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        };
        this.track_write(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

//! HTTP/1.1 to a plain-TCP upstream, spoken by the request's own task.
//!
//! hyper's client runs each upstream connection as a task of its own and
//! passes requests and responses to it over a channel: per request, a task
//! switch each way, a channel round trip, and the connection's state copied
//! in and out of futures. Counted by callgrind, that task was a third of
//! keygate's instructions per forwarded request (PERFORMANCE.md, round 2).
//! Here the request's task writes the request and reads the response itself,
//! as nginx and HAProxy do. hyper's client stays for `https://` and HTTP/2
//! upstreams.
//!
//! What is spoken (RFC 9112): the request head as the gateway rewrote it,
//! its body with `Content-Length` when the length is known and chunked when
//! not; the response framed by `Transfer-Encoding: chunked`, `Content-Length`
//! or the connection's end, no body for `HEAD`, 1xx, 204 and 304; interim
//! 1xx responses (100 Continue) skipped; `101 Switching Protocols` hands the
//! connection to a tunnel. The request body keeps streaming while the
//! response arrives (an upstream may answer early). A connection goes back to
//! the pool only when both messages were whole and the upstream did not ask
//! to close it. The pure parts (head encoding, framing, chunk decoding) are
//! in `h1/wire.rs`.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::body::BodyError;
use super::pool::{Reusable, Stack};
use super::upstream::SentBody;

mod wire;
pub use wire::{Decoder, ProtocolError};

/// Bytes read from the upstream at a time.
const READ_CHUNK: usize = 16 * 1024;

/// One kept-alive connection and what has been read from it but not used.
pub struct Conn {
    io: TcpStream,
    buf: BytesMut,
    /// Pieces of the request waiting to be written (kept with the
    /// connection so that its allocation serves every exchange).
    out: VecDeque<Bytes>,
    /// The request body, until its end has been queued.
    body: Option<SentBody>,
    framing: wire::BodyFraming,
    /// Body bytes still owed under `Content-Length`.
    owed: u64,
    /// A chunk's data was queued: its CRLF goes before the next size line.
    chunk_open: bool,
}

impl Reusable for Box<Conn> {
    /// Idle, a connection has nothing to say: readable means the upstream
    /// closed it (or wrote what nobody asked for). The readiness flag is
    /// the reactor's, so a quiet connection costs no system call here.
    fn is_closed(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                !matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

impl Conn {
    /// Reads what the upstream has sent into `buf`: `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(READ_CHUNK);
            }
            // Without readiness this returns at once, with no system call.
            match self.io.try_read_buf(&mut self.buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.io.poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum Error {
    /// No connection within `connect_timeout`, or refused.
    Connect(io::Error),
    Io(io::Error),
    Protocol(ProtocolError),
    /// The request body failed (the client went silent or away).
    Body(BodyError),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Connect(e) => write!(f, "connecting to the upstream: {e}"),
            Error::Io(e) => write!(f, "upstream connection: {e}"),
            Error::Protocol(e) => write!(f, "upstream spoke HTTP/1.1 wrongly: {e}"),
            Error::Body(e) => write!(f, "request body: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// The upstream's address and its pool of idle connections.
pub struct Client {
    host: String,
    port: u16,
    connect_timeout: Duration,
    pool: Arc<Stack<Box<Conn>>>,
}

impl Client {
    pub fn new(
        host: String,
        port: u16,
        connect_timeout: Duration,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Client {
        Client {
            host,
            port,
            connect_timeout,
            pool: Stack::new(max_idle, idle_timeout),
        }
    }

    /// Connections waiting in the pool now.
    #[cfg(test)]
    pub fn idle(&self) -> usize {
        self.pool.len()
    }

    async fn connect(&self) -> Result<Box<Conn>, Error> {
        let connecting = TcpStream::connect((self.host.as_str(), self.port));
        let io = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => return Err(Error::Connect(e)),
            Err(_) => {
                return Err(Error::Connect(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {:?}", self.connect_timeout),
                )));
            }
        };
        io.set_nodelay(true).map_err(Error::Connect)?;
        // Boxed once for its life: an exchange moves it between the pool,
        // futures and the response body, 8 bytes at a time.
        Ok(Box::new(Conn {
            io,
            buf: BytesMut::new(),
            out: VecDeque::with_capacity(MAX_QUEUED),
            body: None,
            framing: wire::BodyFraming::Length(0),
            owed: 0,
            chunk_open: false,
        }))
    }

    /// Sends `req` and reads the response head; its body streams from the
    /// returned `ResponseBody`. A request without a body that a kept-alive
    /// connection failed before any byte of an answer (the upstream closed
    /// it as it was taken) is sent once more on a new connection, unless
    /// its method is not idempotent (nginx's rule).
    pub async fn send(
        &self,
        req: Request<SentBody>,
        now: Instant,
    ) -> Result<Response<ResponseBody>, Error> {
        let (parts, body) = req.into_parts();
        let has_body = !body.is_end_stream();
        let (head, framing) = wire::encode_head(&parts, has_body.then(|| body.size_hint().exact()));
        let retry = !has_body && idempotent(&parts.method);
        let head_request = parts.method == Method::HEAD;
        let mut pooled = None;
        while let Some(conn) = self.pool.pop(now) {
            if !conn.is_closed() {
                pooled = Some(conn);
                break;
            }
        }
        let reused = pooled.is_some();
        let conn = match pooled {
            Some(conn) => conn,
            None => self.connect().await?,
        };
        let mut exchange = conn;
        exchange.start(head.clone(), has_body.then_some(body), framing);
        let head = match std::future::poll_fn(|cx| exchange.poll_head(cx, head_request)).await {
            Ok(head) => head,
            Err(Failed { error, answered }) => {
                if !(reused && retry && !answered) {
                    return Err(error);
                }
                exchange = self.connect().await?;
                exchange.start(head, None, framing);
                std::future::poll_fn(|cx| exchange.poll_head(cx, head_request))
                    .await
                    .map_err(|f| f.error)?
            }
        };
        let wire::Head {
            response,
            decoder,
            keep_alive,
        } = head;
        let (parts, ()) = response.into_parts();
        Ok(Response::from_parts(
            parts,
            ResponseBody {
                exchange: Some(exchange),
                decoder,
                keep_alive,
                pool: Arc::downgrade(&self.pool),
            },
        ))
    }
}

/// RFC 9110 §9.2.2, as nginx's `proxy_next_upstream` reads it: every method
/// but POST, PATCH and LOCK may be sent twice.
fn idempotent(method: &Method) -> bool {
    !matches!(method.as_str(), "POST" | "PATCH" | "LOCK")
}

/// A failure before the response head, and whether any byte of an answer
/// had come.
struct Failed {
    error: Error,
    answered: bool,
}

/// Pieces queued for one vectored write at most.
const MAX_QUEUED: usize = 4;

impl Conn {
    /// Begins an exchange: the head is written first, then the body.
    fn start(&mut self, head: Bytes, body: Option<SentBody>, framing: wire::BodyFraming) {
        self.out.clear();
        self.out.push_back(head);
        self.body = body;
        self.owed = match framing {
            wire::BodyFraming::Length(n) => n,
            wire::BodyFraming::Chunked => 0,
        };
        self.framing = framing;
        self.chunk_open = false;
    }

    /// True when the whole request (head and body) has been written.
    fn sent(&self) -> bool {
        self.body.is_none() && self.out.is_empty()
    }

    /// Writes what it can of the request: `Ready(Ok)` once all is written.
    /// Body pieces ready at once are gathered first, so that a small
    /// request goes out in one write, head and body together.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            if let Some(body) = self.body.as_mut()
                && self.out.len() < MAX_QUEUED
                && let Poll::Ready(frame) = Pin::new(body).poll_frame(cx)
            {
                self.queue(frame)?;
                continue;
            }
            if self.out.is_empty() {
                return match self.body {
                    None => Poll::Ready(Ok(())),
                    // The body's waker is registered.
                    Some(_) => Poll::Pending,
                };
            }
            let mut slices = [IoSlice::new(&[]); MAX_QUEUED];
            for (slice, piece) in slices.iter_mut().zip(self.out.iter()) {
                *slice = IoSlice::new(piece);
            }
            let count = self.out.len().min(MAX_QUEUED);
            let io = Pin::new(&mut self.io);
            let mut n = ready!(io.poll_write_vectored(cx, &slices[..count])).map_err(Error::Io)?;
            if n == 0 {
                return Poll::Ready(Err(Error::Io(io::ErrorKind::WriteZero.into())));
            }
            while n > 0 {
                let Some(front) = self.out.front_mut() else {
                    break;
                };
                if n >= front.len() {
                    n -= front.len();
                    self.out.pop_front();
                } else {
                    let _ = front.split_to(n);
                    n = 0;
                }
            }
        }
    }

    /// Queues a frame of the request body, framed for the wire.
    fn queue(&mut self, frame: Option<Result<Frame<Bytes>, BodyError>>) -> Result<(), Error> {
        let chunked = self.framing == wire::BodyFraming::Chunked;
        let frame = match frame {
            None => {
                self.body = None;
                if chunked {
                    let last = wire::last_chunk(self.chunk_open, None);
                    self.out.push_back(last);
                } else if self.owed != 0 {
                    return Err(Error::Protocol(ProtocolError::BodyTooShort));
                }
                return Ok(());
            }
            Some(Err(e)) => return Err(Error::Body(e)),
            Some(Ok(frame)) => frame,
        };
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) if chunked => {
                let line = wire::chunk_size_line(self.chunk_open, data.len());
                self.out.push_back(line);
                self.out.push_back(data);
                self.chunk_open = true;
            }
            Ok(data) => {
                let len = data.len() as u64;
                if len > self.owed {
                    return Err(Error::Protocol(ProtocolError::BodyTooLong));
                }
                self.owed -= len;
                self.out.push_back(data);
            }
            // Trailers end a chunked body as its trailer section; a body
            // framed by its length has no place for them.
            Err(frame) => {
                if chunked && let Ok(trailers) = frame.into_trailers() {
                    self.body = None;
                    let last = wire::last_chunk(self.chunk_open, Some(&trailers));
                    self.out.push_back(last);
                }
            }
        }
        Ok(())
    }

    /// Writes the request and reads until a final response head.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        head_request: bool,
    ) -> Poll<Result<wire::Head, Failed>> {
        loop {
            if !self.sent()
                && let Poll::Ready(Err(error)) = self.poll_send(cx)
            {
                return Poll::Ready(Err(Failed {
                    answered: !self.buf.is_empty(),
                    error,
                }));
            }
            match wire::parse_head(&mut self.buf, head_request) {
                Ok(Some(head)) => return Poll::Ready(Ok(head)),
                Ok(None) => {}
                Err(e) => {
                    return Poll::Ready(Err(Failed {
                        error: Error::Protocol(e),
                        answered: true,
                    }));
                }
            }
            let error = match ready!(self.poll_fill(cx)) {
                Ok(0) => Error::Protocol(ProtocolError::ClosedBeforeResponse),
                Ok(_) => continue,
                Err(e) => Error::Io(e),
            };
            return Poll::Ready(Err(Failed {
                answered: !self.buf.is_empty(),
                error,
            }));
        }
    }
}

/// A response body read from the upstream connection by the task that
/// relays it; the request body, if still on its way, is written by the same
/// polls. The connection goes back to the pool at the body's end when the
/// exchange was whole, and is closed when it is dropped before.
pub struct ResponseBody {
    exchange: Option<Box<Conn>>,
    decoder: Decoder,
    keep_alive: bool,
    pool: Weak<Stack<Box<Conn>>>,
}

impl ResponseBody {
    /// The body is whole: the connection may carry the next exchange.
    fn finish(&mut self) {
        self.decoder = Decoder::Done;
        let Some(exchange) = self.exchange.take() else {
            return;
        };
        if self.keep_alive
            && exchange.sent()
            && exchange.buf.is_empty()
            && let Some(pool) = self.pool.upgrade()
        {
            pool.push(exchange);
        }
    }

    fn fail(&mut self, error: Error) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.exchange = None;
        self.decoder = Decoder::Done;
        Poll::Ready(Some(Err(Box::new(error))))
    }

    /// After `101 Switching Protocols`: the connection, for a tunnel, with
    /// whatever the upstream already sent past the response head.
    pub fn take_tunnel(&mut self) -> Option<Tunnel> {
        let conn = self.exchange.take()?;
        let conn = *conn;
        Some(Tunnel {
            io: conn.io,
            early: conn.buf.freeze(),
        })
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            let Some(exchange) = this.exchange.as_mut() else {
                return Poll::Ready(None);
            };
            if !exchange.sent()
                && let Poll::Ready(Err(e)) = exchange.poll_send(cx)
            {
                if let Error::Body(_) = e {
                    // The client broke its upload: the exchange is cut.
                    return this.fail(e);
                }
                // The upstream stopped taking the request (it answered
                // early and closed): its response is still read whole, on
                // a connection that is then closed.
                exchange.body = None;
                exchange.out.clear();
                this.keep_alive = false;
                continue;
            }
            let buf = &mut exchange.buf;
            let step = match &mut this.decoder {
                Decoder::Done | Decoder::Length(0) => wire::Step::End,
                Decoder::Length(owed) => match wire::take_up_to(buf, *owed) {
                    Some(data) => {
                        *owed -= data.len() as u64;
                        wire::Step::Data(data)
                    }
                    None => wire::Step::More,
                },
                Decoder::Eof => match wire::take_up_to(buf, u64::MAX) {
                    Some(data) => wire::Step::Data(data),
                    None => wire::Step::More,
                },
                Decoder::Chunked(state) => match wire::decode_chunk(state, buf) {
                    Ok(step) => step,
                    Err(e) => return this.fail(Error::Protocol(e)),
                },
            };
            match step {
                wire::Step::Data(data) => {
                    if this.decoder.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                wire::Step::Trailers(trailers) => {
                    this.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                wire::Step::End => {
                    this.finish();
                    return Poll::Ready(None);
                }
                wire::Step::More => {}
            }
            match ready!(exchange.poll_fill(cx)) {
                Ok(0) if matches!(this.decoder, Decoder::Eof) => {
                    // The connection's end was the body's: nothing to reuse.
                    this.keep_alive = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(Error::Protocol(ProtocolError::IncompleteBody)),
                Ok(_) => {}
                Err(e) => return this.fail(Error::Io(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.exchange.is_none() || self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Length(n) => SizeHint::with_exact(n),
            Decoder::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// An upstream connection after `101 Switching Protocols`: the bytes read
/// past the response head come first.
pub struct Tunnel {
    io: TcpStream,
    early: Bytes,
}

impl tokio::io::AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.early.is_empty() {
            let n = self.early.len().min(buf.remaining());
            buf.put_slice(&self.early.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;

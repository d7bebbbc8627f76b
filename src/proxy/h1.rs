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
//! in `h1/wire.rs`; the exchange in `h1/send.rs`; the response body in
//! `h1/response.rs`.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response};
use http_body::Body;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::body::BodyError;
use super::pool::{Reusable, Stack};
use super::upstream::SentBody;
use send::{Failed, MAX_QUEUED};

mod response;
mod send;
mod wire;
pub use response::ResponseBody;
pub use wire::ProtocolError;
// The chunked coding, for the server's side of a client connection too.
pub(crate) use wire::{Chunk, Step, content_length, decode_chunk, last_chunk, take_up_to};

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
    /// The upstream stopped taking the request (a write failed after it
    /// may have answered): the rest of the request is dropped, the answer
    /// still read, and the connection closed after it.
    broken: bool,
    framing: wire::BodyFraming,
    /// Body bytes still owed under `Content-Length`.
    owed: u64,
    /// A chunk's data was queued: its CRLF goes before the next size line.
    chunk_open: bool,
    /// The request's header map, emptied: the response's headers fill it
    /// (hyper's server hands the map of each response it writes to the next
    /// request it reads, so one map's room serves every exchange).
    headers: http::HeaderMap,
}

impl Reusable for Box<Conn> {
    /// Idle, a connection has nothing to say: readable means the upstream
    /// closed it (or wrote what nobody asked for). A peek, so that a stray
    /// byte stays there to be seen again; the readiness flag is the
    /// reactor's, so a quiet connection costs no system call here.
    fn is_closed(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = tokio::io::ReadBuf::new(&mut probe);
        !matches!(self.io.poll_peek(&mut cx, &mut probe), Poll::Pending)
    }
}

impl Conn {
    /// Reads what the upstream has sent into `buf`: `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(READ_CHUNK);
            }
            let room = self.buf.capacity() - self.buf.len();
            let (io, buf) = (&self.io, &mut self.buf);
            let mut got = 0;
            // A read shorter than the room drained the socket: the
            // readiness is cleared with it (as tokio's own `poll_read`
            // does), so that the next look costs no system call that would
            // only say "nothing yet". The readiness seen before the read is
            // the one cleared: an event that came after it stands.
            let read = io.try_io(Interest::READABLE, || {
                got = io.try_read_buf(buf)?;
                if got > 0 && got < room {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(got)
            });
            match read {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => {
                    return Poll::Ready(Ok(got));
                }
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

    /// A new connection within `connect_timeout`, shared between the
    /// name's addresses so that one that never answers (a black-holed
    /// IPv6 route, say) leaves time for the next, as hyper-util's connector
    /// does.
    async fn connect(&self) -> Result<Box<Conn>, Error> {
        let timed_out = || {
            Error::Connect(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {:?}", self.connect_timeout),
            ))
        };
        let started = Instant::now();
        let lookup = tokio::net::lookup_host((self.host.as_str(), self.port));
        let addrs: Vec<_> = match tokio::time::timeout(self.connect_timeout, lookup).await {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(e)) => return Err(Error::Connect(e)),
            Err(_) => return Err(timed_out()),
        };
        let mut last = None;
        let mut io = None;
        for (i, addr) in addrs.iter().enumerate() {
            let left = self.connect_timeout.saturating_sub(started.elapsed());
            let share = left / u32::try_from(addrs.len() - i).unwrap_or(u32::MAX);
            match tokio::time::timeout(share, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    io = Some(stream);
                    break;
                }
                Ok(Err(e)) => last = Some(Error::Connect(e)),
                Err(_) => last = Some(timed_out()),
            }
        }
        let Some(io) = io else {
            return Err(last.unwrap_or_else(|| {
                Error::Connect(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} resolves to no address", self.host),
                ))
            }));
        };
        io.set_nodelay(true).map_err(Error::Connect)?;
        // Boxed once for its life: an exchange moves it between the pool,
        // futures and the response body, 8 bytes at a time.
        Ok(Box::new(Conn {
            io,
            buf: BytesMut::new(),
            out: VecDeque::with_capacity(MAX_QUEUED),
            body: None,
            broken: false,
            framing: wire::BodyFraming::Length(0),
            owed: 0,
            chunk_open: false,
            headers: http::HeaderMap::new(),
        }))
    }

    /// Sends a request and reads the response head; its body streams from
    /// the returned `ResponseBody`. A request without a body that a
    /// kept-alive connection failed before any byte of an answer (the
    /// upstream closed it as it was taken) is sent once more on a new
    /// connection if its method is idempotent.
    pub async fn send(&self, out: Outgoing, now: Instant) -> Result<Response<ResponseBody>, Error> {
        let Outgoing {
            head,
            headers,
            framing,
            body,
            retry,
            head_request,
        } = out;
        let pooled = std::iter::from_fn(|| self.pool.pop(now)).find(|c| !c.is_closed());
        let reused = pooled.is_some();
        let mut exchange = match pooled {
            Some(conn) => conn,
            // Boxed: rare, and its futures would make every request's
            // future larger (and each copy of it dearer).
            None => Box::pin(self.connect()).await?,
        };
        // Kept for a retry only when one may happen (a clone of a fresh
        // `Bytes` allocates).
        let again = retry.then(|| head.clone());
        exchange.start(head, body, framing, headers);
        let head = match std::future::poll_fn(|cx| exchange.poll_head(cx, head_request)).await {
            Ok(head) => head,
            Err(Failed { error, answered }) => {
                let Some(head) = again.filter(|_| reused && !answered) else {
                    return Err(error);
                };
                exchange = Box::pin(self.connect()).await?;
                exchange.start(head, None, framing, http::HeaderMap::new());
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
        let body = ResponseBody::new(exchange, decoder, keep_alive, Arc::downgrade(&self.pool));
        Ok(Response::from_parts(parts, body))
    }
}

/// A request encoded for the wire, before any wait: the future that sends
/// it carries these few fields, not the request (which an async function
/// would keep, as its argument, for its whole life).
pub struct Outgoing {
    head: Bytes,
    /// The request's header map, emptied, for the response's headers.
    headers: http::HeaderMap,
    framing: wire::BodyFraming,
    body: Option<SentBody>,
    retry: bool,
    head_request: bool,
}

impl Outgoing {
    /// `added`: the fields the gateway adds, written after the request's.
    pub fn new<'n, 'v>(
        req: Request<SentBody>,
        added: impl Iterator<Item = (&'n str, &'v http::HeaderValue)> + Clone,
    ) -> Outgoing {
        let (parts, body) = req.into_parts();
        let has_body = !body.is_end_stream();
        let (head, framing) =
            wire::encode_head(&parts, has_body.then(|| body.size_hint().exact()), added);
        let mut headers = parts.headers;
        headers.clear();
        Outgoing {
            head,
            headers,
            framing,
            body: has_body.then_some(body),
            retry: !has_body && idempotent(&parts.method),
            head_request: parts.method == Method::HEAD,
        }
    }
}

/// The methods RFC 9110 §9.2.2 defines as idempotent (and no method it
/// does not know of).
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests;

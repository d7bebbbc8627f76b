//! keygate's own HTTP/1.1 server side: a client connection's requests read,
//! handed to the gateway and answered, one at a time, in the connection's
//! task. hyper's server did this through a dispatcher, a boxed future per
//! forwarded request and a body channel; here a request's forward is a part
//! of the connection's own future, its body is read from the connection's
//! buffer, and its response head and first bytes go out in one write.
//! HTTP/2 stays with hyper (`super::Served::H2`).
//!
//! The timeouts of the connection (head, idle, a client that stops reading)
//! stay with the supervisor in `super`, which sees reads and writes through
//! `ClientIo` and the request's `InFlight` mark.

mod body;
mod head;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use http::header::UPGRADE;
use http::{HeaderMap, Method, Response, StatusCode, Version};
use http_body::Body;
use tokio::io::AsyncWrite;

use body::{Decoding, Io, RequestBody, Shared, lock};
pub use head::Limits;
use head::{HeadError, Persist, RequestHead, Send};

use super::activity::Activity;
use super::io::ClientIo;
use crate::proxy::h1::{Chunk, last_chunk};
use crate::proxy::tunnel::{self, Handover};
use crate::proxy::{Begun, ConnInfo, Gateway, ProxyBody};

/// Response bytes gathered before they are written: a small answer goes in
/// one write with its head; a large one is written as it comes.
const FLUSH_AT: usize = 64 * 1024;
/// Body pieces up to this size are copied next to the head (one write);
/// larger ones are written from where they are.
const COPY_AT: usize = 8 * 1024;
/// A connection closed with request bytes unread first reads (and drops)
/// what the client still sends, up to this much for this long, so that
/// the kernel does not answer them with a reset that can destroy the
/// response before the client reads it (nginx's lingering close).
const LINGER_BYTES: usize = 64 * 1024;
const LINGER: Duration = Duration::from_secs(2);

/// What a connection needs besides its stream.
pub struct Serve {
    pub gateway: Arc<Gateway>,
    pub activity: Arc<Activity>,
    pub info: Arc<ConnInfo>,
    pub limits: Limits,
    /// Set on shutdown: no request after the one in progress.
    pub draining: Arc<AtomicBool>,
}

/// Serves a client connection's HTTP/1.x requests until it closes, fails,
/// drains or becomes a tunnel.
pub async fn serve(stream: ClientIo, serve: Serve) {
    let peer = serve.info.peer;
    let mut conn = Conn::new(stream, serve.limits);
    let mut number = 0u64;
    // The response deadline's timer, one for all the connection's requests.
    let mut timer = std::pin::pin!(tokio::time::sleep_until(tokio::time::Instant::now()));
    loop {
        let head = match poll_fn(|cx| conn.poll_head(cx, &serve.draining)).await {
            Ok(Some(head)) => head,
            Ok(None) => return conn.close(false).await,
            Err(Failure::Io(e)) => {
                tracing::debug!(client.addr = %peer, error = %e, "connection ended with an error");
                return;
            }
            Err(Failure::Head(e)) => {
                // Never the bytes: a malformed request may still carry a key.
                tracing::info!(client.addr = %peer, status = e.status().as_u16(), reason = e.reason(), "malformed request refused");
                with_date(|date| head::refusal(&mut conn.out, e, date));
                if poll_fn(|cx| conn.poll_out(cx)).await.is_ok() {
                    conn.close(true).await;
                }
                return;
            }
        };
        number += 1;
        let RequestHead {
            request,
            framing,
            keep_alive,
            expect_continue,
        } = head;
        let http11 = request.version() == Version::HTTP_11;
        let exchange = Exchange {
            head_request: request.method() == Method::HEAD,
            http11,
            keep_alive,
        };
        let body = {
            let mut io = lock(&conn.shared);
            io.request = number;
            io.body = match framing {
                head::Framing::None => Decoding::Done,
                head::Framing::Length(n) => Decoding::Length(n),
                head::Framing::Chunked => Decoding::Chunked(Chunk::Size),
            };
            io.continue_at =
                (expect_continue && http11 && io.body != Decoding::Done && io.buf.is_empty())
                    .then_some(0);
            match io.body {
                Decoding::Done => RequestBody::empty(),
                _ => RequestBody::new(conn.shared.clone(), number),
            }
        };
        let mut request = request.map(|()| body);
        let handover = (http11 && request.headers().contains_key(UPGRADE)).then(|| {
            let (give, on) = tunnel::handover();
            request.extensions_mut().insert(on);
            give
        });
        let busy = serve.activity.begin(false);
        let begun = serve.gateway.begin(request, &serve.info);
        behind_the_ready_tasks().await;
        let (response, answered) = match begun {
            Begun::Answered(response) => (response, true),
            Begun::Forward(pending) => (
                serve
                    .gateway
                    .forward_with_timer(pending, &serve.info, timer.as_mut())
                    .await,
                false,
            ),
        };
        let next = conn
            .respond(response, exchange, answered, handover, &serve.draining)
            .await;
        drop(busy);
        match next {
            Ok(Next::KeepAlive) => {}
            Ok(Next::Close) => return conn.close(false).await,
            Ok(Next::Upgrade(give)) => return conn.hand_over(give, peer),
            Err(e) => {
                tracing::debug!(client.addr = %peer, error = %e, "response cut");
                // A body still held elsewhere must not read on from a
                // connection that is over.
                conn.detach_reader();
                return;
            }
        }
    }
}

/// Returns after the tasks already waiting to run have run: a request is
/// written upstream, or its refusal written back, once the other
/// connections that became readable with it have read theirs, so that the
/// writes reach the backend (or the clients) together. Written one by one,
/// each between a read and a decision, they come a few microseconds apart,
/// and a reader that is quicker than that sleeps between them: each write
/// then wakes it, at the cost of a wake-up (on a VM, an inter-processor
/// interrupt) charged to the writer. Under `wrk -c64` this took the
/// backend's and the client's context switches from 0.15-0.21 to 0.06-0.09
/// a forwarded request (HAProxy's: 0.04-0.08), and the client's from 0.21
/// to 0.04 a refusal (HAProxy's: 0.04); PERFORMANCE.md, session 10. No
/// system call: the task goes to the back of its worker's queue, as a
/// wake-up from elsewhere would put it.
async fn behind_the_ready_tasks() {
    let mut queued = false;
    poll_fn(|cx| {
        if queued {
            return Poll::Ready(());
        }
        queued = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

/// Why reading a head stopped.
enum Failure {
    Io(io::Error),
    Head(HeadError),
}

/// What the connection must remember of a request while it answers it.
#[derive(Debug, Clone, Copy)]
struct Exchange {
    head_request: bool,
    http11: bool,
    keep_alive: bool,
}

/// After a response.
enum Next {
    KeepAlive,
    Close,
    Upgrade(Handover),
}

/// Why a response could not be sent whole.
#[derive(Debug)]
enum Cut {
    Io(io::Error),
    /// The body failed (the upstream died mid-body): the client must not
    /// take what it got for the whole response.
    Body(crate::proxy::BodyError),
    /// The body ended before, or went past, the length its head stated.
    Length,
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cut::Io(e) => write!(f, "writing to the client: {e}"),
            Cut::Body(e) => write!(f, "response body: {e}"),
            Cut::Length => f.write_str("response body did not match its length"),
        }
    }
}

struct Conn {
    shared: Shared,
    limits: Limits,
    /// The last response's header map, emptied: the next request's fields
    /// fill it.
    room: HeaderMap,
    spans: Vec<head::Span>,
    names: head::Names,
    /// Response bytes to write, from `out_at`; then `queue`, in order.
    out: Vec<u8>,
    out_at: usize,
    queue: VecDeque<Bytes>,
    queued: usize,
}

impl Conn {
    fn new(stream: ClientIo, limits: Limits) -> Self {
        Conn {
            shared: Arc::new(Mutex::new(Io {
                stream,
                buf: BytesMut::new(),
                body: Decoding::Done,
                request: 0,
                continue_at: None,
            })),
            limits,
            room: HeaderMap::new(),
            spans: Vec::new(),
            names: head::Names::default(),
            out: Vec::with_capacity(1024),
            out_at: 0,
            queue: VecDeque::new(),
            queued: 0,
        }
    }

    /// The next request head: `None` when the client closed between
    /// requests, or the connection drains with no request begun.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        draining: &AtomicBool,
    ) -> Poll<Result<Option<RequestHead>, Failure>> {
        let mut io = lock(&self.shared);
        loop {
            if !io.buf.is_empty() {
                match head::parse_request(
                    &mut io.buf,
                    self.limits,
                    &mut self.room,
                    &mut self.spans,
                    &mut self.names,
                ) {
                    Ok(Some(head)) => return Poll::Ready(Ok(Some(head))),
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Err(Failure::Head(e))),
                }
            } else if draining.load(Ordering::Relaxed) {
                return Poll::Ready(Ok(None));
            }
            match ready!(io.poll_fill(cx)) {
                // Closed, between requests or mid-head: nothing to answer.
                Ok(0) => return Poll::Ready(Ok(None)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(Failure::Io(e))),
            }
        }
    }

    /// Writes a response, its body streamed through, and says what comes
    /// after it.
    async fn respond(
        &mut self,
        response: Response<ProxyBody>,
        x: Exchange,
        answered: bool,
        handover: Option<Handover>,
        draining: &AtomicBool,
    ) -> Result<Next, Cut> {
        let (parts, mut body) = response.into_parts();
        let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
        let (send, length) = head::plan(
            parts.status,
            x.head_request,
            &parts.headers,
            body.size_hint().exact(),
            x.http11,
        );
        let mut keep = x.keep_alive
            && !switching
            && send != Send::UntilClose
            && !head::asks_close(&parts.headers)
            && !draining.load(Ordering::Relaxed);
        // The gateway answered without reading the body: the next request
        // can follow only if the body came whole with the head.
        if keep && answered {
            keep = self.discard_body();
        }
        {
            // The interim answer is owed only until a final one goes.
            let mut io = lock(&self.shared);
            let owed = io.take_continue();
            self.out.extend_from_slice(owed);
        }
        let persist = match (switching, keep, x.http11) {
            (true, _, _) | (false, true, true) => Persist::Default,
            (false, true, false) => Persist::KeepAlive,
            (false, false, _) => Persist::Close,
        };
        with_date(|date| {
            head::encode_response(
                &mut self.out,
                parts.status,
                &parts.headers,
                send,
                length,
                persist,
                date,
            );
        });
        self.room = parts.headers;
        if send == Send::Nothing {
            drop(body);
            poll_fn(|cx| self.poll_out(cx)).await.map_err(Cut::Io)?;
        } else if let Err(cut) = self.stream(&mut body, send).await {
            // A body cut short must not look whole to the client: with no
            // length or chunks to tell, only a reset says so.
            if send == Send::UntilClose {
                lock(&self.shared).stream.abort_on_close();
            }
            return Err(cut);
        }
        if switching {
            return Ok(match handover {
                Some(give) => Next::Upgrade(give),
                None => Next::Close,
            });
        }
        // A forwarded body the upstream answered before it was all sent.
        if keep && !answered {
            keep = self.discard_body();
        }
        Ok(if keep && !draining.load(Ordering::Relaxed) {
            Next::KeepAlive
        } else {
            Next::Close
        })
    }

    /// Drops the rest of the current request's body, as far as it has been
    /// read: true when none is left. A body still held elsewhere (by an
    /// HTTPS or HTTP/2 backend's connection, which may go on sending it
    /// after the answer) is cut off instead: its next read fails, and the
    /// connection closes after this exchange.
    fn discard_body(&mut self) -> bool {
        if self.detach_reader() {
            return false;
        }
        let mut io = lock(&self.shared);
        let io = &mut *io;
        head::discard(&mut io.body, &mut io.buf)
    }

    /// True when a request body elsewhere still holds the connection; it
    /// reads nothing more from then on.
    fn detach_reader(&self) -> bool {
        if Arc::strong_count(&self.shared) == 1 {
            return false;
        }
        let mut io = lock(&self.shared);
        io.request = io.request.wrapping_add(1);
        io.body = Decoding::Failed;
        true
    }

    /// Sends a response body, framed as its head said. Trailers are
    /// dropped, as hyper's server dropped them (it sends only fields a
    /// `Trailer` header declared, and that header is hop-by-hop here).
    async fn stream(&mut self, body: &mut ProxyBody, send: Send) -> Result<(), Cut> {
        let mut sent = 0u64;
        let mut ended = false;
        let mut chunk_open = false;
        poll_fn(|cx| {
            loop {
                if !ended && self.buffered() < FLUSH_AT {
                    match Pin::new(&mut *body).poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            match frame.into_data() {
                                Ok(data) if data.is_empty() => {}
                                Ok(data) => {
                                    sent += data.len() as u64;
                                    match send {
                                        Send::Length(n) if sent > n => {
                                            return Poll::Ready(Err(Cut::Length));
                                        }
                                        Send::Chunked => {
                                            let mut line = [0u8; 20];
                                            let line = size_line(chunk_open, data.len(), &mut line);
                                            self.push_small(line);
                                            chunk_open = true;
                                            self.push(data);
                                        }
                                        _ => self.push(data),
                                    }
                                }
                                Err(_trailers) => {}
                            }
                            continue;
                        }
                        Poll::Ready(None) => {
                            ended = true;
                            match send {
                                Send::Length(n) if sent != n => {
                                    return Poll::Ready(Err(Cut::Length));
                                }
                                Send::Chunked => self.push(last_chunk(chunk_open, None)),
                                _ => {}
                            }
                            continue;
                        }
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Cut::Body(e))),
                        Poll::Pending if self.buffered() == 0 => return Poll::Pending,
                        Poll::Pending => {}
                    }
                }
                ready!(self.poll_out(cx)).map_err(Cut::Io)?;
                if ended {
                    return Poll::Ready(Ok(()));
                }
            }
        })
        .await
    }

    fn buffered(&self) -> usize {
        self.out.len() - self.out_at + self.queued
    }

    fn push(&mut self, data: Bytes) {
        if self.queue.is_empty() && data.len() <= COPY_AT {
            self.out.extend_from_slice(&data);
        } else {
            self.queued += data.len();
            self.queue.push_back(data);
        }
    }

    fn push_small(&mut self, bytes: &[u8]) {
        if self.queue.is_empty() {
            self.out.extend_from_slice(bytes);
        } else {
            self.push(Bytes::copy_from_slice(bytes));
        }
    }

    /// Writes everything gathered, then flushes.
    fn poll_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut io = lock(&self.shared);
        while self.buffered() > 0 {
            let mut slices = [IoSlice::new(&[]); 16];
            let mut count = 0;
            if self.out_at < self.out.len() {
                slices[0] = IoSlice::new(&self.out[self.out_at..]);
                count = 1;
            }
            for (slot, piece) in slices[count..].iter_mut().zip(self.queue.iter()) {
                *slot = IoSlice::new(piece);
                count += 1;
            }
            let mut n = ready!(Pin::new(&mut io.stream).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let from_out = n.min(self.out.len() - self.out_at);
            self.out_at += from_out;
            n -= from_out;
            while n > 0 {
                let Some(front) = self.queue.front_mut() else {
                    break;
                };
                let take = n.min(front.len());
                front.advance(take);
                self.queued -= take;
                n -= take;
                if front.is_empty() {
                    self.queue.pop_front();
                }
            }
        }
        self.out.clear();
        self.out_at = 0;
        Pin::new(&mut io.stream).poll_flush(cx)
    }

    /// Ends the connection: the write side shut, and when request bytes
    /// may be left unread (or `linger`), what still comes read and dropped
    /// for a short while first.
    async fn close(self, linger: bool) {
        self.detach_reader();
        let linger = linger || {
            let io = lock(&self.shared);
            io.body != Decoding::Done || !io.buf.is_empty()
        };
        let mut shut = false;
        let mut dropped = 0usize;
        let closing = poll_fn(|cx| {
            let mut io = lock(&self.shared);
            if !shut {
                let _ = ready!(Pin::new(&mut io.stream).poll_shutdown(cx));
                shut = true;
            }
            while linger && dropped < LINGER_BYTES {
                io.buf.clear();
                match ready!(io.poll_fill(cx)) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => dropped += n,
                }
            }
            Poll::Ready(())
        });
        let _ = tokio::time::timeout(LINGER, closing).await;
    }

    /// Gives the connection to the tunnel the gateway started for a
    /// protocol switch, with what the client sent after its request.
    fn hand_over(self, give: Handover, peer: std::net::SocketAddr) {
        // A switch's request has no body, so no reader holds the stream;
        // if one still did, the tunnel cannot start.
        match Arc::try_unwrap(self.shared) {
            Ok(io) => {
                let io = io
                    .into_inner()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let stream = io.stream.replaying(io.buf.freeze());
                let _ = give.give(Box::new(stream));
            }
            Err(_) => {
                tracing::info!(client.addr = %peer, "protocol switch dropped: the request's body was still being read");
            }
        }
    }
}

/// A chunk's size line, after the CRLF that closes the previous chunk's
/// data when one is open.
fn size_line(close_previous: bool, len: usize, out: &mut [u8; 20]) -> &[u8] {
    let mut at = 0;
    if close_previous {
        out[..2].copy_from_slice(b"\r\n");
        at = 2;
    }
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for i in 0..digits {
        let nibble = (len >> (4 * (digits - 1 - i))) & 0xf;
        out[at + i] = b"0123456789abcdef"[nibble];
    }
    at += digits;
    out[at..at + 2].copy_from_slice(b"\r\n");
    &out[..at + 2]
}

/// Calls `f` with the `Date` value of this second (formatted once a second
/// per worker thread, as hyper does).
fn with_date<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, [u8; 29])> =
            const { std::cell::RefCell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|date| {
        let mut date = date.borrow_mut();
        if date.0 != second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                date.1.copy_from_slice(text.as_bytes());
                date.0 = second;
            }
        }
        f(&date.1)
    })
}

//! The client connection's byte stream as its requests share it, and a
//! request's body read from it.
//!
//! The connection reads heads and writes responses; a forwarded request's
//! body is read by whoever sends it upstream, in the request's task or a
//! backend connection's. Both go through one lock, never held across a
//! wait or while anything else is polled: within one task it is never
//! contended.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWrite};

use crate::proxy::h1::{Chunk, ProtocolError, Step, decode_chunk, take_up_to};

use super::super::io::ClientIo;

/// Bytes read from the client at a time (at least a quarter of it free).
const READ_CHUNK: usize = 16 * 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Where the current request's body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoding {
    Done,
    Length(u64),
    Chunked(Chunk),
    /// Cut short or malformed: the connection cannot go on.
    Failed,
}

/// The connection's stream and what has been read from it but not used.
pub struct Io {
    pub stream: ClientIo,
    pub buf: BytesMut,
    pub body: Decoding,
    /// The request whose body may be read: a body that outlives its
    /// request (held by a backend connection) reads nothing more.
    pub request: u64,
    /// Bytes of `100 Continue` still to write before the body is read;
    /// `None` when none is owed.
    pub continue_at: Option<usize>,
}

pub type Shared = Arc<Mutex<Io>>;

pub fn lock(shared: &Shared) -> MutexGuard<'_, Io> {
    // A panic elsewhere cannot leave `Io` half-changed in a way that
    // matters more than the connection: go on with what is there.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Io {
    /// Reads what the client has sent into `buf`: `Ok(0)` at its end.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        let read = std::pin::pin!(self.stream.read_buf(&mut self.buf));
        std::future::Future::poll(read, cx)
    }

    /// What is still owed of `100 Continue`, taken over by the response
    /// about to be written: a final answer needs no interim one first, and
    /// one begun must be finished before it.
    pub fn take_continue(&mut self) -> &'static [u8] {
        match self.continue_at.take() {
            Some(0) | None => &[],
            Some(at) => CONTINUE.get(at..).unwrap_or_default(),
        }
    }

    /// Writes whatever is owed of `100 Continue`.
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(at) = self.continue_at {
            let rest = CONTINUE.get(at..).unwrap_or_default();
            if rest.is_empty() {
                self.continue_at = None;
                ready!(Pin::new(&mut self.stream).poll_flush(cx))?;
                break;
            }
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.continue_at = Some(at + n);
        }
        Poll::Ready(Ok(()))
    }
}

/// A request body as it arrives on the client connection.
pub struct RequestBody {
    /// `None`: the request has no body.
    shared: Option<Shared>,
    request: u64,
}

impl RequestBody {
    pub fn empty() -> Self {
        RequestBody {
            shared: None,
            request: 0,
        }
    }

    pub fn new(shared: Shared, request: u64) -> Self {
        RequestBody {
            shared: Some(shared),
            request,
        }
    }
}

/// The request body ended before its framing said, or broke it.
#[derive(Debug)]
struct BodyFailed(ProtocolError);

impl std::fmt::Display for BodyFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client request body: {}", self.0)
    }
}

impl std::error::Error for BodyFailed {}

fn failed(e: ProtocolError) -> Poll<Option<Result<Frame<Bytes>, crate::proxy::BodyError>>> {
    Poll::Ready(Some(Err(Box::new(BodyFailed(e)))))
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = crate::proxy::BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let Some(shared) = &this.shared else {
            return Poll::Ready(None);
        };
        let mut io = lock(shared);
        if io.request != this.request {
            return failed(ProtocolError::IncompleteBody);
        }
        if let Err(e) = ready!(io.poll_continue(cx)) {
            io.body = Decoding::Failed;
            return Poll::Ready(Some(Err(Box::new(e))));
        }
        loop {
            let io = &mut *io;
            match &mut io.body {
                Decoding::Done => return Poll::Ready(None),
                Decoding::Failed => return failed(ProtocolError::IncompleteBody),
                Decoding::Length(left) => {
                    if let Some(data) = take_up_to(&mut io.buf, *left) {
                        *left -= data.len() as u64;
                        if *left == 0 {
                            io.body = Decoding::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Decoding::Chunked(chunk) => match decode_chunk(chunk, &mut io.buf) {
                    Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Step::Trailers(trailers)) => {
                        io.body = Decoding::Done;
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(Step::End) => {
                        io.body = Decoding::Done;
                        return Poll::Ready(None);
                    }
                    Ok(Step::More) => {}
                    Err(e) => {
                        io.body = Decoding::Failed;
                        return failed(e);
                    }
                },
            }
            match ready!(io.poll_fill(cx)) {
                Ok(0) => {
                    io.body = Decoding::Failed;
                    return failed(ProtocolError::IncompleteBody);
                }
                Ok(_) => {}
                Err(e) => {
                    io.body = Decoding::Failed;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.shared {
            None => true,
            Some(shared) => {
                let io = lock(shared);
                io.request == self.request && io.body == Decoding::Done
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.shared {
            None => SizeHint::with_exact(0),
            Some(shared) => match lock(shared).body {
                Decoding::Done => SizeHint::with_exact(0),
                Decoding::Length(n) => SizeHint::with_exact(n),
                _ => SizeHint::default(),
            },
        }
    }
}

//! One exchange on a connection: the request written (its body framed
//! as it streams, pieces gathered into vectored writes) while the response
//! head is read.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::io::AsyncWrite;

use super::super::body::BodyError;
use super::super::upstream::{SentBody, UPSTREAM_BUFFER_BYTES};
use super::wire::{self, ProtocolError};
use super::{Conn, Error};

/// A failure before the response head, and whether any byte of an answer
/// had come.
pub(super) struct Failed {
    pub error: Error,
    pub answered: bool,
}

/// Pieces queued for one vectored write at most. What is queued stays
/// under `UPSTREAM_BUFFER_BYTES` before the next piece of the body is taken
/// (so at most that plus one piece: the bound per request in the README).
pub(super) const MAX_QUEUED: usize = 4;

impl Conn {
    /// Begins an exchange: the head is written first, then the body.
    pub(super) fn start(
        &mut self,
        head: Bytes,
        body: Option<SentBody>,
        framing: wire::BodyFraming,
        headers: http::HeaderMap,
    ) {
        self.headers = headers;
        self.out.clear();
        self.out.push_back(head);
        self.body = body;
        self.owed = match framing {
            wire::BodyFraming::Length(n) => n,
            wire::BodyFraming::Chunked => 0,
        };
        self.framing = framing;
        self.chunk_open = false;
        self.broken = false;
    }

    /// The upstream stopped taking the request: keep only its answer.
    pub(super) fn abandon_request(&mut self) {
        self.body = None;
        self.out.clear();
        self.broken = true;
    }

    /// True when the whole request (head and body) has been written.
    pub(super) fn sent(&self) -> bool {
        self.body.is_none() && self.out.is_empty()
    }

    /// Writes what it can of the request: `Ready(Ok)` once all is written.
    /// Body pieces ready at once are gathered first, so that a small
    /// request goes out in one write, head and body together.
    pub(super) fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            if let Some(body) = self.body.as_mut()
                && self.out.len() < MAX_QUEUED
                && self.out.iter().map(Bytes::len).sum::<usize>() < UPSTREAM_BUFFER_BYTES
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
            // Request trailers are not forwarded: hyper sends only those a
            // `Trailer` header announced, and that header is hop-by-hop, so
            // none ever went upstream; sent, they would carry past the
            // header rewriting what it removes (a key, `x-keygate-*`).
            Err(_) => {}
        }
        Ok(())
    }

    /// Writes the request and reads until a final response head. What the
    /// upstream said is looked at before writing more: an upstream may
    /// answer early (401, 413) and close, and the answer stands even when
    /// the write that follows fails.
    pub(super) fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        head_request: bool,
    ) -> Poll<Result<wire::Head, Failed>> {
        loop {
            match wire::parse_head(&mut self.buf, head_request, &mut self.headers) {
                Ok(Some(mut head)) => {
                    head.keep_alive &= !self.broken;
                    return Poll::Ready(Ok(head));
                }
                Ok(None) => {}
                Err(e) => {
                    return Poll::Ready(Err(Failed {
                        error: Error::Protocol(e),
                        answered: true,
                    }));
                }
            }
            if !self.sent() {
                match self.poll_send(cx) {
                    // The request itself broke (the client's upload, or a
                    // body that does not match its length): no answer to
                    // wait for.
                    Poll::Ready(Err(error @ (Error::Body(_) | Error::Protocol(_)))) => {
                        return Poll::Ready(Err(Failed {
                            answered: !self.buf.is_empty(),
                            error,
                        }));
                    }
                    Poll::Ready(Err(_)) => self.abandon_request(),
                    _ => {}
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

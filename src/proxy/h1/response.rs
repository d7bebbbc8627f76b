//! The response body of an `h1` exchange, and the connection it leaves
//! behind: back to the pool, closed, or a tunnel after `101`.

use std::io;
use std::pin::Pin;
use std::sync::Weak;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::super::body::BodyError;
use super::super::pool::Stack;
use super::wire::{self, Decoder, ProtocolError};
use super::{Conn, Error};

/// A response body read from the upstream connection by the task that
/// relays it; the request body, if still on its way, is written by the same
/// polls. The connection goes back to the pool at the body's end when the
/// exchange was whole, and is closed when it is dropped before.
pub struct ResponseBody {
    exchange: Option<Box<Conn>>,
    decoder: Decoder,
    keep_alive: bool,
    /// The body broke (the upstream, or the client's upload): it never
    /// reads as ended, so that the access log says so.
    failed: bool,
    pool: Weak<Stack<Box<Conn>>>,
}

impl ResponseBody {
    /// A body that has none (HEAD, 204, 304, `Content-Length: 0`) is
    /// finished here: hyper never polls a body that says it has ended.
    pub(super) fn new(
        exchange: Box<Conn>,
        decoder: Decoder,
        keep_alive: bool,
        pool: Weak<Stack<Box<Conn>>>,
    ) -> Self {
        let mut body = ResponseBody {
            exchange: Some(exchange),
            decoder,
            keep_alive,
            failed: false,
            pool,
        };
        // Only a reusable one: after a 101 the connection is the tunnel's,
        // and any other is closed when the body is dropped.
        if body.decoder.is_done() && keep_alive {
            body.finish();
        }
        body
    }

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
        self.failed = true;
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
                if let Error::Body(_) | Error::Protocol(_) = e {
                    // The request itself broke (the client's upload, or a
                    // body that does not match its length): the exchange
                    // is cut.
                    return this.fail(e);
                }
                // The upstream stopped taking the request (it answered
                // early and closed): its response is still read whole, on
                // a connection that is then closed.
                exchange.abandon_request();
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
        !self.failed && (self.exchange.is_none() || self.decoder.is_done())
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

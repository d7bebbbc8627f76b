//! keygate's HTTP/2 server side, on the `h2` crate (hyper's HTTP/2 server
//! is a layer over the same crate).
//!
//! One task per connection: it drives the connection and polls the
//! exchanges of its streams itself (a `FuturesUnordered`), where hyper
//! spawned a task per stream that woke the connection's task for every
//! frame it sent. A refusal is answered as soon as its stream is read.
//!
//! What hyper's server did and this one keeps: the request body hands its
//! flow-control window back as the upstream takes the bytes (so a client
//! can make the gateway hold at most a window per stream); a response body
//! is sent as the client's window allows, trailers included (gRPC); a
//! client's reset of a stream cancels its forward; connection-specific
//! header fields are taken off responses; `Date` is added when the backend
//! sent none, and `Content-Length` when the body's length is known.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use ::h2::server::SendResponse;
use ::h2::{Reason, RecvStream, SendStream};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};

use super::activity::{Activity, InFlight};
use super::io::ClientIo;
use crate::proxy::{Begun, ConnInfo, Gateway, ProxyBody};

/// What one connection's server needs.
pub struct Serve {
    pub gateway: Arc<Gateway>,
    pub activity: Arc<Activity>,
    pub info: Arc<ConnInfo>,
    pub settings: h2::server::Builder,
    /// Set by the supervisor to drain: a GOAWAY, then the streams already
    /// open finish.
    pub draining: Arc<AtomicBool>,
}

/// Serves one HTTP/2 connection until it closes.
pub async fn serve(io: ClientIo, s: Serve) {
    let peer = s.info.peer;
    let mut conn = match s.settings.handshake::<_, Bytes>(io).await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!(client.addr = %peer, error = %e, "HTTP/2 handshake failed");
            return;
        }
    };
    let mut streams = FuturesUnordered::new();
    let mut shutting_down = false;
    let ended = std::future::poll_fn(|cx| {
        if !shutting_down && s.draining.load(Ordering::Relaxed) {
            shutting_down = true;
            conn.graceful_shutdown();
        }
        loop {
            // The streams first: what they queue is written by the
            // connection's poll below.
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((request, respond)))) => {
                    let busy = s.activity.begin(true);
                    let (parts, recv) = request.into_parts();
                    let body = RequestBody::new(recv, &parts.headers);
                    let begun = s.gateway.begin(Request::from_parts(parts, body), &s.info);
                    streams.push(exchange(
                        s.gateway.clone(),
                        s.info.clone(),
                        begun,
                        respond,
                        busy,
                    ));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
    if let Err(e) = ended {
        tracing::debug!(client.addr = %peer, error = %e, "HTTP/2 connection ended with an error");
    }
}

/// One stream: the gateway's answer, or the forward's response, sent.
async fn exchange(
    gateway: Arc<Gateway>,
    info: Arc<ConnInfo>,
    begun: Begun,
    mut respond: SendResponse<Bytes>,
    _busy: InFlight,
) {
    let response = match begun {
        Begun::Answered(response) => response,
        Begun::Forward(pending) => {
            let mut forward = pin!(gateway.forward_pending(pending, &info));
            // A client that resets the stream cancels the forward.
            let response = std::future::poll_fn(|cx| {
                if let Poll::Ready(response) = forward.as_mut().poll(cx) {
                    return Poll::Ready(Some(response));
                }
                respond.poll_reset(cx).map(|_| None)
            })
            .await;
            match response {
                Some(response) => response,
                None => return,
            }
        }
    };
    let (mut head, mut body) = response.into_parts();
    // One pass over the (few) names present tells all three: cheaper than
    // hashing each name to look it up.
    let (mut date_sent, mut length_sent, mut forbidden) = (false, false, false);
    for name in head.headers.keys() {
        date_sent |= name == header::DATE;
        length_sent |= name == header::CONTENT_LENGTH;
        forbidden |= CONNECTION_SPECIFIC.contains(name);
    }
    if forbidden {
        strip_connection_fields(&mut head.headers);
    }
    if !date_sent {
        head.headers.insert(header::DATE, date());
    }
    let end = body.is_end_stream();
    if !end
        && !length_sent
        && let Some(len) = body.size_hint().exact()
    {
        head.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    let mut tx = match respond.send_response(Response::from_parts(head, ()), end) {
        Ok(tx) => tx,
        Err(e) => {
            tracing::debug!(error = %e, "HTTP/2 response not sent");
            respond.send_reset(Reason::INTERNAL_ERROR);
            return;
        }
    };
    if !end {
        let mut held = None;
        std::future::poll_fn(|cx| pipe(cx, &mut tx, &mut body, &mut held)).await;
    }
}

/// Sends `body` on `tx` as the client's window allows, as hyper's
/// `PipeToSendStream` does: a chunk read is held until the stream has
/// some capacity, so that an idle body pins none of the connection's
/// window; the client's reset ends it.
fn pipe(
    cx: &mut Context<'_>,
    tx: &mut SendStream<Bytes>,
    body: &mut ProxyBody,
    held: &mut Option<(Bytes, bool)>,
) -> Poll<()> {
    loop {
        if tx.poll_reset(cx).is_ready() {
            return Poll::Ready(());
        }
        if let Some((data, end)) = held.take() {
            while tx.capacity() == 0 {
                match tx.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(0))) => {}
                    Poll::Ready(Some(Ok(_))) => break,
                    Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                    Poll::Pending => {
                        *held = Some((data, end));
                        return Poll::Pending;
                    }
                }
            }
            if tx.send_data(data, end).is_err() || end {
                return Poll::Ready(());
            }
            continue;
        }
        match ready!(Pin::new(&mut *body).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let end = body.is_end_stream();
                    if data.is_empty() {
                        if tx.send_data(data, end).is_err() || end {
                            return Poll::Ready(());
                        }
                    } else {
                        // h2 raises the claim to the chunk's length when
                        // it is sent.
                        tx.reserve_capacity(1);
                        *held = Some((data, end));
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        tx.reserve_capacity(0);
                        let _ = tx.send_trailers(trailers);
                        return Poll::Ready(());
                    }
                }
            },
            Some(Err(e)) => {
                tracing::debug!(error = %e, "HTTP/2 response body cut");
                tx.send_reset(Reason::INTERNAL_ERROR);
                return Poll::Ready(());
            }
            None => {
                let _ = tx.send_data(Bytes::new(), true);
                return Poll::Ready(());
            }
        }
    }
}

/// Fields HTTP/2 forbids (RFC 9113 §8.2.2). The gateway takes hop-by-hop
/// fields off what it forwards, so a response carries none of them unless
/// something upstream of this was wrong; `h2` would refuse to send it.
const CONNECTION_SPECIFIC: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
];

/// Removes the fields HTTP/2 forbids, and those `Connection` names.
fn strip_connection_fields(headers: &mut HeaderMap) {
    for name in &CONNECTION_SPECIFIC[1..] {
        headers.remove(name);
    }
    if let Some(connection) = headers.remove(header::CONNECTION)
        && let Ok(names) = connection.to_str()
    {
        for name in names.split(',') {
            headers.remove(name.trim());
        }
    }
}

/// The `Date` value of this second, made once a second per thread.
fn date() -> HeaderValue {
    thread_local! {
        static DATE: std::cell::RefCell<Option<(u64, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    let now = std::time::SystemTime::now();
    let second = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let make = || {
        HeaderValue::from_str(&httpdate::fmt_http_date(now))
            .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
    };
    DATE.try_with(|cell| {
        let mut cached = cell.borrow_mut();
        match &*cached {
            Some((s, value)) if *s == second => value.clone(),
            _ => {
                let value = make();
                *cached = Some((second, value.clone()));
                value
            }
        }
    })
    .unwrap_or_else(|_| make())
}

/// A request's body as the gateway reads it: each chunk's share of the
/// flow-control window is handed back as it is taken, so that the client
/// sends more only as the upstream takes it.
pub struct RequestBody {
    recv: RecvStream,
    data_done: bool,
    /// What `Content-Length` says is left, when it says anything.
    left: Option<u64>,
}

impl RequestBody {
    fn new(recv: RecvStream, headers: &HeaderMap) -> Self {
        let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
        let left = match (lengths.next(), lengths.next()) {
            (Some(v), None) => v.to_str().ok().and_then(|v| v.parse().ok()),
            _ => None,
        };
        RequestBody {
            recv,
            data_done: false,
            left,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ::h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ::h2::Error>>> {
        let this = self.get_mut();
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = &mut this.left {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                // A reset with NO_ERROR is an early response's doing
                // (RFC 9113 §8.1): the body ends, it does not fail.
                Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(left) => SizeHint::with_exact(left),
            None if self.recv.is_end_stream() => SizeHint::with_exact(0),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_specific_fields_are_taken_off_a_response() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("content-type", "application/json"),
            ("x-kept", "yes"),
        ] {
            h.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_connection_fields(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-kept"]);
    }

    #[test]
    fn the_date_is_an_http_date() {
        let value = date();
        let text = value.to_str().unwrap_or_default();
        assert!(httpdate::parse_http_date(text).is_ok(), "{text:?}");
    }
}

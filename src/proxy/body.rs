//! `ProxyBody`: the one response body type of the gateway, either a streamed
//! upstream body or a small body of our own. Streaming errors from the
//! upstream are counted here (`kind="protocol"`) and passed on, so hyper
//! aborts the client connection (HTTP/2: resets the stream) instead of
//! ending the response as if it were whole.
//!
//! An upstream that goes silent mid-body is cut after `upstream.read_timeout`
//! without a byte (nginx's `proxy_read_timeout`): the timer runs only while
//! keygate is waiting for the upstream, never while the client is slow to
//! read, and it is armed only when a read would block, so a body that
//! streams without pause costs no timer at all.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::access::Record;
use super::pool::Lease;
use super::stall::Stall;
use super::upstream::{Progress, UpstreamBody};
use crate::metrics::{Metrics, UpstreamErrorKind};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

enum Inner {
    Upstream(Box<Relay>),
    Bytes(Option<Bytes>),
}

/// An upstream body being relayed, and the connection it came on.
struct Relay {
    body: UpstreamBody,
    stall: Stall,
    progress: Arc<Progress>,
    /// Back to the pool when the exchange is whole (see `Drop`).
    lease: Option<Lease>,
    /// The body ended cleanly (its last frame was read).
    ended: bool,
    /// Body bytes relayed to the client.
    bytes: u64,
    /// The access log line, written when the body is done.
    record: Option<Box<Record>>,
}

/// Why an upstream body was cut: it stayed silent for `read_timeout`.
#[derive(Debug)]
pub struct UpstreamStalled(Duration);

impl std::fmt::Display for UpstreamStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the upstream sent nothing for {:?} mid-body", self.0)
    }
}

impl std::error::Error for UpstreamStalled {}

/// The error a client connection sees when a response body is cut.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

pub struct ProxyBody {
    inner: Inner,
    metrics: Option<Arc<Metrics>>,
}

impl ProxyBody {
    /// A body the gateway wrote itself.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        ProxyBody {
            inner: Inner::Bytes((!bytes.is_empty()).then_some(bytes)),
            metrics: None,
        }
    }

    pub fn empty() -> Self {
        ProxyBody {
            inner: Inner::Bytes(None),
            metrics: None,
        }
    }

    /// An upstream body, streamed through; cut after `read_timeout` of
    /// silence. `progress` tells whether the client broke the exchange.
    pub fn upstream(
        body: UpstreamBody,
        metrics: Arc<Metrics>,
        read_timeout: Duration,
        progress: Arc<Progress>,
        lease: Option<Lease>,
    ) -> Self {
        ProxyBody {
            inner: Inner::Upstream(Box::new(Relay {
                body,
                stall: Stall::new(read_timeout),
                progress,
                lease,
                ended: false,
                bytes: 0,
                record: None,
            })),
            metrics: Some(metrics),
        }
    }
}

impl ProxyBody {
    /// Logs `record` when this (upstream) body is done; a body of the
    /// gateway's own is logged by its caller.
    pub fn log_when_done(&mut self, record: Box<Record>) {
        if let Inner::Upstream(relay) = &mut self.inner {
            relay.record = Some(record);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match &mut this.inner {
            Inner::Bytes(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Upstream(relay) => match Pin::new(&mut relay.body).poll_frame(cx) {
                Poll::Ready(frame) => {
                    relay.stall.progressed();
                    match &frame {
                        None => relay.ended = true,
                        // A client silent mid-upload made the exchange fail
                        // (the request was cut): not the upstream's fault.
                        Some(Err(_)) => {
                            if let Some(m) = &this.metrics
                                && !relay.progress.client_timed_out()
                            {
                                m.upstream_error(UpstreamErrorKind::Protocol);
                            }
                        }
                        Some(Ok(f)) => {
                            relay.bytes += f.data_ref().map_or(0, |d| d.len() as u64);
                        }
                    }
                    Poll::Ready(frame)
                }
                Poll::Pending => {
                    if !relay.stall.waiting(cx) {
                        return Poll::Pending;
                    }
                    if let Some(m) = &this.metrics {
                        m.upstream_error(UpstreamErrorKind::Timeout);
                    }
                    tracing::warn!(timeout = ?relay.stall.limit(), "upstream went silent mid-body; response cut");
                    Poll::Ready(Some(Err(Box::new(UpstreamStalled(relay.stall.limit())))))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Bytes(b) => b.is_none(),
            Inner::Upstream(relay) => relay.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Bytes(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Upstream(relay) => relay.body.size_hint(),
        }
    }
}

/// hyper drops the body once it has written the last of it (or when the
/// client went away): the moment to give the connection back, if both
/// halves of the exchange are whole.
impl Drop for Relay {
    fn drop(&mut self) {
        let whole = self.ended || self.body.is_end_stream();
        if let Some(lease) = self.lease.take()
            && whole
            && self.progress.request_done()
        {
            lease.release();
        }
        if let Some(record) = &self.record {
            record.finish(self.progress.bytes_in(), self.bytes, whole);
        }
    }
}

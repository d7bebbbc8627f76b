//! `ProxyBody`: the one response body type of the gateway, either a streamed
//! upstream body or a small body of our own. Streaming errors from the
//! upstream are counted here (`kind="protocol"`) and passed on, so hyper
//! aborts the client connection (HTTP/2: resets the stream) instead of
//! ending the response as if it were whole.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::metrics::{Metrics, UpstreamErrorKind};
use crate::server::activity::InFlight;

enum Inner {
    Upstream(Incoming),
    Bytes(Option<Bytes>),
}

pub struct ProxyBody {
    inner: Inner,
    metrics: Option<Arc<Metrics>>,
    /// Held for as long as the body is being sent, so that the connection
    /// counts as busy (an idle timeout must not cut a long download).
    _busy: Option<InFlight>,
}

impl ProxyBody {
    /// A body the gateway wrote itself.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        ProxyBody {
            inner: Inner::Bytes((!bytes.is_empty()).then_some(bytes)),
            metrics: None,
            _busy: None,
        }
    }

    pub fn empty() -> Self {
        ProxyBody {
            inner: Inner::Bytes(None),
            metrics: None,
            _busy: None,
        }
    }

    /// An upstream body, streamed through.
    pub fn upstream(body: Incoming, metrics: Arc<Metrics>) -> Self {
        ProxyBody {
            inner: Inner::Upstream(body),
            metrics: Some(metrics),
            _busy: None,
        }
    }

    /// Attaches the request's in-flight guard.
    pub fn with_busy(mut self, busy: InFlight) -> Self {
        self._busy = Some(busy);
        self
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        match &mut this.inner {
            Inner::Bytes(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Upstream(body) => {
                let polled = Pin::new(body).poll_frame(cx);
                if let (Poll::Ready(Some(Err(_))), Some(m)) = (&polled, &this.metrics) {
                    m.upstream_error(UpstreamErrorKind::Protocol);
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Bytes(b) => b.is_none(),
            Inner::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Bytes(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Upstream(body) => body.size_hint(),
        }
    }
}

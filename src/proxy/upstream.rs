//! The upstream: a pooled, kept-alive hyper client (plain HTTP or HTTPS via
//! rustls), with the connect and response timeouts from the config, and the
//! classification of its failures into 502/504 and metric kinds.

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::sync::oneshot;

use super::body::BodyError;
use super::respond::ProxyError;
use crate::config::UpstreamConfig;
use crate::metrics::UpstreamErrorKind;

/// A request body on its way upstream, whatever it came from.
pub type RequestBody = UnsyncBoxBody<Bytes, BodyError>;

/// The upstream cannot be set up from the config (its TLS, its CA file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamError(pub String);

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UpstreamError {}

/// The backend every allowed request goes to.
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, SentBody>,
    scheme: Scheme,
    authority: Authority,
    response_timeout: Duration,
    read_timeout: Duration,
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig) -> Result<Upstream, UpstreamError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        let tls = client_tls(cfg).map_err(UpstreamError)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle)
            .build(connector);
        let (scheme, authority) = match (cfg.url.scheme(), cfg.url.authority()) {
            (Some(s), Some(a)) => (s.clone(), a.clone()),
            _ => {
                return Err(UpstreamError(format!(
                    "upstream.url {} needs a scheme and a host",
                    cfg.url
                )));
            }
        };
        Ok(Upstream {
            client,
            scheme,
            authority,
            response_timeout: cfg.response_timeout,
            read_timeout: cfg.read_timeout,
        })
    }

    /// The upstream URI for a request path and query.
    pub fn target(&self, path_and_query: Option<PathAndQuery>) -> Result<Uri, ProxyError> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query.unwrap_or_else(|| PathAndQuery::from_static("/")))
            .build()
            .map_err(|_| ProxyError::BadTarget)
    }

    /// The longest silence allowed mid-body (see `ProxyBody`).
    pub fn read_timeout(&self) -> std::time::Duration {
        self.read_timeout
    }

    /// Sends a request and waits for the response head. `response_timeout`
    /// starts once the request body has been sent (at once for a request
    /// without a body), so that a long upload is not cut as a slow upstream.
    pub async fn send(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, (ProxyError, UpstreamErrorKind)> {
        let (sent_tx, sent_rx) = oneshot::channel();
        let req = req.map(|inner| SentBody {
            inner,
            sent: Some(sent_tx),
        });
        let timeout = async {
            let _ = sent_rx.await;
            tokio::time::sleep(self.response_timeout).await;
        };
        tokio::select! {
            result = self.client.request(req) => match result {
                Ok(resp) => Ok(resp),
                Err(e) if e.is_connect() => Err((ProxyError::Unavailable, UpstreamErrorKind::Connect)),
                Err(_) => Err((ProxyError::Unavailable, UpstreamErrorKind::Protocol)),
            },
            () = timeout => Err((ProxyError::Timeout, UpstreamErrorKind::Timeout)),
        }
    }
}

/// The client's request body on its way upstream; says when it is done
/// (fully sent, failed, or dropped by the client connection).
pub struct SentBody {
    inner: RequestBody,
    sent: Option<oneshot::Sender<()>>,
}

impl SentBody {
    fn mark_sent(&mut self) {
        if let Some(tx) = self.sent.take() {
            let _ = tx.send(());
        }
    }
}

impl Body for SentBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.mark_sent();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for SentBody {
    fn drop(&mut self) {
        self.mark_sent();
    }
}

/// TLS to an `https://` upstream: the system's roots plus `upstream.ca`.
fn client_tls(cfg: &UpstreamConfig) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    // Missing system roots are not fatal: an internal upstream may be trusted
    // through `upstream.ca` alone.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(ca) = &cfg.ca {
        let certs = CertificateDer::pem_file_iter(ca)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("upstream.ca {}: {e}", ca.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "upstream.ca {}: no certificate in the file",
                ca.display()
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("upstream.ca {}: {e}", ca.display()))?;
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .map_err(|e| format!("TLS setup: {e}"))
}

//! The admin API and web console (SPEC "Admin API and web console"): its
//! own listener, its own bounds, admin tokens instead of API keys, and every
//! write through the same store code, lock and revocation list as the CLI.
//!
//! - `auth`: admin tokens (Bearer), console sessions (cookie + CSRF), the
//!   sign-in throttle;
//! - `api`: the JSON API under `/admin/v1`;
//! - `docs`: `openapi.json` and the page that reads it;
//! - `console`: the "API Keys" page and its static files.
//!
//! The store is synchronous (a file, or PostgreSQL through its own runtime),
//! so each store call runs on a thread of its own, off the server's runtime.

mod api;
mod auth;
mod console;
mod docs;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::config::{AdminConfig, Config};
use crate::metrics::Metrics;
use crate::store::{Audit, Store, StoreError, Tokens};

pub use auth::Sessions;

/// The largest request body the admin API reads: a key's fields are a few
/// hundred bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// A client has this long to send its request head, and its body.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin connections at once; more wait in the backlog.
const MAX_CONNECTIONS: usize = 256;

pub type AdminBody = Full<Bytes>;

/// Everything the admin listener needs.
pub struct Admin {
    store: Store,
    tokens: Tokens,
    audit: Audit,
    config: AdminConfig,
    /// The API key header and prefix, for snippets and new keys.
    key_header: String,
    key_prefix: String,
    sessions: Sessions,
    metrics: Arc<Metrics>,
    tls: bool,
    /// The running gateway's own counts (with `serve`): fresher than what
    /// the store holds, which is written every 10 s.
    live_usage: Option<Arc<crate::keys::UsageTable>>,
    /// When the "no admin token yet" hint was last logged (seconds on a
    /// monotonic clock), so that unauthenticated requests cannot flood the log.
    hinted_at: std::sync::atomic::AtomicU64,
    started: std::time::Instant,
}

impl Admin {
    /// `None` when the config has no `[admin]`.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Option<Admin>, StoreError> {
        let Some(admin) = &config.admin else {
            return Ok(None);
        };
        let store = Store::open(&config.keys.store)?;
        Ok(Some(Admin {
            audit: store.audit(),
            tokens: store.tokens(admin.tokens.clone()),
            store,
            key_header: config.keys.header.as_str().to_string(),
            key_prefix: config.keys.prefix.clone(),
            sessions: Sessions::new(admin.session_ttl),
            config: admin.clone(),
            metrics,
            tls: admin.tls.is_some(),
            live_usage: None,
            hinted_at: std::sync::atomic::AtomicU64::new(u64::MAX),
            started: std::time::Instant::now(),
        }))
    }

    /// Logs how to create the first admin token when there is none: at a
    /// refused request, at most once a minute.
    async fn hint_if_no_token(&self) {
        use std::sync::atomic::Ordering;
        let now = self.started.elapsed().as_secs();
        let last = self.hinted_at.load(Ordering::Relaxed);
        if last != u64::MAX && now < last + 60 {
            return;
        }
        let tokens = self.tokens.clone();
        if let Ok(list) = blocking(move || tokens.load()).await
            && list.is_empty()
            && self
                .hinted_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(tokens = %self.tokens.label(), "admin: there is no admin token yet, so every request is refused: create one with `keygate tokens create --name NAME --role admin`");
        }
    }

    /// Shows this process's live usage counts too.
    pub fn with_live_usage(mut self, usage: Arc<crate::keys::UsageTable>) -> Admin {
        self.live_usage = Some(usage);
        self
    }

    /// Handles one request from `peer`.
    pub async fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<AdminBody> {
        let (parts, body) = req.into_parts();
        let body = match read_body(body).await {
            Ok(b) => b,
            Err(e) => {
                let mut response = e.response();
                security_headers(&mut response);
                return self.finish("body", response);
            }
        };
        let req = Request::from_parts(parts, body);
        let (route, mut response) = self.route(req, peer).await;
        security_headers(&mut response);
        self.finish(route, response)
    }

    fn finish(&self, route: &'static str, response: Response<AdminBody>) -> Response<AdminBody> {
        self.metrics
            .admin_request(route, response.status().as_u16());
        response
    }

    async fn route(
        self: &Arc<Self>,
        req: Request<Bytes>,
        peer: SocketAddr,
    ) -> (&'static str, Response<AdminBody>) {
        let path = req.uri().path().to_string();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let method = req.method().clone();
        match (segments.as_slice(), &method) {
            ([""], &Method::GET) | (["admin"], &Method::GET) => ("console", console::page(self)),
            (["admin", "assets", file], &Method::GET) => ("asset", console::asset(file)),
            (["admin", "session"], _) => ("session", auth::session(self, &req, peer).await),
            (["admin", "docs"], &Method::GET) => ("docs", docs::page()),
            (["admin", "v1", "openapi.json"], &Method::GET) => ("openapi", docs::openapi()),
            (["admin", "v1", rest @ ..], _) => api::route(self, &req, rest, peer).await,
            _ => ("other", ApiError::not_found("no such page").response()),
        }
    }
}

/// Reads a whole request body, bounded in bytes and in time.
async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    let limited = Limited::new(body, MAX_BODY_BYTES);
    match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body did not arrive in time",
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is larger than 65536 bytes",
        )),
        Ok(Err(_)) => Err(ApiError::bad_request("the request body could not be read")),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Headers on every admin response: not frameable, no sniffing, no
/// referrer, and nothing cached (responses hold key details).
fn security_headers(r: &mut Response<AdminBody>) {
    let h = r.headers_mut();
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ));
}

/// An admin API error: status, code, message, and the field at fault (422).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            field: Some(field.to_string()),
            ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
        }
    }

    pub fn response(&self) -> Response<AdminBody> {
        let mut body = serde_json::json!({"error": self.code, "message": self.message});
        if let Some(f) = &self.field {
            body["field"] = serde_json::json!(f);
        }
        let mut r = json(self.status, &body);
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

impl From<StoreError> for ApiError {
    /// A store refusal is the client's problem (422/404/409); anything else
    /// is the server's (500), logged, with a message that names no path.
    fn from(e: StoreError) -> ApiError {
        use crate::keys::KeySetError;
        match e {
            StoreError::Key(KeySetError::NotFound(id)) => {
                ApiError::not_found(format!("no key with id {id:?}"))
            }
            StoreError::Key(KeySetError::UpgradeRefused(_)) => ApiError::new(
                StatusCode::CONFLICT,
                "upgrade_needs_force",
                "upgrading a read-only key to full-access needs \"force\": true: a read-only key may already be public",
            ),
            StoreError::Refused(msg) => ApiError::new(StatusCode::CONFLICT, "conflict", msg),
            other => {
                tracing::error!(error = %other, "admin: store operation failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store_error",
                    "the key store could not be read or written; see the gateway's log",
                )
            }
        }
    }
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<AdminBody> {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Runs `f` (a store call) on the runtime's blocking pool: the stores
/// block, and the PostgreSQL one runs a runtime of its own there.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(_) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_error",
            "the store operation failed",
        )),
    }
}

/// Serves the admin listener until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => return,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin: accept failed");
                    continue;
                }
            },
        };
        let admin = admin.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(req, peer).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(64 * 1024);
            let result = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            builder
                                .serve_connection(hyper_util::rt::TokioIo::new(s), service)
                                .await
                        }
                        _ => return,
                    }
                }
                None => {
                    builder
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "admin: connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests;

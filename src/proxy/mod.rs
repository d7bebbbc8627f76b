//! The request pipeline: take the index snapshot once, decide, then answer
//! (rejection, preflight) or forward to the upstream and stream back.
//!
//! `Gateway::handle` takes any request body, so the whole pipeline runs in
//! tests without a client socket (`tests.rs`). It knows nothing of
//! connections, timers of the server or TLS: `server` hands it requests.
//! Everything that can go wrong while forwarding is a `ProxyError`, and every
//! response the gateway writes itself is an `Answer` from `respond`.

pub mod access;
mod body;
pub(crate) mod h1;
pub mod headers;
mod log_path;
mod pool;
pub mod respond;
mod stall;
pub mod tunnel;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HOST, ORIGIN};
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use tokio::time::Instant;

pub use body::{BodyError, ProxyBody};
use headers::Caller;
pub use log_path::LogPath;
pub use respond::{Answer, ProxyError};
use upstream::Upstream;

use crate::config::{Config, IpNet};
use crate::keys::{Access, SharedIndex};
use crate::limits::{Limiter, Verdict};
use crate::metrics::{AccessLabel, DecisionLabel, Metrics};
use crate::policy::{self, Decision, KeySource, PolicySettings, Preflight, RequestHead};

/// What the pipeline needs about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The peer's IP as a header value, formatted once per connection.
    pub peer_ip: HeaderValue,
    /// The connection's slot under `server.max_connections`. A WebSocket
    /// tunnel outlives the server's connection and keeps a share of it, so that
    /// tunnels count against the limit and the shutdown drain waits for them.
    pub slot: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        // An IP address always formats to a valid header value.
        let peer_ip = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ConnInfo {
            peer,
            tls,
            peer_ip,
            slot: None,
        }
    }

    pub fn with_slot(mut self, slot: Arc<tokio::sync::OwnedSemaphorePermit>) -> Self {
        self.slot = Some(slot);
        self
    }
}

/// The gateway: policy settings, the index, the upstream and the metrics.
pub struct Gateway {
    index: SharedIndex,
    upstream: Upstream,
    metrics: Arc<Metrics>,
    settings: PolicySettings,
    forward_key: bool,
    access_log: bool,
    /// `server.max_headers`, for HTTP/2 requests (`server::h1` applies it to
    /// HTTP/1.1 heads, and HTTP/2 has no field-count limit of its own).
    max_headers: usize,
    /// `server.idle_timeout`, applied to upgraded tunnels.
    tunnel_idle: std::time::Duration,
    /// Row 7: rate limits.
    limiter: Arc<Limiter>,
    trusted_proxies: Vec<IpNet>,
}

/// The key a request was decided for, when the gateway knew it: what its
/// metrics are labelled with.
struct DecidedKey {
    id: HeaderValue,
    access: Access,
}

/// What an allowed request carries to the forwarder, owned so that the
/// request itself can move.
struct Identity {
    id: HeaderValue,
    access: Access,
    source: KeySource,
}

fn access_label(access: Option<Access>) -> AccessLabel {
    match access {
        None => AccessLabel::None,
        Some(Access::ReadOnly) => AccessLabel::ReadOnly,
        Some(Access::FullAccess) => AccessLabel::FullAccess,
    }
}

impl Gateway {
    pub fn new(
        config: &Config,
        index: SharedIndex,
        metrics: Arc<Metrics>,
    ) -> Result<Gateway, upstream::UpstreamError> {
        Ok(Gateway {
            index,
            upstream: Upstream::new(&config.upstream, config.server.body_timeout)?,
            metrics,
            settings: PolicySettings::from_config(config),
            forward_key: config.keys.forward_key,
            access_log: config.log.access_log,
            max_headers: config.server.max_headers,
            tunnel_idle: config.server.idle_timeout,
            // Local only: sharing needs the sync task `serve` wires up with
            // `with_limiter` (a tracker nobody drains would only grow).
            limiter: Arc::new(Limiter::new(&crate::config::LimitsConfig {
                shared: None,
                ..config.limits.clone()
            })),
            trusted_proxies: config.server.trusted_proxies.clone(),
        })
    }

    /// Uses this limiter (shared with its maintenance and sync tasks)
    /// instead of a private one.
    pub fn with_limiter(mut self, limiter: Arc<Limiter>) -> Self {
        self.limiter = limiter;
        self
    }

    /// Handles one request, start to response head. Any body will do: the
    /// server's for a real connection, an in-memory one in tests.
    pub async fn handle<B>(&self, req: Request<B>, conn: &ConnInfo) -> Response<ProxyBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BodyError>,
    {
        match self.begin(req, conn) {
            Begun::Answered(response) => response,
            Begun::Forward(pending) => self.forward_pending(pending, conn).await,
        }
    }

    /// Decides, synchronously: the gateway's own answer (a refusal, a
    /// preflight), whole and counted, or a request to forward. A server
    /// calls this before it makes a future at all, so that a refusal costs
    /// no future, no allocation and no copy of one.
    pub fn begin<B>(&self, mut req: Request<B>, conn: &ConnInfo) -> Begun
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BodyError>,
    {
        let ctx = Context {
            started: Instant::now(),
            origin: req.headers().get(ORIGIN).cloned(),
            grpc: respond::is_grpc(req.headers()),
            method: req.method().clone(),
            // A refusal's path comes back with its headers; the access log
            // needs the path of every request (a forwarded one is gone by
            // the time its line is written).
            logged_path: self
                .access_log
                .then(|| req.uri().path_and_query().cloned())
                .flatten(),
            version: req.version(),
            request_id: self
                .access_log
                .then(|| access::request_id(req.headers_mut())),
            client: (!self.trusted_proxies.is_empty()).then(|| {
                policy::client::client_ip(conn.peer.ip(), req.headers(), &self.trusted_proxies)
            }),
        };
        let (route, key) = self.route(req, conn);
        match route {
            Route::Forward(forward) => match self.prepare(forward, conn) {
                Ok((outgoing, after)) => Begun::Forward(Box::new(Pending {
                    outgoing,
                    after,
                    ctx,
                    key,
                })),
                Err(failed) => {
                    let (answer, refused) = self.failed(failed, conn);
                    Begun::Answered(self.answered(answer, &refused, ctx, key.as_ref(), conn))
                }
            },
            Route::Answer(answer, refused) => {
                Begun::Answered(self.answered(answer, &refused, ctx, key.as_ref(), conn))
            }
        }
    }

    /// Forwards what `begin` let through and readied: the upstream's
    /// response head with its body streaming through, or the answer to a
    /// failure. The only wait of a forward, so that its future holds the
    /// exchange and little else.
    pub async fn forward_pending(
        &self,
        pending: Box<Pending>,
        conn: &ConnInfo,
    ) -> Response<ProxyBody> {
        let timer = std::pin::pin!(tokio::time::sleep_until(Instant::now()));
        self.forward_with_timer(pending, conn, timer).await
    }

    /// `forward_pending` with the timer for the response's deadline given:
    /// a server reuses one for a connection's requests (see
    /// `upstream::Progress::response_overdue`).
    pub async fn forward_with_timer(
        &self,
        pending: Box<Pending>,
        conn: &ConnInfo,
        timer: std::pin::Pin<&mut tokio::time::Sleep>,
    ) -> Response<ProxyBody> {
        let Pending {
            outgoing,
            after,
            ctx,
            key,
        } = *pending;
        let sent = self.upstream.send(outgoing, timer).await;
        match self.received(sent, after, conn) {
            Routed::Forwarded(response, label, headed) => {
                self.forwarded(response, label, headed, ctx, key, conn)
            }
            Routed::Answered(answer, refused) => {
                self.answered(answer, &refused, ctx, key.as_ref(), conn)
            }
        }
    }

    /// The upstream's response: its access-log record rides on the body
    /// (the line is written when the body is done).
    fn forwarded(
        &self,
        mut response: Response<ProxyBody>,
        label: DecisionLabel,
        headed: Headed,
        ctx: Context,
        key: Option<DecidedKey>,
        conn: &ConnInfo,
    ) -> Response<ProxyBody> {
        if self.access_log {
            let record = access::Record {
                method: ctx.method.clone(),
                path: ctx
                    .logged_path
                    .clone()
                    .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
                version: ctx.version,
                request_id: ctx.request_id.clone(),
                client: match ctx.client {
                    Some(ip) => HeaderValue::from_str(&ip.to_string())
                        .unwrap_or_else(|_| conn.peer_ip.clone()),
                    None => conn.peer_ip.clone(),
                },
                peer: conn.peer,
                peer_ip: conn.peer_ip.clone(),
                decision: label.as_str(),
                key_id: key.as_ref().map(|k| k.id.clone()),
                status: response.status().as_u16(),
                started: ctx.started,
                upstream: headed.upstream,
            };
            response.body_mut().log_when_done(Box::new(record));
        }
        let elapsed = headed.at.saturating_duration_since(ctx.started);
        self.finish(response, label, ctx, key.as_ref(), elapsed)
    }

    /// The gateway's own answer, logged (refusals always; the rest with the
    /// access log).
    fn answered(
        &self,
        answer: Answer<'_>,
        request: &Refused,
        ctx: Context,
        key: Option<&DecidedKey>,
        conn: &ConnInfo,
    ) -> Response<ProxyBody> {
        let response = answer.response(&request.headers, ctx.grpc);
        let message = match answer {
            Answer::Rejected(_) | Answer::RateLimited(_) | Answer::HeadersTooLarge => {
                Some("request denied")
            }
            Answer::Failed(_) => self.access_log.then_some("request failed"),
            Answer::NotReady | Answer::Preflight(_) => {
                self.access_log.then_some("request answered")
            }
        };
        // One reading of the clock for the line and the histogram.
        let elapsed = ctx.started.elapsed();
        if let Some(message) = message {
            let (limit, scope) = match &answer {
                Answer::RateLimited(q) => (
                    Some(&q.limit as &dyn std::fmt::Display),
                    Some(q.scope.name()),
                ),
                _ => (None, None),
            };
            let resolved = ctx.client.map(|ip| ip.to_string());
            let peer_ip = conn.peer_ip.to_str().unwrap_or_default();
            access::log(
                &access::Request {
                    method: &ctx.method,
                    // A failed forward's URI went upstream with it: the
                    // access log's copy stands in (only it logs failures).
                    path: match &request.uri {
                        Some(uri) => uri.path(),
                        None => ctx.logged_path.as_ref().map_or("/", |p| p.path()),
                    },
                    version: ctx.version,
                    request_id: ctx.request_id.as_ref(),
                    client: resolved.as_deref().unwrap_or(peer_ip),
                    peer: conn.peer,
                    peer_ip,
                    bytes_in: None,
                },
                &access::Outcome {
                    message,
                    decision: answer.label().as_str(),
                    reason: match answer {
                        Answer::Rejected(r) => Some(r.detail()),
                        _ => None,
                    },
                    key_id: key.and_then(|k| k.id.to_str().ok()),
                    status: response.status().as_u16(),
                    bytes_out: http_body::Body::size_hint(response.body()).exact(),
                    duration: elapsed,
                    upstream: None,
                    complete: None,
                    limit,
                    scope,
                },
            );
        }
        self.finish(response, answer.label(), ctx, key, elapsed)
    }

    /// What every response gets: CORS, the request id, and its count.
    fn finish(
        &self,
        mut response: Response<ProxyBody>,
        label: DecisionLabel,
        ctx: Context,
        key: Option<&DecidedKey>,
        elapsed: std::time::Duration,
    ) -> Response<ProxyBody> {
        respond::add_cors(
            &mut response,
            ctx.origin.as_ref(),
            self.settings.cors.as_ref(),
        );
        if let Some(id) = ctx.request_id {
            response
                .headers_mut()
                .insert(access::X_REQUEST_ID.clone(), id);
        }
        let access = key.map(|k| k.access);
        self.metrics.response(response.status().as_u16());
        self.metrics
            .record_decision(label, access_label(access), elapsed.as_secs_f64());
        if let Some(k) = key {
            self.metrics
                .key_request(k.id.to_str().unwrap_or_default(), label);
        }
        response
    }

    /// Decides: an answer of the gateway's own, or what to forward.
    fn route<B>(&self, req: Request<B>, conn: &ConnInfo) -> (Route<'_, B>, Option<DecidedKey>) {
        let answered = |answer, req: Request<B>| {
            let parts = req.into_parts().0;
            Route::Answer(
                answer,
                Refused {
                    headers: parts.headers,
                    uri: Some(parts.uri),
                },
            )
        };
        if req.version() == Version::HTTP_2 && req.headers().len() > self.max_headers {
            return (answered(Answer::HeadersTooLarge, req), None);
        }
        // One snapshot for the request's whole life, whatever reloads meanwhile.
        let index = self.index.load();
        if !index.is_loaded() {
            // A database store not reached since start: refusing every key
            // as unknown would be wrong, so say "not yet" (like /readyz).
            return (answered(Answer::NotReady, req), None);
        }
        let head = RequestHead {
            method: req.method(),
            headers: req.headers(),
            query: req.uri().query(),
        };
        let now = SystemTime::now();
        match policy::decide(head, &index, &self.settings, now) {
            Decision::Allow {
                key,
                source,
                reported,
            } => {
                // Row 7, after every policy row: only what passed consumes.
                let client = || {
                    policy::client::client_ip(conn.peer.ip(), req.headers(), &self.trusted_proxies)
                };
                let quota = match self.limiter.check(key, client) {
                    Verdict::Unlimited => None,
                    Verdict::Allowed(q) => Some(q),
                    Verdict::Limited(q) => {
                        let caller = DecidedKey {
                            id: key.id_header().clone(),
                            access: key.access,
                        };
                        drop(index);
                        return (answered(Answer::RateLimited(q), req), Some(caller));
                    }
                };
                let label = if reported {
                    DecisionLabel::BrowserFullAccessReported
                } else {
                    DecisionLabel::Allowed
                };
                if reported {
                    tracing::warn!(decision = label.as_str(), key.id = key.id(), http.request.method = req.method().as_str(), url.path = %LogPath(req.uri().path()), network.peer.address = conn.peer_ip.to_str().unwrap_or_default(), "full-access key used from a browser (report-only mode: forwarded)");
                }
                if key.previous {
                    self.metrics.previous_secret_request();
                }
                key.usage
                    .record(now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
                let identity = Identity {
                    id: key.id_header().clone(),
                    access: key.access,
                    source,
                };
                drop(index);
                let caller = Some(DecidedKey {
                    id: identity.id.clone(),
                    access: identity.access,
                });
                let forward = Forward {
                    req,
                    identity: Some(identity),
                    label,
                    quota,
                };
                (Route::Forward(forward), caller)
            }
            Decision::Deny { rejection, key } => {
                let access = key.map(|k| DecidedKey {
                    id: k.id_header().clone(),
                    access: k.access,
                });
                drop(index);
                (answered(Answer::Rejected(rejection), req), access)
            }
            Decision::Preflight(Preflight::Forward) => {
                drop(index);
                let forward = Forward {
                    req,
                    identity: None,
                    label: DecisionLabel::Preflight,
                    quota: None,
                };
                (Route::Forward(forward), None)
            }
            Decision::Preflight(Preflight::Answer(cors)) => {
                (answered(Answer::Preflight(cors), req), None)
            }
            Decision::Preflight(Preflight::Deny(rejection)) => {
                drop(index);
                (answered(Answer::Rejected(rejection), req), None)
            }
        }
    }

    /// Readies an allowed request for the upstream, before any wait: the
    /// upgrade taken, the target and headers rewritten, the head encoded.
    fn prepare<B>(
        &self,
        forward: Forward<B>,
        conn: &ConnInfo,
    ) -> Result<(upstream::Outgoing, After), upstream::SendError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BodyError>,
    {
        let Forward {
            mut req,
            identity,
            label,
            quota,
        } = forward;
        let upgrade = req.version() == Version::HTTP_11 && headers::wants_upgrade(req.headers());
        let client_upgrade = if upgrade {
            req.extensions_mut().remove::<tunnel::OnClientUpgrade>()
        } else {
            None
        };
        let (mut parts, body) = req.into_parts();

        let mut path_and_query = parts.uri.path_and_query().cloned();
        if let (Some(id), Some(param), false) =
            (&identity, &self.settings.query_param, self.forward_key)
            && id.source == KeySource::Query
        {
            path_and_query = strip_query(path_and_query, param);
        }
        // HTTP/2 carries the host in :authority; HTTP/1.1 backends need Host.
        if !parts.headers.contains_key(HOST)
            && let Some(v) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            parts.headers.insert(HOST, v);
        }
        parts.uri = self.upstream.target(path_and_query);
        let caller = Caller {
            peer: &conn.peer_ip,
            tls: conn.tls,
            identity: identity.as_ref().map(|i| (&i.id, i.access)),
            remove_key: match (&identity, self.forward_key) {
                (Some(i), false) => Some(i.source),
                _ => None,
            },
            key_header: &self.settings.header,
            forward_key: self.forward_key,
        };
        // gRPC needs `te: trailers` to reach an HTTP/2 backend; to HTTP/1.1
        // it is hop-by-hop.
        let te_trailers = self.upstream.is_http2()
            && parts
                .headers
                .get(http::header::TE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        let added = headers::rewrite_request(&mut parts.headers, &caller, upgrade);
        if te_trailers {
            parts
                .headers
                .insert(http::header::TE, HeaderValue::from_static("trailers"));
        }
        parts.version = Version::HTTP_11;

        let body = body.map_err(Into::into).boxed_unsync();
        let sent_at = Instant::now();
        let outgoing = self
            .upstream
            .prepare(Request::from_parts(parts, body), added, sent_at)?;
        Ok((
            outgoing,
            After {
                client_upgrade,
                label,
                quota,
                sent_at,
            },
        ))
    }

    /// What a failure to forward is answered with, counted and logged.
    fn failed(&self, failed: upstream::SendError, conn: &ConnInfo) -> (Answer<'static>, Refused) {
        match failed.kind {
            Some(kind) => {
                self.metrics.upstream_error(kind);
                tracing::warn!(kind = kind.as_str(), client.addr = %conn.peer, "upstream request failed");
            }
            None => {
                tracing::info!(decision = failed.error.label().as_str(), client.addr = %conn.peer, "client went silent mid-body; request cut")
            }
        }
        // The request's headers went upstream with it; a failure
        // answer needs none of them.
        (
            Answer::Failed(failed.error),
            Refused {
                headers: http::HeaderMap::new(),
                uri: None,
            },
        )
    }

    /// The upstream's answer to a forward: its response head with the body
    /// streaming through, counted under the request's label (a protocol
    /// switch handed to a tunnel); or the answer to a failure.
    fn received(
        &self,
        sent: Result<
            (
                Response<upstream::UpstreamBody>,
                Arc<upstream::Progress>,
                pool::Lease,
            ),
            upstream::SendError,
        >,
        after: After,
        conn: &ConnInfo,
    ) -> Routed<'static> {
        let After {
            client_upgrade,
            label,
            quota,
            sent_at,
        } = after;
        let (mut response, progress, lease) = match sent {
            Ok(sent) => sent,
            Err(failed) => {
                let (answer, refused) = self.failed(failed, conn);
                return Routed::Answered(answer, refused);
            }
        };
        // One reading for the upstream's time and the request's.
        let headed = Instant::now();
        let upstream_time = headed.saturating_duration_since(sent_at);
        self.metrics.upstream_duration(upstream_time.as_secs_f64());
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if let (true, Some(client_side)) = (switching, client_upgrade) {
            let upstream_side = match response.body_mut() {
                upstream::UpstreamBody::Own(body) => body.take_tunnel().map(Ok),
                upstream::UpstreamBody::Hyper(_) => Some(Err(hyper::upgrade::on(&mut response))),
            };
            let metrics = self.metrics.clone();
            let slot = conn.slot.clone();
            let idle = self.tunnel_idle;
            tokio::spawn(async move {
                let _slot = slot;
                let Some(client) = client_side.connection().await else {
                    return;
                };
                match upstream_side {
                    Some(Ok(own)) => tunnel::run(client, own, idle, &metrics).await,
                    Some(Err(on)) => {
                        if let Ok(upgraded) = on.await {
                            let upgraded = hyper_util::rt::TokioIo::new(upgraded);
                            tunnel::run(client, upgraded, idle, &metrics).await;
                        }
                    }
                    None => {}
                }
            });
        }
        let (mut parts, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, switching);
        if let Some(q) = &quota {
            respond::add_quota(&mut parts.headers, q);
        }
        Routed::Forwarded(
            Response::from_parts(
                parts,
                ProxyBody::upstream(
                    body,
                    self.metrics.clone(),
                    self.upstream.read_timeout(),
                    progress,
                    // A tunnel takes the connection over: never back to the pool.
                    (!switching).then_some(lease),
                ),
            ),
            label,
            Headed {
                at: headed,
                upstream: upstream_time,
            },
        )
    }
}

/// What `Gateway::begin` made of a request.
pub enum Begun {
    /// The gateway's own answer, complete.
    Answered(Response<ProxyBody>),
    /// Allowed: `Gateway::forward_pending` sends it on. Boxed: each future
    /// that holds it on the way (the server's, `forward_pending`'s) keeps
    /// a copy of what it was given for its whole life, and a refusal's
    /// `Begun` stays small.
    Forward(Box<Pending>),
}

/// A request readied for the upstream, with what its answer and log line need.
pub struct Pending {
    outgoing: upstream::Outgoing,
    after: After,
    ctx: Context,
    key: Option<DecidedKey>,
}

/// What a forward needs once the upstream has answered.
struct After {
    /// The client's side of a protocol switch, when it asked for one.
    client_upgrade: Option<tunnel::OnClientUpgrade>,
    label: DecisionLabel,
    /// The rate limit nearest to running out, for the response's headers.
    quota: Option<crate::limits::Quota>,
    sent_at: Instant,
}

/// What a request's answer, log line and metrics need of it once it has
/// gone (upstream, or into the answer).
struct Context {
    started: Instant,
    origin: Option<HeaderValue>,
    grpc: bool,
    method: http::Method,
    /// With the access log only.
    logged_path: Option<http::uri::PathAndQuery>,
    version: Version,
    request_id: Option<HeaderValue>,
    /// The client's address from the forwarding headers, with trusted proxies.
    client: Option<std::net::IpAddr>,
}

/// What `route` decided: answer, or forward.
enum Route<'a, B> {
    Forward(Forward<B>),
    Answer(Answer<'a>, Refused),
}

/// An allowed request (or a preflight the backend answers), on its way.
struct Forward<B> {
    req: Request<B>,
    /// `None` for a preflight: no key was checked.
    identity: Option<Identity>,
    label: DecisionLabel,
    /// The rate limit nearest to running out, for the response's headers.
    quota: Option<crate::limits::Quota>,
}

/// Where a request ended: forwarded (the upstream's response, counted under
/// the label), or answered by the gateway (with what is left of the request).
enum Routed<'a> {
    Forwarded(Response<ProxyBody>, DecisionLabel, Headed),
    Answered(Answer<'a>, Refused),
}

/// When the upstream's response head came, and how long after the request
/// was sent: one clock reading for both.
#[derive(Clone, Copy)]
struct Headed {
    at: Instant,
    upstream: std::time::Duration,
}

/// What an answered request leaves for its answer and its log line.
struct Refused {
    /// Read by a preflight answer.
    headers: http::HeaderMap,
    /// For the log line; `None` once the request went upstream.
    uri: Option<http::Uri>,
}

fn strip_query(
    pq: Option<http::uri::PathAndQuery>,
    param: &str,
) -> Option<http::uri::PathAndQuery> {
    let pq = pq?;
    let Some(query) = pq.query() else {
        return Some(pq);
    };
    let rebuilt = match headers::strip_query_param(query, param) {
        Some(q) => format!("{}?{q}", pq.path()),
        None => pq.path().to_string(),
    };
    rebuilt.parse().ok().or(Some(pq))
}

#[cfg(test)]
mod tests;

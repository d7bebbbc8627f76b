//! The request pipeline: take the index snapshot once, decide, then answer
//! (rejection, preflight) or forward to the upstream and stream back.
//!
//! Everything that can go wrong while forwarding is a `ProxyError`, and every
//! response the gateway writes itself comes from `reject`.

mod body;
pub mod headers;
pub mod reject;
mod tunnel;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::header::{HOST, ORIGIN};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

pub use body::ProxyBody;
use headers::Caller;
use reject::ProxyError;
use upstream::Upstream;

use crate::config::{Config, CorsConfig};
use crate::keys::{Access, SharedIndex};
use crate::metrics::{DecisionLabel, Metrics};
use crate::policy::{self, Decision, KeySource, PolicySettings, Preflight, RequestHead};

/// What the pipeline needs about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The peer's IP as a header value, formatted once per connection.
    pub peer_ip: HeaderValue,
    /// The connection's slot under `server.max_connections`. A WebSocket
    /// tunnel outlives hyper's connection and keeps a share of it, so that
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
    header: HeaderName,
    query_param: Option<String>,
    prefix: String,
    browser_full_access: crate::config::BrowserFullAccess,
    cors: Option<CorsConfig>,
    forward_key: bool,
    access_log: bool,
    /// `server.idle_timeout`, applied to upgraded tunnels.
    tunnel_idle: std::time::Duration,
}

/// What an allowed request carries to the forwarder, owned so that the
/// request itself can move.
struct Identity {
    id: HeaderValue,
    access: Access,
    source: KeySource,
}

impl Gateway {
    pub fn new(
        config: &Config,
        index: SharedIndex,
        metrics: Arc<Metrics>,
    ) -> Result<Gateway, String> {
        Ok(Gateway {
            index,
            upstream: Upstream::new(&config.upstream)?,
            metrics,
            header: config.keys.header.clone(),
            query_param: config.keys.query_param.clone(),
            prefix: config.keys.prefix.clone(),
            browser_full_access: config.policy.browser_full_access,
            cors: config.cors.clone(),
            forward_key: config.keys.forward_key,
            access_log: config.log.access_log,
            tunnel_idle: config.server.idle_timeout,
        })
    }

    /// Handles one request, start to response head.
    pub async fn handle(&self, req: Request<Incoming>, conn: &ConnInfo) -> Response<ProxyBody> {
        let started = Instant::now();
        // One snapshot for the request's whole life, whatever reloads meanwhile.
        let index = self.index.load();
        if !index.is_loaded() {
            // A database store not reached since start: refusing every key
            // as unknown would be wrong, so say "not yet" (like /readyz).
            self.metrics.record_decision(
                DecisionLabel::NotReady,
                None,
                started.elapsed().as_secs_f64(),
            );
            return reject::not_ready();
        }
        let settings = PolicySettings {
            header: &self.header,
            query_param: self.query_param.as_deref(),
            prefix: &self.prefix,
            browser_full_access: self.browser_full_access,
            cors: self.cors.as_ref(),
        };
        let head = RequestHead {
            method: req.method(),
            headers: req.headers(),
            query: req.uri().query(),
        };
        let decision = policy::decide(head, &index, &settings, SystemTime::now());
        let origin = req.headers().get(ORIGIN).cloned();

        let (mut response, label, access) = match decision {
            Decision::Allow {
                key,
                source,
                reported,
            } => {
                let label = if reported {
                    DecisionLabel::BrowserFullAccessReported
                } else {
                    DecisionLabel::Allowed
                };
                if reported {
                    tracing::warn!(decision = label.as_str(), key.id = key.id(), method = %req.method(), path = req.uri().path(), client.addr = %conn.peer, "full-access key used from a browser (report-only mode: forwarded)");
                } else if self.access_log {
                    tracing::info!(decision = label.as_str(), key.id = key.id(), method = %req.method(), path = req.uri().path(), client.addr = %conn.peer, "request allowed");
                }
                let identity = Identity {
                    id: key.id_header.clone(),
                    access: key.access,
                    source,
                };
                let access = key.access;
                drop(index);
                match self.forward(req, conn, Some(identity)).await {
                    Ok(response) => (response, label, Some(access)),
                    Err(e) => (
                        reject::error_response(e),
                        DecisionLabel::from(e),
                        Some(access),
                    ),
                }
            }
            Decision::Deny { rejection, key } => {
                tracing::info!(
                    decision = rejection.code(),
                    reason = rejection.detail(),
                    key.id = key.map(|k| k.id()),
                    method = %req.method(),
                    path = req.uri().path(),
                    client.addr = %conn.peer,
                    "request denied"
                );
                (
                    reject::rejection_response(rejection),
                    DecisionLabel::from(rejection),
                    key.map(|k| k.access),
                )
            }
            Decision::Preflight(Preflight::Forward) => {
                drop(index);
                match self.forward(req, conn, None).await {
                    Ok(response) => (response, DecisionLabel::Preflight, None),
                    Err(e) => (reject::error_response(e), DecisionLabel::from(e), None),
                }
            }
            Decision::Preflight(Preflight::Answer) => match &self.cors {
                Some(cors) => (
                    reject::preflight_response(req.headers(), cors),
                    DecisionLabel::Preflight,
                    None,
                ),
                None => (
                    reject::error_response(ProxyError::BadTarget),
                    DecisionLabel::Preflight,
                    None,
                ),
            },
            Decision::Preflight(Preflight::Deny(rejection)) => {
                tracing::info!(decision = rejection.code(), method = %req.method(), client.addr = %conn.peer, "preflight denied");
                (
                    reject::rejection_response(rejection),
                    DecisionLabel::from(rejection),
                    None,
                )
            }
        };
        reject::add_cors(&mut response, origin.as_ref(), self.cors.as_ref());
        self.metrics
            .record_decision(label, access, started.elapsed().as_secs_f64());
        response
    }

    /// Forwards a request upstream and returns the upstream's response head
    /// with its body streaming through.
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        conn: &ConnInfo,
        identity: Option<Identity>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let upgrade = req.version() == Version::HTTP_11 && headers::wants_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();

        let mut path_and_query = parts.uri.path_and_query().cloned();
        if let (Some(id), Some(param), false) = (&identity, &self.query_param, self.forward_key)
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
        parts.uri = self.upstream.target(path_and_query)?;
        let none = HeaderValue::from_static("");
        let caller = Caller {
            peer: &conn.peer_ip,
            tls: conn.tls,
            key_id: identity.as_ref().map_or(&none, |i| &i.id),
            access: identity.as_ref().map_or(Access::ReadOnly, |i| i.access),
            remove_key: match (&identity, self.forward_key) {
                (Some(i), false) => Some((i.source, &self.header)),
                _ => None,
            },
        };
        headers::rewrite_request(&mut parts.headers, &caller, upgrade);
        if identity.is_none() {
            // A forwarded preflight: no identity to vouch for, and no key
            // (unchecked, since preflights need none) goes to the backend.
            parts.headers.remove(headers::KEY_ID);
            parts.headers.remove(headers::KEY_ACCESS);
            if !self.forward_key {
                headers::remove_unchecked_keys(&mut parts.headers, &self.header);
            }
        }
        parts.version = Version::HTTP_11;

        let mut response = match self.upstream.send(Request::from_parts(parts, body)).await {
            Ok(r) => r,
            Err((error, kind)) => {
                self.metrics.upstream_error(kind);
                tracing::warn!(kind = kind.as_str(), client.addr = %conn.peer, "upstream request failed");
                return Err(error);
            }
        };
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if let (true, Some(client_side)) = (switching, client_upgrade) {
            let upstream_side = hyper::upgrade::on(&mut response);
            let metrics = self.metrics.clone();
            let slot = conn.slot.clone();
            let idle = self.tunnel_idle;
            tokio::spawn(async move {
                let _slot = slot;
                if let (Ok(client), Ok(upstream)) = (client_side.await, upstream_side.await) {
                    // The client connection lives on as a tunnel once hyper
                    // has handed it over: it still counts as open.
                    metrics.connection_opened();
                    tunnel::run(client, upstream, idle).await;
                    metrics.connection_closed();
                }
            });
        }
        let (mut parts, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, switching);
        Ok(Response::from_parts(
            parts,
            ProxyBody::upstream(body, self.metrics.clone(), self.upstream.read_timeout()),
        ))
    }
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

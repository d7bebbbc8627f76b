//! Who is calling: an admin token (`Authorization: Bearer kga_...`) or a
//! console session (a cookie from signing in with a token). API keys are
//! never accepted here (they do not carry the `kga` prefix, and are not in
//! the token file). Sessions live in memory (a restart signs everyone out)
//! and end at `session_ttl`, at sign-out, or when their token is deleted.
//! State-changing requests on a session also need its CSRF token and a
//! same-origin request.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use serde_json::json;

use super::{Admin, AdminBody, ApiError, blocking, json};
use crate::keys::tokens::{Role, TOKEN_PREFIX};
use crate::keys::{KeyHash, token};

pub const COOKIE: &str = "kg_session";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token's name (the audit trail's actor).
    pub name: String,
    pub role: Role,
    /// The session's CSRF token, when the caller came with a cookie.
    pub csrf: Option<String>,
}

#[derive(Debug, Clone)]
struct Session {
    token: KeyHash,
    csrf: String,
    expires: Instant,
}

/// Failed sign-ins by client address, for the throttle.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Sign-in failures from one address before it must wait.
const FREE_FAILURES: u32 = 5;
/// The most addresses remembered for the throttle.
const MAX_TRACKED: usize = 10_000;

pub struct Sessions {
    ttl: Duration,
    by_id: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    // The session id is the only secret here: without randomness there is
    // no safe session, so fail the sign-in rather than make a guessable one.
    if getrandom::fill(&mut b).is_err() {
        return String::new();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Sessions {
    pub fn new(ttl: Duration) -> Sessions {
        Sessions {
            ttl,
            by_id: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn open(&self, token: KeyHash) -> Option<(String, Session)> {
        let id = random_token();
        let csrf = random_token();
        if id.is_empty() || csrf.is_empty() {
            return None;
        }
        let session = Session {
            token,
            csrf,
            expires: Instant::now() + self.ttl,
        };
        let mut map = self.by_id.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(id.clone(), session.clone());
        Some((id, session))
    }

    fn get(&self, id: &str) -> Option<Session> {
        let map = self.by_id.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(id).filter(|s| s.expires > Instant::now()).cloned()
    }

    fn close(&self, id: &str) {
        self.by_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    /// How long `ip` must wait before its next sign-in attempt counts.
    fn wait(&self, ip: IpAddr) -> Option<Duration> {
        let map = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let f = map.get(&ip)?;
        if f.count < FREE_FAILURES {
            return None;
        }
        // 1 s after the fifth failure, doubling, at most 5 minutes.
        let backoff = Duration::from_secs(1 << (f.count - FREE_FAILURES).min(8))
            .min(Duration::from_secs(300));
        let waited = f.last.elapsed();
        (waited < backoff).then(|| backoff - waited)
    }

    fn failed(&self, ip: IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_TRACKED && !map.contains_key(&ip) {
            // Forget addresses quiet for a while; if none, the oldest.
            let cutoff = Instant::now() - Duration::from_secs(600);
            map.retain(|_, f| f.last > cutoff);
            if map.len() >= MAX_TRACKED
                && let Some(oldest) = map.iter().min_by_key(|(_, f)| f.last).map(|(ip, _)| *ip)
            {
                map.remove(&oldest);
            }
        }
        let f = map.entry(ip).or_insert(Failures {
            count: 0,
            last: Instant::now(),
        });
        f.count = f.count.saturating_add(1);
        f.last = Instant::now();
    }

    fn succeeded(&self, ip: IpAddr) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&ip);
    }
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The most sessions kept at once; past it, the oldest is dropped.
const MAX_SESSIONS: usize = 10_000;

fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The hash of a presented admin token, if it has an admin token's shape.
fn admin_token_hash(presented: &str) -> Option<KeyHash> {
    let rest = presented.strip_prefix(TOKEN_PREFIX)?;
    if !rest.starts_with('_') {
        return None;
    }
    token::check(presented.as_bytes(), TOKEN_PREFIX).ok()?;
    Some(KeyHash::of(presented.as_bytes()))
}

/// True when a cookie-carrying request comes from the console's own origin:
/// `Sec-Fetch-Site: same-origin`, or an `Origin` whose host is the `Host`.
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    let (Some(origin), Some(host)) = (headers.get(header::ORIGIN), headers.get(header::HOST))
    else {
        return false;
    };
    let origin = origin.to_str().unwrap_or_default();
    let host = host.to_str().unwrap_or_default();
    origin
        .split_once("://")
        .is_some_and(|(_, h)| !host.is_empty() && h.eq_ignore_ascii_case(host))
}

/// Authenticates a request: a Bearer admin token, else a session cookie.
/// A session's state-changing request must carry its CSRF token and come
/// from the same origin.
pub async fn authenticate(admin: &Arc<Admin>, req: &Request<Bytes>) -> Result<Principal, ApiError> {
    let result = authenticate_inner(admin, req).await;
    if result.is_err() {
        admin.hint_if_no_token().await;
    }
    result
}

async fn authenticate_inner(
    admin: &Arc<Admin>,
    req: &Request<Bytes>,
) -> Result<Principal, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let headers = req.headers();
    let (hash, session) = if let Some(auth) = headers.get(header::AUTHORIZATION) {
        let presented = auth
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or_default();
        let hash = admin_token_hash(presented).ok_or_else(|| {
            unauthorized("not an admin token: send Authorization: Bearer kga_...")
        })?;
        (hash, None)
    } else if let Some(id) = cookie_value(headers, super::auth::COOKIE) {
        let session = admin
            .sessions
            .get(id)
            .ok_or_else(|| unauthorized("the session has ended: sign in again"))?;
        (session.token, Some(session))
    } else {
        return Err(unauthorized(
            "sign in, or send Authorization: Bearer <admin token>",
        ));
    };
    let tokens = admin.tokens.clone();
    let found = blocking(move || tokens.find(&hash)).await?;
    let Some(found) = found else {
        return Err(unauthorized("unknown or deleted admin token"));
    };
    if let Some(s) = &session
        && req.method() != Method::GET
        && req.method() != Method::HEAD
    {
        let csrf_ok = headers
            .get(CSRF_HEADER)
            .is_some_and(|v| constant_time_eq(v.as_bytes(), s.csrf.as_bytes()));
        if !csrf_ok || !same_origin(headers) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "a console change needs its CSRF token and must come from the console's own page",
            ));
        }
    }
    Ok(Principal {
        name: found.name,
        role: found.role,
        csrf: session.map(|s| s.csrf),
    })
}

/// `/admin/session`: POST signs in (`{"token": "kga_..."}`), GET says who is
/// signed in (and the CSRF token), DELETE signs out.
pub async fn session(
    admin: &Arc<Admin>,
    req: &Request<Bytes>,
    peer: SocketAddr,
) -> Response<AdminBody> {
    match *req.method() {
        Method::POST => sign_in(admin, req, peer).await,
        Method::GET => match authenticate(admin, req).await {
            Ok(p) => json(
                StatusCode::OK,
                &json!({"name": p.name, "role": p.role.as_str(), "csrf": p.csrf}),
            ),
            Err(e) => e.response(),
        },
        Method::DELETE => {
            if !same_origin(req.headers()) {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "sign out from the console's own page",
                )
                .response();
            }
            if let Some(id) = cookie_value(req.headers(), COOKIE) {
                admin.sessions.close(id);
            }
            let mut r = json(StatusCode::OK, &json!({"signed_out": true}));
            r.headers_mut()
                .insert(header::SET_COOKIE, clear_cookie(admin.tls));
            r
        }
        _ => ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "bad_request",
            "use POST, GET or DELETE",
        )
        .response(),
    }
}

async fn sign_in(
    admin: &Arc<Admin>,
    req: &Request<Bytes>,
    peer: SocketAddr,
) -> Response<AdminBody> {
    let ip = peer.ip();
    if let Some(wait) = admin.sessions.wait(ip) {
        let mut r = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "too many failed sign-ins from this address: wait and try again",
        )
        .response();
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(wait.as_secs().max(1)),
        );
        return r;
    }
    if !same_origin(req.headers()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "sign in from the console's own page",
        )
        .response();
    }
    let presented = serde_json::from_slice::<serde_json::Value>(req.body())
        .ok()
        .and_then(|v| v.get("token").and_then(|t| t.as_str()).map(str::to_string));
    let Some(presented) = presented else {
        return ApiError::bad_request("send {\"token\": \"kga_...\"}").response();
    };
    let found = match admin_token_hash(presented.trim()) {
        None => None,
        Some(hash) => {
            let tokens = admin.tokens.clone();
            match blocking(move || tokens.find(&hash)).await {
                Ok(found) => found,
                Err(e) => return e.response(),
            }
        }
    };
    let Some(found) = found else {
        admin.sessions.failed(ip);
        admin.metrics.admin_signin_failure();
        tracing::info!(client.addr = %peer, "admin: failed sign-in");
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "that is not a valid admin token",
        )
        .response();
    };
    admin.sessions.succeeded(ip);
    let Some((id, session)) = admin.sessions.open(found.hash) else {
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "no randomness for a session",
        )
        .response();
    };
    let mut r = json(
        StatusCode::OK,
        &json!({"name": found.name, "role": found.role.as_str(), "csrf": session.csrf}),
    );
    let secure = if admin.tls { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={id}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        admin.sessions.ttl.as_secs()
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

fn clear_cookie(tls: bool) -> HeaderValue {
    if tls {
        HeaderValue::from_static(
            "kg_session=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0; Secure",
        )
    } else {
        HeaderValue::from_static("kg_session=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_admin_tokens_have_an_admin_hash() {
        let admin = token::generate(TOKEN_PREFIX).unwrap_or_else(|e| panic!("{e}"));
        assert!(admin_token_hash(&admin).is_some());
        let api_key = token::generate("kg").unwrap_or_else(|e| panic!("{e}"));
        assert!(admin_token_hash(&api_key).is_none());
        // A mistyped token fails its checksum.
        let mut typo = admin.clone();
        typo.pop();
        typo.push(if admin.ends_with('a') { 'b' } else { 'a' });
        assert!(admin_token_hash(&typo).is_none());
        assert!(admin_token_hash("kgafoo").is_none());
    }

    #[test]
    fn same_origin_needs_the_fetch_site_or_a_matching_origin() {
        let mut h = HeaderMap::new();
        assert!(!same_origin(&h));
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9091"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:9091"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&h));
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(same_origin(&h));
    }

    #[test]
    fn failed_sign_ins_slow_an_address_down() {
        let s = Sessions::new(Duration::from_secs(60));
        let ip: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..FREE_FAILURES {
            assert!(s.wait(ip).is_none());
            s.failed(ip);
        }
        assert!(s.wait(ip).is_some());
        assert!(s.wait([10, 0, 0, 2].into()).is_none());
        s.succeeded(ip);
        assert!(s.wait(ip).is_none());
    }
}

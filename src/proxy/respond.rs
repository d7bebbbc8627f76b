//! Every response the gateway writes itself, in one place: an `Answer`
//! (a policy refusal, a forwarding failure, "not ready", too many headers, an
//! allowed preflight) becomes its status, its JSON body `{"error": code,
//! "message": ...}` and its metric label here, in one exhaustive match each;
//! plus the CORS headers every response to a listed origin carries.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

use super::body::ProxyBody;
use crate::config::CorsConfig;
use crate::limits::{Quota, Scope};
use crate::metrics::DecisionLabel;
use crate::policy::{Rejection, origin_listed};

/// A response the gateway writes itself instead of forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer<'a> {
    /// A policy refusal: rows 1 to 6 of the decision table, or a preflight
    /// the gateway refuses.
    Rejected(Rejection),
    /// Forwarding failed (502, 504, or a target that cannot be forwarded).
    Failed(ProxyError),
    /// No key index loaded yet (a database store not reached since start).
    NotReady,
    /// More header fields than `server.max_headers` (HTTP/2; over HTTP/1.1
    /// `server::h1` refuses such a head itself, before the gateway sees it).
    HeadersTooLarge,
    /// An allowed CORS preflight, answered from this `[cors]`.
    Preflight(&'a CorsConfig),
    /// Row 7: the key's (or the key and client's) rate limit is spent.
    RateLimited(Quota),
}

impl Answer<'_> {
    /// The `decision` label this answer is counted under.
    pub const fn label(&self) -> DecisionLabel {
        match self {
            Answer::Rejected(r) => r.label(),
            Answer::Failed(e) => e.label(),
            Answer::NotReady => DecisionLabel::NotReady,
            Answer::HeadersTooLarge => DecisionLabel::HeadersTooLarge,
            Answer::Preflight(_) => DecisionLabel::Preflight,
            Answer::RateLimited(_) => DecisionLabel::RateLimited,
        }
    }

    /// Status, wire code and message of every answer but a preflight.
    const fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Answer::Rejected(r) => (r.status(), r.code(), r.message()),
            Answer::Failed(e) => e.parts(),
            Answer::NotReady => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the gateway has not loaded its keys yet; retry shortly",
            ),
            Answer::HeadersTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                "too many header fields",
            ),
            Answer::Preflight(_) => (StatusCode::NO_CONTENT, "preflight", ""),
            Answer::RateLimited(quota) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                match quota.scope {
                    Scope::Key => {
                        "this API key's rate limit is spent; retry after the time in Retry-After"
                    }
                    Scope::Client => {
                        "this API key's rate limit for your address is spent; retry after the time in Retry-After"
                    }
                },
            ),
        }
    }

    /// The response; `request` is the request's headers (a preflight
    /// echoes the headers it asked for). For a gRPC request (`grpc`), the
    /// answer is a gRPC error, as Envoy gives: HTTP 200 with `grpc-status`
    /// and `grpc-message` and no body, since a gRPC client reads only those.
    pub fn response(self, request: &HeaderMap, grpc: bool) -> Response<ProxyBody> {
        if let Answer::Preflight(cors) = self {
            return preflight_response(request, cors);
        }
        let (status, code, message) = self.parts();
        let mut r = if grpc {
            grpc_error(status, code, message)
        } else if matches!(self, Answer::Rejected(_)) && status == StatusCode::UNAUTHORIZED {
            json_error(status, code, message, &JSON_401_HEADERS)
        } else {
            json_error(status, code, message, &JSON_HEADERS)
        };
        let h = r.headers_mut();
        match self {
            Answer::NotReady => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Answer::RateLimited(quota) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(quota.reset_secs));
                add_quota(h, &quota);
            }
            _ => {}
        }
        r
    }
}

/// True for a gRPC request (`content-type: application/grpc`, `+proto`,
/// `+json`, ...).
pub fn is_grpc(request: &HeaderMap) -> bool {
    request.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16 && v[..16].eq_ignore_ascii_case(b"application/grpc")
    })
}

/// The gRPC status for what would have been `status`: the mapping of
/// gRPC's "HTTP to gRPC status" table, except 429 (RESOURCE_EXHAUSTED, a
/// quota) and 504/408 (DEADLINE_EXCEEDED), as Envoy's rate-limit and
/// timeout filters answer.
pub const fn grpc_status(status: StatusCode) -> u16 {
    match status.as_u16() {
        401 => 16,       // UNAUTHENTICATED
        403 => 7,        // PERMISSION_DENIED
        429 => 8,        // RESOURCE_EXHAUSTED
        502 | 503 => 14, // UNAVAILABLE
        504 | 408 => 4,  // DEADLINE_EXCEEDED
        400 | 431 => 13, // INTERNAL
        _ => 2,          // UNKNOWN
    }
}

/// A gRPC error in "Trailers-Only" form: status 200, the status and
/// message in the headers, no body.
fn grpc_error(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::empty());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(grpc_status(status)));
    if let Ok(v) = HeaderValue::from_str(&grpc_message(&format!("{code}: {message}"))) {
        h.insert("grpc-message", v);
    }
    r
}

/// `grpc-message` is percent-encoded: bytes outside printable ASCII, and
/// `%` itself.
fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An operational failure while forwarding (not a policy outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// The upstream refused the connection, was unreachable, or broke before
    /// sending a response head.
    Unavailable,
    /// No response head within `upstream.response_timeout`.
    Timeout,
    /// The request target cannot be forwarded (`OPTIONS *` to an HTTP/2
    /// backend; an HTTP/1.1 backend gets it as sent).
    BadTarget,
    /// The client went silent mid-body for `server.body_timeout`.
    RequestTimeout,
}

impl ProxyError {
    /// The `decision` label; its text is the wire code.
    pub const fn label(self) -> DecisionLabel {
        match self {
            ProxyError::Unavailable => DecisionLabel::UpstreamUnavailable,
            ProxyError::Timeout => DecisionLabel::UpstreamTimeout,
            ProxyError::BadTarget => DecisionLabel::BadRequest,
            ProxyError::RequestTimeout => DecisionLabel::RequestTimeout,
        }
    }

    const fn parts(self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ProxyError::Unavailable => (
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                "the backend is unavailable",
            ),
            ProxyError::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the backend did not answer in time",
            ),
            ProxyError::BadTarget => (
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request target cannot be forwarded",
            ),
            ProxyError::RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "no request body byte arrived in time",
            ),
        }
    }
}

#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

/// The headers of every JSON error: a copy of this map costs less than
/// hashing each name into a new one.
static JSON_HEADERS: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(|| {
    let mut h = HeaderMap::with_capacity(3);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h
});

/// A 401's: the JSON error's, then `WWW-Authenticate: Bearer`.
static JSON_401_HEADERS: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(|| {
    let mut h = JSON_HEADERS.clone();
    h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    h
});

/// A JSON error response, with `headers`.
fn json_error(
    status: StatusCode,
    code: &'static str,
    message: &'static str,
    headers: &HeaderMap,
) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(error_body(code, message)));
    *r.status_mut() = status;
    *r.headers_mut() = headers.clone();
    r
}

/// The body of an error: made once per thread for a run of the same
/// answer (a flood of one refusal is the case that matters), shared after.
fn error_body(code: &'static str, message: &'static str) -> Bytes {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(&'static str, &'static str, Bytes)>> =
            const { std::cell::RefCell::new(None) };
    }
    let make = || Bytes::from(error_json(code, message));
    LAST.try_with(|last| {
        let Ok(mut last) = last.try_borrow_mut() else {
            return make();
        };
        match &*last {
            Some((c, m, body)) if std::ptr::eq(*c, code) && std::ptr::eq(*m, message) => {
                body.clone()
            }
            _ => {
                let body = make();
                *last = Some((code, message, body.clone()));
                body
            }
        }
    })
    .unwrap_or_else(|_| make())
}

/// `{"error": code, "message": message}`. The gateway's codes and messages
/// need no escaping, and then the body is put together directly (a denial
/// costs its response and little else); anything else goes through serde.
fn error_json(code: &str, message: &str) -> Vec<u8> {
    let plain = |s: &str| !s.bytes().any(|b| b == b'"' || b == b'\\' || b < b' ');
    if plain(code) && plain(message) {
        let mut body = Vec::with_capacity(code.len() + message.len() + 25);
        body.extend_from_slice(b"{\"error\":\"");
        body.extend_from_slice(code.as_bytes());
        body.extend_from_slice(b"\",\"message\":\"");
        body.extend_from_slice(message.as_bytes());
        body.extend_from_slice(b"\"}");
        return body;
    }
    // Serialising two strings into a Vec cannot fail.
    serde_json::to_vec(&ErrorBody {
        error: code,
        message,
    })
    .unwrap_or_default()
}

/// The gateway's answer to an allowed CORS preflight: 204, only safe methods.
fn preflight_response(request: &HeaderMap, cors: &CorsConfig) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, OPTIONS"),
    );
    if let Some(asked) = request.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        // The key header must be allowed; the rest is the backend's business,
        // and a read-only key cannot change anything anyway.
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    if let Ok(v) = HeaderValue::from_str(&max_age_secs(cors.max_age)) {
        h.insert(header::ACCESS_CONTROL_MAX_AGE, v);
    }
    r
}

fn max_age_secs(d: Duration) -> String {
    d.as_secs().to_string()
}

pub const RATELIMIT: header::HeaderName = header::HeaderName::from_static("ratelimit");
pub const RATELIMIT_POLICY: header::HeaderName =
    header::HeaderName::from_static("ratelimit-policy");

/// Adds the `RateLimit-Policy` and `RateLimit` fields of `quota`. Appended:
/// they are lists, and a backend may send its own policies too.
pub fn add_quota(h: &mut HeaderMap, quota: &Quota) {
    h.append(RATELIMIT_POLICY, quota.policy_header());
    h.append(RATELIMIT, quota.state_header());
}

/// Adds `Access-Control-Allow-Origin` (and `Vary: Origin`) to a response to a
/// browser request from a listed origin; the gateway's own denials included,
/// so that a page can read why it was refused.
pub fn add_cors(
    response: &mut Response<ProxyBody>,
    origin: Option<&HeaderValue>,
    cors: Option<&CorsConfig>,
) {
    let (Some(origin), Some(cors)) = (origin, cors) else {
        return;
    };
    if !origin_listed(origin.as_bytes(), &cors.allowed_origins) {
        return;
    }
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    if h.contains_key(RATELIMIT) {
        // A page can only read what is exposed: let it see its quota.
        h.append(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("RateLimit, RateLimit-Policy, Retry-After"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_requests_get_grpc_statuses_in_trailers_only_answers() {
        for (status, grpc) in [
            (401, 16),
            (403, 7),
            (429, 8),
            (502, 14),
            (503, 14),
            (504, 4),
            (408, 4),
            (400, 13),
            (431, 13),
            (418, 2),
        ] {
            let s = StatusCode::from_u16(status).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(grpc_status(s), grpc, "{status}");
        }
        let r = grpc_error(StatusCode::FORBIDDEN, "read_only_method", "100% refused\né");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert_eq!(r.headers()["grpc-status"], "7");
        assert_eq!(
            r.headers()["grpc-message"],
            "read_only_method: 100%25 refused%0A%C3%A9"
        );
        let mut h = HeaderMap::new();
        for (ct, yes) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("Application/GRPC+json", true),
            ("application/json", false),
            ("application/grp", false),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            assert_eq!(is_grpc(&h), yes, "{ct}");
        }
    }

    #[test]
    fn error_bodies_are_the_json_serde_would_write() {
        for (code, message) in [
            ("invalid_key", "The API key is not valid."),
            ("x", "a \"quoted\" word\\ and\na newline"),
            ("", ""),
        ] {
            let expected = serde_json::to_vec(&ErrorBody {
                error: code,
                message,
            })
            .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(error_json(code, message), expected);
            // Made, then the thread's copy of it, then made again after
            // another answer: the same bytes each time.
            assert_eq!(error_body(code, message), expected);
            assert_eq!(error_body(code, message), expected);
            assert_eq!(
                error_body("other", "answer"),
                &b"{\"error\":\"other\",\"message\":\"answer\"}"[..]
            );
            assert_eq!(error_body(code, message), expected);
        }
    }
    use crate::policy::InvalidReason;
    use http_body_util::BodyExt;

    fn body_of(r: Response<ProxyBody>) -> serde_json::Value {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let bytes = rt
            .block_on(r.into_body().collect())
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or_default()
    }

    #[test]
    fn rejections_are_json_with_code_and_message() {
        let r = Answer::Rejected(Rejection::InvalidKey(InvalidReason::Unknown))
            .response(&HeaderMap::new(), false);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers().get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
        let v = body_of(r);
        assert_eq!(v["error"], "invalid_key");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    #[test]
    fn own_answers_have_their_status_code_and_label() {
        let cors = CorsConfig {
            allowed_origins: vec!["https://shop.example.com".into()],
            max_age: Duration::from_secs(60),
        };
        let none = HeaderMap::new();
        for (answer, status, code) in [
            (
                Answer::Failed(ProxyError::Unavailable),
                502,
                Some("upstream_unavailable"),
            ),
            (
                Answer::Failed(ProxyError::Timeout),
                504,
                Some("upstream_timeout"),
            ),
            (
                Answer::Failed(ProxyError::BadTarget),
                400,
                Some("bad_request"),
            ),
            (
                Answer::Failed(ProxyError::RequestTimeout),
                408,
                Some("request_timeout"),
            ),
            (Answer::NotReady, 503, Some("not_ready")),
            (Answer::HeadersTooLarge, 431, Some("headers_too_large")),
            (Answer::Preflight(&cors), 204, None),
        ] {
            let label = answer.label().as_str();
            let r = answer.response(&none, false);
            assert_eq!(r.status().as_u16(), status, "{answer:?}");
            match code {
                Some(code) => {
                    assert_eq!(body_of(r)["error"], code, "{answer:?}");
                    assert_eq!(label, code, "{answer:?}");
                }
                None => assert_eq!(label, "preflight"),
            }
        }
    }

    #[test]
    fn cors_header_only_for_listed_origins() {
        let cors = CorsConfig {
            allowed_origins: vec!["https://shop.example.com".into()],
            max_age: Duration::from_secs(60),
        };
        let mut r =
            Answer::Rejected(Rejection::BrowserFullAccess).response(&HeaderMap::new(), false);
        add_cors(
            &mut r,
            Some(&HeaderValue::from_static("https://evil.example")),
            Some(&cors),
        );
        assert!(
            !r.headers()
                .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        );
        add_cors(
            &mut r,
            Some(&HeaderValue::from_static("https://shop.example.com")),
            Some(&cors),
        );
        assert_eq!(
            r.headers()
                .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .map(|v| v.as_bytes()),
            Some(&b"https://shop.example.com"[..])
        );
    }
}

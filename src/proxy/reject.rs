//! The gateway's own responses: every rejection and every proxy error mapped
//! to a status and a JSON body `{"error": code, "message": ...}` here, in one
//! exhaustive match each; and the CORS headers those responses carry.

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

use super::body::ProxyBody;
use crate::config::CorsConfig;
use crate::policy::{Rejection, origin_listed};

/// An operational failure while forwarding (not a policy outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// The upstream refused the connection, was unreachable, or broke before
    /// sending a response head.
    Unavailable,
    /// No response head within `upstream.response_timeout`.
    Timeout,
    /// The request target cannot be forwarded (e.g. `OPTIONS *`).
    BadTarget,
}

impl ProxyError {
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
        }
    }
}

#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

/// A JSON error response.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    // Serialising two strings into a Vec cannot fail.
    let body = serde_json::to_vec(&ErrorBody {
        error: code,
        message,
    })
    .unwrap_or_default();
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// 503 before the first key index is loaded.
pub fn not_ready() -> Response<ProxyBody> {
    let mut r = json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        "the gateway has not loaded its keys yet; retry shortly",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

pub fn rejection_response(r: Rejection) -> Response<ProxyBody> {
    let mut resp = json_error(r.status(), r.code(), r.message());
    if r.status() == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

pub fn error_response(e: ProxyError) -> Response<ProxyBody> {
    let (status, code, message) = e.parts();
    json_error(status, code, message)
}

/// The gateway's answer to an allowed CORS preflight: 204, only safe methods.
pub fn preflight_response(request: &HeaderMap, cors: &CorsConfig) -> Response<ProxyBody> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let r = rejection_response(Rejection::InvalidKey(InvalidReason::Unknown));
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
    fn proxy_errors_map_to_502_504_400() {
        assert_eq!(
            error_response(ProxyError::Unavailable).status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            error_response(ProxyError::Timeout).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            body_of(error_response(ProxyError::Timeout))["error"],
            "upstream_timeout"
        );
        assert_eq!(
            error_response(ProxyError::BadTarget).status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn cors_header_only_for_listed_origins() {
        let cors = CorsConfig {
            allowed_origins: vec!["https://shop.example.com".into()],
            max_age: Duration::from_secs(60),
        };
        let mut r = rejection_response(Rejection::BrowserFullAccess);
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

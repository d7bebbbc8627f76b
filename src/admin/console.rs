//! The console: one page and its two static files, all in the binary. The
//! page's policy allows scripts, styles and requests from this origin only
//! (no inline script, no other host), and it cannot be framed.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use super::docs::esc;
use super::{Admin, AdminBody, ApiError};

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn with_type(body: Bytes, content_type: &'static str) -> Response<AdminBody> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    r
}

/// The page, with the backend's documentation link filled in.
pub fn page(admin: &Admin) -> Response<AdminBody> {
    let docs = admin
        .config
        .docs_url
        .as_deref()
        .map(esc)
        .unwrap_or_default();
    let html = INDEX.replace("{{DOCS_URL}}", &docs);
    with_type(Bytes::from(html), "text/html; charset=utf-8")
}

pub fn asset(file: &str) -> Response<AdminBody> {
    match file {
        "app.js" => with_type(
            Bytes::from_static(APP_JS.as_bytes()),
            "text/javascript; charset=utf-8",
        ),
        "app.css" => with_type(
            Bytes::from_static(APP_CSS.as_bytes()),
            "text/css; charset=utf-8",
        ),
        _ => ApiError::not_found("no such file").response(),
    }
}

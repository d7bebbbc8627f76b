//! `GET /admin/v1/openapi.json` (the API's description, a file in the
//! binary) and `GET /admin/docs` (the same as a page to read, rendered here
//! from that file, so the two cannot disagree).

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::Value;

use super::AdminBody;

pub const OPENAPI: &str = include_str!("openapi.json");

pub fn openapi() -> Response<AdminBody> {
    let mut r = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The page: every operation with its method, path, summary, description
/// and responses.
pub fn page() -> Response<AdminBody> {
    let spec: Value = serde_json::from_str(OPENAPI).unwrap_or(Value::Null);
    let text = |v: &Value| esc(v.as_str().unwrap_or_default());
    let mut html = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>keygate admin API</title><link rel=\"stylesheet\" href=\"/admin/assets/app.css\"></head><body><main class=\"docs\">",
    );
    html.push_str(&format!(
        "<h1>{}</h1><p>{}</p><p><a href=\"/admin/v1/openapi.json\">openapi.json</a> · <a href=\"/\">Console</a></p>",
        text(&spec["info"]["title"]),
        text(&spec["info"]["description"])
    ));
    if let Some(paths) = spec["paths"].as_object() {
        for (path, item) in paths {
            let Some(ops) = item.as_object() else {
                continue;
            };
            for (method, op) in ops {
                if method == "parameters" {
                    continue;
                }
                html.push_str(&format!(
                    "<section class=\"op\"><h2><span class=\"method\">{}</span> <code>{}</code></h2><p><strong>{}</strong></p>",
                    esc(&method.to_uppercase()),
                    esc(path),
                    text(&op["summary"])
                ));
                if op["description"].is_string() {
                    html.push_str(&format!("<p>{}</p>", text(&op["description"])));
                }
                if let Some(responses) = op["responses"].as_object() {
                    html.push_str(
                        "<table><thead><tr><th>status</th><th>meaning</th></tr></thead><tbody>",
                    );
                    for (status, resp) in responses {
                        let description = match resp.get("$ref").and_then(Value::as_str) {
                            Some(r) => {
                                let name = r.rsplit('/').next().unwrap_or_default();
                                text(&spec["components"]["responses"][name]["description"])
                            }
                            None => text(&resp["description"]),
                        };
                        html.push_str(&format!(
                            "<tr><td>{}</td><td>{description}</td></tr>",
                            esc(status)
                        ));
                    }
                    html.push_str("</tbody></table>");
                }
                html.push_str("</section>");
            }
        }
    }
    html.push_str("</main></body></html>");
    let mut r = Response::new(Full::new(Bytes::from(html)));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    );
    r
}

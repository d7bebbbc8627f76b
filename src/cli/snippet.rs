//! `keygate keys snippet`: the gateway's address for the snippets
//! (`crate::keys::snippet` writes them).

use crate::config::Config;

/// `http(s)://host:port` of the gateway from its listen address; a wildcard
/// address becomes `localhost`.
pub fn default_gateway_url(config: Option<&Config>) -> String {
    let Some(c) = config else {
        return "http://localhost:8080".to_string();
    };
    let scheme = if c.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let addr = c.server.listen;
    let host = if addr.ip().is_unspecified() {
        "localhost".to_string()
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    format!("{scheme}://{host}:{}", addr.port())
}

pub use crate::keys::snippet::render;

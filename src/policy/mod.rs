//! Every accept/deny rule of the gateway, as one pure function: `decide`.
//!
//! It sees the request head (method, headers, query), the key index and the
//! time, and returns a `Decision`. It does no I/O, reads no clock and logs
//! nothing, so that each row of SPEC's decision table is a unit test here.

pub mod client;
pub mod credentials;
mod rejection;

use std::time::SystemTime;

use http::header::ORIGIN;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

pub use credentials::{Credential, KeySource};
pub use rejection::{InvalidReason, Rejection};

use crate::config::{BrowserFullAccess, Config, CorsConfig};
use crate::keys::record::normalize_origin;
use crate::keys::{Access, KeyEntry, KeyHash, KeyIndex, Lookup, token};

/// `Sec-Fetch-Site`: sent by browsers on every request, unremovable by scripts.
pub const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// The settings `decide` depends on, taken from the config once (the
/// gateway holds one per config, not one per request).
#[derive(Debug, Clone)]
pub struct PolicySettings {
    pub header: HeaderName,
    pub query_param: Option<String>,
    pub prefix: String,
    pub browser_full_access: BrowserFullAccess,
    pub cors: Option<CorsConfig>,
}

impl PolicySettings {
    pub fn from_config(config: &Config) -> Self {
        PolicySettings {
            header: config.keys.header.clone(),
            query_param: config.keys.query_param.clone(),
            prefix: config.keys.prefix.clone(),
            browser_full_access: config.policy.browser_full_access,
            cors: config.cors.clone(),
        }
    }
}

/// The parts of a request that decisions depend on.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
}

/// What to do with a request.
#[derive(Debug, Clone, Copy)]
pub enum Decision<'k, 's> {
    /// A CORS preflight (row 0): needs no key.
    Preflight(Preflight<'s>),
    /// Refused by the gateway; `key` when the key was identified.
    Deny {
        rejection: Rejection,
        key: Option<&'k KeyEntry>,
    },
    /// Forwarded. `reported` marks a full-access key from a browser let through
    /// in report-only mode.
    Allow {
        key: &'k KeyEntry,
        source: KeySource,
        reported: bool,
    },
}

/// The three outcomes of a preflight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preflight<'c> {
    /// No `[cors]`: the backend answers it, unchanged.
    Forward,
    /// The gateway answers 204 with the CORS headers of this `[cors]`.
    Answer(&'c CorsConfig),
    /// The gateway refuses it.
    Deny(Rejection),
}

/// Methods a read-only key may use, and the only ones CORS ever advertises.
pub fn is_safe_method(m: &Method) -> bool {
    *m == Method::GET || *m == Method::HEAD || *m == Method::OPTIONS
}

/// True when the request comes from a browser: any `Origin` (even `null` or
/// empty) or any `Sec-Fetch-Site`. `Sec-Fetch-Mode` alone does not count:
/// Node.js's `fetch()` sends it from servers.
pub fn is_browser(headers: &HeaderMap) -> bool {
    headers.contains_key(ORIGIN) || headers.contains_key(SEC_FETCH_SITE)
}

/// True when `origin` is one of `allowed` (normalised by
/// `normalize_origin`). Browsers send origins already in that form, so a
/// byte comparison decides almost every request; anything else (a default
/// port, upper case, a Unicode host from a non-browser client) is
/// normalised the same way before it is refused.
pub fn origin_listed(origin: &[u8], allowed: &[String]) -> bool {
    if allowed
        .iter()
        .any(|a| a.as_bytes().eq_ignore_ascii_case(origin))
    {
        return true;
    }
    std::str::from_utf8(origin)
        .ok()
        .and_then(|o| normalize_origin(o).ok())
        .is_some_and(|o| allowed.contains(&o))
}

/// Decides a request, rows 0 to 7 of SPEC's table, in order.
pub fn decide<'k, 's>(
    head: RequestHead<'_>,
    index: &'k KeyIndex,
    settings: &'s PolicySettings,
    now: SystemTime,
) -> Decision<'k, 's> {
    let scan = credentials::scan(
        head.headers,
        head.query,
        &settings.header,
        settings.query_param.as_deref(),
    );
    if *head.method == Method::OPTIONS
        && let (Some(origin), Some(method)) = (scan.origin, scan.request_method)
    {
        return Decision::Preflight(preflight(origin, method, settings.cors.as_ref()));
    }
    let deny = |rejection| Decision::Deny {
        rejection,
        key: None,
    };
    let (token, source) = match scan.credential {
        Credential::Missing => return deny(Rejection::MissingKey),
        Credential::Multiple => return deny(Rejection::InvalidKey(InvalidReason::Multiple)),
        Credential::One { token, source } => (token, source),
    };
    if let Err(e) = token::check(&token, &settings.prefix) {
        return deny(Rejection::InvalidKey(InvalidReason::Token(e)));
    }
    let key = match index.lookup(&KeyHash::of(&token)) {
        Lookup::Found(key) => key,
        Lookup::Unknown => return deny(Rejection::InvalidKey(InvalidReason::Unknown)),
        Lookup::Revoked => return deny(Rejection::InvalidKey(InvalidReason::Revoked)),
    };
    // A rotated-away secret past its grace, or a revocation that has come
    // into force since the index was built: refused like any revoked key.
    if key.not_after().is_some_and(|t| t <= now) {
        return deny(Rejection::InvalidKey(InvalidReason::Revoked));
    }
    let deny_key = |rejection| Decision::Deny {
        rejection,
        key: Some(key),
    };
    if key.expires().is_some_and(|t| t <= now) {
        return deny_key(Rejection::ExpiredKey);
    }
    // Same rule as `is_browser`, from the scan.
    let browser = scan.origin.is_some() || scan.fetch_site;
    let mut reported = false;
    if browser && key.access == Access::FullAccess {
        match settings.browser_full_access {
            BrowserFullAccess::Deny => return deny_key(Rejection::BrowserFullAccess),
            BrowserFullAccess::Report => reported = true,
        }
    }
    if browser && !key.origins().is_empty() {
        let listed = scan
            .origin
            .is_some_and(|o| origin_listed(o.as_bytes(), key.origins()));
        if !listed {
            return deny_key(Rejection::OriginNotAllowed);
        }
    }
    if key.access == Access::ReadOnly && !is_safe_method(head.method) {
        return deny_key(Rejection::ReadOnlyMethod);
    }
    Decision::Allow {
        key,
        source,
        reported,
    }
}

fn preflight<'c>(
    origin: &HeaderValue,
    method: &HeaderValue,
    cors: Option<&'c CorsConfig>,
) -> Preflight<'c> {
    let Some(cors) = cors else {
        return Preflight::Forward;
    };
    if !origin_listed(origin.as_bytes(), &cors.allowed_origins) {
        return Preflight::Deny(Rejection::OriginNotAllowed);
    }
    let method_ok = Method::from_bytes(method.as_bytes()).is_ok_and(|m| is_safe_method(&m));
    if method_ok {
        Preflight::Answer(cors)
    } else {
        Preflight::Deny(Rejection::ReadOnlyMethod)
    }
}

#[cfg(test)]
mod tests;

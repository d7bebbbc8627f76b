//! The request log: one line per request, after its response, with
//! OpenTelemetry's field names (`http.request.method`, `url.path`,
//! `http.response.status_code`, `client.address`, ...).
//!
//! Refusals are always logged (SPEC: one line per denied request); the
//! other requests only with `log.access_log = true`. A forwarded request's
//! line is written when its response body has been relayed whole, or cut
//! (`Record` rides along with the body); a request the gateway answers
//! itself is logged when its answer is made, since that small body is
//! written at once. Request ids go with the access log: with it on, a valid
//! incoming `x-request-id` is kept (else one is made), sent upstream and
//! returned to the client, and it is in the line.
//!
//! Formatting takes no allocation of its own: `cli::logging` writes the
//! line into a buffer its thread keeps. It also installs a `LineWriter`
//! that writes these typed fields straight into that buffer: a line through
//! `tracing` pays a dispatch per field and writes each name piece by piece,
//! which was a fifth of a refusal's instructions. Without one installed
//! (unit tests, a library user) lines go through `tracing::info!`, with
//! the same target and fields.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Version};
use tokio::time::Instant;

use super::LogPath;

pub static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The longest incoming `x-request-id` kept, in bytes.
pub const MAX_REQUEST_ID: usize = 128;

/// True for a request id the gateway keeps: 1 to `MAX_REQUEST_ID` bytes of
/// letters, digits and `-._~:/+=` (what UUIDs, ULIDs, Envoy's and Heroku's
/// ids use), nothing that could break a log line or a header.
pub fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= MAX_REQUEST_ID
        && v.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~:/+=".contains(&b))
}

/// The request's id: its valid `x-request-id`, or a new one set on it (so
/// that it goes upstream).
pub fn request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID)
        && valid_request_id(v.as_bytes())
        && headers.get_all(&X_REQUEST_ID).iter().count() == 1
    {
        return v.clone();
    }
    let id = new_request_id();
    headers.insert(X_REQUEST_ID.clone(), id.clone());
    id
}

/// A random version-4 UUID, from a generator per thread seeded by the
/// standard library's per-process random keys: unique enough to find a
/// request in the logs of a fleet, and no system call per request.
pub fn new_request_id() -> HeaderValue {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(std::process::id().into());
            h.finish() | 1
        });
    }
    let next = || {
        STATE.with(|s| {
            // splitmix64
            let x = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            s.set(x);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        })
    };
    let (hi, lo) = (next(), next());
    let mut bytes = (u128::from(hi) << 64 | u128::from(lo)).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut o = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[o] = b'-';
            o += 1;
        }
        out[o] = HEX[usize::from(b >> 4)];
        out[o + 1] = HEX[usize::from(b & 0x0f)];
        o += 2;
    }
    // 36 bytes of hex digits and dashes: always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// `network.protocol.version` as OpenTelemetry writes it.
pub fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "unknown",
    }
}

/// What a request's line says about the request itself.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub version: Version,
    pub request_id: Option<&'a HeaderValue>,
    /// `client.address`: the client behind any trusted proxies.
    pub client: &'a str,
    pub peer: std::net::SocketAddr,
    pub peer_ip: &'a str,
    pub bytes_in: Option<u64>,
}

/// What it says about the outcome.
pub struct Outcome<'a> {
    pub message: &'static str,
    pub decision: &'static str,
    pub reason: Option<&'static str>,
    pub key_id: Option<&'a str>,
    pub status: u16,
    pub bytes_out: Option<u64>,
    pub duration: Duration,
    pub upstream: Option<Duration>,
    /// For a forwarded response: whether its body was relayed whole.
    pub complete: Option<bool>,
    /// For a rate-limited refusal: the limit and its scope.
    pub limit: Option<&'a dyn std::fmt::Display>,
    pub scope: Option<&'static str>,
}

/// The target of every request line, as `tracing` would name it.
pub const TARGET: &str = module_path!();

/// Writes request lines from their typed fields, in the order and with the
/// names `log_with_tracing` gives them, at INFO under `TARGET`, when its
/// filter lets those through. `r.path` is already cut.
pub trait LineWriter: Send + Sync {
    fn write(&self, r: &Request<'_>, o: &Outcome<'_>);
}

static WRITER: OnceLock<&'static dyn LineWriter> = OnceLock::new();

/// Sends every request line to `w` from now on; a second call keeps the
/// first writer.
pub fn install_writer(w: &'static dyn LineWriter) {
    let _ = WRITER.set(w);
}

/// Writes the line (at INFO).
pub fn log(r: &Request<'_>, o: &Outcome<'_>) {
    // A path over the cut length is the rare (hostile) case: only it is
    // formatted; the others go as they are.
    let cut;
    let path = if r.path.len() > super::log_path::MAX_PATH_BYTES {
        cut = LogPath(r.path).to_string();
        cut.as_str()
    } else {
        r.path
    };
    let r = &Request { path, ..*r };
    match WRITER.get() {
        Some(w) => w.write(r, o),
        None => log_with_tracing(r, o),
    }
}

/// The line as a `tracing` event: what a `LineWriter` must write the same.
pub fn log_with_tracing(r: &Request<'_>, o: &Outcome<'_>) {
    tracing::info!(
        message = o.message,
        decision = o.decision,
        reason = o.reason,
        key.id = o.key_id,
        http.request.method = r.method.as_str(),
        url.path = r.path,
        http.response.status_code = o.status,
        client.address = r.client,
        network.peer.address = r.peer_ip,
        network.peer.port = r.peer.port(),
        network.protocol.version = protocol(r.version),
        request.id = r.request_id.and_then(|v| v.to_str().ok()),
        http.request.body.size = r.bytes_in,
        http.response.body.size = o.bytes_out,
        duration_us = micros(o.duration),
        upstream.duration_us = o.upstream.map(micros),
        response.complete = o.complete,
        ratelimit.limit = o.limit.map(tracing::field::display),
        ratelimit.scope = o.scope,
    );
}

pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A forwarded request's line, carried with its response body and written
/// when the body is done (`ProxyBody`'s drop); owned, so the request can go.
pub struct Record {
    pub method: Method,
    pub path: http::uri::PathAndQuery,
    pub version: Version,
    pub request_id: Option<HeaderValue>,
    pub client: HeaderValue,
    pub peer: std::net::SocketAddr,
    pub peer_ip: HeaderValue,
    pub decision: &'static str,
    pub key_id: Option<HeaderValue>,
    pub status: u16,
    pub started: Instant,
    pub upstream: Duration,
}

impl Record {
    /// Logs the request, with the bytes that went each way.
    pub fn finish(&self, bytes_in: u64, bytes_out: u64, complete: bool) {
        log(
            &Request {
                method: &self.method,
                path: self.path.path(),
                version: self.version,
                request_id: self.request_id.as_ref(),
                client: self.client.to_str().unwrap_or_default(),
                peer: self.peer,
                peer_ip: self.peer_ip.to_str().unwrap_or_default(),
                bytes_in: Some(bytes_in),
            },
            &Outcome {
                message: "request allowed",
                decision: self.decision,
                reason: None,
                key_id: self.key_id.as_ref().and_then(|v| v.to_str().ok()),
                status: self.status,
                bytes_out: Some(bytes_out),
                duration: self.started.elapsed(),
                upstream: Some(self.upstream),
                complete: Some(complete),
                limit: None,
                scope: None,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_keep_valid_ones_and_replace_the_rest() {
        for ok in [
            "a",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            "01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "x:y/z+w=",
            &"a".repeat(MAX_REQUEST_ID),
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                &X_REQUEST_ID,
                HeaderValue::from_str(ok).unwrap_or_else(|e| panic!("{e}")),
            );
            assert_eq!(request_id(&mut h), ok);
            assert_eq!(h[&X_REQUEST_ID], ok);
        }
        for bad in [
            "",
            "has space",
            "quote\"",
            "{json}",
            &"a".repeat(MAX_REQUEST_ID + 1),
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                &X_REQUEST_ID,
                HeaderValue::from_str(bad).unwrap_or_else(|e| panic!("{e}")),
            );
            let id = request_id(&mut h);
            assert_ne!(id, bad);
            assert_eq!(
                h[&X_REQUEST_ID], id,
                "the new id replaces the bad one upstream"
            );
        }
        // Two ids: which one is meant? Neither; a new one.
        let mut h = HeaderMap::new();
        h.append(&X_REQUEST_ID, HeaderValue::from_static("a"));
        h.append(&X_REQUEST_ID, HeaderValue::from_static("b"));
        let id = request_id(&mut h);
        assert_eq!(h.get_all(&X_REQUEST_ID).iter().count(), 1);
        assert_eq!(id.len(), 36);
    }

    #[test]
    fn new_request_ids_are_distinct_uuid_v4s() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = new_request_id();
            let s = id.to_str().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(s.len(), 36);
            assert_eq!(&s[14..15], "4", "version 4: {s}");
            assert!("89ab".contains(&s[19..20]), "RFC 4122 variant: {s}");
            assert!(seen.insert(s.to_string()), "repeated id {s}");
        }
    }
}

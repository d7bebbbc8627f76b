//! Header rewriting between client and upstream (RFC 9110 §7.6.1): hop-by-hop
//! headers out, forwarding and identity headers in, the key removed.
//! Pure functions over `http` types.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::keys::Access;
use crate::policy::KeySource;

pub const KEY_ID: HeaderName = HeaderName::from_static("x-keygate-key-id");
pub const KEY_ACCESS: HeaderName = HeaderName::from_static("x-keygate-access");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1,
/// plus the non-standard `Keep-Alive` and `Proxy-Connection`).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// True when the request asks to switch protocols (WebSocket): `Connection`
/// lists `upgrade` and an `Upgrade` header is present.
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
/// When `keep_upgrade`, the `Upgrade` header and `Connection: upgrade` stay
/// (a protocol switch must reach the other side).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let upgrade = keep_upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    // Names listed in Connection: rare, so the Vec is usually never allocated.
    let listed: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(u) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, u);
    }
}

/// What the forwarder knows about the caller.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The client's IP, as a header value.
    pub peer: &'a HeaderValue,
    pub tls: bool,
    pub key_id: &'a HeaderValue,
    pub access: Access,
    /// Where the key was found, or `None` to leave it (forward_key = true).
    pub remove_key: Option<(KeySource, &'a HeaderName)>,
}

/// Rewrites a request's headers for the upstream.
pub fn rewrite_request(headers: &mut HeaderMap, caller: &Caller<'_>, upgrade: bool) {
    strip_hop_by_hop(headers, upgrade);
    match caller.remove_key {
        Some((KeySource::Header, name)) => {
            headers.remove(name);
        }
        Some((KeySource::Bearer, _)) => {
            headers.remove(header::AUTHORIZATION);
        }
        Some((KeySource::Query, _)) | None => {}
    }
    remove_keygate_headers(headers);
    fold_cookies(headers);
    append_forwarded_for(headers, caller.peer);
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if caller.tls { "https" } else { "http" }),
    );
    headers.insert(KEY_ID, caller.key_id.clone());
    headers.insert(KEY_ACCESS, HeaderValue::from_static(caller.access.as_str()));
}

/// Removes anything that could carry a key (the key header, a Bearer
/// `Authorization`) from a request forwarded without a checked key.
pub fn remove_unchecked_keys(headers: &mut HeaderMap, key_header: &HeaderName) {
    headers.remove(key_header);
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .any(|v| crate::policy::credentials::bearer_token(v.as_bytes()).is_some());
    if bearer {
        headers.remove(header::AUTHORIZATION);
    }
}

/// HTTP/2 clients may split `Cookie` into several fields (RFC 9113
/// §8.2.3); an HTTP/1.1 upstream must get them as one, joined by "; ".
fn fold_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(header::COOKIE, v);
    }
}

/// Removes every client-sent `x-keygate-*` header: only the gateway speaks for
/// the caller's identity.
fn remove_keygate_headers(headers: &mut HeaderMap) {
    let is_ours = |n: &HeaderName| n.as_str().starts_with("x-keygate-");
    if headers.keys().any(is_ours) {
        let names: Vec<HeaderName> = headers.keys().filter(|n| is_ours(n)).cloned().collect();
        for n in names {
            headers.remove(n);
        }
    }
}

/// Appends the peer to `X-Forwarded-For`, folding several header lines into one.
fn append_forwarded_for(headers: &mut HeaderMap, peer: &HeaderValue) {
    if !headers.contains_key(&X_FORWARDED_FOR) {
        // The common case: no proxy before us, nothing to format.
        headers.insert(X_FORWARDED_FOR, peer.clone());
        return;
    }
    let mut value = String::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(s) = v.to_str() {
            value.push_str(s.trim());
            value.push_str(", ");
        }
    }
    value.push_str(peer.to_str().unwrap_or_default());
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR, v);
    }
}

/// Removes the `name=value` pairs of a query parameter, keeping the rest as
/// sent. Returns `None` when nothing is left.
pub fn strip_query_param(query: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| pair.split_once('=').map_or(*pair, |(n, _)| n) != name)
        .collect();
    let joined = kept.join("&");
    (!joined.is_empty()).then_some(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
                HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        m
    }

    static PEER: HeaderValue = HeaderValue::from_static("192.0.2.7");

    fn caller<'a>(
        id: &'a HeaderValue,
        key_header: &'a HeaderName,
        source: KeySource,
    ) -> Caller<'a> {
        Caller {
            peer: &PEER,
            tls: false,
            key_id: id,
            access: Access::ReadOnly,
            remove_key: Some((source, key_header)),
        }
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("upgrade", "h2c"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn upgrade_survives_when_asked() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(
            h.get("upgrade").map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        assert_eq!(
            h.get("connection").map(|v| v.as_bytes()),
            Some(&b"upgrade"[..])
        );
        assert!(h.contains_key("sec-websocket-key"));
    }

    #[test]
    fn request_rewrite_removes_key_and_spoofed_identity_and_adds_ours() {
        let id = HeaderValue::from_static("key_a");
        let name = HeaderName::from_static("x-api-key");
        let mut h = map(&[
            ("x-api-key", "kg_secret"),
            ("x-keygate-key-id", "spoofed"),
            ("x-keygate-admin", "1"),
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-proto", "https"),
            ("authorization", "Basic dXNlcg=="),
        ]);
        rewrite_request(&mut h, &caller(&id, &name, KeySource::Header), false);
        assert!(!h.contains_key("x-api-key"));
        assert!(!h.contains_key("x-keygate-admin"));
        assert_eq!(h.get_all("x-keygate-key-id").iter().count(), 1);
        assert_eq!(h.get("x-keygate-key-id"), Some(&id));
        assert_eq!(
            h.get("x-keygate-access").map(|v| v.as_bytes()),
            Some(&b"read-only"[..])
        );
        assert_eq!(
            h.get("x-forwarded-for").map(|v| v.as_bytes()),
            Some(&b"203.0.113.1, 192.0.2.7"[..])
        );
        assert_eq!(
            h.get("x-forwarded-proto").map(|v| v.as_bytes()),
            Some(&b"http"[..])
        );
        // Another scheme's Authorization is not ours: it stays.
        assert!(h.contains_key("authorization"));
    }

    #[test]
    fn bearer_key_removes_authorization() {
        let id = HeaderValue::from_static("key_a");
        let name = HeaderName::from_static("x-api-key");
        let mut h = map(&[("authorization", "Bearer kg_secret")]);
        rewrite_request(&mut h, &caller(&id, &name, KeySource::Bearer), false);
        assert!(!h.contains_key("authorization"));
    }

    #[test]
    fn forward_key_keeps_it() {
        let id = HeaderValue::from_static("key_a");
        let mut h = map(&[("x-api-key", "kg_secret")]);
        let name = HeaderName::from_static("x-api-key");
        let mut c = caller(&id, &name, KeySource::Header);
        c.remove_key = None;
        rewrite_request(&mut h, &c, false);
        assert!(h.contains_key("x-api-key"));
    }

    #[test]
    fn several_forwarded_for_lines_fold_into_one() {
        let id = HeaderValue::from_static("key_a");
        let name = HeaderName::from_static("x-api-key");
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        rewrite_request(&mut h, &caller(&id, &name, KeySource::Header), false);
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(
            h.get("x-forwarded-for").map(|v| v.as_bytes()),
            Some(&b"10.0.0.1, 10.0.0.2, 192.0.2.7"[..])
        );
    }

    #[test]
    fn split_cookies_are_folded_into_one_line() {
        let id = HeaderValue::from_static("key_a");
        let name = HeaderName::from_static("x-api-key");
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2")]);
        rewrite_request(&mut h, &caller(&id, &name, KeySource::Header), false);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(
            h.get("cookie").map(|v| v.as_bytes()),
            Some(&b"a=1; b=2"[..])
        );
    }

    #[test]
    fn unchecked_keys_are_removed_but_other_authorization_stays() {
        let name = HeaderName::from_static("x-api-key");
        let mut h = map(&[("x-api-key", "k"), ("authorization", "Bearer k")]);
        remove_unchecked_keys(&mut h, &name);
        assert!(h.is_empty());
        let mut h = map(&[("authorization", "Basic dXNlcg==")]);
        remove_unchecked_keys(&mut h, &name);
        assert!(h.contains_key("authorization"));
    }

    #[test]
    fn query_param_stripping_keeps_the_rest_in_order() {
        assert_eq!(
            strip_query_param("a=1&api_key=s&b=2", "api_key"),
            Some("a=1&b=2".into())
        );
        assert_eq!(strip_query_param("api_key=s", "api_key"), None);
        assert_eq!(
            strip_query_param("api_keyx=1", "api_key"),
            Some("api_keyx=1".into())
        );
    }
}

//! Header rewriting between client and upstream (RFC 9110 §7.6.1): hop-by-hop
//! headers out, forwarding and identity headers in, the key removed.
//! Pure functions over `http` types.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::keys::Access;
use crate::policy::KeySource;

const KEY_ID_NAME: &str = "x-keygate-key-id";
const KEY_ACCESS_NAME: &str = "x-keygate-access";
const X_FORWARDED_FOR_NAME: &str = "x-forwarded-for";
const X_FORWARDED_PROTO_NAME: &str = "x-forwarded-proto";
pub const KEY_ID: HeaderName = HeaderName::from_static(KEY_ID_NAME);
pub const KEY_ACCESS: HeaderName = HeaderName::from_static(KEY_ACCESS_NAME);
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static(X_FORWARDED_FOR_NAME);
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static(X_FORWARDED_PROTO_NAME);
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
    // Most messages carry none of them: one pass over the (few) names
    // present is much cheaper than hashing nine names to remove nothing.
    if !headers.keys().any(|n| HOP_BY_HOP.contains(n)) {
        return;
    }
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
    /// The checked key's id (as a header value) and access; `None` for a
    /// request forwarded without a key (a preflight the backend answers).
    pub identity: Option<(&'a HeaderValue, Access)>,
    /// Where the checked key was found, to remove it; `None` to leave it.
    pub remove_key: Option<KeySource>,
    /// The configured key header.
    pub key_header: &'a HeaderName,
    /// `keys.forward_key`: keys reach the backend as sent.
    pub forward_key: bool,
}

/// The fields the gateway adds to a forwarded request, kept apart from the
/// request's map: our own HTTP/1.1 engine writes them after the request's
/// own fields, and only hyper's engines have them inserted (four map
/// insertions of names the map must hash cost about a thousand
/// instructions a request). The map holds none of these names once
/// `rewrite_request` is done with it.
#[derive(Debug)]
pub struct Added {
    forwarded_for: HeaderValue,
    proto: HeaderValue,
    /// The key's id and access, as header values.
    identity: Option<(HeaderValue, HeaderValue)>,
}

impl Added {
    /// The fields, in the order they go out.
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, &HeaderValue)> + Clone {
        let identity = self.identity.as_ref();
        [
            (X_FORWARDED_FOR_NAME, &self.forwarded_for),
            (X_FORWARDED_PROTO_NAME, &self.proto),
        ]
        .into_iter()
        .chain(identity.map(|(id, _)| (KEY_ID_NAME, id)))
        .chain(identity.map(|(_, access)| (KEY_ACCESS_NAME, access)))
    }

    /// What a request from 127.0.0.1 without a key gets.
    #[cfg(test)]
    pub fn for_test() -> Added {
        Added {
            forwarded_for: HeaderValue::from_static("127.0.0.1"),
            proto: HeaderValue::from_static("http"),
            identity: None,
        }
    }

    /// Puts the fields into `headers` (for hyper's engines).
    pub fn insert_into(self, headers: &mut HeaderMap) {
        headers.insert(X_FORWARDED_FOR, self.forwarded_for);
        headers.insert(X_FORWARDED_PROTO, self.proto);
        if let Some((id, access)) = self.identity {
            headers.insert(KEY_ID, id);
            headers.insert(KEY_ACCESS, access);
        }
    }
}

/// Rewrites a request's headers for the upstream: what must not reach it
/// removed from `headers`, what the gateway adds returned.
#[must_use]
pub fn rewrite_request(headers: &mut HeaderMap, caller: &Caller<'_>, upgrade: bool) -> Added {
    strip_hop_by_hop(headers, upgrade);
    match caller.remove_key {
        Some(KeySource::Header) => {
            headers.remove(caller.key_header);
        }
        Some(KeySource::Bearer) => {
            headers.remove(header::AUTHORIZATION);
        }
        Some(KeySource::Query) | None => {}
    }
    if caller.identity.is_none() && !caller.forward_key {
        // No identity to vouch for, and no key (unchecked, since preflights
        // need none) goes to the backend.
        remove_unchecked_keys(headers, caller.key_header);
    }
    // One pass over the (few) names present finds the rare fields to
    // remove or fold; most requests carry none of them.
    let (mut ours, mut forwarded_for, mut forwarded_proto) = (false, false, false);
    for name in headers.keys() {
        ours |= name.as_str().starts_with("x-keygate-");
        forwarded_for |= name == X_FORWARDED_FOR;
        forwarded_proto |= name == X_FORWARDED_PROTO;
    }
    if ours {
        remove_keygate_headers(headers);
    }
    if forwarded_proto {
        headers.remove(X_FORWARDED_PROTO);
    }
    fold_cookies(headers);
    Added {
        forwarded_for: if forwarded_for {
            take_forwarded_for(headers, caller.peer)
        } else {
            caller.peer.clone()
        },
        proto: HeaderValue::from_static(if caller.tls { "https" } else { "http" }),
        identity: caller
            .identity
            .map(|(id, access)| (id.clone(), HeaderValue::from_static(access.as_str()))),
    }
}

/// Removes anything that could carry a key (the key header, a Bearer
/// `Authorization`) from a request forwarded without a checked key.
fn remove_unchecked_keys(headers: &mut HeaderMap, key_header: &HeaderName) {
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
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("x-keygate-"))
        .cloned()
        .collect();
    for n in names {
        headers.remove(n);
    }
}

/// Takes the client's `X-Forwarded-For` lines out of `headers` and returns
/// them folded into one value, with the peer appended.
fn take_forwarded_for(headers: &mut HeaderMap, peer: &HeaderValue) -> HeaderValue {
    let mut value = String::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(s) = v.to_str() {
            value.push_str(s.trim());
            value.push_str(", ");
        }
    }
    value.push_str(peer.to_str().unwrap_or_default());
    headers.remove(X_FORWARDED_FOR);
    HeaderValue::from_str(&value).unwrap_or_else(|_| peer.clone())
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
mod tests;

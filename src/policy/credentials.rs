//! Finding the API key in a request head: the configured header,
//! `Authorization: Bearer`, or (when enabled) a query parameter. A key given
//! more than once, even twice the same, is reported as such rather than one
//! copy picked: intermediaries disagree about which copy wins, and an
//! attacker could exploit that.

use std::borrow::Cow;

use http::header::{ACCESS_CONTROL_REQUEST_METHOD, AUTHORIZATION, ORIGIN};
use http::{HeaderMap, HeaderName, HeaderValue};

/// Where a key was found; the forwarder removes it from there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    Header,
    Bearer,
    Query,
}

/// What a request carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential<'a> {
    Missing,
    /// More than one key (header twice, header and Bearer, ...).
    Multiple,
    One {
        token: Cow<'a, [u8]>,
        source: KeySource,
    },
}

/// Everything the decision needs from the headers, found in one pass over
/// them (a few comparisons per header instead of a hashed lookup per name).
#[derive(Debug, Clone)]
pub struct HeadScan<'a> {
    pub credential: Credential<'a>,
    /// The first `Origin` value, if any.
    pub origin: Option<&'a HeaderValue>,
    /// Any `Sec-Fetch-Site` header.
    pub fetch_site: bool,
    /// The first `Access-Control-Request-Method` value, if any.
    pub request_method: Option<&'a HeaderValue>,
}

/// Scans the request head once. `query_param` is `None` when query keys are off.
pub fn scan<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    header: &HeaderName,
    query_param: Option<&str>,
) -> HeadScan<'a> {
    let mut found: Option<(Cow<'a, [u8]>, KeySource)> = None;
    let mut count = 0usize;
    let mut take = |token: Cow<'a, [u8]>, source| {
        count += 1;
        if found.is_none() {
            found = Some((token, source));
        }
    };
    let (mut origin, mut fetch_site, mut request_method) = (None, false, None);
    for (name, value) in headers {
        if name == header {
            take(Cow::Borrowed(value.as_bytes()), KeySource::Header);
        } else if name == AUTHORIZATION {
            if let Some(token) = bearer_token(value.as_bytes()) {
                take(Cow::Borrowed(token), KeySource::Bearer);
            }
        } else if name == ORIGIN {
            origin = origin.or(Some(value));
        } else if name == super::SEC_FETCH_SITE {
            fetch_site = true;
        } else if name == ACCESS_CONTROL_REQUEST_METHOD {
            request_method = request_method.or(Some(value));
        }
    }
    if let (Some(param), Some(query)) = (query_param, query) {
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if name == param {
                take(percent_decode(value), KeySource::Query);
            }
        }
    }
    let credential = match (count, found) {
        (0, _) | (_, None) => Credential::Missing,
        (1, Some((token, source))) => Credential::One { token, source },
        _ => Credential::Multiple,
    };
    HeadScan {
        credential,
        origin,
        fetch_site,
        request_method,
    }
}

/// Extracts the credential alone.
pub fn extract<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    header: &HeaderName,
    query_param: Option<&str>,
) -> Credential<'a> {
    scan(headers, query, header, query_param).credential
}

/// The token of an `Authorization: Bearer <token>` value (scheme
/// case-insensitive, RFC 9110 §11.1); `None` for other schemes, which are not
/// ours and are forwarded untouched.
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let rest = &value[6..];
    if rest.is_empty() {
        return Some(rest);
    }
    if rest[0] != b' ' {
        return None;
    }
    let start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
    Some(&rest[start..])
}

/// Decodes `%XX` escapes (and `+` as space, as forms do). Invalid escapes are
/// kept literally: the token check refuses the result anyway.
fn percent_decode(s: &str) -> Cow<'_, [u8]> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s.as_bytes());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn hdr() -> HeaderName {
        HeaderName::from_static("x-api-key")
    }

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

    fn one(token: &str, source: KeySource) -> Credential<'static> {
        Credential::One {
            token: Cow::Owned(token.as_bytes().to_vec()),
            source,
        }
    }

    #[test]
    fn reads_the_configured_header() {
        assert_eq!(
            extract(&map(&[("x-api-key", "k1")]), None, &hdr(), None),
            one("k1", KeySource::Header)
        );
        assert_eq!(
            extract(&map(&[("X-Api-Key", "k1")]), None, &hdr(), None),
            one("k1", KeySource::Header)
        );
        let custom = HeaderName::from_static("x-key");
        assert_eq!(
            extract(&map(&[("x-api-key", "k1")]), None, &custom, None),
            Credential::Missing
        );
    }

    #[test]
    fn reads_bearer_case_insensitively_and_ignores_other_schemes() {
        assert_eq!(
            extract(&map(&[("authorization", "Bearer k1")]), None, &hdr(), None),
            one("k1", KeySource::Bearer)
        );
        assert_eq!(
            extract(&map(&[("authorization", "bearer  k1")]), None, &hdr(), None),
            one("k1", KeySource::Bearer)
        );
        assert_eq!(
            extract(
                &map(&[("authorization", "Basic dXNlcg==")]),
                None,
                &hdr(),
                None
            ),
            Credential::Missing
        );
        assert_eq!(
            extract(&map(&[("authorization", "Bearerk1")]), None, &hdr(), None),
            Credential::Missing
        );
        assert_eq!(
            extract(&map(&[("authorization", "Bearer")]), None, &hdr(), None),
            one("", KeySource::Bearer)
        );
    }

    #[test]
    fn a_key_given_twice_is_multiple_even_if_equal() {
        assert_eq!(
            extract(
                &map(&[("x-api-key", "k1"), ("x-api-key", "k1")]),
                None,
                &hdr(),
                None
            ),
            Credential::Multiple
        );
        assert_eq!(
            extract(
                &map(&[("x-api-key", "k1"), ("authorization", "Bearer k2")]),
                None,
                &hdr(),
                None
            ),
            Credential::Multiple
        );
        assert_eq!(
            extract(
                &map(&[("x-api-key", "k1")]),
                Some("api_key=k1"),
                &hdr(),
                Some("api_key")
            ),
            Credential::Multiple
        );
    }

    #[test]
    fn query_keys_are_off_unless_configured() {
        assert_eq!(
            extract(&map(&[]), Some("api_key=k1"), &hdr(), None),
            Credential::Missing
        );
        assert_eq!(
            extract(
                &map(&[]),
                Some("a=1&api_key=k%5F1"),
                &hdr(),
                Some("api_key")
            ),
            one("k_1", KeySource::Query)
        );
        assert_eq!(
            extract(
                &map(&[]),
                Some("api_key=a&api_key=b"),
                &hdr(),
                Some("api_key")
            ),
            Credential::Multiple
        );
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(&*percent_decode("a%2"), b"a%2");
        assert_eq!(&*percent_decode("a%zz"), b"a%zz");
        assert_eq!(&*percent_decode("%41%42"), b"AB");
        assert_eq!(&*percent_decode("%"), b"%");
    }
}

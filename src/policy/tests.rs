//! Row-by-row tests of SPEC's decision table.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use proptest::prelude::*;

use super::*;
use crate::keys::{KeyId, KeyRecord, KeySet, StoreSnapshot};

const NOW: u64 = 1_800_000_000;
const FULL: &str = "full-access-imported-secret";
const EXPIRED: &str = "expired-secret";
const PINNED: &str = "pinned-secret";
const REVOKED: &str = "revoked-secret";

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn record(id: &str, secret: &str, access: Access) -> KeyRecord {
    KeyRecord {
        id: KeyId::parse(id).unwrap_or_else(|e| panic!("{e}")),
        name: id.to_string(),
        access,
        hash: KeyHash::of(secret.as_bytes()),
        created: UNIX_EPOCH,
        expires: None,
        origins: vec![],
        previous: None,
        rate_limit: None,
    }
}

fn ro_token() -> String {
    // A real, checksummed token, so row 2's format checks pass for it.
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN
        .get_or_init(|| token::generate("kg").unwrap_or_else(|e| panic!("{e}")))
        .clone()
}

fn index() -> KeyIndex {
    let mut expired = record("expired", EXPIRED, Access::ReadOnly);
    expired.expires = Some(now() - Duration::from_secs(1));
    let mut pinned = record("pinned", PINNED, Access::ReadOnly);
    pinned.origins = vec!["https://shop.example.com".into()];
    let keys = KeySet::from_records(vec![
        record("ro", &ro_token(), Access::ReadOnly),
        record("full", FULL, Access::FullAccess),
        expired,
        pinned,
        record("revoked", REVOKED, Access::FullAccess),
    ])
    .unwrap_or_else(|(_, e)| panic!("{e}"));
    KeyIndex::build(&StoreSnapshot {
        keys,
        revoked: [KeyHash::of(REVOKED.as_bytes())].into_iter().collect(),
        revoked_later: Default::default(),
    })
}

struct Case {
    method: Method,
    headers: HeaderMap,
    query: Option<String>,
    mode: BrowserFullAccess,
    cors: Option<CorsConfig>,
    query_param: Option<&'static str>,
}

fn req(method: Method, headers: &[(&str, &str)]) -> Case {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
            HeaderValue::from_bytes(v.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
        );
    }
    Case {
        method,
        headers: map,
        query: None,
        mode: BrowserFullAccess::Deny,
        cors: None,
        query_param: None,
    }
}

fn get(headers: &[(&str, &str)]) -> Case {
    req(Method::GET, headers)
}

fn run(case: &Case, idx: &KeyIndex) -> String {
    let settings = PolicySettings {
        header: HeaderName::from_static("x-api-key"),
        query_param: case.query_param.map(String::from),
        prefix: "kg".into(),
        browser_full_access: case.mode,
        cors: case.cors.clone(),
    };
    let head = RequestHead {
        method: &case.method,
        headers: &case.headers,
        query: case.query.as_deref(),
    };
    match decide(head, idx, &settings, now()) {
        Decision::Preflight(Preflight::Forward) => "preflight_forward".into(),
        Decision::Preflight(Preflight::Answer(_)) => "preflight_answer".into(),
        Decision::Preflight(Preflight::Deny(r)) => format!("preflight_{}", r.code()),
        Decision::Deny { rejection, key } => match key {
            Some(k) => format!("{}:{}", rejection.code(), k.id()),
            None => rejection.code().to_string(),
        },
        Decision::Allow {
            key,
            reported: false,
            ..
        } => format!("allowed:{}", key.id()),
        Decision::Allow {
            key,
            reported: true,
            ..
        } => format!("reported:{}", key.id()),
    }
}

fn decide_str(case: Case) -> String {
    run(&case, &index())
}

fn cors() -> Option<CorsConfig> {
    Some(CorsConfig {
        allowed_origins: vec!["https://shop.example.com".into()],
        max_age: Duration::from_secs(600),
    })
}

// Row 1
#[test]
fn row1_no_key_is_missing_key() {
    assert_eq!(decide_str(get(&[])), "missing_key");
    assert_eq!(
        decide_str(get(&[("authorization", "Basic dXNlcjpwdw==")])),
        "missing_key"
    );
}

// Row 2
#[test]
fn row2_malformed_bad_checksum_unknown_and_revoked_are_invalid_key() {
    let t = ro_token();
    let mut typo = t.clone().into_bytes();
    typo[5] = if typo[5] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap_or_default();
    for key in [
        "",
        "a b",
        &t[..t.len() - 1],
        typo.as_str(),
        "unknown-secret",
        REVOKED,
    ] {
        assert_eq!(
            decide_str(get(&[("x-api-key", key)])),
            "invalid_key",
            "{key:?}"
        );
    }
}

#[test]
fn row2_keys_are_case_sensitive() {
    assert_eq!(
        decide_str(get(&[("x-api-key", &FULL.to_uppercase())])),
        "invalid_key"
    );
}

#[test]
fn row2_a_key_given_twice_is_refused_not_picked() {
    let t = ro_token();
    assert_eq!(
        decide_str(get(&[("x-api-key", &t), ("x-api-key", &t)])),
        "invalid_key"
    );
    assert_eq!(
        decide_str(get(&[
            ("x-api-key", &t),
            ("authorization", &format!("Bearer {t}"))
        ])),
        "invalid_key"
    );
}

#[test]
fn row2_revocation_beats_the_store() {
    // "revoked" is in the store as full-access and on the revocation list.
    assert_eq!(
        decide_str(get(&[("authorization", &format!("Bearer {REVOKED}"))])),
        "invalid_key"
    );
}

// Row 3
#[test]
fn row3_expired_key() {
    assert_eq!(
        decide_str(get(&[("x-api-key", EXPIRED)])),
        "expired_key:expired"
    );
}

#[test]
fn row3_expiry_is_checked_before_browser_rules() {
    assert_eq!(
        decide_str(get(&[
            ("x-api-key", EXPIRED),
            ("origin", "https://evil.example")
        ])),
        "expired_key:expired"
    );
}

// Row 4
#[test]
fn row4_full_access_from_any_browser_signal_is_denied() {
    for signal in [
        ("origin", "https://shop.example.com"),
        ("origin", "null"),
        ("origin", ""),
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-origin"),
    ] {
        assert_eq!(
            decide_str(get(&[("x-api-key", FULL), signal])),
            "browser_full_access:full",
            "{signal:?}"
        );
    }
}

#[test]
fn row4_sec_fetch_mode_alone_is_not_a_browser() {
    assert_eq!(
        decide_str(get(&[("x-api-key", FULL), ("sec-fetch-mode", "cors")])),
        "allowed:full"
    );
}

#[test]
fn row4_report_mode_forwards_and_marks() {
    let mut case = req(
        Method::POST,
        &[("x-api-key", FULL), ("origin", "https://a.example")],
    );
    case.mode = BrowserFullAccess::Report;
    assert_eq!(decide_str(case), "reported:full");
}

// Row 5
#[test]
fn row5_pinned_origins() {
    assert_eq!(
        decide_str(get(&[
            ("x-api-key", PINNED),
            ("origin", "https://shop.example.com")
        ])),
        "allowed:pinned"
    );
    assert_eq!(
        decide_str(get(&[
            ("x-api-key", PINNED),
            ("origin", "https://SHOP.example.com")
        ])),
        "allowed:pinned"
    );
    assert_eq!(
        decide_str(get(&[
            ("x-api-key", PINNED),
            ("origin", "https://evil.example")
        ])),
        "origin_not_allowed:pinned"
    );
    assert_eq!(
        decide_str(get(&[("x-api-key", PINNED), ("origin", "null")])),
        "origin_not_allowed:pinned"
    );
    // A browser without Origin (Sec-Fetch-Site only) cannot prove its origin.
    assert_eq!(
        decide_str(get(&[
            ("x-api-key", PINNED),
            ("sec-fetch-site", "same-origin")
        ])),
        "origin_not_allowed:pinned"
    );
    // Not a browser: origins do not apply.
    assert_eq!(decide_str(get(&[("x-api-key", PINNED)])), "allowed:pinned");
}

#[test]
fn row5_origins_compare_as_the_url_standard_serialises_them() {
    // The store holds origins normalised; a key pinned to
    // https://shop.example.com:443 holds https://shop.example.com, which is
    // what browsers send.
    assert_eq!(
        normalize_origin("https://Shop.Example.com:443").as_deref(),
        Ok("https://shop.example.com")
    );
    for sent in [
        "https://shop.example.com:443",
        "HTTPS://shop.example.com",
        "https://shop.example.com:443",
    ] {
        assert_eq!(
            decide_str(get(&[("x-api-key", PINNED), ("origin", sent)])),
            "allowed:pinned",
            "{sent}"
        );
    }
    for sent in ["https://shop.example.com:8443", "http://shop.example.com"] {
        assert_eq!(
            decide_str(get(&[("x-api-key", PINNED), ("origin", sent)])),
            "origin_not_allowed:pinned",
            "{sent}"
        );
    }
}

// Row 6
#[test]
fn row6_read_only_keys_only_use_safe_methods() {
    let t = ro_token();
    for m in [Method::GET, Method::HEAD, Method::OPTIONS] {
        assert_eq!(
            decide_str(req(m.clone(), &[("x-api-key", &t)])),
            "allowed:ro",
            "{m}"
        );
    }
    for m in ["POST", "PUT", "PATCH", "DELETE", "PROPFIND"] {
        let m = Method::from_bytes(m.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            decide_str(req(m.clone(), &[("x-api-key", &t)])),
            "read_only_method:ro",
            "{m}"
        );
    }
}

#[test]
fn row6_applies_to_browsers_too() {
    let t = ro_token();
    assert_eq!(
        decide_str(req(
            Method::DELETE,
            &[("x-api-key", &t), ("origin", "https://a")]
        )),
        "read_only_method:ro"
    );
}

// Row 7
#[test]
fn row7_full_access_from_a_server_may_do_anything() {
    for m in [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ] {
        assert_eq!(
            decide_str(req(m, &[("authorization", &format!("Bearer {FULL}"))])),
            "allowed:full"
        );
    }
}

#[test]
fn query_keys_only_when_enabled() {
    let mut case = get(&[]);
    case.query = Some("x=1&api_key=full-access-imported-secret".into());
    assert_eq!(run(&case, &index()), "missing_key");
    case.query_param = Some("api_key");
    assert_eq!(run(&case, &index()), "allowed:full");
}

// Row 0
#[test]
fn row0_preflights_need_no_key() {
    let pre = [
        ("origin", "https://shop.example.com"),
        ("access-control-request-method", "GET"),
    ];
    assert_eq!(decide_str(req(Method::OPTIONS, &pre)), "preflight_forward");
    let mut answered = req(Method::OPTIONS, &pre);
    answered.cors = cors();
    assert_eq!(decide_str(answered), "preflight_answer");
}

#[test]
fn row0_preflight_for_unsafe_method_or_unlisted_origin_is_refused() {
    let mut post = req(
        Method::OPTIONS,
        &[
            ("origin", "https://shop.example.com"),
            ("access-control-request-method", "POST"),
        ],
    );
    post.cors = cors();
    assert_eq!(decide_str(post), "preflight_read_only_method");
    let mut other = req(
        Method::OPTIONS,
        &[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "GET"),
        ],
    );
    other.cors = cors();
    assert_eq!(decide_str(other), "preflight_origin_not_allowed");
}

#[test]
fn options_without_preflight_headers_is_an_ordinary_request() {
    assert_eq!(
        decide_str(req(
            Method::OPTIONS,
            &[("origin", "https://shop.example.com")]
        )),
        "missing_key"
    );
}

#[test]
fn statuses_match_the_table() {
    use http::StatusCode;
    assert_eq!(Rejection::MissingKey.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        Rejection::InvalidKey(InvalidReason::Unknown).status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(Rejection::ExpiredKey.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(Rejection::BrowserFullAccess.status(), StatusCode::FORBIDDEN);
    assert_eq!(Rejection::OriginNotAllowed.status(), StatusCode::FORBIDDEN);
    assert_eq!(Rejection::ReadOnlyMethod.status(), StatusCode::FORBIDDEN);
}

#[test]
fn unknown_and_revoked_keys_get_the_same_message() {
    assert_eq!(
        Rejection::InvalidKey(InvalidReason::Unknown).message(),
        Rejection::InvalidKey(InvalidReason::Revoked).message()
    );
}

proptest! {
    #[test]
    fn arbitrary_heads_never_panic_and_never_allow_without_a_known_key(
        method in proptest::sample::select(vec!["GET", "POST", "OPTIONS", "DELETE", "HEAD"]),
        headers in proptest::collection::vec(
            (proptest::sample::select(vec!["x-api-key", "authorization", "origin", "sec-fetch-site", "access-control-request-method"]),
             proptest::collection::vec(32u8..=126, 0..40)),
            0..5),
        query in proptest::option::of("[ -~]{0,40}"),
    ) {
        let mut map = HeaderMap::new();
        for (k, v) in &headers {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                map.append(HeaderName::from_static(k), v);
            }
        }
        let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
        let case = Case { method, headers: map, query, mode: BrowserFullAccess::Deny, cors: cors(), query_param: Some("api_key") };
        let out = run(&case, &index());
        prop_assert!(!out.starts_with("allowed") && !out.starts_with("reported"), "{}", out);
    }
    /// Every stored key, changed in exactly one way (a byte replaced,
    /// inserted or removed, or the key cut short), wherever it is sent:
    /// never allowed. Random bytes alone would almost never come near a key.
    #[test]
    fn a_stored_key_changed_in_one_place_is_never_allowed(
        which in 0usize..4,
        edit in 0u8..4,
        at in any::<prop::sample::Index>(),
        byte in 33u8..=126,
        place in 0u8..3,
    ) {
        let stored = [ro_token(), FULL.to_string(), PINNED.to_string(), EXPIRED.to_string()];
        let mut key = stored[which].clone().into_bytes();
        let i = at.index(key.len());
        match edit {
            0 if key[i] != byte => key[i] = byte,
            0 => key[i] = if byte == b'~' { b'!' } else { byte + 1 },
            1 => key.insert(i, byte),
            2 => { key.remove(i); }
            _ => key.truncate(i),
        }
        let key = String::from_utf8(key).unwrap_or_default();
        prop_assume!(!stored.contains(&key));
        let bearer = format!("Bearer {key}");
        let (headers, query) = match place {
            0 => (vec![("x-api-key", key.as_str())], None),
            1 => (vec![("authorization", bearer.as_str())], None),
            _ => (vec![], Some(format!("api_key={key}"))),
        };
        let mut case = get(&headers);
        case.query = query;
        case.query_param = Some("api_key");
        let out = run(&case, &index());
        prop_assert!(!out.starts_with("allowed") && !out.starts_with("reported"), "{key:?} -> {out}");
    }
}

#[test]
fn every_rejection_is_counted_under_its_own_code() {
    use crate::keys::token::TokenError;
    for r in [
        Rejection::MissingKey,
        Rejection::InvalidKey(InvalidReason::Token(TokenError::Malformed)),
        Rejection::InvalidKey(InvalidReason::Unknown),
        Rejection::InvalidKey(InvalidReason::Revoked),
        Rejection::InvalidKey(InvalidReason::Multiple),
        Rejection::ExpiredKey,
        Rejection::BrowserFullAccess,
        Rejection::OriginNotAllowed,
        Rejection::ReadOnlyMethod,
    ] {
        assert_eq!(r.label().as_str(), r.code(), "{r:?}");
    }
}

#[test]
fn a_previous_secret_is_allowed_until_its_grace_ends_then_invalid() {
    let until = now() + Duration::from_secs(60);
    let mut rotated = record("rot", "new-secret", Access::FullAccess);
    rotated.previous = Some(crate::keys::record::Previous {
        hash: KeyHash::of(b"old-secret"),
        until,
    });
    let idx = KeyIndex::build(&StoreSnapshot {
        keys: KeySet::from_records(vec![rotated]).unwrap_or_else(|(_, e)| panic!("{e}")),
        ..StoreSnapshot::default()
    });
    let settings = PolicySettings {
        header: HeaderName::from_static("x-api-key"),
        query_param: None,
        prefix: "kg".into(),
        browser_full_access: BrowserFullAccess::Deny,
        cors: None,
    };
    let mut headers = HeaderMap::new();
    headers.insert("x-api-key", HeaderValue::from_static("old-secret"));
    let head = RequestHead {
        method: &Method::POST,
        headers: &headers,
        query: None,
    };
    let at = |t| match decide(head, &idx, &settings, t) {
        Decision::Allow { key, .. } => format!("allowed:{}:{}", key.id(), key.previous),
        Decision::Deny { rejection, .. } => rejection.detail().to_string(),
        Decision::Preflight(_) => "preflight".into(),
    };
    assert_eq!(at(until - Duration::from_secs(1)), "allowed:rot:true");
    assert_eq!(at(until), "revoked");
    assert_eq!(at(until + Duration::from_secs(3600)), "revoked");
}

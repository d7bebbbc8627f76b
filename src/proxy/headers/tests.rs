//! Header rewriting, case by case.

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

fn caller<'a>(id: &'a HeaderValue, key_header: &'a HeaderName, source: KeySource) -> Caller<'a> {
    Caller {
        peer: &PEER,
        tls: false,
        identity: Some((id, Access::ReadOnly)),
        remove_key: Some(source),
        key_header,
        forward_key: false,
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
    rewrite_request(&mut h, &caller(&id, &name, KeySource::Header), false).insert_into(&mut h);
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
    rewrite_request(&mut h, &caller(&id, &name, KeySource::Bearer), false).insert_into(&mut h);
    assert!(!h.contains_key("authorization"));
}

#[test]
fn forward_key_keeps_it() {
    let id = HeaderValue::from_static("key_a");
    let mut h = map(&[("x-api-key", "kg_secret")]);
    let name = HeaderName::from_static("x-api-key");
    let mut c = caller(&id, &name, KeySource::Header);
    c.remove_key = None;
    c.forward_key = true;
    rewrite_request(&mut h, &c, false).insert_into(&mut h);
    assert!(h.contains_key("x-api-key"));
}

#[test]
fn a_request_without_identity_gets_no_identity_headers_and_no_unchecked_key() {
    let name = HeaderName::from_static("x-api-key");
    let mut h = map(&[
        ("x-api-key", "kg_unchecked"),
        ("authorization", "Bearer kg_unchecked"),
        ("x-keygate-key-id", "spoofed"),
        ("x-keygate-access", "full-access"),
    ]);
    let c = Caller {
        peer: &PEER,
        tls: true,
        identity: None,
        remove_key: None,
        key_header: &name,
        forward_key: false,
    };
    rewrite_request(&mut h, &c, false).insert_into(&mut h);
    for gone in [
        "x-api-key",
        "authorization",
        "x-keygate-key-id",
        "x-keygate-access",
    ] {
        assert!(!h.contains_key(gone), "{gone} forwarded: {h:?}");
    }
    assert_eq!(
        h.get("x-forwarded-proto").map(|v| v.as_bytes()),
        Some(&b"https"[..])
    );
}

#[test]
fn several_forwarded_for_lines_fold_into_one() {
    let id = HeaderValue::from_static("key_a");
    let name = HeaderName::from_static("x-api-key");
    let mut h = map(&[
        ("x-forwarded-for", "10.0.0.1"),
        ("x-forwarded-for", "10.0.0.2"),
    ]);
    rewrite_request(&mut h, &caller(&id, &name, KeySource::Header), false).insert_into(&mut h);
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
    rewrite_request(&mut h, &caller(&id, &name, KeySource::Header), false).insert_into(&mut h);
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

#[test]
fn added_fields_stay_out_of_the_map_and_come_in_order() {
    let id = HeaderValue::from_static("key_a");
    let name = HeaderName::from_static("x-api-key");
    let mut h = map(&[
        ("x-api-key", "kg_secret"),
        ("x-keygate-key-id", "spoofed"),
        ("x-forwarded-for", "203.0.113.1"),
        ("x-forwarded-for", "203.0.113.2"),
        ("x-forwarded-proto", "https"),
        ("accept", "*/*"),
    ]);
    let added = rewrite_request(&mut h, &caller(&id, &name, KeySource::Header), false);
    // Our own engine writes the map and then these: a name left in the map
    // would go out twice.
    let names: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
    assert_eq!(names, ["accept"]);
    let fields: Vec<(&str, &[u8])> = added.fields().map(|(n, v)| (n, v.as_bytes())).collect();
    assert_eq!(
        fields,
        [
            (
                "x-forwarded-for",
                &b"203.0.113.1, 203.0.113.2, 192.0.2.7"[..]
            ),
            ("x-forwarded-proto", &b"http"[..]),
            ("x-keygate-key-id", &b"key_a"[..]),
            ("x-keygate-access", &b"read-only"[..]),
        ]
    );
}

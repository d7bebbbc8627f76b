use super::*;

#[test]
fn errors_carry_their_field_and_a_bearer_challenge() {
    let r = ApiError::invalid("name", "name is required").response();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "no").response();
    assert_eq!(
        r.headers()
            .get(header::WWW_AUTHENTICATE)
            .map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
}

#[test]
fn the_openapi_description_is_json_with_every_route() {
    let spec: serde_json::Value =
        serde_json::from_str(docs::OPENAPI).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec["openapi"], "3.1.0");
    for path in [
        "/admin/v1/keys",
        "/admin/v1/keys/{id}",
        "/admin/v1/keys/{id}/rotate",
        "/admin/v1/keys/{id}/snippets",
        "/admin/v1/audit",
        "/admin/v1/openapi.json",
    ] {
        assert!(spec["paths"][path].is_object(), "{path}");
    }
}

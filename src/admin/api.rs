//! The JSON API under `/admin/v1` (SPEC's table). Every write goes through
//! the store code the CLI uses (`Store::create_key`, `modify_keys`,
//! `delete`, `rotate_key`), so the lock, the atomic write and the
//! revocation list are the same, and is recorded in the audit trail.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value, json};

use super::auth::{Principal, authenticate};
use super::{Admin, AdminBody, ApiError, blocking, json};
use crate::keys::json::key_json;
use crate::keys::record::{format_time, latest_time, normalize_origin, parse_time, validate_name};
use crate::keys::tokens::Role;
use crate::keys::{Access, KeyId, KeyUpdate, RateLimit, UsageSample};
use crate::store::{AuditEvent, KeyTemplate};

/// Routes `/admin/v1/<rest>`; returns the route's metric label and the response.
pub async fn route(
    admin: &Arc<Admin>,
    req: &Request<Bytes>,
    rest: &[&str],
    peer: SocketAddr,
) -> (&'static str, Response<AdminBody>) {
    let route = match rest {
        ["keys"] => "keys",
        ["keys", _] => "key",
        ["keys", _, "rotate"] => "rotate",
        ["keys", _, "snippets"] => "snippets",
        ["audit"] => "audit",
        _ => return ("other", ApiError::not_found("no such API path").response()),
    };
    let principal = match authenticate(admin, req).await {
        Ok(p) => p,
        Err(e) => return (route, e.response()),
    };
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD);
    if writes && principal.role != Role::Admin {
        let e = ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this admin token is a viewer: it can read, not change",
        );
        return (route, e.response());
    }
    let ctx = Ctx {
        admin: admin.clone(),
        principal,
        peer,
    };
    let result = match (rest, req.method()) {
        (["keys"], &Method::GET) => ctx.list().await,
        (["keys"], &Method::POST) => ctx.create(req.body()).await,
        (["keys", id], &Method::GET) => ctx.show(id).await,
        (["keys", id], &Method::PATCH) => ctx.update(id, req.body()).await,
        (["keys", id], &Method::DELETE) => ctx.delete(id).await,
        (["keys", id, "rotate"], &Method::POST) => ctx.rotate(id, req.body()).await,
        (["keys", id, "snippets"], &Method::GET) => ctx.snippets(id).await,
        (["audit"], &Method::GET) => ctx.audit(req.uri().query()).await,
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "bad_request",
            format!("{} is not allowed on this path", req.method()),
        )),
    };
    (route, result.unwrap_or_else(|e| e.response()))
}

struct Ctx {
    admin: Arc<Admin>,
    principal: Principal,
    peer: SocketAddr,
}

type Answer = Result<Response<AdminBody>, ApiError>;

/// A request body as a JSON object (`{}` for an empty body when allowed).
fn object(body: &Bytes, empty_ok: bool) -> Result<Map<String, Value>, ApiError> {
    if body.is_empty() && empty_ok {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Err(e) => Err(ApiError::bad_request(format!(
            "the body is not valid JSON: {e}"
        ))),
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request("the body must be a JSON object")),
    }
}

/// Refuses fields this request does not take.
fn known(m: &Map<String, Value>, allowed: &[&'static str]) -> Result<(), ApiError> {
    match m.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => Err(ApiError::invalid(
            k,
            format!(
                "unknown field {k:?}; this request takes {}",
                allowed.join(", ")
            ),
        )),
    }
}

fn string<'m>(m: &'m Map<String, Value>, field: &'static str) -> Result<Option<&'m str>, ApiError> {
    match m.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid(
            field,
            format!("{field} must be a string"),
        )),
    }
}

fn name(m: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    string(m, "name")?
        .map(|n| {
            validate_name(n)
                .map(|()| n.to_string())
                .map_err(|e| ApiError::invalid("name", e))
        })
        .transpose()
}

fn access(m: &Map<String, Value>) -> Result<Option<Access>, ApiError> {
    string(m, "access")?
        .map(|a| {
            a.parse()
                .map_err(|e: String| ApiError::invalid("access", e))
        })
        .transpose()
}

/// `expires`: absent (no change), null (none), or a date / RFC 3339 time
/// in the future.
fn expires(
    m: &Map<String, Value>,
    now: SystemTime,
) -> Result<Option<Option<SystemTime>>, ApiError> {
    match m.get("expires") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) => {
            let t = parse_time(s).map_err(|e| ApiError::invalid("expires", e))?;
            if t <= now {
                return Err(ApiError::invalid("expires", "expires is in the past"));
            }
            if t > latest_time() {
                return Err(ApiError::invalid(
                    "expires",
                    "expires must be before the year 10000",
                ));
            }
            Ok(Some(Some(t)))
        }
        Some(_) => Err(ApiError::invalid(
            "expires",
            "expires must be a date (2027-01-31), an RFC 3339 time, or null",
        )),
    }
}

fn origins(m: &Map<String, Value>) -> Result<Option<Vec<String>>, ApiError> {
    match m.get("origins") {
        None => Ok(None),
        Some(Value::Array(list)) => list
            .iter()
            .map(|o| match o {
                Value::String(s) => {
                    normalize_origin(s).map_err(|e| ApiError::invalid("origins", e))
                }
                _ => Err(ApiError::invalid("origins", "origins must be strings")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(ApiError::invalid(
            "origins",
            "origins must be a list of origins",
        )),
    }
}

fn rate_limit(m: &Map<String, Value>) -> Result<Option<Option<RateLimit>>, ApiError> {
    match m.get("rate_limit") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) => s
            .parse()
            .map(|l| Some(Some(l)))
            .map_err(|e| ApiError::invalid("rate_limit", e)),
        Some(_) => Err(ApiError::invalid(
            "rate_limit",
            "rate_limit must be a string such as \"100/min\", or null",
        )),
    }
}

fn checked_id(id: &str) -> Result<String, ApiError> {
    KeyId::parse(id)
        .map(|i| i.to_string())
        .map_err(|_| ApiError::not_found(format!("no key with id {id:?}")))
}

impl Ctx {
    fn event(&self, action: &str, key_id: &str, changes: Map<String, Value>) -> AuditEvent {
        AuditEvent {
            time: format_time(SystemTime::now()),
            actor: self.principal.name.clone(),
            action: action.to_string(),
            key_id: Some(key_id.to_string()),
            client: Some(self.peer.ip().to_string()),
            changes,
        }
    }

    /// Records a change; a failure to record is logged (the change is done).
    async fn audit_event(&self, event: AuditEvent) {
        let log = self.admin.audit.clone();
        if let Err(e) = blocking(move || log.append(&event)).await {
            tracing::error!(error = %e.message, "admin: cannot append to the audit trail");
        }
    }

    /// Every key's recorded use: the store's (the fleet's, for PostgreSQL),
    /// and this gateway's live counts, the later time winning.
    async fn usage(&self) -> std::collections::HashMap<String, UsageSample> {
        let store = self.admin.store.clone();
        let mut usage = blocking(move || store.usage()).await.unwrap_or_default();
        if let Some(live) = self.admin.live_usage.clone() {
            // Off the runtime: the table's lock is held by an index build
            // for as long as it takes (seconds at a million keys).
            let samples = blocking(move || Ok(live.samples()))
                .await
                .unwrap_or_default();
            for (id, sample) in samples {
                let entry = usage.entry(id).or_default();
                entry.last_used = entry.last_used.max(sample.last_used);
                entry.requests = entry.requests.max(sample.requests);
            }
        }
        usage
    }

    async fn list(&self) -> Answer {
        let store = self.admin.store.clone();
        let keys = blocking(move || store.load()).await?.keys;
        let usage = self.usage().await;
        let list: Vec<Value> = keys
            .records()
            .iter()
            .map(|r| key_json(r, usage.get(r.id.as_str())))
            .collect();
        Ok(json(StatusCode::OK, &json!({ "keys": list })))
    }

    async fn find(&self, id: &str) -> Result<crate::keys::KeyRecord, ApiError> {
        let id = checked_id(id)?;
        let store = self.admin.store.clone();
        let wanted = id.clone();
        blocking(move || store.find(&wanted))
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no key with id {id:?}")))
    }

    async fn show(&self, id: &str) -> Answer {
        let record = self.find(id).await?;
        let usage = self.usage().await;
        Ok(json(
            StatusCode::OK,
            &key_json(&record, usage.get(record.id.as_str())),
        ))
    }

    async fn create(&self, body: &Bytes) -> Answer {
        let m = object(body, false)?;
        known(&m, &["name", "access", "expires", "origins", "rate_limit"])?;
        let now = SystemTime::now();
        let template = KeyTemplate {
            name: name(&m)?.ok_or_else(|| ApiError::invalid("name", "name is required"))?,
            access: access(&m)?.ok_or_else(|| {
                ApiError::invalid("access", "access is required: read-only or full-access")
            })?,
            expires: expires(&m, now)?.flatten(),
            origins: origins(&m)?.unwrap_or_default(),
            rate_limit: rate_limit(&m)?.flatten(),
        };
        let store = self.admin.store.clone();
        let prefix = self.admin.key_prefix.clone();
        let (record, secret) = blocking(move || store.create_key(&prefix, template, now)).await?;
        let mut changes = Map::new();
        changes.insert("name".into(), json!(record.name));
        changes.insert("access".into(), json!(record.access.as_str()));
        self.audit_event(self.event("key.create", record.id.as_str(), changes))
            .await;
        let mut v = key_json(&record, None);
        v["key"] = json!(secret);
        Ok(json(StatusCode::CREATED, &v))
    }

    async fn update(&self, id: &str, body: &Bytes) -> Answer {
        let id = checked_id(id)?;
        let m = object(body, false)?;
        known(
            &m,
            &[
                "name",
                "access",
                "expires",
                "origins",
                "rate_limit",
                "force",
            ],
        )?;
        if !m.keys().any(|k| k != "force") {
            return Err(ApiError::bad_request(
                "nothing to change: send any of name, access, expires, origins, rate_limit",
            ));
        }
        let force = match m.get("force") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(ApiError::invalid("force", "force must be true or false")),
        };
        let change = KeyUpdate {
            name: name(&m)?,
            access: access(&m)?,
            rate_limit: rate_limit(&m)?,
            expires: expires(&m, SystemTime::now())?,
            origins: origins(&m)?,
        };
        let mut changes = Map::new();
        for field in [
            "name",
            "access",
            "expires",
            "origins",
            "rate_limit",
            "force",
        ] {
            if let Some(v) = m.get(field) {
                changes.insert(field.into(), v.clone());
            }
        }
        let store = self.admin.store.clone();
        let target = id.clone();
        let (before, record) = blocking(move || {
            store.modify_keys(&[&target], |keys, _| {
                let before = keys.get(&target).map(|r| r.access);
                Ok((before, keys.update(&target, change, force)?.clone()))
            })
        })
        .await?;
        if let Some(b) = before
            && b != record.access
        {
            changes.insert("access_before".into(), json!(b.as_str()));
        }
        self.audit_event(self.event("key.update", &id, changes))
            .await;
        let usage = self.usage().await;
        Ok(json(
            StatusCode::OK,
            &key_json(&record, usage.get(id.as_str())),
        ))
    }

    async fn delete(&self, id: &str) -> Answer {
        let id = checked_id(id)?;
        let store = self.admin.store.clone();
        let target = id.clone();
        let removed = blocking(move || store.delete(&target)).await?;
        let mut changes = Map::new();
        changes.insert("name".into(), json!(removed.name));
        self.audit_event(self.event("key.delete", &id, changes))
            .await;
        let mut r = Response::new(super::AdminBody::new(Bytes::new()));
        *r.status_mut() = StatusCode::NO_CONTENT;
        Ok(r)
    }

    async fn rotate(&self, id: &str, body: &Bytes) -> Answer {
        let id = checked_id(id)?;
        let m = object(body, true)?;
        known(&m, &["grace"])?;
        let grace = match string(&m, "grace")? {
            None => Duration::from_secs(24 * 3600),
            Some(g) => {
                crate::config::parse_duration(g).map_err(|e| ApiError::invalid("grace", e))?
            }
        };
        let store = self.admin.store.clone();
        let prefix = self.admin.key_prefix.clone();
        let target = id.clone();
        let (record, secret) =
            blocking(move || store.rotate_key(&prefix, &target, grace, SystemTime::now())).await?;
        let mut changes = Map::new();
        changes.insert(
            "rotating_until".into(),
            json!(record.previous.map(|p| format_time(p.until))),
        );
        self.audit_event(self.event("key.rotate", &id, changes))
            .await;
        let mut v = key_json(&record, None);
        v["key"] = json!(secret);
        Ok(json(StatusCode::OK, &v))
    }

    async fn snippets(&self, id: &str) -> Answer {
        let record = self.find(id).await?;
        let list = crate::keys::snippet::snippets(
            &record,
            &self.admin.config.public_url,
            &self.admin.key_header,
        );
        Ok(json(StatusCode::OK, &json!({ "snippets": list })))
    }

    async fn audit(&self, query: Option<&str>) -> Answer {
        let mut limit = 100usize;
        for (k, v) in query
            .unwrap_or_default()
            .split('&')
            .filter_map(|p| p.split_once('='))
        {
            if k == "limit" {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| ApiError::invalid("limit", "limit must be 1 to 1000"))?;
            }
        }
        let log = self.admin.audit.clone();
        let events = blocking(move || log.newest(limit)).await?;
        Ok(json(StatusCode::OK, &json!({ "events": events })))
    }
}

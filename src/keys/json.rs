//! A key as JSON, the same for `keys list|show --json` and the admin API:
//! never the secret, never a hash. Pure.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use super::record::format_time;
use super::{KeyRecord, UsageSample};

/// The key object: `id`, `name`, `access`, `created`, `expires`,
/// `origins`, `rate_limit`, `rotating_until`, `last_used` (its recorded use,
/// when known).
pub fn key_json(r: &KeyRecord, usage: Option<&UsageSample>) -> Value {
    let last_used = usage
        .and_then(|u| u.last_used)
        .map(|t| format_time(UNIX_EPOCH + Duration::from_secs(t)));
    json!({
        "id": r.id.as_str(),
        "name": r.name,
        "access": r.access.as_str(),
        "created": format_time(r.created),
        "expires": r.expires.map(format_time),
        "origins": r.origins,
        "rate_limit": r.rate_limit.map(|l| l.to_string()),
        "rotating_until": r.previous.map(|p| format_time(p.until)),
        "last_used": last_used,
    })
}

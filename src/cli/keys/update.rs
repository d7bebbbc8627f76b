//! `keygate keys update`: rename, change access (an upgrade needs --force)
//! or the key's own rate limit.

use std::io::Write;

use super::Target;
use crate::cli::CliError;
use crate::keys::KeyUpdate;
use crate::keys::record::validate_name;

pub(super) fn update(
    t: &Target,
    out: &mut impl Write,
    id: &str,
    change: KeyUpdate,
    force: bool,
    json: bool,
) -> Result<(), CliError> {
    if change.name.is_none()
        && change.access.is_none()
        && change.rate_limit.is_none()
        && change.expires.is_none()
        && change.origins.is_none()
    {
        return Err(CliError::usage(
            "keys update: nothing to change: pass --name, --access and/or --rate-limit",
        ));
    }
    if let Some(n) = &change.name {
        validate_name(n).map_err(CliError::user)?;
    }
    let mut changes = serde_json::Map::new();
    if let Some(n) = &change.name {
        changes.insert("name".into(), serde_json::json!(n));
    }
    if let Some(a) = change.access {
        changes.insert("access".into(), serde_json::json!(a.as_str()));
    }
    if let Some(l) = change.rate_limit {
        changes.insert(
            "rate_limit".into(),
            serde_json::json!(l.map(|l| l.to_string())),
        );
    }
    let record = t
        .store
        .modify_keys(&[id], |keys, _| Ok(keys.update(id, change, force)?.clone()))?;
    crate::cli::tokens::audit(
        &t.store.audit(),
        "key.update",
        Some(id),
        serde_json::Value::Object(changes),
    );
    if json {
        writeln!(out, "{}", super::key_json(&record, None))?;
        return Ok(());
    }
    let limit = record.rate_limit.map_or_else(
        || "the default rate limit".to_string(),
        |l| format!("rate limit {l}"),
    );
    writeln!(
        out,
        "Updated key {}: {:?}, {}, {limit}.",
        record.id, record.name, record.access
    )?;
    Ok(())
}

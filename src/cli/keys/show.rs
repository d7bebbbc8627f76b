//! `keygate keys list` and `keygate keys show`: never a secret, only a
//! fingerprint of the hash.

use std::io::Write;

use super::{Target, find, key_json, load, usage};
use crate::cli::CliError;
use crate::keys::UsageSample;
use crate::keys::record::format_time;

pub(super) fn list(t: &Target, out: &mut impl Write, json: bool) -> Result<(), CliError> {
    let keys = load(t)?;
    let used = usage(t);
    if json {
        let all: Vec<_> = keys
            .records()
            .iter()
            .map(|r| key_json(r, used.get(r.id.as_str())))
            .collect();
        writeln!(out, "{}", serde_json::Value::Array(all))?;
        return Ok(());
    }
    if keys.is_empty() {
        writeln!(
            out,
            "No keys in {}. Create one: keygate keys create --name NAME --access read-only",
            t.store.label()
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<32}  {:<11}  {:<20}  {:<20}  {:<20}  NAME",
        "ID", "ACCESS", "CREATED", "EXPIRES", "LAST USED"
    )?;
    for r in keys.records() {
        let expires = r.expires.map_or_else(|| "-".to_string(), format_time);
        let last = last_used(used.get(r.id.as_str())).unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{:<32}  {:<11}  {:<20}  {:<20}  {:<20}  {}",
            r.id,
            r.access,
            format_time(r.created),
            expires,
            last,
            r.name
        )?;
    }
    Ok(())
}

pub(super) fn show(t: &Target, out: &mut impl Write, id: &str, json: bool) -> Result<(), CliError> {
    let r = find(t, id)?;
    let used = usage(t);
    let used = used.get(r.id.as_str());
    if json {
        writeln!(out, "{}", key_json(&r, used))?;
        return Ok(());
    }
    writeln!(out, "id:       {}", r.id)?;
    writeln!(out, "name:     {}", r.name)?;
    writeln!(out, "access:   {}", r.access)?;
    writeln!(out, "created:  {}", format_time(r.created))?;
    writeln!(
        out,
        "expires:  {}",
        r.expires.map_or_else(|| "never".to_string(), format_time)
    )?;
    writeln!(
        out,
        "origins:  {}",
        if r.origins.is_empty() {
            "any".to_string()
        } else {
            r.origins.join(", ")
        }
    )?;
    writeln!(
        out,
        "limit:    {}",
        r.rate_limit.map_or_else(
            || "the default for its access".to_string(),
            |l| l.to_string()
        )
    )?;
    writeln!(
        out,
        "used:     {}",
        match (last_used(used), used.map_or(0, |u| u.requests)) {
            (Some(t), n) => format!("last {t}, {n} allowed request(s) recorded"),
            (None, _) => "never (as far as the gateway has recorded)".to_string(),
        }
    )?;
    writeln!(
        out,
        "hash:     {} (BLAKE3, fingerprint)",
        r.hash.fingerprint()
    )?;
    if let Some(p) = r.previous {
        writeln!(
            out,
            "rotating: the previous secret ({}) works until {}",
            p.hash.fingerprint(),
            format_time(p.until)
        )?;
    }
    Ok(())
}

fn last_used(usage: Option<&UsageSample>) -> Option<String> {
    usage
        .and_then(|u| u.last_used)
        .map(|t| format_time(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t)))
}

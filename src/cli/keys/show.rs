//! `keygate keys list` and `keygate keys show`: never a secret, only a
//! fingerprint of the hash.

use std::io::Write;

use super::{Target, find, key_json, load};
use crate::cli::CliError;
use crate::keys::record::format_time;

pub(super) fn list(t: &Target, out: &mut impl Write, json: bool) -> Result<(), CliError> {
    let keys = load(t)?;
    if json {
        let all: Vec<_> = keys.records().iter().map(key_json).collect();
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
        "{:<32}  {:<11}  {:<20}  {:<20}  NAME",
        "ID", "ACCESS", "CREATED", "EXPIRES"
    )?;
    for r in keys.records() {
        let expires = r.expires.map_or_else(|| "-".to_string(), format_time);
        writeln!(
            out,
            "{:<32}  {:<11}  {:<20}  {:<20}  {}",
            r.id,
            r.access,
            format_time(r.created),
            expires,
            r.name
        )?;
    }
    Ok(())
}

pub(super) fn show(t: &Target, out: &mut impl Write, id: &str, json: bool) -> Result<(), CliError> {
    let r = find(t, id)?;
    if json {
        writeln!(out, "{}", key_json(&r))?;
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

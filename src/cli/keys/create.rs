//! `keygate keys create`: a new key, its secret printed once.

use std::io::Write;
use std::time::SystemTime;

use serde_json::json;

use super::{Target, key_json};
use crate::cli::CliError;
use crate::config::parse_duration;
use crate::keys::record::{latest_time, normalize_origin, parse_time, validate_name};
use crate::keys::{Access, KeyRecord, RateLimit};
use crate::store::Store;

/// What `keys create` takes.
#[derive(Debug, clap::Args)]
pub(super) struct NewKey {
    #[arg(long)]
    pub name: String,
    #[arg(long, value_parser = super::access_parser())]
    pub access: Access,
    /// Expiry: a date (2027-01-31) or an RFC 3339 time
    #[arg(long, conflicts_with = "expires_in")]
    pub expires: Option<String>,
    /// Expiry from now: 90d, 12h, ...
    #[arg(long)]
    pub expires_in: Option<String>,
    /// Browser origin allowed to use the key (repeatable)
    #[arg(long = "origin", value_name = "URL")]
    pub origins: Vec<String>,
    /// The key's own rate limit: N/s, N/min or N/h (else the config's default)
    #[arg(long, value_name = "N/UNIT", value_parser = super::parse_rate_limit)]
    pub rate_limit: Option<RateLimit>,
}

pub(super) fn create(
    t: &Target,
    out: &mut impl Write,
    new: NewKey,
    json: bool,
) -> Result<(), CliError> {
    let NewKey {
        name,
        access,
        expires,
        expires_in,
        origins,
        rate_limit,
    } = new;
    validate_name(&name).map_err(CliError::user)?;
    let now = SystemTime::now();
    let expires = match (expires, expires_in) {
        (Some(date), _) => {
            Some(parse_time(&date).map_err(|e| CliError::user(format!("--expires: {e}")))?)
        }
        (None, Some(d)) => {
            let d = parse_duration(&d).map_err(|e| CliError::user(format!("--expires-in: {e}")))?;
            Some(now.checked_add(d).unwrap_or_else(latest_time))
        }
        (None, None) => None,
    };
    if expires.is_some_and(|e| e <= now) {
        return Err(CliError::user("--expires is in the past"));
    }
    if expires.is_some_and(|e| e > latest_time()) {
        return Err(CliError::user("the expiry must be before the year 10000"));
    }
    let origins = origins
        .iter()
        .map(|o| normalize_origin(o).map_err(|e| CliError::user(format!("--origin: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let template = KeyTemplate {
        name,
        access,
        expires,
        origins,
        rate_limit,
    };
    let (record, secret) = create_key(&t.store, t.prefix(), template, now)?;
    crate::cli::tokens::audit(
        &t.store.audit(),
        "key.create",
        Some(record.id.as_str()),
        json!({"name": record.name, "access": record.access.as_str()}),
    );
    if json {
        let mut v = key_json(&record, None);
        v["key"] = json!(secret);
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "Created {} key {} ({:?}).",
            record.access, record.id, record.name
        )?;
        super::print_secret(out, &secret)?;
        if access == Access::FullAccess {
            writeln!(
                out,
                "It is a full-access key: use it from backend systems only, never in a browser or an app."
            )?;
        }
        writeln!(out, "Code to use it: keygate keys snippet {}", record.id)?;
    }
    Ok(())
}

pub(crate) use crate::store::KeyTemplate;

/// Generates a secret and stores a new key under a fresh id; returns the
/// record and the secret (which exists nowhere else from here on).
pub(crate) fn create_key(
    store: &Store,
    prefix: &str,
    template: KeyTemplate,
    now: SystemTime,
) -> Result<(KeyRecord, String), CliError> {
    Ok(store.create_key(prefix, template, now)?)
}

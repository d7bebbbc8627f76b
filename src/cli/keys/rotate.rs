//! `keygate keys rotate`: a new secret for a key, printed once; the current
//! secret keeps working until the grace period ends.

use std::io::Write;
use std::time::SystemTime;

use serde_json::json;

use super::{Target, key_json};
use crate::cli::CliError;
use crate::config::parse_duration;
use crate::keys::record::format_time;

pub(super) fn rotate(
    t: &Target,
    out: &mut impl Write,
    id: &str,
    grace: &str,
    json: bool,
) -> Result<(), CliError> {
    let grace = parse_duration(grace).map_err(|e| CliError::user(format!("--grace: {e}")))?;
    let (record, secret) = t
        .store
        .rotate_key(t.prefix(), id, grace, SystemTime::now())?;
    crate::cli::tokens::audit(
        &t.store.audit(),
        "key.rotate",
        Some(id),
        json!({"rotating_until": record.previous.map(|p| format_time(p.until))}),
    );
    if json {
        let mut v = key_json(&record, None);
        v["key"] = json!(secret);
        writeln!(out, "{v}")?;
        return Ok(());
    }
    writeln!(out, "Rotated key {} ({:?}).", record.id, record.name)?;
    super::print_secret(out, &secret)?;
    match record.previous {
        Some(p) => writeln!(
            out,
            "The previous secret works until {}, then is refused: replace it everywhere before then.",
            format_time(p.until)
        )?,
        None => writeln!(out, "The previous secret no longer works.")?,
    }
    Ok(())
}

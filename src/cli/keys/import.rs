//! `keygate keys import`: other gateways' secrets in, only hashes stored.

use std::io::Write;
use std::time::SystemTime;

use serde_json::json;

use super::Target;
use crate::cli::CliError;
use crate::keys::{KeyId, KeySetError};
use crate::store::StoreError;

pub(super) fn import(
    t: &Target,
    out: &mut impl Write,
    file: &std::path::Path,
    json: bool,
) -> Result<(), CliError> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        crate::store::read_text(file)?
    };
    let now = SystemTime::now();
    let imported = crate::keys::import::parse_import(&text, t.prefix(), now, || {
        KeyId::generate().map_err(|e| e.to_string())
    })
    .map_err(|errors| {
        let shown: Vec<String> = errors
            .iter()
            .take(20)
            .map(|e| format!("line {}: {}", e.line, e.message))
            .collect();
        let more = errors.len().saturating_sub(shown.len());
        let tail = if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        };
        CliError::user(format!(
            "{}: nothing imported, {} bad line(s): {}{tail}",
            file.display(),
            errors.len(),
            shown.join("; ")
        ))
    })?;
    let (records, lines) = (imported.records, imported.lines);
    let count = records.len();
    let summary: Vec<_> = records
        .iter()
        .map(|r| json!({"id": r.id.as_str(), "name": r.name, "access": r.access.as_str()}))
        .collect();
    t.store.modify(|keys, revoked| {
        if let Some(pos) = records.iter().position(|r| revoked.contains(&r.hash)) {
            return Err(StoreError::Batch {
                line: lines[pos],
                error: KeySetError::DuplicateHash {
                    existing_id: "a deleted (revoked) key".into(),
                },
            });
        }
        keys.add_all(records)
            .map_err(|(i, error)| StoreError::Batch {
                line: lines.get(i).copied().unwrap_or(0),
                error,
            })
    })?;
    crate::cli::tokens::audit(
        &t.store.audit(),
        "key.import",
        None,
        json!({"count": count}),
    );
    if json {
        writeln!(out, "{}", serde_json::Value::Array(summary))?;
    } else {
        writeln!(out, "Imported {count} key(s) into {}.", t.store.label())?;
    }
    Ok(())
}

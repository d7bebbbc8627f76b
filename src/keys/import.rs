//! Parsing an import file of existing secrets (`secret<TAB>access<TAB>name`),
//! for teams migrating from another gateway. Only hashes leave this module.

use std::collections::HashMap;
use std::time::SystemTime;

use super::record::validate_name;
use super::{Access, KeyHash, KeyId, KeyRecord, token};

/// A refused line: its 1-based number and why (never the secret itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

/// Records parsed from an import file, with the line each came from.
#[derive(Debug, Default)]
pub struct Imported {
    pub records: Vec<KeyRecord>,
    pub lines: Vec<usize>,
}

/// Parses every line; returns all records, or every refused line. Blank lines
/// and lines starting with `#` are skipped. `new_id` supplies fresh ids.
pub fn parse_import(
    text: &str,
    prefix: &str,
    now: SystemTime,
    mut new_id: impl FnMut() -> Result<KeyId, String>,
) -> Result<Imported, Vec<LineError>> {
    let mut out = Imported::default();
    let mut errors = Vec::new();
    let mut seen: HashMap<KeyHash, usize> = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if raw.trim().is_empty() || raw.starts_with('#') {
            continue;
        }
        match parse_line(raw, prefix) {
            Err(message) => errors.push(LineError { line, message }),
            Ok((hash, access, name)) => {
                if let Some(first) = seen.insert(hash, line) {
                    errors.push(LineError {
                        line,
                        message: format!("same secret as line {first}"),
                    });
                    continue;
                }
                match new_id() {
                    Ok(id) => {
                        out.records.push(KeyRecord {
                            id,
                            name,
                            access,
                            hash,
                            created: now,
                            expires: None,
                            origins: vec![],
                            previous: None,
                            rate_limit: None,
                        });
                        out.lines.push(line);
                    }
                    Err(message) => errors.push(LineError { line, message }),
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn parse_line(raw: &str, prefix: &str) -> Result<(KeyHash, Access, String), String> {
    let mut fields = raw.splitn(3, '\t');
    let (Some(secret), Some(access), Some(name)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err("expected three tab-separated fields: secret, access, name".to_string());
    };
    if secret.starts_with(&format!("{}_", super::tokens::TOKEN_PREFIX)) {
        return Err("secret: this is an admin token (kga_...), not an API key".to_string());
    }
    token::check(secret.as_bytes(), prefix).map_err(|e| format!("secret: {e}"))?;
    // Never the field itself in a message: with the columns swapped, it
    // would be the secret.
    let access: Access = access.trim().parse().map_err(|_| {
        "the second field must be the access, read-only or full-access (are the columns in the order secret, access, name?)".to_string()
    })?;
    let name = name.trim();
    validate_name(name).map_err(|e| format!("the third field (name): {e}"))?;
    let token_like = name.len() >= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if token_like || (name.starts_with(prefix) && token::check(name.as_bytes(), prefix).is_ok()) {
        // Stored as a name, a secret would sit in the store in clear text.
        return Err(
            "the third field (name) is an API key: are the columns in the order secret, access, name?"
                .to_string(),
        );
    }
    Ok((KeyHash::of(secret.as_bytes()), access, name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> impl FnMut() -> Result<KeyId, String> {
        let mut n = 0;
        move || {
            n += 1;
            KeyId::parse(&format!("imp_{n}"))
        }
    }

    #[test]
    fn imports_valid_lines_as_hashes() {
        let text = "legacy-1\tread-only\tShop A\n\n# comment\nlegacy-2\tfull-access\tERP\r\n";
        let imported = parse_import(text, "kg", SystemTime::UNIX_EPOCH, ids())
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(imported.lines, vec![1, 4]);
        let recs = imported.records;
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].hash, KeyHash::of(b"legacy-1"));
        assert_eq!(recs[1].access, Access::FullAccess);
        assert_eq!(recs[1].name, "ERP");
    }

    #[test]
    fn reports_every_bad_line_without_the_secret() {
        let text = "ok-1\tread-only\tA\nbad line\nok-2\tadmin\tB\nok-1\tread-only\tC\nkg_short\tread-only\tD\n";
        let errs = parse_import(text, "kg", SystemTime::UNIX_EPOCH, ids())
            .err()
            .unwrap_or_default();
        let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5]);
        assert!(
            errs.iter()
                .all(|e| !e.message.contains("ok-") && !e.message.contains("kg_short"))
        );
    }

    #[test]
    fn an_admin_token_is_never_imported_as_an_api_key() {
        let admin = token::generate("kga").unwrap_or_else(|e| panic!("{e}"));
        let errs = parse_import(
            &format!("{admin}\tread-only\tA\n"),
            "kg",
            SystemTime::UNIX_EPOCH,
            ids(),
        )
        .err()
        .unwrap_or_default();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.contains("admin token"), "{:?}", errs[0]);
        assert!(token::validate_prefix("kga").is_err());
    }

    #[test]
    fn swapped_columns_never_echo_the_secret() {
        let secret = token::generate("kg").unwrap_or_else(|e| panic!("{e}"));
        for line in [
            format!("read-only\t{secret}\tShop"),
            format!("Shop\tread-only\t{secret}\n"),
            format!("read-only\tShop\t{secret}"),
            secret.clone(),
        ] {
            let errs = parse_import(&line, "kg", SystemTime::UNIX_EPOCH, ids())
                .err()
                .unwrap_or_default();
            assert!(!errs.is_empty(), "{line} was accepted");
            for e in errs {
                assert!(!e.message.contains(&secret[3..20]), "{}", e.message);
            }
        }
    }
}

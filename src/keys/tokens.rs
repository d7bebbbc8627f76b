//! Admin tokens: who may use the admin API and console. A token is
//! `kga_` + the API key token format (so scanners and the checksum work the
//! same), shown once at creation; only its BLAKE3 hash is stored, with a
//! name (unique, shown in the audit trail) and a role. The file format
//! (`admin.tokens`, TOML, fine to edit by hand) is parsed and rendered here.
//! Pure.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::KeyHash;
use super::record::{format_time, parse_time};
use super::storefile::{FileError, line_of};

/// The prefix of admin tokens: never the same as API keys', so that one can
/// never be taken for the other.
pub const TOKEN_PREFIX: &str = "kga";

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Reads only.
    Viewer,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "viewer" => Ok(Role::Viewer),
            other => Err(format!("role must be admin or viewer, found {other:?}")),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One admin token as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminToken {
    pub name: String,
    pub role: Role,
    pub hash: KeyHash,
    pub created: SystemTime,
}

/// A token name: 1 to 64 of letters, digits, `_ - . @` (it names a person
/// or a system in the audit trail).
pub fn validate_token_name(name: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "_-.@".contains(c);
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok) {
        return Err(format!(
            "token name {name:?} must be 1 to 64 letters, digits, _ - . or @"
        ));
    }
    Ok(())
}

const HEADER: &str = "\
# keygate admin tokens: one [[tokens]] table per token. Written by
# `keygate tokens ...`; fine to edit by hand (a running console reads this file
# on every request). Tokens are never stored: `hash` is the BLAKE3 digest.
# Fields: name (unique), role (\"admin\" | \"viewer\"), hash, created.
";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    tokens: Vec<toml::Spanned<RawToken>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: toml::Spanned<String>,
    role: toml::Spanned<String>,
    hash: toml::Spanned<String>,
    created: toml::Spanned<String>,
}

fn field<T, U>(
    src: &str,
    name: &str,
    v: &toml::Spanned<T>,
    check: impl FnOnce(&T) -> Result<U, String>,
) -> Result<U, FileError> {
    check(v.get_ref()).map_err(|msg| FileError {
        line: line_of(src, v.span().start),
        message: format!("{name}: {msg}"),
    })
}

/// Parses and validates a token file: names and hashes unique.
pub fn parse_tokens(src: &str) -> Result<Vec<AdminToken>, FileError> {
    let raw: RawFile = toml::from_str(src).map_err(|e| FileError {
        line: e.span().map_or(1, |s| line_of(src, s.start)),
        message: e.message().trim().to_string(),
    })?;
    let mut out: Vec<AdminToken> = Vec::with_capacity(raw.tokens.len());
    for t in &raw.tokens {
        let r = t.get_ref();
        let token = AdminToken {
            name: field(src, "name", &r.name, |s| {
                validate_token_name(s).map(|()| s.clone())
            })?,
            role: field(src, "role", &r.role, |s| s.parse())?,
            hash: field(src, "hash", &r.hash, |s| KeyHash::from_hex(s))?,
            created: field(src, "created", &r.created, |s| parse_time(s))?,
        };
        if out
            .iter()
            .any(|o| o.name == token.name || o.hash == token.hash)
        {
            return Err(FileError {
                line: line_of(src, t.span().start),
                message: format!("token {:?}: its name or hash is already listed", token.name),
            });
        }
        out.push(token);
    }
    Ok(out)
}

#[derive(Serialize)]
struct OutFile<'a> {
    tokens: Vec<OutToken<'a>>,
}

#[derive(Serialize)]
struct OutToken<'a> {
    name: &'a str,
    role: &'a str,
    hash: String,
    created: String,
}

/// Renders a token file.
pub fn render_tokens(tokens: &[AdminToken]) -> Result<String, toml::ser::Error> {
    let out = OutFile {
        tokens: tokens
            .iter()
            .map(|t| OutToken {
                name: &t.name,
                role: t.role.as_str(),
                hash: t.hash.to_hex(),
                created: format_time(t.created),
            })
            .collect(),
    };
    Ok(format!("{HEADER}\n{}", toml::to_string(&out)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn tokens_round_trip_and_bad_ones_name_their_line() {
        let tokens = vec![
            AdminToken {
                name: "alice@example.com".into(),
                role: Role::Admin,
                hash: KeyHash::of(b"a"),
                created: UNIX_EPOCH,
            },
            AdminToken {
                name: "dashboard".into(),
                role: Role::Viewer,
                hash: KeyHash::of(b"b"),
                created: UNIX_EPOCH,
            },
        ];
        let text = render_tokens(&tokens).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parse_tokens(&text), Ok(tokens));
        assert_eq!(parse_tokens(""), Ok(vec![]));
        let bad = text.replace("role = \"viewer\"", "role = \"root\"");
        let e = parse_tokens(&bad)
            .err()
            .unwrap_or_else(|| panic!("accepted"));
        assert!(e.message.starts_with("role: "), "{e}");
        assert_eq!(
            bad.lines().nth(e.line - 1).map(str::trim),
            Some("role = \"root\"")
        );
        let twice = text.replace("dashboard", "alice@example.com");
        assert!(parse_tokens(&twice).is_err());
        assert!(validate_token_name("has space").is_err());
        assert!(validate_token_name(&"x".repeat(65)).is_err());
    }
}

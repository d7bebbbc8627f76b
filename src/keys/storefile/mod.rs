//! The key store's TOML format: parsing with file-and-line errors, and rendering
//! in a stable, hand-editable layout. Pure: text in, text out.

use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use toml::Spanned;

pub mod edit;
mod fast;

use super::record::Previous;
use super::record::{format_time, normalize_origin, parse_time, validate_name};
use super::{KeyHash, KeyId, KeyRecord, KeySet, UsageSample};

/// A problem in a store or revocation file, with the 1-based line it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.line, self.message)
    }
}

const HEADER: &str = "\
# keygate key store: one [[keys]] table per key. Written by `keygate keys ...`,
# and equally fine to edit by hand; the gateway reloads it within a second.
# Secrets are never stored: `hash` is the BLAKE3 digest of the key.
# Fields: id ([a-z0-9_]{1,32}), name, access (\"read-only\" | \"full-access\"),
# hash, created and optional expires (quoted RFC 3339 times, or dates),
# optional origins (browser origins allowed for the key, e.g. \"https://shop.example.com\"),
# optional rate_limit (\"N/s\", \"N/min\" or \"N/h\"; absent: the config's default for its access).
# After `keygate keys rotate`: previous_hash and rotating_until, the secret the key
# had before and when it stops working (remove both to end the grace period at once;
# keys.revoked lists that hash from that time in any case).
# Deleting a key here does not revoke it: use `keygate keys delete`, which also
# adds its hash to keys.revoked so that an old copy of this file cannot bring it back.
";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(default)]
    keys: Vec<Spanned<RawKey>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    id: Spanned<String>,
    name: Spanned<String>,
    access: Spanned<String>,
    hash: Spanned<String>,
    created: Spanned<String>,
    #[serde(default)]
    expires: Option<Spanned<String>>,
    #[serde(default)]
    origins: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    previous_hash: Option<Spanned<String>>,
    #[serde(default)]
    rotating_until: Option<Spanned<String>>,
    #[serde(default)]
    rate_limit: Option<Spanned<String>>,
}

/// The 1-based line of a byte offset into `src` (TOML errors give offsets).
pub fn line_of(src: &str, offset: usize) -> usize {
    src.as_bytes()[..offset.min(src.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn field<T, U>(
    src: &str,
    name: &str,
    v: &Spanned<T>,
    check: impl FnOnce(&T) -> Result<U, String>,
) -> Result<U, FileError> {
    check(v.get_ref()).map_err(|msg| FileError {
        line: line_of(src, v.span().start),
        message: format!("{name}: {msg}"),
    })
}

/// Parses and validates a whole store: the fast reader for the layout the
/// CLI writes, the TOML parser for anything else (and for every error, so
/// that it names the line).
pub fn parse_store(src: &str) -> Result<KeySet, FileError> {
    if let Some(records) = fast::read(src)
        && let Ok(set) = KeySet::from_records(records)
    {
        return Ok(set);
    }
    parse_store_toml(src)
}

/// Parses and validates a whole store with the TOML parser.
pub fn parse_store_toml(src: &str) -> Result<KeySet, FileError> {
    let raw: RawStore = toml::from_str(src).map_err(|e| FileError {
        line: e.span().map_or(1, |s| line_of(src, s.start)),
        message: e.message().trim().to_string(),
    })?;
    let mut records = Vec::with_capacity(raw.keys.len());
    let mut starts = Vec::with_capacity(raw.keys.len());
    for key in &raw.keys {
        let k = key.get_ref();
        starts.push(key.span().start);
        let origins = match &k.origins {
            None => Vec::new(),
            Some(list) => field(src, "origins", list, |l| {
                l.iter()
                    .map(|o| normalize_origin(o))
                    .collect::<Result<Vec<_>, _>>()
            })?,
        };
        let previous = match (&k.previous_hash, &k.rotating_until) {
            (None, None) => None,
            (Some(h), Some(t)) => Some(Previous {
                hash: field(src, "previous_hash", h, |s| KeyHash::from_hex(s))?,
                until: field(src, "rotating_until", t, |s| parse_time(s))?,
            }),
            (Some(h), None) => {
                return Err(FileError {
                    line: line_of(src, h.span().start),
                    message: "previous_hash needs rotating_until (when the previous secret stops working)".into(),
                });
            }
            (None, Some(t)) => {
                return Err(FileError {
                    line: line_of(src, t.span().start),
                    message: "rotating_until needs previous_hash".into(),
                });
            }
        };
        records.push(KeyRecord {
            id: field(src, "id", &k.id, |s| KeyId::parse(s))?,
            name: field(src, "name", &k.name, |s| {
                validate_name(s).map(|()| s.clone())
            })?,
            access: field(src, "access", &k.access, |s| s.parse())?,
            hash: field(src, "hash", &k.hash, |s| KeyHash::from_hex(s))?,
            created: field(src, "created", &k.created, |s| parse_time(s))?,
            expires: match &k.expires {
                None => None,
                Some(e) => Some(field(src, "expires", e, |s| parse_time(s))?),
            },
            origins,
            previous,
            rate_limit: match &k.rate_limit {
                None => None,
                Some(r) => Some(field(src, "rate_limit", r, |s| s.parse())?),
            },
        });
    }
    KeySet::from_records(records).map_err(|(i, e)| FileError {
        line: line_of(src, starts.get(i).copied().unwrap_or(0)),
        message: e.to_string(),
    })
}

#[derive(Serialize)]
struct OutStore<'a> {
    keys: Vec<OutKey<'a>>,
}

#[derive(Serialize)]
struct OutKey<'a> {
    id: &'a str,
    name: &'a str,
    access: &'a str,
    hash: String,
    created: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires: Option<String>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    origins: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rotating_until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<String>,
}

/// Renders a store: the header comment, then one `[[keys]]` table per key in order.
pub fn render_store(set: &KeySet) -> Result<String, toml::ser::Error> {
    let out = OutStore {
        keys: set
            .records()
            .iter()
            .map(|r| OutKey {
                id: r.id.as_str(),
                name: &r.name,
                access: r.access.as_str(),
                hash: r.hash.to_hex(),
                created: format_time(r.created),
                expires: r.expires.map(format_time),
                origins: &r.origins,
                previous_hash: r.previous.map(|p| p.hash.to_hex()),
                rotating_until: r.previous.map(|p| format_time(p.until)),
                rate_limit: r.rate_limit.map(|l| l.to_string()),
            })
            .collect(),
    };
    let body = toml::to_string(&out)?;
    Ok(format!("{HEADER}\n{body}"))
}

/// Parses a revocation list: one hash per line as its first word, then the
/// key's id and the time the revocation takes effect (RFC 3339; the
/// deletion time for a deleted key, the end of the grace period for a
/// rotated secret). A line without a readable time is in force from always.
/// Blank lines and `#` comments are ignored.
pub fn parse_revoked(src: &str) -> Result<Vec<(KeyHash, Option<SystemTime>)>, FileError> {
    let mut list = Vec::new();
    for (i, line) in src.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let word = words.next().unwrap_or_default();
        let hash = KeyHash::from_hex(word).map_err(|e| FileError {
            line: i + 1,
            message: format!("hash: {e}"),
        })?;
        let from = words.nth(1).and_then(|t| parse_time(t).ok());
        list.push((hash, from));
    }
    Ok(list)
}

/// Renders `keys.usage`: one line per key, `id last_used requests`, the
/// time in RFC 3339 or `-` for never.
pub fn render_usage(samples: &[(String, UsageSample)]) -> String {
    let mut out = String::from(
        "# keygate key usage, written by the gateway: id, last allowed request, allowed requests.\n",
    );
    for (id, s) in samples {
        let last = s.last_used.map_or_else(
            || "-".to_string(),
            |t| format_time(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(t)),
        );
        out.push_str(&format!("{id} {last} {}\n", s.requests));
    }
    out
}

/// Parses `keys.usage` (see `render_usage`).
pub fn parse_usage(src: &str) -> Result<Vec<(String, UsageSample)>, FileError> {
    let mut out = Vec::new();
    for (i, line) in src.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |what: &str| FileError {
            line: i + 1,
            message: format!("expected `id last_used requests`: {what}"),
        };
        let mut words = line.split_whitespace();
        let (Some(id), Some(last), Some(requests)) = (words.next(), words.next(), words.next())
        else {
            return Err(bad("too few fields"));
        };
        let id = KeyId::parse(id).map_err(|_| bad("not a key id"))?;
        let last_used = match last {
            "-" => None,
            t => Some(
                parse_time(t)
                    .ok()
                    .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .ok_or_else(|| bad("not a time"))?
                    .as_secs(),
            ),
        };
        let requests = requests.parse().map_err(|_| bad("not a count"))?;
        out.push((
            id.to_string(),
            UsageSample {
                last_used,
                requests,
            },
        ));
    }
    Ok(out)
}

/// One revocation list line: `hash`, refused from `at`.
pub fn revoked_line(hash: &KeyHash, id: &KeyId, at: SystemTime) -> String {
    format!("{} {} {}\n", hash.to_hex(), id, format_time(at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Access;

    const GOOD: &str = r#"
[[keys]]
id = "shop_front"
name = "Boutique Café"
access = "read-only"
hash = "0000000000000000000000000000000000000000000000000000000000000001"
created = "2026-11-01T10:00:00Z"
origins = ["https://Shop.example.com"]

[[keys]]
id = "erp"
name = "ERP"
access = "full-access"
hash = "0000000000000000000000000000000000000000000000000000000000000002"
created = "2026-11-01"
expires = "2027-11-01T00:00:00Z"
"#;

    fn err(src: &str) -> FileError {
        parse_store(src)
            .err()
            .unwrap_or_else(|| panic!("expected an error for:\n{src}"))
    }

    #[test]
    fn parses_a_valid_store() {
        let set = parse_store(GOOD).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(set.len(), 2);
        let front = set.get("shop_front").unwrap_or_else(|| panic!("missing"));
        assert_eq!(front.access, Access::ReadOnly);
        assert_eq!(front.origins, vec!["https://shop.example.com".to_string()]);
        assert!(set.get("erp").and_then(|r| r.expires).is_some());
    }

    #[test]
    fn empty_store_is_valid() {
        assert_eq!(parse_store("").map(|s| s.len()), Ok(0));
        assert_eq!(parse_store("# nothing yet\n").map(|s| s.len()), Ok(0));
    }

    #[test]
    fn bad_access_names_line_and_field() {
        let e = err(&GOOD.replace("\"full-access\"", "\"admin\""));
        assert_eq!(e.line, 13);
        assert!(
            e.message
                .starts_with("access: access must be read-only or full-access"),
            "{}",
            e.message
        );
    }

    #[test]
    fn unknown_field_is_an_error_naming_it() {
        let e = err(&GOOD.replace("name = \"ERP\"", "nmae = \"ERP\""));
        assert!(e.message.contains("nmae"), "{}", e.message);
        assert_eq!(e.line, 12);
    }

    #[test]
    fn missing_field_is_an_error_naming_it() {
        let e = err(&GOOD.replace("created = \"2026-11-01\"\n", ""));
        assert!(e.message.contains("created"), "{}", e.message);
    }

    #[test]
    fn duplicate_id_points_at_the_second_table() {
        let e = err(&GOOD.replace("id = \"erp\"", "id = \"shop_front\""));
        assert_eq!(e.line, 10);
        assert!(e.message.contains("already exists"));
    }

    #[test]
    fn duplicate_hash_is_refused() {
        let e = err(&GOOD.replace(
            "0000000000000000000000000000000000000000000000000000000000000002",
            "0000000000000000000000000000000000000000000000000000000000000001",
        ));
        assert!(e.message.contains("already stored"), "{}", e.message);
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let e = err("[[keys]]\nid = \"a\"\nname = \n");
        assert_eq!(e.line, 3);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(
            err(&GOOD.replace("shop_front", "Shop Front"))
                .message
                .starts_with("id:")
        );
        assert!(
            err(&GOOD.replace("2026-11-01T10:00:00Z", "yesterday"))
                .message
                .starts_with("created:")
        );
        assert!(
            err(&GOOD.replace("https://Shop.example.com", "shop"))
                .message
                .starts_with("origins:")
        );
        assert!(
            err(&GOOD.replace("\"Boutique Café\"", "\"\""))
                .message
                .starts_with("name:")
        );
    }

    #[test]
    fn render_then_parse_round_trips() {
        let set = parse_store(GOOD).unwrap_or_else(|e| panic!("{e}"));
        let text = render_store(&set).unwrap_or_else(|e| panic!("{e}"));
        assert!(text.starts_with("# keygate key store"));
        assert_eq!(parse_store(&text), Ok(set));
    }

    #[test]
    fn a_rate_limit_round_trips_and_a_bad_one_names_its_line() {
        let limited = format!("{GOOD}rate_limit = \"100/min\"\n");
        let set = parse_store(&limited).unwrap_or_else(|e| panic!("{e}"));
        let erp = set.get("erp").unwrap_or_else(|| panic!("missing"));
        assert_eq!(
            erp.rate_limit.map(|l| l.to_string()),
            Some("100/min".into())
        );
        assert_eq!(set.get("shop_front").and_then(|r| r.rate_limit), None);
        let text = render_store(&set).unwrap_or_else(|e| panic!("{e}"));
        assert!(text.contains("rate_limit = \"100/min\""), "{text}");
        assert_eq!(parse_store(&text), Ok(set));
        let bad = format!("{GOOD}rate_limit = \"100 per minute\"\n");
        let e = err(&bad);
        assert_eq!(e.line, bad.lines().count());
        assert!(e.message.starts_with("rate_limit: "), "{e}");
    }

    #[test]
    fn a_rotated_key_round_trips_and_needs_both_fields() {
        let rotated = format!(
            "{GOOD}previous_hash = \"{}\"\nrotating_until = \"2026-12-01T00:00:00Z\"\n",
            KeyHash::of(b"old").to_hex()
        );
        let set = parse_store(&rotated).unwrap_or_else(|e| panic!("{e}"));
        let erp = set.get("erp").unwrap_or_else(|| panic!("missing"));
        assert_eq!(
            erp.previous,
            Some(Previous {
                hash: KeyHash::of(b"old"),
                until: parse_time("2026-12-01").unwrap_or_else(|e| panic!("{e}")),
            })
        );
        let text = render_store(&set).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parse_store(&text), Ok(set));
        let half = format!("{GOOD}rotating_until = \"2026-12-01\"\n");
        assert!(err(&half).message.contains("needs previous_hash"));
        // A previous secret may not be another key's secret.
        let clash = format!(
            "{GOOD}previous_hash = \"{:0>64}\"\nrotating_until = \"2026-12-01\"\n",
            "1"
        );
        assert!(
            err(&clash).message.contains("already stored"),
            "{:?}",
            err(&clash)
        );
    }

    #[test]
    fn usage_round_trips_and_reports_lines() {
        let samples = vec![
            (
                "a".to_string(),
                UsageSample {
                    last_used: Some(1_800_000_000),
                    requests: 7,
                },
            ),
            (
                "b".to_string(),
                UsageSample {
                    last_used: None,
                    requests: 0,
                },
            ),
        ];
        assert_eq!(parse_usage(&render_usage(&samples)), Ok(samples));
        assert_eq!(parse_usage("a - 1\nB - 1\n").err().map(|e| e.line), Some(2));
        assert_eq!(parse_usage("a soon 1\n").err().map(|e| e.line), Some(1));
    }

    #[test]
    fn revoked_list_parses_and_reports_lines() {
        let h = KeyHash::of(b"x").to_hex();
        let list = parse_revoked(&format!(
            "# deleted keys\n\n{h} key_a 2026-11-01T00:00:00Z\n{h}\n{h} key_b someday\n"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let from = parse_time("2026-11-01T00:00:00Z").ok();
        assert_eq!(
            list,
            vec![
                (KeyHash::of(b"x"), from),
                (KeyHash::of(b"x"), None),
                (KeyHash::of(b"x"), None)
            ]
        );
        let e = parse_revoked(&format!("{h}\nnot-a-hash\n")).err();
        assert_eq!(e.map(|e| e.line), Some(2));
    }
}

//! A fast reader for the store as `keygate keys` writes it: `[[keys]]`
//! tables of `field = "value"` lines (and a one-line `origins` array),
//! blank lines and whole-line comments. A million keys are 180 MB of text;
//! the general TOML parser spends seconds on it and keeps a spanned copy of
//! every field, while this reader walks the lines once and builds the
//! records directly.
//!
//! It is strict on purpose: anything else (another table, a
//! multi-line or escaped string, an inline comment, a repeated or unknown
//! field, a value that does not validate) makes it give up with `None`, and
//! the caller parses the whole text with the TOML parser instead, which
//! either accepts it or names the file's line and field. So a hand-edited
//! store reads exactly as before; only the common case is fast.

use super::super::record::{Previous, normalize_origin, parse_time, validate_name};
use super::super::{KeyHash, KeyId, KeyRecord};

/// The records of a store in the CLI's layout, or `None` for anything the
/// full parser must read.
pub fn read(src: &str) -> Option<Vec<KeyRecord>> {
    let mut records = Vec::with_capacity(src.len() / 200);
    let mut table: Option<Table<'_>> = None;
    let mut empty_seen = false;
    for line in lines(src) {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let t = trim(line);
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if t == "[[keys]]" {
            if empty_seen {
                return None;
            }
            if let Some(done) = table.take() {
                records.push(done.record()?);
            }
            table = Some(Table::default());
            continue;
        }
        let eq = memchr::memchr(b'=', t.as_bytes())?;
        // `=` is ASCII: both sides are whole characters.
        let (name, value) = (trim(&t[..eq]), trim(&t[eq + 1..]));
        match table.as_mut() {
            Some(current) => current.set(name, value)?,
            // How an empty store is written.
            None if name == "keys" && value == "[]" && records.is_empty() && !empty_seen => {
                empty_seen = true;
            }
            // Any other field outside a [[keys]] table is the full parser's
            // to judge.
            None => return None,
        }
    }
    if let Some(done) = table {
        records.push(done.record()?);
    }
    Some(records)
}

#[derive(Default)]
struct Table<'a> {
    id: Option<&'a str>,
    name: Option<&'a str>,
    access: Option<&'a str>,
    hash: Option<&'a str>,
    created: Option<&'a str>,
    expires: Option<&'a str>,
    origins: Option<Vec<&'a str>>,
    previous_hash: Option<&'a str>,
    rotating_until: Option<&'a str>,
    rate_limit: Option<&'a str>,
}

impl<'a> Table<'a> {
    /// Sets one field; `None` for an unknown or repeated field or a value
    /// this reader does not take.
    fn set(&mut self, name: &str, value: &'a str) -> Option<()> {
        let slot = match name {
            "id" => &mut self.id,
            "name" => &mut self.name,
            "access" => &mut self.access,
            "hash" => &mut self.hash,
            "created" => &mut self.created,
            "expires" => &mut self.expires,
            "previous_hash" => &mut self.previous_hash,
            "rotating_until" => &mut self.rotating_until,
            "rate_limit" => &mut self.rate_limit,
            "origins" => {
                if self.origins.is_some() {
                    return None;
                }
                self.origins = Some(array(value)?);
                return Some(());
            }
            _ => return None,
        };
        if slot.is_some() {
            return None;
        }
        *slot = Some(string(value)?);
        Some(())
    }

    fn record(self) -> Option<KeyRecord> {
        let previous = match (self.previous_hash, self.rotating_until) {
            (None, None) => None,
            (Some(h), Some(t)) => Some(Previous {
                hash: KeyHash::from_hex(h).ok()?,
                until: parse_time(t).ok()?,
            }),
            _ => return None,
        };
        let name = self.name?;
        validate_name(name).ok()?;
        Some(KeyRecord {
            id: KeyId::parse(self.id?).ok()?,
            name: name.to_string(),
            access: self.access?.parse().ok()?,
            hash: KeyHash::from_hex(self.hash?).ok()?,
            created: parse_time(self.created?).ok()?,
            expires: match self.expires {
                None => None,
                Some(e) => Some(parse_time(e).ok()?),
            },
            origins: match self.origins {
                None => Vec::new(),
                Some(list) => list
                    .into_iter()
                    .map(normalize_origin)
                    .collect::<Result<_, _>>()
                    .ok()?,
            },
            previous,
            rate_limit: match self.rate_limit {
                None => None,
                Some(r) => Some(r.parse().ok()?),
            },
        })
    }
}

/// The lines of `src`, as `str::split('\n')` gives them. A store's lines are
/// short, and `split`'s searcher costs more a line than `memchr`'s.
fn lines(src: &str) -> impl Iterator<Item = &str> {
    let mut start = 0;
    memchr::memchr_iter(b'\n', src.as_bytes())
        .map(Some)
        .chain(std::iter::once(None))
        .map(move |end| {
            let end = end.unwrap_or(src.len());
            // `\n` is ASCII: both ends fall between characters.
            let line = &src[start..end];
            start = end + 1;
            line
        })
}

/// `s` without leading and trailing spaces and tabs (TOML's whitespace;
/// `str::trim_matches` with a `char` set decodes every character).
fn trim(s: &str) -> &str {
    let b = s.as_bytes();
    let blank = |c: &u8| *c == b' ' || *c == b'\t';
    let start = b.iter().position(|c| !blank(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !blank(c)).map_or(start, |e| e + 1);
    // Spaces and tabs are ASCII: both ends fall between characters.
    &s[start..end]
}

/// The contents of a one-line string with nothing to unescape: `"..."`
/// without backslashes, or `'...'`; nothing may follow it. One pass over
/// the bytes: the closing quote must be the last byte and the only one.
fn string(v: &str) -> Option<&str> {
    let b = v.as_bytes();
    let quote = *b.first()?;
    if (quote != b'"' && quote != b'\'') || b.len() < 2 || b[b.len() - 1] != quote {
        return None;
    }
    // `""` followed by more might open a multi-line string (it has a quote
    // inside); escapes and control characters are the full parser's.
    let inner = &b[1..b.len() - 1];
    if inner
        .iter()
        .any(|&c| c == quote || c == b'\\' || c < b' ' || c == 0x7f)
    {
        return None;
    }
    // Quotes are ASCII: the slice falls between characters.
    Some(&v[1..v.len() - 1])
}

/// A one-line array of such strings: `["a", "b"]` or `[]`.
fn array(v: &str) -> Option<Vec<&str>> {
    let inner = trim(v.strip_prefix('[')?.strip_suffix(']')?);
    if inner.is_empty() {
        return Some(Vec::new());
    }
    inner.split(',').map(|item| string(trim(item))).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::{parse_store_toml, render_store};
    use super::*;

    const GOOD: &str = r#"# a comment
[[keys]]
id = "shop_front"
name = "Boutique Café 'quoted' #not-a-comment"
access = "read-only"
hash = "0000000000000000000000000000000000000000000000000000000000000001"
created = "2026-11-01T10:00:00Z"
origins = ["https://Shop.example.com", 'https://b.example']
rate_limit = "10/s"

  [[keys]]
id="erp"
	name = 'ERP "main"'
access = "full-access"
hash = "0000000000000000000000000000000000000000000000000000000000000002"
created = "2026-11-01"
expires = "2027-11-01T00:00:00Z"
previous_hash = "0000000000000000000000000000000000000000000000000000000000000003"
rotating_until = "2026-12-01T00:00:00Z"
origins = []
"#;

    fn toml_records(src: &str) -> Vec<KeyRecord> {
        parse_store_toml(src)
            .unwrap_or_else(|e| panic!("{e}"))
            .records()
            .to_vec()
    }

    #[test]
    fn reads_what_the_toml_parser_reads() {
        assert_eq!(read(GOOD), Some(toml_records(GOOD)));
        assert_eq!(read(&GOOD.replace('\n', "\r\n")), Some(toml_records(GOOD)));
        assert_eq!(read("# only a comment\n"), Some(vec![]));
    }

    #[test]
    fn gives_up_on_anything_else() {
        for (from, to) in [
            // An escape, a multi-line string, an inline comment.
            ("name = 'ERP \"main\"'", "name = \"ERP \\\"main\\\"\""),
            ("name = 'ERP \"main\"'", "name = \"ERP\\tmain\""),
            ("name = 'ERP \"main\"'", "name = \"\"\"ERP\"\"\""),
            (
                "access = \"full-access\"",
                "access = \"full-access\" # comment",
            ),
            // A repeated field, an unknown one, one outside a table.
            ("id=\"erp\"", "id=\"erp\"\nid=\"erp2\""),
            ("id=\"erp\"", "id=\"erp\"\ncolour = \"red\""),
            ("# a comment", "stray = \"x\""),
            // Another table, a dotted or quoted key, a bare value.
            ("# a comment", "[meta]"),
            ("id=\"erp\"", "\"id\" = \"erp\""),
            (
                "expires = \"2027-11-01T00:00:00Z\"",
                "expires = 2027-11-01T00:00:00Z",
            ),
            // Values that do not validate: the full parser names the line.
            ("access = \"full-access\"", "access = \"admin\""),
            ("rate_limit = \"10/s\"", "rate_limit = \"ten\""),
            ("origins = []", "origins = [\"not an origin\"]"),
            ("rotating_until = \"2026-12-01T00:00:00Z\"", ""),
            // A multi-line array.
            ("origins = []", "origins = [\n]"),
        ] {
            let edited = GOOD.replacen(from, to, 1);
            assert_ne!(edited, GOOD, "{from}");
            assert_eq!(
                read(&edited),
                None,
                "{to:?} should be left to the TOML parser"
            );
        }
    }

    fn record_strategy() -> impl Strategy<Value = (String, bool, Option<u32>, Vec<u8>)> {
        (
            "[ -~é東]{1,40}",
            any::<bool>(),
            proptest::option::of(1u32..5000),
            proptest::collection::vec(0u8..3, 0..3),
        )
    }

    proptest! {
        /// Whatever `keys` writes, the fast reader reads as the TOML parser does.
        #[test]
        fn rendered_stores_read_the_same(keys in proptest::collection::vec(record_strategy(), 0..8)) {
            let records: Vec<KeyRecord> = keys.iter().enumerate().map(|(i, (name, full, limit, origins))| {
                KeyRecord {
                    id: KeyId::parse(&format!("key_{i}")).unwrap_or_else(|e| panic!("{e}")),
                    name: name.trim().to_string(),
                    access: if *full { crate::keys::Access::FullAccess } else { crate::keys::Access::ReadOnly },
                    hash: KeyHash::of(format!("secret {i}").as_bytes()),
                    created: std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000 + i as u64),
                    expires: limit.map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_900_000_000 + u64::from(s))),
                    origins: origins.iter().map(|o| format!("https://shop{o}.example")).collect(),
                    previous: None,
                    rate_limit: limit.map(|n| format!("{n}/min").parse().unwrap_or_else(|e| panic!("{e}"))),
                }
            }).filter(|r| !r.name.is_empty()).collect();
            let set = crate::keys::KeySet::from_records(records).unwrap_or_else(|(_, e)| panic!("{e}"));
            let text = render_store(&set).unwrap_or_else(|e| panic!("{e}"));
            let by_toml = toml_records(&text);
            prop_assert_eq!(&by_toml, set.records());
            if let Some(fast) = read(&text) {
                prop_assert_eq!(fast, by_toml);
            } else {
                // Only a name the serializer escaped or quoted specially may
                // send the reader back to the TOML parser.
                prop_assert!(set.records().iter().any(|r| r.name.contains(['"', '\'', '\\'])), "{}", text);
            }
        }
    }
}

//! `KeyRecord`: one key as the store holds it (never the secret), and its parts.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use super::{KeyHash, KeyId};

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    /// For frontends: safe methods only, browsers allowed.
    ReadOnly,
    /// For backend systems: every method, never from a browser.
    FullAccess,
}

impl Access {
    /// The wire and file spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Access::ReadOnly => "read-only",
            Access::FullAccess => "full-access",
        }
    }
}

impl FromStr for Access {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read-only" => Ok(Access::ReadOnly),
            "full-access" => Ok(Access::FullAccess),
            other => Err(format!(
                "access must be read-only or full-access, found {other:?}"
            )),
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One key as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: KeyId,
    pub name: String,
    pub access: Access,
    pub hash: KeyHash,
    pub created: SystemTime,
    pub expires: Option<SystemTime>,
    /// Browser origins allowed for this key; empty means any.
    pub origins: Vec<String>,
    /// After a rotation: the secret the key had before, still accepted
    /// until the grace period ends.
    pub previous: Option<Previous>,
    /// The key's own rate limit; `None` takes the default for its access.
    pub rate_limit: Option<super::RateLimit>,
}

/// A rotated key's previous secret (its hash) and the end of its grace
/// period. The revocation list holds the same hash from the same time, so
/// that neither a gateway nor an old copy of the store accepts it after.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Previous {
    pub hash: KeyHash,
    pub until: SystemTime,
}

impl KeyRecord {
    /// Every hash this key answers to: its secret's, and a previous one's.
    pub fn hashes(&self) -> impl Iterator<Item = KeyHash> + '_ {
        std::iter::once(self.hash).chain(self.previous.map(|p| p.hash))
    }
}

/// Checks a key name: 1 to 200 characters of any script, no control characters
/// (they would break the store's lines and terminals).
pub fn validate_name(name: &str) -> Result<(), String> {
    let chars = name.chars().count();
    if chars == 0 || chars > 200 {
        return Err(format!("name must be 1 to 200 characters, found {chars}"));
    }
    if name.chars().any(char::is_control) {
        return Err("name must not contain control characters".to_string());
    }
    Ok(())
}

/// Validates and normalises a browser origin, `scheme://host[:port]`, the
/// way the URL standard serialises it and browsers send it in `Origin`:
/// scheme and host lower-cased, the scheme's default port dropped, an
/// internationalised host in its ASCII (punycode) form. So
/// `https://Shop.Example:443` and `https://shop.example` are one origin.
pub fn normalize_origin(origin: &str) -> Result<String, String> {
    let shape = || {
        format!("origin {origin:?} must be scheme://host[:port] with no path, as browsers send it")
    };
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Err(format!(
            "origin {origin:?} must start with https:// or http://"
        ));
    };
    if !(scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("http")) {
        return Err(format!(
            "origin {origin:?} must start with https:// or http://"
        ));
    }
    // A path (even "/"), a query, a fragment or credentials are never part
    // of an origin.
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', '\\']) {
        return Err(shape());
    }
    let url = url::Url::parse(origin).map_err(|e| format!("{}: {e}", shape()))?;
    if url.host().is_none() {
        return Err(shape());
    }
    Ok(url.origin().ascii_serialization())
}

/// Seconds from the epoch to 9999-12-31T23:59:59Z, the latest time RFC 3339
/// (and so the store) can write.
const LATEST_SECS: u64 = 253_402_300_799;

/// The latest time the store can hold; later expiries are refused.
pub fn latest_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(LATEST_SECS)
}

/// Formats a time the way the store and the CLI write it.
pub fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Parses an RFC 3339 time (`2027-01-31T12:00:00Z`) or a bare date (midnight UTC).
pub fn parse_time(s: &str) -> Result<SystemTime, String> {
    let full;
    let text = if s.len() == 10 && s.as_bytes().get(4) == Some(&b'-') {
        full = format!("{s}T00:00:00Z");
        &full
    } else {
        s
    };
    humantime::parse_rfc3339(text).map_err(|e| {
        format!("{s:?} is not a date (2027-01-31) or an RFC 3339 time (2027-01-31T12:00:00Z): {e}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_parses_both_spellings_only() {
        assert_eq!("read-only".parse(), Ok(Access::ReadOnly));
        assert_eq!("full-access".parse(), Ok(Access::FullAccess));
        assert!("Read-Only".parse::<Access>().is_err());
        assert!("admin".parse::<Access>().is_err());
    }

    #[test]
    fn names_accept_unicode_and_refuse_control_characters() {
        assert!(validate_name("Boutique Café 東京 🛍").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a\nb").is_err());
        assert!(validate_name(&"é".repeat(200)).is_ok());
        assert!(validate_name(&"é".repeat(201)).is_err());
    }

    #[test]
    fn origins_are_normalised_or_refused() {
        assert_eq!(
            normalize_origin("https://Shop.Example.com"),
            Ok("https://shop.example.com".into())
        );
        assert_eq!(
            normalize_origin("http://localhost:3000"),
            Ok("http://localhost:3000".into())
        );
        assert!(normalize_origin("shop.example.com").is_err());
        assert!(normalize_origin("https://shop.example.com/").is_err());
        assert!(normalize_origin("https://").is_err());
        // As the URL standard serialises them (and browsers send them).
        for (given, normal) in [
            ("https://shop.example:443", "https://shop.example"),
            ("HTTP://Shop.Example:80", "http://shop.example"),
            ("https://shop.example:8443", "https://shop.example:8443"),
            ("https://bücher.example", "https://xn--bcher-kva.example"),
            ("http://[::1]:3000", "http://[::1]:3000"),
        ] {
            assert_eq!(normalize_origin(given).as_deref(), Ok(normal), "{given}");
        }
        for bad in [
            "https://user@shop.example",
            "https://shop.example?x=1",
            "https://shop.example#top",
            "ftp://shop.example",
            "https://shop example",
            "https://shop.example:99999",
        ] {
            assert!(normalize_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_round_trip_and_dates_mean_midnight_utc() {
        let t = parse_time("2027-01-31").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(format_time(t), "2027-01-31T00:00:00Z");
        let t = parse_time("2027-01-31T12:30:00Z").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(format_time(t), "2027-01-31T12:30:00Z");
        assert!(parse_time("tomorrow").is_err());
    }
}

//! `keygate keys list` and `keygate keys show`: never a secret, only a
//! fingerprint of the hash.

use std::io::Write;

use super::{Target, find, key_json, load, usage};
use crate::cli::CliError;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::keys::record::{format_time, latest_time};
use crate::keys::{Access, KeyRecord, UsageSample};

/// What `keys list` shows: every key, or those its options select.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct ListFilter {
    pub access: Option<Access>,
    /// Expires before now + this (already expired included).
    pub expiring_within: Option<Duration>,
    /// Neither used nor created for this long.
    pub unused_for: Option<Duration>,
}

impl ListFilter {
    /// True when `r` (with its recorded use) is selected at `now`. Pure.
    pub fn matches(&self, r: &KeyRecord, used: Option<&UsageSample>, now: SystemTime) -> bool {
        if self.access.is_some_and(|a| a != r.access) {
            return false;
        }
        if let Some(within) = self.expiring_within {
            let horizon = now.checked_add(within).unwrap_or_else(latest_time);
            if r.expires.is_none_or(|t| t > horizon) {
                return false;
            }
        }
        if let Some(idle) = self.unused_for {
            let last = used
                .and_then(|u| u.last_used)
                .map_or(r.created, |s| UNIX_EPOCH + Duration::from_secs(s))
                .max(r.created);
            if now.duration_since(last).unwrap_or_default() < idle {
                return false;
            }
        }
        true
    }
}

pub(super) fn list(
    t: &Target,
    out: &mut impl Write,
    json: bool,
    filter: &ListFilter,
) -> Result<(), CliError> {
    let mut keys = load(t)?;
    let used = usage(t);
    let now = SystemTime::now();
    keys.retain(|r| filter.matches(r, used.get(r.id.as_str()), now));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyHash, KeyId};

    fn days(n: u64) -> Duration {
        Duration::from_secs(n * 86_400)
    }

    fn key(access: Access, created_days_ago: u64, expires_in_days: Option<i64>) -> KeyRecord {
        let now = UNIX_EPOCH + days(1000);
        KeyRecord {
            id: KeyId::parse("k").unwrap_or_else(|e| panic!("{e}")),
            name: "k".into(),
            access,
            hash: KeyHash::of(b"k"),
            created: now - days(created_days_ago),
            expires: expires_in_days.map(|d| {
                if d >= 0 {
                    now + days(d.unsigned_abs())
                } else {
                    now - days(d.unsigned_abs())
                }
            }),
            origins: vec![],
            previous: None,
            rate_limit: None,
        }
    }

    #[test]
    fn list_filters_select_by_access_expiry_and_idleness() {
        let now = UNIX_EPOCH + days(1000);
        let all = ListFilter::default();
        let ro = key(Access::ReadOnly, 200, None);
        assert!(all.matches(&ro, None, now));
        let only_full = ListFilter {
            access: Some(Access::FullAccess),
            ..all
        };
        assert!(!only_full.matches(&ro, None, now));
        assert!(only_full.matches(&key(Access::FullAccess, 1, None), None, now));

        let expiring = ListFilter {
            expiring_within: Some(days(30)),
            ..all
        };
        assert!(expiring.matches(&key(Access::ReadOnly, 1, Some(10)), None, now));
        assert!(expiring.matches(&key(Access::ReadOnly, 1, Some(-3)), None, now));
        assert!(!expiring.matches(&key(Access::ReadOnly, 1, Some(31)), None, now));
        assert!(!expiring.matches(&key(Access::ReadOnly, 1, None), None, now));

        let unused = ListFilter {
            unused_for: Some(days(90)),
            ..all
        };
        // Never used, created long ago: selected; created yesterday: not.
        assert!(unused.matches(&ro, None, now));
        assert!(!unused.matches(&key(Access::ReadOnly, 1, None), None, now));
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let recent = UsageSample {
            last_used: Some(secs(now - days(5))),
            requests: 3,
        };
        let old = UsageSample {
            last_used: Some(secs(now - days(100))),
            requests: 3,
        };
        assert!(!unused.matches(&ro, Some(&recent), now));
        assert!(unused.matches(&ro, Some(&old), now));
    }
}

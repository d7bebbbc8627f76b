//! Configuration from the environment, as Kong's `KONG_*`: every option can
//! be set by `KEYGATE_<SECTION>_<OPTION>` (`KEYGATE_UPSTREAM_URL`,
//! `KEYGATE_SERVER_TLS_CERT`, `KEYGATE_LOG_ACCESS_LOG`), overriding the file.
//!
//! The options are listed here with their kind, so that a value is read as
//! what the option takes (`KEYGATE_KEYS_PREFIX=123` is the string "123",
//! `KEYGATE_SERVER_WORKERS=2` a number, lists are comma-separated), and a
//! misspelt option under a known section is an error naming the variable.
//! Other `KEYGATE_*` variables (`KEYGATE_CONFIG`, a database URL named by
//! `keys.store_env`) are not options and are left alone. A unit test keeps
//! this list equal to the config's fields.

use toml::{Table, Value};

/// What an option's value is in TOML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Strings: also durations, addresses, URLs, paths, enums.
    Str,
    Int,
    Bool,
    /// A list of strings, comma-separated in the variable.
    List,
}

/// Every option, as `section.option` (or `section.table.option`).
pub const OPTIONS: &[(&str, Kind)] = &[
    ("server.listen", Kind::Str),
    ("server.workers", Kind::Int),
    ("server.tls.cert", Kind::Str),
    ("server.tls.key", Kind::Str),
    ("server.header_read_timeout", Kind::Str),
    ("server.idle_timeout", Kind::Str),
    ("server.max_header_bytes", Kind::Int),
    ("server.max_headers", Kind::Int),
    ("server.max_connections", Kind::Int),
    ("server.drain_timeout", Kind::Str),
    ("server.body_timeout", Kind::Str),
    ("server.h2_max_concurrent_streams", Kind::Int),
    ("server.h2_stream_window_bytes", Kind::Int),
    ("server.h2_connection_window_bytes", Kind::Int),
    ("server.h2_send_buffer_bytes", Kind::Int),
    ("server.trusted_proxies", Kind::List),
    ("upstream.url", Kind::Str),
    ("upstream.connect_timeout", Kind::Str),
    ("upstream.response_timeout", Kind::Str),
    ("upstream.read_timeout", Kind::Str),
    ("upstream.ca", Kind::Str),
    ("upstream.pool_idle_timeout", Kind::Str),
    ("upstream.pool_max_idle", Kind::Int),
    ("upstream.protocol", Kind::Str),
    ("keys.store", Kind::Str),
    ("keys.store_env", Kind::Str),
    ("keys.resync_interval", Kind::Str),
    ("keys.snapshot", Kind::Str),
    ("keys.snapshot_max_age", Kind::Str),
    ("keys.header", Kind::Str),
    ("keys.prefix", Kind::Str),
    ("keys.query_param", Kind::Str),
    ("keys.forward_key", Kind::Bool),
    ("policy.browser_full_access", Kind::Str),
    ("cors.allowed_origins", Kind::List),
    ("cors.max_age", Kind::Str),
    ("metrics.listen", Kind::Str),
    ("metrics.per_key", Kind::Bool),
    ("log.format", Kind::Str),
    ("log.level", Kind::Str),
    ("log.access_log", Kind::Bool),
    ("limits.read_only", Kind::Str),
    ("limits.full_access", Kind::Str),
    ("limits.read_only_per_client", Kind::Str),
    ("limits.shared", Kind::Str),
    ("limits.shared_env", Kind::Str),
    ("limits.shared_prefix", Kind::Str),
    ("limits.sync_interval", Kind::Str),
    ("limits.max_clients", Kind::Int),
    ("admin.listen", Kind::Str),
    ("admin.public_url", Kind::Str),
    ("admin.docs_url", Kind::Str),
    ("admin.tokens", Kind::Str),
    ("admin.session_ttl", Kind::Str),
    ("admin.tls.cert", Kind::Str),
    ("admin.tls.key", Kind::Str),
];

/// Options whose value may hold a password (a database or Redis URL):
/// redacted when printed.
pub const SECRET: &[&str] = &["keys.store", "limits.shared"];

/// The variable that sets an option: `upstream.url` → `KEYGATE_UPSTREAM_URL`.
pub fn var_name(option: &str) -> String {
    format!("KEYGATE_{}", option.replace('.', "_").to_ascii_uppercase())
}

/// One option set from the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub var: String,
    pub option: &'static str,
    pub value: Value,
}

/// The overrides among `vars`, in the order of `OPTIONS`; an error names a
/// variable that looks like an option but is none, or a value that is not
/// of the option's kind.
pub fn overrides<I>(vars: I) -> Result<Vec<Override>, String>
where
    I: IntoIterator<Item = (String, String)>,
{
    let sections: Vec<&str> = OPTIONS
        .iter()
        .filter_map(|(o, _)| o.split('.').next())
        .collect();
    let mut found = Vec::new();
    for (var, raw) in vars {
        let Some(rest) = var.strip_prefix("KEYGATE_") else {
            continue;
        };
        if let Some(&(option, kind)) = OPTIONS.iter().find(|(o, _)| var_name(o) == var) {
            found.push(Override {
                value: value(kind, &raw).map_err(|e| format!("{var}: {e}"))?,
                var,
                option,
            });
            continue;
        }
        let lower = rest.to_ascii_lowercase();
        if let Some(section) = sections
            .iter()
            .find(|s| lower.starts_with(&format!("{s}_")))
        {
            let known: Vec<String> = OPTIONS
                .iter()
                .filter(|(o, _)| o.starts_with(&format!("{section}.")))
                .map(|(o, _)| var_name(o))
                .collect();
            return Err(format!(
                "{var}: [{section}] has no such option (known: {})",
                known.join(", ")
            ));
        }
    }
    found.sort_by_key(|o| OPTIONS.iter().position(|(name, _)| *name == o.option));
    Ok(found)
}

fn value(kind: Kind, raw: &str) -> Result<Value, String> {
    Ok(match kind {
        Kind::Str => Value::String(raw.to_string()),
        Kind::Int => Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| format!("{raw:?} is not a whole number"))?,
        ),
        Kind::Bool => Value::Boolean(match raw.trim() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => return Err(format!("{raw:?} is not true or false")),
        }),
        Kind::List => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
    })
}

/// Sets each override in the parsed file, creating tables as needed.
pub fn apply(table: &mut Table, overrides: &[Override]) -> Result<(), String> {
    for o in overrides {
        let mut path: Vec<&str> = o.option.split('.').collect();
        let Some(last) = path.pop() else { continue };
        let mut at = &mut *table;
        for part in path {
            let entry = at
                .entry(part.to_string())
                .or_insert_with(|| Value::Table(Table::new()));
            at = match entry {
                Value::Table(t) => t,
                _ => return Err(format!("{}: {part} is not a table in the file", o.var)),
            };
        }
        at.insert(last.to_string(), o.value.clone());
    }
    Ok(())
}

/// A URL with its password (if any) replaced by `****`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:****@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn values_are_read_as_their_option_takes_them() {
        let found = overrides(vars(&[
            ("KEYGATE_UPSTREAM_URL", "http://backend:8000"),
            ("KEYGATE_SERVER_WORKERS", "2"),
            ("KEYGATE_LOG_ACCESS_LOG", "true"),
            ("KEYGATE_KEYS_PREFIX", "123"),
            ("KEYGATE_SERVER_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.0.1"),
            ("KEYGATE_SERVER_TLS_CERT", "/tls/cert.pem"),
            // Not options: left alone.
            ("KEYGATE_CONFIG", "/etc/keygate.toml"),
            ("KEYGATE_STORE_URL", "postgres://u:p@db/keys"),
            ("PATH", "/bin"),
        ]))
        .unwrap_or_else(|e| panic!("{e}"));
        let got: Vec<(&str, Value)> = found.iter().map(|o| (o.option, o.value.clone())).collect();
        assert_eq!(
            got,
            vec![
                ("server.workers", Value::Integer(2)),
                ("server.tls.cert", Value::String("/tls/cert.pem".into())),
                (
                    "server.trusted_proxies",
                    Value::Array(vec![
                        Value::String("10.0.0.0/8".into()),
                        Value::String("192.168.0.1".into())
                    ])
                ),
                ("upstream.url", Value::String("http://backend:8000".into())),
                ("keys.prefix", Value::String("123".into())),
                ("log.access_log", Value::Boolean(true)),
            ]
        );
    }

    #[test]
    fn a_misspelt_option_or_a_bad_value_names_the_variable() {
        let e = overrides(vars(&[("KEYGATE_UPSTREAM_URLL", "x")])).unwrap_err();
        assert!(
            e.starts_with("KEYGATE_UPSTREAM_URLL: [upstream] has no such option"),
            "{e}"
        );
        assert!(e.contains("KEYGATE_UPSTREAM_URL,"), "{e}");
        let e = overrides(vars(&[("KEYGATE_SERVER_WORKERS", "two")])).unwrap_err();
        assert_eq!(e, "KEYGATE_SERVER_WORKERS: \"two\" is not a whole number");
        let e = overrides(vars(&[("KEYGATE_LOG_ACCESS_LOG", "maybe")])).unwrap_err();
        assert!(e.starts_with("KEYGATE_LOG_ACCESS_LOG:"), "{e}");
    }

    #[test]
    fn overrides_replace_file_values_and_create_tables() {
        let mut t: Table =
            toml::from_str("[upstream]\nurl = \"http://a\"\n[log]\nlevel = \"info\"\n")
                .unwrap_or_else(|e| panic!("{e}"));
        let found = overrides(vars(&[
            ("KEYGATE_UPSTREAM_URL", "http://b"),
            ("KEYGATE_ADMIN_TLS_KEY", "/k.pem"),
        ]))
        .unwrap_or_else(|e| panic!("{e}"));
        apply(&mut t, &found).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t["upstream"]["url"].as_str(), Some("http://b"));
        assert_eq!(t["log"]["level"].as_str(), Some("info"));
        assert_eq!(t["admin"]["tls"]["key"].as_str(), Some("/k.pem"));
    }

    /// The list above is the config's fields: each section's options are
    /// what serde expects for it (read from its "unknown field" error).
    #[test]
    fn the_option_list_matches_the_config_fields() {
        let mut sections: Vec<&str> = OPTIONS
            .iter()
            .map(|(o, _)| o.rsplit_once('.').map_or(*o, |(s, _)| s))
            .collect();
        sections.dedup();
        for section in sections {
            let mut probe = String::new();
            let parts: Vec<&str> = section.split('.').collect();
            probe.push_str(&format!("[{}]\n", parts.join(".")));
            probe.push_str("keygate_probe = 1\n");
            let err = toml::from_str::<super::super::raw::RawConfig>(&probe)
                .err()
                .unwrap_or_else(|| panic!("[{section}] took an unknown field"))
                .to_string();
            let expected = err
                .split("expected one of ")
                .nth(1)
                .or_else(|| err.split("expected ").nth(1))
                .unwrap_or_else(|| panic!("{err}"));
            let mut fields: Vec<String> = expected
                .lines()
                .next()
                .unwrap_or_default()
                .replace(" or ", ",")
                .split(',')
                .map(|f| f.trim().trim_matches('`').trim().to_string())
                .filter(|f| !f.is_empty())
                .map(|f| {
                    f.lines()
                        .next()
                        .unwrap_or_default()
                        .trim_matches('`')
                        .to_string()
                })
                .collect();
            fields.sort();
            // Nested tables ("tls") are listed by their own options.
            let mut ours: Vec<String> = OPTIONS
                .iter()
                .filter_map(|(o, _)| o.strip_prefix(&format!("{section}.")))
                .map(|rest| rest.split('.').next().unwrap_or_default().to_string())
                .collect();
            ours.sort();
            ours.dedup();
            assert_eq!(ours, fields, "[{section}]: {err}");
        }
    }

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/keys"),
            "postgres://app:****@db:5432/keys"
        );
        assert_eq!(redact("redis://redis:6379"), "redis://redis:6379");
        assert_eq!(redact("keys.toml"), "keys.toml");
    }
}

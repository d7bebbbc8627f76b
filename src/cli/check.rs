//! `keygate check`: validates the config and the key store, naming file, line
//! and field for every problem.

use super::{CliError, ConfigArg};
use crate::config::StoreLocation;
use crate::keys::{Access, KeyIndex};
use crate::store::Store;
use crate::store::postgres::schema;

pub fn run(args: &ConfigArg, json: bool) -> Result<(), CliError> {
    let path = super::config_path(args.config.as_deref());
    let config = super::load_config(&path)?;
    // The same loading `serve` does: PEM files parsed, key matched to the
    // certificate, upstream CA read.
    if let Some(tls) = &config.server.tls {
        crate::server::tls::CertResolver::load(tls)
            .map_err(|e| CliError::user(format!("{}: {e}", path.display())))?;
    }
    crate::proxy::upstream::Upstream::new(&config.upstream, config.server.body_timeout)
        .map_err(|e| CliError::user(format!("{}: {e}", path.display())))?;
    let store = Store::open(&config.keys.store)
        .map_err(|e| CliError::user(format!("{}: {e}", path.display())))?;
    // A missing or older schema is reported as such (load() checks it too,
    // but says only what to do, not that the database itself is reachable).
    let schema_note = match &store {
        Store::File(_) => String::new(),
        Store::Postgres(pg) => {
            let v = pg.schema_version()?;
            format!("schema version {v} (current); ")
        }
    };
    let snapshot = store.load()?;
    let index = KeyIndex::build(&snapshot);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "ok": true,
                "config": path.display().to_string(),
                "store": store.label(),
                "schema_version": match &store {
                    Store::File(_) => None,
                    Store::Postgres(pg) => Some(pg.schema_version()?),
                },
                "keys": snapshot.keys.len(),
                "read_only": index.count(Access::ReadOnly),
                "full_access": index.count(Access::FullAccess),
                "revoked_hashes": snapshot.revoked.len(),
                "revoked_in_store": index.revoked_in_store(),
            })
        );
        return Ok(());
    }
    println!("{}: ok", path.display());
    println!(
        "{}: ok, {schema_note}{} key(s): {} read-only, {} full-access; {} revoked hash(es){}",
        store.label(),
        snapshot.keys.len(),
        index.count(Access::ReadOnly),
        index.count(Access::FullAccess),
        snapshot.revoked.len(),
        match index.revoked_in_store() {
            0 => String::new(),
            n => format!("; {n} key(s) in the store are revoked and refused"),
        }
    );
    Ok(())
}

/// `keygate check --print-effective`: the file's options with those the
/// environment sets over them (each named in a comment), as TOML, with
/// passwords in URLs redacted.
pub fn print_effective(args: &ConfigArg) -> Result<(), CliError> {
    use crate::config::env;
    let path = super::config_path(args.config.as_deref());
    let text = std::fs::read_to_string(&path)
        .map_err(|e| CliError::user(format!("cannot read config {}: {e}", path.display())))?;
    let overrides =
        super::env_overrides().map_err(|e| CliError::user(format!("{}: {e}", path.display())))?;
    let mut table = crate::config::effective_table(&text, &overrides)
        .map_err(|e| CliError::user(format!("{}:{}", path.display(), e.0)))?;
    // Both are `section.option`.
    for (section, option) in env::SECRET.iter().filter_map(|o| o.split_once('.')) {
        if let Some(toml::Value::Table(t)) = table.get_mut(section)
            && let Some(toml::Value::String(s)) = t.get_mut(option)
        {
            *s = env::redact(s);
        }
    }
    println!("# The configuration in force: {}", path.display());
    for o in &overrides {
        println!("# {} from {}", o.option, o.var);
    }
    println!("# (options not listed take their defaults: README, Configuration)");
    print!(
        "{}",
        toml::to_string(&table).map_err(|e| CliError::user(e.to_string()))?
    );
    println!();
    Ok(())
}

/// `keygate migrate`: only the PostgreSQL store has a schema; a file store
/// needs nothing, which is said rather than silently ignored.
pub fn migrate(args: &ConfigArg, json: bool) -> Result<(), CliError> {
    let path = super::config_path(args.config.as_deref());
    let config = super::load_config(&path)?;
    match &config.keys.store {
        StoreLocation::File(p) if json => {
            println!(
                "{}",
                serde_json::json!({"store": "file", "path": p.display().to_string(), "migrated": false, "schema_version": null})
            );
            Ok(())
        }
        StoreLocation::File(p) => {
            println!(
                "{}: keys.store is a file ({}): there is no schema to migrate",
                path.display(),
                p.display()
            );
            Ok(())
        }
        StoreLocation::Postgres(_) => {
            let Store::Postgres(pg) = Store::open(&config.keys.store)
                .map_err(|e| CliError::user(format!("{}: {e}", path.display())))?
            else {
                return Err(CliError::user("keys.store is not a PostgreSQL URL"));
            };
            let (before, after) = pg.migrate()?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"store": pg.label(), "migrated": before != after, "from_version": before, "schema_version": after})
                );
            } else if before == after {
                println!(
                    "{}: schema already at version {after} (current): nothing to do",
                    pg.label()
                );
            } else {
                println!(
                    "{}: schema migrated from version {before} to {after}",
                    pg.label()
                );
            }
            debug_assert_eq!(after, schema::CURRENT);
            Ok(())
        }
    }
}

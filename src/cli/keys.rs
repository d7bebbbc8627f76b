//! `keygate keys ...`: create, list, show, update, delete, snippet, import.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::SystemTime;

use clap::{Args, Subcommand};
use serde_json::json;

use super::{CliError, snippet};
use crate::config::{Config, StoreLocation, parse_duration};
use crate::keys::record::{format_time, latest_time, normalize_origin, parse_time, validate_name};
use crate::keys::{Access, KeyHash, KeyId, KeyRecord, KeySetError, KeyUpdate, import, token};
use crate::store::{Store, StoreError};

#[derive(Debug, Args)]
pub struct KeysArgs {
    /// Config file [default: $KEYGATE_CONFIG, else config/keygate.toml]
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Key store to use instead of the config's: a file, or a postgres:// URL
    #[arg(long, value_name = "FILE|URL", global = true)]
    store: Option<PathBuf>,
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key; its secret is printed once, here, and never again.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = parse_access)]
        access: Access,
        /// Expiry: a date (2027-01-31) or an RFC 3339 time
        #[arg(long, conflicts_with = "expires_in")]
        expires: Option<String>,
        /// Expiry from now: 90d, 12h, ...
        #[arg(long)]
        expires_in: Option<String>,
        /// Browser origin allowed to use the key (repeatable)
        #[arg(long = "origin", value_name = "URL")]
        origins: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// List keys (never secrets or hashes).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one key.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Rename a key or change its access.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_parser = parse_access)]
        access: Option<Access>,
        /// Allow upgrading read-only to full-access
        #[arg(long)]
        force: bool,
    },
    /// Delete a key, irreversibly: its hash is added to the revocation list.
    Delete {
        id: String,
        /// Do not ask for confirmation
        #[arg(long)]
        yes: bool,
    },
    /// Print ready-to-paste code calling the API through the gateway with a key.
    Snippet {
        id: String,
        /// The gateway's URL as clients see it [default: from the config's listen address]
        #[arg(long, value_name = "URL")]
        gateway_url: Option<String>,
    },
    /// Import existing secrets: lines "secret<TAB>access<TAB>name"; only hashes are stored.
    Import {
        /// The file to import, or - for standard input
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn parse_access(s: &str) -> Result<Access, String> {
    s.parse()
}

/// What a keys command works on.
struct Target {
    store: Store,
    config: Option<Config>,
}

impl Target {
    fn prefix(&self) -> &str {
        self.config
            .as_ref()
            .map_or("kg", |c| c.keys.prefix.as_str())
    }
}

fn target(args: &KeysArgs) -> Result<Target, CliError> {
    let config_path = super::config_path(args.config.as_deref());
    let config = match (&args.store, &args.config) {
        // --store alone: use the config only if it is there (for the prefix and header).
        (Some(_), None) => config_path
            .exists()
            .then(|| super::load_config(&config_path))
            .transpose()?,
        _ => Some(super::load_config(&config_path)?),
    };
    let location = match (&args.store, &config) {
        (Some(path), _) => match path.to_str() {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                StoreLocation::Postgres(url.to_string())
            }
            _ => StoreLocation::File(path.clone()),
        },
        (None, Some(c)) => c.keys.store.clone(),
        (None, None) => {
            return Err(CliError::user(
                "no key store: pass --store FILE or --config FILE",
            ));
        }
    };
    let store = Store::open(&location).map_err(|e| match args.store {
        Some(_) => CliError::user(e.to_string().replace("keys.store", "--store")),
        None => CliError::from(e),
    })?;
    Ok(Target { store, config })
}

pub fn run(args: KeysArgs) -> Result<(), CliError> {
    let t = target(&args)?;
    let mut out = std::io::stdout().lock();
    match args.command {
        KeysCommand::Create {
            name,
            access,
            expires,
            expires_in,
            origins,
            json,
        } => create(
            &t, &mut out, name, access, expires, expires_in, origins, json,
        ),
        KeysCommand::List { json } => list(&t, &mut out, json),
        KeysCommand::Show { id, json } => show(&t, &mut out, &id, json),
        KeysCommand::Update {
            id,
            name,
            access,
            force,
        } => update(&t, &mut out, &id, name, access, force),
        KeysCommand::Delete { id, yes } => delete(&t, &mut out, &id, yes),
        KeysCommand::Snippet { id, gateway_url } => {
            let record = find(&t, &id)?;
            let url =
                gateway_url.unwrap_or_else(|| snippet::default_gateway_url(t.config.as_ref()));
            let header = t
                .config
                .as_ref()
                .map_or("x-api-key", |c| c.keys.header.as_str());
            write!(out, "{}", snippet::render(&record, &url, header))?;
            Ok(())
        }
        KeysCommand::Import { file, json } => import(&t, &mut out, &file, json),
    }
}

fn key_json(r: &KeyRecord) -> serde_json::Value {
    json!({
        "id": r.id.as_str(),
        "name": r.name,
        "access": r.access.as_str(),
        "created": format_time(r.created),
        "expires": r.expires.map(format_time),
        "origins": r.origins,
    })
}

#[allow(clippy::too_many_arguments)]
fn create(
    t: &Target,
    out: &mut impl Write,
    name: String,
    access: Access,
    expires: Option<String>,
    expires_in: Option<String>,
    origins: Vec<String>,
    json: bool,
) -> Result<(), CliError> {
    validate_name(&name).map_err(CliError::user)?;
    let now = SystemTime::now();
    let expires = match (expires, expires_in) {
        (Some(date), _) => {
            Some(parse_time(&date).map_err(|e| CliError::user(format!("--expires: {e}")))?)
        }
        (None, Some(d)) => {
            let d = parse_duration(&d).map_err(|e| CliError::user(format!("--expires-in: {e}")))?;
            Some(now.checked_add(d).unwrap_or_else(latest_time))
        }
        (None, None) => None,
    };
    if expires.is_some_and(|e| e <= now) {
        return Err(CliError::user("--expires is in the past"));
    }
    if expires.is_some_and(|e| e > latest_time()) {
        return Err(CliError::user("the expiry must be before the year 10000"));
    }
    let origins = origins
        .iter()
        .map(|o| normalize_origin(o).map_err(|e| CliError::user(format!("--origin: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let (record, secret) = create_key(&t.store, t.prefix(), name, access, expires, origins, now)?;
    if json {
        let mut v = key_json(&record);
        v["key"] = json!(secret);
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "Created {} key {} ({:?}).",
            record.access, record.id, record.name
        )?;
        writeln!(out)?;
        writeln!(out, "    {secret}")?;
        writeln!(out)?;
        writeln!(
            out,
            "Store this key now: it is shown only this once (keygate keeps only its hash)."
        )?;
        if access == Access::FullAccess {
            writeln!(
                out,
                "It is a full-access key: use it from backend systems only, never in a browser or an app."
            )?;
        }
        writeln!(out, "Code to use it: keygate keys snippet {}", record.id)?;
    }
    Ok(())
}

/// Generates a secret and stores a new key under a fresh id; returns the
/// record and the secret (which exists nowhere else from here on).
pub(super) fn create_key(
    store: &Store,
    prefix: &str,
    name: String,
    access: Access,
    expires: Option<SystemTime>,
    origins: Vec<String>,
    now: SystemTime,
) -> Result<(KeyRecord, String), CliError> {
    let secret = token::generate(prefix)
        .map_err(|e| CliError::user(format!("the OS random number generator failed: {e}")))?;
    let hash = KeyHash::of(secret.as_bytes());
    let record = store.modify_keys(&[], |keys, revoked| {
        let id = loop {
            let id = KeyId::generate()
                .map_err(|e| StoreError::Key(KeySetError::Randomness(e.to_string())))?;
            if !keys.contains_id(&id) {
                break id;
            }
        };
        if revoked.contains(&hash) {
            // 178 random bits never collide; this guards against a broken RNG.
            return Err(StoreError::Key(KeySetError::DuplicateHash {
                existing_id: "a revoked key".into(),
            }));
        }
        let record = KeyRecord {
            id,
            name,
            access,
            hash,
            created: now,
            expires,
            origins,
        };
        keys.add(record.clone())?;
        Ok(record)
    })?;
    Ok((record, secret))
}

fn load(t: &Target) -> Result<crate::keys::KeySet, CliError> {
    Ok(t.store.load()?.keys)
}

fn find(t: &Target, id: &str) -> Result<KeyRecord, CliError> {
    t.store
        .find(id)?
        .ok_or_else(|| CliError::user(format!("no key with id {id:?} in {}", t.store.label())))
}

fn list(t: &Target, out: &mut impl Write, json: bool) -> Result<(), CliError> {
    let keys = load(t)?;
    if json {
        let all: Vec<_> = keys.records().iter().map(key_json).collect();
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
        "{:<32}  {:<11}  {:<20}  {:<20}  NAME",
        "ID", "ACCESS", "CREATED", "EXPIRES"
    )?;
    for r in keys.records() {
        let expires = r.expires.map_or_else(|| "-".to_string(), format_time);
        writeln!(
            out,
            "{:<32}  {:<11}  {:<20}  {:<20}  {}",
            r.id,
            r.access,
            format_time(r.created),
            expires,
            r.name
        )?;
    }
    Ok(())
}

fn show(t: &Target, out: &mut impl Write, id: &str, json: bool) -> Result<(), CliError> {
    let r = find(t, id)?;
    if json {
        writeln!(out, "{}", key_json(&r))?;
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
        "hash:     {} (BLAKE3, fingerprint)",
        r.hash.fingerprint()
    )?;
    Ok(())
}

fn update(
    t: &Target,
    out: &mut impl Write,
    id: &str,
    name: Option<String>,
    access: Option<Access>,
    force: bool,
) -> Result<(), CliError> {
    if name.is_none() && access.is_none() {
        return Err(CliError::usage(
            "keys update: nothing to change: pass --name and/or --access",
        ));
    }
    if let Some(n) = &name {
        validate_name(n).map_err(CliError::user)?;
    }
    let record = t.store.modify_keys(&[id], |keys, _| {
        Ok(keys.update(id, KeyUpdate { name, access }, force)?.clone())
    })?;
    writeln!(
        out,
        "Updated key {}: {:?}, {}.",
        record.id, record.name, record.access
    )?;
    Ok(())
}

fn delete(t: &Target, out: &mut impl Write, id: &str, yes: bool) -> Result<(), CliError> {
    let record = find(t, id)?;
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(CliError::user(format!(
                "deleting {id} cannot be undone: pass --yes to confirm when not on a terminal"
            )));
        }
        eprint!(
            "Delete {} key {} ({:?})? It will never work again. [y/N] ",
            record.access, record.id, record.name
        );
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Err(CliError::user("not deleted"));
        }
    }
    let removed = t.store.delete(id)?;
    writeln!(
        out,
        "Deleted key {} ({:?}); its hash is on the revocation list.",
        removed.id, removed.name
    )?;
    Ok(())
}

fn import(
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
    let imported = import::parse_import(&text, t.prefix(), now, || {
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
    if json {
        writeln!(out, "{}", serde_json::Value::Array(summary))?;
    } else {
        writeln!(out, "Imported {count} key(s) into {}.", t.store.label())?;
    }
    Ok(())
}

//! `keygate tokens create|list|delete`: admin tokens for the admin API and
//! console. A token is printed once, at creation; only its hash is kept.

use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use clap::{Args, Subcommand};
use serde_json::json;

use super::CliError;
use crate::keys::record::format_time;
use crate::keys::tokens::{AdminToken, Role, TOKEN_PREFIX, validate_token_name};
use crate::keys::{KeyHash, token};
use crate::store::{Audit, AuditEvent, StoreError, Tokens};

#[derive(Debug, Args)]
pub struct TokensArgs {
    /// Config file [default: $KEYGATE_CONFIG, else config/keygate.toml]
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: TokensCommand,
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// Create an admin token; it is printed once, here, and never again.
    Create {
        #[arg(long)]
        name: String,
        /// viewer (reads only, the default) or admin (everything)
        #[arg(long, default_value = "viewer", value_parser = parse_role)]
        role: Role,
        #[arg(long)]
        json: bool,
    },
    /// List admin tokens (names and roles, never tokens or hashes).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete an admin token: it stops working at once (sessions too).
    Delete {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

/// The operator running the CLI, for the audit trail.
pub fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

/// Records a CLI change in the store's audit trail; a failure to record is
/// a warning (the change is done).
pub fn audit(log: &Audit, action: &str, key_id: Option<&str>, changes: serde_json::Value) {
    let event = AuditEvent {
        time: format_time(SystemTime::now()),
        actor: cli_actor(),
        action: action.to_string(),
        key_id: key_id.map(str::to_string),
        client: None,
        changes: match changes {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        },
    };
    if let Err(e) = log.append(&event) {
        eprintln!("keygate: warning: the change is done but not in the audit trail: {e}");
    }
}

/// The token file and the audit trail a tokens command works on.
fn files(args: &TokensArgs) -> Result<(Tokens, Audit), CliError> {
    let config = super::load_config(&super::config_path(args.config.as_deref()))?;
    let store = crate::store::Store::open(&config.keys.store)?;
    // A file store without [admin]: admin.tokens beside the store.
    let path = match (&config.admin, &config.keys.store) {
        (Some(a), _) => a.tokens.clone(),
        (None, crate::config::StoreLocation::File(p)) => p.with_file_name("admin.tokens"),
        (None, crate::config::StoreLocation::Postgres(_)) => std::path::PathBuf::new(),
    };
    Ok((store.tokens(path), store.audit()))
}

pub fn run(args: TokensArgs) -> Result<(), CliError> {
    let (file, log) = files(&args)?;
    let mut out = std::io::stdout().lock();
    match args.command {
        TokensCommand::Create { name, role, json } => {
            validate_token_name(&name).map_err(CliError::user)?;
            let secret = token::generate(TOKEN_PREFIX).map_err(|e| {
                CliError::user(format!("the OS random number generator failed: {e}"))
            })?;
            let created = SystemTime::now();
            let token = AdminToken {
                name: name.clone(),
                role,
                hash: KeyHash::of(secret.as_bytes()),
                created,
            };
            file.modify(|tokens| {
                if tokens.iter().any(|t| t.name == name) {
                    return Err(StoreError::Refused(format!(
                        "there is already an admin token named {name:?}"
                    )));
                }
                tokens.push(token);
                Ok(())
            })?;
            audit(
                &log,
                "token.create",
                None,
                json!({"name": name, "role": role.as_str()}),
            );
            if json {
                writeln!(
                    out,
                    "{}",
                    json!({"name": name, "role": role.as_str(), "created": format_time(created), "token": secret})
                )?;
            } else {
                writeln!(out, "Created {role} token {name:?}.\n\n    {secret}\n")?;
                writeln!(
                    out,
                    "Store it now: it is shown only this once (keygate keeps only its hash). Sign in to the console with it, or send it as Authorization: Bearer <token>."
                )?;
            }
        }
        TokensCommand::List { json } => {
            let tokens = file.load()?;
            if json {
                let list: Vec<_> = tokens
                    .iter()
                    .map(|t| json!({"name": t.name, "role": t.role.as_str(), "created": format_time(t.created)}))
                    .collect();
                writeln!(out, "{}", serde_json::Value::Array(list))?;
            } else {
                writeln!(out, "{:<32} {:<8} CREATED", "NAME", "ROLE")?;
                for t in &tokens {
                    writeln!(
                        out,
                        "{:<32} {:<8} {}",
                        t.name,
                        t.role,
                        format_time(t.created)
                    )?;
                }
            }
        }
        TokensCommand::Delete { name, json } => {
            file.modify(|tokens| {
                let before = tokens.len();
                tokens.retain(|t| t.name != name);
                if tokens.len() == before {
                    return Err(StoreError::Refused(format!(
                        "no admin token named {name:?}"
                    )));
                }
                Ok(())
            })?;
            audit(&log, "token.delete", None, json!({"name": name}));
            if json {
                writeln!(out, "{}", json!({"name": name, "deleted": true}))?;
            } else {
                writeln!(out, "Deleted admin token {name:?}: it no longer works.")?;
            }
        }
    }
    Ok(())
}

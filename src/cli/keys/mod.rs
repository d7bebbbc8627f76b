//! `keygate keys ...`: the argument shapes, the store they act on, and one
//! file per subcommand (create, show for list/show, update, delete, import;
//! snippet is a few lines here).

mod create;
mod delete;
mod import;
mod rotate;
mod show;
mod update;

pub(crate) use create::{KeyTemplate, create_key};

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CliError, snippet};
use crate::config::{Config, StoreLocation};
use crate::keys::{Access, KeyRecord, KeyUpdate, RateLimit, UsageSample};
use crate::store::Store;

#[derive(Debug, Args)]
pub struct KeysArgs {
    /// Config file [default: $KEYGATE_CONFIG, else config/keygate.toml]
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Key store to use instead of the config's: a file, or a postgres:// URL
    #[arg(
        long,
        value_name = "FILE|URL",
        global = true,
        conflicts_with = "store_env"
    )]
    store: Option<PathBuf>,
    /// The name of an environment variable holding the store location, so
    /// that a database password never needs to be on a command line
    #[arg(long, value_name = "VAR", global = true)]
    store_env: Option<String>,
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key; its secret is printed once, here, and never again.
    Create {
        #[command(flatten)]
        key: create::NewKey,
        #[arg(long)]
        json: bool,
    },
    /// List keys (never secrets or hashes).
    List {
        #[arg(long)]
        json: bool,
        /// Only keys of this access
        #[arg(long, value_parser = access_parser())]
        access: Option<Access>,
        /// Only keys that expire within this time from now (or have expired): 30d, 12h
        #[arg(long, value_name = "DURATION", value_parser = parse_span)]
        expiring_within: Option<std::time::Duration>,
        /// Only keys with no recorded use (nor creation) for this long: 90d
        #[arg(long, value_name = "DURATION", value_parser = parse_span)]
        unused_for: Option<std::time::Duration>,
    },
    /// Show one key.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Rename a key, change its access or its rate limit.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_parser = access_parser())]
        access: Option<Access>,
        /// N/s, N/min or N/h; "none" removes the key's own limit
        #[arg(long, value_name = "N/UNIT|none", value_parser = parse_rate_limit_or_none)]
        rate_limit: Option<NewLimit>,
        /// Allow upgrading read-only to full-access
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete a key, irreversibly: its hash is added to the revocation list.
    Delete {
        id: String,
        /// Do not ask for confirmation
        #[arg(long)]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
    /// Give a key a new secret, printed once; the current one keeps working
    /// until the grace period ends, then is refused and revoked.
    Rotate {
        id: String,
        /// How long the current secret keeps working: 24h, 7d, 0s (not at all)
        #[arg(long, default_value = "24h")]
        grace: String,
        #[arg(long)]
        json: bool,
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

/// `--access`: its values listed in `--help` and in the error for a typo.
pub(super) fn access_parser() -> impl clap::builder::TypedValueParser<Value = Access> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["read-only", "full-access"])
        .try_map(|s: String| s.parse::<Access>())
}

pub(super) fn parse_rate_limit(s: &str) -> Result<RateLimit, String> {
    s.parse()
}

/// `--rate-limit` of `keys update`: a limit, or `none` to remove the key's own.
#[derive(Debug, Clone, Copy)]
struct NewLimit(Option<RateLimit>);

fn parse_rate_limit_or_none(s: &str) -> Result<NewLimit, String> {
    if s == "none" {
        return Ok(NewLimit(None));
    }
    s.parse().map(|l| NewLimit(Some(l)))
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

fn parse_span(s: &str) -> Result<std::time::Duration, String> {
    crate::config::parse_duration(s)
}

fn target(args: &KeysArgs) -> Result<Target, CliError> {
    let from_env = match &args.store_env {
        None => None,
        Some(var) => Some(PathBuf::from(std::env::var(var).map_err(|_| {
            CliError::user(format!("--store-env names ${var}, which is not set"))
        })?)),
    };
    let store_arg = args.store.clone().or(from_env);
    let config_path = super::config_path(args.config.as_deref());
    let config = match (&store_arg, &args.config) {
        // --store alone: use the config only if it is there (for the prefix and header).
        (Some(_), None) => config_path
            .exists()
            .then(|| super::load_config(&config_path))
            .transpose()?,
        _ => Some(super::load_config(&config_path)?),
    };
    let location = match (&store_arg, &config) {
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
    let store = Store::open(&location).map_err(|e| match store_arg {
        Some(_) => CliError::user(e.to_string().replace("keys.store", "--store")),
        None => CliError::from(e),
    })?;
    Ok(Target { store, config })
}

pub fn run(args: KeysArgs) -> Result<(), CliError> {
    let t = target(&args)?;
    let mut out = std::io::stdout().lock();
    match args.command {
        KeysCommand::Create { key, json } => create::create(&t, &mut out, key, json),
        KeysCommand::List {
            json,
            access,
            expiring_within,
            unused_for,
        } => {
            let filter = show::ListFilter {
                access,
                expiring_within,
                unused_for,
            };
            show::list(&t, &mut out, json, &filter)
        }
        KeysCommand::Show { id, json } => show::show(&t, &mut out, &id, json),
        KeysCommand::Update {
            id,
            name,
            access,
            rate_limit,
            force,
            json,
        } => update::update(
            &t,
            &mut out,
            &id,
            KeyUpdate {
                name,
                access,
                rate_limit: rate_limit.map(|l| l.0),
                ..KeyUpdate::default()
            },
            force,
            json,
        ),
        KeysCommand::Delete { id, yes, json } => delete::delete(&t, &mut out, &id, yes, json),
        KeysCommand::Rotate { id, grace, json } => rotate::rotate(&t, &mut out, &id, &grace, json),
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
        KeysCommand::Import { file, json } => import::import(&t, &mut out, &file, json),
    }
}

/// A new secret, set apart, with the warning that it is shown only once.
fn print_secret(out: &mut impl Write, secret: &str) -> std::io::Result<()> {
    writeln!(out)?;
    writeln!(out, "    {secret}")?;
    writeln!(out)?;
    writeln!(
        out,
        "Store this key now: it is shown only this once (keygate keeps only its hash)."
    )
}

pub(super) use crate::keys::json::key_json;

/// The recorded use of every key. Usage is a help, not the store: if it
/// cannot be read, the command goes on without it and says so once.
fn usage(t: &Target) -> HashMap<String, UsageSample> {
    t.store.usage().unwrap_or_else(|e| {
        eprintln!("keygate: warning: key usage not shown: {e}");
        HashMap::new()
    })
}

fn load(t: &Target) -> Result<crate::keys::KeySet, CliError> {
    Ok(t.store.load()?.keys)
}

fn find(t: &Target, id: &str) -> Result<KeyRecord, CliError> {
    t.store.find(id)?.ok_or_else(|| {
        let missing = crate::keys::KeySetError::NotFound(id.to_string());
        CliError::not_found(format!("{missing} in {}", t.store.label()))
    })
}

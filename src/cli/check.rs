//! `keygate check`: validates the config and the key store, naming file, line
//! and field for every problem.

use super::{CliError, ConfigArg};
use crate::config::{self, Config, StoreLocation};
use crate::keys::{Access, FileStore, KeyIndex};

pub fn run(args: &ConfigArg) -> Result<(), CliError> {
    let path = config::resolve_path(args.config.as_deref());
    let config = Config::load(&path)?;
    // The same loading `serve` does: PEM files parsed, key matched to the
    // certificate, upstream CA read.
    if let Some(tls) = &config.server.tls {
        crate::server::tls::CertResolver::load(tls)
            .map_err(|e| CliError::user(format!("{}: {e}", path.display())))?;
    }
    crate::proxy::upstream::Upstream::new(&config.upstream)
        .map_err(|e| CliError::user(format!("{}: {e}", path.display())))?;
    let store = match &config.keys.store {
        StoreLocation::File(p) => FileStore::new(p.clone()),
        StoreLocation::Postgres(_) => {
            return Err(CliError::user(
                "the PostgreSQL store is not supported by this build yet",
            ));
        }
    };
    let snapshot = store.load()?;
    let index = KeyIndex::build(&snapshot);
    println!("{}: ok", path.display());
    println!(
        "{}: ok, {} key(s): {} read-only, {} full-access; {} revoked hash(es){}",
        store.path().display(),
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

/// `keygate migrate`: only the PostgreSQL store has a schema; a file store
/// needs nothing, which is said rather than silently ignored.
pub fn migrate(args: &ConfigArg) -> Result<(), CliError> {
    let path = config::resolve_path(args.config.as_deref());
    let config = Config::load(&path)?;
    match &config.keys.store {
        StoreLocation::File(p) => {
            println!(
                "{}: keys.store is a file ({}): there is no schema to migrate",
                path.display(),
                p.display()
            );
            Ok(())
        }
        StoreLocation::Postgres(_) => Err(CliError::user(
            "the PostgreSQL store is not supported by this build yet",
        )),
    }
}

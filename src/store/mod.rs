//! The key stores: where keys live between runs, and the only module that
//! reads or writes them. `FileStore` is the embedded TOML file (with the
//! revocation list beside it); `PgStore` the shared PostgreSQL store for
//! fleets. The CLI, `check` and the gateway's reloaders reach either through
//! `Store`. Never called on the request path: requests read the in-memory
//! `keys::KeyIndex` that `reload` publishes.

pub mod audit;
mod file;
pub mod postgres;
mod tokens;

use std::collections::HashSet;
use std::io;
use std::path::PathBuf;

pub use crate::config::StoreLocation;
pub use crate::keys::StoreSnapshot;
use crate::keys::storefile::FileError;
use crate::keys::{KeyHash, KeyRecord, KeySet, KeySetError};
pub use audit::{Audit, AuditEvent, AuditLog};
pub use file::{FileStore, read_text};
pub use postgres::PgStore;
pub use tokens::{TokenFile, Tokens};

/// A store failure, worded for an operator.
#[derive(Debug)]
pub enum StoreError {
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    Invalid {
        path: PathBuf,
        error: FileError,
    },
    Key(KeySetError),
    /// The PostgreSQL store: message already names the store and the action.
    Database(String),
    /// The store's location cannot be used (a PostgreSQL URL that does not
    /// parse); the message never repeats the URL.
    Location(String),
    /// A request the store refuses (a duplicate token name, an unknown
    /// token): the message says which.
    Refused(String),
    /// A batch (import) refused at the item from this input line.
    Batch {
        line: usize,
        error: KeySetError,
    },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Io {
                path,
                action,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
            StoreError::Invalid { path, error } => write!(f, "{}:{error}", path.display()),
            StoreError::Key(e) => write!(f, "{e}"),
            StoreError::Database(msg) => f.write_str(msg),
            StoreError::Location(msg) => write!(f, "keys.store: {msg}"),
            StoreError::Refused(msg) => f.write_str(msg),
            StoreError::Batch { line, error } => write!(f, "line {line}: {error}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<KeySetError> for StoreError {
    fn from(e: KeySetError) -> Self {
        StoreError::Key(e)
    }
}

/// A new key's fields, validated.
#[derive(Debug, Clone)]
pub struct KeyTemplate {
    pub name: String,
    pub access: crate::keys::Access,
    pub expires: Option<std::time::SystemTime>,
    pub origins: Vec<String>,
    pub rate_limit: Option<crate::keys::RateLimit>,
}

/// The store seam: the CLI, `check` and `serve` take either store through it.
#[derive(Debug, Clone)]
pub enum Store {
    File(FileStore),
    Postgres(Box<PgStore>),
}

impl Store {
    /// The store named by the config (or `--store`). Opens nothing yet: a
    /// file is read, a database connected to, by each operation.
    pub fn open(location: &StoreLocation) -> Result<Store, StoreError> {
        Ok(match location {
            StoreLocation::File(p) => Store::File(FileStore::new(p.clone())),
            StoreLocation::Postgres(url) => Store::Postgres(Box::new(
                PgStore::from_url(url).map_err(StoreError::Location)?,
            )),
        })
    }

    /// The file's path or `postgres://user@host:port/db`, for messages.
    pub fn label(&self) -> String {
        match self {
            Store::File(f) => f.path().display().to_string(),
            Store::Postgres(p) => p.label().to_string(),
        }
    }

    pub fn load(&self) -> Result<StoreSnapshot, StoreError> {
        match self {
            Store::File(f) => f.load(),
            Store::Postgres(p) => p.load(),
        }
    }

    /// One key by id.
    pub fn find(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        match self {
            Store::File(f) => Ok(f.load()?.keys.get(id).cloned()),
            Store::Postgres(p) => p.find(id),
        }
    }

    /// Applies a pure change to the keys atomically; see each store's `modify`.
    pub fn modify<T>(
        &self,
        change: impl FnOnce(&mut KeySet, &HashSet<KeyHash>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match self {
            Store::File(f) => f.modify(change),
            Store::Postgres(p) => p.modify(None, change),
        }
    }

    /// Like `modify`, for a change that reads or touches only the keys
    /// `ids` (none, for a new key). The file store still reads the whole
    /// file; the database store reads only those rows, and leaves the
    /// uniqueness of a new id or hash, and the refusal of a revoked hash, to
    /// the schema's constraints and triggers (so the revoked set passed to
    /// `change` is empty there).
    pub fn modify_keys<T>(
        &self,
        ids: &[&str],
        change: impl FnOnce(&mut KeySet, &HashSet<KeyHash>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match self {
            Store::File(f) => f.modify(change),
            Store::Postgres(p) => p.modify(Some(ids), change),
        }
    }

    /// Every key's recorded usage, by id: `keys.usage` beside a file store
    /// (what its gateway wrote), or the fleet's, merged, from PostgreSQL.
    pub fn usage(
        &self,
    ) -> Result<std::collections::HashMap<String, crate::keys::UsageSample>, StoreError> {
        Ok(match self {
            Store::File(f) => f.load_usage()?,
            Store::Postgres(p) => p.usage()?,
        }
        .into_iter()
        .collect())
    }

    /// Gives a key a new secret (its hash); the current one stays valid
    /// until `until` (`None`: no grace), an earlier previous one ends now.
    /// See `KeySet::rotate`.
    pub fn rotate(
        &self,
        id: &str,
        new_hash: KeyHash,
        until: Option<std::time::SystemTime>,
        now: std::time::SystemTime,
    ) -> Result<KeyRecord, StoreError> {
        match self {
            Store::File(f) => f.rotate(id, new_hash, until, now),
            Store::Postgres(p) => p.rotate(id, new_hash, until, now),
        }
    }

    /// Generates a secret and stores a new key under a fresh id; returns
    /// the record and the secret (which exists nowhere else from here on).
    /// The one way keys are created, by the CLI and the admin API alike.
    pub fn create_key(
        &self,
        prefix: &str,
        template: KeyTemplate,
        now: std::time::SystemTime,
    ) -> Result<(KeyRecord, String), StoreError> {
        let KeyTemplate {
            name,
            access,
            expires,
            origins,
            rate_limit,
        } = template;
        let secret = crate::keys::token::generate(prefix)
            .map_err(|e| StoreError::Key(KeySetError::Randomness(e.to_string())))?;
        let hash = KeyHash::of(secret.as_bytes());
        let record = self.modify_keys(&[], |keys, revoked| {
            let id = loop {
                let id = crate::keys::KeyId::generate()
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
                previous: None,
                rate_limit,
            };
            keys.add(record.clone())?;
            Ok(record)
        })?;
        Ok((record, secret))
    }

    /// Rotates a key to a freshly generated secret (see `rotate`); the
    /// current one stays valid for `grace` (zero: not at all). Returns the
    /// record and the new secret. The CLI and the admin API both rotate here.
    pub fn rotate_key(
        &self,
        prefix: &str,
        id: &str,
        grace: std::time::Duration,
        now: std::time::SystemTime,
    ) -> Result<(KeyRecord, String), StoreError> {
        let until = (!grace.is_zero()).then(|| {
            now.checked_add(grace)
                .unwrap_or_else(crate::keys::record::latest_time)
        });
        let secret = crate::keys::token::generate(prefix)
            .map_err(|e| StoreError::Key(KeySetError::Randomness(e.to_string())))?;
        let record = self.rotate(id, KeyHash::of(secret.as_bytes()), until, now)?;
        Ok((record, secret))
    }

    /// Where changes are recorded: `audit.log` beside a file store, the
    /// `keygate_audit` table of a PostgreSQL store.
    pub fn audit(&self) -> Audit {
        match self {
            Store::File(f) => Audit::File(AuditLog::beside(f.path())),
            Store::Postgres(p) => Audit::Postgres(p.clone()),
        }
    }

    /// Where admin tokens live: `file` for a file store (`[admin] tokens`,
    /// `admin.tokens` beside the store by default), a table for PostgreSQL.
    pub fn tokens(&self, file: std::path::PathBuf) -> Tokens {
        match self {
            Store::File(_) => Tokens::File(TokenFile::new(file)),
            Store::Postgres(p) => Tokens::Postgres(p.clone()),
        }
    }

    /// Deletes a key and revokes its hash, irreversibly.
    pub fn delete(&self, id: &str) -> Result<KeyRecord, StoreError> {
        match self {
            Store::File(f) => f.delete(id),
            Store::Postgres(p) => p.modify(Some(&[id]), |keys, _| Ok(keys.remove(id)?)),
        }
    }
}

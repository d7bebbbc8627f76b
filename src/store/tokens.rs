//! The admin token file (`admin.tokens`): read on every admin request, so a
//! token created or deleted by the CLI counts at once; written like the key
//! store (lock, temp file, fsync, rename, mode 0600).

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::StoreError;
use super::file::{read_text, write_atomic};
use crate::keys::KeyHash;
use crate::keys::tokens::{AdminToken, parse_tokens, render_tokens};

#[derive(Debug, Clone)]
pub struct TokenFile {
    path: PathBuf,
}

impl TokenFile {
    pub fn new(path: impl Into<PathBuf>) -> TokenFile {
        TokenFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every token; none when the file does not exist yet.
    pub fn load(&self) -> Result<Vec<AdminToken>, StoreError> {
        if !self.path.exists() {
            return Ok(Vec::new());
        }
        let text = read_text(&self.path)?;
        parse_tokens(&text).map_err(|error| StoreError::Invalid {
            path: self.path.clone(),
            error,
        })
    }

    /// The token with this hash, if any.
    pub fn find(&self, hash: &KeyHash) -> Result<Option<AdminToken>, StoreError> {
        Ok(self.load()?.into_iter().find(|t| t.hash == *hash))
    }

    /// Changes the tokens under the file's lock and writes them atomically;
    /// nothing is written if `change` fails.
    pub fn modify<T>(
        &self,
        change: impl FnOnce(&mut Vec<AdminToken>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let lock_path = self.path.with_extension("tokens.lock");
        let io_err = |source| StoreError::Io {
            path: lock_path.clone(),
            action: "lock",
            source,
        };
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err)?;
        lock.lock().map_err(io_err)?;
        let mut tokens = self.load()?;
        let out = change(&mut tokens)?;
        let text = render_tokens(&tokens).map_err(|e| StoreError::Io {
            path: self.path.clone(),
            action: "render",
            source: std::io::Error::other(e),
        })?;
        write_atomic(&self.path, &text)?;
        Ok(out)
    }
}

/// Where admin tokens live: `admin.tokens` for a file store, a table for
/// PostgreSQL (so one console serves a fleet).
#[derive(Debug, Clone)]
pub enum Tokens {
    File(TokenFile),
    Postgres(Box<super::PgStore>),
}

impl Tokens {
    pub fn label(&self) -> String {
        match self {
            Tokens::File(f) => f.path().display().to_string(),
            Tokens::Postgres(p) => format!("{} (keygate_admin_tokens)", p.label()),
        }
    }

    pub fn load(&self) -> Result<Vec<AdminToken>, StoreError> {
        match self {
            Tokens::File(f) => f.load(),
            Tokens::Postgres(p) => p.tokens(),
        }
    }

    pub fn find(&self, hash: &KeyHash) -> Result<Option<AdminToken>, StoreError> {
        Ok(self.load()?.into_iter().find(|t| t.hash == *hash))
    }

    pub fn modify<T>(
        &self,
        change: impl FnOnce(&mut Vec<AdminToken>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match self {
            Tokens::File(f) => f.modify(change),
            Tokens::Postgres(p) => p.modify_tokens(change),
        }
    }
}

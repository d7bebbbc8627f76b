//! The audit trail: one JSON line per change to the keys or the admin
//! tokens (by the admin API, the console or the CLI), appended to
//! `audit.log` beside the key store and never rewritten. Never a secret or
//! a hash: who, what, which key, from where, and which fields changed.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::StoreError;

/// One change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// RFC 3339, UTC, whole seconds.
    pub time: String,
    /// The admin token's name, or `cli:<OS user>`.
    pub actor: String,
    /// `key.create`, `key.update`, `key.delete`, `key.rotate`, `key.import`,
    /// `token.create`, `token.delete`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The client address (admin API), absent for the CLI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Field name to new value (old values where they matter: access).
    #[serde(default)]
    pub changes: serde_json::Map<String, serde_json::Value>,
}

/// The most of the log's tail read to list events: a bound on what one
/// request reads, however long the log grows.
const READ_TAIL_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    /// `audit.log` in the folder of the key store file `store`.
    pub fn beside(store: &Path) -> AuditLog {
        AuditLog {
            path: store.with_file_name("audit.log"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event as one line (a single write on an `O_APPEND`
    /// file, so concurrent writers never interleave) and syncs it.
    pub fn append(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let io_err = |source| StoreError::Io {
            path: self.path.clone(),
            action: "append to",
            source,
        };
        let mut line =
            serde_json::to_string(event).map_err(|e| io_err(std::io::Error::other(e)))?;
        line.push('\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(io_err)?;
        file.write_all(line.as_bytes()).map_err(io_err)?;
        file.sync_data().map_err(io_err)
    }

    /// The newest `limit` events, newest first (from the last 4 MiB of the
    /// log; a line that does not parse is skipped).
    pub fn newest(&self, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let io_err = |source| StoreError::Io {
            path: self.path.clone(),
            action: "read",
            source,
        };
        let mut file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(e)),
        };
        let len = file.metadata().map_err(io_err)?.len();
        let start = len.saturating_sub(READ_TAIL_BYTES);
        file.seek(SeekFrom::Start(start)).map_err(io_err)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_err)?;
        let text = String::from_utf8_lossy(&bytes);
        let mut lines: Vec<&str> = text.lines().collect();
        if start > 0 && !lines.is_empty() {
            // The first line was cut by the window.
            lines.remove(0);
        }
        Ok(lines
            .iter()
            .rev()
            .filter_map(|l| serde_json::from_str(l).ok())
            .take(limit)
            .collect())
    }
}

/// Where the audit trail lives: `audit.log` beside a file store, a table
/// for PostgreSQL.
#[derive(Debug, Clone)]
pub enum Audit {
    File(AuditLog),
    Postgres(Box<super::PgStore>),
}

impl Audit {
    pub fn append(&self, event: &AuditEvent) -> Result<(), StoreError> {
        match self {
            Audit::File(f) => f.append(event),
            Audit::Postgres(p) => p.append_audit(event),
        }
    }

    pub fn newest(&self, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        match self {
            Audit::File(f) => f.newest(limit),
            Audit::Postgres(p) => p.audit(limit),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_appended_and_read_newest_first() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let log = AuditLog::beside(&dir.path().join("keys.toml"));
        assert_eq!(log.newest(10).map(|e| e.len()).ok(), Some(0));
        for i in 0..5 {
            let event = AuditEvent {
                time: format!("2026-11-30T12:00:0{i}Z"),
                actor: "alice".into(),
                action: "key.create".into(),
                key_id: Some(format!("key_{i}")),
                client: None,
                changes: serde_json::Map::new(),
            };
            log.append(&event).unwrap_or_else(|e| panic!("{e}"));
        }
        let events = log.newest(2).unwrap_or_else(|e| panic!("{e}"));
        let ids: Vec<_> = events.iter().filter_map(|e| e.key_id.clone()).collect();
        assert_eq!(ids, vec!["key_4".to_string(), "key_3".to_string()]);
    }
}

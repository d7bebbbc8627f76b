//! The local snapshot of a PostgreSQL store (`keys.snapshot`): a copy of the
//! last loaded index in file-store format, with its `.revoked` beside it, so
//! that a gateway can start while the database is away and remembers every
//! revocation it has seen across restarts. `PgSync` mirrors what it applies
//! here and asks for writes; this module decides when and does the I/O, on
//! the blocking pool, one write at a time.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::keys::{IndexDelta, KeyHash, KeyRecord, KeySet, StoreSnapshot};
use crate::store::{FileStore, StoreError};

/// The file written, the keys it mirrors (by hash), and whether the mirror
/// changed since the last write.
pub(super) struct LocalSnapshot {
    file: FileStore,
    max_age: Duration,
    /// By id: a rotation changes a key's hash, not its id.
    keys: HashMap<String, KeyRecord>,
    dirty: bool,
    /// A revocation is waiting: write without waiting for the interval.
    urgent: bool,
    written: Option<Instant>,
    in_flight: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
}

/// What the snapshot held at start.
pub(super) struct StartRead {
    pub revoked: Result<HashSet<KeyHash>, StoreError>,
    /// The file's age, if it exists.
    pub age: Option<Duration>,
    /// The keys, if the file is young enough to serve from.
    pub keys: Option<Result<StoreSnapshot, StoreError>>,
}

impl LocalSnapshot {
    pub fn new(path: PathBuf, max_age: Duration) -> Self {
        LocalSnapshot {
            file: FileStore::new(path),
            max_age,
            keys: HashMap::new(),
            dirty: false,
            urgent: false,
            written: None,
            in_flight: Arc::default(),
            failed: Arc::default(),
        }
    }

    pub fn path(&self) -> String {
        self.file.path().display().to_string()
    }

    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// Reads the revocation list, and the keys if the file is at most
    /// `max_age` old. The revocation list is read on its own first, so even
    /// a snapshot too old or unreadable to serve from still adds every
    /// revocation it holds.
    pub async fn read(&self) -> Option<StartRead> {
        let file = self.file.clone();
        let max_age = self.max_age;
        tokio::task::spawn_blocking(move || {
            let revoked = file.load_revoked();
            let age = std::fs::metadata(file.path())
                .and_then(|m| m.modified())
                .map(|t| t.elapsed().unwrap_or_default())
                .ok();
            let keys = age.filter(|a| *a <= max_age).map(|_| file.load());
            StartRead { revoked, age, keys }
        })
        .await
        .ok()
    }

    /// Writes the snapshot if it changed: at once for a revocation (it must
    /// survive a restart) or when `now`, else at most once per `interval`.
    /// The write runs detached on the blocking pool, one at a time; a failed
    /// write leaves the snapshot marked for the next try.
    pub fn write(&mut self, revoked: &HashSet<KeyHash>, interval: Duration, now: bool) {
        let due = now || self.urgent || self.written.is_none_or(|t| t.elapsed() >= interval);
        if !self.dirty || !due || self.in_flight.load(Ordering::Acquire) {
            return;
        }
        self.dirty = false;
        self.urgent = false;
        self.written = Some(Instant::now());
        self.in_flight.store(true, Ordering::Release);
        let mut records: Vec<KeyRecord> = self.keys.values().cloned().collect();
        let revoked = revoked.clone();
        let file = self.file.clone();
        let (in_flight, failed) = (self.in_flight.clone(), self.failed.clone());
        tokio::task::spawn_blocking(move || {
            records.sort_by(|a, b| (a.created, a.id.as_str()).cmp(&(b.created, b.id.as_str())));
            let written = KeySet::from_records(records)
                .map_err(|(_, e)| StoreError::Key(e))
                .and_then(|keys| file.replace(&keys, &revoked));
            if let Err(e) = written {
                tracing::warn!(error = %e, "cannot write the local snapshot; will retry");
                failed.store(true, Ordering::Release);
            }
            in_flight.store(false, Ordering::Release);
        });
    }

    /// A failed write is retried at the next chance.
    pub fn retry_failed(&mut self) {
        if self.failed.swap(false, Ordering::AcqRel) {
            self.dirty = true;
            self.urgent = true;
        }
    }

    /// Mirrors a full load.
    pub fn mirror_full(&mut self, snapshot: &StoreSnapshot) {
        self.keys = snapshot
            .keys
            .records()
            .iter()
            .map(|r| (r.id.to_string(), r.clone()))
            .collect();
        self.dirty = true;
    }

    /// Mirrors a delta.
    pub fn mirror_delta(&mut self, delta: &IndexDelta) {
        for r in &delta.upserts {
            self.keys.insert(r.id.to_string(), r.clone());
        }
        let gone: HashSet<&KeyHash> = delta.revoked.iter().chain(&delta.removed).collect();
        if !gone.is_empty() {
            self.keys.retain(|_, r| !gone.contains(&r.hash));
        }
        self.dirty = true;
        self.urgent |= !delta.revoked.is_empty() || !delta.removed.is_empty();
    }
}

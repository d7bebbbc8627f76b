//! Keeping the key index (and the TLS certificate) current without a restart.
//!
//! One entry point, `Reloader::reload`, used at start-up, on SIGHUP and when
//! the watcher sees a change. A reload is all-or-nothing: read, parse and
//! validate the store and the revocation list, build a new index off the
//! request path, then swap it in with one pointer store. Any error keeps the
//! last good index. Requests in flight keep the snapshot they started with.
//!
//! The watcher polls file metadata (following symlinks) every 250 ms. A
//! `stat` per file is cheap, needs no platform event API, and sees every way a
//! file can change: in-place writes, editors' rename-over, and Kubernetes'
//! `..data` symlink swap. As a fallback for filesystems with coarse
//! timestamps (a same-size rewrite within one tick of the clock), the store's
//! content hash is compared every few seconds while the file is small enough
//! for that to cost nothing.

mod fingerprint;
pub mod postgres;

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::signal::unix::Signal;
use tokio::time::Instant;

use fingerprint::Fingerprint;

use crate::config::TlsFiles;
use crate::keys::store::read_text;
use crate::keys::{Access, FileStore, KeyHash, KeyIndex, StoreError, StoreSnapshot};
use crate::metrics::{Health, Metrics};
use crate::proxy::SharedIndex;
use crate::server::tls::CertResolver;

/// How often the watcher looks at the files.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Every this many polls, the store's content hash is compared too...
const CONTENT_CHECK_EVERY: u32 = 20;
/// ...if the store is at most this large (about 80,000 keys).
const CONTENT_CHECK_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// What a successful reload changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReloadStats {
    pub keys: usize,
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
    pub revoked: usize,
}

/// Owns the store, the last loaded snapshot and the shared index.
pub struct Reloader {
    /// `None` when keys come from a database store (`postgres::PgSync`):
    /// then only the TLS certificate is watched here.
    store: Option<FileStore>,
    index: SharedIndex,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// hash(id) → hash(record) of the last good load, for the diff: 16 bytes
    /// a key instead of a second copy of the store.
    last: HashMap<u64, u64>,
    /// Metadata of the store files as of the last load attempt, taken before
    /// reading them: a change that lands during or after the read is seen.
    store_seen: Fingerprint,
    /// BLAKE3 of the store text last loaded.
    content_seen: Option<blake3::Hash>,
    /// Every revoked hash seen since start. The list is append-only: a hash
    /// once revoked stays refused even if the file is later lost or restored
    /// from an older copy.
    revoked_seen: HashSet<KeyHash>,
    tls: Option<(TlsFiles, Arc<CertResolver>)>,
    tls_seen: Fingerprint,
}

impl Reloader {
    pub fn new(
        store: FileStore,
        index: SharedIndex,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Self {
        Reloader {
            store: Some(store),
            index,
            metrics,
            health,
            last: HashMap::new(),
            store_seen: Fingerprint::default(),
            content_seen: None,
            revoked_seen: HashSet::new(),
            tls: None,
            tls_seen: Fingerprint::default(),
        }
    }

    /// A reloader that watches only the TLS certificate.
    pub fn without_store(index: SharedIndex, metrics: Arc<Metrics>, health: Arc<Health>) -> Self {
        let mut r = Reloader::new(FileStore::new(""), index, metrics, health);
        r.store = None;
        r
    }

    fn store_files(&self) -> Vec<std::path::PathBuf> {
        self.store
            .iter()
            .flat_map(|s| [s.path().to_path_buf(), s.revoked_path()])
            .collect()
    }

    fn tls_files(&self) -> Vec<std::path::PathBuf> {
        self.tls
            .iter()
            .flat_map(|(f, _)| [f.cert.clone(), f.key.clone()])
            .collect()
    }

    /// Also reload this certificate when its files change.
    pub fn with_tls(mut self, files: TlsFiles, resolver: Arc<CertResolver>) -> Self {
        self.tls = Some((files, resolver));
        self.tls_seen = Fingerprint::of(&self.tls_files());
        self
    }

    /// Loads the store and swaps in a new index; on error the old one stays.
    /// Logs the outcome and records it in the metrics either way.
    pub fn reload(&mut self, cause: &str) -> Result<ReloadStats, StoreError> {
        let Some(store) = self.store.clone() else {
            return Ok(ReloadStats::default());
        };
        let started = Instant::now();
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.store_seen = Fingerprint::of(&self.store_files());
        let loaded = read_text(store.path()).and_then(|text| {
            self.content_seen = Some(blake3::hash(text.as_bytes()));
            store.load_from(&text)
        });
        match loaded {
            Ok(mut snapshot) => {
                let forgotten = self.revoked_seen.difference(&snapshot.revoked).count();
                if forgotten > 0 {
                    tracing::warn!(
                        forgotten,
                        file = %store.revoked_path().display(),
                        "the revocation list lost entries (deleted or restored from an older copy); those keys stay revoked"
                    );
                }
                self.revoked_seen.extend(snapshot.revoked.iter().copied());
                snapshot.revoked.clone_from(&self.revoked_seen);
                let index = KeyIndex::build(&snapshot);
                let stats = self.diff(&snapshot);
                let counts = (
                    index.count(Access::ReadOnly),
                    index.count(Access::FullAccess),
                );
                self.index.store(Arc::new(index));
                self.metrics.reload(Ok(counts), unix_now);
                if cause != "start" {
                    self.metrics
                        .store_changes_applied(stats.added + stats.removed + stats.changed);
                }
                self.health.set_loaded();
                tracing::info!(
                    result = "success",
                    cause,
                    store = %store.path().display(),
                    keys = stats.keys,
                    added = stats.added,
                    removed = stats.removed,
                    changed = stats.changed,
                    revoked = stats.revoked,
                    duration_ms = started.elapsed().as_millis() as u64,
                    "key store loaded"
                );
                Ok(stats)
            }
            Err(e) => {
                self.metrics.reload(Err(()), unix_now);
                tracing::error!(result = "failure", cause, error = %e, "key store reload failed; keeping the last good index");
                Err(e)
            }
        }
    }

    fn diff(&mut self, snapshot: &StoreSnapshot) -> ReloadStats {
        let digest = |v: &dyn Fn(&mut DefaultHasher)| {
            let mut h = DefaultHasher::new();
            v(&mut h);
            h.finish()
        };
        let next: HashMap<u64, u64> = snapshot
            .keys
            .records()
            .iter()
            .map(|r| {
                let id = digest(&|h| r.id.hash(h));
                let content = digest(&|h| (r.hash, r.access, r.expires, &r.origins).hash(h));
                (id, content)
            })
            .collect();
        let added = next
            .keys()
            .filter(|id| !self.last.contains_key(*id))
            .count();
        let removed = self
            .last
            .keys()
            .filter(|id| !next.contains_key(*id))
            .count();
        let changed = next
            .iter()
            .filter(|(id, v)| self.last.get(*id).is_some_and(|old| old != *v))
            .count();
        let stats = ReloadStats {
            keys: next.len(),
            added,
            removed,
            changed,
            revoked: snapshot.revoked.len(),
        };
        self.last = next;
        stats
    }

    /// True when the store's bytes differ from the last load although its
    /// metadata did not change (checked only for small stores).
    fn content_changed(&self) -> bool {
        let Some(store) = &self.store else {
            return false;
        };
        let small =
            std::fs::metadata(store.path()).is_ok_and(|m| m.len() <= CONTENT_CHECK_MAX_BYTES);
        small
            && read_text(store.path())
                .is_ok_and(|text| Some(blake3::hash(text.as_bytes())) != self.content_seen)
    }

    fn reload_tls(&mut self) {
        self.tls_seen = Fingerprint::of(&self.tls_files());
        if let Some((files, resolver)) = &self.tls {
            match resolver.reload(files) {
                Ok(()) => {
                    tracing::info!(result = "success", cert = %files.cert.display(), "TLS certificate reloaded")
                }
                Err(e) => {
                    tracing::error!(result = "failure", error = %e, "TLS certificate reload failed; keeping the current one")
                }
            }
        }
    }

    /// Watches the files and SIGHUP until the task is dropped. File reads and
    /// index builds run on the blocking pool, never on a request worker.
    /// `hup` is registered by the caller before the gateway reports ready,
    /// so that an early SIGHUP cannot kill the process.
    pub async fn watch(mut self, mut hup: Option<Signal>) {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut polls = 0u32;
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            polls = polls.wrapping_add(1);
            let stat_changed = Fingerprint::of(&self.store_files()) != self.store_seen;
            let content_due = polls.is_multiple_of(CONTENT_CHECK_EVERY);
            let tls_changed = Fingerprint::of(&self.tls_files()) != self.tls_seen;
            if !(forced || stat_changed || tls_changed || content_due) {
                continue;
            }
            let cause = if forced { "sighup" } else { "file change" };
            let joined = tokio::task::spawn_blocking(move || {
                // Reading and hashing the store happens here, off the request workers.
                let store_changed =
                    forced || stat_changed || (content_due && self.content_changed());
                if store_changed {
                    let _ = self.reload(cause);
                }
                if forced || tls_changed {
                    self.reload_tls();
                }
                self
            })
            .await;
            match joined {
                Ok(me) => self = me,
                Err(e) => {
                    tracing::error!(error = %e, "reload task failed; hot reload stops");
                    return;
                }
            }
        }
    }
}

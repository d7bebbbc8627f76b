//! `FileWatcher`: keeps the index current from the file store.
//!
//! It polls file metadata (following symlinks) every 250 ms. A `stat` per
//! file is cheap, needs no platform event API, and sees every way a file can
//! change: in-place writes, editors' rename-over, and Kubernetes' `..data`
//! symlink swap. As a fallback for filesystems with coarse timestamps (a
//! same-size rewrite within one tick of the clock), the store's content hash
//! is compared every few seconds while the file is small enough for that to
//! cost nothing. Every look at the files (stat included) and every index
//! build runs on the loader thread (`loader`), never on a request worker.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use tokio::time::Instant;

use super::fingerprint::Fingerprint;
use super::{Hangup, Publisher, Report, poll_files};
use crate::keys::{IdHasher, KeyHash, StoreSnapshot};
use crate::store::{FileStore, StoreError, read_text};

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

/// Owns the store, the last loaded snapshot's digest and the publisher.
pub struct FileWatcher {
    store: FileStore,
    publisher: Publisher,
    /// (hash(id), hash(record)) of the last good load, sorted, for the diff:
    /// 16 bytes a key instead of a second copy of the store (or the 36 a
    /// hash map of them takes at a million keys).
    last: Vec<(u64, u64)>,
    /// Metadata of the store files as of the last load attempt, taken before
    /// reading them: a change that lands during or after the read is seen.
    store_seen: Fingerprint,
    /// BLAKE3 of the store text last loaded.
    content_seen: Option<blake3::Hash>,
    /// Every revoked hash seen since start. The list is append-only: a hash
    /// once revoked stays refused even if the file is later lost or restored
    /// from an older copy.
    revoked_seen: HashSet<KeyHash>,
}

/// Keys added, removed and changed from `old` to `new`, both sorted by id
/// digest: one merge walk.
fn compare(old: &[(u64, u64)], new: &[(u64, u64)]) -> (usize, usize, usize) {
    let (mut i, mut j) = (0, 0);
    let (mut added, mut removed, mut changed) = (0, 0, 0);
    while i < old.len() && j < new.len() {
        match old[i].0.cmp(&new[j].0) {
            std::cmp::Ordering::Less => {
                removed += 1;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                added += 1;
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                changed += usize::from(old[i].1 != new[j].1);
                i += 1;
                j += 1;
            }
        }
    }
    (added + new.len() - j, removed + old.len() - i, changed)
}

impl FileWatcher {
    pub fn new(store: FileStore, publisher: Publisher) -> Self {
        FileWatcher {
            store,
            publisher,
            last: Vec::new(),
            store_seen: Fingerprint::default(),
            content_seen: None,
            revoked_seen: HashSet::new(),
        }
    }

    fn store_files(&self) -> [std::path::PathBuf; 2] {
        [self.store.path().to_path_buf(), self.store.revoked_path()]
    }

    /// Loads the store and swaps in a new index; on error the old one stays.
    /// Logs the outcome and records it in the metrics either way.
    pub fn reload(&mut self, cause: &str) -> Result<ReloadStats, StoreError> {
        let started = Instant::now();
        let store = self.store.clone();
        self.store_seen = Fingerprint::of(&self.store_files());
        let loaded = read_text(store.path()).and_then(|text| {
            self.content_seen = Some(blake3::hash(text.as_bytes()));
            store.load_from(&text)
        });
        let mut snapshot = match loaded {
            Ok(s) => s,
            Err(e) => {
                self.publisher.failed(cause, &e);
                return Err(e);
            }
        };
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
        let index = self.publisher.build(&snapshot);
        let stats = self.diff(&snapshot);
        let label = store.path().display().to_string();
        self.publisher.full(
            index,
            &Report {
                cause,
                store: &label,
                changes: (cause != "start").then_some(stats.added + stats.removed + stats.changed),
                version: None,
                stats: Some(stats),
                took: started.elapsed(),
            },
        );
        // Freed before the index that this one replaced is (`Publisher::full`
        // hands memory back after both).
        drop(snapshot);
        Ok(stats)
    }

    fn diff(&mut self, snapshot: &StoreSnapshot) -> ReloadStats {
        // For counts only (the log line and a counter): a collision would
        // miscount a change.
        let digest = |v: &dyn Fn(&mut IdHasher)| {
            let mut h = IdHasher::default();
            v(&mut h);
            h.finish()
        };
        let mut next: Vec<(u64, u64)> = snapshot
            .keys
            .records()
            .iter()
            .map(|r| {
                let id = digest(&|h| r.id.hash(h));
                let content = digest(&|h| (r.hash, r.access, r.expires, &r.origins).hash(h));
                (id, content)
            })
            .collect();
        next.sort_unstable();
        let (added, removed, changed) = compare(&self.last, &next);
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
        let store = &self.store;
        let small =
            std::fs::metadata(store.path()).is_ok_and(|m| m.len() <= CONTENT_CHECK_MAX_BYTES);
        small
            && read_text(store.path())
                .is_ok_and(|text| Some(blake3::hash(text.as_bytes())) != self.content_seen)
    }

    /// Watches the files and SIGHUP until the task is dropped.
    pub async fn watch(self, hup: Hangup) {
        poll_files(self, hup, "hot reload", true, |me, forced, polls| {
            let stat_changed = Fingerprint::of(&me.store_files()) != me.store_seen;
            let content_due = polls.is_multiple_of(CONTENT_CHECK_EVERY);
            if forced || stat_changed || (content_due && me.content_changed()) {
                let cause = if forced { "sighup" } else { "file change" };
                let _ = me.reload(cause);
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::compare;

    #[test]
    fn the_merge_walk_counts_added_removed_and_changed_keys() {
        let old = [(1, 10), (3, 30), (5, 50), (7, 70)];
        let new = [(0, 0), (3, 30), (5, 51), (8, 80), (9, 90)];
        assert_eq!(compare(&old, &new), (3, 2, 1));
        assert_eq!(compare(&[], &new), (5, 0, 0));
        assert_eq!(compare(&old, &[]), (0, 4, 0));
        assert_eq!(compare(&old, &old), (0, 0, 0));
    }
}

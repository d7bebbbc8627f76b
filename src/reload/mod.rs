//! Keeping the key index (and the TLS certificate) current without a restart.
//!
//! Two sources feed the index, one per kind of store: `file::FileWatcher`
//! polls the store file and its revocation list, `postgres::PgSync` follows
//! a database by LISTEN/NOTIFY and a resync timer. Both build the new index
//! off the request path and hand it to the one `Publisher`, which swaps it in
//! with one pointer store, records the outcome in the metrics, marks the
//! gateway ready and logs it: one publish path whatever the store. SIGHUP
//! reaches every watcher through one `Hangup`. `certs::CertWatcher` reloads
//! the client-facing certificate the same way, apart from the keys.
//!
//! A reload is all-or-nothing: any error keeps the last good index. Requests
//! in flight keep the snapshot they started with.

pub mod certs;
pub mod file;
mod fingerprint;
pub(crate) mod loader;
pub mod postgres;
mod snapshot;
mod trim;
pub mod usage;

use trim::release_free_memory;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

pub use certs::CertWatcher;
pub use file::{FileWatcher, POLL_INTERVAL, ReloadStats};
pub use postgres::PgSync;
pub use usage::UsageFile;

use crate::keys::{Access, KeyIndex, SharedIndex, StoreSnapshot, UsageTable};
use crate::metrics::{Health, Metrics, unix_ms};
use crate::store::StoreError;

/// The one way a new index reaches requests.
#[derive(Clone)]
pub struct Publisher {
    index: SharedIndex,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// What a publication says about itself in the log.
#[derive(Debug, Clone, Copy)]
pub struct Report<'a> {
    /// `start`, `sighup`, `file change`, `reconnect`, `snapshot`, `change`.
    pub cause: &'a str,
    /// The file's path or `postgres://user@host:port/db`.
    pub store: &'a str,
    /// Keys added, removed or changed (for the changes counter); `None` on
    /// a first load, where everything is new and nothing "changed".
    pub changes: Option<usize>,
    /// The database's change counter, for a PostgreSQL store.
    pub version: Option<i64>,
    pub stats: Option<ReloadStats>,
    pub took: Duration,
}

impl Publisher {
    pub fn new(index: SharedIndex, metrics: Arc<Metrics>, health: Arc<Health>) -> Self {
        Publisher {
            index,
            metrics,
            health,
        }
    }

    /// The index requests see now.
    pub fn current(&self) -> Arc<KeyIndex> {
        self.index.load_full()
    }

    /// The usage counters every index of this process shares.
    pub fn usage(&self) -> Arc<UsageTable> {
        self.index.load().usage().clone()
    }

    /// Builds an index of `snapshot` counting in this process's usage table,
    /// guided by the index it will replace.
    pub fn build(&self, snapshot: &StoreSnapshot) -> KeyIndex {
        KeyIndex::build_after(snapshot, &self.index.load())
    }

    pub fn is_loaded(&self) -> bool {
        self.health.is_loaded()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A whole new index (a load of the whole store): swapped in, counted as
    /// a successful reload, the gateway marked ready, one log line.
    pub fn full(&self, index: KeyIndex, report: &Report<'_>) {
        let counts = counts(&index);
        let usage = index.usage().clone();
        let old = self.index.swap(Arc::new(index));
        // Once the old index is freed: counters of deleted keys are held by
        // nothing (forgotten after a grace), and the load's garbage (the
        // parsed store, the old index) goes back to the system in one pass.
        loader::retire(old, move || {
            usage.forget_unused(std::time::Instant::now());
            release_free_memory();
        });
        self.metrics.reload(Ok(counts), unix_secs());
        if let Some(n) = report.changes {
            self.metrics.store_changes_applied(n);
        }
        self.health.set_loaded();
        // A file store's reload knows its diff; a database load does not.
        let s = report.stats;
        tracing::info!(
            result = "success",
            cause = report.cause,
            store = report.store,
            version = report.version,
            keys = s.map_or(counts.0 + counts.1, |s| s.keys),
            added = s.map(|s| s.added),
            removed = s.map(|s| s.removed),
            changed = s.map(|s| s.changed),
            revoked = s.map(|s| s.revoked),
            duration_ms = report.took.as_millis() as u64,
            "key store loaded"
        );
    }

    /// An incremental change (pushed by the database): swapped in, the key
    /// counts and the changes counter updated; not a reload.
    pub fn delta(&self, index: KeyIndex, report: &Report<'_>) {
        self.metrics.set_keys(counts(&index));
        loader::retire(self.index.swap(Arc::new(index)), || ());
        let n = report.changes.unwrap_or(0);
        self.metrics.store_changes_applied(n);
        tracing::info!(
            store = report.store,
            version = report.version,
            changes = n,
            duration_us = report.took.as_micros() as u64,
            "key store changes applied"
        );
    }

    /// A load that failed: the last good index stays.
    pub fn failed(&self, cause: &str, error: &StoreError) {
        self.metrics.reload(Err(()), unix_secs());
        tracing::error!(result = "failure", cause, error = %error, "key store reload failed; keeping the last good index");
    }
}

/// Runs `look(state, forced, polls)` every `POLL_INTERVAL`, and at once on
/// SIGHUP with `forced`, until the task is dropped. `look` stats and reads
/// files, which must never happen on a request worker: it runs on the
/// loader thread when it builds key indexes (`on_loader`), else on the
/// blocking pool (a certificate check must not wait behind a big load, nor
/// a load behind a stalled certificate file).
async fn poll_files<T: Send + 'static>(
    mut state: T,
    mut hup: Hangup,
    what: &'static str,
    on_loader: bool,
    look: fn(&mut T, bool, u32),
) {
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut polls = 0u32;
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            () = hup.recv() => true,
        };
        polls = polls.wrapping_add(1);
        let job = move || {
            look(&mut state, forced, polls);
            state
        };
        let joined = if on_loader {
            loader::run(job).await.map_err(|e| e.to_string())
        } else {
            tokio::task::spawn_blocking(job)
                .await
                .map_err(|e| e.to_string())
        };
        match joined {
            Ok(s) => state = s,
            Err(e) => {
                tracing::error!(error = %e, "{what} failed; it stops");
                return;
            }
        }
    }
}

fn counts(index: &KeyIndex) -> (usize, usize) {
    (
        index.count(Access::ReadOnly),
        index.count(Access::FullAccess),
    )
}

fn unix_secs() -> f64 {
    unix_ms(SystemTime::now()) as f64 / 1000.0
}

/// SIGHUP, fanned out to every watcher (the file store's or the database's,
/// and the certificate's). Registered once, before the gateway reports ready,
/// so that an early SIGHUP never kills the process.
#[derive(Clone, Debug)]
pub struct Hangup(watch::Receiver<u64>);

impl Hangup {
    /// Installs the SIGHUP handler on the current runtime. Without one (the
    /// signal cannot be registered), watchers still poll their files.
    pub fn listen() -> Hangup {
        let (tx, rx) = watch::channel(0u64);
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut signal) => {
                tokio::spawn(async move {
                    while signal.recv().await.is_some() {
                        tx.send_modify(|n| *n = n.wrapping_add(1));
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; file watching still works")
            }
        }
        Hangup(rx)
    }

    /// Waits for the next SIGHUP (for ever once the handler is gone).
    pub async fn recv(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

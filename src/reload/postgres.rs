//! Keeping the index current from a PostgreSQL store.
//!
//! One task per gateway, one connection: LISTEN first, then read the change
//! counter, so no change can slip between the two. A notification, or the
//! resync timer (the safety net for notifications lost with a connection),
//! triggers a sync: in one REPEATABLE READ snapshot, read the counter and the
//! rows stamped after the last version applied, then apply them as a delta
//! (`KeyIndex::apply`, no rebuild). Every new connection starts with a full
//! load: the database may have failed over to a replica or been restored
//! meanwhile, with a counter that reads the same as before but different
//! history behind it, and a delta would miss those changes.
//!
//! Faults: a failed connect, query or sync drops the session; the index
//! stays as it is, `keygate_store_connected` turns 0, and the task reconnects
//! with jittered exponential backoff (250 ms up to 10 s), then resyncs from
//! its last version. Requests never wait on any of this: they read the index
//! through one atomic pointer load, and the task runs on a thread and runtime
//! of its own (`spawn`), so decoding a million rows never holds a request
//! worker.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_postgres::{Client, IsolationLevel};

use crate::keys::postgres::{self, PgStore, schema};
use crate::keys::{
    Access, FileStore, KeyHash, KeyIndex, KeyRecord, KeySet, StoreError, StoreSnapshot,
};
use crate::metrics::{Health, Metrics, unix_ms};
use crate::proxy::SharedIndex;

/// Longest wait for a connection (on top of the URL's connect_timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a sync may take; a full load of a million keys takes a few
/// seconds, a hung database must not stall the task for ever.
const SYNC_TIMEOUT: Duration = Duration::from_secs(120);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Application name on the gateways' connections (visible in pg_stat_activity).
pub const APPLICATION_NAME: &str = "keygate";

pub struct PgSync {
    store: PgStore,
    index: SharedIndex,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    resync: Duration,
    /// The change counter the index reflects; `None` before the first load.
    version: Option<i64>,
    /// Every revoked hash seen since start (and, with a snapshot, before):
    /// a restored older database cannot bring a deleted key back here.
    revoked_seen: HashSet<KeyHash>,
    snapshot: Option<Snapshot>,
}

/// The local snapshot: the file written, the keys it mirrors (by hash), and
/// whether the mirror changed since the last write.
struct Snapshot {
    file: FileStore,
    max_age: Duration,
    keys: HashMap<KeyHash, KeyRecord>,
    dirty: bool,
    /// A revocation is waiting: write without waiting for the interval.
    urgent: bool,
    written: Option<Instant>,
    in_flight: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
}

impl PgSync {
    pub fn new(
        store: PgStore,
        index: SharedIndex,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        resync: Duration,
    ) -> Self {
        PgSync {
            store,
            index,
            metrics,
            health,
            resync,
            version: None,
            revoked_seen: HashSet::new(),
            snapshot: None,
        }
    }

    /// Also keep a local snapshot in `path` (file-store format, with its
    /// `.revoked` beside it): read at start, rewritten at most once per
    /// resync interval after changes.
    pub fn with_snapshot(mut self, path: std::path::PathBuf, max_age: Duration) -> Self {
        self.snapshot = Some(Snapshot {
            file: FileStore::new(path),
            max_age,
            keys: HashMap::new(),
            dirty: false,
            urgent: false,
            written: None,
            in_flight: Arc::default(),
            failed: Arc::default(),
        });
        self
    }

    /// Serves from the local snapshot until the database answers, if there
    /// is one and it is at most `snapshot_max_age` old. Called only after a
    /// first attempt to reach the database failed: a reachable database is
    /// always preferred to the file. The revocation list is read on its own
    /// first, so even a snapshot too old or unreadable to serve from still
    /// adds every revocation it holds.
    async fn start_from_snapshot(&mut self) {
        let Some(snap) = &self.snapshot else { return };
        let file = snap.file.clone();
        let max_age = snap.max_age;
        let loaded = tokio::task::spawn_blocking(move || {
            let revoked = file.load_revoked();
            let age = std::fs::metadata(file.path())
                .and_then(|m| m.modified())
                .map(|t| t.elapsed().unwrap_or_default());
            let keys = match &age {
                Ok(a) if *a <= max_age => Some(file.load()),
                _ => None,
            };
            (revoked, age, keys)
        })
        .await;
        let Ok((revoked, age, keys)) = loaded else {
            return;
        };
        match revoked {
            Ok(r) => self.revoked_seen.extend(r),
            Err(e) => tracing::warn!(error = %e, "local snapshot: revocation list unreadable"),
        }
        let path = snap.file.path().display().to_string();
        match (age, keys) {
            (Err(_), _) => {}
            (Ok(age), None) => tracing::warn!(
                snapshot = path,
                age_s = age.as_secs(),
                max_age_s = max_age.as_secs(),
                "local snapshot too old to serve from; waiting for the key store"
            ),
            (Ok(_), Some(Err(e))) => {
                tracing::warn!(error = %e, "local snapshot unreadable; waiting for the key store")
            }
            (Ok(age), Some(Ok(mut snapshot))) => {
                snapshot.revoked.clone_from(&self.revoked_seen);
                let keys = snapshot.keys.len();
                match build_off_thread(move || KeyIndex::build(&snapshot)).await {
                    Ok(index) => {
                        self.metrics.reload(Ok(counts(&index)), unix_secs());
                        self.index.store(Arc::new(index));
                        self.health.set_loaded();
                        tracing::warn!(
                            snapshot = path,
                            age_s = age.as_secs(),
                            keys,
                            "key store unreachable at start: serving from the local snapshot until it answers"
                        );
                    }
                    Err(e) => tracing::warn!(error = %e, "local snapshot: index build failed"),
                }
            }
        }
    }

    /// Writes the snapshot if it changed: at once for a revocation (it must
    /// survive a restart), else at most once per resync interval. The write
    /// runs detached on the blocking pool, one at a time; a failed write
    /// leaves the snapshot marked for the next try.
    fn write_snapshot(&mut self, now: bool) {
        let resync = self.resync;
        let Some(snap) = &mut self.snapshot else {
            return;
        };
        let due = now || snap.urgent || snap.written.is_none_or(|t| t.elapsed() >= resync);
        if !snap.dirty || !due || snap.in_flight.load(Ordering::Acquire) {
            return;
        }
        snap.dirty = false;
        snap.urgent = false;
        snap.written = Some(Instant::now());
        snap.in_flight.store(true, Ordering::Release);
        let mut records: Vec<KeyRecord> = snap.keys.values().cloned().collect();
        let revoked = self.revoked_seen.clone();
        let file = snap.file.clone();
        let (in_flight, failed) = (snap.in_flight.clone(), snap.failed.clone());
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
    fn snapshot_retry(&mut self) {
        if let Some(snap) = &mut self.snapshot
            && snap.failed.swap(false, Ordering::AcqRel)
        {
            snap.dirty = true;
            snap.urgent = true;
        }
    }

    /// Mirrors a full load in the snapshot.
    fn snapshot_full(&mut self, snapshot: &StoreSnapshot) {
        if let Some(snap) = &mut self.snapshot {
            snap.keys = snapshot
                .keys
                .records()
                .iter()
                .map(|r| (r.hash, r.clone()))
                .collect();
            snap.dirty = true;
        }
    }

    /// Mirrors a delta in the snapshot.
    fn snapshot_delta(&mut self, delta: &crate::keys::IndexDelta) {
        if let Some(snap) = &mut self.snapshot {
            for r in &delta.upserts {
                snap.keys.insert(r.hash, r.clone());
            }
            for h in delta.revoked.iter().chain(&delta.removed) {
                snap.keys.remove(h);
            }
            snap.dirty = true;
            snap.urgent |= !delta.revoked.is_empty() || !delta.removed.is_empty();
        }
    }

    /// Runs the sync loop on a thread of its own, with its own single-thread
    /// runtime. If it ever ends (a panic), the store is reported disconnected
    /// and an error logged: the gateway keeps serving its last index.
    pub fn spawn(self) -> std::io::Result<()> {
        let metrics = self.metrics.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("keygate-store-sync".into())
            .spawn(move || {
                struct Ended(Arc<Metrics>);
                impl Drop for Ended {
                    fn drop(&mut self) {
                        self.0.store_connected(false);
                        tracing::error!(
                            "key store sync stopped; serving the last index until restart"
                        );
                    }
                }
                let _ended = Ended(metrics);
                rt.block_on(self.run());
            })?;
        Ok(())
    }

    /// Runs until the task is dropped. SIGHUP forces a sync (the serve
    /// command has already installed a SIGHUP handler before this starts,
    /// so the signal never kills the process).
    pub async fn run(mut self) {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut backoff = BACKOFF_MIN;
        let mut failures = 0u64;
        loop {
            let started = Instant::now();
            let Err(e) = self.session(&mut hup).await;
            self.metrics.store_connected(false);
            if !self.health.is_loaded() {
                self.start_from_snapshot().await;
            }
            self.snapshot_retry();
            self.write_snapshot(true);
            // A session that lasted a while was a real connection: start the
            // backoff over, and say that it was lost.
            if started.elapsed() > BACKOFF_MAX {
                backoff = BACKOFF_MIN;
                failures = 0;
            }
            failures += 1;
            // Log the first failures, then every 10th: a long outage must not
            // flood the log.
            if failures <= 3 || failures.is_multiple_of(10) {
                tracing::warn!(
                    store = self.store.label(),
                    error = %e,
                    attempt = failures,
                    retry_in_ms = backoff.as_millis() as u64,
                    loaded = self.version.is_some(),
                    "key store unreachable; serving the last good index and retrying"
                );
            }
            tokio::time::sleep(jitter(backoff)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connection's life: returns only with the error that ended it.
    async fn session(
        &mut self,
        hup: &mut Option<tokio::signal::unix::Signal>,
    ) -> Result<Infallible, StoreError> {
        let (tx, mut changed) = mpsc::channel(1);
        let mut client = timeout(
            CONNECT_TIMEOUT,
            self.store.connect(APPLICATION_NAME, Some(tx)),
        )
        .await
        .map_err(|_| self.timed_out("connect"))??;
        schema::require_current(&client, &self.store).await?;
        client
            .batch_execute(&format!("LISTEN {}", schema::CHANNEL))
            .await
            .map_err(|e| postgres_err(&self.store, "listen", &e))?;
        tracing::info!(
            store = self.store.label(),
            "connected to the key store; listening for changes"
        );
        self.sync(&mut client, true).await?;
        self.metrics.store_connected(true);
        self.write_snapshot(true);
        let mut tick = tokio::time::interval_at(Instant::now() + self.resync, self.resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A snapshot write that could not start (one in flight) or failed is
        // retried within a second, whatever the resync interval.
        let mut snapshot_tick = tokio::time::interval(Duration::from_secs(1));
        snapshot_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                n = changed.recv() => if n.is_none() {
                    return Err(StoreError::Database(format!("{}: the connection closed", self.store.label())));
                },
                _ = tick.tick() => {}
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!(store = self.store.label(), "SIGHUP: syncing with the key store now");
                }
                _ = snapshot_tick.tick(), if self.snapshot.is_some() => {
                    self.snapshot_retry();
                    self.write_snapshot(false);
                    continue;
                }
            }
            self.sync(&mut client, false).await?;
            self.snapshot_retry();
            self.write_snapshot(false);
        }
    }

    fn timed_out(&self, action: &str) -> StoreError {
        StoreError::Database(format!("{}: {action} timed out", self.store.label()))
    }

    /// Brings the index up to the database's change counter: the changes
    /// since the last version applied, or everything if `full`.
    async fn sync(&mut self, client: &mut Client, full: bool) -> Result<(), StoreError> {
        let store = self.store.clone();
        let since = if full { None } else { self.version };
        let work = async {
            let err = |e| postgres_err(&store, "sync", &e);
            let tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(err)?;
            let loaded = match since {
                Some(v) => {
                    let changes = postgres::load_changes(&tx, &store, v).await?;
                    if changes.version < v {
                        tracing::warn!(
                            store = store.label(),
                            was = v,
                            now = changes.version,
                            "the store's change counter went backwards (database restored?); loading it whole"
                        );
                        Loaded::Full(
                            postgres::load_snapshot(&tx, &store, postgres::BadRows::Skip).await?,
                        )
                    } else {
                        Loaded::Delta(changes)
                    }
                }
                None => Loaded::Full(
                    postgres::load_snapshot(&tx, &store, postgres::BadRows::Skip).await?,
                ),
            };
            tx.commit().await.map_err(err)?;
            Ok::<_, StoreError>(loaded)
        };
        let loaded = timeout(SYNC_TIMEOUT, work)
            .await
            .map_err(|_| self.timed_out("sync"))??;
        let started = Instant::now();
        match loaded {
            Loaded::Full((mut snapshot, version)) => {
                self.revoked_seen.extend(snapshot.revoked.iter().copied());
                snapshot.revoked.clone_from(&self.revoked_seen);
                self.snapshot_full(&snapshot);
                let keys = snapshot.keys.len();
                let index = build_off_thread(move || KeyIndex::build(&snapshot)).await?;
                let counts = counts(&index);
                self.index.store(Arc::new(index));
                self.metrics.reload(Ok(counts), unix_secs());
                self.health.set_loaded();
                tracing::info!(
                    result = "success",
                    cause = if self.version.is_none() {
                        "start"
                    } else {
                        "reconnect"
                    },
                    store = self.store.label(),
                    version,
                    keys,
                    duration_ms = started.elapsed().as_millis() as u64,
                    "key store loaded"
                );
                self.version = Some(version);
            }
            Loaded::Delta(changes) => {
                if !changes.delta.is_empty() {
                    let n = changes.delta.len();
                    self.revoked_seen
                        .extend(changes.delta.revoked.iter().copied());
                    self.snapshot_delta(&changes.delta);
                    let current = self.index.load_full();
                    let delta = changes.delta;
                    let index = build_off_thread(move || current.apply(&delta)).await?;
                    self.metrics.set_keys(counts(&index));
                    self.index.store(Arc::new(index));
                    self.metrics.store_changes_applied(n);
                    tracing::info!(
                        store = self.store.label(),
                        version = changes.version,
                        changes = n,
                        duration_us = started.elapsed().as_micros() as u64,
                        "key store changes applied"
                    );
                }
                self.version = Some(changes.version);
            }
        }
        self.metrics.store_synced(unix_ms(SystemTime::now()));
        Ok(())
    }
}

enum Loaded {
    Full((crate::keys::StoreSnapshot, i64)),
    Delta(postgres::Changes),
}

fn postgres_err(store: &PgStore, action: &str, e: &tokio_postgres::Error) -> StoreError {
    crate::keys::postgres::db_err(store, action, e)
}

/// Index work runs on the blocking pool, never on a request worker.
async fn build_off_thread(
    f: impl FnOnce() -> KeyIndex + Send + 'static,
) -> Result<KeyIndex, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Database(format!("index build failed: {e}")))
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

/// 50% to 100% of `d`, so a fleet that lost its database together does not
/// reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = getrandom::fill(&mut b).map_or(0, |()| u16::from_le_bytes(b));
    d / 2 + d.mul_f64(f64::from(r) / f64::from(u16::MAX) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_between_half_and_all_of_the_delay() {
        for _ in 0..200 {
            let j = jitter(Duration::from_secs(2));
            assert!(
                j >= Duration::from_secs(1) && j <= Duration::from_secs(2),
                "{j:?}"
            );
        }
    }
}

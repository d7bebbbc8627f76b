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
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_postgres::{Client, IsolationLevel};

use super::snapshot::LocalSnapshot;
use super::{Hangup, Publisher, Report};
use crate::keys::{KeyHash, KeyIndex, StoreSnapshot, UsageSample};
use crate::metrics::unix_ms;
use crate::store::StoreError;
use crate::store::postgres::{self, PgStore, schema};

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
    publisher: Publisher,
    resync: Duration,
    /// The change counter the index reflects; `None` before the first load.
    version: Option<i64>,
    /// Every revoked hash seen since start (and, with a snapshot, before):
    /// a restored older database cannot bring a deleted key back here.
    revoked_seen: HashSet<KeyHash>,
    snapshot: Option<LocalSnapshot>,
    /// Usage as last added to the database, to send only what is new.
    usage_flushed: HashMap<String, UsageSample>,
    /// A failed usage write was logged; the next one is logged only after
    /// a success.
    usage_warned: bool,
}

impl PgSync {
    pub fn new(store: PgStore, publisher: Publisher, resync: Duration) -> Self {
        PgSync {
            store,
            publisher,
            resync,
            version: None,
            revoked_seen: HashSet::new(),
            snapshot: None,
            usage_flushed: HashMap::new(),
            usage_warned: false,
        }
    }

    /// Also keep a local snapshot in `path` (see `snapshot`).
    pub fn with_snapshot(mut self, path: std::path::PathBuf, max_age: Duration) -> Self {
        self.snapshot = Some(LocalSnapshot::new(path, max_age));
        self
    }

    /// Serves from the local snapshot until the database answers, if there
    /// is one and it is at most `snapshot_max_age` old. Called only after a
    /// first attempt to reach the database failed: a reachable database is
    /// always preferred to the file.
    async fn start_from_snapshot(&mut self) {
        let Some(snap) = &self.snapshot else { return };
        let Some(read) = snap.read().await else {
            return;
        };
        let (path, max_age) = (snap.path(), snap.max_age());
        match read.revoked {
            Ok(r) => self.revoked_seen.extend(r),
            Err(e) => tracing::warn!(error = %e, "local snapshot: revocation list unreadable"),
        }
        let Some(age) = read.age else { return };
        match read.keys {
            None => tracing::warn!(
                snapshot = path,
                age_s = age.as_secs(),
                max_age_s = max_age.as_secs(),
                "local snapshot too old to serve from; waiting for the key store"
            ),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "local snapshot unreadable; waiting for the key store")
            }
            Some(Ok(mut snapshot)) => {
                snapshot.revoked.clone_from(&self.revoked_seen);
                let keys = snapshot.keys.len();
                let started = Instant::now();
                let previous = self.publisher.current();
                match build_off_thread(move || full_build(snapshot, &previous)).await {
                    Ok(index) => {
                        self.publisher.full(
                            index,
                            &Report {
                                cause: "snapshot",
                                store: &path,
                                changes: None,
                                version: None,
                                stats: None,
                                took: started.elapsed(),
                            },
                        );
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

    fn write_snapshot(&mut self, now: bool) {
        if let Some(snap) = &mut self.snapshot {
            snap.retry_failed();
            snap.write(&self.revoked_seen, self.resync, now);
        }
    }

    /// Runs the sync loop on a thread of its own, with its own single-thread
    /// runtime. If it ever ends (a panic), the store is reported disconnected
    /// and an error logged: the gateway keeps serving its last index.
    pub fn spawn(self, hup: Hangup) -> std::io::Result<()> {
        let publisher = self.publisher.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("keygate-store-sync".into())
            .spawn(move || {
                struct Ended(Publisher);
                impl Drop for Ended {
                    fn drop(&mut self) {
                        self.0.metrics().store_connected(false);
                        tracing::error!(
                            "key store sync stopped; serving the last index until restart"
                        );
                    }
                }
                let _ended = Ended(publisher);
                rt.block_on(self.run(hup));
            })?;
        Ok(())
    }

    /// Runs until the task is dropped. SIGHUP forces a sync.
    pub async fn run(mut self, mut hup: Hangup) {
        let mut backoff = BACKOFF_MIN;
        let mut failures = 0u64;
        loop {
            let started = Instant::now();
            let Err(e) = self.session(&mut hup).await;
            self.publisher.metrics().store_connected(false);
            if !self.publisher.is_loaded() {
                self.start_from_snapshot().await;
            }
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
    async fn session(&mut self, hup: &mut Hangup) -> Result<Infallible, StoreError> {
        let (tx, mut changed) = mpsc::channel(1);
        let mut client = timeout(
            CONNECT_TIMEOUT,
            self.store.connect(APPLICATION_NAME, Some(tx)),
        )
        .await
        .map_err(|_| self.timed_out("connect"))??;
        schema::require_readable(&client, &self.store).await?;
        client
            .batch_execute(&format!("LISTEN {}", schema::CHANNEL))
            .await
            .map_err(|e| postgres_err(&self.store, "listen", &e))?;
        tracing::info!(
            store = self.store.label(),
            "connected to the key store; listening for changes"
        );
        self.sync(&mut client, true).await?;
        self.publisher.metrics().store_connected(true);
        self.write_snapshot(true);
        let mut tick = tokio::time::interval_at(Instant::now() + self.resync, self.resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A snapshot write that could not start (one in flight) or failed is
        // retried within a second, whatever the resync interval.
        let mut snapshot_tick = tokio::time::interval(Duration::from_secs(1));
        snapshot_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut usage_tick = tokio::time::interval(super::usage::FLUSH_INTERVAL);
        usage_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                n = changed.recv() => if n.is_none() {
                    return Err(StoreError::Database(format!("{}: the connection closed", self.store.label())));
                },
                _ = tick.tick() => {}
                () = hup.recv() => {
                    tracing::info!(store = self.store.label(), "SIGHUP: syncing with the key store now");
                }
                _ = snapshot_tick.tick(), if self.snapshot.is_some() => {
                    self.write_snapshot(false);
                    continue;
                }
                _ = usage_tick.tick() => {
                    self.flush_usage(&client).await;
                    continue;
                }
            }
            self.sync(&mut client, false).await?;
            self.write_snapshot(false);
        }
    }

    /// Adds what was counted since the last flush to `keygate_usage`. A
    /// failure (a schema before version 4, a role without the grant) is
    /// logged once and retried with the next flush; requests never wait on it.
    async fn flush_usage(&mut self, client: &Client) {
        let samples = self.publisher.usage().samples();
        // Ids no longer counted (forgotten: their key is gone) leave the
        // record too, so that a key of the same id later starts afresh.
        let counted: std::collections::HashSet<&str> =
            samples.iter().map(|(id, _)| id.as_str()).collect();
        self.usage_flushed
            .retain(|id, _| counted.contains(id.as_str()));
        let deltas: Vec<(String, UsageSample)> = samples
            .iter()
            .filter_map(|(id, now)| {
                let before = self.usage_flushed.get(id).copied().unwrap_or_default();
                (*now != before).then(|| (id.clone(), usage_delta(before, *now)))
            })
            .collect();
        if deltas.is_empty() {
            return;
        }
        match timeout(
            CONNECT_TIMEOUT,
            postgres::add_usage(client, &self.store, &deltas),
        )
        .await
        {
            Ok(Ok(())) => {
                self.usage_flushed = samples.into_iter().collect();
                self.usage_warned = false;
            }
            Ok(Err(e)) if !self.usage_warned => {
                self.usage_warned = true;
                tracing::warn!(error = %e, "cannot write key usage to the key store; will retry (is the schema migrated, may this role write keygate_usage?)");
            }
            Ok(Err(_)) => {}
            Err(_) => tracing::warn!("writing key usage to the key store timed out; will retry"),
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
        let label = self.store.label().to_string();
        match loaded {
            Loaded::Full((mut snapshot, version)) => {
                self.revoked_seen.extend(snapshot.revoked.iter().copied());
                snapshot.revoked.clone_from(&self.revoked_seen);
                if let Some(snap) = &mut self.snapshot {
                    snap.mirror_full(&snapshot);
                }
                let previous = self.publisher.current();
                let index = build_off_thread(move || full_build(snapshot, &previous)).await?;
                let cause = if self.version.is_none() {
                    "start"
                } else {
                    "reconnect"
                };
                self.publisher.full(
                    index,
                    &Report {
                        cause,
                        store: &label,
                        changes: None,
                        version: Some(version),
                        stats: None,
                        took: started.elapsed(),
                    },
                );
                self.version = Some(version);
            }
            Loaded::Delta(changes) => {
                if !changes.delta.is_empty() {
                    let n = changes.delta.len();
                    self.revoked_seen
                        .extend(changes.delta.revoked.iter().copied());
                    if let Some(snap) = &mut self.snapshot {
                        snap.mirror_delta(&changes.delta);
                    }
                    let current = self.publisher.current();
                    let delta = changes.delta;
                    let index = build_off_thread(move || current.apply(&delta)).await?;
                    self.publisher.delta(
                        index,
                        &Report {
                            cause: "change",
                            store: &label,
                            changes: Some(n),
                            version: Some(changes.version),
                            stats: None,
                            took: started.elapsed(),
                        },
                    );
                }
                self.version = Some(changes.version);
            }
        }
        self.publisher
            .metrics()
            .store_synced(unix_ms(SystemTime::now()));
        Ok(())
    }
}

enum Loaded {
    Full((StoreSnapshot, i64)),
    Delta(postgres::Changes),
}

fn postgres_err(store: &PgStore, action: &str, e: &tokio_postgres::Error) -> StoreError {
    postgres::db_err(store, action, e)
}

/// An index of the whole snapshot, guided by the one it replaces (its
/// counters found in order, `KeyIndex::build_after`); the snapshot's records
/// are dropped here, on the loader thread (`Publisher::full` hands the
/// memory back).
fn full_build(snapshot: StoreSnapshot, previous: &KeyIndex) -> KeyIndex {
    let index = KeyIndex::build_after(&snapshot, previous);
    drop(snapshot);
    index
}

/// Index work runs on the loader thread, never on a request worker.
async fn build_off_thread(
    f: impl FnOnce() -> KeyIndex + Send + 'static,
) -> Result<KeyIndex, StoreError> {
    super::loader::run(f)
        .await
        .map_err(|e| StoreError::Database(format!("index build failed: {e}")))
}

/// What a key's counters gained since `before` was flushed. A counter's
/// requests only grow: fewer than before means a new counter for the id
/// (the key was forgotten and came back), all of whose requests are new.
fn usage_delta(before: UsageSample, now: UsageSample) -> UsageSample {
    let requests = if now.requests >= before.requests {
        now.requests - before.requests
    } else {
        now.requests
    };
    UsageSample {
        last_used: now.last_used,
        requests,
    }
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
    fn a_usage_delta_is_the_growth_or_a_new_counter_whole() {
        let at = |requests, last| UsageSample {
            last_used: Some(last),
            requests,
        };
        assert_eq!(usage_delta(at(5, 10), at(8, 12)), at(3, 12));
        assert_eq!(usage_delta(UsageSample::default(), at(2, 9)), at(2, 9));
        // Counted from zero again (forgotten, then the id came back).
        assert_eq!(usage_delta(at(40, 10), at(3, 20)), at(3, 20));
    }

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

//! Per-key use: the time of the last allowed request and the number of
//! allowed requests. Counted on the request path with two relaxed atomic
//! operations and no lock; read off it, to persist (`reload::usage`) and to
//! show (`keys list`). The table outlives every index: each index built in
//! a process points its entries at the same counters, so a reload loses no
//! count.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::HeaderValue;

use super::rate::RateCell;

/// One key's use, and its rate-limit bucket (state that, like the
/// counts, must outlive every index and costs no lookup: the index entry
/// points here). It also holds the key's id, as the ready
/// `x-keygate-key-id` header value: made once per key and process, so a
/// reload of a million keys makes no id again, and an index entry needs no
/// copy of it.
#[derive(Debug)]
pub struct KeyUsage {
    id_header: HeaderValue,
    /// Unix seconds of the last allowed request; 0 for none.
    last_used: AtomicU64,
    requests: AtomicU64,
    /// Unique in the process: names the key in tables keyed by it (the
    /// per-client limits) without a string.
    pub serial: u64,
    /// The key's own rate-limit bucket.
    pub rate: RateCell,
}

impl KeyUsage {
    /// Fresh counters for the key whose id is `id_header`.
    pub fn new(id_header: HeaderValue) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        KeyUsage {
            id_header,
            last_used: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            serial: NEXT.fetch_add(1, Ordering::Relaxed),
            rate: RateCell::default(),
        }
    }
}

impl KeyUsage {
    /// The key's id as a header value (ids are `[a-z0-9_]`).
    pub fn id_header(&self) -> &HeaderValue {
        &self.id_header
    }

    /// The key's public id.
    pub fn id(&self) -> &str {
        self.id_header.to_str().unwrap_or_default()
    }

    /// An allowed request at `unix_secs`. The last-used time is written at
    /// most once a second per key: a load, and a store only when it moved.
    pub fn record(&self, unix_secs: u64) {
        if self.last_used.load(Ordering::Relaxed) < unix_secs {
            self.last_used.store(unix_secs, Ordering::Relaxed);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Unix seconds of the last allowed request, if any.
    pub fn last_used(&self) -> Option<u64> {
        Some(self.last_used.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// What one key's use reads as at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UsageSample {
    /// Unix seconds of the last allowed request, if any.
    pub last_used: Option<u64>,
    pub requests: u64,
}

/// A table member, found by its id: the id lives in the counters, not a
/// second time as the table's key.
#[derive(Debug)]
pub(super) struct ById(Arc<KeyUsage>);

impl Hash for ById {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes: `Borrow<str>` requires it.
        self.0.id().hash(state);
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id() == other.0.id()
    }
}

impl Eq for ById {}

impl Borrow<str> for ById {
    fn borrow(&self) -> &str {
        self.0.id()
    }
}

/// The counters by id, and a generation that moves whenever the set of
/// keys does or persisted counts are added in: with the sum of the
/// request counts (which only grow) it tells a writer whether anything
/// changed without keeping a copy of a million counters to compare.
#[derive(Debug, Default)]
pub(super) struct Table {
    set: HashSet<ById, super::hash::IdState>,
    generation: u64,
    /// Ids whose counters no index held at a sweep, since when: forgotten
    /// only once that has lasted `FORGET_AFTER` (few: deleted keys).
    orphans: HashMap<Box<str>, Instant>,
}

/// How long a key's counters outlive its last index. A key missing from
/// one load and back in the next (a store half-written by hand, a bad row
/// skipped and fixed) must keep its last use: that is what an operator
/// reads before deleting a key.
pub const FORGET_AFTER: Duration = Duration::from_secs(600);

impl Table {
    /// Room for `keys` counters in all, so that a first load of a large
    /// store does not grow the set a step at a time (a reload, which finds
    /// every key already here, reserves nothing).
    pub(super) fn reserve_for(&mut self, keys: usize) {
        self.set.reserve(keys.saturating_sub(self.set.len()));
    }

    /// The counters of `id`, new ones at zero the first time; `None` for an
    /// id that cannot be a header value (never a valid key id).
    #[allow(clippy::mutable_key_type)] // `ById` hashes the id alone, which never changes
    pub(super) fn counters(&mut self, id: &str) -> Option<Arc<KeyUsage>> {
        // A reload asks for every key it already knows: no allocation then.
        if let Some(ById(usage)) = self.set.get(id) {
            return Some(usage.clone());
        }
        // Read back as text too (`HeaderValue` takes bytes over 0x7f that
        // `to_str` refuses): `ById` hashes and compares that text.
        let header = HeaderValue::from_str(id)
            .ok()
            .filter(|h| h.to_str().is_ok())?;
        let usage = Arc::new(KeyUsage::new(header));
        self.set.insert(ById(usage.clone()));
        self.generation += 1;
        Some(usage)
    }
}

/// What `UsageTable::fingerprint` returns: equal fingerprints, equal
/// counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageFingerprint {
    generation: u64,
    requests: u64,
}

/// Every key's counters, by id.
#[derive(Debug, Default)]
pub struct UsageTable {
    by_id: Mutex<Table>,
}

impl UsageTable {
    pub(super) fn map(&self) -> std::sync::MutexGuard<'_, Table> {
        // Counters stay usable even if a panic held the lock: they are atomics.
        self.by_id.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The counters of key `id` (new ones at zero the first time); `None`
    /// for an id that cannot be a header value (never a valid key id).
    pub fn for_key(&self, id: &str) -> Option<Arc<KeyUsage>> {
        self.map().counters(id)
    }

    /// Starts key `id` from what was persisted: the later last-used time
    /// wins, and requests counted before start are added.
    pub fn seed(&self, id: &str, sample: UsageSample) {
        let mut table = self.map();
        let Some(usage) = table.counters(id) else {
            return;
        };
        table.generation += 1;
        if let Some(t) = sample.last_used {
            usage.last_used.fetch_max(t, Ordering::Relaxed);
        }
        usage.requests.fetch_add(sample.requests, Ordering::Relaxed);
    }

    /// The use of every key used at all, by id, sorted. A key left out was
    /// never used (what every reader assumes of a key it does not find):
    /// a million-key store with a few keys in use writes a few lines.
    pub fn samples(&self) -> Vec<(String, UsageSample)> {
        let mut all: Vec<(String, UsageSample)> = self
            .map()
            .set
            .iter()
            .filter(|ById(u)| u.requests() > 0 || u.last_used().is_some())
            .map(|ById(u)| {
                let sample = UsageSample {
                    last_used: u.last_used(),
                    requests: u.requests(),
                };
                (u.id().to_owned(), sample)
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Forgets the counters no index has held for `FORGET_AFTER` (as seen
    /// by these sweeps, one after each full load): keys deleted from the
    /// store and persisted counts of ids the store does not have. Without
    /// it the table and `keys.usage` keep deleted keys for ever.
    pub fn forget_unused(&self, now: Instant) {
        let mut table = self.map();
        let Table {
            set,
            generation,
            orphans,
        } = &mut *table;
        let mut still = HashMap::new();
        let before = set.len();
        set.retain(|u| {
            if Arc::strong_count(&u.0) > 1 {
                return true;
            }
            let since = orphans.remove(u.0.id()).unwrap_or(now);
            if now.saturating_duration_since(since) >= FORGET_AFTER {
                return false;
            }
            still.insert(Box::from(u.0.id()), since);
            true
        });
        *orphans = still;
        if set.len() != before {
            *generation += 1;
        }
    }

    /// Changes whenever what `samples` returns does (keys come or go, a
    /// count moves), read in one pass without allocating.
    pub fn fingerprint(&self) -> UsageFingerprint {
        let table = self.map();
        UsageFingerprint {
            generation: table.generation,
            requests: table
                .set
                .iter()
                .fold(0u64, |sum, u| sum.wrapping_add(u.0.requests())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_survive_in_the_table_and_the_last_time_only_moves_forward() {
        let table = UsageTable::default();
        let a = table.for_key("a").unwrap_or_else(|| panic!("valid id"));
        a.record(100);
        a.record(90);
        a.record(100);
        assert_eq!(a.last_used(), Some(100));
        assert_eq!(a.requests(), 3);
        // A later index gets the same counters.
        assert!(
            table
                .for_key("a")
                .is_some_and(|again| Arc::ptr_eq(&a, &again))
        );
        assert!(table.for_key("bad\nid").is_none());
        assert!(
            table.for_key("caf\u{e9}").is_none(),
            "not text once a header value"
        );
        table.seed(
            "a",
            UsageSample {
                last_used: Some(50),
                requests: 10,
            },
        );
        table.seed(
            "b",
            UsageSample {
                last_used: Some(70),
                requests: 1,
            },
        );
        // Known but never used: left out.
        let c = table.for_key("c");
        let samples = table.samples();
        assert_eq!(
            samples,
            vec![
                (
                    "a".into(),
                    UsageSample {
                        last_used: Some(100),
                        requests: 13
                    }
                ),
                (
                    "b".into(),
                    UsageSample {
                        last_used: Some(70),
                        requests: 1
                    }
                ),
            ]
        );
        // Only `a` is held now (here, as an index would): `b` and `c` are
        // forgotten, but only once nothing has held them for FORGET_AFTER.
        drop(c);
        let t0 = Instant::now();
        let ids = |t: &UsageTable| {
            t.samples()
                .into_iter()
                .map(|(id, _)| id)
                .collect::<Vec<_>>()
        };
        table.forget_unused(t0);
        assert_eq!(ids(&table), ["a", "b"], "kept at the first sweep");
        table.forget_unused(t0 + FORGET_AFTER - Duration::from_secs(1));
        assert_eq!(ids(&table), ["a", "b"], "kept within the grace");
        // `b` comes back (a store fixed by hand) and goes again: its grace
        // starts over.
        let b = table.for_key("b");
        table.forget_unused(t0 + FORGET_AFTER);
        drop(b);
        table.forget_unused(t0 + FORGET_AFTER + Duration::from_secs(1));
        table.forget_unused(t0 + FORGET_AFTER * 2);
        assert_eq!(ids(&table), ["a", "b"], "a grace that started over");
        table.forget_unused(t0 + FORGET_AFTER * 2 + Duration::from_secs(1));
        assert_eq!(ids(&table), ["a"]);
        drop(a);
        table.forget_unused(t0 + FORGET_AFTER * 3);
        table.forget_unused(t0 + FORGET_AFTER * 4);
        assert!(table.samples().is_empty());
    }

    #[test]
    fn the_fingerprint_moves_with_every_change_and_only_then() {
        let table = UsageTable::default();
        let a = table.for_key("a").unwrap_or_else(|| panic!("valid id"));
        let mut last = table.fingerprint();
        let mut moved = |what: &str, expect: bool| {
            let now = table.fingerprint();
            assert_eq!(now != last, expect, "{what}");
            last = now;
        };
        moved("nothing", false);
        a.record(100);
        moved("a request", true);
        a.record(100);
        moved("a request in the same second", true);
        table.for_key("a");
        moved("a known key asked for", false);
        table.for_key("b");
        moved("a new key", true);
        table.seed("b", UsageSample::default());
        moved("persisted counts added", true);
        let b = table.for_key("b");
        let t0 = Instant::now();
        table.forget_unused(t0);
        moved("nothing forgotten", false);
        drop(b);
        table.forget_unused(t0);
        moved("a key unheld, not yet forgotten", false);
        table.forget_unused(t0 + FORGET_AFTER);
        moved("a key forgotten", true);
        assert!(
            UsageTable::default()
                .for_key("new")
                .is_some_and(|u| u.last_used().is_none() && u.id() == "new")
        );
    }
}

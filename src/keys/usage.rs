//! Per-key use: the time of the last allowed request and the number of
//! allowed requests. Counted on the request path with two relaxed atomic
//! operations and no lock; read off it, to persist (`reload::usage`) and to
//! show (`keys list`). The table outlives every index: each index built in
//! a process points its entries at the same counters, so a reload loses no
//! count.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::rate::RateCell;

/// One key's use, and its rate-limit bucket (state that, like the
/// counts, must outlive every index and costs no lookup: the index entry
/// points here).
#[derive(Debug)]
pub struct KeyUsage {
    /// Unix seconds of the last allowed request; 0 for none.
    last_used: AtomicU64,
    requests: AtomicU64,
    /// Unique in the process: names the key in tables keyed by it (the
    /// per-client limits) without a string.
    pub serial: u64,
    /// The key's own rate-limit bucket.
    pub rate: RateCell,
}

impl Default for KeyUsage {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        KeyUsage {
            last_used: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            serial: NEXT.fetch_add(1, Ordering::Relaxed),
            rate: RateCell::default(),
        }
    }
}

impl KeyUsage {
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

/// Every key's counters, by id.
#[derive(Debug, Default)]
pub struct UsageTable {
    by_id: Mutex<HashMap<String, Arc<KeyUsage>>>,
}

impl UsageTable {
    pub(super) fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<KeyUsage>>> {
        // Counters stay usable even if a panic held the lock: they are atomics.
        self.by_id.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The counters of key `id` (new ones at zero the first time).
    pub fn for_key(&self, id: &str) -> Arc<KeyUsage> {
        counters(&mut self.map(), id)
    }

    /// Starts key `id` from what was persisted: the later last-used time
    /// wins, and requests counted before start are added.
    pub fn seed(&self, id: &str, sample: UsageSample) {
        let usage = self.for_key(id);
        if let Some(t) = sample.last_used {
            usage.last_used.fetch_max(t, Ordering::Relaxed);
        }
        usage.requests.fetch_add(sample.requests, Ordering::Relaxed);
    }

    /// Every key's use now, by id, sorted.
    pub fn samples(&self) -> Vec<(String, UsageSample)> {
        let mut all: Vec<(String, UsageSample)> = self
            .map()
            .iter()
            .map(|(id, u)| {
                let sample = UsageSample {
                    last_used: u.last_used(),
                    requests: u.requests(),
                };
                (id.clone(), sample)
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Forgets keys that are gone (`keep` says which stay).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.map().retain(|id, _| keep(id));
    }
}

/// The counters of `id` in a locked table: an index build locks it once
/// for all its keys.
pub(super) fn counters(map: &mut HashMap<String, Arc<KeyUsage>>, id: &str) -> Arc<KeyUsage> {
    // A reload asks for every key it already knows: no allocation then.
    if let Some(usage) = map.get(id) {
        return usage.clone();
    }
    map.entry(id.to_string()).or_default().clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_survive_in_the_table_and_the_last_time_only_moves_forward() {
        let table = UsageTable::default();
        let a = table.for_key("a");
        a.record(100);
        a.record(90);
        a.record(100);
        assert_eq!(a.last_used(), Some(100));
        assert_eq!(a.requests(), 3);
        // A later index gets the same counters.
        assert!(Arc::ptr_eq(&a, &table.for_key("a")));
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
        table.retain(|id| id == "b");
        assert_eq!(table.samples().len(), 1);
        assert_eq!(UsageTable::default().for_key("new").last_used(), None);
    }
}

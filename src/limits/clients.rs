//! The per-client buckets: one per (read-only key, client address) pair,
//! in a table sharded 16 ways so that requests for different pairs rarely
//! meet on a lock, and a pair already known costs a read lock and a hash.
//! Bounded: at most `max_clients` pairs; the sweep drops pairs whose bucket
//! is full again (a new entry would behave the same).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use crate::keys::{KeyEntry, RateCell};

const SHARDS: usize = 16;

/// One pair's bucket, and its names for the fleet sync.
#[derive(Debug)]
pub struct ClientCell {
    pub rate: RateCell,
    pub key_id: Box<str>,
    pub ip: IpAddr,
}

type Shard = RwLock<HashMap<(u64, IpAddr), Arc<ClientCell>>>;

pub struct ClientTable {
    shards: Box<[Shard]>,
    hasher: RandomState,
    len: AtomicUsize,
    max: usize,
}

impl ClientTable {
    pub fn new(max: usize) -> ClientTable {
        ClientTable {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            hasher: RandomState::new(),
            len: AtomicUsize::new(0),
            max,
        }
    }

    fn shard(&self, k: &(u64, IpAddr)) -> &Shard {
        let i = (self.hasher.hash_one(k) % SHARDS as u64) as usize;
        &self.shards[i]
    }

    /// The bucket of `key` for `client`, made on first use; `None` when the
    /// table is full.
    pub fn get(&self, key: &KeyEntry, client: IpAddr) -> Option<Arc<ClientCell>> {
        let k = (key.usage.serial, client);
        let shard = self.shard(&k);
        if let Some(cell) = shard.read().unwrap_or_else(PoisonError::into_inner).get(&k) {
            return Some(cell.clone());
        }
        let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(cell) = map.get(&k) {
            return Some(cell.clone());
        }
        // Reserve a place first, so that racing inserts cannot pass the bound.
        if self
            .len
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_err()
        {
            return None;
        }
        let cell = Arc::new(ClientCell {
            rate: RateCell::default(),
            key_id: key.id().into(),
            ip: client,
        });
        map.insert(k, cell.clone());
        Some(cell)
    }

    /// Drops the pairs whose bucket is full at `now` and that nothing else
    /// holds (a request in flight, the fleet sync); returns the pairs left.
    pub fn sweep(&self, now: u64) -> usize {
        for shard in self.shards.iter() {
            let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
            let before = map.len();
            map.retain(|_, c| !(Arc::strong_count(c) == 1 && c.rate.is_idle(now)));
            self.len.fetch_sub(before - map.len(), Ordering::Relaxed);
        }
        self.len.load(Ordering::Relaxed)
    }
}

//! The base map of an index: digest → slot, for a million keys in as little
//! memory as a lookup allows. Entries sit densely in one vector (56 bytes
//! each: digest and slot) and a hash table holds only their positions (4
//! bytes and a control byte a bucket). A hash map holding the entries
//! inline would leave its empty buckets (up to half of them, by its load
//! factor) as wide as an entry: 120 MB instead of 67 MB at a million keys.
//! The price is one more memory access per lookup, measured in
//! PERFORMANCE.md ("Large stores").

use hashbrown::hash_table::{Entry, HashTable};

use super::Slot;
use crate::keys::KeyHash;

/// Digest → slot; filled once (a build or a fold of the overlay), then only
/// read.
#[derive(Debug, Clone, Default)]
pub(super) struct DenseMap {
    items: Vec<(KeyHash, Slot)>,
    positions: HashTable<u32>,
}

/// The digest is uniformly random already: its first 8 bytes are the hash.
fn hash_of(digest: &KeyHash) -> u64 {
    let b = digest.as_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

impl DenseMap {
    /// Room for `n` entries, so that a build allocates each part once.
    pub(super) fn with_capacity(n: usize) -> Self {
        DenseMap {
            items: Vec::with_capacity(n),
            positions: HashTable::with_capacity(n),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.items.len()
    }

    pub(super) fn get(&self, digest: &KeyHash) -> Option<&Slot> {
        let at = *self
            .positions
            .find(hash_of(digest), |&i| self.items[i as usize].0 == *digest)?;
        Some(&self.items[at as usize].1)
    }

    /// Sets the slot of `digest`, replacing the one it had.
    pub(super) fn insert(&mut self, digest: KeyHash, slot: Slot) {
        let items = &mut self.items;
        // One probe of the table for both cases (a build inserts a million).
        match self.positions.entry(
            hash_of(&digest),
            |&i| items[i as usize].0 == digest,
            |&i| hash_of(&items[i as usize].0),
        ) {
            Entry::Occupied(e) => items[*e.get() as usize].1 = slot,
            Entry::Vacant(e) => {
                // A store of more than 4 billion entries does not fit in
                // memory anyway; positions stay u32 to keep the table small.
                e.insert(u32::try_from(items.len()).unwrap_or(u32::MAX));
                items.push((digest, slot));
            }
        }
    }

    /// The entries in the order they were first inserted (a build's: the
    /// store's order).
    pub(super) fn items(&self) -> &[(KeyHash, Slot)] {
        &self.items
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &(KeyHash, Slot)> {
        self.items.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Against std's map: every insert sequence (with repeated digests,
        /// and digests that share their first 8 bytes) reads back the same.
        #[test]
        fn reads_back_what_a_hash_map_would(ops in prop::collection::vec((0u8..40, 0u8..3), 0..200)) {
            let digest = |k: u8| {
                let mut b = [0u8; 32];
                // Half the keys collide on the hash (first 8 bytes).
                b[8] = k;
                if k.is_multiple_of(2) {
                    b[0] = k;
                }
                KeyHash::from_slice(&b).unwrap_or_else(|e| panic!("{e}"))
            };
            let mut dense = DenseMap::default();
            let mut std = std::collections::HashMap::new();
            for (k, v) in &ops {
                let slot = if *v == 0 { Slot::Revoked } else { Slot::Absent };
                dense.insert(digest(*k), slot.clone());
                std.insert(digest(*k), *v == 0);
            }
            prop_assert_eq!(dense.len(), std.len());
            for k in 0u8..50 {
                let got = dense.get(&digest(k)).map(|s| matches!(s, Slot::Revoked));
                prop_assert_eq!(got, std.get(&digest(k)).copied());
            }
        }
    }
}

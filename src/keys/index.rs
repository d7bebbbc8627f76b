//! `KeyIndex`: the gateway's in-memory view of a store snapshot, looked up by
//! digest on every request. Immutable once built: a file reload builds a new
//! one; a pushed change (PostgreSQL store) makes a new one that shares the big
//! base map and carries the changes in a small overlay, so one change costs
//! the overlay's size, not a rebuild of a million keys. When the overlay grows
//! past `MAX_OVERLAY` entries it is folded into a new base: per change, at most
//! a copy of 4096 entries plus 1/4096 of a full rebuild.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderValue;

use super::hash::DigestState;
use super::{Access, KeyHash, StoreSnapshot};

/// What the request path needs to know about a key; built once per reload so
/// that a request allocates nothing to name its key to the backend.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    /// The key id, kept only as the ready `x-keygate-key-id` header value
    /// (ids are `[a-z0-9_]`, so it is also valid text): one copy per key.
    pub id_header: HeaderValue,
    pub access: Access,
    pub expires: Option<SystemTime>,
    pub origins: Box<[String]>,
}

#[derive(Debug, Clone)]
enum Slot {
    Active(KeyEntry),
    Revoked,
    /// In an overlay: the key is gone (its row became unreadable), masking
    /// the base map.
    Absent,
}

/// Result of looking a digest up.
#[derive(Debug, Clone, Copy)]
pub enum Lookup<'a> {
    Found(&'a KeyEntry),
    /// On the revocation list: refused whatever the store says.
    Revoked,
    Unknown,
}

type Map = HashMap<KeyHash, Slot, DigestState>;

/// The current key index, shared by every request and swapped whole by the
/// publisher in `crate::reload`: a request loads it once and keeps that
/// snapshot for its whole life.
pub type SharedIndex = Arc<arc_swap::ArcSwap<KeyIndex>>;

/// Overlay size that triggers a fold into the base. Each change copies the
/// overlay, each fold copies the base: 4096 keeps both small for 1M keys.
const MAX_OVERLAY: usize = 4096;

/// Digest → key, plus counts for the `keygate_keys` gauge.
#[derive(Debug, Default, Clone)]
pub struct KeyIndex {
    base: Arc<Map>,
    /// Changes since `base` was built; consulted first. Usually empty.
    overlay: Map,
    read_only: usize,
    full_access: usize,
    /// Store keys that are also on the revocation list (refused).
    revoked_in_store: usize,
    /// False only for the placeholder before the first successful load.
    loaded: bool,
}

/// Changes pushed by a store since the index was built: keys added or
/// changed (whole records), and hashes revoked.
#[derive(Debug, Default, Clone)]
pub struct IndexDelta {
    pub upserts: Vec<super::KeyRecord>,
    pub revoked: Vec<KeyHash>,
    /// Keys to drop (not revoke): rows a gateway could not read.
    pub removed: Vec<KeyHash>,
}

impl IndexDelta {
    pub fn len(&self) -> usize {
        self.upserts.len() + self.revoked.len() + self.removed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Ids are `[a-z0-9_]`, always a valid header value.
fn entry(r: &super::KeyRecord) -> Option<KeyEntry> {
    let id_header = HeaderValue::from_str(r.id.as_str()).ok()?;
    Some(KeyEntry {
        id_header,
        access: r.access,
        expires: r.expires,
        origins: r.origins.clone().into_boxed_slice(),
    })
}

impl KeyEntry {
    /// The key's public id.
    pub fn id(&self) -> &str {
        self.id_header.to_str().unwrap_or_default()
    }
}

impl KeyIndex {
    /// Builds the index. Revoked hashes win over store entries.
    pub fn build(snapshot: &StoreSnapshot) -> Self {
        let mut map = HashMap::with_capacity_and_hasher(
            snapshot.keys.len() + snapshot.revoked.len(),
            DigestState::default(),
        );
        let (mut read_only, mut full_access, mut revoked_in_store) = (0, 0, 0);
        for r in snapshot.keys.records() {
            if snapshot.revoked.contains(&r.hash) {
                revoked_in_store += 1;
                continue;
            }
            let Some(e) = entry(r) else { continue };
            match r.access {
                Access::ReadOnly => read_only += 1,
                Access::FullAccess => full_access += 1,
            }
            map.insert(r.hash, Slot::Active(e));
        }
        for h in &snapshot.revoked {
            map.insert(*h, Slot::Revoked);
        }
        KeyIndex {
            base: Arc::new(map),
            overlay: Map::default(),
            read_only,
            full_access,
            revoked_in_store,
            loaded: true,
        }
    }

    /// A new index with `delta` applied; `self` is untouched (requests in
    /// flight keep using it). Revocation is final: an upsert of a revoked
    /// hash stays refused.
    pub fn apply(&self, delta: &IndexDelta) -> Self {
        let mut next = self.clone();
        for r in &delta.upserts {
            if matches!(next.slot(&r.hash), Some(Slot::Revoked)) {
                continue;
            }
            let Some(e) = entry(r) else { continue };
            next.uncount(&r.hash);
            match r.access {
                Access::ReadOnly => next.read_only += 1,
                Access::FullAccess => next.full_access += 1,
            }
            next.overlay.insert(r.hash, Slot::Active(e));
        }
        for h in &delta.removed {
            if matches!(next.slot(h), Some(Slot::Active(_))) {
                next.uncount(h);
                next.overlay.insert(*h, Slot::Absent);
            }
        }
        for h in &delta.revoked {
            next.uncount(h);
            next.overlay.insert(*h, Slot::Revoked);
        }
        next.loaded = true;
        if next.overlay.len() > MAX_OVERLAY {
            next.compact();
        }
        next
    }

    /// Folds the overlay into a new base map.
    fn compact(&mut self) {
        let mut map = Map::clone(&self.base);
        for (h, slot) in self.overlay.drain() {
            match slot {
                Slot::Absent => {
                    map.remove(&h);
                }
                s => {
                    map.insert(h, s);
                }
            }
        }
        self.base = Arc::new(map);
    }

    /// Removes an active key at `hash` from the counts (it is being replaced).
    fn uncount(&mut self, hash: &KeyHash) {
        match self.slot(hash) {
            Some(Slot::Active(e)) if e.access == Access::ReadOnly => {
                self.read_only = self.read_only.saturating_sub(1);
            }
            Some(Slot::Active(_)) => self.full_access = self.full_access.saturating_sub(1),
            _ => {}
        }
    }

    fn slot(&self, hash: &KeyHash) -> Option<&Slot> {
        if !self.overlay.is_empty()
            && let Some(s) = self.overlay.get(hash)
        {
            return Some(s);
        }
        self.base.get(hash)
    }

    /// False for the empty placeholder a gateway holds before its first load.
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// Changes carried beside the base map (for tests and diagnostics).
    pub fn overlay_len(&self) -> usize {
        self.overlay.len()
    }

    pub fn lookup(&self, hash: &KeyHash) -> Lookup<'_> {
        match self.slot(hash) {
            Some(Slot::Active(e)) => Lookup::Found(e),
            Some(Slot::Revoked) => Lookup::Revoked,
            Some(Slot::Absent) | None => Lookup::Unknown,
        }
    }

    /// Active keys of one access type.
    pub fn count(&self, access: Access) -> usize {
        match access {
            Access::ReadOnly => self.read_only,
            Access::FullAccess => self.full_access,
        }
    }

    /// Keys listed in the store but refused because they are revoked.
    pub fn revoked_in_store(&self) -> usize {
        self.revoked_in_store
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyId, KeyRecord, KeySet};
    use std::time::UNIX_EPOCH;

    fn snapshot(revoke: &[&str]) -> StoreSnapshot {
        let keys = KeySet::from_records(vec![
            record("a", "sa", Access::ReadOnly),
            record("b", "sb", Access::FullAccess),
        ])
        .unwrap_or_else(|(_, e)| panic!("{e}"));
        StoreSnapshot {
            keys,
            revoked: revoke.iter().map(|s| KeyHash::of(s.as_bytes())).collect(),
        }
    }

    #[test]
    fn finds_keys_by_digest() {
        let idx = KeyIndex::build(&snapshot(&[]));
        assert!(matches!(idx.lookup(&KeyHash::of(b"sa")), Lookup::Found(e) if e.id() == "a"));
        assert!(matches!(idx.lookup(&KeyHash::of(b"nope")), Lookup::Unknown));
        assert_eq!(
            (idx.count(Access::ReadOnly), idx.count(Access::FullAccess)),
            (1, 1)
        );
    }

    #[test]
    fn revocation_wins_over_the_store() {
        let idx = KeyIndex::build(&snapshot(&["sb", "gone"]));
        assert!(matches!(idx.lookup(&KeyHash::of(b"sb")), Lookup::Revoked));
        assert!(matches!(idx.lookup(&KeyHash::of(b"gone")), Lookup::Revoked));
        assert_eq!(idx.count(Access::FullAccess), 0);
        assert_eq!(idx.revoked_in_store(), 1);
    }

    fn record(id: &str, secret: &str, access: Access) -> KeyRecord {
        KeyRecord {
            id: KeyId::parse(id).unwrap_or_else(|e| panic!("{e}")),
            name: id.into(),
            access,
            hash: KeyHash::of(secret.as_bytes()),
            created: UNIX_EPOCH,
            expires: None,
            origins: vec![],
        }
    }

    fn counts(idx: &KeyIndex) -> (usize, usize) {
        (idx.count(Access::ReadOnly), idx.count(Access::FullAccess))
    }

    #[test]
    fn a_delta_adds_changes_and_revokes_without_touching_the_old_index() {
        let old = KeyIndex::build(&snapshot(&[]));
        let new = old.apply(&IndexDelta {
            upserts: vec![
                record("c", "sc", Access::ReadOnly),
                // b downgraded
                record("b", "sb", Access::ReadOnly),
            ],
            revoked: vec![KeyHash::of(b"sa")],
            removed: vec![],
        });
        assert!(matches!(new.lookup(&KeyHash::of(b"sc")), Lookup::Found(e) if e.id() == "c"));
        assert!(
            matches!(new.lookup(&KeyHash::of(b"sb")), Lookup::Found(e) if e.access == Access::ReadOnly)
        );
        assert!(matches!(new.lookup(&KeyHash::of(b"sa")), Lookup::Revoked));
        assert_eq!(counts(&new), (2, 0));
        // The old snapshot, still held by requests in flight, is unchanged.
        assert!(matches!(old.lookup(&KeyHash::of(b"sa")), Lookup::Found(_)));
        assert!(
            matches!(old.lookup(&KeyHash::of(b"sb")), Lookup::Found(e) if e.access == Access::FullAccess)
        );
        assert_eq!(counts(&old), (1, 1));
    }

    #[test]
    fn revocation_is_final_against_later_upserts() {
        let idx = KeyIndex::build(&snapshot(&[])).apply(&IndexDelta {
            upserts: vec![],
            revoked: vec![KeyHash::of(b"sa")],
            removed: vec![],
        });
        let idx = idx.apply(&IndexDelta {
            upserts: vec![record("a", "sa", Access::ReadOnly)],
            revoked: vec![],
            removed: vec![],
        });
        assert!(matches!(idx.lookup(&KeyHash::of(b"sa")), Lookup::Revoked));
        assert_eq!(counts(&idx), (0, 1));
    }

    #[test]
    fn a_large_overlay_is_folded_into_the_base_with_the_same_answers() {
        let mut idx = KeyIndex::build(&snapshot(&[]));
        for i in 0..5000 {
            idx = idx.apply(&IndexDelta {
                upserts: vec![record(&format!("k{i}"), &format!("s{i}"), Access::ReadOnly)],
                ..IndexDelta::default()
            });
        }
        assert!(idx.overlay_len() < 5000, "overlay was never compacted");
        assert_eq!(counts(&idx), (5001, 1));
        for i in (0..5000).step_by(499) {
            let h = KeyHash::of(format!("s{i}").as_bytes());
            assert!(matches!(idx.lookup(&h), Lookup::Found(_)));
        }
    }

    #[test]
    fn a_removed_key_is_unknown_and_stays_so_through_a_fold() {
        let idx = KeyIndex::build(&snapshot(&[])).apply(&IndexDelta {
            removed: vec![KeyHash::of(b"sa"), KeyHash::of(b"never-there")],
            ..IndexDelta::default()
        });
        assert!(matches!(idx.lookup(&KeyHash::of(b"sa")), Lookup::Unknown));
        assert_eq!(counts(&idx), (0, 1));
        let mut folded = idx.clone();
        folded.compact();
        assert!(matches!(
            folded.lookup(&KeyHash::of(b"sa")),
            Lookup::Unknown
        ));
        assert!(matches!(
            folded.lookup(&KeyHash::of(b"sb")),
            Lookup::Found(_)
        ));
        // Fixed later: back in the index.
        let back = folded.apply(&IndexDelta {
            upserts: vec![record("a", "sa", Access::ReadOnly)],
            ..IndexDelta::default()
        });
        assert!(matches!(back.lookup(&KeyHash::of(b"sa")), Lookup::Found(_)));
        assert_eq!(counts(&back), (1, 1));
    }

    #[test]
    fn the_placeholder_is_not_loaded_and_any_build_or_delta_is() {
        let empty = KeyIndex::default();
        assert!(!empty.is_loaded());
        assert!(empty.apply(&IndexDelta::default()).is_loaded());
        assert!(KeyIndex::build(&StoreSnapshot::default()).is_loaded());
    }
}

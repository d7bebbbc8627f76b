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
use super::{Access, KeyHash, KeyUsage, RateLimit, StoreSnapshot, UsageTable};
use table::DenseMap;

mod table;

/// What the request path needs to know about a key; built once per reload so
/// that a request allocates nothing to name its key to the backend.
///
/// Kept small (24 bytes): the index holds a million of these side by side
/// (`table::DenseMap`). The id lives once per process with the key's counters, and
/// what most keys do not have (an expiry, origins, an end of grace, a limit
/// of their own) lives apart, behind one pointer that is `None` for a plain
/// key.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    /// The key's use and id, shared with every other index of this process.
    pub usage: Arc<KeyUsage>,
    rare: Option<Box<Rare>>,
    pub access: Access,
    /// This is a rotated key's previous secret (counted apart in metrics).
    pub previous: bool,
}

/// The fields few keys have.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rare {
    pub expires: Option<SystemTime>,
    pub origins: Box<[String]>,
    /// From this time the hash is refused as revoked (`invalid_key`, unlike
    /// `expires`): the end of a rotated secret's grace period, or a
    /// revocation listed for a time still to come.
    pub not_after: Option<SystemTime>,
    /// The key's own rate limit (`None`: its access type's default).
    pub rate_limit: Option<RateLimit>,
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
    base: Arc<DenseMap>,
    /// Changes since `base` was built; consulted first. Usually empty.
    overlay: Map,
    read_only: usize,
    full_access: usize,
    /// Store keys that are also on the revocation list (refused).
    revoked_in_store: usize,
    /// False only for the placeholder before the first successful load.
    loaded: bool,
    /// The counters every index of this process shares (see `usage`).
    usage: Arc<UsageTable>,
}

/// Changes pushed by a store since the index was built: keys added or
/// changed (whole records), and hashes revoked.
#[derive(Debug, Default, Clone)]
pub struct IndexDelta {
    pub upserts: Vec<super::KeyRecord>,
    pub revoked: Vec<KeyHash>,
    /// Hashes revoked from a time still to come (a rotated secret's grace).
    pub revoked_later: Vec<(KeyHash, SystemTime)>,
    /// Keys to drop (not revoke): rows a gateway could not read.
    pub removed: Vec<KeyHash>,
}

impl IndexDelta {
    pub fn len(&self) -> usize {
        self.upserts.len() + self.revoked.len() + self.revoked_later.len() + self.removed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The entries a record puts in the index: its secret's, and a previous
/// secret's until its grace ends. `later` gives a hash's revocation time to
/// come, if any. Ids are `[a-z0-9_]`, always a valid header value.
fn entries(
    r: &super::KeyRecord,
    later: impl Fn(&KeyHash) -> Option<SystemTime>,
    usage: Arc<KeyUsage>,
) -> (KeyEntry, Option<(KeyHash, KeyEntry)>) {
    let current = KeyEntry::new(
        r.access,
        usage,
        Rare {
            expires: r.expires,
            origins: r.origins.clone().into_boxed_slice(),
            not_after: later(&r.hash),
            rate_limit: r.rate_limit,
        },
    );
    let previous = r.previous.map(|p| {
        let until = later(&p.hash).map_or(p.until, |t| t.min(p.until));
        let mut entry = current.clone();
        entry.previous = true;
        entry.rare.get_or_insert_with(Box::default).not_after = Some(until);
        (p.hash, entry)
    });
    (current, previous)
}

/// Finds a new load's counters by walking the index it replaces alongside
/// the store. A store reloaded is mostly the same keys in the same order,
/// so the key at the walk's place is usually the one asked for, and its
/// counters are there without a lookup by id in the usage table: at a
/// million keys that lookup was a fifth of a reload (a hash of the id and
/// two or three cache misses), this a read of memory the walk goes through
/// in order (PERFORMANCE.md, session 12).
struct Guide<'a> {
    items: &'a [(KeyHash, Slot)],
    at: usize,
}

impl Guide<'_> {
    /// How far ahead of its place the walk looks: a few keys deleted since
    /// the last load are stepped over. Past that (a run of deletions, keys
    /// reordered, a fold of the overlay) it answers nothing and the usage
    /// table does; as the walk moves only when it finds a key, that lasts
    /// for the rest of the store if the walk lost its place for good. Such a
    /// load costs what every load cost before the guide, plus a few
    /// comparisons of ids already in the caches.
    const AHEAD: usize = 4;

    /// The counters the old index gave `id`, which are the usage table's
    /// for it (every index of a process counts in the same table).
    fn counters(&mut self, id: &str) -> Option<Arc<KeyUsage>> {
        let end = self.items.len().min(self.at + Self::AHEAD);
        for i in self.at..end {
            let Slot::Active(e) = &self.items[i].1 else {
                continue;
            };
            if e.usage.id_header().as_bytes() != id.as_bytes() {
                continue;
            }
            // Past this key's entries: a rotated key has two side by side.
            let mut next = i + 1;
            while let Some((_, Slot::Active(n))) = self.items.get(next)
                && Arc::ptr_eq(&n.usage, &e.usage)
            {
                next += 1;
            }
            self.at = next;
            return Some(e.usage.clone());
        }
        None
    }
}

impl KeyEntry {
    pub fn new(access: Access, usage: Arc<KeyUsage>, rare: Rare) -> Self {
        KeyEntry {
            access,
            previous: false,
            usage,
            rare: (rare != Rare::default()).then(|| Box::new(rare)),
        }
    }

    /// The key's public id.
    pub fn id(&self) -> &str {
        self.usage.id()
    }

    /// The id as the ready `x-keygate-key-id` header value.
    pub fn id_header(&self) -> &HeaderValue {
        self.usage.id_header()
    }

    pub fn expires(&self) -> Option<SystemTime> {
        self.rare.as_ref().and_then(|r| r.expires)
    }

    /// Browser origins allowed for the key; empty means any.
    pub fn origins(&self) -> &[String] {
        self.rare.as_ref().map_or(&[], |r| &r.origins)
    }

    pub fn not_after(&self) -> Option<SystemTime> {
        self.rare.as_ref().and_then(|r| r.not_after)
    }

    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.rare.as_ref().and_then(|r| r.rate_limit)
    }

    /// Refuses the hash from `t` on (or from its earlier end already set).
    pub fn end_at(&mut self, t: SystemTime) {
        let rare = self.rare.get_or_insert_with(Box::default);
        rare.not_after = Some(rare.not_after.map_or(t, |n| n.min(t)));
    }
}

impl KeyIndex {
    /// Builds the index with usage counters of its own (tools and tests).
    pub fn build(snapshot: &StoreSnapshot) -> Self {
        Self::build_with_usage(snapshot, Arc::default())
    }

    /// Builds the index. Revoked hashes win over store entries; a hash
    /// revoked from a time to come works until then. Entries count their
    /// use in `usage`, shared with the indexes before and after this one.
    pub fn build_with_usage(snapshot: &StoreSnapshot, usage: Arc<UsageTable>) -> Self {
        Self::build_guided(snapshot, usage, None)
    }

    /// Builds the index of a whole new load of the store that `previous`
    /// was built from, counting in its usage table. The same index as
    /// `build_with_usage` gives; `previous` only makes it faster (`Guide`).
    pub fn build_after(snapshot: &StoreSnapshot, previous: &KeyIndex) -> Self {
        Self::build_guided(snapshot, previous.usage.clone(), Some(previous))
    }

    fn build_guided(
        snapshot: &StoreSnapshot,
        usage: Arc<UsageTable>,
        previous: Option<&KeyIndex>,
    ) -> Self {
        let rotated = snapshot.keys.records().iter();
        let rotated = rotated.filter(|r| r.previous.is_some()).count();
        let mut map =
            DenseMap::with_capacity(snapshot.keys.len() + rotated + snapshot.revoked.len());
        let (mut read_only, mut full_access, mut revoked_in_store) = (0, 0, 0);
        let later = |h: &KeyHash| snapshot.revoked_later.get(h).copied();
        let mut counters = usage.map();
        counters.reserve_for(snapshot.keys.len());
        let mut guide = previous.map(|p| Guide {
            items: p.base.items(),
            at: 0,
        });
        for r in snapshot.keys.records() {
            let id = r.id.as_str();
            let found = guide.as_mut().and_then(|g| g.counters(id));
            let Some(usage) = found.or_else(|| counters.counters(id)) else {
                continue;
            };
            let (current, previous) = entries(r, later, usage);
            if let Some((hash, e)) = previous
                && !snapshot.revoked.contains(&hash)
            {
                map.insert(hash, Slot::Active(e));
            }
            if snapshot.revoked.contains(&r.hash) {
                revoked_in_store += 1;
                continue;
            }
            match r.access {
                Access::ReadOnly => read_only += 1,
                Access::FullAccess => full_access += 1,
            }
            map.insert(r.hash, Slot::Active(current));
        }
        drop(counters);
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
            usage,
        }
    }

    /// The usage counters this index's entries count in.
    pub fn usage(&self) -> &Arc<UsageTable> {
        &self.usage
    }

    /// A new index with `delta` applied; `self` is untouched (requests in
    /// flight keep using it). Revocation is final: an upsert of a revoked
    /// hash stays refused.
    pub fn apply(&self, delta: &IndexDelta) -> Self {
        let mut next = self.clone();
        let later = |h: &KeyHash| {
            delta
                .revoked_later
                .iter()
                .filter(|(r, _)| r == h)
                .map(|(_, t)| *t)
                .min()
        };
        let usage = self.usage.clone();
        let mut counters = usage.map();
        for r in &delta.upserts {
            let Some(usage) = counters.counters(r.id.as_str()) else {
                continue;
            };
            let (current, previous) = entries(r, later, usage);
            if let Some((hash, e)) = previous
                && !matches!(next.slot(&hash), Some(Slot::Revoked))
            {
                // The rotated-away secret: no longer counted as a key.
                next.uncount(&hash);
                next.overlay.insert(hash, Slot::Active(e));
            }
            if matches!(next.slot(&r.hash), Some(Slot::Revoked)) {
                continue;
            }
            next.uncount(&r.hash);
            match r.access {
                Access::ReadOnly => next.read_only += 1,
                Access::FullAccess => next.full_access += 1,
            }
            next.overlay.insert(r.hash, Slot::Active(current));
        }
        for (h, t) in &delta.revoked_later {
            // A hash still in the index works until then; one that is not
            // needs nothing (unknown until then, revoked after).
            if let Some(Slot::Active(e)) = next.slot(h) {
                let mut e = e.clone();
                e.end_at(*t);
                next.overlay.insert(*h, Slot::Active(e));
            }
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
        let mut map = DenseMap::with_capacity(self.base.len() + self.overlay.len());
        for (h, slot) in self.base.iter() {
            if !self.overlay.contains_key(h) {
                map.insert(*h, slot.clone());
            }
        }
        for (h, slot) in self.overlay.drain() {
            if !matches!(slot, Slot::Absent) {
                map.insert(h, slot);
            }
        }
        self.base = Arc::new(map);
    }

    /// Removes an active key at `hash` from the counts (it is being replaced).
    fn uncount(&mut self, hash: &KeyHash) {
        match self.slot(hash) {
            Some(Slot::Active(e)) if e.previous => {}
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
    #[test]
    fn an_entry_stays_small_and_keeps_rare_fields_apart() {
        // The index holds a million of these inline: keep them at 24 bytes,
        // and a slot (an entry or a revocation) no larger.
        assert!(
            std::mem::size_of::<KeyEntry>() <= 24 && std::mem::size_of::<Slot>() <= 24,
            "{} {}",
            std::mem::size_of::<KeyEntry>(),
            std::mem::size_of::<Slot>()
        );
        let plain = KeyEntry::new(
            Access::ReadOnly,
            Arc::new(KeyUsage::new(HeaderValue::from_static("k"))),
            Rare::default(),
        );
        assert!(plain.rare.is_none() && plain.origins().is_empty() && plain.expires().is_none());
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(100);
        let mut ended = plain.clone();
        ended.end_at(t);
        ended.end_at(t + std::time::Duration::from_secs(1));
        assert_eq!(ended.not_after(), Some(t), "the earlier end wins");
    }

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
            revoked_later: Default::default(),
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
            previous: None,
            rate_limit: None,
        }
    }

    fn counts(idx: &KeyIndex) -> (usize, usize) {
        (idx.count(Access::ReadOnly), idx.count(Access::FullAccess))
    }

    #[test]
    fn a_delta_adds_changes_and_revokes_without_touching_the_old_index() {
        let old = KeyIndex::build(&snapshot(&[]));
        let new = old.apply(&IndexDelta {
            revoked_later: vec![],
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
            revoked_later: vec![],
            upserts: vec![],
            revoked: vec![KeyHash::of(b"sa")],
            removed: vec![],
        });
        let idx = idx.apply(&IndexDelta {
            revoked_later: vec![],
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
                revoked_later: vec![],
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
            revoked_later: vec![],
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
            revoked_later: vec![],
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

    #[test]
    fn a_previous_secret_works_until_its_grace_ends_and_is_not_counted() {
        let until = UNIX_EPOCH + std::time::Duration::from_secs(100);
        let mut a = record("a", "new", Access::ReadOnly);
        a.previous = Some(crate::keys::record::Previous {
            hash: KeyHash::of(b"old"),
            until,
        });
        let later = until + std::time::Duration::from_secs(50);
        let keys = KeySet::from_records(vec![a, record("b", "sb", Access::FullAccess)])
            .unwrap_or_else(|(_, e)| panic!("{e}"));
        let idx = KeyIndex::build(&StoreSnapshot {
            keys,
            revoked: Default::default(),
            // The current secret of "b" is on the list from `later`.
            revoked_later: [(KeyHash::of(b"sb"), later)].into_iter().collect(),
        });
        assert!(matches!(idx.lookup(&KeyHash::of(b"new")),
            Lookup::Found(e) if e.id() == "a" && !e.previous && e.not_after().is_none()));
        assert!(matches!(idx.lookup(&KeyHash::of(b"old")),
            Lookup::Found(e) if e.id() == "a" && e.previous && e.not_after() == Some(until)));
        assert!(matches!(idx.lookup(&KeyHash::of(b"sb")),
            Lookup::Found(e) if e.not_after() == Some(later)));
        assert_eq!(counts(&idx), (1, 1));
        // Pushed as a change (PostgreSQL): "b" rotates; its old secret
        // becomes the previous one and leaves the counts.
        let mut b = record("b", "sb2", Access::FullAccess);
        b.previous = Some(crate::keys::record::Previous {
            hash: KeyHash::of(b"sb"),
            until,
        });
        let next = idx.apply(&IndexDelta {
            upserts: vec![b],
            revoked_later: vec![(KeyHash::of(b"sb"), until)],
            ..IndexDelta::default()
        });
        assert!(matches!(next.lookup(&KeyHash::of(b"sb")),
            Lookup::Found(e) if e.previous && e.not_after() == Some(until)));
        assert!(matches!(next.lookup(&KeyHash::of(b"sb2")), Lookup::Found(e) if !e.previous));
        assert_eq!(counts(&next), (1, 1));
    }

    #[test]
    fn a_build_after_another_finds_the_counters_a_lookup_by_id_would() {
        let until = UNIX_EPOCH + std::time::Duration::from_secs(100);
        let rotated = |id: &str, secret: &str, old: &str| {
            let mut r = record(id, secret, Access::ReadOnly);
            r.previous = Some(crate::keys::record::Previous {
                hash: KeyHash::of(old.as_bytes()),
                until,
            });
            r
        };
        let store = |records: Vec<KeyRecord>| StoreSnapshot {
            keys: KeySet::from_records(records).unwrap_or_else(|(_, e)| panic!("{e}")),
            revoked: [KeyHash::of(b"gone")].into_iter().collect(),
            revoked_later: Default::default(),
        };
        let ids: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
        let first: Vec<KeyRecord> = ids
            .iter()
            .map(|id| match id.as_str() {
                "k4" => rotated(id, "s4", "o4"),
                _ => record(id, &format!("s{id}"), Access::ReadOnly),
            })
            .collect();
        let old = KeyIndex::build(&store(first.clone()));
        // The next load: k2 and a run of five (longer than the walk looks
        // ahead) deleted, a new key in the middle, the last key moved first,
        // k4 no longer rotating and k7 rotating, k9's id on a new secret.
        let mut next: Vec<KeyRecord> = first
            .into_iter()
            .filter(|r| !["k2", "k10", "k11", "k12", "k13", "k14"].contains(&r.id.as_str()))
            .map(|r| match r.id.as_str() {
                "k4" => record("k4", "s4", Access::ReadOnly),
                "k7" => rotated("k7", "s7new", "sk7"),
                "k9" => record("k9", "s9new", Access::FullAccess),
                _ => r,
            })
            .collect();
        next.insert(5, record("fresh", "sfresh", Access::FullAccess));
        let last = next.pop().unwrap_or_else(|| panic!("keys"));
        next.insert(0, last);
        let next = store(next);
        let guided = KeyIndex::build_after(&next, &old);
        let looked_up = KeyIndex::build_with_usage(&next, old.usage().clone());
        for r in next.keys.records() {
            let table = old
                .usage()
                .for_key(r.id.as_str())
                .unwrap_or_else(|| panic!("id"));
            let mut hashes = vec![r.hash];
            hashes.extend(r.previous.map(|p| p.hash));
            for h in hashes {
                for idx in [&guided, &looked_up] {
                    let Lookup::Found(e) = idx.lookup(&h) else {
                        panic!("{} not found", r.id.as_str())
                    };
                    assert!(Arc::ptr_eq(&e.usage, &table), "{}", r.id.as_str());
                    assert_eq!(e.access, r.access);
                }
            }
        }
        assert!(matches!(
            guided.lookup(&KeyHash::of(b"gone")),
            Lookup::Revoked
        ));
        assert!(matches!(
            guided.lookup(&KeyHash::of(b"sk2")),
            Lookup::Unknown
        ));
        assert_eq!(counts(&guided), counts(&looked_up));
    }
}

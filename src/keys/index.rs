//! `KeyIndex`: the gateway's in-memory view of a store snapshot, looked up by
//! digest on every request. Immutable once built; a reload builds a new one.

use std::collections::HashMap;
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

#[derive(Debug)]
enum Slot {
    Active(KeyEntry),
    Revoked,
}

/// Result of looking a digest up.
#[derive(Debug, Clone, Copy)]
pub enum Lookup<'a> {
    Found(&'a KeyEntry),
    /// On the revocation list: refused whatever the store says.
    Revoked,
    Unknown,
}

/// Digest → key, plus counts for the `keygate_keys` gauge.
#[derive(Debug, Default)]
pub struct KeyIndex {
    map: HashMap<KeyHash, Slot, DigestState>,
    read_only: usize,
    full_access: usize,
    /// Store keys that are also on the revocation list (refused).
    revoked_in_store: usize,
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
            // Ids are [a-z0-9_], always a valid header value.
            let Ok(id_header) = HeaderValue::from_str(r.id.as_str()) else {
                continue;
            };
            match r.access {
                Access::ReadOnly => read_only += 1,
                Access::FullAccess => full_access += 1,
            }
            map.insert(
                r.hash,
                Slot::Active(KeyEntry {
                    id_header,
                    access: r.access,
                    expires: r.expires,
                    origins: r.origins.clone().into_boxed_slice(),
                }),
            );
        }
        for h in &snapshot.revoked {
            map.insert(*h, Slot::Revoked);
        }
        KeyIndex {
            map,
            read_only,
            full_access,
            revoked_in_store,
        }
    }

    pub fn lookup(&self, hash: &KeyHash) -> Lookup<'_> {
        match self.map.get(hash) {
            Some(Slot::Active(e)) => Lookup::Found(e),
            Some(Slot::Revoked) => Lookup::Revoked,
            None => Lookup::Unknown,
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
        let rec = |id: &str, secret: &str, access| KeyRecord {
            id: KeyId::parse(id).unwrap_or_else(|e| panic!("{e}")),
            name: id.into(),
            access,
            hash: KeyHash::of(secret.as_bytes()),
            created: UNIX_EPOCH,
            expires: None,
            origins: vec![],
        };
        let keys = KeySet::from_records(vec![
            rec("a", "sa", Access::ReadOnly),
            rec("b", "sb", Access::FullAccess),
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
}

//! `KeySet`: the validated content of a key store, and the pure operations the
//! CLI performs on it (add, update, remove). No I/O here: `store` loads and
//! writes, this module decides what a change means and whether it is allowed.

use std::collections::HashSet;
use std::fmt;

use super::{Access, KeyId, KeyRecord};

/// Why a change to the key set was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySetError {
    NotFound(String),
    DuplicateId(String),
    DuplicateHash {
        existing_id: String,
    },
    /// Read-only → full-access without `--force`.
    UpgradeRefused(String),
    /// The OS could not supply randomness for a new id.
    Randomness(String),
}

impl fmt::Display for KeySetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Only an id-shaped argument is repeated: a secret pasted where
            // the id goes must not end up in a terminal's scrollback.
            KeySetError::NotFound(id) if KeyId::parse(id).is_ok() => {
                write!(f, "no key with id {id:?}")
            }
            KeySetError::NotFound(_) => f.write_str(
                "no key with that id (ids are 1 to 32 of a-z, 0-9 and _; a key's secret is not its id)",
            ),
            KeySetError::DuplicateId(id) => write!(f, "a key with id {id:?} already exists"),
            KeySetError::DuplicateHash { existing_id } => {
                write!(f, "this secret is already stored as key {existing_id:?}")
            }
            KeySetError::Randomness(e) => write!(f, "the OS random number generator failed: {e}"),
            KeySetError::UpgradeRefused(id) => write!(
                f,
                "refusing to upgrade {id:?} from read-only to full-access: a read-only key may \
                 already be public (in a web page or an app); create a new full-access key \
                 instead, or pass --force if you are sure it never left a backend"
            ),
        }
    }
}

impl std::error::Error for KeySetError {}

/// A change to an existing key; `None` leaves a field as it is.
#[derive(Debug, Default, Clone)]
pub struct KeyUpdate {
    pub name: Option<String>,
    pub access: Option<Access>,
    /// `Some(None)` removes the key's own limit.
    pub rate_limit: Option<Option<super::RateLimit>>,
    /// `Some(None)` removes the expiry.
    pub expires: Option<Option<std::time::SystemTime>>,
    /// Normalised origins (empty: any).
    pub origins: Option<Vec<String>>,
}

/// The keys of a store, in file order, with unique ids and hashes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KeySet {
    records: Vec<KeyRecord>,
}

impl KeySet {
    /// Builds a set, refusing duplicates. On error, also returns the index of
    /// the offending record so the caller can point at its line.
    pub fn from_records(records: Vec<KeyRecord>) -> Result<Self, (usize, KeySetError)> {
        let n = records.len();
        let mut ids = HashSet::with_capacity_and_hasher(n, super::hash::IdState::default());
        let mut hashes = std::collections::HashMap::with_capacity_and_hasher(
            n,
            super::hash::DigestState::default(),
        );
        for (i, r) in records.iter().enumerate() {
            if !ids.insert(&r.id) {
                return Err((i, KeySetError::DuplicateId(r.id.to_string())));
            }
            // A previous secret counts too: one hash, one key.
            for h in r.hashes() {
                if let Some(first) = hashes.insert(h, &r.id) {
                    return Err((
                        i,
                        KeySetError::DuplicateHash {
                            existing_id: first.to_string(),
                        },
                    ));
                }
            }
        }
        Ok(KeySet { records })
    }

    pub fn records(&self) -> &[KeyRecord] {
        &self.records
    }

    /// Keeps the keys `keep` selects (a subset stays unique), in order.
    pub fn retain(&mut self, keep: impl FnMut(&KeyRecord) -> bool) {
        self.records.retain(keep);
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&KeyRecord> {
        self.records.iter().find(|r| r.id.as_str() == id)
    }

    pub fn contains_id(&self, id: &KeyId) -> bool {
        self.records.iter().any(|r| &r.id == id)
    }

    /// Adds a key at the end.
    pub fn add(&mut self, record: KeyRecord) -> Result<(), KeySetError> {
        self.check_new(&record)?;
        self.records.push(record);
        Ok(())
    }

    /// Adds many keys, all or none.
    pub fn add_all(&mut self, records: Vec<KeyRecord>) -> Result<(), (usize, KeySetError)> {
        let mut all = self.records.clone();
        let base = all.len();
        all.extend(records);
        let merged = KeySet::from_records(all).map_err(|(i, e)| (i.saturating_sub(base), e))?;
        *self = merged;
        Ok(())
    }

    fn check_new(&self, record: &KeyRecord) -> Result<(), KeySetError> {
        if self.contains_id(&record.id) {
            return Err(KeySetError::DuplicateId(record.id.to_string()));
        }
        if let Some(existing) = self
            .records
            .iter()
            .find(|r| r.hashes().any(|h| record.hashes().any(|n| n == h)))
        {
            return Err(KeySetError::DuplicateHash {
                existing_id: existing.id.to_string(),
            });
        }
        Ok(())
    }

    /// Renames and/or changes access. Downgrades are always allowed; an upgrade
    /// to full-access needs `force`.
    pub fn update(
        &mut self,
        id: &str,
        change: KeyUpdate,
        force: bool,
    ) -> Result<&KeyRecord, KeySetError> {
        let record = self
            .records
            .iter_mut()
            .find(|r| r.id.as_str() == id)
            .ok_or_else(|| KeySetError::NotFound(id.to_string()))?;
        if change.access == Some(Access::FullAccess) && record.access == Access::ReadOnly && !force
        {
            return Err(KeySetError::UpgradeRefused(id.to_string()));
        }
        if let Some(name) = change.name {
            record.name = name;
        }
        if let Some(access) = change.access {
            record.access = access;
        }
        if let Some(limit) = change.rate_limit {
            record.rate_limit = limit;
        }
        if let Some(expires) = change.expires {
            record.expires = expires;
        }
        if let Some(origins) = change.origins {
            record.origins = origins;
        }
        Ok(record)
    }

    /// Gives a key a new secret (its hash), keeping everything else. The
    /// current secret becomes the previous one, accepted until `until`, or
    /// not at all when `until` is `None` (no grace). Returns the hashes that
    /// must go on the revocation list and from when: the current secret's
    /// (from `until`, or `now`), and an earlier previous secret's (from
    /// `now`: a key has at most one previous secret).
    pub fn rotate(
        &mut self,
        id: &str,
        new_hash: super::KeyHash,
        until: Option<std::time::SystemTime>,
        now: std::time::SystemTime,
    ) -> Result<(KeyRecord, Vec<(super::KeyHash, std::time::SystemTime)>), KeySetError> {
        if let Some(existing) = self
            .records
            .iter()
            .find(|r| r.hashes().any(|h| h == new_hash))
        {
            return Err(KeySetError::DuplicateHash {
                existing_id: existing.id.to_string(),
            });
        }
        let record = self
            .records
            .iter_mut()
            .find(|r| r.id.as_str() == id)
            .ok_or_else(|| KeySetError::NotFound(id.to_string()))?;
        let mut revoke = Vec::with_capacity(2);
        if let Some(earlier) = record.previous.take() {
            revoke.push((earlier.hash, now));
        }
        revoke.push((record.hash, until.unwrap_or(now)));
        record.previous = until.map(|until| super::record::Previous {
            hash: record.hash,
            until,
        });
        record.hash = new_hash;
        Ok((record.clone(), revoke))
    }

    /// Removes a key, returning it (its hash goes to the revocation list).
    pub fn remove(&mut self, id: &str) -> Result<KeyRecord, KeySetError> {
        let pos = self
            .records
            .iter()
            .position(|r| r.id.as_str() == id)
            .ok_or_else(|| KeySetError::NotFound(id.to_string()))?;
        Ok(self.records.remove(pos))
    }
}

/// Everything the gateway needs from a store: its keys and the revoked
/// hashes. Pure data; the stores in `crate::store` produce it.
#[derive(Debug, Clone, Default)]
pub struct StoreSnapshot {
    pub keys: KeySet,
    /// Hashes refused now.
    pub revoked: HashSet<super::KeyHash>,
    /// Hashes on the revocation list from a time still to come: a rotated
    /// key's previous secret, refused once its grace period ends.
    pub revoked_later: std::collections::HashMap<super::KeyHash, std::time::SystemTime>,
}

impl StoreSnapshot {
    /// Sorts revocation entries into those in force at `now` and those to
    /// come. An entry with no time has always been in force.
    pub fn with_revocations(
        keys: KeySet,
        entries: impl IntoIterator<Item = (super::KeyHash, Option<std::time::SystemTime>)>,
        now: std::time::SystemTime,
    ) -> Self {
        let mut snapshot = StoreSnapshot {
            keys,
            ..StoreSnapshot::default()
        };
        for (hash, from) in entries {
            match from {
                Some(t) if t > now => {
                    if !snapshot.revoked.contains(&hash) {
                        let at = snapshot.revoked_later.entry(hash).or_insert(t);
                        *at = (*at).min(t);
                    }
                }
                _ => {
                    snapshot.revoked_later.remove(&hash);
                    snapshot.revoked.insert(hash);
                }
            }
        }
        snapshot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyHash;
    use std::time::{Duration, UNIX_EPOCH};

    fn rec(id: &str, secret: &str, access: Access) -> KeyRecord {
        KeyRecord {
            id: KeyId::parse(id).unwrap_or_else(|e| panic!("{e}")),
            name: format!("name of {id}"),
            access,
            hash: KeyHash::of(secret.as_bytes()),
            created: UNIX_EPOCH,
            expires: None,
            origins: vec![],
            previous: None,
            rate_limit: None,
        }
    }

    fn set() -> KeySet {
        KeySet::from_records(vec![
            rec("a", "s1", Access::ReadOnly),
            rec("b", "s2", Access::FullAccess),
        ])
        .unwrap_or_else(|(_, e)| panic!("{e}"))
    }

    #[test]
    fn duplicate_ids_and_hashes_are_refused_with_their_position() {
        let dup_id = KeySet::from_records(vec![
            rec("a", "s1", Access::ReadOnly),
            rec("a", "s2", Access::ReadOnly),
        ]);
        assert_eq!(dup_id, Err((1, KeySetError::DuplicateId("a".into()))));
        let dup_hash = KeySet::from_records(vec![
            rec("a", "s1", Access::ReadOnly),
            rec("b", "s1", Access::ReadOnly),
        ]);
        assert_eq!(
            dup_hash,
            Err((
                1,
                KeySetError::DuplicateHash {
                    existing_id: "a".into()
                }
            ))
        );
    }

    #[test]
    fn add_refuses_existing_id_or_secret() {
        let mut s = set();
        assert_eq!(
            s.add(rec("a", "new", Access::ReadOnly)),
            Err(KeySetError::DuplicateId("a".into()))
        );
        assert!(matches!(
            s.add(rec("c", "s2", Access::ReadOnly)),
            Err(KeySetError::DuplicateHash { .. })
        ));
        assert_eq!(s.add(rec("c", "s3", Access::ReadOnly)), Ok(()));
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn downgrade_is_always_allowed() {
        let mut s = set();
        let change = KeyUpdate {
            access: Some(Access::ReadOnly),
            ..Default::default()
        };
        assert_eq!(
            s.update("b", change, false).map(|r| r.access),
            Ok(Access::ReadOnly)
        );
    }

    #[test]
    fn upgrade_needs_force() {
        let mut s = set();
        let change = KeyUpdate {
            access: Some(Access::FullAccess),
            ..Default::default()
        };
        assert_eq!(
            s.update("a", change.clone(), false).map(|r| r.access),
            Err(KeySetError::UpgradeRefused("a".into()))
        );
        assert_eq!(s.get("a").map(|r| r.access), Some(Access::ReadOnly));
        assert_eq!(
            s.update("a", change, true).map(|r| r.access),
            Ok(Access::FullAccess)
        );
    }

    #[test]
    fn rename_keeps_everything_else() {
        let mut s = set();
        let before = s.get("a").cloned();
        let change = KeyUpdate {
            name: Some("Shop".into()),
            ..Default::default()
        };
        let after = s
            .update("a", change, false)
            .cloned()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(after.name, "Shop");
        assert_eq!(Some(after.hash), before.map(|r| r.hash));
    }

    #[test]
    fn unknown_ids_are_reported() {
        let mut s = set();
        assert_eq!(s.remove("zz"), Err(KeySetError::NotFound("zz".into())));
        assert!(matches!(
            s.update("zz", KeyUpdate::default(), false),
            Err(KeySetError::NotFound(_))
        ));
    }

    #[test]
    fn add_all_is_all_or_nothing() {
        let mut s = set();
        let batch = vec![
            rec("c", "s3", Access::ReadOnly),
            rec("d", "s1", Access::ReadOnly),
        ];
        assert!(matches!(
            s.add_all(batch),
            Err((1, KeySetError::DuplicateHash { .. }))
        ));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn rotation_keeps_the_key_and_schedules_the_old_secrets_revocation() {
        let mut keys = set();
        let (now, hour) = (
            UNIX_EPOCH + Duration::from_secs(1000),
            Duration::from_secs(3600),
        );
        let (r, revoke) = keys
            .rotate("a", KeyHash::of(b"s1b"), Some(now + hour), now)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (r.id.as_str(), r.access, r.hash),
            ("a", Access::ReadOnly, KeyHash::of(b"s1b"))
        );
        assert_eq!(
            r.previous.map(|p| (p.hash, p.until)),
            Some((KeyHash::of(b"s1"), now + hour))
        );
        assert_eq!(revoke, vec![(KeyHash::of(b"s1"), now + hour)]);
        assert_eq!(keys.get("a"), Some(&r));
        // Again: the earlier previous secret ends now, the current one later.
        let (r, revoke) = keys
            .rotate("a", KeyHash::of(b"s1c"), Some(now + hour), now)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            revoke,
            vec![(KeyHash::of(b"s1"), now), (KeyHash::of(b"s1b"), now + hour)]
        );
        assert_eq!(r.previous.map(|p| p.hash), Some(KeyHash::of(b"s1b")));
        // No grace: the current secret ends now and no previous is kept.
        let (r, revoke) = keys
            .rotate("a", KeyHash::of(b"s1d"), None, now)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            revoke,
            vec![(KeyHash::of(b"s1b"), now), (KeyHash::of(b"s1c"), now)]
        );
        assert_eq!(r.previous, None);
        // A hash any key answers to cannot be the new one; unknown ids fail.
        assert!(matches!(
            keys.rotate("a", KeyHash::of(b"s2"), None, now),
            Err(KeySetError::DuplicateHash { .. })
        ));
        assert_eq!(
            keys.rotate("zz", KeyHash::of(b"new"), None, now).err(),
            Some(KeySetError::NotFound("zz".into()))
        );
    }

    #[test]
    fn revocations_are_sorted_into_now_and_later() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let (past, future) = (now - Duration::from_secs(1), now + Duration::from_secs(1));
        let s = StoreSnapshot::with_revocations(
            set(),
            [
                (KeyHash::of(b"never-timed"), None),
                (KeyHash::of(b"past"), Some(past)),
                (KeyHash::of(b"future"), Some(future)),
                (KeyHash::of(b"both"), Some(future)),
                (KeyHash::of(b"both"), None),
            ],
            now,
        );
        let mut revoked: Vec<_> = s.revoked.iter().copied().collect();
        revoked.sort_by_key(|h| h.to_hex());
        let mut want = vec![
            KeyHash::of(b"never-timed"),
            KeyHash::of(b"past"),
            KeyHash::of(b"both"),
        ];
        want.sort_by_key(|h| h.to_hex());
        assert_eq!(revoked, want);
        assert_eq!(s.revoked_later.len(), 1);
        assert_eq!(s.revoked_later.get(&KeyHash::of(b"future")), Some(&future));
    }

    #[test]
    fn a_previous_secret_counts_as_a_hash_of_its_key() {
        let mut prev = rec("c", "s3", Access::ReadOnly);
        prev.previous = Some(crate::keys::record::Previous {
            hash: KeyHash::of(b"s1"),
            until: UNIX_EPOCH,
        });
        let mut keys = set();
        assert!(matches!(
            keys.add(prev.clone()),
            Err(KeySetError::DuplicateHash { .. })
        ));
        assert!(KeySet::from_records(vec![rec("a", "s1", Access::ReadOnly), prev]).is_err());
    }
}

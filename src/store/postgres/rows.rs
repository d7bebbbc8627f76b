//! Reading and writing key rows. Rows are validated as strictly as the file
//! store's lines: a hand-edited row that the CLI would never write is an
//! error naming the key and the column, not a silently odd key.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use futures_util::TryStreamExt;
use tokio_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use super::{PgStore, db_err};
use crate::keys::record::{Previous, latest_time, normalize_origin, validate_name};
use crate::keys::{IndexDelta, KeyHash, KeyId, KeyRecord, KeySet, StoreSnapshot};
use crate::store::StoreError;

const KEY_COLUMNS: &str =
    "id, name, access, hash, created, expires, origins, previous_hash, rotating_until, rate_limit";
/// What every writing transaction starts with: writers serialise on the
/// keys table (gateways' reads do not wait), and an operator's transaction
/// left open by hand must not hang the CLI.
pub(super) const WRITER_LOCK: &str = "SET LOCAL lock_timeout = '15s';
     LOCK TABLE keygate_keys IN SHARE ROW EXCLUSIVE MODE";

/// Rows per bulk insert statement (an import of 100k keys is 20 statements).
const INSERT_CHUNK: usize = 5000;

/// Changes since a version, and the version they bring the reader to.
#[derive(Debug, Default)]
pub struct Changes {
    pub delta: IndexDelta,
    pub version: i64,
}

/// Builds a record from one row's columns, checking each.
#[allow(clippy::too_many_arguments)] // one per column of the row
pub(crate) fn record(
    id: &str,
    name: String,
    access: &str,
    hash: &[u8],
    created: SystemTime,
    expires: Option<SystemTime>,
    origins: Vec<Option<String>>,
    previous: Option<(&[u8], SystemTime)>,
    rate_limit: Option<&str>,
) -> Result<KeyRecord, String> {
    let at = |field: &str, e: String| format!("keygate_keys row id={id:?}: {field}: {e}");
    let key_id = KeyId::parse(id).map_err(|e| at("id", e))?;
    validate_name(&name).map_err(|e| at("name", e))?;
    let access = access.parse().map_err(|e| at("access", e))?;
    let hash = KeyHash::from_slice(hash).map_err(|e| at("hash", e))?;
    let in_range = |t: SystemTime| t >= SystemTime::UNIX_EPOCH && t <= latest_time();
    if !in_range(created) {
        return Err(at("created", "must be between 1970 and 9999".into()));
    }
    if expires.is_some_and(|t| !in_range(t)) {
        return Err(at("expires", "must be between 1970 and 9999".into()));
    }
    // A NULL inside the array (possible in rows written before schema
    // version 2) refuses this row only.
    let origins = origins
        .iter()
        .map(|o| match o {
            Some(o) => normalize_origin(o),
            None => Err("a NULL element".into()),
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| at("origins", e))?;
    let previous = match previous {
        None => None,
        Some((hash, until)) => {
            if !in_range(until) {
                return Err(at("rotating_until", "must be between 1970 and 9999".into()));
            }
            Some(Previous {
                hash: KeyHash::from_slice(hash).map_err(|e| at("previous_hash", e))?,
                until,
            })
        }
    };
    let rate_limit = rate_limit
        .map(str::parse)
        .transpose()
        .map_err(|e| at("rate_limit", e))?;
    Ok(KeyRecord {
        id: key_id,
        name,
        access,
        hash,
        created,
        expires,
        origins,
        previous,
        rate_limit,
    })
}

/// How a row that fails validation is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRows {
    /// An error (the CLI and `check`: the operator must fix it).
    Refuse,
    /// Logged and left out of the index (a gateway: one bad row must not
    /// stop the fleet from applying every other change). Its key, if its
    /// hash is readable, is refused: fail closed.
    Skip,
}

/// Rows read: valid records, and the hashes of invalid rows (with `Skip`).
struct KeyRows {
    records: Vec<KeyRecord>,
    refused: Vec<KeyHash>,
}

async fn key_rows(
    client: &impl GenericClient,
    store: &PgStore,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    bad: BadRows,
) -> Result<KeyRows, StoreError> {
    let err = |e| db_err(store, "read the keys", &e);
    let stream = client
        .query_raw(sql, params.iter().copied())
        .await
        .map_err(err)?;
    let mut stream = std::pin::pin!(stream);
    let mut out = KeyRows {
        records: Vec::new(),
        refused: Vec::new(),
    };
    while let Some(row) = stream.try_next().await.map_err(err)? {
        let id: &str = row.try_get(0).map_err(err)?;
        let hash: &[u8] = row.try_get(3).map_err(err)?;
        let checked = record(
            id,
            row.try_get(1).map_err(err)?,
            row.try_get(2).map_err(err)?,
            hash,
            row.try_get(4).map_err(err)?,
            row.try_get(5).map_err(err)?,
            row.try_get(6).map_err(err)?,
            match (
                row.try_get::<_, Option<&[u8]>>(7).map_err(err)?,
                row.try_get::<_, Option<SystemTime>>(8).map_err(err)?,
            ) {
                (Some(h), Some(t)) => Some((h, t)),
                _ => None,
            },
            row.try_get(9).map_err(err)?,
        );
        match (checked, bad) {
            (Ok(r), _) => out.records.push(r),
            (Err(e), BadRows::Refuse) => {
                return Err(StoreError::Database(format!("{}: {e}", store.label())));
            }
            (Err(e), BadRows::Skip) => {
                tracing::error!(store = store.label(), error = %e, "invalid key row left out of the index; the key is refused until the row is fixed");
                if let Ok(h) = KeyHash::from_slice(hash) {
                    out.refused.push(h);
                }
            }
        }
    }
    Ok(out)
}

async fn revoked_rows(
    client: &impl GenericClient,
    store: &PgStore,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<(KeyHash, SystemTime)>, StoreError> {
    let err = |e| db_err(store, "read the revocation list", &e);
    let rows = client.query(sql, params).await.map_err(err)?;
    rows.iter()
        .map(|row| {
            let bytes: &[u8] = row.try_get(0).map_err(err)?;
            let at: SystemTime = row.try_get(1).map_err(err)?;
            let hash = KeyHash::from_slice(bytes).map_err(|e| {
                StoreError::Database(format!("{}: keygate_revoked: hash: {e}", store.label()))
            })?;
            Ok((hash, at))
        })
        .collect()
}

/// Adds a gateway's usage since its last flush: per key, the last allowed
/// request (the later one wins) and the requests counted since.
pub async fn add_usage(
    client: &impl GenericClient,
    store: &PgStore,
    deltas: &[(String, crate::keys::UsageSample)],
) -> Result<(), StoreError> {
    if deltas.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = deltas.iter().map(|(id, _)| id.as_str()).collect();
    let last: Vec<Option<SystemTime>> = deltas
        .iter()
        .map(|(_, s)| {
            s.last_used
                .map(|t| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(t))
        })
        .collect();
    let requests: Vec<i64> = deltas
        .iter()
        .map(|(_, s)| i64::try_from(s.requests).unwrap_or(i64::MAX))
        .collect();
    client
        .execute(
            "INSERT INTO keygate_usage (id, last_used, requests)
             SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::bigint[])
             ON CONFLICT (id) DO UPDATE SET
                 last_used = GREATEST(keygate_usage.last_used, EXCLUDED.last_used),
                 requests = keygate_usage.requests + EXCLUDED.requests",
            &[&ids, &last, &requests],
        )
        .await
        .map_err(|e| db_err(store, "write key usage", &e))?;
    Ok(())
}

/// The fleet's usage of every key.
pub(crate) async fn load_usage(
    client: &impl GenericClient,
    store: &PgStore,
) -> Result<Vec<(String, crate::keys::UsageSample)>, StoreError> {
    let err = |e| db_err(store, "read key usage", &e);
    let rows = client
        .query(
            "SELECT id, last_used, requests FROM keygate_usage ORDER BY id",
            &[],
        )
        .await
        .map_err(err)?;
    rows.iter()
        .map(|row| {
            let last: Option<SystemTime> = row.try_get(1).map_err(err)?;
            let requests: i64 = row.try_get(2).map_err(err)?;
            Ok((
                row.try_get::<_, String>(0).map_err(err)?,
                crate::keys::UsageSample {
                    last_used: last
                        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs()),
                    requests: u64::try_from(requests).unwrap_or(0),
                },
            ))
        })
        .collect()
}

/// Rotates key `id` in one transaction (see `KeySet::rotate`): the hashes it
/// stops accepting are revoked first, each from its time (an existing
/// revocation only moves sooner), then the row takes the new hash.
pub(super) async fn rotate(
    client: &mut tokio_postgres::Client,
    store: &PgStore,
    id: &str,
    new_hash: KeyHash,
    until: Option<SystemTime>,
    now: SystemTime,
) -> Result<KeyRecord, StoreError> {
    let err = |e| db_err(store, "rotate the key", &e);
    let tx = client.transaction().await.map_err(err)?;
    tx.batch_execute(WRITER_LOCK).await.map_err(err)?;
    let mut keys = KeySet::from_records(load_ids(&tx, store, &[id]).await?)
        .map_err(|(_, e)| StoreError::Database(format!("{}: keygate_keys: {e}", store.label())))?;
    let (record, revoke) = keys.rotate(id, new_hash, until, now)?;
    for (hash, at) in &revoke {
        tx.execute(
            "INSERT INTO keygate_revoked (hash, id, revoked_at) VALUES ($1, $2, $3)
             ON CONFLICT (hash) DO UPDATE
             SET revoked_at = LEAST(keygate_revoked.revoked_at, EXCLUDED.revoked_at)",
            &[&&hash.as_bytes()[..], &record.id.as_str(), at],
        )
        .await
        .map_err(err)?;
    }
    let previous_hash = record.previous.map(|p| p.hash.as_bytes().to_vec());
    let until = record.previous.map(|p| p.until);
    tx.execute(
        "UPDATE keygate_keys SET hash = $2, previous_hash = $3, rotating_until = $4 WHERE id = $1",
        &[
            &record.id.as_str(),
            &&record.hash.as_bytes()[..],
            &previous_hash,
            &until,
        ],
    )
    .await
    .map_err(err)?;
    tx.commit().await.map_err(err)?;
    Ok(record)
}

/// The keys with these ids (those that exist).
pub(super) async fn load_ids(
    client: &impl GenericClient,
    store: &PgStore,
    ids: &[&str],
) -> Result<Vec<KeyRecord>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = ids.to_vec();
    Ok(key_rows(
        client,
        store,
        &format!("SELECT {KEY_COLUMNS} FROM keygate_keys WHERE id = ANY($1) ORDER BY created, id"),
        &[&ids],
        BadRows::Refuse,
    )
    .await?
    .records)
}

/// The change counter.
pub async fn state_version(
    client: &impl GenericClient,
    store: &PgStore,
) -> Result<i64, StoreError> {
    let row = client
        .query_one("SELECT version FROM keygate_state", &[])
        .await
        .map_err(|e| db_err(store, "read the change counter", &e))?;
    Ok(row.get(0))
}

/// Every key and revoked hash, and the change counter they correspond to.
/// Consistent only inside a transaction that sees one snapshot (the gateway
/// uses REPEATABLE READ; the CLI holds the writers' lock).
pub async fn load_snapshot(
    client: &impl GenericClient,
    store: &PgStore,
    bad: BadRows,
) -> Result<(StoreSnapshot, i64), StoreError> {
    let version = state_version(client, store).await?;
    let records = key_rows(
        client,
        store,
        &format!("SELECT {KEY_COLUMNS} FROM keygate_keys ORDER BY created, id"),
        &[],
        bad,
    )
    .await?
    .records;
    let keys = KeySet::from_records(records)
        .map_err(|(_, e)| StoreError::Database(format!("{}: keygate_keys: {e}", store.label())))?;
    let revoked = revoked_rows(
        client,
        store,
        "SELECT hash, revoked_at FROM keygate_revoked",
        &[],
    )
    .await?
    .into_iter()
    .map(|(h, t)| (h, Some(t)));
    Ok((
        StoreSnapshot::with_revocations(keys, revoked, SystemTime::now()),
        version,
    ))
}

/// What changed after version `since`: keys inserted or updated (whole rows)
/// and hashes revoked. Same consistency rule as `load_snapshot`.
pub async fn load_changes(
    client: &impl GenericClient,
    store: &PgStore,
    since: i64,
) -> Result<Changes, StoreError> {
    let version = state_version(client, store).await?;
    if version <= since {
        return Ok(Changes {
            delta: IndexDelta::default(),
            version,
        });
    }
    let rows = key_rows(
        client,
        store,
        &format!("SELECT {KEY_COLUMNS} FROM keygate_keys WHERE version > $1"),
        &[&since],
        BadRows::Skip,
    )
    .await?;
    let now = SystemTime::now();
    let (revoked, revoked_later): (Vec<_>, Vec<_>) = revoked_rows(
        client,
        store,
        "SELECT hash, revoked_at FROM keygate_revoked WHERE version > $1",
        &[&since],
    )
    .await?
    .into_iter()
    .partition(|(_, at)| *at <= now);
    Ok(Changes {
        delta: IndexDelta {
            upserts: rows.records,
            revoked: revoked.into_iter().map(|(h, _)| h).collect(),
            revoked_later,
            removed: rows.refused,
        },
        version,
    })
}

/// Writes the difference between two key sets: bulk inserts, one update per
/// changed key, one delete for all removed keys (revoked by the trigger).
pub(super) async fn write_difference(
    client: &impl GenericClient,
    store: &PgStore,
    before: &KeySet,
    after: &KeySet,
) -> Result<(), StoreError> {
    let err = |e| db_err(store, "write the keys", &e);
    let old: HashMap<&str, &KeyRecord> = before
        .records()
        .iter()
        .map(|r| (r.id.as_str(), r))
        .collect();
    let kept: HashSet<&str> = after.records().iter().map(|r| r.id.as_str()).collect();
    let removed: Vec<&str> = old
        .keys()
        .copied()
        .filter(|id| !kept.contains(id))
        .collect();
    if !removed.is_empty() {
        client
            .execute("DELETE FROM keygate_keys WHERE id = ANY($1)", &[&removed])
            .await
            .map_err(err)?;
    }
    let mut added = Vec::new();
    for r in after.records() {
        match old.get(r.id.as_str()) {
            None => added.push(r),
            Some(o) if *o != r => {
                let origins: Vec<&str> = r.origins.iter().map(String::as_str).collect();
                let rate_limit = r.rate_limit.map(|l| l.to_string());
                client
                    .execute(
                        "UPDATE keygate_keys SET name = $2, access = $3, expires = $4, origins = $5, rate_limit = $6 WHERE id = $1",
                        &[&r.id.as_str(), &r.name, &r.access.as_str(), &r.expires, &origins, &rate_limit],
                    )
                    .await
                    .map_err(err)?;
            }
            Some(_) => {}
        }
    }
    for chunk in added.chunks(INSERT_CHUNK) {
        let ids: Vec<&str> = chunk.iter().map(|r| r.id.as_str()).collect();
        let names: Vec<&str> = chunk.iter().map(|r| r.name.as_str()).collect();
        let access: Vec<&str> = chunk.iter().map(|r| r.access.as_str()).collect();
        let hashes: Vec<&[u8]> = chunk.iter().map(|r| &r.hash.as_bytes()[..]).collect();
        let created: Vec<SystemTime> = chunk.iter().map(|r| r.created).collect();
        let expires: Vec<Option<SystemTime>> = chunk.iter().map(|r| r.expires).collect();
        // Origins never contain spaces (normalised scheme://host:port), so one
        // space-joined string per row carries the ragged array through unnest.
        let origins: Vec<String> = chunk.iter().map(|r| r.origins.join(" ")).collect();
        let limits: Vec<Option<String>> = chunk
            .iter()
            .map(|r| r.rate_limit.map(|l| l.to_string()))
            .collect();
        client
            .execute(
                "INSERT INTO keygate_keys (id, name, access, hash, created, expires, origins, rate_limit)
                 SELECT id, name, access, hash, created, expires,
                        CASE WHEN origins = '' THEN '{}'::text[] ELSE string_to_array(origins, ' ') END,
                        rate_limit
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[],
                             $5::timestamptz[], $6::timestamptz[], $7::text[], $8::text[])
                      AS t(id, name, access, hash, created, expires, origins, rate_limit)",
                &[&ids, &names, &access, &hashes, &created, &expires, &origins, &limits],
            )
            .await
            .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn row(id: &str, access: &str, hash: &[u8], origins: &[&str]) -> Result<KeyRecord, String> {
        record(
            id,
            "shop".into(),
            access,
            hash,
            UNIX_EPOCH,
            None,
            origins.iter().map(|s| Some(s.to_string())).collect(),
            None,
            None,
        )
    }

    #[test]
    fn a_good_row_becomes_a_record() {
        let h = KeyHash::of(b"s");
        let r = row(
            "key_abc",
            "read-only",
            h.as_bytes(),
            &["HTTPS://Shop.example"],
        );
        let r = r.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.hash, h);
        assert_eq!(r.origins, vec!["https://shop.example".to_string()]);
    }

    #[test]
    fn bad_rows_name_the_key_and_the_column() {
        let h = KeyHash::of(b"s");
        for (id, access, hash, origins, column) in [
            ("KEY!", "read-only", &h.as_bytes()[..], &[][..], "id"),
            ("key_a", "admin", &h.as_bytes()[..], &[][..], "access"),
            ("key_a", "read-only", &[1u8, 2][..], &[][..], "hash"),
            (
                "key_a",
                "read-only",
                &h.as_bytes()[..],
                &["ftp://x"][..],
                "origins",
            ),
        ] {
            let e = row(id, access, hash, origins).err().unwrap_or_default();
            assert!(
                e.starts_with(&format!("keygate_keys row id={id:?}: {column}:")),
                "{e}"
            );
        }
        let long = "x".repeat(201);
        let e = record(
            "key_a",
            long,
            "read-only",
            h.as_bytes(),
            UNIX_EPOCH,
            None,
            vec![],
            None,
            None,
        );
        assert!(e.is_err_and(|e| e.contains(": name:")));
        let e = record(
            "key_a",
            "shop".into(),
            "read-only",
            h.as_bytes(),
            UNIX_EPOCH,
            None,
            vec![],
            None,
            Some("5000000/s"),
        );
        assert!(e.is_err_and(|e| e.contains(": rate_limit:")));
    }
}

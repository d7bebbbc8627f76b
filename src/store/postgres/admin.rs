//! Admin tokens and the audit trail in PostgreSQL (schema version 6): the
//! same records as `admin.tokens` and `audit.log` beside a file store, so
//! that one console (`keygate admin`) serves a fleet.

use std::time::SystemTime;

use tokio_postgres::GenericClient;

use super::{PgStore, db_err};
use crate::keys::KeyHash;
use crate::keys::record::{format_time, parse_time};
use crate::keys::tokens::{AdminToken, validate_token_name};
use crate::store::{AuditEvent, StoreError};

/// Every admin token.
pub(super) async fn load_tokens(
    client: &impl GenericClient,
    store: &PgStore,
) -> Result<Vec<AdminToken>, StoreError> {
    let err = |e| db_err(store, "read the admin tokens", &e);
    let rows = client
        .query(
            "SELECT name, role, hash, created FROM keygate_admin_tokens ORDER BY created, name",
            &[],
        )
        .await
        .map_err(err)?;
    rows.iter()
        .map(|row| {
            let name: String = row.try_get(0).map_err(err)?;
            let role: &str = row.try_get(1).map_err(err)?;
            let hash: &[u8] = row.try_get(2).map_err(err)?;
            let created: SystemTime = row.try_get(3).map_err(err)?;
            let bad = |field: &str, e: String| {
                StoreError::Database(format!(
                    "{}: keygate_admin_tokens row {name:?}: {field}: {e}",
                    store.label()
                ))
            };
            validate_token_name(&name).map_err(|e| bad("name", e))?;
            Ok(AdminToken {
                role: role.parse().map_err(|e| bad("role", e))?,
                hash: KeyHash::from_slice(hash).map_err(|e| bad("hash", e))?,
                created,
                name,
            })
        })
        .collect()
}

/// Applies `change` to the tokens in one transaction (a table lock makes
/// concurrent writers take turns) and writes the difference.
pub(super) async fn modify_tokens<T>(
    client: &mut tokio_postgres::Client,
    store: &PgStore,
    change: impl FnOnce(&mut Vec<AdminToken>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let err = |e| db_err(store, "write the admin tokens", &e);
    let tx = client.transaction().await.map_err(err)?;
    tx.batch_execute(
        "SET LOCAL lock_timeout = '15s';
         LOCK TABLE keygate_admin_tokens IN SHARE ROW EXCLUSIVE MODE",
    )
    .await
    .map_err(err)?;
    let before = load_tokens(&tx, store).await?;
    let mut after = before.clone();
    let out = change(&mut after)?;
    for gone in before
        .iter()
        .filter(|b| !after.iter().any(|a| a.name == b.name))
    {
        tx.execute(
            "DELETE FROM keygate_admin_tokens WHERE name = $1",
            &[&gone.name],
        )
        .await
        .map_err(err)?;
    }
    for new in after.iter().filter(|a| !before.contains(a)) {
        tx.execute(
            "INSERT INTO keygate_admin_tokens (name, role, hash, created) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET role = EXCLUDED.role, hash = EXCLUDED.hash",
            &[
                &new.name,
                &new.role.as_str(),
                &&new.hash.as_bytes()[..],
                &new.created,
            ],
        )
        .await
        .map_err(err)?;
    }
    tx.commit().await.map_err(err)?;
    Ok(out)
}

/// Appends one audit event (the table refuses updates and deletes).
pub(super) async fn append_audit(
    client: &impl GenericClient,
    store: &PgStore,
    event: &AuditEvent,
) -> Result<(), StoreError> {
    let err = |e| db_err(store, "append to the audit trail", &e);
    let time = parse_time(&event.time).unwrap_or_else(|_| SystemTime::now());
    let changes = serde_json::Value::Object(event.changes.clone()).to_string();
    client
        .execute(
            "INSERT INTO keygate_audit (time, actor, action, key_id, client, changes)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &time,
                &event.actor,
                &event.action,
                &event.key_id,
                &event.client,
                &changes,
            ],
        )
        .await
        .map_err(err)?;
    Ok(())
}

/// The newest `limit` events, newest first.
pub(super) async fn newest_audit(
    client: &impl GenericClient,
    store: &PgStore,
    limit: usize,
) -> Result<Vec<AuditEvent>, StoreError> {
    let err = |e| db_err(store, "read the audit trail", &e);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client
        .query(
            "SELECT time, actor, action, key_id, client, changes FROM keygate_audit
             ORDER BY seq DESC LIMIT $1",
            &[&limit],
        )
        .await
        .map_err(err)?;
    rows.iter()
        .map(|row| {
            let time: SystemTime = row.try_get(0).map_err(err)?;
            let changes: String = row.try_get(5).map_err(err)?;
            Ok(AuditEvent {
                time: format_time(time),
                actor: row.try_get(1).map_err(err)?,
                action: row.try_get(2).map_err(err)?,
                key_id: row.try_get(3).map_err(err)?,
                client: row.try_get(4).map_err(err)?,
                changes: match serde_json::from_str(&changes) {
                    Ok(serde_json::Value::Object(m)) => m,
                    _ => serde_json::Map::new(),
                },
            })
        })
        .collect()
}

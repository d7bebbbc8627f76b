//! The PostgreSQL store's schema, as numbered migrations, and the version check.
//!
//! The database itself keeps the change counter honest, whoever writes:
//! - every insert, update or delete of a key, and every revocation, is
//!   stamped by a trigger with its transaction's version, taken once per
//!   transaction (recognised by its transaction id) from the one-row
//!   `keygate_state`, whose row lock orders writers: versions become visible
//!   in order, so a gateway that has seen version N has seen everything
//!   below it;
//! - the same function sends `NOTIFY keygate_changes, '<version>'`, delivered
//!   at commit (PostgreSQL folds repeats within a transaction into one);
//! - deleting a key, by `keygate keys delete` or by hand in SQL, revokes its
//!   hash; a hash never changes; revocations are never changed or deleted;
//!   the counter row cannot be deleted; TRUNCATE is refused; CHECK
//!   constraints hold every column to what the file store's parser accepts.
//!   Incremental sync relies on these rules, so they live in the database
//!   rather than only in the CLI. (A superuser can still disable triggers;
//!   nothing in a database stops that.)

use tokio_postgres::GenericClient;

use super::{PgStore, db_err};
use crate::store::StoreError;

/// The channel gateways LISTEN on.
pub const CHANNEL: &str = "keygate_changes";

/// Migrations in order; `MIGRATIONS[i]` brings the schema to version `i + 1`.
pub const MIGRATIONS: &[(&str, &str)] = &[
    ("keys, revocations and the change counter", V1),
    ("no NULL inside a key's origins", V2),
    ("rotation: a previous secret with a grace period", V3),
    ("key usage, merged across the fleet", V4),
    ("a rate limit per key", V5),
    ("admin tokens and the audit trail", V6),
];

/// The schema version this build reads and writes.
pub const CURRENT: i32 = MIGRATIONS.len() as i32;

/// A NULL inside `origins` passed V1's checks and made every gateway's sync
/// fail on the row. `NOT VALID`: rows already there are not checked (the
/// gateways skip such a row, refusing only its key), every write from now on
/// is.
const V2: &str = r#"
ALTER TABLE keygate_keys ADD CONSTRAINT keygate_keys_origins_no_null
    CHECK (array_position(origins, NULL) IS NULL) NOT VALID;
"#;

/// Rotation. A key may carry its previous secret's hash until
/// `rotating_until`; the revocation list holds that hash from that time
/// (`revoked_at` may lie in the future). The rules stay in the database:
/// a key's hash changes only if its old hash is revoked in the same
/// transaction (so no old secret comes back), a previous hash leaves the
/// row only revoked, no hash is ever two keys', and a revocation may move
/// earlier (a second rotation, a deletion during the grace) but never later
/// and never away.
const V3: &str = r#"
ALTER TABLE keygate_keys
    ADD COLUMN previous_hash bytea UNIQUE CHECK (octet_length(previous_hash) = 32),
    ADD COLUMN rotating_until timestamptz
        CHECK (rotating_until BETWEEN '1970-01-01T00:00:00Z' AND '9999-12-31T23:59:59Z'),
    ADD CONSTRAINT keygate_keys_rotation_whole
        CHECK ((previous_hash IS NULL) = (rotating_until IS NULL));

CREATE OR REPLACE FUNCTION keygate_keys_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    stamped bigint := keygate_tx_version();
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO keygate_revoked (hash, id) VALUES (OLD.hash, OLD.id)
            ON CONFLICT (hash) DO UPDATE
            SET revoked_at = LEAST(keygate_revoked.revoked_at, EXCLUDED.revoked_at);
        IF OLD.previous_hash IS NOT NULL THEN
            INSERT INTO keygate_revoked (hash, id) VALUES (OLD.previous_hash, OLD.id)
                ON CONFLICT (hash) DO UPDATE
                SET revoked_at = LEAST(keygate_revoked.revoked_at, EXCLUDED.revoked_at);
        END IF;
        RETURN OLD;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.hash <> OLD.hash
        AND NOT EXISTS (SELECT 1 FROM keygate_revoked WHERE hash = OLD.hash) THEN
        RAISE EXCEPTION 'keygate: the hash of key % changes only by rotation, with its old hash revoked', OLD.id;
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.previous_hash IS NOT NULL
        AND OLD.previous_hash IS DISTINCT FROM NEW.previous_hash
        AND NOT EXISTS (SELECT 1 FROM keygate_revoked WHERE hash = OLD.previous_hash) THEN
        RAISE EXCEPTION 'keygate: the previous secret of key % leaves it only revoked', OLD.id;
    END IF;
    IF (TG_OP = 'INSERT' OR NEW.hash <> OLD.hash)
        AND EXISTS (SELECT 1 FROM keygate_revoked WHERE hash = NEW.hash) THEN
        RAISE EXCEPTION 'keygate: key % has the hash of a deleted (revoked) key', NEW.id;
    END IF;
    IF EXISTS (SELECT 1 FROM keygate_keys WHERE id <> NEW.id
               AND (previous_hash = NEW.hash OR hash = NEW.previous_hash)) THEN
        RAISE EXCEPTION 'keygate: key % has a hash another key answers to', NEW.id;
    END IF;
    NEW.version := stamped;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION keygate_revoked_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.hash = OLD.hash AND NEW.id = OLD.id
        AND NEW.revoked_at <= OLD.revoked_at THEN
        NEW.version := keygate_tx_version();
        RETURN NEW;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        RAISE EXCEPTION 'keygate: revocations are permanent (one may only take effect sooner)';
    END IF;
    NEW.version := keygate_tx_version();
    RETURN NEW;
END $$;
"#;

/// Key usage: the last allowed request and the count, merged from every
/// gateway (latest time wins, counts add up). Not part of the change
/// counter: usage is written every few seconds and nobody follows it live.
/// Gateways need INSERT and UPDATE on this table only.
const V4: &str = r#"
CREATE TABLE keygate_usage (
    id text PRIMARY KEY CHECK (id ~ '^[a-z0-9_]{1,32}$'),
    last_used timestamptz,
    requests bigint NOT NULL DEFAULT 0 CHECK (requests >= 0)
);
"#;

/// A key's own rate limit, spelt as in the file store (`100/min`); NULL
/// takes the config's default for the key's access type.
const V5: &str = r#"
ALTER TABLE keygate_keys ADD COLUMN rate_limit text
    CHECK (rate_limit ~ '^([1-9][0-9]{0,5}|1000000)/(s|min|h)$');
"#;

/// The admin console's tokens (hashes only) and its audit trail, which
/// only ever grows: a trigger refuses to change or remove an event.
const V6: &str = r#"
CREATE TABLE keygate_admin_tokens (
    name text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.@-]{1,64}$'),
    role text NOT NULL CHECK (role IN ('admin', 'viewer')),
    hash bytea NOT NULL UNIQUE CHECK (octet_length(hash) = 32),
    created timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE keygate_audit (
    seq bigserial PRIMARY KEY,
    time timestamptz NOT NULL DEFAULT now(),
    actor text NOT NULL,
    action text NOT NULL,
    key_id text,
    client text,
    changes text NOT NULL DEFAULT '{}'
);
CREATE FUNCTION keygate_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'keygate_audit is append-only';
END;
$$;
CREATE TRIGGER keygate_audit_append_only BEFORE UPDATE OR DELETE ON keygate_audit
    FOR EACH ROW EXECUTE FUNCTION keygate_audit_append_only();
CREATE TRIGGER keygate_audit_no_truncate BEFORE TRUNCATE ON keygate_audit
    FOR EACH STATEMENT EXECUTE FUNCTION keygate_audit_append_only();
"#;

const V1: &str = r#"
CREATE TABLE keygate_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version bigint NOT NULL CHECK (version >= 0),
    -- The transaction that last took a version: a transaction takes one
    -- version, however many rows it writes.
    xid xid8
);
INSERT INTO keygate_state (version) VALUES (0);

-- The same rules as the file store's parser, so that no writer can store a
-- row a gateway would have to refuse.
CREATE TABLE keygate_keys (
    id text PRIMARY KEY CHECK (id ~ '^[a-z0-9_]{1,32}$'),
    name text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200 AND name !~ '[[:cntrl:]]'),
    access text NOT NULL CHECK (access IN ('read-only', 'full-access')),
    hash bytea NOT NULL UNIQUE CHECK (octet_length(hash) = 32),
    created timestamptz NOT NULL
        CHECK (created BETWEEN '1970-01-01T00:00:00Z' AND '9999-12-31T23:59:59Z'),
    expires timestamptz
        CHECK (expires BETWEEN '1970-01-01T00:00:00Z' AND '9999-12-31T23:59:59Z'),
    origins text[] NOT NULL DEFAULT '{}'
        CHECK (array_ndims(origins) IS NULL OR array_ndims(origins) = 1),
    version bigint NOT NULL DEFAULT 0
);
CREATE INDEX keygate_keys_version ON keygate_keys (version);

CREATE TABLE keygate_revoked (
    hash bytea PRIMARY KEY CHECK (octet_length(hash) = 32),
    id text NOT NULL,
    revoked_at timestamptz NOT NULL DEFAULT now(),
    version bigint NOT NULL DEFAULT 0
);
CREATE INDEX keygate_revoked_version ON keygate_revoked (version);

-- The calling transaction's version: the first call bumps the counter (its
-- row lock then orders this transaction after every earlier writer) and
-- queues the notification; later calls in the same transaction return it.
CREATE FUNCTION keygate_tx_version() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    stamped bigint;
BEGIN
    UPDATE keygate_state SET version = version + 1, xid = pg_current_xact_id()
        WHERE xid IS DISTINCT FROM pg_current_xact_id()
        RETURNING version INTO stamped;
    IF FOUND THEN
        PERFORM pg_notify('keygate_changes', stamped::text);
        RETURN stamped;
    END IF;
    SELECT version INTO STRICT stamped FROM keygate_state;
    RETURN stamped;
END $$;

CREATE FUNCTION keygate_keys_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    stamped bigint := keygate_tx_version();
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO keygate_revoked (hash, id) VALUES (OLD.hash, OLD.id)
            ON CONFLICT (hash) DO NOTHING;
        RETURN OLD;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.hash <> OLD.hash THEN
        RAISE EXCEPTION 'keygate: the hash of key % cannot change', OLD.id;
    END IF;
    IF TG_OP = 'INSERT' AND EXISTS (SELECT 1 FROM keygate_revoked WHERE hash = NEW.hash) THEN
        RAISE EXCEPTION 'keygate: key % has the hash of a deleted (revoked) key', NEW.id;
    END IF;
    NEW.version := stamped;
    RETURN NEW;
END $$;
CREATE TRIGGER keygate_keys_stamp BEFORE INSERT OR UPDATE OR DELETE ON keygate_keys
    FOR EACH ROW EXECUTE FUNCTION keygate_keys_stamp();

CREATE FUNCTION keygate_revoked_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        RAISE EXCEPTION 'keygate: revocations are permanent';
    END IF;
    NEW.version := keygate_tx_version();
    RETURN NEW;
END $$;
CREATE TRIGGER keygate_revoked_stamp BEFORE INSERT OR UPDATE OR DELETE ON keygate_revoked
    FOR EACH ROW EXECUTE FUNCTION keygate_revoked_stamp();

CREATE FUNCTION keygate_state_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'keygate: the change counter cannot be deleted';
END $$;
CREATE TRIGGER keygate_state_guard BEFORE DELETE ON keygate_state
    FOR EACH ROW EXECUTE FUNCTION keygate_state_guard();

CREATE FUNCTION keygate_refuse_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'keygate: % cannot be truncated (delete keys to revoke them)', TG_TABLE_NAME;
END $$;
CREATE TRIGGER keygate_keys_no_truncate BEFORE TRUNCATE ON keygate_keys
    FOR EACH STATEMENT EXECUTE FUNCTION keygate_refuse_truncate();
CREATE TRIGGER keygate_revoked_no_truncate BEFORE TRUNCATE ON keygate_revoked
    FOR EACH STATEMENT EXECUTE FUNCTION keygate_refuse_truncate();
CREATE TRIGGER keygate_state_no_truncate BEFORE TRUNCATE ON keygate_state
    FOR EACH STATEMENT EXECUTE FUNCTION keygate_refuse_truncate();
"#;

/// The schema version a database is at: 0 when keygate was never migrated there.
pub async fn version(client: &impl GenericClient, store: &PgStore) -> Result<i32, StoreError> {
    let err = |e| db_err(store, "read the schema version", &e);
    let exists: bool = client
        .query_one("SELECT to_regclass('keygate_schema') IS NOT NULL", &[])
        .await
        .map_err(err)?
        .try_get(0)
        .map_err(err)?;
    if !exists {
        return Ok(0);
    }
    let row = client
        .query_one("SELECT coalesce(max(version), 0) FROM keygate_schema", &[])
        .await
        .map_err(err)?;
    row.try_get(0).map_err(err)
}

/// The oldest schema a gateway of this build reads (its queries name the
/// column version 5 added).
pub const READS_FROM: i32 = 5;

/// For a gateway, which only reads: accepts `READS_FROM` up to any newer
/// version (with a warning), since every migration after version 5 must
/// keep older readers working (added columns and tables, looser or new
/// constraints, never a renamed or dropped column). So the database can be
/// migrated first and the fleet rolled afterwards.
pub async fn require_readable(
    client: &impl GenericClient,
    store: &PgStore,
) -> Result<(), StoreError> {
    match version(client, store).await? {
        v if v > CURRENT => {
            tracing::warn!(
                store = store.label(),
                schema = v,
                known = CURRENT,
                "the key store's schema is newer than this keygate knows; reading it as version {CURRENT}: upgrade keygate"
            );
            Ok(())
        }
        v if v >= READS_FROM => Ok(()),
        _ => require_current(client, store).await,
    }
}

/// Refuses a database whose schema is not the one this build knows (the
/// CLI, which writes).
pub async fn require_current(
    client: &impl GenericClient,
    store: &PgStore,
) -> Result<(), StoreError> {
    match version(client, store).await? {
        CURRENT => Ok(()),
        0 => Err(StoreError::Database(format!(
            "{}: no keygate schema in this database: run `keygate migrate`",
            store.label()
        ))),
        v if v < CURRENT => Err(StoreError::Database(format!(
            "{}: the schema is at version {v}, this keygate needs {CURRENT}: run `keygate migrate`",
            store.label()
        ))),
        v => Err(StoreError::Database(format!(
            "{}: the schema is at version {v}, newer than this keygate knows ({CURRENT}): upgrade keygate",
            store.label()
        ))),
    }
}

/// Brings the schema to `CURRENT` in one transaction under an advisory lock,
/// so two `migrate` runs at once apply each step once. Returns the versions
/// before and after.
pub async fn migrate(
    client: &mut tokio_postgres::Client,
    store: &PgStore,
) -> Result<(i32, i32), StoreError> {
    let err = |e: tokio_postgres::Error| db_err(store, "migrate", &e);
    let tx = client.transaction().await.map_err(err)?;
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(hashtext('keygate migrate'));
         CREATE TABLE IF NOT EXISTS keygate_schema (
             version integer PRIMARY KEY,
             description text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
    )
    .await
    .map_err(err)?;
    let before = version(&tx, store).await?;
    if before > CURRENT {
        return Err(StoreError::Database(format!(
            "{}: the schema is at version {before}, newer than this keygate knows ({CURRENT}): upgrade keygate",
            store.label()
        )));
    }
    for (i, (description, sql)) in MIGRATIONS.iter().enumerate().skip(before as usize) {
        let v = i as i32 + 1;
        tx.batch_execute(sql).await.map_err(err)?;
        tx.execute(
            "INSERT INTO keygate_schema (version, description) VALUES ($1, $2)",
            &[&v, description],
        )
        .await
        .map_err(err)?;
    }
    tx.commit().await.map_err(err)?;
    Ok((before, CURRENT))
}

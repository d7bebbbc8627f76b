//! `PgStore`: the shared key store for fleets, on PostgreSQL (tokio-postgres).
//!
//! The CLI uses it through the same `Store` seam as the file store: load the
//! keys, apply a pure change to a `KeySet`, write back only the difference, all
//! in one transaction that holds a table lock writers share with no one, so
//! concurrent operators lose nothing. Gateways use the async queries at the
//! bottom: a full load at start and deltas by change counter afterwards
//! (see `reload::postgres`).
//!
//! TLS: `sslmode=disable` connects in plain text; any other mode (libpq's
//! default `prefer`, `require`, `verify-ca`, `verify-full`) makes keygate
//! insist on TLS, verified like `verify-full` against the system's roots
//! plus `sslrootcert=FILE` if the URL names one: no silent fall-back to plain
//! text, so a password never crosses the network in the clear.

mod admin;
mod rows;
pub mod schema;

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use tokio::sync::mpsc;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

pub use rows::add_usage;
pub use rows::{BadRows, Changes, load_changes, load_snapshot, state_version};

use super::{StoreError, StoreSnapshot};
use crate::keys::{KeyHash, KeyRecord, KeySet};

/// A PostgreSQL key store: connection settings, never an open connection.
#[derive(Clone)]
pub struct PgStore {
    config: tokio_postgres::Config,
    tls: Option<TlsRoots>,
    label: String,
}

/// What TLS to the database trusts: the system's roots plus `sslrootcert`.
/// Certificates are read when connecting, not when the URL is parsed, so
/// that opening a store (and validating a config) does no I/O.
#[derive(Clone, Debug)]
struct TlsRoots {
    ca: Option<String>,
}

impl TlsRoots {
    fn connector(&self) -> Result<MakeRustlsConnect, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if let Some(path) = &self.ca {
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("sslrootcert {path}: {e}"))?;
            if certs.is_empty() {
                return Err(format!("sslrootcert {path}: no certificate in the file"));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {path}: {e}"))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(MakeRustlsConnect::new(tls))
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The config holds the password: show only the label.
        write!(f, "PgStore({})", self.label)
    }
}

/// Appends an error's chain of causes (they name options and hosts, never
/// the URL's password).
fn push_causes(msg: &mut String, e: &dyn std::error::Error) {
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
}

/// A database error with what keygate was doing, and the store's label
/// (which never contains the password).
pub(crate) fn db_err(store: &PgStore, action: &str, e: &tokio_postgres::Error) -> StoreError {
    let mut msg = match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    };
    if e.as_db_error().is_none() {
        push_causes(&mut msg, e);
    }
    if msg.contains("TLS handshake") {
        msg.push_str(
            " (keygate verifies the database's certificate against the system's roots: \
             name the CA that signed it with sslrootcert=FILE in the URL)",
        );
    }
    StoreError::Database(format!("{}: cannot {action}: {msg}", store.label))
}

impl PgStore {
    /// Parses a `postgres://` URL. The error never repeats the URL, which
    /// may hold a password.
    pub fn from_url(url: &str) -> Result<PgStore, String> {
        let (url, ca) = take_tls_params(url)?;
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e: tokio_postgres::Error| {
                let mut msg = format!("not a valid PostgreSQL URL: {e}");
                push_causes(&mut msg, &e);
                msg
            })?;
        if config.get_hosts().is_empty() {
            return Err("the PostgreSQL URL names no host".into());
        }
        if let Some(Host::Tcp(h)) = config.get_hosts().first()
            && h.contains('@')
        {
            return Err(
                "the PostgreSQL URL's host contains '@': percent-encode '@' in the password (%40)"
                    .into(),
            );
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        // A database that vanishes without a FIN (a dead host, a partition)
        // is noticed by TCP keepalives instead of hanging a session forever.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(20));
        let tls = match config.get_ssl_mode() {
            SslMode::Disable => None,
            _ => {
                // `prefer` would carry on in plain text if the server (or
                // someone in between) declines TLS.
                config.ssl_mode(SslMode::Require);
                Some(TlsRoots { ca })
            }
        };
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => String::new(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let label = format!(
            "postgres://{}@{host}:{port}/{}",
            config.get_user().unwrap_or(""),
            config.get_dbname().unwrap_or("")
        );
        Ok(PgStore { config, tls, label })
    }

    /// `postgres://user@host:port/db`, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Connects, and drives the connection on a task of the current runtime.
    /// Notifications, if asked for, arrive on `notify` (capacity 1: several
    /// changes between two syncs fold into one wake-up). The task ends, and
    /// drops `notify`, when the connection does.
    pub async fn connect(
        &self,
        application: &str,
        notify: Option<mpsc::Sender<()>>,
    ) -> Result<Client, StoreError> {
        let mut config = self.config.clone();
        config.application_name(application);
        let err = |e| db_err(self, "connect", &e);
        match &self.tls {
            None => {
                let (client, conn) = config.connect(NoTls).await.map_err(err)?;
                tokio::spawn(drive(conn, notify));
                Ok(client)
            }
            Some(roots) => {
                let tls = roots.connector().map_err(|e| {
                    StoreError::Database(format!("{}: cannot connect: {e}", self.label))
                })?;
                let (client, conn) = config.connect(tls).await.map_err(err)?;
                tokio::spawn(drive(conn, notify));
                Ok(client)
            }
        }
    }

    /// Runs `f` to completion on a runtime of its own: the CLI is synchronous.
    fn block_on<T>(&self, f: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Database(format!("cannot start a runtime: {e}")))?;
        rt.block_on(f)
    }

    /// Every key and revoked hash (checks the schema version first).
    pub fn load(&self) -> Result<StoreSnapshot, StoreError> {
        self.block_on(async {
            let client = self.connect("keygate-cli", None).await?;
            schema::require_current(&client, self).await?;
            let (snapshot, _) = load_snapshot(&client, self, BadRows::Refuse).await?;
            Ok(snapshot)
        })
    }

    /// The schema version, for `keygate check`.
    pub fn schema_version(&self) -> Result<i32, StoreError> {
        self.block_on(async {
            let client = self.connect("keygate-cli", None).await?;
            schema::version(&client, self).await
        })
    }

    /// `keygate migrate`: returns the schema versions before and after.
    pub fn migrate(&self) -> Result<(i32, i32), StoreError> {
        self.block_on(async {
            let mut client = self.connect("keygate-cli", None).await?;
            schema::migrate(&mut client, self).await
        })
    }

    /// One key by id.
    pub fn find(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.block_on(async {
            let client = self.connect("keygate-cli", None).await?;
            schema::require_current(&client, self).await?;
            Ok(rows::load_ids(&client, self, &[id]).await?.pop())
        })
    }

    /// Every admin token.
    pub fn tokens(&self) -> Result<Vec<crate::keys::tokens::AdminToken>, StoreError> {
        self.block_on(async {
            let client = self.connect("keygate-admin", None).await?;
            schema::require_current(&client, self).await?;
            admin::load_tokens(&client, self).await
        })
    }

    /// Changes the admin tokens in one transaction.
    pub fn modify_tokens<T>(
        &self,
        change: impl FnOnce(&mut Vec<crate::keys::tokens::AdminToken>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.block_on(async {
            let mut client = self.connect("keygate-admin", None).await?;
            schema::require_current(&client, self).await?;
            admin::modify_tokens(&mut client, self, change).await
        })
    }

    /// Appends one event to the audit trail.
    pub fn append_audit(&self, event: &crate::store::AuditEvent) -> Result<(), StoreError> {
        self.block_on(async {
            let client = self.connect("keygate-admin", None).await?;
            schema::require_current(&client, self).await?;
            admin::append_audit(&client, self, event).await
        })
    }

    /// The newest audit events, newest first.
    pub fn audit(&self, limit: usize) -> Result<Vec<crate::store::AuditEvent>, StoreError> {
        self.block_on(async {
            let client = self.connect("keygate-admin", None).await?;
            schema::require_current(&client, self).await?;
            admin::newest_audit(&client, self, limit).await
        })
    }

    /// Every key's usage, merged across the fleet.
    pub fn usage(&self) -> Result<Vec<(String, crate::keys::UsageSample)>, StoreError> {
        self.block_on(async {
            let client = self.connect("keygate-cli", None).await?;
            schema::require_current(&client, self).await?;
            rows::load_usage(&client, self).await
        })
    }

    /// Rotates a key (see `rows::rotate`).
    pub fn rotate(
        &self,
        id: &str,
        new_hash: KeyHash,
        until: Option<std::time::SystemTime>,
        now: std::time::SystemTime,
    ) -> Result<KeyRecord, StoreError> {
        self.block_on(async {
            let mut client = self.connect("keygate-cli", None).await?;
            schema::require_current(&client, self).await?;
            rows::rotate(&mut client, self, id, new_hash, until, now).await
        })
    }

    /// Applies `change` to the current keys in one transaction and writes
    /// what changed. Writers take `SHARE ROW EXCLUSIVE` on the keys table,
    /// which conflicts with itself but not with the gateways' reads: two
    /// operators run one after the other, each on the other's result.
    /// `scope`: only these keys are read (and the revoked set passed is
    /// empty; the triggers refuse a revoked hash); `None` reads everything.
    pub fn modify<T>(
        &self,
        scope: Option<&[&str]>,
        change: impl FnOnce(&mut KeySet, &HashSet<KeyHash>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.block_on(async {
            let mut client = self.connect("keygate-cli", None).await?;
            schema::require_current(&client, self).await?;
            let err = |e| db_err(self, "write the keys", &e);
            let tx = client.transaction().await.map_err(err)?;
            tx.batch_execute(rows::WRITER_LOCK).await.map_err(err)?;
            let before = match scope {
                None => load_snapshot(&tx, self, BadRows::Refuse).await?.0,
                Some(ids) => {
                    let records = rows::load_ids(&tx, self, ids).await?;
                    StoreSnapshot {
                        keys: KeySet::from_records(records).map_err(|(_, e)| {
                            StoreError::Database(format!("{}: keygate_keys: {e}", self.label))
                        })?,
                        revoked: HashSet::new(),
                        revoked_later: Default::default(),
                    }
                }
            };
            let mut after = before.keys.clone();
            let out = change(&mut after, &before.revoked)?;
            rows::write_difference(&tx, self, &before.keys, &after).await?;
            tx.commit().await.map_err(err)?;
            Ok(out)
        })
    }
}

/// Takes what tokio-postgres does not parse out of the URL's query:
/// `sslmode=verify-ca|verify-full` (rustls always verifies fully, so they
/// become `require`) and `sslrootcert=FILE`. Returns the URL to parse and the
/// CA file. Only URLs are accepted: a key=value string would be mistaken for
/// a file path by the config.
fn take_tls_params(url: &str) -> Result<(String, Option<String>), String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("must be a postgres:// URL".into());
    }
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), None));
    };
    let mut ca = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslrootcert", path)) => ca = Some(path.to_string()),
            Some(("sslmode", "verify-ca" | "verify-full")) => kept.push("sslmode=require"),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, ca))
}

/// Polls a connection, forwarding notifications, until it closes.
async fn drive<T>(mut conn: Connection<Socket, T>, notify: Option<mpsc::Sender<()>>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(_))) => {
                if let Some(tx) = &notify {
                    let _ = tx.try_send(());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!(error = %e, "database connection closed");
                return;
            }
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_the_url() {
        let (url, ca) = take_tls_params(
            "postgres://u:p@db/k?sslmode=verify-full&sslrootcert=/ca.pem&application_name=x",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            url,
            "postgres://u:p@db/k?sslmode=require&application_name=x"
        );
        assert_eq!(ca.as_deref(), Some("/ca.pem"));
        assert!(take_tls_params("host=db password=secret").is_err());
    }

    #[test]
    fn any_mode_but_disable_requires_tls_and_errors_never_show_the_password() {
        for url in [
            "postgres://u:pw@db/k",
            "postgres://u:pw@db/k?sslmode=prefer",
        ] {
            let store = PgStore::from_url(url).unwrap_or_else(|e| panic!("{e}"));
            assert!(store.tls.is_some());
            assert_eq!(store.config.get_ssl_mode(), SslMode::Require);
            assert_eq!(store.label(), "postgres://u@db:5432/k");
            assert!(!format!("{store:?}").contains("pw"));
        }
        let plain = PgStore::from_url("postgres://u@db/k?sslmode=disable")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(plain.tls.is_none());
        for bad in [
            "postgres://u:s3cret@db/k?sslmode=bogus",
            "postgres://u:s3@cret@db/k",
        ] {
            let e = PgStore::from_url(bad).err().unwrap_or_default();
            assert!(
                !e.is_empty() && !e.contains("s3cret") && !e.contains("cret@"),
                "{e}"
            );
        }
        // The CA file is read when connecting, not when the URL is parsed.
        let store = PgStore::from_url(
            "postgres://u:s3cret@db/k?sslmode=require&sslrootcert=/nonexistent/ca.pem",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let e = store
            .tls
            .as_ref()
            .map(|t| t.connector().err().unwrap_or_default())
            .unwrap_or_default();
        assert!(
            e.contains("/nonexistent/ca.pem") && !e.contains("s3cret"),
            "{e}"
        );
    }
}

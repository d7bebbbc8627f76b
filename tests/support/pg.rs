//! PostgreSQL fixtures: a database of its own per test (unique name, dropped
//! on drop, so tests run in parallel and leave nothing behind), gateways on
//! it, the CLI against it, and `TcpGate`, a TCP forwarder that can take the
//! database away and bring it back.
//!
//! The server is `$KEYGATE_TEST_PG` (default `postgres://postgres@127.0.0.1:5432`,
//! the one every machine of this project runs, CI's included).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

use super::gateway::{BIN, Process, spawn_serve, wait_for_text};

fn server() -> String {
    std::env::var("KEYGATE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

/// Runs `f` on a runtime of its own on another thread, so that it works
/// both inside and outside a test's tokio runtime (and from `Drop`).
fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>> + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
    .join()
    .unwrap()
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL for the tests: {e}"));
    tokio::spawn(conn);
    client
}

/// A database created for one test and dropped after it.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub fn create() -> TestDb {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let mut r = [0u8; 4];
        getrandom::fill(&mut r).unwrap();
        let name = format!(
            "keygate_test_{}_{}_{:08x}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            u32::from_le_bytes(r)
        );
        let admin = format!("{}/test?sslmode=disable", server());
        let sql = format!("CREATE DATABASE {name}");
        blocking(move || {
            Box::pin(async move {
                connect(&admin).await.batch_execute(&sql).await.unwrap();
            })
        });
        let db = TestDb { name };
        db.write_config();
        db
    }

    /// A fresh database with keygate's schema.
    pub fn migrated() -> TestDb {
        let db = TestDb::create();
        let out = keygate(&["migrate", "--config", db.config_file().to_str().unwrap()]);
        assert!(out.status.success(), "migrate failed: {}", out.stderr);
        db
    }

    /// `postgres://...` for this database (plain TCP: the local server's
    /// certificate is Debian's self-signed one).
    pub fn url(&self) -> String {
        format!("{}/{}?sslmode=disable", server(), self.name)
    }

    /// The same database reached through `addr` (a `TcpGate`).
    pub fn url_via(&self, addr: SocketAddr) -> String {
        let user = server()
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split('@').next())
            .unwrap_or("postgres")
            .to_string();
        format!(
            "postgres://{user}@{addr}/{}?sslmode=disable&connect_timeout=2",
            self.name
        )
    }

    /// A minimal config naming only this store (for the CLI), written once
    /// when the database is created and removed with it.
    pub fn config_file(&self) -> PathBuf {
        std::env::temp_dir()
            .join(format!("{}_cli", self.name))
            .join("keygate.toml")
    }

    fn write_config(&self) {
        let path = self.config_file();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            format!(
                "[upstream]\nurl = \"http://127.0.0.1:9\"\n[keys]\nstore = \"{}\"\n",
                self.url()
            ),
        )
        .unwrap();
    }

    /// Runs SQL statements in this database.
    pub fn exec(&self, sql: &str) {
        let (url, sql) = (self.url(), sql.to_string());
        blocking(move || {
            Box::pin(async move {
                connect(&url)
                    .await
                    .batch_execute(&sql)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            })
        });
    }

    /// Runs SQL that is expected to fail; returns the database's message.
    pub fn exec_err(&self, sql: &str) -> String {
        let (url, sql) = (self.url(), sql.to_string());
        blocking(move || {
            Box::pin(async move {
                let e = connect(&url).await.batch_execute(&sql).await.unwrap_err();
                e.as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string())
            })
        })
    }

    /// The first column of the first row, as text.
    pub fn query_text(&self, sql: &str) -> String {
        let (url, sql) = (self.url(), format!("SELECT ({sql})::text"));
        blocking(move || {
            Box::pin(async move {
                let row = connect(&url).await.query_one(&sql, &[]).await.unwrap();
                row.get::<_, Option<String>>(0).unwrap_or_default()
            })
        })
    }

    /// Terminates the gateways' connections to this database (as a DBA or
    /// a failover would); returns how many were terminated.
    pub fn terminate_gateways(&self) -> usize {
        self.query_text(&format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = '{}' AND application_name = 'keygate'",
            self.name
        ))
        .parse()
        .unwrap()
    }

    /// Gateways currently connected to this database.
    pub fn gateway_connections(&self) -> usize {
        self.query_text(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND application_name = 'keygate'",
            self.name
        ))
        .parse()
        .unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = format!("{}/test?sslmode=disable", server());
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        blocking(move || {
            Box::pin(async move {
                let _ = connect(&admin).await.batch_execute(&sql).await;
            })
        });
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("{}_cli", self.name)));
    }
}

pub struct Output {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the keygate binary.
pub fn keygate(args: &[&str]) -> Output {
    let out = Command::new(BIN).args(args).output().unwrap();
    Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `keygate keys --config <db's config> <args>`, which must succeed.
pub fn keys_cli(db: &TestDb, args: &[&str]) -> String {
    let config = db.config_file();
    let mut all = vec!["keys", "--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = keygate(&all);
    assert!(
        out.status.success(),
        "keygate {all:?} failed: {}",
        out.stderr
    );
    out.stdout
}

/// Creates a key through the CLI; returns (id, secret).
pub fn create_key(db: &TestDb, access: &str) -> (String, String) {
    let out = keys_cli(
        db,
        &[
            "create",
            "--name",
            "fleet key",
            "--access",
            access,
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    (
        v["id"].as_str().unwrap().to_string(),
        v["key"].as_str().unwrap().to_string(),
    )
}

/// A gateway whose store is a PostgreSQL URL.
pub struct PgGateway {
    _child: Process,
    pub addr: SocketAddr,
    pub ops: SocketAddr,
    _dir: tempfile::TempDir,
    output: Arc<Mutex<Vec<String>>>,
}

impl PgGateway {
    pub fn start(store_url: &str, upstream_url: &str, resync: &str) -> PgGateway {
        Self::start_with(store_url, upstream_url, resync, "")
    }

    /// With extra `[keys]` lines (e.g. `snapshot = "..."`).
    pub fn start_with(store_url: &str, upstream_url: &str, resync: &str, keys: &str) -> PgGateway {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{upstream_url}\"\n\
             [keys]\nstore = \"{store_url}\"\nresync_interval = \"{resync}\"\n{keys}\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"info\"\n"
        );
        let path = dir.path().join("keygate.toml");
        std::fs::write(&path, config).unwrap();
        let (child, addr, ops, output) = spawn_serve(&path);
        PgGateway {
            _child: child,
            addr,
            ops,
            _dir: dir,
            output,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    /// Waits (polling) until the output contains `needle`; panics after 10 s.
    pub fn wait_for_output(&self, needle: &str) {
        wait_for_text(|| self.output(), needle);
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self._child.0.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

/// A TCP forwarder in front of PostgreSQL. `down()` cuts every forwarded
/// connection and turns new ones away (accepted, then closed at once, as a
/// database that is restarting would); `up()` forwards again.
pub struct TcpGate {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl TcpGate {
    pub async fn start(target: SocketAddr, up: bool) -> TcpGate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let flag = Arc::new(AtomicBool::new(up));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (f, c) = (flag.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !f.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().unwrap().push(task);
            }
        });
        TcpGate {
            addr,
            up: flag,
            conns,
            accept,
        }
    }

    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    pub fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpGate {
    fn drop(&mut self) {
        self.accept.abort();
        self.down();
    }
}

/// The PostgreSQL server's address, for a `TcpGate`.
pub fn server_addr() -> SocketAddr {
    let s = server();
    let host_port = s
        .split('@')
        .next_back()
        .unwrap_or("127.0.0.1:5432")
        .trim_end_matches('/');
    use std::net::ToSocketAddrs;
    host_port.to_socket_addrs().unwrap().next().unwrap()
}

/// Polls `f` every 5 ms until it returns true; panics after `limit`.
pub async fn eventually(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if f().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

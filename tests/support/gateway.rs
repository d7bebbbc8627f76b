//! `TestGateway`: the real `keygate serve` binary on ephemeral ports, with a
//! config and key store in a temporary folder and a standard set of keys.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime};

use keygate::keys::{Access, KeyHash, KeyId, KeyRecord, token};
use keygate::store::FileStore;

pub const BIN: &str = env!("CARGO_BIN_EXE_keygate");
pub const SHOP: &str = "https://shop.example.com";

/// Secrets of the standard keys every test gateway starts with.
#[derive(Debug, Clone)]
pub struct Keys {
    pub read_only: String,
    pub full: String,
    pub expired: String,
    /// Read-only, origins = [SHOP].
    pub pinned: String,
    /// Full-access, created then deleted: on the revocation list.
    pub revoked: String,
}

/// Config sections a test can add to (TOML lines).
#[derive(Debug, Clone, Default)]
pub struct Setup {
    pub server: String,
    pub upstream: String,
    pub keys: String,
    pub policy: String,
    pub log: String,
    /// Whole extra tables, e.g. `[cors]`.
    pub tables: String,
    /// Environment variables for the gateway process.
    pub env: Vec<(String, String)>,
}

/// A child process killed (and reaped) when dropped, so that a failing test
/// never leaves a gateway running.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct TestGateway {
    child: Process,
    pub addr: SocketAddr,
    pub ops: SocketAddr,
    pub dir: tempfile::TempDir,
    pub keys: Keys,
    output: Arc<Mutex<Vec<String>>>,
}

/// Adds a key to a store through the library, returning its secret.
pub fn add_key(
    store: &FileStore,
    id: &str,
    access: Access,
    expires: Option<SystemTime>,
    origins: &[&str],
) -> String {
    let secret = token::generate("kg").unwrap();
    let record = KeyRecord {
        id: KeyId::parse(id).unwrap(),
        name: format!("test key {id}"),
        access,
        hash: KeyHash::of(secret.as_bytes()),
        created: SystemTime::now(),
        expires,
        origins: origins.iter().map(|o| o.to_string()).collect(),
        previous: None,
        rate_limit: None,
    };
    store.modify(|keys, _| Ok(keys.add(record)?)).unwrap();
    secret
}

/// Writes the standard keys into `dir/keys.toml`.
pub fn standard_keys(dir: &Path) -> Keys {
    let store = FileStore::new(dir.join("keys.toml"));
    let keys = Keys {
        read_only: add_key(&store, "ro", Access::ReadOnly, None, &[]),
        full: add_key(&store, "full", Access::FullAccess, None, &[]),
        expired: add_key(
            &store,
            "expired",
            Access::ReadOnly,
            Some(SystemTime::now() - Duration::from_secs(60)),
            &[],
        ),
        pinned: add_key(&store, "pinned", Access::ReadOnly, None, &[SHOP]),
        revoked: add_key(&store, "gone", Access::FullAccess, None, &[]),
    };
    store.delete("gone").unwrap();
    keys
}

impl TestGateway {
    pub fn start(upstream_url: &str) -> TestGateway {
        Self::start_with(upstream_url, Setup::default())
    }

    pub fn start_with(upstream_url: &str, setup: Setup) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        let keys = standard_keys(dir.path());
        let log = if setup.log.contains("level") {
            setup.log.clone()
        } else {
            format!("level = \"info\"\n{}", setup.log)
        };
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{}\n[upstream]\nurl = \"{upstream_url}\"\n{}\n[keys]\nstore = \"keys.toml\"\n{}\n[policy]\n{}\n[metrics]\nlisten = \"127.0.0.1:0\"\n[log]\n{}\n{}\n",
            setup.server, setup.upstream, setup.keys, setup.policy, log, setup.tables
        );
        std::fs::write(dir.path().join("keygate.toml"), config).unwrap();
        let (child, addr, ops, output) =
            spawn_serve_env(&dir.path().join("keygate.toml"), &setup.env);
        TestGateway {
            child,
            addr,
            ops,
            dir,
            keys,
            output,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn store(&self) -> FileStore {
        FileStore::new(self.dir.path().join("keys.toml"))
    }

    /// Runs `keygate keys --store <this gateway's store> <args>`, which must
    /// succeed; returns its stdout.
    pub fn keys(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .args(["keys", "--store", self.store_path().to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "keygate keys {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The admin listener's address, from its "listening" log line.
    pub fn admin_addr(&self) -> SocketAddr {
        let needle = "admin API and console listening";
        self.wait_for_output(needle);
        let out = self.output();
        let line = out.lines().find(|l| l.contains(needle)).unwrap();
        address_in(line, "admin.addr=")
    }

    /// `keygate tokens create` on this gateway's config; returns the token.
    pub fn admin_token(&self, name: &str, role: &str) -> String {
        let out = Command::new(BIN)
            .args(["tokens", "create", "--config"])
            .arg(self.config_path())
            .args(["--name", name, "--role", role, "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["token"].as_str().unwrap().to_string()
    }

    pub fn store_path(&self) -> PathBuf {
        self.dir.path().join("keys.toml")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("keygate.toml")
    }

    /// Everything the process printed so far (stderr and stdout lines).
    pub fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    /// Waits (polling) until the output contains `needle`; panics after 10 s.
    pub fn wait_for_output(&self, needle: &str) {
        wait_for_text(|| self.output(), needle);
    }

    /// Waits (polling) until `needle` is in `count` lines of the output:
    /// the last of several expected lines, not only the first, has arrived.
    pub fn wait_for_lines(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.output().lines().filter(|l| l.contains(needle)).count() < count {
            assert!(
                Instant::now() < deadline,
                "gateway never printed {needle:?} {count} times; output:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.0.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit (up to 20 s).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not exit; output:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }
}

/// The socket address after `field` in a text log line.
/// Waits (polling) until `output()` contains `needle`; panics after 10 s.
/// Log lines reach stderr in batches (up to 20 ms after they are logged),
/// so a line is waited for, not expected at once.
pub fn wait_for_text(output: impl Fn() -> String, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !output().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "gateway never printed {needle:?}; output:\n{}",
            output()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn address_in(line: &str, field: &str) -> SocketAddr {
    let at = line
        .find(field)
        .unwrap_or_else(|| panic!("no {field} in {line:?}"))
        + field.len();
    line[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Starts `keygate serve --config <path>` and waits for its "listening" line.
pub fn spawn_serve(config: &Path) -> (Process, SocketAddr, SocketAddr, Arc<Mutex<Vec<String>>>) {
    spawn_serve_env(config, &[])
}

/// `spawn_serve` with extra environment variables.
pub fn spawn_serve_env(
    config: &Path,
    env: &[(String, String)],
) -> (Process, SocketAddr, SocketAddr, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new(BIN)
        .args(["serve", "--config", config.to_str().unwrap()])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    for stream in [
        Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stdout.take().unwrap()),
    ] {
        let output = output.clone();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if line.contains("keygate listening") {
                    let _ = tx.send(line.clone());
                }
                output.lock().unwrap().push(line);
            }
        });
    }
    let line = match rx.recv_timeout(Duration::from_secs(15)) {
        Ok(l) => l,
        Err(_) => {
            let _ = child.kill();
            panic!(
                "gateway did not start; output:\n{}",
                output.lock().unwrap().join("\n")
            );
        }
    };
    // Text (`client.addr=1.2.3.4:5`) or JSON (`"client.addr":"1.2.3.4:5"`).
    let field = |name: &str| -> Option<SocketAddr> {
        let start = line.find(name)? + name.len();
        let rest = line[start..].trim_start_matches(['=', '"', ':']);
        let end = rest
            .find(|c: char| !(c.is_ascii_hexdigit() || ".:[]".contains(c)))
            .unwrap_or(rest.len());
        rest[..end].parse().ok()
    };
    let child = Process(child);
    match (field("client.addr"), field("ops.addr")) {
        (Some(client), Some(ops)) => (child, client, ops, output),
        // `child` is killed on the way out.
        _ => panic!("cannot read the addresses from {line:?}"),
    }
}

/// Asserts the gateway still serves: the standard read-only key gets 200.
pub async fn assert_serving(gw: &TestGateway) {
    let r = super::client::get(&gw.url("/"), &[("x-api-key", &gw.keys.read_only)]).await;
    assert_eq!(r.status, 200, "the gateway stopped serving: {:?}", r.body);
}

/// Sends `n` requests with the standard read-only key, each on a fresh
/// connection, asserting 200; returns the p50 and p99 of their latencies.
pub async fn served_latencies(gw: &TestGateway, n: usize) -> (Duration, Duration) {
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let r = super::client::get(&gw.url("/"), &[("x-api-key", &gw.keys.read_only)]).await;
        assert_eq!(r.status, 200);
        latencies.push(start.elapsed());
    }
    latencies.sort();
    (latencies[n / 2], latencies[n * 99 / 100 - 1])
}

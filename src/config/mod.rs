//! Gateway configuration: the raw file shapes (`raw`) and the validated
//! `Config` every other module reads. `Config::from_toml` parses text and is
//! tested without files; `Config::load` adds the file, its folder (relative
//! paths resolve against it) and `$KEYGATE_CONFIG`.

mod raw;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, Uri};

use raw::RawConfig;
pub use raw::{BrowserFullAccess, LogFormat, parse_duration};

use crate::keys::record::normalize_origin;
use crate::keys::token;

/// Where the config is read from when `--config` is not given.
pub const DEFAULT_PATH: &str = "config/keygate.toml";

/// The config file path: `--config`, else `$KEYGATE_CONFIG`, else the default.
pub fn resolve_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| {
            std::env::var_os("KEYGATE_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}

/// A config problem, worded for an operator: the file, the line when known,
/// and what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub keys: KeysConfig,
    pub policy: PolicyConfig,
    pub cors: Option<CorsConfig>,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Runtime worker threads; `None` means one per core.
    pub workers: Option<usize>,
    pub tls: Option<TlsFiles>,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_connections: usize,
    pub drain_timeout: Duration,
}

/// PEM files for the client-facing TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub url: Uri,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// Longest silence of the upstream in the middle of a response body
    /// (nginx's `proxy_read_timeout`); defaults to `response_timeout`.
    pub read_timeout: Duration,
    /// Extra CA certificates (PEM) trusted for an `https://` upstream.
    pub ca: Option<PathBuf>,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle: usize,
}

/// Where the keys live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    File(PathBuf),
    Postgres(String),
}

#[derive(Debug, Clone)]
pub struct KeysConfig {
    pub store: StoreLocation,
    /// PostgreSQL store: how often the change counter is compared, as a
    /// safety net for notifications lost on the way.
    pub resync_interval: Duration,
    /// PostgreSQL store: a local copy of the last loaded index (file-store
    /// format), written after changes and read at start, so that a gateway
    /// can start while the database is away and remembers every revocation
    /// it has seen across restarts.
    pub snapshot: Option<PathBuf>,
    /// An older snapshot is not served from (its revocations still count).
    pub snapshot_max_age: Duration,
    pub header: HeaderName,
    pub prefix: String,
    /// Query parameter that may carry the key; `None` (the default) ignores the query.
    pub query_param: Option<String>,
    /// Forward the key to the backend instead of removing it.
    pub forward_key: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct PolicyConfig {
    pub browser_full_access: BrowserFullAccess,
}

#[derive(Debug, Clone)]
pub struct CorsConfig {
    pub allowed_origins: Vec<String>,
    pub max_age: Duration,
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    pub access_log: bool,
}

fn line_of(src: &str, offset: usize) -> usize {
    src.as_bytes()[..offset.min(src.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml(&text, base, &|name| std::env::var(name).ok())
            .map_err(|e| ConfigError(format!("{}:{}", path.display(), e.0)))
    }

    /// Parses and validates config text. Relative paths resolve against `base`;
    /// `env` reads environment variables (for `store_env`). Errors start with
    /// the line number (`"12: ..."`) when one is known, else with a space.
    pub fn from_toml(
        text: &str,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            // Only the option's name: its value may be a secret (a database URL).
            let src_line = line
                .and_then(|l| text.lines().nth(l - 1))
                .map(|l| l.split('=').next().unwrap_or_default().trim())
                .unwrap_or_default();
            let msg = e.message().trim();
            match line {
                Some(l) if !src_line.is_empty() => {
                    ConfigError(format!("{l}: {msg} (in `{src_line}`)"))
                }
                Some(l) => ConfigError(format!("{l}: {msg}")),
                None => ConfigError(format!(" {msg}")),
            }
        })?;
        validate(raw, base, env).map_err(|m| ConfigError(format!(" {m}")))
    }
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn positive(name: &str, v: Option<usize>, default: usize) -> Result<usize, String> {
    match v {
        Some(0) => Err(format!("{name} must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

fn validate(
    raw: RawConfig,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, String> {
    let s = raw.server;
    let max_header_bytes = positive("server.max_header_bytes", s.max_header_bytes, 32 * 1024)?;
    if max_header_bytes < 1024 {
        return Err(format!(
            "server.max_header_bytes must be at least 1024, found {max_header_bytes}"
        ));
    }
    let server = ServerConfig {
        listen: s
            .listen
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8080))),
        workers: match s.workers {
            Some(0) => {
                return Err(
                    "server.workers must be at least 1 (leave it out for one per core)".into(),
                );
            }
            w => w,
        },
        tls: s.tls.map(|t| TlsFiles {
            cert: resolve(base, &t.cert),
            key: resolve(base, &t.key),
        }),
        header_read_timeout: s
            .header_read_timeout
            .map_or(Duration::from_secs(10), |d| d.0),
        idle_timeout: s.idle_timeout.map_or(Duration::from_secs(60), |d| d.0),
        max_header_bytes,
        max_headers: positive("server.max_headers", s.max_headers, 100)?,
        max_connections: positive("server.max_connections", s.max_connections, 10_000)?,
        drain_timeout: s.drain_timeout.map_or(Duration::from_secs(30), |d| d.0),
    };
    for (name, d) in [
        ("server.header_read_timeout", server.header_read_timeout),
        ("server.idle_timeout", server.idle_timeout),
    ] {
        if d.is_zero() {
            return Err(format!("{name} must be more than zero"));
        }
    }

    let u = raw.upstream.ok_or(
        "[upstream] is missing: set url = \"http://127.0.0.1:3000\" to the backend's address",
    )?;
    let url: Uri = u
        .url
        .parse()
        .map_err(|e| format!("upstream.url {:?} is not a URL: {e}", u.url))?;
    match url.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(format!(
                "upstream.url {:?} must start with http:// or https://",
                u.url
            ));
        }
    }
    if url.authority().is_none() {
        return Err(format!("upstream.url {:?} has no host", u.url));
    }
    if url
        .path_and_query()
        .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
    {
        return Err(format!(
            "upstream.url {:?} must not have a path: requests keep their own path",
            u.url
        ));
    }
    let upstream = UpstreamConfig {
        url,
        connect_timeout: u.connect_timeout.map_or(Duration::from_secs(2), |d| d.0),
        response_timeout: u.response_timeout.map_or(Duration::from_secs(30), |d| d.0),
        read_timeout: u
            .read_timeout
            .or(u.response_timeout)
            .map_or(Duration::from_secs(30), |d| d.0),
        ca: u.ca.map(|c| resolve(base, &c)),
        pool_idle_timeout: u.pool_idle_timeout.map_or(Duration::from_secs(90), |d| d.0),
        pool_max_idle: u.pool_max_idle.unwrap_or(256),
    };
    for (name, d) in [
        ("upstream.connect_timeout", upstream.connect_timeout),
        ("upstream.response_timeout", upstream.response_timeout),
        ("upstream.read_timeout", upstream.read_timeout),
    ] {
        if d.is_zero() {
            return Err(format!("{name} must be more than zero"));
        }
    }

    let k = raw.keys;
    let store_key = if k.store_env.is_some() {
        "keys.store_env"
    } else {
        "keys.store"
    };
    let store_text = match (k.store, k.store_env) {
        (Some(_), Some(_)) => {
            return Err("keys.store and keys.store_env are both set: keep one".into());
        }
        (Some(s), None) => s,
        (None, Some(var)) => {
            env(&var).ok_or_else(|| format!("keys.store_env names ${var}, which is not set"))?
        }
        (None, None) => "keys.toml".to_string(),
    };
    let store = if store_text.starts_with("postgres://") || store_text.starts_with("postgresql://")
    {
        // Checked here so that a typo fails `keygate check`, not the first
        // connection; the message never repeats the URL (it may hold a password).
        crate::keys::PgStore::from_url(&store_text).map_err(|e| format!("{store_key}: {e}"))?;
        StoreLocation::Postgres(store_text)
    } else {
        StoreLocation::File(resolve(base, &store_text))
    };
    let header_text = k.header.unwrap_or_else(|| "x-api-key".to_string());
    let header = HeaderName::from_bytes(header_text.as_bytes())
        .map_err(|_| format!("keys.header {header_text:?} is not a valid header name"))?;
    if header == http::header::AUTHORIZATION {
        return Err(
            "keys.header must not be authorization: `Authorization: Bearer <key>` is always read"
                .into(),
        );
    }
    let prefix = k.prefix.unwrap_or_else(|| "kg".to_string());
    token::validate_prefix(&prefix).map_err(|e| format!("keys.{e}"))?;
    let name_char = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    if let Some(q) = &k.query_param
        && (q.is_empty() || !q.bytes().all(name_char))
    {
        return Err(format!(
            "keys.query_param {q:?} must be letters, digits, _ or -"
        ));
    }
    let resync_interval = k.resync_interval.map_or(Duration::from_secs(5), |d| d.0);
    if resync_interval < Duration::from_millis(100) {
        return Err("keys.resync_interval must be at least 100ms".into());
    }
    let snapshot = match (&store, k.snapshot) {
        (_, None) => None,
        (StoreLocation::Postgres(_), Some(p)) => Some(resolve(base, &p)),
        (StoreLocation::File(_), Some(_)) => {
            return Err(
                "keys.snapshot is for a PostgreSQL store (a file store is its own snapshot)".into(),
            );
        }
    };
    let snapshot_max_age = k
        .snapshot_max_age
        .map_or(Duration::from_secs(24 * 3600), |d| d.0);
    let keys = KeysConfig {
        store,
        resync_interval,
        snapshot,
        snapshot_max_age,
        header,
        prefix,
        query_param: k.query_param,
        forward_key: k.forward_key.unwrap_or(false),
    };

    let cors = match raw.cors {
        None => None,
        Some(c) => {
            let allowed_origins = c
                .allowed_origins
                .iter()
                .map(|o| normalize_origin(o).map_err(|e| format!("cors.allowed_origins: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            if allowed_origins.is_empty() {
                return Err("cors.allowed_origins is empty: list origins, or remove [cors]".into());
            }
            Some(CorsConfig {
                allowed_origins,
                max_age: c.max_age.map_or(Duration::from_secs(600), |d| d.0),
            })
        }
    };

    Ok(Config {
        server,
        upstream,
        keys,
        policy: PolicyConfig {
            browser_full_access: raw.policy.browser_full_access.unwrap_or_default(),
        },
        cors,
        metrics: MetricsConfig {
            listen: raw
                .metrics
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9090))),
        },
        log: LogConfig {
            format: raw.log.format.unwrap_or_default(),
            level: raw.log.level.unwrap_or_else(|| "info".to_string()),
            access_log: raw.log.access_log.unwrap_or(false),
        },
    })
}

#[cfg(test)]
mod tests;

//! Gateway configuration: the raw file shapes (`raw`), their validation
//! (`validate`) and the validated `Config` every other module reads.
//!
//! Pure: `Config::from_toml` takes the text, the folder relative paths
//! resolve against, and a way to read environment variables. Reading the
//! file, loading certificates and parsing a database URL in full happen at
//! the edges (`cli`, `server::tls`, `store`), never here.

pub mod env;
pub mod net;
mod raw;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, Uri};

use raw::RawConfig;
pub use raw::{BrowserFullAccess, LogFormat, UpstreamProtocol, parse_duration};

use crate::keys::RateLimit;
use crate::keys::storefile::line_of;
pub use net::{IpNet, RedisTarget};

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
    pub limits: LimitsConfig,
    /// The admin API and console; `None` without `[admin]`.
    pub admin: Option<AdminConfig>,
}

/// `[admin]`: the admin API and web console.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Where `serve` (and `keygate admin`) listen for it; `None`: `serve`
    /// runs no admin listener.
    pub listen: Option<SocketAddr>,
    /// The gateway as clients see it, for snippets.
    pub public_url: String,
    /// The backend's API documentation, linked from the console.
    pub docs_url: Option<String>,
    /// Admin token hashes (a file; beside the store by default).
    pub tokens: PathBuf,
    pub session_ttl: Duration,
    pub tls: Option<TlsFiles>,
}

/// Rate limits beyond each key's own (`rate_limit` in the store).
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Defaults for keys without their own limit; `None`: unlimited.
    pub read_only: Option<RateLimit>,
    pub full_access: Option<RateLimit>,
    /// Each (read-only key, client address) pair: read-only keys are
    /// public, so one visitor must not spend a shop's whole limit.
    pub read_only_per_client: Option<RateLimit>,
    /// Counters shared by a fleet through Redis.
    pub shared: Option<SharedLimits>,
    /// Most (key, client) pairs tracked at once; bounds that table's memory.
    pub max_clients: usize,
}

impl Default for LimitsConfig {
    /// No limits, and the default table bound.
    fn default() -> Self {
        LimitsConfig {
            read_only: None,
            full_access: None,
            read_only_per_client: None,
            shared: None,
            max_clients: DEFAULT_MAX_CLIENTS,
        }
    }
}

/// `[limits] max_clients` when not set: at about 200 bytes a pair, 20 MB.
pub const DEFAULT_MAX_CLIENTS: usize = 100_000;

#[derive(Debug, Clone)]
pub struct SharedLimits {
    pub redis: RedisTarget,
    /// Prefix of every Redis key written, so fleets (and tests) can share a server.
    pub prefix: String,
    /// How often each gateway reports its consumption and reads the fleet's.
    pub sync_interval: Duration,
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
    /// Longest silence of a client in the middle of a request body.
    pub body_timeout: Duration,
    pub h2: Http2Limits,
    /// Proxies whose `X-Forwarded-For` names the client (for per-client
    /// limits); empty: the connection's peer is the client.
    pub trusted_proxies: Vec<IpNet>,
}

/// What one HTTP/2 connection may hold: streams at once, and the flow
/// control windows that bound what a client can make the gateway buffer
/// (receive side) plus the send buffer per stream (send side). See the
/// README's memory bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Limits {
    pub max_concurrent_streams: u32,
    pub stream_window_bytes: u32,
    pub connection_window_bytes: u32,
    pub send_buffer_bytes: usize,
}

impl Http2Limits {
    /// The most request and response body bytes one connection can hold
    /// buffered in the gateway: the connection's receive window plus every
    /// stream's send buffer.
    pub fn buffered_bytes(&self) -> u64 {
        u64::from(self.connection_window_bytes)
            + u64::from(self.max_concurrent_streams) * self.send_buffer_bytes as u64
    }
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
    pub protocol: UpstreamProtocol,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsConfig {
    pub allowed_origins: Vec<String>,
    pub max_age: Duration,
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
    /// `keygate_key_requests_total{key_id, decision}`: off by default, one
    /// series per key and decision.
    pub per_key: bool,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    pub access_log: bool,
}

impl Config {
    /// Parses and validates config text. Relative paths resolve against `base`;
    /// `env` reads environment variables (for `store_env`). Errors start with
    /// the line number (`"12: ..."`) when one is known, else with a space.
    pub fn from_toml(
        text: &str,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Self::from_toml_with(text, base, env, &[])
    }

    /// `from_toml` with options set from the environment (`env::overrides`)
    /// over the file's. An error in a value from the environment names its
    /// variable.
    pub fn from_toml_with(
        text: &str,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        overrides: &[env::Override],
    ) -> Result<Config, ConfigError> {
        if overrides.is_empty() {
            return Self::from_file_text(text, base, env);
        }
        // The file's own mistakes keep their line, unless it lacks a field
        // the environment may supply.
        if let Err(e) = toml::from_str::<RawConfig>(text)
            && !e.message().contains("missing field")
        {
            return Err(file_error(text, &e));
        }
        let table = effective_table(text, overrides)?;
        let raw: RawConfig =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    ConfigError(format!(" {}", name_vars(e.message().trim(), overrides)))
                })?;
        validate::validate(raw, base, env)
            .map_err(|m| ConfigError(format!(" {}", name_vars(&m, overrides))))
    }

    fn from_file_text(
        text: &str,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| file_error(text, &e))?;
        validate::validate(raw, base, env).map_err(|m| ConfigError(format!(" {m}")))
    }
}

/// The file's table with the environment's options set over it.
pub fn effective_table(
    text: &str,
    overrides: &[env::Override],
) -> Result<toml::Table, ConfigError> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| file_error(text, &e))?;
    env::apply(&mut table, overrides).map_err(|e| ConfigError(format!(" {e}")))?;
    Ok(table)
}

/// Says which variable set an option a message names: `upstream.url` →
/// `upstream.url (from KEYGATE_UPSTREAM_URL)`; a message naming none of
/// them says which variables were in play.
fn name_vars(message: &str, overrides: &[env::Override]) -> String {
    let mut out = message.to_string();
    let mut named = false;
    // Longest first: `upstream.read_timeout` before a shorter prefix.
    let mut by_len: Vec<&env::Override> = overrides.iter().collect();
    by_len.sort_by_key(|o| std::cmp::Reverse(o.option.len()));
    for o in by_len {
        if let Some(i) = out.find(o.option) {
            let end = i + o.option.len();
            out.replace_range(i..end, &format!("{} (from {})", o.option, o.var));
            named = true;
        }
    }
    if !named {
        let vars: Vec<&str> = overrides.iter().map(|o| o.var.as_str()).collect();
        out.push_str(&format!(
            " (with {} set in the environment)",
            vars.join(", ")
        ));
    }
    out
}

/// A file's parse error, with its line and the option's name (never its
/// value: it may be a secret, a database URL).
fn file_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map(|s| line_of(text, s.start));
    let src_line = line
        .and_then(|l| text.lines().nth(l - 1))
        .map(|l| l.split('=').next().unwrap_or_default().trim())
        .unwrap_or_default();
    let msg = e.message().trim();
    match line {
        Some(l) if !src_line.is_empty() => ConfigError(format!("{l}: {msg} (in `{src_line}`)")),
        Some(l) => ConfigError(format!("{l}: {msg}")),
        None => ConfigError(format!(" {msg}")),
    }
}

#[cfg(test)]
mod tests;

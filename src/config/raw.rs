//! The config file's serde shapes: exactly the names operators write, with
//! `deny_unknown_fields` so a misspelt option is an error, not a silent default.
//! Values that have a unit parse here, so their errors carry the file position.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::keys::RateLimit;

/// A duration written as a string with a unit: `"500ms"`, `"30s"`, `"2m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationStr(pub Duration);

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = DurationStr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string with a unit, such as \"500ms\" or \"30s\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<DurationStr, E> {
                parse_duration(s).map(DurationStr).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// A rate limit, `"100/min"`, parsed here so that a mistake names its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitStr(pub RateLimit);

impl<'de> Deserialize<'de> for RateLimitStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = RateLimitStr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rate limit such as \"100/min\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RateLimitStr, E> {
                s.parse().map(RateLimitStr).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// Parses `"500ms"`, `"30s"`, `"2m"`, `"90d"`: a number and a unit, nothing bare.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim().bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "duration {s:?} needs a unit, such as \"{s}s\" or \"{s}ms\""
        ));
    }
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    pub upstream: Option<RawUpstream>,
    #[serde(default)]
    pub keys: RawKeys,
    #[serde(default)]
    pub policy: RawPolicy,
    pub cors: Option<RawCors>,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub limits: RawLimits,
    pub admin: Option<RawAdmin>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<std::net::SocketAddr>,
    pub public_url: Option<String>,
    pub docs_url: Option<String>,
    pub tokens: Option<String>,
    pub session_ttl: Option<DurationStr>,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<std::net::SocketAddr>,
    pub workers: Option<usize>,
    pub tls: Option<RawTls>,
    pub header_read_timeout: Option<DurationStr>,
    pub idle_timeout: Option<DurationStr>,
    pub max_header_bytes: Option<usize>,
    pub max_headers: Option<usize>,
    pub max_connections: Option<usize>,
    pub drain_timeout: Option<DurationStr>,
    pub body_timeout: Option<DurationStr>,
    pub h2_max_concurrent_streams: Option<u32>,
    pub h2_stream_window_bytes: Option<u32>,
    pub h2_connection_window_bytes: Option<u32>,
    pub h2_send_buffer_bytes: Option<usize>,
    pub trusted_proxies: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: String,
    pub connect_timeout: Option<DurationStr>,
    pub response_timeout: Option<DurationStr>,
    pub read_timeout: Option<DurationStr>,
    pub ca: Option<String>,
    pub pool_idle_timeout: Option<DurationStr>,
    pub pool_max_idle: Option<usize>,
    pub protocol: Option<UpstreamProtocol>,
}

/// What the upstream speaks: HTTP/1.1, or HTTP/2 (h2c for `http://`, h2
/// by ALPN for `https://`), which gRPC backends need.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    Http2,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawKeys {
    pub store: Option<String>,
    pub store_env: Option<String>,
    pub resync_interval: Option<DurationStr>,
    pub snapshot: Option<String>,
    pub snapshot_max_age: Option<DurationStr>,
    pub header: Option<String>,
    pub prefix: Option<String>,
    pub query_param: Option<String>,
    pub forward_key: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub browser_full_access: Option<BrowserFullAccess>,
}

/// What to do with a full-access key seen from a browser.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BrowserFullAccess {
    #[default]
    Deny,
    Report,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    pub allowed_origins: Vec<String>,
    pub max_age: Option<DurationStr>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Option<std::net::SocketAddr>,
    pub per_key: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub read_only: Option<RateLimitStr>,
    pub full_access: Option<RateLimitStr>,
    pub read_only_per_client: Option<RateLimitStr>,
    pub shared: Option<String>,
    pub shared_env: Option<String>,
    pub shared_prefix: Option<String>,
    pub sync_interval: Option<DurationStr>,
    pub max_clients: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<LogFormat>,
    pub level: Option<String>,
    pub access_log: Option<bool>,
}

/// Log line format.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86400)));
        assert!(parse_duration("30").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("soon").is_err());
    }
}

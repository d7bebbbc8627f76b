//! From the raw file shapes to a valid `Config`: defaults, ranges, and one
//! message per problem naming the option and what to change. Pure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, Uri};

use super::raw::RawConfig;
use super::raw::{RawAdmin, RawLimits};
use super::{
    AdminConfig, Config, CorsConfig, Http2Limits, IpNet, KeysConfig, LimitsConfig, LogConfig,
    MetricsConfig, PolicyConfig, RedisTarget, ServerConfig, SharedLimits, StoreLocation, TlsFiles,
    UpstreamConfig,
};
use crate::keys::record::normalize_origin;
use crate::keys::token;

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn positive_u32(name: &str, v: Option<u32>, default: u32) -> Result<u32, String> {
    match v {
        Some(0) => Err(format!("{name} must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

/// An HTTP/2 flow-control window: RFC 9113 allows 65,535 bytes (what a peer
/// may send before the first update) up to 2^31 - 1.
fn window(name: &str, v: Option<u32>, default: u32) -> Result<u32, String> {
    match v {
        None => Ok(default),
        Some(n) if (65_535..=0x7fff_ffff).contains(&n) => Ok(n),
        Some(n) => Err(format!(
            "{name} must be between 65535 and 2147483647 bytes, found {n}"
        )),
    }
}

fn positive(name: &str, v: Option<usize>, default: usize) -> Result<usize, String> {
    match v {
        Some(0) => Err(format!("{name} must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

pub(super) fn validate(
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
        body_timeout: s.body_timeout.map_or(Duration::from_secs(30), |d| d.0),
        h2: Http2Limits {
            max_concurrent_streams: positive_u32(
                "server.h2_max_concurrent_streams",
                s.h2_max_concurrent_streams,
                32,
            )?,
            stream_window_bytes: window(
                "server.h2_stream_window_bytes",
                s.h2_stream_window_bytes,
                64 * 1024,
            )?,
            connection_window_bytes: window(
                "server.h2_connection_window_bytes",
                s.h2_connection_window_bytes,
                256 * 1024,
            )?,
            send_buffer_bytes: positive(
                "server.h2_send_buffer_bytes",
                s.h2_send_buffer_bytes,
                16 * 1024,
            )?,
        },
        trusted_proxies: s
            .trusted_proxies
            .unwrap_or_default()
            .iter()
            .map(|p| IpNet::parse(p).map_err(|e| format!("server.trusted_proxies: {e}")))
            .collect::<Result<_, _>>()?,
    };
    if server.h2.connection_window_bytes < server.h2.stream_window_bytes {
        return Err(format!(
            "server.h2_connection_window_bytes ({}) must be at least server.h2_stream_window_bytes ({})",
            server.h2.connection_window_bytes, server.h2.stream_window_bytes
        ));
    }
    for (name, d) in [
        ("server.header_read_timeout", server.header_read_timeout),
        ("server.idle_timeout", server.idle_timeout),
        ("server.body_timeout", server.body_timeout),
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
        protocol: u.protocol.unwrap_or_default(),
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
        // connection; the message never repeats the URL (it may hold a
        // password). The driver parses the rest when the store is opened.
        check_postgres_url(&store_text).map_err(|e| format!("{store_key}: {e}"))?;
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

    let limits = limits(raw.limits, env)?;
    let admin = raw
        .admin
        .map(|a| admin(a, base, &keys.store, &server))
        .transpose()?;
    Ok(Config {
        limits,
        admin,
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
            per_key: raw.metrics.per_key.unwrap_or(false),
        },
        log: LogConfig {
            format: raw.log.format.unwrap_or_default(),
            level: raw.log.level.unwrap_or_else(|| "info".to_string()),
            access_log: raw.log.access_log.unwrap_or(false),
        },
    })
}

fn admin(
    a: RawAdmin,
    base: &Path,
    store: &StoreLocation,
    server: &ServerConfig,
) -> Result<AdminConfig, String> {
    let url_ok = |name: &str, u: &str| -> Result<String, String> {
        let parsed: Uri = u
            .parse()
            .map_err(|e| format!("admin.{name} {u:?} is not a URL: {e}"))?;
        match parsed.scheme_str() {
            Some("http" | "https") if parsed.authority().is_some() => {
                Ok(u.trim_end_matches('/').to_string())
            }
            _ => Err(format!(
                "admin.{name} {u:?} must be an http:// or https:// URL"
            )),
        }
    };
    let public_url = match &a.public_url {
        Some(u) => url_ok("public_url", u)?,
        None => {
            // The gateway's own listener, as a client on this machine reaches it.
            let scheme = if server.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let l = server.listen;
            let host = if l.ip().is_unspecified() {
                "localhost".to_string()
            } else if l.is_ipv6() {
                format!("[{}]", l.ip())
            } else {
                l.ip().to_string()
            };
            format!("{scheme}://{host}:{}", l.port())
        }
    };
    let docs_url = a
        .docs_url
        .as_deref()
        .map(|u| url_ok("docs_url", u))
        .transpose()?;
    let tokens = match (&a.tokens, store) {
        (Some(t), _) => resolve(base, t),
        (None, StoreLocation::File(p)) => p.with_file_name("admin.tokens"),
        (None, StoreLocation::Postgres(_)) => base.join("admin.tokens"),
    };
    let session_ttl = a
        .session_ttl
        .map_or(Duration::from_secs(12 * 3600), |d| d.0);
    if session_ttl < Duration::from_secs(60) {
        return Err("admin.session_ttl must be at least 1m".into());
    }
    Ok(AdminConfig {
        listen: a.listen,
        public_url,
        docs_url,
        tokens,
        session_ttl,
        tls: a.tls.map(|t| TlsFiles {
            cert: resolve(base, &t.cert),
            key: resolve(base, &t.key),
        }),
    })
}

fn limits(l: RawLimits, env: &dyn Fn(&str) -> Option<String>) -> Result<LimitsConfig, String> {
    let shared_text = match (l.shared, l.shared_env) {
        (Some(_), Some(_)) => {
            return Err("limits.shared and limits.shared_env are both set: keep one".into());
        }
        (Some(s), None) => Some(("limits.shared", s)),
        (None, Some(var)) => Some((
            "limits.shared_env",
            env(&var).ok_or_else(|| format!("limits.shared_env names ${var}, which is not set"))?,
        )),
        (None, None) => None,
    };
    let prefix = l.shared_prefix.unwrap_or_else(|| "keygate".to_string());
    let prefix_ok = |b: u8| b.is_ascii_alphanumeric() || b"_-:.".contains(&b);
    if prefix.is_empty() || prefix.len() > 64 || !prefix.bytes().all(prefix_ok) {
        return Err(format!(
            "limits.shared_prefix {prefix:?} must be 1 to 64 letters, digits, _ - : or ."
        ));
    }
    let sync_interval = l.sync_interval.map_or(Duration::from_millis(50), |d| d.0);
    if !(Duration::from_millis(10)..=Duration::from_millis(100)).contains(&sync_interval) {
        return Err(
            "limits.sync_interval must be between 10ms and 100ms (the fleet bound needs at least every 100ms)"
                .into(),
        );
    }
    let shared = shared_text
        .map(|(name, url)| {
            RedisTarget::parse(&url)
                .map(|redis| SharedLimits {
                    redis,
                    prefix,
                    sync_interval,
                })
                .map_err(|e| format!("{name}: {e}"))
        })
        .transpose()?;
    Ok(LimitsConfig {
        read_only: l.read_only.map(|l| l.0),
        full_access: l.full_access.map(|l| l.0),
        read_only_per_client: l.read_only_per_client.map(|l| l.0),
        shared,
        max_clients: positive(
            "limits.max_clients",
            l.max_clients,
            super::DEFAULT_MAX_CLIENTS,
        )?,
    })
}

/// What can be checked of a PostgreSQL URL without the driver: a host, an
/// unencoded `@` in the password, and a known `sslmode`. Messages never
/// repeat the URL or any part of it.
fn check_postgres_url(url: &str) -> Result<(), String> {
    let rest = url.split_once("://").map_or("", |(_, rest)| rest);
    let (authority, query) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], rest[i..].split_once('?').map_or("", |(_, q)| q)),
        None => (rest, ""),
    };
    if authority.matches('@').count() > 1 {
        return Err(
            "the PostgreSQL URL's host contains '@': percent-encode '@' in the password (%40)"
                .into(),
        );
    }
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() || host.starts_with(':') {
        return Err("the PostgreSQL URL names no host".into());
    }
    for pair in query.split('&') {
        if let Some(("sslmode", mode)) = pair.split_once('=')
            && !matches!(
                mode,
                "disable" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full"
            )
        {
            return Err(
                "not a valid PostgreSQL URL: unknown sslmode (use disable, prefer, require, verify-ca or verify-full)"
                    .into(),
            );
        }
    }
    Ok(())
}

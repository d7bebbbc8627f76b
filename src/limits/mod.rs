//! Rate limits on the request path (decision row 7): per key (the key's own
//! `rate_limit`, else `[limits] read_only` / `full_access`), and per
//! (read-only key, client address) pair (`[limits] read_only_per_client`).
//!
//! Only requests that passed the policy get here, so only they consume.
//! Each bucket is a `RateCell` (GCRA on one atomic word, `keys::rate`): a
//! key's lives in its `KeyUsage`, reached from the index entry with no
//! lookup; a client pair's lives in `clients`, a sharded table bounded by
//! `[limits] max_clients`. Nothing here waits on I/O: with `[limits]
//! shared`, `shared` reports consumption to Redis and raises buckets with
//! the fleet's, off the request path.

mod clients;
pub mod resp;
pub mod shared;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::HeaderValue;

use crate::config::LimitsConfig;
use crate::keys::rate::Gcra;
use crate::keys::{Access, KeyEntry, RateLimit};
use crate::metrics::Metrics;

use clients::ClientTable;
pub use shared::{SharedSync, Tracker};

/// Which limit a quota is about (the policy name in the headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Key,
    Client,
}

impl Scope {
    pub const fn name(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::Client => "client",
        }
    }
}

/// Where a request stands against one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub scope: Scope,
    pub limit: RateLimit,
    /// Requests still allowed now (0 when refused).
    pub remaining: u64,
    /// Seconds until the bucket is full again or, when refused, until one
    /// request is allowed (rounded up).
    pub reset_secs: u64,
}

impl Quota {
    fn allowed(scope: Scope, limit: RateLimit, remaining: u64, full_in_ns: u64) -> Quota {
        Quota {
            scope,
            limit,
            remaining,
            reset_secs: full_in_ns.div_ceil(1_000_000_000),
        }
    }

    fn refused(scope: Scope, limit: RateLimit, wait_ns: u64) -> Quota {
        Quota {
            scope,
            limit,
            remaining: 0,
            // Never "retry in 0 s" to a refused client.
            reset_secs: wait_ns.div_ceil(1_000_000_000).max(1),
        }
    }

    /// `RateLimit-Policy` (IETF httpapi draft): `"key";q=100;w=60`.
    pub fn policy_header(&self) -> HeaderValue {
        self.field(
            b";q=",
            u64::from(self.limit.count),
            b";w=",
            self.limit.per.seconds(),
        )
    }

    /// `RateLimit`: `"key";r=12;t=5`.
    pub fn state_header(&self) -> HeaderValue {
        self.field(b";r=", self.remaining, b";t=", self.reset_secs)
    }

    /// `"<scope>"<a><x><b><y>`, written without `format!`: every response
    /// of a limited key carries two of these.
    fn field(&self, a: &[u8], x: u64, b: &[u8], y: u64) -> HeaderValue {
        let mut out = Vec::with_capacity(40);
        out.push(b'"');
        out.extend_from_slice(self.scope.name().as_bytes());
        out.push(b'"');
        out.extend_from_slice(a);
        out.extend_from_slice(itoa::Buffer::new().format(x).as_bytes());
        out.extend_from_slice(b);
        out.extend_from_slice(itoa::Buffer::new().format(y).as_bytes());
        // Quotes, letters, digits, `;` and `=` only: always a valid value.
        HeaderValue::from_maybe_shared(bytes::Bytes::from(out))
            .unwrap_or_else(|_| HeaderValue::from_static("\"key\""))
    }
}

/// The address a per-client bucket is for: an IPv6 client by its /64 (one
/// host usually holds a whole /64, and would otherwise get a fresh bucket
/// per address), an IPv4 one by itself.
pub fn client_group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            IpAddr::from((u128::from(v6) & !((1u128 << 64) - 1)).to_be_bytes())
        }
        other => other,
    }
}

/// The verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No limit applies to this key.
    Unlimited,
    /// Allowed; the quota nearest to running out.
    Allowed(Quota),
    /// Refused (429) by this limit.
    Limited(Quota),
}

/// The gateway's rate limiter: defaults from the config, the client table,
/// and the tracker the fleet sync reads.
pub struct Limiter {
    read_only: Option<RateLimit>,
    full_access: Option<RateLimit>,
    per_client: Option<RateLimit>,
    clients: ClientTable,
    /// The clock buckets count on (monotonic; nanoseconds since `epoch`).
    epoch: Instant,
    /// Set with `[limits] shared`: consumed cells are registered here.
    tracker: Option<Arc<Tracker>>,
    /// Gateways in the fleet, as last heard from Redis (1 without it): each
    /// takes only its share of a bucket's burst between two syncs.
    fleet_size: AtomicU64,
    /// The sync interval: how long a gateway over its share waits.
    sync_ns: u64,
    /// When the last sync completed (buckets' clock): the fleet share holds
    /// only while syncs keep coming, so a slow Redis cannot starve a key.
    synced_at: AtomicU64,
}

impl Limiter {
    pub fn new(config: &LimitsConfig) -> Limiter {
        Limiter {
            read_only: config.read_only,
            full_access: config.full_access,
            per_client: config.read_only_per_client,
            clients: ClientTable::new(config.max_clients),
            epoch: Instant::now(),
            tracker: config.shared.as_ref().map(|_| Arc::new(Tracker::default())),
            fleet_size: AtomicU64::new(1),
            sync_ns: config.shared.as_ref().map_or(0, |s| {
                u64::try_from(s.sync_interval.as_nanos()).unwrap_or(u64::MAX)
            }),
            synced_at: AtomicU64::new(0),
        }
    }

    /// The fleet's size, from the sync (1 when Redis is away: limits are
    /// then each gateway's own).
    pub fn set_fleet_size(&self, gateways: u64) {
        self.fleet_size.store(gateways.max(1), Ordering::Relaxed);
        self.synced_at.store(self.now(), Ordering::Relaxed);
    }

    /// Nanoseconds on the buckets' clock.
    pub fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The tracker the fleet sync drains (with `[limits] shared`).
    pub fn tracker(&self) -> Option<&Arc<Tracker>> {
        self.tracker.as_ref()
    }

    /// True when some limit can apply to some key.
    pub fn is_active(&self) -> bool {
        self.read_only.is_some() || self.full_access.is_some() || self.per_client.is_some()
    }

    /// Checks, and consumes from, every limit on a request with `key` from
    /// `client` (asked only when a per-client limit applies).
    pub fn check(&self, key: &KeyEntry, client: impl FnOnce() -> IpAddr) -> Verdict {
        self.check_when(key, client, || self.now())
    }

    /// `check` at a given time on the buckets' clock.
    pub fn check_at(&self, key: &KeyEntry, client: impl FnOnce() -> IpAddr, now: u64) -> Verdict {
        self.check_when(key, client, || now)
    }

    /// The clock is read only when a limit applies: most keys of most
    /// configs have none.
    fn check_when(
        &self,
        key: &KeyEntry,
        client: impl FnOnce() -> IpAddr,
        now: impl FnOnce() -> u64,
    ) -> Verdict {
        let key_limit = key.rate_limit().or(match key.access {
            Access::ReadOnly => self.read_only,
            Access::FullAccess => self.full_access,
        });
        let client_limit = match key.access {
            Access::ReadOnly => self.per_client,
            Access::FullAccess => None,
        };
        if key_limit.is_none() && client_limit.is_none() {
            return Verdict::Unlimited;
        }
        let now = now();
        // A sync later than three intervals (a slow or lost Redis): alone.
        let fresh = now.saturating_sub(self.synced_at.load(Ordering::Relaxed))
            <= self.sync_ns.saturating_mul(3);
        let share = if fresh {
            self.fleet_size.load(Ordering::Relaxed)
        } else {
            1
        };
        let mut nearest = None;
        if let Some(limit) = key_limit {
            if self.over_share(&key.usage.rate, limit, share) {
                return Verdict::Limited(Quota::refused(Scope::Key, limit, self.sync_ns));
            }
            match key.usage.rate.check(now, limit) {
                Gcra::Limited { wait_ns } => {
                    return Verdict::Limited(Quota::refused(Scope::Key, limit, wait_ns));
                }
                Gcra::Allowed {
                    remaining,
                    full_in_ns,
                } => nearest = Some(Quota::allowed(Scope::Key, limit, remaining, full_in_ns)),
            }
        }
        if let Some(limit) = client_limit {
            let refund = || {
                if let Some(l) = key_limit {
                    key.usage.rate.refund(l);
                }
            };
            let Some(cell) = self.clients.get(key, client_group(client())) else {
                // The table is full of active pairs: a new client waits
                // for room rather than going unlimited.
                refund();
                return Verdict::Limited(Quota::refused(Scope::Client, limit, 1_000_000_000));
            };
            if self.over_share(&cell.rate, limit, share) {
                refund();
                return Verdict::Limited(Quota::refused(Scope::Client, limit, self.sync_ns));
            }
            match cell.rate.check(now, limit) {
                Gcra::Limited { wait_ns } => {
                    refund();
                    return Verdict::Limited(Quota::refused(Scope::Client, limit, wait_ns));
                }
                Gcra::Allowed {
                    remaining,
                    full_in_ns,
                } => {
                    if nearest.is_none_or(|q: Quota| remaining < q.remaining) {
                        nearest = Some(Quota::allowed(Scope::Client, limit, remaining, full_in_ns));
                    }
                }
            }
            if let Some(t) = &self.tracker {
                t.consumed_client(&cell, limit);
            }
        }
        if let (Some(t), Some(limit)) = (&self.tracker, key_limit) {
            t.consumed_key(key, limit);
        }
        nearest.map_or(Verdict::Unlimited, Verdict::Allowed)
    }

    /// In a fleet of `share` gateways, true when this gateway has already
    /// let through its share of the bucket since the last sync: until the
    /// next one it cannot know what the others did, and a burst reaching
    /// every gateway at once must stay near N, not N per gateway.
    fn over_share(&self, cell: &crate::keys::RateCell, limit: RateLimit, share: u64) -> bool {
        share > 1 && cell.pending() >= (u64::from(limit.count) / share).max(1)
    }

    /// Drops client pairs whose buckets are full again (they hold nothing a
    /// new entry would not); returns how many remain.
    pub fn sweep(&self) -> usize {
        self.sweep_at(self.now())
    }

    pub fn sweep_at(&self, now: u64) -> usize {
        self.clients.sweep(now)
    }

    /// Sweeps the client table every second and reports its size, until
    /// the task is dropped.
    pub async fn maintain(self: Arc<Self>, metrics: Arc<Metrics>) {
        if self.per_client.is_none() {
            return;
        }
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            metrics.ratelimit_clients(self.sweep());
        }
    }
}

#[cfg(test)]
mod tests;

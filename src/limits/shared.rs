//! Rate limits shared by a fleet through Redis, without a request ever
//! waiting on Redis.
//!
//! Each gateway decides locally on its own buckets. Every `sync_interval`
//! (at most 100 ms) one task sends, for each bucket in use, the requests
//! consumed here since the last sync; one Lua script adds them to the
//! fleet's bucket in Redis (a GCRA TAT in microseconds on Redis's clock:
//! `TAT = max(TAT, now) + n * T`) and answers how far ahead of now each
//! fleet bucket is. The gateway raises its own bucket to at least that
//! (plus what it consumed while the answer travelled). So every gateway's
//! buckets lag the fleet's by at most one interval: over any window the
//! fleet allows at most the limit, plus the bucket size, plus what the
//! gateways could allow in one interval before hearing of each other (see
//! the README, "Rate limits across a fleet").
//!
//! Redis away: buckets stay local (each gateway holds the limit by itself),
//! the gauge says 0, the task reconnects with backoff. Consumption during
//! the outage is not replayed (it would refuse the whole fleet for as long
//! as the outage lasted).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::clients::ClientCell;
use super::resp::{Conn, Reply};
use crate::config::SharedLimits;
use crate::keys::{KeyEntry, KeyUsage, RateCell, RateLimit};
use crate::metrics::Metrics;

/// Marks this gateway alive and counts the fleet (KEYS[1], a sorted set of
/// gateway ids by last sync time, ARGV[1] this gateway's id), then adds
/// each bucket's consumption and returns the fleet size followed by how far
/// ahead of Redis's clock each fleet bucket's TAT is (µs, 0 when full).
/// KEYS[2..]: buckets; ARGV[2..]: pairs of (requests, T in µs).
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 2000000)
redis.call('PEXPIRE', KEYS[1], 10000)
local out = { redis.call('ZCARD', KEYS[1]) }
for i = 2, #KEYS do
  local n = tonumber(ARGV[2 * i - 2])
  local em = tonumber(ARGV[2 * i - 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if n > 0 then
    if tat < now then tat = now end
    tat = tat + n * em
    redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
  end
  if tat > now then out[i] = tat - now else out[i] = 0 end
end
return out
";

/// Buckets per script call: bounds how long one call holds Redis.
const BATCH: usize = 500;

/// A bucket the sync follows, and its name in Redis (after the prefix).
enum Owner {
    Key(Arc<KeyUsage>),
    Client(Arc<ClientCell>),
}

struct Tracked {
    owner: Owner,
    name: String,
}

impl Tracked {
    fn cell(&self) -> &RateCell {
        match &self.owner {
            Owner::Key(u) => &u.rate,
            Owner::Client(c) => &c.rate,
        }
    }
}

/// Buckets newly in use, handed from the request path to the sync. A
/// request takes this lock only when its bucket starts being used (once
/// per bucket per idle period), never per request.
#[derive(Default)]
pub struct Tracker {
    new: Mutex<Vec<Tracked>>,
}

impl Tracker {
    fn push(&self, t: Tracked) {
        self.new
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(t);
    }

    pub(super) fn consumed_key(&self, key: &KeyEntry, limit: RateLimit) {
        if key.usage.rate.note_consumed(limit) {
            self.push(Tracked {
                owner: Owner::Key(key.usage.clone()),
                name: format!("k:{}", key.id()),
            });
        }
    }

    pub(super) fn consumed_client(&self, cell: &Arc<ClientCell>, limit: RateLimit) {
        if cell.rate.note_consumed(limit) {
            self.push(Tracked {
                owner: Owner::Client(cell.clone()),
                name: format!("c:{}:{}", cell.key_id, cell.ip),
            });
        }
    }

    fn take(&self) -> Vec<Tracked> {
        std::mem::take(&mut *self.new.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The sync task.
pub struct SharedSync {
    config: SharedLimits,
    limiter: Arc<super::Limiter>,
    tracker: Arc<Tracker>,
    metrics: Arc<Metrics>,
    active: Vec<Tracked>,
    /// This gateway's id in the fleet count (random per process).
    id: u64,
    round: u64,
}

/// How long a connect or a script call may take before Redis counts as away.
const IO_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl SharedSync {
    /// `None` when the limiter does not share (no `[limits] shared`).
    pub fn new(
        config: SharedLimits,
        limiter: Arc<super::Limiter>,
        metrics: Arc<Metrics>,
    ) -> Option<SharedSync> {
        let tracker = limiter.tracker()?.clone();
        Some(SharedSync {
            config,
            limiter,
            tracker,
            metrics,
            active: Vec::new(),
            id: random_id(),
            round: 0,
        })
    }

    /// Runs until the task is dropped.
    pub async fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        let mut warned = false;
        loop {
            match Conn::connect(&self.config.redis, IO_TIMEOUT).await {
                Ok(mut conn) => {
                    self.metrics.ratelimit_shared_connected(true);
                    tracing::info!(redis = %self.config.redis, "shared rate limits: connected");
                    warned = false;
                    backoff = Duration::from_millis(100);
                    let e = self.session(&mut conn).await;
                    self.metrics.ratelimit_shared_connected(false);
                    // Alone again: each gateway holds the whole limit.
                    self.limiter.set_fleet_size(1);
                    tracing::warn!(redis = %self.config.redis, error = %e, "shared rate limits: Redis lost; limits are per gateway until it is back");
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!(redis = %self.config.redis, error = %e, "shared rate limits: Redis unreachable; limits are per gateway until it is back");
                        warned = true;
                    }
                }
            }
            // Consumption while Redis is away is not replayed: drop it.
            let until = tokio::time::Instant::now() + backoff;
            while tokio::time::Instant::now() < until {
                tokio::time::sleep(self.config.sync_interval).await;
                self.forget_pending();
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn forget_pending(&mut self) {
        self.active.append(&mut self.tracker.take());
        let now = self.limiter.now();
        for t in &self.active {
            t.cell().take_pending();
        }
        self.active
            .retain(|t| !(t.cell().is_idle(now) && t.cell().deactivate()));
    }

    /// Syncs every interval until the connection fails. Every round runs,
    /// with or without buckets in use: it is also this gateway's heartbeat
    /// in the fleet count.
    async fn session(&mut self, conn: &mut Conn) -> super::resp::RedisError {
        let mut tick = tokio::time::interval(self.config.sync_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.active.append(&mut self.tracker.take());
            if let Err(e) = self.sync(conn).await {
                return e;
            }
        }
    }

    /// One round: report, learn, let idle buckets go. Buckets with nothing
    /// to report are asked about only every tenth round (they only wait to
    /// refill), so a round's size follows the traffic, not the table.
    async fn sync(&mut self, conn: &mut Conn) -> Result<(), super::resp::RedisError> {
        self.round = self.round.wrapping_add(1);
        let everyone = self.round.is_multiple_of(10);
        let batch: Vec<usize> = (0..self.active.len())
            .filter(|&i| everyone || self.active[i].cell().pending() > 0)
            .collect();
        let prefix = &self.config.prefix;
        let mut commands: Vec<Vec<Vec<u8>>> = Vec::new();
        // At least one call, for the heartbeat.
        let chunks: Vec<&[usize]> = if batch.is_empty() {
            vec![&[]]
        } else {
            batch.chunks(BATCH).collect()
        };
        for chunk in chunks {
            let mut c = vec![
                b"EVAL".to_vec(),
                SCRIPT.as_bytes().to_vec(),
                (chunk.len() + 1).to_string().into_bytes(),
                format!("{prefix}:gateways").into_bytes(),
            ];
            // T in µs, at least 1 (the script multiplies by it). It is in
            // the bucket's name too: a new limit starts a new fleet bucket
            // rather than inherit a lead measured in the old one's units.
            let spacing = |i: usize| (self.active[i].cell().emission() / 1000).max(1);
            c.extend(
                chunk.iter().map(|&i| {
                    format!("{prefix}:{}:{}", self.active[i].name, spacing(i)).into_bytes()
                }),
            );
            c.push(self.id.to_string().into_bytes());
            for &i in chunk {
                c.push(
                    self.active[i]
                        .cell()
                        .take_pending()
                        .to_string()
                        .into_bytes(),
                );
                c.push(spacing(i).to_string().into_bytes());
            }
            commands.push(c);
        }
        let owned: Vec<Vec<&[u8]>> = commands
            .iter()
            .map(|c| c.iter().map(Vec::as_slice).collect())
            .collect();
        let replies = conn.call(&owned).await?;
        let now = self.limiter.now();
        let mut leads = Vec::with_capacity(batch.len());
        let as_u64 = |r: &Reply| match r {
            Reply::Int(n) => u64::try_from(*n).unwrap_or(0),
            _ => 0,
        };
        for reply in replies {
            match reply {
                Reply::Array(Some(items)) if !items.is_empty() => {
                    self.limiter.set_fleet_size(as_u64(&items[0]));
                    leads.extend(items[1..].iter().map(as_u64));
                }
                Reply::Error(e) => {
                    return Err(super::resp::RedisError(format!(
                        "the sync script failed: {e}"
                    )));
                }
                other => {
                    return Err(super::resp::RedisError(format!(
                        "unexpected reply to the sync script: {other:?}"
                    )));
                }
            }
        }
        for (&i, lead_us) in batch.iter().zip(leads) {
            let cell = self.active[i].cell();
            if lead_us > 0 {
                // Requests consumed here since the script ran are not in
                // Redis yet: count them on top.
                let since = cell.pending().saturating_mul(cell.emission());
                cell.raise_tat(
                    now.saturating_add(lead_us.saturating_mul(1000))
                        .saturating_add(since),
                );
            }
        }
        self.active
            .retain(|t| !(t.cell().is_idle(now) && t.cell().deactivate()));
        Ok(())
    }
}

/// A process id for the fleet count: random, so that gateways on several
/// hosts never share one.
fn random_id() -> u64 {
    let mut b = [0u8; 8];
    // Without randomness, the time still tells two processes apart.
    if getrandom::fill(&mut b).is_err() {
        return u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        )
        .unwrap_or(0)
            ^ u64::from(std::process::id());
    }
    u64::from_le_bytes(b)
}

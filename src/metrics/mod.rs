//! Every metric keygate exports, with its name and help text, in this one file.
//!
//! One `Metrics` value is built at start-up on its own `Registry` and passed
//! to whoever counts. Label handles are resolved once here, so counting on the
//! request path is an atomic add: no map lookup, no lock, no allocation.

mod ops;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

pub use ops::{Health, serve_ops};

use std::sync::atomic::{AtomicU64, Ordering};

/// A status code as three ASCII digits.
fn itoa_status(status: u16) -> [u8; 3] {
    let s = status.min(999);
    [
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]
}

/// Milliseconds since the Unix epoch (0 for a clock before it).
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Defines `DecisionLabel` with its wire names, and `ALL` from the same
/// list, so that a variant can never be missing from the table the metrics
/// are registered from (the request path indexes it by variant).
macro_rules! decision_labels {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)+) => {
        /// The `decision` label: SPEC's codes, plus report-only, preflight
        /// and the gateway's own answers.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum DecisionLabel {
            $($(#[$doc])* $variant,)+
        }

        impl DecisionLabel {
            /// Every label, in declaration order (`index` is the position).
            pub const ALL: &'static [DecisionLabel] = &[$(DecisionLabel::$variant,)+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $(DecisionLabel::$variant => $name,)+
                }
            }
        }
    };
}

decision_labels! {
    MissingKey => "missing_key",
    InvalidKey => "invalid_key",
    ExpiredKey => "expired_key",
    BrowserFullAccess => "browser_full_access",
    OriginNotAllowed => "origin_not_allowed",
    ReadOnlyMethod => "read_only_method",
    /// The key's (or the key and client's) rate limit is spent: 429.
    RateLimited => "rate_limited",
    Allowed => "allowed",
    BrowserFullAccessReported => "browser_full_access_reported",
    Preflight => "preflight",
    /// Allowed (or a forwarded preflight), then the upstream failed: 502.
    UpstreamUnavailable => "upstream_unavailable",
    /// Allowed (or a forwarded preflight), then the upstream was too slow: 504.
    UpstreamTimeout => "upstream_timeout",
    /// The request target could not be forwarded: 400.
    BadRequest => "bad_request",
    /// The client sent no body byte for `server.body_timeout`: 408.
    RequestTimeout => "request_timeout",
    /// No key index loaded yet (a database store not reached since start): 503.
    NotReady => "not_ready",
    /// More header fields than `server.max_headers` (HTTP/2; hyper answers
    /// HTTP/1.1 heads itself): 431.
    HeadersTooLarge => "headers_too_large",
}

impl DecisionLabel {
    /// The position in `ALL`: the variants are declared in that order.
    const fn index(self) -> usize {
        self as usize
    }
}

/// The `access` label: a key's access, or `none` when no key was identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLabel {
    None,
    ReadOnly,
    FullAccess,
}

impl AccessLabel {
    const ALL: [AccessLabel; 3] = [
        AccessLabel::None,
        AccessLabel::ReadOnly,
        AccessLabel::FullAccess,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            AccessLabel::None => "none",
            AccessLabel::ReadOnly => "read-only",
            AccessLabel::FullAccess => "full-access",
        }
    }
}

/// The `kind` label of upstream errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Protocol,
}

impl UpstreamErrorKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Protocol => "protocol",
        }
    }
}

/// All of keygate's metrics.
pub struct Metrics {
    registry: Registry,
    decisions: Vec<[IntCounter; 3]>,
    durations: Vec<Histogram>,
    upstream_durations: Histogram,
    /// `keygate_responses_total{class}`: 1xx to 5xx.
    responses: [IntCounter; 5],
    tls_expiry: IntGauge,
    tls_reload_success: IntCounter,
    tls_reload_failure: IntCounter,
    tls_last_reload_ok: IntGauge,
    upstream_errors: [IntCounter; 3],
    keys: [IntGauge; 2],
    reload_success: IntCounter,
    reload_failure: IntCounter,
    last_reload_ok: IntGauge,
    last_reload_success_ts: Gauge,
    connections_active: IntGauge,
    store_connected: IntGauge,
    ratelimit_shared_connected: IntGauge,
    ratelimit_clients: IntGauge,
    admin_requests: IntCounterVec,
    admin_signin_failures: IntCounter,
    store_changes_applied: IntCounter,
    store_sync_lag: Gauge,
    /// Unix milliseconds of the last confirmed sync with the store; the lag
    /// gauge is computed from it at scrape time, so it keeps growing while
    /// the database is away.
    store_last_sync_ms: AtomicU64,
    log_dropped: IntCounter,
    previous_secret_requests: IntCounter,
    /// `keygate_key_requests_total{key_id, decision}`, with `[metrics] per_key`.
    key_requests: Option<IntCounterVec>,
    /// Where the dropped-lines count lives (the log writer's own counter).
    log_dropped_source: Option<&'static AtomicU64>,
    /// Two scrapes at once must not both add the same difference.
    log_dropped_sync: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Builds and registers every metric, with every label combination present
    /// from the start (a series that appears only on first use breaks `rate()`).
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| registry.register(c);

        let decisions_vec = IntCounterVec::new(
            Opts::new(
                "keygate_decisions_total",
                "Requests by gateway decision and key access type.",
            ),
            &["decision", "access"],
        )?;
        reg(Box::new(decisions_vec.clone()))?;
        let durations_vec = prometheus::HistogramVec::new(
            HistogramOpts::new(
                "keygate_request_duration_seconds",
                "Time from request head to response head, by decision.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ]),
            &["decision"],
        )?;
        reg(Box::new(durations_vec.clone()))?;
        let upstream_durations = Histogram::with_opts(
            HistogramOpts::new(
                "keygate_upstream_duration_seconds",
                "Time from forwarding a request to the upstream's response head (the \
                 upstream's share of keygate_request_duration_seconds).",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        reg(Box::new(upstream_durations.clone()))?;
        let mut decisions = Vec::with_capacity(DecisionLabel::ALL.len());
        let mut durations = Vec::with_capacity(DecisionLabel::ALL.len());
        for &d in DecisionLabel::ALL {
            let by_access = AccessLabel::ALL
                .map(|a| decisions_vec.with_label_values(&[d.as_str(), a.as_str()]));
            decisions.push(by_access);
            durations.push(durations_vec.with_label_values(&[d.as_str()]));
        }

        let upstream_vec = IntCounterVec::new(
            Opts::new(
                "keygate_upstream_errors_total",
                "Failed exchanges with the upstream, by kind.",
            ),
            &["kind"],
        )?;
        reg(Box::new(upstream_vec.clone()))?;
        let upstream_errors = [
            UpstreamErrorKind::Connect,
            UpstreamErrorKind::Timeout,
            UpstreamErrorKind::Protocol,
        ]
        .map(|k| upstream_vec.with_label_values(&[k.as_str()]));

        let keys_vec = IntGaugeVec::new(
            Opts::new(
                "keygate_keys",
                "Active keys in the loaded index, by access type.",
            ),
            &["access"],
        )?;
        reg(Box::new(keys_vec.clone()))?;
        let keys = [
            keys_vec.with_label_values(&["read-only"]),
            keys_vec.with_label_values(&["full-access"]),
        ];

        let reloads_vec = IntCounterVec::new(
            Opts::new("keygate_reloads_total", "Key store reloads, by result."),
            &["result"],
        )?;
        reg(Box::new(reloads_vec.clone()))?;
        let last_reload_ok = IntGauge::new(
            "keygate_config_last_reload_successful",
            "1 if the last key store reload succeeded, else 0.",
        )?;
        reg(Box::new(last_reload_ok.clone()))?;
        let last_reload_success_ts = Gauge::new(
            "keygate_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful key store reload.",
        )?;
        reg(Box::new(last_reload_success_ts.clone()))?;
        let connections_active =
            IntGauge::new("keygate_connections_active", "Open client connections.")?;
        reg(Box::new(connections_active.clone()))?;

        let store_connected = IntGauge::new(
            "keygate_store_connected",
            "1 while the key store is reachable (always 1 for a file store).",
        )?;
        reg(Box::new(store_connected.clone()))?;
        let store_changes_applied = IntCounter::new(
            "keygate_store_changes_applied_total",
            "Key changes applied to the index from the store (added, changed or revoked keys).",
        )?;
        reg(Box::new(store_changes_applied.clone()))?;
        let store_sync_lag = Gauge::new(
            "keygate_store_sync_lag_seconds",
            "Seconds since the index was last confirmed current with the database store (0 for a file store).",
        )?;
        reg(Box::new(store_sync_lag.clone()))?;

        let log_dropped = IntCounter::new(
            "keygate_log_lines_dropped_total",
            "Log lines dropped because stderr could not keep up (requests never wait on the log).",
        )?;
        reg(Box::new(log_dropped.clone()))?;

        let previous_secret_requests = IntCounter::new(
            "keygate_previous_secret_requests_total",
            "Allowed requests that used a rotated key's previous secret (in its grace period).",
        )?;
        reg(Box::new(previous_secret_requests.clone()))?;

        // What is running, as operators of Prometheus exporters expect:
        // join it on instance to see which build each gateway runs.
        let build_info = IntGaugeVec::new(
            Opts::new(
                "keygate_build_info",
                "Always 1; the labels say which build is running.",
            ),
            &["version", "commit", "rustc"],
        )?;
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                env!("KEYGATE_COMMIT"),
                env!("KEYGATE_RUSTC"),
            ])
            .set(1);
        reg(Box::new(build_info))?;
        let ratelimit_shared_connected = IntGauge::new(
            "keygate_ratelimit_shared_connected",
            "1 while the shared rate-limit counters (Redis) are reachable; 0 when limits are local only.",
        )?;
        reg(Box::new(ratelimit_shared_connected.clone()))?;
        let ratelimit_clients = IntGauge::new(
            "keygate_ratelimit_clients",
            "(read-only key, client address) pairs tracked for per-client rate limits.",
        )?;
        reg(Box::new(ratelimit_clients.clone()))?;

        let admin_requests = IntCounterVec::new(
            Opts::new(
                "keygate_admin_requests_total",
                "Admin API and console requests, by route and status.",
            ),
            &["route", "status"],
        )?;
        reg(Box::new(admin_requests.clone()))?;
        let admin_signin_failures = IntCounter::new(
            "keygate_admin_signin_failures_total",
            "Failed console sign-ins (wrong or unknown admin token).",
        )?;
        reg(Box::new(admin_signin_failures.clone()))?;

        let responses_vec = IntCounterVec::new(
            Opts::new(
                "keygate_responses_total",
                "Responses sent to clients, by status class (1xx to 5xx): the backend's answers and the gateway's own.",
            ),
            &["class"],
        )?;
        reg(Box::new(responses_vec.clone()))?;
        let responses =
            ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|c| responses_vec.with_label_values(&[c]));
        let tls_expiry = IntGauge::new(
            "keygate_tls_certificate_expiry_timestamp_seconds",
            "When the certificate served on server.listen expires (Unix seconds); 0 without TLS.",
        )?;
        reg(Box::new(tls_expiry.clone()))?;
        let tls_reloads = IntCounterVec::new(
            Opts::new(
                "keygate_tls_certificate_reloads_total",
                "Reloads of the server certificate (file change or SIGHUP), by result.",
            ),
            &["result"],
        )?;
        reg(Box::new(tls_reloads.clone()))?;
        let tls_last_reload_ok = IntGauge::new(
            "keygate_tls_certificate_last_reload_successful",
            "0 while the last certificate reload failed (the previous certificate is still served); 1 otherwise.",
        )?;
        tls_last_reload_ok.set(1);
        reg(Box::new(tls_last_reload_ok.clone()))?;

        #[cfg(target_os = "linux")]
        reg(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;

        Ok(Metrics {
            registry,
            decisions,
            durations,
            upstream_durations,
            responses,
            tls_expiry,
            tls_reload_success: tls_reloads.with_label_values(&["success"]),
            tls_reload_failure: tls_reloads.with_label_values(&["failure"]),
            tls_last_reload_ok,
            upstream_errors,
            keys,
            reload_success: reloads_vec.with_label_values(&["success"]),
            reload_failure: reloads_vec.with_label_values(&["failure"]),
            last_reload_ok,
            last_reload_success_ts,
            connections_active,
            store_connected,
            ratelimit_shared_connected,
            ratelimit_clients,
            admin_requests,
            admin_signin_failures,
            store_changes_applied,
            store_sync_lag,
            store_last_sync_ms: AtomicU64::new(0),
            log_dropped,
            previous_secret_requests,
            key_requests: None,
            log_dropped_source: None,
            log_dropped_sync: std::sync::Mutex::new(()),
        })
    }

    /// Counts one request's decision and how long the gateway took to answer it.
    pub fn record_decision(&self, decision: DecisionLabel, access: AccessLabel, seconds: f64) {
        let i = decision.index();
        self.decisions[i][access as usize].inc();
        self.durations[i].observe(seconds);
    }

    /// One response sent to a client with this status.
    pub fn response(&self, status: u16) {
        if let Some(c) = (status / 100)
            .checked_sub(1)
            .and_then(|i| self.responses.get(usize::from(i)))
        {
            c.inc();
        }
    }

    /// The server certificate in use expires at `unix_secs`.
    pub fn tls_certificate(&self, unix_secs: i64) {
        self.tls_expiry.set(unix_secs);
    }

    /// A certificate reload: its expiry when it worked.
    pub fn tls_reload(&self, result: Result<i64, ()>) {
        match result {
            Ok(expiry) => {
                self.tls_reload_success.inc();
                self.tls_last_reload_ok.set(1);
                self.tls_expiry.set(expiry);
            }
            Err(()) => {
                self.tls_reload_failure.inc();
                self.tls_last_reload_ok.set(0);
            }
        }
    }

    /// The upstream answered a forwarded request's head after `seconds`.
    pub fn upstream_duration(&self, seconds: f64) {
        self.upstream_durations.observe(seconds);
    }

    /// Also counts requests per key (`[metrics] per_key`): one series per
    /// key and decision, so off by default (cardinality).
    pub fn with_per_key(mut self) -> Result<Self, prometheus::Error> {
        let vec = IntCounterVec::new(
            Opts::new(
                "keygate_key_requests_total",
                "Requests by key id and gateway decision (only with [metrics] per_key = true).",
            ),
            &["key_id", "decision"],
        )?;
        self.registry.register(Box::new(vec.clone()))?;
        self.key_requests = Some(vec);
        Ok(self)
    }

    /// One request decided for a known key (per-key counting only).
    pub fn key_request(&self, key_id: &str, decision: DecisionLabel) {
        if let Some(vec) = &self.key_requests {
            vec.with_label_values(&[key_id, decision.as_str()]).inc();
        }
    }

    /// An allowed request used a rotated key's previous secret.
    pub fn previous_secret_request(&self) {
        self.previous_secret_requests.inc();
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind as usize].inc();
    }

    /// Records a reload's outcome; on success, the new key counts.
    pub fn reload(&self, outcome: Result<(usize, usize), ()>, unix_seconds: f64) {
        match outcome {
            Ok((read_only, full_access)) => {
                self.reload_success.inc();
                self.last_reload_ok.set(1);
                self.last_reload_success_ts.set(unix_seconds);
                self.keys[0].set(i64::try_from(read_only).unwrap_or(i64::MAX));
                self.keys[1].set(i64::try_from(full_access).unwrap_or(i64::MAX));
            }
            Err(()) => {
                self.reload_failure.inc();
                self.last_reload_ok.set(0);
            }
        }
    }

    /// Exports this counter (the log writer's) as `keygate_log_lines_dropped_total`.
    pub fn with_log_dropped(mut self, source: &'static AtomicU64) -> Self {
        self.log_dropped_source = Some(source);
        self
    }

    /// Key counts after an incremental change (not counted as a reload).
    pub fn set_keys(&self, (read_only, full_access): (usize, usize)) {
        self.keys[0].set(i64::try_from(read_only).unwrap_or(i64::MAX));
        self.keys[1].set(i64::try_from(full_access).unwrap_or(i64::MAX));
    }

    pub fn store_connected(&self, connected: bool) {
        self.store_connected.set(i64::from(connected));
    }

    pub fn ratelimit_shared_connected(&self, connected: bool) {
        self.ratelimit_shared_connected.set(i64::from(connected));
    }

    pub fn ratelimit_clients(&self, n: usize) {
        self.ratelimit_clients
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// One admin request (`route` is one of a fixed set of names).
    pub fn admin_request(&self, route: &'static str, status: u16) {
        let buf = itoa_status(status);
        let status = std::str::from_utf8(&buf).unwrap_or("0");
        self.admin_requests
            .with_label_values(&[route, status])
            .inc();
    }

    pub fn admin_signin_failure(&self) {
        self.admin_signin_failures.inc();
    }

    pub fn store_changes_applied(&self, n: usize) {
        self.store_changes_applied
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// The index was confirmed current with the database store at this time.
    pub fn store_synced(&self, unix_ms: u64) {
        self.store_last_sync_ms.store(unix_ms, Ordering::Relaxed);
    }

    pub fn connection_opened(&self) {
        self.connections_active.inc();
    }

    pub fn connection_closed(&self) {
        self.connections_active.dec();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let last = self.store_last_sync_ms.load(Ordering::Relaxed);
        if last > 0 {
            let now = unix_ms(std::time::SystemTime::now());
            self.store_sync_lag
                .set(now.saturating_sub(last) as f64 / 1000.0);
        }
        if let Some(source) = self.log_dropped_source {
            let _one_at_a_time = self
                .log_dropped_sync
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let total = source.load(Ordering::Relaxed);
            self.log_dropped
                .inc_by(total.saturating_sub(self.log_dropped.get()));
        }
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on invalid metric data, which the
        // constructors above rule out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::new().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_spec_metric_is_exported_from_the_start() {
        let text = metrics().render();
        for name in [
            "keygate_decisions_total{access=\"none\",decision=\"missing_key\"} 0",
            "keygate_request_duration_seconds_bucket{decision=\"allowed\",le=\"0.001\"} 0",
            "keygate_upstream_errors_total{kind=\"protocol\"} 0",
            "keygate_upstream_duration_seconds_count 0",
            "keygate_responses_total{class=\"5xx\"} 0",
            "keygate_tls_certificate_expiry_timestamp_seconds 0",
            "keygate_tls_certificate_reloads_total{result=\"failure\"} 0",
            "keygate_tls_certificate_last_reload_successful 1",
            "keygate_keys{access=\"read-only\"} 0",
            "keygate_reloads_total{result=\"failure\"} 0",
            "keygate_config_last_reload_successful 0",
            "keygate_config_last_reload_success_timestamp_seconds 0",
            "keygate_connections_active 0",
            "keygate_store_connected 0",
            "keygate_store_changes_applied_total 0",
            "keygate_store_sync_lag_seconds 0",
            "keygate_log_lines_dropped_total 0",
            "keygate_previous_secret_requests_total 0",
            "keygate_ratelimit_shared_connected 0",
            "keygate_ratelimit_clients 0",
            "keygate_admin_signin_failures_total 0",
            concat!("keygate_build_info{commit=\"", env!("KEYGATE_COMMIT"), "\""),
        ] {
            assert!(text.contains(name), "missing {name}");
        }
    }

    #[test]
    fn every_label_is_registered_at_its_own_index() {
        let m = metrics();
        assert_eq!(m.decisions.len(), DecisionLabel::ALL.len());
        for (i, &d) in DecisionLabel::ALL.iter().enumerate() {
            assert_eq!(d.index(), i, "{d:?}");
            // Counting each label moves its own series, and no other's.
            m.record_decision(d, AccessLabel::None, 0.0);
            let text = m.render();
            let line = format!(
                "keygate_decisions_total{{access=\"none\",decision=\"{}\"}} 1",
                d.as_str()
            );
            assert!(text.contains(&line), "missing {line}");
        }
    }

    #[test]
    fn counting_moves_the_right_series() {
        let m = metrics();
        m.record_decision(
            DecisionLabel::BrowserFullAccess,
            AccessLabel::FullAccess,
            0.0002,
        );
        m.upstream_error(UpstreamErrorKind::Timeout);
        m.reload(Ok((3, 1)), 1_800_000_000.0);
        let text = m.render();
        assert!(text.contains(
            "keygate_decisions_total{access=\"full-access\",decision=\"browser_full_access\"} 1"
        ));
        assert!(text.contains(
            "keygate_request_duration_seconds_count{decision=\"browser_full_access\"} 1"
        ));
        assert!(text.contains("keygate_upstream_errors_total{kind=\"timeout\"} 1"));
        assert!(text.contains("keygate_keys{access=\"read-only\"} 3"));
        assert!(text.contains("keygate_config_last_reload_successful 1"));
        assert!(text.contains("keygate_config_last_reload_success_timestamp_seconds 1800000000"));
    }
}

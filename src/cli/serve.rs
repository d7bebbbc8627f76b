//! `keygate serve`: wire config, store, index, metrics, reloader, ops listener
//! and the client listener together, then run until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use super::{CliError, ConfigArg, logging};
use crate::config::Config;
use crate::keys::KeyIndex;
use crate::limits::{Limiter, SharedSync};
use crate::metrics::{Health, Metrics, serve_ops};
use crate::proxy::Gateway;
use crate::reload::{CertWatcher, FileWatcher, Hangup, PgSync, Publisher, UsageFile};
use crate::server::{self, Drain, tls};
use crate::store::Store;

/// How long the last usage write waits for the loader thread at shutdown.
const USAGE_WRITE_AT_EXIT: std::time::Duration = std::time::Duration::from_secs(10);

pub fn run(args: &ConfigArg) -> Result<(), CliError> {
    let config = super::load_config(&super::config_path(args.config.as_deref()))?;
    serve(config, |_, _, _| {})
}

/// Runs the gateway on `config` until SIGTERM/SIGINT. `on_ready` is called
/// with the client, ops and admin addresses once they listen and the index is loaded.
pub fn serve(
    config: Config,
    on_ready: impl FnOnce(SocketAddr, SocketAddr, Option<SocketAddr>) + Send,
) -> Result<(), CliError> {
    logging::init(&config.log)?;
    // One worker: a single-threaded runtime, as one nginx worker is, with
    // no work-stealing scheduler to pay for (about 1,000 instructions a
    // request, PERFORMANCE.md); blocking work (store loads) still runs on
    // the blocking pool's threads.
    let mut rt = match config.server.workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            rt.worker_threads(n);
            rt
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = rt
        .enable_all()
        .build()
        .map_err(|e| CliError::user(format!("cannot start the runtime: {e}")))?;
    let result = rt.block_on(run_gateway(config, on_ready));
    // Tasks still running (watchers, a SIGHUP listener, a blocking stat)
    // must not hold the exit, above all after a failed start.
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    logging::flush();
    result
}

async fn run_gateway(
    config: Config,
    on_ready: impl FnOnce(SocketAddr, SocketAddr, Option<SocketAddr>),
) -> Result<(), CliError> {
    let metrics_error = |e| CliError::user(format!("metrics: {e}"));
    let mut metrics = Metrics::new()
        .map_err(metrics_error)?
        .with_log_dropped(&logging::DROPPED);
    if config.metrics.per_key {
        metrics = metrics.with_per_key().map_err(metrics_error)?;
    }
    let metrics = Arc::new(metrics);
    let health = Arc::new(Health::default());
    let index = Arc::new(ArcSwap::from_pointee(KeyIndex::default()));
    let publisher = Publisher::new(index.clone(), metrics.clone(), health.clone());
    let publisher_usage = publisher.usage();
    // Registered before anything can report ready: an early SIGHUP must not
    // kill the process.
    let hangup = Hangup::listen();
    // A file store is loaded before anything listens (a bad file is a start
    // error). A database store is loaded by its sync task: until it is,
    // /readyz says 503 and requests get 503 not_ready, and the gateway keeps
    // trying, since the database may simply come up after it.
    let (mut file_watcher, mut pg_sync, mut usage_file) = (None, None, None);
    match Store::open(&config.keys.store)? {
        Store::File(store) => {
            metrics.store_connected(true);
            // Usage persisted by an earlier run counts on from where it was.
            usage_file = Some(UsageFile::open(store.clone(), publisher.usage()));
            let mut watcher = FileWatcher::new(store, publisher);
            watcher.reload("start")?;
            file_watcher = Some(watcher);
        }
        Store::Postgres(store) => {
            let sync = PgSync::new(*store, publisher, config.keys.resync_interval);
            pg_sync = Some(match &config.keys.snapshot {
                Some(path) => sync.with_snapshot(path.clone(), config.keys.snapshot_max_age),
                None => sync,
            });
        }
    }

    let tls = match &config.server.tls {
        None => None,
        Some(files) => {
            let resolver = tls::CertResolver::load(files)?;
            metrics.tls_certificate(resolver.expiry());
            let (watched, reloaded, counted) = (files.clone(), resolver.clone(), metrics.clone());
            let watcher = CertWatcher::new(
                vec![files.cert.clone(), files.key.clone()],
                Box::new(move || {
                    let result = reloaded.reload(&watched);
                    counted.tls_reload(result.as_ref().map(|e| *e).map_err(|_| ()));
                    Ok(result.map(|_| ())?)
                }),
            );
            tokio::spawn(watcher.watch(hangup.clone()));
            Some(tls::server_config(resolver)?)
        }
    };
    let limiter = Arc::new(Limiter::new(&config.limits));
    let gateway =
        Arc::new(Gateway::new(&config, index, metrics.clone())?.with_limiter(limiter.clone()));
    let listener = server::listen(config.server.listen, config.server.max_connections)
        .map_err(|e| CliError::user(format!("server.listen {}: {e}", config.server.listen)))?;
    let ops = TcpListener::bind(config.metrics.listen)
        .await
        .map_err(|e| CliError::user(format!("metrics.listen {}: {e}", config.metrics.listen)))?;
    let admin = bind_admin(&config, &metrics, Some(publisher_usage)).await?;
    let client_addr = listener.local_addr()?;
    let ops_addr = ops.local_addr()?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;

    tokio::spawn(serve_ops(ops, metrics.clone(), health.clone()));
    let mut admin_addr = None;
    if let Some((listener, admin, tls, addr)) = admin {
        tracing::info!(admin.addr = %addr, "admin API and console listening");
        admin_addr = Some(addr);
        tokio::spawn(crate::admin::serve(
            listener,
            admin,
            tls,
            std::future::pending(),
        ));
    }
    tokio::spawn(limiter.clone().maintain(metrics.clone()));
    if let Some(shared) = &config.limits.shared
        && let Some(sync) = SharedSync::new(shared.clone(), limiter, metrics.clone())
    {
        // Requests never wait on it: a Redis that is away at start is
        // reconnected to in the background, limits staying local meanwhile.
        tokio::spawn(sync.run());
    }
    if let Some(watcher) = file_watcher {
        tokio::spawn(watcher.watch(hangup.clone()));
    }
    let usage_at_exit = usage_file.as_ref().map(UsageFile::last_write);
    if let Some(usage) = usage_file {
        tokio::spawn(usage.run());
    }
    if let Some(sync) = pg_sync {
        sync.spawn(hangup)
            .map_err(|e| CliError::user(format!("cannot start the key store sync: {e}")))?;
    }
    tracing::info!(client.addr = %client_addr, ops.addr = %ops_addr, tls = config.server.tls.is_some(), upstream = %redacted_url(&config.upstream.url), "keygate listening");
    on_ready(client_addr, ops_addr, admin_addr);
    if super::notify::wanted() {
        // Ready for systemd when ready for /readyz: once a key index is
        // loaded (a database store may take a while).
        let loaded = health.clone();
        tokio::spawn(async move {
            while !loaded.is_loaded() {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            super::notify::notify("READY=1\nSTATUS=serving");
        });
    }

    let shutdown = async {
        tokio::select! {
            _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "shutting down: draining connections"),
            _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "shutting down: draining connections"),
        }
        super::notify::notify("STOPPING=1\nSTATUS=draining");
    };
    match server::run(
        listener,
        &config.server,
        gateway,
        tls,
        metrics,
        health,
        shutdown,
    )
    .await
    {
        Drain::Complete => tracing::info!("shutdown complete: every connection finished"),
        Drain::CutOff(n) => {
            tracing::warn!(connections = n, drain_timeout = ?config.server.drain_timeout, "shutdown: drain timeout cut off connections")
        }
    }
    // What was counted since the last periodic write survives the restart.
    // On the loader thread, after whatever it has queued (a periodic write,
    // the freeing of an old index and its deleted keys' counters), bounded.
    if let Some(mut usage) = usage_at_exit {
        let write = crate::reload::loader::run(move || usage.flush());
        match tokio::time::timeout(USAGE_WRITE_AT_EXIT, write).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "cannot write key usage at shutdown"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot write key usage at shutdown"),
            Err(_) => tracing::warn!(
                waited = ?USAGE_WRITE_AT_EXIT,
                "key usage not written at shutdown: the loader thread is busy"
            ),
        }
    }
    Ok(())
}

type BoundAdmin = (
    TcpListener,
    Arc<crate::admin::Admin>,
    Option<tokio_rustls::TlsAcceptor>,
    SocketAddr,
);

/// The admin listener, bound, when `[admin] listen` is set: a listener that
/// cannot bind, or TLS files that cannot be read, fail the start.
async fn bind_admin(
    config: &Config,
    metrics: &Arc<Metrics>,
    live_usage: Option<Arc<crate::keys::UsageTable>>,
) -> Result<Option<BoundAdmin>, CliError> {
    let Some(listen) = config.admin.as_ref().and_then(|a| a.listen) else {
        return Ok(None);
    };
    let Some(mut admin) = crate::admin::Admin::new(config, metrics.clone())? else {
        return Ok(None);
    };
    if let Some(usage) = live_usage {
        admin = admin.with_live_usage(usage);
    }
    let tls = match config.admin.as_ref().and_then(|a| a.tls.as_ref()) {
        None => None,
        Some(files) => {
            let resolver = tls::CertResolver::load(files)?;
            let mut server = (*tls::server_config(resolver)?).clone();
            // The admin listener speaks HTTP/1.1 only.
            server.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
        }
    };
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::user(format!("admin.listen {listen}: {e}")))?;
    let addr = listener.local_addr()?;
    Ok(Some((listener, Arc::new(admin), tls, addr)))
}

/// `keygate admin`: the admin API and console alone, with the ops listener,
/// until SIGTERM/SIGINT.
pub fn run_admin(args: &ConfigArg) -> Result<(), CliError> {
    let config = super::load_config(&super::config_path(args.config.as_deref()))?;
    if config.admin.as_ref().and_then(|a| a.listen).is_none() {
        return Err(CliError::user(
            "keygate admin needs [admin] listen in the config (e.g. listen = \"127.0.0.1:9091\")",
        ));
    }
    // A file store missing or invalid at start is a start failure, as for
    // `serve`; a database that is away is not (each request tries again).
    if let crate::store::Store::File(store) = Store::open(&config.keys.store)? {
        store.load()?;
    }
    logging::init(&config.log)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.server.workers.unwrap_or(2).min(2))
        .enable_all()
        .build()
        .map_err(|e| CliError::user(format!("cannot start the runtime: {e}")))?;
    let result = rt.block_on(async {
        let metrics =
            Arc::new(Metrics::new().map_err(|e| CliError::user(format!("metrics: {e}")))?);
        let health = Arc::new(Health::default());
        health.set_loaded();
        let ops = TcpListener::bind(config.metrics.listen)
            .await
            .map_err(|e| {
                CliError::user(format!("metrics.listen {}: {e}", config.metrics.listen))
            })?;
        let Some((listener, admin, tls, addr)) = bind_admin(&config, &metrics, None).await? else {
            return Ok(());
        };
        let ops_addr = ops.local_addr()?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        tokio::spawn(serve_ops(ops, metrics.clone(), health));
        tracing::info!(admin.addr = %addr, ops.addr = %ops_addr, "keygate admin listening");
        let shutdown = async {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        };
        crate::admin::serve(listener, admin, tls, shutdown).await;
        tracing::info!("keygate admin stopped");
        Ok::<(), CliError>(())
    });
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    logging::flush();
    result
}

/// A URL for the log: any userinfo (`user:password@`) replaced by `***@`.
fn redacted_url(url: &http::Uri) -> String {
    match url.authority() {
        Some(a) if a.as_str().contains('@') => {
            let host = a.as_str().rsplit_once('@').map_or("", |(_, h)| h);
            format!("{}://***@{host}", url.scheme_str().unwrap_or("http"))
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_never_reaches_the_log() {
        let url: http::Uri = "http://user:pw@backend:3000"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(redacted_url(&url), "http://***@backend:3000");
        let url: http::Uri = "https://backend:3000"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(redacted_url(&url), "https://backend:3000/");
    }
}

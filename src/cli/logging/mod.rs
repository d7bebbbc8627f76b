//! Log output: `tracing` events formatted by our own layer (`format`), text
//! or JSON, appended to one in-memory batch and written to stderr by a
//! background thread.
//!
//! The request path formats a line into a buffer its thread reuses and
//! copies it into the batch under a short lock: no allocation per line (the
//! batch and the writer's spare swap places, each keeping its capacity).
//! The writer wakes on the first line of a batch, lets the burst gather for
//! 20 ms (or until 1 MiB), swaps the batch out and writes it at once: under
//! a flood of denials, one wake-up and one syscall per batch instead of one
//! per line.
//!
//! The batch is bounded in bytes (`QUEUE_BYTES`): a denial line carries the
//! request's path (cut to 256 bytes by `proxy::LogPath`), and a stalled
//! stderr must not let a client fill memory. When it is full (a stuck log
//! shipper, a full pipe) a line is dropped and counted rather than making a
//! request wait on the log: a sidecar must keep serving. The writer reports
//! how many were lost in a line of its own once it can write again, and
//! `keygate_log_lines_dropped_total` counts them.
//!
//! The writer takes stderr's lock only while it writes a batch, never for
//! its whole life: `main` prints the last `keygate: ...` line on stderr too.
//! `flush` waits until the lines logged so far are written before the
//! process exits, at most `FLUSH_WAIT`, so a stderr nobody reads cannot stop
//! the exit.

mod access;
mod format;

use std::io::Write;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

use super::CliError;
use crate::config::LogConfig;

/// Bytes waiting to be written at most: with every line at its longest (a
/// cut path plus the other fields, well under 2 KiB) the batch stays within
/// this.
pub const QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// How long the writer lets lines accumulate after the first of a batch.
/// Each batch costs the writer thread a wake-up, a timed wait and a
/// `write`, and the worker a `futex` wake and two context switches when
/// they share a core: at 2 ms that was 3-4 % of a denial's CPU time under
/// a flood (`perf`, PERFORMANCE.md session 11), at 20 ms 0.7 %. Envoy's
/// file access log waits up to a second.
const BATCH_WINDOW: Duration = Duration::from_millis(20);
/// A batch this large is written without waiting out the window: at a
/// million lines a second the queue stays far below `QUEUE_BYTES`.
const FLUSH_BYTES: usize = 1024 * 1024;
/// Longest wait for the batch to be written at exit.
const FLUSH_WAIT: Duration = Duration::from_secs(1);

/// Lines dropped because the batch was full, since start.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Lines waiting to be written, and how many.
struct Batch {
    bytes: Vec<u8>,
    lines: u64,
}

static BATCH: Mutex<Batch> = Mutex::new(Batch {
    bytes: Vec::new(),
    lines: 0,
});
/// Signalled when a line lands in an empty batch, or `flush` asks.
static WAKE: Condvar = Condvar::new();
/// Lines appended and lines written since start: `flush` waits for the
/// second to reach the first.
static APPENDED: AtomicU64 = AtomicU64::new(0);
static WRITTEN: AtomicU64 = AtomicU64::new(0);
static STARTED: AtomicBool = AtomicBool::new(false);

fn batch() -> MutexGuard<'static, Batch> {
    // A writer that panicked mid-copy leaves whole bytes behind: go on.
    BATCH.lock().unwrap_or_else(|e| e.into_inner())
}

/// Queues one formatted line (with its newline), or drops and counts it
/// when the batch is full.
fn push(line: &[u8]) {
    let mut b = batch();
    let before = b.bytes.len();
    if before + line.len() > QUEUE_BYTES {
        drop(b);
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    b.bytes.extend_from_slice(line);
    b.lines += 1;
    APPENDED.fetch_add(1, Ordering::Relaxed);
    let after = b.bytes.len();
    drop(b);
    if before == 0 || (before < FLUSH_BYTES && after >= FLUSH_BYTES) {
        WAKE.notify_one();
    }
}

/// Set by `flush`: the writer stops gathering and writes now.
static FLUSH_NOW: AtomicBool = AtomicBool::new(false);

/// Sets up `tracing`: level from `RUST_LOG` or the config; a second call in
/// one process keeps the first setup.
pub fn init(log: &LogConfig) -> Result<(), CliError> {
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| log.level.clone());
    let filter =
        Targets::from_str(&spec).map_err(|e| CliError::user(format!("log.level {spec:?}: {e}")))?;
    if STARTED.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("keygate-log".into())
        .spawn(write_lines)
        .map_err(|e| CliError::user(format!("cannot start the log writer: {e}")))?;
    // Request lines skip `tracing` (`access`), so they get the filter's
    // verdict for their target here, once: the filter is fixed for life.
    static ACCESS: OnceLock<access::AccessLines> = OnceLock::new();
    let writer = ACCESS.get_or_init(|| access::AccessLines {
        json: log.format == crate::config::LogFormat::Json,
        enabled: filter.would_enable(crate::proxy::access::TARGET, &tracing::Level::INFO),
        sink: push,
    });
    crate::proxy::access::install_writer(writer);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(format::Lines::new(log.format, push))
        .try_init();
    Ok(())
}

/// Waits until every line logged so far is written, or `FLUSH_WAIT`.
pub fn flush() {
    if !STARTED.load(Ordering::Acquire) {
        return;
    }
    let target = APPENDED.load(Ordering::Relaxed);
    let deadline = Instant::now() + FLUSH_WAIT;
    FLUSH_NOW.store(true, Ordering::Release);
    WAKE.notify_one();
    while WRITTEN.load(Ordering::Acquire) < target && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn write_lines() {
    let mut spare = Batch {
        bytes: Vec::new(),
        lines: 0,
    };
    let mut reported = 0;
    loop {
        {
            let mut b = batch();
            while b.bytes.is_empty() {
                b = WAKE.wait(b).unwrap_or_else(|e| e.into_inner());
            }
            // Let a burst accumulate: lines land in the batch without waking
            // this thread while it waits.
            let mut b = WAKE
                .wait_timeout_while(b, BATCH_WINDOW, |b| {
                    b.bytes.len() < FLUSH_BYTES && !FLUSH_NOW.load(Ordering::Acquire)
                })
                .map_or_else(|e| e.into_inner().0, |r| r.0);
            FLUSH_NOW.store(false, Ordering::Release);
            std::mem::swap(&mut *b, &mut spare);
        }
        // `Stderr`, not a `StderrLock` held for life: the lock is taken for
        // this write only.
        let mut err = std::io::stderr().lock();
        let dropped = DROPPED.load(Ordering::Relaxed);
        if dropped > reported {
            let _ = writeln!(
                err,
                "keygate: {} log line(s) dropped: stderr could not keep up (keygate_log_lines_dropped_total)",
                dropped - reported
            );
            reported = dropped;
        }
        let _ = err.write_all(&spare.bytes);
        let _ = err.flush();
        drop(err);
        WRITTEN.fetch_add(spare.lines, Ordering::Release);
        spare.bytes.clear();
        spare.lines = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_holds_at_most_queue_bytes_whatever_the_line_count() {
        // No writer runs in this test process: the batch only fills.
        let dropped = DROPPED.load(Ordering::Relaxed);
        let mib = vec![b'x'; 1024 * 1024];
        for _ in 0..QUEUE_BYTES / mib.len() {
            push(&mib);
        }
        assert_eq!(DROPPED.load(Ordering::Relaxed), dropped);
        push(&mib);
        push(b"0123456789");
        assert_eq!(DROPPED.load(Ordering::Relaxed), dropped + 2);
        // As the writer takes the batch, room comes back.
        let taken = std::mem::take(&mut batch().bytes);
        assert_eq!(taken.len(), QUEUE_BYTES);
        push(&mib);
        assert_eq!(DROPPED.load(Ordering::Relaxed), dropped + 2);
        assert_eq!(batch().bytes.len(), mib.len());
    }
}

//! Log output: `tracing` lines, text or JSON, written to stderr by a
//! background thread. The request path formats a line and hands it over a
//! bounded channel; the writer thread wakes on the first line, lets a burst
//! gather for 2 ms, and writes it all at once. Under a flood of denials that
//! is one wake-up and one syscall per batch instead of one per line.
//!
//! The queue is bounded in bytes (`QUEUE_BYTES`) as well as in lines: a
//! denial line carries the request's path (cut to 256 bytes by
//! `proxy::LogPath`), and a stalled stderr must not let a client fill memory. When
//! it is full (a stuck log shipper, a full pipe) a line is dropped and
//! counted rather than making a request wait on the log: a sidecar must keep
//! serving. The writer reports how many were lost in a line of its own once
//! it can write again, and `keygate_log_lines_dropped_total` counts them.
//!
//! The writer takes stderr's lock only while it writes a batch, never for
//! its whole life: `main` prints the last `keygate: ...` line on stderr too.
//! `flush` drains the queue before the process exits, waiting at most
//! `FLUSH_WAIT` so that a stderr nobody reads cannot stop the exit.

use std::io::{IsTerminal, Write};
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

use super::CliError;
use crate::config::{LogConfig, LogFormat};

/// Lines queued at most.
const QUEUE: usize = 16 * 1024;
/// Bytes queued at most: with every line at its longest (a cut path plus
/// the other fields, well under 2 KiB) the queue stays within this.
pub const QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// How long the writer lets lines accumulate after the first of a batch.
const BATCH_WINDOW: Duration = Duration::from_millis(2);
/// Longest wait for the queue to drain at exit.
const FLUSH_WAIT: Duration = Duration::from_secs(1);

enum Message {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

static SINK: OnceLock<SyncSender<Message>> = OnceLock::new();

/// Lines dropped because the queue was full, since start.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Bytes of the lines in the queue now.
static QUEUED: AtomicUsize = AtomicUsize::new(0);

/// Sets up `tracing`: level from `RUST_LOG` or the config; a second call in
/// one process keeps the first setup.
pub fn init(log: &LogConfig) -> Result<(), CliError> {
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| log.level.clone());
    let filter =
        Targets::from_str(&spec).map_err(|e| CliError::user(format!("log.level {spec:?}: {e}")))?;
    if SINK.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = sync_channel(QUEUE);
    std::thread::Builder::new()
        .name("keygate-log".into())
        .spawn(move || write_lines(rx))
        .map_err(|e| CliError::user(format!("cannot start the log writer: {e}")))?;
    let _ = SINK.set(tx.clone());
    let make = Sink(tx);
    let ansi = std::io::stderr().is_terminal();
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match log.format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(make)
                    .with_ansi(ansi),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().with_writer(make))
            .try_init(),
    };
    Ok(())
}

/// Waits until every line logged so far is written, or `FLUSH_WAIT`.
pub fn flush() {
    if let Some(tx) = SINK.get() {
        let (done_tx, done_rx) = sync_channel(1);
        if tx.try_send(Message::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv_timeout(FLUSH_WAIT);
        }
    }
}

fn write_lines(rx: Receiver<Message>) {
    // `Stderr`, not a `StderrLock`: each flush of the buffer takes the lock
    // for its write only.
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr());
    let handle = |m: Message, out: &mut std::io::BufWriter<_>| match m {
        Message::Line(line) => {
            QUEUED.fetch_sub(line.len(), Ordering::Relaxed);
            let _ = out.write_all(&line);
        }
        Message::Flush(done) => {
            let _ = out.flush();
            let _ = done.send(());
        }
    };
    let mut reported = 0;
    while let Ok(first) = rx.recv() {
        let dropped = DROPPED.load(Ordering::Relaxed);
        if dropped > reported {
            let _ = writeln!(
                out,
                "keygate: {} log line(s) dropped: stderr could not keep up (keygate_log_lines_dropped_total)",
                dropped - reported
            );
            reported = dropped;
        }
        handle(first, &mut out);
        // Let a burst accumulate: the senders enqueue without waking this
        // thread while it sleeps, so a flood costs one wake-up per batch.
        std::thread::sleep(BATCH_WINDOW);
        while let Ok(next) = rx.try_recv() {
            handle(next, &mut out);
        }
        let _ = out.flush();
    }
}

#[derive(Clone)]
struct Sink(SyncSender<Message>);

/// One log line being formatted; sent whole when dropped.
struct Line {
    buf: Vec<u8>,
    tx: SyncSender<Message>,
}

impl Write for Line {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let len = self.buf.len();
        if len == 0 {
            return;
        }
        // Reserve the bytes first; give them back if the line is not queued.
        if QUEUED.fetch_add(len, Ordering::Relaxed) + len > QUEUE_BYTES {
            QUEUED.fetch_sub(len, Ordering::Relaxed);
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let line = Message::Line(std::mem::take(&mut self.buf));
        if let Err(e) = self.tx.try_send(line) {
            QUEUED.fetch_sub(len, Ordering::Relaxed);
            if matches!(e, std::sync::mpsc::TrySendError::Full(_)) {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = Line;
    fn make_writer(&'a self) -> Line {
        Line {
            buf: Vec::with_capacity(256),
            tx: self.0.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line of `len` bytes, formatted and handed over as the request path
    /// does it.
    fn log(tx: &SyncSender<Message>, len: usize) {
        let mut line = Sink(tx.clone()).make_writer();
        let _ = line.write_all(&vec![b'x'; len]);
    }

    #[test]
    fn the_queue_holds_at_most_queue_bytes_whatever_the_line_count() {
        let (tx, rx) = sync_channel(QUEUE);
        let dropped = DROPPED.load(Ordering::Relaxed);
        let mib = 1024 * 1024;
        // Four lines of 1 MiB fill the byte budget, far below the line budget.
        for _ in 0..QUEUE_BYTES / mib {
            log(&tx, mib);
        }
        assert_eq!(DROPPED.load(Ordering::Relaxed), dropped);
        log(&tx, mib);
        log(&tx, 10);
        assert_eq!(DROPPED.load(Ordering::Relaxed), dropped + 2);
        // As the writer takes lines, room comes back.
        let mut taken = 0;
        while let Ok(Message::Line(line)) = rx.try_recv() {
            QUEUED.fetch_sub(line.len(), Ordering::Relaxed);
            taken += 1;
        }
        assert_eq!(taken, QUEUE_BYTES / mib);
        log(&tx, mib);
        assert_eq!(DROPPED.load(Ordering::Relaxed), dropped + 2);
        if let Ok(Message::Line(line)) = rx.try_recv() {
            QUEUED.fetch_sub(line.len(), Ordering::Relaxed);
            assert_eq!(line.len(), mib);
        } else {
            panic!("the line after the drain was not queued");
        }
    }
}

//! Persisting key usage off the request path: `UsageFile` writes the
//! counters to `keys.usage` beside a file store every `FLUSH_INTERVAL` while
//! they change, and reads them back at start. A folder that cannot be
//! written (a Kubernetes Secret mount) costs one warning: usage then lives
//! in memory only.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::keys::{UsageFingerprint, UsageTable};
use crate::store::{FileStore, StoreError};

/// How often changed counters are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(10);

pub struct UsageFile {
    store: FileStore,
    table: Arc<UsageTable>,
    /// The counters as last written or read, as a fingerprint: a copy of
    /// them would cost about 80 bytes a key, twice (this writer and the
    /// one kept for shutdown).
    written: Option<UsageFingerprint>,
}

impl UsageFile {
    /// Seeds `table` from the file, if there is one (a file that cannot be
    /// read is logged and left to be replaced).
    pub fn open(store: FileStore, table: Arc<UsageTable>) -> Self {
        let written = match store.load_usage() {
            Ok(samples) => {
                for (id, sample) in &samples {
                    table.seed(id, *sample);
                }
                Some(table.fingerprint())
            }
            Err(e) => {
                tracing::warn!(error = %e, "key usage file unreadable; counting from zero");
                None
            }
        };
        UsageFile {
            store,
            table,
            written,
        }
    }

    /// Writes the counters when they changed, every `FLUSH_INTERVAL`, on the
    /// loader thread, until the task is dropped or the folder turns out not
    /// to be writable.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let joined = super::loader::run(move || {
                let result = self.flush();
                (self, result)
            })
            .await;
            match joined {
                Ok((me, Ok(()))) => self = me,
                Ok((me, Err(e))) if read_only(&e) => {
                    tracing::warn!(
                        file = %me.store.usage_path().display(),
                        error = %e,
                        "cannot write key usage (read-only folder?): usage is kept in memory only"
                    );
                    return;
                }
                Ok((me, Err(e))) => {
                    tracing::warn!(error = %e, "cannot write key usage; will retry");
                    self = me;
                }
                Err(e) => {
                    tracing::error!(error = %e, "key usage writer failed; usage is kept in memory only");
                    return;
                }
            }
        }
    }

    /// A writer for the same file and counters, for the last write at
    /// shutdown (the running one is a task of its own by then).
    pub fn last_write(&self) -> UsageFile {
        UsageFile {
            store: self.store.clone(),
            table: self.table.clone(),
            written: self.written,
        }
    }

    /// Writes the counters if they changed since the last write.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        // Taken before the samples: a count that moves in between is in the
        // file and makes the next flush write again (never the reverse).
        let now = self.table.fingerprint();
        if Some(now) == self.written {
            return Ok(());
        }
        self.store.write_usage(&self.table.samples())?;
        self.written = Some(now);
        Ok(())
    }
}

fn read_only(e: &StoreError) -> bool {
    matches!(e, StoreError::Io { source, .. }
        if matches!(source.kind(), io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem))
}

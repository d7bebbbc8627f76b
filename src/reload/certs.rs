//! `CertWatcher`: reloads the client-facing TLS certificate when its files
//! change or on SIGHUP, the same way `FileWatcher` follows the key store.
//! What "reload" means is the caller's (`server::tls::CertResolver::reload`),
//! so this module knows files and timing, not TLS.

use std::path::PathBuf;

use super::fingerprint::Fingerprint;
use super::{Hangup, poll_files};

/// Loads the certificate again; on error the current one must stay.
pub type Reload = Box<dyn FnMut() -> Result<(), Box<dyn std::error::Error + Send + Sync>> + Send>;

pub struct CertWatcher {
    files: Vec<PathBuf>,
    seen: Fingerprint,
    reload: Reload,
}

impl CertWatcher {
    /// Watches `files` (the certificate and its key); `reload` is called when
    /// any of them changes.
    pub fn new(files: Vec<PathBuf>, reload: Reload) -> Self {
        let seen = Fingerprint::of(&files);
        CertWatcher {
            files,
            seen,
            reload,
        }
    }

    fn reload(&mut self) {
        self.seen = Fingerprint::of(&self.files);
        let cert = self.files.first().map(|p| p.display().to_string());
        match (self.reload)() {
            Ok(()) => tracing::info!(result = "success", cert, "TLS certificate reloaded"),
            Err(e) => {
                tracing::error!(result = "failure", error = %e, "TLS certificate reload failed; keeping the current one")
            }
        }
    }

    /// Polls the files and waits for SIGHUP until the task is dropped.
    pub async fn watch(self, hup: Hangup) {
        poll_files(self, hup, "certificate reload", false, |me, forced, _| {
            if forced || Fingerprint::of(&me.files) != me.seen {
                me.reload();
            }
        })
        .await;
    }
}

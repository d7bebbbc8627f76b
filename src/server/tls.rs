//! Client-facing TLS: a rustls config offering h2 and http/1.1 by ALPN, with
//! the certificate behind a swappable resolver so that a renewed certificate
//! is served to new connections without a restart.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;

/// A certificate or key that cannot be used, worded for an operator (the
/// option, the file, what is wrong).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError(String);

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// Serves whatever certificate was loaded last.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    pub fn load(files: &TlsFiles) -> Result<Arc<CertResolver>, TlsError> {
        Ok(Arc::new(CertResolver {
            current: ArcSwap::from_pointee(load_certified_key(files)?),
        }))
    }

    /// Loads the files again; on error the current certificate stays.
    /// Returns the new certificate's expiry.
    pub fn reload(&self, files: &TlsFiles) -> Result<i64, TlsError> {
        let key = Arc::new(load_certified_key(files)?);
        self.current.store(key);
        Ok(self.expiry())
    }

    /// When the served (leaf) certificate expires, in Unix seconds; 0 if
    /// it cannot be read (the TLS library accepted it all the same).
    pub fn expiry(&self) -> i64 {
        self.current
            .load()
            .cert
            .first()
            .and_then(|c| super::x509::not_after(c))
            .unwrap_or(0)
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn load_certified_key(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    load_files(files).map_err(TlsError)
}

fn load_files(files: &TlsFiles) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("server.tls.cert {}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "server.tls.cert {}: no certificate in the file",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("server.tls.key {}: {e}", files.key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("server.tls.key {}: {e}", files.key.display()))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match()
        .map_err(|e| format!("server.tls: the key does not match the certificate: {e}"))?;
    Ok(ck)
}

/// The rustls server config around a resolver.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError(format!("TLS setup: {e}")))?
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

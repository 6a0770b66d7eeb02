//! The TLS listener's certificate choice: every handshake asks the live snapshot, so a
//! reload that changes `tls:` (or a certificate file) serves new connections the new
//! certificates while open connections keep theirs.

use crate::snapshot::SnapshotHolder;
use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, ResolvesServerCert};
use std::sync::Arc;

pub struct SniResolver(pub SnapshotHolder);

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SniResolver")
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let snapshot = self.0.load();
        let certificates = snapshot.tls.as_ref()?;
        Some(certificates.select(hello.server_name()))
    }
}

/// Nothing to do after a handshake; Pingora builds TLS settings with resolvers only from
/// callbacks.
struct NoCallbacks;

#[async_trait]
impl TlsAccept for NoCallbacks {}

/// TLS 1.2 and 1.3 (`min_version: "1.3"` is enforced by the connection guard), HTTP/2
/// and HTTP/1.1 by ALPN, certificates from the live snapshot.
pub fn settings(holder: SnapshotHolder) -> anyhow::Result<TlsSettings> {
    let mut settings = TlsSettings::with_callbacks(Box::new(NoCallbacks))
        .map_err(|e| anyhow::anyhow!("TLS settings: {e}"))?;
    settings.set_cert_resolver(Arc::new(SniResolver(holder)));
    settings.enable_h2();
    Ok(settings)
}

//! RTMPS (issue 14): the TLS side of the ingest listener. Certificates are read when the
//! config is loaded — at start and on every reload, so a renewed certificate applies to
//! connections accepted after `systemctl reload` — and each connection handshakes within
//! the RTMP handshake deadline before the same connection handler runs on the stream.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;

/// The TLS server configuration of `[rtmps]`, or why it cannot be built (the message
/// names the file; it never holds key material).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("rtmps.cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("rtmps.cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "rtmps.cert {} holds no certificate",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("rtmps.key {}: no private key ({e})", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("rtmps: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map(Arc::new)
        .map_err(|e| format!("rtmps.cert/rtmps.key do not make a certificate chain and key: {e}"))
}

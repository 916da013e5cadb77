//! TLS: connections use it when the URL says `sslmode=require`, or when a root certificate
//! was configured (`PostgresConfig::with_tls_root_certificate`). The server's certificate is
//! always verified, against that root or the operating system's roots, and its name checked
//! against the host (what libpq calls `verify-full`). Other connections are plain.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{PostgresBackendError, PostgresConfig};

/// The connector for `config`, and the client configuration adjusted to it (plain unless TLS
/// was asked for).
pub(crate) fn connector(
    config: &PostgresConfig,
    client: &mut tokio_postgres::Config,
) -> Result<MakeRustlsConnect, PostgresBackendError> {
    let mut roots = RootCertStore::empty();
    match &config.tls_root {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| {
                    PostgresBackendError::InvalidConfig(format!(
                        "the TLS root certificate is not valid PEM: {e}"
                    ))
                })?;
                roots.add(cert).map_err(|e| {
                    PostgresBackendError::InvalidConfig(format!(
                        "the TLS root certificate was refused: {e}"
                    ))
                })?;
            }
            if roots.is_empty() {
                return Err(PostgresBackendError::InvalidConfig(
                    "the TLS root certificate holds no certificate".to_owned(),
                ));
            }
            if client.get_ssl_mode() == SslMode::Prefer {
                client.ssl_mode(SslMode::Require);
            }
        }
        None if client.get_ssl_mode() == SslMode::Require => {
            // Unreadable entries of the OS store are skipped; an empty store fails the
            // handshake with a clear message.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
        None => {
            // Plain, as before TLS was asked for (a server's self-signed default certificate
            // would otherwise fail `sslmode=prefer`).
            client.ssl_mode(SslMode::Disable);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PostgresBackendError::InvalidConfig(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(tls))
}

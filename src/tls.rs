//! rustls client configuration shared by the database and the MQTT connection.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
#[error("{key} {path}: {msg}")]
pub struct TlsError {
    pub key: &'static str,
    pub path: String,
    pub msg: String,
}

fn err(key: &'static str, path: &str, msg: impl ToString) -> TlsError {
    TlsError {
        key,
        path: path.into(),
        msg: msg.to_string(),
    }
}

fn certs(key: &'static str, path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(key, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(key, path, e))?;
    if certs.is_empty() {
        return Err(err(key, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// Trusts the system roots plus `ca_file` (when not empty); presents a client certificate when
/// `client` names a certificate and key file. `*_key` names the config keys for error messages.
pub fn client_config(
    ca_key: &'static str,
    ca_file: &str,
    client: Option<(&'static str, &str, &'static str, &str)>,
) -> Result<ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    // A missing or partly unreadable system store is not fatal: plain connections need none,
    // and the CA file may be all a deployment uses.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if !ca_file.is_empty() {
        for cert in certs(ca_key, ca_file)? {
            roots.add(cert).map_err(|e| err(ca_key, ca_file, e))?;
        }
    }
    // An explicit provider: no dependence on a process-wide default being installed first.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(ca_key, ca_file, e))?
        .with_root_certificates(roots);
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert_key, cert_file, key_key, key_file)) => {
            let chain = certs(cert_key, cert_file)?;
            let key =
                PrivateKeyDer::from_pem_file(key_file).map_err(|e| err(key_key, key_file, e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| err(cert_key, cert_file, e))
        }
    }
}

//! CQL connections in production shape: the rustls context of
//! `[store.cql.tls]` (CA file, optional client certificate, hostname check),
//! and errors that tell an operator which key to fix.
//!
//! Guarantee: a TLS context is built only from readable PEM files and
//! always verifies the node's chain against `ca_file` (`verify_hostname =
//! false` skips only the name check); file problems name the key and the
//! path, never a key's contents; nothing here logs a secret.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

use crate::config::CqlTls;
use crate::store::StoreError;

fn bad(what: String) -> StoreError {
    StoreError::Unsupported { backend: "cql", what }
}

fn certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, StoreError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(format!("{key} = {}: cannot read PEM certificates: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(bad(format!("{key} = {}: no PEM certificate in the file", path.display())));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// How a node's certificate is checked: WebPKI against the CAs of `ca_file`,
/// with or without the name check.
fn server_verifier(tls: &CqlTls) -> Result<Arc<dyn ServerCertVerifier>, StoreError> {
    let mut roots = RootCertStore::empty();
    for cert in certs("store.cql.tls.ca_file", &tls.ca_file)? {
        roots.add(cert).map_err(|e| {
            bad(format!("store.cql.tls.ca_file = {}: not a usable CA certificate: {e}", tls.ca_file.display()))
        })?;
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| bad(format!("store.cql.tls.ca_file = {}: {e}", tls.ca_file.display())))?;
    Ok(if tls.verify_hostname { webpki } else { Arc::new(ChainOnly(webpki)) })
}

/// The rustls client configuration for `tls`.
pub fn client_config(tls: &CqlTls) -> Result<Arc<ClientConfig>, StoreError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS provider: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(server_verifier(tls)?);
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = certs("store.cql.tls.cert_file", cert)?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                bad(format!("store.cql.tls.key_file = {}: no usable PEM private key: {e}", key.display()))
            })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| bad(format!("store.cql.tls.cert_file/key_file: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Verifies the chain against the CA like WebPKI, but accepts a certificate
/// that does not name the address connected to (`verify_hostname = false`:
/// nodes addressed by IPs their certificates do not list).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Verifies `end_entity` (PEM file) for `server` the way a connection with
/// `tls` would: the seam the tests use to check the hostname rule without a
/// second server.
pub fn verify_for(tls: &CqlTls, end_entity: &Path, server: &str) -> Result<(), StoreError> {
    let verifier = server_verifier(tls)?;
    let chain = certs("certificate", end_entity)?;
    let name = ServerName::try_from(server.to_string()).map_err(|e| bad(format!("{server}: {e}")))?;
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| bad(format!("certificate refused for {server}: {e}")))
}

/// A connect error as an operator reads it: which key to look at.
pub fn explain_connect_error(uri: &str, username: Option<&str>, err: &str) -> String {
    let lower = err.to_ascii_lowercase();
    let hint = if lower.contains("authentication is required") || lower.contains("missingauthentication") {
        " (the cluster requires authentication: set store.cql.username and store.cql.password)".to_string()
    } else if lower.contains("authenticat") || lower.contains("bad credentials") {
        format!(
            " (authentication failed for store.cql.username = {:?}: check store.cql.username and store.cql.password)",
            username.unwrap_or("")
        )
    } else if lower.contains("certificate") || lower.contains("unknownissuer") || lower.contains("tls") {
        " (TLS: check store.cql.tls.ca_file and store.cql.tls.verify_hostname)".to_string()
    } else {
        String::new()
    };
    format!("cannot connect to CQL at {uri}: {err}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_files_name_the_key() {
        let tls =
            CqlTls { ca_file: "/nonexistent/ca.pem".into(), cert_file: None, key_file: None, verify_hostname: true };
        let e = client_config(&tls).unwrap_err().to_string();
        assert!(e.contains("store.cql.tls.ca_file") && e.contains("/nonexistent/ca.pem"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let tls = CqlTls { ca_file: empty, ..tls };
        assert!(client_config(&tls).unwrap_err().to_string().contains("no PEM certificate"));
    }

    #[test]
    fn connect_errors_say_which_key() {
        let e = explain_connect_error("h:1", Some("svc"), "Authentication failed: Bad credentials");
        assert!(e.contains("store.cql.password") && e.contains("\"svc\""), "{e}");
        let e = explain_connect_error("h:1", None, "Authentication is required. You can use ...");
        assert!(e.contains("set store.cql.username"), "{e}");
        let e = explain_connect_error("h:1", None, "invalid peer certificate: UnknownIssuer");
        assert!(e.contains("store.cql.tls.ca_file"), "{e}");
    }
}

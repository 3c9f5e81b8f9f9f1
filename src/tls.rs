//! TLS for connections whose URL asks for it (`sslmode=prefer`, the
//! default, or `sslmode=require`).
//!
//! Without a CA certificate the semantics are libpq's for `prefer` and
//! `require`: the connection is encrypted but the server certificate is not
//! verified. With [`PostgresProviderBuilder::tls_ca_certificate`](crate::PostgresProviderBuilder::tls_ca_certificate)
//! the certificate chain and host name are verified against that CA.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::{Error, Result};

/// Builds the rustls configuration: verifying against `ca_pem` when given,
/// encrypting without verification otherwise.
pub(crate) fn client_config(ca_pem: Option<&[u8]>) -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidOption(format!("TLS setup failed: {e}")))?;
    let config = match ca_pem {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| {
                    Error::InvalidOption(format!("CA certificate is not valid PEM: {e}"))
                })?;
                roots
                    .add(cert)
                    .map_err(|e| Error::InvalidOption(format!("CA certificate rejected: {e}")))?;
            }
            if roots.is_empty() {
                return Err(Error::InvalidOption(
                    "CA certificate PEM contains no certificate".into(),
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Accepts any server certificate but still checks handshake signatures:
/// libpq's `sslmode=require` (encryption without authentication).
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

//! TLS, following libpq's `sslmode` and `sslrootcert`:
//!
//! | `sslmode` | plaintext fallback | certificate check |
//! |---|---|---|
//! | `disable` | plaintext only | none |
//! | `prefer` (default) | yes, if the server declines TLS | none |
//! | `require` | no | none |
//! | `verify-ca` | no | chain against the CA |
//! | `verify-full` | no | chain against the CA and the host name |
//!
//! The CA comes from [`PostgresProviderBuilder::tls_ca_certificate`](crate::PostgresProviderBuilder::tls_ca_certificate),
//! or the URL's `sslrootcert=<PEM file>`, or `sslrootcert=system` (the
//! operating system's trusted roots). A configured CA always means
//! verification: with `prefer` or `require` it verifies as `verify-full`, and
//! a server (or a man in the middle) that declines TLS is refused rather than
//! talked to in plaintext. `verify-ca` and `verify-full` without a CA are
//! refused before connecting.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use tokio_postgres::config::SslMode;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::{Error, Result};

/// What the connection string and the builder ask of TLS.
pub(crate) struct Tls {
    /// The connection string without the parameters handled here
    /// (`sslmode`, `sslrootcert`), for tokio-postgres to parse.
    pub url: String,
    /// The mode tokio-postgres applies: whether plaintext is allowed.
    pub ssl_mode: SslMode,
    /// How certificates are checked.
    pub config: Arc<ClientConfig>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Reads `sslmode` and `sslrootcert` from `url` and combines them with the
/// builder's CA (which wins over `sslrootcert`).
pub(crate) fn settings(url: &str, ca_pem: Option<&[u8]>) -> Result<Tls> {
    let (url, params) = take_params(url, &["sslmode", "sslrootcert"])?;
    let mut mode = match params[0].as_deref() {
        None | Some("prefer") => Mode::Prefer,
        Some("disable") => Mode::Disable,
        Some("require") => Mode::Require,
        Some("verify-ca") => Mode::VerifyCa,
        Some("verify-full") => Mode::VerifyFull,
        Some(other) => {
            return Err(Error::InvalidUrl(format!(
                "sslmode={other} is not supported (use disable, prefer, require, verify-ca or verify-full)"
            )));
        }
    };
    let roots = match (ca_pem, params[1].as_deref()) {
        (Some(pem), _) => Some(roots_from_pem(pem)?),
        (None, Some("system")) => Some(system_roots()?),
        (None, Some(path)) => {
            let pem = std::fs::read(path)
                .map_err(|e| Error::tls(&format!("cannot read sslrootcert {path}"), e))?;
            Some(roots_from_pem(&pem)?)
        }
        (None, None) => None,
    };
    if roots.is_some() && matches!(mode, Mode::Prefer | Mode::Require) {
        mode = Mode::VerifyFull;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::tls("TLS setup failed", e))?;
    let config = match (mode, roots) {
        (Mode::VerifyFull, Some(roots)) => {
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        (Mode::VerifyCa, Some(roots)) => {
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| Error::tls("TLS setup failed", e))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyName(webpki)))
                .with_no_client_auth()
        }
        (Mode::VerifyCa | Mode::VerifyFull, None) => {
            return Err(Error::InvalidOption(
                "sslmode=verify-ca and verify-full need a CA: PostgresProviderBuilder::tls_ca_certificate, \
                 sslrootcert=<PEM file> or sslrootcert=system in the URL"
                    .into(),
            ));
        }
        (Mode::Disable | Mode::Prefer | Mode::Require, _) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth(),
    };
    let ssl_mode = match mode {
        Mode::Disable => SslMode::Disable,
        Mode::Prefer => SslMode::Prefer,
        Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
    };
    Ok(Tls {
        url,
        ssl_mode,
        config: Arc::new(config),
    })
}

fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| Error::tls("CA certificate is not valid PEM", e))?;
        roots
            .add(cert)
            .map_err(|e| Error::tls("CA certificate rejected", e))?;
    }
    if roots.is_empty() {
        return Err(Error::InvalidOption(
            "CA certificate PEM contains no certificate".into(),
        ));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(Error::InvalidOption(format!(
            "sslrootcert=system: no trusted root certificates found on this system ({} errors)",
            found.errors.len()
        )));
    }
    Ok(roots)
}

/// Removes `keys` from a connection string (URL query or key=value form),
/// returning the rest and each key's last value.
fn take_params(url: &str, keys: &[&str]) -> Result<(String, Vec<Option<String>>)> {
    let mut found = vec![None; keys.len()];
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), found));
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match keys.iter().position(|key| *key == k) {
                Some(i) => found[i] = Some(percent_decode(v)?),
                None => kept.push(pair),
            }
        }
        let url = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((url, found));
    }
    // key=value form: these two keys take plain values (no quotes needed).
    let mut kept = Vec::new();
    for token in url.split_whitespace() {
        let (k, v) = token.split_once('=').unwrap_or((token, ""));
        match keys.iter().position(|key| *key == k.trim()) {
            Some(i) => found[i] = Some(v.trim_matches('\'').to_owned()),
            None => kept.push(token),
        }
    }
    Ok((kept.join(" "), found))
}

fn percent_decode(v: &str) -> Result<String> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                None => {
                    return Err(Error::InvalidUrl(format!(
                        "invalid percent-encoding in {v:?}"
                    )));
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| Error::InvalidUrl(format!("invalid UTF-8 in {v:?}")))
}

/// `verify-ca`: the chain must lead to the CA; the host name is not checked.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_urls() {
        let (url, found) = take_params(
            "postgres://u@h:5/db?application_name=a&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
            &["sslmode", "sslrootcert"],
        )
        .unwrap();
        assert_eq!(url, "postgres://u@h:5/db?application_name=a");
        assert_eq!(found[0].as_deref(), Some("verify-full"));
        assert_eq!(found[1].as_deref(), Some("/etc/ca.pem"));

        let (url, found) = take_params(
            "host=h sslmode=verify-ca dbname=d",
            &["sslmode", "sslrootcert"],
        )
        .unwrap();
        assert_eq!(url, "host=h dbname=d");
        assert_eq!(found[0].as_deref(), Some("verify-ca"));
        assert_eq!(found[1], None);

        let (url, found) = take_params("postgres://h/db", &["sslmode"]).unwrap();
        assert_eq!(
            (url.as_str(), found[0].as_deref()),
            ("postgres://h/db", None)
        );
    }

    #[test]
    fn modes_and_cas_combine_as_documented() {
        let ssl = |url: &str| settings(url, None).map(|t| t.ssl_mode);
        assert_eq!(ssl("postgres://h/db").unwrap(), SslMode::Prefer);
        assert_eq!(
            ssl("postgres://h/db?sslmode=disable").unwrap(),
            SslMode::Disable
        );
        assert_eq!(
            ssl("postgres://h/db?sslmode=require").unwrap(),
            SslMode::Require
        );
        for mode in ["verify-ca", "verify-full"] {
            let err = ssl(&format!("postgres://h/db?sslmode={mode}")).unwrap_err();
            assert!(matches!(err, Error::InvalidOption(_)), "{err}");
        }
        let err = ssl("postgres://h/db?sslmode=allow").unwrap_err();
        assert!(matches!(err, Error::InvalidUrl(_)), "{err}");
        let err = ssl("postgres://h/db?sslrootcert=/no/such/file.pem").unwrap_err();
        assert!(err.to_string().contains("/no/such/file.pem"), "{err}");
        assert!(
            matches!(err, Error::Tls { .. }) && !err.is_retryable(),
            "{err}"
        );
        let source = std::error::Error::source(&err).expect("the I/O error");
        assert!(source.is::<std::io::Error>(), "{source:?}");
    }

    #[test]
    fn a_malformed_ca_keeps_the_parser_error_as_its_source() {
        let pem = b"-----BEGIN CERTIFICATE-----\nnot base64 !!!\n-----END CERTIFICATE-----\n";
        let err = settings("postgres://h/db", Some(pem))
            .err()
            .expect("refused");
        assert!(
            matches!(err, Error::Tls { .. }) && !err.is_retryable(),
            "{err}"
        );
        assert!(std::error::Error::source(&err).is_some(), "{err}");
    }
}

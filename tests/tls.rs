//! TLS: `sslmode` in the URL and CA verification through the builder.

mod common;

use common::{TestDb, pg};
use duroxide::providers::Provider;
use duroxide_diesel::{Error, PostgresProvider};

fn with_param(url: &str, param: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{param}")
}

/// Whether this test's own backends (by application name) use TLS.
async fn uses_tls(db: &TestDb, app: &str) -> Option<String> {
    db.scalar(&format!(
        "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = '{app}'"
    ))
    .await
}

async fn server_has_tls(db: &TestDb) -> bool {
    db.scalar("SELECT current_setting('ssl')").await.as_deref() == Some("on")
}

#[tokio::test]
async fn sslmode_require_encrypts_or_fails_clearly() {
    let db = TestDb::new().await;
    let built = PostgresProvider::builder(&with_param(&db.url, "sslmode=require"))
        .schema(&db.schema)
        .application_name("dx-tls-require")
        .build()
        .await;
    if server_has_tls(&db).await {
        let provider = built.expect("TLS connection");
        provider.read("x").await.unwrap();
        assert_eq!(
            uses_tls(&db, "dx-tls-require").await.as_deref(),
            Some("true")
        );
    } else {
        let err = built.unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err}");
    }
    db.cleanup().await;
}

#[tokio::test]
async fn sslmode_disable_stays_plain() {
    let db = TestDb::new().await;
    let provider = PostgresProvider::builder(&with_param(&db.url, "sslmode=disable"))
        .schema(&db.schema)
        .application_name("dx-tls-disable")
        .build()
        .await
        .unwrap();
    provider.read("x").await.unwrap();
    assert_eq!(
        uses_tls(&db, "dx-tls-disable").await.as_deref(),
        Some("false")
    );
    drop(provider);
    db.cleanup().await;
}

#[tokio::test]
async fn ca_verification_accepts_the_right_ca_and_rejects_others() {
    let db = TestDb::new().await;
    let Some(cert) = pg::local_cluster_tls_cert() else {
        // An external server: its CA is unknown here, but a bogus PEM must
        // still be rejected before connecting.
        let err = PostgresProvider::builder(&db.url)
            .tls_ca_certificate("not a certificate")
            .build()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidOption(_)), "{err}");
        return;
    };
    let pem = std::fs::read(&cert).unwrap();
    let url = with_param(&db.url, "sslmode=require");

    let provider = PostgresProvider::builder(&url)
        .schema(&db.schema)
        .application_name("dx-tls-verified")
        .tls_ca_certificate(pem)
        .build()
        .await
        .expect("verified TLS connection");
    provider.read("x").await.unwrap();
    assert_eq!(
        uses_tls(&db, "dx-tls-verified").await.as_deref(),
        Some("true")
    );
    drop(provider);

    // A CA that did not sign the server's certificate.
    let other = std::env::temp_dir().join(format!("dx-other-ca-{}", std::process::id()));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-x509",
            "-days",
            "1",
            "-nodes",
            "-newkey",
            "rsa:2048",
            "-subj",
            "/CN=other",
        ])
        .arg("-keyout")
        .arg(other.with_extension("key"))
        .arg("-out")
        .arg(other.with_extension("crt"))
        .output()
        .unwrap();
    assert!(made.status.success());
    let err = PostgresProvider::builder(&url)
        .schema(&db.schema)
        .tls_ca_certificate(std::fs::read(other.with_extension("crt")).unwrap())
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    let _ = std::fs::remove_file(other.with_extension("key"));
    let _ = std::fs::remove_file(other.with_extension("crt"));
    db.cleanup().await;
}

/// The local cluster's CA and a URL that reaches it under a host name its
/// certificate does not carry; `None` without a local TLS cluster.
fn wrong_name_url(db: &TestDb) -> Option<(Vec<u8>, String)> {
    let cert = pg::local_cluster_tls_cert()?;
    let (_, host_port, rest) = common::proxy::split_url(&db.url)?;
    let port = host_port.rsplit(':').next()?.to_owned();
    let (path, query) = rest.split_once('?').unwrap_or((&rest, ""));
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("&{query}")
    };
    let url =
        format!("postgres://postgres@wrong-name.invalid:{port}{path}?hostaddr=127.0.0.1{query}");
    Some((std::fs::read(cert).ok()?, url))
}

#[tokio::test]
async fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
    let db = TestDb::new().await;
    let Some((pem, url)) = wrong_name_url(&db) else {
        return; // an external server: its CA and names are unknown here
    };
    // A CA given through the builder verifies like verify-full.
    let err = PostgresProvider::builder(&url)
        .schema(&db.schema)
        .tls_ca_certificate(pem.clone())
        .build()
        .await
        .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    // verify-ca accepts the right chain under any name.
    let provider = PostgresProvider::builder(&with_param(&url, "sslmode=verify-ca"))
        .schema(&db.schema)
        .application_name("dx-tls-verify-ca")
        .tls_ca_certificate(pem)
        .build()
        .await
        .expect("verify-ca ignores the host name");
    provider.read("x").await.unwrap();
    assert_eq!(
        uses_tls(&db, "dx-tls-verify-ca").await.as_deref(),
        Some("true")
    );
    drop(provider);
    db.cleanup().await;
}

#[tokio::test]
async fn sslrootcert_in_the_url_verifies_the_server() {
    let db = TestDb::new().await;
    let Some(cert) = pg::local_cluster_tls_cert() else {
        return;
    };
    let url = with_param(
        &db.url,
        &format!("sslmode=verify-full&sslrootcert={}", cert.display()),
    );
    let provider = PostgresProvider::builder(&url)
        .schema(&db.schema)
        .application_name("dx-tls-rootcert")
        .build()
        .await
        .expect("verify-full with sslrootcert");
    provider.read("x").await.unwrap();
    assert_eq!(
        uses_tls(&db, "dx-tls-rootcert").await.as_deref(),
        Some("true")
    );
    drop(provider);
    db.cleanup().await;
}

/// A server (or a man in the middle) that declines TLS must not get a
/// plaintext connection from a provider that was given a CA, even with the
/// default `sslmode=prefer`.
#[tokio::test]
async fn a_configured_ca_refuses_a_server_that_declines_tls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 8];
        sock.read_exact(&mut request).await.unwrap();
        // SSLRequest: length 8, code 80877103.
        assert_eq!(request, [0, 0, 0, 8, 4, 210, 22, 47]);
        sock.write_all(b"N").await.unwrap();
        // Whatever comes next would be a plaintext startup message.
        let mut rest = Vec::new();
        let _ = sock.read_to_end(&mut rest).await;
        rest
    });
    let Some(cert) = pg::local_cluster_tls_cert() else {
        return;
    };
    let err = PostgresProvider::builder(&format!("postgres://postgres@{addr}/postgres"))
        .tls_ca_certificate(std::fs::read(cert).unwrap())
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    let sent_after_refusal = server.await.unwrap();
    assert!(
        sent_after_refusal.is_empty(),
        "plaintext sent after the server declined TLS: {} bytes",
        sent_after_refusal.len()
    );
}

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
        assert!(matches!(err, Error::Connect(_)), "{err}");
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
    assert!(matches!(err, Error::Connect(_)), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    let _ = std::fs::remove_file(other.with_extension("key"));
    let _ = std::fs::remove_file(other.with_extension("crt"));
    db.cleanup().await;
}

//! Embedded diesel migrations, applied per schema.
//!
//! Many processes may start against the same empty schema at once, so the
//! whole check-and-apply runs under a transaction-independent advisory lock
//! keyed by the schema name.

use std::time::Duration;

use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::error::{Error, Result};
use crate::pool::Connector;

/// The migrations in `migrations/`, compiled into the crate.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Creates `schema` if needed and applies all pending migrations to it.
///
/// diesel's migration harness is synchronous, so it runs on a dedicated thread
/// with its own single-threaded runtime: this works from any caller runtime
/// (including current-thread test runtimes) and keeps the caller's future `Send`.
///
/// Every lock wait (the advisory lock another starting process holds while
/// it migrates, and the migrations' own DDL locks) is bounded by
/// `lock_timeout`; a dead server is noticed by the connection's TCP
/// keepalive and user timeout.
pub(crate) async fn run(connector: &Connector, schema: &str, lock_timeout: Duration) -> Result<()> {
    let connector = connector.clone();
    let schema = schema.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("duroxide-diesel-migrate".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::Migration(e.to_string()))
                .and_then(|rt| rt.block_on(apply(&connector, &schema, lock_timeout)));
            let _ = tx.send(result);
        })
        .map_err(|e| Error::Migration(format!("could not start migration thread: {e}")))?;
    rx.await
        .map_err(|_| Error::Migration("migration thread stopped unexpectedly".into()))?
}

async fn apply(connector: &Connector, schema: &str, lock_timeout: Duration) -> Result<()> {
    use diesel_async::SimpleAsyncConnection;

    // The schema may not exist yet, so the session setup (which names it)
    // runs after CREATE SCHEMA.
    let mut conn: AsyncPgConnection = connector.connect_with(Some("SELECT 1")).await?;
    // The lock key is derived from the schema name, so providers of different
    // schemas migrate in parallel. Session-level: released on unlock or disconnect.
    let lock = format!("SELECT pg_advisory_lock(hashtext('duroxide-diesel:{schema}'))");
    conn.batch_execute(&format!(
        "SET lock_timeout = {}; {lock}; CREATE SCHEMA IF NOT EXISTS \"{schema}\"; {}",
        lock_timeout.as_millis(),
        connector.setup_sql()
    ))
    .await
    .map_err(|e| {
        Error::Migration(format!(
            "could not take the migration lock of schema {schema}: {e}"
        ))
    })?;
    let (conn, result) = tokio::task::spawn_blocking(move || {
        let mut wrapper: AsyncConnectionWrapper<AsyncPgConnection> =
            AsyncConnectionWrapper::from(conn);
        let result = wrapper
            .run_pending_migrations(MIGRATIONS)
            .map(|applied| applied.len())
            .map_err(|e| Error::Migration(e.to_string()));
        (wrapper.into_inner(), result)
    })
    .await
    .map_err(|e| Error::Migration(format!("migration task failed: {e}")))?;
    let mut conn = conn;
    conn.batch_execute(&format!(
        "SELECT pg_advisory_unlock(hashtext('duroxide-diesel:{schema}'))"
    ))
    .await?;
    let applied = result?;
    if applied > 0 {
        tracing::info!(schema, applied, "applied duroxide-diesel migrations");
    }
    Ok(())
}

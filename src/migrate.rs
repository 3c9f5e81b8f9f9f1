//! Embedded diesel migrations: applied per schema on start, or only verified.
//!
//! Every object the crate creates, diesel's `__diesel_schema_migrations`
//! bookkeeping table included, lives in the provider's schema: migrations
//! run on a connection whose `search_path` is that schema alone, so an
//! application's own diesel migrations (in `public` or anywhere else) never
//! see ours.
//!
//! Start-up first reads which migrations the schema has (no DDL, no lock,
//! only `USAGE` on the schema and `SELECT` on the bookkeeping table):
//!
//! * a version this build does not know means a newer crate version
//!   migrated the schema: refused in both modes ([`Error::SchemaMismatch`]);
//! * nothing missing: ready, no DDL sent (so a least-privilege role can start
//!   in either mode);
//! * something missing: [`MigrationMode::Verify`] refuses, listing it;
//!   [`MigrationMode::Apply`] takes a per-schema advisory lock (many processes
//!   may start against the same empty schema at once), looks again, creates
//!   the schema if absent and applies what is still pending.

use std::collections::BTreeSet;
use std::time::Duration;

use diesel::pg::Pg;
use diesel::sql_types::{Bool, Text};
use diesel::{QueryDsl, QueryableByName};
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::error::{Error, Result};
use crate::pool::Connector;
use crate::sql::reply::WholeReply;

/// The migrations in `migrations/`, compiled into the crate.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// What [`build`](crate::PostgresProviderBuilder::build) does with the
/// schema's migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MigrationMode {
    /// Apply pending migrations on start (the default). Sends DDL only when
    /// something is pending: a schema that is up to date needs no privilege
    /// beyond what the hot path uses.
    #[default]
    Apply,
    /// Never send DDL: refuse to start unless the schema has exactly the
    /// migrations compiled into this build ([`Error::SchemaMismatch`] lists
    /// what is missing or unknown). For deployments where a separate step,
    /// with a more privileged role, migrates the schema.
    Verify,
}

// diesel's own bookkeeping table, resolved through the connection's
// search_path (the provider's schema). Only the column read here is declared.
diesel::table! {
    __diesel_schema_migrations (version) {
        version -> Varchar,
    }
}

/// Versions of the migrations compiled into this build, as diesel records
/// them (`2026-11-26-000001_create_tables` is `20261126000001`).
pub(crate) fn known_versions() -> BTreeSet<String> {
    diesel::migration::MigrationSource::<Pg>::migrations(&MIGRATIONS)
        .expect("embedded migrations are readable")
        .iter()
        .map(|m| m.name().version().to_string())
        .collect()
}

/// Brings `schema` to this build's migrations (or checks it, see
/// [`MigrationMode`]).
///
/// diesel's migration harness is synchronous, so it runs on a dedicated thread
/// with its own single-threaded runtime: this works from any caller runtime
/// (including current-thread test runtimes) and keeps the caller's future `Send`.
///
/// Every lock wait (the advisory lock another starting process holds while
/// it migrates, and the migrations' own DDL locks) is bounded by
/// `lock_timeout`; a dead server is noticed by the connection's TCP
/// keepalive and user timeout.
pub(crate) async fn run(
    connector: &Connector,
    schema: &str,
    mode: MigrationMode,
    lock_timeout: Duration,
) -> Result<()> {
    let connector = connector.clone();
    let schema = schema.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("duroxide-diesel-migrate".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::migration(Some("could not start the migration runtime"), e))
                .and_then(|rt| rt.block_on(apply(&connector, &schema, mode, lock_timeout)));
            let _ = tx.send(result);
        })
        .map_err(|e| Error::migration(Some("could not start migration thread"), e))?;
    rx.await
        .map_err(|e| Error::migration(Some("migration thread stopped unexpectedly"), e))?
}

/// Which of this build's migrations a schema has.
struct State {
    schema_exists: bool,
    missing: Vec<String>,
    unknown: Vec<String>,
}

impl State {
    fn mismatch(&self, schema: &str) -> Error {
        Error::SchemaMismatch {
            schema: schema.to_owned(),
            missing: self.missing.clone(),
            unknown: self.unknown.clone(),
        }
    }
}

#[derive(QueryableByName)]
struct Presence {
    #[diesel(sql_type = Bool)]
    schema_exists: bool,
    #[diesel(sql_type = Bool)]
    bookkeeping_exists: bool,
}

/// Reads the schema's applied migrations: catalog lookups and one `SELECT`,
/// no DDL, no lock.
async fn inspect(conn: &mut AsyncPgConnection, schema: &str) -> Result<State> {
    let presence: Presence = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1) AS schema_exists, \
         pg_catalog.to_regclass(pg_catalog.quote_ident($1) || '.__diesel_schema_migrations') \
         IS NOT NULL AS bookkeeping_exists",
    )
    .bind::<Text, _>(schema)
    .one(conn)
    .await?;
    let applied: BTreeSet<String> = if presence.bookkeeping_exists {
        __diesel_schema_migrations::table
            .select(__diesel_schema_migrations::version)
            .load::<String>(conn)
            .await?
            .into_iter()
            .collect()
    } else {
        BTreeSet::new()
    };
    let known = known_versions();
    Ok(State {
        schema_exists: presence.schema_exists,
        missing: known.difference(&applied).cloned().collect(),
        unknown: applied.difference(&known).cloned().collect(),
    })
}

async fn apply(
    connector: &Connector,
    schema: &str,
    mode: MigrationMode,
    lock_timeout: Duration,
) -> Result<()> {
    // The session setup puts `schema` alone on the search_path (a schema
    // that does not exist yet is allowed there and used once created).
    let mut conn: AsyncPgConnection = connector.connect().await?;
    let state = inspect(&mut conn, schema).await?;
    if !state.unknown.is_empty() || (mode == MigrationMode::Verify && !state.missing.is_empty()) {
        return Err(state.mismatch(schema));
    }
    if state.missing.is_empty() {
        return Ok(());
    }

    // The lock key is derived from the schema name, so providers of different
    // schemas migrate in parallel. Session-level: released on unlock or disconnect.
    conn.batch_execute(&format!(
        "SET lock_timeout = {}; SELECT pg_catalog.pg_advisory_lock(pg_catalog.hashtext('duroxide-diesel:{schema}'))",
        lock_timeout.as_millis(),
    ))
    .await
    .map_err(|e| {
        Error::migration(
            Some(&format!("could not take the migration lock of schema {schema}")),
            e,
        )
    })?;
    // Another process may have migrated while this one waited for the lock.
    let state = inspect(&mut conn, schema).await?;
    if !state.unknown.is_empty() {
        return Err(state.mismatch(schema));
    }
    if !state.schema_exists {
        conn.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
            .await
            .map_err(|e| Error::migration(Some(&format!("could not create schema {schema}")), e))?;
    }
    let (conn, result) = tokio::task::spawn_blocking(move || {
        let mut wrapper: AsyncConnectionWrapper<AsyncPgConnection> =
            AsyncConnectionWrapper::from(conn);
        let result = wrapper
            .run_pending_migrations(MIGRATIONS)
            .map(|applied| applied.len())
            .map_err(|e| Error::migration(None, e));
        (wrapper.into_inner(), result)
    })
    .await
    .map_err(|e| Error::migration(Some("migration task failed"), e))?;
    let mut conn = conn;
    conn.batch_execute(&format!(
        "SELECT pg_catalog.pg_advisory_unlock(pg_catalog.hashtext('duroxide-diesel:{schema}'))"
    ))
    .await?;
    let applied = result?;
    if applied > 0 {
        tracing::info!(schema, applied, "applied duroxide-diesel migrations");
    }
    Ok(())
}

/// The SQL that gives `role` exactly the privileges a provider needs to run
/// on an already migrated `schema`, and nothing that changes the schema:
///
/// * `USAGE` on the schema (no `CREATE`);
/// * `SELECT, INSERT, UPDATE, DELETE` on its tables, except diesel's
///   migration bookkeeping table, which it may only read (start-up checks it);
/// * `USAGE, SELECT` on its sequences and `EXECUTE` on its functions;
/// * the same as default privileges for objects that the role running this
///   SQL creates in the schema later, so tables and functions added by a
///   future migration are covered when the same role applies it.
///
/// Run it as the role that owns the schema (the one that migrated it), after
/// migrating. The application role then starts with either
/// [`MigrationMode`]; no `CREATE` privilege anywhere is needed.
///
/// ```
/// let sql = duroxide_diesel::grant_statements("duroxide", "orders_app").unwrap();
/// assert!(sql.contains(r#"GRANT USAGE ON SCHEMA "duroxide" TO "orders_app""#));
/// ```
///
/// Fails with [`Error::InvalidSchemaName`] for a schema name the provider
/// would refuse, and with [`Error::InvalidOption`] for an empty role name,
/// one longer than 63 bytes or one holding U+0000. Any other role name is
/// quoted, so it is used exactly as given (case included).
pub fn grant_statements(schema: &str, role: &str) -> Result<String> {
    crate::options::validate_schema_name(schema)?;
    if role.is_empty() || role.len() > 63 || role.contains('\0') {
        return Err(Error::InvalidOption(
            "role name must be 1 to 63 bytes without U+0000".into(),
        ));
    }
    let role = format!("\"{}\"", role.replace('"', "\"\""));
    let s = format!("\"{schema}\"");
    let objects = [
        ("SELECT, INSERT, UPDATE, DELETE", "TABLES"),
        ("USAGE, SELECT", "SEQUENCES"),
        ("EXECUTE", "FUNCTIONS"),
    ];
    let mut sql = format!("GRANT USAGE ON SCHEMA {s} TO {role};\n");
    for (privileges, kind) in objects {
        sql.push_str(&format!(
            "GRANT {privileges} ON ALL {kind} IN SCHEMA {s} TO {role};\n"
        ));
    }
    sql.push_str(&format!(
        "REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {s}.__diesel_schema_migrations FROM {role};\n"
    ));
    for (privileges, kind) in objects {
        sql.push_str(&format!(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT {privileges} ON {kind} TO {role};\n"
        ));
    }
    Ok(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_versions_are_the_migration_directories() {
        let versions = known_versions();
        assert!(versions.contains("20261126000001"), "{versions:?}");
        let dirs = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().is_dir())
            .count();
        assert_eq!(versions.len(), dirs);
    }

    #[test]
    fn grant_statements_quote_the_role_and_grant_no_ddl() {
        let sql = grant_statements("dx", "App \"Role\"").unwrap();
        assert!(sql.contains(r#"TO "App ""Role""""#), "{sql}");
        assert!(
            sql.contains(
                r#"ALTER DEFAULT PRIVILEGES IN SCHEMA "dx" GRANT EXECUTE ON FUNCTIONS TO"#
            ),
            "{sql}"
        );
        assert!(!sql.contains("CREATE"), "{sql}");
        assert!(matches!(
            grant_statements("Bad-Schema", "r"),
            Err(Error::InvalidSchemaName { .. })
        ));
        for bad in ["", "a\0b", &"r".repeat(64)] {
            assert!(matches!(
                grant_statements("dx", bad),
                Err(Error::InvalidOption(_))
            ));
        }
    }
}

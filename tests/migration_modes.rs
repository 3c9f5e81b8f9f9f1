//! Start-up modes, schema versions and least privilege: what a team meets
//! when it deploys the provider next to its own diesel schema.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::{exec, unique_schema};
use diesel::QueryableByName;
use diesel::sql_types::{Bool, Text};
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{FileBasedMigrations, MigrationHarness};
use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::{self, RuntimeOptions};
use duroxide::{
    ActivityContext, Client, OrchestrationContext, OrchestrationRegistry, OrchestrationStatus,
};
use duroxide_diesel::{Error, MigrationMode, PostgresProvider};

/// Versions of the crate's migrations, read from the `migrations/` folder.
fn crate_versions() -> BTreeSet<String> {
    std::fs::read_dir(crate_migrations())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .map(|name| name.split('_').next().unwrap().replace('-', ""))
        .collect()
}

/// `url` with `params` appended to its query string.
fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

/// `url` pointing at database `db` instead of its own.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let (server, _) = base.rsplit_once('/').expect("URL with a database");
    match query {
        Some(q) => format!("{server}/{db}?{q}"),
        None => format!("{server}/{db}"),
    }
}

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    v: bool,
}

async fn flag(url: &str, sql: &str) -> bool {
    let mut conn = AsyncPgConnection::establish(url).await.expect("connect");
    let rows: Vec<Flag> = diesel::sql_query(format!("SELECT ({sql}) AS v"))
        .load(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.into_iter().next().expect("one row").v
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

async fn names(url: &str, sql: &str) -> BTreeSet<String> {
    let mut conn = AsyncPgConnection::establish(url).await.expect("connect");
    let rows: Vec<Name> = diesel::sql_query(sql)
        .load(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.into_iter().map(|r| r.name).collect()
}

async fn build(url: &str, schema: &str, mode: MigrationMode) -> Result<PostgresProvider, Error> {
    PostgresProvider::builder(url)
        .schema(schema)
        .migrations(mode)
        .max_connections(4)
        .build()
        .await
}

/// A synchronous diesel connection (what the diesel CLI and migration
/// harness use), for a blocking thread.
fn sync_connection(url: &str) -> AsyncConnectionWrapper<AsyncPgConnection> {
    <AsyncConnectionWrapper<AsyncPgConnection> as diesel::Connection>::establish(url)
        .expect("connect")
}

/// Runs diesel migrations from `dir` on `url`, the way the diesel CLI does
/// (`diesel migration run --migration-dir dir --database-url url`), and
/// returns the harness's view afterwards: (applied versions, pending?).
async fn cli_style_run(url: &str, dir: std::path::PathBuf) -> (BTreeSet<String>, bool) {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn = sync_connection(&url);
        let source = FileBasedMigrations::from_path(&dir).unwrap();
        conn.run_pending_migrations(source.clone()).unwrap();
        let applied = conn
            .applied_migrations()
            .unwrap()
            .into_iter()
            .map(|v| v.to_string())
            .collect();
        let pending = conn.has_pending_migration(source).unwrap();
        (applied, pending)
    })
    .await
    .unwrap()
}

/// This crate's migrations directory.
fn crate_migrations() -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
}

/// Reverts the last migration of `dir` applied on `url`, the way the diesel
/// CLI does (`diesel migration revert`), and returns its version.
async fn revert_last(url: &str, dir: std::path::PathBuf) -> String {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn = sync_connection(&url);
        let source = FileBasedMigrations::from_path(&dir).unwrap();
        conn.revert_last_migration(source).unwrap().to_string()
    })
    .await
    .unwrap()
}

/// Reverts the migrations of `dir` applied on `url`, last first, until
/// `version` is reverted; returns the versions reverted, in order.
async fn revert_through(url: &str, dir: std::path::PathBuf, version: &str) -> Vec<String> {
    let mut reverted = Vec::new();
    while reverted.last().map(String::as_str) != Some(version) {
        assert!(
            reverted.len() < 100,
            "{version} was never reverted: {reverted:?}"
        );
        reverted.push(revert_last(url, dir.clone()).await);
    }
    reverted
}

/// The storage options set on `schema`'s `table`, as `name=value`.
async fn reloptions(url: &str, schema: &str, table: &str) -> BTreeSet<String> {
    let sql = format!(
        "SELECT unnest(reloptions) AS name FROM pg_class \
         WHERE oid = to_regclass('\"{schema}\".{table}')"
    );
    names(url, &sql).await
}

#[tokio::test]
async fn verify_refuses_an_unmigrated_schema_and_creates_nothing() {
    let url = common::pg::database_url();
    let schema = unique_schema("dx_verify_empty");
    let err = build(&url, &schema, MigrationMode::Verify)
        .await
        .expect_err("an empty schema must be refused in verify mode");
    match &err {
        Error::SchemaMismatch {
            schema: s,
            missing,
            unknown,
        } => {
            assert_eq!(s, &schema);
            assert_eq!(
                missing.iter().cloned().collect::<BTreeSet<_>>(),
                crate_versions()
            );
            assert!(unknown.is_empty(), "{unknown:?}");
        }
        other => panic!("expected SchemaMismatch, got {other:?}"),
    }
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("lacks migrations"), "{err}");
    assert!(
        !flag(
            &url,
            &format!("EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = '{schema}')")
        )
        .await,
        "verify mode must not create the schema"
    );
}

#[tokio::test]
async fn a_schema_migrated_by_a_newer_version_is_refused_in_both_modes() {
    let url = common::pg::database_url();
    let schema = unique_schema("dx_newer");
    drop(build(&url, &schema, MigrationMode::Apply).await.unwrap());
    exec(
        &url,
        &format!(
            "INSERT INTO \"{schema}\".__diesel_schema_migrations (version) VALUES ('29990101000000')"
        ),
    )
    .await;
    for mode in [MigrationMode::Apply, MigrationMode::Verify] {
        match build(&url, &schema, mode).await {
            Err(Error::SchemaMismatch {
                missing, unknown, ..
            }) => {
                assert!(missing.is_empty(), "{mode:?}: {missing:?}");
                assert_eq!(unknown, vec!["29990101000000".to_owned()], "{mode:?}");
            }
            other => panic!("{mode:?}: expected SchemaMismatch, got {other:?}"),
        }
    }
    // An older build that the schema is newer than would also refuse; once
    // the unknown version is gone, both modes start again.
    exec(
        &url,
        &format!(
            "DELETE FROM \"{schema}\".__diesel_schema_migrations WHERE version = '29990101000000'"
        ),
    )
    .await;
    for mode in [MigrationMode::Apply, MigrationMode::Verify] {
        drop(build(&url, &schema, mode).await.unwrap());
    }
    common::drop_schema(&url, &schema).await;
}

/// An application role with only [`duroxide_diesel::grant_statements`]'s
/// privileges (no CREATE anywhere) starts in both modes on a migrated schema
/// and runs workflows and management calls; it cannot migrate a new schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_least_privilege_role_runs_workflows_on_a_migrated_schema() {
    let url = common::pg::database_url();
    let schema = unique_schema("dx_lp");
    let role = unique_schema("dx_app_role");
    drop(build(&url, &schema, MigrationMode::Apply).await.unwrap());
    exec(
        &url,
        &format!("CREATE ROLE \"{role}\" LOGIN PASSWORD 'app-secret'"),
    )
    .await;
    exec(
        &url,
        &duroxide_diesel::grant_statements(&schema, &role).unwrap(),
    )
    .await;
    for (what, sql) in [
        (
            "CREATE on the database",
            format!("has_database_privilege('{role}', current_database(), 'CREATE')"),
        ),
        (
            "CREATE on the schema",
            format!("has_schema_privilege('{role}', '{schema}', 'CREATE')"),
        ),
        (
            "CREATE on public",
            format!("has_schema_privilege('{role}', 'public', 'CREATE')"),
        ),
        (
            "writes to the migration bookkeeping",
            format!(
                "has_table_privilege('{role}', '\"{schema}\".__diesel_schema_migrations', 'INSERT')"
            ),
        ),
    ] {
        assert!(!flag(&url, &sql).await, "the app role must not have {what}");
    }
    let app_url = common::pg::url_as_user(&url, &role, "app-secret");

    // Apply sends no DDL on an up-to-date schema, so it starts too.
    drop(
        build(&app_url, &schema, MigrationMode::Apply)
            .await
            .unwrap(),
    );
    let provider = Arc::new(
        build(&app_url, &schema, MigrationMode::Verify)
            .await
            .unwrap(),
    );

    let activities = ActivityRegistry::builder()
        .register("Double", |_c: ActivityContext, n: String| async move {
            Ok((n.parse::<i64>().map_err(|e| e.to_string())? * 2).to_string())
        })
        .build();
    let orchestrations = OrchestrationRegistry::builder()
        .register("Twice", |ctx: OrchestrationContext, n: String| async move {
            let n = ctx.schedule_activity("Double", n).await?;
            ctx.set_custom_status("halfway");
            ctx.set_kv_value("seen", n.clone());
            ctx.schedule_timer(Duration::from_millis(20)).await;
            ctx.schedule_activity("Double", n).await
        })
        .build();
    let rt = runtime::Runtime::start_with_options(
        provider.clone(),
        activities,
        orchestrations,
        RuntimeOptions {
            dispatcher_min_poll_interval: Duration::from_millis(10),
            ..Default::default()
        },
    )
    .await;
    let client = Client::new(provider.clone());
    client
        .start_orchestration("lp-1", "Twice", "5")
        .await
        .unwrap();
    match client
        .wait_for_orchestration("lp-1", Duration::from_secs(30))
        .await
        .unwrap()
    {
        OrchestrationStatus::Completed { output, .. } => assert_eq!(output, "20"),
        other => panic!("lp-1 did not complete: {other:?}"),
    }
    assert_eq!(
        client
            .get_kv_value("lp-1", "seen")
            .await
            .unwrap()
            .as_deref(),
        Some("10")
    );
    assert_eq!(
        client.list_all_instances().await.unwrap(),
        vec!["lp-1".to_owned()]
    );
    assert_eq!(
        client
            .get_system_metrics()
            .await
            .unwrap()
            .completed_instances,
        1
    );
    assert_eq!(
        client
            .delete_instance("lp-1", false)
            .await
            .unwrap()
            .instances_deleted,
        1
    );
    rt.shutdown(None).await;
    drop(client);
    drop(provider);

    // Migrating needs DDL, which this role may not run.
    let other = unique_schema("dx_lp_new");
    match build(&app_url, &other, MigrationMode::Apply).await {
        Err(Error::Migration { message, .. }) => assert!(message.contains(&other), "{message}"),
        other => panic!("expected a migration error, got {other:?}"),
    }

    common::drop_schema(&url, &schema).await;
    exec(
        &url,
        &format!("DROP OWNED BY \"{role}\"; DROP ROLE \"{role}\""),
    )
    .await;
}

/// An application's own diesel migrations in `public` and the provider in
/// its default schema do not see each other: the app's `pending` and
/// `revert` behave as if the provider were not there, and `public` holds
/// none of the provider's objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applications_own_diesel_migrations_are_untouched() {
    let url = common::pg::database_url();
    let database = unique_schema("dx_app_db");
    exec(&url, &format!("CREATE DATABASE \"{database}\"")).await;
    let app_url = with_database(&url, &database);

    let dir = std::env::temp_dir().join(format!("{database}_migrations"));
    for (name, up, down) in [
        (
            "2025-01-01-000001_create_customers",
            "CREATE TABLE customers (id BIGINT PRIMARY KEY, name TEXT NOT NULL);",
            "DROP TABLE customers;",
        ),
        (
            "2025-01-02-000001_create_orders",
            "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer BIGINT REFERENCES customers);",
            "DROP TABLE orders;",
        ),
    ] {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        std::fs::write(dir.join(name).join("up.sql"), up).unwrap();
        std::fs::write(dir.join(name).join("down.sql"), down).unwrap();
    }
    let app_versions: BTreeSet<String> = ["20250101000001", "20250102000001"]
        .map(String::from)
        .into();
    assert_eq!(
        cli_style_run(&app_url, dir.clone()).await,
        (app_versions.clone(), false)
    );

    // The provider with every default, schema included.
    let provider = PostgresProvider::builder(&app_url)
        .max_connections(2)
        .build()
        .await
        .unwrap();
    assert_eq!(provider.schema(), duroxide_diesel::DEFAULT_SCHEMA);
    drop(provider);

    // The app's view: only its own migrations, nothing pending.
    assert_eq!(
        cli_style_run(&app_url, dir.clone()).await,
        (app_versions, false)
    );
    let public_tables = "SELECT tablename::text AS name FROM pg_tables WHERE schemaname = 'public'";
    assert_eq!(
        names(&app_url, public_tables).await,
        ["__diesel_schema_migrations", "customers", "orders"]
            .map(String::from)
            .into()
    );
    assert!(
        names(
            &app_url,
            "SELECT proname::text AS name FROM pg_proc WHERE pronamespace = 'public'::regnamespace"
        )
        .await
        .is_empty(),
        "the provider put functions in public"
    );
    let ours = names(
        &app_url,
        "SELECT version::text AS name FROM duroxide.__diesel_schema_migrations",
    )
    .await;
    assert_eq!(ours, crate_versions());

    // The app reverts its last migration: its own, not the provider's.
    let reverted = revert_last(&app_url, dir.clone()).await;
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(reverted, "20250102000001");
    assert_eq!(
        names(&app_url, public_tables).await,
        ["__diesel_schema_migrations", "customers"]
            .map(String::from)
            .into()
    );
    drop(
        build(
            &app_url,
            duroxide_diesel::DEFAULT_SCHEMA,
            MigrationMode::Verify,
        )
        .await
        .expect("the provider's schema is intact"),
    );

    exec(&url, &format!("DROP DATABASE \"{database}\" WITH (FORCE)")).await;
}

/// The path for diesel CLI users: create the schema, then run this crate's
/// migrations with the schema alone on the URL's search_path. Everything,
/// bookkeeping included, lands in that schema, and the provider starts on it
/// in verify mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_applied_like_the_diesel_cli_pass_verification() {
    let url = common::pg::database_url();
    let schema = unique_schema("dx_cli");
    exec(&url, &format!("CREATE SCHEMA \"{schema}\"")).await;
    let cli_url = with_params(&url, &format!("options=-csearch_path%3D{schema}"));
    let (applied, pending) = cli_style_run(&cli_url, crate_migrations()).await;
    assert_eq!(applied, crate_versions());
    assert!(!pending);
    assert!(
        flag(
            &url,
            &format!("to_regclass('\"{schema}\".__diesel_schema_migrations') IS NOT NULL")
        )
        .await
    );

    let provider = Arc::new(build(&url, &schema, MigrationMode::Verify).await.unwrap());
    let client = Client::new(provider.clone());
    client
        .start_orchestration("cli-1", "Anything", "")
        .await
        .unwrap();
    use duroxide::providers::Provider;
    let (item, token, _) = provider
        .fetch_orchestration_item(Duration::from_secs(5), Duration::ZERO, None)
        .await
        .unwrap()
        .expect("the start message is queued in the CLI-migrated schema");
    assert_eq!(item.instance, "cli-1");
    provider
        .abandon_orchestration_item(&token, None, false)
        .await
        .unwrap();
    drop(client);
    drop(provider);
    common::drop_schema(&url, &schema).await;
}

/// The large tables get the migrations' autovacuum settings, and an option
/// an operator set on one of them before migration `000016` is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_tables_get_autovacuum_settings_and_keep_an_operators_own() {
    let url = common::pg::database_url();
    let schema = unique_schema("dx_vacuum");
    exec(&url, &format!("CREATE SCHEMA \"{schema}\"")).await;
    let cli_url = with_params(&url, &format!("options=-csearch_path%3D{schema}"));
    let _ = cli_style_run(&cli_url, crate_migrations()).await;

    // Back to before migration 000016, where an operator tunes history.
    revert_through(&cli_url, crate_migrations(), "20261204000016").await;
    exec(
        &url,
        &format!("ALTER TABLE \"{schema}\".history SET (autovacuum_vacuum_scale_factor = 0.05)"),
    )
    .await;
    let (_, pending) = cli_style_run(&cli_url, crate_migrations()).await;
    assert!(!pending);

    let instances = reloptions(&url, &schema, "instances").await;
    for expected in [
        "autovacuum_vacuum_scale_factor=0.02",
        "autovacuum_vacuum_threshold=1000",
        "autovacuum_analyze_scale_factor=0.02",
        "fillfactor=85",
    ] {
        assert!(instances.contains(expected), "instances: {instances:?}");
    }
    let executions = reloptions(&url, &schema, "executions").await;
    assert!(
        executions.contains("autovacuum_vacuum_scale_factor=0.02")
            && executions.contains("fillfactor=90"),
        "executions keeps the fill factor of migration 000008: {executions:?}"
    );
    let history = reloptions(&url, &schema, "history").await;
    assert!(
        history.contains("autovacuum_vacuum_scale_factor=0.05"),
        "the operator's value is kept: {history:?}"
    );
    assert!(
        history.contains("autovacuum_vacuum_threshold=1000"),
        "options the operator did not set are added: {history:?}"
    );
    common::drop_schema(&url, &schema).await;
}

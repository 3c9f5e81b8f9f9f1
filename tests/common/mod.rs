//! Test support that needs the provider itself: a fresh schema per test
//! ([`TestDb`]) and the `ProviderFactory` that duroxide's validation suite
//! drives. The provider-independent parts (server, proxy, work items,
//! workload) live in the `duroxide-diesel-testkit` crate and are re-exported
//! here, so tests reach everything through `common::`.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

pub use duroxide_diesel_testkit::db::unique_schema;
#[allow(unused_imports)] // each test binary uses some of these
pub use duroxide_diesel_testkit::{items, pg, proxy, workload};

use std::sync::Arc;
use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use duroxide::provider_validations::ProviderFactory;
use duroxide::providers::Provider;
use duroxide_diesel::PostgresProvider;

/// A PgBouncer in transaction pooling mode in front of the test server,
/// started if needed.
pub fn pg_pooler_url() -> String {
    duroxide_diesel_testkit::pgbouncer::transaction_pooler_url()
}

/// Runs one SQL batch on a new connection (test setup and inspection);
/// panics on failure.
pub async fn exec(url: &str, sql: &str) {
    duroxide_diesel_testkit::db::execute(url, sql)
        .await
        .unwrap_or_else(|e| panic!("execute failed: {e}\n{sql}"));
}

/// Drops a test schema; panics on failure.
pub async fn drop_schema(url: &str, schema: &str) {
    duroxide_diesel_testkit::db::drop_schema(url, schema)
        .await
        .unwrap_or_else(|e| panic!("drop schema {schema} failed: {e}"));
}

/// One test's database: a schema of its own, dropped by [`TestDb::cleanup`].
pub struct TestDb {
    pub url: String,
    pub schema: String,
}

impl TestDb {
    pub async fn new() -> Self {
        Self {
            url: pg::database_url(),
            schema: unique_schema("dxt"),
        }
    }

    pub async fn provider(&self) -> PostgresProvider {
        self.builder().build().await.expect("create provider")
    }

    /// The builder of [`TestDb::provider`], for tests that set more options.
    pub fn builder(&self) -> duroxide_diesel::PostgresProviderBuilder {
        PostgresProvider::builder(&self.url)
            .schema(&self.schema)
            .max_connections(8)
    }

    /// A provider whose calls go through `pooler`, a PgBouncer in
    /// transaction pooling mode in front of this database's server.
    pub async fn provider_through(&self, pooler: &str) -> PostgresProvider {
        PostgresProvider::builder(pooler)
            .transaction_pooler(&self.url)
            .schema(&self.schema)
            .max_connections(8)
            .build()
            .await
            .expect("create provider through the pooler")
    }

    pub async fn cleanup(self) {
        drop_schema(&self.url, &self.schema).await;
    }

    /// The `pg_stat_activity` condition matching the listener connection of
    /// a provider on this schema (while its last statement is its LISTEN).
    pub fn listener_of(&self) -> String {
        format!(
            "query = 'LISTEN \"' || dx_notify_channel() || '\"' AND datname = current_database() /* {} */",
            self.schema
        )
    }

    /// Waits until a provider's listener on this schema is subscribed, so a
    /// test does not race the first LISTEN.
    pub async fn wait_for_listener(&self) {
        let listening = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE {}",
            self.listener_of()
        );
        for _ in 0..200 {
            if self.scalar(&listening).await.is_some_and(|n| n != "0") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("listener never subscribed");
    }

    /// A query result as text (first column of the first row).
    pub async fn scalar(&self, sql: &str) -> Option<String> {
        use diesel::QueryableByName;
        use diesel_async::RunQueryDsl;
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            v: Option<String>,
        }
        let mut conn = AsyncPgConnection::establish(&self.url)
            .await
            .expect("connect");
        conn.batch_execute(&format!("SET search_path TO \"{}\"", self.schema))
            .await
            .expect("search_path");
        let rows: Vec<Row> = diesel::sql_query(format!("SELECT ({sql})::text AS v"))
            .load(&mut conn)
            .await
            .expect("scalar query");
        rows.into_iter().next().and_then(|r| r.v)
    }
}

/// The validation suite's factory. Like duroxide's own SQLite factory, each
/// `create_provider` call gets a fresh, empty store (here: a new schema);
/// the corruption and attempt-count hooks act on the latest one. Lock
/// timeouts are short so expiry tests finish quickly.
pub struct Factory {
    url: String,
    /// Providers reach the server through this PgBouncer (transaction
    /// pooling), with `url` as their direct URL.
    pooler: Option<String>,
    /// The providers' `completion_batch_window` (`None`: the provider's
    /// default, [`duroxide_diesel::DEFAULT_COMPLETION_BATCH_WINDOW`]).
    batch_window: Option<Duration>,
    schemas: std::sync::Mutex<Vec<String>>,
}

impl Factory {
    pub async fn new() -> Self {
        Self {
            url: pg::database_url(),
            pooler: None,
            batch_window: None,
            schemas: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Providers that never hold a completion for the other activities of
    /// its execution (`completion_batch_window` zero).
    pub async fn without_completion_batching() -> Self {
        Self {
            batch_window: Some(Duration::ZERO),
            ..Self::new().await
        }
    }

    /// Providers that reach the server through PgBouncer in transaction
    /// pooling mode (started by the testkit if needed).
    pub async fn through_pgbouncer() -> Self {
        Self {
            pooler: Some(pg_pooler_url()),
            ..Self::new().await
        }
    }

    fn latest(&self) -> TestDb {
        let schema = self
            .schemas
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no provider created yet");
        TestDb {
            url: self.url.clone(),
            schema,
        }
    }

    pub async fn cleanup(self) {
        let schemas = std::mem::take(&mut *self.schemas.lock().unwrap());
        for schema in schemas {
            drop_schema(&self.url, &schema).await;
        }
    }
}

#[async_trait::async_trait]
impl ProviderFactory for Factory {
    async fn create_provider(&self) -> Arc<dyn Provider> {
        let db = TestDb {
            url: self.url.clone(),
            schema: unique_schema("dxv"),
        };
        let provider = match &self.pooler {
            None => {
                let builder = db.builder();
                match self.batch_window {
                    Some(window) => builder.completion_batch_window(window),
                    None => builder,
                }
                .build()
                .await
                .expect("create provider")
            }
            Some(pooler) => db.provider_through(pooler).await,
        };
        self.schemas.lock().unwrap().push(db.schema);
        Arc::new(provider)
    }

    fn lock_timeout(&self) -> Duration {
        Duration::from_secs(2)
    }

    fn short_poll_threshold(&self) -> Duration {
        Duration::from_millis(500)
    }

    async fn corrupt_instance_history(&self, instance: &str) {
        let db = self.latest();
        let sql = format!(
            "UPDATE \"{}\".history SET event_data = '{{\"type\": \"NoSuchEventKind\"}}'::jsonb \
             WHERE instance_id = '{}'",
            db.schema,
            instance.replace('\'', "''")
        );
        exec(&db.url, &sql).await;
    }

    async fn get_max_attempt_count(&self, instance: &str) -> u32 {
        let v = self
            .latest()
            .scalar(&format!(
                "SELECT max(attempt_count) FROM orchestrator_queue WHERE instance_id = '{}'",
                instance.replace('\'', "''")
            ))
            .await;
        v.and_then(|s| s.parse().ok()).unwrap_or(0)
    }
}

/// duroxide's stress tests take providers from the same factory.
#[async_trait::async_trait]
impl duroxide::provider_stress_tests::parallel_orchestrations::ProviderStressFactory for Factory {
    async fn create_provider(&self) -> Arc<dyn Provider> {
        ProviderFactory::create_provider(self).await
    }
}

/// Declares one `#[tokio::test]` per validation function of the `suite`
/// module in scope, each with a fresh factory, and the same tests again in
/// a module `through_pgbouncer` whose providers reach the server through
/// PgBouncer in transaction pooling mode, and in a module
/// `without_completion_batching` whose providers never hold completions
/// for their siblings (`completion_batch_window` zero; the default holds
/// them up to 10 ms).
///
/// Names after `direct only:` run directly only, each with the reason it
/// cannot pass through a transaction pooler written where it is listed.
#[macro_export]
macro_rules! validation_tests {
    ($($name:ident),* $(,)?; direct only: $($direct:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $direct() {
                let factory = $crate::common::Factory::new().await;
                suite::$direct(&factory).await;
                factory.cleanup().await;
            }
        )*
        $crate::validation_tests!($($name),*);
    };
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let factory = $crate::common::Factory::new().await;
                suite::$name(&factory).await;
                factory.cleanup().await;
            }
        )*

        mod through_pgbouncer {
            use super::suite;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let factory = $crate::common::Factory::through_pgbouncer().await;
                    suite::$name(&factory).await;
                    factory.cleanup().await;
                }
            )*
        }

        mod without_completion_batching {
            use super::suite;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let factory = $crate::common::Factory::without_completion_batching().await;
                    suite::$name(&factory).await;
                    factory.cleanup().await;
                }
            )*
        }
    };
}

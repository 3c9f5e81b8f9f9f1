//! # duroxide-diesel
//!
//! A PostgreSQL [`Provider`](duroxide::providers::Provider) for
//! [duroxide](https://crates.io/crates/duroxide), built on diesel and
//! diesel-async.
//!
//! * Every hot-path call (fetch, ack, abandon, renew, enqueue) is one
//!   PL/pgSQL function: one statement, one network round trip.
//! * Diesel migrations own the schema; they are embedded and applied when a
//!   provider is created, safely when many processes start at once.
//! * Each provider lives in one PostgreSQL schema, so tenants can share a
//!   database.
//!
//! ```no_run
//! # async fn demo() -> Result<(), duroxide_diesel::Error> {
//! use std::sync::Arc;
//! use duroxide_diesel::PostgresProvider;
//!
//! let provider = Arc::new(PostgresProvider::new("postgres://localhost/app").await?);
//! // or, with options:
//! let tenant = PostgresProvider::builder("postgres://localhost/app")
//!     .schema("tenant_a")
//!     .max_connections(20)
//!     .build()
//!     .await?;
//! # let _ = (provider, tenant);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod error;
mod migrate;
mod options;
mod pool;
mod procedures;
mod provider;
#[allow(missing_docs, unused_imports)]
mod schema;
mod tls;

use std::time::Duration;

pub use error::{Error, Result};
pub use migrate::MIGRATIONS;
pub use options::{DEFAULT_SCHEMA, Options};

/// A duroxide provider storing orchestrations, history and queues in PostgreSQL.
///
/// Create it with [`PostgresProvider::new`], [`PostgresProvider::new_with_schema`]
/// or [`PostgresProvider::builder`]; it implements both
/// [`Provider`](duroxide::providers::Provider) and
/// [`ProviderAdmin`](duroxide::providers::ProviderAdmin).
pub struct PostgresProvider {
    pool: pool::Pool,
    options: Options,
    connector: pool::Connector,
    /// Listener for long polling, started by the first fetch that waits.
    wakeups: std::sync::OnceLock<std::sync::Arc<provider::listener::Wakeups>>,
    /// Worker fetches of this provider waiting for work (see `provider::handoff`).
    worker_waiters: std::sync::Arc<provider::handoff::Waiters>,
}

impl std::fmt::Debug for PostgresProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresProvider")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl PostgresProvider {
    /// Connects to `database_url`, applies the migrations to the `public`
    /// schema and returns a ready provider.
    ///
    /// The URL is a standard PostgreSQL URL or key-value string
    /// (`postgres://user:pass@host:5432/db?application_name=x&connect_timeout=5`).
    pub async fn new(database_url: &str) -> Result<Self> {
        Self::builder(database_url).build().await
    }

    /// Like [`new`](Self::new), in `schema` (created if absent) when given.
    pub async fn new_with_schema(database_url: &str, schema: Option<&str>) -> Result<Self> {
        let mut builder = Self::builder(database_url);
        if let Some(schema) = schema {
            builder = builder.schema(schema);
        }
        builder.build().await
    }

    /// Starts configuring a provider for `database_url`.
    pub fn builder(database_url: &str) -> PostgresProviderBuilder {
        PostgresProviderBuilder {
            url: database_url.to_owned(),
            options: Options::default(),
        }
    }

    /// The options this provider was built with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The schema holding this provider's tables.
    pub fn schema(&self) -> &str {
        &self.options.schema
    }
}

/// Configures and builds a [`PostgresProvider`].
#[derive(Debug, Clone)]
#[must_use]
pub struct PostgresProviderBuilder {
    url: String,
    options: Options,
}

impl PostgresProviderBuilder {
    /// Schema for the provider's tables (default `public`). Must be a plain
    /// lowercase identifier of at most 63 bytes; it is created if absent.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.options.schema = schema.into();
        self
    }

    /// Maximum pooled connections (default 10).
    pub fn max_connections(mut self, max: u32) -> Self {
        self.options.max_connections = max;
        self
    }

    /// Timeout for opening a connection and for waiting on a free pooled
    /// connection (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.options.connect_timeout = timeout;
        self
    }

    /// Server-side `statement_timeout` for every connection (default none).
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.options.statement_timeout = Some(timeout);
        self
    }

    /// `application_name` shown in `pg_stat_activity` (default: the URL's, if any).
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.options.application_name = Some(name.into());
        self
    }

    /// Long polling (default on): when no work is ready, fetches wait up to
    /// the runtime's poll timeout for a notification instead of returning at
    /// once. The first waiting fetch opens one extra connection that LISTENs
    /// on this schema's channel. Off: fetches return immediately and the
    /// runtime polls at its own interval.
    pub fn long_polling(mut self, enabled: bool) -> Self {
        self.options.long_polling = enabled;
        self
    }

    /// Verify the server's TLS certificate (chain and host name) against this
    /// CA certificate, PEM-encoded. Without it, connections that use TLS
    /// (`sslmode=prefer`, the default, or `require`) are encrypted but the
    /// certificate is not verified, as with libpq's `prefer` / `require`.
    /// `sslmode=disable` in the URL turns TLS off.
    pub fn tls_ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.options.tls_ca_pem = Some(pem.into());
        self
    }

    /// Validates the options, applies pending migrations and returns the provider.
    ///
    /// Fails with a clear [`Error`] for a malformed URL, an unsafe schema name,
    /// an unreachable server or bad credentials, within the connect timeout.
    pub async fn build(self) -> Result<PostgresProvider> {
        let Self { url, options } = self;
        options.validate()?;
        let connector = pool::Connector::new(&url, &options)?;
        migrate::run(&connector, &options.schema).await?;
        let pool = pool::build(&connector, &options).await?;
        Ok(PostgresProvider {
            pool,
            options,
            connector,
            wakeups: std::sync::OnceLock::new(),
            worker_waiters: Default::default(),
        })
    }
}

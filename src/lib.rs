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
//! * Faults are bounded: every call has a time limit
//!   ([`PostgresProviderBuilder::call_timeout`]), a dead or silent connection
//!   is retired and never handed out again, failures before anything is sent
//!   are retried inside the call, and errors are classified retryable or
//!   permanent without reading the server's messages (see [`Error`]).
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
mod inspect;
mod migrate;
mod numeric;
mod observe;
mod options;
mod pool;
mod provider;
#[allow(missing_docs, unused_imports)]
mod schema;
mod sql;
mod tls;

use std::time::Duration;

pub use error::{Error, Result};
pub use inspect::{ConnectionCount, InstanceQuery, InstanceSummary, QueueCounts, QueueStatus};
pub use migrate::{MIGRATIONS, MigrationMode, grant_statements};
pub use options::{
    DEFAULT_CACHED_READ_WINDOW, DEFAULT_COMPLETION_BATCH_WINDOW, DEFAULT_HISTORY_CACHE_EVENTS,
    DEFAULT_NEXT_ACTIVITY_WINDOW, DEFAULT_SCHEMA, MAX_COMPLETION_BATCH_WINDOW,
    MAX_NEXT_ACTIVITY_WINDOW, Options,
};

// The Rust examples of the README and the guides in docs/ compile as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
#[cfg(doctest)]
#[doc = include_str!("../docs/operations.md")]
struct OperationsGuideDoctests;
#[cfg(doctest)]
#[doc = include_str!("../docs/from-duroxide-pg.md")]
struct FromDuroxidePgDoctests;

/// Name of the stand-in activity handed to the runtime for a worker-queue
/// row that no longer decodes (see [`PostgresProvider`], "Rows that no
/// longer decode"). Do not register an activity under this name.
pub const UNDECODABLE_ACTIVITY: &str = "duroxide-diesel/undecodable-work-item";

/// A duroxide provider storing orchestrations, history and queues in PostgreSQL.
///
/// Create it with [`PostgresProvider::new`], [`PostgresProvider::new_with_schema`]
/// or [`PostgresProvider::builder`]; it implements both
/// [`Provider`](duroxide::providers::Provider) and
/// [`ProviderAdmin`](duroxide::providers::ProviderAdmin).
///
/// # Payloads
///
/// Inputs, outputs, results, custom status, key-value entries, instance ids,
/// names and tags are stored verbatim, whatever their quotes, backslashes or
/// non-ASCII characters, with one exception: PostgreSQL cannot store the
/// character U+0000 (NUL) in `text` or `jsonb`. Values holding it are refused
/// in Rust before anything is sent, with an [`Error::Data`] that names the
/// value and never quotes it, and always affect one activity or one
/// orchestration only:
///
/// * enqueueing a message (starting an orchestration, raising an event)
///   fails with that error, which duroxide reports to the caller;
/// * an activity result or error holding U+0000 is stored as an application
///   failure of that activity ("activity result contains U+0000 (NUL), which
///   PostgreSQL cannot store"), once: the orchestration sees it like any
///   other activity failure;
/// * an orchestration turn holding U+0000 (output, custom status, a
///   key-value key or value, an activity input, any event) is refused as a
///   permanent error, which duroxide turns into a failure of that
///   orchestration; the failure it then commits is storable, so the instance
///   ends `Failed` with the reason as its output.
///
/// Lengths are unlimited except where PostgreSQL indexes the text: an
/// instance id, or an instance id and a key-value key together, longer than
/// 2600 bytes is refused the same way (a btree entry holds about 2700 bytes,
/// and whether a longer value fits depends on how well it compresses).
///
/// # Rows that no longer decode
///
/// A queued row that does not decode (written by a newer duroxide during a
/// rolling upgrade, or edited by hand) reaches duroxide's poison handling
/// with its attempt count instead of reappearing after every lock expiry:
///
/// * an orchestrator message is reported in the turn's `history_error`, like
///   undecodable history: the runtime abandons the turn with a delay, and
///   once the attempts exceed its `max_attempts` fails the instance as poison,
///   deleting the message. A message sent to an execution that already
///   completed or failed is dropped with that batch (and logged).
/// * an activity is handed to the runtime as a stand-in named
///   [`UNDECODABLE_ACTIVITY`] for the same instance and activity id, with the
///   decode error and the stored document as input. No worker runs it: the
///   runtime abandons it with a growing delay and, past `max_attempts`,
///   completes it as a poisoned activity, which fails the orchestration with
///   the poison details. A row that names no activity is deleted and logged
///   with its stored document.
pub struct PostgresProvider {
    db: pool::Db,
    options: Options,
    /// Reaches the server itself (not a transaction pooler): for LISTEN.
    direct: pool::Connector,
    /// Listener for long polling, started by the first fetch that waits.
    wakeups: std::sync::OnceLock<std::sync::Arc<provider::listener::Wakeups>>,
    /// What this provider's last orchestrator fetch found (see `provider::quiet`).
    quiet: provider::quiet::Quiet,
    /// Worker fetches of this provider waiting for work (see `provider::handoff`).
    worker_waiters: std::sync::Arc<provider::handoff::Waiters>,
    /// Ack tokens whose outcome is unknown (see `provider::unsettled`).
    unsettled_acks: provider::unsettled::Acks,
    /// Histories of executions this provider ran turns of (see
    /// `provider::history_cache`).
    history_cache: provider::history_cache::HistoryCache,
    /// Custom statuses history reads brought along (see
    /// `provider::read_status`).
    read_status: provider::read_status::ReadStatus,
    /// Activities acknowledgements claimed for the next worker fetch (see
    /// `provider::claimed_ahead`).
    claimed_ahead: provider::claimed_ahead::ClaimedAhead,
}

impl std::fmt::Debug for PostgresProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresProvider")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl PostgresProvider {
    /// Connects to `database_url`, applies pending migrations to the
    /// [`DEFAULT_SCHEMA`] (`duroxide`) and returns a ready provider.
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
    /// Schema for the provider's tables, functions and migration bookkeeping
    /// (default [`DEFAULT_SCHEMA`], `duroxide`). Must be a plain lowercase
    /// identifier of at most 63 bytes; with [`MigrationMode::Apply`] it is
    /// created if absent.
    ///
    /// `public` works too, but then diesel's `__diesel_schema_migrations`
    /// table there records this crate's migrations next to an application's
    /// own, and the application's `diesel print-schema` sees these tables.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.options.schema = schema.into();
        self
    }

    /// Maximum pooled connections (default 10).
    pub fn max_connections(mut self, max: u32) -> Self {
        self.options.max_connections = max;
        self
    }

    /// Time limit for opening one connection: TCP, TLS, authentication and
    /// session setup (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.options.connect_timeout = timeout;
        self
    }

    /// Time limit of one `Provider` call as a whole: waiting for a pooled
    /// connection, reconnecting, and the statement (default 5 s). Past it
    /// the call fails with the retryable [`Error::Timeout`] and its
    /// connection is closed, so a silent peer (a black-holed network, a
    /// failed-over host) costs one call this long, never a hang. Keep it
    /// above the slowest statement you expect; a fetch that waits for work
    /// (long polling) applies it to each query, not to the wait.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.options.call_timeout = timeout;
        self
    }

    /// Time limit of one `ProviderAdmin` call (default 60 s): bulk deletes
    /// and pruning may legitimately run longer than hot-path calls. It also
    /// bounds lock waits while migrating (`lock_timeout`), so it is at most
    /// 2,147,483,647 ms (about 24.8 days), PostgreSQL's limit for that
    /// setting; [`build`](Self::build) refuses more with [`Error::InvalidOption`].
    pub fn admin_call_timeout(mut self, timeout: Duration) -> Self {
        self.options.admin_call_timeout = timeout;
        self
    }

    /// TCP keepalive: after `idle` without traffic the kernel probes the
    /// peer (every idle/2, three times) and drops a dead connection
    /// (default 10 s; `None` = the URL's or the system's setting).
    pub fn tcp_keepalive(mut self, idle: Option<Duration>) -> Self {
        self.options.tcp_keepalive = idle;
        self
    }

    /// `TCP_USER_TIMEOUT` (Linux): a connection whose sent data stays
    /// unacknowledged this long is dropped (default 10 s; `None` = the URL's
    /// or the system's setting).
    pub fn tcp_user_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.options.tcp_user_timeout = timeout;
        self
    }

    /// How often the long-polling LISTEN connection proves it is alive with
    /// a query (default 10 s). A listener that misses its heartbeat, or that
    /// is suspected because a pooled call found a dead connection, is
    /// replaced; meanwhile waiting fetches poll every 250 ms.
    pub fn listener_heartbeat(mut self, interval: Duration) -> Self {
        self.options.listener_heartbeat = interval;
        self
    }

    /// Most history events kept in memory (default 100,000; 0 turns it
    /// off). The provider keeps the history of each execution whose turn
    /// it committed; its next turn of that execution, and `read` of it,
    /// then receive only the events added since, so the cost of a turn
    /// does not grow with the history. The server checks in the same
    /// statement that what is held is still current (the committing turn's
    /// lock token and last event id) and sends everything otherwise; least
    /// recently used histories are dropped first. Memory: roughly this many
    /// decoded events (each a few hundred bytes plus its payloads).
    pub fn history_cache_events(mut self, events: usize) -> Self {
        self.options.history_cache_events = events;
        self
    }

    /// How long after the server confirmed that the cached history of an
    /// instance is its current one, one `read` of it is answered from the
    /// cache without a round trip (default 10 ms; zero sends every read).
    ///
    /// A confirmation comes with the claim of one of the instance's
    /// activities when this provider committed its last turn, and with
    /// the commit of a turn. duroxide's worker reads the history right
    /// after every claim (for the orchestration's name and version), so
    /// this saves a round trip per activity. Such an answer is the history
    /// as stored when the claim or commit ran: up to this long (plus half
    /// a round trip) older than a read sent at the same moment would see.
    /// Writes through this provider are never missed; a turn committed by
    /// another process in that interval is seen by the next read.
    ///
    /// The same window bounds status polls: a `read` that goes to the
    /// server brings the instance's custom status along, and the next
    /// `get_custom_status` of that instance within the window is answered
    /// with it (once), so duroxide's `get_orchestration_status` is one round
    /// trip.
    pub fn cached_read_window(mut self, window: Duration) -> Self {
        self.options.cached_read_window = window;
        self
    }

    /// How long an activity's completion may wait for the other activities
    /// of its orchestration execution before its turn runs (default
    /// [`DEFAULT_COMPLETION_BATCH_WINDOW`], 10 ms; `Duration::ZERO`: never;
    /// at most [`MAX_COMPLETION_BATCH_WINDOW`], counted in whole
    /// milliseconds).
    ///
    /// With a window, a completion acknowledged while other activities of
    /// the same execution are still queued or running becomes claimable
    /// only when the last of them completes or the window ends, whichever
    /// comes first; a completion with no such sibling is claimable at
    /// once, as without a window. A fan-out then takes one turn for
    /// several completions rather than one turn each, which costs the
    /// orchestration's replay, the fetch and the commit once per batch.
    /// The price is latency: a completion the orchestration could act on
    /// alone (the first of a `select`, say) waits up to the window. The
    /// decision is made in the acknowledgement's statement; nothing else
    /// changes. The default's 10 ms halves the turns per orchestration in
    /// duroxide's stress test (five activities fanned out and joined); set
    /// `Duration::ZERO` where the first completion of a race must not wait.
    pub fn completion_batch_window(mut self, window: Duration) -> Self {
        self.options.completion_batch_window = window;
        self
    }

    /// How long an activity claimed by an acknowledgement waits for this
    /// provider's next worker fetch (default
    /// [`DEFAULT_NEXT_ACTIVITY_WINDOW`], 25 ms; `Duration::ZERO`: never
    /// claim; at most [`MAX_NEXT_ACTIVITY_WINDOW`]).
    ///
    /// A busy duroxide worker fetches again right after it acknowledges an
    /// activity. With a window, `ack_work_item` of a session-less activity
    /// also claims the activity that worker's next fetch would take (same
    /// tag filter, lock timeout and session owner), in the
    /// acknowledgement's own statement and transaction, and the next
    /// `fetch_work_item` on this provider with that lock timeout, a filter
    /// that accepts it and, for a session-bound activity, the same session
    /// owner gets it without a round trip. An activity nobody fetched
    /// within the window (or a quarter of its lock timeout, if shorter) is
    /// released at once (not counted as an attempt), as is one whose
    /// acknowledgement's outcome is unknown and every one waiting when the
    /// provider is dropped; until then other processes do not see it. Its
    /// lock counts from the claim, so a worker that takes it holds it for
    /// up to the window less than its lock timeout.
    pub fn next_activity_window(mut self, window: Duration) -> Self {
        self.options.next_activity_window = window;
        self
    }

    /// Server-side `statement_timeout` for every connection (default none);
    /// at most 2,147,483,647 ms (about 24.8 days), PostgreSQL's limit.
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

    /// Verify the server's TLS certificate against this CA certificate,
    /// PEM-encoded (it takes precedence over the URL's `sslrootcert`). With a
    /// CA, TLS is required and verified: chain and host name
    /// (`verify-full`), or the chain only if the URL says
    /// `sslmode=verify-ca`; a server that declines TLS is refused. Without
    /// any CA, `sslmode=prefer` (the default) and `require` encrypt without
    /// verifying, as libpq does. See the crate's README for the full table.
    pub fn tls_ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.options.tls_ca_pem = Some(pem.into());
        self
    }

    /// The URL given to [`PostgresProvider::builder`] reaches PostgreSQL
    /// through a connection pooler in transaction mode (PgBouncer's
    /// `pool_mode = transaction`); `direct_url` reaches the server itself
    /// and is used for migrations and for the one LISTEN connection of long
    /// polling, which a transaction pooler cannot carry.
    ///
    /// Through the pooler nothing is kept between calls, since consecutive
    /// transactions of one client connection may run on different server
    /// connections: each call runs in a transaction of its own that sets
    /// `search_path` (and `statement_timeout`) with `SET LOCAL`, statements
    /// are prepared per call instead of cached, and `application_name` is
    /// sent at connect. This works with every PgBouncer version (1.18
    /// included, no `max_prepared_statements` needed) and costs round trips
    /// to the pooler: four per call (`BEGIN` with the settings, prepare,
    /// execute, `COMMIT`) instead of one, so run the pooler next to the
    /// application or the database. Statement pooling (`pool_mode =
    /// statement`) refuses transactions and is not supported:
    /// [`build`](Self::build) fails with [`Error::Connect`]. Session pooling
    /// needs no option. See the operations guide, "Connection poolers".
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), duroxide_diesel::Error> {
    /// let provider = duroxide_diesel::PostgresProvider::builder("postgres://app@pgbouncer:6432/app")
    ///     .transaction_pooler("postgres://app@db:5432/app")
    ///     .build()
    ///     .await?;
    /// # let _ = provider;
    /// # Ok(()) }
    /// ```
    pub fn transaction_pooler(mut self, direct_url: impl Into<String>) -> Self {
        self.options.direct_url = Some(direct_url.into());
        self
    }

    /// Apply pending migrations on start ([`MigrationMode::Apply`], the
    /// default) or only verify that the schema has exactly this build's
    /// migrations ([`MigrationMode::Verify`]). Either way a schema migrated
    /// by a newer version of this crate is refused.
    pub fn migrations(mut self, mode: MigrationMode) -> Self {
        self.options.migrations = mode;
        self
    }

    /// Validates the options, brings the schema's migrations up to date (or
    /// verifies them, see [`migrations`](Self::migrations)) and returns the provider.
    ///
    /// Fails with a clear [`Error`] for a malformed URL, an unsafe schema name,
    /// an unreachable server or bad credentials (within the connect timeout),
    /// and with [`Error::SchemaMismatch`] for a schema whose migrations are
    /// not this build's.
    pub async fn build(self) -> Result<PostgresProvider> {
        let Self { url, options } = self;
        options.validate()?;
        let (pooled, direct) = match &options.direct_url {
            None => {
                let direct = pool::Connector::new(&url, &options, pool::Route::Direct)?;
                (direct.clone(), direct)
            }
            Some(direct_url) => (
                pool::Connector::new(&url, &options, pool::Route::TransactionPooler)?,
                pool::Connector::new(direct_url, &options, pool::Route::Direct)?,
            ),
        };
        migrate::run(
            &direct,
            &options.schema,
            options.migrations,
            options.admin_call_timeout,
        )
        .await?;
        observe::describe();
        if options.direct_url.is_some() {
            probe_pooler(&pooled).await?;
        }
        let db = pool::Db::new(&pooled, &options);
        Ok(PostgresProvider {
            db,
            direct,
            wakeups: std::sync::OnceLock::new(),
            quiet: Default::default(),
            worker_waiters: Default::default(),
            unsettled_acks: Default::default(),
            history_cache: provider::history_cache::HistoryCache::new(
                options.history_cache_events,
                options.cached_read_window,
            ),
            read_status: provider::read_status::ReadStatus::new(options.cached_read_window),
            claimed_ahead: provider::claimed_ahead::ClaimedAhead::new(options.next_activity_window),
            options,
        })
    }
}

/// Opens one connection through a transaction pooler, which runs a
/// transaction (see `pool::Connector::connect`), so a pooler that refuses
/// transactions (statement pooling) fails [`build`] at once with a clear
/// error instead of every call retrying until its time limit.
///
/// [`build`]: PostgresProviderBuilder::build
async fn probe_pooler(pooled: &pool::Connector) -> Result<()> {
    pooled
        .connect()
        .await
        .map(drop)
        .map_err(|e| Error::Connect {
            message: format!(
                "the transaction pooler did not run a transaction ({e}); a pooler in \
             statement mode is not supported: use pool_mode = transaction or session"
            ),
            source: Box::new(e),
        })
}

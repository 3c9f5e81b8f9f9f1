//! Connections: how they are opened, pooled, handed out and retired.
//!
//! Invariants this module keeps, so no caller has to:
//!
//! * **Bounded.** Opening a connection is bounded by `connect_timeout`; a
//!   checkout by the caller's [`Budget`]; every provider call as a whole by
//!   the same budget (see [`bounded`]). TCP keepalive and `tcp_user_timeout`
//!   make the kernel notice a dead peer while a connection is idle or
//!   writing.
//! * **No broken connection is handed out.** A checkout checks, without a
//!   round trip, that the connection's socket task is still alive and that
//!   the connection is not retired (below); if not it is discarded and
//!   another one is taken.
//! * **A connection left mid-statement is retired.** Every statement's start
//!   and finish is counted (diesel instrumentation); a connection whose call
//!   was dropped half-way (it timed out, or the caller's future was dropped)
//!   is closed instead of reused, since a reply may still be in flight on it
//!   or its peer may be gone.
//! * **Nothing is left behind on a transaction pooler's server
//!   connections.** Behind PgBouncer in transaction mode (see [`Route`])
//!   every call is one transaction that carries its own settings, and every
//!   statement is prepared and closed inside it; [`Lease::finish`] commits.
//! * **Failures before the statement is sent are retried.** When opening a
//!   connection fails, a checkout retries with backoff until its budget runs
//!   out, and only then reports the last failure: nothing was sent, so this
//!   is safe for every call.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use std::sync::atomic::{AtomicI64, Ordering};

use diesel::connection::{CacheSize, InstrumentationEvent};
use diesel_async::pooled_connection::PoolableConnection;
use diesel_async::{
    AnsiTransactionManager, AsyncConnection, AsyncPgConnection, SimpleAsyncConnection,
    TransactionManager,
};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};
use crate::observe::name;
use crate::options::Options;

/// Parses the URL the way the driver will, so a malformed URL fails up front
/// with a clear message instead of on first use.
pub(crate) fn parse_url(url: &str) -> Result<tokio_postgres::Config> {
    tokio_postgres::Config::from_str(url).map_err(|e| Error::InvalidUrl(e.to_string()))
}

/// `search_path` (the provider schema first) and `statement_timeout`, set
/// with `verb`: `SET` or `SET LOCAL`.
fn settings_sql(options: &Options, verb: &str) -> String {
    let mut sql = format!("{verb} search_path TO \"{}\"", options.schema);
    if let Some(timeout) = options.statement_timeout {
        sql.push_str(&format!(
            "; {verb} statement_timeout = {}",
            timeout.as_millis()
        ));
    }
    sql
}

/// The statements every new connection runs once: pin the provider schema
/// first in `search_path` and apply the session options.
pub(crate) fn session_setup_sql(options: &Options) -> String {
    let mut sql = settings_sql(options, "SET");
    if let Some(name) = &options.application_name {
        sql.push_str(&format!(
            "; SET application_name = '{}'",
            name.replace('\'', "''")
        ));
    }
    sql
}

/// Behind a transaction pooler a session setting would stay with whichever
/// server connection ran it, so each call opens a transaction that carries
/// the settings itself (`SET LOCAL`), in the same round trip as `BEGIN`.
/// `application_name` travels in the startup packet instead, which poolers
/// forward.
pub(crate) fn transaction_setup_sql(options: &Options) -> String {
    format!("BEGIN; {}", settings_sql(options, "SET LOCAL"))
}

/// How the connections of a [`Connector`] reach PostgreSQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Straight to the server (or through a session pooler): settings are
    /// made once per connection, statements are prepared once and cached.
    Direct,
    /// Through a pooler in transaction mode (PgBouncer `pool_mode =
    /// transaction`): consecutive transactions of one client connection may
    /// run on different server connections, so nothing is kept between
    /// calls: no session settings, no cached prepared statements, and each
    /// call runs in a transaction of its own (see [`transaction_setup_sql`]).
    TransactionPooler,
}

/// Everything needed to open a ready connection: used by the pool, the
/// migrator and the LISTEN connection alike.
#[derive(Clone)]
pub(crate) struct Connector {
    config: tokio_postgres::Config,
    route: Route,
    setup_sql: Arc<str>,
    timeout: Duration,
    tls: Arc<rustls::ClientConfig>,
}

impl Connector {
    pub(crate) fn new(url: &str, options: &Options, route: Route) -> Result<Self> {
        let tls = crate::tls::settings(url, options.tls_ca_pem.as_deref())?;
        let mut config = parse_url(&tls.url)?;
        config.ssl_mode(tls.ssl_mode);
        let setup_sql = match route {
            Route::Direct => session_setup_sql(options),
            Route::TransactionPooler => {
                if let Some(name) = &options.application_name {
                    config.application_name(name);
                }
                String::new()
            }
        };
        if let Some(idle) = options.tcp_keepalive {
            // Probes every idle/2, three of them: a silent peer is dropped
            // about 2.5 x idle after the connection last heard from it.
            config
                .keepalives(true)
                .keepalives_idle(idle)
                .keepalives_interval((idle / 2).max(Duration::from_secs(1)))
                .keepalives_retries(3);
        }
        if let Some(timeout) = options.tcp_user_timeout {
            config.tcp_user_timeout(timeout);
        }
        Ok(Self {
            config,
            route,
            setup_sql: setup_sql.into(),
            timeout: options.connect_timeout,
            tls: tls.config,
        })
    }

    /// Opens one connection (TLS unless the URL says `sslmode=disable`) and
    /// runs the session setup, bounded by the connect timeout.
    pub(crate) async fn connect(&self) -> Result<AsyncPgConnection> {
        let attempt = async {
            let mut conn = if self.config.get_ssl_mode() == SslMode::Disable {
                let (client, connection) =
                    self.config.connect(NoTls).await.map_err(connect_error)?;
                self.setup(client, connection).await?
            } else {
                let tls = MakeRustlsConnect::new((*self.tls).clone());
                let (client, connection) = self.config.connect(tls).await.map_err(connect_error)?;
                self.setup(client, connection).await?
            };
            match self.route {
                Route::Direct => conn.batch_execute(&self.setup_sql).await?,
                Route::TransactionPooler => {
                    // The statements diesel-async prepared while setting up
                    // are closed here, still inside the setup transaction;
                    // from now on each statement is prepared inside its
                    // call's transaction and closed there.
                    conn.set_prepared_statement_cache_size(CacheSize::Disabled);
                    conn.batch_execute("COMMIT").await?;
                }
            }
            Ok::<_, Error>(conn)
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .map_err(|_| Error::ConnectTimeout(self.timeout))?
    }

    /// Hands a new client to diesel-async, which sets the session's time
    /// zone and encoding with two prepared statements that it caches.
    ///
    /// Through a transaction pooler each of those could run on another
    /// server connection and would stay prepared there, where a later
    /// process (whose statement names start from the same counter) would
    /// collide with them. So they run inside a transaction opened first:
    /// one server connection, which [`Connector::connect`] then closes them
    /// on and commits. PgBouncer records the settings from the server's
    /// reports and applies them to whichever server connection later serves
    /// this client.
    async fn setup<T>(
        &self,
        client: tokio_postgres::Client,
        mut connection: tokio_postgres::Connection<tokio_postgres::Socket, T>,
    ) -> Result<AsyncPgConnection>
    where
        T: tokio_postgres::tls::TlsStream + Unpin + Send + 'static,
    {
        if self.route == Route::TransactionPooler {
            // The connection must be driven for the client's request to
            // complete; diesel-async takes it over afterwards.
            let begin = client.batch_execute("BEGIN");
            let mut begin = std::pin::pin!(begin);
            tokio::select! {
                begun = &mut begin => begun.map_err(connect_error)?,
                ended = &mut connection => {
                    return Err(match ended {
                        Err(e) => connect_error(e),
                        Ok(()) => Error::Connect {
                            message: "the server closed the connection during setup".into(),
                            source: "connection closed".into(),
                        },
                    });
                }
            }
        }
        AsyncPgConnection::try_from_client_and_connection(client, connection)
            .await
            .map_err(|e| Error::Connect {
                message: e.to_string(),
                source: Box::new(e),
            })
    }
}

fn connect_error(e: tokio_postgres::Error) -> Error {
    // tokio-postgres' Display drops the server's message; its source has it.
    let message = match std::error::Error::source(&e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    };
    Error::Connect {
        message,
        source: Box::new(e),
    }
}

/// Pauses between retries: doubling from a first pause up to a longest one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Retries of calls: 50 ms doubling to 500 ms, which bounds how long a
    /// retrying call takes to notice that the database is back.
    pub(crate) const CALL: Backoff =
        Backoff::new(Duration::from_millis(50), Duration::from_millis(500));

    pub(crate) const fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            next: first,
            max,
        }
    }

    /// The pause the next retry would take.
    pub(crate) fn peek(&self) -> Duration {
        self.next
    }

    /// The pause to take now; the following one doubles.
    pub(crate) fn next(&mut self) -> Duration {
        let pause = self.next;
        self.next = (pause * 2).min(self.max);
        pause
    }

    /// Back to the first pause, after a success.
    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }
}

/// How long a call may take in all: checkout (including reconnects) plus
/// its statements.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Budget {
    /// `Provider` calls: `call_timeout`.
    Call,
    /// `ProviderAdmin` calls (bulk deletes, pruning, listings): `admin_call_timeout`.
    Admin,
}

/// A pooled connection and the number of its statements that started but
/// have not finished.
///
/// It counts itself in the idle or in-use gauge from birth to drop; the
/// gauges move by increments, so several providers in one process add up.
pub(crate) struct DbConn {
    conn: AsyncPgConnection,
    in_flight: Arc<AtomicI64>,
    checked_out: bool,
}

impl DbConn {
    fn new(mut conn: AsyncPgConnection) -> Self {
        let in_flight = Arc::new(AtomicI64::new(0));
        let counter = Arc::clone(&in_flight);
        // diesel reports every statement's start and finish; a statement
        // whose future was dropped (timeout, cancelled caller) never
        // finishes, which is exactly what marks the connection unusable.
        conn.set_instrumentation(move |event: InstrumentationEvent<'_>| match event {
            InstrumentationEvent::StartQuery { .. } => {
                counter.fetch_add(1, Ordering::AcqRel);
            }
            InstrumentationEvent::FinishQuery { .. } => {
                counter.fetch_sub(1, Ordering::AcqRel);
            }
            _ => {}
        });
        metrics::gauge!(name::POOL_IDLE).increment(1.0);
        Self {
            conn,
            in_flight,
            checked_out: false,
        }
    }

    /// Moves the connection between the idle and in-use gauges.
    fn set_checked_out(&mut self, checked_out: bool) {
        if self.checked_out != checked_out {
            self.checked_out = checked_out;
            let (from, to) = if checked_out {
                (name::POOL_IDLE, name::POOL_IN_USE)
            } else {
                (name::POOL_IN_USE, name::POOL_IDLE)
            };
            metrics::gauge!(from).decrement(1.0);
            metrics::gauge!(to).increment(1.0);
        }
    }

    /// Usable: the socket task is alive, no transaction is broken, and no
    /// statement was left half-way (a reply may still be in flight, or the
    /// peer may be gone).
    fn usable(&mut self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && !self.conn.is_broken()
    }
}

impl Drop for DbConn {
    fn drop(&mut self) {
        let gauge = if self.checked_out {
            name::POOL_IN_USE
        } else {
            name::POOL_IDLE
        };
        metrics::gauge!(gauge).decrement(1.0);
    }
}

/// The bb8 manager: opens connections through the [`Connector`] and checks
/// them without a round trip.
struct Manager {
    connector: Connector,
}

/// What the manager reports to bb8; never leaves this module.
#[derive(Debug)]
enum ManagerError {
    /// An idle connection found unusable at checkout: bb8 discards it and
    /// takes another, nothing failed.
    Stale,
    /// A connection could not be opened.
    Connect(Error),
}

impl std::fmt::Display for ManagerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ManagerError::Stale => f.write_str("stale pooled connection"),
            ManagerError::Connect(e) => e.fmt(f),
        }
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = DbConn;
    type Error = ManagerError;

    async fn connect(&self) -> Result<DbConn, ManagerError> {
        let conn = self
            .connector
            .connect()
            .await
            .map_err(ManagerError::Connect)?;
        Ok(DbConn::new(conn))
    }

    /// No round trip: see [`DbConn::usable`].
    async fn is_valid(&self, conn: &mut DbConn) -> Result<(), ManagerError> {
        if conn.usable() {
            Ok(())
        } else {
            Err(ManagerError::Stale)
        }
    }

    fn has_broken(&self, conn: &mut DbConn) -> bool {
        !conn.usable()
    }
}

/// What the pool reports about failed connection attempts.
#[derive(Default)]
struct ConnectFailures {
    /// The last failed attempt, shared by every checkout that reports it.
    last: Mutex<Option<Arc<Error>>>,
    notify: Notify,
}

/// Receives the errors bb8 cannot return to a caller (failed connection
/// attempts) and wakes the checkouts waiting for that connection.
#[derive(Clone)]
struct FailureSink(Arc<ConnectFailures>);

impl std::fmt::Debug for FailureSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FailureSink")
    }
}

impl bb8::ErrorSink<ManagerError> for FailureSink {
    fn sink(&self, error: ManagerError) {
        let ManagerError::Connect(error) = error else {
            return; // a discarded idle connection, not a failed attempt
        };
        metrics::counter!(name::POOL_CONNECT_FAILURES).increment(1);
        if let Ok(mut last) = self.0.last.lock() {
            *last = Some(Arc::new(error));
        }
        self.0.notify.notify_waiters();
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<ManagerError>> {
        Box::new(self.clone())
    }
}

/// The provider's connection pool; clones share it.
#[derive(Clone)]
pub(crate) struct Db {
    pool: bb8::Pool<Manager>,
    /// Behind a transaction pooler: what opens each call's transaction.
    begin_sql: Option<Arc<str>>,
    failures: Arc<ConnectFailures>,
    call_timeout: Duration,
    admin_timeout: Duration,
    /// Bumped when a call hit a dead or silent connection, so the listener
    /// can check its own connection at once.
    faults: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Db {
    /// Builds the pool. Connections are opened lazily and never pinged.
    pub(crate) fn new(connector: &Connector, options: &Options) -> Self {
        let failures = Arc::new(ConnectFailures::default());
        let pool = bb8::Pool::builder()
            .max_size(options.max_connections)
            .min_idle(None)
            // Checked without a round trip: see `Manager::is_valid`.
            .test_on_check_out(true)
            // One attempt per request; `Db::lease` retries with its own
            // backoff and budget, and learns of failures at once.
            .retry_connection(false)
            .connection_timeout(options.admin_call_timeout)
            .error_sink(Box::new(FailureSink(Arc::clone(&failures))))
            .build_unchecked(Manager {
                connector: connector.clone(),
            });
        let begin_sql = (connector.route == Route::TransactionPooler)
            .then(|| transaction_setup_sql(options).into());
        Self {
            pool,
            begin_sql,
            failures,
            call_timeout: options.call_timeout,
            admin_timeout: options.admin_call_timeout,
            faults: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    /// The time limit of a call under `budget`.
    pub(crate) fn limit(&self, budget: Budget) -> Duration {
        match budget {
            Budget::Call => self.call_timeout,
            Budget::Admin => self.admin_timeout,
        }
    }

    /// Checks out a healthy connection within `budget`.
    ///
    /// A failed connection attempt is retried with backoff; when the budget
    /// runs out, the last failure is reported (or pool exhaustion, if no
    /// attempt failed).
    pub(crate) async fn lease(&self, budget: Budget) -> Result<Lease<'_>> {
        let limit = self.limit(budget);
        let started = Instant::now();
        let deadline = started + limit;
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        let mut last_failure: Option<Arc<Error>> = None;
        let mut waiting = CheckoutTimeout {
            deadline: Some(deadline),
        };
        loop {
            let failed = self.failures.notify.notified();
            let mut failed = std::pin::pin!(failed);
            failed.as_mut().enable();
            tokio::select! {
                got = self.pool.get() => match got {
                    Ok(mut conn) => {
                        conn.set_checked_out(true);
                        waiting.deadline = None;
                        crate::observe::duration(name::POOL_CHECKOUT_WAIT, started.elapsed());
                        let mut lease = Lease { conn, db: self };
                        if let Some(begin) = &self.begin_sql {
                            // Fails the call like its statement would; a
                            // connection it leaves broken is retired on drop.
                            AnsiTransactionManager::begin_transaction_sql(&mut *lease, begin)
                                .await?;
                        }
                        return Ok(lease);
                    }
                    Err(bb8::RunError::User(ManagerError::Connect(e))) => {
                        last_failure = Some(Arc::new(e));
                    }
                    // Not returned with `test_on_check_out` (bb8 discards the
                    // connection and takes another), and not a failure.
                    Err(bb8::RunError::User(ManagerError::Stale)) => {}
                    Err(bb8::RunError::TimedOut) => {}
                },
                _ = failed => {
                    last_failure = self.failures.last.lock().ok().and_then(|l| l.clone());
                }
                _ = tokio::time::sleep_until(deadline) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                self.report_fault();
                return Err(match last_failure {
                    // The attempt's own reason, without repeating "could
                    // not connect"; the attempt itself is the source.
                    Some(e) => Error::Connect {
                        message: match &*e {
                            Error::Connect { message, .. } => message.clone(),
                            other => other.to_string(),
                        },
                        source: Box::new(e),
                    },
                    None => Error::Pool { waited: limit },
                });
            }
            tokio::time::sleep(backoff.next().min(deadline - now)).await;
        }
    }

    /// Tells whoever watches [`Db::faults`] that a connection was found dead
    /// or silent.
    pub(crate) fn report_fault(&self) {
        self.faults.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Notified after each [`Db::report_fault`].
    pub(crate) fn faults(&self) -> tokio::sync::watch::Receiver<u64> {
        self.faults.subscribe()
    }
}

/// Counts a checkout that ends without a connection at its deadline:
/// either [`Db::lease`] gives up, or the call's own limit (the same length,
/// started a moment earlier) drops it.
struct CheckoutTimeout {
    /// `None` once a connection was had.
    deadline: Option<Instant>,
}

impl Drop for CheckoutTimeout {
    fn drop(&mut self) {
        // A few milliseconds of timer slack; a caller that gave up earlier
        // (shutdown, a cancelled poll) is no timeout.
        if let Some(deadline) = self.deadline
            && Instant::now() + Duration::from_millis(10) >= deadline
        {
            metrics::counter!(name::POOL_CHECKOUT_TIMEOUTS).increment(1);
        }
    }
}

/// A connection checked out for one call; back to the pool when dropped,
/// unless it is no longer usable (see [`DbConn::usable`]).
///
/// A call ends with [`Lease::finish`]. Directly connected, statements have
/// committed as they ran and `finish` only returns the connection. Behind a
/// transaction pooler the call's statements share one transaction, which
/// `finish` commits; a lease dropped without it (an error, a timeout, a
/// dropped future) leaves its transaction open, so the connection counts
/// as broken and is closed, which rolls the transaction back.
pub(crate) struct Lease<'a> {
    conn: bb8::PooledConnection<'a, Manager>,
    db: &'a Db,
}

impl Lease<'_> {
    /// Ends the call: commits its transaction behind a transaction pooler,
    /// then returns the connection to the pool.
    pub(crate) async fn finish(mut self) -> Result<()> {
        if self.db.begin_sql.is_some() {
            AnsiTransactionManager::commit_transaction(&mut *self).await?;
        }
        Ok(())
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if self.conn.usable() {
            self.conn.set_checked_out(false);
        } else {
            // Closed on its way back (still counted in use until then); the
            // listener may be affected too.
            metrics::counter!(name::POOL_RETIRED).increment(1);
            self.db.report_fault();
        }
    }
}

impl std::ops::Deref for Lease<'_> {
    type Target = AsyncPgConnection;

    fn deref(&self) -> &AsyncPgConnection {
        &self.conn.conn
    }
}

impl std::ops::DerefMut for Lease<'_> {
    fn deref_mut(&mut self) -> &mut AsyncPgConnection {
        &mut self.conn.conn
    }
}

/// Runs one whole provider call within `budget`. On timeout the call's
/// future is dropped, so its lease (if any) closes its connection, and the
/// fault is reported.
pub(crate) async fn bounded<T, E: From<Error>>(
    db: &Db,
    budget: Budget,
    call: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> std::result::Result<T, E> {
    let limit = db.limit(budget);
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => {
            db.report_fault();
            Err(Error::Timeout(limit).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    /// Nothing listens on port 1.
    const REFUSED: &str = "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable";

    #[tokio::test]
    async fn a_failed_connection_keeps_the_driver_error_as_its_source() {
        let connector = Connector::new(REFUSED, &Options::default(), Route::Direct).unwrap();
        let err = connector.connect().await.err().expect("nothing listens");
        assert!(matches!(err, Error::Connect { .. }), "{err}");
        assert!(err.is_retryable() && err.is_before_send());
        let source = err.source().expect("a source");
        assert!(source.is::<tokio_postgres::Error>(), "{source:?}");
        // ... whose own source is the refused socket.
        let io = source.source().expect("the I/O error");
        assert!(io.is::<std::io::Error>(), "{io:?}");
    }

    #[tokio::test]
    async fn a_checkout_that_gave_up_reports_the_last_attempt_as_its_source() {
        let options = Options {
            call_timeout: Duration::from_millis(300),
            ..Options::default()
        };
        let connector = Connector::new(REFUSED, &options, Route::Direct).unwrap();
        let db = Db::new(&connector, &options);
        let err = db.lease(Budget::Call).await.err().expect("nothing listens");
        assert!(matches!(err, Error::Connect { .. }), "{err}");
        assert!(err.is_retryable() && err.is_before_send());
        let text = err.to_string();
        assert_eq!(text.matches("could not connect").count(), 1, "{text}");
        let attempt = err.source().expect("the last attempt");
        let attempt = attempt.downcast_ref::<Arc<Error>>().expect("an Error");
        assert!(matches!(**attempt, Error::Connect { .. }), "{attempt}");
        let driver = attempt.source().expect("the driver's error");
        assert!(driver.is::<tokio_postgres::Error>(), "{driver:?}");
    }

    #[test]
    fn pool_exhaustion_has_no_underlying_error() {
        let err = Error::Pool {
            waited: Duration::from_secs(5),
        };
        assert_eq!(
            err.to_string(),
            "no database connection available: no pooled connection became free within 5s"
        );
        assert!(err.source().is_none());
        assert!(err.is_retryable() && err.is_before_send());
    }
}

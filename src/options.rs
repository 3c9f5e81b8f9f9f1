//! Provider options and their validation.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::migrate::MigrationMode;

/// Schema used when none is given: a schema of the provider's own, so its
/// tables, functions and migration bookkeeping never mix with an
/// application's objects in `public`.
pub const DEFAULT_SCHEMA: &str = "duroxide";

/// Default of [`Options::history_cache_events`].
pub const DEFAULT_HISTORY_CACHE_EVENTS: usize = 100_000;

/// Default of [`Options::cached_read_window`].
pub const DEFAULT_CACHED_READ_WINDOW: Duration = Duration::from_millis(10);

/// Default of [`Options::completion_batch_window`].
pub const DEFAULT_COMPLETION_BATCH_WINDOW: Duration = Duration::from_millis(10);

/// Longest [`Options::completion_batch_window`] accepted.
pub const MAX_COMPLETION_BATCH_WINDOW: Duration = Duration::from_secs(1);

/// Default of [`Options::next_activity_window`].
pub const DEFAULT_NEXT_ACTIVITY_WINDOW: Duration = Duration::from_millis(25);

/// Longest [`Options::next_activity_window`] accepted.
pub const MAX_NEXT_ACTIVITY_WINDOW: Duration = Duration::from_secs(1);

/// Settings of a [`PostgresProvider`](crate::PostgresProvider); build one
/// with [`PostgresProvider::builder`](crate::PostgresProvider::builder).
#[derive(Clone)]
pub struct Options {
    pub(crate) schema: String,
    pub(crate) max_connections: u32,
    pub(crate) connect_timeout: Duration,
    pub(crate) statement_timeout: Option<Duration>,
    pub(crate) application_name: Option<String>,
    pub(crate) long_polling: bool,
    pub(crate) tls_ca_pem: Option<Vec<u8>>,
    pub(crate) call_timeout: Duration,
    pub(crate) admin_call_timeout: Duration,
    pub(crate) tcp_keepalive: Option<Duration>,
    pub(crate) tcp_user_timeout: Option<Duration>,
    pub(crate) listener_heartbeat: Duration,
    pub(crate) migrations: MigrationMode,
    /// Set when the provider's URL reaches a transaction pooler: the URL of
    /// the server itself, for migrations and the LISTEN connection.
    pub(crate) direct_url: Option<String>,
    pub(crate) history_cache_events: usize,
    pub(crate) cached_read_window: Duration,
    pub(crate) completion_batch_window: Duration,
    pub(crate) next_activity_window: Duration,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("application_name", &self.application_name)
            .field("long_polling", &self.long_polling)
            .field("tls_ca_certificate", &self.tls_ca_pem.is_some())
            .field("call_timeout", &self.call_timeout)
            .field("admin_call_timeout", &self.admin_call_timeout)
            .field("tcp_keepalive", &self.tcp_keepalive)
            .field("tcp_user_timeout", &self.tcp_user_timeout)
            .field("listener_heartbeat", &self.listener_heartbeat)
            .field("migrations", &self.migrations)
            // The URL may hold a password.
            .field("transaction_pooler", &self.direct_url.is_some())
            .field("history_cache_events", &self.history_cache_events)
            .field("cached_read_window", &self.cached_read_window)
            .field("completion_batch_window", &self.completion_batch_window)
            .field("next_activity_window", &self.next_activity_window)
            .finish()
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            schema: DEFAULT_SCHEMA.to_owned(),
            max_connections: 10,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: None,
            application_name: None,
            long_polling: true,
            tls_ca_pem: None,
            call_timeout: Duration::from_secs(5),
            admin_call_timeout: Duration::from_secs(60),
            tcp_keepalive: Some(Duration::from_secs(10)),
            tcp_user_timeout: Some(Duration::from_secs(10)),
            listener_heartbeat: Duration::from_secs(10),
            migrations: MigrationMode::Apply,
            direct_url: None,
            history_cache_events: DEFAULT_HISTORY_CACHE_EVENTS,
            cached_read_window: DEFAULT_CACHED_READ_WINDOW,
            completion_batch_window: DEFAULT_COMPLETION_BATCH_WINDOW,
            next_activity_window: DEFAULT_NEXT_ACTIVITY_WINDOW,
        }
    }
}

impl Options {
    /// The schema holding the provider's tables and functions.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Whether start-up applies pending migrations or only verifies them.
    pub fn migrations(&self) -> MigrationMode {
        self.migrations
    }

    /// Maximum number of pooled connections.
    pub fn max_connections(&self) -> u32 {
        self.max_connections
    }

    /// Timeout for establishing a connection and for waiting on the pool.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Server-side `statement_timeout` of each connection, if set.
    pub fn statement_timeout(&self) -> Option<Duration> {
        self.statement_timeout
    }

    /// `application_name` reported to the server, if set.
    pub fn application_name(&self) -> Option<&str> {
        self.application_name.as_deref()
    }

    /// Whether fetches wait for work (LISTEN/NOTIFY) up to their poll timeout.
    pub fn long_polling(&self) -> bool {
        self.long_polling
    }

    /// Time limit of one `Provider` call, checkout and reconnects included.
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// Time limit of one `ProviderAdmin` call.
    pub fn admin_call_timeout(&self) -> Duration {
        self.admin_call_timeout
    }

    /// TCP keepalive idle time, if keepalive is on.
    pub fn tcp_keepalive(&self) -> Option<Duration> {
        self.tcp_keepalive
    }

    /// `TCP_USER_TIMEOUT` of every connection, if set.
    pub fn tcp_user_timeout(&self) -> Option<Duration> {
        self.tcp_user_timeout
    }

    /// Whether the provider's URL reaches PostgreSQL through a pooler in
    /// transaction mode (see
    /// [`transaction_pooler`](crate::PostgresProviderBuilder::transaction_pooler)).
    pub fn transaction_pooler(&self) -> bool {
        self.direct_url.is_some()
    }

    /// How often the LISTEN connection proves it is alive.
    pub fn listener_heartbeat(&self) -> Duration {
        self.listener_heartbeat
    }

    /// Most history events the provider keeps in memory to spare the server
    /// resending them (0: none; see
    /// [`history_cache_events`](crate::PostgresProviderBuilder::history_cache_events)).
    pub fn history_cache_events(&self) -> usize {
        self.history_cache_events
    }

    /// How long a confirmation of a cached history answers one read, and a
    /// read's custom status one status call (zero: never; see
    /// [`cached_read_window`](crate::PostgresProviderBuilder::cached_read_window)).
    pub fn cached_read_window(&self) -> Duration {
        self.cached_read_window
    }

    /// How long an activity's completion may wait for the other activities
    /// of its execution (zero: never; see
    /// [`completion_batch_window`](crate::PostgresProviderBuilder::completion_batch_window)).
    pub fn completion_batch_window(&self) -> Duration {
        self.completion_batch_window
    }

    /// How long an activity an acknowledgement claimed waits for this
    /// provider's next worker fetch (zero: acknowledgements claim nothing;
    /// see
    /// [`next_activity_window`](crate::PostgresProviderBuilder::next_activity_window)).
    pub fn next_activity_window(&self) -> Duration {
        self.next_activity_window
    }

    pub(crate) fn validate(&self) -> Result<()> {
        validate_schema_name(&self.schema)?;
        if self.max_connections == 0 {
            return Err(Error::InvalidOption(
                "max_connections must be at least 1".into(),
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::InvalidOption(
                "connect_timeout must be greater than zero".into(),
            ));
        }
        for (name, value) in [
            ("call_timeout", Some(self.call_timeout)),
            ("admin_call_timeout", Some(self.admin_call_timeout)),
            ("listener_heartbeat", Some(self.listener_heartbeat)),
            ("tcp_keepalive", self.tcp_keepalive),
            ("tcp_user_timeout", self.tcp_user_timeout),
        ] {
            if value.is_some_and(|t| t.as_millis() == 0) {
                return Err(Error::InvalidOption(format!(
                    "{name} must be at least 1 ms"
                )));
            }
        }
        if self
            .tcp_keepalive
            .is_some_and(|t| t < Duration::from_secs(1))
        {
            return Err(Error::InvalidOption(
                "tcp_keepalive must be at least 1 s (the kernel counts in seconds)".into(),
            ));
        }
        if self.statement_timeout.is_some_and(|t| t.as_millis() == 0) {
            return Err(Error::InvalidOption(
                "statement_timeout must be at least 1 ms (use None for no timeout)".into(),
            ));
        }
        // Sent as server settings: statement_timeout on every connection,
        // admin_call_timeout as lock_timeout while migrating.
        for (name, value) in [
            ("statement_timeout", self.statement_timeout),
            ("admin_call_timeout", Some(self.admin_call_timeout)),
        ] {
            if value.is_some_and(|t| t.as_millis() > crate::numeric::MAX_SETTING_MS) {
                return Err(Error::InvalidOption(format!(
                    "{name} must be at most {} ms, PostgreSQL's limit for a timeout setting",
                    crate::numeric::MAX_SETTING_MS
                )));
            }
        }
        if self.completion_batch_window > MAX_COMPLETION_BATCH_WINDOW {
            return Err(Error::InvalidOption(format!(
                "completion_batch_window must be at most {} ms: it delays orchestration turns",
                MAX_COMPLETION_BATCH_WINDOW.as_millis()
            )));
        }
        if self.next_activity_window > MAX_NEXT_ACTIVITY_WINDOW {
            return Err(Error::InvalidOption(format!(
                "next_activity_window must be at most {} ms: a claimed activity waits that long \
                 for a worker that may not come",
                MAX_NEXT_ACTIVITY_WINDOW.as_millis()
            )));
        }
        if let Some(name) = &self.application_name
            && name.chars().any(|c| c.is_control())
        {
            return Err(Error::InvalidOption(
                "application_name must not contain control characters".into(),
            ));
        }
        Ok(())
    }
}

/// Accepts plain identifiers only: `[a-z_][a-z0-9_]*`, at most 63 bytes, so
/// the name never needs quoting rules beyond double quotes and is never
/// folded or truncated by PostgreSQL.
pub(crate) fn validate_schema_name(name: &str) -> Result<()> {
    let reject = |reason| {
        Err(Error::InvalidSchemaName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return reject("must not be empty");
    }
    if name.len() > 63 {
        return reject("must be at most 63 bytes");
    }
    let mut chars = name.chars();
    if !chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
    {
        return reject("must start with a lowercase ASCII letter or underscore");
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return reject("may contain only lowercase ASCII letters, digits and underscores");
    }
    if name.starts_with("pg_") {
        return reject("names starting with pg_ are reserved by PostgreSQL");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_identifiers() {
        for ok in ["public", "tenant_1", "_x", &"a".repeat(63)] {
            assert!(validate_schema_name(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_unsafe_names() {
        for bad in [
            "",
            "has space",
            "semi;colon",
            "quo\"te",
            "Upper",
            "1abc",
            "pg_catalog",
            "dash-ed",
            &"a".repeat(64),
        ] {
            let err = validate_schema_name(bad).unwrap_err();
            assert!(
                matches!(err, Error::InvalidSchemaName { .. }),
                "{bad}: {err}"
            );
        }
    }
}

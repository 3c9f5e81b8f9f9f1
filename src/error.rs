//! The crate's error type and its mapping onto duroxide's [`ProviderError`].

use std::time::Duration;

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use duroxide::providers::ProviderError;

/// An underlying error kept by an [`Error`] variant and returned by its
/// [`source`](std::error::Error::source).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in this provider.
///
/// # Retryable or permanent
///
/// duroxide retries a call that fails with a retryable error and gives up on
/// (for an ack: fails the orchestration for) a permanent one. The split uses
/// only facts this crate owns, never the server's message text, which is
/// translated when the server's `lc_messages` is not English:
///
/// | failure | class | why |
/// |---|---|---|
/// | connection refused, reset, closed by the server (restart, `pg_terminate_backend`, failover), TLS or I/O error | retryable | the next connection may work |
/// | no reply within the call's time limit ([`Error::Timeout`]), connect timeout, no free pooled connection | retryable | the connection is discarded; the next one may work |
/// | serialization failure, read-only transaction (a standby during failover) | retryable | transient by definition |
/// | any other error reported by the server: deadlock, lock or statement timeout, disk full, out of memory, too many connections, ... | retryable | diesel-async does not expose SQLSTATE, so these cannot be told apart from each other; input is validated in Rust before it is sent (see [`Error::Data`]), so a valid call is never refused by the server for its data, and a bounded retry (duroxide counts attempts and poisons a message that keeps failing) is safer than failing a workflow |
/// | unique, foreign-key, not-null, check, exclusion violations | permanent | the same call would violate the same constraint |
/// | invalid lock token ([`Error::LockLost`]) | permanent | the lock is gone for good |
/// | invalid data, options, URL, TLS configuration or schema name; a row that does not decode; a number that does not fit (see [Numbers](#numbers)) | permanent | the same input fails the same way |
/// | a management call refused for its request: not found, still running, ... ([`Error::Refused`]) | permanent | the same request is refused the same way |
/// | migration failure, schema migrations not those of this build | permanent | needs an operator |
///
/// # Sources
///
/// [`Error::Connect`], [`Error::Migration`] and [`Error::Tls`] keep the
/// error that caused them as their
/// [`source`](std::error::Error::source); [`Error::Database`] is diesel's
/// error itself. Their messages are complete on their own, so a report
/// that prints the whole chain repeats the underlying reason.
///
/// # Numbers
///
/// Numbers cross between Rust and SQL exactly or not at all: a value
/// handed to the provider that the SQL side cannot hold (an id beyond
/// `BIGINT`, a limit beyond `INT`, a duration or timestamp beyond what
/// PostgreSQL's timestamp arithmetic computes) is refused with
/// [`Error::Data`] before anything is sent, and a stored value that does not
/// fit its Rust type (a negative count or id, a time before 1970) is an
/// [`Error::Data`] too. Nothing is clamped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The schema name is not a plain lowercase SQL identifier.
    #[error("invalid schema name {name:?}: {reason}")]
    InvalidSchemaName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// The connection URL could not be parsed.
    #[error("invalid PostgreSQL connection URL: {0}")]
    InvalidUrl(String),

    /// An option passed to the builder is out of range.
    #[error("invalid option: {0}")]
    InvalidOption(String),

    /// The call did not finish within its time limit (`call_timeout` or
    /// `admin_call_timeout`); a connection it was using was closed, since
    /// its reply may still be in flight or its peer may be gone.
    #[error(
        "the call did not finish within {0:?} (no reply from PostgreSQL, or no connection); a connection it was using was closed"
    )]
    Timeout(Duration),

    /// A connection to the server could not be established.
    ///
    /// The message is complete on its own (it includes the server's reason,
    /// which tokio-postgres' own message leaves out); the source is the
    /// underlying error: tokio-postgres' (whose source in turn is the I/O,
    /// TLS or server error), diesel's, or, when a call gave up after its
    /// retries, the last failed connection attempt.
    #[error("could not connect to PostgreSQL: {message}")]
    Connect {
        /// What failed, with the underlying reason.
        message: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// Establishing a connection took longer than the connection timeout.
    #[error("timed out after {0:?} connecting to PostgreSQL")]
    ConnectTimeout(Duration),

    /// No pooled connection became free within the call's time limit, and
    /// no connection attempt failed meanwhile (that would be
    /// [`Error::Connect`]): every connection was busy. There is no
    /// underlying error.
    #[error("no database connection available: no pooled connection became free within {waited:?}")]
    Pool {
        /// How long the call waited.
        waited: Duration,
    },

    /// Applying the embedded schema migrations failed.
    ///
    /// The message is complete on its own; the source is the underlying
    /// error (diesel's, the migration harness', or the I/O error of the
    /// migration thread).
    #[error("schema migration failed: {message}")]
    Migration {
        /// What failed, with the underlying reason.
        message: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// The TLS settings could not be turned into a TLS configuration: the CA
    /// certificate file could not be read or parsed, or rustls refused the
    /// certificate or the configuration. The source is the I/O, PEM or
    /// rustls error.
    #[error("invalid TLS configuration: {message}")]
    Tls {
        /// What failed, with the underlying reason.
        message: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// The schema's applied migrations are not the ones compiled into this
    /// build: some are missing (with [`MigrationMode::Verify`](crate::MigrationMode::Verify),
    /// which never migrates), or some are unknown because a newer version of
    /// this crate migrated the schema (refused in every mode: this build
    /// would not know the newer tables and functions).
    #[error("{}", schema_mismatch_message(schema, missing, unknown))]
    SchemaMismatch {
        /// The schema checked.
        schema: String,
        /// Versions compiled into this build that the schema lacks.
        missing: Vec<String>,
        /// Versions the schema has that this build does not know.
        unknown: Vec<String>,
    },

    /// A statement failed.
    #[error("database error: {0}")]
    Database(#[from] DieselError),

    /// Stored data or a value handed to the provider could not be
    /// (de)serialized.
    #[error("invalid data: {0}")]
    Data(String),

    /// The lock token is unknown, expired, or was already used.
    #[error("Invalid lock token: unknown, expired or already used")]
    LockLost,

    /// A management call ([`ProviderAdmin`](duroxide::providers::ProviderAdmin))
    /// was refused because of what it asked for, not because the store
    /// failed: the instance or execution does not exist, the instance or one
    /// of its descendants is still running, it is not a root instance, ...
    /// The message says which; nothing was changed.
    #[error("{0}")]
    Refused(String),
}

impl Error {
    /// Whether retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { .. }
            | Error::ConnectTimeout(_)
            | Error::Pool { .. }
            | Error::Timeout(_) => true,
            Error::Database(e) => diesel_error_is_retryable(e),
            Error::InvalidSchemaName { .. }
            | Error::InvalidUrl(_)
            | Error::InvalidOption(_)
            | Error::Migration { .. }
            | Error::Tls { .. }
            | Error::SchemaMismatch { .. }
            | Error::Data(_)
            | Error::LockLost
            | Error::Refused(_) => false,
        }
    }

    /// Whether the failure happened before any statement was sent (no
    /// connection could be had), so the call certainly changed nothing.
    pub(crate) fn is_before_send(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. } | Error::ConnectTimeout(_) | Error::Pool { .. }
        )
    }

    /// The variant as a stable snake_case name, for metric labels and span
    /// fields (never the message, which varies).
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Error::InvalidSchemaName { .. } => "invalid_schema_name",
            Error::InvalidUrl(_) => "invalid_url",
            Error::InvalidOption(_) => "invalid_option",
            Error::Timeout(_) => "timeout",
            Error::Connect { .. } => "connect",
            Error::ConnectTimeout(_) => "connect_timeout",
            Error::Pool { .. } => "pool_exhausted",
            Error::Migration { .. } => "migration",
            Error::Tls { .. } => "tls",
            Error::SchemaMismatch { .. } => "schema_mismatch",
            Error::Database(_) => "database",
            Error::Data(_) => "data",
            Error::LockLost => "lock_lost",
            Error::Refused(_) => "refused",
        }
    }

    /// [`Error::Migration`]: `context` followed by the source's message.
    pub(crate) fn migration(context: Option<&str>, source: impl Into<BoxError>) -> Self {
        let source = source.into();
        let message = match context {
            Some(context) => format!("{context}: {source}"),
            None => source.to_string(),
        };
        Error::Migration { message, source }
    }

    /// [`Error::Tls`]: `context` followed by the source's message.
    pub(crate) fn tls(context: &str, source: impl Into<BoxError>) -> Self {
        let source = source.into();
        Error::Tls {
            message: format!("{context}: {source}"),
            source,
        }
    }

    /// Converts into duroxide's error type, tagged with the failed operation.
    pub(crate) fn into_provider_error(self, operation: &str) -> ProviderError {
        if self.is_retryable() {
            ProviderError::retryable(operation, self.to_string())
        } else {
            ProviderError::permanent(operation, self.to_string())
        }
    }
}

fn diesel_error_is_retryable(e: &DieselError) -> bool {
    match e {
        DieselError::DatabaseError(kind, _) => !matches!(
            kind,
            DatabaseErrorKind::UniqueViolation
                | DatabaseErrorKind::ForeignKeyViolation
                | DatabaseErrorKind::NotNullViolation
                | DatabaseErrorKind::CheckViolation
                | DatabaseErrorKind::RestrictViolation
                | DatabaseErrorKind::ExclusionViolation
        ),
        // The outcome of the commit is unknown, or the connection's
        // transaction state is: a new connection may succeed.
        DieselError::BrokenTransactionManager | DieselError::RollbackErrorOnCommit { .. } => true,
        _ => false,
    }
}

fn schema_mismatch_message(schema: &str, missing: &[String], unknown: &[String]) -> String {
    let mut message = format!("schema {schema:?} does not match this build of duroxide-diesel");
    if !unknown.is_empty() {
        message.push_str(&format!(
            "; it has migrations this build does not know ({}): a newer version of duroxide-diesel \
             migrated it, so run that version (or newer) instead",
            unknown.join(", ")
        ));
    }
    if !missing.is_empty() {
        message.push_str(&format!(
            "; it lacks migrations {}: apply them first (MigrationMode::Apply with a role that may \
             run DDL, or the diesel CLI as described in the README)",
            missing.join(", ")
        ));
    }
    message
}

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn db(kind: DatabaseErrorKind) -> Error {
        Error::Database(DieselError::DatabaseError(
            kind,
            Box::new("message text in any language".to_owned()),
        ))
    }

    #[test]
    fn server_and_network_failures_are_retryable_whatever_the_message() {
        for kind in [
            DatabaseErrorKind::Unknown,
            DatabaseErrorKind::SerializationFailure,
            DatabaseErrorKind::ReadOnlyTransaction,
            DatabaseErrorKind::ClosedConnection,
            DatabaseErrorKind::UnableToSendCommand,
        ] {
            assert!(db(kind).is_retryable(), "{kind:?}");
        }
        for e in [
            Error::Timeout(Duration::from_secs(1)),
            Error::ConnectTimeout(Duration::from_secs(1)),
            Error::Connect {
                message: "refused".into(),
                source: "refused".into(),
            },
            Error::Pool {
                waited: Duration::from_secs(1),
            },
            Error::Database(DieselError::BrokenTransactionManager),
        ] {
            assert!(e.is_retryable(), "{e}");
        }
    }

    #[test]
    fn constraint_violations_and_own_verdicts_are_permanent() {
        for kind in [
            DatabaseErrorKind::UniqueViolation,
            DatabaseErrorKind::ForeignKeyViolation,
            DatabaseErrorKind::NotNullViolation,
            DatabaseErrorKind::CheckViolation,
            DatabaseErrorKind::RestrictViolation,
            DatabaseErrorKind::ExclusionViolation,
        ] {
            assert!(!db(kind).is_retryable(), "{kind:?}");
        }
        for e in [
            Error::LockLost,
            Error::Data("bad".into()),
            Error::InvalidOption("x".into()),
            Error::migration(Some("x"), "y"),
            Error::tls("x", "y"),
            Error::Refused("instance x not found".into()),
            Error::SchemaMismatch {
                schema: "s".into(),
                missing: vec!["1".into()],
                unknown: vec![],
            },
            Error::Database(DieselError::NotFound),
        ] {
            assert!(!e.is_retryable(), "{e}");
        }
    }

    #[test]
    fn migration_failures_keep_their_source() {
        use std::error::Error as _;
        let e = Error::migration(
            Some("could not take the migration lock of schema dx"),
            DieselError::BrokenTransactionManager,
        );
        assert!(!e.is_retryable() && !e.is_before_send());
        assert!(
            e.to_string().starts_with(
                "schema migration failed: could not take the migration lock of schema dx: "
            ),
            "{e}"
        );
        let source = e.source().expect("diesel's error");
        assert!(source.is::<DieselError>(), "{source:?}");
        // The migration harness reports boxed errors; the box is not wrapped again.
        let boxed: BoxError = Box::new(std::io::Error::other("disk gone"));
        let e = Error::migration(None, boxed);
        assert_eq!(e.to_string(), "schema migration failed: disk gone");
        assert!(e.source().expect("the I/O error").is::<std::io::Error>());
    }

    #[test]
    fn refusals_are_permanent_and_say_only_why() {
        let e = Error::Refused("instance x not found".into());
        assert!(!e.is_retryable() && !e.is_before_send());
        assert_eq!(e.to_string(), "instance x not found");
        let p = e.into_provider_error("get_instance_info");
        assert!(!p.is_retryable());
        assert_eq!(
            p.to_string(),
            ProviderError::permanent("get_instance_info", "instance x not found").to_string()
        );
    }

    #[test]
    fn schema_mismatch_names_what_is_missing_and_unknown() {
        let e = Error::SchemaMismatch {
            schema: "dx".into(),
            missing: vec!["20261126000001".into()],
            unknown: vec!["29990101000000".into()],
        };
        let text = e.to_string();
        assert!(text.contains("\"dx\""), "{text}");
        assert!(text.contains("lacks migrations 20261126000001"), "{text}");
        assert!(text.contains("does not know (29990101000000)"), "{text}");
        let only_missing = Error::SchemaMismatch {
            schema: "dx".into(),
            missing: vec!["1".into()],
            unknown: vec![],
        }
        .to_string();
        assert!(!only_missing.contains("newer"), "{only_missing}");
    }

    #[test]
    fn a_message_mentioning_connections_does_not_make_an_error_retryable() {
        let e = Error::Database(DieselError::DatabaseError(
            DatabaseErrorKind::CheckViolation,
            Box::new("connection terminated deadlock detected".to_owned()),
        ));
        assert!(!e.is_retryable());
    }
}

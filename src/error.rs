//! The crate's error type and its mapping onto duroxide's [`ProviderError`].

use std::time::Duration;

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use duroxide::providers::ProviderError;

/// Everything that can go wrong in this provider.
///
/// Every variant is classified as retryable (the same call may succeed later:
/// lost connection, serialization failure, deadlock, pool or statement
/// timeout) or permanent (bad input, bad data, constraint violation, invalid
/// lock token); see [`Error::is_retryable`].
#[derive(Debug, thiserror::Error)]
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

    /// A connection to the server could not be established.
    #[error("could not connect to PostgreSQL: {0}")]
    Connect(String),

    /// Establishing a connection took longer than the connection timeout.
    #[error("timed out after {0:?} connecting to PostgreSQL")]
    ConnectTimeout(Duration),

    /// No pooled connection became available within the connection timeout.
    #[error("no database connection available: {0}")]
    Pool(String),

    /// Applying the embedded schema migrations failed.
    #[error("schema migration failed: {0}")]
    Migration(String),

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
}

impl Error {
    /// Whether retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect(_) | Error::ConnectTimeout(_) | Error::Pool(_) => true,
            Error::Database(e) => diesel_error_is_retryable(e),
            Error::InvalidSchemaName { .. }
            | Error::InvalidUrl(_)
            | Error::InvalidOption(_)
            | Error::Migration(_)
            | Error::Data(_)
            | Error::LockLost => false,
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
        DieselError::DatabaseError(kind, info) => match kind {
            DatabaseErrorKind::SerializationFailure | DatabaseErrorKind::ClosedConnection => true,
            DatabaseErrorKind::UniqueViolation
            | DatabaseErrorKind::ForeignKeyViolation
            | DatabaseErrorKind::NotNullViolation
            | DatabaseErrorKind::CheckViolation
            | DatabaseErrorKind::ReadOnlyTransaction => false,
            _ => {
                // SQLSTATEs diesel does not classify: deadlock (40P01),
                // statement timeout / cancel (57014), admin shutdown (57P01),
                // lock timeout (55P03), too many connections (53300).
                let msg = info.message();
                msg.contains("deadlock detected")
                    || msg.contains("canceling statement")
                    || msg.contains("terminating connection")
                    || msg.contains("lock timeout")
                    || msg.contains("could not obtain lock")
                    || msg.contains("too many clients")
                    || msg.contains("connection")
            }
        },
        DieselError::BrokenTransactionManager => true,
        _ => false,
    }
}

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

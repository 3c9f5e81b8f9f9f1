//! One-off SQL on a new connection: setup, inspection and cleanup of the
//! schemas that tests and examples create.

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};

/// The error of [`execute`] and [`drop_schema`]: connecting or running SQL
/// failed. Displays as the underlying error.
#[derive(Debug)]
pub struct Error(Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// A fresh random schema name: `prefix`, an underscore and 16 hex digits.
pub fn unique_schema(prefix: &str) -> String {
    format!("{prefix}_{:016x}", rand::random::<u64>())
}

/// Runs one SQL batch (one or more statements) on a new connection to `url`.
pub async fn execute(url: &str, sql: &str) -> Result<(), Error> {
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .map_err(|e| Error(e.into()))?;
    conn.batch_execute(sql).await.map_err(|e| Error(e.into()))
}

/// Drops `schema` and everything in it, if it exists.
pub async fn drop_schema(url: &str, schema: &str) -> Result<(), Error> {
    let quoted = schema.replace('"', "\"\"");
    execute(url, &format!("DROP SCHEMA IF EXISTS \"{quoted}\" CASCADE")).await
}

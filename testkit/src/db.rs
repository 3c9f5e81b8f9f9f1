//! One-off SQL on a new connection: setup, inspection and cleanup of the
//! schemas that tests and examples create.

use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

/// The error of [`execute`], [`scalar`] and [`drop_schema`]: connecting or running SQL
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
///
/// A provider that was just dropped may still be finishing a statement on
/// that schema (for example releasing the lock of a fetch its stopping
/// runtime abandoned), which can deadlock with the drop; the server aborts
/// one of the two, so a failed drop is tried again, up to five times.
pub async fn drop_schema(url: &str, schema: &str) -> Result<(), Error> {
    let quoted = schema.replace('"', "\"\"");
    let sql = format!("SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS \"{quoted}\" CASCADE");
    let mut attempt = 1;
    loop {
        match execute(url, &sql).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 5 => {
                eprintln!("drop schema {schema} (attempt {attempt}) failed: {e}; trying again");
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The first column of the first row of `query` as text (`None` for no row
/// or NULL), on a new connection to `url`.
pub async fn scalar(url: &str, query: &str) -> Result<Option<String>, Error> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        v: Option<String>,
    }
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .map_err(|e| Error(e.into()))?;
    let rows: Vec<Row> = diesel::sql_query(format!("SELECT ({query})::text AS v"))
        .load(&mut conn)
        .await
        .map_err(|e| Error(e.into()))?;
    Ok(rows.into_iter().next().and_then(|r| r.v))
}

//! The bb8 pool of diesel-async connections and per-connection setup.

use std::str::FromStr;
use std::time::Duration;

use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use futures_util::FutureExt;

use crate::error::{Error, Result};
use crate::options::Options;

/// The pool type used by the provider.
pub(crate) type Pool = bb8::Pool<AsyncDieselConnectionManager<AsyncPgConnection>>;
/// A connection checked out of [`Pool`].
pub(crate) type PooledConn<'a> =
    bb8::PooledConnection<'a, AsyncDieselConnectionManager<AsyncPgConnection>>;

/// Parses the URL the way the driver will, so a malformed URL fails up front
/// with a clear message instead of on first use.
pub(crate) fn validate_url(url: &str) -> Result<()> {
    tokio_postgres::Config::from_str(url)
        .map(|_| ())
        .map_err(|e| Error::InvalidUrl(e.to_string()))
}

/// The statements every new connection runs once: pin the provider schema
/// first in `search_path` and apply the session options.
pub(crate) fn session_setup_sql(options: &Options) -> String {
    let mut sql = format!("SET search_path TO \"{}\"", options.schema);
    if let Some(timeout) = options.statement_timeout {
        sql.push_str(&format!(
            "; SET statement_timeout = {}",
            timeout.as_millis()
        ));
    }
    if let Some(name) = &options.application_name {
        sql.push_str(&format!(
            "; SET application_name = '{}'",
            name.replace('\'', "''")
        ));
    }
    sql
}

/// Opens one connection and runs the session setup, bounded by the connect timeout.
pub(crate) async fn connect(
    url: &str,
    setup_sql: &str,
    timeout: Duration,
) -> Result<AsyncPgConnection> {
    let attempt = async {
        let mut conn = AsyncPgConnection::establish(url)
            .await
            .map_err(|e| Error::Connect(e.to_string()))?;
        conn.batch_execute(setup_sql).await?;
        Ok::<_, Error>(conn)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| Error::ConnectTimeout(timeout))?
}

/// Builds the pool. Connections are opened lazily and never pinged on
/// checkout: a hot-path call costs exactly its own statement.
pub(crate) async fn build(url: &str, options: &Options) -> Result<Pool> {
    let setup_sql = session_setup_sql(options);
    let connect_timeout = options.connect_timeout;
    let mut config = ManagerConfig::<AsyncPgConnection>::default();
    config.recycling_method = RecyclingMethod::Fast;
    config.custom_setup = Box::new(move |url| {
        let url = url.to_owned();
        let setup_sql = setup_sql.clone();
        async move {
            connect(&url, &setup_sql, connect_timeout)
                .await
                .map_err(|e| match e {
                    Error::Connect(msg) => diesel::ConnectionError::BadConnection(msg),
                    other => diesel::ConnectionError::BadConnection(other.to_string()),
                })
        }
        .boxed()
    });
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
    let pool = bb8::Pool::builder()
        .max_size(options.max_connections)
        .min_idle(None)
        .test_on_check_out(false)
        .connection_timeout(options.connect_timeout)
        .build(manager)
        .await
        .map_err(|e| Error::Pool(e.to_string()))?;
    Ok(pool)
}

/// Checks out a connection, mapping pool failures into [`Error`].
pub(crate) async fn get(pool: &Pool) -> Result<PooledConn<'_>> {
    pool.get().await.map_err(|e| Error::Pool(e.to_string()))
}

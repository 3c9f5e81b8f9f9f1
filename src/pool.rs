//! The bb8 pool of diesel-async connections and per-connection setup.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
use futures_util::FutureExt;
use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};
use crate::options::Options;

/// The pool type used by the provider.
pub(crate) type Pool = bb8::Pool<AsyncDieselConnectionManager<AsyncPgConnection>>;
/// A connection checked out of [`Pool`].
pub(crate) type PooledConn<'a> =
    bb8::PooledConnection<'a, AsyncDieselConnectionManager<AsyncPgConnection>>;

/// Parses the URL the way the driver will, so a malformed URL fails up front
/// with a clear message instead of on first use.
pub(crate) fn parse_url(url: &str) -> Result<tokio_postgres::Config> {
    tokio_postgres::Config::from_str(url).map_err(|e| Error::InvalidUrl(e.to_string()))
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

/// Everything needed to open a ready connection: used by the pool, the
/// migrator and the LISTEN connection alike.
#[derive(Clone)]
pub(crate) struct Connector {
    config: tokio_postgres::Config,
    setup_sql: Arc<str>,
    timeout: Duration,
    tls: Arc<rustls::ClientConfig>,
}

impl Connector {
    pub(crate) fn new(url: &str, options: &Options) -> Result<Self> {
        Ok(Self {
            config: parse_url(url)?,
            setup_sql: session_setup_sql(options).into(),
            timeout: options.connect_timeout,
            tls: crate::tls::client_config(options.tls_ca_pem.as_deref())?,
        })
    }

    /// The per-connection session setup statements.
    pub(crate) fn setup_sql(&self) -> &str {
        &self.setup_sql
    }

    /// Opens one connection (TLS unless the URL says `sslmode=disable`) and
    /// runs `setup_sql` (default: the session setup), bounded by the connect timeout.
    pub(crate) async fn connect_with(&self, setup_sql: Option<&str>) -> Result<AsyncPgConnection> {
        let attempt = async {
            let mut conn = if self.config.get_ssl_mode() == SslMode::Disable {
                let (client, connection) =
                    self.config.connect(NoTls).await.map_err(connect_error)?;
                AsyncPgConnection::try_from_client_and_connection(client, connection).await
            } else {
                let tls = MakeRustlsConnect::new((*self.tls).clone());
                let (client, connection) = self.config.connect(tls).await.map_err(connect_error)?;
                AsyncPgConnection::try_from_client_and_connection(client, connection).await
            }
            .map_err(|e| Error::Connect(e.to_string()))?;
            conn.batch_execute(setup_sql.unwrap_or(&self.setup_sql))
                .await?;
            Ok::<_, Error>(conn)
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .map_err(|_| Error::ConnectTimeout(self.timeout))?
    }

    /// Opens one connection with the session setup applied.
    pub(crate) async fn connect(&self) -> Result<AsyncPgConnection> {
        self.connect_with(None).await
    }
}

fn connect_error(e: tokio_postgres::Error) -> Error {
    // tokio-postgres' Display drops the server's message; its source has it.
    match std::error::Error::source(&e) {
        Some(source) => Error::Connect(format!("{e}: {source}")),
        None => Error::Connect(e.to_string()),
    }
}

/// Builds the pool. Connections are opened lazily and never pinged on
/// checkout: a hot-path call costs exactly its own statement.
pub(crate) async fn build(connector: &Connector, options: &Options) -> Result<Pool> {
    let mut config = ManagerConfig::<AsyncPgConnection>::default();
    config.recycling_method = RecyclingMethod::Fast;
    let connector = connector.clone();
    config.custom_setup = Box::new(move |_url| {
        let connector = connector.clone();
        async move {
            connector.connect().await.map_err(|e| match e {
                Error::Connect(msg) => diesel::ConnectionError::BadConnection(msg),
                other => diesel::ConnectionError::BadConnection(other.to_string()),
            })
        }
        .boxed()
    });
    // The URL is unused: connections come from `custom_setup`.
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config("", config);
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

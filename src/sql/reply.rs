//! Reading a statement's reply to its end.
//!
//! diesel-async's `get_result` resolves as soon as the first row has
//! arrived and drops the rest of the reply. The server sends the row before
//! it commits the statement's implicit transaction; it holds its output in
//! an 8 KB buffer until the commit, except when that buffer fills up. So a
//! row whose end lands near a multiple of 8 KB (a turn with a history of
//! some kilobytes, say) reaches the client while the commit, a WAL flush
//! with `synchronous_commit` on, is still running. Acting on it at once,
//! as duroxide does when it acknowledges a fetched turn on another pooled
//! connection, that caller could find the lock the fetch took not yet
//! visible and be told it was lost, which fails the orchestration.
//! [`WholeReply::one`] resolves only once the reply has ended with
//! `ReadyForQuery`, which the server sends after the commit, so whatever a
//! call returns is committed and visible to every later statement.

use diesel::QueryResult;
use diesel_async::AsyncPgConnection;
use diesel_async::RunQueryDsl;
use diesel_async::methods::LoadQuery;
use futures_util::future::BoxFuture;

/// See the module docs.
pub(crate) trait WholeReply<'q, U>:
    LoadQuery<'q, AsyncPgConnection, U> + Sized + Send + 'q
where
    U: Send + 'q,
{
    /// The first row of the reply, once the whole reply (and so the
    /// statement's commit) has arrived; `NotFound` without a row.
    fn one<'c>(self, conn: &'c mut AsyncPgConnection) -> BoxFuture<'c, QueryResult<U>>
    where
        'q: 'c,
    {
        Box::pin(async move {
            // `load` collects the row stream, which tokio-postgres ends at
            // `ReadyForQuery`.
            let rows: Vec<U> = RunQueryDsl::load(self, conn).await?;
            rows.into_iter()
                .next()
                .ok_or(diesel::result::Error::NotFound)
        })
    }
}

impl<'q, U, T> WholeReply<'q, U> for T
where
    T: LoadQuery<'q, AsyncPgConnection, U> + Send + 'q,
    U: Send + 'q,
{
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use diesel::dsl::sql;
    use diesel::sql_types::Text;
    use diesel_async::{AsyncConnection, SimpleAsyncConnection};

    use super::*;

    /// How long the commit of `f` takes (a deferred trigger sleeps).
    const COMMIT: Duration = Duration::from_millis(50);

    /// A row of each size across an 8 KB boundary, from a statement whose
    /// commit takes `COMMIT`: `get_result` returns some of them before the
    /// commit, `one` none.
    #[tokio::test]
    #[allow(clippy::disallowed_methods)] // shows what `one` prevents
    async fn one_returns_only_once_the_statement_committed() {
        let url = duroxide_diesel_testkit::pg::database_url();
        let schema = duroxide_diesel_testkit::db::unique_schema("dxreply");
        let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
        conn.batch_execute(&format!(
            "CREATE SCHEMA {schema}; SET search_path = {schema};
             CREATE TABLE t (x int);
             CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN PERFORM pg_sleep({}); RETURN NULL; END $$;
             CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON t
                 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow();
             CREATE FUNCTION f(n int) RETURNS text LANGUAGE plpgsql AS $$
                 BEGIN INSERT INTO t VALUES (n); RETURN repeat('x', n); END $$;",
            COMMIT.as_secs_f64()
        ))
        .await
        .unwrap();
        let mut early_get_result = Vec::new();
        for n in 8140..8200 {
            let query = || diesel::select(sql::<Text>(&format!("f({n})")));
            // Each statement starts once the previous reply has ended.
            conn.batch_execute("SELECT 1").await.unwrap();
            let t = Instant::now();
            let row: String = RunQueryDsl::get_result(query(), &mut conn).await.unwrap();
            assert_eq!(row.len(), n as usize);
            if t.elapsed() < COMMIT {
                early_get_result.push(n);
            }
            conn.batch_execute("SELECT 1").await.unwrap();
            let t = Instant::now();
            let row: String = query().one(&mut conn).await.unwrap();
            assert_eq!(row.len(), n as usize);
            assert!(
                t.elapsed() >= COMMIT,
                "a {n}-byte row was returned {:?} after it was asked for, before its commit",
                t.elapsed()
            );
        }
        // The hazard is real: without reading to the end, some sizes come
        // back before their commit.
        assert!(!early_get_result.is_empty(), "no size crossed the boundary");
        conn.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .unwrap();
    }
}

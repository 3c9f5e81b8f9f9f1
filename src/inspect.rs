//! Operator reads that [`ProviderAdmin`](duroxide::providers::ProviderAdmin)
//! does not offer: queue status with locks and ages, instance listings with
//! filters, the database's connections, and previews of deletes and prunes.
//!
//! These back the `duroxide-diesel` command (feature `cli`) and are public
//! so that a service can show the same numbers on its own dashboard. Every
//! call runs within the provider's `admin_call_timeout`.

use std::time::Duration;

use diesel::dsl::{self, count_star, min, now, select};
use diesel::pg::data_types::PgTimestamp;
use diesel::prelude::*;
use diesel::sql_types::Timestamptz;
use diesel_async::{AsyncConnection, RunQueryDsl};
use duroxide::providers::{DeleteInstanceResult, InstanceFilter, PruneOptions, PruneResult};
use serde_json::Value;

use crate::PostgresProvider;
use crate::error::{Error, Result};
use crate::numeric;
use crate::pool::{Budget, bounded};
use crate::provider::admin::decode;
use crate::schema::{executions, instances, orchestrator_queue, worker_queue};
use crate::sql::documents::{DeleteCounts, PruneCounts};
use crate::sql::procedures::{
    dx_delete_instance, dx_delete_instances_bulk, dx_prune_executions_bulk,
};
use crate::sql::reply::WholeReply;

diesel::table! {
    /// The server's view of its sessions; only the columns read here.
    pg_catalog.pg_stat_activity (pid) {
        pid -> Int4,
        datname -> Nullable<Text>,
        application_name -> Nullable<Text>,
        state -> Nullable<Text>,
    }
}

diesel::define_sql_function! {
    /// The database of the current session (`name`, read as text).
    fn current_database() -> Text;
}

/// Messages of one queue by state, from one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueCounts {
    /// Unlocked messages a fetch could take now.
    pub ready: u64,
    /// Unlocked messages scheduled for later: durable timers and retries
    /// delayed by an abandon.
    pub scheduled: u64,
    /// Messages carrying a lock token: being processed, or locked by a
    /// worker that stopped and whose lock has not been reclaimed yet.
    pub locked: u64,
    /// How long the oldest ready message has been ready (now minus its
    /// visibility time, by the server's clock); `None` when nothing is
    /// ready. A value that keeps growing means no dispatcher is taking work.
    pub oldest_ready_age: Option<Duration>,
}

/// Both queues of a provider's schema; see [`PostgresProvider::queue_status`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStatus {
    /// The orchestrator queue (new instances, events, timers, completions).
    pub orchestrator: QueueCounts,
    /// The worker queue (activities).
    pub worker: QueueCounts,
}

/// Sessions of one application name and state in the provider's database;
/// see [`PostgresProvider::database_connections`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionCount {
    /// `application_name` of the sessions (empty when none was set).
    pub application_name: String,
    /// `active`, `idle`, `idle in transaction`, ...; `None` when the role
    /// asking may not see other roles' session state (grant
    /// `pg_read_all_stats` to see it).
    pub state: Option<String>,
    /// Number of sessions.
    pub count: u64,
}

/// Which instances [`PostgresProvider::query_instances`] returns; every
/// criterion set must hold. Build it with the methods:
///
/// ```
/// let query = duroxide_diesel::InstanceQuery::new()
///     .status("Failed")
///     .name_prefix("Order")
///     .limit(20);
/// # let _ = query;
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct InstanceQuery {
    statuses: Vec<String>,
    name: Option<String>,
    name_prefix: Option<String>,
    completed_before: Option<u64>,
    roots_only: bool,
    limit: Option<u32>,
}

impl InstanceQuery {
    /// Every instance, newest first.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only instances whose current execution has this status (`Running`,
    /// `Completed`, `Failed`, ...); called again, any of the statuses.
    pub fn status(mut self, status: impl Into<String>) -> Self {
        self.statuses.push(status.into());
        self
    }

    /// Only instances of exactly this orchestration name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Only instances whose orchestration name starts with `prefix`
    /// (compared literally: `%` and `_` are not wildcards).
    pub fn name_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.name_prefix = Some(prefix.into());
        self
    }

    /// Only instances whose current execution completed before this time
    /// (milliseconds since the Unix epoch), the criterion of
    /// [`InstanceFilter::completed_before`].
    pub fn completed_before(mut self, unix_ms: u64) -> Self {
        self.completed_before = Some(unix_ms);
        self
    }

    /// Only root instances (not sub-orchestrations).
    pub fn roots_only(mut self) -> Self {
        self.roots_only = true;
        self
    }

    /// At most this many instances (default: all).
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }
}

/// One instance with its current execution; see
/// [`PostgresProvider::query_instances`]. Times are milliseconds since the
/// Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InstanceSummary {
    /// The instance id.
    pub instance_id: String,
    /// Orchestration name.
    pub orchestration_name: String,
    /// Orchestration version, if recorded.
    pub orchestration_version: Option<String>,
    /// Status of the current execution; `None` before its first turn is
    /// committed.
    pub status: Option<String>,
    /// The current execution id (more than 1 after continue-as-new).
    pub current_execution_id: u64,
    /// The parent instance of a sub-orchestration.
    pub parent_instance_id: Option<String>,
    /// When the instance was created.
    pub created_at: u64,
    /// When the current execution completed, if it has.
    pub completed_at: Option<u64>,
}

/// Join condition from an instance to its current execution.
#[dsl::auto_type]
fn current_execution() -> _ {
    executions::instance_id
        .eq(instances::instance_id)
        .and(executions::execution_id.eq(instances::current_execution_id))
}

/// `prefix` as a LIKE pattern matching itself literally, then anything.
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Ends a preview's transaction: carries the result out of a rolled-back
/// transaction, or the failure that rolled it back.
enum Preview {
    Done(Value),
    Failed(diesel::result::Error),
}

impl From<diesel::result::Error> for Preview {
    fn from(e: diesel::result::Error) -> Self {
        Preview::Failed(e)
    }
}

impl PostgresProvider {
    /// Ready, scheduled and locked messages and the age of the oldest ready
    /// message of both queues, in one statement.
    ///
    /// `ready` and `scheduled` are the numbers behind
    /// [`get_queue_depths`](duroxide::providers::ProviderAdmin::get_queue_depths)
    /// (its `timer_queue` is the sum of both `scheduled`). Counts read whole
    /// queue tables: poll every minute or so, not every second.
    pub async fn queue_status(&self) -> Result<QueueStatus> {
        use orchestrator_queue as oq;
        use worker_queue as wq;
        bounded(&self.db, Budget::Admin, async {
            let mut conn = self.db.lease(Budget::Admin).await?;
            #[allow(clippy::type_complexity)]
            let row: (
                (Option<i64>, Option<i64>, Option<i64>, Option<PgTimestamp>),
                (Option<i64>, Option<i64>, Option<i64>, Option<PgTimestamp>),
                PgTimestamp,
            ) = select((
                (
                    oq::table
                        .filter(oq::lock_token.is_null().and(oq::visible_at.le(now)))
                        .count()
                        .single_value(),
                    oq::table
                        .filter(oq::lock_token.is_null().and(oq::visible_at.gt(now)))
                        .count()
                        .single_value(),
                    oq::table
                        .filter(oq::lock_token.is_not_null())
                        .count()
                        .single_value(),
                    oq::table
                        .filter(oq::lock_token.is_null().and(oq::visible_at.le(now)))
                        .select(min(oq::visible_at))
                        .single_value(),
                ),
                (
                    wq::table
                        .filter(wq::lock_token.is_null().and(wq::visible_at.le(now)))
                        .count()
                        .single_value(),
                    wq::table
                        .filter(wq::lock_token.is_null().and(wq::visible_at.gt(now)))
                        .count()
                        .single_value(),
                    wq::table
                        .filter(wq::lock_token.is_not_null())
                        .count()
                        .single_value(),
                    wq::table
                        .filter(wq::lock_token.is_null().and(wq::visible_at.le(now)))
                        .select(min(wq::visible_at))
                        .single_value(),
                ),
                now.into_sql::<Timestamptz>(),
            ))
            .one(&mut conn)
            .await?;
            conn.finish().await?;
            let (orchestrator, worker, server_now) = row;
            let counts = |(ready, scheduled, locked, oldest): (
                Option<i64>,
                Option<i64>,
                Option<i64>,
                Option<PgTimestamp>,
            )|
             -> Result<QueueCounts> {
                let n = |v: Option<i64>| numeric::from_bigint(v.unwrap_or(0), "queue count");
                Ok(QueueCounts {
                    ready: n(ready)?,
                    scheduled: n(scheduled)?,
                    locked: n(locked)?,
                    // A visibility time after the statement's `now` cannot be
                    // ready; clamp clock noise to zero instead of failing.
                    oldest_ready_age: oldest.map(|t| {
                        Duration::from_micros(u64::try_from(server_now.0 - t.0).unwrap_or(0))
                    }),
                })
            };
            Ok(QueueStatus {
                orchestrator: counts(orchestrator)?,
                worker: counts(worker)?,
            })
        })
        .await
    }

    /// Sessions in the provider's database (all applications, this call's
    /// own included) by `application_name` and state, from
    /// `pg_stat_activity`. Set
    /// [`application_name`](crate::PostgresProviderBuilder::application_name)
    /// on each service to tell their connections apart.
    pub async fn database_connections(&self) -> Result<Vec<ConnectionCount>> {
        use pg_stat_activity as a;
        bounded(&self.db, Budget::Admin, async {
            let mut conn = self.db.lease(Budget::Admin).await?;
            let rows: Vec<(Option<String>, Option<String>, i64)> = a::table
                .filter(a::datname.eq(current_database().nullable()))
                .group_by((a::application_name, a::state))
                .select((a::application_name, a::state, count_star()))
                .order_by((a::application_name, a::state))
                .load(&mut conn)
                .await?;
            conn.finish().await?;
            rows.into_iter()
                .map(|(application_name, state, count)| {
                    Ok(ConnectionCount {
                        application_name: application_name.unwrap_or_default(),
                        state,
                        count: numeric::from_bigint(count, "connection count")?,
                    })
                })
                .collect()
        })
        .await
    }

    /// Instances matching `query` with their current execution, newest
    /// first, in one statement.
    pub async fn query_instances(&self, query: &InstanceQuery) -> Result<Vec<InstanceSummary>> {
        let limit = query
            .limit
            .map(|l| numeric::to_bigint(l.into(), "limit"))
            .transpose()?;
        let completed_before = query
            .completed_before
            .map(|ms| numeric::unix_ms(ms, "completed_before"))
            .transpose()?;
        bounded(&self.db, Budget::Admin, async {
            let mut q = instances::table
                .left_join(executions::table.on(current_execution()))
                .into_boxed();
            if !query.statuses.is_empty() {
                q = q.filter(executions::status.nullable().eq_any(&query.statuses));
            }
            if let Some(name) = &query.name {
                q = q.filter(instances::orchestration_name.eq(name));
            }
            if let Some(prefix) = &query.name_prefix {
                q = q.filter(instances::orchestration_name.like(like_prefix(prefix)));
            }
            if let Some(ms) = completed_before {
                // Microseconds since PostgreSQL's epoch (2000-01-01).
                let before = PgTimestamp((ms - 946_684_800_000) * 1000);
                q = q.filter(executions::completed_at.lt(before));
            }
            if query.roots_only {
                q = q.filter(instances::parent_instance_id.is_null());
            }
            if let Some(limit) = limit {
                q = q.limit(limit);
            }
            let mut conn = self.db.lease(Budget::Admin).await?;
            #[allow(clippy::type_complexity)]
            let rows: Vec<(
                String,
                String,
                Option<String>,
                Option<String>,
                i64,
                Option<String>,
                PgTimestamp,
                Option<PgTimestamp>,
            )> = q
                .order_by((instances::created_at.desc(), instances::instance_id.asc()))
                .select((
                    instances::instance_id,
                    instances::orchestration_name,
                    instances::orchestration_version,
                    executions::status.nullable(),
                    instances::current_execution_id,
                    instances::parent_instance_id,
                    instances::created_at,
                    executions::completed_at.nullable(),
                ))
                .load(&mut conn)
                .await?;
            conn.finish().await?;
            rows.into_iter()
                .map(
                    |(id, name, version, status, current, parent, created, done)| {
                        Ok(InstanceSummary {
                            instance_id: id,
                            orchestration_name: name,
                            orchestration_version: version,
                            status,
                            current_execution_id: numeric::from_bigint(current, "execution_id")?,
                            parent_instance_id: parent,
                            created_at: numeric::from_timestamp(created, "created_at")?,
                            completed_at: done
                                .map(|t| numeric::from_timestamp(t, "completed_at"))
                                .transpose()?,
                        })
                    },
                )
                .collect()
        })
        .await
    }

    /// What [`delete_instance`](duroxide::providers::ProviderAdmin::delete_instance)
    /// would delete, without deleting: the same procedure runs in a
    /// transaction that is rolled back. See
    /// [`preview_prune_executions_bulk`](Self::preview_prune_executions_bulk)
    /// for what a preview costs.
    pub async fn preview_delete_instance(
        &self,
        instance_id: &str,
        force: bool,
    ) -> Result<DeleteInstanceResult> {
        let doc = self
            .preview(select(dx_delete_instance(instance_id.to_owned(), force)))
            .await?;
        Ok(decode::<DeleteCounts>(doc)?.into())
    }

    /// What [`delete_instance_bulk`](duroxide::providers::ProviderAdmin::delete_instance_bulk)
    /// would delete for `filter`, without deleting. See
    /// [`preview_prune_executions_bulk`](Self::preview_prune_executions_bulk)
    /// for what a preview costs.
    pub async fn preview_delete_instance_bulk(
        &self,
        filter: &InstanceFilter,
    ) -> Result<DeleteInstanceResult> {
        if filter.instance_ids.as_ref().is_some_and(Vec::is_empty) {
            return Ok(DeleteInstanceResult::default());
        }
        let limit = numeric::to_int(filter.limit.unwrap_or(1000), "limit")?;
        let completed_before = filter
            .completed_before
            .map(|ms| numeric::unix_ms(ms, "completed_before"))
            .transpose()?;
        let doc = self
            .preview(select(dx_delete_instances_bulk(
                filter.instance_ids.clone(),
                completed_before,
                limit,
            )))
            .await?;
        Ok(decode::<DeleteCounts>(doc)?.into())
    }

    /// What [`prune_executions_bulk`](duroxide::providers::ProviderAdmin::prune_executions_bulk)
    /// would delete for `filter` and `options`, without deleting.
    ///
    /// The counts are exact: the same procedure runs, in a transaction that
    /// is rolled back. So a preview costs what the real call costs and holds
    /// the same row locks until it ends (a turn of an affected instance
    /// waits for it); preview in batches, as the real call is run.
    pub async fn preview_prune_executions_bulk(
        &self,
        filter: &InstanceFilter,
        options: &PruneOptions,
    ) -> Result<PruneResult> {
        if filter.instance_ids.as_ref().is_some_and(Vec::is_empty) {
            return Ok(PruneResult::default());
        }
        let limit = numeric::to_int(filter.limit.unwrap_or(1000), "limit")?;
        let ms = |v: Option<u64>, what| v.map(|ms| numeric::unix_ms(ms, what)).transpose();
        let keep_last = options
            .keep_last
            .map(|k| numeric::to_int(k, "keep_last"))
            .transpose()?;
        let doc = self
            .preview(select(dx_prune_executions_bulk(
                filter.instance_ids.clone(),
                ms(filter.completed_before, "completed_before")?,
                limit,
                keep_last,
                ms(options.completed_before, "completed_before")?,
            )))
            .await?;
        Ok(decode::<PruneCounts>(doc)?.into())
    }

    /// Runs one procedure call in a transaction that is always rolled back,
    /// returning its result document.
    async fn preview<Q>(&self, query: Q) -> Result<Value>
    where
        Q: diesel_async::methods::LoadQuery<'static, diesel_async::AsyncPgConnection, Value>
            + Send
            + 'static,
    {
        bounded(&self.db, Budget::Admin, async {
            let mut conn = self.db.lease(Budget::Admin).await?;
            let outcome = conn
                .transaction::<std::convert::Infallible, Preview, _>(async move |c| {
                    let doc: Value = query.one(c).await?;
                    Err(Preview::Done(doc))
                })
                .await;
            conn.finish().await?;
            match outcome {
                Err(Preview::Done(doc)) => Ok(doc),
                Err(Preview::Failed(e)) => Err(Error::from(e)),
                Ok(never) => match never {},
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_prefixes_match_literally() {
        assert_eq!(like_prefix("Order"), "Order%");
        assert_eq!(like_prefix("a_b%c\\"), "a\\_b\\%c\\\\%");
    }
}

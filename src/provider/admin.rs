//! ProviderAdmin: listing, inspection, deletion and pruning.
//!
//! Reads are diesel queries over [`crate::schema`]. Deletion and pruning
//! change several tables at once, so each call is one stored procedure from
//! `migrations/*_admin_procedures` (see [`crate::sql::procedures`]): one
//! statement, hence one transaction, so a refused or failed call changes
//! nothing.

use diesel::dsl::{self, max, select};
use diesel::pg::data_types::PgTimestamp;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use duroxide::Event;
use duroxide::providers::{
    DeleteInstanceResult, ExecutionInfo, InstanceFilter, InstanceInfo, InstanceTree, ProviderAdmin,
    ProviderError, PruneOptions, PruneResult, QueueDepths, SystemMetrics,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{codec, history as history_reads};
use crate::PostgresProvider;
use crate::error::{Error, Result};
use crate::numeric;
use crate::observe::{Call, Report, observe};
use crate::pool::{Budget, bounded};
use crate::schema::{executions, history, instances};
use crate::sql::documents::{AdminOutcome, DeleteCounts, PruneCounts};
use crate::sql::procedures::*;
use crate::sql::reply::WholeReply;

/// Instances a bulk call considers when the filter sets no limit, as
/// [`InstanceFilter::limit`] documents.
const DEFAULT_BULK_LIMIT: u32 = 1000;

/// A procedure result: its counts, or the contract's refusal.
pub(crate) fn decode<T: DeserializeOwned>(doc: Value) -> Result<T> {
    match codec::from_json::<AdminOutcome<T>>(doc, "procedure result")? {
        AdminOutcome::Refused { error } => Err(Error::Refused(error)),
        AdminOutcome::Done(value) => Ok(value),
    }
}

impl From<DeleteCounts> for DeleteInstanceResult {
    fn from(c: DeleteCounts) -> Self {
        DeleteInstanceResult {
            instances_deleted: c.instances_deleted,
            executions_deleted: c.executions_deleted,
            events_deleted: c.events_deleted,
            queue_messages_deleted: c.queue_messages_deleted,
        }
    }
}

impl From<PruneCounts> for PruneResult {
    fn from(c: PruneCounts) -> Self {
        PruneResult {
            instances_processed: c.instances_processed,
            executions_deleted: c.executions_deleted,
            events_deleted: c.events_deleted,
        }
    }
}

/// Join condition from an instance to its current execution.
#[dsl::auto_type]
fn current_execution() -> _ {
    executions::instance_id
        .eq(instances::instance_id)
        .and(executions::execution_id.eq(instances::current_execution_id))
}

/// A caller's cut-off time as the procedures' BIGINT milliseconds.
fn cutoff_arg(ms: Option<u64>, what: &str) -> Result<Option<i64>> {
    ms.map(|v| numeric::unix_ms(v, what)).transpose()
}

/// A caller's count as the procedures' INT.
fn count_arg(v: Option<u32>, what: &str) -> Result<Option<i32>> {
    v.map(|v| numeric::to_int(v, what)).transpose()
}

async fn list_instances(p: &PostgresProvider) -> Result<Vec<String>> {
    let mut conn = p.db.lease(Budget::Admin).await?;
    let rows = instances::table
        .order(instances::created_at.desc())
        .select(instances::instance_id)
        .load(&mut conn)
        .await?;
    conn.finish().await?;
    Ok(rows)
}

async fn list_instances_by_status(p: &PostgresProvider, status: &str) -> Result<Vec<String>> {
    let mut conn = p.db.lease(Budget::Admin).await?;
    let rows = instances::table
        .inner_join(executions::table.on(current_execution()))
        .filter(executions::status.eq(status))
        .order(instances::created_at.desc())
        .select(instances::instance_id)
        .load(&mut conn)
        .await?;
    conn.finish().await?;
    Ok(rows)
}

async fn list_executions(p: &PostgresProvider, instance: &str) -> Result<Vec<u64>> {
    let mut conn = p.db.lease(Budget::Admin).await?;
    let ids: Vec<i64> = executions::table
        .filter(executions::instance_id.eq(instance))
        .order(executions::execution_id.asc())
        .select(executions::execution_id)
        .load(&mut conn)
        .await?;
    conn.finish().await?;
    ids.into_iter()
        .map(|id| numeric::from_bigint(id, "execution_id"))
        .collect()
}

/// The highest recorded execution id, 1 when there is none (duroxide's
/// convention for an instance that has not started yet).
async fn latest_execution_id(p: &PostgresProvider, instance: &str) -> Result<u64> {
    let mut conn = p.db.lease(Budget::Admin).await?;
    let latest: Option<i64> = executions::table
        .filter(executions::instance_id.eq(instance))
        .select(max(executions::execution_id))
        .one(&mut conn)
        .await?;
    conn.finish().await?;
    latest.map_or(Ok(1), |id| numeric::from_bigint(id, "execution_id"))
}

/// An instance joined with its current execution (absent if never acked).
#[derive(Queryable)]
struct InstanceRow {
    instance_id: String,
    orchestration_name: String,
    orchestration_version: Option<String>,
    current_execution_id: i64,
    created_at: PgTimestamp,
    updated_at: PgTimestamp,
    parent_instance_id: Option<String>,
    status: Option<String>,
    output: Option<String>,
}

async fn instance_info(p: &PostgresProvider, instance: &str) -> Result<InstanceInfo> {
    let mut conn = p.db.lease(Budget::Admin).await?;
    let row: Option<InstanceRow> = instances::table
        .left_join(executions::table.on(current_execution()))
        .filter(instances::instance_id.eq(instance))
        .select((
            instances::instance_id,
            instances::orchestration_name,
            instances::orchestration_version,
            instances::current_execution_id,
            instances::created_at,
            instances::updated_at,
            instances::parent_instance_id,
            executions::status.nullable(),
            executions::output.nullable(),
        ))
        .first(&mut conn)
        .await
        .optional()?;
    conn.finish().await?;
    let Some(row) = row else {
        return Err(Error::Refused(format!("instance {instance} not found")));
    };
    Ok(InstanceInfo {
        instance_id: row.instance_id,
        orchestration_name: row.orchestration_name,
        // The instance row is written together with its version, so a
        // missing one only comes from data written outside this provider.
        orchestration_version: row
            .orchestration_version
            .unwrap_or_else(|| "unknown".to_owned()),
        current_execution_id: numeric::from_bigint(
            row.current_execution_id,
            "current_execution_id",
        )?,
        status: row.status.unwrap_or_else(|| "Unknown".to_owned()),
        output: row.output,
        created_at: numeric::from_timestamp(row.created_at, "created_at")?,
        updated_at: numeric::from_timestamp(row.updated_at, "updated_at")?,
        parent_instance_id: row.parent_instance_id,
    })
}

/// One execution with the number of its history events.
#[derive(Queryable)]
struct ExecutionRow {
    status: String,
    output: Option<String>,
    started_at: PgTimestamp,
    completed_at: Option<PgTimestamp>,
    event_count: Option<i64>,
}

async fn execution_info(
    p: &PostgresProvider,
    instance: &str,
    execution_id: u64,
) -> Result<ExecutionInfo> {
    let exec = numeric::to_bigint(execution_id, "execution_id")?;
    let event_count = history::table
        .filter(history::instance_id.eq(instance))
        .filter(history::execution_id.eq(exec))
        .count()
        .single_value();
    let mut conn = p.db.lease(Budget::Admin).await?;
    let row: Option<ExecutionRow> = executions::table
        .filter(executions::instance_id.eq(instance))
        .filter(executions::execution_id.eq(exec))
        .select((
            executions::status,
            executions::output,
            executions::started_at,
            executions::completed_at,
            event_count,
        ))
        .first(&mut conn)
        .await
        .optional()?;
    conn.finish().await?;
    let Some(row) = row else {
        return Err(Error::Refused(format!(
            "execution {execution_id} of instance {instance} not found"
        )));
    };
    Ok(ExecutionInfo {
        execution_id,
        status: row.status,
        output: row.output,
        started_at: numeric::from_timestamp(row.started_at, "started_at")?,
        completed_at: row
            .completed_at
            .map(|t| numeric::from_timestamp(t, "completed_at"))
            .transpose()?,
        event_count: numeric::to_count(row.event_count.unwrap_or(0), "event count")?,
    })
}

/// Scalar subquery counts; NULL never occurs for `count(*)`.
#[derive(Queryable)]
struct MetricsRow {
    instances: Option<i64>,
    executions: Option<i64>,
    events: Option<i64>,
    running: Option<i64>,
    completed: Option<i64>,
    failed: Option<i64>,
}

/// All counters in one statement; instance statuses are those of each
/// instance's current execution.
async fn system_metrics(p: &PostgresProvider) -> Result<SystemMetrics> {
    let with_status = |status: &'static str| {
        instances::table
            .inner_join(executions::table.on(current_execution()))
            .filter(executions::status.eq(status))
            .count()
            .single_value()
    };
    let mut conn = p.db.lease(Budget::Admin).await?;
    let row: MetricsRow = select((
        instances::table.count().single_value(),
        executions::table.count().single_value(),
        history::table.count().single_value(),
        with_status("Running"),
        with_status("Completed"),
        with_status("Failed"),
    ))
    .one(&mut conn)
    .await?;
    conn.finish().await?;
    let n = |v: Option<i64>| numeric::from_bigint(v.unwrap_or(0), "count");
    Ok(SystemMetrics {
        total_instances: n(row.instances)?,
        total_executions: n(row.executions)?,
        running_instances: n(row.running)?,
        completed_instances: n(row.completed)?,
        failed_instances: n(row.failed)?,
        total_events: n(row.events)?,
    })
}

/// Unlocked messages per queue. Timers are delayed orchestrator messages,
/// so there is no separate timer queue to count.
/// Unlocked messages by when they can run: `orchestrator_queue` and
/// `worker_queue` count what a fetch could take now; `timer_queue` counts
/// unlocked messages of either queue scheduled for later (durable timers and
/// retries delayed by an abandon), which are not ready work. Locked messages
/// (being processed) are in none of them. Read by
/// [`PostgresProvider::queue_status`]: one statement, one snapshot.
async fn queue_depths(p: &PostgresProvider) -> Result<QueueDepths> {
    let status = p.queue_status().await?;
    let n = |v: u64| {
        usize::try_from(v).map_err(|_| Error::Data(format!("queue depth {v} out of range")))
    };
    Ok(QueueDepths {
        orchestrator_queue: n(status.orchestrator.ready)?,
        worker_queue: n(status.worker.ready)?,
        timer_queue: n(status.orchestrator.scheduled)? + n(status.worker.scheduled)?,
    })
}

async fn list_children(p: &PostgresProvider, instance: &str) -> Result<Vec<String>> {
    let mut conn = p.db.lease(Budget::Admin).await?;
    let rows = instances::table
        .filter(instances::parent_instance_id.eq(instance))
        .order(instances::instance_id.asc())
        .select(instances::instance_id)
        .load(&mut conn)
        .await?;
    conn.finish().await?;
    Ok(rows)
}

async fn parent_id(p: &PostgresProvider, instance: &str) -> Result<Option<String>> {
    let mut conn = p.db.lease(Budget::Admin).await?;
    let parent = instances::table
        .filter(instances::instance_id.eq(instance))
        .select(instances::parent_instance_id)
        .first(&mut conn)
        .await
        .optional()?;
    conn.finish().await?;
    parent.ok_or_else(|| Error::Refused(format!("instance {instance} not found")))
}

/// The whole tree in one recursive query rather than one round trip per node.
async fn instance_tree(p: &PostgresProvider, root: &str) -> Result<InstanceTree> {
    let mut conn = p.db.lease(Budget::Admin).await?;
    let all_ids: Vec<String> = select(dx_instance_tree(root)).one(&mut conn).await?;
    conn.finish().await?;
    Ok(InstanceTree {
        root_id: root.to_owned(),
        all_ids,
    })
}

/// Runs an instance deletion: no cached history confirmed before it ends
/// answers a read (see `history_cache`, "Confirmed reads"), and no custom
/// status read before it ends answers a status call (see `read_status`),
/// even if its future is dropped. Reads while it runs are concurrent with it.
async fn deleting<T>(p: &PostgresProvider, delete: impl Future<Output = Result<T>>) -> Result<T> {
    struct VoidOnDrop<'a>(&'a PostgresProvider);
    impl Drop for VoidOnDrop<'_> {
        fn drop(&mut self) {
            self.0.history_cache.void_confirmations();
            self.0.read_status.changed_all();
        }
    }
    let _after = VoidOnDrop(p);
    delete.await
}

async fn delete_tree(
    p: &PostgresProvider,
    instance: &str,
    force: bool,
) -> Result<DeleteInstanceResult> {
    deleting(p, async {
        let mut conn = p.db.lease(Budget::Admin).await?;
        let doc: Value = select(dx_delete_instance(instance, force))
            .one(&mut conn)
            .await?;
        conn.finish().await?;
        Ok(decode::<DeleteCounts>(doc)?.into())
    })
    .await
}

async fn delete_exact(
    p: &PostgresProvider,
    ids: &[String],
    force: bool,
) -> Result<DeleteInstanceResult> {
    if ids.is_empty() {
        return Ok(DeleteInstanceResult::default());
    }
    deleting(p, async {
        let mut conn = p.db.lease(Budget::Admin).await?;
        let doc: Value = select(dx_delete_instances(ids, force))
            .one(&mut conn)
            .await?;
        conn.finish().await?;
        Ok(decode::<DeleteCounts>(doc)?.into())
    })
    .await
}

async fn delete_bulk(
    p: &PostgresProvider,
    filter: &InstanceFilter,
) -> Result<DeleteInstanceResult> {
    if filter.instance_ids.as_ref().is_some_and(Vec::is_empty) {
        return Ok(DeleteInstanceResult::default());
    }
    let limit = numeric::to_int(filter.limit.unwrap_or(DEFAULT_BULK_LIMIT), "limit")?;
    let completed_before = cutoff_arg(filter.completed_before, "completed_before")?;
    deleting(p, async {
        let mut conn = p.db.lease(Budget::Admin).await?;
        let doc: Value = select(dx_delete_instances_bulk(
            filter.instance_ids.as_deref(),
            completed_before,
            limit,
        ))
        .one(&mut conn)
        .await?;
        conn.finish().await?;
        Ok(decode::<DeleteCounts>(doc)?.into())
    })
    .await
}

async fn prune(
    p: &PostgresProvider,
    instance: &str,
    options: &PruneOptions,
) -> Result<PruneResult> {
    let keep_last = count_arg(options.keep_last, "keep_last")?;
    let completed_before = cutoff_arg(options.completed_before, "completed_before")?;
    let mut conn = p.db.lease(Budget::Admin).await?;
    let doc: Value = select(dx_prune_executions(instance, keep_last, completed_before))
        .one(&mut conn)
        .await?;
    conn.finish().await?;
    Ok(decode::<PruneCounts>(doc)?.into())
}

async fn prune_bulk(
    p: &PostgresProvider,
    filter: &InstanceFilter,
    options: &PruneOptions,
) -> Result<PruneResult> {
    if filter.instance_ids.as_ref().is_some_and(Vec::is_empty) {
        return Ok(PruneResult::default());
    }
    let limit = numeric::to_int(filter.limit.unwrap_or(DEFAULT_BULK_LIMIT), "limit")?;
    let instances_completed_before = cutoff_arg(filter.completed_before, "completed_before")?;
    let keep_last = count_arg(options.keep_last, "keep_last")?;
    let completed_before = cutoff_arg(options.completed_before, "completed_before")?;
    let mut conn = p.db.lease(Budget::Admin).await?;
    let doc: Value = select(dx_prune_executions_bulk(
        filter.instance_ids.as_deref(),
        instances_completed_before,
        limit,
        keep_last,
        completed_before,
    ))
    .one(&mut conn)
    .await?;
    conn.finish().await?;
    Ok(decode::<PruneCounts>(doc)?.into())
}

/// One admin call within the admin call limit, observed as `observed`,
/// failing as duroxide's error.
async fn admin_call<T: Report>(
    p: &PostgresProvider,
    observed: Call<'_>,
    call: impl std::future::Future<Output = Result<T>>,
) -> std::result::Result<T, ProviderError> {
    observed.run(bounded(&p.db, Budget::Admin, call)).await
}

#[async_trait::async_trait]
impl ProviderAdmin for PostgresProvider {
    async fn list_instances(&self) -> Result<Vec<String>, ProviderError> {
        admin_call(self, observe!("list_instances"), list_instances(self)).await
    }

    async fn list_instances_by_status(&self, status: &str) -> Result<Vec<String>, ProviderError> {
        admin_call(
            self,
            observe!("list_instances_by_status"),
            list_instances_by_status(self, status),
        )
        .await
    }

    async fn list_executions(&self, instance: &str) -> Result<Vec<u64>, ProviderError> {
        admin_call(
            self,
            observe!("list_executions").instance(instance),
            list_executions(self, instance),
        )
        .await
    }

    async fn read_history_with_execution_id(
        &self,
        instance: &str,
        execution_id: u64,
    ) -> Result<Vec<Event>, ProviderError> {
        admin_call(
            self,
            observe!("read_history_with_execution_id")
                .instance(instance)
                .execution(execution_id),
            history_reads::read_execution(self, instance, execution_id),
        )
        .await
    }

    async fn read_history(&self, instance: &str) -> Result<Vec<Event>, ProviderError> {
        admin_call(
            self,
            observe!("read_history").instance(instance),
            history_reads::read_latest(self, instance),
        )
        .await
    }

    async fn latest_execution_id(&self, instance: &str) -> Result<u64, ProviderError> {
        admin_call(
            self,
            observe!("latest_execution_id").instance(instance),
            latest_execution_id(self, instance),
        )
        .await
    }

    async fn get_instance_info(&self, instance: &str) -> Result<InstanceInfo, ProviderError> {
        admin_call(
            self,
            observe!("get_instance_info").instance(instance),
            instance_info(self, instance),
        )
        .await
    }

    async fn get_execution_info(
        &self,
        instance: &str,
        execution_id: u64,
    ) -> Result<ExecutionInfo, ProviderError> {
        admin_call(
            self,
            observe!("get_execution_info")
                .instance(instance)
                .execution(execution_id),
            execution_info(self, instance, execution_id),
        )
        .await
    }

    async fn get_system_metrics(&self) -> Result<SystemMetrics, ProviderError> {
        admin_call(self, observe!("get_system_metrics"), system_metrics(self)).await
    }

    async fn get_queue_depths(&self) -> Result<QueueDepths, ProviderError> {
        admin_call(self, observe!("get_queue_depths"), queue_depths(self)).await
    }

    async fn list_children(&self, instance_id: &str) -> Result<Vec<String>, ProviderError> {
        admin_call(
            self,
            observe!("list_children").instance(instance_id),
            list_children(self, instance_id),
        )
        .await
    }

    async fn get_parent_id(&self, instance_id: &str) -> Result<Option<String>, ProviderError> {
        admin_call(
            self,
            observe!("get_parent_id").instance(instance_id),
            parent_id(self, instance_id),
        )
        .await
    }

    async fn get_instance_tree(&self, instance_id: &str) -> Result<InstanceTree, ProviderError> {
        admin_call(
            self,
            observe!("get_instance_tree").instance(instance_id),
            instance_tree(self, instance_id),
        )
        .await
    }

    /// Overrides the default (parent check, tree walk, then delete) with one
    /// procedure, so the tree that is checked is the tree that is deleted.
    async fn delete_instance(
        &self,
        instance_id: &str,
        force: bool,
    ) -> Result<DeleteInstanceResult, ProviderError> {
        admin_call(
            self,
            observe!("delete_instance").instance(instance_id),
            delete_tree(self, instance_id, force),
        )
        .await
    }

    async fn delete_instances_atomic(
        &self,
        ids: &[String],
        force: bool,
    ) -> Result<DeleteInstanceResult, ProviderError> {
        admin_call(
            self,
            observe!("delete_instances_atomic"),
            delete_exact(self, ids, force),
        )
        .await
    }

    async fn delete_instance_bulk(
        &self,
        filter: InstanceFilter,
    ) -> Result<DeleteInstanceResult, ProviderError> {
        admin_call(
            self,
            observe!("delete_instance_bulk"),
            delete_bulk(self, &filter),
        )
        .await
    }

    async fn prune_executions(
        &self,
        instance_id: &str,
        options: PruneOptions,
    ) -> Result<PruneResult, ProviderError> {
        admin_call(
            self,
            observe!("prune_executions").instance(instance_id),
            prune(self, instance_id, &options),
        )
        .await
    }

    async fn prune_executions_bulk(
        &self,
        filter: InstanceFilter,
        options: PruneOptions,
    ) -> Result<PruneResult, ProviderError> {
        admin_call(
            self,
            observe!("prune_executions_bulk"),
            prune_bulk(self, &filter, &options),
        )
        .await
    }
}

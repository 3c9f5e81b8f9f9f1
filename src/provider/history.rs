//! History reads and raw appends (outside the hot path, except `read`).

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use duroxide::Event;
use serde_json::Value;

use super::codec;
use crate::PostgresProvider;
use crate::error::Result;
use crate::numeric;
use crate::pool::Budget;
use crate::schema::{executions, history};

diesel::define_sql_function! {
    /// `coalesce` for a nullable BIGINT with a fallback.
    fn coalesce(x: diesel::sql_types::Nullable<diesel::sql_types::BigInt>, y: diesel::sql_types::BigInt) -> diesel::sql_types::BigInt;
}

/// History of the latest execution (the highest recorded execution id, 1 if
/// none), in one statement.
pub(crate) async fn read_latest(p: &PostgresProvider, instance: &str) -> Result<Vec<Event>> {
    let latest = executions::table
        .filter(executions::instance_id.eq(instance))
        .select(diesel::dsl::max(executions::execution_id))
        .single_value();
    let mut conn = p.db.lease(Budget::Call).await?;
    let rows: Vec<Value> = history::table
        .filter(history::instance_id.eq(instance))
        .filter(history::execution_id.eq(coalesce(latest, 1_i64)))
        .order(history::event_id.asc())
        .select(history::event_data)
        .load(&mut conn)
        .await?;
    conn.finish().await?;
    codec::decode_history(rows)
}

/// History of one execution.
pub(crate) async fn read_execution(
    p: &PostgresProvider,
    instance: &str,
    execution_id: u64,
) -> Result<Vec<Event>> {
    let execution_id = numeric::to_bigint(execution_id, "execution_id")?;
    let mut conn = p.db.lease(Budget::Call).await?;
    let rows: Vec<Value> = history::table
        .filter(history::instance_id.eq(instance))
        .filter(history::execution_id.eq(execution_id))
        .order(history::event_id.asc())
        .select(history::event_data)
        .load(&mut conn)
        .await?;
    conn.finish().await?;
    codec::decode_history(rows)
}

/// Appends events as given (test setup and fault injection); duplicates fail.
pub(crate) async fn append(
    p: &PostgresProvider,
    instance: &str,
    execution_id: u64,
    events: &[Event],
) -> Result<()> {
    if codec::has_nul(instance) {
        return Err(codec::nul_refusal("instance id", ""));
    }
    let execution_id = numeric::to_bigint(execution_id, "execution_id")?;
    let rows = codec::history_delta(events)?
        .into_iter()
        .map(|e| {
            (
                history::instance_id.eq(instance.to_owned()),
                history::execution_id.eq(execution_id),
                history::event_id.eq(e.event_id),
                history::event_type.eq(e.event_type),
                history::event_data.eq(e.event),
            )
        })
        .collect::<Vec<_>>();
    if rows.is_empty() {
        return Ok(());
    }
    let mut conn = p.db.lease(Budget::Call).await?;
    diesel::insert_into(history::table)
        .values(rows)
        .execute(&mut conn)
        .await?;
    conn.finish().await?;
    Ok(())
}

//! History reads and raw appends (outside the hot path, except `read`,
//! which duroxide's worker calls before every activity).

use diesel::dsl::select;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use duroxide::Event;
use serde_json::Value;

use super::codec;
use crate::PostgresProvider;
use crate::error::Result;
use crate::numeric;
use crate::observe;
use crate::pool::Budget;
use crate::schema::{executions, history};
use crate::sql::documents::ReadHistory;
use crate::sql::procedures::dx_read_history;
use crate::sql::reply::WholeReply;

/// History of the latest execution (the highest recorded execution id, 1 if
/// none), in one statement. With a history of it in the provider's cache,
/// the server sends only the events after it while it is current (see
/// `history_cache`).
pub(crate) async fn read_latest(p: &PostgresProvider, instance: &str) -> Result<Vec<Event>> {
    if let Some(events) = p.history_cache.confirmed_read(instance) {
        observe::read_answered_locally();
        return Ok(events);
    }
    let held = p.history_cache.read_base(instance);
    let (execution_id, token, after) = match &held {
        Some(h) => (
            Some(numeric::to_bigint(h.execution_id, "execution_id")?),
            Some(h.stamp.as_str()),
            Some(numeric::to_bigint(h.last_event_id, "event_id")?),
        ),
        None => (None, None, None),
    };
    let ticket = p.read_status.ticket(instance);
    let mut conn = p.db.lease(Budget::Call).await?;
    let doc: Value = select(dx_read_history(instance, execution_id, token, after))
        .one(&mut conn)
        .await?;
    conn.finish().await?;
    let read = codec::from_json::<ReadHistory>(doc, "history")?;
    let events = codec::decode_history(read.events)?;
    // duroxide's status call asks for the custom status next. A version
    // that does not convert is left for that call to report: it fails
    // that call, not this read.
    match read.custom_status_version {
        Some(None) => p.read_status.offer(instance, ticket, None),
        Some(Some(v)) => {
            if let Ok(v) = numeric::from_bigint(v, "custom status version") {
                p.read_status
                    .offer(instance, ticket, Some((read.custom_status, v)));
            }
        }
        // Before migration 000020: no status came along.
        None => {}
    }
    match (read.base, held) {
        (None, _) => Ok(events),
        (Some(base), Some(held))
            if held.execution_id == read.execution_id && base == held.last_event_id =>
        {
            let mut history = held.events;
            history.extend(events);
            Ok(history)
        }
        // The server only answers with a base the request named.
        (Some(_), _) => Err(crate::error::Error::Data(
            "the server answered a history read with a base it was not sent".into(),
        )),
    }
}

/// The stored events of one execution, in event id order.
pub(crate) async fn execution_rows(
    conn: &mut AsyncPgConnection,
    instance: &str,
    execution_id: u64,
) -> Result<Vec<Value>> {
    let execution_id = numeric::to_bigint(execution_id, "execution_id")?;
    Ok(history::table
        .filter(history::instance_id.eq(instance))
        .filter(history::execution_id.eq(execution_id))
        .order(history::event_id.asc())
        .select(history::event_data)
        .load(conn)
        .await?)
}

/// History of one execution.
pub(crate) async fn read_execution(
    p: &PostgresProvider,
    instance: &str,
    execution_id: u64,
) -> Result<Vec<Event>> {
    let mut conn = p.db.lease(Budget::Call).await?;
    let rows = execution_rows(&mut conn, instance, execution_id).await?;
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
    // History written outside a turn: no cached copy of this execution is
    // current any more, here or in another process.
    p.history_cache.forget(instance);
    let mut conn = p.db.lease(Budget::Call).await?;
    diesel::insert_into(history::table)
        .values(rows)
        .execute(&mut conn)
        .await?;
    diesel::update(
        executions::table
            .filter(executions::instance_id.eq(instance))
            .filter(executions::execution_id.eq(execution_id)),
    )
    .set((
        executions::turn_reader.eq(None::<String>),
        executions::turn_token.eq(None::<String>),
        executions::turn_last_event.eq(None::<i64>),
    ))
    .execute(&mut conn)
    .await?;
    conn.finish().await?;
    Ok(())
}

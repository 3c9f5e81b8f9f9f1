//! Per-instance state readable by clients: custom status, the key-value
//! store and instance statistics.

use std::collections::HashMap;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use duroxide::{EventKind, SystemStats};
use serde_json::Value;

use super::codec;
use crate::PostgresProvider;
use crate::error::Result;
use crate::numeric;
use crate::observe;
use crate::pool::{self, Budget};
use crate::schema::{history, instances, kv_delta, kv_store};

/// `(status, version)` if the custom status changed after `last_seen_version`.
pub(crate) async fn custom_status(
    p: &PostgresProvider,
    instance: &str,
    last_seen_version: u64,
) -> Result<Option<(Option<String>, u64)>> {
    if let Some(answer) = p.read_status.take(instance, last_seen_version) {
        observe::status_answered_locally();
        return Ok(answer);
    }
    let last_seen = numeric::to_bigint(last_seen_version, "custom status version")?;
    let mut conn = p.db.lease(Budget::Call).await?;
    let row: Option<(Option<String>, i64)> = instances::table
        .filter(instances::instance_id.eq(instance))
        .filter(instances::custom_status_version.gt(last_seen))
        .select((instances::custom_status, instances::custom_status_version))
        .first(&mut conn)
        .await
        .optional()?;
    conn.finish().await?;
    row.map(|(status, version)| {
        Ok((
            status,
            numeric::from_bigint(version, "custom status version")?,
        ))
    })
    .transpose()
}

/// One key: the running execution's change if any, else the stored value.
pub(crate) async fn kv_value(
    p: &PostgresProvider,
    instance: &str,
    key: &str,
) -> Result<Option<String>> {
    let mut conn = p.db.lease(Budget::Call).await?;
    let delta: Option<Option<String>> = kv_delta::table
        .filter(kv_delta::instance_id.eq(instance))
        .filter(kv_delta::key.eq(key))
        .select(kv_delta::value)
        .first(&mut conn)
        .await
        .optional()?;
    let value = match delta {
        Some(value) => value,
        None => kv_store::table
            .filter(kv_store::instance_id.eq(instance))
            .filter(kv_store::key.eq(key))
            .select(kv_store::value)
            .first(&mut conn)
            .await
            .optional()?,
    };
    conn.finish().await?;
    Ok(value)
}

/// All keys: the store overlaid with the running execution's changes.
pub(crate) async fn kv_all(
    p: &PostgresProvider,
    instance: &str,
) -> Result<HashMap<String, String>> {
    let mut conn = p.db.lease(Budget::Call).await?;
    let map = kv_merged(&mut conn, instance).await?;
    conn.finish().await?;
    Ok(map)
}

async fn kv_merged(conn: &mut pool::Lease<'_>, instance: &str) -> Result<HashMap<String, String>> {
    let stored: Vec<(String, String)> = kv_store::table
        .filter(kv_store::instance_id.eq(instance))
        .select((kv_store::key, kv_store::value))
        .load(conn)
        .await?;
    let delta: Vec<(String, Option<String>)> = kv_delta::table
        .filter(kv_delta::instance_id.eq(instance))
        .select((kv_delta::key, kv_delta::value))
        .load(conn)
        .await?;
    let mut map: HashMap<String, String> = stored.into_iter().collect();
    for (key, value) in delta {
        match value {
            Some(v) => map.insert(key, v),
            None => map.remove(&key),
        };
    }
    Ok(map)
}

/// Size statistics of the current execution; None if the instance does not exist.
pub(crate) async fn instance_stats(
    p: &PostgresProvider,
    instance: &str,
) -> Result<Option<SystemStats>> {
    let mut conn = p.db.lease(Budget::Call).await?;
    let Some(execution_id) = instances::table
        .filter(instances::instance_id.eq(instance))
        .select(instances::current_execution_id)
        .first::<i64>(&mut conn)
        .await
        .optional()?
    else {
        conn.finish().await?;
        return Ok(None);
    };

    let events: Vec<(i64, Value)> = history::table
        .filter(history::instance_id.eq(instance))
        .filter(history::execution_id.eq(execution_id))
        .order(history::event_id.asc())
        .select((history::event_id, history::event_data))
        .load(&mut conn)
        .await?;
    let history_size_bytes: usize = events.iter().map(|(_, e)| e.to_string().len()).sum();

    // Messages carried over by continue-as-new live in the first event.
    let queue_pending_count = match events.as_slice().first() {
        Some((1, first)) => {
            let event: duroxide::Event = codec::from_json(first.clone(), "history event")?;
            match event.kind {
                EventKind::OrchestrationStarted {
                    carry_forward_events: Some(events),
                    ..
                } => events.len(),
                _ => 0,
            }
        }
        _ => 0,
    };

    let kv = kv_merged(&mut conn, instance).await?;
    conn.finish().await?;
    Ok(Some(SystemStats {
        history_event_count: events.len() as u64,
        history_size_bytes: history_size_bytes as u64,
        queue_pending_count: queue_pending_count as u64,
        kv_user_key_count: kv.len() as u64,
        kv_total_value_bytes: kv.values().map(|v| v.len() as u64).sum(),
    }))
}

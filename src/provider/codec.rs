//! Conversions between duroxide's types and the JSONB documents exchanged
//! with the stored procedures.

use std::collections::HashMap;

use duroxide::providers::{KvEntry, WorkItem};
use duroxide::{Event, EventKind};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::{Error, Result};

/// Serializes a value into a JSONB document.
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Result<Value> {
    serde_json::to_value(value).map_err(|e| Error::Data(format!("serialization failed: {e}")))
}

/// Deserializes one stored document, naming what it was on failure.
pub(crate) fn from_json<T: DeserializeOwned>(value: Value, what: &str) -> Result<T> {
    serde_json::from_value(value)
        .map_err(|e| Error::Data(format!("stored {what} does not deserialize: {e}")))
}

/// The variant name of a work item, as stored in `orchestrator_queue.kind`.
pub(crate) fn kind_of(item: &Value) -> Result<String> {
    match item {
        Value::Object(map) if map.len() == 1 => Ok(map.keys().next().cloned().unwrap_or_default()),
        Value::String(unit) => Ok(unit.clone()),
        _ => Err(Error::Data(
            "work item did not serialize as an enum variant".into(),
        )),
    }
}

/// The instance whose orchestrator queue receives `item`.
pub(crate) fn orchestrator_instance(item: &WorkItem) -> Result<&str> {
    match item {
        WorkItem::StartOrchestration { instance, .. }
        | WorkItem::ActivityCompleted { instance, .. }
        | WorkItem::ActivityFailed { instance, .. }
        | WorkItem::TimerFired { instance, .. }
        | WorkItem::ExternalRaised { instance, .. }
        | WorkItem::QueueMessage { instance, .. }
        | WorkItem::CancelInstance { instance, .. }
        | WorkItem::ContinueAsNew { instance, .. } => Ok(instance),
        WorkItem::SubOrchCompleted {
            parent_instance, ..
        }
        | WorkItem::SubOrchFailed {
            parent_instance, ..
        } => Ok(parent_instance),
        WorkItem::ActivityExecute { .. } => Err(Error::Data(
            "ActivityExecute belongs on the worker queue, not the orchestrator queue".into(),
        )),
    }
}

/// `{"item", "instance", "kind", "visible_at_ms"}` for `dx_ack_orchestration`.
pub(crate) fn orchestrator_entry(item: &WorkItem) -> Result<Value> {
    let instance = orchestrator_instance(item)?;
    let visible_at_ms = match item {
        WorkItem::TimerFired { fire_at_ms, .. } => Some(*fire_at_ms),
        _ => None,
    };
    let doc = to_json(item)?;
    Ok(json!({
        "instance": instance,
        "kind": kind_of(&doc)?,
        "item": doc,
        "visible_at_ms": visible_at_ms,
    }))
}

/// Routing columns of an activity execution.
pub(crate) struct WorkerRoute<'a> {
    pub instance: &'a str,
    pub execution_id: i64,
    pub activity_id: i64,
    pub session_id: Option<&'a str>,
    pub tag: Option<&'a str>,
}

pub(crate) fn worker_route(item: &WorkItem) -> Result<WorkerRoute<'_>> {
    match item {
        WorkItem::ActivityExecute {
            instance,
            execution_id,
            id,
            session_id,
            tag,
            ..
        } => Ok(WorkerRoute {
            instance,
            execution_id: to_i64(*execution_id, "execution_id")?,
            activity_id: to_i64(*id, "activity id")?,
            session_id: session_id.as_deref(),
            tag: tag.as_deref(),
        }),
        other => Err(Error::Data(format!(
            "only ActivityExecute belongs on the worker queue, got {}",
            kind_of(&to_json(other)?)?
        ))),
    }
}

/// `{"item", "instance", "execution_id", "activity_id", "session_id", "tag"}`.
pub(crate) fn worker_entry(item: &WorkItem) -> Result<Value> {
    let route = worker_route(item)?;
    Ok(json!({
        "item": to_json(item)?,
        "instance": route.instance,
        "execution_id": route.execution_id,
        "activity_id": route.activity_id,
        "session_id": route.session_id,
        "tag": route.tag,
    }))
}

/// Checks the events the runtime numbered and serializes them for the history table.
pub(crate) fn history_delta(events: &[Event]) -> Result<Value> {
    let mut docs = Vec::with_capacity(events.len());
    for event in events {
        if event.event_id() == 0 {
            return Err(Error::Data(
                "event_id must be assigned by the runtime (got 0)".into(),
            ));
        }
        docs.push(to_json(event)?);
    }
    Ok(Value::Array(docs))
}

/// Milliseconds as the procedures' BIGINT, saturating.
pub(crate) fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn to_i64(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::Data(format!("{what} {v} exceeds the BIGINT range")))
}

/// Decodes stored history; any undecodable event fails the whole read.
pub(crate) fn decode_history(rows: Vec<Value>) -> Result<Vec<Event>> {
    rows.into_iter()
        .enumerate()
        .map(|(i, row)| {
            serde_json::from_value(row).map_err(|e| {
                Error::Data(format!(
                    "history event at position {i} does not deserialize: {e}"
                ))
            })
        })
        .collect()
}

/// Result of `dx_fetch_orchestration` / `dx_fetch_work` when nothing was claimed.
#[derive(Debug, Deserialize)]
pub(crate) struct Idle {
    /// Milliseconds until something may become claimable; None if nothing is scheduled.
    pub retry_ms: Option<u64>,
}

/// A locked orchestration turn as returned by `dx_fetch_orchestration`.
#[derive(Debug, Deserialize)]
pub(crate) struct ClaimedOrchestration {
    pub lock_token: String,
    pub instance: String,
    pub name: Option<String>,
    pub version: Option<String>,
    pub execution_id: u64,
    pub attempt_count: u32,
    pub messages: Vec<Value>,
    pub history: Vec<Value>,
    pub kv: HashMap<String, (String, u64)>,
}

/// A locked activity as returned by `dx_fetch_work`.
#[derive(Debug, Deserialize)]
pub(crate) struct ClaimedWork {
    pub lock_token: String,
    pub attempt_count: u32,
    pub item: Value,
}

/// Result of `dx_ack_orchestration`.
#[derive(Debug, Deserialize)]
pub(crate) struct AckOutcome {
    /// `ok`, or `lock_lost` when the token is unknown or expired.
    pub status: String,
    /// Lock token of the activity claimed for a waiting local worker.
    #[serde(default)]
    pub claimed: Option<String>,
}

/// Either a claimed value or an idle answer.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Fetched<T> {
    Claimed(T),
    Idle(Idle),
}

pub(crate) fn kv_snapshot(kv: HashMap<String, (String, u64)>) -> HashMap<String, KvEntry> {
    kv.into_iter()
        .map(|(k, (value, last_updated_at_ms))| {
            (
                k,
                KvEntry {
                    value,
                    last_updated_at_ms,
                },
            )
        })
        .collect()
}

/// The custom-status change recorded by a turn: None = unchanged,
/// `{"value": s}` = set (null clears). The last update in the delta wins.
pub(crate) fn custom_status_change(events: &[Event]) -> Option<Value> {
    events.iter().rev().find_map(|e| match &e.kind {
        EventKind::CustomStatusUpdated { status } => Some(json!({ "value": status })),
        _ => None,
    })
}

/// Key-value mutations of a turn, in order.
pub(crate) fn kv_ops(events: &[Event]) -> Value {
    let ops: Vec<Value> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::KeyValueSet {
                key,
                value,
                last_updated_at_ms,
            } => Some(json!({ "op": "set", "key": key, "value": value, "ts": last_updated_at_ms })),
            EventKind::KeyValueCleared { key } => Some(json!({ "op": "clear", "key": key })),
            EventKind::KeyValuesCleared => Some(json!({ "op": "clear_all" })),
            _ => None,
        })
        .collect();
    Value::Array(ops)
}

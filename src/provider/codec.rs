//! Conversions between duroxide's types and the JSONB documents exchanged
//! with the stored procedures.

use std::collections::HashMap;

use duroxide::providers::{KvEntry, WorkItem};
use duroxide::{Event, EventKind};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::numeric;

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
    refuse_long_instance(instance)?;
    let visible_at_ms = match item {
        WorkItem::TimerFired { fire_at_ms, .. } => {
            Some(numeric::unix_ms(*fire_at_ms, "timer fire_at_ms")?)
        }
        _ => None,
    };
    let doc = storable_item(item)?;
    Ok(json!({
        "instance": instance,
        "kind": kind_of(&doc)?,
        "item": doc,
        "visible_at_ms": visible_at_ms,
    }))
}

/// A work item as a JSONB document, refused if PostgreSQL cannot store it.
pub(crate) fn storable_item(item: &WorkItem) -> Result<Value> {
    let doc = to_json(item)?;
    if let Some(at) = nul_pointer(&doc) {
        return Err(nul_refusal(&format!("{} work item", kind_of(&doc)?), &at));
    }
    Ok(doc)
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
            execution_id: numeric::to_bigint(*execution_id, "execution_id")?,
            activity_id: numeric::to_bigint(*id, "activity id")?,
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
        "item": storable_item(item)?,
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
        numeric::to_bigint(event.event_id(), "event_id")?;
        let doc = to_json(event)?;
        let kind = doc.get("type").and_then(Value::as_str).unwrap_or("unknown");
        refuse_nul(
            &doc,
            &format!("history event {} ({kind})", event.event_id()),
        )?;
        docs.push(doc);
    }
    Ok(Value::Array(docs))
}

/// Whether `s` holds U+0000, which PostgreSQL's `text` and `jsonb` refuse.
pub(crate) fn has_nul(s: &str) -> bool {
    s.as_bytes().contains(&0)
}

/// JSON pointer to the first string or key holding U+0000 ("" = `value` itself).
pub(crate) fn nul_pointer(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => has_nul(s).then(String::new),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_pointer(v).map(|rest| format!("/{i}{rest}"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            if has_nul(k) {
                Some(format!("/{}", pointer_segment(k)))
            } else {
                nul_pointer(v).map(|rest| format!("/{}{rest}", pointer_segment(k)))
            }
        }),
        _ => None,
    }
}

/// `s` quoted for an error message: the message itself is stored (as a
/// failed orchestration's output), so it must not carry U+0000, and a 2 KB
/// key should not make it unreadable.
pub(crate) fn printable(s: &str) -> String {
    const MAX_CHARS: usize = 64;
    let head: String = s.chars().take(MAX_CHARS).collect();
    let more = if s.chars().nth(MAX_CHARS).is_some() {
        "..."
    } else {
        ""
    };
    format!("{head:?}{more}")
}

/// An object key as a JSON pointer segment, control characters escaped.
fn pointer_segment(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Most bytes of an instance id, or of an instance id and a key-value key
/// together, that fit one btree index entry (2704 bytes with PostgreSQL's
/// default page size, less tuple headers) whatever the text: longer values
/// fit only when they compress well, so they are refused up front rather
/// than failing in the server depending on their content.
pub(crate) const MAX_KEY_BYTES: usize = 2600;

/// Refuses an instance id too long to index (see [`MAX_KEY_BYTES`]).
pub(crate) fn refuse_long_instance(instance: &str) -> Result<()> {
    if instance.len() > MAX_KEY_BYTES {
        return Err(Error::Data(format!(
            "instance id of {} bytes exceeds the {MAX_KEY_BYTES} bytes PostgreSQL can index",
            instance.len()
        )));
    }
    Ok(())
}

/// Why a value cannot be stored; `at` is a JSON pointer into it.
pub(crate) fn nul_message(what: &str, at: &str) -> String {
    let at = if at.is_empty() {
        String::new()
    } else {
        format!(" at {at}")
    };
    format!("{what} contains U+0000 (NUL){at}, which PostgreSQL cannot store")
}

/// [`nul_message`] as the permanent error refusing the call.
pub(crate) fn nul_refusal(what: &str, at: &str) -> Error {
    Error::Data(nul_message(what, at))
}

/// Refuses a document holding U+0000 before it is sent: PostgreSQL would
/// refuse it anyway, with an error this crate cannot tell apart from a
/// transient one, and the call would be retried in vain.
pub(crate) fn refuse_nul(value: &Value, what: &str) -> Result<()> {
    match nul_pointer(value) {
        None => Ok(()),
        Some(at) => Err(nul_refusal(what, &at)),
    }
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
    /// Set when the history could not be loaded at all (too large).
    #[serde(default)]
    pub history_error: Option<String>,
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
pub(crate) fn kv_ops(events: &[Event]) -> Result<Value> {
    let mut ops = Vec::new();
    for e in events {
        match &e.kind {
            EventKind::KeyValueSet {
                key,
                value,
                last_updated_at_ms,
            } => {
                let ts = numeric::to_bigint(*last_updated_at_ms, "KV last_updated_at_ms")?;
                ops.push(json!({ "op": "set", "key": key, "value": value, "ts": ts }));
            }
            EventKind::KeyValueCleared { key } => ops.push(json!({ "op": "clear", "key": key })),
            EventKind::KeyValuesCleared => ops.push(json!({ "op": "clear_all" })),
            _ => {}
        }
    }
    Ok(Value::Array(ops))
}

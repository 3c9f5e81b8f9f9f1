//! Conversions between duroxide's types and the documents of
//! [`crate::sql::documents`], with the checks that refuse what PostgreSQL
//! cannot store before anything is sent.

use std::collections::HashMap;

use duroxide::providers::{KvEntry, WorkItem};
use duroxide::{Event, EventKind};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::numeric;
use crate::sql::documents::{CustomStatus, HistoryEntry, KvOp, OrchestratorEntry, WorkerEntry};

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

/// A message for `dx_ack_orchestration`'s orchestrator items.
pub(crate) fn orchestrator_entry(item: &WorkItem) -> Result<OrchestratorEntry<'_>> {
    let instance = orchestrator_instance(item)?;
    refuse_long_instance(instance)?;
    let visible_at_ms = match item {
        WorkItem::TimerFired { fire_at_ms, .. } => {
            Some(numeric::unix_ms(*fire_at_ms, "timer fire_at_ms")?)
        }
        _ => None,
    };
    let doc = storable_item(item)?;
    Ok(OrchestratorEntry {
        instance,
        kind: kind_of(&doc)?,
        item: doc,
        visible_at_ms,
    })
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

/// An activity execution for `dx_ack_orchestration`'s worker items.
pub(crate) fn worker_entry(item: &WorkItem) -> Result<WorkerEntry<'_>> {
    let route = worker_route(item)?;
    Ok(WorkerEntry {
        item: storable_item(item)?,
        instance: route.instance,
        execution_id: route.execution_id,
        activity_id: route.activity_id,
        session_id: route.session_id,
        tag: route.tag,
    })
}

/// Checks the events the runtime numbered and makes them history rows.
pub(crate) fn history_delta(events: &[Event]) -> Result<Vec<HistoryEntry>> {
    let mut entries = Vec::with_capacity(events.len());
    for event in events {
        if event.event_id() == 0 {
            return Err(Error::Data(
                "event_id must be assigned by the runtime (got 0)".into(),
            ));
        }
        let event_id = numeric::to_bigint(event.event_id(), "event_id")?;
        let event_type = event_type(&event.kind);
        let doc = to_json(event)?;
        refuse_nul(
            &doc,
            &format!("history event {} ({event_type})", event.event_id()),
        )?;
        entries.push(HistoryEntry {
            event_id,
            event_type,
            event: doc,
        });
    }
    Ok(entries)
}

/// The name of an event's kind, as stored in `history.event_type`: the tag
/// duroxide gives the variant when it serializes it.
pub(crate) fn event_type(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::OrchestrationStarted { .. } => "OrchestrationStarted",
        EventKind::OrchestrationCompleted { .. } => "OrchestrationCompleted",
        EventKind::OrchestrationFailed { .. } => "OrchestrationFailed",
        EventKind::ActivityScheduled { .. } => "ActivityScheduled",
        EventKind::ActivityCompleted { .. } => "ActivityCompleted",
        EventKind::ActivityFailed { .. } => "ActivityFailed",
        EventKind::ActivityCancelRequested { .. } => "ActivityCancelRequested",
        EventKind::TimerCreated { .. } => "TimerCreated",
        EventKind::TimerFired { .. } => "TimerFired",
        EventKind::ExternalSubscribed { .. } => "ExternalSubscribed",
        EventKind::ExternalEvent { .. } => "ExternalEvent",
        EventKind::OrchestrationChained { .. } => "OrchestrationChained",
        EventKind::SubOrchestrationScheduled { .. } => "SubOrchestrationScheduled",
        EventKind::SubOrchestrationCompleted { .. } => "SubOrchestrationCompleted",
        EventKind::SubOrchestrationFailed { .. } => "SubOrchestrationFailed",
        EventKind::SubOrchestrationCancelRequested { .. } => "SubOrchestrationCancelRequested",
        EventKind::OrchestrationContinuedAsNew { .. } => "OrchestrationContinuedAsNew",
        EventKind::OrchestrationCancelRequested { .. } => "OrchestrationCancelRequested",
        EventKind::ExternalSubscribedCancelled { .. } => "ExternalSubscribedCancelled",
        EventKind::QueueSubscribed { .. } => "ExternalSubscribedPersistent",
        EventKind::QueueEventDelivered { .. } => "ExternalEventPersistent",
        EventKind::QueueSubscriptionCancelled { .. } => "ExternalSubscribedPersistentCancelled",
        EventKind::CustomStatusUpdated { .. } => "CustomStatusUpdated",
        EventKind::KeyValueSet { .. } => "KeyValueSet",
        EventKind::KeyValueCleared { .. } => "KeyValueCleared",
        EventKind::KeyValuesCleared => "KeyValuesCleared",
        // Variants that exist only under duroxide's `replay-version-test`
        // feature; the column is informational, nothing reads it back.
        #[allow(unreachable_patterns)]
        _ => "Unknown",
    }
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

/// The custom-status change recorded by a turn: None = unchanged. The last
/// update in the delta wins.
pub(crate) fn custom_status_change(events: &[Event]) -> Option<CustomStatus<'_>> {
    events.iter().rev().find_map(|e| match &e.kind {
        EventKind::CustomStatusUpdated { status } => Some(CustomStatus {
            value: status.as_deref(),
        }),
        _ => None,
    })
}

/// Key-value mutations of a turn, in order.
pub(crate) fn kv_ops(events: &[Event]) -> Result<Vec<KvOp<'_>>> {
    let mut ops = Vec::new();
    for e in events {
        match &e.kind {
            EventKind::KeyValueSet {
                key,
                value,
                last_updated_at_ms,
            } => ops.push(KvOp::Set {
                key,
                value,
                ts: numeric::to_bigint(*last_updated_at_ms, "KV last_updated_at_ms")?,
            }),
            EventKind::KeyValueCleared { key } => ops.push(KvOp::Clear { key }),
            EventKind::KeyValuesCleared => ops.push(KvOp::ClearAll),
            _ => {}
        }
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use duroxide::{AppErrorKind, ErrorDetails};

    /// `event_type` names each kind as duroxide's serialization tags it, so
    /// rows written by either path carry the same `history.event_type`.
    #[test]
    fn event_type_is_the_serialized_tag() {
        let s = || "x".to_owned();
        let details = || ErrorDetails::Application {
            kind: AppErrorKind::ActivityFailed,
            message: s(),
            retryable: false,
        };
        let kinds = vec![
            EventKind::OrchestrationStarted {
                name: s(),
                version: s(),
                input: s(),
                parent_instance: None,
                parent_id: None,
                parent_execution_id: None,
                carry_forward_events: None,
                initial_custom_status: None,
            },
            EventKind::OrchestrationCompleted { output: s() },
            EventKind::OrchestrationFailed { details: details() },
            EventKind::ActivityScheduled {
                name: s(),
                input: s(),
                session_id: None,
                tag: None,
            },
            EventKind::ActivityCompleted { result: s() },
            EventKind::ActivityFailed { details: details() },
            EventKind::ActivityCancelRequested { reason: s() },
            EventKind::TimerCreated { fire_at_ms: 1 },
            EventKind::TimerFired { fire_at_ms: 1 },
            EventKind::ExternalSubscribed { name: s() },
            EventKind::ExternalEvent {
                name: s(),
                data: s(),
            },
            EventKind::OrchestrationChained {
                name: s(),
                instance: s(),
                input: s(),
            },
            EventKind::SubOrchestrationScheduled {
                name: s(),
                instance: s(),
                input: s(),
            },
            EventKind::SubOrchestrationCompleted { result: s() },
            EventKind::SubOrchestrationFailed { details: details() },
            EventKind::SubOrchestrationCancelRequested { reason: s() },
            EventKind::OrchestrationContinuedAsNew { input: s() },
            EventKind::OrchestrationCancelRequested { reason: s() },
            EventKind::ExternalSubscribedCancelled { reason: s() },
            EventKind::QueueSubscribed { name: s() },
            EventKind::QueueEventDelivered {
                name: s(),
                data: s(),
            },
            EventKind::QueueSubscriptionCancelled { reason: s() },
            EventKind::CustomStatusUpdated { status: None },
            EventKind::KeyValueSet {
                key: s(),
                value: s(),
                last_updated_at_ms: 1,
            },
            EventKind::KeyValueCleared { key: s() },
            EventKind::KeyValuesCleared,
        ];
        for kind in kinds {
            let doc = serde_json::to_value(&kind).unwrap();
            assert_eq!(doc["type"].as_str(), Some(event_type(&kind)), "{doc}");
        }
    }
}

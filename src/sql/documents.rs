//! Every JSONB document exchanged with the functions in [`super::procedures`].
//!
//! Arguments are `Serialize` types; the SQL reads each with
//! `jsonb_to_record` / `jsonb_to_recordset`, declaring every field's SQL type
//! once, so a field renamed here and not there reads as NULL in a test
//! rather than as a silently different cast per use. Results are internally
//! tagged by a `"result"` field, so a result that does not decode is an
//! error, never mistaken for another variant.
//!
//! Work items and events travel inside these documents as duroxide
//! serializes them (`serde_json::Value`); the SQL stores them and never reads
//! their fields: whatever it needs (kind, instance, event id and type) is a
//! field of its own here, filled in from the typed value in Rust.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

// ---- Arguments -------------------------------------------------------------

/// One element of `dx_ack_orchestration`'s `history`.
#[derive(Debug, Serialize)]
pub(crate) struct HistoryEntry {
    pub event_id: i64,
    /// The event's kind, stored in `history.event_type`.
    pub event_type: &'static str,
    /// The whole [`duroxide::Event`], stored in `history.event_data`.
    pub event: Value,
}

/// One element of `dx_ack_orchestration`'s `worker_items`: an
/// `ActivityExecute` and its routing columns.
#[derive(Debug, Serialize)]
pub(crate) struct WorkerEntry<'a> {
    pub item: Value,
    pub instance: &'a str,
    pub execution_id: i64,
    pub activity_id: i64,
    pub session_id: Option<&'a str>,
    pub tag: Option<&'a str>,
}

/// One element of `dx_ack_orchestration`'s `orchestrator_items`.
#[derive(Debug, Serialize)]
pub(crate) struct OrchestratorEntry<'a> {
    pub instance: &'a str,
    /// The work item's variant, stored in `orchestrator_queue.kind`.
    pub kind: String,
    pub item: Value,
    /// When a timer fires; None = visible at once.
    pub visible_at_ms: Option<i64>,
}

/// `dx_ack_orchestration`'s `metadata`: duroxide's `ExecutionMetadata`.
#[derive(Debug, Serialize)]
pub(crate) struct Metadata<'a> {
    /// Set when the execution ended (`Completed`, `Failed`, `ContinuedAsNew`).
    pub status: Option<&'a str>,
    pub output: Option<&'a str>,
    /// The instance row is written only when both name and version are set.
    pub orchestration_name: Option<&'a str>,
    pub orchestration_version: Option<&'a str>,
    pub parent_instance_id: Option<&'a str>,
    /// The pinned duroxide version; all three or none.
    pub pinned_major: Option<i32>,
    pub pinned_minor: Option<i32>,
    pub pinned_patch: Option<i32>,
}

/// `dx_ack_orchestration`'s `custom_status`, present when the turn changed
/// it; `value` None clears it.
#[derive(Debug, Serialize)]
pub(crate) struct CustomStatus<'a> {
    pub value: Option<&'a str>,
}

/// One element of `dx_ack_orchestration`'s `kv_ops`, applied in order.
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum KvOp<'a> {
    Set {
        key: &'a str,
        value: &'a str,
        /// `last_updated_at_ms` as the runtime recorded it.
        ts: i64,
    },
    Clear {
        key: &'a str,
    },
    ClearAll,
}

/// One element of `dx_ack_orchestration`'s `cancelled`.
#[derive(Debug, Serialize)]
pub(crate) struct CancelledActivity<'a> {
    pub instance: &'a str,
    pub execution_id: i64,
    pub activity_id: i64,
}

/// `dx_ack_orchestration`'s `claim`: lock the worker item at `index` (zero
/// based) under `token` for a worker of this process.
#[derive(Debug, Serialize)]
pub(crate) struct WorkerClaim<'a> {
    pub index: i64,
    pub lock_ms: i64,
    pub token: &'a str,
}

// ---- Results ---------------------------------------------------------------

/// Result of `dx_fetch_orchestration` and `dx_fetch_work`, and of one fetch
/// attempt as the long-poll loop sees it (`T` converted on the way).
#[derive(Debug, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub(crate) enum Fetched<T> {
    /// A lock was taken under the caller's token.
    Claimed {
        #[serde(flatten)]
        item: T,
        /// What the call saw of the rest of its queue after the claim;
        /// None when it does not say (then more may be ready).
        #[serde(default)]
        rest: Option<Rest>,
    },
    /// Nothing claimable.
    Idle {
        /// Milliseconds until something may become claimable; None if
        /// nothing is scheduled.
        retry_ms: Option<u64>,
    },
}

/// Result of `dx_ack_work_claim`.
#[derive(Debug, Deserialize)]
pub(crate) struct AckClaimed {
    /// `dx_ack_work`'s answer: 0 lock gone, 1 done, 2 done and held.
    pub acked: i32,
    /// The claim's answer; None when none was tried.
    pub next: Option<Fetched<ClaimedWork>>,
}

/// The rest of the queue after a claim (migration `000015_claim_outlook`),
/// as an idle fetch would have answered.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub(crate) struct Rest {
    /// 0 when another turn may be claimable now; otherwise milliseconds
    /// until one may become claimable, None if nothing is scheduled.
    pub retry_ms: Option<u64>,
}

/// A locked orchestration turn from `dx_fetch_orchestration`.
#[derive(Debug, Deserialize)]
pub(crate) struct ClaimedOrchestration {
    pub lock_token: String,
    pub instance: String,
    /// None when the instance row does not exist (yet).
    pub name: Option<String>,
    pub version: Option<String>,
    pub execution_id: u64,
    pub attempt_count: u32,
    /// Work items as stored, decoded one by one by the caller.
    pub messages: Vec<Value>,
    /// Events as stored, in event id order: all of them, or those after
    /// `history_base`.
    pub history: Vec<Value>,
    /// Set when `history` holds only the events after the ones this
    /// provider's history cache holds (see `provider::history_cache`).
    #[serde(default)]
    pub history_base: Option<HistoryBase>,
    /// Key to (value, last_updated_at_ms).
    pub kv: HashMap<String, (String, u64)>,
    /// Set when the history could not be loaded at all (too large).
    #[serde(default)]
    pub history_error: Option<String>,
}

/// The cached prefix a fetch assumed: the history up to `last_event_id`,
/// as committed by the turn that held lock `token`.
#[derive(Debug, Deserialize)]
pub(crate) struct HistoryBase {
    pub token: String,
    pub last_event_id: u64,
}

/// Result of `dx_read_history`: the latest execution's events, all of them
/// or (with `base`) those after event `base`.
#[derive(Debug, Deserialize)]
pub(crate) struct ReadHistory {
    pub execution_id: u64,
    pub base: Option<u64>,
    pub events: Vec<Value>,
    /// The instance's custom status in the same snapshot (migration
    /// `000020`).
    #[serde(default)]
    pub custom_status: Option<String>,
    /// Absent before migration `000020`; `Some(None)` when the instance
    /// has no row.
    #[serde(default, deserialize_with = "present")]
    pub custom_status_version: Option<Option<i64>>,
}

/// A field that may be absent (`None`) or null (`Some(None)`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A locked activity from `dx_fetch_work`.
#[derive(Debug, Deserialize)]
pub(crate) struct ClaimedWork {
    pub lock_token: String,
    pub attempt_count: u32,
    /// The work item as stored, decoded by the caller.
    pub item: Value,
    /// Set when the latest execution of the activity's instance was last
    /// changed by a turn this provider (the fetch's reader) committed.
    #[serde(default)]
    pub history: Option<HistoryStamp>,
}

/// The latest execution of an instance as its last committed turn left it:
/// that turn's lock token and last event id.
#[derive(Debug, Deserialize)]
pub(crate) struct HistoryStamp {
    pub instance: String,
    pub execution_id: u64,
    pub token: String,
    pub last_event_id: u64,
}

/// Result of `dx_ack_orchestration`.
#[derive(Debug, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub(crate) enum AckOutcome {
    Committed {
        /// Lock token of the activity claimed for a waiting local worker;
        /// None if nothing was claimed (or it was cancelled in the turn).
        claimed: Option<String>,
        /// The locked instance.
        instance: String,
        /// The execution's last event id after the commit (None: no events).
        last_event_id: Option<u64>,
    },
    /// The token is unknown or expired; nothing was committed.
    LockLost,
}

/// Result of the delete and prune functions: counts, or the contract's
/// refusal (nothing changed).
#[derive(Debug, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub(crate) enum AdminOutcome<T> {
    Done(T),
    Refused { error: String },
}

/// Counts of `dx_delete_instance(s)` and `dx_delete_instances_bulk`.
#[derive(Debug, Deserialize)]
pub(crate) struct DeleteCounts {
    pub instances_deleted: u64,
    pub executions_deleted: u64,
    pub events_deleted: u64,
    pub queue_messages_deleted: u64,
}

/// Counts of `dx_prune_executions` and `dx_prune_executions_bulk`.
#[derive(Debug, Deserialize)]
pub(crate) struct PruneCounts {
    pub instances_processed: u64,
    pub executions_deleted: u64,
    pub events_deleted: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn results_decode_by_their_tag() {
        let idle: Fetched<ClaimedWork> =
            serde_json::from_value(json!({"result": "idle", "retry_ms": null})).unwrap();
        assert!(matches!(idle, Fetched::Idle { retry_ms: None }));
        let claimed: Fetched<ClaimedWork> = serde_json::from_value(json!({
            "result": "claimed", "lock_token": "t", "attempt_count": 1, "item": {"x": 1}
        }))
        .unwrap();
        assert!(matches!(
            claimed,
            Fetched::Claimed {
                item: ClaimedWork {
                    attempt_count: 1,
                    ..
                },
                rest: None,
            }
        ));
        let last: Fetched<ClaimedWork> = serde_json::from_value(json!({
            "result": "claimed", "lock_token": "t", "attempt_count": 1, "item": {"x": 1},
            "rest": {"retry_ms": null}
        }))
        .unwrap();
        assert!(matches!(
            last,
            Fetched::Claimed {
                rest: Some(Rest { retry_ms: None }),
                ..
            }
        ));
        let refused: AdminOutcome<DeleteCounts> =
            serde_json::from_value(json!({"result": "refused", "error": "no"})).unwrap();
        assert!(matches!(refused, AdminOutcome::Refused { .. }));
        let lost: AckOutcome = serde_json::from_value(json!({"result": "lock_lost"})).unwrap();
        assert!(matches!(lost, AckOutcome::LockLost));
    }

    #[test]
    fn a_claimed_result_that_does_not_decode_is_an_error_not_idle() {
        // Without the tag, this document could pass for an idle answer.
        let broken = json!({"result": "claimed", "lock_token": "t", "retry_ms": 5});
        assert!(serde_json::from_value::<Fetched<ClaimedWork>>(broken).is_err());
        let untagged = json!({"retry_ms": 5});
        assert!(serde_json::from_value::<Fetched<ClaimedWork>>(untagged).is_err());
    }

    #[test]
    fn kv_ops_are_tagged_by_op() {
        let ops = [
            KvOp::Set {
                key: "k",
                value: "v",
                ts: 7,
            },
            KvOp::Clear { key: "k" },
            KvOp::ClearAll,
        ];
        assert_eq!(
            serde_json::to_value(ops).unwrap(),
            json!([
                {"op": "set", "key": "k", "value": "v", "ts": 7},
                {"op": "clear", "key": "k"},
                {"op": "clear_all"}
            ])
        );
    }
}

//! Orchestrator queue: fetch, ack, abandon, renew and enqueue of
//! orchestration turns. Each call is one stored-procedure statement.

use std::time::Duration;

use diesel::dsl::select;
use diesel_async::RunQueryDsl;
use duroxide::Event;
use duroxide::providers::{
    DispatcherCapabilityFilter, ExecutionMetadata, OrchestrationItem, ScheduledActivityIdentifier,
    WorkItem,
};
use serde_json::{Value, json};

use super::codec::{self, AckOutcome, ClaimedOrchestration, Fetched};
use crate::error::{Error, Result};
use crate::procedures::*;
use crate::{PostgresProvider, pool};

/// What one fetch attempt produced.
pub(crate) enum Attempt {
    Item(Box<(OrchestrationItem, String, u32)>),
    /// Nothing claimable; `Some(ms)` = something may become claimable in `ms`.
    Idle(Option<u64>),
}

/// One round trip: lock the next ready instance and load its turn.
pub(crate) async fn fetch_once(
    p: &PostgresProvider,
    lock_timeout: Duration,
    filter: Option<&DispatcherCapabilityFilter>,
) -> Result<Attempt> {
    // Only the first range is honoured, as duroxide's contract specifies.
    let (min, max) = match filter {
        None => (None, None),
        Some(f) => match f.supported_duroxide_versions.as_slice().first() {
            None => return Ok(Attempt::Idle(None)),
            Some(r) => (Some(version_array(&r.min)), Some(version_array(&r.max))),
        },
    };
    let mut conn = pool::get(&p.pool).await?;
    let doc: Value = select(dx_fetch_orchestration(
        codec::millis(lock_timeout),
        min,
        max,
    ))
    .get_result(&mut conn)
    .await?;
    drop(conn);
    match codec::from_json::<Fetched<ClaimedOrchestration>>(doc, "fetch result")? {
        Fetched::Idle(idle) => Ok(Attempt::Idle(idle.retry_ms)),
        Fetched::Claimed(c) => Ok(Attempt::Item(Box::new(into_item(c)?))),
    }
}

fn version_array(v: &semver::Version) -> Vec<i32> {
    [v.major, v.minor, v.patch]
        .iter()
        .map(|n| i32::try_from(*n).unwrap_or(i32::MAX))
        .collect()
}

fn into_item(c: ClaimedOrchestration) -> Result<(OrchestrationItem, String, u32)> {
    let messages = c
        .messages
        .into_iter()
        .map(|m| codec::from_json::<WorkItem>(m, "orchestrator message"))
        .collect::<Result<Vec<_>>>()?;

    // A new instance takes its name and version from its start message; the
    // runtime resolves a missing version and stores it through ack metadata.
    let start = messages.iter().find_map(|m| match m {
        WorkItem::StartOrchestration {
            orchestration,
            version,
            ..
        }
        | WorkItem::ContinueAsNew {
            orchestration,
            version,
            ..
        } => Some((orchestration, version)),
        _ => None,
    });
    let name = c
        .name
        .or_else(|| start.map(|(name, _)| name.clone()))
        .unwrap_or_default();
    let version = c
        .version
        .or_else(|| start.and_then(|(_, version)| version.clone()));

    // Undecodable history is reported in `history_error` with the lock held,
    // so the runtime's poison handling can terminate the instance.
    let (history, history_error) = match codec::decode_history(c.history) {
        Ok(h) => (h, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };

    let item = OrchestrationItem {
        instance: c.instance,
        orchestration_name: name,
        execution_id: c.execution_id,
        version: version.unwrap_or_else(|| "unknown".to_owned()),
        history,
        messages,
        history_error,
        kv_snapshot: codec::kv_snapshot(c.kv),
    };
    Ok((item, c.lock_token, c.attempt_count))
}

/// One round trip: commit a whole turn atomically.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn ack(
    p: &PostgresProvider,
    lock_token: &str,
    execution_id: u64,
    history_delta: &[Event],
    worker_items: &[WorkItem],
    orchestrator_items: &[WorkItem],
    metadata: &ExecutionMetadata,
    cancelled: &[ScheduledActivityIdentifier],
) -> Result<()> {
    let execution_id = codec::to_i64(execution_id, "execution_id")?;
    let history = codec::history_delta(history_delta)?;
    let workers = worker_items
        .iter()
        .map(codec::worker_entry)
        .collect::<Result<Vec<_>>>()?;
    let orchestrators = orchestrator_items
        .iter()
        .map(codec::orchestrator_entry)
        .collect::<Result<Vec<_>>>()?;
    let metadata = json!({
        "status": metadata.status,
        "output": metadata.output,
        "orchestration_name": metadata.orchestration_name,
        "orchestration_version": metadata.orchestration_version,
        "parent_instance_id": metadata.parent_instance_id,
        "pinned_version": metadata.pinned_duroxide_version.as_ref().map(|v| [v.major, v.minor, v.patch]),
    });
    let cancelled_docs: Vec<Value> = cancelled
        .iter()
        .map(|a| json!({ "instance": a.instance, "execution_id": a.execution_id, "activity_id": a.activity_id }))
        .collect();

    // A worker of this process waiting for work gets one of the new
    // activities claimed for it by this same statement.
    let claim = p.worker_waiters.claim(worker_items, cancelled);
    let claim_doc = claim
        .as_ref()
        .map(|c| json!({ "index": c.index, "lock_ms": codec::millis(c.lock_timeout) }));

    let mut conn = pool::get(&p.pool).await?;
    let doc: Value = select(dx_ack_orchestration(
        lock_token,
        execution_id,
        history,
        Value::Array(workers),
        Value::Array(orchestrators),
        metadata,
        codec::custom_status_change(history_delta),
        codec::kv_ops(history_delta),
        Value::Array(cancelled_docs),
        claim_doc,
    ))
    .get_result(&mut conn)
    .await?;
    drop(conn);
    let outcome: AckOutcome = codec::from_json(doc, "ack result")?;
    if outcome.status != "ok" {
        return Err(Error::LockLost);
    }
    let item = claim
        .as_ref()
        .and_then(|c| worker_items.get(c.index).cloned());
    if let (Some(claim), Some(token), Some(item)) = (claim, outcome.claimed, item) {
        if let Err(token) = claim.deliver(item, token) {
            // The waiter left meanwhile: make the activity fetchable again.
            super::worker::abandon(p, &token, None, true).await?;
        }
    }
    Ok(())
}

/// One round trip: release the lock, optionally delaying the messages.
pub(crate) async fn abandon(
    p: &PostgresProvider,
    lock_token: &str,
    delay: Option<Duration>,
    ignore_attempt: bool,
) -> Result<()> {
    let delay_ms = delay.map(codec::millis).unwrap_or(0);
    let mut conn = pool::get(&p.pool).await?;
    let found: bool = select(dx_abandon_orchestration(
        lock_token,
        delay_ms,
        ignore_attempt,
    ))
    .get_result(&mut conn)
    .await?;
    if found { Ok(()) } else { Err(Error::LockLost) }
}

/// One round trip: extend a live lock.
pub(crate) async fn renew(
    p: &PostgresProvider,
    lock_token: &str,
    extend_for: Duration,
) -> Result<()> {
    let mut conn = pool::get(&p.pool).await?;
    let renewed: bool = select(dx_renew_orchestration_lock(
        lock_token,
        codec::millis(extend_for),
    ))
    .get_result(&mut conn)
    .await?;
    if renewed {
        Ok(())
    } else {
        Err(Error::LockLost)
    }
}

/// One round trip: enqueue a message, visible after `delay`.
pub(crate) async fn enqueue(
    p: &PostgresProvider,
    item: &WorkItem,
    delay: Option<Duration>,
) -> Result<()> {
    let instance = codec::orchestrator_instance(item)?;
    let doc = codec::to_json(item)?;
    let kind = codec::kind_of(&doc)?;
    let delay_ms = delay.map(codec::millis).unwrap_or(0);
    let mut conn = pool::get(&p.pool).await?;
    let _id: i64 = select(dx_enqueue_orchestrator(instance, kind, doc, delay_ms))
        .get_result(&mut conn)
        .await?;
    Ok(())
}

//! Orchestrator queue: fetch, ack, abandon, renew and enqueue of
//! orchestration turns. Each call is one stored-procedure statement.

use std::time::Duration;

use diesel::dsl::select;
use duroxide::providers::{
    DispatcherCapabilityFilter, ExecutionMetadata, OrchestrationItem, ScheduledActivityIdentifier,
    WorkItem,
};
use duroxide::{Event, EventKind};
use serde_json::Value;

use super::codec;
use super::unclaimed::Claim;
use crate::PostgresProvider;
use crate::error::{Error, Result};
use crate::numeric;
use crate::pool::Budget;
use crate::sql::documents::{
    AckOutcome, CancelledActivity, ClaimedOrchestration, Fetched, Metadata, WorkerClaim,
};
use crate::sql::procedures::*;
use crate::sql::reply::WholeReply;

/// The version range a fetch with `filter` may claim: `Some(None)` for any
/// version, `None` when the filter supports none. Only the first range is
/// honoured, as duroxide's contract specifies.
pub(crate) fn version_range(
    filter: Option<&DispatcherCapabilityFilter>,
) -> Result<Option<super::quiet::Key>> {
    let Some(f) = filter else {
        return Ok(Some(None));
    };
    match f.supported_duroxide_versions.as_slice().first() {
        None => Ok(None),
        Some(r) => Ok(Some(Some((
            version_array(&r.min, "version range")?,
            version_array(&r.max, "version range")?,
        )))),
    }
}

/// One round trip: lock the next ready instance of `range` (from
/// [`version_range`]; None: no version supported, nothing to claim) and
/// load its turn.
pub(crate) async fn fetch_once(
    p: &PostgresProvider,
    token: &str,
    lock_timeout: Duration,
    range: Option<super::quiet::Key>,
) -> Result<Fetched<(OrchestrationItem, String, u32)>> {
    let (min, max) = match range {
        None => return Ok(Fetched::Idle { retry_ms: None }),
        Some(None) => (None, None),
        Some(Some((min, max))) => (Some(min.to_vec()), Some(max.to_vec())),
    };
    let mut conn = p.db.lease(Budget::Call).await?;
    let doc: Value = select(dx_fetch_orchestration(
        token,
        numeric::duration_ms(lock_timeout, "lock timeout")?,
        min,
        max,
        p.history_cache.reader(),
    ))
    .one(&mut conn)
    .await?;
    // A claimed turn that does not decode fails the call: the claim is then
    // released (see `unclaimed`), never mistaken for an idle answer.
    let fetched = match codec::from_json::<Fetched<ClaimedOrchestration>>(doc, "fetch result")? {
        Fetched::Claimed { item: mut c, rest } => {
            let history = turn_history(p, &mut conn, &mut c).await?;
            Fetched::Claimed {
                item: into_item(c, history),
                rest,
            }
        }
        Fetched::Idle { retry_ms } => Fetched::Idle { retry_ms },
    };
    conn.finish().await?;
    Ok(fetched)
}

/// The whole history of a claimed turn, from what the fetch sent and the
/// history cache; remembered there for the turn's commit. If the fetch sent
/// only the events after a prefix the cache no longer holds (evicted, or
/// an earlier commit's reply was lost), the execution is loaded on `conn`:
/// a second round trip, for this turn only. A history that does not
/// decode is returned as the error the turn reports in `history_error`.
async fn turn_history(
    p: &PostgresProvider,
    conn: &mut diesel_async::AsyncPgConnection,
    c: &mut ClaimedOrchestration,
) -> Result<Result<Vec<Event>>> {
    let cache = &p.history_cache;
    let sent = std::mem::take(&mut c.history);
    // The history and the base it was assembled on, if any.
    let assembled = match (codec::decode_history(sent), c.history_base.take()) {
        (Err(e), _) => Err(e),
        (Ok(whole), None) => Ok((whole, None)),
        (Ok(delta), Some(base)) => {
            match cache.assemble(&c.instance, c.execution_id, &base, &delta) {
                Some(history) => Ok((history, Some(base.token))),
                None => {
                    let rows =
                        super::history::execution_rows(conn, &c.instance, c.execution_id).await?;
                    codec::decode_history(rows).map(|whole| (whole, None))
                }
            }
        }
    };
    match assembled {
        Ok((history, stamp)) => {
            cache.fetched(&c.instance, c.execution_id, &history, &c.lock_token, stamp);
            Ok(Ok(history))
        }
        Err(e) => {
            cache.forget(&c.instance);
            Ok(Err(e))
        }
    }
}

/// `[major, minor, patch]` as the procedures' `INT[]`.
fn version_array(v: &semver::Version, what: &str) -> Result<[i32; 3]> {
    Ok([
        numeric::to_int(v.major, what)?,
        numeric::to_int(v.minor, what)?,
        numeric::to_int(v.patch, what)?,
    ])
}

/// Builds the turn handed to the runtime. Never fails: the lock is already
/// committed, and an error here would hide the row from duroxide's attempt
/// counting, so it would come back after every lock expiry forever.
///
/// A message that does not decode (written by a newer duroxide, or edited by
/// hand) is reported like undecodable history, in `history_error`. The
/// runtime then abandons the turn with a short delay, leaving the chance to a
/// node that can read it, and once the attempts exceed its `max_attempts` it
/// fails the instance as poison; that final commit deletes the locked
/// messages, the undecodable one included. Sent to an execution that has
/// already completed or failed, such a message is only logged: the runtime
/// acknowledges that batch without processing it.
fn into_item(
    c: ClaimedOrchestration,
    history: Result<Vec<Event>>,
) -> (OrchestrationItem, String, u32) {
    let mut messages = Vec::with_capacity(c.messages.len());
    let mut errors = Vec::new();
    for (position, message) in c.messages.into_iter().enumerate() {
        match serde_json::from_value::<WorkItem>(message) {
            Ok(item) => messages.push(item),
            Err(e) => errors.push(format!(
                "orchestrator message at position {position} does not deserialize: {e}"
            )),
        }
    }

    // Undecodable history is reported in `history_error` with the lock held,
    // so the runtime's poison handling can terminate the instance.
    let history = match history {
        Ok(h) => h,
        Err(e) => {
            errors.insert(0, e.to_string());
            Vec::new()
        }
    };

    // An instance without an instance row (its turns were acknowledged
    // without metadata) is named by its history's start event; a new one by
    // its start message. The runtime resolves a missing version and stores
    // it through ack metadata.
    let started = history.iter().find_map(|e| match &e.kind {
        EventKind::OrchestrationStarted { name, version, .. } => Some((name, version)),
        _ => None,
    });
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
        .or_else(|| started.map(|(name, _)| name.clone()))
        .or_else(|| start.map(|(name, _)| name.clone()))
        .unwrap_or_default();
    let version = c
        .version
        .or_else(|| started.map(|(_, version)| version.clone()))
        .or_else(|| start.and_then(|(_, version)| version.clone()));
    // Too large to load: the fetch left it out and said why.
    if let Some(e) = c.history_error {
        errors.insert(0, e);
    }
    // A finished execution ignores whatever arrives, so a message nobody can
    // read is dropped with the rest of the batch instead of turning a
    // completed instance into a poisoned one.
    let finished = history.iter().any(|e| {
        matches!(
            e.kind,
            EventKind::OrchestrationCompleted { .. } | EventKind::OrchestrationFailed { .. }
        )
    });
    if finished && !errors.is_empty() {
        tracing::warn!(
            instance = %c.instance,
            errors = %errors.join("; "),
            "dropping undecodable messages sent to a finished orchestration"
        );
        errors.clear();
    }
    let history_error = (!errors.is_empty()).then(|| errors.join("; "));

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
    (item, c.lock_token, c.attempt_count)
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
    let execution_id_sql = numeric::to_bigint(execution_id, "execution_id")?;
    refuse_unstorable_state(metadata, history_delta)?;
    let history = codec::to_json(&codec::history_delta(history_delta)?)?;
    let workers = codec::to_json(
        &worker_items
            .iter()
            .map(codec::worker_entry)
            .collect::<Result<Vec<_>>>()?,
    )?;
    let orchestrators = codec::to_json(
        &orchestrator_items
            .iter()
            .map(codec::orchestrator_entry)
            .collect::<Result<Vec<_>>>()?,
    )?;
    let kv_ops = codec::to_json(&codec::kv_ops(history_delta)?)?;
    let pinned = match &metadata.pinned_duroxide_version {
        Some(v) => Some(version_array(v, "pinned duroxide version")?),
        None => None,
    };
    let metadata = codec::to_json(&Metadata {
        status: metadata.status.as_deref(),
        output: metadata.output.as_deref(),
        orchestration_name: metadata.orchestration_name.as_deref(),
        orchestration_version: metadata.orchestration_version.as_deref(),
        parent_instance_id: metadata.parent_instance_id.as_deref(),
        pinned_major: pinned.map(|[major, _, _]| major),
        pinned_minor: pinned.map(|[_, minor, _]| minor),
        pinned_patch: pinned.map(|[_, _, patch]| patch),
    })?;
    codec::refuse_nul(&metadata, "execution metadata")?;
    let cancelled_docs = cancelled
        .iter()
        .map(|a| {
            codec::to_json(&CancelledActivity {
                instance: &a.instance,
                execution_id: numeric::to_bigint(
                    a.execution_id,
                    "cancelled activity execution_id",
                )?,
                activity_id: numeric::to_bigint(a.activity_id, "cancelled activity id")?,
            })
        })
        .collect::<Result<Vec<Value>>>()?;
    for doc in &cancelled_docs {
        codec::refuse_nul(doc, "cancelled activity")?;
    }

    // A worker of this process waiting for work gets one of the new
    // activities claimed for it by this same statement.
    let claim = p.worker_waiters.claim(worker_items, cancelled);
    let claim_lock_ms = match &claim {
        Some(c) => numeric::duration_ms(c.lock_timeout, "lock timeout")?,
        None => 0,
    };
    // The claimed activity's token is chosen here: if this call's outcome
    // is unknown, or the waiter is gone, the lock is released at once.
    let unclaimed = claim.as_ref().map(|_| Claim::handoff(&p.db));
    let claim_doc = match claim.as_ref().zip(unclaimed.as_ref()) {
        Some((c, u)) => Some(codec::to_json(&WorkerClaim {
            index: i64::try_from(c.index)
                .map_err(|_| Error::Data("claimed worker item index out of range".into()))?,
            lock_ms: claim_lock_ms,
            token: u.token(),
        })?),
        None => None,
    };
    let custom_status = codec::custom_status_change(history_delta)
        .map(|c| codec::to_json(&c))
        .transpose()?;

    let sent = p.history_cache.epoch();
    let mut conn = p.db.lease(Budget::Call).await?;
    let doc: Value = select(dx_ack_orchestration(
        lock_token,
        execution_id_sql,
        history,
        workers,
        orchestrators,
        metadata,
        custom_status,
        kv_ops,
        Value::Array(cancelled_docs),
        claim_doc,
        p.history_cache.reader(),
    ))
    .one(&mut conn)
    .await?;
    conn.finish().await?;
    let claimed = match codec::from_json::<AckOutcome>(doc, "ack result")? {
        AckOutcome::Committed {
            claimed,
            instance,
            last_event_id,
        } => {
            p.history_cache.committed(
                &instance,
                lock_token,
                execution_id,
                history_delta,
                last_event_id,
                sent,
            );
            // Their rows are gone: no worker of this provider gets them.
            p.claimed_ahead.cancelled(cancelled);
            claimed
        }
        AckOutcome::LockLost => {
            if let Some(u) = unclaimed {
                u.settled(); // nothing was committed
            }
            return Err(Error::LockLost);
        }
    };
    let item = claim
        .as_ref()
        .and_then(|c| worker_items.get(c.index).cloned());
    match (claim, claimed, item, unclaimed) {
        (Some(claim), Some(token), Some(item), Some(unclaimed)) => {
            // If the waiter left meanwhile, `unclaimed` makes the activity
            // fetchable again when dropped unsettled. The turn is committed
            // whatever happens to that release.
            if claim.deliver(item, token).is_ok() {
                unclaimed.settled();
            }
        }
        // Nothing claimed (the activity was cancelled in the same turn).
        (_, _, _, unclaimed) => {
            if let Some(u) = unclaimed {
                u.settled();
            }
        }
    }
    Ok(())
}

/// Refuses a turn whose output, custom status or key-value state holds
/// U+0000, naming the value, or whose key-value key is too long to index.
/// Checked before the history delta, which repeats these values inside its
/// events, so the error names what the orchestration set rather than the
/// event recording it.
///
/// The runtime answers this permanent error by committing a failure of the
/// orchestration built from the history it already had; the error text goes
/// into that commit, so it never quotes the offending value.
fn refuse_unstorable_state(metadata: &ExecutionMetadata, events: &[Event]) -> Result<()> {
    // A continued execution's "output" is the next execution's input.
    let output = match metadata.status.as_deref() {
        Some("ContinuedAsNew") => "continue-as-new input",
        _ => "orchestration output",
    };
    let fields = [
        (output, &metadata.output),
        ("orchestration name", &metadata.orchestration_name),
        ("orchestration version", &metadata.orchestration_version),
        ("parent instance id", &metadata.parent_instance_id),
    ];
    for (what, value) in fields {
        if value.as_deref().is_some_and(codec::has_nul) {
            return Err(codec::nul_refusal(what, ""));
        }
    }
    for event in events {
        match &event.kind {
            EventKind::CustomStatusUpdated {
                status: Some(status),
            } if codec::has_nul(status) => return Err(codec::nul_refusal("custom status", "")),
            EventKind::KeyValueSet { key, .. } | EventKind::KeyValueCleared { key }
                if codec::has_nul(key) =>
            {
                return Err(codec::nul_refusal("KV key", ""));
            }
            EventKind::KeyValueSet { key, value, .. } if codec::has_nul(value) => {
                return Err(codec::nul_refusal(
                    &format!("value of KV key {}", codec::printable(key)),
                    "",
                ));
            }
            EventKind::KeyValueSet { key, .. } | EventKind::KeyValueCleared { key }
                if event.instance_id.len() + key.len() > codec::MAX_KEY_BYTES =>
            {
                return Err(Error::Data(format!(
                    "KV key of {} bytes with an instance id of {} bytes exceeds the {} bytes \
                     PostgreSQL can index together",
                    key.len(),
                    event.instance_id.len(),
                    codec::MAX_KEY_BYTES
                )));
            }
            _ => {}
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
    let delay_ms = super::delay_ms(delay)?;
    let mut conn = p.db.lease(Budget::Call).await?;
    let found: bool = select(dx_abandon_orchestration(
        lock_token,
        delay_ms,
        ignore_attempt,
    ))
    .one(&mut conn)
    .await?;
    conn.finish().await?;
    if found { Ok(()) } else { Err(Error::LockLost) }
}

/// One round trip: extend a live lock.
pub(crate) async fn renew(
    p: &PostgresProvider,
    lock_token: &str,
    extend_for: Duration,
) -> Result<()> {
    let mut conn = p.db.lease(Budget::Call).await?;
    let renewed: bool = select(dx_renew_orchestration_lock(
        lock_token,
        numeric::duration_ms(extend_for, "lock extension")?,
    ))
    .one(&mut conn)
    .await?;
    conn.finish().await?;
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
    codec::refuse_long_instance(instance)?;
    let doc = codec::storable_item(item)?;
    let kind = codec::kind_of(&doc)?;
    let delay_ms = super::delay_ms(delay)?;
    let mut conn = p.db.lease(Budget::Call).await?;
    let _id: i64 = select(dx_enqueue_orchestrator(instance, kind, doc, delay_ms))
        .one(&mut conn)
        .await?;
    conn.finish().await?;
    Ok(())
}

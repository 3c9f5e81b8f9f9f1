//! Worker queue: fetch, ack, abandon, renew and enqueue of activity
//! executions, with session affinity and tag routing.

use std::time::Duration;

use diesel::dsl::select;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use duroxide::providers::{TagFilter, WorkItem};
use duroxide::{AppErrorKind, ErrorDetails};
use serde::Deserialize;
use serde_json::{Value, json};

use super::claimed_ahead::Shape;
use super::codec;
use super::unclaimed::Claim;
use crate::PostgresProvider;
use crate::error::{Error, Result};
use crate::numeric;
use crate::pool::Budget;
use crate::sql::documents::{AckClaimed, ClaimedWork, Fetched};
use crate::sql::procedures::*;
use crate::sql::reply::WholeReply;

/// A claimed activity: the item, its lock token and its attempt count.
pub(crate) type Claimed = (WorkItem, String, u32);

/// `dx_fetch_work`'s tag mode and tag list for a filter; None = match nothing.
fn tag_arguments(filter: &TagFilter) -> Option<(i32, Vec<String>)> {
    let sorted = |set: &std::collections::HashSet<String>| {
        let mut v: Vec<String> = set.iter().cloned().collect();
        v.sort();
        v
    };
    match filter {
        TagFilter::None => None,
        TagFilter::DefaultOnly => Some((0, Vec::new())),
        TagFilter::Tags(set) => Some((1, sorted(set))),
        TagFilter::DefaultAnd(set) => Some((2, sorted(set))),
        TagFilter::Any => Some((3, Vec::new())),
    }
}

/// `dx_fetch_work`'s arguments but the token and the reader.
struct FetchArgs {
    lock_ms: i64,
    owner: Option<String>,
    session_lock_ms: i64,
    tag_mode: i32,
    tags: Vec<String>,
}

impl FetchArgs {
    /// The arguments of a fetch with `shape`; None when its filter matches
    /// nothing.
    fn of(shape: &Shape) -> Result<Option<Self>> {
        let Some((tag_mode, tags)) = tag_arguments(&shape.filter) else {
            return Ok(None);
        };
        let (owner, session_lock_ms) = match &shape.session {
            Some((owner, lock)) => (
                Some(owner.clone()),
                numeric::duration_ms(*lock, "session lock timeout")?,
            ),
            None => (None, 0),
        };
        Ok(Some(Self {
            lock_ms: numeric::duration_ms(shape.lock_timeout, "lock timeout")?,
            owner,
            session_lock_ms,
            tag_mode,
            tags,
        }))
    }
}

/// One round trip: lock the next activity a fetch with `shape` may take.
pub(crate) async fn fetch_once(
    p: &PostgresProvider,
    token: &str,
    shape: &Shape,
) -> Result<Fetched<Claimed>> {
    let Some(args) = FetchArgs::of(shape)? else {
        return Ok(Fetched::Idle { retry_ms: None });
    };
    let sent = p.history_cache.epoch();
    let mut conn = p.db.lease(Budget::Call).await?;
    let doc: Value = select(dx_fetch_work(
        token,
        args.lock_ms,
        args.owner,
        args.session_lock_ms,
        args.tag_mode,
        args.tags,
        p.history_cache.reader(),
    ))
    .one(&mut conn)
    .await?;
    conn.finish().await?;
    match codec::from_json::<Fetched<ClaimedWork>>(doc, "fetch result")? {
        Fetched::Idle { retry_ms } => Ok(Fetched::Idle { retry_ms }),
        Fetched::Claimed { item: c, rest } => match decode_activity(&c.item) {
            Ok(item) => {
                // duroxide's worker reads the instance's history next.
                if let Some(stamp) = &c.history {
                    p.history_cache.confirm(stamp, sent);
                }
                Ok(Fetched::Claimed {
                    item: (item, c.lock_token, c.attempt_count),
                    rest,
                })
            }
            Err(error) => stand_in(p, c, error).await,
        },
    }
}

/// The stored activity, which must be an `ActivityExecute`: duroxide's worker
/// dispatcher treats any other work item as state corruption and panics.
fn decode_activity(doc: &Value) -> std::result::Result<WorkItem, String> {
    match WorkItem::deserialize(doc) {
        Ok(item @ WorkItem::ActivityExecute { .. }) => Ok(item),
        Ok(_) => Err(format!(
            "stored work item is a {}, not an ActivityExecute",
            codec::kind_of(doc).unwrap_or_default()
        )),
        Err(e) => Err(format!("stored work item does not deserialize: {e}")),
    }
}

/// A worker-queue row's routing columns: instance, execution id, activity
/// id, session id and tag.
type Route = (
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

/// Hands the runtime a stand-in for a locked row that does not decode, so
/// the row follows duroxide's own path for work it cannot run rather than
/// coming back after every lock expiry unseen.
///
/// The stand-in is an `ActivityExecute` for the row's activity (its routing
/// columns name the instance, execution and activity id) whose name is
/// [`UNDECODABLE_ACTIVITY`](crate::UNDECODABLE_ACTIVITY) and whose input holds
/// the decode error and the stored document. No worker registers that name,
/// so the runtime abandons the row with a growing delay (a node that can
/// decode it may take it meanwhile) and, once the attempt count exceeds its
/// `max_attempts`, completes it as a poisoned activity, which fails the
/// orchestration with the poison details (the stored document included).
///
/// A row without routing columns (never written by this crate) has no
/// activity to fail: it is deleted, and logged with its stored document.
/// Costs one more round trip, on this path only.
async fn stand_in(p: &PostgresProvider, c: ClaimedWork, error: String) -> Result<Fetched<Claimed>> {
    use crate::schema::worker_queue as q;
    let mut conn = p.db.lease(Budget::Call).await?;
    let route: Option<Route> = q::table
        .filter(q::lock_token.eq(&c.lock_token))
        .select((
            q::instance_id,
            q::execution_id,
            q::activity_id,
            q::session_id,
            q::tag,
        ))
        .first(&mut conn)
        .await
        .optional()?;
    conn.finish().await?;
    let Some((instance, execution_id, activity_id, session_id, tag)) = route else {
        // The lock expired meanwhile and the row moved on: nothing to hand out.
        return Ok(Fetched::Idle { retry_ms: Some(0) });
    };
    // This path disposes of corrupt rows: a negative id names no activity
    // either, so it is handled like a missing one.
    let execution_id = execution_id.and_then(|v| numeric::from_bigint(v, "execution_id").ok());
    let activity_id = activity_id.and_then(|v| numeric::from_bigint(v, "activity_id").ok());
    let (Some(instance), Some(execution_id), Some(id)) = (instance, execution_id, activity_id)
    else {
        tracing::error!(
            error = %error,
            work_item = %c.item,
            "deleting an undecodable worker queue row that names no activity to fail"
        );
        match ack(p, &c.lock_token, None, None).await {
            Ok(()) | Err(Error::LockLost) => {}
            Err(e) => return Err(e),
        }
        return Ok(Fetched::Idle { retry_ms: Some(0) });
    };
    tracing::warn!(
        instance = %instance,
        execution_id,
        activity_id = id,
        attempt_count = c.attempt_count,
        error = %error,
        "worker queue row does not decode; handing the runtime a stand-in it cannot run"
    );
    let input = json!({ "error": error, "work_item": c.item }).to_string();
    let item = WorkItem::ActivityExecute {
        instance,
        execution_id,
        id,
        name: crate::UNDECODABLE_ACTIVITY.to_owned(),
        input,
        session_id,
        tag,
    };
    Ok(Fetched::Claimed {
        item: (item, c.lock_token, c.attempt_count),
        rest: None,
    })
}

/// One round trip: delete the activity and enqueue its completion; with
/// `next` (the shape of the fetch that handed out `token`), also claim the
/// activity that worker's next fetch would take and keep it for that fetch
/// (see `provider::claimed_ahead`).
///
/// An outcome PostgreSQL cannot store (U+0000 in the result or the error)
/// is replaced by a failure of the activity that says so. Refusing the ack
/// instead would leave the row locked; duroxide would abandon it, run the
/// activity again with the same outcome and finally poison it, running the
/// activity many times to report the same thing.
pub(crate) async fn ack(
    p: &PostgresProvider,
    token: &str,
    completion: Option<&WorkItem>,
    next: Option<&Shape>,
) -> Result<()> {
    let (instance, kind, doc) = match completion {
        None => (None, None, None),
        Some(item) => {
            let instance = match item {
                WorkItem::ActivityCompleted { instance, .. }
                | WorkItem::ActivityFailed { instance, .. } => instance.clone(),
                _ => {
                    return Err(Error::Data(
                        "an activity completes with ActivityCompleted or ActivityFailed only"
                            .into(),
                    ));
                }
            };
            let doc = storable_completion(item)?;
            (Some(instance), Some(codec::kind_of(&doc)?), Some(doc))
        }
    };
    let hold_ms =
        crate::numeric::duration_ms(p.options.completion_batch_window, "completion_batch_window")?;
    let next = match next {
        Some(shape) => FetchArgs::of(shape)?.map(|args| (shape, args)),
        None => None,
    };
    let Some((shape, args)) = next else {
        let mut conn = p.db.lease(Budget::Call).await?;
        let outcome: i32 = select(dx_ack_work(token, instance, kind, doc, hold_ms))
            .one(&mut conn)
            .await?;
        conn.finish().await?;
        return ack_outcome(outcome);
    };
    // The next activity's token is chosen here: unless the answer says what
    // became of it, its lock is released when `claim` is dropped.
    let claim = Claim::handoff(&p.db);
    let sent = p.history_cache.epoch();
    let sent_at = tokio::time::Instant::now();
    let sent_doc = async {
        let mut conn = p.db.lease(Budget::Call).await?;
        let doc: Value = select(dx_ack_work_claim(
            token,
            instance,
            kind,
            doc,
            hold_ms,
            Some(claim.token()),
            args.lock_ms,
            args.owner,
            args.session_lock_ms,
            args.tag_mode,
            args.tags,
            p.history_cache.reader(),
        ))
        .one(&mut conn)
        .await?;
        conn.finish().await?;
        Ok::<_, Error>(doc)
    };
    let doc = match sent_doc.await {
        Ok(doc) => doc,
        Err(e) => {
            if e.is_before_send() {
                claim.settled(); // nothing was sent, nothing to release
            }
            return Err(e);
        }
    };
    let answer = codec::from_json::<AckClaimed>(doc, "ack result")?;
    match answer.next {
        Some(Fetched::Claimed { item: c, .. }) => match decode_activity(&c.item) {
            Ok(item) => {
                if let Some(stamp) = &c.history {
                    p.history_cache.confirm(stamp, sent);
                }
                p.claimed_ahead
                    .hold(shape.clone(), sent_at, item, c.attempt_count, claim);
            }
            // Released when `claim` drops: a fetch takes it and, as for any
            // row that does not decode, hands the runtime a stand-in.
            Err(_) => drop(claim),
        },
        _ => claim.settled(),
    }
    ack_outcome(answer.acked)
}

/// What `dx_ack_work`'s answer means.
fn ack_outcome(outcome: i32) -> Result<()> {
    match outcome {
        0 => Err(Error::LockLost),
        1 => Ok(()),
        2 => {
            crate::observe::completion_held();
            Ok(())
        }
        other => Err(Error::Data(format!(
            "dx_ack_work answered {other}, not 0, 1 or 2"
        ))),
    }
}

/// The completion's document, or that of an application failure of the
/// same activity when PostgreSQL cannot store the completion.
fn storable_completion(item: &WorkItem) -> Result<Value> {
    let doc = codec::to_json(item)?;
    let Some(at) = codec::nul_pointer(&doc) else {
        return Ok(doc);
    };
    let (instance, execution_id, id, what) = match item {
        WorkItem::ActivityCompleted {
            instance,
            execution_id,
            id,
            ..
        } => (instance, *execution_id, *id, "activity result"),
        WorkItem::ActivityFailed {
            instance,
            execution_id,
            id,
            ..
        } => (instance, *execution_id, *id, "activity error"),
        _ => return Err(codec::nul_refusal("activity completion", &at)),
    };
    let message = codec::nul_message(what, "");
    tracing::warn!(
        instance = %codec::printable(instance),
        execution_id,
        activity_id = id,
        at = %at,
        "{message}; the activity is reported as failed"
    );
    // An instance id holding U+0000 still fails here: there is nothing
    // storable to report to.
    codec::storable_item(&WorkItem::ActivityFailed {
        instance: instance.clone(),
        execution_id,
        id,
        details: ErrorDetails::Application {
            kind: AppErrorKind::ActivityFailed,
            message,
            retryable: false,
        },
    })
}

/// One round trip: extend a live activity lock.
pub(crate) async fn renew(p: &PostgresProvider, token: &str, extend_for: Duration) -> Result<()> {
    let extend_ms = numeric::duration_ms(extend_for, "lock extension")?;
    let mut conn = p.db.lease(Budget::Call).await?;
    let renewed: bool = select(dx_renew_work_lock(token, extend_ms))
        .one(&mut conn)
        .await?;
    conn.finish().await?;
    if renewed {
        Ok(())
    } else {
        Err(Error::LockLost)
    }
}

/// One round trip: release the lock, visible again after `delay`.
pub(crate) async fn abandon(
    p: &PostgresProvider,
    token: &str,
    delay: Option<Duration>,
    ignore_attempt: bool,
) -> Result<()> {
    let delay_ms = super::delay_ms(delay)?;
    let mut conn = p.db.lease(Budget::Call).await?;
    let found: bool = select(dx_abandon_work(token, delay_ms, ignore_attempt))
        .one(&mut conn)
        .await?;
    conn.finish().await?;
    if found { Ok(()) } else { Err(Error::LockLost) }
}

/// One round trip: enqueue an activity execution.
pub(crate) async fn enqueue(p: &PostgresProvider, item: &WorkItem) -> Result<()> {
    let route = codec::worker_route(item)?;
    let doc = codec::storable_item(item)?;
    let mut conn = p.db.lease(Budget::Call).await?;
    let _id: i64 = select(dx_enqueue_worker(
        doc,
        Some(route.instance),
        Some(route.execution_id),
        Some(route.activity_id),
        route.session_id,
        route.tag,
    ))
    .one(&mut conn)
    .await?;
    conn.finish().await?;
    Ok(())
}

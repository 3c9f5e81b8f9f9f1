//! Worker queue: fetch, ack, abandon, renew and enqueue of activity
//! executions, with session affinity and tag routing.

use std::time::Duration;

use diesel::dsl::select;
use diesel_async::RunQueryDsl;
use duroxide::providers::{SessionFetchConfig, TagFilter, WorkItem};
use serde_json::Value;

use super::codec::{self, ClaimedWork, Fetched};
use crate::error::{Error, Result};
use crate::procedures::*;
use crate::{PostgresProvider, pool};

/// What one fetch attempt produced.
pub(crate) enum Attempt {
    Item(Box<WorkItem>, String, u32),
    /// Nothing claimable; `Some(ms)` = something may become claimable in `ms`.
    Idle(Option<u64>),
}

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

/// One round trip: lock the next matching activity.
pub(crate) async fn fetch_once(
    p: &PostgresProvider,
    lock_timeout: Duration,
    session: Option<&SessionFetchConfig>,
    tag_filter: &TagFilter,
) -> Result<Attempt> {
    let Some((tag_mode, tags)) = tag_arguments(tag_filter) else {
        return Ok(Attempt::Idle(None));
    };
    let owner = session.map(|s| s.owner_id.clone());
    let session_lock_ms = session.map(|s| codec::millis(s.lock_timeout)).unwrap_or(0);
    let mut conn = pool::get(&p.pool).await?;
    let doc: Value = select(dx_fetch_work(
        codec::millis(lock_timeout),
        owner,
        session_lock_ms,
        tag_mode,
        tags,
    ))
    .get_result(&mut conn)
    .await?;
    drop(conn);
    match codec::from_json::<Fetched<ClaimedWork>>(doc, "fetch result")? {
        Fetched::Idle(idle) => Ok(Attempt::Idle(idle.retry_ms)),
        Fetched::Claimed(c) => {
            let item = codec::from_json::<WorkItem>(c.item, "worker queue item")?;
            Ok(Attempt::Item(Box::new(item), c.lock_token, c.attempt_count))
        }
    }
}

/// One round trip: delete the activity and enqueue its completion.
pub(crate) async fn ack(
    p: &PostgresProvider,
    token: &str,
    completion: Option<&WorkItem>,
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
            let doc = codec::to_json(item)?;
            (Some(instance), Some(codec::kind_of(&doc)?), Some(doc))
        }
    };
    let mut conn = pool::get(&p.pool).await?;
    let done: bool = select(dx_ack_work(token, instance, kind, doc))
        .get_result(&mut conn)
        .await?;
    if done { Ok(()) } else { Err(Error::LockLost) }
}

/// One round trip: extend a live activity lock.
pub(crate) async fn renew(p: &PostgresProvider, token: &str, extend_for: Duration) -> Result<()> {
    let mut conn = pool::get(&p.pool).await?;
    let renewed: bool = select(dx_renew_work_lock(token, codec::millis(extend_for)))
        .get_result(&mut conn)
        .await?;
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
    let delay_ms = delay.map(codec::millis).unwrap_or(0);
    let mut conn = pool::get(&p.pool).await?;
    let found: bool = select(dx_abandon_work(token, delay_ms, ignore_attempt))
        .get_result(&mut conn)
        .await?;
    if found { Ok(()) } else { Err(Error::LockLost) }
}

/// One round trip: enqueue an activity execution.
pub(crate) async fn enqueue(p: &PostgresProvider, item: &WorkItem) -> Result<()> {
    let route = codec::worker_route(item)?;
    let doc = codec::to_json(item)?;
    let mut conn = pool::get(&p.pool).await?;
    let _id: i64 = select(dx_enqueue_worker(
        doc,
        Some(route.instance),
        Some(route.execution_id),
        Some(route.activity_id),
        route.session_id,
        route.tag,
    ))
    .get_result(&mut conn)
    .await?;
    Ok(())
}

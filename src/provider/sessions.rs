//! Session affinity: heartbeats and cleanup of orphaned sessions.

use std::time::Duration;

use diesel::dsl::{exists, not, now, select};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::PostgresProvider;
use crate::error::Result;
use crate::numeric;
use crate::pool::Budget;
use crate::schema::{sessions, worker_queue};
use crate::sql::procedures::dx_renew_sessions;
use crate::sql::reply::WholeReply;

/// One round trip: extend the non-idle sessions of `owner_ids`.
pub(crate) async fn renew(
    p: &PostgresProvider,
    owner_ids: &[&str],
    extend_for: Duration,
    idle_timeout: Duration,
) -> Result<usize> {
    if owner_ids.is_empty() {
        return Ok(0);
    }
    let owners: Vec<String> = owner_ids.iter().map(|s| (*s).to_owned()).collect();
    let mut conn = p.db.lease(Budget::Call).await?;
    let renewed: i64 = select(dx_renew_sessions(
        owners,
        numeric::duration_ms(extend_for, "session lock extension")?,
        numeric::duration_ms(idle_timeout, "session idle timeout")?,
    ))
    .one(&mut conn)
    .await?;
    conn.finish().await?;
    numeric::to_count(renewed, "count of renewed sessions")
}

/// Deletes expired sessions that no queued activity refers to.
pub(crate) async fn cleanup_orphaned(p: &PostgresProvider) -> Result<usize> {
    let mut conn = p.db.lease(Budget::Call).await?;
    let removed = diesel::delete(
        sessions::table
            .filter(sessions::locked_until.lt(now))
            .filter(not(exists(worker_queue::table.filter(
                worker_queue::session_id.eq(sessions::session_id.nullable()),
            )))),
    )
    .execute(&mut conn)
    .await?;
    conn.finish().await?;
    Ok(removed)
}

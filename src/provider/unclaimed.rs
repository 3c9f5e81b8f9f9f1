//! Locks whose holder never learned of them are released at once.
//!
//! Lock tokens are chosen here, before the statement that takes the lock is
//! sent. If that statement's outcome is unknown (it failed, timed out, or
//! its caller dropped it), the lock may have been committed with nobody to
//! use it: the instance or activity would wait for the whole lock timeout.
//! A [`Claim`] that is not [`settled`](Claim::settled) therefore abandons its
//! token in the background (not counted as an attempt). If no lock was
//! taken under it, that release finds nothing and changes nothing. If the
//! release overtakes a statement that is still running on the server and
//! commits later, that lock expires on its own, as before.
//!
//! A fetch's lock comes back after [`FETCH_RELEASE_PAUSE`], not at once:
//! its caller dropped the fetch, most often a runtime that is stopping
//! (duroxide races its fetches against shutdown), and the item should not be
//! offered again while that runtime is still winding down. An activity
//! claimed for a local worker that left is released at once: nobody was
//! stopping.

use std::time::Duration;

use diesel::dsl::select;

use crate::error::Error;
use crate::pool::{Budget, Db, bounded};
use crate::sql::procedures::{dx_abandon_orchestration, dx_abandon_work};
use crate::sql::reply::WholeReply;

/// Which queue a token locks rows of.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Queue {
    Orchestrator,
    Worker,
}

/// A fresh lock token.
pub(crate) fn new_token() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// How long the lock of a fetch whose outcome is unknown stays hidden
/// after its release (see the module docs): far below any lock timeout.
pub(crate) const FETCH_RELEASE_PAUSE: Duration = Duration::from_secs(1);

/// A token about to be used to take a lock; releases it on drop unless
/// settled.
pub(crate) struct Claim {
    db: Db,
    queue: Queue,
    token: String,
    settled: bool,
    /// Visibility delay of the release.
    pause: Duration,
}

impl Claim {
    /// The token of a fetch.
    pub(crate) fn fetch(db: &Db, queue: Queue) -> Self {
        Self {
            db: db.clone(),
            queue,
            token: new_token(),
            settled: false,
            pause: FETCH_RELEASE_PAUSE,
        }
    }

    /// The token of an activity a turn claims for a waiting local worker.
    pub(crate) fn handoff(db: &Db) -> Self {
        let mut claim = Self::fetch(db, Queue::Worker);
        claim.pause = Duration::ZERO;
        claim
    }

    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// The caller knows the outcome (a lock it now holds, or none taken).
    pub(crate) fn settled(mut self) {
        self.settled = true;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // No runtime (it is shutting down): the lock expires on its own.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (db, queue, token) = (self.db.clone(), self.queue, std::mem::take(&mut self.token));
        let pause = self.pause;
        handle.spawn(async move {
            let released = bounded(&db, Budget::Call, release(&db, queue, token, pause)).await;
            if let Err(e) = released {
                tracing::debug!(error = %e, ?queue, "could not release a lock of unknown outcome; it expires on its own");
            }
        });
    }
}

async fn release(db: &Db, queue: Queue, token: String, pause: Duration) -> Result<(), Error> {
    let pause_ms = crate::numeric::duration_ms(pause, "release pause")?;
    let mut conn = db.lease(Budget::Call).await?;
    let _found: bool = match queue {
        Queue::Orchestrator => {
            select(dx_abandon_orchestration(token, pause_ms, true))
                .one(&mut conn)
                .await?
        }
        Queue::Worker => {
            select(dx_abandon_work(token, pause_ms, true))
                .one(&mut conn)
                .await?
        }
    };
    conn.finish().await?;
    Ok(())
}

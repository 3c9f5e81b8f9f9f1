//! Activities an acknowledgement claimed for the next worker fetch.
//!
//! A busy duroxide worker fetches again right after `ack_work_item`. With a
//! [`next_activity_window`](crate::PostgresProviderBuilder::next_activity_window),
//! the acknowledgement also claims (migration `000021_ack_then_claim`) the
//! activity that worker's fetch would have taken: the same tag filter, lock
//! timeout and session owner, which this module remembers per lock token from
//! the fetch that handed the token out, so the claim keeps the queue's order
//! exactly. The claimed activity waits here for the next `fetch_work_item`
//! of this provider that may take it (see [`Shape::admits`]), and is handed
//! over without a round trip.
//!
//! Only the acknowledgement of a session-less activity claims: it locks no
//! session row, and the claim one at most, so the transaction never holds
//! one session row while it waits for another. duroxide's worker may stop
//! taking sessions between the fetch this module remembers and the next one
//! (its session capacity): a session-bound activity claimed ahead is then
//! not admitted and is released, while the session stays with its owner
//! until idle, as when duroxide abandons such an activity itself.
//!
//! Nothing is lost: each activity waiting here holds the unsettled
//! [`Claim`] of its lock, so when its wait ends without a taker (or the
//! acknowledgement's outcome was unknown, or the provider is dropped), the
//! lock is released at once, not counted as an attempt, and the activity is
//! fetchable again by anyone. An activity is handed to one fetch only, and
//! only while at least three quarters of its lock remain: it waits the window
//! or a quarter of its lock timeout, whichever is shorter, counted from
//! before the acknowledgement was sent.
//!
//! If the process exits meanwhile, the lock expires as any lock of a process
//! that exits does. An activity a turn committed through this provider
//! cancels (its row deleted) is dropped from here, so no worker starts it;
//! one cancelled by another process is handed out and found cancelled at
//! its first lock renewal, as one fetched just before the cancellation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use duroxide::providers::{ScheduledActivityIdentifier, SessionFetchConfig, TagFilter, WorkItem};
use tokio::time::Instant;

use super::handoff::{Handed, is_cancelled};
use super::unclaimed::Claim;

/// Most lock tokens remembered at once; a runtime holds one per running
/// activity, so this is far above any worker concurrency. A full map drops
/// its older half (tokens whose acknowledgement never came: a runtime
/// dropped mid-activity); an acknowledgement of a dropped token claims
/// nothing.
const MAX_SHAPES: usize = 4096;

/// What a worker fetch asked for: its acknowledgement's claim asks the same.
#[derive(Clone, Debug)]
pub(crate) struct Shape {
    pub filter: TagFilter,
    pub lock_timeout: Duration,
    /// Session owner and session lock timeout, when the fetch took sessions.
    pub session: Option<(String, Duration)>,
}

impl Shape {
    /// Whether a fetch asking for `other` may take `item`, claimed for
    /// `self`: the same lock timeout, a filter that accepts its tag, and for
    /// a session-bound activity a fetch that takes sessions, with the same
    /// owner and session lock timeout.
    fn admits(&self, other: &Shape, item: &WorkItem) -> bool {
        let WorkItem::ActivityExecute {
            tag, session_id, ..
        } = item
        else {
            return false;
        };
        let sessions_agree =
            session_id.is_none() || (other.session.is_some() && other.session == self.session);
        self.lock_timeout == other.lock_timeout
            && other.filter.matches(tag.as_deref())
            && sessions_agree
    }
}

struct Waiting {
    id: u64,
    shape: Shape,
    /// Taken by no fetch from then on.
    until: Instant,
    item: WorkItem,
    attempt_count: u32,
    /// Unsettled until a fetch takes the activity: dropping it releases the lock.
    claim: Claim,
}

/// The per-provider store: token shapes and claimed activities.
pub(crate) struct ClaimedAhead {
    window: Duration,
    /// Shape of each token a fetch handed out, and when.
    shapes: Mutex<HashMap<String, (Shape, Instant)>>,
    waiting: Arc<Mutex<Vec<Waiting>>>,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain inserts and removals: a panic while holding the lock leaves it whole.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ClaimedAhead {
    /// A store whose activities wait `window` at most (zero:
    /// acknowledgements claim nothing).
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            shapes: Mutex::default(),
            waiting: Arc::default(),
            next_id: AtomicU64::new(0),
        }
    }

    /// The shape of a worker fetch's arguments.
    pub(crate) fn shape(
        filter: &TagFilter,
        lock_timeout: Duration,
        session: Option<&SessionFetchConfig>,
    ) -> Shape {
        Shape {
            filter: filter.clone(),
            lock_timeout,
            session: session.map(|s| (s.owner_id.clone(), s.lock_timeout)),
        }
    }

    /// A fetch with `shape` handed out `item` under `token`: if `item` is
    /// session-less, its acknowledgement claims the same way.
    pub(crate) fn fetched(&self, token: &str, item: &WorkItem, shape: Shape) {
        let session_less = matches!(
            item,
            WorkItem::ActivityExecute {
                session_id: None,
                ..
            }
        );
        if self.window.is_zero() || !session_less {
            return;
        }
        let mut shapes = lock(&self.shapes);
        if shapes.len() >= MAX_SHAPES {
            let mut ages: Vec<Instant> = shapes.values().map(|(_, at)| *at).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            shapes.retain(|_, (_, at)| *at > cut);
        }
        shapes.insert(token.to_owned(), (shape, Instant::now()));
    }

    /// The shape `token`'s acknowledgement claims with, forgotten from now
    /// on; None when it claims nothing.
    pub(crate) fn acknowledging(&self, token: &str) -> Option<Shape> {
        lock(&self.shapes).remove(token).map(|(shape, _)| shape)
    }

    /// `token` was abandoned: its shape is not needed any more.
    pub(crate) fn forget(&self, token: &str) {
        lock(&self.shapes).remove(token);
    }

    /// Keeps an activity claimed under `claim` by a statement sent at
    /// `sent` for the next fetch `shape` admits; when its wait ends, the
    /// lock is released.
    pub(crate) fn hold(
        &self,
        shape: Shape,
        sent: Instant,
        item: WorkItem,
        attempt_count: u32,
        claim: Claim,
    ) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let until = sent + self.window.min(shape.lock_timeout / 4);
        lock(&self.waiting).push(Waiting {
            id,
            shape,
            until,
            item,
            attempt_count,
            claim,
        });
        let waiting = Arc::clone(&self.waiting);
        tokio::spawn(async move {
            tokio::time::sleep_until(until).await;
            let expired = {
                let mut list = lock(&waiting);
                list.iter()
                    .position(|w| w.id == id)
                    .map(|pos| list.remove(pos))
            };
            if expired.is_some() {
                crate::observe::claimed_ahead_released();
            }
            // Dropping `expired` (outside the lock) releases its claim.
        });
    }

    /// An activity claimed ahead that a fetch with `shape` may take, now
    /// its own; its shape is remembered for its acknowledgement.
    pub(crate) fn take(&self, shape: &Shape) -> Option<Handed> {
        let now = Instant::now();
        let taken = {
            let mut list = lock(&self.waiting);
            // Oldest first: the queue's order.
            let pos = list
                .iter()
                .position(|w| now < w.until && w.shape.admits(shape, &w.item))?;
            list.remove(pos)
        };
        let token = taken.claim.token().to_owned();
        taken.claim.settled();
        self.fetched(&token, &taken.item, shape.clone());
        crate::observe::claimed_ahead_taken();
        Some((taken.item, token, taken.attempt_count))
    }

    /// A committed turn of this provider deleted these activities' rows:
    /// drop them, with nothing left to release.
    pub(crate) fn cancelled(&self, cancelled: &[ScheduledActivityIdentifier]) {
        if cancelled.is_empty() {
            return;
        }
        let gone: Vec<Waiting> = lock(&self.waiting)
            .extract_if(.., |w| is_cancelled(&w.item, cancelled))
            .collect();
        for w in gone {
            w.claim.settled();
        }
    }

    /// Releases every activity waiting here (the provider is dropped).
    pub(crate) fn release_all(&self) {
        // Taken out first: the claims release outside the lock.
        let all = std::mem::take(&mut *lock(&self.waiting));
        drop(all);
    }
}

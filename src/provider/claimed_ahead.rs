//! Activities an acknowledgement claimed for the next worker fetch.
//!
//! A busy duroxide worker fetches again right after `ack_work_item`. With a
//! [`next_activity_window`](crate::PostgresProviderBuilder::next_activity_window),
//! the acknowledgement also claims (migration `000021_ack_then_claim`) the
//! activity that worker's fetch would have taken: the same tag filter, lock
//! timeout and session owner, which this module remembers per lock token
//! from the fetch that handed the token out. The claimed activity waits here
//! for the next `fetch_work_item` of this provider that would have been
//! allowed to claim it, and is handed over without a round trip.
//!
//! Nothing is lost: each activity waiting here holds the unsettled
//! [`Claim`] of its lock, so when the window passes without a taker (or the
//! acknowledgement's outcome was unknown, or the provider is dropped), the
//! lock is released at once, not counted as an attempt, and the activity is
//! fetchable again by anyone. An activity is handed to one fetch only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use duroxide::providers::{SessionFetchConfig, TagFilter, WorkItem};

use super::handoff::Handed;
use super::unclaimed::Claim;

/// Most lock tokens remembered at once; a runtime holds one per running
/// activity, so this is far above any worker concurrency. Beyond it,
/// acknowledgements of tokens not remembered claim nothing.
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
    /// Whether a fetch asking for `other` may take an activity claimed for
    /// `self`: same lock timeout, a filter that accepts its tag, and for a
    /// session-bound activity the same session owner.
    fn admits(&self, other: &Shape, item: &WorkItem) -> bool {
        let WorkItem::ActivityExecute {
            tag, session_id, ..
        } = item
        else {
            return false;
        };
        let same_owner = match (&self.session, &other.session) {
            (Some((a, _)), Some((b, _))) => a == b,
            _ => false,
        };
        self.lock_timeout == other.lock_timeout
            && other.filter.matches(tag.as_deref())
            && (session_id.is_none() || same_owner)
    }
}

struct Waiting {
    id: u64,
    shape: Shape,
    item: WorkItem,
    attempt_count: u32,
    /// Unsettled until a fetch takes the activity: dropping it releases the lock.
    claim: Claim,
}

/// The per-provider store: token shapes and claimed activities.
pub(crate) struct ClaimedAhead {
    window: Duration,
    shapes: Mutex<HashMap<String, Shape>>,
    waiting: Arc<Mutex<Vec<Waiting>>>,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain inserts and removals: a panic while holding the lock leaves it whole.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ClaimedAhead {
    /// A store whose activities wait `window` (zero: acknowledgements claim
    /// nothing).
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

    /// A fetch handed out `token`: its acknowledgement may claim the same
    /// way.
    pub(crate) fn fetched(&self, token: &str, shape: Shape) {
        if self.window.is_zero() {
            return;
        }
        let mut shapes = lock(&self.shapes);
        if shapes.len() < MAX_SHAPES {
            shapes.insert(token.to_owned(), shape);
        }
    }

    /// The shape `token`'s acknowledgement claims with, forgotten from now
    /// on; None when it claims nothing.
    pub(crate) fn acknowledging(&self, token: &str) -> Option<Shape> {
        lock(&self.shapes).remove(token)
    }

    /// `token` was abandoned: its shape is not needed any more.
    pub(crate) fn forget(&self, token: &str) {
        lock(&self.shapes).remove(token);
    }

    /// Keeps an activity claimed under `claim` for the next fetch `shape`
    /// admits, for the window at most; then its lock is released.
    pub(crate) fn hold(&self, shape: Shape, item: WorkItem, attempt_count: u32, claim: Claim) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.waiting).push(Waiting {
            id,
            shape,
            item,
            attempt_count,
            claim,
        });
        let waiting = Arc::clone(&self.waiting);
        let window = self.window;
        tokio::spawn(async move {
            tokio::time::sleep(window).await;
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
        let taken = {
            let mut list = lock(&self.waiting);
            let pos = list.iter().position(|w| w.shape.admits(shape, &w.item))?;
            // Oldest first: the queue's order.
            list.remove(pos)
        };
        let token = taken.claim.token().to_owned();
        taken.claim.settled();
        self.fetched(&token, shape.clone());
        crate::observe::claimed_ahead_taken();
        Some((taken.item, token, taken.attempt_count))
    }
}

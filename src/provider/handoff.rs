//! In-process handoff of newly scheduled activities to idle local workers.
//!
//! When an orchestration turn schedules activities while a worker of the
//! same provider is waiting for work, the turn's ack claims one matching
//! activity for that worker in the same statement and the item is handed
//! over in memory: the worker starts it without a notification hop and a
//! fetch round trip. A handoff that finds its waiter gone releases the item
//! again, so nothing is lost; an item is never handed to two waiters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use duroxide::providers::{ScheduledActivityIdentifier, TagFilter, WorkItem};
use tokio::sync::oneshot;

/// A worker fetch result: item, lock token, attempt count.
pub(crate) type Handed = (WorkItem, String, u32);

struct Waiter {
    id: u64,
    filter: TagFilter,
    lock_timeout: Duration,
    tx: oneshot::Sender<Handed>,
}

/// The worker fetches of this provider that are currently waiting.
#[derive(Default)]
pub(crate) struct Waiters {
    next_id: AtomicU64,
    waiting: Mutex<Vec<Waiter>>,
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiter>> {
        // The list stays consistent even if a holder panicked: plain pushes and removals.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Announces a waiting worker fetch; it stays announced until the
    /// returned registration is dropped or a turn claims work for it.
    pub(crate) fn register(
        self: &Arc<Self>,
        filter: &TagFilter,
        lock_timeout: Duration,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock().push(Waiter {
            id,
            filter: filter.clone(),
            lock_timeout,
            tx,
        });
        Registration {
            waiters: Arc::clone(self),
            id,
            rx,
        }
    }

    /// Picks a waiter for one of `items`: an activity without a session
    /// whose tag the waiter accepts and that this turn does not also cancel.
    pub(crate) fn claim(
        &self,
        items: &[WorkItem],
        cancelled: &[ScheduledActivityIdentifier],
    ) -> Option<Claim> {
        let mut waiting = self.lock();
        for (index, item) in items.iter().enumerate() {
            let WorkItem::ActivityExecute {
                session_id: None,
                tag,
                ..
            } = item
            else {
                continue;
            };
            if is_cancelled(item, cancelled) {
                continue;
            }
            if let Some(pos) = waiting
                .iter()
                .position(|w| w.filter.matches(tag.as_deref()))
            {
                let w = waiting.swap_remove(pos);
                return Some(Claim {
                    index,
                    lock_timeout: w.lock_timeout,
                    tx: w.tx,
                });
            }
        }
        None
    }
}

/// Whether `item` is an activity that `cancelled` names.
pub(crate) fn is_cancelled(item: &WorkItem, cancelled: &[ScheduledActivityIdentifier]) -> bool {
    let WorkItem::ActivityExecute {
        instance,
        execution_id,
        id,
        ..
    } = item
    else {
        return false;
    };
    cancelled
        .iter()
        .any(|c| &c.instance == instance && c.execution_id == *execution_id && c.activity_id == *id)
}

/// A waiter taken by a turn, to receive the item the turn claims for it.
pub(crate) struct Claim {
    /// Index of the claimed item among the turn's worker items.
    pub index: usize,
    /// The waiter's lock timeout, used for the claim.
    pub lock_timeout: Duration,
    tx: oneshot::Sender<Handed>,
}

impl Claim {
    /// Hands the claimed item over; if the waiter is gone, returns the lock
    /// token so the caller can release the item.
    pub(crate) fn deliver(self, item: WorkItem, token: String) -> Result<(), String> {
        self.tx
            .send((item, token, 1))
            .map_err(|(_, token, _)| token)
    }
}

/// A waiting worker fetch's place in [`Waiters`].
pub(crate) struct Registration {
    waiters: Arc<Waiters>,
    id: u64,
    rx: oneshot::Receiver<Handed>,
}

impl Registration {
    /// Whether a turn has taken this waiter (a handoff is on its way).
    pub(crate) fn claimed(&self) -> bool {
        !self.waiters.lock().iter().any(|w| w.id == self.id)
    }

    /// The handed-over item; `None` if the turn ended without one.
    pub(crate) async fn handed(&mut self) -> Option<Handed> {
        (&mut self.rx).await.ok()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.waiters.lock().retain(|w| w.id != self.id);
    }
}

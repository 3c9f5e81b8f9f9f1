//! The custom status a history read brought along, for the status call
//! that follows it (migration `000020_status_with_history`).
//!
//! duroxide's `Client::get_orchestration_status`, and so every poll of
//! `wait_for_orchestration`, calls [`Provider::read`] and then
//! [`Provider::get_custom_status`] for the same instance. `dx_read_history`
//! answers the instance's custom status and version with its events, from
//! the same snapshot; the read [`offer`](ReadStatus::offer)s it here and
//! the next [`get_custom_status`](Provider::get_custom_status) of that
//! instance [`take`](ReadStatus::take)s it instead of asking the server, if
//! it comes within the cached read window
//! ([`cached_read_window`](crate::PostgresProviderBuilder::cached_read_window)).
//!
//! Such an answer is the status as stored when the read ran, as for a
//! confirmed read: at most the window plus half a round trip older than a
//! query sent at the same moment would see. Writes through this provider
//! are never missed: a turn's acknowledgement (the only write that sets a
//! custom status) drops the instance's answer when it ends, whatever its
//! outcome, and an answer read before it ended is not kept; instance
//! deletions drop every answer, and those of reads in flight. An answer is
//! used once: a caller that polls the custom status alone asks the server
//! every time.
//!
//! [`Provider::read`]: duroxide::providers::Provider::read
//! [`Provider::get_custom_status`]: duroxide::providers::Provider::get_custom_status

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Stripes of instance names, each with a count of the writes that ended on
/// its instances: a read compares its stripe's count before and after.
const STRIPES: usize = 64;
/// Answers held beyond this many prune the expired ones on the next offer.
const PRUNE_ABOVE: usize = 256;

/// What `get_custom_status` answers: the status and its version, or None
/// when the instance has no status newer than the caller's version.
pub(crate) type StatusAnswer = Option<(Option<String>, u64)>;

/// See the module docs.
pub(crate) struct ReadStatus {
    /// How long an answer is usable (zero: never kept).
    window: Duration,
    hasher: RandomState,
    inner: Mutex<Inner>,
}

struct Inner {
    answers: HashMap<String, Held>,
    ended: [u64; STRIPES],
}

/// The custom status of an instance as a read saw it.
struct Held {
    /// None: the instance had no row (no status at any version).
    status: Option<(Option<String>, u64)>,
    at: Instant,
}

/// Taken before a read is sent; the stripe's write count at that moment.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket(u64);

impl ReadStatus {
    /// Answers usable for `window` after their read (zero: none kept).
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            hasher: RandomState::new(),
            inner: Mutex::new(Inner {
                answers: HashMap::new(),
                ended: [0; STRIPES],
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update is a plain insert, removal or increment, so a
        // poisoned lock holds nothing half-written.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stripe(&self, instance: &str) -> usize {
        (self.hasher.hash_one(instance) % STRIPES as u64) as usize
    }

    /// Take before sending a read of `instance`.
    pub(crate) fn ticket(&self, instance: &str) -> Ticket {
        let stripe = self.stripe(instance);
        Ticket(self.lock().ended[stripe])
    }

    /// A read of `instance` sent under `ticket` saw this custom status and
    /// version (`None`: no instance row): kept for the next status call,
    /// unless a write to the instance ended since the ticket.
    pub(crate) fn offer(
        &self,
        instance: &str,
        ticket: Ticket,
        status: Option<(Option<String>, u64)>,
    ) {
        if self.window.is_zero() {
            return;
        }
        let stripe = self.stripe(instance);
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.ended[stripe] != ticket.0 {
            return;
        }
        if inner.answers.len() >= PRUNE_ABOVE {
            let window = self.window;
            inner
                .answers
                .retain(|_, h| now.duration_since(h.at) <= window);
        }
        inner
            .answers
            .insert(instance.to_owned(), Held { status, at: now });
    }

    /// The answer to `get_custom_status(instance, last_seen_version)` from
    /// the last read of `instance`, if one is held and within the window;
    /// it is used up either way.
    pub(crate) fn take(&self, instance: &str, last_seen_version: u64) -> Option<StatusAnswer> {
        let held = self.lock().answers.remove(instance)?;
        if held.at.elapsed() > self.window {
            return None;
        }
        Some(
            held.status
                .filter(|(_, version)| *version > last_seen_version),
        )
    }

    /// A write that may change `instance`'s custom status ended (or was
    /// given up on): its held answer goes, and reads sent before now keep
    /// none.
    pub(crate) fn changed(&self, instance: &str) {
        let stripe = self.stripe(instance);
        let mut inner = self.lock();
        inner.ended[stripe] += 1;
        inner.answers.remove(instance);
    }

    /// Calls [`changed`](Self::changed) for `instance` when dropped: hold
    /// it across a write, so it counts however the write ends (its future
    /// dropped included).
    pub(crate) fn changing<'a>(&'a self, instance: &'a str) -> Changing<'a> {
        Changing {
            status: self,
            instance,
        }
    }

    /// Like [`changed`](Self::changed) for every instance (deletions).
    pub(crate) fn changed_all(&self) {
        let mut inner = self.lock();
        for n in &mut inner.ended {
            *n += 1;
        }
        inner.answers.clear();
    }
}

/// See [`ReadStatus::changing`].
pub(crate) struct Changing<'a> {
    status: &'a ReadStatus,
    instance: &'a str,
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        self.status.changed(self.instance);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    fn some(status: &str, version: u64) -> Option<(Option<String>, u64)> {
        Some((Some(status.to_owned()), version))
    }

    #[test]
    fn a_read_answers_the_next_status_call_once() {
        let r = ReadStatus::new(WINDOW);
        let t = r.ticket("i");
        r.offer("i", t, some("s", 3));
        assert_eq!(r.take("i", 0), Some(some("s", 3)));
        assert_eq!(r.take("i", 0), None, "used up");
    }

    #[test]
    fn the_answer_honours_the_last_seen_version_and_a_missing_instance() {
        let r = ReadStatus::new(WINDOW);
        r.offer("i", r.ticket("i"), some("s", 3));
        assert_eq!(r.take("i", 3), Some(None), "nothing newer than 3");
        r.offer("j", r.ticket("j"), None);
        assert_eq!(r.take("j", 0), Some(None), "no instance: no status");
        assert_eq!(r.take("k", 0), None, "nothing read");
    }

    #[test]
    fn a_write_that_ends_during_the_read_or_after_it_leaves_no_answer() {
        let r = ReadStatus::new(WINDOW);
        let t = r.ticket("i");
        r.changed("i");
        r.offer("i", t, some("old", 1));
        assert_eq!(r.take("i", 0), None, "read sent before the write ended");
        r.offer("i", r.ticket("i"), some("s", 2));
        r.changed("i");
        assert_eq!(r.take("i", 0), None, "dropped by the write");
        let t = r.ticket("i");
        r.changed_all();
        r.offer("i", t, some("s", 2));
        assert_eq!(r.take("i", 0), None, "read sent before a deletion ended");
    }

    #[test]
    fn a_write_to_another_instance_leaves_the_answer() {
        let r = ReadStatus::new(WINDOW);
        r.offer("i", r.ticket("i"), some("s", 1));
        // "j" may share "i"'s stripe: that only voids reads in flight.
        r.changed("j");
        assert_eq!(r.take("i", 0), Some(some("s", 1)));
    }

    #[test]
    fn answers_expire_and_a_zero_window_keeps_none() {
        let r = ReadStatus::new(Duration::from_millis(1));
        r.offer("i", r.ticket("i"), some("s", 1));
        std::thread::sleep(Duration::from_millis(3));
        assert_eq!(r.take("i", 0), None);
        let off = ReadStatus::new(Duration::ZERO);
        off.offer("i", off.ticket("i"), some("s", 1));
        assert_eq!(off.take("i", 0), None);
    }

    #[test]
    fn expired_answers_are_pruned() {
        let r = ReadStatus::new(Duration::from_millis(1));
        for i in 0..PRUNE_ABOVE {
            let id = format!("i{i}");
            r.offer(&id, r.ticket(&id), some("s", 1));
        }
        std::thread::sleep(Duration::from_millis(3));
        r.offer("last", r.ticket("last"), some("s", 1));
        assert_eq!(r.lock().answers.len(), 1);
    }
}

//! The histories of executions whose turns this provider ran, so the server
//! sends only what changed (migration `000008_history_cache`).
//!
//! Each committed turn records on its execution row this provider's
//! [`reader`](HistoryCache::reader) id, the turn's lock token and its last
//! event id. The next fetch of that execution by this provider returns only
//! the events after that id, naming the token and id it assumed (a
//! [`HistoryBase`]); [`assemble`](HistoryCache::assemble) puts the cached
//! prefix and those events together, or says it cannot (entry evicted, or
//! the commit's reply was lost), and the caller then loads the whole
//! execution. [`Provider::read`](duroxide::providers::Provider::read) sends
//! the token and last event id of its entry, and the server answers with
//! the events after it only while that turn is the execution's latest.
//!
//! History is append-only within an execution and a re-created instance has
//! new execution rows, so a matching token (unique per turn) and event id
//! mean the cached prefix is what the server stores. Entries are bounded by
//! their total number of events; the least recently used go first.
//!
//! # Confirmed reads
//! duroxide's worker reads the instance's history before every activity it
//! runs (for the orchestration's name and version). When the server has
//! just said that an entry is the instance's whole current history (the
//! claim of one of its activities named the entry's token and last event
//! id, migration `000012_confirmed_reads`, or a turn of this provider
//! committed it), the next read of that instance is answered from the
//! entry, once, if it comes within the read window
//! ([`cached_read_window`](crate::PostgresProviderBuilder::cached_read_window)).
//! Such an answer is the history as the server stored it when the claim or
//! commit ran: at most the window plus half a round trip older than what
//! a read sent then would see. Writes by another process in that interval
//! are seen by the read after it; writes through this provider are never
//! missed (a commit replaces the entry, appends drop it, and instance
//! deletions void every confirmation).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use duroxide::Event;

use crate::sql::documents::{HistoryBase, HistoryStamp};

/// See the module docs.
pub(crate) struct HistoryCache {
    /// This provider's id on the execution rows it committed turns of.
    reader: String,
    /// Most events held at once; 0 turns the cache off.
    capacity: usize,
    /// How long a confirmation answers a read (zero: never).
    read_window: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Events held, summed over entries.
    events: usize,
    /// Use counter for least-recently-used eviction.
    clock: u64,
    /// Bumped by writes that may change any instance's current history
    /// outside a turn (instance deletions): confirmations of an older epoch
    /// answer nothing.
    epoch: u64,
}

struct Entry {
    execution_id: u64,
    /// Token of the committed turn under which the server vouches for
    /// `events`; None until a turn of this provider commits.
    stamp: Option<String>,
    /// Token of the turn fetched from this entry and not yet committed.
    turn: Option<String>,
    /// The execution's history from its first event, in event id order.
    events: Vec<Event>,
    used: u64,
    /// When the server last confirmed `events` as the instance's current
    /// history, and in which epoch; taken by the read it answers.
    confirmed: Option<(Instant, u64)>,
}

/// The epoch a request was sent in, to confirm its reply's stamp with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Epoch(u64);

/// What a read sends with its request: which prefix this provider holds.
pub(crate) struct ReadBase {
    pub execution_id: u64,
    pub stamp: String,
    pub last_event_id: u64,
    /// The held events (a copy), to complete the answer with.
    pub events: Vec<Event>,
}

impl HistoryCache {
    /// A cache holding at most `capacity` events (0: off), answering a
    /// read within `read_window` of a confirmation (zero: never).
    pub(crate) fn new(capacity: usize, read_window: Duration) -> Self {
        Self {
            reader: uuid::Uuid::new_v4().to_string(),
            capacity,
            read_window,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The current epoch, taken before a request whose reply may confirm
    /// an entry.
    pub(crate) fn epoch(&self) -> Epoch {
        Epoch(self.lock().epoch)
    }

    /// Voids every confirmation, and those of requests sent before now
    /// (call once a write that may change current histories outside a turn
    /// has ended).
    pub(crate) fn void_confirmations(&self) {
        self.lock().epoch += 1;
    }

    /// The server said, in a reply to a request sent in `sent`, that the
    /// instance's latest execution was last changed by the turn `stamp`
    /// names: the entry is confirmed if it holds exactly that history.
    pub(crate) fn confirm(&self, stamp: &HistoryStamp, sent: Epoch) {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.epoch != sent.0 {
            return;
        }
        if let Some(entry) = inner.entries.get_mut(&stamp.instance)
            && entry.execution_id == stamp.execution_id
            && entry.stamp.as_deref() == Some(stamp.token.as_str())
            && entry.events.last().map(|e| e.event_id) == Some(stamp.last_event_id)
        {
            entry.confirmed = Some((now, sent.0));
        }
    }

    /// The history of `instance` if a confirmation not yet used answers a
    /// read now (see the module docs); the confirmation is used up.
    pub(crate) fn confirmed_read(&self, instance: &str) -> Option<Vec<Event>> {
        let mut inner = self.lock();
        let epoch = inner.epoch;
        let entry = inner.entries.get_mut(instance)?;
        let (at, confirmed_in) = entry.confirmed.take()?;
        (confirmed_in == epoch && at.elapsed() <= self.read_window).then(|| entry.events.clone())
    }

    /// The id fetches and commits send; None when the cache is off, so the
    /// server always sends whole histories.
    pub(crate) fn reader(&self) -> Option<&str> {
        (self.capacity > 0).then_some(self.reader.as_str())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves entries whole (every
        // update replaces or removes one), so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The history of a turn the server sent as `delta` after `base`: the
    /// cached events up to `base` then `delta`. None if the cache does not
    /// hold that prefix of that execution.
    pub(crate) fn assemble(
        &self,
        instance: &str,
        execution_id: u64,
        base: &HistoryBase,
        delta: &[Event],
    ) -> Option<Vec<Event>> {
        let inner = self.lock();
        let entry = inner.entries.get(instance)?;
        if entry.execution_id != execution_id || entry.stamp.as_deref() != Some(base.token.as_str())
        {
            return None;
        }
        let prefix = prefix_through(&entry.events, base.last_event_id)?;
        let mut history = Vec::with_capacity(prefix.len() + delta.len());
        history.extend_from_slice(prefix);
        history.extend_from_slice(delta);
        Some(history)
    }

    /// Remembers the history of a turn fetched under `token`, to be extended
    /// by its commit. `stamp` is the base it was assembled on, if any (the
    /// server vouched for it under that token).
    pub(crate) fn fetched(
        &self,
        instance: &str,
        execution_id: u64,
        history: &[Event],
        token: &str,
        stamp: Option<String>,
    ) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.lock();
        inner.put(
            instance,
            Entry {
                execution_id,
                stamp,
                turn: Some(token.to_owned()),
                events: history.to_vec(),
                used: 0,
                confirmed: None,
            },
            self.capacity,
        );
    }

    /// The turn fetched under `token` committed `delta` to `execution_id`;
    /// the server's last event id of that execution is now `last_event_id`.
    /// The entry then holds the whole history under `token`, confirmed as
    /// the instance's current history (the commit was sent in `sent`), or
    /// is dropped if it does not end at that event.
    pub(crate) fn committed(
        &self,
        instance: &str,
        token: &str,
        execution_id: u64,
        delta: &[Event],
        last_event_id: Option<u64>,
        sent: Epoch,
    ) {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(mut entry) = inner.take(instance) else {
            return;
        };
        if entry.turn.as_deref() != Some(token) {
            // Another turn's entry (ours was replaced): keep it as it is.
            inner.put(instance, entry, self.capacity);
            return;
        }
        if entry.execution_id != execution_id {
            // Continue-as-new: the turn began the next execution.
            entry.events.clear();
            entry.execution_id = execution_id;
        }
        entry.events.extend_from_slice(delta);
        if entry.events.last().map(|e| e.event_id) != last_event_id {
            return;
        }
        entry.stamp = Some(token.to_owned());
        entry.turn = None;
        entry.confirmed = (inner.epoch == sent.0).then_some((now, inner.epoch));
        inner.put(instance, entry, self.capacity);
    }

    /// What a read of `instance` can send (None: nothing vouched for).
    pub(crate) fn read_base(&self, instance: &str) -> Option<ReadBase> {
        let mut inner = self.lock();
        inner.clock += 1;
        let clock = inner.clock;
        let entry = inner.entries.get_mut(instance)?;
        let stamp = entry.stamp.clone()?;
        let last_event_id = entry.events.last()?.event_id;
        entry.used = clock;
        Some(ReadBase {
            execution_id: entry.execution_id,
            stamp,
            last_event_id,
            events: entry.events.clone(),
        })
    }

    /// Drops what is held of `instance` (its history was changed outside
    /// a turn).
    pub(crate) fn forget(&self, instance: &str) {
        self.lock().take(instance);
    }

    /// Events held (for tests and metrics).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.lock().events
    }
}

impl Inner {
    fn take(&mut self, instance: &str) -> Option<Entry> {
        let entry = self.entries.remove(instance)?;
        self.events -= entry.events.len();
        Some(entry)
    }

    /// Inserts or replaces `instance`'s entry, then evicts the least
    /// recently used entries down to nine tenths of `capacity` if it is
    /// exceeded (an entry larger than that is not kept).
    fn put(&mut self, instance: &str, mut entry: Entry, capacity: usize) {
        self.take(instance);
        if entry.events.len() > capacity / 10 * 9 {
            return;
        }
        self.clock += 1;
        entry.used = self.clock;
        self.events += entry.events.len();
        self.entries.insert(instance.to_owned(), entry);
        if self.events > capacity {
            let mut by_age: Vec<(u64, String)> = self
                .entries
                .iter()
                .map(|(k, e)| (e.used, k.clone()))
                .collect();
            by_age.sort_unstable();
            for (_, key) in by_age {
                if self.events <= capacity / 10 * 9 {
                    break;
                }
                self.take(&key);
            }
        }
    }
}

/// The events of `events` with ids up to `last_event_id`, if they end
/// exactly there (`events` is in id order).
fn prefix_through(events: &[Event], last_event_id: u64) -> Option<&[Event]> {
    let n = events.partition_point(|e| e.event_id <= last_event_id);
    (n > 0 && events[n - 1].event_id == last_event_id).then(|| &events[..n])
}

#[cfg(test)]
mod tests {
    use super::*;
    use duroxide::EventKind;

    const WINDOW: Duration = Duration::from_secs(60);

    fn ev(id: u64) -> Event {
        Event::with_event_id(id, "i", 1, None, EventKind::TimerCreated { fire_at_ms: id })
    }

    fn evs(ids: std::ops::RangeInclusive<u64>) -> Vec<Event> {
        ids.map(ev).collect()
    }

    fn base(token: &str, last: u64) -> HistoryBase {
        HistoryBase {
            token: token.into(),
            last_event_id: last,
        }
    }

    fn ids(h: &[Event]) -> Vec<u64> {
        h.iter().map(|e| e.event_id).collect()
    }

    #[test]
    fn a_committed_turn_is_the_base_of_the_next_fetch() {
        let c = HistoryCache::new(1000, WINDOW);
        c.fetched("i", 1, &evs(1..=3), "t1", None);
        // Nothing vouched for before the commit.
        assert!(c.assemble("i", 1, &base("t1", 3), &[]).is_none());
        c.committed("i", "t1", 1, &evs(4..=5), Some(5), c.epoch());
        let h = c.assemble("i", 1, &base("t1", 5), &evs(6..=7)).unwrap();
        assert_eq!(ids(&h), (1..=7).collect::<Vec<_>>());
        // A base the cache does not hold: other token, other execution,
        // an event id it does not end at.
        assert!(c.assemble("i", 1, &base("t0", 5), &[]).is_none());
        assert!(c.assemble("i", 2, &base("t1", 5), &[]).is_none());
        assert!(c.assemble("i", 1, &base("t1", 9), &[]).is_none());
        // A shorter prefix of the same turn is fine.
        assert_eq!(
            ids(&c.assemble("i", 1, &base("t1", 2), &[]).unwrap()),
            vec![1, 2]
        );
    }

    #[test]
    fn a_commit_that_does_not_end_where_the_server_says_drops_the_entry() {
        let c = HistoryCache::new(1000, WINDOW);
        c.fetched("i", 1, &evs(1..=3), "t1", None);
        c.committed("i", "t1", 1, &evs(4..=4), Some(9), c.epoch());
        assert!(c.read_base("i").is_none());
        assert_eq!(c.held(), 0);
    }

    #[test]
    fn a_commit_of_another_turn_leaves_the_entry_alone() {
        let c = HistoryCache::new(1000, WINDOW);
        c.fetched("i", 1, &evs(1..=3), "t2", None);
        c.committed("i", "t1", 1, &evs(4..=4), Some(4), c.epoch());
        assert!(c.read_base("i").is_none(), "t2 has not committed");
        c.committed("i", "t2", 1, &evs(4..=4), Some(4), c.epoch());
        let r = c.read_base("i").unwrap();
        assert_eq!((r.stamp.as_str(), r.last_event_id), ("t2", 4));
    }

    #[test]
    fn continue_as_new_starts_the_entry_over() {
        let c = HistoryCache::new(1000, WINDOW);
        c.fetched("i", 1, &evs(1..=3), "t1", None);
        c.committed("i", "t1", 2, &evs(1..=2), Some(2), c.epoch());
        let r = c.read_base("i").unwrap();
        assert_eq!((r.execution_id, ids(&r.events)), (2, vec![1, 2]));
    }

    #[test]
    fn least_recently_used_entries_go_first() {
        let c = HistoryCache::new(100, WINDOW);
        for (k, t) in [("a", "ta"), ("b", "tb"), ("c", "tc")] {
            c.fetched(k, 1, &evs(1..=40), t, None);
            c.committed(k, t, 1, &[], Some(40), c.epoch());
        }
        // 120 > 100: evicted down to 90, oldest first.
        assert_eq!(c.held(), 80);
        assert!(c.read_base("a").is_none());
        assert!(c.read_base("b").is_some() && c.read_base("c").is_some());
        // Too large to keep at all.
        c.fetched("d", 1, &evs(1..=95), "td", None);
        assert!(c.read_base("d").is_none());
    }

    #[test]
    fn off_holds_nothing() {
        let c = HistoryCache::new(0, WINDOW);
        assert!(c.reader().is_none());
        c.fetched("i", 1, &evs(1..=3), "t1", None);
        c.committed("i", "t1", 1, &[], Some(3), c.epoch());
        assert!(c.read_base("i").is_none());
    }

    fn stamp(token: &str, execution_id: u64, last: u64) -> HistoryStamp {
        HistoryStamp {
            instance: "i".into(),
            execution_id,
            token: token.into(),
            last_event_id: last,
        }
    }

    #[test]
    fn a_commit_answers_one_read() {
        let c = HistoryCache::new(1000, WINDOW);
        c.fetched("i", 1, &evs(1..=3), "t1", None);
        assert!(
            c.confirmed_read("i").is_none(),
            "a fetched turn is not confirmed"
        );
        c.committed("i", "t1", 1, &evs(4..=5), Some(5), c.epoch());
        assert_eq!(
            ids(&c.confirmed_read("i").unwrap()),
            (1..=5).collect::<Vec<_>>()
        );
        assert!(
            c.confirmed_read("i").is_none(),
            "a confirmation answers one read"
        );
    }

    #[test]
    fn a_claim_confirms_only_the_history_it_names() {
        let c = HistoryCache::new(1000, WINDOW);
        c.fetched("i", 1, &evs(1..=3), "t1", None);
        c.committed("i", "t1", 1, &[], Some(3), c.epoch());
        assert!(c.confirmed_read("i").is_some());
        // Another turn, another execution, another last event: not ours.
        for other in [stamp("t0", 1, 3), stamp("t1", 2, 3), stamp("t1", 1, 4)] {
            c.confirm(&other, c.epoch());
            assert!(c.confirmed_read("i").is_none(), "{other:?}");
        }
        c.confirm(&stamp("t1", 1, 3), c.epoch());
        assert_eq!(ids(&c.confirmed_read("i").unwrap()), vec![1, 2, 3]);
    }

    #[test]
    fn a_deletion_voids_confirmations_given_and_in_flight() {
        let c = HistoryCache::new(1000, WINDOW);
        c.fetched("i", 1, &evs(1..=3), "t1", None);
        let before = c.epoch();
        c.committed("i", "t1", 1, &[], Some(3), before);
        c.void_confirmations();
        assert!(c.confirmed_read("i").is_none(), "given before the deletion");
        c.confirm(&stamp("t1", 1, 3), before);
        assert!(c.confirmed_read("i").is_none(), "sent before the deletion");
        c.confirm(&stamp("t1", 1, 3), c.epoch());
        assert!(c.confirmed_read("i").is_some());
    }

    #[test]
    fn a_confirmation_expires_after_the_window() {
        let c = HistoryCache::new(1000, Duration::ZERO);
        c.fetched("i", 1, &evs(1..=3), "t1", None);
        c.committed("i", "t1", 1, &[], Some(3), c.epoch());
        std::thread::sleep(Duration::from_millis(2));
        assert!(c.confirmed_read("i").is_none());
        // The entry itself stays for reads that go to the server.
        assert!(c.read_base("i").is_some());
    }
}

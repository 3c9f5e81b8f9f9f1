//! The [`Provider`] and [`ProviderAdmin`] implementations: thin dispatchers
//! onto one module per queue or table.

pub(crate) mod admin;
pub(crate) mod claimed_ahead;
pub(crate) mod codec;
pub(crate) mod handoff;
mod history;
pub(crate) mod history_cache;
pub(crate) mod listener;
mod orchestrator;
pub(crate) mod quiet;
pub(crate) mod read_status;
mod sessions;
mod state;
mod unclaimed;
pub(crate) mod unsettled;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duroxide::providers::{
    DispatcherCapabilityFilter, ExecutionMetadata, OrchestrationItem, Provider, ProviderAdmin,
    ProviderError, ScheduledActivityIdentifier, SessionFetchConfig, TagFilter, WorkItem,
};
use duroxide::{Event, SystemStats};
use tokio::sync::Notify;

use crate::PostgresProvider;
use crate::error::Result;
use crate::numeric;
use crate::observe::{self, Call, Report, instance_of, instance_of_events, observe};
use crate::pool::{Backoff, Budget, bounded};
use crate::sql::documents::Fetched;

use unclaimed::{Claim, Queue};

/// An optional delay as the procedures' milliseconds (none = 0).
fn delay_ms(delay: Option<Duration>) -> Result<i64> {
    delay.map_or(Ok(0), |d| numeric::duration_ms(d, "delay"))
}

impl PostgresProvider {
    fn wakeups(&self) -> &Arc<listener::Wakeups> {
        self.wakeups.get_or_init(|| {
            listener::spawn(
                self.direct.clone(),
                listener::Liveness {
                    faults: self.db.faults(),
                    heartbeat: self.options.listener_heartbeat,
                    timeout: self.options.call_timeout,
                },
            )
        })
    }

    /// Runs `attempt` until it yields an item or `poll_timeout` passes.
    ///
    /// Between attempts no connection is held: the waiter sleeps until a
    /// notification for `queue`, the earliest scheduled visibility the
    /// database reported, a local handoff through `inbox`, or the deadline.
    /// With `quiet` (orchestrator queue only: its fetches' version range),
    /// an attempt is not made while this provider's last one proved it
    /// would find nothing (see [`quiet`]).
    /// Dropping the future at any await point leaves nothing behind: each
    /// attempt is a single statement, and an abandoned handoff is released
    /// by the turn that made it.
    async fn long_poll<T, F, Fut>(
        &self,
        op: &'static str,
        queue: Queue,
        poll_timeout: Duration,
        inbox: Option<Inbox<'_, T>>,
        quiet: Option<quiet::Key>,
        mut attempt: F,
    ) -> Result<Option<T>>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Fetched<T>>>,
    {
        let deadline = Instant::now() + poll_timeout;
        let wakeups = (self.options.long_polling && !poll_timeout.is_zero())
            .then(|| Arc::clone(self.wakeups()));
        let mut immediate_retries = 0u32;
        let mut failure_backoff = Backoff::CALL;
        let mut registration: Option<handoff::Registration> = None;
        loop {
            // Register interest before looking, so a notification sent while
            // the attempt runs is not missed.
            let notify: Option<&Notify> = wakeups.as_deref().map(|w| match queue {
                Queue::Orchestrator => &w.orchestrator,
                Queue::Worker => &w.worker,
            });
            let notified = notify.map(|n| n.notified());
            let mut notified = std::pin::pin!(notified);
            if let Some(n) = notified.as_mut().as_pin_mut() {
                n.enable();
            }

            // A turn took this waiter: its item is on the way, no query
            // needed. Otherwise the waiter withdraws while it queries: an
            // item handed over meanwhile would be dropped with the
            // registration when the query returns an item of its own, and
            // stay locked until its lock expired. A turn that takes the
            // waiter just before it withdraws finds it gone and releases
            // the item (see `handoff`).
            if let Some(mut reg) = registration.take()
                && let Some(inbox) = inbox.as_ref()
                && reg.claimed()
                && let Some(handed) = reg.handed().await
            {
                return Ok(Some((inbox.convert)(handed)));
            }

            // The verdict of an earlier attempt, trusted only while
            // notifications flow; read after registering for wake-ups.
            let verdict = match (&quiet, wakeups.as_deref()) {
                (Some(key), Some(w)) if w.connected() => {
                    let generation = w.orchestrator_generation();
                    Some((key, generation, self.quiet.plan(key, generation).await))
                }
                _ => None,
            };
            let outcome = match verdict {
                // Wait as if the attempt had been made and found nothing
                // until `until` (at least a millisecond: never a busy retry).
                Some((_, _, quiet::Plan::Wait { until })) => {
                    observe::fetch_skipped(op);
                    let ms = until.saturating_duration_since(Instant::now()).as_millis() + 1;
                    Ok(Fetched::Idle {
                        retry_ms: Some(u64::try_from(ms).unwrap_or(u64::MAX)),
                    })
                }
                Some((key, generation, quiet::Plan::Look(probe))) => {
                    let started = Instant::now();
                    let outcome = attempt().await;
                    self.quiet.record(
                        *key,
                        generation,
                        started,
                        match &outcome {
                            Ok(Fetched::Claimed { rest, .. }) => quiet::Outcome::Claimed {
                                rest: rest.map(|r| r.retry_ms.map(Duration::from_millis)),
                            },
                            Ok(Fetched::Idle { retry_ms }) => quiet::Outcome::Idle {
                                retry: retry_ms.map(Duration::from_millis),
                            },
                            Err(_) => quiet::Outcome::Failed,
                        },
                        // A silent listener is found out within a
                        // heartbeat (and then wakes every waiter); an idle
                        // provider still looks once per poll timeout, as
                        // each call did before it waited.
                        poll_timeout.max(self.options.listener_heartbeat),
                    );
                    drop(probe);
                    outcome
                }
                None => attempt().await,
            };
            let retry_ms = match outcome {
                Ok(Fetched::Claimed { item, .. }) => return Ok(Some(item)),
                Ok(Fetched::Idle { retry_ms }) => {
                    failure_backoff.reset();
                    retry_ms
                }
                // The database is unreachable or busy: a fetch is always safe
                // to repeat, so keep trying until the poll deadline instead
                // of making the runtime back off (it may back off for
                // seconds, which is when the database is back).
                Err(e)
                    if e.is_retryable() && Instant::now() + failure_backoff.peek() < deadline =>
                {
                    tracing::debug!(error = %e, "fetch failed; retrying within the poll timeout");
                    observe::retried(op);
                    tokio::time::sleep(failure_backoff.next()).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let now = Instant::now();
            let Some(wakeups) = wakeups.as_deref() else {
                return Ok(None);
            };
            if now >= deadline {
                return Ok(None);
            }
            let mut wait = deadline - now;
            if let Some(ms) = retry_ms {
                wait = wait.min(Duration::from_millis(ms));
            }
            if !wakeups.connected() {
                wait = wait.min(listener::FALLBACK_POLL);
            }
            if wait.is_zero() {
                // Work exists but was busy (another call held the only
                // candidate, or won a session): retry now, but back off if
                // it keeps happening so a waiter never spins.
                immediate_retries += 1;
                if immediate_retries <= 2 {
                    continue;
                }
                wait = Duration::from_millis(1 << immediate_retries.min(6));
            } else {
                immediate_retries = 0;
            }
            if registration.is_none() {
                registration = inbox
                    .as_ref()
                    .map(|i| i.waiters.register(i.filter, i.lock_timeout));
            }
            tokio::select! {
                _ = async { if let Some(n) = notified.as_mut().as_pin_mut() { n.await } } => {}
                _ = tokio::time::sleep(wait) => {
                    // Out of time: return now rather than after one more
                    // query, so the call ends at its poll timeout. The
                    // caller's next fetch looks again.
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                }
                handed = async {
                    match registration.as_mut() {
                        Some(reg) => reg.handed().await,
                        None => std::future::pending().await,
                    }
                } => match (handed, inbox.as_ref()) {
                    (Some(handed), Some(inbox)) => return Ok(Some((inbox.convert)(handed))),
                    _ => registration = None,
                },
            }
        }
    }
}

impl PostgresProvider {
    /// One provider call within the call limit, observed as `observed`,
    /// failing as duroxide's error.
    async fn call<T: Report>(
        &self,
        observed: Call<'_>,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T, ProviderError> {
        observed.run(bounded(&self.db, Budget::Call, call)).await
    }

    /// One fetch attempt within the call limit, under a lock token chosen
    /// here: unless its outcome is known (an answer, or a failure before
    /// anything was sent), the token is released (see [`unclaimed`]).
    async fn fetch_claiming<A, F, Fut>(&self, queue: Queue, fetch: F) -> Result<A>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<A>>,
    {
        let claim = Claim::fetch(&self.db, queue);
        let started = Instant::now();
        let result = bounded(&self.db, Budget::Call, fetch(claim.token().to_owned())).await;
        // Per statement, not per call: a long poll's waiting is not latency.
        observe::duration(
            match queue {
                Queue::Orchestrator => observe::name::FETCH_ORCHESTRATION_ITEM,
                Queue::Worker => observe::name::DEQUEUE_WORKER,
            },
            started.elapsed(),
        );
        if result
            .as_ref()
            .map_or_else(crate::Error::is_before_send, |_| true)
        {
            claim.settled();
        }
        result
    }

    /// Runs `attempt` (one bounded call each time), retrying transient
    /// failures with backoff until `window` has passed since the first try.
    /// An answer from the server, success or a permanent error such as a
    /// lost lock, ends the retries at once.
    ///
    /// For calls that are safe to repeat whatever became of the last try:
    /// - Lock renewal, within the lock's own length (`extend_for`): duroxide
    ///   cancels an activity on any renewal error and then deletes its work
    ///   item (`ack_work_item(token, None)`), so reporting a passing network
    ///   fault would lose the activity. The lock was valid for at most
    ///   `extend_for` when the call started, so once that has passed it has
    ///   expired on the server too, and giving up is truthful.
    /// - Activity completion: duroxide abandons the work item when the ack
    ///   fails, so the activity runs again. A repeated ack that finds its
    ///   lock gone (an earlier try committed, or the lock expired) says so
    ///   and changes nothing.
    async fn retry_transient<F, Fut>(
        &self,
        op: &'static str,
        window: Duration,
        attempt: F,
    ) -> Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let give_up = Instant::now() + window;
        let mut backoff = Backoff::CALL;
        loop {
            match bounded(&self.db, Budget::Call, attempt()).await {
                Err(e) if e.is_retryable() && Instant::now() + backoff.peek() < give_up => {
                    tracing::debug!(error = %e, "transient failure; retrying");
                    observe::retried(op);
                    tokio::time::sleep(backoff.next()).await;
                }
                result => return result,
            }
        }
    }
}

/// Where a waiting fetch can receive work handed over in-process.
struct Inbox<'a, T> {
    waiters: &'a Arc<handoff::Waiters>,
    filter: &'a TagFilter,
    lock_timeout: Duration,
    convert: fn(handoff::Handed) -> T,
}

impl Drop for PostgresProvider {
    fn drop(&mut self) {
        self.claimed_ahead.release_all();
        if let Some(w) = self.wakeups.get() {
            w.stop();
        }
    }
}

#[async_trait::async_trait]
impl Provider for PostgresProvider {
    fn name(&self) -> &str {
        "duroxide-diesel"
    }

    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    async fn fetch_orchestration_item(
        &self,
        lock_timeout: Duration,
        poll_timeout: Duration,
        filter: Option<&DispatcherCapabilityFilter>,
    ) -> Result<Option<(OrchestrationItem, String, u32)>, ProviderError> {
        let observed = observe!("fetch_orchestration_item");
        let op = observed.op();
        let fetch = async {
            let range = orchestrator::version_range(filter)?;
            // A filter that supports no version claims nothing: no verdict.
            self.long_poll(op, Queue::Orchestrator, poll_timeout, None, range, || {
                self.fetch_claiming(Queue::Orchestrator, |token| async move {
                    orchestrator::fetch_once(self, &token, lock_timeout, range).await
                })
            })
            .await
        };
        observed.run(fetch).await
    }

    async fn ack_orchestration_item(
        &self,
        lock_token: &str,
        execution_id: u64,
        history_delta: Vec<Event>,
        worker_items: Vec<WorkItem>,
        orchestrator_items: Vec<WorkItem>,
        metadata: ExecutionMetadata,
        cancelled_activities: Vec<ScheduledActivityIdentifier>,
    ) -> Result<(), ProviderError> {
        let instance = instance_of_events(&history_delta);
        let observed = observe!(
            "ack_orchestration_item",
            worker_items = worker_items.len(),
            orchestrator_items = orchestrator_items.len(),
            cancelled_activities = cancelled_activities.len(),
        )
        .instance(instance)
        .execution(execution_id)
        .items(history_delta.len())
        .timed(observe::name::ACK_ORCHESTRATION_ITEM);
        let ack = orchestrator::ack(
            self,
            lock_token,
            execution_id,
            &history_delta,
            &worker_items,
            &orchestrator_items,
            &metadata,
            &cancelled_activities,
        );
        // A turn may set the custom status: whatever its outcome, the
        // status a read brought along is no answer once it has ended.
        let _changed = instance.map(|i| self.read_status.changing(i));
        self.call(observed, self.unsettled_acks.attempt(lock_token, ack))
            .await
    }

    async fn abandon_orchestration_item(
        &self,
        lock_token: &str,
        delay: Option<Duration>,
        ignore_attempt: bool,
    ) -> Result<(), ProviderError> {
        self.call(
            observe!("abandon_orchestration_item"),
            orchestrator::abandon(self, lock_token, delay, ignore_attempt),
        )
        .await
    }

    async fn read(&self, instance: &str) -> Result<Vec<Event>, ProviderError> {
        self.call(
            observe!("read").instance(instance),
            history::read_latest(self, instance),
        )
        .await
    }

    async fn read_with_execution(
        &self,
        instance: &str,
        execution_id: u64,
    ) -> Result<Vec<Event>, ProviderError> {
        self.call(
            observe!("read_with_execution")
                .instance(instance)
                .execution(execution_id),
            history::read_execution(self, instance, execution_id),
        )
        .await
    }

    async fn append_with_execution(
        &self,
        instance: &str,
        execution_id: u64,
        new_events: Vec<Event>,
    ) -> Result<(), ProviderError> {
        self.call(
            observe!("append_with_execution")
                .instance(instance)
                .execution(execution_id)
                .items(new_events.len()),
            history::append(self, instance, execution_id, &new_events),
        )
        .await
    }

    async fn enqueue_for_worker(&self, item: WorkItem) -> Result<(), ProviderError> {
        self.call(
            observe!("enqueue_for_worker").instance(instance_of(&item)),
            worker::enqueue(self, &item),
        )
        .await
    }

    async fn fetch_work_item(
        &self,
        lock_timeout: Duration,
        poll_timeout: Duration,
        session: Option<&SessionFetchConfig>,
        tag_filter: &TagFilter,
    ) -> Result<Option<(WorkItem, String, u32)>, ProviderError> {
        let observed = observe!("fetch_work_item");
        if matches!(tag_filter, TagFilter::None) {
            // Orchestrator-only runtime: never any work, no query, no wait.
            return observed.run(async { Ok(None) }).await;
        }
        let shape = claimed_ahead::ClaimedAhead::shape(tag_filter, lock_timeout, session);
        // An activity the last acknowledgement claimed for this fetch.
        if let Some(handed) = self.claimed_ahead.take(&shape) {
            return observed.run(async { Ok(Some(handed)) }).await;
        }
        // Session-bound items are never handed over, so any waiter may take
        // session-less ones whatever its session configuration.
        let inbox = Inbox {
            waiters: &self.worker_waiters,
            filter: tag_filter,
            lock_timeout,
            convert: |handed| handed,
        };
        let op = observed.op();
        let fetch = self.long_poll(op, Queue::Worker, poll_timeout, Some(inbox), None, || {
            self.fetch_claiming(Queue::Worker, |token| {
                let shape = &shape;
                async move { worker::fetch_once(self, &token, shape).await }
            })
        });
        let fetched = observed.run(fetch).await;
        if let Ok(Some((item, token, _))) = &fetched {
            self.claimed_ahead.fetched(token, item, shape);
        }
        fetched
    }

    async fn ack_work_item(
        &self,
        token: &str,
        completion: Option<WorkItem>,
    ) -> Result<(), ProviderError> {
        let observed = observe!("ack_work_item")
            .instance(completion.as_ref().map(instance_of))
            .timed(observe::name::ACK_WORKER);
        // Three call limits: long enough to ride out a restart or a killed
        // connection, short enough not to hold a worker slot for long.
        let window = self.options.call_timeout * 3;
        let op = observed.op();
        // The first attempt also claims this worker's next activity; a
        // retry only acknowledges, so a claim can fail an ack once at most.
        let next = std::sync::Mutex::new(self.claimed_ahead.acknowledging(token));
        let completion = completion.as_ref();
        observed
            .run(self.retry_transient(op, window, || {
                let shape = next.lock().unwrap_or_else(|e| e.into_inner()).take();
                async move {
                    self.unsettled_acks
                        .attempt(token, worker::ack(self, token, completion, shape.as_ref()))
                        .await
                }
            }))
            .await
    }

    async fn renew_work_item_lock(
        &self,
        token: &str,
        extend_for: Duration,
    ) -> Result<(), ProviderError> {
        let observed = observe!("renew_work_item_lock");
        let op = observed.op();
        observed
            .run(self.retry_transient(op, extend_for, || worker::renew(self, token, extend_for)))
            .await
    }

    async fn renew_session_lock(
        &self,
        owner_ids: &[&str],
        extend_for: Duration,
        idle_timeout: Duration,
    ) -> Result<usize, ProviderError> {
        self.call(
            observe!("renew_session_lock"),
            sessions::renew(self, owner_ids, extend_for, idle_timeout),
        )
        .await
    }

    async fn cleanup_orphaned_sessions(
        &self,
        _idle_timeout: Duration,
    ) -> Result<usize, ProviderError> {
        self.call(
            observe!("cleanup_orphaned_sessions"),
            sessions::cleanup_orphaned(self),
        )
        .await
    }

    async fn abandon_work_item(
        &self,
        token: &str,
        delay: Option<Duration>,
        ignore_attempt: bool,
    ) -> Result<(), ProviderError> {
        self.claimed_ahead.forget(token);
        self.call(
            observe!("abandon_work_item"),
            worker::abandon(self, token, delay, ignore_attempt),
        )
        .await
    }

    async fn renew_orchestration_item_lock(
        &self,
        token: &str,
        extend_for: Duration,
    ) -> Result<(), ProviderError> {
        let observed = observe!("renew_orchestration_item_lock");
        let op = observed.op();
        observed
            .run(self.retry_transient(op, extend_for, || {
                orchestrator::renew(self, token, extend_for)
            }))
            .await
    }

    async fn enqueue_for_orchestrator(
        &self,
        item: WorkItem,
        delay: Option<Duration>,
    ) -> Result<(), ProviderError> {
        self.call(
            observe!("enqueue_for_orchestrator")
                .instance(instance_of(&item))
                .timed(observe::name::ENQUEUE_ORCHESTRATOR),
            orchestrator::enqueue(self, &item, delay),
        )
        .await
    }

    fn as_management_capability(&self) -> Option<&dyn ProviderAdmin> {
        Some(self as &dyn ProviderAdmin)
    }

    async fn get_custom_status(
        &self,
        instance: &str,
        last_seen_version: u64,
    ) -> Result<Option<(Option<String>, u64)>, ProviderError> {
        self.call(
            observe!("get_custom_status").instance(instance),
            state::custom_status(self, instance, last_seen_version),
        )
        .await
    }

    async fn get_kv_value(
        &self,
        instance: &str,
        key: &str,
    ) -> Result<Option<String>, ProviderError> {
        self.call(
            observe!("get_kv_value").instance(instance),
            state::kv_value(self, instance, key),
        )
        .await
    }

    async fn get_kv_all_values(
        &self,
        instance: &str,
    ) -> Result<HashMap<String, String>, ProviderError> {
        self.call(
            observe!("get_kv_all_values").instance(instance),
            state::kv_all(self, instance),
        )
        .await
    }

    async fn get_instance_stats(
        &self,
        instance: &str,
    ) -> Result<Option<SystemStats>, ProviderError> {
        self.call(
            observe!("get_instance_stats").instance(instance),
            state::instance_stats(self, instance),
        )
        .await
    }
}

//! The [`Provider`] and [`ProviderAdmin`] implementations: thin dispatchers
//! onto one module per queue or table.

mod admin;
pub(crate) mod codec;
pub(crate) mod handoff;
mod history;
pub(crate) mod listener;
mod orchestrator;
mod sessions;
mod state;
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

/// Which queue a long-polling fetch waits on.
#[derive(Clone, Copy)]
enum Queue {
    Orchestrator,
    Worker,
}

/// Outcome of one fetch attempt, for the shared long-poll loop.
enum Step<T> {
    Ready(T),
    Idle(Option<u64>),
}

impl PostgresProvider {
    fn wakeups(&self) -> &Arc<listener::Wakeups> {
        self.wakeups
            .get_or_init(|| listener::spawn(self.connector.clone()))
    }

    /// Runs `attempt` until it yields an item or `poll_timeout` passes.
    ///
    /// Between attempts no connection is held: the waiter sleeps until a
    /// notification for `queue`, the earliest scheduled visibility the
    /// database reported, a local handoff through `inbox`, or the deadline.
    /// Dropping the future at any await point leaves nothing behind: each
    /// attempt is a single statement, and an abandoned handoff is released
    /// by the turn that made it.
    async fn long_poll<T, F, Fut>(
        &self,
        queue: Queue,
        poll_timeout: Duration,
        inbox: Option<Inbox<'_, T>>,
        mut attempt: F,
    ) -> Result<Option<T>>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Step<T>>>,
    {
        let deadline = Instant::now() + poll_timeout;
        let wakeups = (self.options.long_polling && !poll_timeout.is_zero())
            .then(|| Arc::clone(self.wakeups()));
        let mut immediate_retries = 0u32;
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

            // A turn took this waiter: its item is on the way, no query needed.
            if let (Some(reg), Some(inbox)) = (registration.as_mut(), inbox.as_ref()) {
                if reg.claimed() {
                    match reg.handed().await {
                        Some(handed) => return Ok(Some((inbox.convert)(handed))),
                        None => registration = None,
                    }
                }
            }

            let retry_ms = match attempt().await? {
                Step::Ready(item) => return Ok(Some(item)),
                Step::Idle(retry_ms) => retry_ms,
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
                // A lost race (another dispatcher claimed first): retry now,
                // but back off if it keeps happening so a waiter never spins.
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
                _ = tokio::time::sleep(wait) => {}
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

/// Where a waiting fetch can receive work handed over in-process.
struct Inbox<'a, T> {
    waiters: &'a Arc<handoff::Waiters>,
    filter: &'a TagFilter,
    lock_timeout: Duration,
    convert: fn(handoff::Handed) -> T,
}

impl Drop for PostgresProvider {
    fn drop(&mut self) {
        if let Some(w) = self.wakeups.get() {
            w.stop();
        }
    }
}

fn err(op: &'static str) -> impl Fn(crate::Error) -> ProviderError {
    move |e| e.into_provider_error(op)
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
        self.long_poll(Queue::Orchestrator, poll_timeout, None, || async {
            Ok(
                match orchestrator::fetch_once(self, lock_timeout, filter).await? {
                    orchestrator::Attempt::Item(item) => Step::Ready(*item),
                    orchestrator::Attempt::Idle(retry) => Step::Idle(retry),
                },
            )
        })
        .await
        .map_err(err("fetch_orchestration_item"))
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
        orchestrator::ack(
            self,
            lock_token,
            execution_id,
            &history_delta,
            &worker_items,
            &orchestrator_items,
            &metadata,
            &cancelled_activities,
        )
        .await
        .map_err(err("ack_orchestration_item"))
    }

    async fn abandon_orchestration_item(
        &self,
        lock_token: &str,
        delay: Option<Duration>,
        ignore_attempt: bool,
    ) -> Result<(), ProviderError> {
        orchestrator::abandon(self, lock_token, delay, ignore_attempt)
            .await
            .map_err(err("abandon_orchestration_item"))
    }

    async fn read(&self, instance: &str) -> Result<Vec<Event>, ProviderError> {
        history::read_latest(self, instance)
            .await
            .map_err(err("read"))
    }

    async fn read_with_execution(
        &self,
        instance: &str,
        execution_id: u64,
    ) -> Result<Vec<Event>, ProviderError> {
        history::read_execution(self, instance, execution_id)
            .await
            .map_err(err("read_with_execution"))
    }

    async fn append_with_execution(
        &self,
        instance: &str,
        execution_id: u64,
        new_events: Vec<Event>,
    ) -> Result<(), ProviderError> {
        history::append(self, instance, execution_id, &new_events)
            .await
            .map_err(err("append_with_execution"))
    }

    async fn enqueue_for_worker(&self, item: WorkItem) -> Result<(), ProviderError> {
        worker::enqueue(self, &item)
            .await
            .map_err(err("enqueue_for_worker"))
    }

    async fn fetch_work_item(
        &self,
        lock_timeout: Duration,
        poll_timeout: Duration,
        session: Option<&SessionFetchConfig>,
        tag_filter: &TagFilter,
    ) -> Result<Option<(WorkItem, String, u32)>, ProviderError> {
        if matches!(tag_filter, TagFilter::None) {
            // Orchestrator-only runtime: never any work, no query, no wait.
            return Ok(None);
        }
        // Session-bound items are never handed over, so any waiter may take
        // session-less ones whatever its session configuration.
        let inbox = Inbox {
            waiters: &self.worker_waiters,
            filter: tag_filter,
            lock_timeout,
            convert: |handed| handed,
        };
        self.long_poll(Queue::Worker, poll_timeout, Some(inbox), || async {
            Ok(
                match worker::fetch_once(self, lock_timeout, session, tag_filter).await? {
                    worker::Attempt::Item(item, token, attempts) => {
                        Step::Ready((*item, token, attempts))
                    }
                    worker::Attempt::Idle(retry) => Step::Idle(retry),
                },
            )
        })
        .await
        .map_err(err("fetch_work_item"))
    }

    async fn ack_work_item(
        &self,
        token: &str,
        completion: Option<WorkItem>,
    ) -> Result<(), ProviderError> {
        worker::ack(self, token, completion.as_ref())
            .await
            .map_err(err("ack_work_item"))
    }

    async fn renew_work_item_lock(
        &self,
        token: &str,
        extend_for: Duration,
    ) -> Result<(), ProviderError> {
        worker::renew(self, token, extend_for)
            .await
            .map_err(err("renew_work_item_lock"))
    }

    async fn renew_session_lock(
        &self,
        owner_ids: &[&str],
        extend_for: Duration,
        idle_timeout: Duration,
    ) -> Result<usize, ProviderError> {
        sessions::renew(self, owner_ids, extend_for, idle_timeout)
            .await
            .map_err(err("renew_session_lock"))
    }

    async fn cleanup_orphaned_sessions(
        &self,
        _idle_timeout: Duration,
    ) -> Result<usize, ProviderError> {
        sessions::cleanup_orphaned(self)
            .await
            .map_err(err("cleanup_orphaned_sessions"))
    }

    async fn abandon_work_item(
        &self,
        token: &str,
        delay: Option<Duration>,
        ignore_attempt: bool,
    ) -> Result<(), ProviderError> {
        worker::abandon(self, token, delay, ignore_attempt)
            .await
            .map_err(err("abandon_work_item"))
    }

    async fn renew_orchestration_item_lock(
        &self,
        token: &str,
        extend_for: Duration,
    ) -> Result<(), ProviderError> {
        orchestrator::renew(self, token, extend_for)
            .await
            .map_err(err("renew_orchestration_item_lock"))
    }

    async fn enqueue_for_orchestrator(
        &self,
        item: WorkItem,
        delay: Option<Duration>,
    ) -> Result<(), ProviderError> {
        orchestrator::enqueue(self, &item, delay)
            .await
            .map_err(err("enqueue_for_orchestrator"))
    }

    fn as_management_capability(&self) -> Option<&dyn ProviderAdmin> {
        Some(self as &dyn ProviderAdmin)
    }

    async fn get_custom_status(
        &self,
        instance: &str,
        last_seen_version: u64,
    ) -> Result<Option<(Option<String>, u64)>, ProviderError> {
        state::custom_status(self, instance, last_seen_version)
            .await
            .map_err(err("get_custom_status"))
    }

    async fn get_kv_value(
        &self,
        instance: &str,
        key: &str,
    ) -> Result<Option<String>, ProviderError> {
        state::kv_value(self, instance, key)
            .await
            .map_err(err("get_kv_value"))
    }

    async fn get_kv_all_values(
        &self,
        instance: &str,
    ) -> Result<HashMap<String, String>, ProviderError> {
        state::kv_all(self, instance)
            .await
            .map_err(err("get_kv_all_values"))
    }

    async fn get_instance_stats(
        &self,
        instance: &str,
    ) -> Result<Option<SystemStats>, ProviderError> {
        state::instance_stats(self, instance)
            .await
            .map_err(err("get_instance_stats"))
    }
}

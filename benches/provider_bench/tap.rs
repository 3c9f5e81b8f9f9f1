//! The tap: a Provider wrapper that delegates every call to the measured
//! provider, counts calls per method, and timestamps pickups and terminal
//! acks, so a section can tell what the runtime asked for and when.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use duroxide::providers::{
    DispatcherCapabilityFilter, ExecutionMetadata, OrchestrationItem, Provider, ProviderAdmin,
    ProviderError, ScheduledActivityIdentifier, SessionFetchConfig, TagFilter, WorkItem,
};
use duroxide::{Event, SystemStats};
use duroxide_diesel_testkit::proxy;
use tokio::sync::Notify;

use crate::Res;
use crate::report::fmt_num;
const OP_NAMES: [&str; 18] = [
    "fetch_orch",
    "fetch_orch=Some",
    "ack_orch",
    "abandon_orch",
    "renew_orch",
    "read",
    "read_with_execution",
    "append_with_execution",
    "enqueue_orch",
    "enqueue_worker",
    "fetch_work",
    "fetch_work=Some",
    "ack_work",
    "abandon_work",
    "renew_work",
    "renew_session_lock",
    "cleanup_orphaned_sessions",
    "other",
];
const OPS: usize = OP_NAMES.len();

#[derive(Clone, Copy)]
enum Op {
    FetchOrch,
    FetchOrchSome,
    AckOrch,
    AbandonOrch,
    RenewOrch,
    Read,
    ReadExec,
    Append,
    EnqOrch,
    EnqWorker,
    FetchWork,
    FetchWorkSome,
    AckWork,
    AbandonWork,
    RenewWork,
    RenewSession,
    CleanupSessions,
    Other,
}

/// Calls of each method, indexed like `OP_NAMES`.
#[derive(Clone, Copy)]
pub struct Calls([u64; OPS]);

impl Calls {
    pub fn since(&self, earlier: &Calls) -> Calls {
        let mut out = [0; OPS];
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.0[i] - earlier.0[i];
        }
        Calls(out)
    }

    /// Calls that reach the database (the `=Some` rows are sub-counts).
    pub fn db_calls(&self) -> u64 {
        self.0
            .iter()
            .enumerate()
            .filter(|(i, _)| !OP_NAMES[*i].contains("=Some"))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn describe(&self, per: f64) -> String {
        let mut s = String::new();
        for (i, n) in self.0.iter().enumerate() {
            if *n > 0 {
                if !s.is_empty() {
                    s.push_str(", ");
                }
                let _ = write!(s, "{} {}", OP_NAMES[i], fmt_num(*n as f64 / per));
            }
        }
        if s.is_empty() { "none".to_owned() } else { s }
    }
}

pub type Probe = Box<dyn Fn() -> proxy::Snapshot + Send + Sync>;

/// A terminal ack of an instance, as seen by the tap.
#[derive(Clone, Copy)]
pub struct Done {
    pub at: Instant,
    pub proxy: proxy::Snapshot,
    pub failed: bool,
}

pub struct Tap {
    inner: Arc<dyn Provider>,
    calls: [AtomicU64; OPS],
    /// Proxy counters read at each terminal ack (sections that use a proxy).
    pub probe: OnceLock<Probe>,
    /// Lock token of a fetched orchestration item -> its instance.
    tokens: Mutex<HashMap<String, String>>,
    /// First time each instance was handed to the orchestrator.
    picked: Mutex<HashMap<String, Instant>>,
    done: Mutex<HashMap<String, Done>>,
    done_notify: Notify,
}

impl Tap {
    pub fn new(inner: Arc<dyn Provider>) -> Arc<Tap> {
        Arc::new(Tap {
            inner,
            calls: std::array::from_fn(|_| AtomicU64::new(0)),
            probe: OnceLock::new(),
            tokens: Mutex::new(HashMap::new()),
            picked: Mutex::new(HashMap::new()),
            done: Mutex::new(HashMap::new()),
            done_notify: Notify::new(),
        })
    }

    fn count(&self, op: Op) {
        self.calls[op as usize].fetch_add(1, Ordering::SeqCst);
    }

    pub fn calls(&self) -> Calls {
        Calls(std::array::from_fn(|i| {
            self.calls[i].load(Ordering::SeqCst)
        }))
    }

    /// Instances acked as Completed or Failed so far.
    pub fn done_count(&self) -> usize {
        self.done.lock().unwrap().len()
    }

    /// Instances acked as Failed so far.
    pub fn failed_count(&self) -> usize {
        self.done
            .lock()
            .unwrap()
            .values()
            .filter(|d| d.failed)
            .count()
    }

    pub fn picked_at(&self, instance: &str) -> Option<Instant> {
        self.picked.lock().unwrap().get(instance).copied()
    }

    /// Waits until the runtime has acked `instance` as Completed or Failed.
    pub async fn wait_done(&self, instance: &str, timeout: Duration) -> Res<Done> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.done_notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if let Some(d) = self.done.lock().unwrap().get(instance) {
                return Ok(*d);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(format!("{instance} did not finish within {timeout:?}"));
            }
        }
    }
}

#[async_trait::async_trait]
impl Provider for Tap {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn version(&self) -> &str {
        self.inner.version()
    }

    async fn fetch_orchestration_item(
        &self,
        lock_timeout: Duration,
        poll_timeout: Duration,
        filter: Option<&DispatcherCapabilityFilter>,
    ) -> Result<Option<(OrchestrationItem, String, u32)>, ProviderError> {
        self.count(Op::FetchOrch);
        let result = self
            .inner
            .fetch_orchestration_item(lock_timeout, poll_timeout, filter)
            .await;
        if let Ok(Some((item, token, _))) = &result {
            let now = Instant::now();
            self.count(Op::FetchOrchSome);
            self.picked
                .lock()
                .unwrap()
                .entry(item.instance.clone())
                .or_insert(now);
            self.tokens
                .lock()
                .unwrap()
                .insert(token.clone(), item.instance.clone());
        }
        result
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
        self.count(Op::AckOrch);
        let terminal = matches!(metadata.status.as_deref(), Some("Completed" | "Failed"));
        let failed = metadata.status.as_deref() == Some("Failed");
        let result = self
            .inner
            .ack_orchestration_item(
                lock_token,
                execution_id,
                history_delta,
                worker_items,
                orchestrator_items,
                metadata,
                cancelled_activities,
            )
            .await;
        let at = Instant::now();
        // The runtime retries a failed ack with the same token: forget the
        // token only once the ack went through.
        let instance = match &result {
            Ok(()) => self.tokens.lock().unwrap().remove(lock_token),
            Err(_) => None,
        };
        if let (true, Some(instance)) = (terminal, instance) {
            let proxy = self.probe.get().map(|p| p()).unwrap_or_default();
            self.done
                .lock()
                .unwrap()
                .insert(instance, Done { at, proxy, failed });
            self.done_notify.notify_waiters();
        }
        result
    }

    async fn abandon_orchestration_item(
        &self,
        lock_token: &str,
        delay: Option<Duration>,
        ignore_attempt: bool,
    ) -> Result<(), ProviderError> {
        self.count(Op::AbandonOrch);
        self.tokens.lock().unwrap().remove(lock_token);
        self.inner
            .abandon_orchestration_item(lock_token, delay, ignore_attempt)
            .await
    }

    async fn read(&self, instance: &str) -> Result<Vec<Event>, ProviderError> {
        self.count(Op::Read);
        self.inner.read(instance).await
    }

    async fn read_with_execution(
        &self,
        instance: &str,
        execution_id: u64,
    ) -> Result<Vec<Event>, ProviderError> {
        self.count(Op::ReadExec);
        self.inner.read_with_execution(instance, execution_id).await
    }

    async fn append_with_execution(
        &self,
        instance: &str,
        execution_id: u64,
        new_events: Vec<Event>,
    ) -> Result<(), ProviderError> {
        self.count(Op::Append);
        self.inner
            .append_with_execution(instance, execution_id, new_events)
            .await
    }

    async fn enqueue_for_worker(&self, item: WorkItem) -> Result<(), ProviderError> {
        self.count(Op::EnqWorker);
        self.inner.enqueue_for_worker(item).await
    }

    async fn fetch_work_item(
        &self,
        lock_timeout: Duration,
        poll_timeout: Duration,
        session: Option<&SessionFetchConfig>,
        tag_filter: &TagFilter,
    ) -> Result<Option<(WorkItem, String, u32)>, ProviderError> {
        self.count(Op::FetchWork);
        let result = self
            .inner
            .fetch_work_item(lock_timeout, poll_timeout, session, tag_filter)
            .await;
        if let Ok(Some(_)) = &result {
            self.count(Op::FetchWorkSome);
        }
        result
    }

    async fn ack_work_item(
        &self,
        token: &str,
        completion: Option<WorkItem>,
    ) -> Result<(), ProviderError> {
        self.count(Op::AckWork);
        self.inner.ack_work_item(token, completion).await
    }

    async fn renew_work_item_lock(
        &self,
        token: &str,
        extend_for: Duration,
    ) -> Result<(), ProviderError> {
        self.count(Op::RenewWork);
        self.inner.renew_work_item_lock(token, extend_for).await
    }

    async fn renew_session_lock(
        &self,
        owner_ids: &[&str],
        extend_for: Duration,
        idle_timeout: Duration,
    ) -> Result<usize, ProviderError> {
        self.count(Op::RenewSession);
        self.inner
            .renew_session_lock(owner_ids, extend_for, idle_timeout)
            .await
    }

    async fn cleanup_orphaned_sessions(
        &self,
        idle_timeout: Duration,
    ) -> Result<usize, ProviderError> {
        self.count(Op::CleanupSessions);
        self.inner.cleanup_orphaned_sessions(idle_timeout).await
    }

    async fn abandon_work_item(
        &self,
        token: &str,
        delay: Option<Duration>,
        ignore_attempt: bool,
    ) -> Result<(), ProviderError> {
        self.count(Op::AbandonWork);
        self.inner
            .abandon_work_item(token, delay, ignore_attempt)
            .await
    }

    async fn renew_orchestration_item_lock(
        &self,
        token: &str,
        extend_for: Duration,
    ) -> Result<(), ProviderError> {
        self.count(Op::RenewOrch);
        self.inner
            .renew_orchestration_item_lock(token, extend_for)
            .await
    }

    async fn enqueue_for_orchestrator(
        &self,
        item: WorkItem,
        delay: Option<Duration>,
    ) -> Result<(), ProviderError> {
        self.count(Op::EnqOrch);
        self.inner.enqueue_for_orchestrator(item, delay).await
    }

    fn as_management_capability(&self) -> Option<&dyn ProviderAdmin> {
        self.inner.as_management_capability()
    }

    async fn get_custom_status(
        &self,
        instance: &str,
        last_seen_version: u64,
    ) -> Result<Option<(Option<String>, u64)>, ProviderError> {
        self.count(Op::Other);
        self.inner
            .get_custom_status(instance, last_seen_version)
            .await
    }

    async fn get_kv_value(
        &self,
        instance: &str,
        key: &str,
    ) -> Result<Option<String>, ProviderError> {
        self.count(Op::Other);
        self.inner.get_kv_value(instance, key).await
    }

    async fn get_kv_all_values(
        &self,
        instance: &str,
    ) -> Result<HashMap<String, String>, ProviderError> {
        self.count(Op::Other);
        self.inner.get_kv_all_values(instance).await
    }

    async fn get_instance_stats(
        &self,
        instance: &str,
    ) -> Result<Option<SystemStats>, ProviderError> {
        self.count(Op::Other);
        self.inner.get_instance_stats(instance).await
    }
}

//! What the provider reports about itself: a `tracing` span per provider
//! call and metrics through the `metrics` facade.
//!
//! Every `Provider` and `ProviderAdmin` method goes through one [`Call`]:
//! [`observe!`] opens a span named after the operation, the dispatcher adds
//! what it knows up front (instance, execution, items sent), and
//! [`Call::run`] adds what the result says (items returned or changed,
//! outcome), records the duration metric if the operation has one, and on
//! failure logs the error once with its classification and counts it. So an
//! error is logged here and nowhere below.
//!
//! Cost when nobody listens: spans are `DEBUG` and their field values are
//! only computed when a subscriber enables them; recording a field of a
//! disabled span does nothing. Metric names are static strings, so the
//! facade's no-op recorder costs a lookup and no allocation; only an error
//! (labels chosen at run time) allocates its key.

use std::future::Future;
use std::time::{Duration, Instant};

use duroxide::providers::{
    DeleteInstanceResult, ExecutionInfo, InstanceInfo, InstanceTree, OrchestrationItem,
    ProviderError, PruneResult, QueueDepths, SystemMetrics, WorkItem,
};
use duroxide::{Event, SystemStats};
use tracing::Instrument;

use crate::error::Error;

/// Metric names. Duroxide's provider observability guide names the
/// per-operation ones; the pool and listener ones follow its `provider.`
/// prefix.
pub(crate) mod name {
    /// Histogram, ms: one orchestrator-queue fetch statement.
    pub(crate) const FETCH_ORCHESTRATION_ITEM: &str =
        "provider.fetch_orchestration_item_duration_ms";
    /// Histogram, ms: `ack_orchestration_item`.
    pub(crate) const ACK_ORCHESTRATION_ITEM: &str = "provider.ack_orchestration_item_duration_ms";
    /// Histogram, ms: `ack_work_item`, retries included.
    pub(crate) const ACK_WORKER: &str = "provider.ack_worker_duration_ms";
    /// Histogram, ms: `enqueue_for_orchestrator`.
    pub(crate) const ENQUEUE_ORCHESTRATOR: &str = "provider.enqueue_orchestrator_duration_ms";
    /// Histogram, ms: one worker-queue fetch statement.
    pub(crate) const DEQUEUE_WORKER: &str = "provider.dequeue_worker_duration_ms";
    /// Counter: failed calls, by `operation`, `error_type`, `retryable`.
    pub(crate) const INFRASTRUCTURE_ERRORS: &str = "provider.infrastructure_errors";
    /// Counter: transient failures retried inside a call, by `operation`.
    pub(crate) const RETRIES: &str = "provider.retries";
    /// Counter: orchestrator fetch statements not sent because an earlier
    /// one proved they would find nothing.
    pub(crate) const FETCHES_SKIPPED: &str = "provider.fetches_skipped";
    /// Counter: history reads answered from the cache under a fresh
    /// confirmation, without a round trip.
    pub(crate) const READS_CACHED: &str = "provider.reads_answered_from_cache";
    /// Counter: custom status calls answered with the status the instance's
    /// last history read brought along, without a round trip.
    pub(crate) const STATUSES_FROM_READS: &str = "provider.statuses_answered_from_reads";
    /// Counter: activity completions held for the other activities of
    /// their execution (`completion_batch_window`).
    pub(crate) const COMPLETIONS_HELD: &str = "provider.completions_held";
    /// Counter: worker fetches answered with the activity an acknowledgement
    /// claimed for them (`next_activity_window`), without a round trip.
    pub(crate) const CLAIMED_AHEAD_TAKEN: &str = "provider.activities_claimed_ahead";
    /// Counter: activities an acknowledgement claimed that no fetch took
    /// within `next_activity_window`, released again.
    pub(crate) const CLAIMED_AHEAD_RELEASED: &str = "provider.activities_claimed_ahead_released";
    /// Gauge: pooled connections checked out.
    pub(crate) const POOL_IN_USE: &str = "provider.pool.connections_in_use";
    /// Gauge: pooled connections open and idle.
    pub(crate) const POOL_IDLE: &str = "provider.pool.connections_idle";
    /// Histogram, ms: time to check out a connection.
    pub(crate) const POOL_CHECKOUT_WAIT: &str = "provider.pool.checkout_wait_ms";
    /// Counter: checkouts that gave up within their call's budget.
    pub(crate) const POOL_CHECKOUT_TIMEOUTS: &str = "provider.pool.checkout_timeouts";
    /// Counter: failed attempts to open a pooled connection.
    pub(crate) const POOL_CONNECT_FAILURES: &str = "provider.pool.connect_failures";
    /// Counter: connections closed on return because they were unusable.
    pub(crate) const POOL_RETIRED: &str = "provider.pool.connections_retired";
    /// Gauge: LISTEN connections currently subscribed.
    pub(crate) const LISTENER_CONNECTED: &str = "provider.listener.connected";
    /// Counter: LISTEN connections re-established after a loss or failure.
    pub(crate) const LISTENER_RECONNECTS: &str = "provider.listener.reconnects";
}

/// Describes every metric to the installed recorder (units and help text
/// for exporters); called once per provider.
pub(crate) fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    let ms = Unit::Milliseconds;
    describe_histogram!(
        name::FETCH_ORCHESTRATION_ITEM,
        ms,
        "One fetch-and-lock statement on the orchestrator queue"
    );
    describe_histogram!(
        name::ACK_ORCHESTRATION_ITEM,
        ms,
        "Committing an orchestration turn"
    );
    describe_histogram!(
        name::ACK_WORKER,
        ms,
        "Acknowledging an activity, retries included"
    );
    describe_histogram!(
        name::ENQUEUE_ORCHESTRATOR,
        ms,
        "Enqueueing a message for an orchestration"
    );
    describe_histogram!(
        name::DEQUEUE_WORKER,
        ms,
        "One fetch-and-lock statement on the worker queue"
    );
    describe_counter!(
        name::INFRASTRUCTURE_ERRORS,
        "Failed provider calls by operation, error_type and retryable"
    );
    describe_counter!(
        name::RETRIES,
        "Transient failures retried inside a provider call"
    );
    describe_counter!(
        name::FETCHES_SKIPPED,
        "Orchestrator fetch statements not sent: nothing was announced since one found nothing"
    );
    describe_counter!(
        name::READS_CACHED,
        "History reads answered from the cache: the server had just confirmed it current"
    );
    describe_counter!(
        name::STATUSES_FROM_READS,
        "Custom status calls answered with the status the instance's last history read brought along"
    );
    describe_counter!(
        name::COMPLETIONS_HELD,
        "Activity completions held for the other activities of their execution"
    );
    describe_counter!(
        name::CLAIMED_AHEAD_TAKEN,
        "Worker fetches answered with the activity the previous acknowledgement claimed for them"
    );
    describe_counter!(
        name::CLAIMED_AHEAD_RELEASED,
        "Activities an acknowledgement claimed that no fetch took within next_activity_window"
    );
    describe_gauge!(name::POOL_IN_USE, "Pooled connections checked out");
    describe_gauge!(name::POOL_IDLE, "Pooled connections open and idle");
    describe_histogram!(
        name::POOL_CHECKOUT_WAIT,
        ms,
        "Time to check out a pooled connection"
    );
    describe_counter!(
        name::POOL_CHECKOUT_TIMEOUTS,
        "Checkouts that found no connection within the call's time limit"
    );
    describe_counter!(
        name::POOL_CONNECT_FAILURES,
        "Failed attempts to open a pooled connection"
    );
    describe_counter!(
        name::POOL_RETIRED,
        "Connections closed on return because they were broken or left mid-statement"
    );
    describe_gauge!(
        name::LISTENER_CONNECTED,
        "LISTEN connections subscribed (0 while fetches fall back to polling)"
    );
    describe_counter!(
        name::LISTENER_RECONNECTS,
        "LISTEN connections re-established"
    );
}

/// Records `elapsed` in the histogram `name`, in milliseconds.
pub(crate) fn duration(name: &'static str, elapsed: Duration) {
    metrics::histogram!(name).record(elapsed.as_secs_f64() * 1000.0);
}

/// Counts one fetch statement of `operation` not sent (see `provider::quiet`).
pub(crate) fn fetch_skipped(operation: &'static str) {
    metrics::counter!(name::FETCHES_SKIPPED, "operation" => operation).increment(1);
}

/// Counts one history read answered without a round trip (see
/// `provider::history_cache`, "Confirmed reads").
pub(crate) fn read_answered_locally() {
    metrics::counter!(name::READS_CACHED).increment(1);
}

/// Counts one custom status call answered from a read (see
/// `provider::read_status`).
pub(crate) fn status_answered_locally() {
    metrics::counter!(name::STATUSES_FROM_READS).increment(1);
}

/// Counts one worker fetch answered by an activity claimed ahead (see
/// `provider::claimed_ahead`).
pub(crate) fn claimed_ahead_taken() {
    metrics::counter!(name::CLAIMED_AHEAD_TAKEN).increment(1);
}

/// Counts one activity claimed ahead that no fetch took, released.
pub(crate) fn claimed_ahead_released() {
    metrics::counter!(name::CLAIMED_AHEAD_RELEASED).increment(1);
}

/// Counts one activity completion the server held for its siblings.
pub(crate) fn completion_held() {
    metrics::counter!(name::COMPLETIONS_HELD).increment(1);
}

/// Counts one transient failure retried inside `operation`.
pub(crate) fn retried(operation: &'static str) {
    metrics::counter!(name::RETRIES, "operation" => operation).increment(1);
}

/// Opens a [`Call`]: a `DEBUG` span named `$op` with the fields every call
/// has (`instance`, `execution_id`, `items`, `outcome`, `retryable`), plus
/// any `field = value` given, which are evaluated only when the span is
/// enabled.
macro_rules! observe {
    ($op:literal $(, $field:ident = $value:expr)* $(,)?) => {
        $crate::observe::Call::new(
            $op,
            ::tracing::debug_span!(
                $op,
                instance = ::tracing::field::Empty,
                execution_id = ::tracing::field::Empty,
                items = ::tracing::field::Empty,
                outcome = ::tracing::field::Empty,
                retryable = ::tracing::field::Empty,
                $($field = $value,)*
            ),
        )
    };
}
pub(crate) use observe;

/// One provider call being observed (see the module docs).
pub(crate) struct Call<'a> {
    op: &'static str,
    span: tracing::Span,
    instance: Option<&'a str>,
    timer: Option<&'static str>,
}

impl<'a> Call<'a> {
    /// Use [`observe!`], which names the span.
    pub(crate) fn new(op: &'static str, span: tracing::Span) -> Self {
        Self {
            op,
            span,
            instance: None,
            timer: None,
        }
    }

    /// The operation's name, as in its span, metrics and errors.
    pub(crate) fn op(&self) -> &'static str {
        self.op
    }

    /// The instance the call is about, when the caller names one.
    pub(crate) fn instance(mut self, instance: impl Into<Option<&'a str>>) -> Self {
        self.instance = instance.into();
        if let Some(instance) = self.instance {
            self.span.record("instance", instance);
        }
        self
    }

    /// The execution the call is about.
    pub(crate) fn execution(self, execution_id: u64) -> Self {
        self.span.record("execution_id", execution_id);
        self
    }

    /// Items the call sends (events appended, ...).
    pub(crate) fn items(self, items: usize) -> Self {
        self.span.record("items", items);
        self
    }

    /// Records the whole call's duration in the histogram `name`.
    pub(crate) fn timed(mut self, name: &'static str) -> Self {
        self.timer = Some(name);
        self
    }

    /// Runs `call` inside the span and reports its outcome; a failure
    /// becomes duroxide's error, tagged with the operation.
    pub(crate) async fn run<T: Report>(
        self,
        call: impl Future<Output = crate::Result<T>>,
    ) -> Result<T, ProviderError> {
        let span = self.span.clone();
        async move {
            let started = self.timer.map(|name| (name, Instant::now()));
            let result = call.await;
            if let Some((name, started)) = started {
                duration(name, started.elapsed());
            }
            match result {
                Ok(value) => {
                    value.report(&self.span);
                    self.span.record("outcome", value.outcome());
                    Ok(value)
                }
                Err(e) => Err(self.failed(e)),
            }
        }
        .instrument(span)
        .await
    }

    /// Reports a failure once: span fields, one event, one count.
    fn failed(&self, e: Error) -> ProviderError {
        let kind = e.kind();
        let retryable = e.is_retryable();
        self.span.record("outcome", kind);
        self.span.record("retryable", retryable);
        metrics::counter!(
            name::INFRASTRUCTURE_ERRORS,
            "operation" => self.op,
            "error_type" => kind,
            "retryable" => if retryable { "true" } else { "false" },
        )
        .increment(1);
        // The span may be disabled while the event is not, so the event
        // names the operation and instance itself. Transient failures and
        // lost locks or refused requests are everyday events that duroxide
        // handles (and logs); anything else permanent needs a look.
        let instance = self.instance;
        if retryable || matches!(e, Error::LockLost | Error::Refused(_)) {
            tracing::debug!(operation = self.op, instance, kind, retryable, error = %e, "provider call failed");
        } else {
            tracing::warn!(operation = self.op, instance, kind, retryable, error = %e, "provider call failed");
        }
        e.into_provider_error(self.op)
    }
}

/// What a call's result tells its span: the outcome, and fields known only
/// from the result (by default nothing).
pub(crate) trait Report {
    /// `ok`, or `idle` for a fetch that found nothing.
    fn outcome(&self) -> &'static str {
        "ok"
    }

    /// Records result fields (`instance`, `items`, ...) on `span`.
    fn report(&self, _span: &tracing::Span) {}
}

impl Report for () {}
impl Report for u64 {}
impl Report for Option<String> {}
impl Report for Option<(Option<String>, u64)> {}
impl Report for Option<SystemStats> {}
impl Report for InstanceInfo {}
impl Report for ExecutionInfo {}
impl Report for SystemMetrics {}
impl Report for QueueDepths {}

/// Rows returned.
impl<T> Report for Vec<T> {
    fn report(&self, span: &tracing::Span) {
        span.record("items", self.len());
    }
}

/// Entries returned.
impl<K, V, S> Report for std::collections::HashMap<K, V, S> {
    fn report(&self, span: &tracing::Span) {
        span.record("items", self.len());
    }
}

/// Sessions renewed or cleaned up.
impl Report for usize {
    fn report(&self, span: &tracing::Span) {
        span.record("items", *self);
    }
}

/// Instances in the tree.
impl Report for InstanceTree {
    fn report(&self, span: &tracing::Span) {
        span.record("items", self.all_ids.len());
    }
}

/// Instances deleted.
impl Report for DeleteInstanceResult {
    fn report(&self, span: &tracing::Span) {
        span.record("items", self.instances_deleted);
    }
}

/// Executions deleted.
impl Report for PruneResult {
    fn report(&self, span: &tracing::Span) {
        span.record("items", self.executions_deleted);
    }
}

/// A fetched orchestration turn: its instance, execution and messages.
impl Report for Option<(OrchestrationItem, String, u32)> {
    fn outcome(&self) -> &'static str {
        if self.is_some() { "ok" } else { "idle" }
    }

    fn report(&self, span: &tracing::Span) {
        if let Some((item, _, _)) = self {
            span.record("instance", item.instance.as_str());
            span.record("execution_id", item.execution_id);
            span.record("items", item.messages.len());
        }
    }
}

/// A fetched work item: its instance.
impl Report for Option<(WorkItem, String, u32)> {
    fn outcome(&self) -> &'static str {
        if self.is_some() { "ok" } else { "idle" }
    }

    fn report(&self, span: &tracing::Span) {
        if let Some((item, _, _)) = self {
            span.record("instance", instance_of(item));
            span.record("items", 1);
        }
    }
}

/// The instance a work item is about: the one whose queue receives it.
pub(crate) fn instance_of(item: &WorkItem) -> &str {
    match item {
        WorkItem::StartOrchestration { instance, .. }
        | WorkItem::ActivityExecute { instance, .. }
        | WorkItem::ActivityCompleted { instance, .. }
        | WorkItem::ActivityFailed { instance, .. }
        | WorkItem::TimerFired { instance, .. }
        | WorkItem::ExternalRaised { instance, .. }
        | WorkItem::CancelInstance { instance, .. }
        | WorkItem::ContinueAsNew { instance, .. }
        | WorkItem::QueueMessage { instance, .. } => instance,
        WorkItem::SubOrchCompleted {
            parent_instance, ..
        }
        | WorkItem::SubOrchFailed {
            parent_instance, ..
        } => parent_instance,
    }
}

/// The instance of the events an ack appends, if any.
pub(crate) fn instance_of_events(events: &[Event]) -> Option<&str> {
    events.first().map(|e| e.instance_id.as_str())
}

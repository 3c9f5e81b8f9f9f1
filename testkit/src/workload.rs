//! A small durable workload for fault tests: orchestrations with a fan-out
//! of activities, a durable timer and a sequential tail, run by two
//! runtimes, judged after a fault.
//!
//! Every activity execution is recorded, so a test can tell how long the
//! runtimes made no progress after a fault ended (recovery), how many
//! activities ran more than once (duplicates), and that every activity
//! completion was applied exactly once (from the stored history).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duroxide::providers::Provider;
use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::{self, RuntimeOptions};
use duroxide::{
    ActivityContext, Client, EventKind, OrchestrationContext, OrchestrationRegistry,
    OrchestrationStatus,
};
use tokio::time::Instant;

/// Activities each orchestration completes: a fan-out of three, then two in
/// sequence (after a durable timer).
pub const ACTIVITIES_PER_ORCHESTRATION: usize = 5;

/// Shape of the workload.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Orchestrations started (default 100).
    pub orchestrations: usize,
    /// How long each activity sleeps (default 250 ms).
    pub activity_time: Duration,
    /// The durable timer between the fan-out and the sequential tail
    /// (default 1 s).
    pub timer: Duration,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            orchestrations: 100,
            activity_time: Duration::from_millis(250),
            timer: Duration::from_secs(1),
        }
    }
}

/// Every activity execution: its key and when it started.
#[derive(Default)]
pub struct Journal {
    starts: Mutex<Vec<(String, Instant)>>,
}

impl Journal {
    fn record(&self, key: &str) {
        self.starts
            .lock()
            .unwrap()
            .push((key.to_owned(), Instant::now()));
    }

    /// Time from `t` to the first activity execution that started after it.
    pub fn first_start_after(&self, t: Instant) -> Option<Duration> {
        self.starts
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| *s >= t)
            .map(|(_, s)| *s - t)
            .min()
    }

    /// Executions beyond the first, summed over every activity.
    pub fn duplicates(&self) -> usize {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for (key, _) in self.starts.lock().unwrap().iter() {
            *counts.entry(key.clone()).or_default() += 1;
        }
        counts.values().map(|n| n - 1).sum()
    }

    /// Activity executions started so far.
    pub fn executions(&self) -> usize {
        self.starts.lock().unwrap().len()
    }

    /// The keys of every execution so far, in start order.
    pub fn keys(&self) -> Vec<String> {
        self.starts
            .lock()
            .unwrap()
            .iter()
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// How a run ended.
#[derive(Debug)]
pub struct Verdict {
    /// Orchestrations that completed (each with the expected output).
    pub completed: usize,
    /// Orchestrations that failed.
    pub failed: usize,
    /// Orchestrations that had not ended when judging stopped.
    pub stuck: usize,
    /// Instances whose history does not hold exactly one completion per activity.
    pub miscounted: usize,
    /// Activity executions beyond the first, summed over every activity
    /// (see [`Journal::duplicates`]).
    pub duplicates: usize,
    /// Fault end to the first activity execution after it.
    pub recovery: Option<Duration>,
    /// Fault end to the last orchestration completing.
    pub drained: Duration,
}

/// The workload's activities and orchestrations; every activity execution
/// is recorded in `journal`.
pub fn registries(
    shape: Shape,
    journal: &Arc<Journal>,
) -> (ActivityRegistry, OrchestrationRegistry) {
    let j = Arc::clone(journal);
    let activities = ActivityRegistry::builder()
        .register("Step", move |_ctx: ActivityContext, key: String| {
            let j = Arc::clone(&j);
            async move {
                j.record(&key);
                tokio::time::sleep(shape.activity_time).await;
                Ok(key)
            }
        })
        .build();
    let orchestrations = OrchestrationRegistry::builder()
        .register(
            "Work",
            move |ctx: OrchestrationContext, id: String| async move {
                let fan: Vec<_> = (0..3)
                    .map(|k| ctx.schedule_activity("Step", format!("{id}/a{k}")))
                    .collect();
                let mut done = 0usize;
                for r in ctx.join(fan).await {
                    r?;
                    done += 1;
                }
                ctx.schedule_timer(shape.timer).await;
                for k in 0..2 {
                    ctx.schedule_activity("Step", format!("{id}/b{k}")).await?;
                    done += 1;
                }
                Ok(done.to_string())
            },
        )
        .build();
    (activities, orchestrations)
}

/// The runtime settings of the fault scenarios: short locks so a lost lock
/// is retaken quickly.
pub fn runtime_options() -> RuntimeOptions {
    RuntimeOptions {
        orchestrator_lock_timeout: Duration::from_secs(3),
        worker_lock_timeout: Duration::from_secs(5),
        orchestration_concurrency: 4,
        worker_concurrency: 8,
        dispatcher_min_poll_interval: Duration::from_millis(10),
        ..Default::default()
    }
}

/// Runs the workload on `runtimes` (one runtime per provider) while `fault`
/// runs; `fault` returns when the fault has ended. `observer` (not subject
/// to the fault) starts the orchestrations and judges them.
///
/// Panics if an orchestration completes with an unexpected output.
pub async fn run<P, F, Fut>(
    shape: Shape,
    runtimes: Vec<Arc<P>>,
    observer: Arc<P>,
    judge_within: Duration,
    fault: F,
) -> Verdict
where
    P: Provider + 'static,
    F: FnOnce(Arc<Journal>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let journal = Arc::new(Journal::default());
    let mut started = Vec::new();
    for provider in runtimes {
        let (activities, orchestrations) = registries(shape, &journal);
        started.push(
            runtime::Runtime::start_with_options(
                provider,
                activities,
                orchestrations,
                runtime_options(),
            )
            .await,
        );
    }
    let client = Client::new(observer.clone());
    let ids: Vec<String> = (0..shape.orchestrations)
        .map(|i| format!("w{i:04}"))
        .collect();
    for id in &ids {
        client
            .start_orchestration(id, "Work", id.clone())
            .await
            .expect("start orchestration");
    }

    fault(Arc::clone(&journal)).await;
    let fault_end = Instant::now();

    // Judge: wait for every instance to end, up to `judge_within`.
    let deadline = fault_end + judge_within;
    let mut completed = 0;
    let mut failed = 0;
    let mut stuck = 0;
    for id in &ids {
        let left = deadline.saturating_duration_since(Instant::now());
        match client
            .wait_for_orchestration(id, left.max(Duration::from_millis(1)))
            .await
        {
            Ok(OrchestrationStatus::Completed { output, .. }) => {
                assert_eq!(output, ACTIVITIES_PER_ORCHESTRATION.to_string(), "{id}");
                completed += 1;
            }
            Ok(OrchestrationStatus::Failed { details, .. }) => {
                eprintln!("{id} failed: {details:?}");
                failed += 1;
            }
            _ => stuck += 1,
        }
    }
    let drained = fault_end.elapsed();
    let mut miscounted = 0;
    for id in &ids {
        let history = observer.read(id).await.unwrap_or_default();
        let completions = history
            .iter()
            .filter(|e| matches!(e.kind, EventKind::ActivityCompleted { .. }))
            .count();
        if completions != ACTIVITIES_PER_ORCHESTRATION {
            miscounted += 1;
        }
    }
    for rt in started {
        rt.shutdown(Some(1000)).await;
    }
    Verdict {
        completed,
        failed,
        stuck,
        miscounted,
        duplicates: journal.duplicates(),
        recovery: journal.first_start_after(fault_end),
        drained,
    }
}

/// Waits until at least `n` activity executions have started (the workload
/// is in full swing), or `within` passes.
pub async fn until_executions(journal: &Journal, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while journal.executions() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

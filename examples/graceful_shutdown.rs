//! The shape of a service on duroxide-diesel: run a runtime, take in work,
//! and on Ctrl-C stop taking work and shut the runtime down gracefully. A
//! new runtime on the same schema (after a deploy, in another process)
//! finishes whatever was in flight: nothing is lost.
//!
//! ```text
//! cargo run --example graceful_shutdown                  # stops itself after a moment
//! cargo run --example graceful_shutdown -- --until-ctrl-c # stops on Ctrl-C only
//! ```
//!
//! 1. Starts a runtime and an intake that starts a `Job` orchestration (three
//!    activities of 400 ms and a durable timer) every 250 ms.
//! 2. On Ctrl-C, or after a short demo deadline so that it also runs
//!    unattended, stops the intake and calls `Runtime::shutdown` with a grace
//!    period: the runtime fetches no more work, lets the activities and turns
//!    it is running finish, then stops. Jobs not yet done stay in PostgreSQL,
//!    mid-way.
//! 3. Starts a new provider and runtime on the same schema, as the next
//!    process would, and waits for every job: each must complete with all its
//!    steps, or the program exits with status 1. It also reports how many
//!    activities ran more than once (none, when every in-flight activity
//!    finished within the grace period).
//!
//! Uses `DATABASE_URL` when set; otherwise starts a throwaway local
//! PostgreSQL from the binaries installed on this machine, as the tests do.
//! Runs in a schema of its own (named after the process id) and drops it at
//! the end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::{self, Runtime, RuntimeOptions};
use duroxide::{
    ActivityContext, Client, OrchestrationContext, OrchestrationRegistry, OrchestrationStatus,
};
use duroxide_diesel::PostgresProvider;
use duroxide_diesel_testkit::{db, pg};
use tokio::sync::watch;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Activities per job.
const STEPS: usize = 3;
/// How long each activity works.
const STEP_TIME: Duration = Duration::from_millis(400);
/// Time from start to the unattended shutdown (without `--until-ctrl-c`).
const DEMO_DEADLINE: Duration = Duration::from_millis(1200);
/// How long in-flight work may take to finish at shutdown.
const GRACE: Duration = Duration::from_secs(5);

/// How many times each activity (`job/step`) ran, across both runtimes.
type Journal = Arc<Mutex<HashMap<String, usize>>>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let until_ctrl_c = std::env::args().any(|a| a == "--until-ctrl-c");
    let url = pg::database_url();
    let schema = format!("graceful_shutdown_{}", std::process::id());

    let outcome = service(&url, &schema, until_ctrl_c).await;

    db::drop_schema(&url, &schema).await?;
    outcome
}

async fn connect(url: &str, schema: &str) -> Result<Arc<PostgresProvider>, BoxError> {
    Ok(Arc::new(
        PostgresProvider::builder(url)
            .schema(schema)
            .build()
            .await?,
    ))
}

/// The application: its activities and orchestrations. Every runtime of the
/// service registers the same ones.
fn registries(journal: &Journal) -> (ActivityRegistry, OrchestrationRegistry) {
    let journal = Arc::clone(journal);
    let activities = ActivityRegistry::builder()
        .register("Step", move |_ctx: ActivityContext, key: String| {
            let journal = Arc::clone(&journal);
            async move {
                *journal.lock().unwrap().entry(key.clone()).or_default() += 1;
                tokio::time::sleep(STEP_TIME).await;
                Ok(key)
            }
        })
        .build();
    let orchestrations = OrchestrationRegistry::builder()
        .register("Job", |ctx: OrchestrationContext, id: String| async move {
            for step in 1..=STEPS {
                ctx.schedule_activity("Step", format!("{id}/{step}"))
                    .await?;
                if step == 1 {
                    ctx.schedule_timer(Duration::from_millis(300)).await;
                }
            }
            Ok(format!("{id}: {STEPS} steps done"))
        })
        .build();
    (activities, orchestrations)
}

async fn start_runtime(provider: Arc<PostgresProvider>, journal: &Journal) -> Arc<Runtime> {
    let (activities, orchestrations) = registries(journal);
    let options = RuntimeOptions {
        worker_concurrency: 4,
        // Bounds how long work abandoned by a crashed process stays locked;
        // a graceful shutdown leaves no such work behind.
        worker_lock_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    runtime::Runtime::start_with_options(provider, activities, orchestrations, options).await
}

/// Starts a job right away and then every 250 ms until `stop` turns true;
/// returns the ids of the jobs it started.
async fn intake(client: Client, mut stop: watch::Receiver<bool>) -> Result<Vec<String>, String> {
    let mut started = Vec::new();
    loop {
        let id = format!("job-{}", started.len() + 1);
        client
            .start_orchestration(&id, "Job", id.clone())
            .await
            .map_err(|e| format!("starting {id} failed: {e}"))?;
        started.push(id);
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return Ok(started),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

async fn service(url: &str, schema: &str, until_ctrl_c: bool) -> Result<(), BoxError> {
    let journal = Journal::default();

    // --- The running service.
    let provider = connect(url, schema).await?;
    let rt = start_runtime(provider.clone(), &journal).await;
    let (stop, stopped) = watch::channel(false);
    let intake = tokio::spawn(intake(Client::new(provider.clone()), stopped));

    let deadline = async {
        if until_ctrl_c {
            println!("running; press Ctrl-C to shut down");
            std::future::pending::<()>().await;
        } else {
            tokio::time::sleep(DEMO_DEADLINE).await;
        }
    };
    tokio::select! {
        signal = tokio::signal::ctrl_c() => {
            signal?;
            println!("Ctrl-C: shutting down");
        }
        _ = deadline => println!("demo deadline reached: shutting down"),
    }

    // --- Graceful shutdown: first stop taking work, then stop the runtime.
    stop.send_replace(true);
    let jobs = intake.await??;
    rt.shutdown(Some(GRACE.as_millis() as u64)).await;

    let client = Client::new(provider.clone());
    let mut in_flight = 0;
    for id in &jobs {
        if !matches!(
            client.get_orchestration_status(id).await?,
            OrchestrationStatus::Completed { .. }
        ) {
            in_flight += 1;
        }
    }
    println!(
        "runtime stopped: {} jobs started, {} done, {in_flight} left in flight in PostgreSQL",
        jobs.len(),
        jobs.len() - in_flight
    );
    drop(client);
    drop(provider);

    // --- The next process: a new provider and runtime on the same schema.
    let provider = connect(url, schema).await?;
    let rt = start_runtime(provider.clone(), &journal).await;
    let client = Client::new(provider.clone());
    let mut failures = Vec::new();
    for id in &jobs {
        let expected = format!("{id}: {STEPS} steps done");
        match client
            .wait_for_orchestration(id, Duration::from_secs(60))
            .await
        {
            Ok(OrchestrationStatus::Completed { output, .. }) if output == expected => {}
            other => failures.push(format!("{id}: {other:?}")),
        }
    }
    rt.shutdown(None).await;

    let runs: Vec<usize> = journal.lock().unwrap().values().copied().collect();
    let repeated: usize = runs.iter().map(|n| n - 1).sum();
    println!(
        "after the restart: {} of {} jobs completed; {} activities ran, {repeated} executions repeated",
        jobs.len() - failures.len(),
        jobs.len(),
        runs.len()
    );
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("jobs lost or failed:\n  {}", failures.join("\n  ")).into())
    }
}

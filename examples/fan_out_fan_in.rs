//! Fan-out/fan-in on PostgreSQL: one orchestration schedules N activities at
//! once, waits for all of them, sleeps on a durable timer, then fans the
//! results in to a single activity raced against a durable deadline.
//!
//! ```text
//! cargo run --example fan_out_fan_in [-- N]
//! ```
//!
//! The orchestration computes 1² + 2² + ... + N² (N defaults to 8), one
//! square per activity. The activities run in parallel on the runtime's
//! workers, so the fan-out takes about as long as one activity, not N. The
//! program checks the sum against N(N+1)(2N+1)/6 and exits with status 1 if
//! it differs or the orchestration does not complete.
//!
//! * `ctx.join` waits for every scheduled activity; results come back in
//!   scheduling order whatever order the activities finished in.
//! * `ctx.schedule_timer` is durable: the timer is a row in PostgreSQL, so
//!   it fires even if the process restarts while the orchestration waits.
//! * `ctx.select2` races the fan-in activity against a durable timer; the
//!   loser is dropped.
//!
//! Uses `DATABASE_URL` when set; otherwise starts a throwaway local
//! PostgreSQL from the binaries installed on this machine, as the tests do.
//! Runs in a schema of its own (named after the process id) and drops it at
//! the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::{self, RuntimeOptions};
use duroxide::{
    ActivityContext, Client, Either2, OrchestrationContext, OrchestrationRegistry,
    OrchestrationStatus,
};
use duroxide_diesel::PostgresProvider;
use duroxide_diesel_testkit::{db, pg};

/// How long each `Square` activity takes, so the parallelism is visible.
const ACTIVITY_TIME: Duration = Duration::from_millis(200);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .map_err(|e| format!("N must be a number: {e}"))?,
        None => 8,
    };
    let url = pg::database_url();
    let schema = format!("fan_out_fan_in_{}", std::process::id());
    let provider = Arc::new(
        PostgresProvider::builder(&url)
            .schema(&schema)
            .build()
            .await?,
    );

    let outcome = run(provider.clone(), n).await;

    drop(provider);
    db::drop_schema(&url, &schema).await?;
    outcome
}

async fn run(provider: Arc<PostgresProvider>, n: u64) -> Result<(), Box<dyn std::error::Error>> {
    let activities = ActivityRegistry::builder()
        .register("Square", |_ctx: ActivityContext, x: String| async move {
            let x: u64 = x.parse().map_err(|e| format!("not a number: {e}"))?;
            tokio::time::sleep(ACTIVITY_TIME).await;
            Ok((x * x).to_string())
        })
        .register("Publish", |_ctx: ActivityContext, sum: String| async move {
            Ok(format!("sum of squares = {sum}"))
        })
        .build();

    let orchestrations = OrchestrationRegistry::builder()
        .register(
            "SumOfSquares",
            |ctx: OrchestrationContext, n: String| async move {
                let n: u64 = n.parse().map_err(|e| format!("not a number: {e}"))?;

                // Fan out: every activity is scheduled before any is awaited.
                let squares: Vec<_> = (1..=n)
                    .map(|x| ctx.schedule_activity("Square", x.to_string()))
                    .collect();
                let mut sum = 0u64;
                for square in ctx.join(squares).await {
                    sum += square?
                        .parse::<u64>()
                        .map_err(|e| format!("bad square: {e}"))?;
                }

                // A durable timer between the phases.
                ctx.schedule_timer(Duration::from_millis(300)).await;

                // Fan in to one activity, with a durable deadline.
                let publish = ctx.schedule_activity("Publish", sum.to_string());
                let deadline = ctx.schedule_timer(Duration::from_secs(30));
                match ctx.select2(publish, deadline).await {
                    Either2::First(published) => published.map(|_| sum.to_string()),
                    Either2::Second(()) => Err("publishing the sum timed out".to_owned()),
                }
            },
        )
        .build();

    // Enough workers to run the whole fan-out at once.
    let options = RuntimeOptions {
        worker_concurrency: n.clamp(1, 32) as usize,
        ..Default::default()
    };
    let rt =
        runtime::Runtime::start_with_options(provider.clone(), activities, orchestrations, options)
            .await;
    let client = Client::new(provider);

    let instance = "sum-of-squares-1";
    let started = Instant::now();
    client
        .start_orchestration(instance, "SumOfSquares", n.to_string())
        .await?;
    let status = client
        .wait_for_orchestration(instance, Duration::from_secs(60))
        .await
        .map_err(|e| format!("waiting for the orchestration failed: {e:?}"));
    let elapsed = started.elapsed();
    rt.shutdown(None).await;

    let expected = n * (n + 1) * (2 * n + 1) / 6;
    match status? {
        OrchestrationStatus::Completed { output, .. } => {
            println!(
                "{n} activities of {} ms each, fanned out and in: sum of squares = {output} \
                 ({} ms end to end, including a 300 ms durable timer)",
                ACTIVITY_TIME.as_millis(),
                elapsed.as_millis()
            );
            if output == expected.to_string() {
                Ok(())
            } else {
                Err(format!("wrong result: got {output}, expected {expected}").into())
            }
        }
        other => Err(format!("orchestration did not complete: {other:?}").into()),
    }
}

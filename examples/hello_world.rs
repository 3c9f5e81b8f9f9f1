//! Runs a real orchestration (an activity chain and a durable timer) on
//! PostgreSQL through duroxide's `Runtime` and `Client`.
//!
//! ```text
//! cargo run --example hello_world
//! ```
//!
//! Uses `DATABASE_URL` when set; otherwise starts a throwaway local
//! PostgreSQL from the binaries installed on this machine, exactly as the
//! tests do.

use std::sync::Arc;
use std::time::Duration;

use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::{self};
use duroxide::{
    ActivityContext, Client, OrchestrationContext, OrchestrationRegistry, OrchestrationStatus,
};
use duroxide_diesel::PostgresProvider;
use duroxide_diesel_testkit::{db, pg};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = pg::database_url();
    let schema = format!("hello_world_{}", std::process::id());
    let provider = Arc::new(PostgresProvider::new_with_schema(&url, Some(&schema)).await?);

    let activities = ActivityRegistry::builder()
        .register("Greet", |_ctx: ActivityContext, name: String| async move {
            Ok(format!("Hello, {name}!"))
        })
        .register("Shout", |_ctx: ActivityContext, text: String| async move {
            Ok(text.to_uppercase())
        })
        .build();

    let orchestrations = OrchestrationRegistry::builder()
        .register(
            "HelloWorld",
            |ctx: OrchestrationContext, name: String| async move {
                let greeting = ctx.schedule_activity("Greet", name).await?;
                // A durable timer: survives a process restart like everything else.
                ctx.schedule_timer(Duration::from_millis(200)).await;
                let loud = ctx.schedule_activity("Shout", greeting).await?;
                Ok(loud)
            },
        )
        .build();

    let rt = runtime::Runtime::start_with_store(provider.clone(), activities, orchestrations).await;
    let client = Client::new(provider.clone());

    client
        .start_orchestration("hello-1", "HelloWorld", "PostgreSQL")
        .await?;
    let status = client
        .wait_for_orchestration("hello-1", Duration::from_secs(30))
        .await
        .map_err(|e| format!("waiting for the orchestration failed: {e:?}"))?;
    rt.shutdown(None).await;

    let outcome = match status {
        OrchestrationStatus::Completed { output, .. } => {
            println!("orchestration completed: {output}");
            Ok(())
        }
        other => Err(format!("orchestration did not complete: {other:?}").into()),
    };
    drop(client);
    drop(provider);
    // Repeated runs leave nothing behind.
    db::drop_schema(&url, &schema).await?;
    outcome
}

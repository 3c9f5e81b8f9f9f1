//! Two tenants in one process and one database: each tenant is a
//! `PostgresProvider` on a schema of its own, served by a duroxide runtime of
//! its own, and neither can see the other's orchestrations.
//!
//! ```text
//! cargo run --example multi_tenant
//! ```
//!
//! 1. Builds a provider, a runtime and a client per tenant
//!    (`PostgresProvider::builder(url).schema(..)`); each schema gets its own
//!    tables, queues and notification channel.
//! 2. Starts `order-42` for tenant A only: A's runtime runs it, and tenant B's
//!    client reports it as not found and does not list it.
//! 3. Starts `invoice-1` in both tenants with different input: the same
//!    instance id names two independent orchestrations, each completed by its
//!    own tenant's runtime.
//! 4. Checks each tenant's instance list (through the provider's admin API).
//!
//! Exits with status 1 if any check fails. Uses `DATABASE_URL` when set;
//! otherwise starts a throwaway local PostgreSQL from the binaries installed
//! on this machine, as the tests do. The two schemas are named after the
//! process id and dropped at the end.

use std::sync::Arc;
use std::time::Duration;

use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::{self, Runtime};
use duroxide::{
    ActivityContext, Client, OrchestrationContext, OrchestrationRegistry, OrchestrationStatus,
};
use duroxide_diesel::PostgresProvider;
use duroxide_diesel_testkit::{db, pg};

type BoxError = Box<dyn std::error::Error>;

/// One tenant: its schema, provider, runtime and client.
struct Tenant {
    name: &'static str,
    provider: Arc<PostgresProvider>,
    runtime: Arc<Runtime>,
    client: Client,
}

impl Tenant {
    async fn start(name: &'static str, url: &str, schema: &str) -> Result<Self, BoxError> {
        let provider = Arc::new(
            PostgresProvider::builder(url)
                .schema(schema)
                .max_connections(4)
                .build()
                .await?,
        );
        // The activity says which tenant's runtime ran it.
        let activities = ActivityRegistry::builder()
            .register(
                "Handle",
                move |_ctx: ActivityContext, what: String| async move {
                    Ok(format!("{what} handled by {name}"))
                },
            )
            .build();
        let orchestrations = OrchestrationRegistry::builder()
            .register(
                "Process",
                |ctx: OrchestrationContext, what: String| async move {
                    ctx.schedule_activity("Handle", what).await
                },
            )
            .build();
        let runtime =
            runtime::Runtime::start_with_store(provider.clone(), activities, orchestrations).await;
        let client = Client::new(provider.clone());
        Ok(Tenant {
            name,
            provider,
            runtime,
            client,
        })
    }

    /// Starts an orchestration and waits for its output.
    async fn run(&self, instance: &str, input: &str) -> Result<String, BoxError> {
        self.client
            .start_orchestration(instance, "Process", input)
            .await?;
        match self
            .client
            .wait_for_orchestration(instance, Duration::from_secs(30))
            .await
            .map_err(|e| format!("{}: waiting for {instance} failed: {e:?}", self.name))?
        {
            OrchestrationStatus::Completed { output, .. } => Ok(output),
            other => Err(format!("{}: {instance} did not complete: {other:?}", self.name).into()),
        }
    }

    /// Every instance of this tenant, sorted.
    async fn instances(&self) -> Result<Vec<String>, BoxError> {
        let mut ids = self.client.list_all_instances().await?;
        ids.sort();
        Ok(ids)
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let url = pg::database_url();
    let pid = std::process::id();
    let schemas = [format!("tenant_a_{pid}"), format!("tenant_b_{pid}")];

    let outcome = demo(&url, &schemas).await;

    for schema in &schemas {
        db::drop_schema(&url, schema).await?;
    }
    match outcome {
        Ok(failures) if failures.is_empty() => {
            println!("tenants are isolated");
            Ok(())
        }
        Ok(failures) => Err(format!("isolation failed:\n  {}", failures.join("\n  ")).into()),
        Err(e) => Err(e),
    }
}

/// Runs the scenario; returns the failed checks.
async fn demo(url: &str, schemas: &[String; 2]) -> Result<Vec<String>, BoxError> {
    let a = Tenant::start("tenant A", url, &schemas[0]).await?;
    let b = Tenant::start("tenant B", url, &schemas[1]).await?;
    println!(
        "tenant A in schema {}, tenant B in schema {}",
        a.provider.schema(),
        b.provider.schema()
    );
    let mut failures = Vec::new();
    let mut check = |ok: bool, what: String| {
        println!("[{}] {what}", if ok { "ok" } else { "FAILED" });
        if !ok {
            failures.push(what);
        }
    };

    // An instance of tenant A only.
    let output = a.run("order-42", "order 42").await?;
    check(
        output == "order 42 handled by tenant A",
        format!("tenant A ran order-42: {output}"),
    );
    let seen_by_b = b.client.get_orchestration_status("order-42").await?;
    check(
        matches!(seen_by_b, OrchestrationStatus::NotFound),
        format!("tenant B does not find order-42: {seen_by_b:?}"),
    );

    // The same instance id in both tenants: two independent orchestrations.
    let (out_a, out_b) = tokio::try_join!(
        a.run("invoice-1", "invoice 1 of A"),
        b.run("invoice-1", "invoice 1 of B"),
    )?;
    check(
        out_a == "invoice 1 of A handled by tenant A",
        format!("tenant A's invoice-1: {out_a}"),
    );
    check(
        out_b == "invoice 1 of B handled by tenant B",
        format!("tenant B's invoice-1: {out_b}"),
    );

    // What each tenant's admin API lists.
    let listed_a = a.instances().await?;
    let listed_b = b.instances().await?;
    check(
        listed_a == ["invoice-1", "order-42"],
        format!("tenant A lists {listed_a:?}"),
    );
    check(
        listed_b == ["invoice-1"],
        format!("tenant B lists {listed_b:?}"),
    );

    a.runtime.shutdown(None).await;
    b.runtime.shutdown(None).await;
    Ok(failures)
}

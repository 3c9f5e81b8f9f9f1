//! The least-privilege deployment: a deploy step migrates the schema with a
//! privileged role, and the service runs as a role that cannot change any
//! schema and starts in verify-only mode.
//!
//! ```text
//! cargo run --example least_privilege
//! ```
//!
//! 1. Deploy step, as the URL's role (the schema owner): applies this crate's
//!    migrations (`MigrationMode::Apply`). Skipped when `DUROXIDE_SCHEMA`
//!    names a schema that was migrated beforehand, for example with the
//!    diesel CLI as the README shows.
//! 2. Creates an application role and runs `grant_statements(schema, role)`:
//!    USAGE on the schema, DML on its tables, EXECUTE on its functions, no
//!    CREATE anywhere.
//! 3. The service, as the application role: `MigrationMode::Verify` (sends no
//!    DDL, refuses a schema whose migrations are not this build's), then
//!    runs an orchestration to completion.
//!
//! Exits with status 1 if anything fails. Uses `DATABASE_URL` when set
//! (its role must be allowed to create roles); otherwise starts a throwaway
//! local PostgreSQL, as the tests do. The role is dropped at the end, and so
//! is the schema unless it came from `DUROXIDE_SCHEMA`.

use std::sync::Arc;
use std::time::Duration;

use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::{self};
use duroxide::{
    ActivityContext, Client, OrchestrationContext, OrchestrationRegistry, OrchestrationStatus,
};
use duroxide_diesel::{MigrationMode, PostgresProvider, grant_statements};
use duroxide_diesel_testkit::{db, pg};

type BoxError = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("least_privilege failed: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), BoxError> {
    let owner_url = pg::database_url();
    let given = std::env::var("DUROXIDE_SCHEMA")
        .ok()
        .filter(|s| !s.is_empty());
    let schema = given
        .clone()
        .unwrap_or_else(|| format!("least_privilege_{}", std::process::id()));
    let role = format!("workflow_app_{}", std::process::id());
    let password = format!("pw-{:016x}", rand::random::<u64>());

    // 1. Deploy step, with the privileged role.
    if given.is_none() {
        PostgresProvider::builder(&owner_url)
            .schema(&schema)
            .max_connections(1)
            .build()
            .await?;
        println!("deploy: migrated schema {schema}");
    } else {
        println!("deploy: using schema {schema}, migrated beforehand");
    }

    // 2. The application role and its grants, run as the schema owner.
    db::execute(
        &owner_url,
        &format!("CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'"),
    )
    .await?;
    let result = async {
        db::execute(&owner_url, &grant_statements(&schema, &role)?).await?;
        println!("granted least privilege on {schema} to {role}");
        // 3. The service, as the application role.
        serve(&pg::url_as_user(&owner_url, &role, &password), &schema).await
    }
    .await;

    // Cleanup whatever happened.
    db::execute(
        &owner_url,
        &format!("DROP OWNED BY \"{role}\"; DROP ROLE \"{role}\""),
    )
    .await?;
    if given.is_none() {
        db::drop_schema(&owner_url, &schema).await?;
    }
    result
}

async fn serve(app_url: &str, schema: &str) -> Result<(), BoxError> {
    let provider = Arc::new(
        PostgresProvider::builder(app_url)
            .schema(schema)
            .migrations(MigrationMode::Verify)
            .max_connections(4)
            .build()
            .await?,
    );
    println!("service: started in verify-only mode");

    let activities = ActivityRegistry::builder()
        .register(
            "Reserve",
            |_ctx: ActivityContext, item: String| async move { Ok(format!("reserved {item}")) },
        )
        .build();
    let orchestrations = OrchestrationRegistry::builder()
        .register(
            "PlaceOrder",
            |ctx: OrchestrationContext, item: String| async move {
                let reserved = ctx.schedule_activity("Reserve", item).await?;
                ctx.schedule_timer(Duration::from_millis(100)).await;
                Ok(format!("{reserved}, shipped"))
            },
        )
        .build();
    let rt = runtime::Runtime::start_with_store(provider.clone(), activities, orchestrations).await;
    let client = Client::new(provider.clone());
    let instance = format!("order-{}", std::process::id());
    client
        .start_orchestration(&instance, "PlaceOrder", "book")
        .await?;
    let status = client
        .wait_for_orchestration(&instance, Duration::from_secs(30))
        .await?;
    rt.shutdown(None).await;
    match status {
        OrchestrationStatus::Completed { output, .. } if output == "reserved book, shipped" => {
            println!("service: {instance} completed: {output}");
            Ok(())
        }
        other => Err(format!("{instance} did not complete as expected: {other:?}").into()),
    }
}

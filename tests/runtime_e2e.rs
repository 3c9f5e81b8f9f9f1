//! Real orchestrations through duroxide's `Runtime` and `Client` on this provider.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestDb;
use duroxide::providers::{PruneOptions, TagFilter};
use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::{self, RuntimeOptions};
use duroxide::{
    ActivityContext, Client, OrchestrationContext, OrchestrationRegistry, OrchestrationStatus,
};
use duroxide_diesel::PostgresProvider;

const WAIT: Duration = Duration::from_secs(30);

/// A provider on a fresh schema plus a client for it.
async fn setup() -> (TestDb, Arc<PostgresProvider>, Client) {
    let db = TestDb::new().await;
    let provider = Arc::new(db.provider().await);
    let client = Client::new(provider.clone());
    (db, provider, client)
}

/// Stops the runtimes, releases the provider and drops the test schema.
async fn teardown(
    runtimes: Vec<Arc<runtime::Runtime>>,
    client: Client,
    provider: Arc<PostgresProvider>,
    db: TestDb,
) {
    for rt in runtimes {
        rt.shutdown(None).await;
    }
    drop(client);
    drop(provider);
    db.cleanup().await;
}

fn fast_options() -> RuntimeOptions {
    RuntimeOptions {
        dispatcher_min_poll_interval: Duration::from_millis(10),
        ..Default::default()
    }
}

async fn completed_output(client: &Client, instance: &str) -> String {
    match client
        .wait_for_orchestration(instance, WAIT)
        .await
        .expect("wait")
    {
        OrchestrationStatus::Completed { output, .. } => output,
        other => panic!("{instance} did not complete: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_chain_timer_custom_status_and_kv() {
    let (db, provider, client) = setup().await;
    let activities = ActivityRegistry::builder()
        .register("Add1", |_c: ActivityContext, n: String| async move {
            Ok((n.parse::<i64>().map_err(|e| e.to_string())? + 1).to_string())
        })
        .build();
    let orchestrations = OrchestrationRegistry::builder()
        .register(
            "Chain",
            |ctx: OrchestrationContext, input: String| async move {
                let mut n = input;
                for step in 0..3 {
                    n = ctx.schedule_activity("Add1", n).await?;
                    ctx.set_custom_status(format!("step {step}"));
                }
                ctx.schedule_timer(Duration::from_millis(50)).await;
                ctx.set_kv_value("result", n.clone());
                Ok(n)
            },
        )
        .build();
    let rt = runtime::Runtime::start_with_options(
        provider.clone(),
        activities,
        orchestrations,
        fast_options(),
    )
    .await;

    client
        .start_orchestration("chain-1", "Chain", "10")
        .await
        .unwrap();
    assert_eq!(completed_output(&client, "chain-1").await, "13");
    match client.get_orchestration_status("chain-1").await.unwrap() {
        OrchestrationStatus::Completed { custom_status, .. } => {
            assert_eq!(custom_status.as_deref(), Some("step 2"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        client
            .get_kv_value("chain-1", "result")
            .await
            .unwrap()
            .as_deref(),
        Some("13")
    );

    teardown(vec![rt], client, provider, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_calls_and_sub_orchestration_tree_deletion() {
    let (db, provider, client) = setup().await;
    let activities = ActivityRegistry::builder()
        .register(
            "Echo",
            |_c: ActivityContext, s: String| async move { Ok(s) },
        )
        .build();
    let orchestrations = OrchestrationRegistry::builder()
        .register("Child", |ctx: OrchestrationContext, s: String| async move {
            ctx.schedule_activity("Echo", s).await
        })
        .register(
            "Parent",
            |ctx: OrchestrationContext, _s: String| async move {
                let a = ctx.schedule_sub_orchestration("Child", "a").await?;
                let b = ctx.schedule_sub_orchestration("Child", "b").await?;
                Ok(format!("{a}{b}"))
            },
        )
        .build();
    let rt = runtime::Runtime::start_with_options(
        provider.clone(),
        activities,
        orchestrations,
        fast_options(),
    )
    .await;

    client
        .start_orchestration("tree-root", "Parent", "")
        .await
        .unwrap();
    assert_eq!(completed_output(&client, "tree-root").await, "ab");

    let all = client.list_all_instances().await.unwrap();
    assert_eq!(all.len(), 3, "root and two children: {all:?}");
    let info = client.get_instance_info("tree-root").await.unwrap();
    assert_eq!(info.status, "Completed");
    assert_eq!(info.orchestration_name, "Parent");
    let tree = client.get_instance_tree("tree-root").await.unwrap();
    assert_eq!(tree.all_ids.len(), 3);
    let metrics = client.get_system_metrics().await.unwrap();
    assert_eq!(metrics.completed_instances, 3);

    let deleted = client.delete_instance("tree-root", false).await.unwrap();
    assert_eq!(deleted.instances_deleted, 3);
    assert!(client.list_all_instances().await.unwrap().is_empty());
    assert!(matches!(
        client.get_orchestration_status("tree-root").await.unwrap(),
        OrchestrationStatus::NotFound
    ));

    teardown(vec![rt], client, provider, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_as_new_then_prune() {
    let (db, provider, client) = setup().await;
    let orchestrations = OrchestrationRegistry::builder()
        .register(
            "Counter",
            |ctx: OrchestrationContext, n: String| async move {
                let n: u32 = n
                    .parse()
                    .map_err(|e: std::num::ParseIntError| e.to_string())?;
                if n < 3 {
                    ctx.continue_as_new((n + 1).to_string()).await
                } else {
                    Ok(format!("done at {n}"))
                }
            },
        )
        .build();
    let rt = runtime::Runtime::start_with_options(
        provider.clone(),
        ActivityRegistry::builder().build(),
        orchestrations,
        fast_options(),
    )
    .await;

    client
        .start_orchestration("can-1", "Counter", "0")
        .await
        .unwrap();
    assert_eq!(completed_output(&client, "can-1").await, "done at 3");
    assert_eq!(
        client.list_executions("can-1").await.unwrap(),
        vec![1, 2, 3, 4]
    );

    let pruned = client
        .prune_executions(
            "can-1",
            PruneOptions {
                keep_last: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(pruned.executions_deleted, 3);
    assert_eq!(client.list_executions("can-1").await.unwrap(), vec![4]);
    assert_eq!(completed_output(&client, "can-1").await, "done at 3");

    teardown(vec![rt], client, provider, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_pinned_activities_complete() {
    let (db, provider, client) = setup().await;
    let activities = ActivityRegistry::builder()
        .register("Turn", |_c: ActivityContext, s: String| async move {
            Ok(format!("<{s}>"))
        })
        .build();
    let orchestrations = OrchestrationRegistry::builder()
        .register("Chat", |ctx: OrchestrationContext, _s: String| async move {
            let session = ctx.new_guid().await?;
            let a = ctx
                .schedule_activity_on_session("Turn", "1", &session)
                .await?;
            let b = ctx
                .schedule_activity_on_session("Turn", "2", &session)
                .await?;
            Ok(format!("{a}{b}"))
        })
        .build();
    let options = RuntimeOptions {
        worker_node_id: Some("node-a".into()),
        ..fast_options()
    };
    let rt =
        runtime::Runtime::start_with_options(provider.clone(), activities, orchestrations, options)
            .await;

    client
        .start_orchestration("chat-1", "Chat", "")
        .await
        .unwrap();
    assert_eq!(completed_output(&client, "chat-1").await, "<1><2>");
    let owner = db.scalar("SELECT min(owner_id) FROM sessions").await;
    assert_eq!(
        owner.as_deref(),
        Some("node-a"),
        "the session was claimed by the worker node"
    );

    teardown(vec![rt], client, provider, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_activity_runs_on_the_matching_worker() {
    let (db, provider, client) = setup().await;
    let registry = |who: &'static str| {
        ActivityRegistry::builder()
            .register("Where", move |_c: ActivityContext, _s: String| async move {
                Ok(who.to_string())
            })
            .build()
    };
    let orchestrations = || {
        OrchestrationRegistry::builder()
            .register(
                "Route",
                |ctx: OrchestrationContext, _s: String| async move {
                    let plain = ctx.schedule_activity("Where", "").await?;
                    let gpu = ctx.schedule_activity("Where", "").with_tag("gpu").await?;
                    Ok(format!("{plain}/{gpu}"))
                },
            )
            .build()
    };
    let general = runtime::Runtime::start_with_options(
        provider.clone(),
        registry("general"),
        orchestrations(),
        fast_options(),
    )
    .await;
    let gpu = runtime::Runtime::start_with_options(
        provider.clone(),
        registry("gpu-node"),
        orchestrations(),
        RuntimeOptions {
            worker_tag_filter: TagFilter::tags(["gpu"]),
            ..fast_options()
        },
    )
    .await;

    client
        .start_orchestration("route-1", "Route", "")
        .await
        .unwrap();
    assert_eq!(
        completed_output(&client, "route-1").await,
        "general/gpu-node"
    );

    teardown(vec![general, gpu], client, provider, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_an_orchestration_cancels_its_running_activity() {
    let (db, provider, client) = setup().await;
    let observed = Arc::new(tokio::sync::Notify::new());
    let started = Arc::new(tokio::sync::Notify::new());
    let activities = {
        let observed = observed.clone();
        let started = started.clone();
        ActivityRegistry::builder()
            .register("Forever", move |ctx: ActivityContext, _s: String| {
                let observed = observed.clone();
                let started = started.clone();
                async move {
                    started.notify_one();
                    ctx.cancellation_token().cancelled().await;
                    observed.notify_one();
                    Err("cancelled".to_string())
                }
            })
            .build()
    };
    let orchestrations = OrchestrationRegistry::builder()
        .register(
            "Waits",
            |ctx: OrchestrationContext, _s: String| async move {
                ctx.schedule_activity("Forever", "").await
            },
        )
        .build();
    let options = RuntimeOptions {
        // Renewals (which notice the cancellation) run every ~1 s.
        worker_lock_timeout: Duration::from_secs(2),
        worker_lock_renewal_buffer: Duration::from_secs(1),
        activity_cancellation_grace_period: Duration::from_secs(5),
        ..fast_options()
    };
    let rt =
        runtime::Runtime::start_with_options(provider.clone(), activities, orchestrations, options)
            .await;

    client
        .start_orchestration("cancel-1", "Waits", "")
        .await
        .unwrap();
    tokio::time::timeout(WAIT, started.notified())
        .await
        .expect("activity started");
    client.cancel_instance("cancel-1", "test").await.unwrap();
    match client
        .wait_for_orchestration("cancel-1", WAIT)
        .await
        .unwrap()
    {
        OrchestrationStatus::Failed { details, .. } => {
            assert!(
                details.display_message().contains("cancel"),
                "{}",
                details.display_message()
            )
        }
        other => panic!("expected a cancelled orchestration, got {other:?}"),
    }
    tokio::time::timeout(WAIT, observed.notified())
        .await
        .expect("the running activity saw its cancellation");

    teardown(vec![rt], client, provider, db).await;
}

/// A worker runtime that stops right after an activity's ack has claimed
/// its next activity ahead: that activity is released within the claim's
/// window, so another process's runtime finishes the orchestration long
/// before the stopped runtime's 60 s activity lock would have expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_leaves_no_activity_claimed_ahead_behind() {
    use std::time::Instant;
    use tokio::sync::{Notify, mpsc};

    let (db, provider, client) = setup().await;
    let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
    let go = Arc::new(Notify::new());
    let activities = {
        let go = go.clone();
        ActivityRegistry::builder()
            .register("Step", move |_c: ActivityContext, n: String| {
                let (started_tx, go) = (started_tx.clone(), go.clone());
                async move {
                    if n == "0" {
                        // The first step holds its worker until the runtime is stopping.
                        let _ = started_tx.send(());
                        go.notified().await;
                    }
                    Ok(n)
                }
            })
            .build()
    };
    let orchestrations = || {
        OrchestrationRegistry::builder()
            .register(
                "FanOut",
                |ctx: OrchestrationContext, _: String| async move {
                    let steps: Vec<_> = (0..4)
                        .map(|i| ctx.schedule_activity("Step", i.to_string()))
                        .collect();
                    let done = ctx.join(steps).await;
                    Ok(done.len().to_string())
                },
            )
            .build()
    };
    let options = || RuntimeOptions {
        worker_concurrency: 1,
        orchestration_concurrency: 1,
        worker_lock_timeout: Duration::from_secs(60),
        ..fast_options()
    };
    let first = runtime::Runtime::start_with_options(
        provider.clone(),
        activities.clone(),
        orchestrations(),
        options(),
    )
    .await;
    client
        .start_orchestration("fan-out", "FanOut", "")
        .await
        .unwrap();
    started.recv().await.expect("the first step started");
    // Stop the runtime; its worker finishes the running step, acks it (the
    // ack claims the next step ahead) and fetches no more.
    let stopping = tokio::spawn(first.shutdown(Some(10_000)));
    tokio::task::yield_now().await;
    go.notify_one();
    stopping.await.unwrap();

    // Another process takes over.
    let other = Arc::new(
        PostgresProvider::new_with_schema(&db.url, Some(&db.schema))
            .await
            .unwrap(),
    );
    let second = runtime::Runtime::start_with_options(
        other.clone(),
        activities,
        orchestrations(),
        options(),
    )
    .await;
    let taken_over = Instant::now();
    match client
        .wait_for_orchestration("fan-out", Duration::from_secs(20))
        .await
        .expect("wait")
    {
        OrchestrationStatus::Completed { output, .. } => assert_eq!(output, "4"),
        other => panic!("fan-out did not complete: {other:?}"),
    }
    assert!(
        taken_over.elapsed() < Duration::from_secs(20),
        "no step waited out the stopped runtime's lock"
    );
    second.shutdown(None).await;
    drop(other);
    teardown(vec![], client, provider, db).await;
}

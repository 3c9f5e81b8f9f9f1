//! Queue rows that no longer decode (a newer duroxide wrote them, or someone
//! edited them) reach duroxide's poison handling with their attempt count,
//! instead of coming back after every lock expiry unseen.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::TestDb;
use common::items::{ack_first_turn, activity_item, start_item};
use duroxide::providers::{ExecutionMetadata, Provider, TagFilter, WorkItem};
use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::{self, RuntimeOptions, UnregisteredBackoffConfig};
use duroxide::{
    ActivityContext, Client, ErrorDetails, Event, EventKind, INITIAL_EXECUTION_ID,
    OrchestrationContext, OrchestrationRegistry, OrchestrationStatus, PoisonMessageType,
};
use duroxide_diesel::UNDECODABLE_ACTIVITY;

const LOCK: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(60);

/// A work item of a variant this duroxide does not know.
const FUTURE_ITEM: &str = r#"{"FutureWorkItem": {"instance": "x", "payload": 1}}"#;

async fn count(db: &TestDb, sql: &str) -> u64 {
    db.scalar(sql)
        .await
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_orchestrator_message_is_reported_as_history_error_each_attempt() {
    let db = TestDb::new().await;
    let p = db.provider().await;
    p.enqueue_for_orchestrator(start_item("orch"), None)
        .await
        .unwrap();
    let (_, token, _) = p
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .unwrap()
        .unwrap();
    ack_first_turn(&p, "orch", &token).await.unwrap();
    p.enqueue_for_orchestrator(
        WorkItem::ExternalRaised {
            instance: "orch".into(),
            name: "go".into(),
            data: "1".into(),
        },
        None,
    )
    .await
    .unwrap();
    common::exec(
        &db.url,
        &format!(
            "UPDATE \"{}\".orchestrator_queue SET work_item = '{FUTURE_ITEM}'::jsonb",
            db.schema
        ),
    )
    .await;

    // Each fetch hands the turn over with the lock held and a growing count.
    let mut last = None;
    for attempt in 1..=3 {
        let (item, token, attempts) = p
            .fetch_orchestration_item(LOCK, Duration::ZERO, None)
            .await
            .expect("an undecodable message does not fail the fetch")
            .expect("the turn is handed over");
        assert_eq!(attempts, attempt);
        let error = item.history_error.as_deref().unwrap_or_default();
        assert!(
            error.contains("orchestrator message at position 0 does not deserialize"),
            "{error}"
        );
        assert_eq!(item.history.len(), 1, "the history itself is intact");
        assert!(item.messages.is_empty());
        if attempt < 3 {
            p.abandon_orchestration_item(&token, None, false)
                .await
                .unwrap();
        }
        last = Some((item, token));
    }

    // What the runtime commits once the attempts are exhausted.
    let (item, token) = last.unwrap();
    let failed = Event::with_event_id(
        99999,
        "orch",
        item.execution_id,
        None,
        EventKind::OrchestrationFailed {
            details: ErrorDetails::Infrastructure {
                operation: "poison".into(),
                message: item.history_error.clone().unwrap(),
                retryable: false,
            },
        },
    );
    p.ack_orchestration_item(
        &token,
        item.execution_id,
        vec![failed],
        vec![],
        vec![],
        ExecutionMetadata {
            status: Some("Failed".into()),
            output: item.history_error.clone(),
            ..Default::default()
        },
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(
        count(&db, "SELECT count(*) FROM orchestrator_queue").await,
        0
    );
    assert!(
        p.fetch_orchestration_item(LOCK, Duration::ZERO, None)
            .await
            .unwrap()
            .is_none()
    );
    drop(p);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_message_to_a_finished_orchestration_is_dropped() {
    let db = TestDb::new().await;
    let p = db.provider().await;
    p.enqueue_for_orchestrator(start_item("done"), None)
        .await
        .unwrap();
    let (_, token, _) = p
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .unwrap()
        .unwrap();
    ack_first_turn(&p, "done", &token).await.unwrap();
    p.append_with_execution(
        "done",
        INITIAL_EXECUTION_ID,
        vec![Event::with_event_id(
            2,
            "done",
            INITIAL_EXECUTION_ID,
            None,
            EventKind::OrchestrationCompleted {
                output: "ok".into(),
            },
        )],
    )
    .await
    .unwrap();
    common::exec(
        &db.url,
        &format!(
            "INSERT INTO \"{}\".orchestrator_queue (instance_id, kind, work_item) \
             VALUES ('done', 'ExternalRaised', '{FUTURE_ITEM}'::jsonb)",
            db.schema
        ),
    )
    .await;
    let (item, token, _) = p
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(item.history_error, None);
    assert!(item.messages.is_empty());
    p.ack_orchestration_item(
        &token,
        item.execution_id,
        vec![],
        vec![],
        vec![],
        ExecutionMetadata::default(),
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(
        count(&db, "SELECT count(*) FROM orchestrator_queue").await,
        0
    );
    drop(p);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_activity_is_handed_over_as_a_stand_in_with_its_attempt_count() {
    let db = TestDb::new().await;
    let p = db.provider().await;
    for (id, stored) in [
        // Missing fields, as after a format change.
        (7, r#"{"ActivityExecute": {"instance": "w"}}"#.to_owned()),
        // A valid work item that does not belong on the worker queue.
        (8, serde_json::to_string(&start_item("w")).unwrap()),
    ] {
        p.enqueue_for_worker(activity_item("w", id)).await.unwrap();
        common::exec(
            &db.url,
            &format!(
                "UPDATE \"{}\".worker_queue SET work_item = '{stored}'::jsonb WHERE activity_id = {id}",
                db.schema
            ),
        )
        .await;
        for attempt in 1..=3 {
            let (item, token, attempts) = p
                .fetch_work_item(LOCK, Duration::ZERO, None, &TagFilter::DefaultOnly)
                .await
                .expect("an undecodable row does not fail the fetch")
                .expect("the row is handed over");
            assert_eq!(attempts, attempt);
            match &item {
                WorkItem::ActivityExecute {
                    instance,
                    execution_id,
                    id: got,
                    name,
                    input,
                    ..
                } => {
                    assert_eq!(
                        (instance.as_str(), *execution_id, *got, name.as_str()),
                        ("w", INITIAL_EXECUTION_ID, id, UNDECODABLE_ACTIVITY)
                    );
                    let input: serde_json::Value = serde_json::from_str(input).unwrap();
                    assert_eq!(
                        input["work_item"],
                        serde_json::from_str::<serde_json::Value>(&stored).unwrap()
                    );
                    assert!(input["error"].as_str().unwrap().contains("work item"));
                }
                other => panic!("{other:?}"),
            }
            if attempt < 3 {
                p.abandon_work_item(&token, None, false).await.unwrap();
            } else {
                // The runtime's poison answer: a failure of that activity.
                p.ack_work_item(
                    &token,
                    Some(WorkItem::ActivityFailed {
                        instance: "w".into(),
                        execution_id: INITIAL_EXECUTION_ID,
                        id,
                        details: ErrorDetails::Infrastructure {
                            operation: "poison".into(),
                            message: "poisoned".into(),
                            retryable: false,
                        },
                    }),
                )
                .await
                .unwrap();
            }
        }
    }
    assert_eq!(count(&db, "SELECT count(*) FROM worker_queue").await, 0);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM orchestrator_queue WHERE kind = 'ActivityFailed'"
        )
        .await,
        2
    );
    drop(p);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_activity_naming_no_instance_is_removed() {
    let db = TestDb::new().await;
    let p = db.provider().await;
    common::exec(
        &db.url,
        &format!(
            "INSERT INTO \"{}\".worker_queue (work_item) VALUES ('{FUTURE_ITEM}'::jsonb)",
            db.schema
        ),
    )
    .await;
    p.enqueue_for_worker(activity_item("w", 1)).await.unwrap();
    let (item, _, _) = p
        .fetch_work_item(LOCK, Duration::from_secs(5), None, &TagFilter::DefaultOnly)
        .await
        .unwrap()
        .expect("the fetch moves on to the next row");
    assert_eq!(item, activity_item("w", 1));
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM worker_queue WHERE instance_id IS NULL"
        )
        .await,
        0
    );
    drop(p);
    db.cleanup().await;
}

// ---------------------------------------------------------------------------
// Through duroxide's Runtime
// ---------------------------------------------------------------------------

fn poison_fast(worker_tag_filter: TagFilter) -> RuntimeOptions {
    RuntimeOptions {
        dispatcher_min_poll_interval: Duration::from_millis(10),
        max_attempts: 2,
        unregistered_backoff: UnregisteredBackoffConfig {
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(200),
        },
        worker_tag_filter,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_poisons_an_instance_whose_message_does_not_decode() {
    let db = TestDb::new().await;
    let provider = Arc::new(db.provider().await);
    let client = Client::new(provider.clone());
    let orchestrations = OrchestrationRegistry::builder()
        .register("Wait", |ctx: OrchestrationContext, _s: String| async move {
            Ok(ctx.schedule_wait("go").await)
        })
        .build();
    let rt = runtime::Runtime::start_with_options(
        provider.clone(),
        ActivityRegistry::builder().build(),
        orchestrations,
        poison_fast(TagFilter::DefaultOnly),
    )
    .await;
    client
        .start_orchestration("wait", "Wait", "")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !matches!(
        client.get_orchestration_status("wait").await.unwrap(),
        OrchestrationStatus::Running { .. }
    ) {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A message from a newer duroxide arrives (enqueued, as its provider
    // would, with a notification that wakes the waiting dispatcher).
    common::exec(
        &db.url,
        &format!(
            "INSERT INTO \"{0}\".orchestrator_queue (instance_id, kind, work_item) \
             VALUES ('wait', 'ExternalRaised', '{FUTURE_ITEM}'::jsonb); \
             SELECT pg_notify(\"{0}\".dx_notify_channel(), 'o')",
            db.schema
        ),
    )
    .await;
    match client.wait_for_orchestration("wait", WAIT).await.unwrap() {
        OrchestrationStatus::Failed { details, .. } => {
            let message = details.display_message();
            assert!(
                matches!(details, ErrorDetails::Poison { .. })
                    && message.contains("does not deserialize"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        count(&db, "SELECT count(*) FROM orchestrator_queue").await,
        0
    );
    rt.shutdown(None).await;
    drop(client);
    drop(provider);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_poisons_an_activity_whose_row_does_not_decode() {
    let db = TestDb::new().await;
    let provider = Arc::new(db.provider().await);
    let client = Client::new(provider.clone());
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let activities = || {
        let counted = counted.clone();
        ActivityRegistry::builder()
            .register("Work", move |_c: ActivityContext, s: String| {
                let counted = counted.clone();
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    Ok(s)
                }
            })
            .build()
    };
    let orchestrations = || {
        OrchestrationRegistry::builder()
            .register(
                "Catch",
                |ctx: OrchestrationContext, _s: String| async move {
                    ctx.schedule_activity("Work", "x").await
                },
            )
            .build()
    };
    // No workers yet: the activity waits in the queue to be corrupted.
    let orchestrator_only = runtime::Runtime::start_with_options(
        provider.clone(),
        activities(),
        orchestrations(),
        poison_fast(TagFilter::None),
    )
    .await;
    client
        .start_orchestration("act", "Catch", "")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while count(&db, "SELECT count(*) FROM worker_queue").await == 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    common::exec(
        &db.url,
        &format!(
            "UPDATE \"{}\".worker_queue SET work_item = '{{\"ActivityExecute\": {{\"v\": 2}}}}'::jsonb",
            db.schema
        ),
    )
    .await;
    orchestrator_only.shutdown(None).await;

    let rt = runtime::Runtime::start_with_options(
        provider.clone(),
        activities(),
        orchestrations(),
        poison_fast(TagFilter::DefaultOnly),
    )
    .await;
    // duroxide treats a poisoned activity as a system error: the
    // orchestration fails with the poison details, the stored row in them.
    match client.wait_for_orchestration("act", WAIT).await.unwrap() {
        OrchestrationStatus::Failed {
            details:
                ErrorDetails::Poison {
                    message_type:
                        PoisonMessageType::Activity {
                            activity_name,
                            activity_id,
                            ..
                        },
                    message,
                    ..
                },
            ..
        } => {
            assert_eq!(activity_name, UNDECODABLE_ACTIVITY);
            assert_eq!(activity_id, 2);
            assert!(message.contains(r#"\"v\":2"#), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0, "nothing ran the stand-in");
    assert_eq!(count(&db, "SELECT count(*) FROM worker_queue").await, 0);
    rt.shutdown(None).await;
    drop(client);
    drop(provider);
    db.cleanup().await;
}

//! Payloads are the user's data: stored verbatim, or, when PostgreSQL cannot
//! store them (U+0000), refused with a clear error that fails exactly one
//! activity or orchestration, once.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::TestDb;
use common::items::{ORCHESTRATION, activity_item, start_item, started_event};
use duroxide::providers::{ExecutionMetadata, Provider, ProviderError, TagFilter, WorkItem};
use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::{self, RuntimeOptions};
use duroxide::{
    ActivityContext, Client, ErrorDetails, Event, EventKind, INITIAL_EVENT_ID,
    INITIAL_EXECUTION_ID, OrchestrationContext, OrchestrationRegistry, OrchestrationStatus,
};
use duroxide_diesel::PostgresProvider;

const WAIT: Duration = Duration::from_secs(30);
const LOCK: Duration = Duration::from_secs(30);

/// About `bytes` bytes of text that compresses poorly, with quotes,
/// backslashes, a literal `\u0000` escape (six characters, not U+0000),
/// emoji and other non-ASCII characters.
fn hostile(seed: u64, bytes: usize) -> String {
    const PIECES: [&str; 16] = [
        "'",
        "\"",
        "\\",
        "\\u0000",
        "😀",
        "🧪",
        "ü",
        "日本",
        "%s",
        "$1",
        "--",
        ";",
        "\n",
        "\t",
        "{\"a\":[1]}",
        "é",
    ];
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = format!("it's \"{seed}\" \\ ");
    while out.len() + 10 < bytes {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.push_str(PIECES[(state >> 60) as usize]);
        out.push(char::from(b'a' + ((state >> 40) % 26) as u8));
    }
    out
}

fn event(instance: &str, id: u64, kind: EventKind) -> Event {
    Event::with_event_id(id, instance, INITIAL_EXECUTION_ID, None, kind)
}

fn first_turn_metadata() -> ExecutionMetadata {
    ExecutionMetadata {
        orchestration_name: Some(ORCHESTRATION.to_owned()),
        orchestration_version: Some("1.0.0".to_owned()),
        ..Default::default()
    }
}

fn assert_refusal(e: &ProviderError, names: &str) {
    let text = e.to_string();
    assert!(!e.is_retryable(), "must be permanent: {text}");
    assert!(text.contains(names), "must name {names:?}: {text}");
    assert!(!text.contains('\0'), "the error itself must be storable");
}

// ---------------------------------------------------------------------------
// Provider API
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_refuses_nul_permanently_and_names_the_field() {
    let db = TestDb::new().await;
    let p = db.provider().await;
    let mut item = start_item("nul-input");
    if let WorkItem::StartOrchestration { input, .. } = &mut item {
        *input = "a\0b".to_owned();
    }
    let e = p.enqueue_for_orchestrator(item, None).await.unwrap_err();
    assert_refusal(&e, "contains U+0000 (NUL) at /StartOrchestration/input");

    let mut work = activity_item("nul-input", 1);
    if let WorkItem::ActivityExecute { input, .. } = &mut work {
        *input = "\0".to_owned();
    }
    let e = p.enqueue_for_worker(work).await.unwrap_err();
    assert_refusal(&e, "ActivityExecute work item contains U+0000");

    let e = p
        .append_with_execution("nul\0id", 1, vec![started_event("nul\0id")])
        .await
        .unwrap_err();
    assert_refusal(&e, "instance id contains U+0000");
    drop(p);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_result_with_nul_becomes_one_failure_of_that_activity() {
    let db = TestDb::new().await;
    let p = db.provider().await;
    for (id, completion) in [
        (
            1,
            WorkItem::ActivityCompleted {
                instance: "act".into(),
                execution_id: INITIAL_EXECUTION_ID,
                id: 1,
                result: "before\0after".into(),
            },
        ),
        (
            2,
            WorkItem::ActivityFailed {
                instance: "act".into(),
                execution_id: INITIAL_EXECUTION_ID,
                id: 2,
                details: ErrorDetails::Application {
                    kind: duroxide::AppErrorKind::ActivityFailed,
                    message: "bad\0".into(),
                    retryable: true,
                },
            },
        ),
    ] {
        p.enqueue_for_worker(activity_item("act", id))
            .await
            .unwrap();
        let (_, token, _) = p
            .fetch_work_item(LOCK, Duration::ZERO, None, &TagFilter::DefaultOnly)
            .await
            .unwrap()
            .expect("activity");
        p.ack_work_item(&token, Some(completion)).await.unwrap();
    }
    assert_eq!(
        db.scalar("SELECT count(*) FROM worker_queue")
            .await
            .as_deref(),
        Some("0"),
        "both activities are done, not retried"
    );

    p.enqueue_for_orchestrator(start_item("act"), None)
        .await
        .unwrap();
    let (item, _, _) = p
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .unwrap()
        .expect("turn");
    let failures: Vec<(u64, String)> = item
        .messages
        .iter()
        .filter_map(|m| match m {
            WorkItem::ActivityFailed {
                id,
                details:
                    ErrorDetails::Application {
                        message, retryable, ..
                    },
                ..
            } => {
                assert!(!retryable);
                Some((*id, message.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        failures,
        vec![
            (
                1,
                "activity result contains U+0000 (NUL), which PostgreSQL cannot store".into()
            ),
            (
                2,
                "activity error contains U+0000 (NUL), which PostgreSQL cannot store".into()
            ),
        ]
    );
    drop(p);
    db.cleanup().await;
}

/// Runs one first turn whose delta holds U+0000, expects it refused naming
/// `names`, then commits the failure the runtime would commit on the same
/// lock and checks the instance ended Failed.
async fn refused_then_failed(
    tail: Vec<EventKind>,
    metadata: ExecutionMetadata,
    worker_items: Vec<WorkItem>,
    names: &str,
) {
    let db = TestDb::new().await;
    let p = db.provider().await;
    let instance = "turn";
    p.enqueue_for_orchestrator(start_item(instance), None)
        .await
        .unwrap();
    let (_, token, _) = p
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .unwrap()
        .expect("turn");
    let mut delta = vec![started_event(instance)];
    for (i, kind) in tail.into_iter().enumerate() {
        delta.push(event(instance, 2 + i as u64, kind));
    }
    let e = p
        .ack_orchestration_item(
            &token,
            INITIAL_EXECUTION_ID,
            delta,
            worker_items,
            vec![],
            metadata,
            vec![],
        )
        .await
        .unwrap_err();
    assert_refusal(&e, names);

    // What the runtime does next: a failure built from the history it had.
    let details = e.to_infrastructure_error();
    let failed = event(
        instance,
        INITIAL_EVENT_ID,
        EventKind::OrchestrationFailed {
            details: details.clone(),
        },
    );
    p.ack_orchestration_item(
        &token,
        INITIAL_EXECUTION_ID,
        vec![failed],
        vec![],
        vec![],
        ExecutionMetadata {
            status: Some("Failed".into()),
            output: Some(details.display_message()),
            ..Default::default()
        },
        vec![],
    )
    .await
    .expect("the failure commit is storable");
    let history = p.read(instance).await.unwrap();
    assert!(
        matches!(
            history.last().map(|e| &e.kind),
            Some(EventKind::OrchestrationFailed { .. })
        ),
        "{history:?}"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM worker_queue")
            .await
            .as_deref(),
        Some("0")
    );
    drop(p);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_with_nul_output_is_refused_then_fails() {
    refused_then_failed(
        vec![EventKind::OrchestrationCompleted {
            output: "done\0".into(),
        }],
        ExecutionMetadata {
            status: Some("Completed".into()),
            output: Some("done\0".into()),
            ..first_turn_metadata()
        },
        vec![],
        "orchestration output contains U+0000",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_with_nul_custom_status_is_refused_then_fails() {
    refused_then_failed(
        vec![EventKind::CustomStatusUpdated {
            status: Some("\0".into()),
        }],
        first_turn_metadata(),
        vec![],
        "custom status contains U+0000",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_with_nul_kv_value_or_key_is_refused_then_fails() {
    refused_then_failed(
        vec![EventKind::KeyValueSet {
            key: "k'\"".into(),
            value: "v\0".into(),
            last_updated_at_ms: 1,
        }],
        first_turn_metadata(),
        vec![],
        "value of KV key \"k'\\\"\" contains U+0000",
    )
    .await;
    refused_then_failed(
        vec![EventKind::KeyValueSet {
            key: "k\0".into(),
            value: "v".into(),
            last_updated_at_ms: 1,
        }],
        first_turn_metadata(),
        vec![],
        "KV key contains U+0000",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_with_nul_activity_input_is_refused_then_fails() {
    let mut work = activity_item("turn", 2);
    if let WorkItem::ActivityExecute { input, .. } = &mut work {
        *input = "x\0".to_owned();
    }
    // As the runtime sends it: the event recording the call, and the call.
    refused_then_failed(
        vec![EventKind::ActivityScheduled {
            name: "Activity2".into(),
            input: "x\0".into(),
            session_id: None,
            tag: None,
        }],
        first_turn_metadata(),
        vec![work.clone()],
        "history event 2 (ActivityScheduled) contains U+0000 (NUL) at /input",
    )
    .await;
    refused_then_failed(
        vec![],
        first_turn_metadata(),
        vec![work],
        "ActivityExecute work item contains U+0000 (NUL) at /ActivityExecute/input",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_too_long_to_index_are_refused_permanently() {
    let db = TestDb::new().await;
    let p = db.provider().await;
    let e = p
        .enqueue_for_orchestrator(start_item(&hostile(8, 2700)), None)
        .await
        .unwrap_err();
    assert_refusal(&e, "bytes PostgreSQL can index");
    drop(p);
    db.cleanup().await;

    refused_then_failed(
        vec![EventKind::KeyValueSet {
            key: hostile(9, 2700),
            value: "v".into(),
            last_updated_at_ms: 1,
        }],
        first_turn_metadata(),
        vec![],
        "bytes PostgreSQL can index together",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_round_trips_verbatim_through_the_provider() {
    let db = TestDb::new().await;
    let p = db.provider().await;
    // An instance id and a key-value key share one index entry: 2 KB and
    // 500 bytes fit whatever the text (see the refusal test below).
    let instance = hostile(1, 2048);
    let name = hostile(2, 2048);
    let tag = hostile(3, 256);
    let key = hostile(4, 500);
    let value = hostile(5, 2048);
    let status = hostile(6, 2048);
    let input = hostile(7, 2048);

    let start = WorkItem::StartOrchestration {
        instance: instance.clone(),
        orchestration: name.clone(),
        input: input.clone(),
        version: Some("1.0.0".into()),
        parent_instance: None,
        parent_id: None,
        parent_execution_id: None,
        execution_id: INITIAL_EXECUTION_ID,
    };
    p.enqueue_for_orchestrator(start.clone(), None)
        .await
        .unwrap();
    let (item, token, _) = p
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .unwrap()
        .expect("turn");
    assert_eq!(item.instance, instance);
    assert_eq!(item.orchestration_name, name);
    assert_eq!(item.messages, vec![start]);

    let work = WorkItem::ActivityExecute {
        instance: instance.clone(),
        execution_id: INITIAL_EXECUTION_ID,
        id: 2,
        name: name.clone(),
        input: input.clone(),
        session_id: None,
        tag: Some(tag.clone()),
    };
    let delta = vec![
        Event::with_event_id(
            INITIAL_EVENT_ID,
            &instance,
            INITIAL_EXECUTION_ID,
            None,
            EventKind::OrchestrationStarted {
                name: name.clone(),
                version: "1.0.0".into(),
                input: input.clone(),
                parent_instance: None,
                parent_id: None,
                parent_execution_id: None,
                carry_forward_events: None,
                initial_custom_status: None,
            },
        ),
        Event::with_event_id(
            2,
            &instance,
            INITIAL_EXECUTION_ID,
            None,
            EventKind::ActivityScheduled {
                name: name.clone(),
                input: input.clone(),
                session_id: None,
                tag: Some(tag.clone()),
            },
        ),
        Event::with_event_id(
            3,
            &instance,
            INITIAL_EXECUTION_ID,
            None,
            EventKind::CustomStatusUpdated {
                status: Some(status.clone()),
            },
        ),
        Event::with_event_id(
            4,
            &instance,
            INITIAL_EXECUTION_ID,
            None,
            EventKind::KeyValueSet {
                key: key.clone(),
                value: value.clone(),
                last_updated_at_ms: 1,
            },
        ),
    ];
    p.ack_orchestration_item(
        &token,
        INITIAL_EXECUTION_ID,
        delta.clone(),
        vec![work.clone()],
        vec![],
        ExecutionMetadata {
            orchestration_name: Some(name.clone()),
            orchestration_version: Some("1.0.0".into()),
            ..Default::default()
        },
        vec![],
    )
    .await
    .unwrap();

    let (fetched, wtoken, _) = p
        .fetch_work_item(
            LOCK,
            Duration::ZERO,
            None,
            &TagFilter::Tags(HashSet::from([tag.clone()])),
        )
        .await
        .unwrap()
        .expect("tagged activity");
    assert_eq!(fetched, work);
    p.ack_work_item(
        &wtoken,
        Some(WorkItem::ActivityCompleted {
            instance: instance.clone(),
            execution_id: INITIAL_EXECUTION_ID,
            id: 2,
            result: value.clone(),
        }),
    )
    .await
    .unwrap();

    let read: Vec<EventKind> = p
        .read(&instance)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    let sent: Vec<EventKind> = delta.into_iter().map(|e| e.kind).collect();
    assert_eq!(read, sent);
    assert_eq!(
        p.get_custom_status(&instance, 0).await.unwrap(),
        Some((Some(status), 1))
    );
    assert_eq!(
        p.get_kv_value(&instance, &key).await.unwrap(),
        Some(value.clone())
    );
    let (item, _, _) = p
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .unwrap()
        .expect("completion turn");
    assert!(matches!(
        &item.messages[..],
        [WorkItem::ActivityCompleted { result, .. }] if *result == value
    ));
    drop(p);
    db.cleanup().await;
}

// ---------------------------------------------------------------------------
// Through duroxide's Runtime and Client
// ---------------------------------------------------------------------------

async fn setup() -> (TestDb, Arc<PostgresProvider>, Client) {
    let db = TestDb::new().await;
    let provider = Arc::new(db.provider().await);
    let client = Client::new(provider.clone());
    (db, provider, client)
}

async fn teardown(
    rt: Arc<runtime::Runtime>,
    client: Client,
    provider: Arc<PostgresProvider>,
    db: TestDb,
) {
    rt.shutdown(None).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_nul_activity_outcomes_fail_that_activity_once() {
    let (db, provider, client) = setup().await;
    let runs = Arc::new(AtomicUsize::new(0));
    let (ok_runs, err_runs) = (runs.clone(), runs.clone());
    let activities = ActivityRegistry::builder()
        .register("NulResult", move |_c: ActivityContext, _s: String| {
            let runs = ok_runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok("a\0b".to_owned())
            }
        })
        .register("NulError", move |_c: ActivityContext, _s: String| {
            let runs = err_runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Err::<String, _>("bad\0".to_owned())
            }
        })
        .build();
    let orchestrations = OrchestrationRegistry::builder()
        .register(
            "Catch",
            |ctx: OrchestrationContext, _s: String| async move {
                let a = ctx.schedule_activity("NulResult", "").await;
                let b = ctx.schedule_activity("NulError", "").await;
                Ok(format!("{}|{}", a.unwrap_err(), b.unwrap_err()))
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
        .start_orchestration("catch", "Catch", "")
        .await
        .unwrap();
    match client.wait_for_orchestration("catch", WAIT).await.unwrap() {
        OrchestrationStatus::Completed { output, .. } => {
            assert!(
                output.contains("activity result contains U+0000")
                    && output.contains("activity error contains U+0000"),
                "{output}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2, "each activity ran once");
    teardown(rt, client, provider, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_nul_output_status_or_kv_fails_the_orchestration_with_a_clear_reason() {
    let (db, provider, client) = setup().await;
    let activities = ActivityRegistry::builder()
        .register(
            "Echo",
            |_c: ActivityContext, s: String| async move { Ok(s) },
        )
        .build();
    let orchestrations = OrchestrationRegistry::builder()
        .register(
            "FirstTurn",
            |_ctx: OrchestrationContext, _s: String| async move { Ok("\0".to_owned()) },
        )
        .register(
            "Output",
            |ctx: OrchestrationContext, s: String| async move {
                let v = ctx.schedule_activity("Echo", s).await?;
                Ok(format!("{v}\0"))
            },
        )
        .register(
            "Status",
            |ctx: OrchestrationContext, s: String| async move {
                let v = ctx.schedule_activity("Echo", s).await?;
                ctx.set_custom_status("half\0way");
                ctx.schedule_activity("Echo", v).await
            },
        )
        .register("Kv", |ctx: OrchestrationContext, s: String| async move {
            let v = ctx.schedule_activity("Echo", s).await?;
            ctx.set_kv_value("k", "\0");
            Ok(v)
        })
        .build();
    let rt = runtime::Runtime::start_with_options(
        provider.clone(),
        activities,
        orchestrations,
        fast_options(),
    )
    .await;
    for (name, reason) in [
        ("FirstTurn", "orchestration output contains U+0000"),
        ("Output", "orchestration output contains U+0000"),
        ("Status", "custom status contains U+0000"),
        ("Kv", "value of KV key \"k\" contains U+0000"),
    ] {
        let instance = format!("nul-{name}");
        client
            .start_orchestration(&instance, name, "x")
            .await
            .unwrap();
        match client
            .wait_for_orchestration(&instance, WAIT)
            .await
            .unwrap()
        {
            OrchestrationStatus::Failed { details, .. } => {
                let message = details.display_message();
                assert!(message.contains(reason), "{name}: {message}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }

    let e = client
        .start_orchestration("nul-input", "Output", "in\0put")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("U+0000"), "{e}");
    teardown(rt, client, provider, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_hostile_text_round_trips_verbatim() {
    let (db, provider, client) = setup().await;
    let instance = hostile(11, 500);
    let orchestration = hostile(12, 2048);
    let activity = hostile(13, 2048);
    // duroxide's own limit for tags.
    let tag = hostile(14, duroxide::runtime::limits::MAX_TAG_NAME_BYTES);
    let key = hostile(15, 2048);
    let status = hostile(16, 2048);
    let input = hostile(17, 2048);

    let activities = ActivityRegistry::builder()
        .register(
            activity.clone(),
            |_c: ActivityContext, s: String| async move { Ok(s) },
        )
        .build();
    let (a, t, k, st) = (activity.clone(), tag.clone(), key.clone(), status.clone());
    let orchestrations = OrchestrationRegistry::builder()
        .register(
            orchestration.clone(),
            move |ctx: OrchestrationContext, s: String| {
                let (a, t, k, st) = (a.clone(), t.clone(), k.clone(), st.clone());
                async move {
                    let echoed = ctx.schedule_activity(a, s).with_tag(t).await?;
                    ctx.set_custom_status(st);
                    ctx.set_kv_value(k, echoed.clone());
                    Ok(echoed)
                }
            },
        )
        .build();
    let rt = runtime::Runtime::start_with_options(
        provider.clone(),
        activities,
        orchestrations,
        RuntimeOptions {
            worker_tag_filter: TagFilter::default_and([tag.as_str()]),
            ..fast_options()
        },
    )
    .await;
    client
        .start_orchestration(&instance, &orchestration, &input)
        .await
        .unwrap();
    match client
        .wait_for_orchestration(&instance, WAIT)
        .await
        .unwrap()
    {
        OrchestrationStatus::Completed {
            output,
            custom_status,
            ..
        } => {
            assert_eq!(output, input);
            assert_eq!(custom_status, Some(status));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        client.get_kv_value(&instance, &key).await.unwrap(),
        Some(input.clone())
    );
    let history = provider.read(&instance).await.unwrap();
    assert!(history.iter().any(|e| matches!(
        &e.kind,
        EventKind::OrchestrationStarted { name, .. } if *name == orchestration
    )));
    assert!(history.iter().any(|e| matches!(
        &e.kind,
        EventKind::ActivityScheduled { name, tag: Some(t), .. } if *name == activity && *t == tag
    )));
    teardown(rt, client, provider, db).await;
}

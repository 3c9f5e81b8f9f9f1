//! `completion_batch_window`: an activity's completion waits for the other
//! activities of its execution, so one turn takes several completions.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestDb;
use common::items::completion_item;
use duroxide::providers::{OrchestrationItem, Provider, WorkItem};
use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::{self, RuntimeOptions};
use duroxide::{
    ActivityContext, Client, OrchestrationContext, OrchestrationRegistry, OrchestrationStatus,
};
use duroxide_diesel::{
    DEFAULT_COMPLETION_BATCH_WINDOW, Error, MAX_COMPLETION_BATCH_WINDOW, PostgresProvider,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

const LOCK: Duration = Duration::from_secs(30);

async fn provider(db: &TestDb, window: Duration) -> PostgresProvider {
    db.builder()
        .completion_batch_window(window)
        .build()
        .await
        .expect("create provider")
}

/// `fan_out_running` with this file's lock timeout.
async fn fan_out(p: &PostgresProvider, instance: &str, n: u64) -> Vec<String> {
    common::items::fan_out_running(p, instance, n, LOCK)
        .await
        .unwrap()
}

/// The next turn `p` claims, waiting for it up to 20 s (a long poll).
async fn long_poll_turn(p: &PostgresProvider) -> OrchestrationItem {
    let (turn, _, _) = p
        .fetch_orchestration_item(LOCK, Duration::from_secs(20), None)
        .await
        .unwrap()
        .expect("the held completion, once its window ended");
    turn
}

/// Asserts that `turn` carries exactly completion 1, claimed once the
/// window since `acked` had ended and long before the 20 s poll timeout.
fn assert_claimed_when_the_window_ended(
    turn: &OrchestrationItem,
    acked: Instant,
    window: Duration,
) {
    let waited = acked.elapsed();
    assert_eq!(completed_ids(&turn.messages), vec![1]);
    assert!(
        waited >= window,
        "claimed after {waited:?}, before the window"
    );
    assert!(
        waited < Duration::from_secs(10),
        "claimed only after {waited:?}"
    );
}

/// The activity ids of the completions a claimed turn carries.
fn completed_ids(messages: &[WorkItem]) -> Vec<u64> {
    let mut ids: Vec<u64> = messages
        .iter()
        .map(|m| match m {
            WorkItem::ActivityCompleted { id, .. } => *id,
            other => panic!("unexpected message {other:?}"),
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// The value of the counter `name` (0 if never recorded).
fn counter(snapshotter: &Snapshotter, name: &str) -> u64 {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == name)
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => n,
            other => panic!("{name} is not a counter: {other:?}"),
        })
        .sum()
}

#[tokio::test]
async fn completions_wait_for_their_siblings_and_the_last_releases_them_all() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let db = TestDb::new().await;
    let p = provider(&db, MAX_COMPLETION_BATCH_WINDOW).await;
    let tokens = fan_out(&p, "batch", 3).await;

    // The activities are ack'd in the order they were claimed: ids 1, 2, 3.
    let started = Instant::now();
    for (id, token) in [1, 2].into_iter().zip(&tokens) {
        p.ack_work_item(token, Some(completion_item("batch", id)))
            .await
            .unwrap();
        let turn = p
            .fetch_orchestration_item(LOCK, Duration::ZERO, None)
            .await
            .unwrap();
        assert!(
            turn.is_none(),
            "completion {id} was claimable while a sibling ran"
        );
    }
    // Only meaningful if the window (1 s) had not ended by then.
    assert!(started.elapsed() < MAX_COMPLETION_BATCH_WINDOW);
    assert_eq!(
        db.scalar("SELECT count(*) FROM orchestrator_queue WHERE held")
            .await
            .as_deref(),
        Some("2")
    );

    p.ack_work_item(&tokens[2], Some(completion_item("batch", 3)))
        .await
        .unwrap();
    let (turn, _, _) = p
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .unwrap()
        .expect("the last completion releases the held ones");
    assert_eq!(completed_ids(&turn.messages), vec![1, 2, 3]);
    assert_eq!(counter(&snapshotter, "provider.completions_held"), 2);
    assert_eq!(
        db.scalar("SELECT count(*) FROM orchestrator_queue WHERE held")
            .await
            .as_deref(),
        Some("0")
    );
    drop(p);
    db.cleanup().await;
}

#[tokio::test]
async fn a_held_completion_is_claimed_when_its_window_ends() {
    let db = TestDb::new().await;
    let window = Duration::from_millis(300);
    let p = provider(&db, window).await;
    let tokens = fan_out(&p, "expire", 2).await;

    let acked = Instant::now();
    p.ack_work_item(&tokens[0], Some(completion_item("expire", 1)))
        .await
        .unwrap();
    // A long poll: woken when the held completion becomes claimable, not
    // when the poll times out; the sibling never completes.
    let turn = long_poll_turn(&p).await;
    assert_claimed_when_the_window_ended(&turn, acked, window);
    drop(p);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_completion_is_claimed_when_the_listener_that_was_told_is_lost() {
    let db = TestDb::new().await;
    let window = Duration::from_millis(500);
    let worker = provider(&db, window).await;
    let orchestrator = Arc::new(provider(&db, Duration::ZERO).await);
    let tokens = fan_out(&worker, "lost", 2).await;

    // A dispatcher long-polls, its listener subscribed.
    let waiting = {
        let orchestrator = orchestrator.clone();
        tokio::spawn(async move {
            orchestrator
                .fetch_orchestration_item(LOCK, Duration::from_secs(20), None)
                .await
        })
    };
    db.wait_for_listener().await;
    let acked = Instant::now();
    worker
        .ack_work_item(&tokens[0], Some(completion_item("lost", 1)))
        .await
        .unwrap();
    // The listener got (or is about to get) "claimable in 500 ms"; its
    // connection dies with that wake-up still scheduled.
    let killed = db
        .scalar(&format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE {}",
            db.listener_of()
        ))
        .await;
    assert_eq!(killed.as_deref(), Some("1"));

    let (turn, _, _) = waiting
        .await
        .unwrap()
        .unwrap()
        .expect("the held completion, once its window ended");
    assert_claimed_when_the_window_ended(&turn, acked, window);
    drop((worker, orchestrator));
    db.cleanup().await;
}

#[tokio::test]
async fn a_completion_without_pending_siblings_or_without_a_window_is_claimable_at_once() {
    let db = TestDb::new().await;
    let batching = provider(&db, MAX_COMPLETION_BATCH_WINDOW).await;
    let tokens = fan_out(&batching, "alone", 1).await;
    batching
        .ack_work_item(&tokens[0], Some(completion_item("alone", 1)))
        .await
        .unwrap();
    let (turn, _, _) = batching
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .unwrap()
        .expect("a completion with no sibling is not held");
    assert_eq!(completed_ids(&turn.messages), vec![1]);
    drop(batching);

    // Without a window, every completion is claimable as it arrives.
    let plain = provider(&db, Duration::ZERO).await;
    let tokens = fan_out(&plain, "unbatched", 2).await;
    plain
        .ack_work_item(&tokens[0], Some(completion_item("unbatched", 1)))
        .await
        .unwrap();
    let (turn, _, _) = plain
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .unwrap()
        .expect("without a window nothing is held");
    assert_eq!(turn.instance, "unbatched");
    assert_eq!(completed_ids(&turn.messages), vec![1]);
    drop(plain);
    db.cleanup().await;
}

#[tokio::test]
async fn by_default_a_completion_waits_for_a_running_sibling_up_to_the_default_window() {
    let db = TestDb::new().await;
    let p = db.builder().build().await.expect("create provider");
    let tokens = fan_out(&p, "default", 2).await;

    let acked = Instant::now();
    p.ack_work_item(&tokens[0], Some(completion_item("default", 1)))
        .await
        .unwrap();
    assert_eq!(
        db.scalar("SELECT count(*) FROM orchestrator_queue WHERE held")
            .await
            .as_deref(),
        Some("1"),
        "the completion of a fan-out with a sibling running is held"
    );
    let turn = long_poll_turn(&p).await;
    assert_claimed_when_the_window_ended(&turn, acked, DEFAULT_COMPLETION_BATCH_WINDOW);
    drop(p);
    db.cleanup().await;
}

#[tokio::test]
async fn a_window_longer_than_the_maximum_is_rejected() {
    let err = PostgresProvider::builder("postgres://127.0.0.1:1/db")
        .completion_batch_window(MAX_COMPLETION_BATCH_WINDOW + Duration::from_millis(1))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidOption(_)), "{err}");
    assert!(err.to_string().contains("completion_batch_window"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_with_a_window_completes_with_every_result() {
    let db = TestDb::new().await;
    let p = Arc::new(provider(&db, Duration::from_millis(20)).await);
    let client = Client::new(p.clone());
    let activities = ActivityRegistry::builder()
        .register("Square", |_c: ActivityContext, n: String| async move {
            let n: u64 = n.parse().map_err(|e| format!("{e}"))?;
            tokio::time::sleep(Duration::from_millis(n)).await;
            Ok((n * n).to_string())
        })
        .build();
    let orchestrations = OrchestrationRegistry::builder()
        .register(
            "SumOfSquares",
            |ctx: OrchestrationContext, _: String| async move {
                let mut total = 0u64;
                for round in 0..3u64 {
                    let calls = (1..=6u64)
                        .map(|n| ctx.schedule_activity("Square", (n + round).to_string()))
                        .collect::<Vec<_>>();
                    for r in ctx.join(calls).await {
                        total += r?.parse::<u64>().map_err(|e| e.to_string())?;
                    }
                }
                Ok(total.to_string())
            },
        )
        .build();
    let options = RuntimeOptions {
        dispatcher_min_poll_interval: Duration::from_millis(10),
        worker_concurrency: 3,
        ..Default::default()
    };
    let rt =
        runtime::Runtime::start_with_options(p.clone(), activities, orchestrations, options).await;
    for i in 0..4 {
        client
            .start_orchestration(&format!("sum-{i}"), "SumOfSquares", "")
            .await
            .unwrap();
    }
    // Squares of 1..=6, 2..=7 and 3..=8: 91 + 139 + 199.
    for i in 0..4 {
        match client
            .wait_for_orchestration(&format!("sum-{i}"), Duration::from_secs(60))
            .await
            .unwrap()
        {
            OrchestrationStatus::Completed { output, .. } => assert_eq!(output, "429"),
            other => panic!("sum-{i}: {other:?}"),
        }
    }
    assert_eq!(
        db.scalar("SELECT count(*) FROM orchestrator_queue")
            .await
            .as_deref(),
        Some("0")
    );
    rt.shutdown(None).await;
    drop(client);
    drop(p);
    db.cleanup().await;
}

//! Long polling: LISTEN/NOTIFY wake-ups, delayed visibility, cancel safety
//! and listener reconnection.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestDb;
use common::items::{activity_item, completion_item, start_item};
use duroxide::providers::{Provider, TagFilter, WorkItem};

const LOCK: Duration = Duration::from_secs(30);
const LONG_POLL: Duration = Duration::from_secs(20);

/// A worker fetch running in the background.
type WorkFetch = tokio::task::JoinHandle<
    Result<Option<(WorkItem, String, u32)>, duroxide::providers::ProviderError>,
>;

/// A long-polling worker fetch running in the background.
fn spawn_work_fetch(provider: &Arc<duroxide_diesel::PostgresProvider>) -> WorkFetch {
    let p = Arc::clone(provider);
    tokio::spawn(async move {
        p.fetch_work_item(LOCK, LONG_POLL, None, &TagFilter::default())
            .await
    })
}

/// Awaits a background work fetch and returns the activity id it got.
async fn fetched_activity(fetch: WorkFetch, what: &str) -> u64 {
    match fetch.await.unwrap().unwrap() {
        Some((WorkItem::ActivityExecute { id, .. }, _, _)) => id,
        other => panic!("{what}: expected an activity, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_from_another_provider_wakes_a_waiting_fetch() {
    let db = TestDb::new().await;
    let waiter = Arc::new(db.provider().await);
    let other = db.provider().await; // stands in for another process

    let w = waiter.clone();
    let started = Instant::now();
    let fetch =
        tokio::spawn(async move { w.fetch_orchestration_item(LOCK, LONG_POLL, None).await });
    db.wait_for_listener().await;
    other
        .enqueue_for_orchestrator(start_item("wake-1"), None)
        .await
        .unwrap();
    let got = fetch
        .await
        .unwrap()
        .unwrap()
        .expect("woken with the new item");
    assert_eq!(got.0.instance, "wake-1");
    assert!(
        started.elapsed() < LONG_POLL,
        "returned on the notification, not the poll timeout"
    );

    let fetch = spawn_work_fetch(&waiter);
    other
        .enqueue_for_worker(activity_item("lp", 1))
        .await
        .unwrap();
    assert_eq!(
        fetched_activity(fetch, "worker woken with the new item").await,
        1
    );

    drop((waiter, other));
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_fetch_picks_up_delayed_work_when_it_becomes_visible() {
    let db = TestDb::new().await;
    let provider = db.provider().await;
    provider
        .enqueue_for_orchestrator(start_item("later"), Some(Duration::from_millis(300)))
        .await
        .unwrap();
    let started = Instant::now();
    let got = provider
        .fetch_orchestration_item(LOCK, LONG_POLL, None)
        .await
        .unwrap()
        .expect("delayed item arrives within the poll");
    assert_eq!(got.0.instance, "later");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "not visible before its time"
    );
    assert!(started.elapsed() < LONG_POLL);
    drop(provider);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_waiting_fetch_leaves_the_provider_usable() {
    let db = TestDb::new().await;
    let provider = Arc::new(db.provider().await);
    for _ in 0..5 {
        let p = provider.clone();
        let fetch =
            tokio::spawn(async move { p.fetch_orchestration_item(LOCK, LONG_POLL, None).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        fetch.abort();
        assert!(fetch.await.unwrap_err().is_cancelled());
    }
    provider
        .enqueue_for_orchestrator(start_item("after-drop"), None)
        .await
        .unwrap();
    let got = provider
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .unwrap()
        .expect("item");
    assert_eq!(got.0.instance, "after-drop");
    drop(provider);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_survive_a_lost_listener_connection() {
    let db = TestDb::new().await;
    let provider = Arc::new(db.provider().await);
    let other = db.provider().await;

    // Start the listener, then kill its connection server-side.
    let warm = spawn_work_fetch(&provider);
    db.wait_for_listener().await;
    let killed = db
        .scalar(&format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE {}",
            db.listener_of()
        ))
        .await;
    assert_eq!(killed.as_deref(), Some("1"));

    // Work enqueued while the listener is down is still delivered.
    other
        .enqueue_for_worker(activity_item("lp", 7))
        .await
        .unwrap();
    assert_eq!(
        fetched_activity(warm, "delivered despite the lost listener").await,
        7
    );

    // And the listener comes back.
    db.wait_for_listener().await;
    let fetch = spawn_work_fetch(&provider);
    other
        .enqueue_for_worker(activity_item("lp", 8))
        .await
        .unwrap();
    assert_eq!(fetched_activity(fetch, "woken after reconnect").await, 8);

    drop((provider, other));
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_long_polling_no_listener_connection_is_opened() {
    let db = TestDb::new().await;
    let provider = duroxide_diesel::PostgresProvider::builder(&db.url)
        .schema(&db.schema)
        .long_polling(false)
        .application_name("dx-no-listen")
        .build()
        .await
        .unwrap();
    let got = provider
        .fetch_orchestration_item(LOCK, Duration::from_secs(5), None)
        .await
        .unwrap();
    assert!(got.is_none());
    let listeners = db
        .scalar(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE {}",
            db.listener_of()
        ))
        .await;
    assert_eq!(listeners.as_deref(), Some("0"));
    drop(provider);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_hands_a_new_activity_to_a_waiting_local_worker() {
    let db = TestDb::new().await;
    let app = format!("dx-handoff-{}", db.schema);
    let provider = Arc::new(
        duroxide_diesel::PostgresProvider::builder(&db.url)
            .schema(&db.schema)
            .application_name(&app)
            .build()
            .await
            .unwrap(),
    );

    let waiting = spawn_work_fetch(&provider);
    db.wait_for_listener().await;
    // Wait until the fetch has found the queue empty (its statement finished
    // on the pooled connection); it registers as a waiter right after.
    let attempted = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}' \
         AND query LIKE '%dx_fetch_work%' AND state = 'idle'"
    );
    for _ in 0..400 {
        if db.scalar(&attempted).await.as_deref() == Some("1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;

    provider
        .enqueue_for_orchestrator(start_item("handoff"), None)
        .await
        .unwrap();
    let (_, token, _) = provider
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .unwrap()
        .expect("turn");
    provider
        .ack_orchestration_item(
            &token,
            1,
            vec![],
            vec![activity_item("handoff", 1)],
            vec![],
            Default::default(),
            vec![],
        )
        .await
        .unwrap();

    let (item, work_token, attempts) = waiting.await.unwrap().unwrap().expect("handed over");
    assert!(matches!(item, WorkItem::ActivityExecute { id: 1, .. }));
    assert_eq!(attempts, 1);
    // The handed-over lock is the row's real lock: it renews and acks.
    let stored = db
        .scalar("SELECT lock_token FROM worker_queue WHERE instance_id = 'handoff'")
        .await;
    assert_eq!(stored.as_deref(), Some(work_token.as_str()));
    // Claimed by the ack itself: locked in the transaction that inserted it
    // (a later fetch would lock it at a later now()).
    let same_txn = db
        .scalar(
            "SELECT locked_until = created_at + interval '30 seconds' \
             FROM worker_queue WHERE instance_id = 'handoff'",
        )
        .await;
    assert_eq!(same_txn.as_deref(), Some("true"));
    provider
        .renew_work_item_lock(&work_token, LOCK)
        .await
        .unwrap();
    provider.ack_work_item(&work_token, None).await.unwrap();

    drop(provider);
    db.cleanup().await;
}

/// A fetch that found nothing because an instance was locked is not
/// repeated by later calls, but their wait ends when that lock expires
/// (the time the empty fetch reported), not at the poll timeout: a holder
/// that vanished without a word delays its instance by its lock only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_after_an_empty_one_still_sees_an_expiring_lock() {
    let db = TestDb::new().await;
    let waiter = db.provider().await;
    let holder = db.provider().await; // a process that dies holding a lock
    let short_lock = Duration::from_millis(600);

    holder
        .enqueue_for_orchestrator(start_item("abandoned"), None)
        .await
        .unwrap();
    let before_lock = Instant::now();
    let (held, _, _) = holder
        .fetch_orchestration_item(short_lock, Duration::ZERO, None)
        .await
        .unwrap()
        .expect("the holder claims the turn");
    assert_eq!(held.instance, "abandoned");

    // Starts the listener, then finds nothing while the lock is held: the
    // provider now trusts that verdict until the lock's expiry.
    let _ = waiter
        .fetch_orchestration_item(LOCK, Duration::from_millis(50), None)
        .await
        .unwrap();
    db.wait_for_listener().await;
    assert!(
        waiter
            .fetch_orchestration_item(LOCK, Duration::from_millis(50), None)
            .await
            .unwrap()
            .is_none(),
        "locked by the holder"
    );

    let (got, _, attempts) = waiter
        .fetch_orchestration_item(LOCK, LONG_POLL, None)
        .await
        .unwrap()
        .expect("claimed once the holder's lock expired");
    assert_eq!(got.instance, "abandoned");
    assert_eq!(attempts, 2, "the holder's claim counted as an attempt");
    let waited = before_lock.elapsed();
    assert!(
        waited >= short_lock && waited < LONG_POLL / 2,
        "claimed {waited:?} after the lock was taken; the lock was {short_lock:?}"
    );
    drop((waiter, holder));
    db.cleanup().await;
}

/// A completion for an instance whose turn is running does not wake
/// orchestrator fetches (they could not claim it); the turn's commit does,
/// so a fetch waiting in another process gets the completion right after
/// the commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_during_a_turn_is_announced_by_the_turns_commit() {
    let db = TestDb::new().await;
    let runner = db.provider().await; // runs the turn and the activity
    let waiter = Arc::new(db.provider().await); // another process

    runner
        .enqueue_for_orchestrator(start_item("busy"), None)
        .await
        .unwrap();
    let (_, turn, _) = runner
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .unwrap()
        .expect("the first turn");
    runner
        .enqueue_for_worker(activity_item("busy", 1))
        .await
        .unwrap();
    let (_, work, _) = runner
        .fetch_work_item(LOCK, Duration::ZERO, None, &TagFilter::default())
        .await
        .unwrap()
        .expect("the activity");

    let w = waiter.clone();
    let fetch =
        tokio::spawn(async move { w.fetch_orchestration_item(LOCK, LONG_POLL, None).await });
    db.wait_for_listener().await;
    runner
        .ack_work_item(&work, Some(completion_item("busy", 1)))
        .await
        .unwrap();
    common::items::ack_first_turn(&runner, "busy", &turn)
        .await
        .unwrap();
    let committed = Instant::now();

    let (item, _, _) = fetch
        .await
        .unwrap()
        .unwrap()
        .expect("woken by the turn's commit");
    assert_eq!(item.instance, "busy");
    assert!(
        matches!(
            item.messages.as_slice(),
            [WorkItem::ActivityCompleted { id: 1, .. }]
        ),
        "the completion, got {:?}",
        item.messages
    );
    assert!(
        committed.elapsed() < LONG_POLL / 2,
        "returned on the commit's notification, not the poll timeout"
    );
    drop((waiter, runner));
    db.cleanup().await;
}

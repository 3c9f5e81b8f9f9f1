//! One orchestration fetch moves past instances it cannot claim right now:
//! a busy or unclaimable instance at the head of the queue never makes the
//! dispatchers wait while other instances have work.

mod common;

use std::time::Duration;

use common::TestDb;
use common::items::start_item;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use duroxide::providers::{Provider, WorkItem};

const LOCK: Duration = Duration::from_secs(30);

/// A connection holding an instance's advisory key, as an ack, abandon or
/// delete of that instance does while it runs.
async fn hold_instance_key(db: &TestDb, instance: &str) -> AsyncPgConnection {
    let mut conn = AsyncPgConnection::establish(&db.url)
        .await
        .expect("connect");
    conn.batch_execute(&format!(
        "SELECT pg_advisory_lock(hashtextextended('{}' || '/' || '{instance}', 0))",
        db.schema
    ))
    .await
    .expect("take the instance key");
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_instance_does_not_stall_the_next_one() {
    let db = TestDb::new().await;
    let p = db.provider().await;
    for instance in ["a", "b"] {
        p.enqueue_for_orchestrator(start_item(instance), None)
            .await
            .unwrap();
    }
    let mut holder = hold_instance_key(&db, "a").await;

    // No waiting (poll timeout zero): the claim must come from this one call.
    let (item, _, _) = p
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .unwrap()
        .expect("b is claimable while a is busy");
    assert_eq!(item.instance, "b");
    assert!(
        p.fetch_orchestration_item(LOCK, Duration::ZERO, None)
            .await
            .unwrap()
            .is_none(),
        "a is still busy and b is locked"
    );

    holder
        .batch_execute("SELECT pg_advisory_unlock_all()")
        .await
        .unwrap();
    let (item, _, _) = p
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .unwrap()
        .expect("a is claimable once its key is free");
    assert_eq!(item.instance, "a");
    drop(holder);
    drop(p);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphaned_messages_ahead_are_dropped_in_the_same_fetch() {
    let db = TestDb::new().await;
    let p = db.provider().await;
    let orphan = WorkItem::QueueMessage {
        instance: "never-started".to_owned(),
        name: "event".to_owned(),
        data: "{}".to_owned(),
    };
    p.enqueue_for_orchestrator(orphan, None).await.unwrap();
    p.enqueue_for_orchestrator(start_item("b"), None)
        .await
        .unwrap();

    let (item, _, _) = p
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .unwrap()
        .expect("b is claimable behind the orphaned message");
    assert_eq!(item.instance, "b");
    let left = db
        .scalar("SELECT count(*) FROM orchestrator_queue WHERE instance_id = 'never-started'")
        .await;
    assert_eq!(left.as_deref(), Some("0"));
    drop(p);
    db.cleanup().await;
}

/// Fetches racing for the same head instance: the loser moves on to the
/// next instance instead of coming back empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fetches_claim_different_instances() {
    let db = TestDb::new().await;
    let p = db.provider().await;
    for round in 0..20 {
        let (a, b) = (format!("a{round}"), format!("b{round}"));
        for instance in [&a, &b] {
            p.enqueue_for_orchestrator(start_item(instance), None)
                .await
                .unwrap();
        }
        let (x, y) = tokio::join!(
            p.fetch_orchestration_item(LOCK, Duration::ZERO, None),
            p.fetch_orchestration_item(LOCK, Duration::ZERO, None),
        );
        let x = x.unwrap().expect("first fetch claims an instance").0;
        let y = y.unwrap().expect("second fetch claims an instance").0;
        let mut got = [x.instance, y.instance];
        got.sort();
        assert_eq!(got, [a, b], "round {round}");
    }
    drop(p);
    db.cleanup().await;
}

/// An instance whose history of `events` events of 1 MB each (compressed on
/// disk, 1 MB each once loaded) has a message waiting, through a provider
/// built with `statement_timeout`.
async fn instance_with_big_history(
    db: &TestDb,
    events: u32,
    statement_timeout: Option<Duration>,
) -> duroxide_diesel::PostgresProvider {
    let mut builder = duroxide_diesel::PostgresProvider::builder(&db.url)
        .schema(&db.schema)
        .call_timeout(Duration::from_secs(60));
    if let Some(t) = statement_timeout {
        builder = builder.statement_timeout(t);
    }
    let p = builder.build().await.unwrap();
    p.enqueue_for_orchestrator(start_item("huge"), None)
        .await
        .unwrap();
    let (_, token, _) = p
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .unwrap()
        .unwrap();
    common::items::ack_first_turn(&p, "huge", &token)
        .await
        .unwrap();
    common::exec(
        &db.url,
        &format!(
            "INSERT INTO \"{}\".history (instance_id, execution_id, event_id, event_type, event_data) \
             SELECT 'huge', 1, 1 + g, 'ActivityScheduled', \
                    jsonb_build_object('type', 'ActivityScheduled', 'pad', repeat('x', 1000000)) \
             FROM generate_series(1, {events}) g",
            db.schema
        ),
    )
    .await;
    p.enqueue_for_orchestrator(
        WorkItem::ExternalRaised {
            instance: "huge".to_owned(),
            name: "poke".to_owned(),
            data: "{}".to_owned(),
        },
        None,
    )
    .await
    .unwrap();
    p
}

/// A history too large for one jsonb value (256 MB) used to fail every fetch
/// that reached its instance, stalling all dispatch behind it. The turn now
/// comes back without it, with the reason in `history_error`, so duroxide's
/// poison handling can end the instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_too_large_to_load_is_reported_not_retried_forever() {
    let db = TestDb::new().await;
    let p = instance_with_big_history(&db, 270, None).await;
    let (item, _, attempts) = p
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .expect("the fetch itself succeeds")
        .expect("the turn is returned");
    assert_eq!(item.instance, "huge");
    assert_eq!(attempts, 1);
    assert!(item.history.is_empty());
    let reason = item.history_error.expect("history_error is set");
    assert!(reason.contains("too large"), "{reason}");
    drop(p);
    db.cleanup().await;
}

/// Same for a history that cannot be loaded within the statement timeout:
/// the fetch does not fail (and so is not retried by every dispatcher
/// forever); the turn reports why its history is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_too_slow_to_load_is_reported_not_retried_forever() {
    let db = TestDb::new().await;
    // 200 MB: below jsonb's limit, far above what loads in 300 ms.
    let p = instance_with_big_history(&db, 200, Some(Duration::from_millis(300))).await;
    let (item, _, attempts) = p
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .expect("the fetch itself succeeds")
        .expect("the turn is returned");
    assert_eq!((item.instance.as_str(), attempts), ("huge", 1));
    assert!(item.history.is_empty());
    let reason = item.history_error.expect("history_error is set");
    assert!(reason.contains("could not be loaded"), "{reason}");
    drop(p);
    db.cleanup().await;
}

//! Faults: lost connections are reported as retryable and the provider
//! recovers on its own, with nothing lost.

mod common;

use std::time::Duration;

use common::TestDb;
use common::items::start_item;
use duroxide::providers::Provider;
use duroxide_diesel::PostgresProvider;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_connection_is_retryable_and_the_pool_recovers() {
    let db = TestDb::new().await;
    let app = format!("dx-fault-{}", db.schema);
    let provider = PostgresProvider::builder(&db.url)
        .schema(&db.schema)
        .application_name(&app)
        .max_connections(1)
        .build()
        .await
        .unwrap();
    provider
        .enqueue_for_orchestrator(start_item("survives"), None)
        .await
        .unwrap();

    // The server drops the pooled connection (failover, restart, idle reaper).
    let killed = db
        .scalar(&format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{app}'"
        ))
        .await;
    assert_eq!(killed.as_deref(), Some("1"));

    // The first call on the dead connection may fail, and if it does the
    // runtime is told to retry; within a few calls the pool has replaced it.
    let mut fetched = None;
    for _ in 0..3 {
        match provider
            .fetch_orchestration_item(Duration::from_secs(30), Duration::ZERO, None)
            .await
        {
            Ok(item) => {
                fetched = item;
                break;
            }
            Err(e) => assert!(
                e.is_retryable(),
                "a lost connection must be retryable: {e:?}"
            ),
        }
    }
    let (item, _, _) = fetched.expect("the enqueued start survives the lost connection");
    assert_eq!(item.instance, "survives");

    drop(provider);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_is_a_retryable_error() {
    let db = TestDb::new().await;
    let app = format!("dx-pool-{}", db.schema);
    let provider = PostgresProvider::builder(&db.url)
        .schema(&db.schema)
        .application_name(&app)
        .max_connections(1)
        .connect_timeout(Duration::from_millis(300))
        .statement_timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap();
    provider.read("warm").await.unwrap();

    // Occupy the only pooled connection: an ack that waits on the instance's
    // advisory key, held by another session.
    provider
        .enqueue_for_orchestrator(start_item("busy"), None)
        .await
        .unwrap();
    let (_, token, _) = provider
        .fetch_orchestration_item(Duration::from_secs(30), Duration::ZERO, None)
        .await
        .unwrap()
        .unwrap();
    let blocker = format!(
        "BEGIN; SELECT pg_advisory_lock(hashtextextended('{}' || '/' || 'busy', 0)); SELECT pg_sleep(2); COMMIT;",
        db.schema
    );
    let url = db.url.clone();
    let hold = tokio::spawn(async move { common::exec(&url, &blocker).await });
    // Wait until the blocker holds the lock (it is sleeping after taking it).
    let sleeping = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
         AND pid <> pg_backend_pid() AND query LIKE '%pg_sleep(2)%' AND query LIKE '%{}%'",
        db.schema
    );
    for _ in 0..400 {
        if db.scalar(&sleeping).await.as_deref() == Some("1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let p = &provider;
    let (acked, read) = tokio::join!(
        p.ack_orchestration_item(
            &token,
            1,
            vec![],
            vec![],
            vec![],
            Default::default(),
            vec![]
        ),
        async {
            // Once the ack is waiting on the lock, the pool has no connection left.
            let acking = format!(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND application_name = '{app}' AND query LIKE '%dx_ack_orchestration%'"
            );
            for _ in 0..400 {
                if db.scalar(&acking).await.as_deref() == Some("1") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            p.read("busy").await
        }
    );
    let err = read.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("connection"), "{err}");
    acked.unwrap();
    hold.await.unwrap();
    drop(provider);
    db.cleanup().await;
}

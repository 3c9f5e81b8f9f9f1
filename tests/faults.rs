//! Faults: lost connections are reported as retryable and the provider
//! recovers on its own, with nothing lost; every wait is bounded; errors are
//! classified the same whatever language the server speaks.
//!
//! Faults under a running workload are in `fault_recovery.rs`.

mod common;

use std::time::Duration;

use common::TestDb;
use common::items::{ack_first_turn, activity_item, completion_item, start_item};
use common::proxy::Proxy;
use duroxide::providers::{Provider, TagFilter};
use duroxide_diesel::{Error, PostgresProvider};
use tokio::time::Instant;

/// Another session holds `instance`'s advisory key (as an ack or delete of
/// it would) for `secs` seconds; returns once it does.
async fn hold_instance_key(db: &TestDb, instance: &str, secs: u32) -> tokio::task::JoinHandle<()> {
    let blocker = format!(
        "SELECT pg_advisory_lock(hashtextextended('{}' || '/' || '{instance}', 0)); \
         SELECT pg_sleep({secs});",
        db.schema
    );
    let url = db.url.clone();
    let hold = tokio::spawn(async move { common::exec(&url, &blocker).await });
    let sleeping = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() \
         AND query LIKE '%pg_sleep({secs})%' AND query LIKE '%{}%' AND query LIKE '%{instance}%'",
        db.schema
    );
    for _ in 0..1000 {
        if db.scalar(&sleeping).await.as_deref() == Some("1") {
            return hold;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the key holder of {instance} never started sleeping");
}

/// The server closes every connection of `app` (as a restart or failover
/// does); returns once they are gone and the client has had a moment to read
/// the server's goodbye.
async fn kill_backends(db: &TestDb, app: &str) {
    db.scalar(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{app}'"
    ))
    .await;
    until_gone(db, app).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Waits until no backend of `app` is left on the server.
async fn until_gone(db: &TestDb, app: &str) {
    let alive = format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}'");
    for _ in 0..500 {
        if db.scalar(&alive).await.as_deref() == Some("0") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("backends of {app} still alive");
}

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
    // The pooled connection (and perhaps the migration connection, still closing).
    assert!(killed.as_deref().is_some_and(|n| n != "0"), "{killed:?}");

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
        .call_timeout(Duration::from_millis(800))
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
    let hold = hold_instance_key(&db, "busy", 5).await;
    let p = &provider;
    let ids = ["busy".to_owned()];
    let (deleted, read) = tokio::join!(
        // An admin call (60 s limit by default) that waits on the lock holds
        // the only pooled connection.
        duroxide::providers::ProviderAdmin::delete_instances_atomic(p, &ids, true),
        async {
            let deleting = format!(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND application_name = '{app}' AND query LIKE '%dx_delete_instances%'"
            );
            for _ in 0..400 {
                if db.scalar(&deleting).await.as_deref() == Some("1") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            p.read("busy").await
        }
    );
    let err = read.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("pooled connection"), "{err}");
    deleted.unwrap();
    let _ = token;
    hold.await.unwrap();
    assert!(provider.read("busy").await.unwrap().is_empty());
    drop(provider);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_closed_is_never_handed_out() {
    let db = TestDb::new().await;
    let app = format!("dx-closed-{}", db.schema);
    let provider = PostgresProvider::builder(&db.url)
        .schema(&db.schema)
        .application_name(&app)
        .max_connections(1)
        .build()
        .await
        .unwrap();
    provider.read("warm").await.unwrap();
    kill_backends(&db, &app).await;

    // The idle pooled connection is dead: the checkout notices it without a
    // round trip and opens a new one, so even the renewal of a running
    // activity (which duroxide treats as lost on any error) succeeds.
    provider
        .enqueue_for_worker(activity_item("closed", 1))
        .await
        .expect("first call after the server closed the pooled connection");
    let (_, token, _) = provider
        .fetch_work_item(
            Duration::from_secs(30),
            Duration::ZERO,
            None,
            &TagFilter::Any,
        )
        .await
        .unwrap()
        .unwrap();
    kill_backends(&db, &app).await;
    provider
        .renew_work_item_lock(&token, Duration::from_secs(30))
        .await
        .expect("renewal after the server closed the pooled connection");
    provider.ack_work_item(&token, None).await.unwrap();
    drop(provider);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_rides_out_a_stalled_network_while_the_lock_is_valid() {
    let db = TestDb::new().await;
    let direct = db.provider().await;
    let proxy = Proxy::for_url(&db.url, Duration::ZERO).await.unwrap();
    let provider = PostgresProvider::builder(&proxy.url(&db.url))
        .schema(&db.schema)
        .call_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    direct
        .enqueue_for_worker(activity_item("stalled", 1))
        .await
        .unwrap();
    let (_, token, _) = provider
        .fetch_work_item(
            Duration::from_secs(5),
            Duration::ZERO,
            None,
            &TagFilter::Any,
        )
        .await
        .unwrap()
        .unwrap();

    // Each attempt times out after 300 ms while nothing gets through; the
    // renewal keeps trying because the 5 s lock may still be valid.
    proxy.stall(Duration::from_millis(1500));
    let started = Instant::now();
    provider
        .renew_work_item_lock(&token, Duration::from_secs(5))
        .await
        .expect("renewal once the network delivers again");
    assert!(started.elapsed() >= Duration::from_millis(1000));
    provider.ack_work_item(&token, None).await.unwrap();

    // A lock that is really gone is reported at once, not retried.
    let err = provider
        .renew_work_item_lock(&token, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    drop((provider, direct));
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_listener_is_replaced_and_waiters_still_get_work() {
    let db = TestDb::new().await;
    let direct = db.provider().await;
    let proxy = Proxy::for_url(&db.url, Duration::ZERO).await.unwrap();
    let provider = PostgresProvider::builder(&proxy.url(&db.url))
        .schema(&db.schema)
        .call_timeout(Duration::from_millis(500))
        .listener_heartbeat(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    // Start the listener, then silence every connection the provider has.
    assert!(
        provider
            .fetch_work_item(
                Duration::from_secs(5),
                Duration::from_millis(200),
                None,
                &TagFilter::Any
            )
            .await
            .unwrap()
            .is_none()
    );
    proxy.black_hole(Duration::from_millis(1500));
    let waiter = tokio::spawn(async move {
        let started = Instant::now();
        let item = provider
            .fetch_work_item(
                Duration::from_secs(5),
                Duration::from_secs(20),
                None,
                &TagFilter::Any,
            )
            .await;
        (item.map(|i| i.is_some()), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    direct
        .enqueue_for_worker(activity_item("hole", 1))
        .await
        .unwrap();
    let (got, waited) = waiter.await.unwrap();
    assert!(got.expect("fetch"), "the waiter got the work");
    // Not the 20 s poll timeout: the heartbeat found the silent listener,
    // waiters fell back to polling and new connections were opened.
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    drop(direct);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_the_migration_lock_is_bounded() {
    let db = TestDb::new().await;
    // Another process holds the schema's migration lock and never lets go.
    let holder = format!(
        "SELECT pg_advisory_lock(hashtext('duroxide-diesel:{}')); SELECT pg_sleep(5);",
        db.schema
    );
    let url = db.url.clone();
    let hold = tokio::spawn(async move { common::exec(&url, &holder).await });
    let waiting = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
         AND query LIKE '%pg_sleep(5)%' AND query LIKE '%{}%' AND pid <> pg_backend_pid()",
        db.schema
    );
    for _ in 0..400 {
        if db.scalar(&waiting).await.as_deref() == Some("1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    let err = PostgresProvider::builder(&db.url)
        .schema(&db.schema)
        .admin_call_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Migration { .. }), "{err}");
    assert!(err.to_string().contains("migration lock"), "{err}");
    let source = std::error::Error::source(&err).expect("the statement's error");
    assert!(source.is::<diesel::result::Error>(), "{source:?}");
    assert!(started.elapsed() < Duration::from_secs(4));
    hold.await.unwrap();
    db.cleanup().await;
}

/// A server whose messages are German: a statement cancelled by the
/// server's statement timeout is still retryable. (Needs the de_DE.UTF-8
/// locale on the server's machine; `.ci/run` generates it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_classified_the_same_on_a_server_speaking_german() {
    // A cluster of its own, started after the locale was installed (a
    // running server does not see locales generated after it started).
    let db = TestDb {
        url: common::pg::private_cluster(common::pg::private_port(8)),
        schema: common::unique_schema("dxde"),
    };
    let sep = if db.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}options=-c%20lc_messages%3Dde_DE.UTF-8", db.url);
    let app = format!("dx-de-{}", db.schema);
    let provider = PostgresProvider::builder(&url)
        .schema(&db.schema)
        .application_name(&app)
        .statement_timeout(Duration::from_millis(200))
        .build()
        .await
        .expect("a server with lc_messages=de_DE.UTF-8 (is the locale installed?)");
    provider
        .enqueue_for_orchestrator(start_item("deutsch"), None)
        .await
        .unwrap();
    let (_, token, _) = provider
        .fetch_orchestration_item(Duration::from_secs(30), Duration::ZERO, None)
        .await
        .unwrap()
        .unwrap();
    // Another session holds the instance's key, so the ack waits on it
    // until the server cancels the statement.
    let hold = hold_instance_key(&db, "deutsch", 3).await;
    let err = provider
        .ack_orchestration_item(
            &token,
            1,
            vec![],
            vec![],
            vec![],
            Default::default(),
            vec![],
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        !text.contains("canceling statement"),
        "the server must answer in German for this test to mean anything: {text}"
    );
    assert!(err.is_retryable(), "{err:?}");
    hold.await.unwrap();
    drop(provider);
    db.cleanup().await;
}

/// A provider reaching `db` through `proxy` whose calls give up after
/// 700 ms, on one pooled connection: a call whose reply the proxy loses
/// times out quickly, and the next call opens a fresh connection.
async fn through(proxy: &Proxy, db: &TestDb) -> PostgresProvider {
    PostgresProvider::builder(&proxy.url(&db.url))
        .schema(&db.schema)
        .call_timeout(Duration::from_millis(700))
        .max_connections(1)
        .build()
        .await
        .unwrap()
}

/// A fetch whose reply is lost after its lock was committed: the lock is
/// released at once instead of hiding the work for the whole lock timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_taken_by_a_fetch_whose_reply_was_lost_is_released() {
    let db = TestDb::new().await;
    let direct = db.provider().await;
    let proxy = Proxy::for_url(&db.url, Duration::ZERO).await.unwrap();
    let (workers, orchestrators) = (through(&proxy, &db).await, through(&proxy, &db).await);
    // Prepare the fetch statements on each pooled connection while the
    // queues are empty, so a fetch later is one message that runs without
    // waiting for any reply.
    let idle_work = workers
        .fetch_work_item(
            Duration::from_secs(1),
            Duration::ZERO,
            None,
            &TagFilter::Any,
        )
        .await
        .unwrap();
    let idle_turn = orchestrators
        .fetch_orchestration_item(Duration::from_secs(1), Duration::ZERO, None)
        .await
        .unwrap();
    assert!(idle_work.is_none() && idle_turn.is_none());
    direct
        .enqueue_for_worker(activity_item("lost-reply", 1))
        .await
        .unwrap();
    direct
        .enqueue_for_orchestrator(start_item("lost-reply"), None)
        .await
        .unwrap();

    // Both pooled connections still carry requests, but their replies are lost.
    proxy.mute_replies();
    let err = workers
        .fetch_work_item(
            Duration::from_secs(60),
            Duration::ZERO,
            None,
            &TagFilter::Any,
        )
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    let err = orchestrators
        .fetch_orchestration_item(Duration::from_secs(60), Duration::ZERO, None)
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");

    // Both were locked for 60 s; both are fetchable again within seconds,
    // and the lost fetches did not count as attempts.
    let started = Instant::now();
    let mut work = None;
    let mut turn = None;
    while (work.is_none() || turn.is_none()) && started.elapsed() < Duration::from_secs(20) {
        if work.is_none() {
            work = direct
                .fetch_work_item(
                    Duration::from_secs(30),
                    Duration::ZERO,
                    None,
                    &TagFilter::Any,
                )
                .await
                .unwrap();
        }
        if turn.is_none() {
            turn = direct
                .fetch_orchestration_item(Duration::from_secs(30), Duration::ZERO, None)
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, _, work_attempts) =
        work.expect("the activity is released long before its 60 s lock ends");
    let (_, _, turn_attempts) = turn.expect("the turn is released long before its 60 s lock ends");
    assert_eq!(work_attempts, 1);
    assert_eq!(turn_attempts, 1);
    drop((workers, orchestrators, direct));
    db.cleanup().await;
}

/// An ack that commits while its reply is lost: the caller's retry with the
/// same token finds the lock released, and must not be told the lock was
/// lost (duroxide would fail an orchestration whose turn committed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_whose_reply_was_lost_succeeds_when_retried() {
    let db = TestDb::new().await;
    let direct = db.provider().await;
    let proxy = Proxy::for_url(&db.url, Duration::ZERO).await.unwrap();
    let p = through(&proxy, &db).await;
    let lock = Duration::from_secs(60);
    let fetch_turn = || async {
        p.fetch_orchestration_item(lock, Duration::ZERO, None)
            .await
            .unwrap()
            .expect("a turn")
    };
    let fetch_work = || async {
        p.fetch_work_item(lock, Duration::ZERO, None, &TagFilter::Any)
            .await
            .unwrap()
            .expect("an activity")
    };
    // One full round of each statement first, so the pooled connection has
    // them prepared: a muted connection then still sends each ack whole.
    for instance in ["warm", "lost-reply"] {
        direct
            .enqueue_for_orchestrator(start_item(instance), None)
            .await
            .unwrap();
        direct
            .enqueue_for_worker(activity_item(instance, 1))
            .await
            .unwrap();
    }
    let (turn, token, _) = fetch_turn().await;
    ack_first_turn(&p, &turn.instance, &token).await.unwrap();
    assert_eq!(turn.instance, "warm");
    let (_, work_token, _) = fetch_work().await;
    // Without a completion: the same statement, and no message for "warm".
    p.ack_work_item(&work_token, None).await.unwrap();
    let (turn, token, _) = fetch_turn().await;
    assert_eq!(turn.instance, "lost-reply");
    let (work, work_token, _) = fetch_work().await;
    let work_instance = match &work {
        duroxide::providers::WorkItem::ActivityExecute { instance, .. } => instance.clone(),
        other => panic!("unexpected {other:?}"),
    };

    // The orchestration ack commits; its reply never arrives.
    proxy.mute_replies();
    let err = ack_first_turn(&p, &turn.instance, &token)
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    // It did commit (its statement ran to the end on the server).
    let started = Instant::now();
    while direct.read(&turn.instance).await.unwrap().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the ack never committed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // duroxide retries with the same token: success, not a lost lock.
    ack_first_turn(&p, &turn.instance, &token)
        .await
        .expect("the retried ack of a committed turn succeeds");
    // A token that never had an uncertain ack still fails as the contract asks.
    let err = ack_first_turn(&p, &turn.instance, "never-issued")
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");

    // The activity ack retries within its own window: its first attempt
    // commits with the reply lost, the retry finds the row gone.
    proxy.mute_replies();
    p.ack_work_item(&work_token, Some(completion_item(&work_instance, 1)))
        .await
        .expect("an activity ack whose first reply was lost succeeds");
    // Its completion was enqueued once.
    let (turn, _, _) = direct
        .fetch_orchestration_item(lock, Duration::ZERO, None)
        .await
        .unwrap()
        .expect("the completion is queued");
    let completions = turn
        .messages
        .iter()
        .filter(|m| matches!(m, duroxide::providers::WorkItem::ActivityCompleted { .. }))
        .count();
    assert_eq!(completions, 1, "{:?}", turn.messages);
    drop((p, direct));
    db.cleanup().await;
}

/// An activity ack that also claimed the worker's next activity commits
/// while its reply is lost: the ack's retry succeeds, and the claimed
/// activity, which nobody learned of, is released at once (not counted as
/// an attempt) instead of waiting out its lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activity_claimed_by_an_ack_whose_reply_was_lost_is_released() {
    let db = TestDb::new().await;
    let direct = db.provider().await;
    let proxy = Proxy::for_url(&db.url, Duration::ZERO).await.unwrap();
    let p = through(&proxy, &db).await;
    let lock = Duration::from_secs(60);
    let fetch_work = || async {
        p.fetch_work_item(lock, Duration::ZERO, None, &TagFilter::Any)
            .await
            .unwrap()
            .expect("an activity")
    };
    for id in 1..=2 {
        direct
            .enqueue_for_worker(activity_item("claim-lost", id))
            .await
            .unwrap();
    }
    // Prepare the claiming ack on the pooled connection.
    let (_, token, _) = fetch_work().await;
    p.ack_work_item(&token, None).await.unwrap();
    let (_, token, _) = fetch_work().await; // activity 2, claimed by that ack
    direct
        .enqueue_for_worker(activity_item("claim-lost", 3))
        .await
        .unwrap();

    // The ack commits and claims activity 3 for 60 s; its reply is lost.
    proxy.mute_replies();
    p.ack_work_item(&token, None)
        .await
        .expect("the retried ack succeeds");
    assert_eq!(
        db.scalar("SELECT count(*) FROM worker_queue WHERE activity_id = 2")
            .await
            .as_deref(),
        Some("0"),
        "activity 2 was acknowledged"
    );
    let started = Instant::now();
    let released = loop {
        if let Some(work) = direct
            .fetch_work_item(lock, Duration::ZERO, None, &TagFilter::Any)
            .await
            .unwrap()
        {
            break work;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "activity 3 is released long before its 60 s lock ends"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (item, _, attempts) = released;
    assert!(
        matches!(
            item,
            duroxide::providers::WorkItem::ActivityExecute { id: 3, .. }
        ),
        "{item:?}"
    );
    assert_eq!(attempts, 1);
    drop((p, direct));
    db.cleanup().await;
}

/// A server that only reads (a standby, or a primary demoted during
/// failover): writes fail, and the failure is retryable, since the next
/// connection may reach the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_refused_by_a_read_only_server_are_retryable() {
    // A database of its own, so turning it read-only touches no other test.
    let base = TestDb::new().await;
    let name = format!("dxro_{}", &base.schema[4..]);
    common::exec(&base.url, &format!("CREATE DATABASE {name}")).await;
    let (prefix, host_port, rest) = common::proxy::split_url(&base.url).unwrap();
    let query = rest
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    let url = format!("{prefix}{host_port}/{name}{query}");
    let db = TestDb {
        url: url.clone(),
        schema: base.schema.clone(),
    };
    let app = format!("dx-ro-{name}");
    let provider = PostgresProvider::builder(&url)
        .schema(&db.schema)
        .application_name(&app)
        .build()
        .await
        .unwrap();
    provider
        .enqueue_for_orchestrator(start_item("before"), None)
        .await
        .unwrap();

    // New sessions are read-only from now on; the pooled ones are gone.
    common::exec(
        &url,
        &format!("ALTER DATABASE {name} SET default_transaction_read_only = on"),
    )
    .await;
    kill_backends(&db, &app).await;

    let err = provider
        .enqueue_for_orchestrator(start_item("standby"), None)
        .await
        .unwrap_err();
    // The server refused the write (not a lost connection), and that is retryable.
    assert!(err.to_string().contains("database error"), "{err}");
    assert!(err.is_retryable(), "{err:?}");
    // Reads still work.
    assert!(provider.read("standby").await.unwrap().is_empty());
    drop(provider);
    common::exec(&base.url, &format!("DROP DATABASE {name} WITH (FORCE)")).await;
}

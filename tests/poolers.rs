//! Connection poolers. duroxide's validation suite also runs through
//! PgBouncer in transaction pooling mode (tests/validation.rs, the modules
//! whose names end in `through_pgbouncer`); these tests cover what it does not: which
//! connections bypass the pooler, and the refusal of statement pooling.

mod common;

use std::time::Duration;

use common::TestDb;
use common::items::start_item;
use common::proxy::Proxy;
use duroxide::providers::Provider;
use duroxide_diesel::{Error, PostgresProvider};
use duroxide_diesel_testkit::pgbouncer;

#[tokio::test]
async fn a_pooler_in_statement_mode_is_refused_at_build_with_a_clear_error() {
    let db = TestDb::new().await;
    let pooler = tokio::task::spawn_blocking(pgbouncer::statement_pooler_url)
        .await
        .expect("start PgBouncer");
    let err = PostgresProvider::builder(&pooler)
        .transaction_pooler(&db.url)
        .schema(&db.schema)
        .build()
        .await
        .expect_err("a pooler in statement mode refuses transactions");
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("statement mode is not supported"), "{text}");
    db.cleanup().await;
}

/// Migrations and the LISTEN connection go to the direct URL; a waiting
/// fetch through the pooler is woken by a notification sent by a call that
/// went through the pooler too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_and_listen_use_the_direct_url() {
    let db = TestDb::new().await;
    let pooler = common::pg_pooler_url();
    let direct = Proxy::for_url(&db.url, Duration::ZERO)
        .await
        .expect("start proxy");
    let provider = std::sync::Arc::new(
        PostgresProvider::builder(&pooler)
            .transaction_pooler(direct.url(&db.url))
            .schema(&db.schema)
            .build()
            .await
            .expect("create provider through the pooler"),
    );
    assert_eq!(
        direct.connections(),
        1,
        "build() migrates over one direct connection"
    );
    assert!(provider.options().transaction_pooler());

    let waiting = {
        let provider = std::sync::Arc::clone(&provider);
        tokio::spawn(async move {
            provider
                .fetch_orchestration_item(Duration::from_secs(30), Duration::from_secs(60), None)
                .await
        })
    };
    // The waiting fetch opens the LISTEN connection, directly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while direct.connections() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no LISTEN connection on the direct URL within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    provider
        .enqueue_for_orchestrator(start_item("woken"), None)
        .await
        .expect("enqueue through the pooler");
    let fetched = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the waiting fetch returns before its 60 s poll timeout")
        .expect("fetch task")
        .expect("fetch")
        .expect("an item");
    assert_eq!(fetched.0.instance, "woken");
    assert_eq!(
        direct.connections(),
        2,
        "only migrations and LISTEN use the direct URL"
    );
    drop(provider);
    drop(direct);
    db.cleanup().await;
}

/// A busy runtime through the pooler (calls take several round trips, so
/// races between a waiting worker's own fetch and a turn handing it an
/// activity are frequent) completes every orchestration, and none of its
/// activities waits for a lock to expire: the stress test's runtime uses a
/// 30 s worker lock, and all of it takes a few seconds when nothing is
/// stranded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_runtime_through_the_pooler_strands_no_activity() {
    use duroxide::provider_stress_tests::StressTestConfig;
    use duroxide::provider_stress_tests::parallel_orchestrations::run_parallel_orchestrations_test_with_config;

    // A subscriber of our own, so the runtime does not install its
    // info-level logging, whose output would slow every call and hide the
    // races this test is after.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
    let factory = common::Factory::through_pgbouncer().await;
    let config = StressTestConfig {
        max_concurrent: 20,
        duration_secs: 4,
        tasks_per_instance: 5,
        activity_delay_ms: 1,
        orch_concurrency: 2,
        worker_concurrency: 2,
        ..Default::default()
    };
    let result = run_parallel_orchestrations_test_with_config(&factory, config)
        .await
        .expect("stress test");
    factory.cleanup().await;
    assert!(result.launched > 0);
    assert_eq!(result.failed, 0, "{result:?}");
    assert_eq!(result.completed, result.launched, "{result:?}");
    assert!(
        result.total_time < Duration::from_secs(25),
        "the run took {:?}: an activity waited for its 30 s lock to expire",
        result.total_time
    );
}

//! Construction, options, bad input, migrations and schema isolation.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestDb;
use common::items::start_item;
use duroxide::providers::{Provider, TagFilter, WorkItem};
use duroxide_diesel::{Error, PostgresProvider};

#[test]
fn constructor_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    assert_send(&PostgresProvider::new("postgres://x"));
    assert_send(&PostgresProvider::new_with_schema(
        "postgres://x",
        Some("s"),
    ));
    assert_send(&PostgresProvider::builder("postgres://x").build());
}

#[tokio::test]
async fn malformed_url_is_rejected_before_connecting() {
    let err = PostgresProvider::new("postgres://host:notaport/db")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidUrl(_)), "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn unsafe_schema_names_are_rejected_before_any_sql() {
    // Port 1 is closed: reaching the network would give a connection error.
    for bad in [
        "a;drop",
        "with space",
        "Quoted\"",
        "",
        &"x".repeat(64),
        "pg_temp",
    ] {
        let err = PostgresProvider::new_with_schema("postgres://127.0.0.1:1/db", Some(bad))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidSchemaName { .. }),
            "{bad:?}: {err}"
        );
    }
}

#[tokio::test]
async fn invalid_options_are_rejected() {
    let err = PostgresProvider::builder("postgres://127.0.0.1:1/db")
        .max_connections(0)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidOption(_)), "{err}");
}

#[tokio::test]
async fn unreachable_server_fails_with_a_connection_error() {
    let err = PostgresProvider::builder("postgres://postgres@127.0.0.1:1/postgres")
        .connect_timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("could not connect"), "{err}");
    let source = std::error::Error::source(&err).expect("the driver's error");
    assert!(source.is::<tokio_postgres::Error>(), "{source:?}");
}

#[tokio::test]
async fn silent_server_fails_with_connect_timeout() {
    // Accepts TCP connections and never answers the startup message.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let build = PostgresProvider::builder(&format!("postgres://postgres@{addr}/postgres"))
        .connect_timeout(Duration::from_millis(300))
        .build();
    let err = tokio::time::timeout(Duration::from_secs(30), build)
        .await
        .expect("build must give up by itself")
        .unwrap_err();
    assert!(
        matches!(err, Error::ConnectTimeout(t) if t == Duration::from_millis(300)),
        "{err}"
    );
    hold.abort();
}

#[tokio::test]
async fn unknown_role_or_database_is_a_clear_error() {
    let db = TestDb::new().await;
    let base = db.url.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap();
    let err = PostgresProvider::new(&format!("{base}/no_such_database_x"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(err.to_string().contains("no_such_database_x"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_providers_migrate_one_empty_schema_concurrently() {
    let db = TestDb::new().await;
    let builds = (0..8).map(|_| {
        let url = db.url.clone();
        let schema = db.schema.clone();
        tokio::spawn(async move { PostgresProvider::new_with_schema(&url, Some(&schema)).await })
    });
    let providers: Vec<PostgresProvider> = futures_util::future::join_all(builds)
        .await
        .into_iter()
        .map(|r| r.expect("join").expect("every concurrent build succeeds"))
        .collect();
    let applied = db
        .scalar("SELECT count(*) FROM __diesel_schema_migrations")
        .await
        .unwrap();
    assert_eq!(
        applied.parse::<usize>().unwrap(),
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().join("up.sql").exists())
            .count(),
        "each migration applied exactly once"
    );
    // All of them work on the same tables.
    providers[0]
        .enqueue_for_orchestrator(start_item("m-1"), None)
        .await
        .unwrap();
    let fetched = providers[7]
        .fetch_orchestration_item(Duration::from_secs(5), Duration::ZERO, None)
        .await
        .unwrap();
    assert_eq!(fetched.unwrap().0.instance, "m-1");
    drop(providers);
    db.cleanup().await;
}

#[tokio::test]
async fn reopening_an_existing_schema_reuses_it() {
    let db = TestDb::new().await;
    let first = db.provider().await;
    first
        .enqueue_for_orchestrator(start_item("keep"), None)
        .await
        .unwrap();
    drop(first);
    let second = db.provider().await;
    let fetched = second
        .fetch_orchestration_item(Duration::from_secs(5), Duration::ZERO, None)
        .await
        .unwrap();
    assert_eq!(fetched.unwrap().0.instance, "keep");
    drop(second);
    db.cleanup().await;
}

#[tokio::test]
async fn schemas_are_isolated() {
    let a = TestDb::new().await;
    let b = TestDb::new().await;
    let pa = a.provider().await;
    let pb = b.provider().await;
    pa.enqueue_for_orchestrator(start_item("only-in-a"), None)
        .await
        .unwrap();
    assert!(
        pb.fetch_orchestration_item(Duration::from_secs(5), Duration::ZERO, None)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        pb.fetch_work_item(
            Duration::from_secs(5),
            Duration::ZERO,
            None,
            &TagFilter::default()
        )
        .await
        .unwrap()
        .is_none()
    );
    assert!(
        pa.fetch_orchestration_item(Duration::from_secs(5), Duration::ZERO, None)
            .await
            .unwrap()
            .is_some()
    );
    drop((pa, pb));
    a.cleanup().await;
    b.cleanup().await;
}

#[tokio::test]
async fn functions_use_their_own_schema_whatever_the_callers_search_path() {
    let db = TestDb::new().await;
    let provider = db.provider().await;
    // Call the schema's function from a session whose search_path is public.
    common::exec(
        &db.url,
        &format!(
            "SET search_path TO public; SELECT \"{}\".dx_enqueue_orchestrator('via-public', 'ExternalRaised', \
             '{{\"ExternalRaised\": {{\"instance\": \"via-public\", \"name\": \"e\", \"data\": \"\"}}}}', 0)",
            db.schema
        ),
    )
    .await;
    let count = db
        .scalar("SELECT count(*) FROM orchestrator_queue WHERE instance_id = 'via-public'")
        .await;
    assert_eq!(count.as_deref(), Some("1"));
    drop(provider);
    db.cleanup().await;
}

#[tokio::test]
async fn options_are_applied_to_connections() {
    let db = TestDb::new().await;
    let provider = PostgresProvider::builder(&db.url)
        .schema(&db.schema)
        .application_name("dx-options-test")
        .statement_timeout(Duration::from_millis(1500))
        .build()
        .await
        .unwrap();
    assert_eq!(provider.schema(), db.schema);
    assert_eq!(
        provider.options().application_name(),
        Some("dx-options-test")
    );
    // Any call opens a pooled connection, which then shows up in pg_stat_activity.
    provider.read("nothing").await.unwrap();
    let seen = db
        .scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dx-options-test'")
        .await
        .unwrap();
    assert!(
        seen.parse::<i64>().unwrap() >= 1,
        "pooled connection reports its application_name"
    );
    drop(provider);
    db.cleanup().await;
}

#[tokio::test]
async fn invalid_work_items_are_rejected_without_side_effects() {
    let db = TestDb::new().await;
    let provider = Arc::new(db.provider().await);
    // An activity on the orchestrator queue and an orchestration message on the worker queue.
    let activity = WorkItem::ActivityExecute {
        instance: "i".into(),
        execution_id: 1,
        id: 1,
        name: "A".into(),
        input: "".into(),
        session_id: None,
        tag: None,
    };
    let err = provider
        .enqueue_for_orchestrator(activity, None)
        .await
        .unwrap_err();
    assert!(!err.is_retryable());
    let err = provider
        .enqueue_for_worker(start_item("i"))
        .await
        .unwrap_err();
    assert!(!err.is_retryable());
    let rows = db
        .scalar("SELECT (SELECT count(*) FROM orchestrator_queue) + (SELECT count(*) FROM worker_queue)")
        .await;
    assert_eq!(rows.as_deref(), Some("0"));
    drop(provider);
    db.cleanup().await;
}

/// Queue depths separate work that is ready now from work scheduled for
/// later (durable timers, delayed retries) and leave locked work out.
#[tokio::test]
async fn queue_depths_tell_ready_from_scheduled_and_locked() {
    use common::items::activity_item;
    use duroxide::providers::ProviderAdmin;
    let db = TestDb::new().await;
    let p = db.provider().await;
    let depths = || async { p.get_queue_depths().await.unwrap() };
    let empty = depths().await;
    assert_eq!(
        (
            empty.orchestrator_queue,
            empty.worker_queue,
            empty.timer_queue
        ),
        (0, 0, 0)
    );

    p.enqueue_for_orchestrator(start_item("qd-now"), None)
        .await
        .unwrap();
    p.enqueue_for_orchestrator(start_item("qd-later"), Some(Duration::from_secs(600)))
        .await
        .unwrap();
    for id in 1..=3 {
        p.enqueue_for_worker(activity_item("qd-work", id))
            .await
            .unwrap();
    }
    let d = depths().await;
    assert_eq!(
        (d.orchestrator_queue, d.worker_queue, d.timer_queue),
        (1, 3, 1)
    );

    // One activity locked (running), one abandoned with a delay (a retry later).
    let fetch = || async {
        p.fetch_work_item(
            Duration::from_secs(60),
            Duration::ZERO,
            None,
            &TagFilter::Any,
        )
        .await
        .unwrap()
        .expect("a ready activity")
    };
    let (_running, _token, _) = fetch().await;
    let (_, retry, _) = fetch().await;
    p.abandon_work_item(&retry, Some(Duration::from_secs(600)), false)
        .await
        .unwrap();
    let d = depths().await;
    assert_eq!(
        (d.orchestrator_queue, d.worker_queue, d.timer_queue),
        (1, 1, 2)
    );
    drop(p);
    db.cleanup().await;
}

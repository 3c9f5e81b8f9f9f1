//! Faults under load: two runtimes run a durable workload while the network
//! or the server fails; afterwards every orchestration completes, none
//! fails, every activity completion is applied exactly once, and work
//! resumes within a bounded time after the fault ends.
//!
//! Margins are generous (the machine running the tests may be busy); the
//! measured recovery times are printed (`--nocapture`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::proxy::Proxy;
use common::workload::{self, Shape, Verdict};
use common::{TestDb, pg};
use duroxide_diesel::PostgresProvider;

/// Providers the runtimes use: short call limits so a silent connection is
/// given up quickly. With `DX_FAULT_DEFAULTS=1` they use the crate's default
/// limits instead (to measure what a user gets out of the box).
async fn runtime_provider(url: &str, schema: &str, app: &str) -> Arc<PostgresProvider> {
    runtime_provider_with(url, schema, app, Duration::ZERO).await
}

/// [`runtime_provider`] with a `completion_batch_window`.
async fn runtime_provider_with(
    url: &str,
    schema: &str,
    app: &str,
    batch_window: Duration,
) -> Arc<PostgresProvider> {
    let mut builder = PostgresProvider::builder(url)
        .schema(schema)
        .application_name(app)
        .max_connections(6)
        .completion_batch_window(batch_window);
    if std::env::var("DX_FAULT_DEFAULTS").as_deref() != Ok("1") {
        builder = builder
            .connect_timeout(Duration::from_secs(3))
            .call_timeout(Duration::from_secs(3))
            .listener_heartbeat(Duration::from_secs(3));
    }
    Arc::new(builder.build().await.expect("runtime provider"))
}

fn check(name: &str, v: &Verdict, shape: Shape, max_recovery: Duration) {
    eprintln!(
        "{name}: completed {} failed {} stuck {} miscounted {} duplicates {} recovery {:?} drained {:?}",
        v.completed, v.failed, v.stuck, v.miscounted, v.duplicates, v.recovery, v.drained
    );
    assert_eq!(v.completed, shape.orchestrations, "{name}: {v:?}");
    assert_eq!(v.failed, 0, "{name}: {v:?}");
    assert_eq!(v.stuck, 0, "{name}: {v:?}");
    assert_eq!(v.miscounted, 0, "{name}: {v:?}");
    let recovery = v.recovery.unwrap_or_else(|| {
        panic!("{name}: no activity started after the fault ended (it outlasted the work): {v:?}")
    });
    assert!(
        recovery <= max_recovery,
        "{name}: work resumed {recovery:?} after the fault ended (limit {max_recovery:?})"
    );
}

/// Runs the workload through a proxy with `fault` applied to it once the
/// workload is in full swing.
async fn through_proxy(name: &str, fault: impl FnOnce(&Proxy) -> Duration, max_recovery: Duration) {
    let db = TestDb::new().await;
    let observer = Arc::new(db.provider().await);
    let proxy = Proxy::for_url(&db.url, Duration::ZERO).await.unwrap();
    let app = format!("dx-{name}");
    let runtimes = vec![
        runtime_provider(&proxy.url(&db.url), &db.schema, &app).await,
        runtime_provider(&proxy.url(&db.url), &db.schema, &app).await,
    ];
    let shape = Shape::default();
    let p = &proxy;
    let verdict = workload::run(
        shape,
        runtimes,
        observer.clone(),
        Duration::from_secs(90),
        |journal| async move {
            workload::until_executions(&journal, 20, Duration::from_secs(30)).await;
            let lasts = fault(p);
            tokio::time::sleep(lasts).await;
        },
    )
    .await;
    check(name, &verdict, shape, max_recovery);
    drop(observer);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn black_hole_then_recovery() {
    // Every socket open during the hole stays silent forever: only call
    // limits, the checkout retry and the listener heartbeat get work going.
    through_proxy(
        "black-hole",
        |p| {
            p.black_hole(Duration::from_secs(8));
            Duration::from_secs(8)
        },
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_reset_and_refused_then_recovery() {
    through_proxy(
        "reset-refuse",
        |p| {
            p.reset_all(Duration::from_secs(4));
            Duration::from_secs(4)
        },
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_network_then_recovery() {
    through_proxy(
        "stall",
        |p| {
            p.stall(Duration::from_secs(8));
            Duration::from_secs(8)
        },
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backends_killed_repeatedly_then_recovery() {
    let db = TestDb::new().await;
    let observer = Arc::new(db.provider().await);
    let app = format!("dx-kill-{}", &db.schema[4..]);
    let runtimes = vec![
        runtime_provider(&db.url, &db.schema, &app).await,
        runtime_provider(&db.url, &db.schema, &app).await,
    ];
    let shape = Shape::default();
    let killer = TestDb {
        url: db.url.clone(),
        schema: db.schema.clone(),
    };
    let verdict = workload::run(
        shape,
        runtimes,
        observer.clone(),
        Duration::from_secs(90),
        |journal| async move {
            // Each kill waits for more work to have started since the last
            // one, so every kill hits a running workload and the fault ends
            // with most of the work (320 of 500 executions) still to do,
            // however fast the machine is.
            for k in 0..5 {
                workload::until_executions(&journal, 20 + 40 * k, Duration::from_secs(30)).await;
                killer
                    .scalar(&format!(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                         WHERE application_name = '{app}'"
                    ))
                    .await;
            }
        },
    )
    .await;
    check("backend-kill", &verdict, shape, Duration::from_secs(5));
    drop(observer);
    db.cleanup().await;
}

/// Runs the workload on a private cluster (on `port`, with `durability`)
/// and applies `fault` to the server once it is in full swing. A cluster
/// of the test's own: stopping the shared one would break the tests
/// running beside it.
async fn server_fault(name: &str, port: u16, durability: pg::Durability, fault: fn(u16)) {
    server_fault_with(name, port, durability, fault, Duration::ZERO).await;
}

/// [`server_fault`] with runtimes whose providers batch completions.
async fn server_fault_with(
    name: &str,
    port: u16,
    durability: pg::Durability,
    fault: fn(u16),
    batch_window: Duration,
) {
    let url = pg::private_cluster_with(port, durability);
    let db = TestDb {
        url: url.clone(),
        schema: common::unique_schema("dxs"),
    };
    let observer = Arc::new(db.provider().await);
    let app = format!("dx-{name}");
    let runtimes = vec![
        runtime_provider_with(&url, &db.schema, &app, batch_window).await,
        runtime_provider_with(&url, &db.schema, &app, batch_window).await,
    ];
    let shape = Shape::default();
    let verdict = workload::run(
        shape,
        runtimes,
        observer.clone(),
        Duration::from_secs(90),
        |journal| async move {
            workload::until_executions(&journal, 20, Duration::from_secs(30)).await;
            tokio::task::spawn_blocking(move || fault(port))
                .await
                .unwrap();
        },
    )
    .await;
    check(name, &verdict, shape, Duration::from_secs(5));
    drop(observer);
    db.cleanup().await;
}

/// A server crash on durable settings: fetch claims commit asynchronously,
/// so the claims of the last moments before the crash are lost with the
/// unwritten WAL; their items are claimable again after recovery, and every
/// orchestration still completes, each activity recorded once. (On the
/// shared cluster's settings, synchronous_commit off, a crash would lose
/// acknowledged work too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_crash_then_recovery() {
    server_fault(
        "server-crash",
        pg::private_port(9),
        pg::Durability::Durable,
        pg::crash_private_cluster,
    )
    .await;
}

/// The same crash with completions held for their siblings (the fan-out's
/// activities complete close together): a held completion is a committed
/// row, claimable once its window ends whatever happened to the listeners
/// that were told when.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_crash_with_batched_completions_then_recovery() {
    server_fault_with(
        "server-crash-batched",
        pg::private_port(10),
        pg::Durability::Durable,
        pg::crash_private_cluster,
        Duration::from_millis(200),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_restart_then_recovery() {
    server_fault(
        "server-restart",
        pg::private_port(7),
        pg::Durability::Fast,
        pg::restart_private_cluster,
    )
    .await;
}

//! The `duroxide-diesel` command end to end: the built binary against the
//! test server, on stores filled by a real duroxide runtime.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestDb, exec};
use duroxide::providers::ProviderAdmin;
use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::{self, RuntimeOptions};
use duroxide::{
    ActivityContext, Client, OrchestrationContext, OrchestrationRegistry, OrchestrationStatus,
};

const WAIT: Duration = Duration::from_secs(30);

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the command on `db`'s schema, with the URL from the environment as
/// an operator would set it.
fn cli(db: &TestDb, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_duroxide-diesel"))
        .args(args)
        .args(["--schema", &db.schema])
        .env("DATABASE_URL", &db.url)
        .output()
        .expect("run duroxide-diesel");
    let output = Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    };
    eprintln!(
        "$ duroxide-diesel {}\n{}{}(exit {})",
        args.join(" "),
        output.stdout,
        output.stderr,
        output.code
    );
    output
}

/// `cli` that must succeed.
fn ok(db: &TestDb, args: &[&str]) -> Output {
    let out = cli(db, args);
    assert_eq!(out.code, 0, "{args:?} failed: {}", out.stderr);
    out
}

/// The cells of the stdout line whose first cell is `first`.
fn row<'a>(text: &'a str, first: &str) -> Vec<&'a str> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&first))
        .unwrap_or_else(|| panic!("no row {first:?} in:\n{text}"))
}

/// A provider with: `greet-1`, `greet-2` (Completed, custom status and a
/// KV entry), `bad-1` (Failed), `counter-1` (Completed in its 4th execution,
/// by continue-as-new), `waiter-1` (Running, waiting for an event),
/// `sleeper-1` (Running, a timer due in an hour); after the runtime stops,
/// `late-1` is started, so its first message waits, ready, in the queue
/// (an instance is recorded by its first turn, so it is not listed yet).
async fn seeded() -> TestDb {
    let db = TestDb::new().await;
    let provider = Arc::new(db.provider().await);
    let activities = ActivityRegistry::builder()
        .register("Greet", |_c: ActivityContext, name: String| async move {
            Ok(format!("Hello, {name}!"))
        })
        .build();
    let orchestrations =
        OrchestrationRegistry::builder()
            .register(
                "Greeting",
                |ctx: OrchestrationContext, name: String| async move {
                    let greeting = ctx.schedule_activity("Greet", name).await?;
                    ctx.set_custom_status("greeted");
                    ctx.set_kv_value("last", greeting.clone());
                    Ok(greeting)
                },
            )
            .register(
                "Broken",
                |_ctx: OrchestrationContext, _in: String| async move {
                    Err::<String, _>("boom".to_owned())
                },
            )
            .register(
                "Counter",
                |ctx: OrchestrationContext, n: String| async move {
                    let n: u32 = n
                        .parse()
                        .map_err(|e: std::num::ParseIntError| e.to_string())?;
                    if n < 3 {
                        ctx.continue_as_new((n + 1).to_string()).await
                    } else {
                        Ok(format!("done at {n}"))
                    }
                },
            )
            .register(
                "Waiter",
                |ctx: OrchestrationContext, _in: String| async move {
                    Ok(ctx.schedule_wait("Go").await)
                },
            )
            .register(
                "Sleeper",
                |ctx: OrchestrationContext, _in: String| async move {
                    ctx.schedule_timer(Duration::from_secs(3600)).await;
                    Ok("woke".to_owned())
                },
            )
            .build();
    let rt = runtime::Runtime::start_with_options(
        provider.clone(),
        activities,
        orchestrations,
        RuntimeOptions {
            dispatcher_min_poll_interval: Duration::from_millis(10),
            ..Default::default()
        },
    )
    .await;
    let client = Client::new(provider.clone());
    for (id, name, input) in [
        ("greet-1", "Greeting", "Ada"),
        ("greet-2", "Greeting", "Bob"),
        ("bad-1", "Broken", ""),
        ("counter-1", "Counter", "0"),
        ("waiter-1", "Waiter", ""),
        ("sleeper-1", "Sleeper", ""),
    ] {
        client.start_orchestration(id, name, input).await.unwrap();
    }
    for id in ["greet-1", "greet-2", "bad-1", "counter-1"] {
        let status = client.wait_for_orchestration(id, WAIT).await.unwrap();
        assert!(
            matches!(
                status,
                OrchestrationStatus::Completed { .. } | OrchestrationStatus::Failed { .. }
            ),
            "{id}: {status:?}"
        );
    }
    // Both long-running ones have had their first turn once their
    // executions are stored.
    let deadline = Instant::now() + WAIT;
    for id in ["waiter-1", "sleeper-1"] {
        while provider
            .get_instance_info(id)
            .await
            .map_or(true, |i| i.status != "Running")
        {
            assert!(Instant::now() < deadline, "{id} never ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    rt.shutdown(None).await;
    client
        .start_orchestration("late-1", "Greeting", "Cy")
        .await
        .unwrap();
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_and_verify() {
    let db = TestDb::new().await;

    let out = cli(&db, &["verify"]);
    assert_eq!(out.code, 3, "a missing schema is a mismatch");
    assert!(out.stderr.contains("20261126000001"), "{}", out.stderr);
    assert!(out.stdout.is_empty());

    let out = ok(&db, &["migrate"]);
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .count();
    assert!(
        out.stdout
            .contains("applied 2026-11-26-000001_create_tables\n"),
        "{}",
        out.stdout
    );
    assert_eq!(out.stdout.matches("applied 20").count(), migrations);
    assert!(out.stdout.contains(&format!("({migrations} applied now)")));

    let out = ok(&db, &["migrate"]);
    assert!(out.stdout.contains("(0 applied now)"), "{}", out.stdout);
    assert!(!out.stdout.contains("applied 20"));

    let out = ok(&db, &["verify"]);
    assert!(
        out.stdout.contains(&format!(
            "schema {}: {migrations} migrations, up to date",
            db.schema
        )),
        "{}",
        out.stdout
    );

    // A version this build does not know: a newer release migrated it.
    exec(
        &db.url,
        &format!(
            "INSERT INTO \"{}\".__diesel_schema_migrations (version) VALUES ('29991231000001')",
            db.schema
        ),
    )
    .await;
    for command in ["verify", "migrate", "status"] {
        let out = cli(&db, &[command]);
        assert_eq!(out.code, 3, "{command}");
        assert!(out.stderr.contains("29991231000001"), "{}", out.stderr);
    }

    let out = cli(&db, &["--help"]);
    assert!(out.stdout.contains("Exit codes:"), "{}", out.stdout);
    assert_eq!(cli(&db, &["no-such-command"]).code, 2);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_instances_and_show() {
    let db = seeded().await;

    let out = ok(&db, &["status"]);
    // queue, ready, scheduled, locked, oldest ready
    let orch = row(&out.stdout, "orchestrator");
    assert_eq!(orch[1], "1", "late-1's start is ready:\n{}", out.stdout);
    assert_eq!(orch[2], "1", "sleeper-1's timer is scheduled");
    assert_eq!(orch[3], "0");
    assert_ne!(orch[4], "-", "a ready message has an age");
    assert_eq!(row(&out.stdout, "worker")[1..], ["0", "0", "0", "-"]);
    assert!(
        out.stdout
            .contains("instances: 6 total, 2 running, 3 completed, 1 failed"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("duroxide-diesel-cli"),
        "the command's own connection is listed:\n{}",
        out.stdout
    );

    let out = ok(&db, &["instances"]);
    assert_eq!(out.stdout.lines().count(), 7, "header + 6:\n{}", out.stdout);
    assert_eq!(
        row(&out.stdout, "bad-1")[1..4],
        ["Broken", "1.0.0", "Failed"]
    );
    assert_eq!(row(&out.stdout, "counter-1")[4], "4");

    let out = ok(
        &db,
        &[
            "instances",
            "--status",
            "Completed",
            "--name-prefix",
            "Greet",
        ],
    );
    let mut ids: Vec<&str> = out
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    // Recorded by their first turns, whose order the dispatcher chooses.
    ids.sort();
    assert_eq!(ids, ["greet-1", "greet-2"]);

    let out = ok(&db, &["instances", "--name", "Counter", "--json"]);
    let rows: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["instance_id"], "counter-1");
    assert_eq!(rows[0]["status"], "Completed");
    assert_eq!(rows[0]["current_execution_id"], 4);
    assert!(
        rows[0]["completed_at_ms"].as_u64().unwrap() >= rows[0]["created_at_ms"].as_u64().unwrap()
    );

    let out = ok(&db, &["instances", "--limit", "2"]);
    assert_eq!(out.stdout.lines().count(), 3);

    let out = ok(&db, &["show", "greet-1"]);
    let s = &out.stdout;
    assert!(s.contains("status         Completed\n"), "{s}");
    assert!(s.contains("output         Hello, Ada!\n"), "{s}");
    assert!(s.contains("custom status  greeted\n"), "{s}");
    assert!(s.contains("key-value (1)\n  last = Hello, Ada!\n"), "{s}");
    let history: Vec<&str> = s
        .lines()
        .skip_while(|l| !l.starts_with("history of execution 1"))
        .skip(1)
        .collect();
    assert!(
        history[0].trim_start().starts_with("1 ")
            && history[0].contains("OrchestrationStarted Greeting"),
        "{s}"
    );
    assert!(
        history
            .iter()
            .any(|l| l.contains("ActivityScheduled Greet")),
        "{s}"
    );
    assert!(
        history
            .iter()
            .any(|l| l.contains("ActivityCompleted") && l.contains("(for 2)")),
        "{s}"
    );
    assert!(
        history.last().unwrap().contains("OrchestrationCompleted"),
        "{s}"
    );

    let out = ok(&db, &["show", "counter-1", "--execution", "2"]);
    assert!(
        out.stdout.contains("execution      4 (stored: 1, 2, 3, 4)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("history of execution 2"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("OrchestrationContinuedAsNew"),
        "{}",
        out.stdout
    );

    let out = ok(&db, &["show", "bad-1"]);
    assert!(
        out.stdout.contains("status         Failed"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("boom"), "{}", out.stdout);

    let out = cli(&db, &["show", "nobody"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("nobody not found"), "{}", out.stderr);
    assert!(out.stdout.is_empty());

    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_and_delete_with_dry_runs() {
    let db = seeded().await;
    let provider = db.provider().await;

    // Prune needs a retention flag: nothing is pruned by accident.
    assert_eq!(cli(&db, &["prune"]).code, 2);

    let mut old_events = 0;
    for execution in 1..=3 {
        old_events += provider
            .get_execution_info("counter-1", execution)
            .await
            .unwrap()
            .event_count;
    }
    let out = ok(
        &db,
        &[
            "prune",
            "--keep-last",
            "1",
            "--dry-run",
            "--batch-size",
            "3",
        ],
    );
    assert_eq!(
        out.stdout,
        format!(
            "dry run, nothing deleted: would prune 3 executions ({old_events} history events) of 6 instances\n"
        )
    );
    // 6 instances in batches of 3.
    assert!(
        out.stderr.contains("batch 1/2: 3 instances"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("batch 2/2: 3 instances"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("would be deleted"), "{}", out.stderr);
    assert_eq!(
        provider.list_executions("counter-1").await.unwrap(),
        [1, 2, 3, 4]
    );

    // Executions completed before a time long ago: none.
    let out = ok(
        &db,
        &[
            "prune",
            "--completed-before",
            "2001-01-01",
            "--instance",
            "counter-1",
        ],
    );
    assert!(
        out.stdout.starts_with("pruned 0 executions"),
        "{}",
        out.stdout
    );

    let out = ok(
        &db,
        &["prune", "--keep-last", "2", "--instance", "counter-1"],
    );
    assert!(
        out.stdout.starts_with("pruned 2 executions"),
        "{}",
        out.stdout
    );
    assert_eq!(provider.list_executions("counter-1").await.unwrap(), [3, 4]);
    let out = ok(
        &db,
        &["prune", "--keep-last", "1", "--completed-before", "0s"],
    );
    assert!(
        out.stdout.starts_with("pruned 1 executions"),
        "{}",
        out.stdout
    );
    assert_eq!(provider.list_executions("counter-1").await.unwrap(), [4]);

    // Delete the terminal roots completed before now, previewed first.
    let out = ok(
        &db,
        &[
            "delete",
            "--completed-before",
            "0s",
            "--dry-run",
            "--batch-size",
            "2",
        ],
    );
    let listed: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("would delete "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["bad-1", "counter-1", "greet-1", "greet-2"],
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("dry run, nothing deleted: would delete 4 instances, 4 executions, "),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("batch 2/2: would delete 2 instances"),
        "{}",
        out.stderr
    );
    assert_eq!(provider.list_instances().await.unwrap().len(), 6);

    let out = ok(
        &db,
        &["delete", "--completed-before", "0s", "--batch-size", "3"],
    );
    assert!(
        out.stdout
            .starts_with("deleted 4 instances, 4 executions, "),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("batch 1/2: deleted 3 instances"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("batch 2/2: deleted 1 instances"),
        "{}",
        out.stderr
    );
    let mut left = provider.list_instances().await.unwrap();
    left.sort();
    assert_eq!(left, ["sleeper-1", "waiter-1"]);

    // By id: a running instance needs --force; a dry run deletes nothing.
    let out = cli(&db, &["delete", "waiter-1"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("still running"), "{}", out.stderr);
    let out = ok(
        &db,
        &["delete", "waiter-1", "sleeper-1", "--force", "--dry-run"],
    );
    assert!(
        out.stdout
            .starts_with("dry run, nothing deleted: would delete 2 instances, 2 executions, "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.trim_end().ends_with("1 queued messages"),
        "sleeper's timer: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains("sleeper-1: would delete 1 instances"),
        "{}",
        out.stderr
    );
    assert_eq!(provider.list_instances().await.unwrap().len(), 2);
    let out = ok(&db, &["delete", "waiter-1", "sleeper-1", "--force"]);
    assert!(
        out.stdout
            .starts_with("deleted 2 instances, 2 executions, "),
        "{}",
        out.stdout
    );
    assert!(provider.list_instances().await.unwrap().is_empty());
    // Not recorded before its first turn, so there is nothing to delete.
    let out = cli(&db, &["delete", "late-1"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("late-1 not found"), "{}", out.stderr);

    let out = ok(&db, &["status"]);
    // late-1's start message; the timer went with sleeper-1.
    assert_eq!(row(&out.stdout, "orchestrator")[1..4], ["1", "0", "0"]);
    assert!(out.stdout.contains("instances: 0 total"), "{}", out.stdout);

    drop(provider);
    db.cleanup().await;
}

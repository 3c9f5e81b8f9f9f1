//! Several OS processes run runtimes on one schema: they share the work, one
//! of them is killed mid-way, and every activity completion is still applied
//! exactly once.
//!
//! The test binary plays both roles: run normally it is the coordinator and
//! starts copies of itself (same test, `DX_MP_WORKER` set) as workers; each
//! worker runs a runtime until it is killed and appends every activity it
//! executes to a file of its own.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::TestDb;
use common::workload::{self, ACTIVITIES_PER_ORCHESTRATION, Journal, Shape};
use duroxide::providers::Provider;
use duroxide::runtime;
use duroxide::{Client, EventKind, OrchestrationStatus};
use duroxide_diesel::PostgresProvider;

const WORKERS: usize = 3;
const TEST_NAME: &str = "processes_share_one_schema_and_survive_a_killed_process";

fn shape() -> Shape {
    Shape {
        orchestrations: 60,
        ..Shape::default()
    }
}

/// Worker role: run a runtime on the schema, log every activity execution.
async fn worker(url: &str, schema: &str, log: &str) -> ! {
    let provider = Arc::new(
        PostgresProvider::builder(url)
            .schema(schema)
            .max_connections(4)
            .build()
            .await
            .expect("worker provider"),
    );
    let journal = Arc::new(Journal::default());
    let (activities, orchestrations) = workload::registries(shape(), &journal);
    let _rt = runtime::Runtime::start_with_options(
        provider,
        activities,
        orchestrations,
        workload::runtime_options(),
    )
    .await;
    let mut written = 0;
    loop {
        let keys = journal.keys();
        if keys.len() > written {
            let mut text = String::new();
            for key in &keys[written..] {
                text.push_str(key);
                text.push('\n');
            }
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .expect("worker log");
            f.write_all(text.as_bytes()).expect("write worker log");
            written = keys.len();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spawn_worker(url: &str, schema: &str, log: &str) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env("DX_MP_WORKER", format!("{url}|{schema}|{log}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn worker process")
}

/// Kills the worker processes when dropped, also when the test fails.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn logged(log: &str) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_share_one_schema_and_survive_a_killed_process() {
    if let Ok(spec) = std::env::var("DX_MP_WORKER") {
        let mut parts = spec.splitn(3, '|');
        let (url, schema, log) = (
            parts.next().unwrap().to_owned(),
            parts.next().unwrap().to_owned(),
            parts.next().unwrap().to_owned(),
        );
        worker(&url, &schema, &log).await;
    }

    let db = TestDb::new().await;
    let observer = Arc::new(db.provider().await);
    let logs: Vec<String> = (0..WORKERS)
        .map(|i| {
            std::env::temp_dir()
                .join(format!("{}-worker{i}.log", db.schema))
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let mut children = Workers(
        logs.iter()
            .map(|log| spawn_worker(&db.url, &db.schema, log))
            .collect(),
    );

    let client = Client::new(observer.clone());
    let ids: Vec<String> = (0..shape().orchestrations)
        .map(|i| format!("mp{i:04}"))
        .collect();
    for id in &ids {
        client
            .start_orchestration(id, "Work", id.clone())
            .await
            .unwrap();
    }

    // Once the first worker is busy, kill it without warning: its locks
    // expire and the others take its work over.
    for _ in 0..3000 {
        if logged(&logs[0]).len() >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    children.0[0].kill().expect("kill worker 0");
    children.0[0].wait().expect("reap worker 0");

    for id in &ids {
        match client
            .wait_for_orchestration(id, Duration::from_secs(120))
            .await
        {
            Ok(OrchestrationStatus::Completed { output, .. }) => {
                assert_eq!(output, ACTIVITIES_PER_ORCHESTRATION.to_string(), "{id}")
            }
            other => panic!("{id} did not complete: {other:?}"),
        }
        let history = observer.read(id).await.unwrap();
        let completions = history
            .iter()
            .filter(|e| matches!(e.kind, EventKind::ActivityCompleted { .. }))
            .count();
        assert_eq!(completions, ACTIVITIES_PER_ORCHESTRATION, "{id}");
    }
    drop(children);

    let per_worker: Vec<Vec<String>> = logs.iter().map(|l| logged(l)).collect();
    let mut all: Vec<&String> = per_worker.iter().flatten().collect();
    let executions = all.len();
    all.sort();
    all.dedup();
    eprintln!(
        "multi-process: executions per worker {:?}, distinct activities {}, re-executions {}",
        per_worker.iter().map(Vec::len).collect::<Vec<_>>(),
        all.len(),
        executions - all.len()
    );
    assert_eq!(all.len(), ids.len() * ACTIVITIES_PER_ORCHESTRATION);
    for (i, log) in per_worker.iter().enumerate().skip(1) {
        assert!(!log.is_empty(), "worker {i} got no work");
    }
    for log in &logs {
        let _ = std::fs::remove_file(log);
    }
    drop(client);
    drop(observer);
    db.cleanup().await;
}

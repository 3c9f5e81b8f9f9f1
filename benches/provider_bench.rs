//! Side-by-side benchmark of the PostgreSQL provider (issue 4).
//!
//! Run: `cargo bench --bench provider_bench` (release build, ~3-5 minutes).
//! Smoke test: `DXBENCH_QUICK=1 cargo bench --bench provider_bench`.
//!
//! Sections, all in one run, printed as tables:
//!   (a) duroxide's parallel-orchestrations stress test, this provider vs
//!       duroxide's SQLite file provider, orch:worker 1:1 and 2:2, runs
//!       interleaved (pg, sqlite, pg, sqlite, ...);
//!   (b) one orchestration running 20 sequential activities: ms per step,
//!       directly and through a delaying TCP proxy (10 ms and 50 ms RTT), with
//!       round trips per step and the 5-round-trip floor;
//!   (c) enqueue-to-pickup dispatch latency on an idle runtime;
//!   (d) round trips per second sent by an idle runtime;
//!   (e) round trips per hot-path call, each call measured alone.
//!
//! Knobs (environment): DXBENCH_QUICK=1 (1 run, 3 s stress, fewer samples),
//! DXBENCH_RUNS, DXBENCH_STRESS_SECS, DXBENCH_SAMPLES (dispatch latency),
//! DXBENCH_IDLE_SECS, DXBENCH_SECTIONS (e.g. "bd"), DATABASE_URL (else the
//! testkit starts a throwaway PostgreSQL on port 55433), RUST_LOG.

use duroxide_diesel_testkit::items::{self, activity_item, completion_item, start_item};
use duroxide_diesel_testkit::{pg, proxy};

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use duroxide::provider_stress_tests::StressTestConfig;
use duroxide::provider_stress_tests::parallel_orchestrations::{
    ProviderStressFactory, run_parallel_orchestrations_test_with_config,
};
use duroxide::providers::sqlite::SqliteProvider;
use duroxide::providers::{
    DispatcherCapabilityFilter, ExecutionMetadata, OrchestrationItem, Provider, ProviderAdmin,
    ProviderError, ScheduledActivityIdentifier, SessionFetchConfig, TagFilter, WorkItem,
};
use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::{self, RuntimeOptions};
use duroxide::{
    ActivityContext, Client, Event, OrchestrationContext, OrchestrationRegistry, SystemStats,
};
use duroxide_diesel::PostgresProvider;
use tokio::sync::Notify;

type Res<T> = Result<T, String>;

/// Activities per orchestration in scenario (b).
const STEPS: u32 = 20;
/// Round trips per sequential step that no provider can avoid: fetch and ack
/// of the orchestration turn, fetch of the work item, the runtime's history
/// read before running the activity, ack of the work item.
const FLOOR_RTS_PER_STEP: f64 = 5.0;
const WAIT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// Configuration

struct Config {
    quick: bool,
    runs: usize,
    stress_secs: u64,
    samples: usize,
    idle_secs: u64,
    idle_warmup: Duration,
    sections: String,
}

impl Config {
    fn from_env() -> Self {
        let quick = std::env::var("DXBENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let num = |name: &str, default: u64| -> u64 {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Config {
            quick,
            runs: num("DXBENCH_RUNS", if quick { 1 } else { 3 }).max(1) as usize,
            stress_secs: num("DXBENCH_STRESS_SECS", if quick { 3 } else { 10 }).max(1),
            samples: num("DXBENCH_SAMPLES", if quick { 20 } else { 100 }).max(1) as usize,
            idle_secs: num("DXBENCH_IDLE_SECS", if quick { 3 } else { 10 }).max(1),
            idle_warmup: Duration::from_secs(if quick { 1 } else { 3 }),
            sections: std::env::var("DXBENCH_SECTIONS").unwrap_or_else(|_| "abcde".to_owned()),
        }
    }

    fn wants(&self, section: char) -> bool {
        self.sections.contains(section)
    }
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("[provider_bench] {}", msg.as_ref());
}

// ---------------------------------------------------------------------------
// Schemas and temp files created by this run, removed at the end.

static SCHEMAS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static SQLITE_FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn new_schema(tag: &str) -> String {
    let name = format!("dxbench_{tag}_{:012x}", rand::random::<u64>() >> 16);
    SCHEMAS.lock().unwrap().push(name.clone());
    name
}

async fn build_pg(url: &str, schema: &str) -> Res<PostgresProvider> {
    PostgresProvider::builder(url)
        .schema(schema)
        .build()
        .await
        .map_err(|e| format!("build PostgresProvider ({schema}): {e}"))
}

async fn drop_schemas(url: &str) {
    let schemas = std::mem::take(&mut *SCHEMAS.lock().unwrap());
    if schemas.is_empty() {
        return;
    }
    match AsyncPgConnection::establish(url).await {
        Ok(mut conn) => {
            for s in &schemas {
                if let Err(e) = conn
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{s}\" CASCADE"))
                    .await
                {
                    progress(format!("could not drop schema {s}: {e}"));
                }
            }
        }
        Err(e) => progress(format!("could not connect to drop schemas: {e}")),
    }
    for f in std::mem::take(&mut *SQLITE_FILES.lock().unwrap()) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = f.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
    }
}

// ---------------------------------------------------------------------------
// The delay proxy, on its own thread and tokio runtime so its forwarding does
// not compete with the measured runtime's workers.

struct ProxyHost {
    proxy: Option<proxy::Proxy>,
    rt: Option<tokio::runtime::Runtime>,
}

impl ProxyHost {
    async fn start(url: &str, one_way: Duration) -> Res<Arc<ProxyHost>> {
        let url = url.to_owned();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let result = (|| -> Res<ProxyHost> {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("dxbench-proxy")
                    .enable_all()
                    .build()
                    .map_err(|e| format!("proxy runtime: {e}"))?;
                let proxy = rt
                    .block_on(proxy::Proxy::for_url(&url, one_way))
                    .map_err(|e| format!("start proxy: {e}"))?;
                Ok(ProxyHost {
                    proxy: Some(proxy),
                    rt: Some(rt),
                })
            })();
            let _ = tx.send(result);
        });
        let host = rx.await.map_err(|_| "proxy thread died".to_owned())??;
        Ok(Arc::new(host))
    }

    fn proxy(&self) -> &proxy::Proxy {
        self.proxy.as_ref().expect("proxy is running")
    }

    fn url(&self, url: &str) -> String {
        self.proxy().url(url)
    }
}

impl Drop for ProxyHost {
    fn drop(&mut self) {
        drop(self.proxy.take());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Median of `n` `SELECT 1` round trips on one connection to `url`.
async fn probe_rtt(url: &str, n: usize) -> Res<f64> {
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .map_err(|e| format!("probe connect: {e}"))?;
    conn.batch_execute("SELECT 1")
        .await
        .map_err(|e| e.to_string())?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        conn.batch_execute("SELECT 1")
            .await
            .map_err(|e| e.to_string())?;
        v.push(ms(t.elapsed()));
    }
    Ok(median(&v))
}

// ---------------------------------------------------------------------------
// Tap: a Provider wrapper that delegates every call to the inner provider,
// counts calls per method, and timestamps pickups and completions.

const OP_NAMES: [&str; 18] = [
    "fetch_orch",
    "fetch_orch=Some",
    "ack_orch",
    "abandon_orch",
    "renew_orch",
    "read",
    "read_with_execution",
    "append_with_execution",
    "enqueue_orch",
    "enqueue_worker",
    "fetch_work",
    "fetch_work=Some",
    "ack_work",
    "abandon_work",
    "renew_work",
    "renew_session_lock",
    "cleanup_orphaned_sessions",
    "other",
];
const OPS: usize = OP_NAMES.len();

#[derive(Clone, Copy)]
enum Op {
    FetchOrch,
    FetchOrchSome,
    AckOrch,
    AbandonOrch,
    RenewOrch,
    Read,
    ReadExec,
    Append,
    EnqOrch,
    EnqWorker,
    FetchWork,
    FetchWorkSome,
    AckWork,
    AbandonWork,
    RenewWork,
    RenewSession,
    CleanupSessions,
    Other,
}

/// Calls of each method, indexed like `OP_NAMES`.
#[derive(Clone, Copy)]
struct Calls([u64; OPS]);

impl Calls {
    fn since(&self, earlier: &Calls) -> Calls {
        let mut out = [0; OPS];
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.0[i] - earlier.0[i];
        }
        Calls(out)
    }

    /// Calls that reach the database (the `=Some` rows are sub-counts).
    fn db_calls(&self) -> u64 {
        self.0
            .iter()
            .enumerate()
            .filter(|(i, _)| !OP_NAMES[*i].contains("=Some"))
            .map(|(_, n)| n)
            .sum()
    }

    fn describe(&self, per: f64) -> String {
        let mut s = String::new();
        for (i, n) in self.0.iter().enumerate() {
            if *n > 0 {
                if !s.is_empty() {
                    s.push_str(", ");
                }
                let _ = write!(s, "{} {}", OP_NAMES[i], fmt_num(*n as f64 / per));
            }
        }
        if s.is_empty() { "none".to_owned() } else { s }
    }
}

type Probe = Box<dyn Fn() -> proxy::Snapshot + Send + Sync>;

/// A terminal ack of an instance, as seen by the tap.
#[derive(Clone, Copy)]
struct Done {
    at: Instant,
    proxy: proxy::Snapshot,
    failed: bool,
}

struct Tap {
    inner: Arc<dyn Provider>,
    calls: [AtomicU64; OPS],
    probe: OnceLock<Probe>,
    /// Lock token of a fetched orchestration item -> its instance.
    tokens: Mutex<HashMap<String, String>>,
    /// First time each instance was handed to the orchestrator.
    picked: Mutex<HashMap<String, Instant>>,
    done: Mutex<HashMap<String, Done>>,
    done_notify: Notify,
}

impl Tap {
    fn new(inner: Arc<dyn Provider>) -> Arc<Tap> {
        Arc::new(Tap {
            inner,
            calls: std::array::from_fn(|_| AtomicU64::new(0)),
            probe: OnceLock::new(),
            tokens: Mutex::new(HashMap::new()),
            picked: Mutex::new(HashMap::new()),
            done: Mutex::new(HashMap::new()),
            done_notify: Notify::new(),
        })
    }

    fn count(&self, op: Op) {
        self.calls[op as usize].fetch_add(1, Ordering::SeqCst);
    }

    fn calls(&self) -> Calls {
        Calls(std::array::from_fn(|i| {
            self.calls[i].load(Ordering::SeqCst)
        }))
    }

    fn picked_at(&self, instance: &str) -> Option<Instant> {
        self.picked.lock().unwrap().get(instance).copied()
    }

    /// Waits until the runtime has acked `instance` as Completed or Failed.
    async fn wait_done(&self, instance: &str, timeout: Duration) -> Res<Done> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.done_notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if let Some(d) = self.done.lock().unwrap().get(instance) {
                return Ok(*d);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(format!("{instance} did not finish within {timeout:?}"));
            }
        }
    }
}

#[async_trait::async_trait]
impl Provider for Tap {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn version(&self) -> &str {
        self.inner.version()
    }

    async fn fetch_orchestration_item(
        &self,
        lock_timeout: Duration,
        poll_timeout: Duration,
        filter: Option<&DispatcherCapabilityFilter>,
    ) -> Result<Option<(OrchestrationItem, String, u32)>, ProviderError> {
        self.count(Op::FetchOrch);
        let result = self
            .inner
            .fetch_orchestration_item(lock_timeout, poll_timeout, filter)
            .await;
        if let Ok(Some((item, token, _))) = &result {
            let now = Instant::now();
            self.count(Op::FetchOrchSome);
            self.picked
                .lock()
                .unwrap()
                .entry(item.instance.clone())
                .or_insert(now);
            self.tokens
                .lock()
                .unwrap()
                .insert(token.clone(), item.instance.clone());
        }
        result
    }

    async fn ack_orchestration_item(
        &self,
        lock_token: &str,
        execution_id: u64,
        history_delta: Vec<Event>,
        worker_items: Vec<WorkItem>,
        orchestrator_items: Vec<WorkItem>,
        metadata: ExecutionMetadata,
        cancelled_activities: Vec<ScheduledActivityIdentifier>,
    ) -> Result<(), ProviderError> {
        self.count(Op::AckOrch);
        let terminal = matches!(metadata.status.as_deref(), Some("Completed" | "Failed"));
        let failed = metadata.status.as_deref() == Some("Failed");
        let result = self
            .inner
            .ack_orchestration_item(
                lock_token,
                execution_id,
                history_delta,
                worker_items,
                orchestrator_items,
                metadata,
                cancelled_activities,
            )
            .await;
        let at = Instant::now();
        // The runtime retries a failed ack with the same token: forget the
        // token only once the ack went through.
        let instance = match &result {
            Ok(()) => self.tokens.lock().unwrap().remove(lock_token),
            Err(_) => None,
        };
        if let (true, Some(instance)) = (terminal, instance) {
            let proxy = self.probe.get().map(|p| p()).unwrap_or_default();
            self.done
                .lock()
                .unwrap()
                .insert(instance, Done { at, proxy, failed });
            self.done_notify.notify_waiters();
        }
        result
    }

    async fn abandon_orchestration_item(
        &self,
        lock_token: &str,
        delay: Option<Duration>,
        ignore_attempt: bool,
    ) -> Result<(), ProviderError> {
        self.count(Op::AbandonOrch);
        self.tokens.lock().unwrap().remove(lock_token);
        self.inner
            .abandon_orchestration_item(lock_token, delay, ignore_attempt)
            .await
    }

    async fn read(&self, instance: &str) -> Result<Vec<Event>, ProviderError> {
        self.count(Op::Read);
        self.inner.read(instance).await
    }

    async fn read_with_execution(
        &self,
        instance: &str,
        execution_id: u64,
    ) -> Result<Vec<Event>, ProviderError> {
        self.count(Op::ReadExec);
        self.inner.read_with_execution(instance, execution_id).await
    }

    async fn append_with_execution(
        &self,
        instance: &str,
        execution_id: u64,
        new_events: Vec<Event>,
    ) -> Result<(), ProviderError> {
        self.count(Op::Append);
        self.inner
            .append_with_execution(instance, execution_id, new_events)
            .await
    }

    async fn enqueue_for_worker(&self, item: WorkItem) -> Result<(), ProviderError> {
        self.count(Op::EnqWorker);
        self.inner.enqueue_for_worker(item).await
    }

    async fn fetch_work_item(
        &self,
        lock_timeout: Duration,
        poll_timeout: Duration,
        session: Option<&SessionFetchConfig>,
        tag_filter: &TagFilter,
    ) -> Result<Option<(WorkItem, String, u32)>, ProviderError> {
        self.count(Op::FetchWork);
        let result = self
            .inner
            .fetch_work_item(lock_timeout, poll_timeout, session, tag_filter)
            .await;
        if let Ok(Some(_)) = &result {
            self.count(Op::FetchWorkSome);
        }
        result
    }

    async fn ack_work_item(
        &self,
        token: &str,
        completion: Option<WorkItem>,
    ) -> Result<(), ProviderError> {
        self.count(Op::AckWork);
        self.inner.ack_work_item(token, completion).await
    }

    async fn renew_work_item_lock(
        &self,
        token: &str,
        extend_for: Duration,
    ) -> Result<(), ProviderError> {
        self.count(Op::RenewWork);
        self.inner.renew_work_item_lock(token, extend_for).await
    }

    async fn renew_session_lock(
        &self,
        owner_ids: &[&str],
        extend_for: Duration,
        idle_timeout: Duration,
    ) -> Result<usize, ProviderError> {
        self.count(Op::RenewSession);
        self.inner
            .renew_session_lock(owner_ids, extend_for, idle_timeout)
            .await
    }

    async fn cleanup_orphaned_sessions(
        &self,
        idle_timeout: Duration,
    ) -> Result<usize, ProviderError> {
        self.count(Op::CleanupSessions);
        self.inner.cleanup_orphaned_sessions(idle_timeout).await
    }

    async fn abandon_work_item(
        &self,
        token: &str,
        delay: Option<Duration>,
        ignore_attempt: bool,
    ) -> Result<(), ProviderError> {
        self.count(Op::AbandonWork);
        self.inner
            .abandon_work_item(token, delay, ignore_attempt)
            .await
    }

    async fn renew_orchestration_item_lock(
        &self,
        token: &str,
        extend_for: Duration,
    ) -> Result<(), ProviderError> {
        self.count(Op::RenewOrch);
        self.inner
            .renew_orchestration_item_lock(token, extend_for)
            .await
    }

    async fn enqueue_for_orchestrator(
        &self,
        item: WorkItem,
        delay: Option<Duration>,
    ) -> Result<(), ProviderError> {
        self.count(Op::EnqOrch);
        self.inner.enqueue_for_orchestrator(item, delay).await
    }

    fn as_management_capability(&self) -> Option<&dyn ProviderAdmin> {
        self.inner.as_management_capability()
    }

    async fn get_custom_status(
        &self,
        instance: &str,
        last_seen_version: u64,
    ) -> Result<Option<(Option<String>, u64)>, ProviderError> {
        self.count(Op::Other);
        self.inner
            .get_custom_status(instance, last_seen_version)
            .await
    }

    async fn get_kv_value(
        &self,
        instance: &str,
        key: &str,
    ) -> Result<Option<String>, ProviderError> {
        self.count(Op::Other);
        self.inner.get_kv_value(instance, key).await
    }

    async fn get_kv_all_values(
        &self,
        instance: &str,
    ) -> Result<HashMap<String, String>, ProviderError> {
        self.count(Op::Other);
        self.inner.get_kv_all_values(instance).await
    }

    async fn get_instance_stats(
        &self,
        instance: &str,
    ) -> Result<Option<SystemStats>, ProviderError> {
        self.count(Op::Other);
        self.inner.get_instance_stats(instance).await
    }
}

// ---------------------------------------------------------------------------
// Registries for (b), (c), (d)

fn activities() -> ActivityRegistry {
    ActivityRegistry::builder()
        .register(
            "Noop",
            |_c: ActivityContext, s: String| async move { Ok(s) },
        )
        .build()
}

fn orchestrations() -> OrchestrationRegistry {
    OrchestrationRegistry::builder()
        .register(
            "Seq20",
            |ctx: OrchestrationContext, _input: String| async move {
                for i in 0..STEPS {
                    ctx.schedule_activity("Noop", i.to_string()).await?;
                }
                Ok("done".to_owned())
            },
        )
        .register(
            "Quick",
            |_ctx: OrchestrationContext, input: String| async move { Ok(input) },
        )
        .build()
}

// ---------------------------------------------------------------------------
// Statistics and formatting

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile.
fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

fn fmt_num(x: f64) -> String {
    if x.is_nan() {
        "n/a".to_owned()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn list(v: &[f64]) -> String {
    v.iter().map(|x| fmt_num(*x)).collect::<Vec<_>>().join(" ")
}

/// Prints rows as a table with columns padded to the widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let cols = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(cols) {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::from("|");
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i] - c.chars().count();
            let _ = write!(s, " {c}{} |", " ".repeat(pad));
        }
        println!("{s}");
    };
    line(header.iter().map(|s| (*s).to_owned()).collect());
    let mut sep = String::from("|");
    for w in &widths {
        let _ = write!(sep, "{}|", "-".repeat(w + 2));
    }
    println!("{sep}");
    for r in rows {
        line(r.clone());
    }
    println!();
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "MET",
        Some(false) => "MISSED",
        None => "NOT MEASURED",
    }
}

// ---------------------------------------------------------------------------
// Machine note

#[derive(QueryableByName)]
struct Settings {
    #[diesel(sql_type = diesel::sql_types::Text)]
    version: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    fsync: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    synchronous_commit: String,
}

async fn machine_note(url: &str, cfg: &Config) -> Res<()> {
    use diesel_async::RunQueryDsl;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let processors = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let parallelism = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .map_err(|e| format!("connect to {url}: {e}"))?;
    let s: Settings = diesel::sql_query(
        "SELECT current_setting('server_version') AS version, \
         current_setting('fsync') AS fsync, \
         current_setting('synchronous_commit') AS synchronous_commit",
    )
    .get_result(&mut conn)
    .await
    .map_err(|e| format!("server settings: {e}"))?;

    println!("== duroxide-diesel provider benchmark ==");
    println!(
        "machine: {processors} cores in /proc/cpuinfo (available_parallelism {parallelism}), CPU \"{model}\""
    );
    println!(
        "PostgreSQL {} on the same machine (fsync={}, synchronous_commit={}); duroxide 0.1.32; release build",
        s.version, s.fsync, s.synchronous_commit
    );
    println!(
        "NOTE: a shared, noisy 2-core box: benchmark, runtime, proxy and server share 2 cores. \
         Numbers are medians of {} interleaved run(s){}.",
        cfg.runs,
        if cfg.quick {
            " (DXBENCH_QUICK: smoke test, not a measurement)"
        } else {
            ""
        }
    );
    println!();
    Ok(())
}

// ---------------------------------------------------------------------------
// (a) stress test

struct PgStress {
    url: String,
}

#[async_trait::async_trait]
impl ProviderStressFactory for PgStress {
    async fn create_provider(&self) -> Arc<dyn Provider> {
        let schema = new_schema("stress");
        Arc::new(
            build_pg(&self.url, &schema)
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        )
    }
}

struct SqliteStress;

#[async_trait::async_trait]
impl ProviderStressFactory for SqliteStress {
    async fn create_provider(&self) -> Arc<dyn Provider> {
        let path =
            std::env::temp_dir().join(format!("dxbench-sqlite-{:016x}.db", rand::random::<u64>()));
        std::fs::File::create(&path).expect("create SQLite file");
        SQLITE_FILES.lock().unwrap().push(path.clone());
        let url = format!("sqlite:{}", path.display());
        Arc::new(
            SqliteProvider::new(&url, None)
                .await
                .expect("open SQLite provider"),
        )
    }
}

#[derive(Default)]
struct StressCell {
    orch: Vec<f64>,
    act: Vec<f64>,
    launched: usize,
    completed: usize,
    failed: usize,
}

struct StressSummary {
    /// (orch, worker) -> (pg, sqlite)
    cells: Vec<((usize, usize), StressCell, StressCell)>,
}

async fn section_a(url: &str, cfg: &Config) -> Res<StressSummary> {
    let concurrencies = [(1usize, 1usize), (2, 2)];
    let mut cells: Vec<((usize, usize), StressCell, StressCell)> = concurrencies
        .iter()
        .map(|c| (*c, StressCell::default(), StressCell::default()))
        .collect();
    let pg = PgStress {
        url: url.to_owned(),
    };
    for run in 0..cfg.runs {
        for (conc, pg_cell, sqlite_cell) in cells.iter_mut() {
            let config = StressTestConfig {
                max_concurrent: 20,
                duration_secs: cfg.stress_secs,
                tasks_per_instance: 5,
                activity_delay_ms: 1,
                orch_concurrency: conc.0,
                worker_concurrency: conc.1,
                ..Default::default()
            };
            for (label, cell) in [("PostgreSQL", &mut *pg_cell), ("SQLite", &mut *sqlite_cell)] {
                progress(format!(
                    "(a) {label} {}:{} run {}/{}",
                    conc.0,
                    conc.1,
                    run + 1,
                    cfg.runs
                ));
                let result = if label == "SQLite" {
                    run_parallel_orchestrations_test_with_config(&SqliteStress, config.clone())
                        .await
                } else {
                    run_parallel_orchestrations_test_with_config(&pg, config.clone()).await
                }
                .map_err(|e| format!("stress test on {label}: {e}"))?;
                cell.orch.push(result.orch_throughput);
                cell.act.push(result.activity_throughput);
                cell.launched += result.launched;
                cell.completed += result.completed;
                cell.failed += result.failed;
            }
        }
    }

    println!(
        "(a) duroxide parallel-orchestrations stress test: max_concurrent 20, {} s, 5 activities per orchestration, \
         1 ms activity delay; median of {} run(s), runs interleaved pg, sqlite, pg, sqlite, ...",
        cfg.stress_secs, cfg.runs
    );
    let mut rows = Vec::new();
    for (conc, pg_cell, sqlite_cell) in &cells {
        for (label, c) in [
            ("PostgreSQL (this crate)", pg_cell),
            ("SQLite file (duroxide)", sqlite_cell),
        ] {
            rows.push(vec![
                format!("{}:{}", conc.0, conc.1),
                label.to_owned(),
                fmt_num(median(&c.orch)),
                fmt_num(median(&c.act)),
                c.failed.to_string(),
                format!("{}/{}", c.completed, c.launched),
                list(&c.orch),
            ]);
        }
        rows.push(vec![
            format!("{}:{}", conc.0, conc.1),
            "ratio PG/SQLite".to_owned(),
            format!(
                "{}x",
                fmt_num(median(&pg_cell.orch) / median(&sqlite_cell.orch))
            ),
            format!(
                "{}x",
                fmt_num(median(&pg_cell.act) / median(&sqlite_cell.act))
            ),
            String::new(),
            String::new(),
            String::new(),
        ]);
    }
    table(
        &[
            "orch:worker",
            "provider",
            "orch/s",
            "activities/s",
            "failed (all runs)",
            "completed/launched",
            "orch/s per run",
        ],
        &rows,
    );
    Ok(StressSummary { cells })
}

// ---------------------------------------------------------------------------
// (b) sequential activities

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Direct,
    Proxy(Duration),
}

impl Path {
    fn label(&self) -> String {
        match self {
            Path::Direct => "direct (localhost)".to_owned(),
            Path::Proxy(d) => format!("proxy, {} ms RTT", d.as_millis() * 2),
        }
    }

    fn rtt_ms(&self) -> f64 {
        match self {
            Path::Direct => 0.0,
            Path::Proxy(d) => ms(*d) * 2.0,
        }
    }
}

struct SeqSample {
    ms_per_step: f64,
    rts_per_step: Option<f64>,
    conns_opened: Option<u64>,
    calls: Calls,
    probe_rtt_ms: f64,
}

async fn sequential_once(url: &str, path: Path) -> Res<SeqSample> {
    let schema = new_schema("seq");
    let host = match path {
        Path::Direct => None,
        Path::Proxy(d) => Some(ProxyHost::start(url, d).await?),
    };
    let purl = host.as_ref().map_or_else(|| url.to_owned(), |h| h.url(url));
    let probe_rtt_ms = probe_rtt(&purl, 10).await?;
    let provider: Arc<dyn Provider> = Arc::new(build_pg(&purl, &schema).await?);
    let tap = Tap::new(provider);
    if let Some(h) = &host {
        let h = Arc::clone(h);
        let _ = tap.probe.set(Box::new(move || h.proxy().snapshot()));
    }
    let rt = runtime::Runtime::start_with_options(
        tap.clone(),
        activities(),
        orchestrations(),
        RuntimeOptions::default(),
    )
    .await;
    let client = Client::new(tap.clone());

    let outcome = async {
        // Warm-up: an identical run opens the pooled connections and
        // prepares every statement on them.
        client
            .start_orchestration("seq-warm", "Seq20", "")
            .await
            .map_err(|e| format!("start: {e}"))?;
        tap.wait_done("seq-warm", WAIT).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;

        let before = tap.calls();
        if let Some(h) = &host {
            h.proxy().reset();
        }
        let t0 = Instant::now();
        client
            .start_orchestration("seq-measured", "Seq20", "")
            .await
            .map_err(|e| format!("start: {e}"))?;
        let done = tap.wait_done("seq-measured", WAIT).await?;
        if done.failed {
            return Err("the measured orchestration failed".to_owned());
        }
        let calls = tap.calls().since(&before);
        let total = done.at.duration_since(t0);
        Ok::<_, String>(SeqSample {
            ms_per_step: ms(total) / STEPS as f64,
            rts_per_step: host
                .as_ref()
                .map(|_| done.proxy.round_trips as f64 / STEPS as f64),
            conns_opened: host.as_ref().map(|_| done.proxy.connections),
            calls,
            probe_rtt_ms,
        })
    }
    .await;
    rt.shutdown(None).await;
    outcome
}

struct SeqSummary {
    rows: Vec<(Path, Vec<SeqSample>)>,
}

impl SeqSummary {
    fn median_ms(&self, path: Path) -> Option<f64> {
        self.rows
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, s)| median(&s.iter().map(|x| x.ms_per_step).collect::<Vec<_>>()))
    }
}

async fn section_b(url: &str, cfg: &Config) -> Res<SeqSummary> {
    let paths = [
        Path::Direct,
        Path::Proxy(Duration::from_millis(5)),
        Path::Proxy(Duration::from_millis(25)),
    ];
    let mut rows: Vec<(Path, Vec<SeqSample>)> = paths.iter().map(|p| (*p, Vec::new())).collect();
    for run in 0..cfg.runs {
        for (path, samples) in rows.iter_mut() {
            progress(format!("(b) {} run {}/{}", path.label(), run + 1, cfg.runs));
            samples.push(sequential_once(url, *path).await?);
        }
    }

    println!(
        "(b) one orchestration, {STEPS} sequential trivial activities, default RuntimeOptions \
         (2 orchestration + 2 worker dispatchers, 100 ms min poll interval, 30 s long poll); \
         ms/step = (start_orchestration call -> final ack returned) / {STEPS}, after a warm-up run; \
         median of {} run(s); floor = 5 round trips x RTT per step",
        cfg.runs
    );
    let mut out = Vec::new();
    for (path, samples) in &rows {
        let msv: Vec<f64> = samples.iter().map(|s| s.ms_per_step).collect();
        let m = median(&msv);
        let rts: Vec<f64> = samples.iter().filter_map(|s| s.rts_per_step).collect();
        let floor = FLOOR_RTS_PER_STEP * path.rtt_ms();
        let probe = median(&samples.iter().map(|s| s.probe_rtt_ms).collect::<Vec<_>>());
        let conns: u64 = samples.iter().filter_map(|s| s.conns_opened).sum();
        out.push(vec![
            path.label(),
            fmt_num(m),
            list(&msv),
            if rts.is_empty() {
                "n/a (no proxy)".to_owned()
            } else {
                fmt_num(median(&rts))
            },
            if floor > 0.0 {
                fmt_num(floor)
            } else {
                "~0".to_owned()
            },
            if floor > 0.0 {
                format!("{}x", fmt_num(m / floor))
            } else {
                "n/a".to_owned()
            },
            fmt_num(probe),
            if rts.is_empty() {
                "n/a".to_owned()
            } else {
                conns.to_string()
            },
        ]);
    }
    table(
        &[
            "path",
            "ms/step",
            "ms/step per run",
            "round trips/step",
            "floor ms/step",
            "ms/step / floor",
            "measured SELECT 1 RTT ms",
            "conns opened while measured",
        ],
        &out,
    );
    println!(
        "provider calls per step seen by the tap (median run's counts are similar; last run shown):"
    );
    let mut call_rows = Vec::new();
    for (path, samples) in &rows {
        if let Some(s) = samples.last() {
            let db_calls = s.calls.db_calls() as f64;
            call_rows.push(vec![
                path.label(),
                fmt_num(db_calls / STEPS as f64),
                s.rts_per_step
                    .map(|r| fmt_num(r * STEPS as f64 / db_calls))
                    .unwrap_or_else(|| "n/a".to_owned()),
                s.calls.describe(STEPS as f64),
            ]);
        }
    }
    table(
        &[
            "path",
            "calls/step",
            "round trips per call",
            "calls per step by method (counted when the call starts)",
        ],
        &call_rows,
    );
    Ok(SeqSummary { rows })
}

// ---------------------------------------------------------------------------
// (c) dispatch latency

struct DispatchSummary {
    from_return: Vec<f64>,
}

async fn section_c(url: &str, cfg: &Config) -> Res<DispatchSummary> {
    progress(format!("(c) dispatch latency, {} samples", cfg.samples));
    let schema = new_schema("dispatch");
    let provider: Arc<dyn Provider> = Arc::new(build_pg(url, &schema).await?);
    let tap = Tap::new(provider);
    let rt = runtime::Runtime::start_with_options(
        tap.clone(),
        activities(),
        orchestrations(),
        RuntimeOptions::default(),
    )
    .await;
    let client = Client::new(tap.clone());

    let outcome = async {
        let mut from_return = Vec::new();
        let mut from_call = Vec::new();
        let mut enqueue = Vec::new();
        for i in 0..(cfg.samples + 3) {
            let gap = 50 + rand::random::<u64>() % 151;
            tokio::time::sleep(Duration::from_millis(gap)).await;
            let id = format!("dispatch-{i}");
            let t_call = Instant::now();
            client
                .start_orchestration(&id, "Quick", "")
                .await
                .map_err(|e| format!("start: {e}"))?;
            let t_ret = Instant::now();
            tap.wait_done(&id, WAIT).await?;
            let picked = tap
                .picked_at(&id)
                .ok_or_else(|| format!("{id} finished without a recorded pickup"))?;
            if i < 3 {
                continue; // warm-up
            }
            let signed = |from: Instant| match picked.checked_duration_since(from) {
                Some(d) => ms(d),
                None => -ms(from.duration_since(picked)),
            };
            from_return.push(signed(t_ret));
            from_call.push(signed(t_call));
            enqueue.push(ms(t_ret.duration_since(t_call)));
        }
        Ok::<_, String>((from_return, from_call, enqueue))
    }
    .await;
    rt.shutdown(None).await;
    let (from_return, from_call, enqueue) = outcome?;

    println!(
        "(c) enqueue-to-pickup dispatch latency on an idle runtime, default RuntimeOptions (100 ms min poll \
         interval, 30 s long poll), {} orchestrations started one at a time with random 50-200 ms idle gaps; \
         pickup = the runtime's fetch_orchestration_item call returning the item (timestamped by a delegating \
         Provider wrapper); negative = picked up before the client's enqueue call had returned",
        from_return.len()
    );
    let row = |label: &str, v: &[f64]| {
        vec![
            label.to_owned(),
            fmt_num(percentile(v, 0.5)),
            fmt_num(percentile(v, 0.99)),
            fmt_num(percentile(v, 0.0)),
            fmt_num(percentile(v, 1.0)),
        ]
    };
    table(
        &["measured from", "p50 ms", "p99 ms", "min ms", "max ms"],
        &[
            row("start_orchestration returned -> pickup", &from_return),
            row("start_orchestration called -> pickup", &from_call),
            row("(start_orchestration call duration)", &enqueue),
        ],
    );
    Ok(DispatchSummary { from_return })
}

// ---------------------------------------------------------------------------
// (d) idle queries

struct IdleSummary {
    qps: f64,
}

async fn section_d(url: &str, cfg: &Config) -> Res<IdleSummary> {
    progress(format!(
        "(d) idle runtime, {:?} warm-up + {} s window",
        cfg.idle_warmup, cfg.idle_secs
    ));
    let schema = new_schema("idle");
    let host = ProxyHost::start(url, Duration::ZERO).await?;
    let provider: Arc<dyn Provider> = Arc::new(build_pg(&host.url(url), &schema).await?);
    let tap = Tap::new(provider);
    let rt = runtime::Runtime::start_with_options(
        tap.clone(),
        activities(),
        orchestrations(),
        RuntimeOptions {
            orchestration_concurrency: 1,
            worker_concurrency: 1,
            ..Default::default()
        },
    )
    .await;
    tokio::time::sleep(cfg.idle_warmup).await;
    let before = tap.calls();
    host.proxy().reset();
    tokio::time::sleep(Duration::from_secs(cfg.idle_secs)).await;
    let snap = host.proxy().snapshot();
    let calls = tap.calls().since(&before);
    rt.shutdown(None).await;

    let qps = snap.round_trips as f64 / cfg.idle_secs as f64;
    println!(
        "(d) round trips sent by an idle runtime (1 orchestration + 1 worker dispatcher, default 30 s long poll), \
         through the proxy with no delay, over {} s after {:?} of warm-up; includes the listener connection",
        cfg.idle_secs, cfg.idle_warmup
    );
    table(
        &[
            "window s",
            "round trips",
            "queries/s",
            "connections opened",
            "provider calls started in window",
        ],
        &[vec![
            cfg.idle_secs.to_string(),
            snap.round_trips.to_string(),
            fmt_num(qps),
            snap.connections.to_string(),
            calls.describe(1.0),
        ]],
    );
    let calls_started = calls.db_calls();
    if snap.round_trips > 2 * calls_started + 2 {
        println!(
            "note: {} round trips but only {calls_started} provider calls started in the window: the \
             queries come from retries inside long-polling fetch calls that were already waiting\n",
            snap.round_trips
        );
    }
    Ok(IdleSummary { qps })
}

// ---------------------------------------------------------------------------
// (e) round trips per hot-path call, each measured alone after a warm-up call
// of the same kind (as tests/round_trips.rs asserts).

struct PerCall {
    rows: Vec<(&'static str, u64, u64)>,
}

async fn section_e(url: &str) -> Res<PerCall> {
    progress("(e) round trips per hot-path call");
    const LOCK: Duration = Duration::from_secs(30);
    let schema = new_schema("percall");
    let host = ProxyHost::start(url, Duration::ZERO).await?;
    let p = build_pg(&host.url(url), &schema).await?;
    let px = host.proxy();
    let mut rows: Vec<(&'static str, u64, u64)> = Vec::new();
    let e = |what: &'static str| move |err: ProviderError| format!("{what}: {err}");
    let some = |what: &'static str| format!("{what}: nothing to fetch");

    macro_rules! measure {
        ($name:expr, $call:expr) => {{
            let (out, snap) = px.measure_snapshot($call).await;
            rows.push(($name, snap.round_trips, snap.connections));
            out
        }};
    }

    // Orchestrator queue.
    p.enqueue_for_orchestrator(start_item("a"), None)
        .await
        .map_err(e("enqueue"))?;
    measure!(
        "enqueue_for_orchestrator",
        p.enqueue_for_orchestrator(start_item("b"), None)
    )
    .map_err(e("enqueue"))?;
    let (ia, ta, _) = p
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .map_err(e("fetch"))?
        .ok_or_else(|| some("fetch"))?;
    let (ib, tb, _) = measure!(
        "fetch_orchestration_item",
        p.fetch_orchestration_item(LOCK, Duration::ZERO, None)
    )
    .map_err(e("fetch"))?
    .ok_or_else(|| some("fetch"))?;
    items::ack_first_turn(&p, &ia.instance, &ta)
        .await
        .map_err(e("ack first turn"))?;
    measure!(
        "ack_orchestration_item",
        items::ack_first_turn(&p, &ib.instance, &tb)
    )
    .map_err(e("ack first turn"))?;
    p.read(&ia.instance).await.map_err(e("read"))?;
    measure!("read", p.read(&ib.instance)).map_err(e("read"))?;

    p.enqueue_for_orchestrator(start_item("c"), None)
        .await
        .map_err(e("enqueue"))?;
    let (_, tc, _) = p
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .map_err(e("fetch"))?
        .ok_or_else(|| some("fetch"))?;
    p.renew_orchestration_item_lock(&tc, LOCK)
        .await
        .map_err(e("renew"))?;
    measure!(
        "renew_orchestration_item_lock",
        p.renew_orchestration_item_lock(&tc, LOCK)
    )
    .map_err(e("renew"))?;
    p.abandon_orchestration_item(&tc, None, false)
        .await
        .map_err(e("abandon"))?;
    let (_, tc, _) = p
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .map_err(e("fetch"))?
        .ok_or_else(|| some("fetch"))?;
    measure!(
        "abandon_orchestration_item",
        p.abandon_orchestration_item(&tc, None, false)
    )
    .map_err(e("abandon"))?;

    // Worker queue.
    p.enqueue_for_worker(activity_item("a", 1))
        .await
        .map_err(e("enqueue worker"))?;
    measure!(
        "enqueue_for_worker",
        p.enqueue_for_worker(activity_item("a", 2))
    )
    .map_err(e("enqueue worker"))?;
    p.enqueue_for_worker(activity_item("a", 3))
        .await
        .map_err(e("enqueue worker"))?;
    let filter = TagFilter::DefaultOnly;
    let (_, w1, _) = p
        .fetch_work_item(LOCK, Duration::ZERO, None, &filter)
        .await
        .map_err(e("fetch work"))?
        .ok_or_else(|| some("fetch work"))?;
    let (_, w2, _) = measure!(
        "fetch_work_item",
        p.fetch_work_item(LOCK, Duration::ZERO, None, &filter)
    )
    .map_err(e("fetch work"))?
    .ok_or_else(|| some("fetch work"))?;
    p.ack_work_item(&w1, Some(completion_item("a", 1)))
        .await
        .map_err(e("ack work"))?;
    measure!(
        "ack_work_item",
        p.ack_work_item(&w2, Some(completion_item("a", 2)))
    )
    .map_err(e("ack work"))?;
    let (_, w3, _) = p
        .fetch_work_item(LOCK, Duration::ZERO, None, &filter)
        .await
        .map_err(e("fetch work"))?
        .ok_or_else(|| some("fetch work"))?;
    p.renew_work_item_lock(&w3, LOCK)
        .await
        .map_err(e("renew work"))?;
    measure!("renew_work_item_lock", p.renew_work_item_lock(&w3, LOCK)).map_err(e("renew work"))?;
    p.abandon_work_item(&w3, None, false)
        .await
        .map_err(e("abandon work"))?;
    let (_, w3, _) = p
        .fetch_work_item(LOCK, Duration::ZERO, None, &filter)
        .await
        .map_err(e("fetch work"))?
        .ok_or_else(|| some("fetch work"))?;
    measure!("abandon_work_item", p.abandon_work_item(&w3, None, false))
        .map_err(e("abandon work"))?;

    drop(p);
    println!(
        "(e) round trips per hot-path call, each call measured alone on a warm pooled connection \
         (proxy, no delay)"
    );
    table(
        &["call", "round trips", "connections opened"],
        &rows
            .iter()
            .map(|(n, r, c)| vec![(*n).to_owned(), r.to_string(), c.to_string()])
            .collect::<Vec<_>>(),
    );
    Ok(PerCall { rows })
}

// ---------------------------------------------------------------------------

struct Results {
    a: Option<StressSummary>,
    b: Option<SeqSummary>,
    c: Option<DispatchSummary>,
    d: Option<IdleSummary>,
    e: Option<PerCall>,
}

fn print_targets(r: &Results) {
    println!("Targets (issue 4), measured in this run:");
    let mut rows = Vec::new();

    let per_call =
        r.e.as_ref()
            .map(|e| e.rows.iter().map(|x| x.1).max().unwrap_or(0));
    rows.push(vec![
        "round trips per hot-path call".to_owned(),
        "1".to_owned(),
        per_call
            .map(|m| {
                format!(
                    "max {m} over {} calls (e)",
                    r.e.as_ref().map_or(0, |e| e.rows.len())
                )
            })
            .unwrap_or_else(|| "n/a".to_owned()),
        verdict(per_call.map(|m| m <= 1)).to_owned(),
    ]);

    let at50 =
        r.b.as_ref()
            .and_then(|b| b.median_ms(Path::Proxy(Duration::from_millis(25))));
    let floor50 = FLOOR_RTS_PER_STEP * 50.0;
    rows.push(vec![
        "ms/step at 50 ms RTT".to_owned(),
        format!("<= 1.1 x floor = {} ms", fmt_num(1.1 * floor50)),
        at50.map(|m| format!("{} ms = {}x floor", fmt_num(m), fmt_num(m / floor50)))
            .unwrap_or_else(|| "n/a".to_owned()),
        verdict(at50.map(|m| m <= 1.1 * floor50)).to_owned(),
    ]);

    let local = r.b.as_ref().and_then(|b| b.median_ms(Path::Direct));
    rows.push(vec![
        "ms/step on localhost, default poll interval".to_owned(),
        "<= 5 ms".to_owned(),
        local
            .map(|m| format!("{} ms", fmt_num(m)))
            .unwrap_or_else(|| "n/a".to_owned()),
        verdict(local.map(|m| m <= 5.0)).to_owned(),
    ]);

    let p50 = r.c.as_ref().map(|c| percentile(&c.from_return, 0.5));
    rows.push(vec![
        "dispatch latency p50, localhost".to_owned(),
        "<= 5 ms".to_owned(),
        p50.map(|m| format!("{} ms", fmt_num(m)))
            .unwrap_or_else(|| "n/a".to_owned()),
        verdict(p50.map(|m| m <= 5.0)).to_owned(),
    ]);

    let qps = r.d.as_ref().map(|d| d.qps);
    rows.push(vec![
        "idle queries/s per runtime".to_owned(),
        "<= 1".to_owned(),
        qps.map(fmt_num).unwrap_or_else(|| "n/a".to_owned()),
        verdict(qps.map(|q| q <= 1.0)).to_owned(),
    ]);

    let stress = r.a.as_ref().and_then(|a| {
        a.cells
            .iter()
            .find(|(c, _, _)| *c == (2, 2))
            .map(|(_, pg, sq)| (median(&pg.orch) / median(&sq.orch), pg.failed))
    });
    rows.push(vec![
        "stress throughput at 2:2 vs SQLite".to_owned(),
        ">= 2x, 0 failed".to_owned(),
        stress
            .map(|(ratio, failed)| format!("{}x, {failed} failed", fmt_num(ratio)))
            .unwrap_or_else(|| "n/a".to_owned()),
        verdict(stress.map(|(ratio, failed)| ratio >= 2.0 && failed == 0)).to_owned(),
    ]);

    table(&["target", "goal", "measured", "verdict"], &rows);
}

async fn run(cfg: Config) -> Res<()> {
    let url = tokio::task::spawn_blocking(pg::database_url)
        .await
        .map_err(|e| format!("start PostgreSQL: {e}"))?;
    machine_note(&url, &cfg).await?;
    let started = Instant::now();
    let mut results = Results {
        a: None,
        b: None,
        c: None,
        d: None,
        e: None,
    };
    let report = |section: char, err: String| {
        println!("({section}) FAILED: {err}\n");
    };
    // Runs one section when selected; a failed section is reported and the
    // others still run.
    macro_rules! run_section {
        ($letter:literal, $field:ident, $call:expr) => {
            if cfg.wants($letter) {
                match $call.await {
                    Ok(v) => results.$field = Some(v),
                    Err(err) => report($letter, err),
                }
            }
        };
    }
    run_section!('a', a, section_a(&url, &cfg));
    run_section!('b', b, section_b(&url, &cfg));
    run_section!('c', c, section_c(&url, &cfg));
    run_section!('d', d, section_d(&url, &cfg));
    run_section!('e', e, section_e(&url));
    print_targets(&results);
    println!(
        "total benchmark time: {:.0} s",
        started.elapsed().as_secs_f64()
    );
    drop_schemas(&url).await;
    Ok(())
}

fn main() {
    // Installed before any duroxide runtime starts, so the runtime's own
    // logging setup (which writes to stdout) backs off: stdout keeps the
    // tables, warnings go to stderr. RUST_LOG overrides the level.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let cfg = Config::from_env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(cfg)) {
        eprintln!("provider_bench failed: {e}");
        std::process::exit(1);
    }
}

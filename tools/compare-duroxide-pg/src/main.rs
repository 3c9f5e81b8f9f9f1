//! duroxide's parallel-orchestrations stress test on duroxide-diesel, on
//! duroxide-pg and on duroxide's SQLite providers, side by side in one run:
//! throughput, and CPU per completed orchestration on each side of the
//! connection; then again behind a TCP proxy that delays every packet.
//!
//! Run (release build, about 15 minutes with the defaults):
//!
//! ```text
//! cargo run --release --manifest-path tools/compare-duroxide-pg/Cargo.toml
//! ```
//!
//! Knobs (environment): `COMPARE_RUNS` (default 3, runs interleaved),
//! `COMPARE_SECS` (seconds per stress run, default 10), `COMPARE_DELAYS`
//! (one-way delays in ms added by the proxy, default `0,0.5,2`; 0 means a
//! direct connection), `COMPARE_CONC` (orch:worker concurrencies, default
//! `1:1,2:2`), `COMPARE_PROVIDERS` (any of
//! `diesel,diesel-unbatched,diesel-batched,diesel-no-ahead,pg,sqlite-file,sqlite-memory`,
//! default all; the SQLite ones run only without added delay; `diesel` is
//! duroxide-diesel with its defaults, `diesel-unbatched` with a zero
//! `completion_batch_window`, `diesel-batched` with the window set to
//! `COMPARE_BATCH_MS`, default 10, the default window, `diesel-no-ahead`
//! with a zero `next_activity_window`), `DATABASE_URL`
//! (otherwise the benchmark's throwaway cluster,
//! see the testkit), `RUST_LOG`.
//!
//! CPU is read from `/proc`: the client is this process (runtime, provider
//! and, behind the proxy, the proxy thread, so client CPU is reported for
//! direct runs only); the server is the postmaster and every process it
//! started (backends, WAL writer, checkpointer, autovacuum), counted
//! through the postmaster's reaped-children times once a backend exits. So
//! the server must run on this machine for the server column.
//!
//! A last pass runs each PostgreSQL provider alone with `track_functions = pl` and
//! prints server time per stored function per orchestration
//! (`pg_stat_user_functions`), kept apart so the timing overhead does not
//! touch the comparison. For duroxide-diesel that pass also counts the
//! history reads and custom status calls answered without a round trip (its
//! metrics counters, through a recorder installed when that pass starts,
//! after every compared run).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use duroxide::provider_stress_tests::parallel_orchestrations::{
    ProviderStressFactory, run_parallel_orchestrations_test_with_config,
};
use duroxide::provider_stress_tests::{StressTestConfig, StressTestResult};
use duroxide::providers::Provider;
use duroxide::providers::sqlite::SqliteProvider;
use duroxide_diesel_testkit::cpu::{self, Cpu};
use duroxide_diesel_testkit::{db, pg, proxy::ProxyThread};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

type Res<T> = Result<T, String>;

/// The providers under comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// duroxide-diesel with its defaults.
    Diesel,
    /// duroxide-diesel without a `completion_batch_window`.
    DieselUnbatched,
    /// duroxide-diesel with a `completion_batch_window` of `COMPARE_BATCH_MS`.
    DieselBatched,
    /// duroxide-diesel without a `next_activity_window`: every worker fetch
    /// goes to the server.
    DieselNoAhead,
    DuroxidePg,
    SqliteFile,
    SqliteMemory,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Diesel => "duroxide-diesel",
            Kind::DieselUnbatched => "duroxide-diesel, no batch window",
            Kind::DieselBatched => "duroxide-diesel, batched completions",
            Kind::DieselNoAhead => "duroxide-diesel, no next-activity window",
            Kind::DuroxidePg => "duroxide-pg 0.1.38",
            Kind::SqliteFile => "SQLite file (duroxide)",
            Kind::SqliteMemory => "SQLite in memory (duroxide)",
        }
    }

    /// The name `COMPARE_PROVIDERS` selects it by.
    fn key(self) -> &'static str {
        match self {
            Kind::Diesel => "diesel",
            Kind::DieselUnbatched => "diesel-unbatched",
            Kind::DieselBatched => "diesel-batched",
            Kind::DieselNoAhead => "diesel-no-ahead",
            Kind::DuroxidePg => "pg",
            Kind::SqliteFile => "sqlite-file",
            Kind::SqliteMemory => "sqlite-memory",
        }
    }

    fn is_postgres(self) -> bool {
        self.is_diesel() || self == Kind::DuroxidePg
    }

    /// One of this crate's configurations.
    fn is_diesel(self) -> bool {
        matches!(
            self,
            Kind::Diesel | Kind::DieselUnbatched | Kind::DieselBatched | Kind::DieselNoAhead
        )
    }
}

/// Builds one provider per stress run on a fresh schema or file.
struct Factory {
    kind: Kind,
    url: String,
    schemas: Arc<Mutex<Vec<String>>>,
    files: Arc<Mutex<Vec<std::path::PathBuf>>>,
}

#[async_trait::async_trait]
impl ProviderStressFactory for Factory {
    async fn create_provider(&self) -> Arc<dyn Provider> {
        let schema = |tag: &str| {
            let s = db::unique_schema(tag);
            self.schemas.lock().unwrap().push(s.clone());
            s
        };
        match self.kind {
            Kind::Diesel => {
                let s = schema("dxcmp_d");
                Arc::new(
                    duroxide_diesel::PostgresProvider::new_with_schema(&self.url, Some(&s))
                        .await
                        .unwrap_or_else(|e| panic!("duroxide-diesel on {s}: {e}")),
                )
            }
            Kind::DieselUnbatched | Kind::DieselBatched => {
                let (tag, window) = if self.kind == Kind::DieselBatched {
                    ("dxcmp_b", batch_window())
                } else {
                    ("dxcmp_u", Duration::ZERO)
                };
                let s = schema(tag);
                Arc::new(
                    duroxide_diesel::PostgresProvider::builder(&self.url)
                        .schema(&s)
                        .completion_batch_window(window)
                        .build()
                        .await
                        .unwrap_or_else(|e| panic!("duroxide-diesel ({window:?}) on {s}: {e}")),
                )
            }
            Kind::DieselNoAhead => {
                let s = schema("dxcmp_n");
                Arc::new(
                    duroxide_diesel::PostgresProvider::builder(&self.url)
                        .schema(&s)
                        .next_activity_window(Duration::ZERO)
                        .build()
                        .await
                        .unwrap_or_else(|e| panic!("duroxide-diesel (no window) on {s}: {e}")),
                )
            }
            Kind::DuroxidePg => {
                let s = schema("dxcmp_p");
                Arc::new(
                    duroxide_pg::PostgresProvider::new_with_schema(&self.url, Some(&s))
                        .await
                        .unwrap_or_else(|e| panic!("duroxide-pg on {s}: {e}")),
                )
            }
            Kind::SqliteFile => {
                let path =
                    std::env::temp_dir().join(format!("dxcmp-{:016x}.db", rand::random::<u64>()));
                std::fs::File::create(&path).expect("create SQLite file");
                self.files.lock().unwrap().push(path.clone());
                Arc::new(
                    SqliteProvider::new(&format!("sqlite:{}", path.display()), None)
                        .await
                        .expect("open SQLite file"),
                )
            }
            Kind::SqliteMemory => Arc::new(
                SqliteProvider::new_in_memory()
                    .await
                    .expect("open SQLite in memory"),
            ),
        }
    }
}

/// One provider's runs at one delay and concurrency.
#[derive(Default)]
struct Cell {
    orch: Vec<f64>,
    completed: usize,
    launched: usize,
    failed: usize,
    client_ticks: u64,
    server_ticks: u64,
}

impl Cell {
    fn add(&mut self, r: &StressTestResult, used: Cpu) {
        self.orch.push(r.orch_throughput);
        self.completed += r.completed;
        self.launched += r.launched;
        self.failed += r.failed;
        self.client_ticks += used.client;
        self.server_ticks += used.server;
    }

    /// CPU milliseconds per completed orchestration.
    fn per_orch(&self, ticks: u64, hz: f64) -> f64 {
        if self.completed == 0 {
            return f64::NAN;
        }
        ticks as f64 * 1000.0 / hz / self.completed as f64
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn num(x: f64) -> String {
    if x.is_nan() {
        "-".to_owned()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn table(header: &[&str], rows: &[Vec<String>]) {
    println!("| {} |", header.join(" | "));
    println!("|{}", "---|".repeat(header.len()));
    for r in rows {
        println!("| {} |", r.join(" | "));
    }
    println!();
}

struct Settings {
    providers: Vec<Kind>,
    runs: usize,
    secs: u64,
    delays: Vec<f64>,
    concs: Vec<(usize, usize)>,
}

impl Settings {
    fn from_env() -> Res<Self> {
        let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
        let parse_num = |k: &str, v: String| -> Res<u64> {
            v.parse().map_err(|_| format!("{k}: not a number: {v}"))
        };
        let delays = var("COMPARE_DELAYS", "0,0.5,2")
            .split(',')
            .map(|d| {
                d.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|d| *d >= 0.0)
                    .ok_or_else(|| format!("COMPARE_DELAYS: not a delay in ms: {d}"))
            })
            .collect::<Res<Vec<_>>>()?;
        let concs = var("COMPARE_CONC", "1:1,2:2")
            .split(',')
            .map(|c| {
                let (o, w) = c
                    .trim()
                    .split_once(':')
                    .ok_or_else(|| format!("COMPARE_CONC: not orch:worker: {c}"))?;
                let p = |x: &str| {
                    x.parse::<usize>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("COMPARE_CONC: not a concurrency: {c}"))
                };
                Ok((p(o)?, p(w)?))
            })
            .collect::<Res<Vec<_>>>()?;
        let all = [
            Kind::Diesel,
            Kind::DieselUnbatched,
            Kind::DieselBatched,
            Kind::DieselNoAhead,
            Kind::DuroxidePg,
            Kind::SqliteFile,
            Kind::SqliteMemory,
        ];
        let providers = var(
            "COMPARE_PROVIDERS",
            "diesel,diesel-unbatched,diesel-batched,diesel-no-ahead,pg,sqlite-file,sqlite-memory",
        )
        .split(',')
        .map(|p| {
            all.into_iter()
                .find(|k| k.key() == p.trim())
                .ok_or_else(|| format!("COMPARE_PROVIDERS: unknown provider {p}"))
        })
        .collect::<Res<Vec<_>>>()?;
        Ok(Self {
            providers,
            runs: parse_num("COMPARE_RUNS", var("COMPARE_RUNS", "3"))?.max(1) as usize,
            secs: parse_num("COMPARE_SECS", var("COMPARE_SECS", "10"))?.max(1),
            delays,
            concs,
        })
    }
}

fn stress_config(secs: u64, conc: (usize, usize)) -> StressTestConfig {
    StressTestConfig {
        max_concurrent: 20,
        duration_secs: secs,
        tasks_per_instance: 5,
        activity_delay_ms: 1,
        orch_concurrency: conc.0,
        worker_concurrency: conc.1,
        ..Default::default()
    }
}

#[derive(QueryableByName)]
struct FunctionTime {
    #[diesel(sql_type = diesel::sql_types::Text)]
    funcname: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    calls: i64,
    #[diesel(sql_type = diesel::sql_types::Double)]
    total_ms: f64,
    #[diesel(sql_type = diesel::sql_types::Double)]
    self_ms: f64,
}

/// The global metrics recorder, installed by the first call (the
/// function-time pass, after every measured run, so its bookkeeping
/// touches no comparison).
fn snapshotter() -> &'static Snapshotter {
    static S: std::sync::OnceLock<Snapshotter> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("no other metrics recorder");
        snapshotter
    })
}

/// Each counter's increments since the last call, summed over its labels
/// (a snapshot of the debugging recorder drains every counter).
fn drain_counters() -> std::collections::HashMap<String, u64> {
    let mut out = std::collections::HashMap::new();
    for (key, _, _, value) in snapshotter().snapshot().into_vec() {
        if let DebugValue::Counter(n) = value {
            *out.entry(key.key().name().to_owned()).or_insert(0) += n;
        }
    }
    out
}

/// duroxide-diesel's count of history reads answered from its cache.
const READS_CACHED: &str = "provider.reads_answered_from_cache";
/// duroxide-diesel's count of status calls answered from a read.
const STATUSES_FROM_READS: &str = "provider.statuses_answered_from_reads";
/// duroxide-diesel's count of worker fetches answered by an activity the
/// previous ack claimed.
const CLAIMED_AHEAD: &str = "provider.activities_claimed_ahead";
/// duroxide-diesel's count of activities an ack claimed that no fetch took.
const CLAIMED_AHEAD_RELEASED: &str = "provider.activities_claimed_ahead_released";

/// One PostgreSQL provider alone with `track_functions = pl`: server time
/// per stored function per completed orchestration, and for duroxide-diesel
/// the history reads its cache answered, the status calls its reads
/// answered and the worker fetches its acks answered.
async fn function_times(
    kind: Kind,
    url: &str,
    s: &Settings,
    schemas: &Arc<Mutex<Vec<String>>>,
    files: &Arc<Mutex<Vec<std::path::PathBuf>>>,
) -> Res<()> {
    let tracked = pg::url_with_settings(url, &["track_functions=pl"]);
    for conc in &s.concs {
        let factory = Factory {
            kind,
            url: tracked.clone(),
            schemas: Arc::clone(schemas),
            files: Arc::clone(files),
        };
        eprintln!(
            "[compare] function times, {}, {}:{}",
            kind.label(),
            conc.0,
            conc.1
        );
        // The factory names the schema; remember which one this pass made.
        let before = schemas.lock().unwrap().len();
        drain_counters();
        let r =
            run_parallel_orchestrations_test_with_config(&factory, stress_config(s.secs, *conc))
                .await
                .map_err(|e| format!("stress (function times): {e}"))?;
        let counted = drain_counters();
        let cached = counted.get(READS_CACHED).copied().unwrap_or(0);
        let statuses = counted.get(STATUSES_FROM_READS).copied().unwrap_or(0);
        let ahead = counted.get(CLAIMED_AHEAD).copied().unwrap_or(0);
        let released = counted.get(CLAIMED_AHEAD_RELEASED).copied().unwrap_or(0);
        let made: Vec<String> = schemas.lock().unwrap()[before..].to_vec();
        // Backends report their function statistics when they exit (the
        // pool closed with the provider) or within a second when idle.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut conn = AsyncPgConnection::establish(url)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let list = made
            .iter()
            .map(|m| format!("'{}'", m.replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(",");
        let rows: Vec<FunctionTime> = diesel::sql_query(format!(
            "SELECT funcname::text AS funcname, sum(calls)::bigint AS calls, \
             sum(total_time)::float8 AS total_ms, sum(self_time)::float8 AS self_ms \
             FROM pg_stat_user_functions WHERE schemaname IN ({list}) \
             GROUP BY funcname ORDER BY 3 DESC"
        ))
        .load(&mut conn)
        .await
        .map_err(|e| format!("pg_stat_user_functions: {e}"))?;
        let n = r.completed.max(1) as f64;
        println!(
            "server time per stored function, {}, {}:{}, {} orchestrations completed \
             ({} orch/s; track_functions=pl adds its own timing overhead)",
            kind.label(),
            conc.0,
            conc.1,
            r.completed,
            num(r.orch_throughput)
        );
        let total: f64 = rows.iter().map(|r| r.self_ms).sum();
        let mut out: Vec<Vec<String>> = rows
            .iter()
            .map(|f| {
                vec![
                    f.funcname.clone(),
                    num(f.calls as f64 / n),
                    num(f.total_ms / f.calls.max(1) as f64),
                    num(f.self_ms / n),
                    format!("{:.0}%", 100.0 * f.self_ms / total.max(f64::MIN_POSITIVE)),
                ]
            })
            .collect();
        out.push(vec![
            "all functions".to_owned(),
            String::new(),
            String::new(),
            num(total / n),
            "100%".to_owned(),
        ]);
        if kind != Kind::DuroxidePg {
            let sent = rows
                .iter()
                .find(|f| f.funcname == "dx_read_history")
                .map_or(0, |f| f.calls);
            println!(
                "history reads per orchestration: {} answered from the cache, {} sent \
                 (dx_read_history calls); status calls answered from a read: {}",
                num(cached as f64 / n),
                num(sent as f64 / n),
                num(statuses as f64 / n)
            );
            println!(
                "worker fetches per orchestration answered by the ack before them: {}; \
                 activities claimed by an ack and released unused: {}",
                num(ahead as f64 / n),
                num(released as f64 / n)
            );
        }
        table(
            &[
                "function",
                "calls/orch",
                "ms/call (total)",
                "self ms/orch",
                "share",
            ],
            &out,
        );
    }
    Ok(())
}

async fn run() -> Res<()> {
    let s = Settings::from_env()?;
    let url = tokio::task::spawn_blocking(pg::benchmark_database_url)
        .await
        .map_err(|e| format!("start PostgreSQL: {e}"))?;
    let postmaster = cpu::postmaster_pid(&url).await;
    let hz = cpu::ticks_per_second();
    let settings = db::scalar(
        &url,
        "current_setting('server_version') || ', fsync=' || current_setting('fsync') || \
         ', synchronous_commit=' || current_setting('synchronous_commit') || \
         ', full_page_writes=' || current_setting('full_page_writes') || \
         ', ssl=' || current_setting('ssl')",
    )
    .await
    .map_err(|e| format!("server settings: {e}"))?
    .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("== duroxide-diesel vs duroxide-pg vs SQLite ==");
    println!(
        "PostgreSQL {settings}; {cores} cores; runtime, providers, proxy and server share them; \
         server CPU {}",
        if postmaster.is_some() {
            "read from /proc"
        } else {
            "not available (server not on this machine)"
        }
    );
    println!(
        "duroxide parallel-orchestrations stress test: max_concurrent 20, {} s, 5 activities of \
         1 ms per orchestration; median of {} run(s), providers interleaved in every run",
        s.secs, s.runs
    );
    println!();

    let schemas = Arc::new(Mutex::new(Vec::new()));
    let files = Arc::new(Mutex::new(Vec::new()));
    let mut outcome = Ok(());
    for &delay in &s.delays {
        let proxy = if delay > 0.0 {
            Some(
                ProxyThread::for_url(&url, Duration::from_secs_f64(delay / 1000.0))
                    .await
                    .map_err(|e| format!("start proxy: {e}"))?,
            )
        } else {
            None
        };
        let target = proxy
            .as_ref()
            .map_or_else(|| url.clone(), |p| p.proxy().url(&url));
        let kinds: Vec<Kind> = s
            .providers
            .iter()
            .copied()
            .filter(|k| proxy.is_none() || k.is_postgres())
            .collect();
        let mut cells: Vec<((usize, usize), Kind, Cell)> = s
            .concs
            .iter()
            .flat_map(|c| kinds.iter().map(move |k| (*c, *k, Cell::default())))
            .collect();
        for run in 0..s.runs {
            for (conc, kind, cell) in cells.iter_mut() {
                eprintln!(
                    "[compare] delay {delay} ms, {}:{}, {}, run {}/{}",
                    conc.0,
                    conc.1,
                    kind.label(),
                    run + 1,
                    s.runs
                );
                let factory = Factory {
                    kind: *kind,
                    url: target.clone(),
                    schemas: Arc::clone(&schemas),
                    files: Arc::clone(&files),
                };
                let before = Cpu::now(postmaster);
                let r = run_parallel_orchestrations_test_with_config(
                    &factory,
                    stress_config(s.secs, *conc),
                )
                .await
                .map_err(|e| format!("stress on {}: {e}", kind.label()))?;
                cell.add(&r, Cpu::now(postmaster).since(before));
            }
        }
        println!(
            "{}",
            if delay > 0.0 {
                format!(
                    "behind the proxy: +{delay} ms each way ({} ms RTT added)",
                    2.0 * delay
                )
            } else {
                "direct connection".to_owned()
            }
        );
        let mut rows = Vec::new();
        for conc in &s.concs {
            let pg_rate = cells
                .iter()
                .find(|(c, k, _)| c == conc && *k == Kind::DuroxidePg)
                .map_or(f64::NAN, |(_, _, cell)| median(&cell.orch));
            for (_, kind, cell) in cells.iter().filter(|(c, _, _)| c == conc) {
                let rate = median(&cell.orch);
                let direct = proxy.is_none();
                rows.push(vec![
                    format!("{}:{}", conc.0, conc.1),
                    kind.label().to_owned(),
                    num(rate),
                    format!("{}x", num(rate / pg_rate)),
                    format!("{}", cell.failed),
                    format!("{}/{}", cell.completed, cell.launched),
                    if direct {
                        num(cell.per_orch(cell.client_ticks, hz))
                    } else {
                        "-".to_owned()
                    },
                    if kind.is_postgres() && postmaster.is_some() {
                        num(cell.per_orch(cell.server_ticks, hz))
                    } else {
                        "-".to_owned()
                    },
                    cell.orch
                        .iter()
                        .map(|x| num(*x))
                        .collect::<Vec<_>>()
                        .join(", "),
                ]);
            }
        }
        table(
            &[
                "orch:worker",
                "provider",
                "orch/s",
                "vs duroxide-pg",
                "failed",
                "completed/launched",
                "client CPU ms/orch",
                "server CPU ms/orch",
                "orch/s per run",
            ],
            &rows,
        );
        // Failures of the other providers are theirs to explain and show
        // in the table; failures of this crate's provider fail the run.
        if cells.iter().any(|(_, k, c)| k.is_diesel() && c.failed > 0) {
            outcome = Err("duroxide-diesel orchestrations failed (see the tables)".to_owned());
        }
    }
    if s.delays.contains(&0.0) {
        for kind in [
            Kind::Diesel,
            Kind::DieselUnbatched,
            Kind::DieselBatched,
            Kind::DieselNoAhead,
            Kind::DuroxidePg,
        ] {
            if s.providers.contains(&kind) {
                function_times(kind, &url, &s, &schemas, &files).await?;
            }
        }
    }
    let made = std::mem::take(&mut *schemas.lock().unwrap());
    for schema in made {
        if let Err(e) = db::drop_schema(&url, &schema).await {
            eprintln!("[compare] could not drop schema {schema}: {e}");
        }
    }
    for f in std::mem::take(&mut *files.lock().unwrap()) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = f.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(std::path::PathBuf::from(p));
        }
    }
    outcome
}

/// `completion_batch_window` of the `diesel-batched` provider
/// (`COMPARE_BATCH_MS`, default 10 ms).
fn batch_window() -> Duration {
    let ms = std::env::var("COMPARE_BATCH_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    Duration::from_millis(ms)
}

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run()) {
        eprintln!("compare-duroxide-pg failed: {e}");
        std::process::exit(1);
    }
}

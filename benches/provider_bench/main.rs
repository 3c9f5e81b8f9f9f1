//! Side-by-side benchmark of the PostgreSQL provider.
//!
//! Run: `cargo bench --bench provider_bench` (release build, ~4-6 minutes).
//! Smoke test: `DXBENCH_QUICK=1 cargo bench --bench provider_bench`.
//!
//! Sections, all in one run, printed as tables, one module each:
//!   (a) [`stress`]: duroxide's parallel-orchestrations stress test, this
//!       provider vs duroxide's SQLite file provider, orch:worker 1:1 and
//!       2:2, runs interleaved (pg, sqlite, pg, sqlite, ...);
//!   (b) [`sequential`]: one orchestration running 20 sequential
//!       activities: ms per step, directly and through a delaying TCP proxy
//!       (10 ms and 50 ms RTT), with round trips per step and the
//!       5-round-trip floor;
//!   (c) [`dispatch`]: enqueue-to-pickup dispatch latency on an idle runtime;
//!   (d) [`idle`]: round trips per second sent by an idle runtime;
//!   (e) [`per_call`]: round trips per hot-path call, each call measured alone;
//!   (f) [`pooler`]: the stress test at 2:2 directly and through PgBouncer
//!       in transaction pooling mode, runs interleaved;
//!   (g) [`history_length`]: ms and bytes over the wire per step of chains
//!       of 20, 200 and 1000 activities (turn cost against history length),
//!       with the history cache on and off;
//!   (h) [`backlog`]: the drain rate of 10,000 orchestrations started at
//!       once against the steady-state rate;
//!   (i) [`processes`]: 1, 2 and 4 runtimes in separate processes (this
//!       binary in child mode) draining one backlog on one schema: total
//!       rate, each process's share, CPU per orchestration;
//!   (j) [`churn`]: the steady rate of (h) on one schema, fresh and after
//!       200,000 orchestrations completed on it (`DXBENCH_CHURN`), keeping
//!       or pruning completed instances (about 25 minutes of the full run).
//!
//! Conditions: the server's durable defaults (fsync, synchronous_commit and
//! full_page_writes on). Without `DATABASE_URL` the testkit starts a
//! throwaway cluster of the benchmark's own with those settings (port
//! `DUROXIDE_BENCH_PG_PORT`, default the test cluster's port plus 20); the
//! machine note at the top prints the settings and TLS state the server
//! reports.
//!
//! A section that fails is reported and the others still run; the exit
//! status is then 1.
//!
//! Knobs (environment): DXBENCH_QUICK=1 (1 run, 3 s stress, fewer samples),
//! DXBENCH_RUNS, DXBENCH_STRESS_SECS, DXBENCH_SAMPLES (dispatch latency),
//! DXBENCH_IDLE_SECS, DXBENCH_CHURN, DXBENCH_CHURN_CURVES (`kept` or
//! `pruned`), DXBENCH_AUTOVACUUM_NAPTIME (seconds; sets the server's
//! `autovacuum_naptime` for the churn section, reset after),
//! DXBENCH_SECTIONS (e.g. "bd"), DATABASE_URL, DUROXIDE_BENCH_PG_PORT,
//! RUST_LOG.

mod backlog;
mod churn;
mod conditions;
mod config;
mod dispatch;
mod history_length;
mod idle;
mod per_call;
mod pooler;
mod processes;
mod registries;
mod report;
mod sequential;
mod setup;
mod stress;
mod tap;
mod targets;

use std::time::{Duration, Instant};

use duroxide_diesel_testkit::pg;

use config::Config;
use targets::Results;

type Res<T> = Result<T, String>;

/// How long a section waits for one orchestration to finish.
const WAIT: Duration = Duration::from_secs(120);

async fn run(cfg: Config) -> Res<()> {
    let url = tokio::task::spawn_blocking(pg::benchmark_database_url)
        .await
        .map_err(|e| format!("start PostgreSQL: {e}"))?;
    conditions::machine_note(&url, &cfg).await?;
    let started = Instant::now();
    let mut results = Results::default();
    let mut failed = Vec::new();
    let mut report = |section: char, err: String| {
        println!("({section}) FAILED: {err}\n");
        failed.push(section);
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
    run_section!('a', a, stress::run(&url, &cfg));
    run_section!('b', b, sequential::run(&url, &cfg));
    run_section!('c', c, dispatch::run(&url, &cfg));
    run_section!('d', d, idle::run(&url, &cfg));
    run_section!('e', e, per_call::run(&url));
    run_section!('f', f, pooler::run(&url, &cfg));
    run_section!('g', g, history_length::run(&url, &cfg));
    run_section!('h', h, backlog::run(&url, &cfg));
    run_section!('i', i, processes::run(&url, &cfg));
    run_section!('j', j, churn::run(&url, &cfg));
    targets::print_targets(&results);
    println!(
        "total benchmark time: {:.0} s",
        started.elapsed().as_secs_f64()
    );
    setup::cleanup(&url).await;
    // A failed section fails the run, so CI's smoke run notices a section
    // that no longer works.
    if failed.is_empty() {
        Ok(())
    } else {
        let failed: String = failed.into_iter().collect();
        Err(format!("section(s) {failed} failed (see above)"))
    }
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
    if std::env::var_os(processes::CHILD_ENV).is_some() {
        processes::child_main();
        return;
    }
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

//! (a) duroxide's parallel-orchestrations stress test on this provider and
//! on duroxide's SQLite file provider, runs interleaved.

use std::sync::Arc;

use duroxide::provider_stress_tests::parallel_orchestrations::{
    ProviderStressFactory, run_parallel_orchestrations_test_with_config,
};
use duroxide::provider_stress_tests::{StressTestConfig, StressTestResult};
use duroxide::providers::Provider;
use duroxide::providers::sqlite::SqliteProvider;

use crate::Res;
use crate::config::{Config, progress};
use crate::report::{fmt_num, list, median, table};
use crate::setup::{build_pg, new_schema, track_sqlite_file};
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
        track_sqlite_file(path.clone());
        let url = format!("sqlite:{}", path.display());
        Arc::new(
            SqliteProvider::new(&url, None)
                .await
                .expect("open SQLite provider"),
        )
    }
}

#[derive(Default)]
pub struct StressCell {
    pub orch: Vec<f64>,
    pub act: Vec<f64>,
    pub launched: usize,
    pub completed: usize,
    pub failed: usize,
}

impl StressCell {
    /// Adds one run's result.
    pub fn add(&mut self, result: &StressTestResult) {
        self.orch.push(result.orch_throughput);
        self.act.push(result.activity_throughput);
        self.launched += result.launched;
        self.completed += result.completed;
        self.failed += result.failed;
    }
}

/// The stress test every section runs: 20 concurrent orchestrations of 5
/// activities of 1 ms, for `cfg.stress_secs`, at orch:worker `conc`.
pub fn stress_config(cfg: &Config, conc: (usize, usize)) -> StressTestConfig {
    StressTestConfig {
        max_concurrent: 20,
        duration_secs: cfg.stress_secs,
        tasks_per_instance: 5,
        activity_delay_ms: 1,
        orch_concurrency: conc.0,
        worker_concurrency: conc.1,
        ..Default::default()
    }
}

pub struct StressSummary {
    /// (orch, worker) -> (pg, sqlite)
    pub cells: Vec<((usize, usize), StressCell, StressCell)>,
}

pub async fn run(url: &str, cfg: &Config) -> Res<StressSummary> {
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
            let config = stress_config(cfg, *conc);
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
                cell.add(&result);
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

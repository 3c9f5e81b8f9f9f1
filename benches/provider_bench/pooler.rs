//! (f) duroxide's parallel-orchestrations stress test (2:2) on this
//! provider connected directly and through PgBouncer in transaction pooling
//! mode (started by the testkit in front of the same server), runs
//! interleaved.

use std::sync::Arc;

use duroxide::provider_stress_tests::parallel_orchestrations::{
    ProviderStressFactory, run_parallel_orchestrations_test_with_config,
};
use duroxide::providers::Provider;
use duroxide_diesel::PostgresProvider;
use duroxide_diesel_testkit::pgbouncer;

use crate::Res;
use crate::config::{Config, progress};
use crate::report::{fmt_num, list, median, table};
use crate::setup::new_schema;
use crate::stress::{StressCell, stress_config};

/// Providers on fresh schemas, through `pooler` when given.
struct Factory {
    url: String,
    pooler: Option<String>,
}

#[async_trait::async_trait]
impl ProviderStressFactory for Factory {
    async fn create_provider(&self) -> Arc<dyn Provider> {
        let schema = new_schema("pooler");
        let builder = match &self.pooler {
            None => PostgresProvider::builder(&self.url),
            Some(pooler) => PostgresProvider::builder(pooler).transaction_pooler(&self.url),
        };
        Arc::new(
            builder
                .schema(&schema)
                .build()
                .await
                .unwrap_or_else(|e| panic!("build PostgresProvider ({schema}): {e}")),
        )
    }
}

/// Orchestrations per second: (direct, through PgBouncer).
pub struct PoolerSummary {
    pub direct: StressCell,
    pub pooled: StressCell,
}

pub async fn run(url: &str, cfg: &Config) -> Res<PoolerSummary> {
    let pooler = {
        let url = url.to_owned();
        tokio::task::spawn_blocking(move || pgbouncer::transaction_pooler_for(&url))
            .await
            .map_err(|e| format!("start PgBouncer: {e}"))?
    };
    let direct = Factory {
        url: url.to_owned(),
        pooler: None,
    };
    let pooled = Factory {
        url: url.to_owned(),
        pooler: Some(pooler),
    };
    let config = stress_config(cfg, (2, 2));
    let mut summary = PoolerSummary {
        direct: StressCell::default(),
        pooled: StressCell::default(),
    };
    for run in 0..cfg.runs {
        for (label, factory, cell) in [
            ("direct", &direct, &mut summary.direct),
            ("PgBouncer", &pooled, &mut summary.pooled),
        ] {
            progress(format!("(f) {label} 2:2 run {}/{}", run + 1, cfg.runs));
            let result = run_parallel_orchestrations_test_with_config(factory, config.clone())
                .await
                .map_err(|e| format!("stress test {label}: {e}"))?;
            cell.add(&result);
        }
    }
    println!(
        "(f) the stress test of (a) at 2:2, this provider directly and through PgBouncer \
         (pool_mode = transaction, default_pool_size {}, on this machine, no TLS to it) in \
         front of the same server; median of {} run(s), interleaved",
        pgbouncer::SERVER_POOL_SIZE,
        cfg.runs
    );
    let mut rows = Vec::new();
    for (label, c) in [
        ("direct", &summary.direct),
        ("through PgBouncer", &summary.pooled),
    ] {
        rows.push(vec![
            label.to_owned(),
            fmt_num(median(&c.orch)),
            fmt_num(median(&c.act)),
            c.failed.to_string(),
            format!("{}/{}", c.completed, c.launched),
            list(&c.orch),
        ]);
    }
    rows.push(vec![
        "ratio PgBouncer/direct".to_owned(),
        format!(
            "{}x",
            fmt_num(median(&summary.pooled.orch) / median(&summary.direct.orch))
        ),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
    ]);
    table(
        &[
            "connection",
            "orch/s",
            "activities/s",
            "failed (all runs)",
            "completed/launched",
            "orch/s per run",
        ],
        &rows,
    );
    Ok(summary)
}

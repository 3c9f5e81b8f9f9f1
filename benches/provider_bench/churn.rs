//! (j) churn: the steady rate of section (h) measured on one schema as it
//! ages, fresh and after a quarter, half and all of `DXBENCH_CHURN`
//! (default 200,000) orchestrations have completed on it; once keeping
//! every completed instance, once deleting completed instances after each
//! batch (a retention task). What ages: dead tuples in the queue tables,
//! index bloat, and (without pruning) instances, executions and history
//! that only grow. The target: the rate at the end within 10% of fresh.
//!
//! Autovacuum runs with the settings the migrations give the tables (see
//! docs/operations.md); the server's own autovacuum settings are defaults.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use duroxide::Client;
use duroxide::providers::{InstanceFilter, ProviderAdmin};

use crate::backlog::{options, steady_rate, wait_count};
use crate::config::{Config, progress};
use crate::report::{fmt_num, table};
use crate::setup::{build_pg, new_schema, start_runtime};
use crate::tap::Tap;
use crate::{Res, WAIT};

/// Orchestrations started per batch while churning.
const BATCH: usize = 1_000;
/// Batches started ahead of the ones that ended.
const AHEAD: usize = 4;

/// One aging schema: completed so far -> steady orch/s, and the schema's
/// size on disk at each point.
struct Curve {
    rates: Vec<(usize, f64, u64)>,
}

/// Bytes the schema's tables take with their indexes and TOAST.
async fn schema_bytes(url: &str, schema: &str) -> u64 {
    duroxide_diesel_testkit::db::scalar(
        url,
        &format!(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = '{}' AND c.relkind = 'r'",
            schema.replace('\'', "''")
        ),
    )
    .await
    .ok()
    .flatten()
    .and_then(|v| v.parse().ok())
    .unwrap_or(0)
}

/// Completes orchestrations `from..to` on `tap`'s runtime, at most
/// `AHEAD` batches ahead of the completions; with `prune`, deletes every
/// completed instance after each batch.
async fn churn(
    tap: &Arc<Tap>,
    admin: &duroxide_diesel::PostgresProvider,
    range: std::ops::Range<usize>,
    prune: bool,
) -> Res<()> {
    let client = Client::new(tap.clone());
    let origin = tap.done_count();
    let mut next = range.start;
    while next < range.end {
        let batch_end = (next + BATCH).min(range.end);
        for i in next..batch_end {
            client
                .start_orchestration(&format!("c{i}"), "One", "x")
                .await
                .map_err(|e| format!("start: {e}"))?;
        }
        next = batch_end;
        let started = next - range.start;
        wait_count(
            tap,
            origin + started.saturating_sub(AHEAD * BATCH),
            WAIT * 5,
        )
        .await?;
        if prune {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            loop {
                let r = admin
                    .delete_instance_bulk(InstanceFilter {
                        completed_before: Some(now),
                        limit: Some(BATCH as u32),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| format!("delete_instance_bulk: {e}"))?;
                if r.instances_deleted == 0 {
                    break;
                }
            }
        }
    }
    wait_count(tap, origin + range.len(), WAIT * 5).await
}

async fn curve(url: &str, cfg: &Config, total: usize, prune: bool) -> Res<Curve> {
    let schema = new_schema(if prune { "churnp" } else { "churn" });
    let provider: Arc<dyn duroxide::providers::Provider> = Arc::new(build_pg(url, &schema).await?);
    let admin = build_pg(url, &schema).await?;
    let tap = Tap::new(provider);
    let rt = start_runtime(&tap, options()).await;
    let mut checkpoints = vec![0, total / 4, total / 2, total];
    checkpoints.dedup();
    let label = if prune { "pruned" } else { "kept" };
    let outcome = async {
        let mut rates = Vec::new();
        let mut done = 0;
        for &point in &checkpoints {
            if point > done {
                progress(format!("(j) {label}: churning {done}..{point}"));
                let t = Instant::now();
                churn(&tap, &admin, done..point, prune).await?;
                progress(format!(
                    "(j) {label}: {} orchestrations in {:.0} s",
                    point - done,
                    t.elapsed().as_secs_f64()
                ));
                done = point;
            }
            progress(format!("(j) {label}: steady rate after {point}"));
            let rate = steady_rate(&tap, cfg.stress_secs, &format!("s{point}-")).await?;
            rates.push((point, rate, schema_bytes(url, &schema).await));
        }
        Ok(Curve { rates })
    }
    .await;
    rt.shutdown(None).await;
    // Let the server settle before the next curve (its autovacuum too).
    tokio::time::sleep(Duration::from_secs(1)).await;
    outcome
}

/// The rate at the end relative to fresh, kept and pruned.
pub struct ChurnSummary {
    pub total: usize,
    pub kept: f64,
    pub pruned: f64,
}

pub async fn run(url: &str, cfg: &Config) -> Res<ChurnSummary> {
    let total = std::env::var("DXBENCH_CHURN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg.quick { 600 } else { 200_000 });
    let kept = curve(url, cfg, total, false).await?;
    let pruned = curve(url, cfg, total, true).await?;
    println!(
        "(j) churn: orchestrations of one trivial activity, one runtime (concurrency 4/4); steady \
         rate (as in (h), {} s window) on one schema after N orchestrations completed on it, \
         keeping every completed instance or deleting them after each batch of {BATCH}",
        cfg.stress_secs
    );
    let fresh = |c: &Curve| c.rates.first().map_or(f64::NAN, |r| r.1);
    let mut rows = Vec::new();
    for (k, p) in kept.rates.iter().zip(&pruned.rates) {
        rows.push(vec![
            k.0.to_string(),
            fmt_num(k.1),
            format!("{}x", fmt_num(k.1 / fresh(&kept))),
            format!("{} MB", fmt_num(k.2 as f64 / 1e6)),
            fmt_num(p.1),
            format!("{}x", fmt_num(p.1 / fresh(&pruned))),
            format!("{} MB", fmt_num(p.2 as f64 / 1e6)),
        ]);
    }
    table(
        &[
            "completed before",
            "kept: orch/s",
            "vs fresh",
            "schema size",
            "pruned: orch/s",
            "vs fresh",
            "schema size",
        ],
        &rows,
    );
    let last = |c: &Curve| c.rates.last().map_or(f64::NAN, |r| r.1) / fresh(c);
    Ok(ChurnSummary {
        total,
        kept: last(&kept),
        pruned: last(&pruned),
    })
}

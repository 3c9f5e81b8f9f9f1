//! (j) churn: the steady rate of section (h) measured on one schema as it
//! ages, fresh and after a quarter, half and all of `DXBENCH_CHURN`
//! (default 200,000) orchestrations have completed on it; once keeping
//! every completed instance, once deleting completed instances after each
//! batch (a retention task); `DXBENCH_CHURN_CURVES=kept` or `pruned` runs
//! one of the two. What ages: dead tuples in the queue tables,
//! index bloat, and (without pruning) instances, executions and history
//! that only grow. The target: the rate at the end within 10% of fresh.
//!
//! Rates on a shared machine drift by more than that from one minute to
//! the next, so each point compares like with like: once autovacuum has
//! nothing left to do on the aged schema (no worker busy with it, no table
//! over its vacuum, insert or analyze threshold), `DXBENCH_RUNS` windows on
//! it alternate with as many on a fresh schema made for that point, and the
//! point's ratio is the median of the one over the median of the other (the
//! table also gives the median of each pair's ratio). At 0 completed both
//! schemas are fresh, so that row shows the measurement's own noise. Each
//! window's autovacuum runs, the tables autovacuum was seen working on, and
//! its WAL bytes, full-page images, buffers read (with the four tables or
//! indexes read most) and client and server CPU time (`/proc`: this process,
//! and the postmaster with all its children), per orchestration, are
//! printed as it ends. A third series runs a new provider and runtime on
//! the aged schema (the aged ones stopped meanwhile), telling what the
//! schema's age costs from what the process's does; its windows' costs are
//! printed too.
//!
//! Autovacuum runs with the settings the migrations give the tables (see
//! docs/operations.md) and the server's own settings, which are defaults
//! but for `DXBENCH_AUTOVACUUM_NAPTIME` (seconds): the section then sets
//! the server's `autovacuum_naptime` to it (`ALTER SYSTEM`, reloaded) for
//! its run and resets it after. The header names the value in force.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use duroxide::Client;
use duroxide::providers::{InstanceFilter, ProviderAdmin};

use duroxide_diesel_testkit::cpu::{self, Cpu};

use crate::backlog::{options, steady_rate, wait_count};
use crate::config::{Config, progress};
use crate::report::{fmt_num, list, median, table};
use crate::setup::{build_pg, latest_schema, new_schema, start_runtime, tapped_runtime};
use crate::tap::Tap;
use crate::{Res, WAIT};

/// Orchestrations started per batch while churning.
const BATCH: usize = 1_000;
/// Batches started ahead of the ones that ended.
const AHEAD: usize = 4;
/// The longest wait for the aged schema's autovacuum before a point.
const SETTLE: Duration = Duration::from_secs(120);
/// The same in a quick run, whose tiny tables the server's default
/// naptime may leave over their thresholds for a minute.
const SETTLE_QUICK: Duration = Duration::from_secs(5);

/// One point of an aging schema's curve: its rate windows and those of a
/// fresh schema taken alternately with them, and the aging schema's size.
struct Point {
    completed: usize,
    aged: Vec<f64>,
    /// On the aging schema, a provider and runtime started for the window
    /// (the aged ones stopped meanwhile): tells the schema's age from the
    /// process's.
    renewed: Vec<f64>,
    fresh: Vec<f64>,
    /// Autovacuum runs (vacuums and analyzes) that finished during each
    /// aged window on the aged schema, and during each fresh window on
    /// the fresh one.
    aged_vacuums: Vec<u64>,
    fresh_vacuums: Vec<u64>,
    bytes: u64,
    /// Dead tuples in the aging schema's tables when the point started.
    dead: u64,
}

impl Point {
    /// The aging schema's median rate over the fresh schema's.
    fn ratio(&self) -> f64 {
        median(&self.aged) / median(&self.fresh)
    }

    /// The median over window pairs (each aged window and the fresh one
    /// next to it) of the one over the other: less sensitive to the
    /// machine's drift between pairs than [`ratio`](Self::ratio).
    fn paired(&self) -> f64 {
        let ratios: Vec<f64> = self
            .aged
            .iter()
            .zip(&self.fresh)
            .map(|(a, f)| a / f)
            .collect();
        median(&ratios)
    }
}

/// One aging schema's points.
struct Curve {
    points: Vec<Point>,
}

/// The value of `sql` as text, in which `{schema}` stands for `schema`'s
/// name as a string literal (`None` for no value or a failed query).
async fn schema_text(url: &str, schema: &str, sql: &str) -> Option<String> {
    let literal = format!("'{}'", schema.replace('\'', "''"));
    duroxide_diesel_testkit::db::scalar(url, &sql.replace("{schema}", &literal))
        .await
        .ok()
        .flatten()
}

/// [`schema_text`] as a number (0 for none).
async fn schema_number(url: &str, schema: &str, sql: &str) -> u64 {
    schema_text(url, schema, sql)
        .await
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Bytes the schema's tables take with their indexes and TOAST.
async fn schema_bytes(url: &str, schema: &str) -> u64 {
    let sql = "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c \
               JOIN pg_namespace n ON n.oid = c.relnamespace \
               WHERE n.nspname = {schema} AND c.relkind = 'r'";
    schema_number(url, schema, sql).await
}

/// Dead tuples in the schema's tables, as the statistics count them.
async fn dead_tuples(url: &str, schema: &str) -> u64 {
    let sql = "SELECT coalesce(sum(n_dead_tup), 0)::text FROM pg_stat_user_tables \
               WHERE schemaname = {schema}";
    schema_number(url, schema, sql).await
}

/// The three tables of the schema with the most dead tuples, as
/// `name count` pairs (empty if none has any, or the query fails).
async fn deadest_tables(url: &str, schema: &str) -> String {
    let sql = "SELECT string_agg(relname || ' ' || n_dead_tup, ', ' ORDER BY n_dead_tup DESC) \
               FROM (SELECT relname, n_dead_tup FROM pg_stat_user_tables \
               WHERE schemaname = {schema} AND n_dead_tup > 0 ORDER BY n_dead_tup DESC LIMIT 3) t";
    schema_text(url, schema, sql).await.unwrap_or_default()
}

/// The server's `autovacuum_naptime` as a new session sees it.
async fn naptime_setting(url: &str) -> Option<String> {
    duroxide_diesel_testkit::db::scalar(url, "current_setting('autovacuum_naptime')")
        .await
        .ok()
        .flatten()
}

/// Tables of the schema that autovacuum has yet to process: over one of
/// its three triggers (dead tuples, inserts since the last vacuum, changes
/// since the last analyze), each `threshold + scale_factor * reltuples`
/// with the table's own options or else the server's settings.
const PENDING_VACUUMS: &str = "SELECT count(*) FROM (SELECT s.relid FROM pg_stat_user_tables s \
     JOIN pg_class c ON c.oid = s.relid \
     CROSS JOIN LATERAL (SELECT greatest(c.reltuples, 0) AS tuples) r \
     CROSS JOIN LATERAL (SELECT \
       coalesce((SELECT o.option_value::float8 FROM pg_catalog.pg_options_to_table(c.reloptions) o \
                 WHERE o.option_name = t.name), current_setting(t.name)::float8) AS v, t.name \
       FROM unnest(ARRAY['autovacuum_vacuum_threshold', 'autovacuum_vacuum_scale_factor', \
                         'autovacuum_vacuum_insert_threshold', \
                         'autovacuum_vacuum_insert_scale_factor', \
                         'autovacuum_analyze_threshold', 'autovacuum_analyze_scale_factor']) \
            AS t(name)) o \
     WHERE s.schemaname = {schema} \
     GROUP BY s.relid, s.n_dead_tup, s.n_ins_since_vacuum, s.n_mod_since_analyze, r.tuples \
     HAVING s.n_dead_tup > max(o.v) FILTER (WHERE o.name = 'autovacuum_vacuum_threshold') \
              + max(o.v) FILTER (WHERE o.name = 'autovacuum_vacuum_scale_factor') * r.tuples \
         OR s.n_ins_since_vacuum > max(o.v) FILTER (WHERE o.name = 'autovacuum_vacuum_insert_threshold') \
              + max(o.v) FILTER (WHERE o.name = 'autovacuum_vacuum_insert_scale_factor') * r.tuples \
         OR s.n_mod_since_analyze > max(o.v) FILTER (WHERE o.name = 'autovacuum_analyze_threshold') \
              + max(o.v) FILTER (WHERE o.name = 'autovacuum_analyze_scale_factor') * r.tuples) p";

/// Autovacuum workers busy with one of the schema's tables.
const AUTOVACUUM_WORKERS: &str = "FROM pg_stat_activity \
     WHERE backend_type = 'autovacuum worker' AND query LIKE '%' || {schema} || '.%'";

/// Vacuums and analyzes autovacuum has finished on the schema's tables.
const AUTOVACUUM_RUNS: &str = "SELECT coalesce(sum(autovacuum_count + autoanalyze_count), 0)::text \
     FROM pg_stat_user_tables WHERE schemaname = {schema}";

/// The tables autovacuum works on in `schema` until `stop` is set, sampled
/// every 500 ms: `VACUUM history 3.5 s, ...`, seconds seen busy per
/// operation and table (empty: none seen). Each sample is a query on a
/// connection of its own, the same small load in aged and fresh windows.
async fn autovacuum_busy(url: String, schema: String, stop: Arc<AtomicBool>) -> String {
    const EVERY: Duration = Duration::from_millis(500);
    let sql = format!("SELECT string_agg(query, '|') {AUTOVACUUM_WORKERS}");
    let mut busy: BTreeMap<String, u32> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        if let Some(seen) = schema_text(&url, &schema, &sql).await {
            for q in seen.split('|') {
                let what = q
                    .trim_start_matches("autovacuum: ")
                    .replace(&format!("{schema}."), "");
                *busy.entry(what).or_default() += 1;
            }
        }
        tokio::time::sleep(EVERY).await;
    }
    busy.iter()
        .map(|(what, n)| format!("{what} {:.1} s", f64::from(*n) * EVERY.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Counters read around each window: what it cost the server.
#[derive(Clone, Default)]
struct Costs {
    /// Vacuums and analyzes autovacuum finished on the window's schema.
    vacuums: u64,
    /// WAL written, server-wide (one runtime works at a time).
    wal_bytes: u64,
    /// Full-page images in that WAL (`pg_stat_wal`, flushed by each
    /// backend within about a second).
    fpi: u64,
    /// Buffers the window's schema's tables, indexes and TOAST were read
    /// from (hits and reads), by relation: each table's heap and TOAST
    /// (its name) and each index (`table.index`).
    by_relation: std::collections::BTreeMap<String, u64>,
    /// Orchestrations completed.
    done: u64,
    /// CPU of this process (one runtime works at a time) and of the server
    /// (autovacuum included).
    cpu: Cpu,
}

/// Buffers read per relation of the schema, as `name=count` pairs
/// joined by `;`: each table's heap and TOAST under its name, each index
/// as `table.index`.
const BLOCKS_BY_RELATION: &str = "SELECT string_agg(name || '=' || n, ';') FROM ( \
     SELECT relname AS name, heap_blks_hit + heap_blks_read \
            + coalesce(toast_blks_hit, 0) + coalesce(toast_blks_read, 0) \
            + coalesce(tidx_blks_hit, 0) + coalesce(tidx_blks_read, 0) AS n \
       FROM pg_statio_user_tables WHERE schemaname = {schema} \
     UNION ALL \
     SELECT relname || '.' || indexrelname, idx_blks_hit + idx_blks_read \
       FROM pg_statio_user_indexes WHERE schemaname = {schema}) r";

impl Costs {
    async fn read(url: &str, schema: &str, done: usize, postmaster: Option<u32>) -> Costs {
        let wal = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint::text";
        let fpi = "SELECT wal_fpi::text FROM pg_stat_wal";
        Costs {
            vacuums: schema_number(url, schema, AUTOVACUUM_RUNS).await,
            wal_bytes: schema_number(url, schema, wal).await,
            fpi: schema_number(url, schema, fpi).await,
            by_relation: schema_text(url, schema, BLOCKS_BY_RELATION)
                .await
                .unwrap_or_default()
                .split(';')
                .filter_map(|pair| {
                    let (name, n) = pair.split_once('=')?;
                    Some((name.to_owned(), n.parse().ok()?))
                })
                .collect(),
            done: done as u64,
            cpu: Cpu::now(postmaster),
        }
    }

    fn since(self, before: &Costs) -> Costs {
        Costs {
            by_relation: self
                .by_relation
                .iter()
                .map(|(name, n)| {
                    let was = before.by_relation.get(name).copied().unwrap_or(0);
                    (name.clone(), n.saturating_sub(was))
                })
                .collect(),
            vacuums: self.vacuums.saturating_sub(before.vacuums),
            wal_bytes: self.wal_bytes.saturating_sub(before.wal_bytes),
            fpi: self.fpi.saturating_sub(before.fpi),
            done: self.done.saturating_sub(before.done),
            cpu: self.cpu.since(before.cpu),
        }
    }

    /// `WAL bytes / full-page images / buffers / client CPU / server CPU`
    /// per orchestration, then the buffers of the four relations read
    /// most, per orchestration.
    fn per_orchestration(&self) -> String {
        let n = self.done.max(1) as f64;
        let blocks: u64 = self.by_relation.values().sum();
        let mut top: Vec<_> = self.by_relation.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1));
        let top: Vec<_> = top
            .iter()
            .take(4)
            .map(|(name, blocks)| format!("{name} {:.0}", **blocks as f64 / n))
            .collect();
        format!(
            "{:.0} B/{:.2} fpi/{:.0} bufs/client {:.2} ms/server {:.2} ms ({})",
            self.wal_bytes as f64 / n,
            self.fpi as f64 / n,
            blocks as f64 / n,
            self.cpu.client_seconds() * 1000.0 / n,
            self.cpu.server_seconds() * 1000.0 / n,
            top.join(", ")
        )
    }
}

/// Waits (at most `within`) until autovacuum has nothing left to do on
/// `schema`: no worker busy with one of its tables and no table over one
/// of its thresholds ([`PENDING_VACUUMS`]), so a window does not start inside (or just before)
/// the vacuums that the churn burst before it made due. Returns the time
/// waited.
async fn settle(url: &str, schema: &str, within: Duration) -> Duration {
    let t = Instant::now();
    let busy = format!("SELECT count(*) {AUTOVACUUM_WORKERS}");
    while t.elapsed() < within
        && (schema_number(url, schema, &busy).await > 0
            || schema_number(url, schema, PENDING_VACUUMS).await > 0)
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    t.elapsed()
}

/// The longest wait in [`settle`] for this run.
fn settle_limit(cfg: &Config) -> Duration {
    if cfg.quick { SETTLE_QUICK } else { SETTLE }
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
    let mut rt = Some(start_runtime(&tap, options()).await);
    let mut checkpoints = vec![0, total / 4, total / 2, total];
    checkpoints.dedup();
    let label = if prune { "pruned" } else { "kept" };
    let postmaster = cpu::postmaster_pid(url).await;
    let outcome = async {
        let mut points = Vec::new();
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
            let waited = settle(url, &schema, settle_limit(cfg)).await;
            let dead = dead_tuples(url, &schema).await;
            progress(format!(
                "(j) {label}: steady rate after {point} (autovacuum settled in {:.0} s, \
                 {dead} dead tuples; most in: {})",
                waited.as_secs_f64(),
                deadest_tables(url, &schema).await
            ));
            // A fresh schema of its own per point, its windows alternating
            // with the aging schema's (and each going first in turn), so
            // the machine's drift lands on both alike.
            let (fresh_tap, fresh_rt) = tapped_runtime(url, "churnf", None, options()).await?;
            let fresh_schema = latest_schema().ok_or("the fresh schema has no name")?;
            let measured = async {
                let (mut aged, mut renewed, mut fresh) = (Vec::new(), Vec::new(), Vec::new());
                let (mut aged_vacuums, mut fresh_vacuums) = (Vec::new(), Vec::new());
                let mut busy = Vec::new();
                for w in 0..cfg.runs {
                    let order = if w % 2 == 0 {
                        [false, true]
                    } else {
                        [true, false]
                    };
                    for on_aged in order {
                        let on = if on_aged { &schema } else { &fresh_schema };
                        let window_tap = if on_aged { &tap } else { &fresh_tap };
                        let before = Costs::read(url, on, window_tap.done_count(), postmaster).await;
                        let stop = Arc::new(AtomicBool::new(false));
                        let sampler =
                            tokio::spawn(autovacuum_busy(url.to_owned(), on.clone(), stop.clone()));
                        if on_aged {
                            let p = format!("s{point}-{w}-");
                            aged.push(steady_rate(&tap, cfg.stress_secs, &p).await?);
                        } else {
                            // Ids as long as the aged schema's: every row
                            // and index entry carries them.
                            let p = format!("f{point}-{w}-");
                            fresh.push(steady_rate(&fresh_tap, cfg.stress_secs, &p).await?);
                        }
                        stop.store(true, Ordering::Relaxed);
                        let seen = sampler.await.unwrap_or_default();
                        busy.push(format!(
                            "{} window {w}: {}",
                            if on_aged { "aged" } else { "fresh" },
                            if seen.is_empty() { "-" } else { &seen }
                        ));
                        let costs = Costs::read(url, on, window_tap.done_count(), postmaster)
                            .await
                            .since(&before);
                        let vacuums = costs.vacuums;
                        busy.push(format!(
                            "{} window {w} per orchestration: {}",
                            if on_aged { "aged" } else { "fresh" },
                            costs.per_orchestration()
                        ));
                        if on_aged {
                            aged_vacuums.push(vacuums);
                        } else {
                            fresh_vacuums.push(vacuums);
                        }
                    }
                    // A new provider and runtime on the aged schema, the
                    // aged runtime stopped meanwhile (its provider kept).
                    if let Some(r) = rt.take() {
                        r.shutdown(None).await;
                    }
                    let renewed_tap = Tap::new(Arc::new(build_pg(url, &schema).await?));
                    let renewed_rt = start_runtime(&renewed_tap, options()).await;
                    let p = format!("n{point}-{w}-");
                    let before = Costs::read(url, &schema, renewed_tap.done_count(), postmaster).await;
                    let rate = steady_rate(&renewed_tap, cfg.stress_secs, &p).await;
                    let costs = Costs::read(url, &schema, renewed_tap.done_count(), postmaster)
                        .await
                        .since(&before);
                    busy.push(format!(
                        "new process window {w} per orchestration: {}",
                        costs.per_orchestration()
                    ));
                    renewed_rt.shutdown(None).await;
                    rt = Some(start_runtime(&tap, options()).await);
                    renewed.push(rate?);
                }
                progress(format!(
                    "(j) {label}: after {point}: autovacuum busy, and cost per orchestration, in each window: {}",
                    busy.join("; ")
                ));
                Ok::<_, String>((aged, renewed, fresh, aged_vacuums, fresh_vacuums))
            }
            .await;
            fresh_rt.shutdown(None).await;
            let (aged, renewed, fresh, aged_vacuums, fresh_vacuums) = measured?;
            progress(format!(
                "(j) {label}: after {point}: aged {} new process on aged {} fresh {} orch/s; \
                 autovacuum runs during the windows: aged {aged_vacuums:?} fresh {fresh_vacuums:?}",
                list(&aged),
                list(&renewed),
                list(&fresh)
            ));
            points.push(Point {
                completed: point,
                aged,
                renewed,
                fresh,
                aged_vacuums,
                fresh_vacuums,
                bytes: schema_bytes(url, &schema).await,
                dead,
            });
        }
        Ok(Curve { points })
    }
    .await;
    if let Some(r) = rt {
        r.shutdown(None).await;
    }
    outcome
}

/// The rate at the end relative to fresh, kept and pruned.
pub struct ChurnSummary {
    pub total: usize,
    pub kept: f64,
    pub pruned: f64,
}

/// Sets the server's `autovacuum_naptime` to `secs` seconds (`None`:
/// back to its configured value) and reloads the configuration.
async fn set_naptime(url: &str, secs: Option<u64>) -> Res<()> {
    let sql = match secs {
        Some(s) => format!("ALTER SYSTEM SET autovacuum_naptime = '{s}s'"),
        None => "ALTER SYSTEM RESET autovacuum_naptime".to_owned(),
    };
    // ALTER SYSTEM refuses to share a batch (an implicit transaction).
    let db = duroxide_diesel_testkit::db::execute;
    db(url, &sql).await.map_err(|e| format!("{sql}: {e}"))?;
    db(url, "SELECT pg_reload_conf()")
        .await
        .map_err(|e| format!("pg_reload_conf: {e}"))?;
    // The postmaster applies a reload asynchronously: wait (briefly) until
    // a new session sees the value, so the header names what runs.
    if let Some(s) = secs {
        let want = format!("{s}s");
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if naptime_setting(url).await.as_deref() == Some(want.as_str()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

pub async fn run(url: &str, cfg: &Config) -> Res<ChurnSummary> {
    let naptime = match std::env::var("DXBENCH_AUTOVACUUM_NAPTIME") {
        Ok(v) => Some(
            v.trim()
                .parse::<u64>()
                .ok()
                .filter(|s| *s > 0)
                .ok_or_else(|| {
                    format!(
                        "DXBENCH_AUTOVACUUM_NAPTIME: {v:?} is not a whole number of seconds > 0"
                    )
                })?,
        ),
        Err(_) => None,
    };
    if let Some(secs) = naptime {
        set_naptime(url, Some(secs)).await?;
    }
    let outcome = curves(url, cfg).await;
    if naptime.is_some() {
        set_naptime(url, None).await?;
    }
    outcome
}

async fn curves(url: &str, cfg: &Config) -> Res<ChurnSummary> {
    let naptime = naptime_setting(url)
        .await
        .unwrap_or_else(|| "unknown".to_owned());
    let total = std::env::var("DXBENCH_CHURN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg.quick { 600 } else { 200_000 });
    // `DXBENCH_CHURN_CURVES`: `kept`, `pruned` or both (the default).
    let wanted = std::env::var("DXBENCH_CHURN_CURVES").unwrap_or_default();
    let wants = |name: &str| wanted.is_empty() || wanted.split(',').any(|c| c.trim() == name);
    let kept = if wants("kept") {
        Some(curve(url, cfg, total, false).await?)
    } else {
        None
    };
    let pruned = if wants("pruned") {
        Some(curve(url, cfg, total, true).await?)
    } else {
        None
    };
    println!(
        "(j) churn: orchestrations of one trivial activity, one runtime (concurrency 4/4); steady \
         rate (as in (h), {} s windows) on one schema after N orchestrations completed on it, \
         keeping every completed instance or deleting them after each batch of {BATCH}; at each \
         point {} windows on the aged schema alternate with {} on a fresh one and {} of a new \
         provider and runtime on the aged schema, once autovacuum has nothing left to do on the aged \
         schema (no worker on it, no table over its vacuum threshold; at most {} s); medians \
         (\"aged vs fresh\": median over median, the target's measure; \"paired\": median of \
         each aged window over the fresh one next to it); server autovacuum_naptime {naptime}",
        cfg.stress_secs,
        cfg.runs,
        cfg.runs,
        cfg.runs,
        settle_limit(cfg).as_secs()
    );
    let mut rows = Vec::new();
    for (label, c) in [("kept", &kept), ("pruned", &pruned)] {
        let Some(c) = c else { continue };
        for p in &c.points {
            rows.push(vec![
                label.to_owned(),
                p.completed.to_string(),
                fmt_num(median(&p.aged)),
                fmt_num(median(&p.renewed)),
                fmt_num(median(&p.fresh)),
                format!("{}x", fmt_num(p.ratio())),
                format!("{}x", fmt_num(p.paired())),
                format!("{}x", fmt_num(median(&p.renewed) / median(&p.fresh))),
                list(&p.aged),
                list(&p.renewed),
                list(&p.fresh),
                format!(
                    "{} / {}",
                    p.aged_vacuums.iter().sum::<u64>(),
                    p.fresh_vacuums.iter().sum::<u64>()
                ),
                format!("{} MB", fmt_num(p.bytes as f64 / 1e6)),
                p.dead.to_string(),
            ]);
        }
    }
    table(
        &[
            "schema",
            "completed before",
            "aged orch/s",
            "new process on aged",
            "fresh orch/s",
            "aged vs fresh",
            "paired windows, median ratio",
            "new process vs fresh",
            "aged windows",
            "new process windows",
            "fresh windows",
            "autovacuum runs in aged / fresh windows",
            "aged schema size",
            "dead tuples at start",
        ],
        &rows,
    );
    let last = |c: &Option<Curve>| {
        c.as_ref()
            .and_then(|c| c.points.last())
            .map_or(f64::NAN, Point::ratio)
    };
    Ok(ChurnSummary {
        total,
        kept: last(&kept),
        pruned: last(&pruned),
    })
}

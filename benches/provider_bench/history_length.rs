//! (g) turn cost against history length: one orchestration running N
//! sequential trivial activities (N = 20, 200, 1000), through a proxy that
//! adds no delay and counts bytes: ms per step and bytes over the wire per
//! step (both directions), with the provider's history cache (the default)
//! and without it, interleaved in one run. Without the cache every turn and
//! every history read ship the whole history, so bytes per step grow with N;
//! with it they ship the events added since the provider's last turn.
//! Server time per step is the time inside the schema's stored functions
//! (`track_functions = pl`, self time) of the run less that of a run of
//! the warm-up alone on a fresh provider (which also pays each backend's
//! first calls, when PL/pgSQL compiles the functions), over N.

use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use duroxide::Client;
use duroxide::runtime::RuntimeOptions;
use duroxide_diesel_testkit::pg;

use crate::config::{Config, progress};
use crate::report::{fmt_num, list, median, ms, table};
use crate::setup::{latest_schema, start_proxy, tapped_runtime_with_cache};
use crate::{Res, WAIT};

/// One measured chain of `steps` activities.
struct Sample {
    ms_per_step: f64,
    bytes_to_server_per_step: f64,
    bytes_from_server_per_step: f64,
    /// Server time of the whole run, warm-up included (ms).
    server_ms: f64,
}

/// The `application_name` of the measured provider's connections.
const APP: &str = "dxbench_history";
/// Steps of the warm-up orchestration.
const WARM_UP_STEPS: u32 = 3;

/// Time inside the stored functions of `schema` (self time, ms), read once
/// every backend of the measured provider has exited: a backend reports
/// its function times when it exits (or when idle, within seconds).
async fn function_ms(url: &str, schema: &str) -> Res<f64> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Double)]
        ms: f64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        backends: i64,
    }
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let query = format!(
        "SELECT coalesce((SELECT sum(self_time) FROM pg_stat_user_functions \
                          WHERE schemaname = '{schema}'), 0)::float8 AS ms, \
                (SELECT count(*) FROM pg_stat_activity WHERE application_name = '{APP}') AS backends"
    );
    let mut last = None;
    // Settled: no backend left, and the sum unchanged over 100 ms.
    for _ in 0..100 {
        let rows: Vec<Row> = diesel::sql_query(&query)
            .load(&mut conn)
            .await
            .map_err(|e| format!("pg_stat_user_functions: {e}"))?;
        let row = rows.into_iter().next().ok_or("no row")?;
        if row.backends == 0 && last == Some(row.ms) {
            return Ok(row.ms);
        }
        last = Some(row.ms);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("function statistics of {schema} did not settle"))
}

/// A chain of `steps` after the warm-up; with `steps` 0, the warm-up alone.
async fn chain_once(url: &str, steps: u32, cache: bool) -> Res<Sample> {
    let host = start_proxy(url, Duration::ZERO).await?;
    let cache_events = if cache {
        duroxide_diesel::DEFAULT_HISTORY_CACHE_EVENTS
    } else {
        0
    };
    let tracked = pg::url_with_settings(
        url,
        &["track_functions=pl", &format!("application_name={APP}")],
    );
    let (tap, rt) = tapped_runtime_with_cache(
        &tracked,
        "hist",
        Some(&host),
        RuntimeOptions::default(),
        cache_events,
    )
    .await?;
    let client = Client::new(tap.clone());
    let outcome = async {
        // Warm-up: opens the pooled connections and prepares the statements.
        client
            .start_orchestration("hist-warm", "SeqN", WARM_UP_STEPS.to_string())
            .await
            .map_err(|e| format!("start: {e}"))?;
        tap.wait_done("hist-warm", WAIT).await?;
        if steps == 0 {
            return Ok(Sample {
                ms_per_step: 0.0,
                bytes_to_server_per_step: 0.0,
                bytes_from_server_per_step: 0.0,
                server_ms: 0.0,
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        host.proxy().reset();
        let t0 = Instant::now();
        client
            .start_orchestration("hist-measured", "SeqN", steps.to_string())
            .await
            .map_err(|e| format!("start: {e}"))?;
        let done = tap.wait_done("hist-measured", WAIT * 5).await?;
        if done.failed {
            return Err("the measured orchestration failed".to_owned());
        }
        let n = f64::from(steps);
        Ok::<_, String>(Sample {
            ms_per_step: ms(done.at.duration_since(t0)) / n,
            bytes_to_server_per_step: done.proxy.client_bytes as f64 / n,
            bytes_from_server_per_step: done.proxy.server_bytes as f64 / n,
            server_ms: 0.0,
        })
    }
    .await;
    rt.shutdown(None).await;
    // Close the provider's connections so their backends report.
    drop((client, tap));
    let mut sample = outcome?;
    let schema = latest_schema().ok_or("no schema")?;
    sample.server_ms = function_ms(url, &schema).await?;
    Ok(sample)
}

/// Medians by chain length, with the history cache: (steps, ms per step,
/// bytes from the server per step, server ms per step).
pub struct HistorySummary {
    pub rows: Vec<(u32, f64, f64, f64)>,
}

pub async fn run(url: &str, cfg: &Config) -> Res<HistorySummary> {
    let lengths: &[u32] = if cfg.quick {
        &[20, 100]
    } else {
        &[20, 200, 1000]
    };
    // (steps, cache on, samples)
    let mut samples: Vec<(u32, bool, Vec<Sample>)> = lengths
        .iter()
        .flat_map(|n| [(*n, true, Vec::new()), (*n, false, Vec::new())])
        .collect();
    for run in 0..cfg.runs {
        for (steps, cache, runs) in samples.iter_mut() {
            let label = if *cache { "cache" } else { "no cache" };
            progress(format!(
                "(g) chain of {steps}, {label}, run {}/{}",
                run + 1,
                cfg.runs
            ));
            let warm_up = chain_once(url, 0, *cache).await?.server_ms;
            let mut sample = chain_once(url, *steps, *cache).await?;
            sample.server_ms = (sample.server_ms - warm_up) / f64::from(*steps);
            runs.push(sample);
        }
    }
    println!(
        "(g) one orchestration of N sequential trivial activities, default RuntimeOptions, \
         through a proxy that adds no delay and counts bytes; per step = whole run / N, after a \
         warm-up; median of {} run(s); history cache on (default) and off, interleaved; \
         growth = per-step value / the chain of {}'s with the same cache setting; server ms/step = \
         self time in the schema's stored functions (track_functions = pl) less that of the {WARM_UP_STEPS}-step \
         warm-up alone on a fresh provider, / N",
        cfg.runs, lengths[0]
    );
    let mut rows = Vec::new();
    let mut summary = Vec::new();
    let mut base: [Option<(f64, f64, f64)>; 2] = [None, None];
    for (steps, cache, runs) in &samples {
        let msv: Vec<f64> = runs.iter().map(|s| s.ms_per_step).collect();
        let to: Vec<f64> = runs.iter().map(|s| s.bytes_to_server_per_step).collect();
        let from: Vec<f64> = runs.iter().map(|s| s.bytes_from_server_per_step).collect();
        let server: Vec<f64> = runs.iter().map(|s| s.server_ms).collect();
        let (m, b, sv) = (median(&msv), median(&from), median(&server));
        let (m0, b0, s0) = *base[usize::from(*cache)].get_or_insert((m, b, sv));
        rows.push(vec![
            steps.to_string(),
            if *cache { "on" } else { "off" }.to_owned(),
            fmt_num(m),
            list(&msv),
            format!("{}x", fmt_num(m / m0)),
            fmt_num(median(&to)),
            fmt_num(b),
            format!("{}x", fmt_num(b / b0)),
            format!("{:.3}", sv),
            format!("{}x", fmt_num(sv / s0)),
        ]);
        if *cache {
            summary.push((*steps, m, b, sv));
        }
    }
    table(
        &[
            "steps",
            "cache",
            "ms/step",
            "ms/step per run",
            "ms/step growth",
            "bytes to server/step",
            "bytes from server/step",
            "bytes from server growth",
            "server ms/step",
            "server ms/step growth",
        ],
        &rows,
    );
    Ok(HistorySummary { rows: summary })
}

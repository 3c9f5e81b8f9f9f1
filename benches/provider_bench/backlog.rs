//! (h) backlog: how fast a deep queue drains compared with the steady
//! state. Orchestrations of one trivial activity, one runtime
//! (orchestration and worker concurrency 4). Steady state: a fresh schema
//! with `IN_FLIGHT` orchestrations kept running (a new one started as each
//! ends) for the stress duration. Backlog: a fresh schema where N
//! orchestrations are started while no runtime runs, then one starts and
//! drains them. The target: the backlog's drain rate within 20% of the
//! steady rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use duroxide::Client;
use duroxide::runtime::RuntimeOptions;

use crate::config::{Config, progress};
use crate::report::{fmt_num, list, median, table};
use crate::setup::{start_runtime, tapped_provider, tapped_runtime};
use crate::tap::Tap;
use crate::{Res, WAIT};

/// Orchestrations kept running in the steady-state measurement.
pub const IN_FLIGHT: usize = 32;

pub fn options() -> RuntimeOptions {
    RuntimeOptions {
        orchestration_concurrency: 4,
        worker_concurrency: 4,
        ..Default::default()
    }
}

/// Orchestrations per second with `IN_FLIGHT` running at any time, on a
/// fresh schema.
async fn steady_once(url: &str, secs: u64) -> Res<f64> {
    let (tap, rt) = tapped_runtime(url, "steady", None, options()).await?;
    let outcome = steady_rate(&tap, secs, "s").await;
    rt.shutdown(None).await;
    outcome
}

/// Orchestrations per second on `tap` (whose runtime runs) with
/// `IN_FLIGHT` running at any time for `secs`, after a warm-up of
/// `IN_FLIGHT`; instance ids start with `prefix`. Returns once every
/// orchestration it started has ended.
pub async fn steady_rate(tap: &Arc<Tap>, secs: u64, prefix: &str) -> Res<f64> {
    let client = Client::new(tap.clone());
    let failed_before = tap.failed_count();
    let mut started = 0usize;
    let mut start = |client: &Client, n: usize| {
        let ids: Vec<String> = (started..started + n)
            .map(|i| format!("{prefix}{i}"))
            .collect();
        started += n;
        let client = client.clone();
        async move {
            for id in ids {
                client
                    .start_orchestration(&id, "One", "x")
                    .await
                    .map_err(|e| format!("start: {e}"))?;
            }
            Ok::<_, String>(())
        }
    };
    // Warm-up: the first IN_FLIGHT complete before the clock starts.
    let origin = tap.done_count();
    start(&client, IN_FLIGHT).await?;
    wait_count(tap, origin + IN_FLIGHT, WAIT).await?;
    start(&client, IN_FLIGHT).await?;
    let base = tap.done_count();
    let t0 = Instant::now();
    let window = Duration::from_secs(secs);
    let mut seen = base;
    while t0.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = tap.done_count();
        if now > seen {
            start(&client, now - seen).await?;
            seen = now;
        }
    }
    let rate = (tap.done_count() - base) as f64 / t0.elapsed().as_secs_f64();
    // The ones still in flight end before the next measurement starts.
    wait_count(tap, origin + IN_FLIGHT + (seen - base) + IN_FLIGHT, WAIT).await?;
    let failed = tap.failed_count() - failed_before;
    if failed > 0 {
        return Err(format!("{failed} orchestrations failed"));
    }
    Ok(rate)
}

/// Orchestrations per second draining `n` started before the runtime.
async fn backlog_once(url: &str, n: usize) -> Res<f64> {
    // The runtime starts only once the backlog is in place.
    let cache = duroxide_diesel::DEFAULT_HISTORY_CACHE_EVENTS;
    let tap = tapped_provider(url, "backlog", None, cache).await?;
    let client = Client::new(tap.clone());
    for i in 0..n {
        client
            .start_orchestration(&format!("b{i}"), "One", "x")
            .await
            .map_err(|e| format!("start: {e}"))?;
    }
    let t0 = Instant::now();
    let rt = start_runtime(&tap, options()).await;
    let outcome = wait_count(&tap, n, WAIT * 5).await;
    let elapsed = t0.elapsed();
    rt.shutdown(None).await;
    outcome?;
    let failed = tap.failed_count();
    if failed > 0 {
        return Err(format!("{failed} orchestrations failed"));
    }
    Ok(n as f64 / elapsed.as_secs_f64())
}

pub async fn wait_count(tap: &Tap, n: usize, within: Duration) -> Res<()> {
    let deadline = Instant::now() + within;
    while tap.done_count() < n {
        if Instant::now() > deadline {
            return Err(format!(
                "{} of {n} orchestrations ended within {within:?}",
                tap.done_count()
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Median steady and backlog rates (orchestrations per second) and the
/// backlog size.
pub struct BacklogSummary {
    pub steady: f64,
    pub backlog: f64,
    pub size: usize,
}

pub async fn run(url: &str, cfg: &Config) -> Res<BacklogSummary> {
    let size = if cfg.quick { 300 } else { 10_000 };
    let mut steady = Vec::new();
    let mut backlog = Vec::new();
    for run in 0..cfg.runs {
        progress(format!("(h) steady state run {}/{}", run + 1, cfg.runs));
        steady.push(steady_once(url, cfg.stress_secs).await?);
        progress(format!(
            "(h) backlog of {size} run {}/{}",
            run + 1,
            cfg.runs
        ));
        backlog.push(backlog_once(url, size).await?);
    }
    println!(
        "(h) orchestrations of one trivial activity, one runtime (orchestration and worker \
         concurrency 4); steady: {IN_FLIGHT} kept in flight for {} s after a warm-up; backlog: \
         {size} started before the runtime, timed from its start to the last completion; \
         median of {} run(s), interleaved",
        cfg.stress_secs, cfg.runs
    );
    let (s, b) = (median(&steady), median(&backlog));
    table(
        &["measurement", "orch/s", "orch/s per run", "vs steady"],
        &[
            vec![
                format!("steady, {IN_FLIGHT} in flight"),
                fmt_num(s),
                list(&steady),
                "1.00x".to_owned(),
            ],
            vec![
                format!("backlog of {size}"),
                fmt_num(b),
                list(&backlog),
                format!("{}x", fmt_num(b / s)),
            ],
        ],
    );
    Ok(BacklogSummary {
        steady: s,
        backlog: b,
        size,
    })
}

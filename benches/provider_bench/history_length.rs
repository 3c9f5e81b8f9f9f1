//! (g) turn cost against history length: one orchestration running N
//! sequential trivial activities (N = 20, 200, 1000), through a proxy that
//! adds no delay and counts bytes: ms per step and bytes over the wire per
//! step (both directions), with the provider's history cache (the default)
//! and without it, interleaved in one run. Without the cache every turn and
//! every history read ship the whole history, so bytes per step grow with N;
//! with it they ship the events added since the provider's last turn.

use std::time::{Duration, Instant};

use duroxide::Client;
use duroxide::runtime::RuntimeOptions;

use crate::config::{Config, progress};
use crate::report::{fmt_num, list, median, ms, table};
use crate::setup::{start_proxy, tapped_runtime_with_cache};
use crate::{Res, WAIT};

/// One measured chain of `steps` activities.
struct Sample {
    ms_per_step: f64,
    bytes_to_server_per_step: f64,
    bytes_from_server_per_step: f64,
}

async fn chain_once(url: &str, steps: u32, cache: bool) -> Res<Sample> {
    let host = start_proxy(url, Duration::ZERO).await?;
    let cache_events = if cache {
        duroxide_diesel::DEFAULT_HISTORY_CACHE_EVENTS
    } else {
        0
    };
    let (tap, rt) = tapped_runtime_with_cache(
        url,
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
            .start_orchestration("hist-warm", "SeqN", "3")
            .await
            .map_err(|e| format!("start: {e}"))?;
        tap.wait_done("hist-warm", WAIT).await?;
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
        })
    }
    .await;
    rt.shutdown(None).await;
    outcome
}

/// Median ms per step and bytes from the server per step, by chain length,
/// with the history cache.
pub struct HistorySummary {
    pub rows: Vec<(u32, f64, f64)>,
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
            runs.push(chain_once(url, *steps, *cache).await?);
        }
    }
    println!(
        "(g) one orchestration of N sequential trivial activities, default RuntimeOptions, \
         through a proxy that adds no delay and counts bytes; per step = whole run / N, after a \
         warm-up; median of {} run(s); history cache on (default) and off, interleaved; \
         growth = per-step value / the chain of {}'s with the same cache setting",
        cfg.runs, lengths[0]
    );
    let mut rows = Vec::new();
    let mut summary = Vec::new();
    let mut base: [Option<(f64, f64)>; 2] = [None, None];
    for (steps, cache, runs) in &samples {
        let msv: Vec<f64> = runs.iter().map(|s| s.ms_per_step).collect();
        let to: Vec<f64> = runs.iter().map(|s| s.bytes_to_server_per_step).collect();
        let from: Vec<f64> = runs.iter().map(|s| s.bytes_from_server_per_step).collect();
        let (m, b) = (median(&msv), median(&from));
        let (m0, b0) = *base[usize::from(*cache)].get_or_insert((m, b));
        rows.push(vec![
            steps.to_string(),
            if *cache { "on" } else { "off" }.to_owned(),
            fmt_num(m),
            list(&msv),
            format!("{}x", fmt_num(m / m0)),
            fmt_num(median(&to)),
            fmt_num(b),
            format!("{}x", fmt_num(b / b0)),
        ]);
        if *cache {
            summary.push((*steps, m, b));
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
        ],
        &rows,
    );
    Ok(HistorySummary { rows: summary })
}

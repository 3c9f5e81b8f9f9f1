//! (d) round trips per second sent by an idle runtime.

use std::time::Duration;

use duroxide::runtime::RuntimeOptions;

use crate::Res;
use crate::config::{Config, progress};
use crate::report::{fmt_num, table};
use crate::setup::{start_proxy, tapped_runtime};
pub struct IdleSummary {
    pub qps: f64,
}

pub async fn run(url: &str, cfg: &Config) -> Res<IdleSummary> {
    progress(format!(
        "(d) idle runtime, {:?} warm-up + {} s window",
        cfg.idle_warmup, cfg.idle_secs
    ));
    let host = start_proxy(url, Duration::ZERO).await?;
    let options = RuntimeOptions {
        orchestration_concurrency: 1,
        worker_concurrency: 1,
        ..Default::default()
    };
    let (tap, rt) = tapped_runtime(url, "idle", Some(&host), options).await?;
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

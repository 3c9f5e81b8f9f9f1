//! (b) one orchestration running sequential trivial activities: ms per
//! step, directly and through the delay proxy, with round trips per step
//! against the five-round-trip floor.

use std::time::{Duration, Instant};

use duroxide::Client;
use duroxide::runtime::RuntimeOptions;

use crate::config::{Config, progress};
use crate::registries::STEPS;
use crate::report::{fmt_num, list, median, ms, table};
use crate::setup::{probe_rtt, start_proxy, tapped_runtime};
use crate::tap::Calls;
use crate::{Res, WAIT};

/// Round trips per sequential step that no provider can avoid: fetch and ack
/// of the orchestration turn, fetch of the work item, the runtime's history
/// read before running the activity, ack of the work item.
pub const FLOOR_RTS_PER_STEP: f64 = 5.0;

#[derive(Clone, Copy, PartialEq)]
pub enum Path {
    Direct,
    Proxy(Duration),
}

impl Path {
    fn label(&self) -> String {
        match self {
            Path::Direct => "direct (localhost)".to_owned(),
            Path::Proxy(d) => format!("proxy, {} ms RTT", d.as_millis() * 2),
        }
    }

    fn rtt_ms(&self) -> f64 {
        match self {
            Path::Direct => 0.0,
            Path::Proxy(d) => ms(*d) * 2.0,
        }
    }
}

struct SeqSample {
    ms_per_step: f64,
    rts_per_step: Option<f64>,
    conns_opened: Option<u64>,
    calls: Calls,
    probe_rtt_ms: f64,
}

async fn sequential_once(url: &str, path: Path) -> Res<SeqSample> {
    let host = match path {
        Path::Direct => None,
        Path::Proxy(d) => Some(start_proxy(url, d).await?),
    };
    let purl = host
        .as_ref()
        .map_or_else(|| url.to_owned(), |h| h.proxy().url(url));
    let probe_rtt_ms = probe_rtt(&purl, 10).await?;
    let (tap, rt) = tapped_runtime(url, "seq", host.as_ref(), RuntimeOptions::default()).await?;
    let client = Client::new(tap.clone());

    let outcome = async {
        // Warm-up: an identical run opens the pooled connections and
        // prepares every statement on them.
        client
            .start_orchestration("seq-warm", "Seq20", "")
            .await
            .map_err(|e| format!("start: {e}"))?;
        tap.wait_done("seq-warm", WAIT).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;

        let before = tap.calls();
        if let Some(h) = &host {
            h.proxy().reset();
        }
        let t0 = Instant::now();
        client
            .start_orchestration("seq-measured", "Seq20", "")
            .await
            .map_err(|e| format!("start: {e}"))?;
        let done = tap.wait_done("seq-measured", WAIT).await?;
        if done.failed {
            return Err("the measured orchestration failed".to_owned());
        }
        let calls = tap.calls().since(&before);
        let total = done.at.duration_since(t0);
        Ok::<_, String>(SeqSample {
            ms_per_step: ms(total) / STEPS as f64,
            rts_per_step: host
                .as_ref()
                .map(|_| done.proxy.round_trips as f64 / STEPS as f64),
            conns_opened: host.as_ref().map(|_| done.proxy.connections),
            calls,
            probe_rtt_ms,
        })
    }
    .await;
    rt.shutdown(None).await;
    outcome
}

pub struct SeqSummary {
    rows: Vec<(Path, Vec<SeqSample>)>,
}

impl SeqSummary {
    pub fn median_ms(&self, path: Path) -> Option<f64> {
        self.rows
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, s)| median(&s.iter().map(|x| x.ms_per_step).collect::<Vec<_>>()))
    }
}

pub async fn run(url: &str, cfg: &Config) -> Res<SeqSummary> {
    let paths = [
        Path::Direct,
        Path::Proxy(Duration::from_millis(5)),
        Path::Proxy(Duration::from_millis(25)),
    ];
    let mut rows: Vec<(Path, Vec<SeqSample>)> = paths.iter().map(|p| (*p, Vec::new())).collect();
    for run in 0..cfg.runs {
        for (path, samples) in rows.iter_mut() {
            progress(format!("(b) {} run {}/{}", path.label(), run + 1, cfg.runs));
            samples.push(sequential_once(url, *path).await?);
        }
    }

    println!(
        "(b) one orchestration, {STEPS} sequential trivial activities, default RuntimeOptions \
         (2 orchestration + 2 worker dispatchers, 100 ms min poll interval, 30 s long poll); \
         ms/step = (start_orchestration call -> final ack returned) / {STEPS}, after a warm-up run; \
         median of {} run(s); floor = 5 round trips x RTT per step",
        cfg.runs
    );
    let mut out = Vec::new();
    for (path, samples) in &rows {
        let msv: Vec<f64> = samples.iter().map(|s| s.ms_per_step).collect();
        let m = median(&msv);
        let rts: Vec<f64> = samples.iter().filter_map(|s| s.rts_per_step).collect();
        let floor = FLOOR_RTS_PER_STEP * path.rtt_ms();
        let probe = median(&samples.iter().map(|s| s.probe_rtt_ms).collect::<Vec<_>>());
        let conns: u64 = samples.iter().filter_map(|s| s.conns_opened).sum();
        out.push(vec![
            path.label(),
            fmt_num(m),
            list(&msv),
            if rts.is_empty() {
                "n/a (no proxy)".to_owned()
            } else {
                fmt_num(median(&rts))
            },
            if floor > 0.0 {
                fmt_num(floor)
            } else {
                "~0".to_owned()
            },
            if floor > 0.0 {
                format!("{}x", fmt_num(m / floor))
            } else {
                "n/a".to_owned()
            },
            fmt_num(probe),
            if rts.is_empty() {
                "n/a".to_owned()
            } else {
                conns.to_string()
            },
        ]);
    }
    table(
        &[
            "path",
            "ms/step",
            "ms/step per run",
            "round trips/step",
            "floor ms/step",
            "ms/step / floor",
            "measured SELECT 1 RTT ms",
            "conns opened while measured",
        ],
        &out,
    );
    println!(
        "provider calls per step seen by the tap (median run's counts are similar; last run shown):"
    );
    let mut call_rows = Vec::new();
    for (path, samples) in &rows {
        if let Some(s) = samples.last() {
            let db_calls = s.calls.db_calls() as f64;
            call_rows.push(vec![
                path.label(),
                fmt_num(db_calls / STEPS as f64),
                s.rts_per_step
                    .map(|r| fmt_num(r * STEPS as f64 / db_calls))
                    .unwrap_or_else(|| "n/a".to_owned()),
                s.calls.describe(STEPS as f64),
            ]);
        }
    }
    table(
        &[
            "path",
            "calls/step",
            "round trips per call",
            "calls per step by method (counted when the call starts)",
        ],
        &call_rows,
    );
    Ok(SeqSummary { rows })
}

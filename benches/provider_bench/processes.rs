//! (i) runtimes in separate processes on one schema: 1, 2 and 4 copies of
//! this benchmark binary (child mode, see [`child_main`]), each running one
//! runtime, drain one backlog of orchestrations of one trivial activity.
//! Reported: total throughput, each process's share of the activities, and
//! the CPU the processes used per orchestration.
//!
//! The backlog is in place before any child starts its runtime, and all of
//! them start at one signal, so no process gets a head start.

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use duroxide::ActivityContext;
use duroxide::Client;
use duroxide::providers::ProviderAdmin;
use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::{Runtime, RuntimeOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::config::{Config, progress};
use crate::registries::orchestrations;
use crate::report::{fmt_num, list, median, table};
use crate::setup::{build_pg, new_schema};
use crate::{Res, WAIT};

/// Set (to anything) in a child's environment: run [`child_main`].
pub const CHILD_ENV: &str = "DXBENCH_CHILD";
const CHILD_URL: &str = "DXBENCH_CHILD_URL";
const CHILD_SCHEMA: &str = "DXBENCH_CHILD_SCHEMA";

/// Runtime processes per measurement.
const PROCESSES: [usize; 3] = [1, 2, 4];

/// Every process runs the same runtime settings as section (h).
fn options() -> RuntimeOptions {
    RuntimeOptions {
        orchestration_concurrency: 4,
        worker_concurrency: 4,
        ..Default::default()
    }
}

/// Activities this process ran.
static RAN: AtomicUsize = AtomicUsize::new(0);

/// Child mode: builds a provider on the schema it is given, says `ready`,
/// starts its runtime at the line `go`, and at the line `stop` (or end of
/// input) shuts it down and answers `ran <activities> <cpu seconds>`.
pub fn child_main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let outcome: Res<()> = rt.block_on(async {
        let url = std::env::var(CHILD_URL).map_err(|_| format!("{CHILD_URL} unset"))?;
        let schema = std::env::var(CHILD_SCHEMA).map_err(|_| format!("{CHILD_SCHEMA} unset"))?;
        let provider = std::sync::Arc::new(build_pg(&url, &schema).await?);
        let activities = ActivityRegistry::builder()
            .register("Noop", |_c: ActivityContext, s: String| async move {
                RAN.fetch_add(1, Ordering::Relaxed);
                Ok(s)
            })
            .build();
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        println!("ready");
        let mut runtime = None;
        loop {
            let line = lines.next_line().await.map_err(|e| e.to_string())?;
            match line.as_deref() {
                Some("go") => {
                    runtime = Some(
                        Runtime::start_with_options(
                            provider.clone(),
                            activities.clone(),
                            orchestrations(),
                            options(),
                        )
                        .await,
                    );
                }
                Some("stop") | None => break,
                Some(other) => return Err(format!("unknown command {other:?}")),
            }
        }
        if let Some(runtime) = runtime {
            runtime.shutdown(None).await;
        }
        println!(
            "ran {} {}",
            RAN.load(Ordering::Relaxed),
            duroxide_diesel_testkit::cpu::Cpu::now(None).client_seconds()
        );
        Ok(())
    });
    if let Err(e) = outcome {
        eprintln!("provider_bench child failed: {e}");
        std::process::exit(1);
    }
}

/// One measurement's outcome.
struct Drain {
    rate: f64,
    /// Activities per process.
    ran: Vec<usize>,
    /// CPU seconds of all processes together.
    cpu: f64,
}

/// Drains `size` orchestrations with `n` runtime processes.
async fn drain_once(url: &str, n: usize, size: usize) -> Res<Drain> {
    let schema = new_schema(&format!("proc{n}"));
    let provider = std::sync::Arc::new(build_pg(url, &schema).await?);
    let client = Client::new(provider.clone());
    for i in 0..size {
        client
            .start_orchestration(&format!("p{i}"), "One", "x")
            .await
            .map_err(|e| format!("start: {e}"))?;
    }
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut children = Vec::new();
    for _ in 0..n {
        let mut child = tokio::process::Command::new(&exe)
            .env(CHILD_ENV, "1")
            .env(CHILD_URL, url)
            .env(CHILD_SCHEMA, &schema)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("start a runtime process: {e}"))?;
        let stdin = child.stdin.take().ok_or("child stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("child stdout")?).lines();
        children.push((child, stdin, stdout));
    }
    for (_, _, out) in children.iter_mut() {
        let line = out.next_line().await.map_err(|e| e.to_string())?;
        if line.as_deref() != Some("ready") {
            return Err(format!("a runtime process said {line:?} instead of ready"));
        }
    }
    let t0 = Instant::now();
    for (_, stdin, _) in children.iter_mut() {
        stdin
            .write_all(b"go\n")
            .await
            .map_err(|e| format!("signal a runtime process: {e}"))?;
    }
    let deadline = t0 + WAIT * 5;
    let finished = loop {
        let m = provider
            .get_system_metrics()
            .await
            .map_err(|e| format!("system metrics: {e}"))?;
        let ended = (m.completed_instances + m.failed_instances) as usize;
        if ended >= size {
            break Ok(m.failed_instances);
        }
        if Instant::now() > deadline {
            break Err(format!(
                "{ended} of {size} orchestrations ended within {:?}",
                WAIT * 5
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = t0.elapsed();
    let mut ran = Vec::new();
    let mut cpu = 0.0;
    for (mut child, mut stdin, mut out) in children {
        let _ = stdin.write_all(b"stop\n").await;
        let line = out
            .next_line()
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        let mut f = line.split_whitespace();
        match (f.next(), f.next(), f.next()) {
            (Some("ran"), Some(a), Some(c)) => {
                ran.push(a.parse().map_err(|_| format!("bad answer {line:?}"))?);
                cpu += c
                    .parse::<f64>()
                    .map_err(|_| format!("bad answer {line:?}"))?;
            }
            _ => return Err(format!("a runtime process answered {line:?}")),
        }
        let status = child.wait().await.map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("a runtime process exited with {status}"));
        }
    }
    let failed = finished?;
    if failed > 0 {
        return Err(format!("{failed} orchestrations failed"));
    }
    Ok(Drain {
        rate: size as f64 / elapsed.as_secs_f64(),
        ran,
        cpu,
    })
}

/// Per process count: median total rate and the lowest process share
/// relative to an even split, over all runs.
pub struct ProcessesSummary {
    pub rows: Vec<(usize, f64, f64)>,
}

pub async fn run(url: &str, cfg: &Config) -> Res<ProcessesSummary> {
    let size = if cfg.quick { 200 } else { 3_000 };
    let mut cells: Vec<(usize, Vec<Drain>)> = PROCESSES.iter().map(|n| (*n, Vec::new())).collect();
    for run in 0..cfg.runs {
        for (n, drains) in cells.iter_mut() {
            progress(format!(
                "(i) {n} runtime process(es), backlog {size}, run {}/{}",
                run + 1,
                cfg.runs
            ));
            drains.push(drain_once(url, *n, size).await?);
        }
    }
    println!(
        "(i) runtimes in separate processes on one schema (orchestration and worker concurrency 4 \
         each), draining {size} orchestrations of one trivial activity started before they run; \
         median of {} run(s), interleaved",
        cfg.runs
    );
    let mut rows = Vec::new();
    let mut summary = Vec::new();
    let base = median(&cells[0].1.iter().map(|d| d.rate).collect::<Vec<_>>());
    for (n, drains) in &cells {
        let rates: Vec<f64> = drains.iter().map(|d| d.rate).collect();
        // Each process's share of the activities relative to an even split
        // (1.00 = exactly 1/n), lowest and highest over all runs.
        let shares: Vec<f64> = drains
            .iter()
            .flat_map(|d| {
                let total: usize = d.ran.iter().sum();
                d.ran
                    .iter()
                    .map(move |r| *r as f64 * d.ran.len() as f64 / total.max(1) as f64)
            })
            .collect();
        let lo = shares.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = shares.iter().copied().fold(0.0, f64::max);
        let cpu_ms: Vec<f64> = drains
            .iter()
            .map(|d| d.cpu * 1000.0 / size as f64)
            .collect();
        let rate = median(&rates);
        rows.push(vec![
            n.to_string(),
            fmt_num(rate),
            format!("{}x", fmt_num(rate / base)),
            format!("{} .. {}", fmt_num(lo), fmt_num(hi)),
            fmt_num(median(&cpu_ms)),
            list(&rates),
        ]);
        summary.push((*n, rate, lo));
    }
    table(
        &[
            "processes",
            "orch/s (all)",
            "vs 1 process",
            "share of work per process (1.00 = even)",
            "client CPU ms/orch (all processes)",
            "orch/s per run",
        ],
        &rows,
    );
    Ok(ProcessesSummary { rows: summary })
}

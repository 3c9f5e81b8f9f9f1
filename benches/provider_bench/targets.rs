//! The targets, judged from the sections that ran.

use std::time::Duration;

use crate::backlog::BacklogSummary;
use crate::churn::ChurnSummary;
use crate::dispatch::DispatchSummary;
use crate::history_length::HistorySummary;
use crate::idle::IdleSummary;
use crate::per_call::PerCall;
use crate::pooler::PoolerSummary;
use crate::processes::ProcessesSummary;
use crate::report::{fmt_num, median, percentile, table, verdict};
use crate::sequential::{FLOOR_RTS_PER_STEP, Path, SeqSummary};
use crate::stress::StressSummary;
#[derive(Default)]
pub struct Results {
    pub a: Option<StressSummary>,
    pub b: Option<SeqSummary>,
    pub c: Option<DispatchSummary>,
    pub d: Option<IdleSummary>,
    pub e: Option<PerCall>,
    pub f: Option<PoolerSummary>,
    pub g: Option<HistorySummary>,
    pub h: Option<BacklogSummary>,
    pub i: Option<ProcessesSummary>,
    pub j: Option<ChurnSummary>,
}

pub fn print_targets(r: &Results) {
    println!("Targets, measured in this run:");
    let mut rows = Vec::new();

    let per_call =
        r.e.as_ref()
            .map(|e| e.rows.iter().map(|x| x.1).max().unwrap_or(0));
    rows.push(vec![
        "round trips per hot-path call".to_owned(),
        "1".to_owned(),
        per_call
            .map(|m| {
                format!(
                    "max {m} over {} calls (e)",
                    r.e.as_ref().map_or(0, |e| e.rows.len())
                )
            })
            .unwrap_or_else(|| "n/a".to_owned()),
        verdict(per_call.map(|m| m <= 1)).to_owned(),
    ]);

    let at50 =
        r.b.as_ref()
            .and_then(|b| b.median_ms(Path::Proxy(Duration::from_millis(25))));
    let floor50 = FLOOR_RTS_PER_STEP * 50.0;
    rows.push(vec![
        "ms/step at 50 ms RTT".to_owned(),
        format!("<= 1.1 x floor = {} ms", fmt_num(1.1 * floor50)),
        at50.map(|m| format!("{} ms = {}x floor", fmt_num(m), fmt_num(m / floor50)))
            .unwrap_or_else(|| "n/a".to_owned()),
        verdict(at50.map(|m| m <= 1.1 * floor50)).to_owned(),
    ]);

    let local = r.b.as_ref().and_then(|b| b.median_ms(Path::Direct));
    rows.push(vec![
        "ms/step on localhost, default poll interval".to_owned(),
        "<= 5 ms".to_owned(),
        local
            .map(|m| format!("{} ms", fmt_num(m)))
            .unwrap_or_else(|| "n/a".to_owned()),
        verdict(local.map(|m| m <= 5.0)).to_owned(),
    ]);

    let p50 = r.c.as_ref().map(|c| percentile(&c.from_return, 0.5));
    rows.push(vec![
        "dispatch latency p50, localhost".to_owned(),
        "<= 5 ms".to_owned(),
        p50.map(|m| format!("{} ms", fmt_num(m)))
            .unwrap_or_else(|| "n/a".to_owned()),
        verdict(p50.map(|m| m <= 5.0)).to_owned(),
    ]);

    let qps = r.d.as_ref().map(|d| d.qps);
    rows.push(vec![
        "idle queries/s per runtime".to_owned(),
        "<= 1".to_owned(),
        qps.map(fmt_num).unwrap_or_else(|| "n/a".to_owned()),
        verdict(qps.map(|q| q <= 1.0)).to_owned(),
    ]);

    let stress = r.a.as_ref().and_then(|a| {
        a.cells
            .iter()
            .find(|(c, _, _)| *c == (2, 2))
            .map(|(_, pg, sq)| (median(&pg.orch) / median(&sq.orch), pg.failed))
    });
    rows.push(vec![
        "stress throughput at 2:2 vs SQLite".to_owned(),
        ">= 2x, 0 failed".to_owned(),
        stress
            .map(|(ratio, failed)| format!("{}x, {failed} failed", fmt_num(ratio)))
            .unwrap_or_else(|| "n/a".to_owned()),
        verdict(stress.map(|(ratio, failed)| ratio >= 2.0 && failed == 0)).to_owned(),
    ]);

    let pooled = r.f.as_ref().map(|f| {
        (
            median(&f.pooled.orch) / median(&f.direct.orch),
            f.pooled.failed + f.direct.failed,
            f.pooled.completed,
        )
    });
    rows.push(vec![
        "stress at 2:2 through PgBouncer (transaction pooling)".to_owned(),
        "completes, 0 failed".to_owned(),
        pooled
            .map(|(ratio, failed, _)| format!("{}x direct, {failed} failed", fmt_num(ratio)))
            .unwrap_or_else(|| "n/a".to_owned()),
        verdict(pooled.map(|(_, failed, completed)| failed == 0 && completed > 0)).to_owned(),
    ]);

    // The targets for the provider's share: the wire traffic per step
    // (every byte is a provider call) and the time in its stored functions.
    let g_growth = |label: &str, value: fn(&(u32, f64, f64, f64)) -> f64| {
        let growth = r.g.as_ref().and_then(|g| {
            let first = g.rows.first()?;
            let last = g.rows.last()?;
            Some((last.0, first.0, value(last) / value(first)))
        });
        vec![
            format!("{label} per step, longest chain vs 20 steps"),
            "<= 2x".to_owned(),
            growth
                .map(|(n, n0, x)| format!("{}x ({n} vs {n0} steps)", fmt_num(x)))
                .unwrap_or_else(|| "n/a".to_owned()),
            verdict(growth.map(|(_, _, x)| x <= 2.0)).to_owned(),
        ]
    };
    rows.push(g_growth("bytes from server", |row| row.2));
    rows.push(g_growth("server time", |row| row.3));

    let drain = r.h.as_ref().map(|h| (h.size, h.backlog / h.steady));
    rows.push(vec![
        "drain rate of a backlog vs steady state".to_owned(),
        ">= 0.8x".to_owned(),
        drain
            .map(|(n, x)| format!("{}x ({n} orchestrations)", fmt_num(x)))
            .unwrap_or_else(|| "n/a".to_owned()),
        verdict(drain.map(|(_, x)| x >= 0.8)).to_owned(),
    ]);

    // Failed orchestrations fail the section itself, so a summary means 0.
    let fairness =
        r.i.as_ref()
            .map(|i| i.rows.iter().map(|x| x.2).fold(f64::INFINITY, f64::min));
    rows.push(vec![
        "runtime processes on one schema: lowest share of the work".to_owned(),
        ">= 0.5x an even split, 0 failed".to_owned(),
        fairness
            .map(|x| {
                format!(
                    "{}x (over {} process counts)",
                    fmt_num(x),
                    r.i.as_ref().map_or(0, |i| i.rows.len())
                )
            })
            .unwrap_or_else(|| "n/a".to_owned()),
        verdict(fairness.map(|x| x >= 0.5)).to_owned(),
    ]);

    let churn = r.j.as_ref().map(|j| (j.total, j.kept.min(j.pruned)));
    rows.push(vec![
        "steady rate after churn vs fresh schema (kept and pruned)".to_owned(),
        ">= 0.9x".to_owned(),
        r.j.as_ref()
            .map(|j| {
                format!(
                    "kept {}x, pruned {}x ({} orchestrations)",
                    fmt_num(j.kept),
                    fmt_num(j.pruned),
                    j.total
                )
            })
            .unwrap_or_else(|| "n/a".to_owned()),
        verdict(churn.map(|(_, x)| x >= 0.9)).to_owned(),
    ]);

    table(&["target", "goal", "measured", "verdict"], &rows);
}

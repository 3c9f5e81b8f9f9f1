//! The report: per call and statement, the verdicts, and the exit code.

use std::collections::BTreeMap;

use crate::Args;
use crate::analysis::{
    Analysis, LARGE_TABLES, SEQ_TOLERATED_ROWS, Verdict, WIDE_ROWS, analyse, one_line, render_plan,
};
use crate::capture::{CallRecord, Category, Pass};

/// Statements worth showing in full, each once (the execution that read the
/// most rows), with the calls that ran them.
#[derive(Default)]
struct Findings {
    order: Vec<String>,
    entries: std::collections::HashMap<String, (f64, String, Vec<String>)>,
}

impl Findings {
    fn add(&mut self, key: String, rows: f64, detail: impl FnOnce() -> String, call: String) {
        let entry = match self.entries.get_mut(&key) {
            Some(entry) => {
                if rows > entry.0 {
                    *entry = (rows, detail(), std::mem::take(&mut entry.2));
                }
                entry
            }
            None => {
                self.order.push(key.clone());
                self.entries
                    .entry(key)
                    .or_insert_with(|| (rows, detail(), Vec::new()))
            }
        };
        if !entry.2.contains(&call) {
            entry.2.push(call);
        }
    }

    fn print(&self) {
        for key in &self.order {
            if let Some((_, detail, calls)) = self.entries.get(key) {
                println!("  in: {}\n{detail}", calls.join("; "));
            }
        }
    }
}

/// Prints the tables and returns the exit code.
pub fn report(records: &[CallRecord], args: &Args) -> i32 {
    let mut failures = Findings::default();
    let mut notes = Findings::default();
    let mut small: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut per_verdict: BTreeMap<(Category, Verdict), usize> = BTreeMap::new();
    let mut captured = 0usize;

    println!(
        "\nPer call: category, worst verdict over its statements, buffers of the whole call \
         (shared hit + read), outcome.\n\
         Per statement touching a table: repeat count, max rows read from one table (returned + \
         filtered, all loops), verdict, g = generic plan, where it runs (function:line or top \
         level), top plan node, table:index per scan ((not run) = planned, not executed here).\n\
         Verdicts: index | seq(small) = seq scan of instance_locks/sessions only | WIDE = over \
         {WIDE_ROWS} rows read through indexes | by design = whole-table call | SEQ SCAN = seq \
         scan reading over {SEQ_TOLERATED_ROWS} rows of {}.",
        LARGE_TABLES.join("/")
    );
    for pass in [Pass::Custom, Pass::Generic] {
        println!(
            "\n=== {} plans {}",
            pass.label(),
            match pass {
                Pass::Custom => "(default plan caching: first executions get custom plans)",
                Pass::Generic => "(plan_cache_mode=force_generic_plan)",
            }
        );
        for r in records.iter().filter(|r| r.pass == pass) {
            let analyses: Vec<Analysis> = r
                .statements
                .iter()
                .map(|s| analyse(s, r.category))
                .collect();
            captured += analyses.len();
            let worst = analyses
                .iter()
                .map(|a| a.verdict)
                .max()
                .unwrap_or(Verdict::NoTable);
            *per_verdict.entry((r.category, worst)).or_default() += 1;
            let buffers: f64 = r
                .statements
                .iter()
                .zip(&analyses)
                .filter(|(s, _)| s.context.is_none())
                .map(|(_, a)| a.buffers)
                .sum();
            println!(
                "{:<5} {:<50} {:<10} {:>6} bufs  {}",
                r.category.label(),
                r.op,
                worst.label(),
                buffers,
                one_line(&r.outcome, 70)
            );
            let call = format!("{} [{}]", r.op, pass.label());
            // Identical lines (a bulk call runs the same statement per
            // instance) are printed once with a count.
            let mut lines: Vec<(String, usize, f64)> = Vec::new();
            for (stmt, a) in r.statements.iter().zip(&analyses) {
                if a.verdict == Verdict::NoTable {
                    continue;
                }
                let place = stmt.context.as_deref().unwrap_or("top");
                let access = a
                    .accesses
                    .iter()
                    .map(|x| format!("{}:{}", x.table, x.how))
                    .collect::<Vec<_>>()
                    .join(" ");
                let query = if stmt.context.is_none() {
                    format!("  | {}", one_line(&stmt.query, 60))
                } else {
                    String::new()
                };
                let line = format!(
                    "{:<10} {}  {:<30} {:<25} {access}{query}",
                    a.verdict.label(),
                    if a.generic { "g" } else { " " },
                    place,
                    one_line(&a.top, 25),
                );
                match lines.iter_mut().find(|(l, _, _)| *l == line) {
                    Some((_, n, rows)) => {
                        *n += 1;
                        *rows = rows.max(a.rows);
                    }
                    None => lines.push((line, 1, a.rows)),
                }
            }
            for (line, n, rows) in &lines {
                let times = if *n > 1 {
                    format!("x{n}")
                } else {
                    String::new()
                };
                println!("      {times:>4} {rows:>7}  {line}");
            }
            for (stmt, a) in r.statements.iter().zip(&analyses) {
                let place = stmt.context.as_deref().unwrap_or("top");
                if args.plans {
                    let mut plan = String::new();
                    render_plan(&stmt.plan, 2, &mut plan);
                    print!("{plan}");
                }
                let key = format!("{}|{place}|{}", pass.label(), stmt.query);
                let detail = || {
                    let mut plan = String::new();
                    render_plan(&stmt.plan, 0, &mut plan);
                    format!(
                        "  [{}] {place}: {}\n{plan}",
                        pass.label(),
                        one_line(&stmt.query, 600)
                    )
                };
                match a.verdict {
                    Verdict::SeqScan if r.category.must_use_indexes(args.strict) => {
                        failures.add(key, a.rows, detail, call.clone());
                    }
                    Verdict::SeqScan | Verdict::Wide => {
                        notes.add(key, a.rows, detail, call.clone())
                    }
                    Verdict::SeqSmall => {
                        let tables: Vec<&str> = a
                            .accesses
                            .iter()
                            .filter(|x| x.seq)
                            .map(|x| x.table.as_str())
                            .collect();
                        let calls = small
                            .entry(format!(
                                "{} in {place}: {}",
                                tables.join(", "),
                                one_line(&stmt.query, 70)
                            ))
                            .or_default();
                        if !calls.contains(&r.op) {
                            calls.push(r.op.clone());
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    println!("\n=== calls per category and worst verdict (both passes)");
    for ((category, verdict), n) in &per_verdict {
        println!("  {:<6} {:<10} {n}", category.label(), verdict.label());
    }
    let errors: Vec<&CallRecord> = records
        .iter()
        .filter(|r| r.outcome.starts_with("ERROR") || r.outcome.starts_with("skipped"))
        .collect();
    if !errors.is_empty() {
        println!("\n=== calls that failed or were skipped");
        for r in errors {
            println!("  [{}] {}: {}", r.pass.label(), r.op, r.outcome);
        }
    }
    if !small.is_empty() {
        println!(
            "\n=== seq scans of small tables (instance_locks holds in-flight instances, sessions \
             live sessions; their unique indexes take over as they grow)"
        );
        for (stmt, calls) in &small {
            println!("  {stmt}\n      by {}", calls.join(", "));
        }
    }
    if !notes.order.is_empty() {
        println!("\n=== worth a look: wide index walks, and seq scans outside the checked calls");
        notes.print();
    }
    if captured == 0 {
        println!("\nno plans were captured: is auto_explain logging to this log file?");
        return 2;
    }
    if failures.order.is_empty() {
        println!(
            "\nOK: {captured} statements analysed; no {} call seq-scans over \
             {SEQ_TOLERATED_ROWS} rows of {}.",
            if args.strict {
                "hot-path, read, maintenance or per-instance admin"
            } else {
                "hot-path or per-instance read"
            },
            LARGE_TABLES.join(", ")
        );
        0
    } else {
        println!(
            "\n=== FAILED: {} statements seq-scan a large table in a hot-path or read call",
            failures.order.len()
        );
        failures.print();
        1
    }
}

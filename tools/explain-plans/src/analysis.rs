//! Plan analysis: how each statement reached each table, how many rows it
//! read, and a verdict per statement.

use std::fmt::Write as _;

use serde_json::Value;

use crate::capture::{Category, Logged};
use crate::seed::TABLES;

/// Tables that grow with the number of instances or queued work: a per-call
/// statement must reach them through an index. `instance_locks` and
/// `sessions` only hold in-flight instances and live sessions.
pub const LARGE_TABLES: [&str; 7] = [
    "instances",
    "executions",
    "history",
    "orchestrator_queue",
    "worker_queue",
    "kv_store",
    "kv_delta",
];

/// A statement examining more rows than this is reported as a wide walk.
pub const WIDE_ROWS: f64 = 1000.0;

/// A seq scan of a growing table is a finding only when it read more rows
/// than this: at a reduced size some of those tables (`kv_delta`, the
/// queues) hold a few hundred rows, and scanning them is the planner's
/// right choice, while at any size the tables that matter hold more.
pub const SEQ_TOLERATED_ROWS: f64 = 1000.0;

/// How a statement reached one table.
pub struct Access {
    pub table: String,
    pub how: String,
    pub seq: bool,
    /// Rows read from the table (returned plus filtered out), all loops.
    pub rows: f64,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    NoTable,
    Index,
    SeqSmall,
    ByDesign,
    Wide,
    SeqScan,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::NoTable => "-",
            Verdict::Index => "index",
            Verdict::SeqSmall => "seq(small)",
            Verdict::ByDesign => "by design",
            Verdict::Wide => "WIDE",
            Verdict::SeqScan => "SEQ SCAN",
        }
    }
}

pub struct Analysis {
    pub top: String,
    pub accesses: Vec<Access>,
    pub rows: f64,
    pub buffers: f64,
    pub verdict: Verdict,
    /// A generic plan shows parameters as `$n`; a custom plan shows values.
    pub generic: bool,
}

/// Conditions shown by EXPLAIN for a node.
pub const CONDITIONS: [&str; 5] = [
    "Index Cond",
    "Recheck Cond",
    "Hash Cond",
    "Join Filter",
    "Filter",
];

pub fn has_parameters(node: &Value) -> bool {
    let param = |s: &str| {
        s.as_bytes()
            .windows(2)
            .any(|w| w[0] == b'$' && w[1].is_ascii_digit())
    };
    CONDITIONS.iter().any(|k| param(text(node, k))) || children(node).any(has_parameters)
}

pub fn num(node: &Value, key: &str) -> f64 {
    node.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

pub fn text<'a>(node: &'a Value, key: &str) -> &'a str {
    node.get(key).and_then(Value::as_str).unwrap_or("")
}

pub fn children(node: &Value) -> impl Iterator<Item = &Value> {
    node.get("Plans")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

pub fn short_index(table: &str, index: &str) -> String {
    index
        .strip_prefix(table)
        .and_then(|s| s.strip_prefix('_'))
        .unwrap_or(index)
        .to_owned()
}

pub fn collect_access(node: &Value, out: &mut Vec<Access>) {
    let kind = text(node, "Node Type");
    let table = text(node, "Relation Name");
    if kind != "ModifyTable" && TABLES.contains(&table) {
        let loops = num(node, "Actual Loops");
        let rows = (num(node, "Actual Rows")
            + num(node, "Rows Removed by Filter")
            + num(node, "Rows Removed by Index Recheck"))
            * loops;
        // A node that never ran is still the plan for other data.
        let never = if loops == 0.0 { "(not run)" } else { "" };
        let how = match kind {
            "Seq Scan" => format!("SEQ{never}"),
            "Index Scan" => format!("{}{never}", short_index(table, text(node, "Index Name"))),
            "Index Only Scan" => format!(
                "ionly {}{never}",
                short_index(table, text(node, "Index Name"))
            ),
            "Bitmap Heap Scan" => {
                let mut names = Vec::new();
                bitmap_indexes(node, table, &mut names);
                format!("bitmap {}{never}", names.join("+"))
            }
            other => format!("{other}{never}"),
        };
        out.push(Access {
            table: table.to_owned(),
            how,
            seq: kind == "Seq Scan",
            rows,
        });
    }
    for child in children(node) {
        collect_access(child, out);
    }
}

pub fn bitmap_indexes(node: &Value, table: &str, out: &mut Vec<String>) {
    if text(node, "Node Type") == "Bitmap Index Scan" {
        out.push(short_index(table, text(node, "Index Name")));
    }
    for child in children(node) {
        bitmap_indexes(child, table, out);
    }
}

pub fn node_label(node: &Value) -> String {
    let kind = text(node, "Node Type");
    let table = text(node, "Relation Name");
    match kind {
        "ModifyTable" => format!("{} {}", text(node, "Operation"), table),
        _ if !table.is_empty() => format!("{kind} {table}"),
        _ => kind.to_owned(),
    }
}

pub fn analyse(stmt: &Logged, category: Category) -> Analysis {
    let mut accesses = Vec::new();
    collect_access(&stmt.plan, &mut accesses);
    let rows = accesses.iter().map(|a| a.rows).fold(0.0, f64::max);
    let buffers = num(&stmt.plan, "Shared Hit Blocks") + num(&stmt.plan, "Shared Read Blocks");
    let seq_large = accesses
        .iter()
        .any(|a| a.seq && LARGE_TABLES.contains(&a.table.as_str()) && a.rows > SEQ_TOLERATED_ROWS);
    let verdict = if accesses.is_empty() {
        Verdict::NoTable
    } else if category == Category::WholeTable && (seq_large || rows > WIDE_ROWS) {
        Verdict::ByDesign
    } else if seq_large {
        Verdict::SeqScan
    } else if rows > WIDE_ROWS {
        Verdict::Wide
    } else if accesses.iter().any(|a| a.seq) {
        Verdict::SeqSmall
    } else {
        Verdict::Index
    };
    Analysis {
        top: node_label(&stmt.plan),
        accesses,
        rows,
        buffers,
        verdict,
        generic: has_parameters(&stmt.plan),
    }
}

pub fn one_line(s: &str, max: usize) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > max {
        let cut: String = s.chars().take(max - 1).collect();
        format!("{cut}…")
    } else {
        s
    }
}

pub fn render_plan(node: &Value, depth: usize, out: &mut String) {
    let pad = "    ".to_owned() + &"  ".repeat(depth);
    let mut line = format!("{pad}-> ");
    let subplan = text(node, "Subplan Name");
    if !subplan.is_empty() {
        let _ = write!(line, "[{subplan}] ");
    }
    line.push_str(&node_label(node));
    let index = text(node, "Index Name");
    if !index.is_empty() {
        let _ = write!(line, " using {index}");
    }
    let _ = write!(
        line,
        "  (rows={} loops={}",
        num(node, "Actual Rows"),
        num(node, "Actual Loops")
    );
    let removed = num(node, "Rows Removed by Filter");
    if removed > 0.0 {
        let _ = write!(line, " removed={removed}");
    }
    line.push(')');
    let _ = writeln!(out, "{line}");
    for key in CONDITIONS {
        let cond = text(node, key);
        if !cond.is_empty() {
            let _ = writeln!(out, "{pad}     {key}: {}", one_line(cond, 160));
        }
    }
    for child in children(node) {
        render_plan(child, depth + 1, out);
    }
}

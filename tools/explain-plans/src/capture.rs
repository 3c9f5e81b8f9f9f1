//! Capturing plans: connections that load `auto_explain`, and the server
//! log window each provider call wrote, parsed into plans.

use std::collections::HashSet;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use duroxide::providers::ProviderError;
use duroxide_diesel_testkit::db;
use serde_json::Value;

use crate::BoxError;

/// auto_explain settings passed in the connection's `options`.
const AUTO_EXPLAIN: [&str; 7] = [
    "session_preload_libraries=auto_explain",
    "auto_explain.log_min_duration=0",
    "auto_explain.log_nested_statements=on",
    "auto_explain.log_analyze=on",
    "auto_explain.log_timing=off",
    "auto_explain.log_buffers=on",
    "auto_explain.log_format=json",
];

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Default plan caching: a statement's first executions get custom plans.
    Custom,
    /// `plan_cache_mode=force_generic_plan`: what a connection may settle on.
    Generic,
}

impl Pass {
    pub fn label(self) -> &'static str {
        match self {
            Pass::Custom => "custom",
            Pass::Generic => "generic",
        }
    }

    pub fn index(self) -> i64 {
        match self {
            Pass::Custom => 0,
            Pass::Generic => 1,
        }
    }

    pub fn options(self) -> Vec<&'static str> {
        let mut options = AUTO_EXPLAIN.to_vec();
        if self == Pass::Generic {
            options.push("plan_cache_mode=force_generic_plan");
        }
        options
    }
}

/// Fails clearly if the server refuses the settings or auto_explain is missing.
pub async fn check_auto_explain(explain_url: &str) -> Result<(), BoxError> {
    let format = db::scalar(
        explain_url,
        "current_setting('auto_explain.log_format', true)",
    )
    .await
    .map_err(|e| {
        format!(
            "could not connect with auto_explain options (loading it per session needs a \
                 superuser and the auto_explain module): {e}"
        )
    })?;
    match format.as_deref() {
        Some("json") => Ok(()),
        other => Err(format!("auto_explain is not active on the connection ({other:?})").into()),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Category {
    /// Dispatcher and worker calls: fetch, ack, abandon, renew, enqueue.
    Hot,
    /// Per-instance reads by clients and the runtime.
    Read,
    /// Periodic housekeeping.
    Maintenance,
    /// Per-instance management calls.
    Admin,
    /// Whole-table management calls: scanning is their job.
    WholeTable,
}

impl Category {
    pub fn label(self) -> &'static str {
        match self {
            Category::Hot => "hot",
            Category::Read => "read",
            Category::Maintenance => "maint",
            Category::Admin => "admin",
            Category::WholeTable => "table",
        }
    }

    /// Whether a seq scan of a large table fails the run.
    pub fn must_use_indexes(self, strict: bool) -> bool {
        match self {
            Category::Hot | Category::Read => true,
            Category::Maintenance | Category::Admin => strict,
            Category::WholeTable => false,
        }
    }
}

/// One auto_explain entry.
pub struct Logged {
    /// The innermost function running the statement, e.g. `dx_fetch_work:12`.
    pub context: Option<String>,
    pub query: String,
    pub plan: Value,
}

pub struct CallRecord {
    pub pass: Pass,
    pub category: Category,
    pub op: String,
    pub outcome: String,
    pub statements: Vec<Logged>,
}

pub struct Recorder {
    log: Option<PathBuf>,
    inspector: AsyncPgConnection,
    pub app_name: String,
    pids: HashSet<i32>,
    pub pass: Pass,
    pub records: Vec<CallRecord>,
}

impl Recorder {
    /// A recorder reading plans from `log` (none: calls run, plans are not
    /// read), identifying the explaining provider's backends by name.
    pub async fn new(url: &str, log: Option<&Path>) -> Result<Recorder, BoxError> {
        Ok(Recorder {
            log: log.map(Path::to_path_buf),
            inspector: AsyncPgConnection::establish(url).await?,
            app_name: format!("explain_plans_{}", std::process::id()),
            pids: HashSet::new(),
            pass: Pass::Custom,
            records: Vec::new(),
        })
    }

    pub fn log_len(&self) -> u64 {
        self.log
            .as_deref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len())
    }

    /// Runs one provider call and keeps the plans it logged.
    pub async fn call<T>(
        &mut self,
        category: Category,
        op: &str,
        fut: impl Future<Output = Result<T, ProviderError>>,
        describe: impl FnOnce(&T) -> String,
    ) -> Option<T> {
        let start = self.log_len();
        let result = fut.await;
        // The top-level statement is logged when its portal closes, just
        // after the client has its rows: give the backend a moment.
        tokio::time::sleep(Duration::from_millis(40)).await;
        self.refresh_pids().await;
        let end = self.log_len();
        let statements = self.read_window(start, end);
        let (outcome, value) = match result {
            Ok(v) => (describe(&v), Some(v)),
            Err(e) => (format!("ERROR {e}"), None),
        };
        self.records.push(CallRecord {
            pass: self.pass,
            category,
            op: op.to_owned(),
            outcome,
            statements,
        });
        value
    }

    pub fn skipped(&mut self, category: Category, op: &str, why: &str) {
        self.records.push(CallRecord {
            pass: self.pass,
            category,
            op: op.to_owned(),
            outcome: format!("skipped: {why}"),
            statements: Vec::new(),
        });
    }

    /// Backends of the explaining provider (other sessions share the log).
    pub async fn refresh_pids(&mut self) {
        #[derive(QueryableByName)]
        struct Pid {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            pid: i32,
        }
        let query = format!(
            "SELECT pid FROM pg_stat_activity WHERE application_name = '{}'",
            self.app_name
        );
        if let Ok(rows) = diesel::sql_query(query)
            .load::<Pid>(&mut self.inspector)
            .await
        {
            self.pids.extend(rows.into_iter().map(|r| r.pid));
        }
    }

    pub fn read_window(&self, start: u64, end: u64) -> Vec<Logged> {
        let Some(path) = self.log.as_deref() else {
            return Vec::new();
        };
        if end <= start {
            return Vec::new();
        }
        let mut bytes = Vec::new();
        let read = std::fs::File::open(path).and_then(|mut f| {
            f.seek(SeekFrom::Start(start))?;
            f.take(end - start).read_to_end(&mut bytes)
        });
        if read.is_err() {
            return Vec::new();
        }
        parse_log(&String::from_utf8_lossy(&bytes))
            .into_iter()
            .filter(|(pid, _)| pid.is_none_or(|p| self.pids.is_empty() || self.pids.contains(&p)))
            .map(|(_, entry)| entry)
            .collect()
    }
}

/// Splits server log text into auto_explain entries with their backend pid.
///
/// With stderr logging every line of a message after the first starts with a
/// tab; the CONTEXT of a nested statement follows as its own prefixed line.
pub fn parse_log(text: &str) -> Vec<(Option<i32>, Logged)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        let Some(at) = line.find("LOG:  duration: ") else {
            continue;
        };
        if line.starts_with('\t') || !line.trim_end().ends_with("plan:") {
            continue;
        }
        let pid = pid_of(&line[..at]);
        let mut body = String::new();
        while i < lines.len() && lines[i].starts_with('\t') {
            body.push_str(&lines[i][1..]);
            body.push('\n');
            i += 1;
        }
        let mut context = None;
        let context_at = lines
            .get(i)
            .filter(|l| !l.starts_with('\t') && pid_of(l) == pid)
            .and_then(|l| l.find("CONTEXT:  "));
        if let Some(c) = context_at {
            let mut ctx = vec![&lines[i][c + 10..]];
            i += 1;
            while i < lines.len() && lines[i].starts_with('\t') {
                ctx.push(&lines[i][1..]);
                i += 1;
            }
            context = function_of(&ctx);
        }
        let Ok(doc) = serde_json::from_str::<Value>(&body) else {
            continue;
        };
        let query = doc
            .get("Query Text")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let plan = doc.get("Plan").cloned().unwrap_or(Value::Null);
        out.push((
            pid,
            Logged {
                context,
                query,
                plan,
            },
        ));
    }
    out
}

/// The pid of a log line prefix such as `2026-01-01 10:00:00.000 UTC [1234] `.
pub fn pid_of(prefix: &str) -> Option<i32> {
    let open = prefix.find('[')?;
    let close = open + prefix[open..].find(']')?;
    prefix[open + 1..close].parse().ok()
}

/// `dx_fetch_work:12` from `PL/pgSQL function dx_fetch_work(...) line 12 at ...`,
/// `dx_notify_channel` from `SQL function "dx_notify_channel" statement 1`.
pub fn function_of(context: &[&str]) -> Option<String> {
    context.iter().find_map(|line| {
        if let Some(rest) = line.strip_prefix("PL/pgSQL function ") {
            let name = rest.split('(').next()?;
            let line_no = rest
                .split(" line ")
                .nth(1)
                .and_then(|s| s.split(' ').next())
                .unwrap_or("?");
            Some(format!("{name}:{line_no}"))
        } else {
            line.strip_prefix("SQL function \"")
                .and_then(|rest| rest.split('"').next())
                .map(str::to_owned)
        }
    })
}

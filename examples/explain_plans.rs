//! Shows the query plan of every statement the provider runs, on a large
//! schema, and checks that the hot path never scans a big table.
//!
//! ```text
//! cargo run --release --example explain_plans [-- --instances N] [--plans] [--strict] [--keep]
//! ```
//!
//! 1. Creates a provider on a fresh schema and seeds it with INSERT ... SELECT:
//!    100k instances (10% with two executions), 10 history events per
//!    execution (~1.1M rows), a few thousand orchestrator messages (a third of
//!    them timers, some of locked or lock-expired instances), worker items
//!    (tagged, session-bound, locked, delayed), sessions and key-value rows;
//!    then ANALYZEs.
//! 2. Builds a second provider on that schema whose connections load
//!    `auto_explain` (through the URL's `options`): every statement, including
//!    the ones nested in the PL/pgSQL procedures, logs its plan (JSON, with
//!    actual row counts and buffers) to the server log.
//! 3. Calls every `Provider` and `ProviderAdmin` method against the seeded
//!    data, twice: once with PostgreSQL's default plan caching (a PL/pgSQL
//!    statement gets custom plans for its first five executions on a
//!    connection; the runtime's fetch is repeated to show what it settles on)
//!    and once with `plan_cache_mode=force_generic_plan`.
//! 4. Reads the server log lines written during each call and prints, per
//!    call and statement, the plan's top node, how each table was reached and
//!    how many rows were read. Exits with status 1 if a hot-path call or a
//!    per-instance read seq-scans a table that grows with the data
//!    (`--strict`: per-instance admin and maintenance calls too). Whole-table
//!    admin calls are listed as "by design".
//!
//! Uses `DATABASE_URL` when set, otherwise the tests' throwaway cluster
//! (whose log it knows). For another server, set `EXPLAIN_PLANS_LOG` to a
//! readable copy of its log, or read the plans in the server log yourself.
//! Loading `auto_explain` per session needs a superuser. Plans only mean
//! something at scale: with small tables a seq scan is the right choice.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use duroxide::providers::{
    DispatcherCapabilityFilter, ExecutionMetadata, InstanceFilter, Provider, ProviderAdmin,
    ProviderError, PruneOptions, ScheduledActivityIdentifier, SemverRange, SessionFetchConfig,
    TagFilter, WorkItem,
};
use duroxide::{ErrorDetails, Event, EventKind};
use duroxide_diesel::PostgresProvider;
use duroxide_diesel_testkit::pg;
use serde_json::Value;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Tables of the provider, as they appear in plans.
const TABLES: [&str; 9] = [
    "instances",
    "executions",
    "history",
    "orchestrator_queue",
    "worker_queue",
    "kv_store",
    "kv_delta",
    "instance_locks",
    "sessions",
];

/// Tables that grow with the number of instances or queued work: a per-call
/// statement must reach them through an index. `instance_locks` and
/// `sessions` only hold in-flight instances and live sessions.
const LARGE_TABLES: [&str; 7] = [
    "instances",
    "executions",
    "history",
    "orchestrator_queue",
    "worker_queue",
    "kv_store",
    "kv_delta",
];

/// A statement examining more rows than this is reported as a wide walk.
const WIDE_ROWS: f64 = 1000.0;

/// The pinned duroxide version of every seeded execution.
const SEED_VERSION: (u64, u64, u64) = (0, 1, 32);

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

struct Args {
    instances: i64,
    plans: bool,
    strict: bool,
    keep: bool,
}

fn parse_args() -> Result<Args, BoxError> {
    let mut args = Args {
        instances: 100_000,
        plans: false,
        strict: false,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--instances" => {
                let n = it.next().ok_or("--instances needs a number")?;
                args.instances = n.parse()?;
                if args.instances < 5_000 {
                    return Err("--instances must be at least 5000".into());
                }
            }
            "--plans" => args.plans = true,
            "--strict" => args.strict = true,
            "--keep" => args.keep = true,
            "-h" | "--help" => {
                println!(
                    "usage: explain_plans [--instances N] [--plans] [--strict] [--keep]\n\
                     --instances N  seeded instances (default 100000, >= 5000)\n\
                     --plans        print every statement's plan tree\n\
                     --strict       also fail on seq scans in per-instance admin calls\n\
                     --keep         keep the seeded schema"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (see --help)").into()),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() {
    match run().await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("explain_plans: {e}");
            std::process::exit(2);
        }
    }
}

async fn run() -> Result<i32, BoxError> {
    let args = parse_args()?;
    let started = Instant::now();
    let url = pg::database_url();
    let log = std::env::var_os("EXPLAIN_PLANS_LOG")
        .map(PathBuf::from)
        .or_else(pg::local_cluster_log);
    let schema = format!("explain_plans_{}", std::process::id());

    println!("schema {schema}: seeding {} instances ...", args.instances);
    let seeded = Instant::now();
    // The first provider applies the migrations.
    drop(
        PostgresProvider::builder(&url)
            .schema(&schema)
            .max_connections(1)
            .build()
            .await?,
    );
    let result = async {
        let counts = seed(&url, &schema, args.instances).await?;
        println!(
            "seeded in {:.1} s: {counts}",
            seeded.elapsed().as_secs_f64()
        );
        exercise_and_report(&args, &url, &schema, log.as_deref()).await
    }
    .await;
    if args.keep {
        println!("kept schema {schema}");
    } else {
        let mut conn = AsyncPgConnection::establish(&url).await?;
        conn.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .await?;
    }
    println!("total runtime {:.1} s", started.elapsed().as_secs_f64());
    result
}

async fn exercise_and_report(
    args: &Args,
    url: &str,
    schema: &str,
    log: Option<&Path>,
) -> Result<i32, BoxError> {
    let mut rec = Recorder {
        log: log.map(Path::to_path_buf),
        inspector: AsyncPgConnection::establish(url).await?,
        app_name: format!("explain_plans_{}", std::process::id()),
        pids: HashSet::new(),
        pass: Pass::Custom,
        records: Vec::new(),
    };
    for pass in [Pass::Custom, Pass::Generic] {
        let explain_url = with_options(url, &pass.options());
        check_auto_explain(&explain_url).await?;
        let provider = PostgresProvider::builder(&explain_url)
            .schema(schema)
            .max_connections(1)
            .long_polling(false)
            .application_name(rec.app_name.clone())
            .build()
            .await?;
        rec.pass = pass;
        let t = Instant::now();
        exercise(&provider, &mut rec, args.instances, pass.index()).await?;
        println!(
            "pass {}: {} calls in {:.1} s",
            pass.label(),
            rec.records.iter().filter(|r| r.pass == pass).count(),
            t.elapsed().as_secs_f64()
        );
    }

    let Some(log) = log else {
        println!(
            "\nDATABASE_URL names a server whose log this program cannot read. The calls below \
             ran with auto_explain: their plans are in that server's log (LOG \"duration: ... \
             plan:\" entries, application_name {}); set EXPLAIN_PLANS_LOG=<path> to a readable \
             copy of the log to get the analysis.",
            rec.app_name
        );
        for r in &rec.records {
            println!("  [{}] {:<44} {}", r.pass.label(), r.op, r.outcome);
        }
        return Ok(0);
    };
    println!("plans read from {}", log.display());
    Ok(report(&rec.records, args))
}

// ---------------------------------------------------------------------------
// Seeding

/// A duroxide value serialized as a SQL JSONB literal.
fn jsonb<T: serde::Serialize>(value: &T) -> Result<String, BoxError> {
    Ok(format!(
        "'{}'::jsonb",
        serde_json::to_string(value)?.replace('\'', "''")
    ))
}

fn event(kind: EventKind) -> Event {
    Event::with_event_id(1, "template", 1, None, kind)
}

/// Fills the schema. Documents are built from serialized duroxide values, so
/// the provider decodes them like its own; per-row fields are overridden in SQL.
async fn seed(url: &str, schema: &str, n: i64) -> Result<String, BoxError> {
    let started = jsonb(&event(EventKind::OrchestrationStarted {
        name: "Orders".into(),
        version: "1.0.0".into(),
        input: r#"{"order_id":"A-1024","customer":"c-77","items":3}"#.into(),
        parent_instance: None,
        parent_id: None,
        parent_execution_id: None,
        carry_forward_events: None,
        initial_custom_status: None,
    }))?;
    let scheduled = jsonb(&event(EventKind::ActivityScheduled {
        name: "ChargeCard".into(),
        input: r#"{"amount":1299,"currency":"EUR"}"#.into(),
        session_id: None,
        tag: None,
    }))?;
    let completed = jsonb(&event(EventKind::ActivityCompleted {
        result: r#"{"ok":true,"reference":"ch_3NkLw2"}"#.into(),
    }))?;
    let orch_completed = jsonb(&event(EventKind::OrchestrationCompleted {
        output: r#"{"status":"shipped"}"#.into(),
    }))?;
    let orch_failed = jsonb(&event(EventKind::OrchestrationFailed {
        details: ErrorDetails::Infrastructure {
            operation: "ChargeCard".into(),
            message: "card declined".into(),
            retryable: false,
        },
    }))?;
    let continued = jsonb(&event(EventKind::OrchestrationContinuedAsNew {
        input: r#"{"order_id":"A-1024","round":2}"#.into(),
    }))?;
    let activity_completed = jsonb(&WorkItem::ActivityCompleted {
        instance: "template".into(),
        execution_id: 1,
        id: 2,
        result: r#"{"ok":true}"#.into(),
    })?;
    let timer_fired = jsonb(&WorkItem::TimerFired {
        instance: "template".into(),
        execution_id: 1,
        id: 2,
        fire_at_ms: 0,
    })?;
    let activity_execute = jsonb(&WorkItem::ActivityExecute {
        instance: "template".into(),
        execution_id: 1,
        id: 2,
        name: "ChargeCard".into(),
        input: r#"{"amount":1299,"currency":"EUR"}"#.into(),
        session_id: None,
        tag: None,
    })?;
    let (major, minor, patch) = SEED_VERSION;
    // Running instances are those with n % 10 in (6, 7, 8); `pick` maps a
    // message number onto one of them.
    let decades = n / 10 - 1;
    let pick =
        |m: &str, prime: u64| format!("((({m}) * {prime}) % {decades}) * 10 + 6 + ({m}) % 3");
    let orch_messages = n / 25;
    let work_items = n / 20;

    let sql = format!(
        r#"
SET search_path TO "{schema}";
SET synchronous_commit = off;
SET maintenance_work_mem = '256MB';

-- n % 10: 0-5 Completed (3: two executions), 6-8 Running, 9 Failed;
-- n % 10 = 5 is a sub-orchestration of n - 5.
INSERT INTO instances (instance_id, orchestration_name, orchestration_version,
                       current_execution_id, parent_instance_id, custom_status,
                       custom_status_version, created_at, updated_at)
SELECT 'inst-' || lpad(n::text, 6, '0'), 'Orders', '1.0.0',
       CASE WHEN n % 10 = 3 THEN 2 ELSE 1 END,
       CASE WHEN n % 10 = 5 AND n > 5 THEN 'inst-' || lpad((n - 5)::text, 6, '0') END,
       CASE WHEN n % 4 = 0 THEN 'step ' || (n % 7) END,
       CASE WHEN n % 4 = 0 THEN 1 ELSE 0 END,
       now() - interval '1 hour' - ({n} - n) * interval '1 second',
       now() - ({n} - n) * interval '1 second'
FROM generate_series(1, {n}) n;

INSERT INTO executions (instance_id, execution_id, status, output, pinned_major,
                        pinned_minor, pinned_patch, started_at, completed_at)
SELECT i.instance_id, x, s.status,
       CASE s.status WHEN 'Running' THEN NULL WHEN 'Failed' THEN 'card declined'
                     ELSE '{{"status":"shipped"}}' END,
       {major}, {minor}, {patch},
       i.created_at + (x - 1) * interval '10 seconds',
       CASE WHEN s.status <> 'Running' THEN i.created_at + x * interval '10 seconds' END
FROM instances i
CROSS JOIN LATERAL generate_series(1, i.current_execution_id) x
CROSS JOIN LATERAL (SELECT CASE
    WHEN x < i.current_execution_id THEN 'ContinuedAsNew'
    WHEN substr(i.instance_id, 6)::int % 10 IN (6, 7, 8) THEN 'Running'
    WHEN substr(i.instance_id, 6)::int % 10 = 9 THEN 'Failed'
    ELSE 'Completed' END AS status) s;

INSERT INTO history (instance_id, execution_id, event_id, event_type, event_data, created_at)
SELECT e.instance_id, e.execution_id, k, t.kind,
       CASE t.kind
           WHEN 'OrchestrationStarted' THEN {started}
           WHEN 'ActivityScheduled' THEN {scheduled}
           WHEN 'ActivityCompleted' THEN {completed}
           WHEN 'OrchestrationContinuedAsNew' THEN {continued}
           WHEN 'OrchestrationFailed' THEN {orch_failed}
           ELSE {orch_completed}
       END || jsonb_build_object(
           'event_id', k, 'instance_id', e.instance_id, 'execution_id', e.execution_id,
           'timestamp_ms', (extract(epoch FROM e.started_at) * 1000)::bigint + k * 100,
           'source_event_id', CASE WHEN t.kind = 'ActivityCompleted' THEN k - 1 END),
       e.started_at + k * interval '100 milliseconds'
FROM executions e
CROSS JOIN generate_series(1, 10) k
CROSS JOIN LATERAL (SELECT CASE
    WHEN k = 1 THEN 'OrchestrationStarted'
    WHEN k < 10 AND k % 2 = 0 THEN 'ActivityScheduled'
    WHEN k < 10 THEN 'ActivityCompleted'
    WHEN e.status = 'Running' THEN 'ActivityScheduled'
    WHEN e.status = 'ContinuedAsNew' THEN 'OrchestrationContinuedAsNew'
    WHEN e.status = 'Failed' THEN 'OrchestrationFailed'
    ELSE 'OrchestrationCompleted' END AS kind) t;

-- Orchestrator queue: activity completions (visible) and timers (a third,
-- in the future) of running instances, in random id order.
INSERT INTO orchestrator_queue (instance_id, kind, work_item, visible_at, created_at)
SELECT id, kind,
       jsonb_build_object(kind, (CASE kind WHEN 'TimerFired' THEN {timer_fired}
                                           ELSE {activity_completed} END -> kind)
           || jsonb_build_object('instance', id, 'execution_id', 1, 'id', 2 + 2 * (m % 4))
           || CASE kind WHEN 'TimerFired' THEN jsonb_build_object(
                  'fire_at_ms', (extract(epoch FROM vis) * 1000)::bigint) ELSE '{{}}' END),
       vis, least(vis, now())
FROM (SELECT m, 'inst-' || lpad(({pick_q})::text, 6, '0') AS id,
             CASE WHEN m % 3 = 0 THEN 'TimerFired' ELSE 'ActivityCompleted' END AS kind,
             CASE WHEN m % 3 = 0 THEN now() + (m % 600 + 1) * interval '1 minute'
                  ELSE now() - (m % 600) * interval '1 second' END AS vis
      FROM generate_series(1, {orch_messages}) m) s
ORDER BY random();

-- 100 instances locked by other dispatchers (their visible messages claimed),
-- 50 with an expired lock.
INSERT INTO instance_locks (instance_id, lock_token, locked_until, locked_at)
SELECT instance_id, 'seed-lock-' || instance_id, now() + interval '5 minutes', now()
FROM (SELECT DISTINCT instance_id FROM orchestrator_queue WHERE visible_at <= now()
      ORDER BY instance_id LIMIT 100) s;
UPDATE orchestrator_queue q SET lock_token = l.lock_token, attempt_count = 1
FROM instance_locks l WHERE l.instance_id = q.instance_id AND q.visible_at <= now();
INSERT INTO instance_locks (instance_id, lock_token, locked_until, locked_at)
SELECT instance_id, 'seed-expired-' || instance_id, now() - interval '1 minute',
       now() - interval '6 minutes'
FROM (SELECT DISTINCT instance_id FROM orchestrator_queue WHERE visible_at <= now()
      ORDER BY instance_id DESC LIMIT 50) s
ON CONFLICT DO NOTHING;

-- Worker queue: 10% tagged 'gpu', 1/12 bound to a session, 1/8 locked by a
-- worker, 1/20 delayed (abandoned with a delay).
INSERT INTO worker_queue (work_item, instance_id, execution_id, activity_id, session_id, tag,
                          visible_at, lock_token, locked_until, attempt_count, created_at)
SELECT jsonb_build_object('ActivityExecute', jsonb_strip_nulls(({activity_execute} -> 'ActivityExecute')
           || jsonb_build_object('instance', id, 'execution_id', 1, 'id', act,
                                 'session_id', sess, 'tag', tag))),
       id, 1, act, sess, tag, vis, tok,
       CASE WHEN tok IS NOT NULL THEN now() + interval '5 minutes' END,
       CASE WHEN tok IS NOT NULL THEN 1 ELSE 0 END,
       least(vis, now())
FROM (SELECT m, 'inst-' || lpad(({pick_w})::text, 6, '0') AS id,
             2 * (m % 4 + 1) AS act,
             CASE WHEN m % 12 = 1 THEN 'sess-' || (m % 100) END AS sess,
             CASE WHEN m % 10 = 0 THEN 'gpu' END AS tag,
             CASE WHEN m % 8 = 2 THEN 'seed-work-' || m END AS tok,
             CASE WHEN m % 20 = 3 THEN now() + interval '10 minutes'
                  ELSE now() - (m % 600) * interval '1 second' END AS vis
      FROM generate_series(1, {work_items}) m) s
ORDER BY random();

-- Sessions: even ones owned by live workers, odd ones expired; 50 orphans.
INSERT INTO sessions (session_id, owner_id, locked_until, last_activity_at)
SELECT 'sess-' || k, 'other-worker-' || (k % 4),
       CASE WHEN k % 2 = 0 THEN now() + interval '5 minutes' ELSE now() - interval '10 minutes' END,
       now() - interval '1 minute'
FROM generate_series(0, 99) k;
INSERT INTO sessions (session_id, owner_id, locked_until, last_activity_at)
SELECT 'orphan-' || k, 'gone-worker', now() - interval '1 hour', now() - interval '1 hour'
FROM generate_series(1, 50) k;

-- Key-value state: 3 keys on every 5th instance, pending changes of running ones.
INSERT INTO kv_store (instance_id, key, value, last_updated_at_ms)
SELECT 'inst-' || lpad(n::text, 6, '0'), 'key' || j, 'value-' || md5(n::text || j::text),
       (extract(epoch FROM now()) * 1000)::bigint - n
FROM generate_series(5, {n}, 5) n, generate_series(1, 3) j;
INSERT INTO kv_delta (instance_id, key, value, last_updated_at_ms)
SELECT 'inst-' || lpad(n::text, 6, '0'), 'key' || j,
       CASE WHEN j = 1 THEN 'pending-' || n END,
       (extract(epoch FROM now()) * 1000)::bigint
FROM generate_series(6, {n}, 30) n, generate_series(1, 2) j;

ANALYZE instances, executions, history, orchestrator_queue, worker_queue,
        instance_locks, sessions, kv_store, kv_delta;
"#,
        pick_q = pick("m", 7919),
        pick_w = pick("m", 104_729),
    );
    let mut conn = AsyncPgConnection::establish(url).await?;
    conn.batch_execute(&sql).await?;

    #[derive(QueryableByName)]
    struct Counts {
        #[diesel(sql_type = diesel::sql_types::Text)]
        v: String,
    }
    let counted = TABLES
        .iter()
        .map(|t| format!("'{t}=' || (SELECT count(*) FROM {t})"))
        .collect::<Vec<_>>()
        .join(" || ', ' || ");
    let counts: Vec<Counts> = diesel::sql_query(format!("SELECT {counted} AS v"))
        .load(&mut conn)
        .await?;
    Ok(counts.into_iter().next().map(|c| c.v).unwrap_or_default())
}

// ---------------------------------------------------------------------------
// Connections with auto_explain

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Default plan caching: a statement's first executions get custom plans.
    Custom,
    /// `plan_cache_mode=force_generic_plan`: what a connection may settle on.
    Generic,
}

impl Pass {
    fn label(self) -> &'static str {
        match self {
            Pass::Custom => "custom",
            Pass::Generic => "generic",
        }
    }

    fn index(self) -> i64 {
        match self {
            Pass::Custom => 0,
            Pass::Generic => 1,
        }
    }

    fn options(self) -> Vec<&'static str> {
        let mut options = AUTO_EXPLAIN.to_vec();
        if self == Pass::Generic {
            options.push("plan_cache_mode=force_generic_plan");
        }
        options
    }
}

/// `url` with `-c name=value` server settings in its `options` parameter.
fn with_options(url: &str, settings: &[&str]) -> String {
    let value = settings
        .iter()
        .map(|s| format!("-c {s}"))
        .collect::<Vec<_>>()
        .join(" ");
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let encoded = value
            .replace('%', "%25")
            .replace(' ', "%20")
            .replace('=', "%3D")
            .replace('&', "%26");
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}options={encoded}")
    } else {
        format!("{url} options='{value}'")
    }
}

#[derive(QueryableByName)]
struct Setting {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    v: Option<String>,
}

/// Fails clearly if the server refuses the settings or auto_explain is missing.
async fn check_auto_explain(explain_url: &str) -> Result<(), BoxError> {
    let mut conn = AsyncPgConnection::establish(explain_url)
        .await
        .map_err(|e| {
            format!(
                "could not connect with auto_explain options (loading it per session needs a \
             superuser and the auto_explain module): {e}"
            )
        })?;
    let rows: Vec<Setting> =
        diesel::sql_query("SELECT current_setting('auto_explain.log_format', true) AS v")
            .load(&mut conn)
            .await?;
    match rows.into_iter().next().and_then(|r| r.v).as_deref() {
        Some("json") => Ok(()),
        other => Err(format!("auto_explain is not active on the connection ({other:?})").into()),
    }
}

// ---------------------------------------------------------------------------
// Calls and their log windows

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Category {
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
    fn label(self) -> &'static str {
        match self {
            Category::Hot => "hot",
            Category::Read => "read",
            Category::Maintenance => "maint",
            Category::Admin => "admin",
            Category::WholeTable => "table",
        }
    }

    /// Whether a seq scan of a large table fails the run.
    fn must_use_indexes(self, strict: bool) -> bool {
        match self {
            Category::Hot | Category::Read => true,
            Category::Maintenance | Category::Admin => strict,
            Category::WholeTable => false,
        }
    }
}

/// One auto_explain entry.
struct Logged {
    /// The innermost function running the statement, e.g. `dx_fetch_work:12`.
    context: Option<String>,
    query: String,
    plan: Value,
}

struct CallRecord {
    pass: Pass,
    category: Category,
    op: String,
    outcome: String,
    statements: Vec<Logged>,
}

struct Recorder {
    log: Option<PathBuf>,
    inspector: AsyncPgConnection,
    app_name: String,
    pids: HashSet<i32>,
    pass: Pass,
    records: Vec<CallRecord>,
}

impl Recorder {
    fn log_len(&self) -> u64 {
        self.log
            .as_deref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len())
    }

    /// Runs one provider call and keeps the plans it logged.
    async fn call<T>(
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

    fn skipped(&mut self, category: Category, op: &str, why: &str) {
        self.records.push(CallRecord {
            pass: self.pass,
            category,
            op: op.to_owned(),
            outcome: format!("skipped: {why}"),
            statements: Vec::new(),
        });
    }

    /// Backends of the explaining provider (other sessions share the log).
    async fn refresh_pids(&mut self) {
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

    fn read_window(&self, start: u64, end: u64) -> Vec<Logged> {
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
fn parse_log(text: &str) -> Vec<(Option<i32>, Logged)> {
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
fn pid_of(prefix: &str) -> Option<i32> {
    let open = prefix.find('[')?;
    let close = open + prefix[open..].find(']')?;
    prefix[open + 1..close].parse().ok()
}

/// `dx_fetch_work:12` from `PL/pgSQL function dx_fetch_work(...) line 12 at ...`,
/// `dx_notify_channel` from `SQL function "dx_notify_channel" statement 1`.
fn function_of(context: &[&str]) -> Option<String> {
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

// ---------------------------------------------------------------------------
// The calls

fn inst(n: i64) -> String {
    format!("inst-{n:06}")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ev(event_id: u64, instance: &str, execution_id: u64, kind: EventKind) -> Event {
    Event::with_event_id(event_id, instance, execution_id, None, kind)
}

fn scheduled(name: &str) -> EventKind {
    EventKind::ActivityScheduled {
        name: name.into(),
        input: "{}".into(),
        session_id: None,
        tag: None,
    }
}

fn activity(
    instance: &str,
    execution_id: u64,
    id: u64,
    session_id: Option<&str>,
    tag: Option<&str>,
) -> WorkItem {
    WorkItem::ActivityExecute {
        instance: instance.into(),
        execution_id,
        id,
        name: "ChargeCard".into(),
        input: "{}".into(),
        session_id: session_id.map(Into::into),
        tag: tag.map(Into::into),
    }
}

fn completion(instance: &str, execution_id: u64, id: u64) -> WorkItem {
    WorkItem::ActivityCompleted {
        instance: instance.into(),
        execution_id,
        id,
        result: "{}".into(),
    }
}

/// The next free event id of a fetched turn.
fn next_event_id(history: &[Event]) -> u64 {
    history.iter().map(|e| e.event_id).max().unwrap_or(0) + 1
}

type Claimed<T> = Option<(T, String, u32)>;

fn claimed<T>(item: &Claimed<T>, name: impl Fn(&T) -> String) -> String {
    match item {
        Some((t, _, attempts)) => format!("claimed {} (attempt {attempts})", name(t)),
        None => "nothing claimable".to_owned(),
    }
}

fn instance_of(item: &Claimed<duroxide::providers::OrchestrationItem>) -> String {
    claimed(item, |i| i.instance.clone())
}

fn work_of(item: &Claimed<WorkItem>) -> String {
    claimed(item, |w| match w {
        WorkItem::ActivityExecute {
            instance,
            id,
            session_id,
            tag,
            ..
        } => format!("{instance}/{id} session={session_id:?} tag={tag:?}"),
        _ => "a work item".to_owned(),
    })
}

fn ok<T>(_: &T) -> String {
    "ok".to_owned()
}

fn row_count<T>(v: &[T]) -> String {
    format!("{} rows", v.len())
}

fn deleted(r: &duroxide::providers::DeleteInstanceResult) -> String {
    format!(
        "{} instances, {} events",
        r.instances_deleted, r.events_deleted
    )
}

fn pruned(r: &duroxide::providers::PruneResult) -> String {
    format!(
        "{} instances, {} executions, {} events",
        r.instances_processed, r.executions_deleted, r.events_deleted
    )
}

/// Calls every Provider method. Instances are picked per pass from the
/// seeded layout (see `seed`), so both passes find fresh data.
async fn exercise(
    provider: &PostgresProvider,
    rec: &mut Recorder,
    n: i64,
    pass: i64,
) -> Result<(), BoxError> {
    // A multiple of 100: the offsets pick instances by n % 10 (see `seed`).
    let base = n / 1000 * 100 + pass * 500;
    orchestrator_calls(provider, rec, base, pass).await;
    worker_calls(provider, rec, base, pass).await;
    read_calls(provider, rec, base, pass).await;
    let Some(admin) = provider.as_management_capability() else {
        rec.skipped(Category::Admin, "as_management_capability", "not supported");
        return Ok(());
    };
    admin_calls(admin, rec, base).await;
    Ok(())
}

/// Extra runtime fetches in the custom pass (see `orchestrator_calls`).
const REPEATS: usize = 6;

const LOCK: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::ZERO;

async fn orchestrator_calls(provider: &PostgresProvider, rec: &mut Recorder, base: i64, pass: i64) {
    use Category::Hot;
    let pid = std::process::id();
    let running = inst(base + 6);
    let runtime_filter = DispatcherCapabilityFilter::default_for_current_build();
    // Matches no seeded (pinned) execution, only instances without one.
    let unpinned = DispatcherCapabilityFilter {
        supported_duroxide_versions: vec![SemverRange::new(
            semver::Version::new(99, 0, 0),
            semver::Version::new(99, 9, 9),
        )],
    };

    // An event for an instance that has not started (raised before its
    // start, or sent to a deleted instance) stays queued; every fetch that
    // walks past it has to decide whether it is claimable.
    let early = WorkItem::ExternalRaised {
        instance: format!("explain-early-{pass}-{pid}"),
        name: "Approved".into(),
        data: "{}".into(),
    };
    rec.call(
        Hot,
        "enqueue_for_orchestrator (event, no instance)",
        provider.enqueue_for_orchestrator(early, None),
        ok,
    )
    .await;
    // Walks every visible message and claims nothing: the idle path.
    let item = rec
        .call(
            Hot,
            "fetch_orchestration_item (filter: no seeded version)",
            provider.fetch_orchestration_item(LOCK, POLL, Some(&unpinned)),
            instance_of,
        )
        .await
        .flatten();
    if let Some((_, token, _)) = item {
        let _ = provider
            .abandon_orchestration_item(&token, None, true)
            .await;
    }

    // A new instance: start message, fetch (only it is unpinned), first turn.
    let new_instance = format!("explain-new-{pass}-{pid}");
    let start = WorkItem::StartOrchestration {
        instance: new_instance.clone(),
        orchestration: "Orders".into(),
        input: "{}".into(),
        version: Some("1.0.0".into()),
        parent_instance: None,
        parent_id: None,
        parent_execution_id: None,
        execution_id: 1,
    };
    rec.call(
        Hot,
        "enqueue_for_orchestrator (start)",
        provider.enqueue_for_orchestrator(start, None),
        ok,
    )
    .await;
    let first = rec
        .call(
            Hot,
            "fetch_orchestration_item (filter: new instance)",
            provider.fetch_orchestration_item(LOCK, POLL, Some(&unpinned)),
            instance_of,
        )
        .await
        .flatten();
    let op = "ack_orchestration_item (first turn)";
    match first {
        Some((item, token, _)) => {
            let i = item.instance.as_str();
            let started = EventKind::OrchestrationStarted {
                name: "Orders".into(),
                version: "1.0.0".into(),
                input: "{}".into(),
                parent_instance: None,
                parent_id: None,
                parent_execution_id: None,
                carry_forward_events: None,
                initial_custom_status: None,
            };
            let (major, minor, patch) = SEED_VERSION;
            let metadata = ExecutionMetadata {
                orchestration_name: Some("Orders".into()),
                orchestration_version: Some("1.0.0".into()),
                pinned_duroxide_version: Some(semver::Version::new(major, minor, patch)),
                ..Default::default()
            };
            let history = vec![ev(1, i, 1, started), ev(2, i, 1, scheduled("ChargeCard"))];
            let work = vec![activity(i, 1, 2, None, None)];
            let ack =
                provider.ack_orchestration_item(&token, 1, history, work, vec![], metadata, vec![]);
            rec.call(Hot, op, ack, ok).await;
        }
        None => rec.skipped(Hot, op, "nothing fetched"),
    }

    let external = WorkItem::ExternalRaised {
        instance: running.clone(),
        name: "Approved".into(),
        data: "{}".into(),
    };
    rec.call(
        Hot,
        "enqueue_for_orchestrator (external event)",
        provider.enqueue_for_orchestrator(external, None),
        ok,
    )
    .await;
    let timer = WorkItem::TimerFired {
        instance: running.clone(),
        execution_id: 1,
        id: 4,
        fire_at_ms: now_ms() + 60_000,
    };
    rec.call(
        Hot,
        "enqueue_for_orchestrator (delayed)",
        provider.enqueue_for_orchestrator(timer, Some(Duration::from_secs(60))),
        ok,
    )
    .await;

    // The runtime's dispatcher always passes its capability filter.
    let turn = rec
        .call(
            Hot,
            "fetch_orchestration_item (runtime filter)",
            provider.fetch_orchestration_item(LOCK, POLL, Some(&runtime_filter)),
            instance_of,
        )
        .await
        .flatten();
    match turn {
        Some((_, token, _)) => {
            rec.call(
                Hot,
                "renew_orchestration_item_lock",
                provider.renew_orchestration_item_lock(&token, LOCK),
                ok,
            )
            .await;
            rec.call(
                Hot,
                "abandon_orchestration_item",
                provider.abandon_orchestration_item(&token, None, false),
                ok,
            )
            .await;
        }
        None => {
            rec.skipped(Hot, "renew_orchestration_item_lock", "nothing fetched");
            rec.skipped(Hot, "abandon_orchestration_item", "nothing fetched");
        }
    }

    // A running turn: schedules an activity and a timer, sets a key and the
    // custom status, cancels an activity.
    let turn = rec
        .call(
            Hot,
            "fetch_orchestration_item (again, runtime filter)",
            provider.fetch_orchestration_item(LOCK, POLL, Some(&runtime_filter)),
            instance_of,
        )
        .await
        .flatten();
    let op = "ack_orchestration_item (running turn)";
    match turn {
        Some((item, token, _)) => {
            let (i, x) = (item.instance.as_str(), item.execution_id);
            let next = next_event_id(&item.history);
            let fire_at = now_ms() + 60_000;
            let history = vec![
                ev(next, i, x, scheduled("ShipOrder")),
                ev(
                    next + 1,
                    i,
                    x,
                    EventKind::KeyValueSet {
                        key: "stage".into(),
                        value: "shipping".into(),
                        last_updated_at_ms: now_ms(),
                    },
                ),
                ev(
                    next + 2,
                    i,
                    x,
                    EventKind::CustomStatusUpdated {
                        status: Some("shipping".into()),
                    },
                ),
                ev(
                    next + 3,
                    i,
                    x,
                    EventKind::TimerCreated {
                        fire_at_ms: fire_at,
                    },
                ),
            ];
            let timer = WorkItem::TimerFired {
                instance: i.into(),
                execution_id: x,
                id: next + 3,
                fire_at_ms: fire_at,
            };
            let metadata = ExecutionMetadata {
                orchestration_name: Some(item.orchestration_name.clone()),
                orchestration_version: Some(item.version.clone()),
                ..Default::default()
            };
            let cancelled = vec![ScheduledActivityIdentifier {
                instance: i.into(),
                execution_id: x,
                activity_id: 2,
            }];
            let ack = provider.ack_orchestration_item(
                &token,
                x,
                history,
                vec![activity(i, x, next, None, None)],
                vec![timer],
                metadata,
                cancelled,
            );
            rec.call(Hot, op, ack, ok).await;
        }
        None => rec.skipped(Hot, op, "nothing fetched"),
    }

    // A final turn: completes the execution, folding key-value changes.
    let turn = rec
        .call(
            Hot,
            "fetch_orchestration_item (next, runtime filter)",
            provider.fetch_orchestration_item(LOCK, POLL, Some(&runtime_filter)),
            instance_of,
        )
        .await
        .flatten();
    let op = "ack_orchestration_item (completing turn)";
    match turn {
        Some((item, token, _)) => {
            let (i, x) = (item.instance.as_str(), item.execution_id);
            let next = next_event_id(&item.history);
            let output = "\"shipped\"".to_owned();
            let history = vec![
                ev(
                    next,
                    i,
                    x,
                    EventKind::KeyValueSet {
                        key: "result".into(),
                        value: "shipped".into(),
                        last_updated_at_ms: now_ms(),
                    },
                ),
                ev(
                    next + 1,
                    i,
                    x,
                    EventKind::OrchestrationCompleted {
                        output: output.clone(),
                    },
                ),
            ];
            let metadata = ExecutionMetadata {
                status: Some("Completed".into()),
                output: Some(output),
                orchestration_name: Some(item.orchestration_name.clone()),
                orchestration_version: Some(item.version.clone()),
                ..Default::default()
            };
            let ack = provider.ack_orchestration_item(
                &token,
                x,
                history,
                vec![],
                vec![],
                metadata,
                vec![],
            );
            rec.call(Hot, op, ack, ok).await;
        }
        None => rec.skipped(Hot, op, "nothing fetched"),
    }

    // PostgreSQL plans a PL/pgSQL statement afresh (custom plan) for its
    // first five executions on a connection, then may switch to a cached
    // generic plan: repeat the runtime's fetch to see what a long-lived
    // pooled connection settles on.
    if pass == 0 {
        for k in 1..=REPEATS {
            let op = format!("fetch_orchestration_item (runtime filter, repeat {k}/{REPEATS})");
            let turn = rec
                .call(
                    Hot,
                    &op,
                    provider.fetch_orchestration_item(LOCK, POLL, Some(&runtime_filter)),
                    instance_of,
                )
                .await
                .flatten();
            if let Some((_, token, _)) = turn {
                let _ = provider
                    .abandon_orchestration_item(&token, None, true)
                    .await;
            }
        }
    }

    // Admin tooling and older runtimes fetch without a filter.
    let turn = rec
        .call(
            Hot,
            "fetch_orchestration_item (no filter)",
            provider.fetch_orchestration_item(LOCK, POLL, None),
            instance_of,
        )
        .await
        .flatten();
    let op = "abandon_orchestration_item (delay, ignore attempt)";
    match turn {
        Some((_, token, _)) => {
            let abandon =
                provider.abandon_orchestration_item(&token, Some(Duration::from_secs(5)), true);
            rec.call(Hot, op, abandon, ok).await;
        }
        None => rec.skipped(Hot, op, "nothing fetched"),
    }
}

async fn worker_calls(provider: &PostgresProvider, rec: &mut Recorder, base: i64, pass: i64) {
    use Category::{Hot, Maintenance};
    let running = inst(base + 6);
    let default_only = TagFilter::default_only();

    rec.call(
        Hot,
        "enqueue_for_worker",
        provider.enqueue_for_worker(activity(&running, 1, 12, None, None)),
        ok,
    )
    .await;
    let work = rec
        .call(
            Hot,
            "fetch_work_item",
            provider.fetch_work_item(LOCK, POLL, None, &default_only),
            work_of,
        )
        .await
        .flatten();
    match work {
        Some((_, token, _)) => {
            rec.call(
                Hot,
                "renew_work_item_lock",
                provider.renew_work_item_lock(&token, LOCK),
                ok,
            )
            .await;
            rec.call(
                Hot,
                "abandon_work_item",
                provider.abandon_work_item(&token, None, false),
                ok,
            )
            .await;
        }
        None => {
            rec.skipped(Hot, "renew_work_item_lock", "nothing fetched");
            rec.skipped(Hot, "abandon_work_item", "nothing fetched");
        }
    }

    let work = rec
        .call(
            Hot,
            "fetch_work_item (again)",
            provider.fetch_work_item(LOCK, POLL, None, &default_only),
            work_of,
        )
        .await
        .flatten();
    let op = "ack_work_item (completion)";
    match work {
        Some((
            WorkItem::ActivityExecute {
                instance,
                execution_id,
                id,
                ..
            },
            token,
            _,
        )) => {
            let done = completion(&instance, execution_id, id);
            rec.call(Hot, op, provider.ack_work_item(&token, Some(done)), ok)
                .await;
        }
        _ => rec.skipped(Hot, op, "nothing fetched"),
    }

    let work = rec
        .call(
            Hot,
            "fetch_work_item (tags: gpu)",
            provider.fetch_work_item(LOCK, POLL, None, &TagFilter::tags(["gpu"])),
            work_of,
        )
        .await
        .flatten();
    let op = "ack_work_item (no completion)";
    match work {
        Some((_, token, _)) => {
            rec.call(Hot, op, provider.ack_work_item(&token, None), ok)
                .await;
        }
        None => rec.skipped(Hot, op, "nothing fetched"),
    }

    // A session-bound activity with a tag of its own, so the session fetch
    // claims exactly it and takes the session.
    let tag = format!("explain-tag-{pass}");
    let session = format!("explain-session-{pass}");
    let owner = format!("explain-worker-{pass}");
    rec.call(
        Hot,
        "enqueue_for_worker (session, tag)",
        provider.enqueue_for_worker(activity(&running, 1, 14, Some(&session), Some(&tag))),
        ok,
    )
    .await;
    let config = SessionFetchConfig {
        owner_id: owner.clone(),
        lock_timeout: LOCK,
    };
    let work = rec
        .call(
            Hot,
            "fetch_work_item (session, own tag)",
            provider.fetch_work_item(LOCK, POLL, Some(&config), &TagFilter::tags([tag.clone()])),
            work_of,
        )
        .await
        .flatten();
    rec.call(
        Hot,
        "renew_session_lock",
        provider.renew_session_lock(&[owner.as_str()], LOCK, Duration::from_secs(300)),
        |n| format!("{n} sessions"),
    )
    .await;
    match work {
        Some((_, token, _)) => {
            rec.call(
                Hot,
                "renew_work_item_lock (session)",
                provider.renew_work_item_lock(&token, LOCK),
                ok,
            )
            .await;
            let done = completion(&running, 1, 14);
            rec.call(
                Hot,
                "ack_work_item (session)",
                provider.ack_work_item(&token, Some(done)),
                ok,
            )
            .await;
        }
        None => {
            rec.skipped(Hot, "renew_work_item_lock (session)", "nothing fetched");
            rec.skipped(Hot, "ack_work_item (session)", "nothing fetched");
        }
    }
    rec.call(
        Hot,
        "fetch_work_item (session, default tag)",
        provider.fetch_work_item(LOCK, POLL, Some(&config), &default_only),
        work_of,
    )
    .await;
    // Nothing matches: walks the whole visible queue, then the idle path.
    rec.call(
        Hot,
        "fetch_work_item (tags: none queued)",
        provider.fetch_work_item(LOCK, POLL, None, &TagFilter::tags(["no-such-tag"])),
        work_of,
    )
    .await;
    rec.call(
        Maintenance,
        "cleanup_orphaned_sessions",
        provider.cleanup_orphaned_sessions(Duration::from_secs(300)),
        |n| format!("{n} removed"),
    )
    .await;
}

async fn read_calls(provider: &PostgresProvider, rec: &mut Recorder, base: i64, pass: i64) {
    use Category::{Hot, Read};
    let running = inst(base + 6);
    let with_delta = inst(base + (36 - base % 30) % 30); // n % 30 == 6: kv_delta rows
    let with_store = inst(base + 80); // n % 20 == 0: kv_store rows, custom status
    let two_execs = inst(base + 93);

    rec.call(Read, "read", provider.read(&running), |v| row_count(v))
        .await;
    rec.call(
        Read,
        "read_with_execution",
        provider.read_with_execution(&two_execs, 1),
        |v| row_count(v),
    )
    .await;
    rec.call(
        Read,
        "get_custom_status",
        provider.get_custom_status(&with_store, 0),
        |s| format!("{s:?}"),
    )
    .await;
    rec.call(
        Read,
        "get_kv_value",
        provider.get_kv_value(&with_delta, "key1"),
        |v| format!("{v:?}"),
    )
    .await;
    rec.call(
        Read,
        "get_kv_all_values",
        provider.get_kv_all_values(&with_store),
        |m| format!("{} keys", m.len()),
    )
    .await;
    rec.call(
        Read,
        "get_instance_stats",
        provider.get_instance_stats(&running),
        |s| match s {
            Some(s) => format!("{} events", s.history_event_count),
            None => "none".to_owned(),
        },
    )
    .await;
    let instance = format!("explain-append-{pass}-{}", std::process::id());
    let event = ev(
        1,
        &instance,
        1,
        EventKind::ExternalSubscribed {
            name: "Approved".into(),
        },
    );
    rec.call(
        Hot,
        "append_with_execution",
        provider.append_with_execution(&instance, 1, vec![event]),
        ok,
    )
    .await;
}

async fn admin_calls(admin: &dyn ProviderAdmin, rec: &mut Recorder, base: i64) {
    use Category::{Admin, WholeTable};
    let two_execs = inst(base + 93);

    rec.call(
        Admin,
        "list_executions",
        admin.list_executions(&two_execs),
        |v| format!("{v:?}"),
    )
    .await;
    rec.call(Admin, "read_history", admin.read_history(&two_execs), |v| {
        row_count(v)
    })
    .await;
    rec.call(
        Admin,
        "read_history_with_execution_id",
        admin.read_history_with_execution_id(&two_execs, 1),
        |v| row_count(v),
    )
    .await;
    rec.call(
        Admin,
        "latest_execution_id",
        admin.latest_execution_id(&two_execs),
        u64::to_string,
    )
    .await;
    rec.call(
        Admin,
        "get_instance_info",
        admin.get_instance_info(&two_execs),
        |i| i.status.clone(),
    )
    .await;
    rec.call(
        Admin,
        "get_execution_info",
        admin.get_execution_info(&two_execs, 1),
        |e| format!("{} ({} events)", e.status, e.event_count),
    )
    .await;
    rec.call(
        Admin,
        "list_children",
        admin.list_children(&inst(base + 40)),
        |v| format!("{v:?}"),
    )
    .await;
    rec.call(
        Admin,
        "get_parent_id",
        admin.get_parent_id(&inst(base + 45)),
        |v| format!("{v:?}"),
    )
    .await;
    rec.call(
        Admin,
        "get_instance_tree",
        admin.get_instance_tree(&inst(base + 40)),
        |t| format!("{} instances", t.all_ids.len()),
    )
    .await;
    rec.call(
        Admin,
        "delete_instance (root with a child)",
        admin.delete_instance(&inst(base + 20), false),
        deleted,
    )
    .await;
    rec.call(
        Admin,
        "delete_instances_atomic",
        admin.delete_instances_atomic(&[inst(base + 31), inst(base + 32)], false),
        deleted,
    )
    .await;
    let ids = [51, 52, 53, 59].map(|k| inst(base + k)).to_vec();
    rec.call(
        Admin,
        "delete_instance_bulk (ids)",
        admin.delete_instance_bulk(InstanceFilter {
            instance_ids: Some(ids),
            ..Default::default()
        }),
        deleted,
    )
    .await;
    rec.call(
        Admin,
        "prune_executions",
        admin.prune_executions(&inst(base + 63), PruneOptions::default()),
        pruned,
    )
    .await;
    let ids = vec![inst(base + 73), inst(base + 83)];
    rec.call(
        Admin,
        "prune_executions_bulk (ids)",
        admin.prune_executions_bulk(
            InstanceFilter {
                instance_ids: Some(ids),
                ..Default::default()
            },
            PruneOptions::default(),
        ),
        pruned,
    )
    .await;

    let before_now = InstanceFilter {
        completed_before: Some(now_ms()),
        limit: Some(10),
        ..Default::default()
    };
    rec.call(
        WholeTable,
        "delete_instance_bulk (completed_before, limit 10)",
        admin.delete_instance_bulk(before_now.clone()),
        deleted,
    )
    .await;
    let keep_one = PruneOptions {
        keep_last: Some(1),
        ..Default::default()
    };
    rec.call(
        WholeTable,
        "prune_executions_bulk (completed_before, limit 10)",
        admin.prune_executions_bulk(before_now, keep_one),
        pruned,
    )
    .await;
    rec.call(
        WholeTable,
        "list_instances_by_status (Running)",
        admin.list_instances_by_status("Running"),
        |v| row_count(v),
    )
    .await;
    rec.call(WholeTable, "list_instances", admin.list_instances(), |v| {
        row_count(v)
    })
    .await;
    rec.call(
        WholeTable,
        "get_queue_depths",
        admin.get_queue_depths(),
        |d| {
            format!(
                "orchestrator {}, worker {}",
                d.orchestrator_queue, d.worker_queue
            )
        },
    )
    .await;
    rec.call(
        WholeTable,
        "get_system_metrics",
        admin.get_system_metrics(),
        |m| format!("{} instances, {} events", m.total_instances, m.total_events),
    )
    .await;
}

// ---------------------------------------------------------------------------
// Plan analysis

/// How a statement reached one table.
struct Access {
    table: String,
    how: String,
    seq: bool,
    /// Rows read from the table (returned plus filtered out), all loops.
    rows: f64,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Verdict {
    NoTable,
    Index,
    SeqSmall,
    ByDesign,
    Wide,
    SeqScan,
}

impl Verdict {
    fn label(self) -> &'static str {
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

struct Analysis {
    top: String,
    accesses: Vec<Access>,
    rows: f64,
    buffers: f64,
    verdict: Verdict,
    /// A generic plan shows parameters as `$n`; a custom plan shows values.
    generic: bool,
}

/// Conditions shown by EXPLAIN for a node.
const CONDITIONS: [&str; 5] = [
    "Index Cond",
    "Recheck Cond",
    "Hash Cond",
    "Join Filter",
    "Filter",
];

fn has_parameters(node: &Value) -> bool {
    let param = |s: &str| {
        s.as_bytes()
            .windows(2)
            .any(|w| w[0] == b'$' && w[1].is_ascii_digit())
    };
    CONDITIONS.iter().any(|k| param(text(node, k))) || children(node).any(has_parameters)
}

fn num(node: &Value, key: &str) -> f64 {
    node.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

fn text<'a>(node: &'a Value, key: &str) -> &'a str {
    node.get(key).and_then(Value::as_str).unwrap_or("")
}

fn children(node: &Value) -> impl Iterator<Item = &Value> {
    node.get("Plans")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn short_index(table: &str, index: &str) -> String {
    index
        .strip_prefix(table)
        .and_then(|s| s.strip_prefix('_'))
        .unwrap_or(index)
        .to_owned()
}

fn collect_access(node: &Value, out: &mut Vec<Access>) {
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

fn bitmap_indexes(node: &Value, table: &str, out: &mut Vec<String>) {
    if text(node, "Node Type") == "Bitmap Index Scan" {
        out.push(short_index(table, text(node, "Index Name")));
    }
    for child in children(node) {
        bitmap_indexes(child, table, out);
    }
}

fn node_label(node: &Value) -> String {
    let kind = text(node, "Node Type");
    let table = text(node, "Relation Name");
    match kind {
        "ModifyTable" => format!("{} {}", text(node, "Operation"), table),
        _ if !table.is_empty() => format!("{kind} {table}"),
        _ => kind.to_owned(),
    }
}

fn analyse(stmt: &Logged, category: Category) -> Analysis {
    let mut accesses = Vec::new();
    collect_access(&stmt.plan, &mut accesses);
    let rows = accesses.iter().map(|a| a.rows).fold(0.0, f64::max);
    let buffers = num(&stmt.plan, "Shared Hit Blocks") + num(&stmt.plan, "Shared Read Blocks");
    let seq_large = accesses
        .iter()
        .any(|a| a.seq && LARGE_TABLES.contains(&a.table.as_str()));
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

fn one_line(s: &str, max: usize) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > max {
        let cut: String = s.chars().take(max - 1).collect();
        format!("{cut}…")
    } else {
        s
    }
}

fn render_plan(node: &Value, depth: usize, out: &mut String) {
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
fn report(records: &[CallRecord], args: &Args) -> i32 {
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
         scan of {}.",
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
            "\nOK: {captured} statements analysed; no {} call seq-scans {}.",
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

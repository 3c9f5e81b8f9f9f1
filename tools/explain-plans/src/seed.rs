//! Seeding: a schema filled with INSERT ... SELECT in the shapes the
//! provider produces (documents are serialized duroxide values, so the
//! provider decodes them like its own), then ANALYZEd.

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use duroxide::providers::WorkItem;
use duroxide::{ErrorDetails, Event, EventKind};
use duroxide_diesel_testkit::db;

use crate::BoxError;

/// Tables of the provider, as they appear in plans.
pub const TABLES: [&str; 9] = [
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

/// The pinned duroxide version of every seeded execution.
pub const SEED_VERSION: (u64, u64, u64) = (0, 1, 32);

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
pub async fn seed(url: &str, schema: &str, n: i64) -> Result<String, BoxError> {
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

    drop(conn);
    let counted = TABLES
        .iter()
        .map(|t| format!("'{t}=' || (SELECT count(*) FROM \"{schema}\".{t})"))
        .collect::<Vec<_>>()
        .join(" || ', ' || ");
    Ok(db::scalar(url, &counted).await?.unwrap_or_default())
}

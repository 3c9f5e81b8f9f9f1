//! The stored procedures cannot be hijacked through their own schema.
//!
//! Procedures run with search_path pinned to the provider's schema. A role
//! that may CREATE there can plant a function or operator whose argument
//! types match a call more exactly than the pg_catalog built-in (CVE-2018-1058).
//! This test plants such overloads for every call that migrations 000002
//! and 000003 made with coerced argument types, drives every procedure, and checks that none of
//! the planted objects ran. Each one records its call and then does what the
//! built-in would, so the provider keeps working and the failure lists every
//! captured call; a few captures instead break parsing, which fails the call.
//!
//! The other tests here hold the procedures to properties of their SQL that
//! no call's answer shows: a pinned search path, which transactions commit
//! asynchronously, and which index a statement reads.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::TestDb;
use common::items::{ORCHESTRATION, activity_item, completion_item, start_item, started_event};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use duroxide::providers::{ExecutionMetadata, Provider, ProviderError, TagFilter, WorkItem};
use duroxide::{
    DispatcherCapabilityFilter, Event, EventKind, INITIAL_EXECUTION_ID, InstanceFilter,
    ProviderAdmin, PruneOptions, SemverRange, SessionFetchConfig,
};

const LOCK: Duration = Duration::from_secs(30);

/// Overloads that capture a call as migrations 000002 and 000003 wrote it, as
/// (signature, result type, delegating body). `$1`, `$2`: the arguments.
const FUNCTIONS: &[(&str, &str, &str)] = &[
    (
        "hashtextextended(text, integer)",
        "bigint",
        "pg_catalog.hashtextextended($1, $2::bigint)",
    ),
    (
        "to_timestamp(numeric)",
        "timestamptz",
        "pg_catalog.to_timestamp($1::float8)",
    ),
    (
        "jsonb_build_object(text, integer)",
        "jsonb",
        "pg_catalog.jsonb_build_object($1, $2)",
    ),
    (
        "jsonb_build_object(text, bigint)",
        "jsonb",
        "pg_catalog.jsonb_build_object($1, $2)",
    ),
    (
        "jsonb_build_object(text, text)",
        "jsonb",
        "pg_catalog.jsonb_build_object($1, $2)",
    ),
    (
        "jsonb_build_object(text, text, text, text)",
        "jsonb",
        "pg_catalog.jsonb_build_object($1, $2, $3, $4)",
    ),
    (
        "jsonb_build_array(text, bigint)",
        "jsonb",
        "pg_catalog.jsonb_build_array($1, $2)",
    ),
    ("format(text, text)", "text", "pg_catalog.format($1, $2)"),
    (
        "cardinality(bigint[])",
        "integer",
        "pg_catalog.cardinality($1)",
    ),
];

/// Operators, as (name, left, right, result, delegating body).
const OPERATORS: &[(&str, &str, &str, &str, &str)] = &[
    ("*", "bigint", "interval", "interval", "$1::float8 * $2"),
    ("*", "numeric", "integer", "numeric", "$1 * $2::numeric"),
    ("/", "bigint", "numeric", "numeric", "$1::numeric / $2"),
    (
        "/",
        "double precision",
        "integer",
        "double precision",
        "$1 / $2::float8",
    ),
    ("||", "name", "text", "text", "$1::text || $2"),
    (
        "||",
        "text[]",
        "text[]",
        "text[]",
        "pg_catalog.array_cat($1, $2)",
    ),
    (
        ">=",
        "integer[]",
        "integer[]",
        "boolean",
        "$1 OPERATOR(pg_catalog.>=) $2",
    ),
    (
        "<=",
        "integer[]",
        "integer[]",
        "boolean",
        "$1 OPERATOR(pg_catalog.<=) $2",
    ),
    (
        "->>",
        "jsonb",
        "jsonb",
        "text",
        "$1 ->> ($2 #>> '{}'::text[])",
    ),
    (
        "->",
        "jsonb",
        "jsonb",
        "jsonb",
        "$1 -> ($2 #>> '{}'::text[])",
    ),
    (
        "?",
        "jsonb",
        "jsonb",
        "boolean",
        "$1 ? ($2 #>> '{}'::text[])",
    ),
];

/// Aggregates, as (name, argument types, state transition body over the
/// state `$1` and the arguments `$2`, `$3`).
const AGGREGATES: &[(&str, &str, &str)] = &[
    (
        "jsonb_agg",
        "jsonb",
        "coalesce($1, '[]'::jsonb) || pg_catalog.jsonb_build_array($2)",
    ),
    (
        "jsonb_object_agg",
        "text, jsonb",
        "coalesce($1, '{}'::jsonb) || pg_catalog.jsonb_build_object($2, $3)",
    ),
    ("array_agg", "text", "pg_catalog.array_append($1, $2)"),
];

/// Plants every overload in `schema`, plus a table recording their calls.
fn plant_sql(schema: &str) -> String {
    let s = format!("\"{schema}\"");
    let record = |what: &str| format!("INSERT INTO {s}.planted_calls VALUES ('{what}');");
    let mut sql = format!("CREATE TABLE {s}.planted_calls (what TEXT NOT NULL);\n");
    for (sig, ret, body) in FUNCTIONS {
        sql += &format!(
            "CREATE FUNCTION {s}.{sig} RETURNS {ret} LANGUAGE plpgsql AS $f$ \
             BEGIN {} RETURN {body}; END $f$;\n",
            record(sig)
        );
    }
    sql += &format!(
        "CREATE FUNCTION {s}.unnest(text[]) RETURNS SETOF text LANGUAGE plpgsql AS $f$ \
         BEGIN {} RETURN QUERY SELECT pg_catalog.unnest($1); END $f$;\n",
        record("unnest(text[])")
    );
    for (n, (op, left, right, ret, body)) in OPERATORS.iter().enumerate() {
        let what = format!("{op}({left}, {right})");
        sql += &format!(
            "CREATE FUNCTION {s}.planted_op_{n}({left}, {right}) RETURNS {ret} LANGUAGE plpgsql \
             AS $f$ BEGIN {} RETURN {body}; END $f$;\n\
             CREATE OPERATOR {s}.{op} (LEFTARG = {left}, RIGHTARG = {right}, \
             FUNCTION = {s}.planted_op_{n});\n",
            record(&what)
        );
    }
    for (n, (name, args, step)) in AGGREGATES.iter().enumerate() {
        let state = if *name == "array_agg" {
            "text[]"
        } else {
            "jsonb"
        };
        sql += &format!(
            "CREATE FUNCTION {s}.planted_step_{n}({state}, {args}) RETURNS {state} \
             LANGUAGE plpgsql AS $f$ BEGIN {} RETURN {step}; END $f$;\n\
             CREATE AGGREGATE {s}.{name}({args}) (SFUNC = {s}.planted_step_{n}, STYPE = {state});\n",
            record(&format!("{name}({args})"))
        );
    }
    sql
}

/// The planted objects that ran so far, comma-separated ("" if none).
async fn captured(db: &TestDb) -> String {
    db.scalar("SELECT string_agg(DISTINCT what, ', ') FROM planted_calls")
        .await
        .unwrap_or_default()
}

/// Unwraps a provider result; a failure is reported with the captures so far.
async fn ok<T>(db: &TestDb, call: &str, result: Result<T, ProviderError>) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!(
            "{call} failed: {e:?}\nplanted objects called so far: [{}]",
            captured(db).await
        ),
    }
}

fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(since.as_millis()).expect("milliseconds fit u64")
}

fn version(s: &str) -> semver::Version {
    semver::Version::parse(s).expect("version")
}

/// Metadata creating an instance, optionally a child of `parent`.
fn creating(parent: Option<&str>) -> ExecutionMetadata {
    ExecutionMetadata {
        orchestration_name: Some(ORCHESTRATION.to_owned()),
        orchestration_version: Some("1.0.0".to_owned()),
        parent_instance_id: parent.map(str::to_owned),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overloads_planted_in_the_schema_are_never_called() {
    let db = TestDb::new().await;
    let p = db.provider().await;
    common::exec(&db.url, &plant_sql(&db.schema)).await;
    let short = Some(Duration::from_millis(1));
    let default_only = TagFilter::DefaultOnly;
    let fetch = || p.fetch_orchestration_item(LOCK, Duration::ZERO, None);
    let fetch_work = || p.fetch_work_item(LOCK, Duration::ZERO, None, &default_only);

    // Orchestrator queue: enqueue, fetch, renew, abandon, fetch again, then
    // a first turn that pins the version, schedules an activity and sets a
    // timer an hour from now.
    ok(
        &db,
        "enqueue",
        p.enqueue_for_orchestrator(start_item("a"), None).await,
    )
    .await;
    let (_, token, _) = ok(&db, "fetch", fetch().await)
        .await
        .expect("a start is claimable");
    ok(
        &db,
        "renew",
        p.renew_orchestration_item_lock(&token, LOCK).await,
    )
    .await;
    ok(
        &db,
        "abandon",
        p.abandon_orchestration_item(&token, short, false).await,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (item, token, attempts) = ok(&db, "fetch", fetch().await)
        .await
        .expect("claimable again");
    assert_eq!((item.instance.as_str(), attempts), ("a", 2));
    let timer = WorkItem::TimerFired {
        instance: "a".to_owned(),
        execution_id: INITIAL_EXECUTION_ID,
        id: 2,
        fire_at_ms: now_ms() + 3_600_000,
    };
    let pinned = ExecutionMetadata {
        pinned_duroxide_version: Some(version("1.0.0")),
        ..creating(None)
    };
    let acked = p
        .ack_orchestration_item(
            &token,
            INITIAL_EXECUTION_ID,
            vec![started_event("a")],
            vec![activity_item("a", 1)],
            vec![timer],
            pinned,
            vec![],
        )
        .await;
    ok(&db, "ack", acked).await;

    // Worker queue: the same, then a completion back to the orchestration.
    let (_, token, _) = ok(&db, "fetch work", fetch_work().await)
        .await
        .expect("activity claimable");
    ok(
        &db,
        "renew work",
        p.renew_work_item_lock(&token, LOCK).await,
    )
    .await;
    ok(
        &db,
        "abandon work",
        p.abandon_work_item(&token, short, false).await,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (_, token, _) = ok(&db, "fetch work", fetch_work().await)
        .await
        .expect("claimable again");
    ok(
        &db,
        "ack work",
        p.ack_work_item(&token, Some(completion_item("a", 1))).await,
    )
    .await;

    // A plain enqueue; once it is locked, an idle fetch waits for its expiry.
    ok(
        &db,
        "enqueue work",
        p.enqueue_for_worker(activity_item("other", 1)).await,
    )
    .await;
    assert!(ok(&db, "fetch work", fetch_work().await).await.is_some());
    assert!(
        ok(&db, "idle fetch work", fetch_work().await)
            .await
            .is_none()
    );

    // Sessions: claim one through a fetch, then heartbeat it.
    let mut in_session = activity_item("other", 2);
    if let WorkItem::ActivityExecute { session_id, .. } = &mut in_session {
        *session_id = Some("s1".to_owned());
    }
    ok(
        &db,
        "enqueue session work",
        p.enqueue_for_worker(in_session).await,
    )
    .await;
    let owner = SessionFetchConfig {
        owner_id: "w1".to_owned(),
        lock_timeout: LOCK,
    };
    let fetched = p
        .fetch_work_item(LOCK, Duration::ZERO, Some(&owner), &default_only)
        .await;
    assert!(ok(&db, "fetch session work", fetched).await.is_some());
    let renewed = ok(
        &db,
        "renew sessions",
        p.renew_session_lock(&["w1"], LOCK, LOCK).await,
    )
    .await;
    assert_eq!(renewed, 1);

    // A dispatcher with a capability filter takes the completion; the turn
    // sets a key and completes the instance.
    let filter = DispatcherCapabilityFilter {
        supported_duroxide_versions: vec![SemverRange::new(version("0.0.0"), version("9.9.9"))],
    };
    let fetched = p
        .fetch_orchestration_item(LOCK, Duration::ZERO, Some(&filter))
        .await;
    let (item, token, _) = ok(&db, "filtered fetch", fetched)
        .await
        .expect("a matches the filter");
    assert_eq!(item.instance, "a");
    let set = Event::with_event_id(
        2,
        "a".to_owned(),
        INITIAL_EXECUTION_ID,
        None,
        EventKind::KeyValueSet {
            key: "k".to_owned(),
            value: "v".to_owned(),
            last_updated_at_ms: now_ms(),
        },
    );
    let done = ExecutionMetadata {
        status: Some("Completed".to_owned()),
        output: Some("done".to_owned()),
        ..Default::default()
    };
    let acked = p
        .ack_orchestration_item(
            &token,
            INITIAL_EXECUTION_ID,
            vec![set],
            vec![],
            vec![],
            done,
            vec![],
        )
        .await;
    ok(&db, "completing ack", acked).await;

    // A later turn loads the stored key.
    let message = WorkItem::QueueMessage {
        instance: "a".to_owned(),
        name: "late".to_owned(),
        data: "{}".to_owned(),
    };
    ok(
        &db,
        "enqueue",
        p.enqueue_for_orchestrator(message, None).await,
    )
    .await;
    let (item, token, _) = ok(&db, "fetch", fetch().await)
        .await
        .expect("a has a message");
    assert!(item.kv_snapshot.contains_key("k"), "{:?}", item.kv_snapshot);
    let acked = p
        .ack_orchestration_item(
            &token,
            INITIAL_EXECUTION_ID,
            vec![],
            vec![],
            vec![],
            Default::default(),
            vec![],
        )
        .await;
    ok(&db, "ack", acked).await;

    // A child instance of a.
    ok(
        &db,
        "enqueue",
        p.enqueue_for_orchestrator(start_item("b"), None).await,
    )
    .await;
    let (_, token, _) = ok(&db, "fetch", fetch().await)
        .await
        .expect("b is claimable");
    let acked = p
        .ack_orchestration_item(
            &token,
            INITIAL_EXECUTION_ID,
            vec![started_event("b")],
            vec![],
            vec![],
            creating(Some("a")),
            vec![],
        )
        .await;
    ok(&db, "ack", acked).await;

    // Idle: computes when to look again (the timer is an hour away).
    assert!(ok(&db, "idle fetch", fetch().await).await.is_none());
    // Busy: the only ready instance's key is held by another session.
    ok(
        &db,
        "enqueue",
        p.enqueue_for_orchestrator(start_item("c"), None).await,
    )
    .await;
    let mut holder = AsyncPgConnection::establish(&db.url)
        .await
        .expect("connect");
    let key = format!("hashtextextended('{}' || '/' || 'c', 0)", db.schema);
    holder
        .batch_execute(&format!("SELECT pg_advisory_lock({key})"))
        .await
        .expect("lock");
    assert!(ok(&db, "busy fetch", fetch().await).await.is_none());
    drop(holder);

    // Administration: prune, refusals, bulk and forced deletion of a tree.
    let admin: &dyn ProviderAdmin = &p;
    ok(
        &db,
        "prune",
        admin.prune_executions("a", PruneOptions::default()).await,
    )
    .await;
    assert!(admin.delete_instance("missing", false).await.is_err());
    let filter = InstanceFilter {
        instance_ids: Some(vec!["a".to_owned()]),
        ..Default::default()
    };
    let deleted = ok(&db, "bulk delete", admin.delete_instance_bulk(filter).await).await;
    assert_eq!(deleted.instances_deleted, 0, "a's child b is still running");
    let deleted = ok(&db, "delete", admin.delete_instance("a", true).await).await;
    assert_eq!(deleted.instances_deleted, 2);

    assert_eq!(captured(&db).await, "", "planted objects were called");
    drop(p);
    db.cleanup().await;
}

/// The procedures resolve built-ins the same way whatever search_path the
/// caller has: every function pins its own.
#[tokio::test]
async fn every_procedure_pins_its_search_path() {
    let db = TestDb::new().await;
    let p = db.provider().await;
    let unpinned = db
        .scalar(
            "SELECT string_agg(p.proname, ', ') FROM pg_proc p \
             JOIN pg_namespace n ON n.oid = p.pronamespace AND n.nspname = current_schema() \
             WHERE p.proname LIKE 'dx\\_%' \
               AND NOT coalesce(p.proconfig::text[] && ARRAY['search_path=' || current_schema()], false)",
        )
        .await;
    assert_eq!(unpinned, None, "functions without a pinned search_path");
    drop(p);
    db.cleanup().await;
}

/// A fetch's claim commits asynchronously (migration 000011), and only the
/// claim: the setting is the claim's transaction's own, so a pooled
/// connection keeps its session setting, and acks keep it too.
#[tokio::test]
async fn only_claims_commit_asynchronously_and_the_session_keeps_its_setting() {
    use diesel::QueryableByName;
    use diesel_async::RunQueryDsl;
    #[derive(QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Text)]
        synchronous_commit: String,
    }
    async fn setting(conn: &mut AsyncPgConnection) -> String {
        let rows: Vec<Setting> =
            diesel::sql_query("SELECT current_setting('synchronous_commit') AS synchronous_commit")
                .load(conn)
                .await
                .expect("read synchronous_commit");
        rows.into_iter().next().expect("one row").synchronous_commit
    }

    let db = TestDb::new().await;
    let p = db.provider().await;
    p.enqueue_for_orchestrator(start_item("async-claim"), None)
        .await
        .unwrap();
    for id in 1..=2 {
        p.enqueue_for_worker(activity_item("async-claim", id))
            .await
            .unwrap();
    }

    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    conn.batch_execute(&format!(
        "SET search_path TO \"{}\"; SET synchronous_commit = on",
        db.schema
    ))
    .await
    .unwrap();
    for (statement, what, expected) in [
        (
            "SELECT dx_fetch_orchestration('claim-o', 30000, NULL, NULL, NULL)",
            "orchestrator claim",
            "off",
        ),
        (
            "SELECT dx_fetch_work('claim-w', 30000, NULL, 0, 0, NULL)",
            "worker claim",
            "off",
        ),
        (
            // Acknowledges activity 1 and claims activity 2.
            "SELECT dx_ack_work_claim('claim-w', 'async-claim', 'ActivityCompleted', NULL, 0, \
             'claim-w2', 30000, NULL, 0, 0, '{}', NULL)",
            "activity ack that claims the next",
            "on",
        ),
        (
            "SELECT dx_ack_work('claim-w2', 'async-claim', 'ActivityCompleted', NULL)",
            "activity ack",
            "on",
        ),
    ] {
        conn.batch_execute("BEGIN").await.unwrap();
        conn.batch_execute(statement).await.unwrap();
        let inside = setting(&mut conn).await;
        conn.batch_execute("COMMIT").await.unwrap();
        assert_eq!(
            inside, expected,
            "synchronous_commit in the {what}'s transaction"
        );
        assert_eq!(
            setting(&mut conn).await,
            "on",
            "the session's setting after the {what}"
        );
    }
    let claimed = db
        .scalar("SELECT count(*) FROM instance_locks WHERE lock_token = 'claim-o'")
        .await;
    assert_eq!(
        claimed.as_deref(),
        Some("1"),
        "the orchestrator claim took its lock"
    );
    let left = db.scalar("SELECT count(*) FROM worker_queue").await;
    assert_eq!(
        left.as_deref(),
        Some("0"),
        "both worker claims were acknowledged"
    );
    drop(p);
    db.cleanup().await;
}

/// The first column of `sql`'s first row as text, on `conn`.
async fn text(conn: &mut AsyncPgConnection, sql: &str) -> Option<String> {
    use diesel::QueryableByName;
    use diesel_async::RunQueryDsl;
    #[derive(QueryableByName)]
    struct Text {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        v: Option<String>,
    }
    let rows: Vec<Text> = diesel::sql_query(format!("SELECT ({sql})::text AS v"))
        .load(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.into_iter().next().expect("one row").v
}

/// `item` as JSON, quoted for a SQL string literal.
fn json(item: WorkItem) -> String {
    serde_json::to_string(&item).unwrap().replace('\'', "''")
}

/// Retention by a list of ids finds the listed instances by primary key
/// (migration 000017): among 5,000 instances, neither bulk call reads
/// `instances_created_idx` to find the few it was given, with the first
/// (custom) plans or generic ones. A cursor's plan favours its first rows,
/// and with the creation-order sort in the same query it walked that index
/// across the table.
#[tokio::test]
async fn retention_by_ids_looks_the_listed_instances_up_by_primary_key() {
    const CREATED_IDX_READ: &str =
        "pg_stat_get_xact_tuples_returned('instances_created_idx'::regclass)";

    let db = TestDb::new().await;
    let p = db.provider().await;
    common::exec(
        &db.url,
        &format!(
            "SET search_path TO \"{}\";
             INSERT INTO instances (instance_id, orchestration_name, orchestration_version,
                                    current_execution_id, created_at, updated_at)
             SELECT 'r-' || lpad(n::text, 5, '0'), 'Orders', '1.0.0', 1,
                    now() - interval '1 hour' + n * interval '1 second', now()
             FROM generate_series(1, 5000) n;
             INSERT INTO executions (instance_id, execution_id, status, pinned_major,
                                     pinned_minor, pinned_patch, started_at, completed_at)
             SELECT instance_id, 1, 'Completed', 0, 1, 32, created_at,
                    created_at + interval '1 second'
             FROM instances;
             ANALYZE instances, executions;",
            db.schema
        ),
    )
    .await;

    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    conn.batch_execute(&format!("SET search_path TO \"{}\"", db.schema))
        .await
        .unwrap();
    for plans in ["auto", "force_generic_plan"] {
        // Several times each, so the custom pass also covers the executions
        // after which PL/pgSQL may switch to a generic plan on its own.
        for round in 0..5 {
            conn.batch_execute(&format!("BEGIN; SET LOCAL plan_cache_mode = {plans}"))
                .await
                .unwrap();
            let deleted = text(
                &mut conn,
                &format!(
                    "dx_delete_instances_bulk(ARRAY['r-0{round}551', 'r-0{round}552', \
                     'r-0{round}559'], NULL, 100) ->> 'instances_deleted'"
                ),
            )
            .await;
            assert_eq!(deleted.as_deref(), Some("3"), "{plans}, round {round}");
            let read = text(&mut conn, CREATED_IDX_READ).await;
            assert_eq!(
                read.as_deref(),
                Some("0"),
                "delete by ids read instances_created_idx ({plans})"
            );
            let pruned = text(
                &mut conn,
                &format!(
                    "dx_prune_executions_bulk(ARRAY['r-0{round}651', 'r-0{round}652'], NULL, 100, \
                     1, NULL) ->> 'instances_processed'"
                ),
            )
            .await;
            assert_eq!(pruned.as_deref(), Some("2"), "{plans}, round {round}");
            let read = text(&mut conn, CREATED_IDX_READ).await;
            assert_eq!(
                read.as_deref(),
                Some("0"),
                "prune by ids read instances_created_idx ({plans})"
            );
            conn.batch_execute("ROLLBACK").await.unwrap();
        }
    }
    drop(p);
    db.cleanup().await;
}

/// The hot path reads the queue tables and `instance_locks` through their
/// indexes (migration 000018), even where those tables are small enough for
/// the planner to prefer reading them whole: a heap that a burst grew keeps
/// its size until vacuum can cut it, and a whole read of it would cost
/// every fetch and ack all of its pages. One transaction runs an
/// orchestration's first turn (enqueue, fetch, renew, abandon, fetch, ack)
/// and an activity (enqueue, fetch, renew, ack) and must scan none of them
/// sequentially. The 13 functions that plan so also have JIT off: a scan no
/// index serves is then priced past `jit_above_cost`, and was compiled on
/// every call.
#[tokio::test]
async fn the_hot_path_reads_queues_and_locks_through_their_indexes() {
    let db = TestDb::new().await;
    let p = db.provider().await;
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    conn.batch_execute(&format!("SET search_path TO \"{}\"; BEGIN", db.schema))
        .await
        .unwrap();
    let calls = [
        format!(
            "dx_enqueue_orchestrator('hp', 'StartOrchestration', '{}'::jsonb, 0)",
            json(start_item("hp"))
        ),
        "dx_fetch_orchestration('hp-turn', 30000, NULL, NULL, NULL) ->> 'result'".to_owned(),
        "dx_renew_orchestration_lock('hp-turn', 30000)".to_owned(),
        "dx_abandon_orchestration('hp-turn', 0, TRUE)".to_owned(),
        "dx_fetch_orchestration('hp-turn-2', 30000, NULL, NULL, NULL) ->> 'result'".to_owned(),
        "dx_ack_orchestration('hp-turn-2', 1, '[]', '[]', '[]', \
         '{\"orchestration_name\": \"O\", \"orchestration_version\": \"1.0.0\"}', NULL, '[]', \
         '[]', NULL, NULL) ->> 'result'"
            .to_owned(),
        format!(
            "dx_enqueue_worker('{}'::jsonb, 'hp', 1, 1, NULL, NULL)",
            json(activity_item("hp", 1))
        ),
        "dx_fetch_work('hp-work', 30000, NULL, 0, 0, NULL, NULL) ->> 'result'".to_owned(),
        "dx_renew_work_lock('hp-work', 30000)".to_owned(),
        format!(
            "dx_ack_work('hp-work', 'hp', 'ActivityCompleted', '{}'::jsonb, 10)",
            json(completion_item("hp", 1))
        ),
    ];
    let mut answers = Vec::new();
    for call in &calls {
        answers.push(text(&mut conn, call).await.unwrap_or_default());
    }
    // The calls did their work: two claims, a committed turn, a claimed
    // activity and an acknowledged completion.
    assert_eq!(answers[1], "claimed", "{answers:?}");
    assert_eq!(answers[4], "claimed", "{answers:?}");
    assert_eq!(answers[5], "committed", "{answers:?}");
    assert_eq!(answers[7], "claimed", "{answers:?}");
    assert_eq!(answers[9], "1", "{answers:?}");
    let mut scans = Vec::new();
    for table in ["instance_locks", "orchestrator_queue", "worker_queue"] {
        let n = text(
            &mut conn,
            &format!("pg_stat_get_xact_numscans('{table}'::regclass)"),
        )
        .await;
        scans.push(format!("{table} {}", n.unwrap_or_default()));
    }
    assert_eq!(
        scans,
        ["instance_locks 0", "orchestrator_queue 0", "worker_queue 0"],
        "sequential scans in the hot path"
    );
    conn.batch_execute("ROLLBACK").await.unwrap();
    // The seq scans that remain (no index serves them) are priced past
    // jit_above_cost: every function planning without seq scans has JIT
    // off too, or a tiny statement is compiled on each call.
    let without_jit_off = text(
        &mut conn,
        &format!(
            "SELECT string_agg(p.proname, ', ') FROM pg_proc p \
             WHERE p.pronamespace = '\"{}\"'::regnamespace \
               AND p.proconfig @> ARRAY['enable_seqscan=off'] \
               AND NOT p.proconfig @> ARRAY['jit=off']",
            db.schema
        ),
    )
    .await;
    assert_eq!(
        without_jit_off, None,
        "functions without seq scans but with JIT"
    );
    let planned = text(
        &mut conn,
        &format!(
            "SELECT count(*) FROM pg_proc p \
             WHERE p.pronamespace = '\"{}\"'::regnamespace \
               AND p.proconfig @> ARRAY['enable_seqscan=off', 'jit=off']",
            db.schema
        ),
    )
    .await;
    assert_eq!(planned.as_deref(), Some("13"), "hot-path functions");
    drop(p);
    db.cleanup().await;
}

/// The hot path looks instances and executions up one key at a time even
/// when their statistics say they are empty (migration 000019). A retention
/// task that deletes every completed instance leaves the tables nearly
/// empty, autovacuum's analyze records them so, and the workload refills
/// them long before the next analyze: with those statistics the planner
/// joined all of `instances` to all of `executions` before matching the
/// orchestrator fetch's candidate, so every fetch read both tables whole
/// (`executions` once per instance) until the next analyze. Here 2,000
/// instances are added and deleted, the tables analyzed (so their pages
/// hold no live row), and 2,000 more added behind the statistics' back.
/// One turn (enqueue, fetch, ack), one activity (enqueue, fetch, ack) and
/// the next turn's fetch through the version filter may then read only a
/// few index entries of either table, with the first (custom) plans and
/// with generic ones. Without the migration they read about 4 million.
#[tokio::test]
async fn the_hot_path_looks_instances_up_by_key_when_statistics_say_empty() {
    // Index entries the transaction read from the two tables' indexes.
    let read = "SELECT sum(pg_stat_get_xact_tuples_returned(i.indexrelid)) FROM pg_index i \
                WHERE i.indrelid IN ('instances'::regclass, 'executions'::regclass)";

    let db = TestDb::new().await;
    let p = db.provider().await;
    common::exec(
        &db.url,
        &format!(
            "SET search_path TO \"{}\";
             ALTER TABLE instances SET (autovacuum_enabled = false);
             ALTER TABLE executions SET (autovacuum_enabled = false);
             INSERT INTO instances (instance_id, orchestration_name, orchestration_version,
                                    current_execution_id, created_at, updated_at)
             SELECT 'e-' || n, 'Orders', '1.0.0', 1, now(), now()
             FROM generate_series(1, 2000) n;
             INSERT INTO executions (instance_id, execution_id, status, started_at)
             SELECT instance_id, 1, 'Completed', now() FROM instances;
             DELETE FROM executions;
             DELETE FROM instances;
             ANALYZE instances, executions;
             INSERT INTO instances (instance_id, orchestration_name, orchestration_version,
                                    current_execution_id, created_at, updated_at)
             SELECT 'f-' || n, 'Orders', '1.0.0', 1, now(), now()
             FROM generate_series(1, 2000) n;
             INSERT INTO executions (instance_id, execution_id, status, started_at)
             SELECT instance_id, 1, 'Running', now() FROM instances;",
            db.schema
        ),
    )
    .await;

    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    conn.batch_execute(&format!("SET search_path TO \"{}\"", db.schema))
        .await
        .unwrap();
    for plans in ["auto", "force_generic_plan"] {
        for round in 0..3 {
            let id = format!("se-{plans}-{round}");
            conn.batch_execute(&format!("BEGIN; SET LOCAL plan_cache_mode = {plans}"))
                .await
                .unwrap();
            let calls = [
                format!(
                    "dx_enqueue_orchestrator('{id}', 'StartOrchestration', '{}'::jsonb, 0)",
                    json(start_item(&id))
                ),
                "dx_fetch_orchestration('se-turn', 30000, NULL, NULL, NULL) ->> 'result'"
                    .to_owned(),
                "dx_ack_orchestration('se-turn', 1, '[]', '[]', '[]', \
                 '{\"orchestration_name\": \"O\", \"orchestration_version\": \"1.0.0\"}', NULL, \
                 '[]', '[]', NULL, NULL) ->> 'result'"
                    .to_owned(),
                format!(
                    "dx_enqueue_worker('{}'::jsonb, '{id}', 1, 1, NULL, NULL)",
                    json(activity_item(&id, 1))
                ),
                "dx_fetch_work('se-work', 30000, NULL, 0, 0, NULL, NULL) ->> 'result'".to_owned(),
                format!(
                    "dx_ack_work('se-work', '{id}', 'ActivityCompleted', '{}'::jsonb, 10)",
                    json(completion_item(&id, 1))
                ),
                // The next turn, of an instance that now exists, through
                // the version filter.
                "dx_fetch_orchestration('se-turn-2', 30000, ARRAY[0, 0, 0], ARRAY[99, 0, 0], \
                 NULL) ->> 'result'"
                    .to_owned(),
            ];
            let mut answers = Vec::new();
            for call in &calls {
                answers.push(text(&mut conn, call).await.unwrap_or_default());
            }
            assert_eq!(
                [
                    &answers[1],
                    &answers[2],
                    &answers[4],
                    &answers[5],
                    &answers[6]
                ],
                ["claimed", "committed", "claimed", "1", "claimed"],
                "{plans}, round {round}: {answers:?}"
            );
            let entries: u64 = text(&mut conn, read)
                .await
                .and_then(|n| n.parse().ok())
                .unwrap_or(u64::MAX);
            assert!(
                entries <= 50,
                "{plans}, round {round}: one turn and one activity read {entries} index \
                 entries of instances and executions"
            );
            conn.batch_execute("ROLLBACK").await.unwrap();
        }
    }
    drop(p);
    db.cleanup().await;
}

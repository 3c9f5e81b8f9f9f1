-- The typed contract between Rust and these functions (src/sql/): argument
-- documents are read with jsonb_to_record(set), so each field's SQL type is
-- declared once, next to the serde type in src/sql/documents.rs that writes
-- it; results carry a "result" tag ("claimed" / "idle", "committed" /
-- "lock_lost", "done" / "refused") that the Rust side decodes into an
-- internally tagged enum. History entries arrive as {event_id, event_type,
-- event}, built in Rust from the typed event, so no function reads fields of
-- duroxide's serialized events. Names, signatures and behaviour are those of
-- migrations 000004 and 000006; only the documents change, so binaries and
-- schema must come from the same release. src/functions.sql has the
-- resulting definitions.

CREATE OR REPLACE FUNCTION dx_ack_orchestration(p_token TEXT, p_execution_id BIGINT, p_history JSONB,
                                                p_worker_items JSONB, p_orchestrator_items JSONB,
                                                p_metadata JSONB, p_custom_status JSONB, p_kv_ops JSONB,
                                                p_cancelled JSONB, p_claim JSONB)
RETURNS JSONB
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_instance    TEXT;
    v_now_ms      BIGINT := (extract(epoch FROM pg_catalog.clock_timestamp())::NUMERIC * 1000::NUMERIC)::BIGINT;
    v_status      TEXT;
    v_output      TEXT;
    v_name        TEXT;
    v_version     TEXT;
    v_parent      TEXT;
    v_major       INT;
    v_minor       INT;
    v_patch       INT;
    v_custom      TEXT;
    v_claim       TEXT;
    v_claim_index BIGINT;
    v_claim_ms    BIGINT;
    v_op          RECORD;
    v_cancel      RECORD;
BEGIN
    SELECT instance_id INTO v_instance FROM instance_locks WHERE lock_token = p_token;
    IF NOT FOUND THEN
        RETURN pg_catalog.jsonb_build_object('result'::TEXT, 'lock_lost'::TEXT);
    END IF;
    PERFORM pg_catalog.pg_advisory_xact_lock(dx_instance_key(v_instance));
    -- Re-check under the lock: the token may have expired or been taken over.
    PERFORM 1 FROM instance_locks
    WHERE lock_token = p_token AND locked_until > pg_catalog.now()
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN pg_catalog.jsonb_build_object('result'::TEXT, 'lock_lost'::TEXT);
    END IF;

    SELECT m.status, m.output, m.orchestration_name, m.orchestration_version, m.parent_instance_id,
           m.pinned_major, m.pinned_minor, m.pinned_patch
    INTO v_status, v_output, v_name, v_version, v_parent, v_major, v_minor, v_patch
    FROM pg_catalog.jsonb_to_record(p_metadata)
         AS m(status TEXT, output TEXT, orchestration_name TEXT, orchestration_version TEXT,
              parent_instance_id TEXT, pinned_major INT, pinned_minor INT, pinned_patch INT);
    IF p_custom_status IS NOT NULL THEN
        SELECT c.value INTO v_custom
        FROM pg_catalog.jsonb_to_record(p_custom_status) AS c(value TEXT);
    END IF;
    IF p_claim IS NOT NULL THEN
        SELECT c.index, c.lock_ms, coalesce(c.token, pg_catalog.gen_random_uuid()::TEXT)
        INTO v_claim_index, v_claim_ms, v_claim
        FROM pg_catalog.jsonb_to_record(p_claim) AS c(index BIGINT, lock_ms BIGINT, token TEXT);
    END IF;

    DELETE FROM orchestrator_queue WHERE lock_token = p_token;

    IF v_name IS NOT NULL AND v_version IS NOT NULL THEN
        INSERT INTO instances AS i (instance_id, orchestration_name, orchestration_version,
                                    current_execution_id, parent_instance_id)
        VALUES (v_instance, v_name, v_version, p_execution_id, v_parent)
        ON CONFLICT (instance_id) DO UPDATE
            SET orchestration_name = EXCLUDED.orchestration_name,
                orchestration_version = EXCLUDED.orchestration_version;
    END IF;

    INSERT INTO executions (instance_id, execution_id)
    VALUES (v_instance, p_execution_id)
    ON CONFLICT DO NOTHING;

    IF v_major IS NOT NULL THEN
        UPDATE executions
        SET pinned_major = v_major, pinned_minor = v_minor, pinned_patch = v_patch
        WHERE instance_id = v_instance AND execution_id = p_execution_id;
    END IF;

    UPDATE instances
    SET current_execution_id = greatest(current_execution_id, p_execution_id),
        updated_at = pg_catalog.now(),
        custom_status = CASE WHEN p_custom_status IS NULL THEN custom_status ELSE v_custom END,
        custom_status_version = CASE WHEN p_custom_status IS NULL THEN custom_status_version
                                     ELSE custom_status_version + 1::BIGINT END
    WHERE instance_id = v_instance;

    INSERT INTO history (instance_id, execution_id, event_id, event_type, event_data)
    SELECT v_instance, p_execution_id, h.event_id, h.event_type, h.event
    FROM pg_catalog.jsonb_to_recordset(p_history) AS h(event_id BIGINT, event_type TEXT, event JSONB);

    IF v_status IS NOT NULL THEN
        UPDATE executions
        SET status = v_status, output = v_output, completed_at = pg_catalog.now()
        WHERE instance_id = v_instance AND execution_id = p_execution_id;
    END IF;

    FOR v_op IN SELECT k.op, k.key, k.value, k.ts
                FROM pg_catalog.jsonb_to_recordset(p_kv_ops) AS k(op TEXT, key TEXT, value TEXT, ts BIGINT)
    LOOP
        IF v_op.op = 'set'::TEXT THEN
            INSERT INTO kv_delta (instance_id, key, value, last_updated_at_ms)
            VALUES (v_instance, v_op.key, v_op.value, v_op.ts)
            ON CONFLICT (instance_id, key) DO UPDATE
                SET value = EXCLUDED.value, last_updated_at_ms = EXCLUDED.last_updated_at_ms;
        ELSIF v_op.op = 'clear'::TEXT THEN
            INSERT INTO kv_delta (instance_id, key, value, last_updated_at_ms)
            VALUES (v_instance, v_op.key, NULL, v_now_ms)
            ON CONFLICT (instance_id, key) DO UPDATE
                SET value = NULL, last_updated_at_ms = EXCLUDED.last_updated_at_ms;
        ELSIF v_op.op = 'clear_all'::TEXT THEN
            UPDATE kv_delta SET value = NULL, last_updated_at_ms = v_now_ms
            WHERE instance_id = v_instance;
            INSERT INTO kv_delta (instance_id, key, value, last_updated_at_ms)
            SELECT instance_id, key, NULL, v_now_ms FROM kv_store WHERE instance_id = v_instance
            ON CONFLICT (instance_id, key) DO NOTHING;
        ELSE
            RAISE EXCEPTION 'unknown kv operation %', v_op.op USING ERRCODE = '22023';
        END IF;
    END LOOP;

    -- A finished execution folds its key-value mutations into the store.
    IF v_status IN ('Completed', 'Failed', 'ContinuedAsNew') THEN
        INSERT INTO kv_store (instance_id, key, value, last_updated_at_ms)
        SELECT instance_id, key, value, last_updated_at_ms
        FROM kv_delta WHERE instance_id = v_instance AND value IS NOT NULL
        ON CONFLICT (instance_id, key) DO UPDATE
            SET value = EXCLUDED.value, last_updated_at_ms = EXCLUDED.last_updated_at_ms;
        DELETE FROM kv_store s USING kv_delta d
        WHERE s.instance_id = v_instance AND d.instance_id = v_instance
          AND d.key = s.key AND d.value IS NULL;
        DELETE FROM kv_delta WHERE instance_id = v_instance;
    END IF;

    -- The claimed item is the one at the claim's (zero-based) index.
    INSERT INTO worker_queue (work_item, instance_id, execution_id, activity_id, session_id, tag,
                              lock_token, locked_until, attempt_count)
    SELECT w.item, w.instance, w.execution_id, w.activity_id, w.session_id, w.tag,
           CASE WHEN c.claimed THEN v_claim END,
           CASE WHEN c.claimed THEN pg_catalog.now()
               + v_claim_ms::FLOAT8 * INTERVAL '1 millisecond' END,
           CASE WHEN c.claimed THEN 1 ELSE 0 END
    FROM ROWS FROM (pg_catalog.jsonb_to_recordset(p_worker_items)
                    AS (item JSONB, instance TEXT, execution_id BIGINT, activity_id BIGINT,
                        session_id TEXT, tag TEXT))
         WITH ORDINALITY AS w(item, instance, execution_id, activity_id, session_id, tag, n),
         LATERAL (SELECT (w.n - 1::BIGINT = v_claim_index) IS TRUE AS claimed) c;

    -- Cancelled activities lose their queue row; a worker running one sees its
    -- next lock renewal fail. Runs after the insert above, so an activity both
    -- scheduled and cancelled in one turn never reaches a worker.
    -- One indexed delete per activity: a join against the JSON array would
    -- be planned for ~100 rows and scan the whole worker queue.
    FOR v_cancel IN SELECT a.instance, a.execution_id, a.activity_id
                    FROM pg_catalog.jsonb_to_recordset(p_cancelled)
                         AS a(instance TEXT, execution_id BIGINT, activity_id BIGINT)
    LOOP
        DELETE FROM worker_queue
        WHERE instance_id = v_cancel.instance
          AND execution_id = v_cancel.execution_id
          AND activity_id = v_cancel.activity_id;
    END LOOP;

    IF v_claim IS NOT NULL AND NOT EXISTS (SELECT 1 FROM worker_queue WHERE lock_token = v_claim) THEN
        v_claim := NULL;  -- cancelled in this same turn
    END IF;

    INSERT INTO orchestrator_queue (instance_id, kind, work_item, visible_at)
    SELECT o.instance, o.kind, o.item,
           coalesce(pg_catalog.to_timestamp(o.visible_at_ms::FLOAT8 / 1000::FLOAT8), pg_catalog.now())
    FROM pg_catalog.jsonb_to_recordset(p_orchestrator_items)
         AS o(instance TEXT, kind TEXT, item JSONB, visible_at_ms BIGINT);

    DELETE FROM instance_locks WHERE lock_token = p_token;

    IF pg_catalog.jsonb_array_length(p_worker_items) > 0 THEN
        PERFORM pg_catalog.pg_notify(dx_notify_channel(), 'w'::TEXT);
    END IF;
    -- Wake orchestrator waiters for new messages, and for messages of this
    -- instance that arrived while it was locked: it is claimable again now.
    IF pg_catalog.jsonb_array_length(p_orchestrator_items) > 0
       OR EXISTS (SELECT 1 FROM orchestrator_queue
                  WHERE instance_id = v_instance AND visible_at <= pg_catalog.now()) THEN
        PERFORM pg_catalog.pg_notify(dx_notify_channel(), 'o'::TEXT);
    END IF;
    RETURN pg_catalog.jsonb_build_object('result'::TEXT, 'committed'::TEXT, 'claimed'::TEXT, v_claim);
END
$$;

CREATE OR REPLACE FUNCTION dx_fetch_orchestration(p_token TEXT, p_lock_ms BIGINT, p_min_version INT[], p_max_version INT[])
RETURNS JSONB
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_instance TEXT;
    v_token    TEXT;
    v_exists   BOOLEAN;
    v_name     TEXT;
    v_version  TEXT;
    v_exec     BIGINT;
    v_messages JSONB;
    v_attempts INT;
    v_history  JSONB := '[]'::JSONB;
    v_kv       JSONB := '{}'::JSONB;
    v_skipped  TEXT[] := '{}'::TEXT[];
    v_busy     BOOLEAN := FALSE;
BEGIN
    LOOP
        SELECT q.instance_id INTO v_instance
        FROM orchestrator_queue q
        LEFT JOIN instance_locks l ON l.instance_id = q.instance_id
        LEFT JOIN instances i ON i.instance_id = q.instance_id
        LEFT JOIN executions e ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
        WHERE q.visible_at <= pg_catalog.now()
          AND q.instance_id <> ALL (v_skipped)
          AND (l.instance_id IS NULL OR l.locked_until <= pg_catalog.now())
          AND (p_min_version IS NULL OR e.pinned_major IS NULL
               OR (ARRAY[e.pinned_major, e.pinned_minor, e.pinned_patch] OPERATOR(pg_catalog.>=) p_min_version
                   AND ARRAY[e.pinned_major, e.pinned_minor, e.pinned_patch] OPERATOR(pg_catalog.<=) p_max_version))
          -- Messages of an instance that does not exist yet wait for its start
          -- message; orphaned queue messages are selected so they get dropped.
          AND (i.instance_id IS NOT NULL
               OR q.kind IN ('StartOrchestration', 'ContinueAsNew', 'QueueMessage')
               OR EXISTS (SELECT 1 FROM executions x WHERE x.instance_id = q.instance_id)
               OR EXISTS (SELECT 1 FROM orchestrator_queue s
                          WHERE s.instance_id = q.instance_id
                            AND s.kind IN ('StartOrchestration', 'ContinueAsNew')
                            AND s.visible_at <= pg_catalog.now()))
        ORDER BY q.id
        LIMIT 1;

        IF v_instance IS NULL THEN
            IF v_busy THEN
                RETURN pg_catalog.jsonb_build_object('result'::TEXT, 'idle'::TEXT, 'retry_ms'::TEXT, 0::BIGINT);
            END IF;
            RETURN pg_catalog.jsonb_build_object('result'::TEXT, 'idle'::TEXT, 'retry_ms'::TEXT, dx_ms_until(least(
                (SELECT pg_catalog.min(visible_at) FROM orchestrator_queue
                 WHERE visible_at > pg_catalog.now()),
                (SELECT pg_catalog.min(l.locked_until) FROM instance_locks l
                 WHERE l.locked_until > pg_catalog.now()))));
        END IF;
        v_skipped := pg_catalog.array_append(v_skipped, v_instance);

        -- Another call is claiming, committing or deleting this instance.
        IF NOT pg_catalog.pg_try_advisory_xact_lock(dx_instance_key(v_instance)) THEN
            v_busy := TRUE;
            CONTINUE;
        END IF;

        v_token := COALESCE(p_token, pg_catalog.gen_random_uuid()::TEXT);
        INSERT INTO instance_locks AS l (instance_id, lock_token, locked_until, locked_at)
        VALUES (v_instance, v_token, pg_catalog.now() + p_lock_ms::FLOAT8 * INTERVAL '1 millisecond',
                pg_catalog.now())
        ON CONFLICT (instance_id) DO UPDATE
            SET lock_token = EXCLUDED.lock_token,
                locked_until = EXCLUDED.locked_until,
                locked_at = EXCLUDED.locked_at
            WHERE l.locked_until <= pg_catalog.now();
        -- Not found: another dispatcher locked the instance first.
        CONTINUE WHEN NOT FOUND;

        SELECT i.orchestration_name, i.orchestration_version, i.current_execution_id
        INTO v_name, v_version, v_exec
        FROM instances i WHERE i.instance_id = v_instance;
        v_exists := FOUND;

        IF NOT v_exists THEN
            -- Turns acknowledged without instance metadata leave executions and
            -- history only; the instance is known through them. Its name and
            -- version are then left null: the caller reads them from the
            -- history's typed start event rather than this function from
            -- duroxide's serialized layout.
            SELECT pg_catalog.max(execution_id) INTO v_exec
            FROM executions WHERE instance_id = v_instance;
            v_exists := v_exec IS NOT NULL;
        END IF;

        IF NOT v_exists AND NOT EXISTS (
            SELECT 1 FROM orchestrator_queue
            WHERE instance_id = v_instance AND visible_at <= pg_catalog.now()
              AND kind IN ('StartOrchestration', 'ContinueAsNew')) THEN
            -- Queue messages sent to an instance that was never started are dropped.
            DELETE FROM orchestrator_queue
            WHERE instance_id = v_instance AND kind = 'QueueMessage' AND visible_at <= pg_catalog.now();
            DELETE FROM instance_locks WHERE lock_token = v_token;
            CONTINUE;
        END IF;

        WITH claimed AS (
            UPDATE orchestrator_queue
            SET lock_token = v_token, attempt_count = attempt_count + 1
            WHERE instance_id = v_instance AND visible_at <= pg_catalog.now()
            RETURNING id, work_item, attempt_count
        )
        SELECT pg_catalog.jsonb_agg(work_item ORDER BY id), pg_catalog.max(attempt_count)
        INTO v_messages, v_attempts
        FROM claimed;

        IF v_messages IS NULL THEN
            DELETE FROM instance_locks WHERE lock_token = v_token;
            CONTINUE;
        END IF;

        -- A history too large for one jsonb value (256 MB), or too large to
        -- load within the session's statement_timeout, would fail this
        -- statement every time, for every dispatcher, forever: the first
        -- candidate in the queue would stall all dispatch. The turn is
        -- returned without it, with the reason in history_error: duroxide
        -- retries it after a pause and ends the instance through its poison
        -- handling once the attempts run out.
        BEGIN
            IF v_exists THEN
                SELECT coalesce(pg_catalog.jsonb_agg(event_data ORDER BY event_id), '[]')
                INTO v_history
                FROM history WHERE instance_id = v_instance AND execution_id = v_exec;

                SELECT coalesce(pg_catalog.jsonb_object_agg(key, pg_catalog.jsonb_build_array(value, last_updated_at_ms)),
                                '{}')
                INTO v_kv
                FROM kv_store WHERE instance_id = v_instance;
            END IF;

            RETURN pg_catalog.jsonb_build_object(
                'result'::TEXT, 'claimed'::TEXT,
                'lock_token'::TEXT, v_token,
                'instance'::TEXT, v_instance,
                'exists'::TEXT, v_exists,
                'name'::TEXT, v_name,
                'version'::TEXT, v_version,
                'execution_id'::TEXT, coalesce(v_exec, 1::BIGINT),
                'attempt_count'::TEXT, v_attempts,
                'messages'::TEXT, v_messages,
                'history'::TEXT, v_history,
                'kv'::TEXT, v_kv);
        EXCEPTION WHEN program_limit_exceeded OR query_canceled THEN
            RETURN pg_catalog.jsonb_build_object(
                'result'::TEXT, 'claimed'::TEXT,
                'lock_token'::TEXT, v_token,
                'instance'::TEXT, v_instance,
                'exists'::TEXT, v_exists,
                'name'::TEXT, v_name,
                'version'::TEXT, v_version,
                'execution_id'::TEXT, coalesce(v_exec, 1::BIGINT),
                'attempt_count'::TEXT, v_attempts,
                'messages'::TEXT, v_messages,
                'history'::TEXT, '[]'::JSONB,
                'kv'::TEXT, '{}'::JSONB,
                'history_error'::TEXT,
                'the history of this execution could not be loaded (too large, or not within '::TEXT
                || 'the statement timeout): '::TEXT || SQLERRM);
        END;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION dx_fetch_work(p_token TEXT, p_lock_ms BIGINT, p_owner_id TEXT, p_session_lock_ms BIGINT,
                                         p_tag_mode INT, p_tags TEXT[])
RETURNS JSONB
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_id       BIGINT;
    v_session  TEXT;
    v_token    TEXT;
    v_item     JSONB;
    v_attempts INT;
BEGIN
    SELECT q.id, q.session_id INTO v_id, v_session
    FROM worker_queue q
    WHERE q.visible_at <= pg_catalog.now()
      AND (q.lock_token IS NULL OR q.locked_until <= pg_catalog.now())
      AND CASE p_tag_mode
              WHEN 0 THEN q.tag IS NULL
              WHEN 1 THEN q.tag = ANY (p_tags)
              WHEN 2 THEN q.tag IS NULL OR q.tag = ANY (p_tags)
              ELSE TRUE
          END
      AND (q.session_id IS NULL
           OR (p_owner_id IS NOT NULL AND NOT EXISTS (
                   SELECT 1 FROM sessions s
                   WHERE s.session_id = q.session_id
                     AND s.locked_until > pg_catalog.now()
                     AND s.owner_id <> p_owner_id)))
    ORDER BY q.id
    LIMIT 1
    FOR UPDATE OF q SKIP LOCKED;

    IF v_id IS NULL THEN
        RETURN pg_catalog.jsonb_build_object('result'::TEXT, 'idle'::TEXT, 'retry_ms'::TEXT, dx_ms_until(least(
            (SELECT pg_catalog.min(visible_at) FROM worker_queue WHERE visible_at > pg_catalog.now()),
            (SELECT pg_catalog.min(locked_until) FROM worker_queue
             WHERE lock_token IS NOT NULL AND locked_until > pg_catalog.now()),
            (SELECT pg_catalog.min(locked_until) FROM sessions
             WHERE p_owner_id IS NOT NULL AND locked_until > pg_catalog.now()))));
    END IF;

    IF v_session IS NOT NULL THEN
        INSERT INTO sessions AS s (session_id, owner_id, locked_until, last_activity_at)
        VALUES (v_session, p_owner_id,
                pg_catalog.now() + p_session_lock_ms::FLOAT8 * INTERVAL '1 millisecond',
                pg_catalog.now())
        ON CONFLICT (session_id) DO UPDATE
            SET owner_id = EXCLUDED.owner_id,
                locked_until = EXCLUDED.locked_until,
                last_activity_at = EXCLUDED.last_activity_at
            WHERE s.locked_until <= pg_catalog.now() OR s.owner_id = EXCLUDED.owner_id;
        IF NOT FOUND THEN
            -- Another worker claimed the session first.
            RETURN pg_catalog.jsonb_build_object('result'::TEXT, 'idle'::TEXT, 'retry_ms'::TEXT, 0::BIGINT);
        END IF;
    END IF;

    v_token := COALESCE(p_token, pg_catalog.gen_random_uuid()::TEXT);
    UPDATE worker_queue
    SET lock_token = v_token,
        locked_until = pg_catalog.now() + p_lock_ms::FLOAT8 * INTERVAL '1 millisecond',
        attempt_count = attempt_count + 1
    WHERE id = v_id
    RETURNING work_item, attempt_count INTO v_item, v_attempts;

    RETURN pg_catalog.jsonb_build_object('result'::TEXT, 'claimed'::TEXT, 'item'::TEXT, v_item, 'lock_token'::TEXT, v_token,
                                         'attempt_count'::TEXT, v_attempts);
END
$$;

CREATE OR REPLACE FUNCTION dx_delete_instances(p_ids TEXT[], p_force BOOLEAN)
RETURNS JSONB
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_id         TEXT;
    v_child      TEXT;
    v_instances  BIGINT;
    v_executions BIGINT;
    v_events     BIGINT;
    v_orch       BIGINT;
    v_work       BIGINT;
BEGIN
    -- Lock in the order an ack does (advisory instance key, instance lock,
    -- then instance row), so a turn being committed finishes first and is
    -- deleted with the rest, and no later ack of a held lock can succeed: its
    -- lock row is deleted below. Fetches skip instances being deleted.
    PERFORM pg_catalog.pg_advisory_xact_lock(k)
    FROM (SELECT DISTINCT dx_instance_key(i) AS k FROM pg_catalog.unnest(p_ids) AS i) keys
    ORDER BY k;
    PERFORM 1 FROM instance_locks WHERE instance_id = ANY (p_ids)
    ORDER BY instance_id FOR UPDATE;
    PERFORM 1 FROM instances WHERE instance_id = ANY (p_ids)
    ORDER BY instance_id FOR UPDATE;

    IF NOT p_force THEN
        SELECT i.instance_id INTO v_id
        FROM instances i
        JOIN executions e ON e.instance_id = i.instance_id
                         AND e.execution_id = i.current_execution_id
        WHERE i.instance_id = ANY (p_ids) AND e.status = 'Running'
        LIMIT 1;
        IF FOUND THEN
            RETURN pg_catalog.jsonb_build_object('result'::TEXT, 'refused'::TEXT, 'error'::TEXT, pg_catalog.format(
                'instance %s is still running; cancel it first or delete with force', v_id));
        END IF;
    END IF;

    SELECT instance_id, parent_instance_id INTO v_child, v_id
    FROM instances
    WHERE parent_instance_id = ANY (p_ids) AND NOT (instance_id = ANY (p_ids))
    LIMIT 1;
    IF FOUND THEN
        RETURN pg_catalog.jsonb_build_object('result'::TEXT, 'refused'::TEXT, 'error'::TEXT, pg_catalog.format(
            'instance %s has child %s that is not in the delete set; re-read the instance tree and retry',
            v_id, v_child));
    END IF;

    -- Each statement below sees what concurrent calls committed meanwhile,
    -- so the order closes the races: an activity completed before its row
    -- is deleted has its completion removed from the orchestrator queue next,
    -- and a lock taken by a fetch before the orchestrator queue is emptied is
    -- removed last, failing that turn's ack. A worker still running one of
    -- these activities fails its next renew or ack.
    DELETE FROM worker_queue WHERE instance_id = ANY (p_ids);
    GET DIAGNOSTICS v_work = ROW_COUNT;
    DELETE FROM orchestrator_queue WHERE instance_id = ANY (p_ids);
    GET DIAGNOSTICS v_orch = ROW_COUNT;
    DELETE FROM history WHERE instance_id = ANY (p_ids);
    GET DIAGNOSTICS v_events = ROW_COUNT;
    DELETE FROM executions WHERE instance_id = ANY (p_ids);
    GET DIAGNOSTICS v_executions = ROW_COUNT;
    DELETE FROM kv_store WHERE instance_id = ANY (p_ids);
    DELETE FROM kv_delta WHERE instance_id = ANY (p_ids);
    DELETE FROM instances WHERE instance_id = ANY (p_ids);
    GET DIAGNOSTICS v_instances = ROW_COUNT;
    DELETE FROM instance_locks WHERE instance_id = ANY (p_ids);

    RETURN pg_catalog.jsonb_build_object(
        'result'::TEXT, 'done'::TEXT,
        'instances_deleted'::TEXT, v_instances,
        'executions_deleted'::TEXT, v_executions,
        'events_deleted'::TEXT, v_events,
        'queue_messages_deleted'::TEXT, v_orch + v_work);
END
$$;

CREATE OR REPLACE FUNCTION dx_delete_instance(p_instance TEXT, p_force BOOLEAN)
RETURNS JSONB
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_parent TEXT;
BEGIN
    SELECT parent_instance_id INTO v_parent FROM instances WHERE instance_id = p_instance;
    IF NOT FOUND THEN
        RETURN pg_catalog.jsonb_build_object('result'::TEXT, 'refused'::TEXT, 'error'::TEXT,
            pg_catalog.format('instance %s not found', p_instance));
    END IF;
    IF v_parent IS NOT NULL THEN
        RETURN pg_catalog.jsonb_build_object('result'::TEXT, 'refused'::TEXT, 'error'::TEXT, pg_catalog.format(
            'instance %s is a sub-orchestration of %s; delete the root instance instead',
            p_instance, v_parent));
    END IF;
    RETURN dx_delete_instances(dx_instance_tree(p_instance), p_force);
END
$$;

CREATE OR REPLACE FUNCTION dx_delete_instances_bulk(p_ids TEXT[], p_completed_before_ms BIGINT, p_max_roots INT)
RETURNS JSONB
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_before     TIMESTAMPTZ := pg_catalog.to_timestamp(p_completed_before_ms::FLOAT8 / 1000::FLOAT8);
    v_roots      REFCURSOR;
    v_root       TEXT;
    v_done       INT := 0;
    v_deleted    RECORD;
    v_instances  BIGINT := 0::BIGINT;
    v_executions BIGINT := 0::BIGINT;
    v_events     BIGINT := 0::BIGINT;
    v_messages   BIGINT := 0::BIGINT;
BEGIN
    -- Two shapes, so an id list is looked up by primary key and the open
    -- scan walks instances in creation order.
    IF p_ids IS NULL THEN
        OPEN v_roots FOR
            SELECT i.instance_id
            FROM instances i
            JOIN executions e ON e.instance_id = i.instance_id
                             AND e.execution_id = i.current_execution_id
            WHERE i.parent_instance_id IS NULL
              AND e.status IN ('Completed', 'Failed')
              AND (v_before IS NULL OR e.completed_at < v_before)
            ORDER BY i.created_at;
    ELSE
        OPEN v_roots FOR
            SELECT i.instance_id
            FROM instances i
            JOIN executions e ON e.instance_id = i.instance_id
                             AND e.execution_id = i.current_execution_id
            WHERE i.instance_id = ANY (p_ids)
              AND i.parent_instance_id IS NULL
              AND e.status IN ('Completed', 'Failed')
              AND (v_before IS NULL OR e.completed_at < v_before)
            ORDER BY i.created_at;
    END IF;

    WHILE v_done < p_max_roots LOOP
        FETCH v_roots INTO v_root;
        EXIT WHEN NOT FOUND;
        SELECT r.result, r.instances_deleted, r.executions_deleted, r.events_deleted,
               r.queue_messages_deleted
        INTO v_deleted
        FROM pg_catalog.jsonb_to_record(dx_delete_instances(dx_instance_tree(v_root), FALSE))
             AS r(result TEXT, instances_deleted BIGINT, executions_deleted BIGINT,
                  events_deleted BIGINT, queue_messages_deleted BIGINT);
        -- A refused root (a child not in its tree, say) is skipped.
        CONTINUE WHEN v_deleted.result <> 'done'::TEXT;
        v_done := v_done + 1;
        v_instances := v_instances + v_deleted.instances_deleted;
        v_executions := v_executions + v_deleted.executions_deleted;
        v_events := v_events + v_deleted.events_deleted;
        v_messages := v_messages + v_deleted.queue_messages_deleted;
    END LOOP;
    CLOSE v_roots;

    RETURN pg_catalog.jsonb_build_object(
        'result'::TEXT, 'done'::TEXT,
        'instances_deleted'::TEXT, v_instances,
        'executions_deleted'::TEXT, v_executions,
        'events_deleted'::TEXT, v_events,
        'queue_messages_deleted'::TEXT, v_messages);
END
$$;

CREATE OR REPLACE FUNCTION dx_prune_executions(p_instance TEXT, p_keep_last INT, p_completed_before_ms BIGINT)
RETURNS JSONB
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_current BIGINT;
    v_pruned  RECORD;
BEGIN
    SELECT current_execution_id INTO v_current FROM instances WHERE instance_id = p_instance;
    IF NOT FOUND THEN
        RETURN pg_catalog.jsonb_build_object('result'::TEXT, 'refused'::TEXT, 'error'::TEXT,
            pg_catalog.format('instance %s not found', p_instance));
    END IF;
    SELECT * INTO v_pruned
    FROM dx_prune_instance(p_instance, v_current, p_keep_last, p_completed_before_ms);
    RETURN pg_catalog.jsonb_build_object(
        'result'::TEXT, 'done'::TEXT,
        'instances_processed'::TEXT, 1,
        'executions_deleted'::TEXT, v_pruned.executions_deleted,
        'events_deleted'::TEXT, v_pruned.events_deleted);
END
$$;

CREATE OR REPLACE FUNCTION dx_prune_executions_bulk(p_ids TEXT[], p_completed_before_ms BIGINT,
                                                    p_max_instances INT, p_keep_last INT,
                                                    p_prune_completed_before_ms BIGINT)
RETURNS JSONB
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_before     TIMESTAMPTZ := pg_catalog.to_timestamp(p_completed_before_ms::FLOAT8 / 1000::FLOAT8);
    v_instances  REFCURSOR;
    v_instance   TEXT;
    v_current    BIGINT;
    v_pruned     RECORD;
    v_processed  BIGINT := 0::BIGINT;
    v_executions BIGINT := 0::BIGINT;
    v_events     BIGINT := 0::BIGINT;
BEGIN
    IF p_ids IS NULL THEN
        OPEN v_instances FOR
            SELECT i.instance_id, i.current_execution_id
            FROM instances i
            LEFT JOIN executions e ON e.instance_id = i.instance_id
                                  AND e.execution_id = i.current_execution_id
            WHERE v_before IS NULL OR e.completed_at < v_before
            ORDER BY i.created_at
            LIMIT p_max_instances;
    ELSE
        OPEN v_instances FOR
            SELECT i.instance_id, i.current_execution_id
            FROM instances i
            LEFT JOIN executions e ON e.instance_id = i.instance_id
                                  AND e.execution_id = i.current_execution_id
            WHERE i.instance_id = ANY (p_ids)
              AND (v_before IS NULL OR e.completed_at < v_before)
            ORDER BY i.created_at
            LIMIT p_max_instances;
    END IF;

    LOOP
        FETCH v_instances INTO v_instance, v_current;
        EXIT WHEN NOT FOUND;
        SELECT * INTO v_pruned
        FROM dx_prune_instance(v_instance, v_current, p_keep_last, p_prune_completed_before_ms);
        v_processed := v_processed + 1;
        v_executions := v_executions + v_pruned.executions_deleted;
        v_events := v_events + v_pruned.events_deleted;
    END LOOP;
    CLOSE v_instances;

    RETURN pg_catalog.jsonb_build_object(
        'result'::TEXT, 'done'::TEXT,
        'instances_processed'::TEXT, v_processed,
        'executions_deleted'::TEXT, v_executions,
        'events_deleted'::TEXT, v_events);
END
$$;

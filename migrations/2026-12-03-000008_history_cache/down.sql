-- Undoes migration 000008: the previous signatures get back the bodies of
-- migration 000007 (as src/functions.sql held them), then what 000008 added
-- is dropped.

CREATE OR REPLACE FUNCTION dx_fetch_orchestration(p_token text, p_lock_ms bigint, p_min_version integer[], p_max_version integer[])
 RETURNS jsonb
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

CREATE OR REPLACE FUNCTION dx_ack_orchestration(p_token text, p_execution_id bigint, p_history jsonb, p_worker_items jsonb, p_orchestrator_items jsonb, p_metadata jsonb, p_custom_status jsonb, p_kv_ops jsonb, p_cancelled jsonb, p_claim jsonb)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path FROM CURRENT
AS $$
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

DROP TRIGGER history_deleted ON history;
DROP TRIGGER history_updated ON history;
DROP FUNCTION dx_history_changed();
DROP FUNCTION dx_read_history(TEXT, BIGINT, TEXT, BIGINT);
DROP FUNCTION dx_fetch_orchestration(TEXT, BIGINT, INT[], INT[], TEXT);
DROP FUNCTION dx_ack_orchestration(TEXT, BIGINT, JSONB, JSONB, JSONB, JSONB, JSONB, JSONB, JSONB, JSONB, TEXT);

ALTER TABLE executions RESET (fillfactor);
ALTER TABLE executions
    DROP COLUMN turn_reader,
    DROP COLUMN turn_token,
    DROP COLUMN turn_last_event;

-- Restores the definitions of migration 000004, verbatim but for CREATE OR
-- REPLACE.

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
    v_history  JSONB := '[]';
    v_kv       JSONB := '{}';
    v_skipped  TEXT[] := '{}';
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
                RETURN pg_catalog.jsonb_build_object('retry_ms'::TEXT, 0::BIGINT);
            END IF;
            RETURN pg_catalog.jsonb_build_object('retry_ms'::TEXT, dx_ms_until(least(
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
            -- history only; the instance is known through them.
            SELECT pg_catalog.max(execution_id) INTO v_exec
            FROM executions WHERE instance_id = v_instance;
            IF v_exec IS NOT NULL THEN
                v_exists := TRUE;
                SELECT h.event_data->>'name'::TEXT, h.event_data->>'version'::TEXT
                INTO v_name, v_version
                FROM history h
                WHERE h.instance_id = v_instance AND h.execution_id = v_exec
                  AND h.event_type = 'OrchestrationStarted'
                ORDER BY h.event_id
                LIMIT 1;
            END IF;
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

CREATE OR REPLACE FUNCTION dx_delete_instances_bulk(p_ids TEXT[], p_completed_before_ms BIGINT, p_max_roots INT)
RETURNS JSONB
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_before     TIMESTAMPTZ := pg_catalog.to_timestamp(p_completed_before_ms::FLOAT8 / 1000::FLOAT8);
    v_roots      REFCURSOR;
    v_root       TEXT;
    v_done       INT := 0;
    v_result     JSONB;
    v_instances  BIGINT := 0;
    v_executions BIGINT := 0;
    v_events     BIGINT := 0;
    v_messages   BIGINT := 0;
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
        v_result := dx_delete_instances(dx_instance_tree(v_root), FALSE);
        CONTINUE WHEN v_result ? 'error'::TEXT;
        v_done := v_done + 1;
        v_instances := v_instances + (v_result->>'instances_deleted'::TEXT)::BIGINT;
        v_executions := v_executions + (v_result->>'executions_deleted'::TEXT)::BIGINT;
        v_events := v_events + (v_result->>'events_deleted'::TEXT)::BIGINT;
        v_messages := v_messages + (v_result->>'queue_messages_deleted'::TEXT)::BIGINT;
    END LOOP;
    CLOSE v_roots;

    RETURN pg_catalog.jsonb_build_object(
        'instances_deleted'::TEXT, v_instances,
        'executions_deleted'::TEXT, v_executions,
        'events_deleted'::TEXT, v_events,
        'queue_messages_deleted'::TEXT, v_messages);
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
    v_processed  BIGINT := 0;
    v_executions BIGINT := 0;
    v_events     BIGINT := 0;
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
        'instances_processed'::TEXT, v_processed,
        'executions_deleted'::TEXT, v_executions,
        'events_deleted'::TEXT, v_events);
END
$$;

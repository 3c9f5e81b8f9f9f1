-- The orchestrator fetch looks its candidate's lock, instance and
-- execution up by key, whatever the tables' statistics say.
--
-- The candidate query joined the queue to instance_locks, instances and
-- executions and left the join strategy to the planner, which prices it
-- from the tables' statistics. A retention task that deletes every
-- completed instance can leave those statistics saying `instances` and
-- `executions` are empty: autovacuum analyzes the tables between two
-- deletions, when their pages hold almost only dead rows, and the workload
-- refills them long before the next analyze. Trusting a one-row estimate,
-- the planner joined the two tables first, scanning `executions` whole for
-- every row of `instances`, and only then matched the candidate: with
-- 2,000 instances behind such statistics one turn and one activity read
-- about 4 million index entries. In a benchmark's first window after
-- 3,125 pruned orchestrations (section (j)), every fetch read `executions`
-- whole until the next analyze: 1,657 buffers per orchestration, 1,353 of
-- them in `executions`, against 264 on a fresh schema.
--
-- The lock and the instance are now looked up by scalar subqueries keyed
-- by the candidate. PostgreSQL never turns a scalar subquery into a join:
-- it runs once per candidate, with the candidate's id as a parameter,
-- which the primary key serves; the execution is joined to that one
-- instance row inside it. The existence tests are scalar too, so none of
-- them is hashed over a whole table either.
--
-- The answer is unchanged: a candidate is claimable when it is visible,
-- not skipped, not locked by a live lock, and either its instance exists
-- and its current execution's pinned version (if any) is in range, or its
-- instance does not exist yet and the message may start it, belongs to an
-- instance known by its executions only, or waits for a visible start
-- message.

CREATE OR REPLACE FUNCTION dx_fetch_orchestration(p_token text, p_lock_ms bigint, p_min_version integer[], p_max_version integer[], p_reader text)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path FROM CURRENT
 SET plan_cache_mode TO 'force_generic_plan'
 SET enable_sort TO 'off'
 SET enable_hashjoin TO 'off'
 SET enable_mergejoin TO 'off'
 SET enable_bitmapscan TO 'off'
 SET enable_seqscan TO 'off'
 SET jit TO 'off'
AS $function$
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
    v_reader   TEXT;
    v_base_tok TEXT;
    v_base     BIGINT;
    v_rest     BIGINT;
BEGIN
    -- Claims commit asynchronously (see the top of this migration).
    PERFORM pg_catalog.set_config('synchronous_commit'::TEXT, 'off'::TEXT, true);
    LOOP
        -- A bounded number of candidates per call: every candidate tried
        -- keeps its advisory lock until this call commits, and a commit of
        -- that instance waits for it. A call that kept looking through a
        -- deep queue whose first candidates were all busy would hold more
        -- and more of them, making more candidates busy for the others:
        -- a backlog of thousands then stalled every dispatcher. The caller
        -- retries at once ("idle" with retry_ms 0).
        IF pg_catalog.cardinality(v_skipped) >= 16 THEN
            RETURN pg_catalog.jsonb_build_object('result'::TEXT, 'idle'::TEXT, 'retry_ms'::TEXT, 0::BIGINT);
        END IF;

        -- The candidate's lock and instance are looked up by scalar
        -- subqueries keyed by the candidate, so each runs as an index lookup
        -- per candidate whatever the tables' statistics say (see the top of
        -- this migration). The instance's subquery answers whether its
        -- current execution's pinned version is in range, or NULL when the
        -- instance does not exist yet.
        SELECT q.instance_id INTO v_instance
        FROM orchestrator_queue q
        WHERE q.visible_at <= pg_catalog.now()
          AND q.instance_id <> ALL (v_skipped)
          AND coalesce((SELECT l.locked_until <= pg_catalog.now()
                        FROM instance_locks l WHERE l.instance_id = q.instance_id), TRUE)
          AND coalesce(
                (SELECT coalesce(p_min_version IS NULL OR e.pinned_major IS NULL
                                 OR (ARRAY[e.pinned_major, e.pinned_minor, e.pinned_patch] OPERATOR(pg_catalog.>=) p_min_version
                                     AND ARRAY[e.pinned_major, e.pinned_minor, e.pinned_patch] OPERATOR(pg_catalog.<=) p_max_version),
                                 FALSE)
                 FROM instances i
                 LEFT JOIN executions e
                   ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
                 WHERE i.instance_id = q.instance_id),
                -- Messages of an instance that does not exist yet wait for its
                -- start message; orphaned queue messages are selected so they
                -- get dropped.
                q.kind IN ('StartOrchestration', 'ContinueAsNew', 'QueueMessage')
                OR coalesce((SELECT TRUE FROM executions x
                             WHERE x.instance_id = q.instance_id LIMIT 1), FALSE)
                OR coalesce((SELECT TRUE FROM orchestrator_queue s
                             WHERE s.instance_id = q.instance_id
                               AND s.kind IN ('StartOrchestration', 'ContinueAsNew')
                               AND s.visible_at <= pg_catalog.now() LIMIT 1), FALSE))
        ORDER BY q.id
        LIMIT 1;

        IF v_instance IS NULL THEN
            IF v_busy THEN
                RETURN pg_catalog.jsonb_build_object('result'::TEXT, 'idle'::TEXT, 'retry_ms'::TEXT, 0::BIGINT);
            END IF;
            RETURN pg_catalog.jsonb_build_object('result'::TEXT, 'idle'::TEXT, 'retry_ms'::TEXT,
                                                 dx_orchestrator_outlook(NULL::TEXT));
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

        -- What this claim leaves for the caller's next fetch (see the top
        -- of this migration); a busy candidate passed over is work.
        v_rest := CASE WHEN v_busy THEN 0 ELSE dx_orchestrator_outlook(v_instance) END;

        -- A history too large for one jsonb value (256 MB), or too large to
        -- load within the session's statement_timeout, would fail this
        -- statement every time, for every dispatcher, forever: the first
        -- candidate in the queue would stall all dispatch. The turn is
        -- returned without it, with the reason in history_error: duroxide
        -- retries it after a pause and ends the instance through its poison
        -- handling once the attempts run out.
        BEGIN
            IF v_exists THEN
                -- A caller whose provider committed this execution's last
                -- turn holds its history up to that turn (validated on its
                -- side by the turn's token and last event id): it is sent
                -- only the events after it.
                SELECT x.turn_reader, x.turn_token, x.turn_last_event
                INTO v_reader, v_base_tok, v_base
                FROM executions x WHERE x.instance_id = v_instance AND x.execution_id = v_exec;
                IF p_reader IS NULL OR v_reader IS DISTINCT FROM p_reader
                   OR v_base_tok IS NULL OR v_base IS NULL THEN
                    v_base_tok := NULL;
                    v_base := NULL;
                END IF;
                SELECT coalesce(pg_catalog.jsonb_agg(event_data ORDER BY event_id), '[]')
                INTO v_history
                FROM history WHERE instance_id = v_instance AND execution_id = v_exec
                  AND event_id > coalesce(v_base, (-1)::BIGINT);

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
                'history_base'::TEXT, CASE WHEN v_base IS NOT NULL THEN
                    pg_catalog.jsonb_build_object('token'::TEXT, v_base_tok,
                                                  'last_event_id'::TEXT, v_base) END,
                'kv'::TEXT, v_kv,
                'rest'::TEXT, pg_catalog.jsonb_build_object('retry_ms'::TEXT, v_rest));
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
$function$;

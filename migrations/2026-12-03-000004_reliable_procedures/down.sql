DROP FUNCTION dx_fetch_orchestration(TEXT, BIGINT, INT[], INT[]);
DROP FUNCTION dx_fetch_work(TEXT, BIGINT, TEXT, BIGINT, INT, TEXT[]);

-- Restores the definitions of migrations 000002 and 000003, verbatim but
-- for CREATE OR REPLACE.

-- The LISTEN/NOTIFY channel of this schema: unique per schema, always a valid
-- channel name whatever the schema name's length.
CREATE OR REPLACE FUNCTION dx_notify_channel() RETURNS TEXT
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT 'duroxide_' || md5(current_schema())
$$;

-- Milliseconds from now until `t`, never negative; NULL when `t` is NULL
-- (nothing scheduled), hence STRICT.
CREATE OR REPLACE FUNCTION dx_ms_until(t TIMESTAMPTZ) RETURNS BIGINT
LANGUAGE sql STABLE STRICT AS $$
    SELECT greatest(0, ceil(extract(epoch FROM (t - now())) * 1000))::BIGINT
$$;

-- Transaction-scoped advisory lock key of an instance in this schema.
--
-- Every procedure that claims, commits, releases or deletes an instance's
-- turn takes this lock before touching its rows. Fetch only tries it and
-- moves on, so two fetches never wait on each other, and a fetch taking over
-- an expired lock never waits on the old holder's ack (which would otherwise
-- wait on the queue rows the fetch has locked: a deadlock).
CREATE OR REPLACE FUNCTION dx_instance_key(p_instance TEXT) RETURNS BIGINT
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT hashtextextended(current_schema() || '/' || p_instance, 0)
$$;

-- Enqueue one orchestrator message, visible after `p_delay_ms` (0 = now).
CREATE OR REPLACE FUNCTION dx_enqueue_orchestrator(p_instance TEXT, p_kind TEXT, p_item JSONB, p_delay_ms BIGINT)
RETURNS BIGINT
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_id BIGINT;
BEGIN
    INSERT INTO orchestrator_queue (instance_id, kind, work_item, visible_at)
    VALUES (p_instance, p_kind, p_item, now() + p_delay_ms * INTERVAL '1 millisecond')
    RETURNING id INTO v_id;
    PERFORM pg_notify(dx_notify_channel(), 'o');
    RETURN v_id;
END
$$;

-- Enqueue one activity execution.
CREATE OR REPLACE FUNCTION dx_enqueue_worker(p_item JSONB, p_instance TEXT, p_execution_id BIGINT,
                                  p_activity_id BIGINT, p_session_id TEXT, p_tag TEXT)
RETURNS BIGINT
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_id BIGINT;
BEGIN
    INSERT INTO worker_queue (work_item, instance_id, execution_id, activity_id, session_id, tag)
    VALUES (p_item, p_instance, p_execution_id, p_activity_id, p_session_id, p_tag)
    RETURNING id INTO v_id;
    PERFORM pg_notify(dx_notify_channel(), 'w');
    RETURN v_id;
END
$$;

-- Claim the next orchestration instance with visible messages.
--
-- Returns one of:
--   {"lock_token", "instance", "exists", "name", "version", "execution_id",
--    (name / version NULL when unknown: the caller takes them from the start message)
--    "attempt_count", "messages", "history", "kv"}   an instance was locked;
--   {"retry_ms": n | null}   nothing to claim; n = ms until the earliest
--                            delayed message or expiring lock, null = none.
--
-- p_min_version / p_max_version: inclusive [major, minor, patch] bounds of
-- the dispatcher's capability filter; NULL = no filter. Executions without a
-- pinned version always match.
--
-- Generic plans only: with the filter's actual bounds the planner can
-- misjudge how selective the version check is and pick full scans of
-- instances and executions; the generic plan walks the queue index.
CREATE OR REPLACE FUNCTION dx_fetch_orchestration(p_lock_ms BIGINT, p_min_version INT[], p_max_version INT[])
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
BEGIN
    SELECT q.instance_id INTO v_instance
    FROM orchestrator_queue q
    LEFT JOIN instance_locks l ON l.instance_id = q.instance_id
    LEFT JOIN instances i ON i.instance_id = q.instance_id
    LEFT JOIN executions e ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
    WHERE q.visible_at <= now()
      AND (l.instance_id IS NULL OR l.locked_until <= now())
      AND (p_min_version IS NULL OR e.pinned_major IS NULL
           OR ARRAY[e.pinned_major, e.pinned_minor, e.pinned_patch] BETWEEN p_min_version AND p_max_version)
      -- Messages of an instance that does not exist yet wait for its start
      -- message; orphaned queue messages are selected so they get dropped.
      AND (i.instance_id IS NOT NULL
           OR q.kind IN ('StartOrchestration', 'ContinueAsNew', 'QueueMessage')
           OR EXISTS (SELECT 1 FROM executions x WHERE x.instance_id = q.instance_id)
           OR EXISTS (SELECT 1 FROM orchestrator_queue s
                      WHERE s.instance_id = q.instance_id
                        AND s.kind IN ('StartOrchestration', 'ContinueAsNew')
                        AND s.visible_at <= now()))
    ORDER BY q.id
    LIMIT 1
    FOR UPDATE OF q SKIP LOCKED;

    IF v_instance IS NULL THEN
        RETURN jsonb_build_object('retry_ms', dx_ms_until(least(
            (SELECT min(visible_at) FROM orchestrator_queue WHERE visible_at > now()),
            (SELECT min(l.locked_until) FROM instance_locks l WHERE l.locked_until > now()))));
    END IF;

    IF NOT pg_try_advisory_xact_lock(dx_instance_key(v_instance)) THEN
        -- Another call is claiming, committing or deleting this instance.
        RETURN jsonb_build_object('retry_ms', 0);
    END IF;

    v_token := gen_random_uuid()::TEXT;
    INSERT INTO instance_locks AS l (instance_id, lock_token, locked_until, locked_at)
    VALUES (v_instance, v_token, now() + p_lock_ms * INTERVAL '1 millisecond', now())
    ON CONFLICT (instance_id) DO UPDATE
        SET lock_token = EXCLUDED.lock_token,
            locked_until = EXCLUDED.locked_until,
            locked_at = EXCLUDED.locked_at
        WHERE l.locked_until <= now();
    IF NOT FOUND THEN
        -- Another dispatcher locked the instance first.
        RETURN jsonb_build_object('retry_ms', 0);
    END IF;

    SELECT i.orchestration_name, i.orchestration_version, i.current_execution_id
    INTO v_name, v_version, v_exec
    FROM instances i WHERE i.instance_id = v_instance;
    v_exists := FOUND;

    IF NOT v_exists THEN
        -- Turns acknowledged without instance metadata leave executions and
        -- history only; the instance is known through them.
        SELECT max(execution_id) INTO v_exec FROM executions WHERE instance_id = v_instance;
        IF v_exec IS NOT NULL THEN
            v_exists := TRUE;
            SELECT h.event_data->>'name', h.event_data->>'version'
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
        WHERE instance_id = v_instance AND visible_at <= now()
          AND kind IN ('StartOrchestration', 'ContinueAsNew')) THEN
        -- Queue messages sent to an instance that was never started are dropped.
        DELETE FROM orchestrator_queue
        WHERE instance_id = v_instance AND kind = 'QueueMessage' AND visible_at <= now();
        DELETE FROM instance_locks WHERE lock_token = v_token;
        RETURN jsonb_build_object('retry_ms', 0);
    END IF;

    WITH claimed AS (
        UPDATE orchestrator_queue
        SET lock_token = v_token, attempt_count = attempt_count + 1
        WHERE instance_id = v_instance AND visible_at <= now()
        RETURNING id, work_item, attempt_count
    )
    SELECT jsonb_agg(work_item ORDER BY id), max(attempt_count)
    INTO v_messages, v_attempts
    FROM claimed;

    IF v_messages IS NULL THEN
        DELETE FROM instance_locks WHERE lock_token = v_token;
        RETURN jsonb_build_object('retry_ms', 0);
    END IF;

    IF v_exists THEN
        SELECT coalesce(jsonb_agg(event_data ORDER BY event_id), '[]')
        INTO v_history
        FROM history WHERE instance_id = v_instance AND execution_id = v_exec;

        SELECT coalesce(jsonb_object_agg(key, jsonb_build_array(value, last_updated_at_ms)), '{}')
        INTO v_kv
        FROM kv_store WHERE instance_id = v_instance;
    END IF;

    RETURN jsonb_build_object(
        'lock_token', v_token,
        'instance', v_instance,
        'exists', v_exists,
        'name', v_name,
        'version', v_version,
        'execution_id', coalesce(v_exec, 1),
        'attempt_count', v_attempts,
        'messages', v_messages,
        'history', v_history,
        'kv', v_kv);
END
$$;

-- Commit one orchestration turn atomically.
--
-- p_history:            [serialized duroxide Event]  (carries "event_id" and "type")
-- p_worker_items:       [{"item", "instance", "execution_id", "activity_id", "session_id", "tag"}]
-- p_orchestrator_items: [{"item", "instance", "kind", "visible_at_ms"}]  (visible_at_ms NULL = now)
-- p_metadata:           {"status", "output", "orchestration_name", "orchestration_version",
--                        "parent_instance_id", "pinned_version": [major, minor, patch]}
-- p_custom_status:      NULL = unchanged, {"value": text | null} = set / clear
-- p_kv_ops:             [{"op": "set" | "clear" | "clear_all", "key", "value", "ts"}]
-- p_cancelled:          [{"instance", "execution_id", "activity_id"}]
-- p_claim:              NULL, or {"index", "lock_ms"}: lock the worker item at
--                       that 0-based index for a worker of the calling process
--                       that is waiting for work, as its fetch would have.
--
-- Returns {"status": "ok", "claimed": token | null}, or {"status": "lock_lost"}
-- (unknown or expired token; nothing changed).
CREATE OR REPLACE FUNCTION dx_ack_orchestration(p_token TEXT, p_execution_id BIGINT, p_history JSONB,
                                     p_worker_items JSONB, p_orchestrator_items JSONB,
                                     p_metadata JSONB, p_custom_status JSONB, p_kv_ops JSONB,
                                     p_cancelled JSONB, p_claim JSONB)
RETURNS JSONB
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_instance TEXT;
    v_op       JSONB;
    v_now_ms   BIGINT := (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT;
    v_claim    TEXT := CASE WHEN p_claim IS NULL THEN NULL ELSE gen_random_uuid()::TEXT END;
BEGIN
    SELECT instance_id INTO v_instance FROM instance_locks WHERE lock_token = p_token;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('status', 'lock_lost');
    END IF;
    PERFORM pg_advisory_xact_lock(dx_instance_key(v_instance));
    -- Re-check under the lock: the token may have expired or been taken over.
    PERFORM 1 FROM instance_locks
    WHERE lock_token = p_token AND locked_until > now()
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('status', 'lock_lost');
    END IF;

    DELETE FROM orchestrator_queue WHERE lock_token = p_token;

    IF p_metadata->>'orchestration_name' IS NOT NULL AND p_metadata->>'orchestration_version' IS NOT NULL THEN
        INSERT INTO instances AS i (instance_id, orchestration_name, orchestration_version,
                                    current_execution_id, parent_instance_id)
        VALUES (v_instance, p_metadata->>'orchestration_name', p_metadata->>'orchestration_version',
                p_execution_id, p_metadata->>'parent_instance_id')
        ON CONFLICT (instance_id) DO UPDATE
            SET orchestration_name = EXCLUDED.orchestration_name,
                orchestration_version = EXCLUDED.orchestration_version;
    END IF;

    INSERT INTO executions (instance_id, execution_id)
    VALUES (v_instance, p_execution_id)
    ON CONFLICT DO NOTHING;

    IF jsonb_typeof(p_metadata->'pinned_version') = 'array' THEN
        UPDATE executions
        SET pinned_major = (p_metadata->'pinned_version'->>0)::INT,
            pinned_minor = (p_metadata->'pinned_version'->>1)::INT,
            pinned_patch = (p_metadata->'pinned_version'->>2)::INT
        WHERE instance_id = v_instance AND execution_id = p_execution_id;
    END IF;

    UPDATE instances
    SET current_execution_id = greatest(current_execution_id, p_execution_id),
        updated_at = now(),
        custom_status = CASE WHEN p_custom_status IS NULL THEN custom_status
                             ELSE p_custom_status->>'value' END,
        custom_status_version = CASE WHEN p_custom_status IS NULL THEN custom_status_version
                                     ELSE custom_status_version + 1 END
    WHERE instance_id = v_instance;

    INSERT INTO history (instance_id, execution_id, event_id, event_type, event_data)
    SELECT v_instance, p_execution_id, (h->>'event_id')::BIGINT, h->>'type', h
    FROM jsonb_array_elements(p_history) h;

    IF p_metadata->>'status' IS NOT NULL THEN
        UPDATE executions
        SET status = p_metadata->>'status', output = p_metadata->>'output', completed_at = now()
        WHERE instance_id = v_instance AND execution_id = p_execution_id;
    END IF;

    FOR v_op IN SELECT * FROM jsonb_array_elements(p_kv_ops) LOOP
        IF v_op->>'op' = 'set' THEN
            INSERT INTO kv_delta (instance_id, key, value, last_updated_at_ms)
            VALUES (v_instance, v_op->>'key', v_op->>'value', (v_op->>'ts')::BIGINT)
            ON CONFLICT (instance_id, key) DO UPDATE
                SET value = EXCLUDED.value, last_updated_at_ms = EXCLUDED.last_updated_at_ms;
        ELSIF v_op->>'op' = 'clear' THEN
            INSERT INTO kv_delta (instance_id, key, value, last_updated_at_ms)
            VALUES (v_instance, v_op->>'key', NULL, v_now_ms)
            ON CONFLICT (instance_id, key) DO UPDATE
                SET value = NULL, last_updated_at_ms = EXCLUDED.last_updated_at_ms;
        ELSIF v_op->>'op' = 'clear_all' THEN
            UPDATE kv_delta SET value = NULL, last_updated_at_ms = v_now_ms
            WHERE instance_id = v_instance;
            INSERT INTO kv_delta (instance_id, key, value, last_updated_at_ms)
            SELECT instance_id, key, NULL, v_now_ms FROM kv_store WHERE instance_id = v_instance
            ON CONFLICT (instance_id, key) DO NOTHING;
        ELSE
            RAISE EXCEPTION 'unknown kv operation %', v_op->>'op' USING ERRCODE = '22023';
        END IF;
    END LOOP;

    -- A finished execution folds its key-value mutations into the store.
    IF p_metadata->>'status' IN ('Completed', 'Failed', 'ContinuedAsNew') THEN
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

    INSERT INTO worker_queue (work_item, instance_id, execution_id, activity_id, session_id, tag,
                              lock_token, locked_until, attempt_count)
    SELECT w->'item', w->>'instance', (w->>'execution_id')::BIGINT, (w->>'activity_id')::BIGINT,
           w->>'session_id', w->>'tag',
           CASE WHEN claimed THEN v_claim END,
           CASE WHEN claimed THEN now() + (p_claim->>'lock_ms')::BIGINT * INTERVAL '1 millisecond' END,
           CASE WHEN claimed THEN 1 ELSE 0 END
    FROM jsonb_array_elements(p_worker_items) WITH ORDINALITY AS t(w, n),
         LATERAL (SELECT n - 1 = (p_claim->>'index')::BIGINT IS TRUE AS claimed) c;

    -- Cancelled activities lose their queue row; a worker running one sees its
    -- next lock renewal fail. Runs after the insert above, so an activity both
    -- scheduled and cancelled in one turn never reaches a worker.
    -- One indexed delete per activity: a join against the JSON array would
    -- be planned for ~100 rows and scan the whole worker queue.
    FOR v_op IN SELECT * FROM jsonb_array_elements(p_cancelled) LOOP
        DELETE FROM worker_queue
        WHERE instance_id = v_op->>'instance'
          AND execution_id = (v_op->>'execution_id')::BIGINT
          AND activity_id = (v_op->>'activity_id')::BIGINT;
    END LOOP;

    IF v_claim IS NOT NULL AND NOT EXISTS (SELECT 1 FROM worker_queue WHERE lock_token = v_claim) THEN
        v_claim := NULL;  -- cancelled in this same turn
    END IF;

    INSERT INTO orchestrator_queue (instance_id, kind, work_item, visible_at)
    SELECT o->>'instance', o->>'kind', o->'item',
           coalesce(to_timestamp((o->>'visible_at_ms')::DOUBLE PRECISION / 1000), now())
    FROM jsonb_array_elements(p_orchestrator_items) o;

    DELETE FROM instance_locks WHERE lock_token = p_token;

    IF jsonb_array_length(p_worker_items) > 0 THEN
        PERFORM pg_notify(dx_notify_channel(), 'w');
    END IF;
    -- Wake orchestrator waiters for new messages, and for messages of this
    -- instance that arrived while it was locked: it is claimable again now.
    IF jsonb_array_length(p_orchestrator_items) > 0
       OR EXISTS (SELECT 1 FROM orchestrator_queue
                  WHERE instance_id = v_instance AND visible_at <= now()) THEN
        PERFORM pg_notify(dx_notify_channel(), 'o');
    END IF;
    RETURN jsonb_build_object('status', 'ok', 'claimed', v_claim);
END
$$;

-- Release an orchestration lock without committing the turn. The claimed
-- messages become visible again after `p_delay_ms`; with p_ignore_attempt
-- the fetch is not counted as an attempt. Returns false for an unknown token.
CREATE OR REPLACE FUNCTION dx_abandon_orchestration(p_token TEXT, p_delay_ms BIGINT, p_ignore_attempt BOOLEAN)
RETURNS BOOLEAN
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_instance TEXT;
BEGIN
    SELECT instance_id INTO v_instance FROM instance_locks WHERE lock_token = p_token;
    IF NOT FOUND THEN
        RETURN FALSE;
    END IF;
    PERFORM pg_advisory_xact_lock(dx_instance_key(v_instance));
    DELETE FROM instance_locks WHERE lock_token = p_token;
    IF NOT FOUND THEN
        RETURN FALSE;
    END IF;
    UPDATE orchestrator_queue
    SET lock_token = NULL,
        attempt_count = CASE WHEN p_ignore_attempt THEN greatest(0, attempt_count - 1)
                             ELSE attempt_count END,
        visible_at = CASE WHEN p_delay_ms > 0 THEN now() + p_delay_ms * INTERVAL '1 millisecond'
                          ELSE visible_at END
    WHERE lock_token = p_token;
    PERFORM pg_notify(dx_notify_channel(), 'o');
    RETURN TRUE;
END
$$;

-- Extend a live orchestration lock. Returns false if it is unknown or expired.
CREATE OR REPLACE FUNCTION dx_renew_orchestration_lock(p_token TEXT, p_extend_ms BIGINT)
RETURNS BOOLEAN
LANGUAGE sql SET search_path FROM CURRENT AS $$
    WITH renewed AS (
        UPDATE instance_locks
        SET locked_until = now() + p_extend_ms * INTERVAL '1 millisecond'
        WHERE lock_token = p_token AND locked_until > now()
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM renewed)
$$;

-- Claim the next activity execution.
--
-- p_owner_id NULL: only items without a session. Otherwise items of sessions
-- that are unowned, expired or owned by p_owner_id too, and the session is
-- claimed (or refreshed) for p_session_lock_ms.
-- p_tag_mode: 0 = untagged only, 1 = tags in p_tags, 2 = untagged or in p_tags, 3 = any.
--
-- Returns {"item", "lock_token", "attempt_count"} or {"retry_ms": n | null}.
CREATE OR REPLACE FUNCTION dx_fetch_work(p_lock_ms BIGINT, p_owner_id TEXT, p_session_lock_ms BIGINT,
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
    WHERE q.visible_at <= now()
      AND (q.lock_token IS NULL OR q.locked_until <= now())
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
                     AND s.locked_until > now()
                     AND s.owner_id <> p_owner_id)))
    ORDER BY q.id
    LIMIT 1
    FOR UPDATE OF q SKIP LOCKED;

    IF v_id IS NULL THEN
        RETURN jsonb_build_object('retry_ms', dx_ms_until(least(
            (SELECT min(visible_at) FROM worker_queue WHERE visible_at > now()),
            (SELECT min(locked_until) FROM worker_queue
             WHERE lock_token IS NOT NULL AND locked_until > now()),
            (SELECT min(locked_until) FROM sessions
             WHERE p_owner_id IS NOT NULL AND locked_until > now()))));
    END IF;

    IF v_session IS NOT NULL THEN
        INSERT INTO sessions AS s (session_id, owner_id, locked_until, last_activity_at)
        VALUES (v_session, p_owner_id, now() + p_session_lock_ms * INTERVAL '1 millisecond', now())
        ON CONFLICT (session_id) DO UPDATE
            SET owner_id = EXCLUDED.owner_id,
                locked_until = EXCLUDED.locked_until,
                last_activity_at = EXCLUDED.last_activity_at
            WHERE s.locked_until <= now() OR s.owner_id = EXCLUDED.owner_id;
        IF NOT FOUND THEN
            -- Another worker claimed the session first.
            RETURN jsonb_build_object('retry_ms', 0);
        END IF;
    END IF;

    v_token := gen_random_uuid()::TEXT;
    UPDATE worker_queue
    SET lock_token = v_token,
        locked_until = now() + p_lock_ms * INTERVAL '1 millisecond',
        attempt_count = attempt_count + 1
    WHERE id = v_id
    RETURNING work_item, attempt_count INTO v_item, v_attempts;

    RETURN jsonb_build_object('item', v_item, 'lock_token', v_token, 'attempt_count', v_attempts);
END
$$;

-- Complete an activity: delete its row and, if given, enqueue its completion
-- for the orchestration. Returns false if the lock is unknown or expired
-- (cancelled, stolen or already acknowledged); nothing is changed then.
CREATE OR REPLACE FUNCTION dx_ack_work(p_token TEXT, p_instance TEXT, p_kind TEXT, p_completion JSONB)
RETURNS BOOLEAN
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_session TEXT;
BEGIN
    DELETE FROM worker_queue
    WHERE lock_token = p_token AND locked_until > now()
    RETURNING session_id INTO v_session;
    IF NOT FOUND THEN
        RETURN FALSE;
    END IF;
    IF v_session IS NOT NULL THEN
        UPDATE sessions SET last_activity_at = now()
        WHERE session_id = v_session AND locked_until > now();
    END IF;
    IF p_completion IS NOT NULL THEN
        INSERT INTO orchestrator_queue (instance_id, kind, work_item)
        VALUES (p_instance, p_kind, p_completion);
        PERFORM pg_notify(dx_notify_channel(), 'o');
    END IF;
    RETURN TRUE;
END
$$;

-- Extend a live activity lock. Returns false if the row is gone (cancelled
-- or acknowledged) or the lock expired.
CREATE OR REPLACE FUNCTION dx_renew_work_lock(p_token TEXT, p_extend_ms BIGINT)
RETURNS BOOLEAN
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_session TEXT;
BEGIN
    UPDATE worker_queue
    SET locked_until = now() + p_extend_ms * INTERVAL '1 millisecond'
    WHERE lock_token = p_token AND locked_until > now()
    RETURNING session_id INTO v_session;
    IF NOT FOUND THEN
        RETURN FALSE;
    END IF;
    IF v_session IS NOT NULL THEN
        UPDATE sessions SET last_activity_at = now()
        WHERE session_id = v_session AND locked_until > now();
    END IF;
    RETURN TRUE;
END
$$;

-- Release an activity lock; the item becomes visible after p_delay_ms.
CREATE OR REPLACE FUNCTION dx_abandon_work(p_token TEXT, p_delay_ms BIGINT, p_ignore_attempt BOOLEAN)
RETURNS BOOLEAN
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE worker_queue
    SET lock_token = NULL,
        locked_until = NULL,
        visible_at = now() + p_delay_ms * INTERVAL '1 millisecond',
        attempt_count = CASE WHEN p_ignore_attempt THEN greatest(0, attempt_count - 1)
                             ELSE attempt_count END
    WHERE lock_token = p_token;
    IF NOT FOUND THEN
        RETURN FALSE;
    END IF;
    PERFORM pg_notify(dx_notify_channel(), 'w');
    RETURN TRUE;
END
$$;

-- Heartbeat the non-idle sessions of the given owners; returns how many.
CREATE OR REPLACE FUNCTION dx_renew_sessions(p_owner_ids TEXT[], p_extend_ms BIGINT, p_idle_ms BIGINT)
RETURNS BIGINT
LANGUAGE sql SET search_path FROM CURRENT AS $$
    WITH renewed AS (
        UPDATE sessions
        SET locked_until = now() + p_extend_ms * INTERVAL '1 millisecond'
        WHERE owner_id = ANY (p_owner_ids)
          AND locked_until > now()
          AND last_activity_at > now() - p_idle_ms * INTERVAL '1 millisecond'
        RETURNING 1
    )
    SELECT count(*) FROM renewed
$$;

-- The instance `p_root` and all its descendants, root first. The root is
-- included even if it does not exist, matching duroxide's default traversal.
-- UNION (not UNION ALL) stops on a malformed parent cycle.
CREATE OR REPLACE FUNCTION dx_instance_tree(p_root TEXT) RETURNS TEXT[]
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    WITH RECURSIVE descendants(instance_id) AS (
        SELECT instance_id FROM instances WHERE parent_instance_id = p_root
        UNION
        SELECT i.instance_id
        FROM instances i JOIN descendants d ON i.parent_instance_id = d.instance_id
    )
    SELECT ARRAY[p_root]
        || coalesce((SELECT array_agg(instance_id) FROM descendants WHERE instance_id <> p_root),
                    '{}'::TEXT[])
$$;

-- Delete the given instances and everything stored for them.
--
-- Refused when, without p_force, one of them is Running, or when an instance
-- outside p_ids has its parent inside it (a child spawned after the caller
-- read the tree would be orphaned). Ids that do not exist are ignored.
--
-- Returns {"instances_deleted", "executions_deleted", "events_deleted",
-- "queue_messages_deleted"} or {"error"}.
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
    PERFORM pg_advisory_xact_lock(k)
    FROM (SELECT DISTINCT dx_instance_key(i) AS k FROM unnest(p_ids) AS i) keys
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
            RETURN jsonb_build_object('error', format(
                'instance %s is still running; cancel it first or delete with force', v_id));
        END IF;
    END IF;

    SELECT instance_id, parent_instance_id INTO v_child, v_id
    FROM instances
    WHERE parent_instance_id = ANY (p_ids) AND NOT (instance_id = ANY (p_ids))
    LIMIT 1;
    IF FOUND THEN
        RETURN jsonb_build_object('error', format(
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

    RETURN jsonb_build_object(
        'instances_deleted', v_instances,
        'executions_deleted', v_executions,
        'events_deleted', v_events,
        'queue_messages_deleted', v_orch + v_work);
END
$$;

-- Delete a root instance with all its descendants. Refused if the instance
-- does not exist or is itself a sub-orchestration; otherwise as
-- dx_delete_instances over the whole tree.
CREATE OR REPLACE FUNCTION dx_delete_instance(p_instance TEXT, p_force BOOLEAN)
RETURNS JSONB
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_parent TEXT;
BEGIN
    SELECT parent_instance_id INTO v_parent FROM instances WHERE instance_id = p_instance;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('error', format('instance %s not found', p_instance));
    END IF;
    IF v_parent IS NOT NULL THEN
        RETURN jsonb_build_object('error', format(
            'instance %s is a sub-orchestration of %s; delete the root instance instead',
            p_instance, v_parent));
    END IF;
    RETURN dx_delete_instances(dx_instance_tree(p_instance), p_force);
END
$$;

-- Delete up to p_max_roots terminal root instances (current execution
-- Completed or Failed), oldest first, each with its descendants.
--
-- p_ids NULL = any instance, otherwise only these; p_completed_before_ms NULL
-- = any time, otherwise the current execution must have completed before it.
-- A tree with a Running member is skipped, never force-deleted.
--
-- Returns the summed counts of dx_delete_instances.
CREATE OR REPLACE FUNCTION dx_delete_instances_bulk(p_ids TEXT[], p_completed_before_ms BIGINT, p_max_roots INT)
RETURNS JSONB
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_before     TIMESTAMPTZ := to_timestamp(p_completed_before_ms / 1000.0);
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
        CONTINUE WHEN v_result ? 'error';
        v_done := v_done + 1;
        v_instances := v_instances + (v_result->>'instances_deleted')::BIGINT;
        v_executions := v_executions + (v_result->>'executions_deleted')::BIGINT;
        v_events := v_events + (v_result->>'events_deleted')::BIGINT;
        v_messages := v_messages + (v_result->>'queue_messages_deleted')::BIGINT;
    END LOOP;
    CLOSE v_roots;

    RETURN jsonb_build_object(
        'instances_deleted', v_instances,
        'executions_deleted', v_executions,
        'events_deleted', v_events,
        'queue_messages_deleted', v_messages);
END
$$;

-- Delete the prunable executions of one instance and their history: those
-- below both the current execution and the p_keep_last newest ones, not
-- Running, and (if p_completed_before_ms is given) completed before it.
-- Key-value state is instance-scoped and is left alone.
CREATE OR REPLACE FUNCTION dx_prune_instance(p_instance TEXT, p_current BIGINT, p_keep_last INT,
                                  p_completed_before_ms BIGINT,
                                  OUT executions_deleted BIGINT, OUT events_deleted BIGINT)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_before TIMESTAMPTZ := to_timestamp(p_completed_before_ms / 1000.0);
    v_below  BIGINT := p_current;
    v_kept   BIGINT;
    v_ids    BIGINT[];
BEGIN
    executions_deleted := 0;
    events_deleted := 0;
    IF p_keep_last > 1 THEN
        SELECT execution_id INTO v_kept
        FROM executions WHERE instance_id = p_instance
        ORDER BY execution_id DESC
        OFFSET p_keep_last - 1 LIMIT 1;
        IF NOT FOUND THEN
            RETURN;  -- no more than p_keep_last executions exist
        END IF;
        v_below := least(v_below, v_kept);
    END IF;

    v_ids := ARRAY(
        SELECT execution_id FROM executions
        WHERE instance_id = p_instance
          AND execution_id < v_below
          AND status <> 'Running'
          AND (v_before IS NULL OR completed_at < v_before));
    IF cardinality(v_ids) = 0 THEN
        RETURN;
    END IF;

    DELETE FROM history WHERE instance_id = p_instance AND execution_id = ANY (v_ids);
    GET DIAGNOSTICS events_deleted = ROW_COUNT;
    DELETE FROM executions WHERE instance_id = p_instance AND execution_id = ANY (v_ids);
    GET DIAGNOSTICS executions_deleted = ROW_COUNT;
END
$$;

-- Prune one instance. Returns {"instances_processed", "executions_deleted",
-- "events_deleted"} or {"error"} if the instance does not exist.
CREATE OR REPLACE FUNCTION dx_prune_executions(p_instance TEXT, p_keep_last INT, p_completed_before_ms BIGINT)
RETURNS JSONB
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_current BIGINT;
    v_pruned  RECORD;
BEGIN
    SELECT current_execution_id INTO v_current FROM instances WHERE instance_id = p_instance;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('error', format('instance %s not found', p_instance));
    END IF;
    SELECT * INTO v_pruned
    FROM dx_prune_instance(p_instance, v_current, p_keep_last, p_completed_before_ms);
    RETURN jsonb_build_object(
        'instances_processed', 1,
        'executions_deleted', v_pruned.executions_deleted,
        'events_deleted', v_pruned.events_deleted);
END
$$;

-- Prune up to p_max_instances instances of any status, oldest first.
--
-- p_ids NULL = any instance, otherwise only these; p_completed_before_ms NULL
-- = any, otherwise the current execution must have completed before it.
-- p_keep_last / p_prune_completed_before_ms are applied per instance as in
-- dx_prune_instance.
CREATE OR REPLACE FUNCTION dx_prune_executions_bulk(p_ids TEXT[], p_completed_before_ms BIGINT,
                                         p_max_instances INT, p_keep_last INT,
                                         p_prune_completed_before_ms BIGINT)
RETURNS JSONB
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_before     TIMESTAMPTZ := to_timestamp(p_completed_before_ms / 1000.0);
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

    RETURN jsonb_build_object(
        'instances_processed', v_processed,
        'executions_deleted', v_executions,
        'events_deleted', v_events);
END
$$;

-- Administrative procedures: cascading deletion and execution pruning.
--
-- Each provider call is one statement, so it runs in one transaction: a
-- refused request changes nothing. Contract refusals (not found, still
-- running, would orphan a child, sub-orchestration) are returned as
-- {"error": message} rather than raised, so they reach duroxide as permanent
-- errors with their own message; database failures still raise.
--
-- Like the hot-path procedures, every function pins `search_path` to the
-- schema it was created in. Timestamps from duroxide are milliseconds since
-- the Unix epoch.

-- The instance `p_root` and all its descendants, root first. The root is
-- included even if it does not exist, matching duroxide's default traversal.
-- UNION (not UNION ALL) stops on a malformed parent cycle.
CREATE FUNCTION dx_instance_tree(p_root TEXT) RETURNS TEXT[]
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
CREATE FUNCTION dx_delete_instances(p_ids TEXT[], p_force BOOLEAN)
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
CREATE FUNCTION dx_delete_instance(p_instance TEXT, p_force BOOLEAN)
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
CREATE FUNCTION dx_delete_instances_bulk(p_ids TEXT[], p_completed_before_ms BIGINT, p_max_roots INT)
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
CREATE FUNCTION dx_prune_instance(p_instance TEXT, p_current BIGINT, p_keep_last INT,
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
CREATE FUNCTION dx_prune_executions(p_instance TEXT, p_keep_last INT, p_completed_before_ms BIGINT)
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
CREATE FUNCTION dx_prune_executions_bulk(p_ids TEXT[], p_completed_before_ms BIGINT,
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

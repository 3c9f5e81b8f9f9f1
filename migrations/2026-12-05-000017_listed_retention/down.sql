-- The id-list shapes back to one query with the ORDER BY (migration 000007).

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

-- Restores the five-argument dx_ack_work of migration 000013: held
-- completions are announced without their instance's key, and releasing
-- them announces plain 'o'.

CREATE OR REPLACE FUNCTION dx_ack_work(p_token TEXT, p_instance TEXT, p_kind TEXT, p_completion JSONB, p_hold_ms BIGINT)
RETURNS INTEGER
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_session TEXT;
    v_exec    BIGINT;
BEGIN
    IF p_completion IS NOT NULL THEN
        IF p_hold_ms > 0 THEN
            PERFORM pg_catalog.pg_advisory_xact_lock(dx_instance_key(p_instance));
        ELSE
            PERFORM pg_catalog.pg_advisory_xact_lock_shared(dx_instance_key(p_instance));
        END IF;
    END IF;
    DELETE FROM worker_queue
    WHERE lock_token = p_token AND locked_until > pg_catalog.now()
    RETURNING session_id, execution_id INTO v_session, v_exec;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    IF v_session IS NOT NULL THEN
        UPDATE sessions SET last_activity_at = pg_catalog.now()
        WHERE session_id = v_session AND locked_until > pg_catalog.now();
    END IF;
    IF p_completion IS NULL THEN
        RETURN 1;
    END IF;
    IF p_hold_ms > 0 AND EXISTS (SELECT 1 FROM worker_queue
                                 WHERE instance_id = p_instance AND execution_id = v_exec) THEN
        INSERT INTO orchestrator_queue (instance_id, kind, work_item, visible_at, held)
        VALUES (p_instance, p_kind, p_completion,
                pg_catalog.now() + p_hold_ms::FLOAT8 * INTERVAL '1 millisecond', TRUE);
        PERFORM pg_catalog.pg_notify(dx_notify_channel(), 'o'::TEXT || p_hold_ms::TEXT);
        RETURN 2;
    END IF;
    INSERT INTO orchestrator_queue (instance_id, kind, work_item)
    VALUES (p_instance, p_kind, p_completion);
    IF p_hold_ms > 0 THEN
        UPDATE orchestrator_queue SET visible_at = pg_catalog.now(), held = FALSE
        WHERE instance_id = p_instance AND held AND lock_token IS NULL AND attempt_count = 0;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM instance_locks
                   WHERE instance_id = p_instance AND locked_until > pg_catalog.now()) THEN
        PERFORM pg_catalog.pg_notify(dx_notify_channel(), 'o'::TEXT);
    END IF;
    RETURN 1;
END
$$;

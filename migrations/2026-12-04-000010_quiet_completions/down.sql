-- The previous dx_ack_work: every completion notifies.

CREATE OR REPLACE FUNCTION dx_ack_work(p_token TEXT, p_instance TEXT, p_kind TEXT, p_completion JSONB)
RETURNS BOOLEAN
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_session TEXT;
BEGIN
    DELETE FROM worker_queue
    WHERE lock_token = p_token AND locked_until > pg_catalog.now()
    RETURNING session_id INTO v_session;
    IF NOT FOUND THEN
        RETURN FALSE;
    END IF;
    IF v_session IS NOT NULL THEN
        UPDATE sessions SET last_activity_at = pg_catalog.now()
        WHERE session_id = v_session AND locked_until > pg_catalog.now();
    END IF;
    IF p_completion IS NOT NULL THEN
        INSERT INTO orchestrator_queue (instance_id, kind, work_item)
        VALUES (p_instance, p_kind, p_completion);
        PERFORM pg_catalog.pg_notify(dx_notify_channel(), 'o'::TEXT);
    END IF;
    RETURN TRUE;
END
$$;

-- Restores the four-argument dx_ack_work of migration 000010 and drops the
-- five-argument one and the `held` column. Held completions become visible
-- now.

DROP FUNCTION dx_ack_work(text, text, text, jsonb, bigint);

CREATE OR REPLACE FUNCTION dx_ack_work(p_token TEXT, p_instance TEXT, p_kind TEXT, p_completion JSONB)
RETURNS BOOLEAN
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_session TEXT;
BEGIN
    IF p_completion IS NOT NULL THEN
        PERFORM pg_catalog.pg_advisory_xact_lock_shared(dx_instance_key(p_instance));
    END IF;
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
        IF NOT EXISTS (SELECT 1 FROM instance_locks
                       WHERE instance_id = p_instance AND locked_until > pg_catalog.now()) THEN
            PERFORM pg_catalog.pg_notify(dx_notify_channel(), 'o'::TEXT);
        END IF;
    END IF;
    RETURN TRUE;
END
$$;

UPDATE orchestrator_queue SET visible_at = pg_catalog.now() WHERE held AND lock_token IS NULL AND attempt_count = 0;
ALTER TABLE orchestrator_queue DROP COLUMN held;

-- A held completion (migration 000013) is announced as "claimable in N ms"
-- and every listener schedules a wake-up for then. When the last sibling
-- completes first and releases it, that wake-up is void, yet it fired and
-- its fetch found nothing (the released turn was claimed long before): one
-- wasted fetch per batched turn.
--
-- Now the announcement names the instance's key ('o' || ms || ':' || key,
-- the key being dx_instance_key), and the acknowledgement that releases
-- held completions says so ('r' || key: wake now, and drop the wake-up
-- scheduled for that key; 'c' || key when a turn of the instance is
-- running: only drop it, since that turn's commit announces what it left).
-- Listeners keep one scheduled wake-up per key. Two instances whose keys
-- collide share one: a release of the one can drop the other's wake-up,
-- which is then found by the next fetch's retry time or the poll timeout,
-- never lost.
--
-- Listeners of the previous release read these payloads as unknown and
-- wake at once (a fetch that may find nothing), so a rolling deploy stays
-- correct.

CREATE OR REPLACE FUNCTION dx_ack_work(p_token TEXT, p_instance TEXT, p_kind TEXT, p_completion JSONB, p_hold_ms BIGINT)
RETURNS INTEGER
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_session TEXT;
    v_exec    BIGINT;
    v_key     BIGINT;
    v_running BOOLEAN;
BEGIN
    IF p_completion IS NOT NULL THEN
        v_key := dx_instance_key(p_instance);
        IF p_hold_ms > 0 THEN
            PERFORM pg_catalog.pg_advisory_xact_lock(v_key);
        ELSE
            PERFORM pg_catalog.pg_advisory_xact_lock_shared(v_key);
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
        PERFORM pg_catalog.pg_notify(dx_notify_channel(),
                                     'o'::TEXT || p_hold_ms::TEXT || ':' || v_key::TEXT);
        RETURN 2;
    END IF;
    INSERT INTO orchestrator_queue (instance_id, kind, work_item)
    VALUES (p_instance, p_kind, p_completion);
    v_running := EXISTS (SELECT 1 FROM instance_locks
                         WHERE instance_id = p_instance AND locked_until > pg_catalog.now());
    IF p_hold_ms > 0 THEN
        UPDATE orchestrator_queue SET visible_at = pg_catalog.now(), held = FALSE
        WHERE instance_id = p_instance AND held AND lock_token IS NULL AND attempt_count = 0;
        IF FOUND THEN
            PERFORM pg_catalog.pg_notify(dx_notify_channel(),
                                         CASE WHEN v_running THEN 'c' ELSE 'r' END || v_key::TEXT);
            RETURN 1;
        END IF;
    END IF;
    IF NOT v_running THEN
        PERFORM pg_catalog.pg_notify(dx_notify_channel(), 'o'::TEXT);
    END IF;
    RETURN 1;
END
$$;

-- An activity's completion may wait briefly for the other activities of
-- its execution, so one orchestration turn takes several completions
-- instead of one turn each (a fan-out of five activities took four turns
-- and more). Off unless the provider asks for it: p_hold_ms is the
-- builder's `completion_batch_window`, 0 by default.
--
-- A completion is held when, after its own worker row is deleted, other
-- worker rows of the same execution remain (queued or running). It is
-- inserted with visible_at p_hold_ms ahead and `held` set, and the
-- notification says when it becomes claimable ('o' followed by the
-- milliseconds), so listeners wake their fetches then instead of now. A
-- completion that finds no sibling left is visible at once and releases
-- the held completions of its instance (visible now, no longer held). So
-- a completion waits at most p_hold_ms, and not at all once its last
-- sibling completes.
--
-- With holding on, the instance's advisory key is taken exclusively
-- rather than shared: of two sibling completions acknowledged at the same
-- moment, the second then sees the first's worker row gone (its DELETE
-- runs after the first committed) and releases, instead of both finding
-- the other and both waiting the whole window.
--
-- Only rows never claimed are released: a held row claimed and then
-- abandoned with a delay (attempt_count > 0) keeps that delay.
--
-- The function answers 0 when the worker row is gone or its lock expired,
-- 1 when the completion (if any) was enqueued claimable, 2 when it was
-- held; the provider counts the held ones (`provider.completions_held`).
--
-- The four-argument dx_ack_work stays for providers of the previous
-- release during a rolling deploy: it calls this one without holding (and
-- without releasing: a completion held by a new provider then waits out
-- its window).

ALTER TABLE orchestrator_queue ADD COLUMN held BOOLEAN NOT NULL DEFAULT FALSE;

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

CREATE OR REPLACE FUNCTION dx_ack_work(p_token TEXT, p_instance TEXT, p_kind TEXT, p_completion JSONB)
RETURNS BOOLEAN
LANGUAGE sql SET search_path FROM CURRENT AS $$
    SELECT dx_ack_work(p_token, p_instance, p_kind, p_completion, 0::BIGINT) OPERATOR(pg_catalog.>) 0
$$;

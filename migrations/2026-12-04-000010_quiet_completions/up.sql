-- A worker's completion wakes orchestrator fetches only if its instance can
-- be claimed now. A completion for an instance whose turn is running (its
-- lock is held) cannot be, and every fetch it woke found nothing: in
-- duroxide's stress test, with five activities per orchestration, most
-- completions arrive while their instance's turn runs. The turn's ack wakes
-- fetches for it instead: it notifies when messages of its instance are
-- waiting.
--
-- The completion holds the instance's advisory key shared from its first
-- statement to its commit. Claiming, committing, abandoning and deleting an
-- instance take that key exclusively, so none of them overlaps the
-- completion, and the lock seen below stays as it is until the completion
-- commits:
-- - no lock (or an expired one): the notification goes out at commit, when
--   the message and the free instance are both visible;
-- - a held lock: its ack runs after this commit, sees the message and
--   notifies; an abandon always notifies; a lock left to expire is covered
--   by the `retry_ms` of empty fetches (the earliest lock expiry).
-- The key is taken first, before the worker row, as an ack takes it before
-- cancelling worker rows, so the two never wait on each other in a cycle.
--
-- This also closes a window the previous version left open: a completion
-- committed after a turn's ack had checked for waiting messages, but before
-- that ack committed, notified fetches that still saw the instance locked;
-- the ack then committed without a notification, and the message waited
-- for the turn's old lock to expire (or for any other notification). Now
-- the completion waits for the ack to commit and notifies after it.

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

-- A worker's claim also says whether the claiming provider holds the
-- current history of the activity's instance, so the read duroxide's worker
-- makes right after every claim (for the orchestration's name and version)
-- needs no round trip.
--
-- The claim looks up the latest execution of the instance (the one
-- dx_read_history reads). If its last committed turn was committed by the
-- caller (turn_reader = p_reader), the reply names that turn's token and
-- last event id: the caller's history cache holds exactly that history if
-- its entry carries the same token and ends at the same event, because a
-- turn's token is unique and any other write to the execution's history
-- clears the turn columns (dx_history_changed). The caller then answers the
-- next read of the instance, once and only shortly after, from its cache;
-- see `history_cache` for the bound on how old that answer can be.
--
-- The six-argument dx_fetch_work stays for providers of the previous
-- release during a rolling deploy: it calls this one without a reader.

CREATE OR REPLACE FUNCTION dx_fetch_work(p_token text, p_lock_ms bigint, p_owner_id text, p_session_lock_ms bigint, p_tag_mode integer, p_tags text[], p_reader text)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path FROM CURRENT
AS $function$
DECLARE
    v_id       BIGINT;
    v_session  TEXT;
    v_token    TEXT;
    v_item     JSONB;
    v_attempts INT;
    v_instance TEXT;
    v_exec     BIGINT;
    v_reader   TEXT;
    v_stamp    TEXT;
    v_last     BIGINT;
BEGIN
    -- Claims commit asynchronously (migration 000011).
    PERFORM pg_catalog.set_config('synchronous_commit'::TEXT, 'off'::TEXT, true);
    SELECT q.id, q.session_id INTO v_id, v_session
    FROM worker_queue q
    WHERE q.visible_at <= pg_catalog.now()
      AND (q.lock_token IS NULL OR q.locked_until <= pg_catalog.now())
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
                     AND s.locked_until > pg_catalog.now()
                     AND s.owner_id <> p_owner_id)))
    ORDER BY q.id
    LIMIT 1
    FOR UPDATE OF q SKIP LOCKED;

    IF v_id IS NULL THEN
        RETURN pg_catalog.jsonb_build_object('result'::TEXT, 'idle'::TEXT, 'retry_ms'::TEXT, dx_ms_until(least(
            (SELECT pg_catalog.min(visible_at) FROM worker_queue WHERE visible_at > pg_catalog.now()),
            (SELECT pg_catalog.min(locked_until) FROM worker_queue
             WHERE lock_token IS NOT NULL AND locked_until > pg_catalog.now()),
            (SELECT pg_catalog.min(locked_until) FROM sessions
             WHERE p_owner_id IS NOT NULL AND locked_until > pg_catalog.now()))));
    END IF;

    IF v_session IS NOT NULL THEN
        INSERT INTO sessions AS s (session_id, owner_id, locked_until, last_activity_at)
        VALUES (v_session, p_owner_id,
                pg_catalog.now() + p_session_lock_ms::FLOAT8 * INTERVAL '1 millisecond',
                pg_catalog.now())
        ON CONFLICT (session_id) DO UPDATE
            SET owner_id = EXCLUDED.owner_id,
                locked_until = EXCLUDED.locked_until,
                last_activity_at = EXCLUDED.last_activity_at
            WHERE s.locked_until <= pg_catalog.now() OR s.owner_id = EXCLUDED.owner_id;
        IF NOT FOUND THEN
            -- Another worker claimed the session first.
            RETURN pg_catalog.jsonb_build_object('result'::TEXT, 'idle'::TEXT, 'retry_ms'::TEXT, 0::BIGINT);
        END IF;
    END IF;

    v_token := COALESCE(p_token, pg_catalog.gen_random_uuid()::TEXT);
    UPDATE worker_queue
    SET lock_token = v_token,
        locked_until = pg_catalog.now() + p_lock_ms::FLOAT8 * INTERVAL '1 millisecond',
        attempt_count = attempt_count + 1
    WHERE id = v_id
    RETURNING work_item, attempt_count, instance_id INTO v_item, v_attempts, v_instance;

    -- The latest execution of the activity's instance, when its last
    -- committed turn is the caller's (see the top of this migration).
    IF p_reader IS NOT NULL AND v_instance IS NOT NULL THEN
        SELECT x.execution_id, x.turn_reader, x.turn_token, x.turn_last_event
        INTO v_exec, v_reader, v_stamp, v_last
        FROM executions x WHERE x.instance_id = v_instance
        ORDER BY x.execution_id DESC
        LIMIT 1;
    END IF;

    RETURN pg_catalog.jsonb_build_object('result'::TEXT, 'claimed'::TEXT, 'item'::TEXT, v_item, 'lock_token'::TEXT, v_token,
                                         'attempt_count'::TEXT, v_attempts,
                                         'history'::TEXT, CASE WHEN v_reader = p_reader AND v_stamp IS NOT NULL
                                                                   AND v_last IS NOT NULL THEN
                                             pg_catalog.jsonb_build_object('instance'::TEXT, v_instance,
                                                                           'execution_id'::TEXT, v_exec,
                                                                           'token'::TEXT, v_stamp,
                                                                           'last_event_id'::TEXT, v_last) END);
END
$function$;


CREATE OR REPLACE FUNCTION dx_fetch_work(p_token text, p_lock_ms bigint, p_owner_id text, p_session_lock_ms bigint, p_tag_mode integer, p_tags text[])
 RETURNS jsonb
 LANGUAGE sql
 SET search_path FROM CURRENT
AS $function$ SELECT dx_fetch_work(p_token, p_lock_ms, p_owner_id, p_session_lock_ms, p_tag_mode, p_tags, NULL::TEXT) $function$;

-- Restores the six-argument dx_fetch_work of migration 000011 and drops the
-- seven-argument one.

DROP FUNCTION dx_fetch_work(text, bigint, text, bigint, integer, text[], text);

CREATE OR REPLACE FUNCTION dx_fetch_work(p_token text, p_lock_ms bigint, p_owner_id text, p_session_lock_ms bigint, p_tag_mode integer, p_tags text[])
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
BEGIN
    -- Claims commit asynchronously (see the top of this migration).
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
    RETURNING work_item, attempt_count INTO v_item, v_attempts;

    RETURN pg_catalog.jsonb_build_object('result'::TEXT, 'claimed'::TEXT, 'item'::TEXT, v_item, 'lock_token'::TEXT, v_token,
                                         'attempt_count'::TEXT, v_attempts);
END
$function$;


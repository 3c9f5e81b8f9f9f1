-- A history read also answers the custom status of the same snapshot.
--
-- duroxide's `Client::get_orchestration_status` (and so every poll of
-- `wait_for_orchestration`) reads the instance's history and then asks for
-- its custom status: two round trips per poll. `dx_read_history` now adds
-- the instance's custom status and its version, read in the same statement
-- and snapshot as the events, to its answer. The provider keeps that
-- answer for the `get_custom_status` call that follows the read (once, within
-- the cached read window), so a status poll is one round trip.
--
-- The answer only gains two fields: `custom_status` and
-- `custom_status_version`, both NULL when the instance has no row yet. A
-- provider of the previous release ignores them. Same signature, same
-- settings as before (000008's body, 000018's settings).

CREATE OR REPLACE FUNCTION dx_read_history(p_instance text, p_execution_id bigint, p_token text, p_after bigint)
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
 SET search_path FROM CURRENT
 SET plan_cache_mode = force_generic_plan
 SET enable_seqscan = off
 SET jit = off
AS $$
DECLARE
    v_exec           BIGINT;
    v_token          TEXT;
    v_base           BIGINT;
    v_events         JSONB;
    v_status         TEXT;
    v_status_version BIGINT;
BEGIN
    SELECT pg_catalog.max(execution_id) INTO v_exec FROM executions WHERE instance_id = p_instance;
    v_exec := coalesce(v_exec, 1::BIGINT);
    -- The caller holds the events up to p_after of execution p_execution_id,
    -- loaded while p_token was the token of its latest committed turn: if
    -- that turn is still the latest, only the events after p_after are sent.
    IF p_token IS NOT NULL AND p_after IS NOT NULL AND v_exec = p_execution_id THEN
        SELECT x.turn_token INTO v_token
        FROM executions x WHERE x.instance_id = p_instance AND x.execution_id = v_exec;
        IF v_token = p_token THEN
            v_base := p_after;
        END IF;
    END IF;
    SELECT coalesce(pg_catalog.jsonb_agg(event_data ORDER BY event_id), '[]')
    INTO v_events
    FROM history WHERE instance_id = p_instance AND execution_id = v_exec
      AND event_id > coalesce(v_base, (-1)::BIGINT);
    SELECT i.custom_status, i.custom_status_version INTO v_status, v_status_version
    FROM instances i WHERE i.instance_id = p_instance;
    RETURN pg_catalog.jsonb_build_object('execution_id'::TEXT, v_exec, 'base'::TEXT, v_base,
                                         'events'::TEXT, v_events,
                                         'custom_status'::TEXT, v_status,
                                         'custom_status_version'::TEXT, v_status_version);
END
$$;

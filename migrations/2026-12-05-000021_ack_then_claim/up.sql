-- An activity's acknowledgement can also claim that worker's next activity.
--
-- A busy worker fetches again right after each acknowledgement: two round
-- trips and two transactions per activity. `dx_ack_work_claim` runs the
-- acknowledgement (`dx_ack_work`, unchanged) and then, if it found its lock
-- and the caller passed a token, the claim of a worker fetch
-- (`dx_fetch_work`, unchanged) with that worker's arguments, in the same
-- transaction, so the claim takes what the fetch would have taken. The
-- provider keeps the claimed activity for its next worker fetch and releases
-- it when none comes soon enough.
--
-- The provider asks for a claim only when the acknowledged activity is
-- session-less: its acknowledgement then locks no session row, and the
-- claim locks one at most, so this transaction never waits for a second
-- session row while holding a first.
--
-- The claim's asynchronous commit (migration 000011) must not apply to the
-- acknowledgement, which is a completion: the transaction's commit setting is
-- put back after the claim.
--
-- Answer: {"acked": 0|1|2 as dx_ack_work answers, "next": the fetch's answer
-- or NULL when no claim was tried}.

CREATE FUNCTION dx_ack_work_claim(p_token text, p_instance text, p_kind text, p_completion jsonb,
                                  p_hold_ms bigint, p_next_token text, p_lock_ms bigint,
                                  p_owner_id text, p_session_lock_ms bigint,
                                  p_tag_mode integer, p_tags text[], p_reader text)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path FROM CURRENT
 SET jit = off
AS $$
DECLARE
    v_acked  INT;
    v_commit TEXT;
    v_next   JSONB;
BEGIN
    v_acked := dx_ack_work(p_token, p_instance, p_kind, p_completion, p_hold_ms);
    IF v_acked OPERATOR(pg_catalog.>) 0 AND p_next_token IS NOT NULL THEN
        v_commit := pg_catalog.current_setting('synchronous_commit'::TEXT);
        v_next := dx_fetch_work(p_next_token, p_lock_ms, p_owner_id, p_session_lock_ms,
                                p_tag_mode, p_tags, p_reader);
        PERFORM pg_catalog.set_config('synchronous_commit'::TEXT, v_commit, true);
    END IF;
    RETURN pg_catalog.jsonb_build_object('acked'::TEXT, v_acked, 'next'::TEXT, v_next);
END
$$;

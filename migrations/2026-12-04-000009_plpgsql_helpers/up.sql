-- The three helpers the hot-path functions call on every claim, commit and
-- notification become PL/pgSQL. As SQL functions with a pinned search_path
-- they could not be inlined, so PostgreSQL parsed and planned their bodies
-- again on every call: about 13% of the server's backend CPU in duroxide's
-- stress test (perf, `fmgr_sql` -> `pg_parse_query` / `pg_plan_query`).
-- PL/pgSQL keeps each expression's plan for the session.
--
-- Same signatures, volatility and results: dx_instance_key still hashes
-- the provider's schema (current_schema() under the pinned search_path) and
-- the instance id, so a lock taken under the previous definition while this
-- migration runs is the same lock.

CREATE OR REPLACE FUNCTION dx_notify_channel() RETURNS TEXT
LANGUAGE plpgsql STABLE SET search_path FROM CURRENT AS $$
BEGIN
    RETURN 'duroxide_'::TEXT || pg_catalog.md5(pg_catalog.current_schema()::TEXT);
END
$$;

-- extract() is parsed as pg_catalog.extract; its result is numeric, hence
-- the cast before numeric * numeric.
CREATE OR REPLACE FUNCTION dx_ms_until(t TIMESTAMPTZ) RETURNS BIGINT
LANGUAGE plpgsql STABLE STRICT SET search_path FROM CURRENT AS $$
BEGIN
    RETURN greatest(0::NUMERIC,
                    pg_catalog.ceil(extract(epoch FROM (t OPERATOR(pg_catalog.-) pg_catalog.now()))::NUMERIC
                                    OPERATOR(pg_catalog.*) 1000::NUMERIC))::BIGINT;
END
$$;

CREATE OR REPLACE FUNCTION dx_instance_key(p_instance TEXT) RETURNS BIGINT
LANGUAGE plpgsql STABLE SET search_path FROM CURRENT AS $$
BEGIN
    RETURN pg_catalog.hashtextextended(
        pg_catalog.current_schema()::TEXT OPERATOR(pg_catalog.||) '/'::TEXT
            OPERATOR(pg_catalog.||) p_instance,
        0::BIGINT);
END
$$;

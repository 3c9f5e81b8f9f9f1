-- Undoes migration 000009: the helpers are SQL functions again, as
-- migration 000004 defined them.

CREATE OR REPLACE FUNCTION dx_notify_channel() RETURNS TEXT
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT 'duroxide_'::TEXT || pg_catalog.md5(pg_catalog.current_schema())
$$;

CREATE OR REPLACE FUNCTION dx_ms_until(t TIMESTAMPTZ) RETURNS BIGINT
LANGUAGE sql STABLE STRICT SET search_path FROM CURRENT AS $$
    SELECT greatest(0::NUMERIC,
                    pg_catalog.ceil(extract(epoch FROM (t - pg_catalog.now()))::NUMERIC
                                    * 1000::NUMERIC))::BIGINT
$$;

CREATE OR REPLACE FUNCTION dx_instance_key(p_instance TEXT) RETURNS BIGINT
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT pg_catalog.hashtextextended(pg_catalog.current_schema()::TEXT || '/'::TEXT || p_instance,
                                       0::BIGINT)
$$;

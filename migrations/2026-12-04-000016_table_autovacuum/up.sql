-- The large tables, vacuumed at a fixed share instead of the server's 20%.
--
-- instances and executions are updated on every turn, and retention deletes
-- from all three. With the server's defaults a table of a million rows
-- gathers 200,000 dead ones before autovacuum visits it; a retention task
-- that deletes in batches leaves each batch's rows dead for as long.
-- Vacuum (and analyze) them after 2% of their rows, plus 1000, change.
-- instances also keeps 15% of each page free, so its per-turn update
-- (which changes no indexed column) stays on the page (a HOT update: no
-- new index entries, nothing for vacuum to clean in the indexes); this
-- applies to pages written from now on.
--
-- An option an operator has already set on one of these tables
-- (docs/operations.md suggested doing so) is left as it is.
DO $$
DECLARE
    v_table   TEXT;
    v_option  TEXT;
    v_value   TEXT;
    v_current TEXT[];
BEGIN
    FOR v_table, v_option, v_value IN
        SELECT t, o, v
        FROM (VALUES ('instances'), ('executions'), ('history')) AS tables (t)
        CROSS JOIN (VALUES ('autovacuum_vacuum_scale_factor', '0.02'),
                           ('autovacuum_vacuum_threshold', '1000'),
                           ('autovacuum_analyze_scale_factor', '0.02'),
                           ('autovacuum_analyze_threshold', '1000'),
                           ('fillfactor', '85')) AS options (o, v)
        WHERE o <> 'fillfactor' OR t = 'instances'
    LOOP
        SELECT c.reloptions INTO v_current FROM pg_catalog.pg_class c
        WHERE c.oid = pg_catalog.to_regclass(v_table);
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.unnest(v_current) AS r (opt)
                       WHERE pg_catalog.split_part(r.opt, '=', 1) = v_option) THEN
            EXECUTE pg_catalog.format('ALTER TABLE %I SET (%s = %s)', v_table, v_option, v_value);
        END IF;
    END LOOP;
END
$$;

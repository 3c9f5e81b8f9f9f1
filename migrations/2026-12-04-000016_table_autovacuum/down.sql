-- The large tables back on the server's autovacuum settings (and, for
-- instances, full pages).
ALTER TABLE instances RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,
                             autovacuum_analyze_scale_factor, autovacuum_analyze_threshold, fillfactor);
ALTER TABLE executions RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,
                              autovacuum_analyze_scale_factor, autovacuum_analyze_threshold);
ALTER TABLE history RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,
                           autovacuum_analyze_scale_factor, autovacuum_analyze_threshold);

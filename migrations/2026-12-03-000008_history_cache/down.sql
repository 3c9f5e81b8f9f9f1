-- Drops what migration 000008 added; the functions of migration 000007 were
-- left in place by it.

DROP TRIGGER history_deleted ON history;
DROP TRIGGER history_updated ON history;
DROP FUNCTION dx_history_changed();
DROP FUNCTION dx_read_history(TEXT, BIGINT, TEXT, BIGINT);
DROP FUNCTION dx_fetch_orchestration(TEXT, BIGINT, INT[], INT[], TEXT);
DROP FUNCTION dx_ack_orchestration(TEXT, BIGINT, JSONB, JSONB, JSONB, JSONB, JSONB, JSONB, JSONB, JSONB, TEXT);

ALTER TABLE executions RESET (fillfactor);
ALTER TABLE executions
    DROP COLUMN turn_reader,
    DROP COLUMN turn_token,
    DROP COLUMN turn_last_event;

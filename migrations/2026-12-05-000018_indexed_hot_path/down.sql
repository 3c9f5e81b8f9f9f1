-- The hot path back on the session's enable_seqscan.

ALTER FUNCTION dx_fetch_orchestration(TEXT, BIGINT, INT[], INT[], TEXT) RESET enable_seqscan;
ALTER FUNCTION dx_fetch_orchestration(TEXT, BIGINT, INT[], INT[], TEXT) RESET jit;
ALTER FUNCTION dx_orchestrator_outlook(TEXT) RESET enable_seqscan;
ALTER FUNCTION dx_orchestrator_outlook(TEXT) RESET jit;
ALTER FUNCTION dx_ack_orchestration(TEXT, BIGINT, JSONB, JSONB, JSONB, JSONB, JSONB, JSONB, JSONB, JSONB, TEXT) RESET enable_seqscan;
ALTER FUNCTION dx_ack_orchestration(TEXT, BIGINT, JSONB, JSONB, JSONB, JSONB, JSONB, JSONB, JSONB, JSONB, TEXT) RESET jit;
ALTER FUNCTION dx_abandon_orchestration(TEXT, BIGINT, BOOLEAN) RESET enable_seqscan;
ALTER FUNCTION dx_abandon_orchestration(TEXT, BIGINT, BOOLEAN) RESET jit;
ALTER FUNCTION dx_renew_orchestration_lock(TEXT, BIGINT) RESET enable_seqscan;
ALTER FUNCTION dx_renew_orchestration_lock(TEXT, BIGINT) RESET jit;
ALTER FUNCTION dx_fetch_work(TEXT, BIGINT, TEXT, BIGINT, INT, TEXT[], TEXT) RESET enable_seqscan;
ALTER FUNCTION dx_fetch_work(TEXT, BIGINT, TEXT, BIGINT, INT, TEXT[], TEXT) RESET jit;
ALTER FUNCTION dx_ack_work(TEXT, TEXT, TEXT, JSONB, BIGINT) RESET enable_seqscan;
ALTER FUNCTION dx_ack_work(TEXT, TEXT, TEXT, JSONB, BIGINT) RESET jit;
ALTER FUNCTION dx_abandon_work(TEXT, BIGINT, BOOLEAN) RESET enable_seqscan;
ALTER FUNCTION dx_abandon_work(TEXT, BIGINT, BOOLEAN) RESET jit;
ALTER FUNCTION dx_renew_work_lock(TEXT, BIGINT) RESET enable_seqscan;
ALTER FUNCTION dx_renew_work_lock(TEXT, BIGINT) RESET jit;
ALTER FUNCTION dx_renew_sessions(TEXT[], BIGINT, BIGINT) RESET enable_seqscan;
ALTER FUNCTION dx_renew_sessions(TEXT[], BIGINT, BIGINT) RESET jit;
ALTER FUNCTION dx_enqueue_orchestrator(TEXT, TEXT, JSONB, BIGINT) RESET enable_seqscan;
ALTER FUNCTION dx_enqueue_orchestrator(TEXT, TEXT, JSONB, BIGINT) RESET jit;
ALTER FUNCTION dx_enqueue_worker(JSONB, TEXT, BIGINT, BIGINT, TEXT, TEXT) RESET enable_seqscan;
ALTER FUNCTION dx_enqueue_worker(JSONB, TEXT, BIGINT, BIGINT, TEXT, TEXT) RESET jit;
ALTER FUNCTION dx_read_history(TEXT, BIGINT, TEXT, BIGINT) RESET enable_seqscan;
ALTER FUNCTION dx_read_history(TEXT, BIGINT, TEXT, BIGINT) RESET jit;

DROP INDEX instance_locks_until_idx;

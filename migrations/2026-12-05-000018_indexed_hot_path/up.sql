-- The hot path plans with sequential scans off, so its lookups in the queue
-- tables and instance_locks always go through their indexes.
--
-- These tables hold few live rows, so the planner reads them whole: the
-- cheapest plan while their heaps are small. A burst (a backlog of
-- thousands of instances in flight) grows the heaps, and a heap does not
-- shrink when the burst drains until vacuum can cut its empty tail, which a
-- live row near the end prevents. Meanwhile every fetch, ack and renewal
-- read every page of it: after 50,000 orchestrations churned through with
-- 4,000 in flight, the first 10 s window on that schema read 1,099 buffers
-- per orchestration against 315 on a fresh schema (benchmark section (j)).
-- An index lookup reads the same few pages whatever the heap's size.
--
-- One lookup had no index: the earliest lock expiry, which a fetch's
-- answer reports (dx_orchestrator_outlook). instance_locks holds one row per
-- running turn, so the index is small.
--
-- JIT is off in the same functions. `enable_seqscan = off` prices a
-- sequential scan that no index can replace (the `sessions` expiry a worker
-- fetch reports when idle) at 10^10, far past `jit_above_cost`, and the
-- server then compiled that tiny statement with inlining and optimization:
-- 300 to 400 ms per idle worker fetch, which made a churn benchmark run
-- about 3x slower. These statements each touch a few rows; JIT never pays.
--
-- `enable_seqscan = off` does not forbid a sequential scan: a statement that
-- no index serves still gets one. It holds for the function's statements and
-- the functions they call; the caller's session keeps its own setting.

ALTER FUNCTION dx_fetch_orchestration(TEXT, BIGINT, INT[], INT[], TEXT) SET enable_seqscan = off;
ALTER FUNCTION dx_fetch_orchestration(TEXT, BIGINT, INT[], INT[], TEXT) SET jit = off;
ALTER FUNCTION dx_orchestrator_outlook(TEXT) SET enable_seqscan = off;
ALTER FUNCTION dx_orchestrator_outlook(TEXT) SET jit = off;
ALTER FUNCTION dx_ack_orchestration(TEXT, BIGINT, JSONB, JSONB, JSONB, JSONB, JSONB, JSONB, JSONB, JSONB, TEXT) SET enable_seqscan = off;
ALTER FUNCTION dx_ack_orchestration(TEXT, BIGINT, JSONB, JSONB, JSONB, JSONB, JSONB, JSONB, JSONB, JSONB, TEXT) SET jit = off;
ALTER FUNCTION dx_abandon_orchestration(TEXT, BIGINT, BOOLEAN) SET enable_seqscan = off;
ALTER FUNCTION dx_abandon_orchestration(TEXT, BIGINT, BOOLEAN) SET jit = off;
ALTER FUNCTION dx_renew_orchestration_lock(TEXT, BIGINT) SET enable_seqscan = off;
ALTER FUNCTION dx_renew_orchestration_lock(TEXT, BIGINT) SET jit = off;
ALTER FUNCTION dx_fetch_work(TEXT, BIGINT, TEXT, BIGINT, INT, TEXT[], TEXT) SET enable_seqscan = off;
ALTER FUNCTION dx_fetch_work(TEXT, BIGINT, TEXT, BIGINT, INT, TEXT[], TEXT) SET jit = off;
ALTER FUNCTION dx_ack_work(TEXT, TEXT, TEXT, JSONB, BIGINT) SET enable_seqscan = off;
ALTER FUNCTION dx_ack_work(TEXT, TEXT, TEXT, JSONB, BIGINT) SET jit = off;
ALTER FUNCTION dx_abandon_work(TEXT, BIGINT, BOOLEAN) SET enable_seqscan = off;
ALTER FUNCTION dx_abandon_work(TEXT, BIGINT, BOOLEAN) SET jit = off;
ALTER FUNCTION dx_renew_work_lock(TEXT, BIGINT) SET enable_seqscan = off;
ALTER FUNCTION dx_renew_work_lock(TEXT, BIGINT) SET jit = off;
ALTER FUNCTION dx_renew_sessions(TEXT[], BIGINT, BIGINT) SET enable_seqscan = off;
ALTER FUNCTION dx_renew_sessions(TEXT[], BIGINT, BIGINT) SET jit = off;
ALTER FUNCTION dx_enqueue_orchestrator(TEXT, TEXT, JSONB, BIGINT) SET enable_seqscan = off;
ALTER FUNCTION dx_enqueue_orchestrator(TEXT, TEXT, JSONB, BIGINT) SET jit = off;
ALTER FUNCTION dx_enqueue_worker(JSONB, TEXT, BIGINT, BIGINT, TEXT, TEXT) SET enable_seqscan = off;
ALTER FUNCTION dx_enqueue_worker(JSONB, TEXT, BIGINT, BIGINT, TEXT, TEXT) SET jit = off;
ALTER FUNCTION dx_read_history(TEXT, BIGINT, TEXT, BIGINT) SET enable_seqscan = off;
ALTER FUNCTION dx_read_history(TEXT, BIGINT, TEXT, BIGINT) SET jit = off;

CREATE INDEX instance_locks_until_idx ON instance_locks (locked_until);

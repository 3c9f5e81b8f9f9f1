-- Every object is created in the first schema of the connection's search_path:
-- the provider's own schema (see src/migrate.rs).

-- One row per orchestration instance, created by the first acknowledged turn.
CREATE TABLE instances (
    instance_id           TEXT PRIMARY KEY,
    orchestration_name    TEXT NOT NULL,
    orchestration_version TEXT,
    current_execution_id  BIGINT NOT NULL DEFAULT 1,
    parent_instance_id    TEXT,
    custom_status         TEXT,
    custom_status_version BIGINT NOT NULL DEFAULT 0,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX instances_parent_idx ON instances (parent_instance_id) WHERE parent_instance_id IS NOT NULL;
CREATE INDEX instances_created_idx ON instances (created_at);

-- One row per execution (continue-as-new starts a new one).
CREATE TABLE executions (
    instance_id   TEXT NOT NULL,
    execution_id  BIGINT NOT NULL,
    status        TEXT NOT NULL DEFAULT 'Running',
    output        TEXT,
    pinned_major  INTEGER,
    pinned_minor  INTEGER,
    pinned_patch  INTEGER,
    started_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at  TIMESTAMPTZ,
    PRIMARY KEY (instance_id, execution_id)
);
CREATE INDEX executions_status_idx ON executions (status);

-- Append-only event log; event ids are assigned by the runtime.
CREATE TABLE history (
    instance_id  TEXT NOT NULL,
    execution_id BIGINT NOT NULL,
    event_id     BIGINT NOT NULL,
    event_type   TEXT NOT NULL,
    event_data   JSONB NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, execution_id, event_id)
);

-- Orchestrator queue. `kind` is the WorkItem variant name, so the fetch
-- procedure can recognise start messages and orphaned queue messages without
-- parsing the payload. Messages are claimed in batches per instance by
-- stamping them with the instance lock's token.
CREATE TABLE orchestrator_queue (
    id            BIGSERIAL PRIMARY KEY,
    instance_id   TEXT NOT NULL,
    kind          TEXT NOT NULL,
    work_item     JSONB NOT NULL,
    visible_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    lock_token    TEXT,
    attempt_count INTEGER NOT NULL DEFAULT 0 CHECK (attempt_count >= 0),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX orchestrator_queue_visible_idx ON orchestrator_queue (visible_at, id);
CREATE INDEX orchestrator_queue_instance_idx ON orchestrator_queue (instance_id, id);
CREATE INDEX orchestrator_queue_token_idx ON orchestrator_queue (lock_token) WHERE lock_token IS NOT NULL;

-- Instance-level peek-lock: at most one turn of an instance runs at a time.
CREATE TABLE instance_locks (
    instance_id  TEXT PRIMARY KEY,
    lock_token   TEXT NOT NULL UNIQUE,
    locked_until TIMESTAMPTZ NOT NULL,
    locked_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Worker queue: one activity execution per row, peek-locked individually.
CREATE TABLE worker_queue (
    id            BIGSERIAL PRIMARY KEY,
    work_item     JSONB NOT NULL,
    instance_id   TEXT,
    execution_id  BIGINT,
    activity_id   BIGINT,
    session_id    TEXT,
    tag           TEXT,
    visible_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    lock_token    TEXT UNIQUE,
    locked_until  TIMESTAMPTZ,
    attempt_count INTEGER NOT NULL DEFAULT 0 CHECK (attempt_count >= 0),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX worker_queue_visible_idx ON worker_queue (visible_at, id);
CREATE INDEX worker_queue_activity_idx ON worker_queue (instance_id, execution_id, activity_id);
CREATE INDEX worker_queue_session_idx ON worker_queue (session_id) WHERE session_id IS NOT NULL;

-- Session affinity: a session is owned by one worker at a time.
CREATE TABLE sessions (
    session_id       TEXT PRIMARY KEY,
    owner_id         TEXT NOT NULL,
    locked_until     TIMESTAMPTZ NOT NULL,
    last_activity_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX sessions_owner_idx ON sessions (owner_id);

-- Key-value state merged from completed executions.
CREATE TABLE kv_store (
    instance_id        TEXT NOT NULL,
    key                TEXT NOT NULL,
    value              TEXT NOT NULL,
    last_updated_at_ms BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (instance_id, key)
);

-- Key-value mutations of the running execution; NULL value = key cleared.
CREATE TABLE kv_delta (
    instance_id        TEXT NOT NULL,
    key                TEXT NOT NULL,
    value              TEXT,
    last_updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (instance_id, key)
);

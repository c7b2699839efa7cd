-- Tasker schema, PostgreSQL flavour. Times are milliseconds since the Unix epoch (`*_ms`).
-- Keep in step with tasker-store-sqlite/migrations/0001_init.sql.

CREATE TABLE templates (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    namespace      TEXT    NOT NULL,
    name           TEXT    NOT NULL,
    version        TEXT    NOT NULL,
    definition     JSONB    NOT NULL,
    created_at_ms  BIGINT NOT NULL,
    UNIQUE (namespace, name, version)
);

CREATE TABLE tasks (
    id                   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    template_id          BIGINT NOT NULL REFERENCES templates (id),
    namespace            TEXT    NOT NULL,
    name                 TEXT    NOT NULL,
    version              TEXT    NOT NULL,
    state                TEXT    NOT NULL,
    context              JSONB    NOT NULL,
    idempotency_key      TEXT,
    priority             BIGINT NOT NULL DEFAULT 0,
    created_at_ms        BIGINT NOT NULL,
    updated_at_ms        BIGINT NOT NULL,
    finished_at_ms       BIGINT,
    -- The claim: who may enqueue this task's steps, until when (database clock).
    claimed_by           TEXT,
    claim_expires_at_ms  BIGINT,
    UNIQUE (template_id, idempotency_key)
);
CREATE INDEX tasks_state_idx ON tasks (state, id);
CREATE INDEX tasks_namespace_idx ON tasks (namespace, name, id);

CREATE TABLE steps (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id             BIGINT NOT NULL REFERENCES tasks (id),
    position            BIGINT NOT NULL,
    name                TEXT    NOT NULL,
    handler             TEXT    NOT NULL,
    handler_config      JSONB    NOT NULL,
    state               TEXT    NOT NULL,
    attempts            BIGINT NOT NULL DEFAULT 0,
    max_attempts        BIGINT NOT NULL,
    retry_base_ms       BIGINT NOT NULL,
    retry_max_ms        BIGINT NOT NULL,
    retry_jitter        BOOLEAN NOT NULL,
    timeout_ms          BIGINT,
    pending_parents     BIGINT NOT NULL,
    next_attempt_at_ms  BIGINT,
    result              JSONB,
    last_error          TEXT,
    started_at_ms       BIGINT,
    finished_at_ms      BIGINT,
    UNIQUE (task_id, name)
);
-- Readiness: only steps with no unfinished parent that could run sit in this index, so the
-- viable-steps query touches what is ready, not the whole task.
CREATE INDEX steps_viable_idx ON steps (task_id, position)
    WHERE pending_parents = 0 AND state IN ('Pending', 'WaitingForRetry');

CREATE TABLE step_edges (
    task_id    BIGINT NOT NULL REFERENCES tasks (id),
    parent_id  BIGINT NOT NULL REFERENCES steps (id),
    child_id   BIGINT NOT NULL REFERENCES steps (id),
    PRIMARY KEY (parent_id, child_id)
);
CREATE INDEX step_edges_task_idx ON step_edges (task_id);

CREATE TABLE transitions (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entity       TEXT    NOT NULL,
    task_id      BIGINT NOT NULL,
    step_id      BIGINT,
    from_state   TEXT,
    to_state     TEXT    NOT NULL,
    event        TEXT    NOT NULL,
    reason       TEXT,
    instance_id  TEXT    NOT NULL,
    at_ms        BIGINT NOT NULL
);
CREATE INDEX transitions_task_idx ON transitions (task_id, id);

CREATE TABLE queue_messages (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue           TEXT    NOT NULL,
    payload         JSONB    NOT NULL,
    deliveries      BIGINT NOT NULL DEFAULT 0,
    enqueued_at_ms  BIGINT NOT NULL,
    visible_at_ms   BIGINT NOT NULL,
    lease_token     TEXT
);
CREATE INDEX queue_messages_visible_idx ON queue_messages (queue, visible_at_ms, id);

CREATE TABLE dead_letters (
    id              BIGINT PRIMARY KEY,
    queue           TEXT    NOT NULL,
    payload         JSONB    NOT NULL,
    deliveries      BIGINT NOT NULL,
    enqueued_at_ms  BIGINT NOT NULL,
    dead_at_ms      BIGINT NOT NULL
);
CREATE INDEX dead_letters_queue_idx ON dead_letters (queue, id);

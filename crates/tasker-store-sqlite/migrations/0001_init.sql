-- Tasker schema, SQLite flavour. Times are milliseconds since the Unix epoch (`*_ms`).
-- Keep in step with tasker-store-postgres/migrations/0001_init.sql.

CREATE TABLE templates (
    id             INTEGER PRIMARY KEY,
    namespace      TEXT    NOT NULL,
    name           TEXT    NOT NULL,
    version        TEXT    NOT NULL,
    definition     TEXT    NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    UNIQUE (namespace, name, version)
);

CREATE TABLE tasks (
    id                   INTEGER PRIMARY KEY,
    template_id          INTEGER NOT NULL REFERENCES templates (id),
    namespace            TEXT    NOT NULL,
    name                 TEXT    NOT NULL,
    version              TEXT    NOT NULL,
    state                TEXT    NOT NULL,
    context              TEXT    NOT NULL,
    idempotency_key      TEXT,
    priority             INTEGER NOT NULL DEFAULT 0,
    created_at_ms        INTEGER NOT NULL,
    updated_at_ms        INTEGER NOT NULL,
    finished_at_ms       INTEGER,
    -- The claim: who may enqueue this task's steps, until when (database clock).
    claimed_by           TEXT,
    claim_expires_at_ms  INTEGER,
    UNIQUE (template_id, idempotency_key)
);
CREATE INDEX tasks_state_idx ON tasks (state, id);
CREATE INDEX tasks_namespace_idx ON tasks (namespace, name, id);

CREATE TABLE steps (
    id                  INTEGER PRIMARY KEY,
    task_id             INTEGER NOT NULL REFERENCES tasks (id),
    position            INTEGER NOT NULL,
    name                TEXT    NOT NULL,
    handler             TEXT    NOT NULL,
    handler_config      TEXT    NOT NULL,
    state               TEXT    NOT NULL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    max_attempts        INTEGER NOT NULL,
    retry_base_ms       INTEGER NOT NULL,
    retry_max_ms        INTEGER NOT NULL,
    retry_jitter        INTEGER NOT NULL,
    timeout_ms          INTEGER,
    pending_parents     INTEGER NOT NULL,
    next_attempt_at_ms  INTEGER,
    result              TEXT,
    last_error          TEXT,
    started_at_ms       INTEGER,
    finished_at_ms      INTEGER,
    UNIQUE (task_id, name)
);
-- Readiness: only steps with no unfinished parent that could run sit in this index, so the
-- viable-steps query touches what is ready, not the whole task.
CREATE INDEX steps_viable_idx ON steps (task_id, position)
    WHERE pending_parents = 0 AND state IN ('Pending', 'WaitingForRetry');

CREATE TABLE step_edges (
    task_id    INTEGER NOT NULL REFERENCES tasks (id),
    parent_id  INTEGER NOT NULL REFERENCES steps (id),
    child_id   INTEGER NOT NULL REFERENCES steps (id),
    PRIMARY KEY (parent_id, child_id)
);
CREATE INDEX step_edges_task_idx ON step_edges (task_id);

CREATE TABLE transitions (
    id           INTEGER PRIMARY KEY,
    entity       TEXT    NOT NULL,
    task_id      INTEGER NOT NULL,
    step_id      INTEGER,
    from_state   TEXT,
    to_state     TEXT    NOT NULL,
    event        TEXT    NOT NULL,
    reason       TEXT,
    instance_id  TEXT    NOT NULL,
    at_ms        INTEGER NOT NULL
);
CREATE INDEX transitions_task_idx ON transitions (task_id, id);

-- AUTOINCREMENT: an acked message's id is never handed out again (dead letters keep ids, and
-- the request processor derives idempotency keys from them).
CREATE TABLE queue_messages (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    queue           TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    deliveries      INTEGER NOT NULL DEFAULT 0,
    enqueued_at_ms  INTEGER NOT NULL,
    visible_at_ms   INTEGER NOT NULL,
    lease_token     TEXT
);
CREATE INDEX queue_messages_visible_idx ON queue_messages (queue, visible_at_ms, id);

CREATE TABLE dead_letters (
    id              INTEGER PRIMARY KEY,
    queue           TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    deliveries      INTEGER NOT NULL,
    enqueued_at_ms  INTEGER NOT NULL,
    dead_at_ms      INTEGER NOT NULL
);
CREATE INDEX dead_letters_queue_idx ON dead_letters (queue, id);

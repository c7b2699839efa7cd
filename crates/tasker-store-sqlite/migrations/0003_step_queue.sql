-- A step is its own queue entry: an `Enqueued` step waits in `queue` until `visible_at_ms`;
-- a claim moves it to `InProgress` with a lease (`lease_token`, expiring at `visible_at_ms`).
-- Step messages are gone from queue_messages, which keeps the engine's other queues.
-- Keep in step with the other backend's 0003_step_queue.sql.

ALTER TABLE steps ADD COLUMN queue TEXT;
ALTER TABLE steps ADD COLUMN visible_at_ms INTEGER;
ALTER TABLE steps ADD COLUMN lease_token TEXT;

-- Step messages: those of the in-process workers' queue and of namespace queues (a namespace
-- has no dot, every other engine queue is `tasker.<name>`). Remote results in
-- `tasker.step_results` also name a step, and stay. A step with several takes its latest.
CREATE TEMPORARY TABLE step_messages AS
    SELECT json_extract(m.payload, '$.step_id') AS step_id, m.queue, m.visible_at_ms,
           m.lease_token
    FROM queue_messages m
    WHERE (m.queue = 'tasker.local_steps' OR m.queue NOT LIKE 'tasker.%')
      AND json_extract(m.payload, '$.step_id') IS NOT NULL
      AND m.id = (SELECT max(o.id) FROM queue_messages o
                  WHERE (o.queue = 'tasker.local_steps' OR o.queue NOT LIKE 'tasker.%')
                    AND json_extract(o.payload, '$.step_id')
                        = json_extract(m.payload, '$.step_id'));

-- Steps waiting for, or held by, a claim take over their message's queue and lease.
UPDATE steps SET
    queue = (SELECT m.queue FROM step_messages m WHERE m.step_id = steps.id),
    visible_at_ms = (SELECT m.visible_at_ms FROM step_messages m WHERE m.step_id = steps.id),
    lease_token = (SELECT m.lease_token FROM step_messages m WHERE m.step_id = steps.id)
WHERE state IN ('Enqueued', 'InProgress');
-- A step in neither queue: one running remotely whose result waits in `tasker.step_results`
-- (applied first, within the hour), or one whose message was dead-lettered. Each waits in its
-- task's namespace queue, where remote workers claim it.
UPDATE steps SET
    queue = (SELECT t.namespace FROM tasks t WHERE t.id = steps.task_id),
    visible_at_ms = CASE WHEN state = 'InProgress'
                         THEN CAST(unixepoch('subsec') * 1000 AS INTEGER) + 3600000
                         ELSE 0 END
WHERE state IN ('Enqueued', 'InProgress') AND queue IS NULL;
DELETE FROM queue_messages
WHERE (queue = 'tasker.local_steps' OR queue NOT LIKE 'tasker.%')
  AND json_extract(payload, '$.step_id') IS NOT NULL;
DROP TABLE step_messages;

-- What a claim reads: the waiting and the held steps of one queue, by time. Only steps in
-- those two states are in it, so a finished step costs it nothing.
CREATE INDEX steps_queue_idx ON steps (queue, visible_at_ms, id)
    WHERE state IN ('Enqueued', 'InProgress');

-- An edge is written only when its task is created, in the transaction that writes the steps
-- it joins, from the task's plan; its foreign keys only checked that against itself, at a
-- lookup per key per edge. Steps keep theirs. SQLite drops a constraint by rebuilding the
-- table.
CREATE TABLE step_edges_new (
    task_id    INTEGER NOT NULL,
    parent_id  INTEGER NOT NULL,
    child_id   INTEGER NOT NULL,
    PRIMARY KEY (parent_id, child_id)
);
INSERT INTO step_edges_new (task_id, parent_id, child_id)
    SELECT task_id, parent_id, child_id FROM step_edges;
DROP TABLE step_edges;
ALTER TABLE step_edges_new RENAME TO step_edges;
CREATE INDEX step_edges_task_idx ON step_edges (task_id);
CREATE INDEX step_edges_child_idx ON step_edges (child_id);

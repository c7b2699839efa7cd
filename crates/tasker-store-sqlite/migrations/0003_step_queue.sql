-- A step is its own queue entry: an `Enqueued` step waits in `queue` until `visible_at_ms`;
-- a claim moves it to `InProgress` with a lease (`lease_token`, expiring at `visible_at_ms`).
-- Step messages are gone from queue_messages, which keeps the engine's other queues.
-- Keep in step with the other backend's 0003_step_queue.sql.

ALTER TABLE steps ADD COLUMN queue TEXT;
ALTER TABLE steps ADD COLUMN visible_at_ms INTEGER;
ALTER TABLE steps ADD COLUMN lease_token TEXT;

-- Steps waiting for, or held by, a claim take over their messages' queue and lease.
UPDATE steps SET
    queue = (SELECT m.queue FROM queue_messages m
             WHERE json_extract(m.payload, '$.step_id') = steps.id),
    visible_at_ms = (SELECT m.visible_at_ms FROM queue_messages m
                     WHERE json_extract(m.payload, '$.step_id') = steps.id),
    lease_token = (SELECT m.lease_token FROM queue_messages m
                   WHERE json_extract(m.payload, '$.step_id') = steps.id)
WHERE state IN ('Enqueued', 'InProgress');
UPDATE steps SET queue = 'tasker.local_steps', visible_at_ms = 0
WHERE state IN ('Enqueued', 'InProgress') AND queue IS NULL;
DELETE FROM queue_messages WHERE json_extract(payload, '$.step_id') IS NOT NULL;

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

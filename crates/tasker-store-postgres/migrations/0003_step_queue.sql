-- A step is its own queue entry: an `Enqueued` step waits in `queue` until `visible_at_ms`;
-- a claim moves it to `InProgress` with a lease (`lease_token`, expiring at `visible_at_ms`).
-- Step messages are gone from queue_messages, which keeps the engine's other queues.
-- Keep in step with the other backend's 0003_step_queue.sql.

ALTER TABLE steps ADD COLUMN queue TEXT;
ALTER TABLE steps ADD COLUMN visible_at_ms BIGINT;
ALTER TABLE steps ADD COLUMN lease_token TEXT;

-- Step messages: those of the in-process workers' queue and of namespace queues (a namespace
-- has no dot, every other engine queue is `tasker.<name>`). Remote results in
-- `tasker.step_results` also name a step, and stay.
CREATE TEMPORARY TABLE step_messages ON COMMIT DROP AS
    SELECT DISTINCT ON (step_id) (payload ->> 'step_id')::bigint AS step_id, queue,
           visible_at_ms, lease_token
    FROM queue_messages
    WHERE (queue = 'tasker.local_steps' OR queue NOT LIKE 'tasker.%') AND payload ? 'step_id'
    ORDER BY step_id, id DESC;

-- Steps waiting for, or held by, a claim take over their (latest) message's queue and lease.
UPDATE steps SET queue = m.queue, visible_at_ms = m.visible_at_ms, lease_token = m.lease_token
FROM step_messages m
WHERE m.step_id = steps.id AND steps.state IN ('Enqueued', 'InProgress');
-- A step in neither queue: one running remotely whose result waits in `tasker.step_results`
-- (applied first, within the hour), or one whose message was dead-lettered. Each waits in its
-- task's namespace queue, where remote workers claim it.
UPDATE steps SET queue = t.namespace,
    visible_at_ms = CASE WHEN steps.state = 'InProgress'
                         THEN (EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::BIGINT + 3600000
                         ELSE 0 END
FROM tasks t
WHERE t.id = steps.task_id AND steps.state IN ('Enqueued', 'InProgress') AND steps.queue IS NULL;
DELETE FROM queue_messages
WHERE (queue = 'tasker.local_steps' OR queue NOT LIKE 'tasker.%') AND payload ? 'step_id';

-- What a claim reads: the waiting and the held steps of one queue, by time. Only steps in
-- those two states are in it, so a finished step costs it nothing.
CREATE INDEX steps_queue_idx ON steps (queue, visible_at_ms, id)
    WHERE state IN ('Enqueued', 'InProgress');

-- Room on each page for the next versions of its rows, so updates that change no indexed
-- column (a task's counters) can stay on the page (HOT) without a new index entry.
ALTER TABLE steps SET (fillfactor = 80);
ALTER TABLE tasks SET (fillfactor = 80);

-- An edge is written only when its task is created, in the statement that writes the steps it
-- joins, from the task's plan; its foreign keys checked that statement against itself, at half
-- the cost of creating a wide task (three lookups and row locks per edge). Steps keep theirs.
ALTER TABLE step_edges DROP CONSTRAINT step_edges_task_id_fkey;
ALTER TABLE step_edges DROP CONSTRAINT step_edges_parent_id_fkey;
ALTER TABLE step_edges DROP CONSTRAINT step_edges_child_id_fkey;

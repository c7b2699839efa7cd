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

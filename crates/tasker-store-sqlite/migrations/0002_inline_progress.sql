-- Bookkeeping that lets a step result settle its task in the same transaction.
-- Keep in step with the other backend's 0002_inline_progress.sql.

-- Steps of the task not yet Complete or ResolvedManually: zero means the task is done.
ALTER TABLE tasks ADD COLUMN unfinished_steps BIGINT NOT NULL DEFAULT 0;
UPDATE tasks SET unfinished_steps = (
    SELECT COUNT(*) FROM steps
    WHERE steps.task_id = tasks.id AND steps.state NOT IN ('Complete', 'ResolvedManually'));

-- "Does anything of this task still run?" without reading the task's other steps.
CREATE INDEX steps_running_idx ON steps (task_id) WHERE state IN ('Enqueued', 'InProgress');

-- A step's parents, read when its attempt starts (the primary key leads with the parent).
CREATE INDEX step_edges_child_idx ON step_edges (child_id);

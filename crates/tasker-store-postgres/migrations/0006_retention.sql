-- What retention reads: finished tasks by when they finished, so a sweep with nothing old
-- enough to delete reads nothing. Keep in step with the other backend's 0006_retention.sql.

CREATE INDEX tasks_finished_idx ON tasks (finished_at_ms) WHERE finished_at_ms IS NOT NULL;

-- Control flow: a step runs once no parent holds it back only if some parent chose it
-- (`live_parents`); a decision step keeps the names of its direct children, the choices its
-- output may make (`branches`). Rows written before this migration have no decision among
-- their parents, and every parent that finishes from now on counts as choosing. Keep in step
-- with the other backend's 0009_control_flow.sql.

ALTER TABLE steps ADD COLUMN live_parents BIGINT NOT NULL DEFAULT 0;
ALTER TABLE steps ADD COLUMN branches JSONB;

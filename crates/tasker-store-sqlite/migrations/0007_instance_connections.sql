-- Each instance records its connection pool's size, so an instance starting can check that the
-- cluster fits the server's connection limit. Keep in step with the other backend's
-- 0007_instance_connections.sql.

ALTER TABLE instances ADD COLUMN connections INTEGER NOT NULL DEFAULT 0;

-- The cluster: each orchestrator instance registers and heartbeats; a step's lease names the
-- instance (or remote worker) holding it, so the leases of an instance found dead can be
-- released at once. Keep in step with the other backend's 0004_instances.sql.

CREATE TABLE instances (
    id               TEXT   PRIMARY KEY,
    host             TEXT   NOT NULL,
    pid              BIGINT NOT NULL,
    version          TEXT   NOT NULL,
    state            TEXT   NOT NULL,
    started_at_ms    BIGINT NOT NULL,
    heartbeat_at_ms  BIGINT NOT NULL
);

ALTER TABLE steps ADD COLUMN lease_holder TEXT;

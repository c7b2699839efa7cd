-- One leader per cluster: a lease row. Whoever holds it, unexpired, is the leader; each new
-- holder (or a holder whose lease lapsed) gets the next epoch, and leader-only changes check
-- theirs, so a leader that lost the lease cannot act on stale belief.
-- Keep in step with the other backend's 0005_leadership.sql.

CREATE TABLE leadership (
    id             BIGINT PRIMARY KEY CHECK (id = 1),
    holder         TEXT,
    epoch          BIGINT NOT NULL,
    expires_at_ms  BIGINT NOT NULL
);
INSERT INTO leadership (id, holder, epoch, expires_at_ms) VALUES (1, NULL, 0, 0);

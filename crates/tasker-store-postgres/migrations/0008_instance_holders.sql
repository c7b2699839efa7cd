-- What an instance holds names it, so that what a dead instance held is free at once instead of
-- after its lease: a message's delivery (ended by the failover), and a task's claim (free to
-- claim once its instance is no longer registered). Keep in step with the other backend's
-- 0008_instance_holders.sql.

ALTER TABLE queue_messages ADD COLUMN lease_holder TEXT;
ALTER TABLE tasks ADD COLUMN claim_instance TEXT;

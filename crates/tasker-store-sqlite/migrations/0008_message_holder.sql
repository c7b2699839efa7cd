-- A message's delivery names the instance holding it, so the deliveries of an instance found
-- dead end at once instead of after their visibility timeout. Keep in step with the other
-- backend's 0008_message_holder.sql.

ALTER TABLE queue_messages ADD COLUMN lease_holder TEXT;

-- The account an event is about, for listEvents' userId filter (the console's account page shows
-- the webhook deliveries about its account). The outbox writes it with each event
-- (store/sqlite/outbox.py `about`): its data's `user` (a Transaction, a Hold, spend_cap.reached)
-- or `userId` (a CreditGrant, alert.triggered, which triggers for one user even when the alert
-- watches every user); NULL for an event about no account (webhook_endpoint.disabled). Events
-- written before this migration get it from their data by the same rule.
ALTER TABLE events ADD COLUMN user_id TEXT;
UPDATE events SET user_id = COALESCE(data ->> '$.user', data ->> '$.userId')
 WHERE COALESCE(data ->> '$.user', data ->> '$.userId') IS NOT NULL;

-- One index in, one out: every event insert maintains the events indexes, and recordUsage with an
-- endpoint subscribed to usage.recorded inserts one per call. events_age (created_at) was made
-- for a retention purge that no query runs (events are kept; a purge would walk events_tenant's
-- seq order, which follows created_at); events_user serves listEvents' userId filter, newest first.
DROP INDEX events_age;
CREATE INDEX events_user ON events (tenant, user_id, seq) WHERE user_id IS NOT NULL;

-- events_user split in two by `dispatched` (as sqlite/0012_events_user_pending.sql, whose
-- reasons are written there): an event is written into events_user_pending, the sender's
-- dispatch moves it to events_user. The dispatch's UPDATE changes a column of
-- events_undispatched's predicate already, so it was never a HOT update and made a new entry in
-- every index of the row anyway.
DROP INDEX events_user;
CREATE INDEX events_user ON events (tenant, user_id, seq) WHERE user_id IS NOT NULL AND dispatched = 1;
CREATE INDEX events_user_pending ON events (tenant, user_id, seq) WHERE user_id IS NOT NULL AND dispatched = 0;

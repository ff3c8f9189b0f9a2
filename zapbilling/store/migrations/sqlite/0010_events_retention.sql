-- The outbox's purge (store/sqlite/retention.py) deletes events older than their retention (30
-- days, app.py EVENTS_KEEP) with their deliveries and attempts. This row says how far it has
-- gone: every event created before `purged_before` may be gone, none after it is. Readers of the
-- history (the invariants checker, an auditor) tell a purged event from a missing one by it.
-- No row until the first purge deletes something.
CREATE TABLE events_purged (
  one INTEGER PRIMARY KEY CHECK (one = 1),
  purged_before INTEGER NOT NULL        -- microseconds
);

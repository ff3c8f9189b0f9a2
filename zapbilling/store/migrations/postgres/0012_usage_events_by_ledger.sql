-- Nothing on PostgreSQL: the SQLite migration of this number finds a user's usage.recorded events
-- through the ledger instead of events_user, to save the group commit a page per account; here
-- every event keeps its events_user entry (0009) and listEvents' userId filter reads that alone.
SELECT 1;

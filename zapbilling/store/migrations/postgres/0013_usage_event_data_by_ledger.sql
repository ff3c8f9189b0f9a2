-- Nothing on PostgreSQL: the SQLite migration of this number leaves a usage.recorded event's data
-- to its ledger row, made when the event is read; here every event stores its data, rendered in the
-- write (one statement with the row itself: store/postgres/ledger.py).
SELECT 1;

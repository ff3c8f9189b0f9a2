-- Nothing on PostgreSQL: the SQLite migration of this number takes usage.recorded events out of
-- events_subject (their ids keep them one per ledger row there); here every event with a subject
-- stays in it, and the usage event is written by the ledger's own statement (postgres/ledger.py).
SELECT 1;

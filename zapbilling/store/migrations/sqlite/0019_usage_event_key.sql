-- Nothing on SQLite: PostgreSQL's migration of this number gives its ledger_append the usage
-- meter event's idempotency key as one more argument (postgres/0019_usage_event_key.sql, which
-- says why); SQLite's writer writes the event in Python (store/sqlite/ledger.py append_entry).
SELECT 1;

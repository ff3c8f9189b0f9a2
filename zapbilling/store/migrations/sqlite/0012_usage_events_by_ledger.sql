-- A user's usage.recorded events are found through the ledger, not through events_user.
--
-- Why: every index ordered by account costs a page of its own per account a commit writes to
-- (a batch's writes are to different accounts). recordUsage already writes the ledger's per-account
-- indexes; with an endpoint subscribed to usage.recorded, the event's events_user entry was one
-- more such page per write, about half of the WAL the outbox added (README, "The outbox's cost").
-- Now a usage withdrawal whose usage.recorded event was written is `evented`, and the ledger's
-- per-account index of usage rows is split in two by it: ledger_usage for the rows without an
-- event, ledger_usage_evented for the rows with one. Each row is in exactly one of them, so the
-- event adds no per-account index entry; its own events_user entry is left out (user_id NULL).
-- listEvents' userId filter walks ledger_usage_evented for the user's usage.recorded events beside
-- events_user for the rest (store/sqlite/webhooks.py), and the readers of the user's usage rows
-- walk both halves (ledger.py usage_page, alerts.py). SQLite only: PostgreSQL keeps events_user
-- for every event (its migration of this number does nothing).
ALTER TABLE ledger ADD COLUMN evented INTEGER NOT NULL DEFAULT 0 CHECK (evented IN (0, 1));
UPDATE ledger SET evented = 1
 WHERE id IN (SELECT subject FROM events WHERE type = 'usage.recorded' AND subject IS NOT NULL);
UPDATE events SET user_id = NULL WHERE type = 'usage.recorded';
DROP INDEX ledger_usage;
CREATE INDEX ledger_usage ON ledger (tenant, user_id, seq) WHERE tags = 'api-usage' AND evented = 0;
CREATE INDEX ledger_usage_evented ON ledger (tenant, user_id, seq) WHERE evented = 1;

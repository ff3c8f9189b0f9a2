-- events_user split in two by `dispatched`, so that recording an event does not add an entry to
-- a page of its account's own. An index ordered by account puts each account's newest entries on
-- a page of their own: a group commit of recordUsage calls for 32 accounts, each with its
-- usage.recorded event, rewrote 32 pages of events_user (about half of what the outbox added to
-- each write's WAL bytes; README, "The outbox's cost"). Now an event is written into
-- events_user_pending, which holds only the events the sender has not dispatched yet: a few
-- pages while the sender keeps up, shared by the batch's entries. The sender's dispatch, off the
-- request path, moves the entry to events_user. Every event with an account is in exactly one
-- of the two; listEvents' userId filter reads both ranges, each newest first, and merges them
-- (store/sqlite/webhooks.py events_page).
DROP INDEX events_user;
CREATE INDEX events_user ON events (tenant, user_id, seq) WHERE user_id IS NOT NULL AND dispatched = 1;
CREATE INDEX events_user_pending ON events (tenant, user_id, seq) WHERE user_id IS NOT NULL AND dispatched = 0;

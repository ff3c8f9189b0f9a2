-- How far the outbox's purge has gone (see the SQLite migration of the same number).
CREATE TABLE events_purged (
  one BIGINT PRIMARY KEY CHECK (one = 1),
  purged_before BIGINT NOT NULL
);

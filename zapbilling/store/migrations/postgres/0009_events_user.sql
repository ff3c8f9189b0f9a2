-- The account an event is about (as sqlite/0009_events_user.sql, whose reasons are written there).
ALTER TABLE events ADD COLUMN user_id TEXT COLLATE "C";
UPDATE events e SET user_id = a.user_id
  FROM (SELECT seq, COALESCE(data::json ->> 'user', data::json ->> 'userId') AS user_id FROM events) a
 WHERE e.seq = a.seq AND a.user_id IS NOT NULL;

-- The ledger's append statement (postgres/ledger.py) writes a row's event inside one statement
-- that does not name user_id; this fills it by the same rule from the event's data, for that
-- statement and any writer that leaves it NULL (the outbox's own inserts pass it, and the WHEN
-- skips the function for them). A json (not jsonb) ->> reads the text without building a tree.
CREATE FUNCTION events_user() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.user_id := COALESCE(NEW.data::json ->> 'user', NEW.data::json ->> 'userId');
  RETURN NEW;
END
$$;
CREATE TRIGGER events_user BEFORE INSERT ON events FOR EACH ROW WHEN (NEW.user_id IS NULL) EXECUTE FUNCTION events_user();

DROP INDEX events_age;
CREATE INDEX events_user ON events (tenant, user_id, seq) WHERE user_id IS NOT NULL;

-- The batched statements take their calls as one array of rows (a composite type) instead of
-- one array per column: ledger_append_rows for ledger_append_many (migration 11),
-- usual_meter_event for a batch of usual meter events (store/postgres/metering.py
-- _INSERT_ALONE), meter_event_row for the transaction's batches of meter events (_INSERT_BATCH,
-- _INSERT_USUAL) and account_read for a batch of balance reads (store/postgres/ledger.py
-- ACCOUNTS).
--
-- Why: asyncpg checks every element of an array parameter on its way out with isinstance tests
-- against collections.abc (Iterable, Sized: ~0.14 us each, a Python call into ABCMeta), one or
-- two per element. A write of ledger_append_many's 23 arrays paid ~35 of them, a meter event of
-- _INSERT_ALONE's five arrays 8, a balance read 7; a row of a composite array pays 4 (the row
-- is a tuple, checked once as an element and once by the composite's encoder), whatever its
-- width. The statements and what PostgreSQL does for each call are otherwise unchanged.
-- Measured in the README, "On PostgreSQL".
--
-- ledger_append_many stays: a server of the previous version still running beside a migrated
-- database (a rolling restart) calls it.
CREATE TYPE ledger_append_args AS (
  digest TEXT, tx_id TEXT, t BIGINT, u TEXT, cur TEXT, kind TEXT, cents BIGINT, delta BIGINT,
  row_tags TEXT, row_notes TEXT, row_metadata TEXT, now BIGINT, dedupe TEXT, row_key_id TEXT, row_hold_id TEXT,
  meter_event_id TEXT, meter_dimensions TEXT, meter_event_name TEXT,
  event_id TEXT, event_type TEXT, event_data TEXT, gated BOOLEAN, unasked BOOLEAN
);

CREATE FUNCTION ledger_append_rows(w ledger_append_args[]) RETURNS INTEGER[] LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  codes INTEGER[] := '{}';
  a ledger_append_args;
BEGIN
  FOREACH a IN ARRAY w LOOP
    codes := codes || ledger_append(
      a.digest, a.tx_id, a.t, a.u, a.cur, a.kind, a.cents, a.delta, a.row_tags, a.row_notes, a.row_metadata,
      a.now, a.dedupe, a.row_key_id, a.row_hold_id, a.meter_event_id, a.meter_dimensions, a.meter_event_name,
      a.event_id, a.event_type, a.event_data, a.gated, a.unasked);
  END LOOP;
  RETURN codes;
END
$$;

CREATE TYPE usual_meter_event AS (id TEXT, meter_id TEXT, user_id TEXT, value BIGINT, ts BIGINT);
CREATE TYPE meter_event_row AS (
  id TEXT, meter BIGINT, user_id TEXT, value BIGINT, ts BIGINT, key TEXT, dimensions TEXT, ledger_id TEXT
);

CREATE TYPE account_read AS (t BIGINT, u TEXT, c TEXT, n BIGINT, d TEXT);

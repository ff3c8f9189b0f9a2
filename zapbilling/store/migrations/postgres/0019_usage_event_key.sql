-- recordUsage's meter event carries the idempotency key the contract gives it,
-- `usage:<user>:<requestId>` (none without a requestId), besides its link to its ledger row
-- (ledger_id, unique: a retried recordUsage writes no second row, hence no second event). So a
-- caller who also reports that usage as a meter event under that key gets `duplicate` and the
-- usage event's id, and the usage is counted once, whichever came first; when the caller's came
-- first, the withdrawal is written and its meter event is not. One case is kept from the key's
-- reach: the key's text is ambiguous (user `a:b` with request `c` and user `a` with request
-- `b:c` make the same key), and a key held by another user's event is no duplicate of this
-- usage: the event is then written without a key, as before this migration.
--
-- The key is one more argument: ledger_append with 24 (the 23 of migration 16's and the key),
-- and its batches as rows of ledger_append_call (migration 17's ledger_append_args and the key)
-- through ledger_append_calls. The 23-argument ledger_append and ledger_append_rows stay for a
-- server of the previous version during a rolling restart (they write no key, as it did).

CREATE FUNCTION ledger_append(
  digest TEXT, tx_id TEXT, t BIGINT, u TEXT, cur TEXT, kind TEXT, cents BIGINT, delta BIGINT,
  row_tags TEXT, row_notes TEXT, row_metadata TEXT, now BIGINT, dedupe TEXT, row_key_id TEXT, row_hold_id TEXT,
  meter_event_id TEXT, meter_dimensions TEXT, meter_event_name TEXT,
  event_id TEXT, event_type TEXT, event_data TEXT, gated BOOLEAN, unasked BOOLEAN, meter_key TEXT
) RETURNS INTEGER LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  held BIGINT;
  moved NUMERIC;
  w RECORD;
BEGIN
  IF digest IS NOT NULL AND NOT EXISTS (SELECT 1 FROM api_keys WHERE hash = digest AND revoked_at IS NULL) THEN
    RETURN -2;
  END IF;
  SELECT balance INTO held FROM balances WHERE tenant = t AND user_id = u AND currency = cur FOR UPDATE;
  IF NOT FOUND THEN
    RETURN -1;
  END IF;
  SELECT alerts, spend_caps, usage_hooks INTO w FROM tenants WHERE id = t;
  IF w.alerts > 0 OR w.spend_caps > 0 OR (unasked AND w.usage_hooks > 0) THEN
    RETURN -1;
  END IF;
  IF EXISTS (SELECT 1 FROM ledger WHERE tenant = t AND user_id = u AND currency = cur AND remaining > 0) THEN
    RETURN -1;
  END IF;
  moved := held::NUMERIC + delta;
  IF moved < -9223372036854775808 OR moved > 9223372036854775807 THEN
    RETURN -1;
  END IF;
  INSERT INTO ledger (id, tenant, user_id, currency, type, amount, tags, notes, metadata, created_at, dedupe_key, key_id, hold_id)
    VALUES (tx_id, t, u, cur, kind, cents, row_tags, row_notes, row_metadata, now, dedupe, row_key_id, row_hold_id)
    ON CONFLICT (tenant, user_id, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING;
  IF NOT FOUND THEN
    RETURN -1;
  END IF;
  UPDATE balances SET balance = moved::BIGINT WHERE tenant = t AND user_id = u AND currency = cur;
  IF meter_event_name IS NOT NULL THEN
    INSERT INTO meter_events (id, tenant, meter, user_id, value, ts, idempotency_key, dimensions, created_at, ledger_id)
      SELECT meter_event_id, t, m.seq, u, cents, now,
        CASE WHEN EXISTS (SELECT 1 FROM meter_events o WHERE o.tenant = t AND o.idempotency_key = meter_key AND o.user_id <> u)
          THEN NULL ELSE meter_key END,
        meter_dimensions, now, tx_id
      FROM meters m WHERE m.tenant = t AND m.event_name = meter_event_name
      ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING;
  END IF;
  IF event_id IS NOT NULL AND (NOT gated OR w.usage_hooks > 0) THEN
    INSERT INTO events (id, tenant, type, data, created_at, subject) VALUES (event_id, t, event_type, event_data, now, tx_id);
  END IF;
  RETURN w.usage_hooks;
END
$$;

CREATE OR REPLACE FUNCTION ledger_append(
  digest TEXT, tx_id TEXT, t BIGINT, u TEXT, cur TEXT, kind TEXT, cents BIGINT, delta BIGINT,
  row_tags TEXT, row_notes TEXT, row_metadata TEXT, now BIGINT, dedupe TEXT, row_key_id TEXT, row_hold_id TEXT,
  meter_event_id TEXT, meter_dimensions TEXT, meter_event_name TEXT,
  event_id TEXT, event_type TEXT, event_data TEXT, gated BOOLEAN, unasked BOOLEAN
) RETURNS INTEGER LANGUAGE sql VOLATILE AS $$
  SELECT ledger_append(digest, tx_id, t, u, cur, kind, cents, delta, row_tags, row_notes, row_metadata, now, dedupe,
    row_key_id, row_hold_id, meter_event_id, meter_dimensions, meter_event_name, event_id, event_type, event_data,
    gated, unasked, NULL::TEXT)
$$;

CREATE TYPE ledger_append_call AS (
  digest TEXT, tx_id TEXT, t BIGINT, u TEXT, cur TEXT, kind TEXT, cents BIGINT, delta BIGINT,
  row_tags TEXT, row_notes TEXT, row_metadata TEXT, now BIGINT, dedupe TEXT, row_key_id TEXT, row_hold_id TEXT,
  meter_event_id TEXT, meter_dimensions TEXT, meter_event_name TEXT,
  event_id TEXT, event_type TEXT, event_data TEXT, gated BOOLEAN, unasked BOOLEAN, meter_key TEXT
);

CREATE FUNCTION ledger_append_calls(w ledger_append_call[]) RETURNS INTEGER[] LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  codes INTEGER[] := '{}';
  a ledger_append_call;
BEGIN
  FOREACH a IN ARRAY w LOOP
    codes := codes || ledger_append(
      a.digest, a.tx_id, a.t, a.u, a.cur, a.kind, a.cents, a.delta, a.row_tags, a.row_notes, a.row_metadata,
      a.now, a.dedupe, a.row_key_id, a.row_hold_id, a.meter_event_id, a.meter_dimensions, a.meter_event_name,
      a.event_id, a.event_type, a.event_data, a.gated, a.unasked, a.meter_key);
  END LOOP;
  RETURN codes;
END
$$;

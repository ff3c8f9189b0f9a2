-- A meter event names its meter by the meter's seq, not by its id (as sqlite/0016, which says
-- why and measures it): the column, filled from meters, then the summary index on it; and
-- ledger_append (migration 11), whose usage meter event now writes the seq, again as it was
-- with that one line changed.
ALTER TABLE meter_events ADD COLUMN meter BIGINT;
UPDATE meter_events e SET meter = m.seq FROM meters m WHERE m.tenant = e.tenant AND m.id = e.meter_id;
ALTER TABLE meter_events ALTER COLUMN meter SET NOT NULL;
DROP INDEX meter_events_summary;
ALTER TABLE meter_events DROP COLUMN meter_id;
CREATE INDEX meter_events_summary ON meter_events (tenant, meter, user_id, ts);

CREATE OR REPLACE FUNCTION ledger_append(
  digest TEXT, tx_id TEXT, t BIGINT, u TEXT, cur TEXT, kind TEXT, cents BIGINT, delta BIGINT,
  row_tags TEXT, row_notes TEXT, row_metadata TEXT, now BIGINT, dedupe TEXT, row_key_id TEXT, row_hold_id TEXT,
  meter_event_id TEXT, meter_dimensions TEXT, meter_event_name TEXT,
  event_id TEXT, event_type TEXT, event_data TEXT, gated BOOLEAN, unasked BOOLEAN
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
      SELECT meter_event_id, t, m.seq, u, cents, now, NULL, meter_dimensions, now, tx_id
      FROM meters m WHERE m.tenant = t AND m.event_name = meter_event_name;
  END IF;
  IF event_id IS NOT NULL AND (NOT gated OR w.usage_hooks > 0) THEN
    INSERT INTO events (id, tenant, type, data, created_at, subject) VALUES (event_id, t, event_type, event_data, now, tx_id);
  END IF;
  RETURN w.usage_hooks;
END
$$;

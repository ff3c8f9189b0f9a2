-- The usual ledger write in one autocommitted statement (store/postgres/ledger.py, which says why
-- and measures it): the key's check, the account's lock, then the row, the balance, the usage
-- meter event and the row's event, where the transaction path makes four round trips. Each
-- statement of a VOLATILE PL/pgSQL function takes a snapshot of its own (READ COMMITTED), so
-- what is read after the lock holds every earlier writer's commit, as in the transaction path.
--
-- It writes only when nothing but these rows is needed: the account exists, has no lots (money
-- that expires), the tenant has no alerts or spend caps, the dedupe key is new, the balance
-- stays in int64, and (`unasked`) no usage event was left unrendered that the tenant's hooks
-- want. Otherwise it writes nothing and answers -1: the caller runs the transaction path,
-- which handles all of these. -2: the key (`digest`, NULL when already checked) is revoked or
-- gone; nothing is locked or written. Else: the tenant's usage_hooks, for the caller's hint.
CREATE FUNCTION ledger_append(
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
    INSERT INTO meter_events (id, tenant, meter_id, user_id, value, ts, idempotency_key, dimensions, created_at, ledger_id)
      SELECT meter_event_id, t, m.id, u, cents, now, NULL, meter_dimensions, now, tx_id
      FROM meters m WHERE m.tenant = t AND m.event_name = meter_event_name;
  END IF;
  IF event_id IS NOT NULL AND (NOT gated OR w.usage_hooks > 0) THEN
    INSERT INTO events (id, tenant, type, data, created_at, subject) VALUES (event_id, t, event_type, event_data, now, tx_id);
  END IF;
  RETURN w.usage_hooks;
END
$$;

-- Several such writes made at nearly the same time, in one statement and one commit (their
-- arguments as arrays, in the order given: the caller sorts them by account, so that batches
-- take their accounts' locks in one order and cannot deadlock one another). Answers each
-- write's code, in order.
CREATE FUNCTION ledger_append_many(
  digest TEXT[], tx_id TEXT[], t BIGINT[], u TEXT[], cur TEXT[], kind TEXT[], cents BIGINT[], delta BIGINT[],
  row_tags TEXT[], row_notes TEXT[], row_metadata TEXT[], now BIGINT[], dedupe TEXT[], row_key_id TEXT[], row_hold_id TEXT[],
  meter_event_id TEXT[], meter_dimensions TEXT[], meter_event_name TEXT[],
  event_id TEXT[], event_type TEXT[], event_data TEXT[], gated BOOLEAN[], unasked BOOLEAN[]
) RETURNS INTEGER[] LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  codes INTEGER[] := '{}';
BEGIN
  FOR i IN 1 .. cardinality(tx_id) LOOP
    codes := codes || ledger_append(
      digest[i], tx_id[i], t[i], u[i], cur[i], kind[i], cents[i], delta[i], row_tags[i], row_notes[i], row_metadata[i],
      now[i], dedupe[i], row_key_id[i], row_hold_id[i], meter_event_id[i], meter_dimensions[i], meter_event_name[i],
      event_id[i], event_type[i], event_data[i], gated[i], unasked[i]);
  END LOOP;
  RETURN codes;
END
$$;

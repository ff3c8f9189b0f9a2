-- Meters and their events, credit grants and pricing rules. As everywhere, every row and every
-- deduplication key belongs to one tenant (org x mode).

CREATE TABLE meters (
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  tenant INTEGER NOT NULL,
  name TEXT NOT NULL,
  event_name TEXT NOT NULL,
  aggregation TEXT NOT NULL,
  currency TEXT NOT NULL,
  dimensions TEXT NOT NULL,           -- JSON list of dimension names
  created_at INTEGER NOT NULL,
  UNIQUE (tenant, event_name)
);

CREATE TABLE meter_events (
  seq INTEGER PRIMARY KEY,            -- insertion order: breaks ties between equal timestamps
  id TEXT NOT NULL UNIQUE,
  tenant INTEGER NOT NULL,
  meter_id TEXT NOT NULL,
  user_id TEXT NOT NULL,
  value INTEGER NOT NULL,
  ts INTEGER NOT NULL,                -- the event's own time, microseconds since the epoch
  idempotency_key TEXT,
  dimensions TEXT,                    -- JSON object, kept for a later group-by (json_extract)
  created_at INTEGER NOT NULL
);
CREATE INDEX meter_events_summary ON meter_events (tenant, meter_id, user_id, ts);
CREATE UNIQUE INDEX meter_events_dedupe ON meter_events (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE credit_grants (
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  tenant INTEGER NOT NULL,
  user_id TEXT NOT NULL,
  name TEXT NOT NULL,
  amount INTEGER NOT NULL CHECK (amount > 0),
  remaining INTEGER NOT NULL CHECK (remaining >= 0 AND remaining <= amount),
  currency TEXT NOT NULL,
  priority INTEGER NOT NULL,
  effective_at INTEGER NOT NULL,
  expires_at INTEGER,
  eligibility TEXT NOT NULL,          -- JSON list of meter ids; empty: every meter
  tags TEXT NOT NULL,
  voided_at INTEGER,
  created_at INTEGER NOT NULL
);
CREATE INDEX credit_grants_user ON credit_grants (tenant, user_id, currency, seq);

CREATE TABLE pricing_rules (
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  tenant INTEGER NOT NULL,
  meter_id TEXT NOT NULL,
  plan_id TEXT NOT NULL,              -- '' for a rule of no particular plan
  model TEXT NOT NULL,
  currency TEXT NOT NULL,
  unit_price INTEGER NOT NULL,
  tiers TEXT NOT NULL,                -- JSON list of {upTo, price, flat}
  created_at INTEGER NOT NULL
);
CREATE INDEX pricing_rules_meter ON pricing_rules (tenant, meter_id, seq);

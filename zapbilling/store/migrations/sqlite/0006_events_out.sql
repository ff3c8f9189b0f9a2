-- Events out: webhook endpoints, the events outbox and its deliveries, alerts and spend caps.
-- An event row is written in the same transaction as the change it tells of (a transactional
-- outbox); the delivery workers read the outbox afterwards, outside every request.

-- What the write paths must look at, per tenant, kept by the operations that change it in the
-- same transaction: a write of a tenant whose counts are all 0 (the usual case) reads this one
-- row and nothing else of alerts, caps or endpoints.
ALTER TABLE tenants ADD COLUMN alerts INTEGER NOT NULL DEFAULT 0;       -- alerts of the tenant
ALTER TABLE tenants ADD COLUMN spend_caps INTEGER NOT NULL DEFAULT 0;   -- spend caps of its users
ALTER TABLE tenants ADD COLUMN usage_hooks INTEGER NOT NULL DEFAULT 0;  -- enabled endpoints naming usage.recorded

CREATE TABLE webhook_endpoints (
  seq INTEGER PRIMARY KEY,            -- creation order: the listing order
  id TEXT NOT NULL UNIQUE,            -- we_...
  tenant INTEGER NOT NULL,
  url TEXT NOT NULL,
  events TEXT NOT NULL,               -- JSON list of event types as given, or ["*"]
  description TEXT NOT NULL DEFAULT '',
  status TEXT NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled')),
  secret TEXT NOT NULL,               -- whsec_...; never answered after creation or rotation
  old_secret TEXT,                    -- the secret before the last rotation ...
  old_secret_until INTEGER,           -- ... which signs deliveries too until then (microseconds)
  failed_in_row INTEGER NOT NULL DEFAULT 0,  -- deliveries failed since the last success; 50 disables
  created_at INTEGER NOT NULL,
  deleted_at INTEGER                  -- a deleted endpoint stays, for the events' delivery logs
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant, seq) WHERE deleted_at IS NULL;

CREATE TABLE events (
  seq INTEGER PRIMARY KEY,            -- the outbox's order
  id TEXT NOT NULL UNIQUE,            -- evt_...: the webhook-id of its deliveries
  tenant INTEGER NOT NULL,
  type TEXT NOT NULL,
  data TEXT NOT NULL,                 -- JSON: the object the event is about, as the API returns it
  created_at INTEGER NOT NULL,
  subject TEXT,                       -- the id of what changed: one event of a type per subject
  dispatched INTEGER NOT NULL DEFAULT 0 CHECK (dispatched IN (0, 1))  -- its deliveries are made
);
CREATE UNIQUE INDEX events_subject ON events (tenant, type, subject) WHERE subject IS NOT NULL;
CREATE INDEX events_tenant ON events (tenant, seq);
CREATE INDEX events_tenant_type ON events (tenant, type, seq);
CREATE INDEX events_undispatched ON events (seq) WHERE dispatched = 0;
CREATE INDEX events_age ON events (created_at);

-- One event to one endpoint: pending until an attempt succeeds or the schedule runs out.
CREATE TABLE deliveries (
  seq INTEGER PRIMARY KEY,
  tenant INTEGER NOT NULL,
  event_id TEXT NOT NULL,
  endpoint_id TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,   -- attempts made so far
  status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
  due_at INTEGER NOT NULL,               -- when the next attempt is due (microseconds)
  lease_until INTEGER,                   -- a sender owns the attempt until then; after, another may take it
  created_at INTEGER NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (due_at) WHERE status = 'pending';
CREATE INDEX deliveries_event ON deliveries (event_id, seq);
CREATE INDEX deliveries_endpoint ON deliveries (endpoint_id, seq);

-- The delivery log: one row per attempt made.
CREATE TABLE delivery_attempts (
  seq INTEGER PRIMARY KEY,
  delivery INTEGER NOT NULL,             -- deliveries.seq
  attempt INTEGER NOT NULL,              -- 1 for the first
  status TEXT NOT NULL CHECK (status IN ('succeeded', 'failed')),
  response_status INTEGER,
  error TEXT,
  at INTEGER NOT NULL,
  UNIQUE (delivery, attempt)             -- an attempt is recorded once, whoever made it
);

CREATE TABLE alerts (
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,               -- alr_...
  tenant INTEGER NOT NULL,
  type TEXT NOT NULL CHECK (type IN ('balance_below', 'usage_above')),
  user_id TEXT,                          -- NULL: every user of the tenant
  currency TEXT NOT NULL,
  threshold INTEGER NOT NULL,
  period TEXT CHECK (period IN ('day', 'month')),
  meter_id TEXT,
  created_at INTEGER NOT NULL
);
CREATE INDEX alerts_tenant ON alerts (tenant, currency, seq);

-- An alert that has triggered for a user and not re-armed since: its insert is what makes a
-- trigger happen once (the primary key), its delete re-arms it. `period_start`: for usage_above
-- the start of the period it triggered in (a new period re-arms by having no row); 0 otherwise.
CREATE TABLE alert_marks (
  alert_id TEXT NOT NULL,
  user_id TEXT NOT NULL,
  period_start INTEGER NOT NULL,
  at INTEGER NOT NULL,
  PRIMARY KEY (alert_id, user_id, period_start)
) WITHOUT ROWID;

CREATE TABLE spend_caps (
  tenant INTEGER NOT NULL,
  user_id TEXT NOT NULL,
  currency TEXT NOT NULL,
  period TEXT NOT NULL CHECK (period IN ('day', 'month')),
  cap INTEGER NOT NULL CHECK (cap > 0),  -- cents
  reached_period INTEGER,                -- start of the last period whose spend_cap.reached was recorded
  created_at INTEGER NOT NULL,
  PRIMARY KEY (tenant, user_id, currency, period)
) WITHOUT ROWID;

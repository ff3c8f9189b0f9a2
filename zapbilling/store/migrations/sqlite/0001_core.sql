-- The service core: tenants (org x mode), API keys, the ledger with running balances, and
-- stored responses for idempotency keys. Every row carries its tenant: nothing is shared
-- between orgs or between an org's live and test modes.

CREATE TABLE tenants (
  id INTEGER PRIMARY KEY,
  org TEXT NOT NULL,
  mode TEXT NOT NULL CHECK (mode IN ('live', 'test')),
  UNIQUE (org, mode)
);

CREATE TABLE api_keys (
  id TEXT PRIMARY KEY,
  tenant INTEGER NOT NULL REFERENCES tenants (id),
  scope TEXT NOT NULL CHECK (scope IN ('admin', 'read')),
  hash TEXT NOT NULL UNIQUE,          -- sha256 of the key; the key itself is never stored
  hint TEXT NOT NULL,                 -- the key's first characters, to tell keys apart in a list
  created_at INTEGER NOT NULL,
  revoked_at INTEGER
);

CREATE TABLE ledger (
  seq INTEGER PRIMARY KEY,            -- insertion order: breaks ties between equal timestamps
  id TEXT NOT NULL UNIQUE,
  tenant INTEGER NOT NULL,
  user_id TEXT NOT NULL,
  currency TEXT NOT NULL,
  type TEXT NOT NULL,
  amount INTEGER NOT NULL CHECK (amount > 0),
  tags TEXT NOT NULL DEFAULT '',
  notes TEXT NOT NULL DEFAULT '',
  metadata TEXT,                      -- JSON
  created_at INTEGER NOT NULL,        -- microseconds since the epoch, UTC
  expires_at INTEGER,
  remaining INTEGER,                  -- unspent part of an expiring deposit
  refund_of TEXT,                     -- the original transaction of a refund
  refunded INTEGER NOT NULL DEFAULT 0 CHECK (refunded >= 0 AND refunded <= amount),
  dedupe_key TEXT                     -- `usage:<requestId>`, `starter-credit`: one row per user and key
);
CREATE UNIQUE INDEX ledger_dedupe ON ledger (tenant, user_id, dedupe_key) WHERE dedupe_key IS NOT NULL;
CREATE INDEX ledger_usage ON ledger (tenant, user_id, seq) WHERE tags = 'api-usage';
CREATE INDEX ledger_lots ON ledger (tenant, user_id, currency, expires_at, seq) WHERE remaining > 0;
CREATE INDEX ledger_expiring ON ledger (expires_at) WHERE remaining > 0;

-- Maintained in the same transaction as every ledger row, so a balance read never scans history.
CREATE TABLE balances (
  tenant INTEGER NOT NULL,
  user_id TEXT NOT NULL,
  currency TEXT NOT NULL,
  balance INTEGER NOT NULL DEFAULT 0,
  holds INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (tenant, user_id, currency)
) WITHOUT ROWID;

CREATE TABLE idempotency (
  tenant INTEGER NOT NULL,
  key TEXT NOT NULL,
  fingerprint TEXT NOT NULL,          -- sha256 of the method and its validated params
  response TEXT NOT NULL,             -- JSON of the write's result
  created_at INTEGER NOT NULL,
  PRIMARY KEY (tenant, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_age ON idempotency (created_at);

-- The money history: who wrote each ledger row, which hold a capture charged, and a journal of
-- every change to a credit grant's remaining cents, so that every cent can be traced to the
-- call that moved it. Balances and remainders are caches of these rows: the invariants checker
-- recomputes them.

-- The ledger again, with the rules the database can enforce itself written into it (SQLite
-- adds a CHECK only by rebuilding the table): only deposits and withdrawals exist (the only
-- directions the running balance knows), amounts are positive, a remainder belongs to an
-- expiring deposit and lies within its amount, a refund is a deposit. Two new columns:
-- key_id, the API key whose call wrote the row ('system' for the server's own sweep; rows
-- written before this migration name none: ''), and hold_id, the hold a capture charged.
CREATE TABLE ledger_v4 (
  seq INTEGER PRIMARY KEY,            -- insertion order: breaks ties between equal timestamps
  id TEXT NOT NULL UNIQUE,
  tenant INTEGER NOT NULL,
  user_id TEXT NOT NULL,
  currency TEXT NOT NULL,
  type TEXT NOT NULL CHECK (type IN ('deposit', 'withdraw')),
  amount INTEGER NOT NULL CHECK (amount > 0),
  tags TEXT NOT NULL DEFAULT '',
  notes TEXT NOT NULL DEFAULT '',
  metadata TEXT,                      -- JSON
  created_at INTEGER NOT NULL,        -- microseconds since the epoch, UTC
  expires_at INTEGER,
  remaining INTEGER CHECK (remaining IS NULL OR (type = 'deposit' AND expires_at IS NOT NULL AND remaining BETWEEN 0 AND amount)),
  refund_of TEXT CHECK (refund_of IS NULL OR type = 'deposit'),
  refunded INTEGER NOT NULL DEFAULT 0 CHECK (refunded >= 0 AND refunded <= amount),
  dedupe_key TEXT,                    -- `usage:<requestId>`, `starter-credit`, `hold:<id>`: one row per user and key
  key_id TEXT NOT NULL,
  hold_id TEXT
);
INSERT INTO ledger_v4 (seq, id, tenant, user_id, currency, type, amount, tags, notes, metadata, created_at, expires_at,
                       remaining, refund_of, refunded, dedupe_key, key_id, hold_id)
  SELECT seq, id, tenant, user_id, currency, type, amount, tags, notes, metadata, created_at, expires_at,
         remaining, refund_of, refunded, dedupe_key, '', CASE WHEN dedupe_key LIKE 'hold:%' THEN substr(dedupe_key, 6) END
  FROM ledger;
DROP TABLE ledger;
ALTER TABLE ledger_v4 RENAME TO ledger;
CREATE UNIQUE INDEX ledger_dedupe ON ledger (tenant, user_id, dedupe_key) WHERE dedupe_key IS NOT NULL;
CREATE INDEX ledger_usage ON ledger (tenant, user_id, seq) WHERE tags = 'api-usage';
CREATE INDEX ledger_lots ON ledger (tenant, user_id, currency, expires_at, seq) WHERE remaining > 0;
CREATE INDEX ledger_expiring ON ledger (expires_at) WHERE remaining > 0;
-- A user's rows newest first (equal times: last written first), filtered by time as a range.
CREATE INDEX ledger_history ON ledger (tenant, user_id, created_at, seq);

-- The accounts of one currency in byte order of user, for listing them.
CREATE INDEX balances_by_currency ON balances (tenant, currency, user_id);
-- The users with a pending hold in one currency, in byte order of user.
CREATE INDEX holds_pending_by_currency ON holds (tenant, currency, user_id) WHERE status = 'pending';

CREATE TABLE credit_transactions (
  seq INTEGER PRIMARY KEY,            -- insertion order: breaks ties between equal timestamps
  id TEXT NOT NULL UNIQUE,
  tenant INTEGER NOT NULL,
  grant_id TEXT NOT NULL REFERENCES credit_grants (id),
  user_id TEXT NOT NULL,
  currency TEXT NOT NULL,
  type TEXT NOT NULL CHECK (type IN ('grant', 'burn', 'void', 'expire')),
  -- signed: a grant adds, everything else takes (a void of an empty grant takes nothing)
  amount INTEGER NOT NULL CHECK (
    (type = 'grant' AND amount > 0) OR (type IN ('burn', 'expire') AND amount < 0) OR (type = 'void' AND amount <= 0)
  ),
  remaining_after INTEGER NOT NULL CHECK (remaining_after >= 0),
  burn_id TEXT CHECK ((burn_id IS NOT NULL) = (type = 'burn')),
  meter_id TEXT,
  created_at INTEGER NOT NULL,        -- microseconds since the epoch, UTC
  key_id TEXT NOT NULL
);
CREATE INDEX credit_transactions_user ON credit_transactions (tenant, user_id, created_at, seq);
CREATE INDEX credit_transactions_grant ON credit_transactions (grant_id, created_at, seq);

-- Grants created before the journal existed get their history as far as it can be known: the
-- grant as created, then one row for what has gone since (burns and voids were not recorded).
INSERT INTO credit_transactions (id, tenant, grant_id, user_id, currency, type, amount, remaining_after, created_at, key_id)
  SELECT 'ct_' || substr(id, 4) || 'g', tenant, id, user_id, currency, 'grant', amount, amount, created_at, ''
  FROM credit_grants;
INSERT INTO credit_transactions (id, tenant, grant_id, user_id, currency, type, amount, remaining_after, burn_id, created_at, key_id)
  SELECT 'ct_' || substr(id, 4) || 'b', tenant, id, user_id, currency, 'burn', remaining - amount, remaining,
         'burn_' || substr(id, 4), created_at, ''
  FROM credit_grants WHERE remaining < amount;

-- A voided grant keeps nothing: its journal ends with the void.
INSERT INTO credit_transactions (id, tenant, grant_id, user_id, currency, type, amount, remaining_after, created_at, key_id)
  SELECT 'ct_' || substr(id, 4) || 'v', tenant, id, user_id, currency, 'void', -remaining, 0, voided_at, ''
  FROM credit_grants WHERE voided_at IS NOT NULL;
UPDATE credit_grants SET remaining = 0 WHERE voided_at IS NOT NULL;

-- Grants that expired with something left, for the first write on the user's grants or the sweep.
CREATE INDEX credit_grants_expiring ON credit_grants (expires_at) WHERE remaining > 0 AND expires_at IS NOT NULL;
CREATE INDEX credit_grants_user_expiring ON credit_grants (tenant, user_id, expires_at) WHERE remaining > 0 AND expires_at IS NOT NULL;

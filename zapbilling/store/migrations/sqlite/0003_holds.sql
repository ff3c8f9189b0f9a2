-- Holds: money reserved for a request whose cost is known later. `status` stays 'pending'
-- until a capture, a release or the sweep changes it, but every read treats a pending hold
-- with expires_at <= now as expired: the sweep only catches the column up. The running
-- `balances.holds` column of 0001 is not used; holds are summed from this table at read time,
-- which is exact at every instant without any sweep.

CREATE TABLE holds (
  seq INTEGER PRIMARY KEY,            -- insertion order: the listing order
  id TEXT NOT NULL UNIQUE,
  tenant INTEGER NOT NULL,
  user_id TEXT NOT NULL,
  currency TEXT NOT NULL,
  amount INTEGER NOT NULL CHECK (amount > 0),
  status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'captured', 'released', 'expired')),
  expires_at INTEGER NOT NULL,        -- microseconds since the epoch, UTC
  created_at INTEGER NOT NULL,
  request_id TEXT,                    -- a repeat for the same user returns this hold
  metadata TEXT,                      -- JSON
  captured_amount INTEGER CHECK (captured_amount > 0 AND captured_amount <= amount),
  transaction_id TEXT,                -- the withdraw a capture wrote
  settled_at INTEGER,                 -- when it was captured, released or (by the sweep) expired
  UNIQUE (tenant, user_id, request_id)
);
CREATE INDEX holds_pending ON holds (tenant, user_id, currency, expires_at) WHERE status = 'pending';
CREATE INDEX holds_user ON holds (tenant, user_id, seq);
CREATE INDEX holds_tenant ON holds (tenant, seq);
CREATE INDEX holds_expiring ON holds (expires_at) WHERE status = 'pending';

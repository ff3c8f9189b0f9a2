-- The meter events the server writes for usage withdrawals (recordUsage, a hold's capture) are
-- linked to their withdrawal's ledger row instead of carrying an idempotency key made from the
-- user and the requestId: that key shared the namespace of callers' keys (a caller's event with
-- key `hold:<id>` dropped that hold's capture event) and was ambiguous (`usage:a:b:c` is user
-- `a:b` with request `c` or user `a` with request `b:c`). A row id is neither.
ALTER TABLE meter_events ADD COLUMN ledger_id TEXT;

-- Earlier server-written events: link each to the usage withdrawal written in the same
-- transaction (same tenant, user, amount and instant) and free its key for callers. Should two
-- events match one row (equal amounts at one instant), only the first keeps the link; the other
-- keeps its old key, as before.
UPDATE meter_events SET ledger_id = (
    SELECT l.id FROM ledger l
    WHERE l.tenant = meter_events.tenant AND l.user_id = meter_events.user_id AND l.type = 'withdraw'
      AND l.tags = 'api-usage' AND l.amount = meter_events.value AND l.created_at = meter_events.created_at
      AND l.created_at = meter_events.ts
    ORDER BY l.seq LIMIT 1
)
WHERE idempotency_key LIKE 'usage:%' OR idempotency_key LIKE 'hold:%';
UPDATE meter_events SET ledger_id = NULL
WHERE ledger_id IS NOT NULL
  AND seq NOT IN (SELECT MIN(seq) FROM meter_events WHERE ledger_id IS NOT NULL GROUP BY ledger_id);
UPDATE meter_events SET idempotency_key = NULL WHERE ledger_id IS NOT NULL;

CREATE UNIQUE INDEX meter_events_by_ledger ON meter_events (ledger_id) WHERE ledger_id IS NOT NULL;

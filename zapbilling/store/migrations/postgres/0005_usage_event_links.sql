-- Server-written meter events linked to their withdrawal's ledger row (as
-- sqlite/0005_usage_event_links.sql, whose reasons are written there).
ALTER TABLE meter_events ADD COLUMN ledger_id TEXT COLLATE "C";

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

-- Running totals of an account's usage withdrawals in its current day or month, for the spend
-- caps and the cents usage_above alerts (store/*/watch.py): each write of a watched account adds
-- only the usage rows written since the total was last brought up to date (the ledger_usage
-- index range seq > through_seq) instead of summing the whole period's rows again, so a
-- recordUsage of a user with a cap costs the same on the first and the millionth call of a month.
-- A row is made the first time a period is judged (one sum over the period's ledger_history
-- range) and replaced when the next period begins; it is a cache of the ledger, never the truth.
CREATE TABLE usage_totals (
  tenant INTEGER NOT NULL,
  user_id TEXT NOT NULL,
  currency TEXT NOT NULL,
  period TEXT NOT NULL CHECK (period IN ('day', 'month')),
  period_start INTEGER NOT NULL,     -- the period the total is of (microseconds)
  used INTEGER NOT NULL,             -- its usage withdrawals in cents, through ...
  through_seq INTEGER NOT NULL,      -- ... the account's usage rows up to this ledger seq
  PRIMARY KEY (tenant, user_id, currency, period)
) WITHOUT ROWID;

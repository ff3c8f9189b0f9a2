-- Running totals of an account's usage withdrawals in its current day or month (see the SQLite
-- migration of the same number for why): a cache of the ledger, kept by store/postgres/watch.py
-- under the account's lock, its row locked FOR UPDATE before it is brought up to date.
CREATE TABLE usage_totals (
  tenant BIGINT NOT NULL,
  user_id TEXT COLLATE "C" NOT NULL,
  currency TEXT COLLATE "C" NOT NULL,
  period TEXT COLLATE "C" NOT NULL CHECK (period IN ('day', 'month')),
  period_start BIGINT NOT NULL,
  used BIGINT NOT NULL,
  through_seq BIGINT NOT NULL,
  PRIMARY KEY (tenant, user_id, currency, period)
);

-- Fast filtered listings of one user's ledger (listTransactions' `type` and `tag`): each filter
-- gets a range of its own to walk, newest first, instead of a test on every row of the user's
-- ledger_history range (a million rows walked to find the one deposit: 0.65-1.1 s a page).
-- store/sqlite/ledger.py `ledger_page` picks the range; every range ends (created_at, seq) like
-- ledger_history, so dates and the page's cursor stay range bounds on each.

-- A user's rows of one type, newest first.
CREATE INDEX ledger_by_type ON ledger (tenant, user_id, type, created_at, seq);

-- A user's rows by each of their comma-separated tags, newest first: one row per distinct tag of
-- a ledger row (`tags` split at every comma, nothing trimmed: 'a,,b' has the tags 'a', '' and
-- 'b'), made by the triggers below in the ledger row's own transaction (every writer of the
-- ledger, the store's and any other, so it cannot be forgotten). Rows whose tags are exactly ''
-- (a deposit's default) or 'api-usage' (every recordUsage and capture: the bulk of a ledger)
-- get none: recordUsage pays only the triggers' WHENs for this table, and a filter on those two tags walks
-- ledger_history (or ledger_by_type), where they are common. A cache of the ledger (rows are
-- never updated or deleted by the service): the invariants checker compares it with the split
-- tags. A migration that rebuilds the ledger table must make the triggers again.
CREATE TABLE ledger_tags (
  tenant INTEGER NOT NULL,
  user_id TEXT NOT NULL,
  tag TEXT NOT NULL,
  created_at INTEGER NOT NULL,       -- the ledger row's
  seq INTEGER NOT NULL,              -- the ledger row's (its rowid)
  PRIMARY KEY (tenant, user_id, tag, created_at, seq)
) WITHOUT ROWID;

-- The split, in two triggers so that the usual tagged row pays for its one entry only: a row
-- with a single tag (no comma: 'refund', 'starter-credit', a caller's one tag) inserts it as it
-- is; a row with several goes through json_each, whose set-up is costly (a deposit's append
-- alone, callgrind: one tag through json_each +74k instructions, by one trigger whose two
-- INSERTs are conditioned on the comma +69k, json_each being opened anyway; by its own trigger
-- +54k). json_quote escapes every character JSON must (a quote, a backslash, a control
-- character) and never writes a comma of its own, so every comma of its output is one of the
-- tags' and becomes a boundary between two JSON strings. (A recursive CTE cannot be used in a
-- trigger.)
-- What this migration costs a write, per request (`python -m bench.instructions`, before ->
-- after): recordUsage 630.8k -> 647.3k instructions (+2.6%: the index, and the triggers' WHENs);
-- a deposit without tags 663.1k -> 664.5k (+0.2%), with one tag 662.2k -> 672.6k (+1.6%).
CREATE TRIGGER ledger_tag_one AFTER INSERT ON ledger
  WHEN new.tags NOT IN ('', 'api-usage') AND instr(new.tags, ',') = 0
BEGIN
  INSERT INTO ledger_tags (tenant, user_id, tag, created_at, seq) VALUES (new.tenant, new.user_id, new.tags, new.created_at, new.seq);
END;
CREATE TRIGGER ledger_tags_split AFTER INSERT ON ledger
  WHEN instr(new.tags, ',') > 0
BEGIN
  INSERT INTO ledger_tags (tenant, user_id, tag, created_at, seq)
    SELECT DISTINCT new.tenant, new.user_id, j.value, new.created_at, new.seq
    FROM json_each('[' || replace(json_quote(new.tags), ',', '","') || ']') j;
END;

-- The rows written before this migration.
INSERT INTO ledger_tags (tenant, user_id, tag, created_at, seq)
  SELECT DISTINCT l.tenant, l.user_id, j.value, l.created_at, l.seq
  FROM ledger l, json_each('[' || replace(json_quote(l.tags), ',', '","') || ']') j
  WHERE l.tags NOT IN ('', 'api-usage');

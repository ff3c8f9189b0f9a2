-- Fast filtered listings of one user's ledger (as sqlite/0008_ledger_filters.sql, which says
-- why): an index of a user's rows by type, and a table of their rows by each tag, kept by a
-- trigger in the ledger row's transaction (also while `zapbilling copy` loads the ledger: the
-- copy does not copy this table, the trigger writes it).

CREATE INDEX ledger_by_type ON ledger (tenant, user_id, type, created_at, seq);

CREATE TABLE ledger_tags (
  tenant BIGINT NOT NULL,
  user_id TEXT COLLATE "C" NOT NULL,
  tag TEXT COLLATE "C" NOT NULL,
  created_at BIGINT NOT NULL,
  seq BIGINT NOT NULL,
  PRIMARY KEY (tenant, user_id, tag, created_at, seq)
);

-- string_to_array('', ',') is an empty array where Python's and SQLite's split give one empty
-- tag; the tags '' get no rows here anyway (the WHEN below), so both dialects split alike.
CREATE FUNCTION ledger_tags_split() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO ledger_tags (tenant, user_id, tag, created_at, seq)
    SELECT DISTINCT NEW.tenant, NEW.user_id, t, NEW.created_at, NEW.seq FROM unnest(string_to_array(NEW.tags, ',')) t;
  RETURN NULL;
END
$$;

-- The WHEN is judged without calling the function: recordUsage's rows (tags 'api-usage') pay
-- only for it.
CREATE TRIGGER ledger_tags_split AFTER INSERT ON ledger
  FOR EACH ROW WHEN (NEW.tags NOT IN ('', 'api-usage')) EXECUTE FUNCTION ledger_tags_split();

INSERT INTO ledger_tags (tenant, user_id, tag, created_at, seq)
  SELECT DISTINCT l.tenant, l.user_id, t, l.created_at, l.seq
  FROM ledger l, unnest(string_to_array(l.tags, ',')) t
  WHERE l.tags NOT IN ('', 'api-usage');

-- A tag longer than 255 characters gets no ledger_tags entry (as sqlite/0018_long_tags_unindexed.sql).
--
-- Why: an entry of ledger_tags is a key of its primary-key index, and a B-tree takes keys of at
-- most ~2.7 KB (a third of a page). A deposit's `tags` may be 1,000 characters, one tag all of
-- them: 1,000 characters of a script written in three or four bytes each made a key past the
-- bound, and PostgreSQL refused the deposit itself ("index row size 4048 exceeds btree version 4
-- maximum 2704"), a 500 where SQLite wrote it. No listing can ask for such a tag: the filter's
-- `tag` is at most 255 characters (billing/validation.py TEXT_BOUND), so an entry for it would
-- never be read. 255 characters and a user's 255 make at most ~2 KB, inside the bound.
CREATE OR REPLACE FUNCTION ledger_tags_split() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO ledger_tags (tenant, user_id, tag, created_at, seq)
    SELECT DISTINCT NEW.tenant, NEW.user_id, t, NEW.created_at, NEW.seq FROM unnest(string_to_array(NEW.tags, ',')) t
    WHERE length(t) <= 255;
  RETURN NULL;
END
$$;

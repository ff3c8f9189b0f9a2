-- A tag longer than 255 characters gets no ledger_tags entry, as on PostgreSQL, whose B-tree
-- index cannot hold every such key (postgres/0018_long_tags_unindexed.sql says why). No listing
-- can ask for one: the filter's `tag` is at most 255 characters. SQLite could hold them; the
-- two backends keep the same entries.
DROP TRIGGER ledger_tag_one;
DROP TRIGGER ledger_tags_split;
CREATE TRIGGER ledger_tag_one AFTER INSERT ON ledger
  WHEN new.tags NOT IN ('', 'api-usage') AND instr(new.tags, ',') = 0 AND length(new.tags) <= 255
BEGIN
  INSERT INTO ledger_tags (tenant, user_id, tag, created_at, seq) VALUES (new.tenant, new.user_id, new.tags, new.created_at, new.seq);
END;
CREATE TRIGGER ledger_tags_split AFTER INSERT ON ledger
  WHEN instr(new.tags, ',') > 0
BEGIN
  INSERT INTO ledger_tags (tenant, user_id, tag, created_at, seq)
    SELECT DISTINCT new.tenant, new.user_id, j.value, new.created_at, new.seq
    FROM json_each('[' || replace(json_quote(new.tags), ',', '","') || ']') j
    WHERE length(j.value) <= 255;
END;
DELETE FROM ledger_tags WHERE length(tag) > 255;

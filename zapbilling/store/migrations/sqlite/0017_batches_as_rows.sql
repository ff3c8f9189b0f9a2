-- Nothing on SQLite: PostgreSQL's migration of this number adds the row types its batched
-- statements take (postgres/0017_batches_as_rows.sql); SQLite's batches are calls on the
-- writer's thread, with no parameters to encode.
SELECT 1;

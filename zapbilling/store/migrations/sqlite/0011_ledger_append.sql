-- Nothing on SQLite: PostgreSQL's migration of this number adds a function for its round trips
-- (postgres/0011_ledger_append.sql); a SQLite write is a call on the writer's thread already.
SELECT 1;

-- SQLite's migration 19 drops its ledger_history index (its WAL writes a page per index entry
-- at each user's tail). PostgreSQL keeps it: its listings, its spend caps' sums and HAS_ROWS
-- (ledger.py) walk it; dropping it here is left for a measurement of its own.
COMMENT ON INDEX ledger_history IS 'the user''s whole history, newest first: the history walk (ledger_filters.py)';

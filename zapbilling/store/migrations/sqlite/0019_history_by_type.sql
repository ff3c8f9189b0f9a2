-- The user's whole history has no index of its own any more: a listing without a type walks
-- the merge of the user's two ledger_by_type ranges (ledger_filters.py), and the spend caps'
-- and alerts' period sums (usage withdrawals: one type) walk ledger_by_type's. Why: every
-- ledger row wrote an entry to ledger_history at the end of its user's range, a page of its
-- own per row in a commit of many users' rows (each user's tail page); a recordUsage commit
-- of ~32 rows wrote ~6 such pages per row to the WAL. Without it (scenario 2's load, four
-- runs each): 19.6-20.2 against 23.7-27.5 KB written per request, 12.5-20 us less system CPU
-- spread over the writer, recordUsage 7.6-8.9k against 6.9-7.6k req/s.
DROP INDEX ledger_history;

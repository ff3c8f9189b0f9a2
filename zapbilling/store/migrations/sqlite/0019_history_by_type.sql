-- The user's whole history has no index of its own any more: a listing without a type walks
-- the merge of the user's two ledger_by_type ranges, its tests applied to the merged rows
-- (ledger_filters.py), and the spend caps' and alerts' period sums walk ledger_by_type's
-- withdrawals. Why: every ledger row wrote an entry to ledger_history at the end of its user's
-- range, a page of its own per row in a commit of many users' rows (each user's tail page).
-- Without it (scenario 2's load, three interleaved triples): 18.5-20.7 against 24.5-27.6 KB
-- written to the WAL per recordUsage, 8,384-9,436 against 7,560-8,082 req/s.
DROP INDEX ledger_history;

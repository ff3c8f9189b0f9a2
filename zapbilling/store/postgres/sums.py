"""One account's sums in PostgreSQL's SQL (as ../sqlite/sums.py), written once for every
statement that reads them. PostgreSQL's SUM of BIGINT is NUMERIC: EXPIRED and HELD cast it
back to BIGINT, so every backend's callers get ints, and a sum past int64 is an error as
SQLite's SUM raises one. Imports nothing of the store (no import cycle)."""
from __future__ import annotations

EXPIRED = (
    "SELECT COALESCE(SUM(remaining), 0)::bigint FROM ledger WHERE tenant = {tenant} AND user_id = {user}"
    " AND currency = {currency} AND remaining > 0 AND expires_at <= {now}"
)
"""An account's expired unforfeited credit; a template of {tenant}, {user}, {currency}, {now}."""
HELD = (
    "SELECT COALESCE(SUM(amount), 0)::bigint FROM holds WHERE tenant = {tenant} AND user_id = {user}"
    " AND currency = {currency} AND status = 'pending' AND expires_at > {now}"
)
"""An account's holds pending at {now}; a template as EXPIRED."""
ONE = dict(tenant="$1", user="$2", currency="$3", now="$4")
"""The templates' parameters as one account's statement binds them: $1 tenant, $2 user,
$3 currency, $4 now."""
BALANCE_OF = "COALESCE((SELECT balance FROM balances WHERE tenant = {tenant} AND user_id = {user} AND currency = {currency}), 0)"
"""An account's balances row (0 without one); a template as EXPIRED ({now} unused)."""
BALANCE = BALANCE_OF.format(**ONE)
"""The account's balances row; parameters as ONE."""
HELD_NOW = HELD.format(**ONE)
"""The account's holds pending at now; parameters as ONE."""
ACCOUNT_OF = f"{BALANCE_OF}, ({EXPIRED}), ({HELD})"
"""(balance row, expired unforfeited credit, pending holds) of an account at {now}, as columns;
a template as EXPIRED. All three BIGINT (ints), the subtraction left to Python, as on SQLite."""
ACCOUNT = "SELECT " + ACCOUNT_OF.format(**ONE)
"""ACCOUNT_OF of one account at now; parameters as ONE."""
AVAILABLE = (
    f"SELECT {BALANCE}::numeric - ({EXPIRED.format(**ONE).replace('::bigint', '')}) - ({HELD_NOW})"
)
"""Balance less expired unforfeited credit less pending holds, subtracted in NUMERIC (no
overflow: the expired credit's sum is left NUMERIC for it); parameters as ONE."""

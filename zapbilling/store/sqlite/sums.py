"""One account's sums in SQLite's SQL, written once for every statement that reads them: the
balances row, the expired credit not yet forfeited (reads subtract it themselves until a write
or the sweep forfeits it) and the holds pending at `now` (a hold counts until expires_at,
whether or not the sweep has marked it). Imports nothing of the store, so the ledger, the
alerts and the watch can all take them without an import cycle (ledger.py imports watch.py,
which imports alerts.py)."""
from __future__ import annotations

import sqlite3


def sum_overflowed(exc: sqlite3.OperationalError) -> bool:
    """Whether a statement failed because SQLite's SUM() left int64 (its documented "integer
    overflow"): what the stores' sums catch and answer for; any other error is raised on."""
    return "overflow" in str(exc)

EXPIRED = (
    "SELECT COALESCE(SUM(remaining), 0) FROM ledger WHERE tenant = {tenant} AND user_id = {user}"
    " AND currency = {currency} AND remaining > 0 AND expires_at <= {now}"
)
"""An account's expired unforfeited credit; a template of {tenant}, {user}, {currency}, {now}."""
HELD = (
    "SELECT COALESCE(SUM(amount), 0) FROM holds WHERE tenant = {tenant} AND user_id = {user}"
    " AND currency = {currency} AND status = 'pending' AND expires_at > {now}"
)
"""An account's holds pending at {now}; a template as EXPIRED."""
# Numbered parameters bound from a tuple: ~20% cheaper than named ones bound from a dict, and
# getBalance runs a statement of these on every call.
ONE = dict(tenant="?1", user="?2", currency="?3", now="?4")
"""The templates' parameters as one account's statement binds them: (tenant, user, currency, now)."""
BALANCE = "COALESCE((SELECT balance FROM balances WHERE tenant = ?1 AND user_id = ?2 AND currency = ?3), 0)"
"""The account's balances row (0 without one); parameters as ONE."""
HELD_NOW = HELD.format(**ONE)
"""The account's holds pending at now; parameters (tenant, user, currency, now)."""
ACCOUNT = f"SELECT {BALANCE} AS b, ({EXPIRED.format(**ONE)}) AS e, ({HELD_NOW}) AS h"
"""(balance row, expired unforfeited credit, pending holds) of one account at now; parameters
(tenant, user, currency, now). The subtraction is left to Python: SQLite would turn an
overflowing integer result into a float. The columns are named short: Python's sqlite3 builds
a cursor's description (each column's name as a str) on every execute, and unnamed, a
column's name is its whole expression, ~100 characters each."""
AVAILABLE = f"SELECT {BALANCE} - ({EXPIRED.format(**ONE)}) - ({HELD_NOW})"
"""Balance less expired unforfeited credit less pending holds, subtracted in SQL (each term is
an int64 the ledger keeps in range); parameters (tenant, user, currency, now)."""
ACCOUNT_SPAN = (
    f"SELECT {BALANCE} AS b, (SELECT MIN(expires_at) FROM ledger WHERE tenant = ?1 AND user_id = ?2 AND currency = ?3"
    f"  AND remaining > 0) AS l, ({HELD_NOW}) AS h"
)
"""ACCOUNT for the usual account, with when its answer next changes with the time alone: (balance
row, the first unspent lot's expiry or NULL, pending holds). A first lot expiring after now
means no credit has expired unforfeited (the EXPIRED sum is 0), and the answer holds until that
lot expires; one at or before now means some has: ACCOUNT then sums it. Pending holds that
count now (h > 0) make the answer change when the first of them lapses: such an answer is not
kept (ledger.py `balance`). As many seeks as ACCOUNT (ledger_lots' first entry for the
account, where EXPIRED sought its range up to now): the same cost, measured by callgrind.
Parameters as ACCOUNT."""

"""The accounts of one currency on PostgreSQL (as ../sqlite/accounts.py), listed by user: the
users with a ledger row (a `balances` row) or a pending hold in it."""
from __future__ import annotations

from typing import Any

from ..base import Account
from .connection import _SNAPSHOT, PgBase
from .ledger import HAS_ROWS
from .sums import EXPIRED, HELD

# Parameters: $1 tenant, $2 currency, $3 now, $4 after, $5 how many users, $6 max_available.
_EACH = dict(tenant="$1", user="u.user_id", currency="$2", now="$3")

# The next $5 users after $4. Both arms walk an index in user order ((tenant, currency, user_id)
# on balances, and on pending holds); a balances row counts only with a ledger row behind it
# (HAS_ROWS, ledger.py). SQLite merges the two ordered arms of a compound SELECT lazily; here
# each arm is limited to $5 itself, so PostgreSQL plans each as a short index scan (without the
# arm's LIMIT, it sorted a sequential scan of all pending holds: 23 ms for a page of 11 over
# 20,000 holds), and the two are merged (Merge Append, Unique): a page reads at most `limit`
# entries of each index whatever the number of accounts.
_USERS = (
    "SELECT DISTINCT user_id FROM ("
    "(SELECT user_id FROM balances b WHERE tenant = $1 AND currency = $2 AND user_id > $4"
    f" AND {HAS_ROWS.format(b='b')} ORDER BY user_id LIMIT $5)"
    " UNION ALL (SELECT user_id FROM holds WHERE tenant = $1 AND currency = $2 AND status = 'pending'"
    " AND expires_at > $3 AND user_id > $4 ORDER BY user_id LIMIT $5)) a ORDER BY user_id LIMIT $5"
)
_ACCOUNTS = (
    "SELECT u.user_id,"
    " COALESCE((SELECT balance FROM balances WHERE tenant = $1 AND user_id = u.user_id AND currency = $2), 0) AS b,"
    f" ({EXPIRED.format(**_EACH)}) AS expired, ({HELD.format(**_EACH)}) AS held"
    f" FROM ({_USERS}) u"
)
_PAGE = f"{_ACCOUNTS} ORDER BY u.user_id"
# b - expired - held widened to NUMERIC: exact where BIGINT arithmetic would overflow. OFFSET 0
# keeps the inner query whole: flattened, its three subqueries ran twice per user (8 -> 4 ms a chunk).
_FILTERED = (f"SELECT *, GREATEST(b::numeric - expired - held, 0) <= $6 AS kept FROM ({_ACCOUNTS} OFFSET 0) x"
             " ORDER BY user_id")

CHUNK = 256
"""Users walked per statement by a filtered listing (`max_available`): each statement stays a
short index walk, a few milliseconds, whatever the number of accounts the filter drops."""


class AccountQueries(PgBase):
    async def accounts_page(
        self, tenant: int, currency: str, max_available: int | None, limit: int, starting_after: str | None, now: int
    ) -> tuple[list[Account], bool]:
        """`starting_after` is a position in byte order (the columns are COLLATE "C"), not a
        row: a user need not exist. `max_available` keeps the accounts whose available
        (balance - holds, at least 0) is at most that; those it drops are walked past in SQL,
        without being returned."""
        after = starting_after or ""
        if max_available is None:
            rows = await self._read(_PAGE, tenant, currency, now, after, limit + 1)
        elif _SNAPSHOT.get() is not None:
            rows = await self._walk(tenant, currency, max_available, limit, after, now)
        else:
            # The walk's statements see one moment (as SQLite's single statement does), and,
            # its cost growing with the accounts it drops, it takes a long-read slot.
            async with self.snapshot(tenant):
                rows = await self._walk(tenant, currency, max_available, limit, after, now)
        return [{"user": u, "balance": b - e, "holds": h} for u, b, e, h, *_ in rows[:limit]], len(rows) > limit

    async def _walk(self, tenant: int, currency: str, max_available: int, limit: int, after: str, now: int) -> list[Any]:
        """The first limit + 1 accounts after `after` that the filter keeps, CHUNK users a
        statement (the filter is judged in SQL; the dropped rows come back to tell where the
        walk stands)."""
        kept: list[Any] = []
        while len(kept) <= limit:
            rows = await self._read(_FILTERED, tenant, currency, now, after, CHUNK, max_available)
            kept += [r for r in rows if r["kept"]]
            if len(rows) < CHUNK:
                break
            after = rows[-1]["user_id"]
        return kept

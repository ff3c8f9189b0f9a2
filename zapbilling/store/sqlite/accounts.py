"""The accounts of one currency, listed by user: the users with a ledger row (a `balances` row)
or a pending hold in it."""
from __future__ import annotations

from typing import Any

from ..base import Account
from .connection import SqliteBase
from .sums import EXPIRED, HELD

_EACH = dict(tenant=":tenant", user="u.user_id", currency=":currency", now=":now")

# Both arms walk an index in user order ((tenant, currency, user_id) on balances, and on pending
# holds), and SQLite merges two ordered arms of a compound SELECT, so a page reads about `limit`
# entries of each index whatever the number of accounts.
_USERS = (
    "SELECT user_id FROM balances WHERE tenant = :tenant AND currency = :currency AND user_id > :after"
    " UNION SELECT user_id FROM holds WHERE tenant = :tenant AND currency = :currency AND status = 'pending'"
    " AND expires_at > :now AND user_id > :after ORDER BY 1"
)
_ACCOUNT = (
    "SELECT u.user_id,"
    " COALESCE((SELECT balance FROM balances WHERE tenant = :tenant AND user_id = u.user_id AND currency = :currency), 0) AS b,"
    f" ({EXPIRED.format(**_EACH)}) AS expired, ({HELD.format(**_EACH)}) AS held"
)


class AccountQueries(SqliteBase):
    async def accounts_page(
        self, tenant: int, currency: str, max_available: int | None, limit: int, starting_after: str | None, now: int
    ) -> tuple[list[Account], bool]:
        """`starting_after` is a position in byte order, not a row: a user need not exist.
        `max_available` keeps the accounts whose available (balance - holds, at least 0) is at
        most that; those it drops are walked past in SQL, without being returned."""
        params: dict[str, Any] = {"tenant": tenant, "currency": currency, "now": now, "after": starting_after or "",
                                  "limit": limit + 1, "max": max_available}
        if max_available is None:
            sql = f"{_ACCOUNT} FROM ({_USERS} LIMIT :limit) u ORDER BY u.user_id"
        else:
            # In SQL, b - expired - held may pass the int64 range and become a float: good enough
            # to filter on; the answer's figures are subtracted exactly, in Python.
            sql = (f"SELECT * FROM ({_ACCOUNT} FROM ({_USERS}) u) WHERE max(b - expired - held, 0) <= :max"
                   " ORDER BY user_id LIMIT :limit")
        rows = await self._read(sql, params)
        return [{"user": u, "balance": b - e, "holds": h} for u, b, e, h in rows[:limit]], len(rows) > limit

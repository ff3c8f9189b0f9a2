"""Alerts and spend caps on PostgreSQL (as ../sqlite/alerts.py): their rows, and the tenant's
counts of them (tenants.alerts, tenants.spend_caps) kept in the same transaction as each create
and delete. The count's UPDATE locks the tenant's row, so concurrent creates at the quota
queue there and the later one sees the earlier one's count."""
from __future__ import annotations

from typing import Any

import asyncpg

from ..base import INT64_MAX, AlertRow, Idempotency, NewAlert, SpendCapRow
from ..ids import new_id
from ..periods import period_bounds
from ..refusals import Missing, QuotaReached
from ..rows import ALERT_COLUMNS as _ALERT, alert_row
from .connection import PgBase, lock_account
from .sums import HELD, HELD_NOW

USED = (
    "SELECT LEAST(COALESCE(SUM(amount), 0), 9223372036854775807)::bigint FROM ledger WHERE tenant = $1 AND user_id = $2 AND created_at >= $3"
    " AND created_at < $4 AND currency = $5 AND type = 'withdraw' AND tags = 'api-usage'"
)
"""As ../sqlite/alerts.py USED (which index it walks is the planner's choice here);
parameters $1 tenant, $2 user, $3 start, $4 end, $5 currency."""

_CAPS = (
    "SELECT s.currency, s.period, s.cap,"
    " (SELECT LEAST(COALESCE(SUM(amount), 0), 9223372036854775807)::bigint FROM ledger WHERE tenant = $1 AND user_id = $2"
    "  AND created_at >= CASE s.period WHEN 'day' THEN $4::bigint ELSE $6::bigint END"
    "  AND created_at < CASE s.period WHEN 'day' THEN $5::bigint ELSE $7::bigint END"
    "  AND currency = s.currency AND type = 'withdraw' AND tags = 'api-usage'),"
    f" ({HELD.format(tenant='$1', user='$2', currency='s.currency', now='$3')})"
    " FROM spend_caps s WHERE s.tenant = $1 AND s.user_id = $2"
    " ORDER BY s.currency COLLATE \"C\", CASE s.period WHEN 'day' THEN 0 ELSE 1 END"
)


USED_SINCE = (
    "SELECT LEAST(COALESCE(SUM(CASE WHEN currency = $1 AND type = 'withdraw' AND created_at >= $2 AND created_at < $3"
    " THEN amount END), 0), 9223372036854775807)::bigint, MAX(seq) FROM ledger WHERE tenant = $4 AND user_id = $5 AND tags = 'api-usage' AND seq > $6"
)
"""As ../sqlite/alerts.py USED_SINCE: a range of the ledger_usage index."""
LAST_USAGE = "SELECT COALESCE(MAX(seq), 0) FROM ledger WHERE tenant = $1 AND user_id = $2 AND tags = 'api-usage'"
# The total's row and the account's lock in one statement: the write paths hold that lock
# already (taking it again is immediate), the expiry sweep does not and waits here for the
# account's writer to commit; either way no usage row of the account is then uncommitted, which
# is what makes through_seq exact (see ../sqlite/alerts.py period_usage).
_TOTAL_LOCKED = (
    "SELECT t.period_start, t.used, t.through_seq FROM usage_totals t JOIN balances b"
    " ON b.tenant = t.tenant AND b.user_id = t.user_id AND b.currency = t.currency"
    " WHERE t.tenant = $1 AND t.user_id = $2 AND t.currency = $3 AND t.period = $4 FOR UPDATE"
)


async def period_usage(
    conn: asyncpg.Connection, tenant: int, user: str, currency: str, period: str, now: int, locked: bool = True
) -> int:
    """As ../sqlite/alerts.py period_usage, under the account's lock. `locked` False (a caller
    that holds no account lock: the hold expiry sweep): the same value read from the total and
    the rows since, taking no lock and writing nothing (only a locked caller may move
    through_seq, see above)."""
    start, end = period_bounds(period, now)
    if not locked:
        seen = await conn.fetchrow(
            "SELECT period_start, used, through_seq FROM usage_totals WHERE tenant = $1 AND user_id = $2 AND currency = $3"
            " AND period = $4", tenant, user, currency, period,
        )
        if seen is not None and seen[0] == start:
            added, _ = await conn.fetchrow(USED_SINCE, currency, start, end, tenant, user, seen[2])
            return min(int(seen[1]) + int(added), INT64_MAX)
        return int(await conn.fetchval(USED, tenant, user, start, end, currency))
    row = await conn.fetchrow(_TOTAL_LOCKED, tenant, user, currency, period)
    if row is not None and row[0] == start:
        added, last = await conn.fetchrow(USED_SINCE, currency, start, end, tenant, user, row[2])
        if last is None:
            return int(row[1])
        total = min(int(row[1]) + int(added), INT64_MAX)  # saturated: usage past int64 passes every threshold
        await conn.execute(
            "UPDATE usage_totals SET used = $5, through_seq = $6 WHERE tenant = $1 AND user_id = $2 AND currency = $3 AND period = $4",
            tenant, user, currency, period, total, last,
        )
        return total
    if row is None:
        await lock_account(conn, tenant, user, currency)
    last = await conn.fetchval(LAST_USAGE, tenant, user)
    total = int(await conn.fetchval(USED, tenant, user, start, end, currency))
    await conn.execute(
        "INSERT INTO usage_totals (tenant, user_id, currency, period, period_start, used, through_seq) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        " ON CONFLICT (tenant, user_id, currency, period) DO UPDATE SET period_start = excluded.period_start,"
        " used = excluded.used, through_seq = excluded.through_seq",
        tenant, user, currency, period, start, total, last,
    )
    return total


async def used(conn: asyncpg.Connection, tenant: int, user: str, currency: str, period: str, now: int, held: int) -> int:
    """As ../sqlite/alerts.py used: saturated at int64."""
    return min(await period_usage(conn, tenant, user, currency, period, now) + held, INT64_MAX)


async def held_now(conn: asyncpg.Connection, tenant: int, user: str, currency: str, now: int) -> int:
    return int(await conn.fetchval(HELD_NOW, tenant, user, currency, now))


class AlertQueries(PgBase):
    async def create_alert(
        self, tenant: int, alert: NewAlert, idempotency: Idempotency | None = None, *, quota: int | None = None
    ) -> AlertRow:
        return await self._write(tenant, idempotency, alert.now, _create_alert, tenant, new_id("alr"), alert, quota)  # type: ignore[no-any-return]

    async def list_alerts(self, tenant: int, user: str | None) -> list[AlertRow]:
        if user is None:
            rows = await self._read(f"SELECT {_ALERT} FROM alerts WHERE tenant = $1 ORDER BY seq", tenant)
        else:
            rows = await self._read(
                f"SELECT {_ALERT} FROM alerts WHERE tenant = $1 AND (user_id = $2 OR user_id IS NULL) ORDER BY seq", tenant, user
            )
        return [alert_row(r) for r in rows]

    async def delete_alert(self, tenant: int, alert_id: str, now: int, idempotency: Idempotency | None = None) -> None:
        await self._write(tenant, idempotency, now, _delete_alert, tenant, alert_id)

    async def set_spend_cap(
        self, tenant: int, user: str, currency: str, period: str, cap: int, now: int, idempotency: Idempotency | None = None
    ) -> SpendCapRow:
        return await self._write(tenant, idempotency, now, _set_spend_cap, tenant, user, currency, period, cap, now)  # type: ignore[no-any-return]

    async def spend_caps(self, tenant: int, user: str, now: int) -> list[SpendCapRow]:
        (day, day_end), (month, month_end) = period_bounds("day", now), period_bounds("month", now)
        rows = await self._read(_CAPS, tenant, user, now, day, day_end, month, month_end)
        return [{"user": user, "currency": c, "period": p, "limit": cap, "used": min(int(spent) + int(held), INT64_MAX)}
                for c, p, cap, spent, held in rows]

    async def delete_spend_cap(
        self, tenant: int, user: str, currency: str, period: str, now: int, idempotency: Idempotency | None = None
    ) -> None:
        await self._write(tenant, idempotency, now, _delete_spend_cap, tenant, user, currency, period)


async def _create_alert(conn: asyncpg.Connection, tenant: int, alert_id: str, a: NewAlert, quota: int | None) -> AlertRow:
    if a.meter_id is not None and await conn.fetchval("SELECT 1 FROM meters WHERE tenant = $1 AND id = $2", tenant, a.meter_id) is None:
        raise Missing("meter")
    count = await conn.fetchval("UPDATE tenants SET alerts = alerts + 1 WHERE id = $1 RETURNING alerts", tenant)
    if quota is not None and count is not None and count > quota:
        raise QuotaReached("alert", quota)  # the transaction rolls back, the count with it
    row = await conn.fetchrow(
        f"INSERT INTO alerts (id, tenant, type, user_id, currency, threshold, period, meter_id, created_at)"
        f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {_ALERT}",
        alert_id, tenant, a.type, a.user, a.currency, a.threshold, a.period, a.meter_id, a.now,
    )
    return alert_row(row)


async def _delete_alert(conn: asyncpg.Connection, tenant: int, alert_id: str) -> None:
    if await conn.fetchval("DELETE FROM alerts WHERE tenant = $1 AND id = $2 RETURNING id", tenant, alert_id) is None:
        raise Missing("alert")
    await conn.execute("DELETE FROM alert_marks WHERE alert_id = $1", alert_id)
    await conn.execute("UPDATE tenants SET alerts = alerts - 1 WHERE id = $1", tenant)


async def _set_spend_cap(
    conn: asyncpg.Connection, tenant: int, user: str, currency: str, period: str, cap: int, now: int
) -> SpendCapRow:
    """A replaced cap keeps its reached_period: spend_cap.reached stays once per period.
    `xmax = 0` tells an inserted row from an updated one (the count moves only for the first)."""
    inserted: Any = await conn.fetchval(
        "INSERT INTO spend_caps (tenant, user_id, currency, period, cap, created_at) VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (tenant, user_id, currency, period) DO UPDATE SET cap = excluded.cap RETURNING (xmax = 0)",
        tenant, user, currency, period, cap, now,
    )
    if inserted:
        await conn.execute("UPDATE tenants SET spend_caps = spend_caps + 1 WHERE id = $1", tenant)
    spent = await used(conn, tenant, user, currency, period, now, await held_now(conn, tenant, user, currency, now))
    return {"user": user, "currency": currency, "period": period, "limit": cap, "used": spent}


async def _delete_spend_cap(conn: asyncpg.Connection, tenant: int, user: str, currency: str, period: str) -> None:
    if await conn.fetchval(
        "DELETE FROM spend_caps WHERE tenant = $1 AND user_id = $2 AND currency = $3 AND period = $4 RETURNING cap",
        tenant, user, currency, period,
    ) is None:
        raise Missing("spend cap")
    await conn.execute("UPDATE tenants SET spend_caps = spend_caps - 1 WHERE id = $1", tenant)

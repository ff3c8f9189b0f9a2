"""Alerts and spend caps on SQLite: their rows, and the tenant's counts of them (tenants.alerts,
tenants.spend_caps) kept in the same transaction as each create and delete, so that a write of
a tenant without any reads one row and nothing more (outbox.watch). What a write does with them
is watch.py's job."""
from __future__ import annotations

import json
import sqlite3

from ..base import INT64_MAX, AlertRow, Idempotency, NewAlert, SpendCapRow
from ..ids import new_id
from ..periods import period_bounds
from ..refusals import Missing, QuotaReached
from ..rows import ALERT_COLUMNS as _ALERT, alert_row
from .connection import SqliteBase
from .sums import HELD, HELD_NOW, sum_overflowed

USED = (
    "SELECT COALESCE(SUM(amount), 0) FROM ledger INDEXED BY ledger_by_type WHERE tenant = ? AND user_id = ?"
    " AND type = 'withdraw' AND created_at >= ? AND created_at < ? AND currency = ? AND tags = 'api-usage'"
)
"""The usage withdrawals (recordUsage's and the captures of holds, both tagged api-usage) of one
account over [start, end); parameters (tenant, user, start, end, currency). A range of the
ledger_by_type index (tenant, user_id, type, created_at, seq): its cost is the user's
withdrawals in the period, never the user's whole history."""


# A user's caps, each with its period's usage and the holds pending now, in one statement (one
# snapshot): two index ranges per cap.
_CAPS = (
    "SELECT s.currency, s.period, s.cap,"
    " (SELECT COALESCE(SUM(amount), 0) FROM ledger INDEXED BY ledger_by_type WHERE tenant = :tenant AND user_id = :user"
    "  AND type = 'withdraw' AND created_at >= CASE s.period WHEN 'day' THEN :day ELSE :month END"
    "  AND created_at < CASE s.period WHEN 'day' THEN :day_end ELSE :month_end END"
    "  AND currency = s.currency AND tags = 'api-usage'),"
    f" ({HELD.format(tenant=':tenant', user=':user', currency='s.currency', now=':now')})"
    " FROM spend_caps s WHERE s.tenant = :tenant AND s.user_id = :user"
    " ORDER BY s.currency, CASE s.period WHEN 'day' THEN 0 ELSE 1 END"
)
_CAPS_EXACT = _CAPS.replace(
    "(SELECT COALESCE(SUM(amount), 0) FROM", "(SELECT json_array(COALESCE(SUM(amount >> 32), 0), COALESCE(SUM(amount & 4294967295), 0)) FROM", 1
)
"""_CAPS with each usage sum as its high and low 32 bits' sums (neither can overflow)."""


_SINCE = (
    "SELECT COALESCE(SUM(CASE WHEN currency = ?1 AND type = 'withdraw' AND created_at >= ?2 AND created_at < ?3"
    " THEN amount END), 0) s, MAX(seq) m FROM ledger WHERE tenant = ?4 AND user_id = ?5 AND tags = 'api-usage' AND seq > ?6"
)
USED_SINCE = (
    f"SELECT SUM(s), MAX(m) FROM ({_SINCE} AND evented = 0 UNION ALL {_SINCE} AND evented = 1)"
)
"""The usage withdrawals of one account in [start, end) written after ledger seq ?6, and the
largest seq of the user's usage rows written since: a range of each half of the user's usage
rows, the ledger_usage index (tenant, user_id, seq) for the rows without a usage.recorded event
and ledger_usage_evented for those with one (migration 12), as long as the rows written since the
last look. Parameters (currency, start, end, tenant, user, seq)."""
_LAST = "SELECT MAX(seq) m FROM ledger WHERE tenant = ?1 AND user_id = ?2 AND tags = 'api-usage'"
LAST_USAGE = f"SELECT COALESCE(MAX(m), 0) FROM ({_LAST} AND evented = 0 UNION ALL {_LAST} AND evented = 1)"
"""The user's last usage row: one step of each half (ledger_usage, ledger_usage_evented)."""
_TOTAL = "tenant = ? AND user_id = ? AND currency = ? AND period = ?"


def period_usage(conn: sqlite3.Connection, tenant: int, user: str, currency: str, period: str, now: int) -> int:
    """The usage withdrawals of the account in the period of kind `period` that `now` is in,
    from its running total (usage_totals, migration 7), brought up to date in this write
    transaction: the rows written since it was last brought up to date are added, and only in
    a period's first look is the period summed whole.

    Why a total keyed by seq is exact: ledger rows are never deleted and their amounts never
    change, and while this runs no usage row of the account can be uncommitted with a smaller
    seq than a committed one (SQLite writes one transaction at a time; PostgreSQL's version
    holds the account's lock, under which alone its usage rows are written), so every usage
    row of the account with a seq at or below through_seq was counted, and every later one has
    a larger seq. (Rows of the user's other currencies move through_seq along too: they are
    never this account's.)"""
    start, end = period_bounds(period, now)
    key = (tenant, user, currency, period)
    row = conn.execute(f"SELECT period_start, used, through_seq FROM usage_totals WHERE {_TOTAL}", key).fetchone()
    if row is not None and row[0] == start:
        try:
            added, last = conn.execute(USED_SINCE, (currency, start, end, tenant, user, row[2])).fetchone()
        except sqlite3.OperationalError as exc:  # SUM left int64: usage that large passes every threshold
            if not sum_overflowed(exc):
                raise
            added, (last,) = INT64_MAX, conn.execute(LAST_USAGE, (tenant, user)).fetchone()
        if last is None:
            return int(row[1])
        total = min(int(row[1]) + int(added), INT64_MAX)  # saturated, as the column is int64
        conn.execute(f"UPDATE usage_totals SET used = ?, through_seq = ? WHERE {_TOTAL}", (total, last, *key))
        return total
    (last,), = conn.execute(LAST_USAGE, (tenant, user)).fetchall()
    try:
        (total,), = conn.execute(USED, (tenant, user, start, end, currency)).fetchall()
    except sqlite3.OperationalError as exc:  # as above
        if not sum_overflowed(exc):
            raise
        total = INT64_MAX
    conn.execute(
        "INSERT INTO usage_totals (tenant, user_id, currency, period, period_start, used, through_seq) VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (tenant, user_id, currency, period) DO UPDATE SET period_start = excluded.period_start,"
        " used = excluded.used, through_seq = excluded.through_seq",
        (*key, start, total, last),
    )
    return int(total)


def used(conn: sqlite3.Connection, tenant: int, user: str, currency: str, period: str, now: int, held: int) -> int:
    """What a cap of `period` counts at `now`: the period's usage withdrawals plus `held`,
    saturated at int64 as getSpendCaps' sum is (both past every cap; an answer never leaves int64)."""
    return min(period_usage(conn, tenant, user, currency, period, now) + held, INT64_MAX)


def held_now(conn: sqlite3.Connection, tenant: int, user: str, currency: str, now: int) -> int:
    (held,), = conn.execute(HELD_NOW, (tenant, user, currency, now)).fetchall()
    return int(held)


class AlertQueries(SqliteBase):
    async def create_alert(
        self, tenant: int, alert: NewAlert, idempotency: Idempotency | None = None, *, quota: int | None = None
    ) -> AlertRow:
        return await self._write(tenant, idempotency, alert.now, _create_alert, tenant, new_id("alr"), alert, quota)

    async def list_alerts(self, tenant: int, user: str | None) -> list[AlertRow]:
        if user is None:
            rows = await self._read(f"SELECT {_ALERT} FROM alerts WHERE tenant = ? ORDER BY seq", (tenant,))
        else:
            rows = await self._read(
                f"SELECT {_ALERT} FROM alerts WHERE tenant = ? AND (user_id = ? OR user_id IS NULL) ORDER BY seq", (tenant, user)
            )
        return [alert_row(r) for r in rows]

    async def delete_alert(self, tenant: int, alert_id: str, now: int, idempotency: Idempotency | None = None) -> None:
        await self._write(tenant, idempotency, now, _delete_alert, tenant, alert_id)

    async def set_spend_cap(
        self, tenant: int, user: str, currency: str, period: str, cap: int, now: int, idempotency: Idempotency | None = None
    ) -> SpendCapRow:
        return await self._write(tenant, idempotency, now, _set_spend_cap, tenant, user, currency, period, cap, now)

    async def spend_caps(self, tenant: int, user: str, now: int) -> list[SpendCapRow]:
        (day, day_end), (month, month_end) = period_bounds("day", now), period_bounds("month", now)
        params = {"tenant": tenant, "user": user, "now": now, "day": day, "day_end": day_end, "month": month, "month_end": month_end}
        try:
            rows = await self._read(_CAPS, params)
        except sqlite3.OperationalError as exc:  # a period's usage past int64: summed exactly in two halves
            if not sum_overflowed(exc):
                raise
            rows = [(c, p, cap, (lambda h, lo: (h << 32) + lo)(*json.loads(halves)), held)
                    for c, p, cap, halves, held in await self._read(_CAPS_EXACT, params)]
        return [{"user": user, "currency": c, "period": p, "limit": cap, "used": min(int(spent) + int(held), INT64_MAX)}
                for c, p, cap, spent, held in rows]

    async def delete_spend_cap(
        self, tenant: int, user: str, currency: str, period: str, now: int, idempotency: Idempotency | None = None
    ) -> None:
        await self._write(tenant, idempotency, now, _delete_spend_cap, tenant, user, currency, period)


def _create_alert(conn: sqlite3.Connection, tenant: int, alert_id: str, a: NewAlert, quota: int | None) -> AlertRow:
    """Counted, checked and inserted in one job on the writer: two creates at the bound cannot
    both see room for one more, and tenants.alerts never drifts from the table."""
    if a.meter_id is not None and conn.execute("SELECT 1 FROM meters WHERE tenant = ? AND id = ?", (tenant, a.meter_id)).fetchone() is None:
        raise Missing("meter")
    held = conn.execute("SELECT alerts FROM tenants WHERE id = ?", (tenant,)).fetchone()
    if quota is not None and held is not None and held[0] >= quota:
        raise QuotaReached("alert", quota)
    row = conn.execute(
        f"INSERT INTO alerts (id, tenant, type, user_id, currency, threshold, period, meter_id, created_at)"
        f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {_ALERT}",
        (alert_id, tenant, a.type, a.user, a.currency, a.threshold, a.period, a.meter_id, a.now),
    ).fetchone()
    conn.execute("UPDATE tenants SET alerts = alerts + 1 WHERE id = ?", (tenant,))
    return alert_row(row)


def _delete_alert(conn: sqlite3.Connection, tenant: int, alert_id: str) -> None:
    if conn.execute("DELETE FROM alerts WHERE tenant = ? AND id = ? RETURNING id", (tenant, alert_id)).fetchone() is None:
        raise Missing("alert")
    conn.execute("DELETE FROM alert_marks WHERE alert_id = ?", (alert_id,))
    conn.execute("UPDATE tenants SET alerts = alerts - 1 WHERE id = ?", (tenant,))


def _set_spend_cap(
    conn: sqlite3.Connection, tenant: int, user: str, currency: str, period: str, cap: int, now: int
) -> SpendCapRow:
    """A replaced cap keeps its reached_period: spend_cap.reached stays once per period."""
    existed = conn.execute(
        "SELECT 1 FROM spend_caps WHERE tenant = ? AND user_id = ? AND currency = ? AND period = ?", (tenant, user, currency, period)
    ).fetchone()
    conn.execute(
        "INSERT INTO spend_caps (tenant, user_id, currency, period, cap, created_at) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (tenant, user_id, currency, period) DO UPDATE SET cap = excluded.cap",
        (tenant, user, currency, period, cap, now),
    )
    if existed is None:
        conn.execute("UPDATE tenants SET spend_caps = spend_caps + 1 WHERE id = ?", (tenant,))
    spent = used(conn, tenant, user, currency, period, now, held_now(conn, tenant, user, currency, now))
    return {"user": user, "currency": currency, "period": period, "limit": cap, "used": spent}


def _delete_spend_cap(conn: sqlite3.Connection, tenant: int, user: str, currency: str, period: str) -> None:
    if conn.execute(
        "DELETE FROM spend_caps WHERE tenant = ? AND user_id = ? AND currency = ? AND period = ? RETURNING cap",
        (tenant, user, currency, period),
    ).fetchone() is None:
        raise Missing("spend cap")
    conn.execute("UPDATE tenants SET spend_caps = spend_caps - 1 WHERE id = ?", (tenant,))

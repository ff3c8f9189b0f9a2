"""Alerts and spend caps on SQLite, evaluated inside the write transactions that can change what
they watch (called by the write paths when outbox.Watch says the tenant has any).

Once per crossing: an alert triggers for a user by inserting its alert_marks row (primary key
(alert, user, period_start)); only the transaction whose insert made the row records
`alert.triggered`. It re-arms by losing the row: balance_below's is deleted by the first write
that leaves `available` at or above the threshold; usage_above's is keyed by the period's start,
so a new period has none (the previous period's is deleted when the next one triggers).
SQLite runs one write transaction at a time (the writer, and the file's lock between
processes), so the judgement and the mark are never overtaken.

Spend caps: `spend_cap.reached` is recorded by the write that takes the period's `used` to the
cap or past it, once per period (spend_caps.reached_period, and the event's subject)."""
from __future__ import annotations

import sqlite3
from typing import Any, Sequence

from ..refusals import SumOutOfRange
from ..watching import Watched, judge_meter_alerts, meter_judgements, run_now
from .. import watching
from .alerts import held_now, period_usage
from .outbox import emit
from .sums import AVAILABLE, sum_overflowed

INT64_MAX = 2**63 - 1


def after_account_write(conn: sqlite3.Connection, tenant: int, user: str, currency: str, now: int, w: Watched) -> None:
    """../watching.py after_account_write, in this write's transaction."""
    run_now(watching.after_account_write(_Sql(conn), tenant, user, currency, now, w))


def check_spend_cap(conn: sqlite3.Connection, tenant: int, user: str, currency: str, amount: int, now: int) -> None:
    """../watching.py check_spend_cap (refusals.CapReached), in the hold's transaction; a user
    without a cap in the currency costs this one read."""
    caps = conn.execute(
        "SELECT period, cap FROM spend_caps WHERE tenant = ? AND user_id = ? AND currency = ?"
        " ORDER BY CASE period WHEN 'day' THEN 0 ELSE 1 END",
        (tenant, user, currency),
    ).fetchall()
    if caps:
        run_now(watching.check_spend_cap(_Sql(conn), tenant, user, currency, amount, now, caps))


def after_meter_events(conn: sqlite3.Connection, tenant: int, touched: set[tuple[str, str]], now: int, w: Watched) -> None:
    """After meter events were recorded for these (meter id, user) pairs, in their transaction:
    trigger the usage_above alerts counted in a meter's units (the meter's aggregation over the
    user's events whose timestamp is in the current period). One query for the alerts of the
    touched meters, then one aggregate (an index range of meter_events_summary) per alert and
    user concerned."""
    if not touched:
        return
    meters = sorted({m for m, _ in touched})
    alerts = conn.execute(
        f"SELECT a.id, a.user_id, a.threshold, a.period, a.meter_id, m.aggregation FROM alerts a"
        f" JOIN meters m ON m.tenant = a.tenant AND m.id = a.meter_id"
        f" WHERE a.tenant = ? AND a.meter_id IN ({', '.join('?' * len(meters))}) ORDER BY a.seq",
        (tenant, *meters),
    ).fetchall()
    run_now(judge_meter_alerts(_Sql(conn), tenant, meter_judgements(alerts, touched), now))


class _Sql:
    """SQLite's statements for ../watching.py on the writer's connection: none of them waits,
    so run_now runs a check to its end in one step."""

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    async def account_alerts(self, tenant: int, user: str, currency: str) -> Sequence[Sequence[Any]]:
        return self.conn.execute(
            "SELECT id, type, threshold, period FROM alerts WHERE tenant = ? AND currency = ?"
            " AND (user_id = ? OR user_id IS NULL) AND meter_id IS NULL ORDER BY seq",
            (tenant, currency, user),
        ).fetchall()

    async def available(self, tenant: int, user: str, currency: str, now: int) -> int:
        (available,), = self.conn.execute(AVAILABLE, (tenant, user, currency, now)).fetchall()
        return int(available)

    async def period_usage(self, tenant: int, user: str, currency: str, period: str, now: int) -> int:
        return period_usage(self.conn, tenant, user, currency, period, now)

    async def held(self, tenant: int, user: str, currency: str, now: int) -> int:
        return held_now(self.conn, tenant, user, currency, now)

    async def caps(self, tenant: int, user: str, currency: str) -> Sequence[Sequence[Any]]:
        return self.conn.execute(
            "SELECT period, cap, reached_period FROM spend_caps WHERE tenant = ? AND user_id = ? AND currency = ?",
            (tenant, user, currency),
        ).fetchall()

    async def reach(self, tenant: int, user: str, currency: str, period: str, start: int) -> bool:
        return bool(self.conn.execute(
            "UPDATE spend_caps SET reached_period = ? WHERE tenant = ? AND user_id = ? AND currency = ? AND period = ?"
            " AND (reached_period IS NULL OR reached_period <> ?)",
            (start, tenant, user, currency, period, start),
        ).rowcount)

    async def aggregate(self, tenant: int, meter_id: str, aggregation: str, user: str, start: int, end: int) -> int:
        return _aggregate(self.conn, tenant, meter_id, aggregation, user, start, end)

    async def mark(self, alert_id: str, user: str, period_start: int, now: int) -> bool:
        return bool(self.conn.execute(
            "INSERT INTO alert_marks (alert_id, user_id, period_start, at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (alert_id, user, period_start, now),
        ).rowcount)

    async def unmark_before(self, alert_id: str, user: str, period_start: int) -> None:
        self.conn.execute("DELETE FROM alert_marks WHERE alert_id = ? AND user_id = ? AND period_start < ?", (alert_id, user, period_start))

    async def rearm(self, alert_id: str, user: str) -> None:
        self.conn.execute("DELETE FROM alert_marks WHERE alert_id = ? AND user_id = ? AND period_start = 0", (alert_id, user))

    async def emit(self, tenant: int, type: str, data: dict[str, Any], now: int, subject: str | None) -> None:
        emit(self.conn, tenant, type, data, now, subject=subject)


def _aggregate(conn: sqlite3.Connection, tenant: int, meter_id: str, aggregation: str, user: str, start: int, end: int) -> int:
    # Imported here: metering.py imports this module to call after_meter_events.
    from .metering import AGGREGATES, METER, _EXACT_SUM, _exact_sum

    where = f"tenant = :tenant AND meter = {METER} AND user_id = :user AND ts >= :start AND ts < :end"
    params: dict[str, Any] = {"tenant": tenant, "meter": meter_id, "user": user, "start": start, "end": end}
    try:
        (value,), = conn.execute(f"SELECT {AGGREGATES[aggregation].format(where=where)} FROM meter_events WHERE {where}", params).fetchall()
        return int(value)
    except sqlite3.OperationalError as exc:  # only a sum overflows: see metering.aggregate_events
        if not sum_overflowed(exc):
            raise
    (high, low), = conn.execute(f"SELECT {_EXACT_SUM} FROM meter_events WHERE {where}", params).fetchall()
    try:
        return _exact_sum(high, low)
    except SumOutOfRange:
        return INT64_MAX if high > 0 else -INT64_MAX - 1  # past any threshold either way


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
from typing import Any

from ..periods import period_bounds
from ..refusals import CapReached, SumOutOfRange
from .alerts import held_now, period_usage, used
from .sums import AVAILABLE
from .outbox import Watch, emit

TRIGGERED = "alert.triggered"
REACHED = "spend_cap.reached"
INT64_MAX = 2**63 - 1


def after_account_write(conn: sqlite3.Connection, tenant: int, user: str, currency: str, now: int, w: Watch) -> None:
    """After a write changed the account's balance, holds or usage (a ledger row, a hold placed,
    captured, released or expired), in its transaction: trigger or re-arm the balance_below and
    usage_above (cents) alerts of the user, record spend_cap.reached when the period's use
    reached a cap. Reads the alerts of the tenant in this currency (bounded by the alerts quota),
    then at most one account read and one ledger range per period kind."""
    usage: dict[str, int] = {}

    def usage_of(period: str) -> int:
        if period not in usage:
            usage[period] = period_usage(conn, tenant, user, currency, period, now)
        return usage[period]

    if w.alerts:
        alerts = conn.execute(
            "SELECT id, type, threshold, period FROM alerts WHERE tenant = ? AND currency = ?"
            " AND (user_id = ? OR user_id IS NULL) AND meter_id IS NULL ORDER BY seq",
            (tenant, currency, user),
        ).fetchall()
        available: int | None = None
        for alert_id, type, threshold, period in alerts:
            if type == "balance_below":
                if available is None:
                    (available,), = conn.execute(AVAILABLE, (tenant, user, currency, now)).fetchall()
                    available = max(int(available), 0)  # as getBalance answers it
                judge(conn, tenant, alert_id, user, 0, available < threshold, available, threshold, None, now)
            else:
                start, _ = period_bounds(period, now)
                value = usage_of(period)
                judge(conn, tenant, alert_id, user, start, value > threshold, value, threshold, period, now)
    if w.spend_caps:
        caps = conn.execute(
            "SELECT period, cap, reached_period FROM spend_caps WHERE tenant = ? AND user_id = ? AND currency = ?",
            (tenant, user, currency),
        ).fetchall()
        held_: int | None = None
        for period, cap, reached in caps:
            start, _ = period_bounds(period, now)
            if reached == start:
                continue  # announced already this period
            if held_ is None:
                held_ = held_now(conn, tenant, user, currency, now)
            spent = usage_of(period) + held_
            if spent >= cap and conn.execute(
                "UPDATE spend_caps SET reached_period = ? WHERE tenant = ? AND user_id = ? AND currency = ? AND period = ?"
                " AND (reached_period IS NULL OR reached_period <> ?)",
                (start, tenant, user, currency, period, start),
            ).rowcount:
                emit(conn, tenant, REACHED, {"user": user, "currency": currency, "period": period, "limit": cap, "used": spent},
                     now, subject=f"{start}:{period}:{currency}:{user}")


def check_spend_cap(conn: sqlite3.Connection, tenant: int, user: str, currency: str, amount: int, now: int) -> None:
    """Before a hold of `amount` is placed, in its transaction: refusals.CapReached when it
    would take a cap's period past its limit (`used` + amount > limit; reaching it exactly is
    allowed). The day's cap is judged before the month's."""
    caps = conn.execute(
        "SELECT period, cap FROM spend_caps WHERE tenant = ? AND user_id = ? AND currency = ?"
        " ORDER BY CASE period WHEN 'day' THEN 0 ELSE 1 END",
        (tenant, user, currency),
    ).fetchall()
    if not caps:
        return
    held = held_now(conn, tenant, user, currency, now)
    for period, cap in caps:
        spent = used(conn, tenant, user, currency, period, now, held)
        if spent + amount > cap:
            raise CapReached(spent, cap, currency, period)


def after_meter_events(conn: sqlite3.Connection, tenant: int, touched: set[tuple[str, str]], now: int, w: Watch) -> None:
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
    for alert_id, alert_user, threshold, period, meter_id, aggregation in alerts:
        start, end = period_bounds(period, now)
        for user in sorted(u for m, u in touched if m == meter_id and (alert_user is None or u == alert_user)):
            value = _aggregate(conn, tenant, meter_id, aggregation, user, start, end)
            judge(conn, tenant, alert_id, user, start, value > threshold, value, threshold, period, now)


def _aggregate(conn: sqlite3.Connection, tenant: int, meter_id: str, aggregation: str, user: str, start: int, end: int) -> int:
    # Imported here: metering.py imports this module to call after_meter_events.
    from .metering import AGGREGATES, _EXACT_SUM, _exact_sum

    where = "tenant = :tenant AND meter_id = :meter AND user_id = :user AND ts >= :start AND ts < :end"
    params: dict[str, Any] = {"tenant": tenant, "meter": meter_id, "user": user, "start": start, "end": end}
    try:
        (value,), = conn.execute(f"SELECT {AGGREGATES[aggregation].format(where=where)} FROM meter_events WHERE {where}", params).fetchall()
        return int(value)
    except sqlite3.OperationalError as exc:  # only a sum overflows: see metering.aggregate_events
        if "overflow" not in str(exc):
            raise
    (high, low), = conn.execute(f"SELECT {_EXACT_SUM} FROM meter_events WHERE {where}", params).fetchall()
    try:
        return _exact_sum(high, low)
    except SumOutOfRange:
        return INT64_MAX if high > 0 else -INT64_MAX - 1  # past any threshold either way


def judge(
    conn: sqlite3.Connection, tenant: int, alert_id: str, user: str, period_start: int, met: bool, value: int,
    threshold: int, period: str | None, now: int,
) -> None:
    """Trigger (once: the mark's insert) when the condition is met; re-arm a balance_below
    alert (period_start 0) when it is not."""
    if met:
        if conn.execute(
            "INSERT INTO alert_marks (alert_id, user_id, period_start, at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (alert_id, user, period_start, now),
        ).rowcount:
            if period_start:  # the previous periods' marks have done their work
                conn.execute("DELETE FROM alert_marks WHERE alert_id = ? AND user_id = ? AND period_start < ?", (alert_id, user, period_start))
            data: dict[str, Any] = {"alertId": alert_id, "userId": user, "value": value, "threshold": threshold}
            if period is not None:
                data["period"] = period
            emit(conn, tenant, TRIGGERED, data, now)
    elif period is None:
        conn.execute("DELETE FROM alert_marks WHERE alert_id = ? AND user_id = ? AND period_start = 0", (alert_id, user))

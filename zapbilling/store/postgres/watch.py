"""Alerts and spend caps on PostgreSQL (as ../sqlite/watch.py, whose docstring tells the rules),
inside the write transactions.

Concurrency. Everything a cents alert or a spend cap counts (the balance, the holds, the usage
withdrawals) changes only under the account's lock (connection.py rule 1), and the write paths
call after_account_write and check_spend_cap holding it: two writes of one account judge one
after the other, each seeing the previous one committed (READ COMMITTED takes a fresh snapshot
per statement), so a cap is never passed by two holds together and an alert's condition is
never missed nor judged twice. Meter events take no account lock of their own, so
after_meter_events takes the lock of (user, the alert's currency) for each user it judges, in
order, before aggregating: two batches of one user then judge in turn, the second seeing the
first's events. The mark's primary key keeps a trigger once in every case: a concurrent
duplicate insert waits for the first one's commit and then inserts nothing."""
from __future__ import annotations

from typing import Any

import asyncpg

from ..periods import period_bounds
from ..refusals import CapReached
from .alerts import held_now, period_usage, used
from .sums import AVAILABLE
from .connection import lock_account
from .outbox import Watch, emit

TRIGGERED = "alert.triggered"
REACHED = "spend_cap.reached"
_INT64 = (-(2**63), 2**63 - 1)


async def after_account_write(
    conn: asyncpg.Connection, tenant: int, user: str, currency: str, now: int, w: Watch, locked: bool = True
) -> None:
    """As sqlite/watch.py, under the account's lock (the caller's). `locked` False: the caller
    holds no lock of the account (the hold expiry sweep, which only ever raises `available`
    and lowers `used`): the usage is read without moving the running total (period_usage), and
    the marks and reached_period are still changed by conditional statements only."""
    usage: dict[str, int] = {}

    async def usage_of(period: str) -> int:
        if period not in usage:
            usage[period] = await period_usage(conn, tenant, user, currency, period, now, locked)
        return usage[period]

    if w.alerts:
        alerts = await conn.fetch(
            "SELECT id, type, threshold, period FROM alerts WHERE tenant = $1 AND currency = $2"
            " AND (user_id = $3 OR user_id IS NULL) AND meter_id IS NULL ORDER BY seq",
            tenant, currency, user,
        )
        available: int | None = None
        for alert_id, type, threshold, period in alerts:
            if type == "balance_below":
                if available is None:
                    available = max(int(await conn.fetchval(AVAILABLE, tenant, user, currency, now)), 0)  # as getBalance answers it
                await judge(conn, tenant, alert_id, user, 0, available < threshold, available, threshold, None, now)
            else:
                start, _ = period_bounds(period, now)
                value = await usage_of(period)
                await judge(conn, tenant, alert_id, user, start, value > threshold, value, threshold, period, now)
    if w.spend_caps:
        caps = await conn.fetch(
            "SELECT period, cap, reached_period FROM spend_caps WHERE tenant = $1 AND user_id = $2 AND currency = $3",
            tenant, user, currency,
        )
        held_: int | None = None
        for period, cap, reached in caps:
            start, _ = period_bounds(period, now)
            if reached == start:
                continue  # announced already this period
            if held_ is None:
                held_ = await held_now(conn, tenant, user, currency, now)
            spent = await usage_of(period) + held_
            if spent >= cap and await conn.fetchval(
                "UPDATE spend_caps SET reached_period = $1 WHERE tenant = $2 AND user_id = $3 AND currency = $4 AND period = $5"
                " AND reached_period IS DISTINCT FROM $1 RETURNING 1",
                start, tenant, user, currency, period,
            ):
                await emit(conn, tenant, REACHED, {"user": user, "currency": currency, "period": period, "limit": cap, "used": spent},
                           now, subject=f"{start}:{period}:{currency}:{user}")


async def check_spend_cap(conn: asyncpg.Connection, tenant: int, user: str, currency: str, amount: int, now: int) -> None:
    """As sqlite/watch.py, under the account's lock (the caller's)."""
    caps = await conn.fetch(
        "SELECT period, cap FROM spend_caps WHERE tenant = $1 AND user_id = $2 AND currency = $3"
        " ORDER BY CASE period WHEN 'day' THEN 0 ELSE 1 END",
        tenant, user, currency,
    )
    if not caps:
        return
    held = await held_now(conn, tenant, user, currency, now)
    for period, cap in caps:
        spent = await used(conn, tenant, user, currency, period, now, held)
        if spent + amount > cap:
            raise CapReached(spent, cap, currency, period)


async def after_meter_events(conn: asyncpg.Connection, tenant: int, touched: set[tuple[str, str]], now: int, w: Watch) -> None:
    """As sqlite/watch.py; each judged user's account lock (in the alert's currency) is taken
    first, in (currency, user) order."""
    if not touched:
        return
    from .metering import AGGREGATES  # here: metering.py imports this module to call after_meter_events

    meters = sorted({m for m, _ in touched})
    alerts = await conn.fetch(
        "SELECT a.id, a.user_id, a.threshold, a.period, a.meter_id, m.aggregation, a.currency FROM alerts a"
        " JOIN meters m ON m.tenant = a.tenant AND m.id = a.meter_id"
        " WHERE a.tenant = $1 AND a.meter_id = ANY($2::text[]) ORDER BY a.seq",
        tenant, meters,
    )
    judged = [
        (alert, user) for alert in alerts
        for user in sorted(u for m, u in touched if m == alert["meter_id"] and (alert["user_id"] is None or u == alert["user_id"]))
    ]
    for currency, user in sorted({(alert["currency"], user) for alert, user in judged}):
        await lock_account(conn, tenant, user, currency)
    for (alert_id, _, threshold, period, meter_id, aggregation, _), user in judged:
        start, end = period_bounds(period, now)
        where = "tenant = $1 AND meter_id = $2 AND user_id = $3 AND ts >= $4 AND ts < $5"
        raw = await conn.fetchval(
            f"SELECT {AGGREGATES[aggregation].format(where=where)} FROM meter_events WHERE {where}", tenant, meter_id, user, start, end
        )
        value = min(max(int(raw), _INT64[0]), _INT64[1])  # a NUMERIC sum past int64 is past any threshold either way
        await judge(conn, tenant, alert_id, user, start, value > threshold, value, threshold, period, now)


async def judge(
    conn: asyncpg.Connection, tenant: int, alert_id: str, user: str, period_start: int, met: bool, value: int,
    threshold: int, period: str | None, now: int,
) -> None:
    """As sqlite/watch.py's judge."""
    if met:
        if await conn.fetchval(
            "INSERT INTO alert_marks (alert_id, user_id, period_start, at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING 1",
            alert_id, user, period_start, now,
        ):
            if period_start:
                await conn.execute(
                    "DELETE FROM alert_marks WHERE alert_id = $1 AND user_id = $2 AND period_start < $3", alert_id, user, period_start
                )
            data: dict[str, Any] = {"alertId": alert_id, "userId": user, "value": value, "threshold": threshold}
            if period is not None:
                data["period"] = period
            await emit(conn, tenant, TRIGGERED, data, now)
    elif period is None:
        await conn.execute("DELETE FROM alert_marks WHERE alert_id = $1 AND user_id = $2 AND period_start = 0", alert_id, user)

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

from typing import Any, Sequence

import asyncpg

from ..watching import Watched, judge_meter_alerts, meter_judgements
from .. import watching
from .alerts import held_now, period_usage
from .connection import lock_account
from .outbox import emit
from .sums import AVAILABLE

_INT64 = (-(2**63), 2**63 - 1)


async def after_account_write(
    conn: asyncpg.Connection, tenant: int, user: str, currency: str, now: int, w: Watched, locked: bool = True
) -> None:
    """../watching.py after_account_write, under the account's lock (the caller's). `locked`
    False: the caller holds no lock of the account (the hold expiry sweep, which only ever
    raises `available` and lowers `used`): the usage is read without moving the running total
    (period_usage), and the marks and reached_period are still changed by conditional
    statements only."""
    await watching.after_account_write(_Sql(conn, locked), tenant, user, currency, now, w)


async def check_spend_cap(conn: asyncpg.Connection, tenant: int, user: str, currency: str, amount: int, now: int) -> None:
    """../watching.py check_spend_cap, under the account's lock (the caller's)."""
    caps = await conn.fetch(
        "SELECT period, cap FROM spend_caps WHERE tenant = $1 AND user_id = $2 AND currency = $3"
        " ORDER BY CASE period WHEN 'day' THEN 0 ELSE 1 END",
        tenant, user, currency,
    )
    if caps:
        await watching.check_spend_cap(_Sql(conn, True), tenant, user, currency, amount, now, caps)


async def after_meter_events(conn: asyncpg.Connection, tenant: int, touched: set[tuple[str, str]], now: int, w: Watched) -> None:
    """As sqlite/watch.py; each judged user's account lock (in the alert's currency) is taken
    first, in (currency, user) order."""
    if not touched:
        return
    meters = sorted({m for m, _ in touched})
    alerts = await conn.fetch(
        "SELECT a.id, a.user_id, a.threshold, a.period, a.meter_id, m.aggregation, a.currency FROM alerts a"
        " JOIN meters m ON m.tenant = a.tenant AND m.id = a.meter_id"
        " WHERE a.tenant = $1 AND a.meter_id = ANY($2::text[]) ORDER BY a.seq",
        tenant, meters,
    )
    judged = meter_judgements(alerts, touched)
    for currency, user in sorted({(alert["currency"], user) for alert, user in judged}):
        await lock_account(conn, tenant, user, currency)
    await judge_meter_alerts(_Sql(conn, True), tenant, judged, now)


class _Sql:
    """PostgreSQL's statements for ../watching.py on the write's connection; `locked`: whether
    the caller holds the account's lock (period_usage moves the running total only then)."""

    __slots__ = ("conn", "locked")

    def __init__(self, conn: asyncpg.Connection, locked: bool):
        self.conn = conn
        self.locked = locked

    async def account_alerts(self, tenant: int, user: str, currency: str) -> Sequence[Sequence[Any]]:
        return await self.conn.fetch(  # type: ignore[no-any-return]
            "SELECT id, type, threshold, period FROM alerts WHERE tenant = $1 AND currency = $2"
            " AND (user_id = $3 OR user_id IS NULL) AND meter_id IS NULL ORDER BY seq",
            tenant, currency, user,
        )

    async def available(self, tenant: int, user: str, currency: str, now: int) -> int:
        return int(await self.conn.fetchval(AVAILABLE, tenant, user, currency, now))

    async def period_usage(self, tenant: int, user: str, currency: str, period: str, now: int) -> int:
        return await period_usage(self.conn, tenant, user, currency, period, now, self.locked)

    async def held(self, tenant: int, user: str, currency: str, now: int) -> int:
        return await held_now(self.conn, tenant, user, currency, now)

    async def caps(self, tenant: int, user: str, currency: str) -> Sequence[Sequence[Any]]:
        return await self.conn.fetch(  # type: ignore[no-any-return]
            "SELECT period, cap, reached_period FROM spend_caps WHERE tenant = $1 AND user_id = $2 AND currency = $3",
            tenant, user, currency,
        )

    async def reach(self, tenant: int, user: str, currency: str, period: str, start: int) -> bool:
        return bool(await self.conn.fetchval(
            "UPDATE spend_caps SET reached_period = $1 WHERE tenant = $2 AND user_id = $3 AND currency = $4 AND period = $5"
            " AND reached_period IS DISTINCT FROM $1 RETURNING 1",
            start, tenant, user, currency, period,
        ))

    async def aggregate(self, tenant: int, meter_id: str, aggregation: str, user: str, start: int, end: int) -> int:
        from .metering import AGGREGATES, METER  # here: metering.py imports this module to call after_meter_events

        where = f"tenant = $1 AND meter = {METER} AND user_id = $3 AND ts >= $4 AND ts < $5"
        raw = await self.conn.fetchval(
            f"SELECT {AGGREGATES[aggregation].format(where=where)} FROM meter_events WHERE {where}", tenant, meter_id, user, start, end
        )
        return min(max(int(raw), _INT64[0]), _INT64[1])  # a NUMERIC sum past int64 is past any threshold either way

    async def mark(self, alert_id: str, user: str, period_start: int, now: int) -> bool:
        return bool(await self.conn.fetchval(
            "INSERT INTO alert_marks (alert_id, user_id, period_start, at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING 1",
            alert_id, user, period_start, now,
        ))

    async def unmark_before(self, alert_id: str, user: str, period_start: int) -> None:
        await self.conn.execute(
            "DELETE FROM alert_marks WHERE alert_id = $1 AND user_id = $2 AND period_start < $3", alert_id, user, period_start
        )

    async def rearm(self, alert_id: str, user: str) -> None:
        await self.conn.execute("DELETE FROM alert_marks WHERE alert_id = $1 AND user_id = $2 AND period_start = 0", alert_id, user)

    async def emit(self, tenant: int, type: str, data: dict[str, Any], now: int, subject: str | None) -> None:
        await emit(self.conn, tenant, type, data, now, subject=subject)

"""What alerts and spend caps do inside a write, written once for both backends: each backend's
watch.py says when it is called and supplies its SQL as a WatchSql; the rules (once per
crossing, the marks, the re-arming, a cap's reached_period) are told in sqlite/watch.py's
docstring, and the concurrency of PostgreSQL's version in postgres/watch.py's.

The checks are coroutines so that one body serves a synchronous and an asynchronous backend:
PostgreSQL's WatchSql awaits its connection; SQLite's methods never suspend (its connection is
the writer thread's own, inside the write's transaction), and `run_now` drives the coroutine to
its end in one step, without an event loop. The statements run are the ones each backend ran
before this was shared, in the same order."""
from __future__ import annotations

from typing import Any, Coroutine, Protocol, Sequence, TypeVar

from .periods import period_bounds
from .refusals import CapReached

TRIGGERED = "alert.triggered"
REACHED = "spend_cap.reached"

T = TypeVar("T")
Row = TypeVar("Row", bound=Sequence[Any])


class Watched(Protocol):
    """What a write of the tenant must look at (outbox.Watch): counts, above 0 when there is any."""

    @property
    def alerts(self) -> int: ...

    @property
    def spend_caps(self) -> int: ...


class WatchSql(Protocol):
    """One backend's statements for the checks, on the connection of the write's transaction."""

    async def account_alerts(self, tenant: int, user: str, currency: str) -> Sequence[Sequence[Any]]:
        """The cents alerts of the account, of the user or of every user, in creation order:
        rows (id, type, threshold, period)."""

    async def available(self, tenant: int, user: str, currency: str, now: int) -> int:
        """Balance less expired unforfeited credit less pending holds (sums.AVAILABLE)."""

    async def period_usage(self, tenant: int, user: str, currency: str, period: str, now: int) -> int:
        """The usage withdrawals of the period of kind `period` that `now` is in (alerts.period_usage)."""

    async def held(self, tenant: int, user: str, currency: str, now: int) -> int:
        """The account's holds pending at `now`."""

    async def caps(self, tenant: int, user: str, currency: str) -> Sequence[Sequence[Any]]:
        """The account's spend caps: rows (period, cap, reached_period)."""

    async def reach(self, tenant: int, user: str, currency: str, period: str, start: int) -> bool:
        """Set the cap's reached_period to `start` unless it is so already; whether it changed."""

    async def aggregate(self, tenant: int, meter_id: str, aggregation: str, user: str, start: int, end: int) -> int:
        """The meter's aggregation over the user's events in [start, end), held in int64 (a sum
        past it is past any threshold either way)."""

    async def mark(self, alert_id: str, user: str, period_start: int, now: int) -> bool:
        """Insert the alert's mark for the user and period; whether this insert made it."""

    async def unmark_before(self, alert_id: str, user: str, period_start: int) -> None:
        """Delete the user's marks of the alert's earlier periods."""

    async def rearm(self, alert_id: str, user: str) -> None:
        """Delete the user's mark of a balance_below alert (period_start 0)."""

    async def emit(self, tenant: int, type: str, data: dict[str, Any], now: int, subject: str | None) -> None:
        """Record an event in the write's transaction (outbox.emit)."""


def run_now(step: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that never suspends (every await in it returns at once, as
    SQLite's WatchSql's do), run here to its end."""
    try:
        step.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    step.close()
    raise RuntimeError("a watch check suspended: a synchronous WatchSql must not await anything that waits")


async def after_account_write(sql: WatchSql, tenant: int, user: str, currency: str, now: int, w: Watched) -> None:
    """After a write changed the account's balance, holds or usage (a ledger row, a hold placed,
    captured, released or expired), in its transaction: trigger or re-arm the balance_below and
    usage_above (cents) alerts of the user, record spend_cap.reached when the period's use
    reached a cap. Reads the alerts of the tenant in this currency (bounded by the alerts quota),
    then at most one account read and one ledger range per period kind."""
    usage: dict[str, int] = {}

    async def usage_of(period: str) -> int:
        if period not in usage:
            usage[period] = await sql.period_usage(tenant, user, currency, period, now)
        return usage[period]

    if w.alerts:
        available: int | None = None
        for alert_id, type, threshold, period in await sql.account_alerts(tenant, user, currency):
            if type == "balance_below":
                if available is None:
                    available = max(await sql.available(tenant, user, currency, now), 0)  # as getBalance answers it
                await judge(sql, tenant, alert_id, user, 0, available < threshold, available, threshold, None, now)
            else:
                start, _ = period_bounds(period, now)
                value = await usage_of(period)
                await judge(sql, tenant, alert_id, user, start, value > threshold, value, threshold, period, now)
    if w.spend_caps:
        held: int | None = None
        for period, cap, reached in await sql.caps(tenant, user, currency):
            start, _ = period_bounds(period, now)
            if reached == start:
                continue  # announced already this period
            if held is None:
                held = await sql.held(tenant, user, currency, now)
            spent = await usage_of(period) + held
            if spent >= cap and await sql.reach(tenant, user, currency, period, start):
                await sql.emit(tenant, REACHED, {"user": user, "currency": currency, "period": period, "limit": cap, "used": spent},
                               now, f"{start}:{period}:{currency}:{user}")


async def check_spend_cap(
    sql: WatchSql, tenant: int, user: str, currency: str, amount: int, now: int, caps: Sequence[Sequence[Any]]
) -> None:
    """Before a hold of `amount` is placed, in its transaction: refusals.CapReached when it
    would take a cap's period past its limit (`used` + amount > limit; reaching it exactly is
    allowed). `caps`: the account's (period, cap) rows, the day's first (it is judged before
    the month's), read by the caller, which calls this only when there is one."""
    held = await sql.held(tenant, user, currency, now)
    for period, cap in caps:
        spent = await sql.period_usage(tenant, user, currency, period, now) + held
        if spent + amount > cap:
            raise CapReached(spent, cap, currency, period)


def meter_judgements(alerts: Sequence[Row], touched: set[tuple[str, str]]) -> list[tuple[Row, str]]:
    """(alert, user) for each meter alert (rows (id, user_id, threshold, period, meter_id,
    aggregation, ...)) and each touched user of its meter it concerns, in the alerts' order,
    then the users'."""
    return [
        (alert, user) for alert in alerts
        for user in sorted(u for m, u in touched if m == alert[4] and (alert[1] is None or u == alert[1]))
    ]


async def judge_meter_alerts(sql: WatchSql, tenant: int, judged: Sequence[tuple[Sequence[Any], str]], now: int) -> None:
    """After meter events were recorded, in their transaction: judge each (alert, user) of
    meter_judgements on the meter's aggregation over the user's events in the current period
    (one aggregate, an index range of meter_events_summary, each)."""
    for (alert_id, _, threshold, period, meter_id, aggregation, *_), user in judged:
        start, end = period_bounds(period, now)
        value = await sql.aggregate(tenant, meter_id, aggregation, user, start, end)
        await judge(sql, tenant, alert_id, user, start, value > threshold, value, threshold, period, now)


async def judge(
    sql: WatchSql, tenant: int, alert_id: str, user: str, period_start: int, met: bool, value: int,
    threshold: int, period: str | None, now: int,
) -> None:
    """Trigger (once: the mark's insert) when the condition is met; re-arm a balance_below
    alert (period_start 0) when it is not."""
    if met:
        if await sql.mark(alert_id, user, period_start, now):
            if period_start:  # the previous periods' marks have done their work
                await sql.unmark_before(alert_id, user, period_start)
            data: dict[str, Any] = {"alertId": alert_id, "userId": user, "value": value, "threshold": threshold}
            if period is not None:
                data["period"] = period
            await sql.emit(tenant, TRIGGERED, data, now, None)
    elif period is None:
        await sql.rearm(alert_id, user)

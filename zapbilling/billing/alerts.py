"""Alerts and spend caps (operations 37-42): their rows. What a write does with them (trigger
an alert once per crossing and re-arm it, record spend_cap.reached, refuse a hold past a cap)
happens in the store's write transactions (store/*/watch.py).

Thresholds: balance_below compares `available`, which never goes below 0 (getBalance's), so
its threshold must be positive (an alert at 0 or below could never trigger); usage_above
counts usage, which never goes below 0, so its threshold is any non-negative Int64 (0:
trigger on the period's first usage)."""
from __future__ import annotations

from typing import Any

from ..context import Context
from ..errors import Conflict, InvalidParams, NotFound
from ..store import Missing
from ..store.base import AlertRow, NewAlert, SpendCapRow
from ..store.refusals import QuotaReached
from ..times import format_ts


def alert_result(a: AlertRow) -> dict[str, Any]:
    out: dict[str, Any] = {"id": a["id"], "type": a["type"]}
    if a["userId"] is not None:
        out["userId"] = a["userId"]
    out.update(currency=a["currency"], threshold=a["threshold"])
    if a["period"] is not None:
        out["period"] = a["period"]
    if a["meterId"] is not None:
        out["meterId"] = a["meterId"]
    out["createdAt"] = format_ts(a["createdAt"])
    return out


def _check_alert(p: Any) -> None:
    """The checks of the type's own rules, in the contract's parameter order."""
    if p.type == "balance_below":
        if p.threshold <= 0:
            raise InvalidParams("threshold must be positive for balance_below: available is never below 0", param="threshold")
        if p.period is not None:
            raise InvalidParams("period is only for usage_above", param="period")
        if p.meterId is not None:
            raise InvalidParams("meterId is only for usage_above", param="meterId")
    else:
        if p.threshold < 0:
            raise InvalidParams("threshold must not be negative for usage_above", param="threshold")
        if p.period is None:
            raise InvalidParams("period is required for usage_above", param="period")


async def create_alert(ctx: Context, p: Any) -> dict[str, Any]:
    _check_alert(p)
    try:
        row = await ctx.store.create_alert(ctx.tenant, NewAlert(
            type=p.type, user=p.userId, currency=p.currency, threshold=p.threshold, period=p.period, meter_id=p.meterId,
            now=ctx.now,
        ), ctx.idempotency, quota=ctx.limits.alerts_per_tenant)
    except Missing:
        raise NotFound("meter not found", param="meterId") from None
    except QuotaReached as exc:
        raise Conflict(f"alert quota reached: an org holds at most {exc.quota} alerts in each mode", param="type") from None
    return alert_result(row)


async def list_alerts(ctx: Context, p: Any) -> dict[str, Any]:
    alerts = [alert_result(a) for a in await ctx.store.list_alerts(ctx.tenant, p.userId)]
    return {"alerts": alerts, "count": len(alerts)}


async def delete_alert(ctx: Context, p: Any) -> dict[str, Any]:
    try:
        await ctx.store.delete_alert(ctx.tenant, p.id, ctx.now, ctx.idempotency)
    except Missing:
        raise NotFound("alert not found", param="id") from None
    return {"id": p.id, "deleted": True}


def _cap_entry(c: SpendCapRow) -> dict[str, Any]:
    return {"currency": c["currency"], "period": c["period"], "limit": c["limit"], "used": c["used"]}


async def set_spend_cap(ctx: Context, p: Any) -> dict[str, Any]:
    row = await ctx.store.set_spend_cap(ctx.tenant, p.user, p.currency, p.period, p.limit, ctx.now, ctx.idempotency)
    return {"user": row["user"], **_cap_entry(row)}


async def get_spend_caps(ctx: Context, p: Any) -> dict[str, Any]:
    return {"user": p.user, "caps": [_cap_entry(c) for c in await ctx.store.spend_caps(ctx.tenant, p.user, ctx.now)]}


async def delete_spend_cap(ctx: Context, p: Any) -> dict[str, Any]:
    try:
        await ctx.store.delete_spend_cap(ctx.tenant, p.user, p.currency, p.period, ctx.now, ctx.idempotency)
    except Missing:
        raise NotFound("spend cap not found", param="period") from None
    return {"deleted": True}

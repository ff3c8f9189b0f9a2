"""Meters and meter events."""
from __future__ import annotations

from typing import Any

from ..context import Context
from ..errors import NotFound
from ..store import MeterEventDraft, Row
from ..times import format_ts, parse_ts


def meter_result(m: Row) -> dict[str, Any]:
    return m | {"createdAt": format_ts(m["createdAt"])}


async def create_meter(ctx: Context, p: Any) -> dict[str, Any]:
    meter = await ctx.store.create_meter(
        ctx.tenant, p.name, p.eventName, p.aggregationType, p.currency, p.dimensions, ctx.now, ctx.idempotency
    )
    return meter_result(meter)


async def list_meters(ctx: Context, p: Any) -> dict[str, Any]:
    meters = [meter_result(m) for m in await ctx.store.list_meters(ctx.tenant)]
    return {"meters": meters, "count": len(meters)}


async def find_meter(ctx: Context, meter_id: str) -> Row:
    meter = await ctx.store.get_meter(ctx.tenant, meter_id)
    if meter is None:
        raise NotFound("meter not found", param="id")
    return meter


async def get_meter(ctx: Context, p: Any) -> dict[str, Any]:
    return meter_result(await find_meter(ctx, p.id))


async def record_meter_events(ctx: Context, p: Any) -> dict[str, Any]:
    drafts = [
        MeterEventDraft(e.meterId, e.userId, e.value, parse_ts(e.timestamp) if e.timestamp else ctx.now, e.idempotency, e.dimensions)
        for e in p.events
    ]
    outcomes = await ctx.store.record_meter_events(ctx.tenant, drafts, ctx.now, ctx.idempotency)
    events = [{"id": event_id, "status": status} for event_id, status in outcomes]
    return {"events": events, "count": len(events)}


async def get_meter_events_summary(ctx: Context, p: Any) -> dict[str, Any]:
    meter = await ctx.store.get_meter(ctx.tenant, p.meterId)
    if meter is None:
        raise NotFound("meter not found", param="meterId")
    start = parse_ts(p.periodStart) if p.periodStart else None
    end = parse_ts(p.periodEnd, period_end=True) if p.periodEnd else None
    value, count = await ctx.store.aggregate_events(ctx.tenant, meter["id"], meter["aggregationType"], p.userId, start, end)
    return {
        "meterId": meter["id"], "meterName": meter["name"], "userId": p.userId or "",
        "aggregationType": meter["aggregationType"], "value": value, "eventCount": count,
        "periodStart": p.periodStart or "", "periodEnd": p.periodEnd or "",
    }

"""Meters and meter events."""
from __future__ import annotations

from typing import Any

from ..context import Context
from ..errors import Conflict, InvalidParams, NotFound
from ..store import AlreadyExists, MeterEventDraft, MeterRow, Missing, NewMeter, SumOutOfRange
from ..store.base import MeterEventRow
from ..store.refusals import QuotaReached
from ..times import format_ts, parse_ts

SUM_OUT_OF_RANGE = "the sum of this meter's values is beyond the signed 64-bit range"


def meter_result(m: MeterRow) -> dict[str, Any]:
    return m | {"createdAt": format_ts(m["createdAt"])}


def meter_event_result(e: MeterEventRow) -> dict[str, Any]:
    """A meter event as `zapbilling export meter-events` writes it: the fields of its input
    (MeterEventInput) with the optional ones only when set, its id, and when it was recorded."""
    out: dict[str, Any] = {
        "id": e["id"], "meterId": e["meterId"], "userId": e["userId"], "value": e["value"],
        "timestamp": format_ts(e["timestamp"]),
    }
    if e["idempotency"] is not None:
        out["idempotency"] = e["idempotency"]
    if e["dimensions"] is not None:
        out["dimensions"] = e["dimensions"]
    out["createdAt"] = format_ts(e["createdAt"])
    return out


async def create_meter(ctx: Context, p: Any) -> dict[str, Any]:
    try:
        meter = await ctx.store.create_meter(ctx.tenant, NewMeter(
            name=p.name, event_name=p.eventName, aggregation=p.aggregationType, currency=p.currency,
            dimensions=p.dimensions, now=ctx.now,
        ), ctx.idempotency, quota=ctx.limits.meters_per_tenant)
    except AlreadyExists:
        raise Conflict(f"a meter with eventName {p.eventName!r} already exists", param="eventName") from None
    except QuotaReached as exc:
        raise Conflict(f"meter quota reached: an org holds at most {exc.quota} meters in each mode") from None
    return meter_result(meter)


async def list_meters(ctx: Context, p: Any) -> dict[str, Any]:
    try:
        rows, has_more = await ctx.store.meters_page(ctx.tenant, p.limit, p.startingAfter)
    except Missing:
        raise NotFound("meter not found", param="startingAfter") from None
    meters = [meter_result(m) for m in rows]
    return {"meters": meters, "count": len(meters), "hasMore": has_more}


async def find_meter(ctx: Context, meter_id: str) -> MeterRow:
    meter = await ctx.store.get_meter(ctx.tenant, meter_id)
    if meter is None:
        raise NotFound("meter not found", param="id")
    return meter


async def get_meter(ctx: Context, p: Any) -> dict[str, Any]:
    return meter_result(await find_meter(ctx, p.id))


async def record_meter_events(ctx: Context, p: Any) -> dict[str, Any]:
    drafts = [
        MeterEventDraft(e["meterId"], e["userId"], e["value"], parse_ts(e["timestamp"]) if e["timestamp"] else ctx.now,
                        e["idempotency"], e["dimensions"])
        for e in p.events
    ]
    try:
        outcomes = await ctx.store.record_meter_events(ctx.tenant, drafts, ctx.now, ctx.idempotency)
    except Missing as exc:
        raise NotFound("meter not found", param=f"events[{exc.index}].meterId") from None
    events = [{"id": event_id, "status": status} for event_id, status in outcomes]
    return {"events": events, "count": len(events)}


async def get_meter_events_summary(ctx: Context, p: Any) -> dict[str, Any]:
    meter = await ctx.store.get_meter(ctx.tenant, p.meterId)
    if meter is None:
        raise NotFound("meter not found", param="meterId")
    start = parse_ts(p.periodStart) if p.periodStart else None
    end = parse_ts(p.periodEnd, period_end=True) if p.periodEnd else None
    try:
        value, count = await ctx.store.aggregate_events(ctx.tenant, meter["id"], meter["aggregationType"], p.userId, start, end)
    except SumOutOfRange:
        raise InvalidParams(SUM_OUT_OF_RANGE) from None
    return {
        "meterId": meter["id"], "meterName": meter["name"], "userId": p.userId or "",
        "aggregationType": meter["aggregationType"], "value": value, "eventCount": count,
        "periodStart": p.periodStart or "", "periodEnd": p.periodEnd or "",
    }

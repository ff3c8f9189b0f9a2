"""A meter's usage over time (operation 43): the period cut into UTC hours or days, each
window's aggregate computed by the database (store.aggregate_windows, one grouped query).

Windows are aligned to UTC (an hour's or a day's boundary; Unix time has no leap seconds, so
a multiple of the width since the epoch is one) and clipped to the period: when periodStart or
periodEnd falls inside a window, that first or last window starts or ends there, and holds only
the events of the period. A caller asking for whole days gives dates and gets whole days."""
from __future__ import annotations

from typing import Any

from ..context import Context
from ..errors import InvalidParams, NotFound
from ..store import SumOutOfRange
from ..times import format_ts, parse_ts
from .metering import SUM_OUT_OF_RANGE

WIDTHS = {"hour": 3_600_000_000, "day": 86_400_000_000}
"""Microseconds per window, for each WindowSize of the schema (checked at start-up)."""
MAX_WINDOWS = 1000
"""The most windows one answer holds: 41 days by the hour, 2 years and 9 months by the day."""


async def get_meter_events_series(ctx: Context, p: Any) -> dict[str, Any]:
    meter = await ctx.store.get_meter(ctx.tenant, p.meterId)
    if meter is None:
        raise NotFound("meter not found", param="meterId")
    start, end = parse_ts(p.periodStart), parse_ts(p.periodEnd, period_end=True)
    if end <= start:
        raise InvalidParams("periodEnd must be after periodStart", param="periodEnd")
    width = WIDTHS[p.windowSize]
    origin = start - start % width
    count = -((origin - end) // width)
    if count > MAX_WINDOWS:
        raise InvalidParams(f"too many windows: {count} (at most {MAX_WINDOWS})", param="windowSize")
    try:
        filled = await ctx.store.aggregate_windows(
            ctx.tenant, meter["id"], meter["aggregationType"], p.userId, start, end, origin, width
        )
    except SumOutOfRange:
        raise InvalidParams(SUM_OUT_OF_RANGE) from None
    by_window = {w: (value, events) for w, value, events in filled}
    windows = []
    for i in range(count):
        value, events = by_window.get(i, (0, 0))
        windows.append({
            "start": format_ts(max(origin + i * width, start)), "end": format_ts(min(origin + (i + 1) * width, end)),
            "value": value, "eventCount": events,
        })
    out: dict[str, Any] = {"meterId": meter["id"], "meterName": meter["name"]}
    if p.userId is not None:
        out["userId"] = p.userId
    out |= {"aggregationType": meter["aggregationType"], "windowSize": p.windowSize, "windows": windows}
    return out

"""A meter's aggregate per time window, computed by SQLite in one grouped query over the
(tenant, meter, user, ts) index range: events are never loaded into Python to be bucketed."""
from __future__ import annotations

import sqlite3
from typing import Any

from .connection import SqliteBase
from .metering import AGGREGATES, METER, _EXACT_SUM, _exact_sum
from .sums import sum_overflowed

# The window of an event: its offset from `origin` (aligned to the window size, at or before the
# period's start, so never negative) in whole windows.
_WINDOW = "(ts - :origin) / :width"
# The latest event of each window (equal timestamps: the one inserted last), and how many the
# window holds, in one pass of window functions.
_LAST = (
    f"SELECT w, value, n FROM (SELECT {_WINDOW} AS w, value, COUNT(*) OVER (PARTITION BY {_WINDOW}) AS n,"
    f" ROW_NUMBER() OVER (PARTITION BY {_WINDOW} ORDER BY ts DESC, seq DESC) AS rn"
    " FROM meter_events WHERE {where}) WHERE rn = 1"
)


class SeriesQueries(SqliteBase):
    async def aggregate_windows(
        self, tenant: int, meter_id: str, aggregation: str, user: str | None, start: int, end: int, origin: int, width: int
    ) -> list[tuple[int, int, int]]:
        """(window number, value, events) of each window of `width` microseconds from `origin`
        holding events in [start, end); windows without events are left out. SumOutOfRange when
        a window's sum passes int64."""
        where = f"tenant = :tenant AND meter = {METER} AND ts >= :start AND ts < :end"
        params: dict[str, Any] = {"tenant": tenant, "meter": meter_id, "start": start, "end": end, "origin": origin, "width": width}
        if user is not None:
            where += " AND user_id = :user"
            params["user"] = user
        if aggregation == "last":
            return [(w, value, n) for w, value, n in await self._aggregate(tenant, _LAST.format(where=where), params)]
        grouped = f"SELECT {_WINDOW} AS w, {{}}, COUNT(*) FROM meter_events WHERE {where} GROUP BY w"
        try:
            rows = await self._aggregate(tenant, grouped.format(AGGREGATES[aggregation]), params)
        except sqlite3.OperationalError as exc:
            if not sum_overflowed(exc):
                raise
            # as aggregate_events: a running SUM left int64; sum the high and low 32 bits apart
            exact = await self._aggregate(tenant, grouped.format(_EXACT_SUM), params)
            return [(w, _exact_sum(high, low), n) for w, high, low, n in exact]
        return [(w, value, n) for w, value, n in rows]

"""A meter's aggregate per time window on PostgreSQL (as ../sqlite/series.py): one grouped query."""
from __future__ import annotations

from typing import Any

from .connection import PgBase
from .metering import AGGREGATES, METER, _int64

_WINDOW = "(ts - $3) / $4"
_LAST = (
    f"SELECT w, value, n FROM (SELECT {_WINDOW} AS w, value, COUNT(*) OVER (PARTITION BY {_WINDOW}) AS n,"
    f" ROW_NUMBER() OVER (PARTITION BY {_WINDOW} ORDER BY ts DESC, seq DESC) AS rn"
    " FROM meter_events WHERE {where}) x WHERE rn = 1"
)


class SeriesQueries(PgBase):
    async def aggregate_windows(
        self, tenant: int, meter_id: str, aggregation: str, user: str | None, start: int, end: int, origin: int, width: int
    ) -> list[tuple[int, int, int]]:
        """As the SQLite store's; a window's sum is NUMERIC here, judged against int64."""
        where = f"tenant = $1 AND meter = {METER} AND ts >= $5 AND ts < $6"
        params: list[Any] = [tenant, meter_id, origin, width, start, end]
        if user is not None:
            params.append(user)
            where += " AND user_id = $7"
        if aggregation == "last":
            sql = _LAST.format(where=where)
        else:
            sql = f"SELECT {_WINDOW} AS w, {AGGREGATES[aggregation]}, COUNT(*) FROM meter_events WHERE {where} GROUP BY w"
        return [(int(w), _int64(value), int(n)) for w, value, n in await self._aggregate(tenant, sql, *params)]

"""The calendar periods of alerts and spend caps: a UTC day or a UTC month, as [start, end) in
microseconds since the epoch. Backend-neutral arithmetic, done in Python once per evaluation."""
from __future__ import annotations

import functools
from datetime import datetime, timezone

from ..times import DAY, to_us

PERIODS = ("day", "month")


def period_bounds(period: str, now: int) -> tuple[int, int]:
    """The period of kind `period` ("day" or "month") that `now` falls in."""
    if period == "day":
        start = now - now % DAY
        return start, start + DAY
    if period != "month":
        raise ValueError(period)
    return _month_of(now - now % DAY)


@functools.lru_cache(maxsize=64)
def _month_of(day: int) -> tuple[int, int]:
    """The month of the day starting at `day`: datetime arithmetic (~10 us) once a day, then a
    dictionary lookup (~0.3 us) for every write that judges a month."""
    at = datetime.fromtimestamp(day // 1_000_000, timezone.utc)
    first = datetime(at.year, at.month, 1, tzinfo=timezone.utc)
    following = datetime(at.year + (at.month == 12), at.month % 12 + 1, 1, tzinfo=timezone.utc)
    return to_us(first), to_us(following)

"""Time as integer microseconds since the Unix epoch (UTC), so that `expiresAt = createdAt +
expiresIn` holds exactly and no float is involved; RFC 3339 text only at the edges."""
from __future__ import annotations

import re
import time
from datetime import date, datetime, timedelta, timezone
from typing import Callable

Clock = Callable[[], int]

SECOND = 1_000_000
DAY = 86_400 * SECOND
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# Both patterns read caller input (times of up to 64 characters: billing/validation.py) and are
# linear: fixed-width pieces and one `\d+`, which a non-digit must follow, so the engine never
# tries a second split. (`\d` also matches other scripts' digits; fromisoformat refuses them.)
_BARE_DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})\Z")


def system_clock() -> int:
    return time.time_ns() // 1000


_stamp = (0, "1970-01-01T00:00:00")
"""The last second format_ts formatted and its text: one tuple, read and replaced whole, so the
loop's thread and the SQLite writer's (which renders events) can share it."""


def format_ts(us: int) -> str:
    """RFC 3339 in UTC with microseconds, e.g. 2026-11-26T07:30:00.123456Z. The text of the
    second is reused while the times formatted stay in one second (a write's answer and its
    event, a page of rows): strftime cost ~20k instructions a call (callgrind), the reuse ~2k."""
    global _stamp
    second, micro = divmod(us, SECOND)
    stamp = _stamp
    if stamp[0] != second:
        stamp = _stamp = (second, (_EPOCH + timedelta(seconds=second)).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{stamp[1]}.{micro:06d}Z"


def parse_ts(text: str, *, period_end: bool = False) -> int:
    """RFC 3339 or a bare date. A bare date as a period end includes that whole day, so it
    means 00:00 of the next day (an exclusive bound). Raises ValueError on anything else."""
    if _BARE_DATE.match(text):
        d = date.fromisoformat(text)
        start = to_us(datetime(d.year, d.month, d.day, tzinfo=timezone.utc))
        return start + DAY if period_end else start  # in integers: 9999-12-31 has no next day in datetime
    if not _RFC3339.match(text):
        raise ValueError(text)
    return to_us(datetime.fromisoformat(text.upper().replace("Z", "+00:00")))


def to_us(dt: datetime) -> int:
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * SECOND + delta.microseconds

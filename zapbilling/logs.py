"""Log records' format and level (`serve --log-format text|json`, `--log-level`), for the
serving processes and the supervisor of workers alike (no aiohttp here: the supervisor loads
none). The access lines are written by access_log.py in the same two shapes.

text: `2026-02-02 09:00:00,123 INFO zapbilling: message`, a traceback on the lines after it.
json: one object per line, `{"time": "2026-02-02T09:00:00.123Z", "level": "INFO", "logger":
"zapbilling", "message": "..."}`, plus `error_id` for a server fault and `traceback` (one string,
its newlines escaped) when the record has one: a line never breaks.

Whatever a record says, a string shaped like one of our API keys is replaced by `[redacted]`
before it is written (a safety net: nothing is meant to log a key).
"""
from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

KEY = re.compile(r"zb(?:_|%5[Ff])(?:test|live)(?:_|%5[Ff])[A-Za-z0-9_%-]*")
"""An API key's shape (store/keys.py makes `zb_<mode>_<token_urlsafe>`), its underscores
percent-encoded or not. Linear: fixed-length alternatives, then one character class under one star."""
REDACTED = "[redacted]"


def scrub(text: str) -> str:
    """`text` with anything key-shaped redacted; one `in` test when there is none."""
    return KEY.sub(REDACTED, text) if "zb" in text else text


_second: tuple[int, str] = (-1, "")
"""The last whole second stamped and its text: strftime once a second, not once a line (one
tuple, replaced whole: records of other threads read it too)."""


def utc_stamp(seconds: float) -> str:
    """RFC 3339 in UTC with milliseconds: 2026-02-02T09:00:00.123Z."""
    global _second
    whole = int(seconds)
    last = _second
    if whole != last[0]:
        last = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{last[1]}.{int(seconds * 1000) % 1000:03d}Z"


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": utc_stamp(record.created), "level": record.levelname, "logger": record.name,
                               "message": record.getMessage()}
        error_id = getattr(record, "error_id", None)
        if error_id:
            out["error_id"] = error_id
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return scrub(json.dumps(out))


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure(log_format: str, level: str, handler: logging.Handler | None = None) -> None:
    """The root logger: `level`, one handler (stderr unless given) in `log_format`."""
    handler = handler or logging.StreamHandler()
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level.upper(), handlers=[handler])

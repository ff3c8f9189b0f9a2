"""The access log: one preformatted line per request, written in batches.

Imported by the serving processes only (it needs aiohttp); a supervisor of workers does not.
"""
from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from urllib.parse import unquote

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

ACCESS_FLUSH_SECONDS = 0.1


class _AccessLines:
    """Access-log lines waiting to be written: one write per tenth of a second instead of one
    per request (a write to stderr costs a system call, more than the rest of the line). Other
    log records flush these first, so the log stays in order; `serve` flushes them on the way
    out. A process killed outright loses at most the last tenth of a second of access lines,
    never anything else (they record requests, they are not the ledger)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.scheduled = False

    def add(self, line: str) -> None:
        self.lines.append(line)
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_later(ACCESS_FLUSH_SECONDS, self._timer)

    def _timer(self) -> None:
        self.scheduled = False
        self.flush()

    def flush(self) -> None:
        lines, self.lines = self.lines, []  # safe against an append from the loop thread meanwhile
        if lines:
            sys.stderr.write("".join(lines))
            sys.stderr.flush()


_KEY = re.compile(r"zb(?:_|%5[Ff])(?:test|live)(?:_|%5[Ff])[A-Za-z0-9_%-]*")
"""An API key's shape (store/keys.py makes `zb_<mode>_<token_urlsafe>`), its underscores
percent-encoded or not (the target stays encoded: decoding it could put a newline in the line).
Linear: fixed-length alternatives, then one character class under one star."""
_SECRET_NAMES = ("key", "token", "secret", "password", "auth", "signature")
REDACTED = "[redacted]"


def redact(target: str) -> str:
    """The request target with every key-like thing replaced: the value of any query parameter
    whose name holds a secret's word (`key`, `apiKey`, `access_token`, ...), and anything shaped
    like one of our keys anywhere in the path or query. Keys in the query string are refused
    (transport/auth.py), but the refusal is logged too, and a log must never hold a key. Costs
    one `in` test per request when there is no query and no `zb_` in the path."""
    path, sep, query = target.partition("?")
    if sep:
        parts = []
        for part in query.split("&"):  # no regex over the query: a name can be 8 KB long
            name, eq, _ = part.partition("=")
            if eq and any(word in unquote(name).lower() for word in _SECRET_NAMES):
                part = f"{name}={REDACTED}"
            parts.append(part)
        target = f"{path}?{'&'.join(parts)}"
    if "zb" in target:
        target = _KEY.sub(REDACTED, target)
    return target


_ACCESS = _AccessLines()
flush = _ACCESS.flush


class AccessLog(AbstractAccessLogger):
    """One line per request on stderr, in the same shape as the other log lines. aiohttp's own
    access logger builds a logging record, formats its time and takes the handler's lock for
    every request, and writes each line on its own: together most of a small request's CPU.
    This preformats the line and buffers it. The path is the request target as sent (still
    percent-encoded), so a line can never be split by an encoded newline; anything key-like in it
    is redacted first (`redact`)."""

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        self._second = -1
        self._stamp = ""

    def log(self, request: BaseRequest, response: StreamResponse, elapsed: float) -> None:
        second = int(time.time())
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        v = request.version
        target = request.raw_path
        if "?" in target or "zb" in target:
            target = redact(target)
        _ACCESS.add(
            f'{self._stamp} INFO aiohttp.access: {request.remote} "{request.method} {target} HTTP/{v.major}.{v.minor}"'
            f" {response.status} {response.body_length} {elapsed:.6f}s\n"
        )


class LogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr, after any access lines still waiting, so that the log stays in order."""

    def emit(self, record: logging.LogRecord) -> None:
        _ACCESS.flush()
        super().emit(record)

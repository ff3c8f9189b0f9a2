"""The access log: one preformatted line per request, written in batches.

Imported by the serving processes only (it needs aiohttp); a supervisor of workers does not.
"""
from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any
from urllib.parse import unquote

from aiohttp import HttpVersion11
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from . import logs
from .logs import KEY, REDACTED
from .metrics.tally import request_done
from .transport.facts import FACTS, Call, Facts, release

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


_KEY = KEY
"""logs.KEY: an API key's shape, its underscores percent-encoded or not (the target stays encoded:
decoding it could put a newline in the line)."""
_SECRET_NAMES = ("key", "token", "secret", "password", "auth", "signature")


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

ID_CHARS = 64
"""A string envelope id is logged up to this many characters: it is the caller's text."""
_PLAIN_KEPT = 1024
_plain: dict[str, str] = {}
"""Org names as written in a text line, worked out once per name (bounded): the name as it is
when it is one plain word, else JSON-quoted, so that no name can break or forge a line."""


def _word(text: str) -> str:
    shown = _plain.get(text)
    if shown is None:
        shown = text if text and text.isprintable() and text.isascii() and not any(c in text for c in ' "=\\') else json.dumps(text)
        if len(_plain) < _PLAIN_KEPT:
            _plain[text] = shown
    return shown


def _id(value: Any) -> Any:
    """An envelope id as logged: an int as it is, a string cut to ID_CHARS with anything
    key-shaped redacted (ids are the caller's text: a log must never hold a key)."""
    if type(value) is str:
        return logs.scrub(value[:ID_CHARS])
    return value


def _runs(names: list[str]) -> str:
    """`a,b*3,a`: each name with how many times in a row it came (a batch of 100 recordUsage
    is `billing.recordUsage*100`, not 100 names)."""
    out: list[str] = []
    last, n = None, 0
    for name in names:
        if name == last:
            n += 1
            continue
        if last is not None:
            out.append(last if n == 1 else f"{last}*{n}")
        last, n = name, 1
    if last is not None:
        out.append(last if n == 1 else f"{last}*{n}")
    return ",".join(out)


_PARTS_KEPT = 4096
_parts: dict[tuple[str, str, str, str, str], tuple[str, str]] = {}
"""A single call's text around its id, by (transport, method, org, mode, outcome): worked out
once for each (bounded; others are worked out each time). Measured on getBalance: building the
part with f-strings on every request cost about 1,300 instructions of string joins."""


def _text_facts(facts: Facts) -> str:
    """The facts' part of a text line: ` transport=zap method=billing.getBalance id=7 org=acme
    mode=test outcome=ok`; for a batch `batch=N methods=... ids=...` (and `outcomes=...` when
    not all were ok); `error_id=...` for a fault. An unknown method is `?`."""
    calls = facts.calls
    if len(calls) == 1 and not facts.batch and not facts.error_id:
        call = calls[0]
        key = (facts.transport, call.method, facts.org, facts.mode, facts.outcome)
        parts = _parts.get(key)
        if parts is None:
            head, _, tail = _text_facts_once(facts, "\0").partition("\0")  # the id's place: no JSON text holds a NUL
            parts = head, tail
            if len(_parts) < _PARTS_KEPT:
                _parts[key] = parts
        return f"{parts[0]}{_id_text(call.id)}{parts[1]}" if key[0] == "zap" else parts[0] + parts[1]
    return _text_facts_once(facts, _id_text(calls[0].id) if len(calls) == 1 else "")


def _id_text(value: Any) -> str:
    return str(value) if type(value) is int else json.dumps(_id(value))


def _text_facts_once(facts: Facts, id_text: str) -> str:
    """`_text_facts` worked out, with `id_text` as a single ZAP call's id."""
    calls = facts.calls
    if facts.batch:
        what = (f" batch={len(calls)} methods={_runs([c.method or '?' for c in calls])}"
                f" ids={','.join(_id_text(c.id) for c in calls)}")
    elif calls:
        call = calls[0]
        what = f" method={call.method or '?'}"
        if facts.transport == "zap":
            what += f" id={id_text}"
    else:
        what = ""
    who = f" org={_word(facts.org)} mode={facts.mode}" if facts.org else ""
    line = f" transport={facts.transport}{what}{who} outcome={facts.outcome}"
    if facts.batch and facts.outcome != "ok":
        line += f" outcomes={_runs([c.outcome for c in calls])}"
    if facts.error_id:
        line += f" error_id={facts.error_id}"
    return line


def _json_facts(facts: Facts, out: dict[str, Any]) -> None:
    calls: list[Call] = facts.calls
    out["transport"] = facts.transport
    if facts.batch:
        out["batch"] = len(calls)
        out["methods"] = [c.method or None for c in calls]
        out["ids"] = [_id(c.id) for c in calls]
        out["outcomes"] = [c.outcome for c in calls]
    elif calls:
        out["method"] = calls[0].method or None
        if facts.transport == "zap":
            out["id"] = _id(calls[0].id)
    if facts.org:
        out["org"] = facts.org
        out["mode"] = facts.mode
    out["outcome"] = facts.outcome
    if facts.error_id:
        out["error_id"] = facts.error_id


class _Settings:
    """Set once by `configure` at start-up, read by every AccessLog (aiohttp makes one per
    connection)."""

    json = False
    write = True
    """False when the level is above info: no access lines. The log() call still happens (the
    metrics read the request's facts there), it only writes nothing."""


def configure(log_format: str, level: str) -> None:
    """The process's logging: other records through LogHandler in `log_format` at `level`, and
    the access lines in the same format, written only when `level` lets info records through."""
    logs.configure(log_format, level, LogHandler())
    _Settings.json = log_format == "json"
    _Settings.write = logging.getLogger("aiohttp.access").isEnabledFor(logging.INFO)


class AccessLog(AbstractAccessLogger):
    """One line per request on stderr, in the shape of the other log lines (logs.py, text or
    JSON). aiohttp's own access logger builds a logging record, formats its time and takes the
    handler's lock for every request, and writes each line on its own: together most of a small
    request's CPU. This preformats the line and buffers it. The path is the request target as
    sent (still percent-encoded), so a line can never be split by an encoded newline; anything
    key-like in it is redacted first (`redact`). What the request called and how it ended come
    from the facts the transports recorded on it (transport/facts.py); a line never holds a
    header, a key or a body.

    Text: `<time> INFO aiohttp.access: <remote> "GET /path HTTP/1.1" <status> <bytes> <seconds>s`
    then the facts (`_text_facts`). JSON: one object with time, level, logger, message, remote,
    http_method, path, status, bytes, duration_ms and the facts (`_json_facts`)."""

    _second = -1
    _stamp = ""
    """The time stamp of the current second, shared by all connections (class attributes)."""

    _who: str | None = None
    """` INFO aiohttp.access: <remote> "`, this connection's (aiohttp makes an AccessLog per
    connection, whose peer does not change): worked out at its first request. With the version
    written from a constant for HTTP/1.1: 347.5k -> 342.5k instructions per getBalance
    (bench.instructions), of the ~18k the line costs."""

    @property
    def enabled(self) -> bool:
        return True  # always called: the metrics count every request, written or not

    def log(self, request: BaseRequest, response: StreamResponse, elapsed: float) -> None:
        try:  # not request.get: Mapping.get is two Python calls more, for every request
            facts: Facts | None = request[FACTS]
        except KeyError:  # a request that reached no transport (/healthz, ...)
            facts = None
        request_done(facts, elapsed)  # the metrics' count (metrics/tally.py)
        if _Settings.write:
            target = request.raw_path
            if "?" in target or "zb" in target:
                target = redact(target)
            if _Settings.json:
                _ACCESS.add(_json_line(request, response, elapsed, target, facts))
            else:
                second = int(time.time())
                if second != AccessLog._second:
                    AccessLog._second, AccessLog._stamp = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
                who = self._who
                if who is None:
                    who = self._who = f' INFO aiohttp.access: {request.remote} "'
                v = request.version
                _ACCESS.add(
                    f"{AccessLog._stamp}{who}{request.method} {target} {'HTTP/1.1' if v is HttpVersion11 else f'HTTP/{v.major}.{v.minor}'}\""
                    f" {response.status} {response.body_length} {elapsed:.6f}s{_text_facts(facts) if facts is not None else ''}\n"
                )
        if facts is not None and facts.reusable:
            release(facts)  # the last reader: a later request may reuse them (transport/facts.py)


def _json_line(request: BaseRequest, response: StreamResponse, elapsed: float, target: str, facts: Facts | None) -> str:
    out: dict[str, Any] = {
        "time": logs.utc_stamp(time.time()), "level": "INFO", "logger": "aiohttp.access",
        "message": f"{request.method} {target} {response.status}", "remote": request.remote,
        "http_method": request.method, "path": target, "status": response.status, "bytes": response.body_length,
        "duration_ms": round(elapsed * 1000, 3),
    }
    if facts is not None:
        _json_facts(facts, out)
    return json.dumps(out) + "\n"


class LogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr, after any access lines still waiting, so that the log stays in order."""

    def emit(self, record: logging.LogRecord) -> None:
        _ACCESS.flush()
        super().emit(record)

"""What one request called and how it ended, recorded by the transports on the aiohttp request
for whoever reports on requests: the access log (access_log.py) writes them into its line, and
the metrics read the same object in the same place (the access logger's `log()` call, which
aiohttp makes once per request after the answer is written) to count
`zapbilling_requests_total{method,transport,outcome}` and the duration histogram.

Reading them: `request.get(FACTS)` is a `Facts`, or None for a request that never reached a
transport (/healthz, /readyz, /metrics, a path aiohttp itself answered 404). Then:

- `transport`: "rest" or "zap".
- `org`, `mode`: the caller's (its key's), "" when the request was refused before its key was
  known (no key, a bad key, a key in the query string). Never the key.
- `calls`: one `Call` per method the request asked for, in the order sent: one for REST and for
  a single ZAP envelope, one per entry for a ZAP batch (`batch` is then True, even for a batch
  of one). Empty when the request was refused before any method was read (a 401, a 429 at
  admission, a 413, a body that is not an envelope or a batch of the wrong length).
  The list and its Calls may be shared between requests (a REST route's successes share one):
  read them, never change them. `Call.method` is the method's wire name (`billing.getBalance`, `zap.discover`) when the
  service knows it, else "" (an unknown or malformed method: a caller's text, never a label or a
  log field); `Call.id` is the ZAP envelope's id as sent (None for REST, or when absent or
  invalid); `Call.outcome` is "ok" or the error kind answered for it (errors.py's table).
- `outcome`: the request's as a whole: the refusal's kind when it was refused whole; for a ZAP
  batch "ok" only if every entry was ok, else the first entry's error kind in the batch's order
  (each entry's is in `calls`); otherwise its one call's.
- `error_id`: for a server fault (internal_error), the id logged with its traceback and carried
  in the caller's error message (faults.py); "" otherwise. For a batch, the first fault's.

Counting metrics: one per `Call` (a batch of 100 is 100 calls, with their own outcomes), and one
with method "" for a request refused whole (`calls` empty) with the request's `outcome`.

Cost: one small object (__slots__, no dict) per request and one `Call` per method, set by the
transport's own code where it already knows each fact: no parsing, nothing formatted until the
access logger writes its line once per request.
"""
from __future__ import annotations

from typing import Any

from aiohttp import web

OK = "ok"


class Call:
    """One method call of a request (see the module docstring)."""

    __slots__ = ("method", "id", "outcome")

    def __init__(self, method: str, id: Any = None, outcome: str = OK) -> None:
        self.method = method
        self.id = id
        self.outcome = outcome

    def __repr__(self) -> str:
        return f"Call({self.method!r}, {self.id!r}, {self.outcome!r})"


class Facts:
    """What one request called and how it ended (see the module docstring)."""

    __slots__ = ("transport", "org", "mode", "calls", "batch", "outcome", "error_id")

    def __init__(self, transport: str, org: str = "", mode: str = "", calls: list[Call] | None = None,
                 batch: bool = False, outcome: str = OK, error_id: str = "") -> None:
        self.transport = transport
        self.org = org
        self.mode = mode
        self.calls: list[Call] = calls if calls is not None else []
        self.batch = batch
        self.outcome = outcome
        self.error_id = error_id

    def summarise(self) -> None:
        """A batch's `outcome` from its calls: ok only if all were, else the first error kind."""
        for call in self.calls:
            if call.outcome != OK:
                self.outcome = call.outcome
                return
        self.outcome = OK

    def __repr__(self) -> str:
        return (f"Facts({self.transport!r}, org={self.org!r}, mode={self.mode!r}, calls={self.calls!r}, batch={self.batch!r},"
                f" outcome={self.outcome!r}, error_id={self.error_id!r})")


FACTS = web.RequestKey("zapbilling_facts", Facts)
"""Where a request's Facts are: `request[FACTS] = ...`, `request.get(FACTS)`."""


def refused(request: web.BaseRequest, transport: str, kind: str, error_id: str = "") -> None:
    """A request refused whole (before or instead of its calls): its facts say so. Keeps the
    org and mode when the caller was already known (a rate limit, a body too large)."""
    facts = request.get(FACTS)
    if facts is None:
        request[FACTS] = Facts(transport, outcome=kind, error_id=error_id)
    else:
        facts.transport = transport
        facts.outcome = kind
        if error_id:
            facts.error_id = error_id

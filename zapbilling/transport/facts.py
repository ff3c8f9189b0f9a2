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
  `Call.method` is the method's wire name (`billing.getBalance`, `zap.discover`) when the
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

Read them, never change them, and keep no reference past the access logger's `log()` call:
one Facts object (with its list and Calls) may be shared by many requests, even at once (a
REST route's successful requests of one key share one; a new one replaces it on a request that
fails), and a ZAP request's is reused by a later request once `log()` has returned (`release`).

Cost: no object made per request in the steady state. Three more objects per request (a
Facts, its list, its Call), with 64 requests in flight at once, pushed the garbage collector's
youngest generation over its threshold of 700 far more often: about 10,000 more instructions
per ZAP getBalance (bench.instructions, callgrind: ~332,000 -> ~348,000), most in collections;
with the free list and the shared REST facts, ~339,000: the facts and the longer access line
together cost about 2%.

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

    __slots__ = ("transport", "org", "mode", "calls", "batch", "outcome", "error_id", "reusable")

    def __init__(self, transport: str, org: str = "", mode: str = "", calls: list[Call] | None = None,
                 batch: bool = False, outcome: str = OK, error_id: str = "") -> None:
        self.transport = transport
        self.org = org
        self.mode = mode
        self.calls: list[Call] = calls if calls is not None else []
        self.batch = batch
        self.outcome = outcome
        self.error_id = error_id
        self.reusable = False
        """Taken from the free list (`one_call`), to go back to it (`release`)."""

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


_FREE: list[Facts] = []
FREE_KEPT = 256
"""Facts of one call kept for reuse: about the requests in flight at once."""


def one_call(transport: str, org: str, mode: str) -> tuple[Facts, Call]:
    """Facts for a request of one call (its Call's method "" and id None until the transport
    sets them), from the free list when it holds one: no object made per request."""
    if _FREE:
        facts = _FREE.pop()
        facts.transport, facts.org, facts.mode, facts.outcome, facts.error_id = transport, org, mode, OK, ""
        call = facts.calls[0]
        call.method, call.id, call.outcome = "", None, OK
        return facts, call
    call = Call("")
    facts = Facts(transport, org, mode, [call])
    facts.reusable = True
    return facts, call


def release(facts: Facts) -> None:
    """The request's facts will not be read again (the access logger's `log()` is done with
    them): one from `one_call` goes back to the free list."""
    if facts.reusable and len(_FREE) < FREE_KEPT:
        _FREE.append(facts)


def refused(request: web.BaseRequest, transport: str, kind: str, error_id: str = "") -> None:
    """A request refused whole (before or instead of its calls): its facts say so, in a new
    object (the one there may be shared). Keeps the org and mode when the caller was already
    known (a rate limit, a body too large)."""
    facts = request.get(FACTS)
    if facts is None:
        request[FACTS] = Facts(transport, outcome=kind, error_id=error_id)
    else:
        request[FACTS] = Facts(transport, facts.org, facts.mode, outcome=kind, error_id=error_id or facts.error_id)

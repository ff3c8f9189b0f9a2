"""Admission: which requests are handled now, and which wait, so that no caller can hold
capacity another tenant needs.

Every /api/v1 request passes four gates, in this order:

1. its API key, from the headers alone: a request without a valid key is answered 401 and its
   body is never read;
2. its key's token bucket (the rate limit): one token per request, taken before the body is
   read, so a flood over the rate costs a header parse each; a ZAP batch takes one per entry
   (the rest once its body is decoded, `charge`, all or nothing). Retry-After is the time until
   what is known of the request would pass: one call when the bucket is empty at admission
   (the body unread), the whole batch when the batch is what does not fit;
3. its key's own in-flight bound (`Limits.inflight_per_key`), held while its body arrives
   (within the body deadline) and while it is handled;
4. a slot of the shared in-flight bound (`Limits.max_inflight`), taken only once the body is all
   here: a stalled or trickling body holds its own key's slots and nobody else's.

Requests over a key's bound wait their turn in that key's queue, holding no shared slot. The
state of each key (its slots and its bucket) is made on its first request and dropped once it is
idle and its bucket full again (nothing would tell it from a new one), so it cannot grow with the
number of keys ever seen.

The console's pages (transport/console) meet the same key's bounds without the route wrapper,
having no Authorization header: a page holds one slot of its key's bound and one shared slot while
it is made (`holding`), and each API call it makes takes a token from its key's bucket (`spend`).

The limits apply per server process: with `serve --workers N` each worker has its own buckets
and bounds (a key may make N times the rate through the port in all).

Hot path (why no asyncio.Semaphore): an uncontended take of either bound is a counter test
in plain code; only a request that must wait builds a future. The previous single shared bound
awaited `Semaphore.acquire()`, a coroutine per request.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import math
import sys
import time
from typing import Any, AsyncIterator, Awaitable, Callable

from aiohttp import web

from ..errors import ApiError, RateLimited
from ..limits import Limits
from ..store import KeyRevoked, Principal, Store
from .auth import authenticate, key_refused, known
from .facts import FACTS, Facts
from .faults import fault
from .http import body_at_hand, read_body
from .lane import Lane
from ..loop_turn import next_loop_turn

log = logging.getLogger("zapbilling")


async def _key_refusal(store: Store) -> ApiError | None:
    """For a key let in from a cache whose entries other servers cannot invalidate, and not yet
    checked by any statement of the call (store.authenticate): check it now, before anything is
    answered. The error to answer instead, if any: a revoked key hears 401 whatever else
    happened; a check that cannot be made is a fault with its error id."""
    try:
        await store.check_key()
    except KeyRevoked:
        return key_refused()
    except Exception as check:
        return fault("an API key could not be checked: %s: %s", type(check).__name__, check, traceback=False)
    return None

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_CURRENT_TASKS: dict[asyncio.AbstractEventLoop, asyncio.Task[Any]] | None = (
    getattr(asyncio.tasks, "_current_tasks", None) if sys.version_info < (3, 12) else None
)
"""Python 3.11's asyncio.current_task is a Python function reading this dict (C's, by loop):
read here directly, a Python call less per request (~0.2 us). From 3.12 current_task is C's own."""
Admitted = Callable[[web.Request, Principal, bytes], Awaitable[web.StreamResponse]]
"""A route's own work, given the caller and the whole body (b"" for a route without one)."""
Refuse = Callable[[web.Request, ApiError], web.StreamResponse]
"""How a transport answers a request refused before its handler ran (in its own error shape)."""
Clock = Callable[[], float]

MIN_STATES_KEPT = 256
"""Idle key states are looked for once the table has doubled past what was kept last time (and
this many): amortised O(1) per new key, never a scan per request."""


class Slots:
    """A counting semaphore, first come first served, whose uncontended take is a plain call
    (`take_now`); only a waiter awaits (`take`). A released slot is handed straight to the
    first waiter, so a newcomer cannot overtake the queue."""

    __slots__ = ("free", "size", "waiters")

    def __init__(self, size: int):
        self.free = self.size = size
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def take_now(self) -> bool:
        if self.free and not self.waiters:
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        """Wait for a slot (after take_now said no)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as we were cancelled: pass it on
            else:
                try:
                    self.waiters.remove(waiter)
                except ValueError:
                    pass
            raise

    def release(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes to it; `free` is unchanged
                return
        self.free += 1

    @property
    def in_use(self) -> int:
        return self.size - self.free

    @property
    def idle(self) -> bool:
        return self.free == self.size and not self.waiters


_ROUNDING = 1e-9
"""Tokens a refill may miss by float rounding (0.1 added 100 times is not 10.0): a caller that
waited its whole Retry-After must pass."""


class TokenBucket:
    """`rate` tokens a second, at most `burst` held; starts full. Time comes from a monotonic
    clock (injectable for tests), so a clock step of the wall time neither drains nor fills it."""

    __slots__ = ("rate", "burst", "tokens", "stamp", "clock")

    def __init__(self, rate: float, burst: int, clock: Clock):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = float(burst)
        self.stamp = clock()

    def _refill(self) -> float:
        now = self.clock()
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.tokens, self.stamp = tokens, now
        return tokens

    def take(self, n: int) -> float:
        """Take `n` tokens and answer 0, or take none and answer the seconds until `n` are
        there (all or nothing: a batch is refused whole, never half done). Runs per request:
        _refill inlined."""
        now = self.clock()
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.tokens, self.stamp = tokens, now
        if tokens + _ROUNDING >= n:
            self.tokens = max(tokens - n, 0.0)
            return 0.0
        return (n - tokens) / self.rate

    def give(self, n: int) -> None:
        """Tokens taken for a request that was then refused, given back."""
        self.tokens = min(self.tokens + n, self.burst)

    @property
    def full(self) -> bool:
        return self._refill() >= self.burst


class KeyGate:
    """One API key's state: its in-flight slots and its bucket (None when rates are off)."""

    __slots__ = ("slots", "bucket")

    def __init__(self, inflight: int, bucket: TokenBucket | None):
        self.slots = Slots(inflight)
        self.bucket = bucket

    @property
    def idle(self) -> bool:
        return self.slots.idle and (self.bucket is None or self.bucket.full)


class Admission:
    """The gates above, shared by every route of one application."""

    def __init__(self, store: Store, max_inflight: int, limits: Limits, clock: Clock = time.monotonic):
        self.store = store
        self.shared = Slots(max_inflight)
        self.lane = Lane(lambda: self.shared.in_use)
        """Long work's turns (transport/lane.py); the requests handled now are the shared slots in use."""
        self.per_key = limits.inflight_per_key
        self.rate = limits.rate_per_second
        self.burst = limits.rate_burst
        self.clock = clock
        self.gates: dict[str, KeyGate] = {}
        self._sweep_at = MIN_STATES_KEPT
        self.running: set[asyncio.Task[object]] = set()
        """The admitted requests' tasks while their handlers run (see `cancel_running`)."""
        self.cut_off = 0
        """Handlers cancelled while running: by aiohttp at the shutdown bound, or by
        `cancel_running` after it. Counted as each is cancelled, not read off `running` at the
        signal: a request whose body had arrived may still be authenticating then (a key not
        yet cached, on PostgreSQL), and a snapshot missed it (a CI run saw "cut off" left out)."""

    async def cancel_running(self) -> int:
        """Cancel the handlers still running when the server stops, once aiohttp's shutdown
        timeout has passed (their connections are closed by then: no one will read their
        answers), so that the store can close with nothing running on it. Without this, a
        tenant's batch of long reads outlived the stop and every entry after the store closed
        was logged as an internal error with its traceback (hundreds per stop in benchmark
        scenario 7). Returns how many were cancelled."""
        tasks = [t for t in self.running if not t.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return len(tasks)

    # -- the key's state ---------------------------------------------------------------------
    def gate(self, key_id: str) -> KeyGate:
        gate = self.gates.get(key_id)
        if gate is None:
            if len(self.gates) >= self._sweep_at:
                self.sweep()
            bucket = TokenBucket(self.rate, self.burst, self.clock) if self.rate else None
            gate = self.gates[key_id] = KeyGate(self.per_key, bucket)
        return gate

    def sweep(self) -> None:
        """Drop the state of every idle key whose bucket is full: it is what a new one would be."""
        self.gates = {k: g for k, g in self.gates.items() if not g.idle}
        self._sweep_at = max(MIN_STATES_KEPT, 2 * len(self.gates))

    def in_flight(self, key_id: str) -> int:
        """Requests of this key holding one of its slots (reading their body or being handled)."""
        gate = self.gates.get(key_id)
        return gate.slots.in_use if gate else 0

    # -- the rate ----------------------------------------------------------------------------
    def _refused(self, wait: float, n: int) -> RateLimited:
        seconds = max(1, math.ceil(wait))
        who = "this API key is over its" if n == 1 else f"a batch of {n} calls is over this API key's"
        return RateLimited(f"rate limited: {who} rate of {self.rate:g} calls per second (bursts up to {self.burst});"
                           f" retry after {seconds} s", retry_after=seconds)

    def charge(self, principal: Principal, n: int) -> None:
        """A request admitted with its one token turns out to be `n` calls (a ZAP batch): take
        the other n - 1, or refuse the whole request (RateLimited), giving its one token back so
        that Retry-After is the time until the whole request would pass."""
        bucket = self.gates[principal.key_id].bucket
        if bucket is None or n <= 1:
            return
        wait = bucket.take(n - 1)
        if wait:
            bucket.give(1)
            raise self._refused((n - bucket.tokens) / bucket.rate, n)

    # -- the console's pages -------------------------------------------------------------------
    def spend(self, key_id: str) -> None:
        """One call made outside the API's routes (a console page's, transport/console/api.py),
        paid from its key's bucket like a batch entry; RateLimited when the bucket is empty."""
        bucket = (self.gates.get(key_id) or self.gate(key_id)).bucket
        if bucket is not None and (wait := bucket.take(1)):
            raise self._refused(wait, 1)

    @contextlib.asynccontextmanager
    async def holding(self, key_id: str) -> AsyncIterator[None]:
        """The bounds a console page is made under: a slot of its key's own bound and one of the
        shared bound, held while its calls run (a page is a handful of them, each paid with
        `spend`). Without them a signed-in read key could open pages at any rate and hold any
        number of expensive reads at once, passing the very bounds its API calls meet."""
        gate = self.gates.get(key_id) or self.gate(key_id)
        slots = gate.slots
        if not slots.take_now():
            await slots.take()
        try:
            if not self.shared.take_now():
                await self.shared.take()
            task = asyncio.current_task()
            assert task is not None  # a handler always runs in a task
            self.running.add(task)
            try:
                yield
            except asyncio.CancelledError:
                self.cut_off += 1
                raise
            finally:
                self.running.discard(task)
                self.shared.release()
        finally:
            slots.release()

    # -- the route wrapper -------------------------------------------------------------------
    def guard(self, handler: Admitted, refuse: Refuse, reads_body: bool = True) -> Handler:
        """`handler` behind the gates, its answer returned one loop turn after it is ready (see
        below). `reads_body`: False for routes that take no body (GET, DELETE), which then hold
        no slot for one. A route wrapper rather than a middleware: aiohttp's middleware chain
        costs more per request (measured as part of the getBalance step ~176 -> ~126 us of
        server CPU per request).

        The answer waits a loop turn, outside the gates (the request's slots are free while it
        waits), so that the answers worked out in one turn go out back to back in the next: the
        CPU then runs the request code for many requests, then the socket writes for many,
        instead of alternating, and a client that is reading already is not woken once per
        answer. Measured on getBalance under 64 connections: about a third less CPU per request
        (~106 -> ~61 us), for one turn of latency. Here rather than in a wrapper of its own
        around this one: a coroutine less per request (callgrind, getBalance: 326.2k -> 323.5k
        instructions per request, with the current task read from its dict and key_unchecked not
        asked of a key Store.known_key answered)."""
        store, shared, running = self.store, self.shared, self.running
        get_running_loop, current_tasks, current_task = asyncio.get_running_loop, _CURRENT_TASKS, asyncio.current_task

        @functools.wraps(handler)
        async def admitted(request: web.Request) -> web.StreamResponse:
            principal: Principal | None = None
            try:
                # the usual request's key and body are at hand: taken without a coroutine each
                # (callgrind, getBalance: 334.7k -> 332.4k instructions, three runs of 8192 each)
                authorization, query_string = request.headers.get("Authorization"), request.rel_url.raw_query_string
                principal = known(store, authorization, query_string)
                checked = principal is not None  # Store.known_key: no check is left for later
                if principal is None:
                    principal = await authenticate(store, authorization, query_string)
                gate = self.gates.get(principal.key_id) or self.gate(principal.key_id)
                bucket = gate.bucket
                if bucket is not None:
                    wait = bucket.take(1)
                    if wait:
                        raise self._refused(wait, 1)
                slots = gate.slots
                if slots.free and not slots.waiters:  # Slots.take_now and .release inlined: a call each saved, both bounds
                    slots.free -= 1
                else:
                    await slots.take()
                try:
                    if not reads_body:
                        body = b""
                    elif (at_hand := body_at_hand(request, principal.key_id)) is not None:
                        body = at_hand
                    else:
                        body = await read_body(request, principal.key_id)
                    if shared.free and not shared.waiters:
                        shared.free -= 1
                    else:
                        await shared.take()
                except BaseException:
                    slots.release()
                    raise
            except ApiError as exc:
                response = await self._refused_whole(request, principal, exc, refuse)
            else:
                task = current_tasks.get(get_running_loop()) if current_tasks is not None else current_task()
                assert task is not None  # a handler always runs in a task
                running.add(task)
                try:
                    response = await handler(request, principal, body)
                    if not checked and store.key_unchecked() and (refused := await _key_refusal(store)):  # no statement of the call checked it
                        response = refuse(request, refused)
                except KeyRevoked:
                    response = refuse(request, key_refused())
                except Exception:  # a fault outside Caller.call (an answer that cannot be encoded, say): the caller still gets its error id
                    route = request.match_info.route.resource
                    response = refuse(request, fault("%s %s failed", request.method, route.canonical if route is not None else "?"))
                except asyncio.CancelledError:  # costs nothing until raised (zero-cost try, Python 3.11)
                    self.cut_off += 1
                    raise
                finally:
                    running.discard(task)
                    if shared.waiters:
                        shared.release()
                    else:
                        shared.free += 1
                    if slots.waiters:
                        slots.release()
                    else:
                        slots.free += 1
            await next_loop_turn()
            return response

        return admitted

    async def _refused_whole(self, request: web.Request, principal: Principal | None, exc: ApiError,
                             refuse: Refuse) -> web.StreamResponse:
        """The answer to a request refused at the gates (`exc`), holding no slot."""
        if principal is not None:  # refused after its key was known: the log names the org (refuse adds the rest)
            if self.store.key_unchecked() and (refused := await _key_refusal(self.store)):  # a revoked key hears 401, not why else it was refused
                return refuse(request, refused)
            request[FACTS] = Facts("", principal.org, principal.mode)
        return refuse(request, exc)

"""The store's connection pool: a list of idle asyncpg connections, handed out and taken back
without a trip through the event loop when one is idle.

Why not asyncpg's Pool: its acquire and release each run through `wait_for`, `shield` and a
timeout context even when a connection is idle, and its release runs a reset query (`SELECT
pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`), one more round trip per use.
Profiled under getBalance load (py-spy), acquiring and releasing took ~20% of the server's
samples. Here taking an idle connection is a list pop and giving it back a list append; only
a caller that finds every connection out waits, at most `wait` seconds (then
asyncio.TimeoutError: the caller's internal error). The store never SETs, LISTENs, opens
cursors or takes advisory locks on a pooled connection, so nothing needs resetting; a
connection given back inside a transaction (a cancelled call) or closed (the database went
away) is dropped, and a new one is opened on demand: after an outage the pool heals by itself.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any, Callable, Awaitable

import asyncpg

from ..base import StoreStats

Connect = Callable[[], Awaitable[asyncpg.Connection]]


class Pool:
    def __init__(self, connect: Connect, size: int, wait: float, stats: StoreStats | None = None):
        self._connect = connect
        self._stats = stats if stats is not None else StoreStats()  # its waits, for the metrics
        self.size = size
        self.wait = wait
        self._idle: list[asyncpg.Connection] = []
        self._waiters: deque[asyncio.Future[asyncpg.Connection | None]] = deque()
        self._open = 0  # connections that exist: idle, out, or being opened
        self._closed = False

    async def acquire(self) -> asyncpg.Connection:
        while True:
            if self._closed:
                raise RuntimeError("the store is closed")
            idle = self._idle
            while idle:
                conn = idle.pop()
                if not conn.is_closed():
                    return conn
                self._open -= 1
            if self._open < self.size:
                self._open += 1
                try:
                    return await self._connect()
                except BaseException:
                    self._open -= 1
                    self._wake()  # a waiter may open one where this failed
                    raise
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[asyncpg.Connection | None] = loop.create_future()
            self._waiters.append(waiter)
            # A timer that fails the future, not asyncio.wait_for: under 64 connections on a
            # pool of 10 most requests wait here, and wait_for adds a timeout context, a done
            # callback and a cancellation path to each wait where one timer handle does. (py-spy
            # on getBalance: Pool.acquire's self time ~16% -> ~11% of samples; the rate moved
            # within the machine's noise.)
            timer = loop.call_later(self.wait, _time_out, waiter)
            waited = loop.time()
            try:
                conn = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None and waiter.result() is not None:
                    self.release(waiter.result())  # handed over as the wait ended: hand it on
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                raise
            finally:
                timer.cancel()
                self._stats.pool_waits += 1
                self._stats.pool_wait_seconds += loop.time() - waited
            if conn is not None:
                return conn
            # None: a slot freed (a connection was dropped): go round and open one

    @property
    def opened(self) -> int:
        """Connections open (idle, lent out, or being opened)."""
        return self._open

    @property
    def in_use(self) -> int:
        return self._open - len(self._idle)

    def release(self, conn: asyncpg.Connection) -> None:
        if self._closed or conn.is_closed() or conn.is_in_transaction():
            self._open -= 1
            if not conn.is_closed():
                conn.terminate()
            self._wake()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    def _wake(self) -> None:
        """A connection's slot freed: the first waiter may open a new one."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            try:
                await asyncio.wait_for(conn.close(), 5)
            except (asyncio.TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn.terminate()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(RuntimeError("the store is closed"))

    def terminate(self) -> None:
        self._closed = True
        for conn in self._idle:
            conn.terminate()
        self._idle = []


def _time_out(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError())


class Lease:
    """`async with Lease(pool) as conn`: one connection of the pool for the block."""

    __slots__ = ("pool", "conn")

    def __init__(self, pool: Pool):
        self.pool = pool

    async def __aenter__(self) -> Any:
        self.conn = await self.pool.acquire()
        return self.conn

    async def __aexit__(self, *exc: Any) -> None:
        self.pool.release(self.conn)

"""The read path: three connections for three kinds of read, beside the writer (writer.py).

- `_read`: a query of any size (a scan, an aggregate over a million events) on an aiosqlite
  connection, whose thread keeps it off the event loop. In WAL mode it never waits for the
  writer. A single statement sees one moment of the data.
- `snapshot()`: `async with` it, and every `_read` this task makes inside sees the same moment:
  one read transaction on a second aiosqlite connection, taken in turns, so that an answer
  built from several reads (an invoice preview: rules, grants, then each meter's events) never
  mixes the states before and after a write that lands between them.
- `_read_point`: an indexed lookup of a few rows, run right on the event loop's thread: it
  takes a few microseconds, less than one trip to aiosqlite's thread. The point reads of one
  loop turn share one read transaction (see `ReadPath._read_point`).

The rule, written once here and enforced: a read made while the current task is inside a
snapshot reads that snapshot, or fails loudly; it never silently reads outside it. `_read`
follows the task into the snapshot's connection. `_read_point` cannot (the snapshot's
connection lives on aiosqlite's thread, and a point read is synchronous on the loop's), so
inside a snapshot it raises PointReadInSnapshot, a RuntimeError: the query belongs on `_read`
there. Nothing run inside a snapshot today makes a point read (billing/invoice.py's preview:
list_rules, active_grants, list_meters, aggregate_events; store/export.py's walk: `_read`).
"""
from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from contextvars import ContextVar
from typing import Any, AsyncIterator, Iterable

import aiosqlite

Params = tuple[Any, ...] | dict[str, Any]

_SNAPSHOT: ContextVar[aiosqlite.Connection | None] = ContextVar("zapbilling_snapshot", default=None)
"""The snapshot connection while the current task is inside `snapshot()`: a context variable,
so a concurrent request's reads never land in another request's read transaction."""


class PointReadInSnapshot(RuntimeError):
    """A point read was made inside `snapshot()`, where it would read outside the snapshot."""


class ReadPath:
    """The reader connection, the snapshot connection and its lock, the point connection and
    its per-turn transaction, of one database file: the store's base class (connection.py)
    inherits them, so the query modules call `self._read`, `self._read_point` and
    `self.snapshot()` as methods of their own class. A point read is on the hot path of
    getBalance: this object's bound methods kept as attributes of the store instead measured
    ~160 instructions more per point read (callgrind). Opened after the writer (which creates
    the file and runs the migrations)."""

    def __init__(self, path: str):
        self.path = path
        self._reader: aiosqlite.Connection | None = None
        self._snapshots: aiosqlite.Connection | None = None
        self._snapshot_lock = asyncio.Lock()
        self._snapshot_open = False  # some task is inside snapshot() (the lock: one at a time)
        self._point: sqlite3.Connection | None = None
        self._point_txn = False

    async def _open_reads(self) -> None:
        self._reader = await self._open_reader()
        self._snapshots = await self._open_reader()
        self._point = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._point.execute("PRAGMA busy_timeout = 1000")
        self._point.execute("PRAGMA query_only = ON")

    async def _open_reader(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        await conn.execute("PRAGMA busy_timeout = 10000")
        await conn.execute("PRAGMA query_only = ON")
        return conn

    async def _close_reads(self) -> None:
        for conn in (self._reader, self._snapshots):
            if conn is not None:
                await conn.close()
        self._reader = self._snapshots = None
        if self._point is not None:
            self._end_point_txn()
            self._point.close()
            self._point = None

    async def _read(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Any query, off the loop's thread; inside `snapshot()`, on the snapshot."""
        conn = _SNAPSHOT.get() or self._reader
        assert conn is not None, "store is not open"
        rows: Iterable[Any] = await conn.execute_fetchall(sql, params)  # tuples: no row factory is set
        return list(rows)

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[None]:
        """Inside this block, this task's `_read` queries all see the database as of one
        moment (and its `_read_point` reads raise: see the module's rule). Snapshots take turns
        on a connection of their own, so they hold up no other read; in WAL mode they hold up
        no write either."""
        conn = self._snapshots
        assert conn is not None, "store is not open"
        async with self._snapshot_lock:
            token = _SNAPSHOT.set(conn)
            self._snapshot_open = True
            try:
                await conn.execute("BEGIN")
                yield
            finally:
                _SNAPSHOT.reset(token)
                self._snapshot_open = False
                # Shielded: a cancelled request must not leave the transaction open for the next.
                await asyncio.shield(_end_read(conn))

    def _read_point(self, sql: str, params: Params = (), *, fresh: bool = False) -> list[tuple[Any, ...]]:
        """An indexed point read, run right here on the event loop's thread. Scans and
        aggregates of unbounded size use `_read` instead.

        The point reads of one turn of the event loop share one read transaction, ended by a
        callback queued behind them: starting and ending a transaction (file locks, a look at
        the WAL index) costs more than the lookup itself (measured together with codec pairs
        remembered by header values: getBalance ~126 -> ~106 us of server CPU per request).
        That is still read-your-writes: a coroutine woken by its write's commit is queued after
        that callback (or the transaction began after the commit), and a request that arrives
        later finds it ended. `fresh`: this read must see every commit made before it (see
        KeyQueries.authenticate), so it starts a new transaction.

        Inside `snapshot()` it raises PointReadInSnapshot instead of reading a newer moment
        than the snapshot's. The context variable is looked up only while some snapshot is
        open: measured by callgrind per point read, the attribute test costs ~65 instructions
        where the look-up would cost ~230 (getBalance makes one point read, ~320k in all)."""
        if self._snapshot_open and _SNAPSHOT.get() is not None:
            raise PointReadInSnapshot(
                "a point read inside snapshot() would read outside the snapshot: make this query with _read"
            )
        conn = self._point
        assert conn is not None, "store is not open"
        if fresh:
            self._end_point_txn()
        if not self._point_txn:
            conn.execute("BEGIN")
            self._point_txn = True
            asyncio.get_running_loop().call_soon(self._end_point_txn)
        return conn.execute(sql, params).fetchall()

    def _end_point_txn(self) -> None:
        if self._point_txn and self._point is not None:
            self._point_txn = False
            self._point.execute("COMMIT")


async def _end_read(conn: aiosqlite.Connection) -> None:
    with contextlib.suppress(sqlite3.OperationalError):  # no transaction: its BEGIN failed
        await conn.execute("COMMIT")

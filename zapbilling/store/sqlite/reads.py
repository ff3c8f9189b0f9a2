"""The read path: a pool of read connections for queries of any size, and point reads on the
event loop's thread, beside the writer (writer.py).

- `_read`: a query of any size (a page, a scan) on one of READERS aiosqlite connections, each
  on its own thread, taken from the pool for that one statement. In WAL mode readers never
  wait for the writer nor for each other, and SQLite releases the GIL while a statement runs,
  so a long query on one connection holds up none of the others. A single statement sees one
  moment of the data.
- `_aggregate`: a read whose cost grows with the data (an aggregate over a million events).
  It runs like `_read`, after taking one of `long_readers()` slots, handed out fairly by tenant
  (FairSlots): never more than READERS - 1 connections are busy with long reads, so a short read
  always finds one soon, and a tenant with many long reads waiting queues behind itself, not
  in front of another tenant's first one (measured before the pool: 8 concurrent unique_count
  summaries over 1.39M events made another org's listMeters and getUsage take 23-26 s).
- `snapshot()`: `async with` it, and every `_read` and `_aggregate` this task makes inside sees
  the same moment: one read transaction on a pooled connection of its own (taken with a long
  slot, since an answer built from several reads is a long read), held for the block, so that
  an answer built from several reads (an invoice preview: rules, grants, then the meters'
  usage) never mixes the states before and after a write that lands between them. Each
  request's snapshot is its own transaction; snapshots run side by side (before the pool, one
  connection and one lock per process made a batch of 100 previews stall another org's
  preview for 59 s).
- `_read_point`: an indexed lookup of a few rows, run right on the event loop's thread: it
  takes a few microseconds, less than one trip to aiosqlite's thread. The point reads of one
  loop turn share one read transaction (see `ReadPath._read_point`).
- `_memo()`: point-read answers kept while the database is unchanged: emptied at a loop
  turn's first look whenever any connection (this process's writer, another process's) has
  committed since (`PRAGMA data_version`), so an answer from it is one a point read in the same
  turn could have given (see `ReadPath._memo`).

The rule, written once here and enforced: a read made while the current task is inside a
snapshot reads that snapshot, or fails loudly; it never silently reads outside it. `_read`
and `_aggregate` follow the task into the snapshot's connection. `_read_point` cannot (the
snapshot's connection lives on aiosqlite's thread, and a point read is synchronous on the
loop's), so inside a snapshot it raises PointReadInSnapshot, a RuntimeError: the query belongs
on `_read` there. Nothing run inside a snapshot today makes a point read (billing/invoice.py's
preview: list_rules, active_grants, meter_usage; store/export.py's walk: `_read`).
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from contextvars import ContextVar
from typing import Any, AsyncIterator, Hashable, Iterable

import aiosqlite

from ...loop_turn import away
from ..fairness import FairSlots

Params = tuple[Any, ...] | dict[str, Any]

READERS = 4
"""Read connections in the pool, each with its own thread: long reads (`long_readers()` of
them at most) and the short reads (pages) beside them. More would only add threads and page
caches (each connection keeps its own) that have no CPU to run on."""


def long_readers(readers: int = READERS) -> int:
    """Long reads (`_aggregate`, `snapshot()`) busy at once: one fewer than the CPUs this
    process may run on, at least one, and at most `readers - 1` (one connection is always left
    to short reads, which a pool full of aggregates would otherwise queue behind).

    The event loop needs a CPU of its own. Three long reads at once on a 2-CPU machine (what
    this was before) each made progress, but between statements their threads took the GIL and
    the CPU from the loop: benchmark scenario 7 at full size measured another tenant's
    getBalance p99 at 2.8x its figure alone with three, and 1.4x with one (server pinned to one
    CPU, long work giving back its turn while it waits on a read: transport/lane.py). A
    tenant's long read now waits for the one under way; the slot that frees still goes to the
    waiting tenant that holds the fewest."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(readers - 1, cpus - 1))

_SNAPSHOT: ContextVar[aiosqlite.Connection | None] = ContextVar("zapbilling_snapshot", default=None)
"""The snapshot connection while the current task is inside `snapshot()`: a context variable,
so a concurrent request's reads never land in another request's read transaction."""


class PointReadInSnapshot(RuntimeError):
    """A point read was made inside `snapshot()`, where it would read outside the snapshot."""

    def __init__(self) -> None:
        super().__init__("a point read inside snapshot() would read outside the snapshot: make this query with _read")


class ReadPath:
    """The pool of read connections with its fair slots for long reads, and the point
    connection with its per-turn transaction, of one database file: the store's base class
    (connection.py) inherits them, so the query modules call `self._read`, `self._aggregate`,
    `self._read_point` and `self.snapshot()` as methods of their own class. A point read is on
    the hot path of getBalance: this object's bound methods kept as attributes of the store
    instead measured ~160 instructions more per point read (callgrind). Opened after the
    writer (which creates the file and runs the migrations)."""

    def __init__(self, path: str, readers: int = READERS):
        if readers < 2:
            raise ValueError("readers must be at least 2: one is kept for short reads")
        self.path = path
        self._readers = readers
        self._pool: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._pooled: list[aiosqlite.Connection] = []
        self._long = FairSlots(long_readers(readers))
        self._snapshots_open = 0  # tasks inside snapshot() now
        self._point: sqlite3.Connection | None = None
        self._point_cursor: sqlite3.Cursor | None = None
        """The point connection's one cursor, reused by every point read: `Connection.execute`
        makes a cursor per call (and files a weak reference to it). Safe to share: a point read
        runs to its end (fetchall) on the loop's thread before anything else uses it. With
        ACCOUNT's columns named short (sums.py), callgrind getBalance 332.4k -> 329.6k
        instructions per request."""
        self._point_txn = False
        self._turn_end_queued = False
        self._memo_checked = False  # this loop turn
        self._memo_version: int | None = None
        self._memo_answers: dict[Hashable, Any] = {}

    async def _open_reads(self) -> None:
        self._pooled = [await self._open_reader() for _ in range(self._readers)]
        for conn in self._pooled:
            self._pool.put_nowait(conn)
        self._point = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._point.execute("PRAGMA busy_timeout = 1000")
        self._point.execute("PRAGMA query_only = ON")
        self._point_cursor = self._point.cursor()

    async def _open_reader(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        await conn.execute("PRAGMA busy_timeout = 10000")
        await conn.execute("PRAGMA query_only = ON")
        # Run in the connection's own thread (a SQL function runs where its statement does):
        # aiosqlite offers no public way to run code there.
        await conn.create_function("zapbilling_lower_priority", 0, lower_thread_priority)
        await conn.execute("SELECT zapbilling_lower_priority()")
        return conn

    async def _close_reads(self) -> None:
        for conn in self._pooled:
            await conn.close()
        self._pooled = []
        self._pool = asyncio.Queue()
        if self._point is not None:
            self._end_point_txn()
            self._memo_version = None  # another connection's count starts afresh
            self._memo_answers.clear()
            self._point_cursor = None
            self._point.close()
            self._point = None

    async def _read(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Any query, off the loop's thread, on a pooled connection; inside `snapshot()`, on
        the snapshot's."""
        conn = _SNAPSHOT.get()
        async with away():  # long work's turn is not held while the reader works
            if conn is not None:
                return await _fetch(conn, sql, params)
            assert self._pooled, "store is not open"
            conn = await self._pool.get()
            try:
                return await _fetch(conn, sql, params)
            finally:
                self._pool.put_nowait(conn)

    async def _aggregate(self, tenant: Hashable, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """A query whose cost grows with the data, for `tenant`: as `_read`, once a long slot
        is free for it (fairly by tenant: see FairSlots). Inside `snapshot()`, on the
        snapshot's connection (the snapshot holds a slot already)."""
        if _SNAPSHOT.get() is not None:
            return await self._read(sql, params)
        async with away(), self._long.slot(tenant):
            return await self._read(sql, params)

    @contextlib.asynccontextmanager
    async def snapshot(self, tenant: Hashable = None) -> AsyncIterator[None]:
        """Inside this block, this task's `_read` and `_aggregate` queries all see the database
        as of one moment (and its `_read_point` reads raise: see the module's rule). The block
        holds one pooled connection and one long slot of `tenant`'s (None: no tenant, as an
        export's walk) for its whole length: each snapshot is its own read transaction, beside
        other snapshots and reads; in WAL mode it holds up no write either."""
        assert self._pooled, "store is not open"
        assert _SNAPSHOT.get() is None, "snapshot() inside snapshot()"
        async with contextlib.AsyncExitStack() as slot:
            async with away():  # long work's turn is not held while waiting for a slot
                await slot.enter_async_context(self._long.slot(tenant))
            conn = await self._pool.get()
            token = _SNAPSHOT.set(conn)
            self._snapshots_open += 1
            try:
                await conn.execute("BEGIN")
                yield
            finally:
                _SNAPSHOT.reset(token)
                self._snapshots_open -= 1
                # Shielded: a cancelled request must not leave the transaction open, and the
                # connection goes back to the pool only once it has ended.
                end = asyncio.ensure_future(_end_read(conn))
                end.add_done_callback(lambda _: self._pool.put_nowait(conn))
                await asyncio.shield(end)

    def _read_point(self, sql: str, params: Params = (), *, fresh: bool = False) -> list[tuple[Any, ...]]:
        """An indexed point read, run right here on the event loop's thread. Scans and
        aggregates of unbounded size use `_read` or `_aggregate` instead.

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
        where the look-up would cost ~230 (a balance read not found in `_memo` makes one point
        read, ~305k instructions in all)."""
        if self._snapshots_open and _SNAPSHOT.get() is not None:
            raise PointReadInSnapshot()
        cursor = self._point_cursor
        assert cursor is not None, "store is not open"
        if fresh:
            self._end_point_txn()
            self._memo_checked = False  # the memo's next look checks against this newer moment
        if not self._point_txn:
            cursor.execute("BEGIN")
            self._point_txn = True
            self._queue_turn_end()
        return cursor.execute(sql, params).fetchall()

    def _memo(self) -> dict[Hashable, Any]:
        """Point-read answers to keep while the data they came from is unchanged: the caller
        looks its answer up here before making the point read, and files it with `_memoize`.
        An answer that depends on the time besides the data carries the span it holds for
        (store/sqlite/ledger.py's balance).

        SQLite counts the commits of other connections (`PRAGMA data_version`: every write
        is another connection's, this one is query-only). At a loop turn's first look the count
        is read, and every answer dropped if it moved: so an answer taken from here is what a
        point read in this turn could have read, as the turn's point reads share one
        transaction begun at its first (read-your-writes as `_read_point` says: a request woken
        by its commit, or arriving after it, looks in a later turn). Read inside the turn's
        transaction, the count is its snapshot's, else the latest: either way an answer is
        filed under a count no newer than the data it came from, so a commit it missed always
        moves the count at a later look. Measured by callgrind (`bench.instructions`), a
        balance read over HTTP 304.4k -> 284.7k instructions per request with the answers here; with every
        answer dropped at each turn (a write landing in every turn) 308.2k, +1.2%: the count's
        statement once a turn. Inside `snapshot()` it raises as `_read_point` does. Keys begin
        with the kind of answer (`("balance", ...)`), so that answers of several reads can share it."""
        if self._snapshots_open and _SNAPSHOT.get() is not None:
            raise PointReadInSnapshot()
        if not self._memo_checked:
            cursor = self._point_cursor
            assert cursor is not None, "store is not open"
            self._queue_turn_end()  # before the count is read, as `_read_point` queues it before its read
            (version,), = cursor.execute("PRAGMA data_version").fetchall()
            self._memo_checked = True
            if version != self._memo_version:
                self._memo_version = version
                self._memo_answers.clear()
        return self._memo_answers

    def _memoize(self, key: Hashable, answer: Any) -> None:
        """File a point read's answer in `_memo()` (after looking there in this turn). Bounded:
        once MEMO_ANSWERS are kept, they are dropped and the memo starts again."""
        answers = self._memo_answers
        if len(answers) >= MEMO_ANSWERS:
            answers.clear()
        answers[key] = answer

    def _queue_turn_end(self) -> None:
        """The turn's end, queued once a turn (its point transaction and the memo's look end there)."""
        if not self._turn_end_queued:
            self._turn_end_queued = True
            asyncio.get_running_loop().call_soon(self._end_point_turn)

    def _end_point_turn(self) -> None:
        self._turn_end_queued = False
        self._memo_checked = False
        self._end_point_txn()

    def _end_point_txn(self) -> None:
        if self._point_txn and self._point_cursor is not None:
            self._point_txn = False
            self._point_cursor.execute("COMMIT")


MEMO_ANSWERS = 8192
"""Point-read answers `_memo()` keeps at most (a balance's is ~0.3 KB with its key)."""

READER_NICENESS = 10
"""Where SCHED_IDLE is not to be had, how much lower the reader threads run than the loop's."""


def lower_thread_priority() -> int:
    """Run this reader thread below the event loop: SCHED_IDLE on Linux (a thread's own policy;
    no privilege is needed to lower it), else READER_NICENESS lower. Where neither is possible,
    nothing changes.

    The loop answers every request (parsing, validation, point reads, encoding); a reader
    thread runs one long query after another when one tenant sends many aggregates or previews,
    and SQLite releases the GIL while it does, so the OS shares the CPU between them as equals:
    on the benchmark's one pinned CPU, three busy readers took three quarters of it from the loop
    and another tenant's getBalance p99 grew ~20x. Niceness 10 (Linux weighs a reader 110
    against the loop's 1024) brought that to ~4x, but under Linux's EEVDF scheduler a waking
    loop still waited for a reader's slice: in benchmark scenario 7, another tenant's getBalance
    p99 was 4.4x alone with batches of unique_count summaries and 6.3x with batches of invoice
    previews at niceness 10, 3.3x and 2.8x at 19, and 2.2x and 1.9x with SCHED_IDLE, which the
    loop preempts at once. A reader then runs only on CPU time nothing else wants: its reads
    wait while the loop is saturated, which is the order wanted (a long read is the work that
    can wait), and on a machine with a CPU to spare they run there as before."""
    try:
        tid = threading.get_native_id()
    except AttributeError:
        return 0
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        return 0
    except (AttributeError, OSError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + READER_NICENESS))
    except (AttributeError, OSError):
        pass
    return 0


async def _fetch(conn: aiosqlite.Connection, sql: str, params: Params) -> list[tuple[Any, ...]]:
    rows: Iterable[Any] = await conn.execute_fetchall(sql, params)  # tuples: no row factory is set
    return list(rows)


async def _end_read(conn: aiosqlite.Connection) -> None:
    with contextlib.suppress(sqlite3.OperationalError):  # no transaction: its BEGIN failed
        await conn.execute("COMMIT")

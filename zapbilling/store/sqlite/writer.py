"""The single writer: one SQLite connection on one thread, with group commit.

Why not aiosqlite here: aiosqlite makes one trip to its thread per statement, and a ledger
write is several statements (dedupe insert, expiry forfeits, lot consumption, balance update,
idempotency record) that must form one transaction. Here a whole batch of write jobs crosses
to the writer thread once and the batch shares one COMMIT; one job's error undoes only that
job's writes (the jobs run as they are, and a batch in which a job failed after a write runs
again with a SAVEPOINT per job: see _run_unguarded). Every caller's future resolves only after
that COMMIT returned, so nothing is acknowledged before it is durable.

When the disk fills up or the files become read-only, the COMMIT (or a statement that spills
the page cache into the WAL) fails: SQLite rolls the transaction back, every job of the batch
is answered with that error (the callers' internal error), and the connection is fit for the
next batch, which succeeds once the fault is gone; tests/test_faults.py brings both faults on a
running server and lifts them. Should a batch's ROLLBACK itself fail, the next batch rolls back
first, or reopens the connection, instead of failing at BEGIN for the rest of the process.

What the metrics read (base.StoreStats, Load): each committed batch's seconds (BEGIN to COMMIT
done) and job count, what its jobs noted writing (base.NOTES: a job whose writes were undone
drops its own), and the jobs waiting (`depth`). A perf_counter pair and two
appends per batch, not per job.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from ..base import NOTES, Note, StoreStats

log = logging.getLogger("zapbilling.store")

Job = Callable[..., Any]
T = TypeVar("T")
MAX_BATCH = 256

Together = Callable[[sqlite3.Connection, list[tuple[Any, ...]]], list[tuple[bool, Any]]]
TOGETHER: dict[Job, Together] = {}
"""Jobs with a second form that runs several calls at once: where a batch holds two or more
calls of such a job in a row, the writer makes one call of its form with their arguments, in
their order, and takes one outcome per call from it, (True, value) or (False, the error of a
call refused before it wrote). Should the form raise, the batch runs again with a savepoint per
job, each call by itself (_run_guarded). What it is for: several callers' rows written as one
set (metering.py `_record_together`: a commit's meter events in the summary index's order)."""


class Writer:
    def __init__(self, connect: Callable[[], sqlite3.Connection], stats: StoreStats | None = None):
        self._connect = connect
        self.stats = stats if stats is not None else StoreStats()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="zapbilling-writer")
        self._conn: sqlite3.Connection | None = None
        self._pending: list[tuple[Job, tuple[Any, ...], asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._conn = await loop.run_in_executor(self._pool, self._connect)
        self._task = asyncio.create_task(self._loop(), name="zapbilling-writer")

    @property
    def depth(self) -> int:
        """Jobs submitted and not yet taken into a batch."""
        return len(self._pending)

    async def run(self, job: Callable[..., T], *args: Any) -> T:
        """Run `job(conn, *args)` atomically in the writer; return its result once committed."""
        if self._closing or self._task is None:
            raise RuntimeError("the store is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((job, args, future))
        self._wake.set()
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        stats = self.stats
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                try:
                    outcomes, committed = await loop.run_in_executor(self._pool, self._run_batch, [(j, a) for j, a, _ in batch])
                except BaseException as exc:  # the thread itself failed: no job of this batch committed
                    outcomes, committed = [(False, exc)] * len(batch), None
                if committed is not None:
                    seconds, notes = committed
                    stats.commits.append((seconds, len(batch)))
                    if notes:
                        stats.written.extend(notes)
                for (_, _, future), (ok, value) in zip(batch, outcomes):
                    if future.done():
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
            if self._closing:
                return

    def _ready(self) -> sqlite3.Connection:
        """The connection, outside any transaction. A batch whose ROLLBACK failed (after its
        COMMIT failed: a disk error) may have left its transaction open, and then every later
        BEGIN would fail, every write until a restart. So roll it back now, or when that fails
        too, reopen the connection (closing one discards its transaction). One attribute read
        per batch when nothing is wrong."""
        conn = self._conn
        if conn is not None and conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("the writer's connection cannot roll back its last failed batch: reopening it")
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
                conn = self._conn = None
        if conn is None:
            conn = self._conn = self._connect()  # raises while the fault lasts: this batch fails, the next tries again
        return conn

    def _run_batch(
        self, jobs: list[tuple[Job, tuple[Any, ...]]]
    ) -> tuple[list[tuple[bool, Any]], tuple[float, list[Note]] | None]:
        """The jobs' outcomes, and (seconds, the jobs' notes) when the batch committed."""
        conn = self._ready()
        notes: list[Note] = []
        NOTES.set(notes)  # this thread's own context: the jobs below note what they write here
        started = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        try:
            outcomes = _run_unguarded(conn, jobs, notes)
            if outcomes is None:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                del notes[:]
                conn.execute("BEGIN IMMEDIATE")
                outcomes = _run_guarded(conn, jobs, notes)
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:  # the callers get the first error; the next batch deals with this one
                    log.exception("write batch of %d jobs failed to roll back", len(jobs))
            # One line, no traceback: every caller gets this exception and logs it as its own
            # fault, traceback and error id included; logging it here too doubled each one.
            log.error("write batch of %d jobs failed to commit: %s", len(jobs), exc)
            return [(False, exc)] * len(jobs), None
        return outcomes, (time.perf_counter() - started, notes)

    async def close(self) -> None:
        """Finish every write already submitted, then close the connection."""
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        await self._task
        self._task = None
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, conn.close)
        self._pool.shutdown(wait=True)


def _run_unguarded(
    conn: sqlite3.Connection, jobs: list[tuple[Job, tuple[Any, ...]]], notes: list[Note]
) -> list[tuple[bool, Any]] | None:
    """The batch's outcomes with no SAVEPOINT per job, or None when a job failed after it had
    changed a row (or its error ended the transaction): then the caller rolls the batch back
    and runs it again with a savepoint per job, so that only the failed job's writes are undone.

    Why: a savepoint copies into its journal every page it changes that an earlier job of the
    batch had changed, and the jobs of a batch share the tail pages of every table and index
    they append to. Callgrind (python -m bench.instructions --op recordUsage --webhook): 673k
    -> 656k instructions per recordUsage without a webhook endpoint, 786k -> 731k with one on
    usage.recorded (its events table adds five more shared tail pages per job). A job refused
    before it writes (a refund past what is left, a quota reached: the usual failures) changes
    no row and keeps the batch on this path; a job failing after a write (an overflow found by
    the balance's CHECK) costs its batch a second run. Jobs are plain functions of the
    connection and their arguments, so running one twice in an uncommitted batch is safe."""
    outcomes: list[tuple[bool, Any]] = []
    at, end = 0, len(jobs)
    while at < end:
        job, args = jobs[at]
        together = TOGETHER.get(job)
        if together is not None:
            upto = at + 1
            while upto < end and jobs[upto][0] is job:
                upto += 1
            if upto - at > 1:
                try:
                    outcomes += together(conn, [a for _, a in jobs[at:upto]])
                except Exception:
                    return None
                at = upto
                continue
        at += 1
        before, mark = conn.total_changes, len(notes)
        try:
            outcomes.append((True, job(conn, *args)))
        except Exception as exc:
            if conn.total_changes != before or not conn.in_transaction:
                return None
            del notes[mark:]
            outcomes.append((False, exc))
    return outcomes


def _run_guarded(conn: sqlite3.Connection, jobs: list[tuple[Job, tuple[Any, ...]]], notes: list[Note]) -> list[tuple[bool, Any]]:
    """The batch's outcomes with a SAVEPOINT per job: a failed job's writes and notes are undone
    and the others' kept."""
    outcomes: list[tuple[bool, Any]] = []
    for job, args in jobs:
        conn.execute("SAVEPOINT job")
        mark = len(notes)
        try:
            outcomes.append((True, job(conn, *args)))
            conn.execute("RELEASE job")
        except Exception as exc:
            del notes[mark:]
            conn.execute("ROLLBACK TO job")
            conn.execute("RELEASE job")
            outcomes.append((False, exc))
    return outcomes

"""The SQLite connections: WAL mode, one writer thread with group commit (writer.py) for every
write, and the read path (reads.py: a pool of readers, `snapshot()` and point reads on the
loop's thread), which WAL lets run beside the writer. This module keeps the writer's side: opening
the file, the two ways to write, and idempotency.

Reads are single statements wherever the answer must be consistent, because a single SELECT
sees one snapshot; where one answer takes several (invoicePreview), they run inside
`snapshot()`, one read transaction. A write is one job on the writer, which is one transaction.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from ..answers import PurgeHorizon, replayed_answer, stored_answer
from ..base import DURABILITY, Idempotency, Load, StoreStats
from ..refusals import KeyReused
from ..migrations import migrate
from .file_check import OpenedFile
from .reads import ReadPath
from .writer import Writer

T = TypeVar("T")

# None bound as a parameter: the sqlite3 module looks for an adapter for every value that is not
# exactly an int, float, str or bytearray, and for None, having none, asks its protocol type for
# `__adapt__`, which raises an AttributeError (a formatted message) that it then clears: 0.37 us
# per None bound (timeit: 100 rows of two Nones each, 138 us a batch; with this adapter 94 us;
# NULL written in the statement instead, 63 us). Under callgrind that was two AttributeErrors per
# meter event. An adapter registered for NoneType is found first; `{}.get` answers None for any
# argument, in C. It changes nothing bound: None is still bound as NULL.
_NOTHING: dict[None, None] = {}
sqlite3.register_adapter(type(None), _NOTHING.get)
# A bool the same way (an int subclass, not exactly an int): with `int` as its adapter it is
# bound as the 0 or 1 it was bound as before, without the AttributeErrors (timeit: five bools
# bound, 3.44 -> 2.25 us a statement; five ints 1.20). recordUsage's ledger row binds one
# (`evented`).
sqlite3.register_adapter(bool, int)

WAL_AUTOCHECKPOINT_PAGES = 4000


def _enable_wal(conn: sqlite3.Connection, patience: float = 10.0) -> None:
    """Switch to WAL, waiting while another connection opens the same fresh file: SQLite
    answers this pragma's lock conflict at once instead of calling the busy handler."""
    deadline = time.monotonic() + patience
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


FILE_MODE = 0o600
"""The database holds every tenant's money and the hashes of their keys: owner only. SQLite
creates the -wal and -shm files with the database file's own mode, so they follow."""


def _create_private(path: str) -> None:
    """Create the database file owner-only before SQLite would create it with the umask's 0644.
    An existing file keeps the mode its owner gave it."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))


class SqliteBase(ReadPath):
    """The writer and the two ways to write: `_run` for a plain atomic job, `_write` for a
    tenant's write that honours an idempotency key in the same transaction. The three ways to
    read (`_read` and `_aggregate` on the pool, `snapshot()`, `_read_point`) and their rule are
    ReadPath's (reads.py)."""

    def __init__(self, path: str | Path, durability: str = "full"):
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY)}")
        super().__init__(str(path))
        self.durability = durability
        self.stats = StoreStats()
        self._writer = Writer(self._connect_writer, self.stats)
        self._purge_horizon = PurgeHorizon()
        self._events_horizon = PurgeHorizon()  # the outbox's purge (retention.py) has a clock of its own

    # -- lifecycle ---------------------------------------------------------------------------
    def _connect_writer(self) -> sqlite3.Connection:
        _create_private(self.path)
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 10000")
        _enable_wal(conn)
        conn.execute(f"PRAGMA synchronous = {self.durability.upper()}")  # SQLite's names for the two levels
        # Checkpoint every 4000 WAL pages (16 MB) instead of SQLite's 1000: a page that many
        # commits touch (an account's balance, its usage and dedupe index entries) is copied
        # back to the database once per checkpoint, so a quarter as many checkpoints copy it a
        # quarter as often (measured: ~25% less commit time per recordUsage). Durability is the
        # same: a commit is durable once it is in the WAL.
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn)
        # Savepoint and statement journals: a savepoint journals the pages it changes that
        # earlier writes of the batch had changed (tail pages of every table and index), and
        # past 64 KiB that sub-journal spilled to a new file under /var/tmp per commit. Measured
        # when every write was a SAVEPOINT (now only a batch run again after a failed write is:
        # writer._run_unguarded), in memory (strace, recordUsage with an endpoint on
        # usage.recorded, 31 writes per commit): 101 -> 35 KB written per request, system CPU
        # 90 -> 65 us; 30 -> 26 KB and 52 -> 45 us without the endpoint. Only after the
        # migrations: a migration's CREATE INDEX sorts its table through temporary files, which
        # in memory would hold the whole sort.
        conn.execute("PRAGMA temp_store = MEMORY")
        return conn

    async def open(self) -> None:
        await self._writer.start()  # first: it creates the file and migrates it
        self._file = OpenedFile(self.path)  # what schema_version (/readyz) checks the path still names
        await self._open_reads()

    async def close(self) -> None:
        await self._writer.close()
        await self._close_reads()

    def load(self) -> Load:
        return Load(self._writer.depth, 0, 0, 0)

    async def _run(self, job: Callable[..., T], *args: Any) -> T:
        """Run `job(conn, *args)` as one atomic write; returns once it is committed."""
        return await self._writer.run(job, *args)

    async def _write(self, tenant: int, idempotency: Idempotency | None, now: int, job: Callable[..., T], *args: Any) -> T:
        """`job` as one atomic write, under the call's idempotency key if it has one. Without a
        key the writer gets the job itself: it can then run calls of one job together (TOGETHER)."""
        if idempotency is None:
            return await self._writer.run(job, *args)
        return await self._writer.run(_idempotent, tenant, idempotency, now, job, *args)

    async def schema_version(self) -> int:
        """Read afresh from the file the path names, which must be the one opened (file_check.py)."""
        return await self._file.schema_version()

    async def idempotency_fingerprint(self, tenant: int, key: str) -> str | None:
        rows = self._read_point("SELECT fingerprint FROM idempotency WHERE tenant = ? AND key = ?", (tenant, key))
        return rows[0][0] if rows else None

    async def claim_idempotency(self, tenant: int, idempotency: Idempotency, now: int, answer: dict[str, Any]) -> dict[str, Any]:
        return await self._write(tenant, idempotency, now, _answer, answer)

    async def purge_idempotency(self, older_than: int) -> int:
        """Drop the keys created before `older_than`, as far as PurgeHorizon (answers.py) allows."""
        return await self._run(_purge_idempotency, self._purge_horizon.clamp(older_than))


def _idempotent(conn: sqlite3.Connection, tenant: int, idem: Idempotency, now: int, job: Callable[..., Any], *args: Any) -> Any:
    """Claim the idempotency key in the same transaction as the write it guards: the primary
    key makes a concurrent duplicate see the first call's response, never run twice. The
    response is stored as `stored_answer` (answers.py) says, and a replay answers it exactly."""
    claimed = conn.execute(
        "INSERT INTO idempotency (tenant, key, fingerprint, response, created_at) VALUES (?, ?, ?, '', ?)"
        " ON CONFLICT (tenant, key) DO NOTHING",
        (tenant, idem.key, idem.fingerprint, now),
    ).rowcount
    if not claimed:
        fingerprint, response = conn.execute(
            "SELECT fingerprint, response FROM idempotency WHERE tenant = ? AND key = ?", (tenant, idem.key)
        ).fetchone()
        if fingerprint != idem.fingerprint:
            raise KeyReused()
        return replayed_answer(response)
    result = job(conn, *args)
    conn.execute("UPDATE idempotency SET response = ? WHERE tenant = ? AND key = ?", (stored_answer(result), tenant, idem.key))
    return result


def _purge_idempotency(conn: sqlite3.Connection, older_than: int) -> int:
    return conn.execute("DELETE FROM idempotency WHERE created_at < ?", (older_than,)).rowcount


def _answer(conn: sqlite3.Connection, answer: dict[str, Any]) -> dict[str, Any]:
    """The whole job of a call that writes nothing but its idempotency key."""
    return answer

"""The SQLite connections: WAL mode, one writer thread with group commit (writer.py) for every
write, and an aiosqlite connection for reads, which WAL lets run beside the writer.

Reads are single statements wherever the answer must be consistent, because a single SELECT
sees one snapshot; where one answer takes several (invoicePreview), they run inside
`snapshot()`, one read transaction. A write is one job on the writer, which is one transaction.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sqlite3
import time
from contextvars import ContextVar
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiosqlite

from ..errors import Conflict
from .base import Idempotency
from .migrations import migrate
from .writer import Writer

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
DURABILITY = {"full": "FULL", "normal": "NORMAL"}
WAL_AUTOCHECKPOINT_PAGES = 4000


_SNAPSHOT: ContextVar[aiosqlite.Connection | None] = ContextVar("zapbilling_snapshot", default=None)
"""The snapshot connection while the current task is inside `snapshot()`: a context variable,
so a concurrent request's reads never land in another request's read transaction."""


async def _end_read(conn: aiosqlite.Connection) -> None:
    with contextlib.suppress(sqlite3.OperationalError):  # no transaction: its BEGIN failed
        await conn.execute("COMMIT")


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


def new_id(prefix: str) -> str:
    """`<prefix>_` and 24 hex digits: the creation millisecond (11 digits) then 52 random bits.
    Ids made later sort later, so the UNIQUE index on `id` grows at its right edge: a commit of
    many rows dirties one or two of its pages instead of one random page per row (measured: a
    batch of recordUsage writes cost ~25% less). The random part keeps ids of one millisecond
    unguessable and distinct; the UNIQUE constraint stays the guarantee."""
    return f"{prefix}_{time.time_ns() // 1_000_000:011x}{secrets.randbits(52):013x}"


class SqliteBase:
    """The connections and the two ways to write: `_run` for a plain atomic job, `_write` for a
    tenant's write that honours an idempotency key in the same transaction."""

    def __init__(self, path: str | Path, durability: str = "full"):
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY)}")
        self.path = str(path)
        self.durability = durability
        self._writer = Writer(self._connect_writer)
        self._reader: aiosqlite.Connection | None = None
        self._snapshots: aiosqlite.Connection | None = None
        self._snapshot_lock = asyncio.Lock()
        self._point: sqlite3.Connection | None = None
        self._point_txn = False

    # -- lifecycle ---------------------------------------------------------------------------
    def _connect_writer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 10000")
        _enable_wal(conn)
        conn.execute(f"PRAGMA synchronous = {DURABILITY[self.durability]}")
        # Checkpoint every 4000 WAL pages (16 MB) instead of SQLite's 1000: a page that many
        # commits touch (an account's balance, its usage and dedupe index entries) is copied
        # back to the database once per checkpoint, so a quarter as many checkpoints copy it a
        # quarter as often (measured: ~25% less commit time per recordUsage). Durability is the
        # same: a commit is durable once it is in the WAL.
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn)
        return conn

    async def open(self) -> None:
        await self._writer.start()
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

    async def close(self) -> None:
        await self._writer.close()
        for conn in (self._reader, self._snapshots):
            if conn is not None:
                await conn.close()
        self._reader = self._snapshots = None
        if self._point is not None:
            self._end_point_txn()
            self._point.close()
            self._point = None

    async def _read(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        conn = _SNAPSHOT.get() or self._reader
        assert conn is not None, "store is not open"
        return list(await conn.execute_fetchall(sql, params))

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[None]:
        """Inside this block, this task's `_read` queries all see the database as of one moment:
        an answer computed from several (an invoice preview: rules, grants, then each meter's
        events) must not mix the states before and after a write that lands between them.
        Snapshots take turns on a connection of their own, so they hold up no other read; in
        WAL mode they hold up no write either. Point reads (`_read_point`) are not part of it."""
        conn = self._snapshots
        assert conn is not None, "store is not open"
        async with self._snapshot_lock:
            token = _SNAPSHOT.set(conn)
            try:
                await conn.execute("BEGIN")
                yield
            finally:
                _SNAPSHOT.reset(token)
                # Shielded: a cancelled request must not leave the transaction open for the next.
                await asyncio.shield(_end_read(conn))

    def _read_point(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = (), *, fresh: bool = False) -> list[tuple[Any, ...]]:
        """An indexed point read, run right here on the event loop's thread: it takes a few
        microseconds, less than one trip to aiosqlite's thread. In WAL mode a reader never
        waits for the writer. Scans and aggregates of unbounded size use `_read` instead.

        The point reads of one turn of the event loop share one read transaction, ended by a
        callback queued behind them: starting and ending a transaction (file locks, a look at
        the WAL index) costs more than the lookup itself. That is still read-your-writes:
        a coroutine woken by its write's commit is queued after that callback (or the
        transaction began after the commit), and a request that arrives later finds it ended.
        `fresh`: this read must see every commit made before it (see KeyQueries.authenticate),
        so it starts a new transaction."""
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

    async def _run(self, job: Callable[..., Any], *args: Any) -> Any:
        """Run `job(conn, *args)` as one atomic write; returns once it is committed."""
        return await self._writer.run(job, *args)

    async def _write(self, tenant: int, idempotency: Idempotency | None, now: int, job: Callable[..., Any], *args: Any) -> Any:
        return await self._writer.run(_idempotent, tenant, idempotency, now, job, *args)

    async def idempotency_fingerprint(self, tenant: int, key: str) -> str | None:
        rows = self._read_point("SELECT fingerprint FROM idempotency WHERE tenant = ? AND key = ?", (tenant, key))
        return rows[0][0] if rows else None

    async def purge_idempotency(self, older_than: int) -> int:
        return await self._run(lambda conn: conn.execute("DELETE FROM idempotency WHERE created_at < ?", (older_than,)).rowcount)


def _idempotent(conn: sqlite3.Connection, tenant: int, idem: Idempotency | None, now: int, job: Callable[..., Any], *args: Any) -> Any:
    """Claim the idempotency key in the same transaction as the write it guards: the primary
    key makes a concurrent duplicate see the first call's response, never run twice."""
    if idem is None:
        return job(conn, *args)
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
            raise Conflict("idempotency key was already used with different parameters", param="idempotencyKey")
        return json.loads(response)
    result = job(conn, *args)
    conn.execute("UPDATE idempotency SET response = ? WHERE tenant = ? AND key = ?", (json.dumps(result), tenant, idem.key))
    return result

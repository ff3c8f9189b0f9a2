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
import json
import os
import secrets
import sqlite3
import time
import zlib
from pathlib import Path
from typing import Any, Callable, TypeVar

from .base import DURABILITY, Idempotency
from .refusals import KeyReused
from .migrations import migrate
from .reads import ReadPath
from .writer import Writer

T = TypeVar("T")

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
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


def new_id(prefix: str) -> str:
    """`<prefix>_` and 24 hex digits: the creation millisecond (11 digits) then 52 random bits.
    Ids made later sort later, so the UNIQUE index on `id` grows at its right edge: a commit of
    many rows dirties one or two of its pages instead of one random page per row (measured: a
    batch of recordUsage writes cost ~25% less). The random part keeps ids of one millisecond
    unguessable and distinct; the UNIQUE constraint stays the guarantee."""
    return f"{prefix}_{time.time_ns() // 1_000_000:011x}{secrets.randbits(52):013x}"


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
        self._writer = Writer(self._connect_writer)
        self._purged: tuple[int, float] | None = None  # the last purge's horizon, and time.monotonic() then

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
        return conn

    async def open(self) -> None:
        await self._writer.start()  # first: it creates the file and migrates it
        await self._open_reads()

    async def close(self) -> None:
        await self._writer.close()
        await self._close_reads()

    async def _run(self, job: Callable[..., T], *args: Any) -> T:
        """Run `job(conn, *args)` as one atomic write; returns once it is committed."""
        return await self._writer.run(job, *args)

    async def _write(self, tenant: int, idempotency: Idempotency | None, now: int, job: Callable[..., T], *args: Any) -> T:
        return await self._writer.run(_idempotent, tenant, idempotency, now, job, *args)

    async def idempotency_fingerprint(self, tenant: int, key: str) -> str | None:
        rows = self._read_point("SELECT fingerprint FROM idempotency WHERE tenant = ? AND key = ?", (tenant, key))
        return rows[0][0] if rows else None

    async def claim_idempotency(self, tenant: int, idempotency: Idempotency, now: int, answer: dict[str, Any]) -> dict[str, Any]:
        return await self._write(tenant, idempotency, now, _answer, answer)

    async def purge_idempotency(self, older_than: int) -> int:
        """Drop the keys created before `older_than` (the caller's clock less the time keys are
        kept), except those a forward jump of that clock would drop early: the horizon moves on
        at most as fast as real time (the monotonic clock) since this process's last purge, so
        a clock stepped two days ahead does not drop keys a client may still retry with (the
        contract keeps them at least 24 hours). A backward jump only purges less. The first
        purge of a process has nothing to compare with and takes the clock's word."""
        mono = time.monotonic()
        if self._purged is not None:
            horizon, then = self._purged
            older_than = min(older_than, horizon + int((mono - then) * 1_000_000))
        self._purged = (older_than, mono)
        return await self._run(_purge_idempotency, older_than)


def _idempotent(conn: sqlite3.Connection, tenant: int, idem: Idempotency | None, now: int, job: Callable[..., Any], *args: Any) -> Any:
    """Claim the idempotency key in the same transaction as the write it guards: the primary
    key makes a concurrent duplicate see the first call's response, never run twice. The
    response is stored as `_stored_answer` says, and a replay answers it exactly."""
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
            raise KeyReused()
        return _replayed_answer(response)
    result = job(conn, *args)
    conn.execute("UPDATE idempotency SET response = ? WHERE tenant = ? AND key = ?", (_stored_answer(result), tenant, idem.key))
    return result


COMPRESS_FROM = 1024
"""Stored answers of at least this many characters (as compact JSON) are compressed."""
_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_compact_ascii = json.JSONEncoder(separators=(",", ":")).encode


def _stored_answer(result: Any) -> str | bytes:
    """A write's answer as its idempotency record keeps it: compact JSON text, or from 1 KiB on
    compact UTF-8 JSON compressed by zlib (a BLOB: the column's TEXT affinity leaves BLOBs
    alone, so no migration, and records written before read as they were).

    Why: a keyed write's answer echoes what it stored (a deposit's metadata and tags), so the
    record doubled the ledger's bytes, and the old `json.dumps` even tripled non-ASCII text (an
    emoji's 4 UTF-8 bytes became a 12-byte `\\ud83c\\udf00`). The largest legal deposit
    (metadata of 16 KiB as compact JSON in 64 keys, tags of 1,000 characters: the bounds in
    limits.py and billing/validation.py) keeps, in bytes:

        metadata and tags of           before (json.dumps)   compact UTF-8   stored now
        English words (ASCII)               17,744              17,598          6,386
        random base64 (ASCII)               17,744              17,598         13,363
        emoji (4 UTF-8 bytes each)          60,349              20,595         10,169

    So a record is never more than the answer's compact UTF-8 size (+0.03% where zlib cannot
    shrink it): ~21 KB for the largest legal deposit, usually much less, where each of the
    finding's deposits kept ~4 MB here and as much in the ledger (1 MiB of empty msgpack maps,
    which the metadata bound refuses now; as JSON they shrink ~300x). Cost, on the writer thread, for such a deposit (timeit,
    shared machine): ~65 us to encode as before, ~250-400 us more to compress at level 1
    (level 6: a few percent smaller, slower still). Answers under 1 KiB, recordUsage's among
    them, are stored as compact JSON text without compressing: the hot path pays nothing more.
    A replay decompresses and parses the same JSON, so it answers exactly what the first call
    did."""
    text = _compact(result)
    if len(text) >= COMPRESS_FROM:
        return zlib.compress(text.encode("utf-8", "surrogatepass"), 1)
    return text if text.isascii() else _compact_ascii(result)  # escaped: SQLite text must be valid UTF-8


def _replayed_answer(response: str | bytes) -> Any:
    if isinstance(response, bytes):
        return json.loads(zlib.decompress(response).decode("utf-8", "surrogatepass"))
    return json.loads(response)


def _purge_idempotency(conn: sqlite3.Connection, older_than: int) -> int:
    return conn.execute("DELETE FROM idempotency WHERE created_at < ?", (older_than,)).rowcount


def _answer(conn: sqlite3.Connection, answer: dict[str, Any]) -> dict[str, Any]:
    """The whole job of a call that writes nothing but its idempotency key."""
    return answer

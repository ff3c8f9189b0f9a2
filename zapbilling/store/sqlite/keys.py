"""API keys: stored as SHA-256 digests, never as the key itself, and cached per process.

The cache must notice a key created or revoked by the CLI, another process, from the next
request on. Every key change therefore rewrites a key epoch: 8 random bytes in a file beside
the database (`<db>-keyepoch`). Each process maps that file and compares it with the epoch its
cache was filled under on every lookup: a read of shared memory, no system call, where a
lookup in SQLite costs a read transaction (about a third of a small request's storage time).
The change is committed before the epoch is rewritten, so a lookup that sees the new epoch
also sees the change. Random bytes, not a counter, so two concurrent changes need no lock to
be noticed. Only keys that were found are cached, in a bounded dict.
"""
from __future__ import annotations

import hmac
import mmap
import os
import secrets
import sqlite3
from pathlib import Path

from ..base import KeyInfo, Principal
from ..ids import key_hash, new_id
from .connection import FILE_MODE, SqliteBase

MAX_CACHED_KEYS = 10_000
EPOCH_BYTES = 8


class KeyEpoch:
    """The shared key epoch of one database file. When the file cannot be created or mapped
    (a read-only folder), `read` answers None and callers go without a cache."""

    def __init__(self, db_path: str):
        self.path = f"{db_path}-keyepoch"
        self._map: mmap.mmap | None = None

    def open(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError:
            return
        try:
            if os.fstat(fd).st_size < EPOCH_BYTES:
                os.pwrite(fd, secrets.token_bytes(EPOCH_BYTES), 0)
            self._map = mmap.mmap(fd, EPOCH_BYTES, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            self._map = None
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None

    def read(self) -> bytes | None:
        return self._map[:EPOCH_BYTES] if self._map is not None else None

    def bump(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            os.pwrite(fd, secrets.token_bytes(EPOCH_BYTES), 0)
        finally:
            os.close(fd)


class KeyQueries(SqliteBase):
    def __init__(self, path: str | Path, durability: str = "full"):
        super().__init__(path, durability)
        self._key_epoch = KeyEpoch(self.path)
        self._keys: dict[str, Principal] = {}
        """Found keys by their text: a process holds the keys of the requests it serves anyway."""
        self._keys_epoch: bytes | None = None

    async def open(self) -> None:
        await super().open()
        self._key_epoch.open()

    async def close(self) -> None:
        await super().close()
        self._key_epoch.close()

    async def create_key(self, org: str, mode: str, scope: str, now: int) -> tuple[str, str]:
        secret = f"zb_{mode}_{secrets.token_urlsafe(24)}"
        key_id = new_id("key")
        await self._run(_create_key, key_id, org, mode, scope, key_hash(secret), secret[:12], now)
        self._key_epoch.bump()
        return key_id, secret

    async def list_keys(self) -> list[KeyInfo]:
        rows = await self._read(
            "SELECT k.id, t.org, t.mode, k.scope, k.hint, k.created_at, k.revoked_at"
            " FROM api_keys k JOIN tenants t ON t.id = k.tenant ORDER BY k.created_at, k.id"
        )
        return [KeyInfo(*r) for r in rows]

    async def revoke_key(self, key_id: str, now: int) -> bool:
        found = await self._run(_revoke_key, key_id, now)
        self._key_epoch.bump()
        return found

    def known_key(self, secret: str) -> Principal | None:
        """The cached principal while the epoch is the one the cache was filled under: what
        `authenticate` answers then, without its coroutine."""
        mapped = self._key_epoch._map  # KeyEpoch.read, written out: a call less per request
        if mapped is None or mapped[:EPOCH_BYTES] != self._keys_epoch:
            return None
        return self._keys.get(secret)

    def key_unchecked(self) -> bool:
        """Never: a key is checked when it is authenticated (the key epoch makes the cache exact
        on one machine)."""
        return False

    async def check_key(self) -> None:
        return None

    async def authenticate(self, secret: str) -> Principal | None:
        epoch = self._key_epoch.read()
        if epoch is not None:
            if epoch != self._keys_epoch:
                self._keys.clear()
                self._keys_epoch = epoch
            cached = self._keys.get(secret)
            if cached is not None:
                return cached
        digest = key_hash(secret)
        # No await from reading the epoch to filling the cache, so nothing in this process can
        # interleave; a change by another process is committed before its epoch is rewritten,
        # so a fresh read after reading the epoch sees every change that epoch stands for.
        rows = self._read_point(
            "SELECT k.hash, t.id, t.org, t.mode, k.scope, k.id FROM api_keys k JOIN tenants t ON t.id = k.tenant"
            " WHERE k.hash = ? AND k.revoked_at IS NULL",
            (digest,),
            fresh=True,
        )
        if not rows or not hmac.compare_digest(rows[0][0], digest):
            return None
        principal = Principal(*rows[0][1:])
        if epoch is not None:
            if len(self._keys) >= MAX_CACHED_KEYS:
                self._keys.clear()
            self._keys[secret] = principal
        return principal


def _create_key(conn: sqlite3.Connection, key_id: str, org: str, mode: str, scope: str, digest: str, hint: str, now: int) -> None:
    (tenant,), = conn.execute(
        "INSERT INTO tenants (org, mode) VALUES (?, ?) ON CONFLICT (org, mode) DO UPDATE SET org = excluded.org RETURNING id",
        (org, mode),
    ).fetchall()
    conn.execute(
        "INSERT INTO api_keys (id, tenant, scope, hash, hint, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        (key_id, tenant, scope, digest, hint, now),
    )


def _revoke_key(conn: sqlite3.Connection, key_id: str, now: int) -> bool:
    found = conn.execute("SELECT 1 FROM api_keys WHERE id = ?", (key_id,)).fetchone()
    conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, key_id))
    return found is not None

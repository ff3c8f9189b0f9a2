"""API keys on PostgreSQL: SHA-256 digests as on SQLite, cached per process, the cache emptied
by a notification that every key change sends in its own transaction.

The SQLite store's key-epoch file does not cross machines, so here PostgreSQL tells: a key
change runs `NOTIFY zapbilling_keys` in its transaction (delivered to every listening session
at commit), and each server process LISTENs on a connection of its own and empties its cache
when one arrives. A new key needs nothing (only keys that were found are cached); a revoked key
stops working on every server as soon as the notification arrives, which PostgreSQL sends at
commit, before the revoking call returns to its caller. While the listening connection is down
(the database restarting), the cache is not used at all, so a change made meanwhile cannot be
missed; it is re-established by the next lookup.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from typing import Any

import asyncpg

from ..base import KeyInfo, Principal
from ..ids import new_id
from .connection import CONNECT_TIMEOUT, PgBase

MAX_CACHED_KEYS = 10_000
CHANNEL = "zapbilling_keys"
log = logging.getLogger("zapbilling.store")


def key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyQueries(PgBase):
    def __init__(self, url: str, durability: str = "full", **kw: Any):
        super().__init__(url, durability, **kw)
        self._keys: dict[str, Principal] = {}
        self._listener: asyncpg.Connection | None = None
        self._generation = 0
        """Moves on whenever the cache is emptied: a lookup caches its answer only if nothing
        emptied the cache while it read (a notification arriving mid-read)."""

    async def open(self) -> None:
        await super().open()
        await self._listen()

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None and not listener.is_closed():
            listener.terminate()
        await super().close()

    async def _listen(self) -> None:
        """(Re)open the listening connection; until it is up, nothing is cached."""
        self._changed()
        try:
            conn = await asyncpg.connect(self.url, timeout=CONNECT_TIMEOUT)
            await conn.add_listener(CHANNEL, self._changed)
            conn.add_termination_listener(self._lost)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            self._listener = None
            return
        self._listener = conn

    def _changed(self, *_: Any) -> None:
        self._keys.clear()
        self._generation += 1

    def _lost(self, *_: Any) -> None:
        self._listener = None
        self._changed()

    def _caching(self) -> bool:
        listener = self._listener
        return listener is not None and not listener.is_closed()

    async def create_key(self, org: str, mode: str, scope: str, now: int) -> tuple[str, str]:
        secret = f"zb_{mode}_{secrets.token_urlsafe(24)}"
        key_id = new_id("key")
        await self._tx(_create_key, key_id, org, mode, scope, key_hash(secret), secret[:12], now)
        return key_id, secret

    async def list_keys(self) -> list[KeyInfo]:
        rows = await self._read(
            "SELECT k.id, t.org, t.mode, k.scope, k.hint, k.created_at, k.revoked_at"
            " FROM api_keys k JOIN tenants t ON t.id = k.tenant ORDER BY k.created_at, k.id"
        )
        return [KeyInfo(*r) for r in rows]

    async def revoke_key(self, key_id: str, now: int) -> bool:
        return await self._tx(_revoke_key, key_id, now)

    async def authenticate(self, secret: str) -> Principal | None:
        caching = self._caching()
        if caching:
            cached = self._keys.get(secret)
            if cached is not None:
                return cached
        elif self._pool is not None:
            await self._listen()
            caching = self._caching()
        generation = self._generation
        digest = key_hash(secret)
        rows = await self._read(
            "SELECT k.hash, t.id, t.org, t.mode, k.scope, k.id FROM api_keys k JOIN tenants t ON t.id = k.tenant"
            " WHERE k.hash = $1 AND k.revoked_at IS NULL",
            digest,
        )
        if not rows or not hmac.compare_digest(rows[0][0], digest):
            return None
        principal = Principal(*rows[0][1:])
        # Cached only if the listener was up before the read began and nothing emptied the
        # cache since: a change committed after the read began sends a notification that
        # either arrived during the read (then this answer is not cached) or arrives later
        # (and empties the cache again).
        if caching and generation == self._generation and self._caching():
            if len(self._keys) >= MAX_CACHED_KEYS:
                self._keys.clear()
            self._keys[secret] = principal
        return principal


async def _create_key(conn: asyncpg.Connection, key_id: str, org: str, mode: str, scope: str, digest: str, hint: str, now: int) -> None:
    tenant = await conn.fetchval(
        "INSERT INTO tenants (org, mode) VALUES ($1, $2) ON CONFLICT (org, mode) DO UPDATE SET org = excluded.org RETURNING id",
        org, mode,
    )
    await conn.execute(
        "INSERT INTO api_keys (id, tenant, scope, hash, hint, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        key_id, tenant, scope, digest, hint, now,
    )
    await conn.execute(f"NOTIFY {CHANNEL}")


async def _revoke_key(conn: asyncpg.Connection, key_id: str, now: int) -> bool:
    found = await conn.fetchval("SELECT 1 FROM api_keys WHERE id = $1", key_id)
    await conn.execute("UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL", key_id, now)
    await conn.execute(f"NOTIFY {CHANNEL}")
    return found is not None

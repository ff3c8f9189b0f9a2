"""API keys on PostgreSQL: stored as SHA-256 digests, never as the key itself; remembered by
each server, but never trusted from memory alone.

The SQLite store caches keys per process and learns of a change from a key-epoch file beside
the database, which every process of one machine shares. Servers on several machines share
nothing but PostgreSQL, and a change must hold from the next request on every server. A
notification (LISTEN/NOTIFY) arrives a little after the commit it reports: tried here first, a
request sent right after the revocation returned still found the revoked key in the server's
cache (tests/test_auth.py, the request beat the notification through the server's event loop).

So the cache only saves the separate lookup, not the check: a key found in it lets the request
in *unchecked* (connection.py `UNCHECKED_KEY`), and the database checks it within the request, in
a statement that runs anyway: every write transaction checks it before it writes (a revoked
key writes nothing), getBalance's read carries the check as one more column (one round trip
instead of two: the hot read), and a request that reached neither is checked by the
transport before it is answered (`check_key`). Every check reads the database after the
request arrived, so a key revoked before it is refused, on every server, exactly as an
uncached lookup would. A key not in the cache is looked up as before (and then cached).
"""
from __future__ import annotations

import hmac
import secrets

import asyncpg

from ..base import KeyInfo, Principal
from ..ids import key_hash, new_id
from .connection import UNCHECKED_KEY, MAX_CACHED_KEYS, PgBase


class KeyQueries(PgBase):
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
        cached = self._keys.get(secret)
        if cached is not None:
            UNCHECKED_KEY.set(cached[1])
            return cached[0]
        UNCHECKED_KEY.set(None)
        digest = key_hash(secret)
        rows = await self._read(
            "SELECT k.hash, t.id, t.org, t.mode, k.scope, k.id FROM api_keys k JOIN tenants t ON t.id = k.tenant"
            " WHERE k.hash = $1 AND k.revoked_at IS NULL",
            digest,
        )
        if not rows or not hmac.compare_digest(rows[0][0], digest):
            return None
        principal = Principal(*rows[0][1:])
        if len(self._keys) >= MAX_CACHED_KEYS:
            self._keys.clear()
        self._keys[secret] = (principal, digest)
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


async def _revoke_key(conn: asyncpg.Connection, key_id: str, now: int) -> bool:
    found = await conn.fetchval("SELECT 1 FROM api_keys WHERE id = $1", key_id)
    await conn.execute("UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL", key_id, now)
    return found is not None

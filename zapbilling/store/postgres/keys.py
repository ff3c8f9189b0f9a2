"""API keys on PostgreSQL: stored as SHA-256 digests, never as the key itself, and looked up in
the database on every request, not cached.

The SQLite store caches keys per process and learns of a change from a key-epoch file beside
the database, which every process of one machine shares. Servers on several machines share
nothing but PostgreSQL, and a change must hold from the next request on every server. A
notification (LISTEN/NOTIFY) arrives a little after the commit it reports: tried here first, a
request sent right after the revocation returned still found the revoked key in the server's
cache (tests/test_auth.py, the request beat the notification through the server's event loop).
So every request reads its key: one indexed lookup by the digest (a prepared statement),
which is exact at every instant and the same on every server. Its cost is in the benchmark
(bench --backend postgres: getBalance makes two round trips, this and the balance).
"""
from __future__ import annotations

import hmac
import secrets

import asyncpg

from ..base import KeyInfo, Principal
from ..ids import key_hash, new_id
from .connection import PgBase


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
        digest = key_hash(secret)
        rows = await self._read(
            "SELECT k.hash, t.id, t.org, t.mode, k.scope, k.id FROM api_keys k JOIN tenants t ON t.id = k.tenant"
            " WHERE k.hash = $1 AND k.revoked_at IS NULL",
            digest,
        )
        if not rows or not hmac.compare_digest(rows[0][0], digest):
            return None
        return Principal(*rows[0][1:])


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

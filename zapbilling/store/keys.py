"""API keys: stored as SHA-256 digests, never as the key itself."""
from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3

from .base import KeyInfo, Principal
from .connection import SqliteBase, new_id


def key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyQueries(SqliteBase):
    async def create_key(self, org: str, mode: str, scope: str, now: int) -> tuple[str, str]:
        secret = f"zb_{mode}_{secrets.token_urlsafe(24)}"
        key_id = new_id("key")
        await self._run(_create_key, key_id, org, mode, scope, key_hash(secret), secret[:12], now)
        return key_id, secret

    async def list_keys(self) -> list[KeyInfo]:
        rows = await self._read(
            "SELECT k.id, t.org, t.mode, k.scope, k.hint, k.created_at, k.revoked_at"
            " FROM api_keys k JOIN tenants t ON t.id = k.tenant ORDER BY k.created_at, k.id"
        )
        return [KeyInfo(*r) for r in rows]

    async def revoke_key(self, key_id: str, now: int) -> bool:
        return await self._run(_revoke_key, key_id, now)

    async def authenticate(self, secret: str) -> Principal | None:
        digest = key_hash(secret)
        rows = self._read_point(
            "SELECT k.hash, t.id, t.org, t.mode, k.scope, k.id FROM api_keys k JOIN tenants t ON t.id = k.tenant"
            " WHERE k.hash = ? AND k.revoked_at IS NULL",
            (digest,),
        )
        if not rows or not hmac.compare_digest(rows[0][0], digest):
            return None
        return Principal(*rows[0][1:])


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

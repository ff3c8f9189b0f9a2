"""The SQLite store: WAL mode, one writer thread with group commit (writer.py) and an aiosqlite
connection for reads, which WAL lets run beside the writer without waiting.

Reads are single statements wherever the answer must be consistent, because a single SELECT
sees one snapshot; a write is one job on the writer, which is one transaction.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable

import aiosqlite

from ..errors import Conflict, InvalidParams, NotFound
from ..times import format_ts
from .base import Idempotency, KeyInfo, LedgerRow, NewEntry, Principal
from .migrations import migrate
from .writer import Writer

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
DURABILITY = {"full": "FULL", "normal": "NORMAL"}

_ROW = "id, user_id, currency, type, amount, tags, notes, metadata, created_at, expires_at, refund_of"


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
    return f"{prefix}_{secrets.token_hex(12)}"


def key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _row(r: tuple[Any, ...]) -> LedgerRow:
    return {
        "id": r[0], "user": r[1], "currency": r[2], "type": r[3], "amount": r[4], "tags": r[5], "notes": r[6],
        "metadata": json.loads(r[7]) if r[7] is not None else None,
        "createdAt": r[8], "expiresAt": r[9], "refundOf": r[10],
    }


class SqliteStore:
    def __init__(self, path: str | Path, durability: str = "full"):
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY)}")
        self.path = str(path)
        self.durability = durability
        self._writer = Writer(self._connect_writer)
        self._reader: aiosqlite.Connection | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def _connect_writer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 10000")
        _enable_wal(conn)
        conn.execute(f"PRAGMA synchronous = {DURABILITY[self.durability]}")
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn)
        return conn

    async def open(self) -> None:
        await self._writer.start()
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        await self._reader.execute("PRAGMA busy_timeout = 10000")
        await self._reader.execute("PRAGMA query_only = ON")

    async def close(self) -> None:
        await self._writer.close()
        if self._reader is not None:
            await self._reader.close()
            self._reader = None

    async def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        assert self._reader is not None, "store is not open"
        return list(await self._reader.execute_fetchall(sql, params))

    async def _write(self, tenant: int, idempotency: Idempotency | None, now: int, job: Callable[..., Any], *args: Any) -> Any:
        return await self._writer.run(_idempotent, tenant, idempotency, now, job, *args)

    # -- keys --------------------------------------------------------------------------------
    async def create_key(self, org: str, mode: str, scope: str, now: int) -> tuple[str, str]:
        secret = f"zb_{mode}_{secrets.token_urlsafe(24)}"
        key_id = new_id("key")
        await self._writer.run(_create_key, key_id, org, mode, scope, key_hash(secret), secret[:12], now)
        return key_id, secret

    async def list_keys(self) -> list[KeyInfo]:
        rows = await self._read(
            "SELECT k.id, t.org, t.mode, k.scope, k.hint, k.created_at, k.revoked_at"
            " FROM api_keys k JOIN tenants t ON t.id = k.tenant ORDER BY k.created_at, k.id"
        )
        return [KeyInfo(*r) for r in rows]

    async def revoke_key(self, key_id: str, now: int) -> bool:
        return await self._writer.run(_revoke_key, key_id, now)

    async def authenticate(self, secret: str) -> Principal | None:
        digest = key_hash(secret)
        rows = await self._read(
            "SELECT k.hash, t.id, t.org, t.mode, k.scope, k.id FROM api_keys k JOIN tenants t ON t.id = k.tenant"
            " WHERE k.hash = ? AND k.revoked_at IS NULL",
            (digest,),
        )
        if not rows or not hmac.compare_digest(rows[0][0], digest):
            return None
        return Principal(*rows[0][1:])

    # -- idempotency -------------------------------------------------------------------------
    async def idempotency_fingerprint(self, tenant: int, key: str) -> str | None:
        rows = await self._read("SELECT fingerprint FROM idempotency WHERE tenant = ? AND key = ?", (tenant, key))
        return rows[0][0] if rows else None

    async def purge_idempotency(self, older_than: int) -> int:
        return await self._writer.run(lambda conn: conn.execute("DELETE FROM idempotency WHERE created_at < ?", (older_than,)).rowcount)

    # -- ledger ------------------------------------------------------------------------------
    async def balance(self, tenant: int, user: str, currency: str, now: int) -> tuple[int, int]:
        (b, h, expired), = await self._read(
            "SELECT COALESCE((SELECT balance FROM balances WHERE tenant = ?1 AND user_id = ?2 AND currency = ?3), 0),"
            " COALESCE((SELECT holds FROM balances WHERE tenant = ?1 AND user_id = ?2 AND currency = ?3), 0),"
            " (SELECT COALESCE(SUM(remaining), 0) FROM ledger WHERE tenant = ?1 AND user_id = ?2 AND currency = ?3"
            "  AND remaining > 0 AND expires_at <= ?4)",
            (tenant, user, currency, now),
        )
        return b - expired, h

    async def balances(self, tenant: int, user: str, now: int) -> list[tuple[str, int, int]]:
        rows = await self._read(
            "SELECT b.currency, b.balance, b.holds, (SELECT COALESCE(SUM(l.remaining), 0) FROM ledger l"
            "  WHERE l.tenant = b.tenant AND l.user_id = b.user_id AND l.currency = b.currency"
            "  AND l.remaining > 0 AND l.expires_at <= ?3)"
            " FROM balances b WHERE b.tenant = ?1 AND b.user_id = ?2 ORDER BY b.currency",
            (tenant, user, now),
        )
        return [(c, b - expired, h) for c, b, h, expired in rows]

    async def usage_page(
        self, tenant: int, user: str, currency: str | None, limit: int, starting_after: str | None
    ) -> tuple[list[LedgerRow], bool]:
        where, params = "tenant = ? AND user_id = ? AND tags = 'api-usage'", [tenant, user]
        if starting_after is not None:
            found = await self._read(f"SELECT seq FROM ledger WHERE {where} AND id = ?", (tenant, user, starting_after))
            if not found:
                raise NotFound("transaction not found", param="startingAfter")
            where += " AND seq < ?"
            params.append(found[0][0])
        if currency is not None:
            where += " AND currency = ?"
            params.append(currency)
        rows = await self._read(f"SELECT {_ROW} FROM ledger WHERE {where} ORDER BY seq DESC LIMIT ?", (*params, limit + 1))
        return [_row(r) for r in rows[:limit]], len(rows) > limit

    async def append_ledger_row(self, tenant: int, entry: NewEntry, idempotency: Idempotency | None = None) -> LedgerRow:
        return await self._write(tenant, idempotency, entry.now, _append, tenant, entry)

    async def forfeit_expired(self, now: int, limit: int = 500) -> int:
        return await self._writer.run(_sweep_expired, now, limit)


# -- jobs: these run on the writer thread, inside one SAVEPOINT of a batch transaction -------

def _idempotent(conn: sqlite3.Connection, tenant: int, idem: Idempotency | None, now: int, job: Callable[..., Any], *args: Any) -> Any:
    """Claim the idempotency key in the same transaction as the write it guards: the primary
    key makes a concurrent duplicate see the first call's response, never run twice."""
    if idem is None:
        return job(conn, *args)
    claimed = conn.execute(
        "INSERT INTO idempotency (tenant, key, fingerprint, response, created_at) VALUES (?, ?, ?, '', ?)"
        " ON CONFLICT (tenant, key) DO NOTHING RETURNING 1",
        (tenant, idem.key, idem.fingerprint, now),
    ).fetchone()
    if claimed is None:
        fingerprint, response = conn.execute(
            "SELECT fingerprint, response FROM idempotency WHERE tenant = ? AND key = ?", (tenant, idem.key)
        ).fetchone()
        if fingerprint != idem.fingerprint:
            raise Conflict("idempotency key was already used with different parameters", param="idempotencyKey")
        return json.loads(response)
    result = job(conn, *args)
    conn.execute("UPDATE idempotency SET response = ? WHERE tenant = ? AND key = ?", (json.dumps(result), tenant, idem.key))
    return result


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


def _append(conn: sqlite3.Connection, tenant: int, e: NewEntry) -> LedgerRow:
    if e.refund_of is not None:
        _claim_refund(conn, tenant, e)
    tx_id = new_id("tx")
    remaining = e.amount if e.type == "deposit" and e.expires_at is not None else None
    inserted = conn.execute(
        f"INSERT INTO ledger (id, tenant, user_id, currency, type, amount, tags, notes, metadata, created_at,"
        f" expires_at, remaining, refund_of, dedupe_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        f" ON CONFLICT (tenant, user_id, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING RETURNING {_ROW}",
        (tx_id, tenant, e.user, e.currency, e.type, e.amount, e.tags, e.notes,
         json.dumps(e.metadata) if e.metadata is not None else None, e.now, e.expires_at, remaining, e.refund_of, e.dedupe_key),
    ).fetchone()
    if inserted is None:  # the dedupe key was seen: the original row is the answer
        return _row(conn.execute(
            f"SELECT {_ROW} FROM ledger WHERE tenant = ? AND user_id = ? AND dedupe_key = ?", (tenant, e.user, e.dedupe_key)
        ).fetchone())
    delta = -_forfeit_account(conn, tenant, e.user, e.currency, e.now)
    if e.type == "withdraw":
        _spend_expiring(conn, tenant, e.user, e.currency, e.amount, e.now)
        delta -= e.amount
    elif e.type == "deposit":
        delta += e.amount
    _add_to_balance(conn, tenant, e.user, e.currency, delta)
    _record_usage_meter_event(conn, tenant, e)
    return _row(inserted)


def _record_usage_meter_event(conn: sqlite3.Connection, tenant: int, e: NewEntry) -> None:
    """Hook point: a usage withdrawal also records an `api-usage` meter event in this same
    transaction once meters exist (issue 4). Until then there is no meter to record to."""


def _claim_refund(conn: sqlite3.Connection, tenant: int, e: NewEntry) -> None:
    original = conn.execute(
        "SELECT amount, refunded FROM ledger WHERE id = ? AND tenant = ? AND user_id = ? AND currency = ?"
        " AND type IN ('deposit', 'withdraw')",
        (e.refund_of, tenant, e.user, e.currency),
    ).fetchone()
    if original is None:
        raise NotFound("original transaction not found", param="originalTransactionId")
    amount, refunded = original
    if e.amount > amount - refunded:
        raise InvalidParams(
            f"refund exceeds original: {amount - refunded} of {amount} cents left to refund", param="amount"
        )
    conn.execute("UPDATE ledger SET refunded = refunded + ? WHERE id = ?", (e.amount, e.refund_of))


def _forfeit_account(conn: sqlite3.Connection, tenant: int, user: str, currency: str, now: int) -> int:
    """Write off what is left of this account's expired deposits: only the unspent remainder,
    one `credit-expired` withdraw per deposit. Returns the total forfeited."""
    lots = conn.execute(
        "SELECT seq, id, remaining, expires_at FROM ledger WHERE tenant = ? AND user_id = ? AND currency = ?"
        " AND remaining > 0 AND expires_at <= ? ORDER BY expires_at, seq",
        (tenant, user, currency, now),
    ).fetchall()
    total = 0
    for seq, lot_id, remaining, expires_at in lots:
        conn.execute("UPDATE ledger SET remaining = 0 WHERE seq = ?", (seq,))
        conn.execute(
            "INSERT INTO ledger (id, tenant, user_id, currency, type, amount, tags, notes, metadata, created_at)"
            " VALUES (?, ?, ?, ?, 'withdraw', ?, 'credit-expired', ?, ?, ?)",
            (new_id("tx"), tenant, user, currency, remaining,
             f"Expired credit: {remaining} cents {currency} (deposit {lot_id})",
             json.dumps({"expiredTransactionId": lot_id, "expiredAt": format_ts(expires_at)}), now),
        )
        total += remaining
    return total


def _spend_expiring(conn: sqlite3.Connection, tenant: int, user: str, currency: str, amount: int, now: int) -> None:
    """Usage consumes expiring money first, earliest expiry first; the rest comes from money
    that never expires (which may go negative: usage is recorded whatever the balance)."""
    left = amount
    while left > 0:
        lots = conn.execute(
            "SELECT seq, remaining FROM ledger WHERE tenant = ? AND user_id = ? AND currency = ?"
            " AND remaining > 0 AND expires_at > ? ORDER BY expires_at, seq LIMIT 64",
            (tenant, user, currency, now),
        ).fetchall()
        if not lots:
            return
        for seq, remaining in lots:
            take = min(remaining, left)
            conn.execute("UPDATE ledger SET remaining = remaining - ? WHERE seq = ?", (take, seq))
            left -= take
            if left == 0:
                return


def _add_to_balance(conn: sqlite3.Connection, tenant: int, user: str, currency: str, delta: int) -> None:
    row = conn.execute(
        "SELECT balance FROM balances WHERE tenant = ? AND user_id = ? AND currency = ?", (tenant, user, currency)
    ).fetchone()
    new = (row[0] if row else 0) + delta
    if not INT64_MIN <= new <= INT64_MAX:
        raise InvalidParams("amount would take the balance outside the signed 64-bit range", param="amount")
    conn.execute(
        "INSERT INTO balances (tenant, user_id, currency, balance) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (tenant, user_id, currency) DO UPDATE SET balance = excluded.balance",
        (tenant, user, currency, new),
    )


def _sweep_expired(conn: sqlite3.Connection, now: int, limit: int) -> int:
    accounts = conn.execute(
        "SELECT DISTINCT tenant, user_id, currency FROM ledger WHERE remaining > 0 AND expires_at <= ? LIMIT ?",
        (now, limit),
    ).fetchall()
    for tenant, user, currency in accounts:
        forfeited = _forfeit_account(conn, tenant, user, currency, now)
        _add_to_balance(conn, tenant, user, currency, -forfeited)
    return len(accounts)

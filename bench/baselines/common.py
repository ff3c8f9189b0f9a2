"""What the HTTP baselines share: their key table, their SQL and their answers, so that they
differ from each other only in the framework around them."""
from __future__ import annotations

import hashlib
import sqlite3

BALANCE_SQL = "SELECT balance FROM balances WHERE tenant = ? AND user_id = ? AND currency = ?"
"""One indexed read (the primary key of a WITHOUT ROWID table)."""


def key_table(db: str, key: str) -> dict[str, int]:
    """{key: tenant} for the one key the benchmark uses, found by its SHA-256 as zapbilling
    stores it. Looked up once at start-up; a request then costs one dict lookup."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT tenant FROM api_keys WHERE hash = ? AND revoked_at IS NULL", (digest,)).fetchone()
    finally:
        conn.close()
    if row is None:
        raise SystemExit(f"key not found in {db}")
    return {key: row[0]}


def key_id(db: str, key: str) -> str:
    """The id of that key: every ledger row names the key whose call wrote it (key_id)."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT id FROM api_keys WHERE hash = ?", (digest,)).fetchone()
    finally:
        conn.close()
    if row is None:
        raise SystemExit(f"key not found in {db}")
    return str(row[0])


def bearer(header: str | None) -> str | None:
    if header and header.startswith("Bearer "):
        return header[7:]
    return None


def balance_answer(user: str, currency: str, rows: list[tuple[int]] | object) -> dict[str, object]:
    """zapbilling's getBalance result shape: {user, currency, balance, holds, available}."""
    balance = rows[0][0] if rows else 0  # type: ignore[index]
    return {"user": user, "currency": currency, "balance": balance, "holds": 0, "available": max(balance, 0)}

"""What the HTTP baselines share: their key table, their SQL and their answers, so that they
differ from each other only in the framework around them."""
from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from typing import Any

import msgpack

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


def usage_row(body: bytes, content_type: str) -> tuple[Any, dict[str, Any], tuple[Any, ...]]:
    """A ZAP recordUsage envelope -> (its id, its params, the ledger row recordUsage writes for
    it: id, user, currency, amount, notes, metadata, created_at, dedupe key), in the order of
    the baselines' INSERT."""
    envelope = msgpack.unpackb(body) if content_type == "application/msgpack" else json.loads(body)
    p = envelope["params"]
    tx_id = f"tx_{time.time_ns() // 1_000_000:011x}{secrets.randbits(52):013x}"  # zapbilling's id shape
    model, tokens, request_id = p.get("model", ""), p.get("totalTokens", 0), p.get("requestId")
    metadata = json.dumps({
        "model": model, "provider": "", "promptTokens": 0, "completionTokens": 0, "totalTokens": tokens,
        "requestId": request_id, "premium": False, "stream": False, "status": "", "clientIp": "",
    })
    row = (tx_id, p["user"], "usd", p["amount"], f"API usage: {model} ({tokens} tokens)", metadata,
           time.time_ns() // 1000, f"usage:{request_id}")
    return envelope.get("id"), p, row


def usage_answer(envelope_id: Any, params: dict[str, Any], tx_id: str) -> dict[str, Any]:
    """zapbilling's recordUsage answer envelope."""
    return {"id": envelope_id, "result": {
        "user": params["user"], "amount": params["amount"], "transactionId": tx_id, "currency": "usd", "type": "withdraw"}}

"""The outbox on SQLite: an event is a row of `events`, written by the transaction of the change
it tells of, so that a change and its event commit or roll back together."""
from __future__ import annotations

import json
import sqlite3
from typing import Any, NamedTuple

from ..base import LedgerRow
from ..ids import new_id


class Watch(NamedTuple):
    """What a write of this tenant must look at beyond its own rows (tenants' counts, kept by
    the operations that change them in the same transaction): all 0 for most tenants, and then
    a write reads this one row and nothing more."""

    alerts: int
    spend_caps: int
    usage_hooks: int


NOTHING = Watch(0, 0, 0)


def watch(conn: sqlite3.Connection, tenant: int) -> Watch:
    row = conn.execute("SELECT alerts, spend_caps, usage_hooks FROM tenants WHERE id = ?", (tenant,)).fetchone()
    return NOTHING if row is None else Watch(*row)


def emit(conn: sqlite3.Connection, tenant: int, type: str, data: dict[str, Any], now: int, subject: str | None = None) -> str | None:
    """Record an event in the caller's transaction; its id, or None when an event of this type
    about `subject` exists already (one event per change, kept by a unique index)."""
    event_id = new_id("evt")
    cur = conn.execute(
        "INSERT INTO events (id, tenant, type, data, created_at, subject) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (tenant, type, subject) WHERE subject IS NOT NULL DO NOTHING",
        (event_id, tenant, type, json.dumps(data, separators=(",", ":")), now, subject),
    )
    return event_id if cur.rowcount else None


def forfeit_row(tx_id: str, user: str, currency: str, cents: int, tags: str, notes: str, metadata: Any, now: int,
                key_id: str) -> LedgerRow:
    """A forfeit row as the store hands rows out (rows.ledger_row's shape), from its values."""
    return {
        "id": tx_id, "user": user, "currency": currency, "type": "withdraw", "amount": cents, "tags": tags,
        "notes": notes, "metadata": metadata, "createdAt": now, "expiresAt": None, "refundOf": None, "holdId": None,
        "keyId": key_id,
    }

"""The outbox on SQLite: an event is a row of `events`, written by the transaction of the change
it tells of, so that a change and its event commit or roll back together."""
from __future__ import annotations

import sqlite3
from typing import Any, NamedTuple

from ..base import USAGE_RECORDED, LedgerRow
from ..ids import new_id
from ..rows import json_text


class Watch(NamedTuple):
    """What a write of this tenant must look at beyond its own rows (tenants' counts, kept by
    the operations that change them in the same transaction): all 0 for most tenants, and then
    a write reads this one row and nothing more."""

    alerts: int
    spend_caps: int
    usage_hooks: int


NOTHING = Watch(0, 0, 0)
WATCHES = tuple(Watch(m & 1, m >> 1 & 1, m >> 2 & 1) for m in range(8))
"""The Watch of a bit mask (1 alerts, 2 spend caps, 4 usage hooks): what a write needs is whether
each count is above 0, and a mask read with another value costs one column, not a statement."""
WATCHED_MASK = "(alerts > 0) + 2 * (spend_caps > 0) + 4 * (usage_hooks > 0)"


def watch(conn: sqlite3.Connection, tenant: int) -> Watch:
    row = conn.execute("SELECT alerts, spend_caps, usage_hooks FROM tenants WHERE id = ?", (tenant,)).fetchone()
    return NOTHING if row is None else Watch(*row)


def about(data: dict[str, Any]) -> str | None:
    """The account an event is about (events.user_id: listEvents' userId filter): its data's
    `user` (a Transaction, a Hold, spend_cap.reached) or `userId` (a CreditGrant,
    alert.triggered); None for an event about no account (webhook_endpoint.disabled). Migration
    0009 applies the same rule to the events written before it."""
    user = data.get("user")
    return data.get("userId") if user is None else user


def emit(conn: sqlite3.Connection, tenant: int, type: str, data: dict[str, Any], now: int, subject: str | None = None,
         event_id: str | None = None) -> str | None:
    """Record an event in the caller's transaction; its id, or None when an event of this type
    about `subject` exists already (one event per change, kept by a unique index). `event_id`:
    a ledger row's (ids.row_event_id); else a new one.

    A usage.recorded event is written without its account: its row is `evented` instead, and
    the ledger's index of evented usage rows finds it by account (migration 12 says why)."""
    event_id = event_id or new_id("evt")
    cur = conn.execute(
        "INSERT INTO events (id, tenant, type, data, created_at, subject, user_id) VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (tenant, type, subject) WHERE subject IS NOT NULL DO NOTHING",
        (event_id, tenant, type, json_text(data), now, subject, None if type == USAGE_RECORDED else about(data)),
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

"""The outbox on SQLite: an event is a row of `events`, written by the transaction of the change
it tells of, so that a change and its event commit or roll back together."""
from __future__ import annotations

import json
import sqlite3
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
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
WATCHES = tuple(Watch(m & 1, m >> 1 & 1, m >> 2 & 1) for m in range(8))
"""The Watch of a bit mask (1 alerts, 2 spend caps, 4 usage hooks): what a write needs is whether
each count is above 0, and a mask read with another value costs one column, not a statement."""
WATCHED_MASK = "(alerts > 0) + 2 * (spend_caps > 0) + 4 * (usage_hooks > 0)"


def watch(conn: sqlite3.Connection, tenant: int) -> Watch:
    row = conn.execute("SELECT alerts, spend_caps, usage_hooks FROM tenants WHERE id = ?", (tenant,)).fetchone()
    return NOTHING if row is None else Watch(*row)


_chunks = (
    c_make_encoder(None, json.JSONEncoder().default, encode_basestring, None, ":", ",", False, False, False)
    if c_make_encoder is not None else None
)
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def event_json(data: dict[str, Any]) -> str:
    """An event's data as compact JSON (UTF-8 text, as the API's JSON answers are), by the C
    encoder built once (as transport/codec.py does): json.dumps with separators builds a new
    encoder each call, which cost ~36k instructions per usage.recorded (callgrind), several
    times the encoding itself."""
    if _chunks is None:  # no C accelerator (another Python)
        return _dumps(data)
    return "".join(_chunks(data, 0))


def emit(conn: sqlite3.Connection, tenant: int, type: str, data: dict[str, Any], now: int, subject: str | None = None) -> str | None:
    """Record an event in the caller's transaction; its id, or None when an event of this type
    about `subject` exists already (one event per change, kept by a unique index)."""
    event_id = new_id("evt")
    cur = conn.execute(
        "INSERT INTO events (id, tenant, type, data, created_at, subject) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (tenant, type, subject) WHERE subject IS NOT NULL DO NOTHING",
        (event_id, tenant, type, event_json(data), now, subject),
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

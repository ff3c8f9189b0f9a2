"""The outbox on SQLite: an event is a row of `events`, written by the transaction of the change
it tells of, so that a change and its event commit or roll back together."""
from __future__ import annotations

import json
import sqlite3
from typing import Any, NamedTuple

from ..base import USAGE_RECORDED, LedgerRow
from ..herald import Herald
from ..ids import new_id, row_event_id
from ..rows import LEDGER_COLUMNS, json_text


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


USAGE_DATA = (
    "(SELECT json_remove(json_object('transactionId', l.id, 'user', l.user_id, 'currency', l.currency,"
    " 'type', l.type, 'amount', l.amount, 'tags', l.tags, 'notes', l.notes,"
    " 'metadata', json(COALESCE(l.metadata, '{{}}')),"
    " 'createdAt', strftime('%Y-%m-%dT%H:%M:%S', l.created_at / 1000000, 'unixepoch')"
    " || printf('.%06dZ', l.created_at % 1000000),"
    " 'expiresAt', strftime('%Y-%m-%dT%H:%M:%S', l.expires_at / 1000000, 'unixepoch')"
    " || printf('.%06dZ', l.expires_at % 1000000),"
    " 'originalTransactionId', l.refund_of, 'holdId', l.hold_id, 'keyId', l.key_id),"
    " iif(l.expires_at IS NULL, '$.expiresAt', '$.-'), iif(l.refund_of IS NULL, '$.originalTransactionId', '$.-'),"
    " iif(l.hold_id IS NULL, '$.holdId', '$.-'))"
    " FROM ledger l WHERE l.id = 'tx_' || substr({id}, 5))"
)
"""A usage.recorded event's data, made from its ledger row when the event is read: the row as
the domain's herald renders it (the Transaction of listTransactions), which `check_usage_data`
holds this to at start-up. Why the SQLite outbox keeps no copy: recordUsage with an endpoint on
usage.recorded wrote ~450 bytes of data per event, rendered and encoded in the write; without
them the endpoint's run costs 681k instructions per request instead of 703k, against 627k with
no endpoint (bench.instructions --webhook, its `paused` run: 0.89x -> 0.92x). The row is the
event's: its id is the row's digits (ids.row_event_id), and ledger rows are never deleted nor
changed in the columns read here, so the data read is the data the write would have stored.
`{id}`: the event's id column. json_remove drops the keys the herald leaves out when empty
('$.-' names no key: nothing removed)."""

SUBJECT_INDEXED = f"subject IS NOT NULL AND type <> '{USAGE_RECORDED}'"
"""events_subject's rows (migration 15): every event about a subject but usage.recorded."""

USAGE_UNRENDERED = ""
"""events.data of an event whose data is USAGE_DATA (the column is NOT NULL)."""


def event_data(prefix: str = "") -> str:
    """The data column of an events row as read: stored, or made from the ledger (USAGE_DATA)."""
    return f"CASE {prefix}data WHEN '{USAGE_UNRENDERED}' THEN {USAGE_DATA.format(id=prefix + 'id')} ELSE {prefix}data END"


def check_usage_data(herald: Herald) -> None:
    """Start-up: USAGE_DATA must render rows as the herald does (the domain owns the shape; this
    is the store's copy of it, so a change to one without the other stops the server here, not
    a receiver later). Probes: a usage row whose metadata orjson wrote, one without metadata from
    a hold's capture, and one with the optional keys filled and metadata the json module wrote
    (an integer past 64 bits: rows.json_text)."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute(f"CREATE TABLE ledger ({LEDGER_COLUMNS})")
        probes: list[LedgerRow] = [
            {"id": "tx_0193ab12cd45ef67890abcd1", "user": "u/1", "currency": "usd", "type": "withdraw", "amount": 7,
             "tags": "api-usage", "notes": "API usage: m (3 tokens)", "metadata": {"model": "m", "t": "café ✓",
             "nested": {"f": 1.5, "e": 1e300, "l": [1, None, True]}}, "createdAt": 1764900000123456, "expiresAt": None,
             "refundOf": None, "holdId": None, "keyId": "key_1"},
            {"id": "tx_0193ab12cd45ef67890abcd2", "user": "u2", "currency": "eur", "type": "withdraw", "amount": 1,
             "tags": "api-usage", "notes": "", "metadata": None, "createdAt": 1, "expiresAt": None, "refundOf": None,
             "holdId": "hold_1", "keyId": "key_2"},
            {"id": "tx_0193ab12cd45ef67890abcd3", "user": "u3", "currency": "usd", "type": "withdraw", "amount": 5,
             "tags": "api-usage", "notes": "n", "metadata": {"n": 10**20, "t": "ü"}, "createdAt": 1764900000999999,
             "expiresAt": 1764900001000000, "refundOf": "tx_0193ab12cd45ef67890abcd1", "holdId": "hold_2", "keyId": "key_3"},
        ]
        for row in probes:
            conn.execute(f"INSERT INTO ledger ({LEDGER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (
                row["id"], row["user"], row["currency"], row["type"], row["amount"], row["tags"], row["notes"],
                None if row["metadata"] is None else json_text(row["metadata"]), row["createdAt"], row["expiresAt"],
                row["refundOf"], row["holdId"], row["keyId"]))
            told = herald.usage(row)
            made = conn.execute(f"SELECT {USAGE_DATA.format(id='?')}", (row_event_id(row["id"]),)).fetchone()[0]
            if told is None or json.loads(made) != told[1]:
                raise RuntimeError(f"the SQLite outbox renders a usage.recorded event's data as {made},"
                                   f" the herald as {None if told is None else json_text(told[1])}: store/sqlite/outbox.py USAGE_DATA")
    finally:
        conn.close()


def about(data: dict[str, Any]) -> str | None:
    """The account an event is about (events.user_id: listEvents' userId filter): its data's
    `user` (a Transaction, a Hold, spend_cap.reached) or `userId` (a CreditGrant,
    alert.triggered); None for an event about no account (webhook_endpoint.disabled). Migration
    0009 applies the same rule to the events written before it."""
    user = data.get("user")
    return data.get("userId") if user is None else user


_INSERT = "INSERT INTO events (id, tenant, type, data, created_at, subject, user_id) VALUES (?, ?, ?, ?, ?, ?, ?)"
_INSERT_ONCE = _INSERT + f" ON CONFLICT (tenant, type, subject) WHERE {SUBJECT_INDEXED} DO NOTHING"


def emit(conn: sqlite3.Connection, tenant: int, type: str, data: dict[str, Any] | None, now: int,
         subject: str | None = None, event_id: str | None = None) -> str | None:
    """Record an event in the caller's transaction; its id, or None when an event of this type
    about `subject` exists already (one event per change, kept by a unique index). `event_id`:
    a ledger row's (ids.row_event_id); else a new one. `data` None: a usage.recorded whose data
    is its ledger row's, made when read (USAGE_DATA).

    A usage.recorded event is written without its account: its row is `evented` instead, and
    the ledger's index of evented usage rows finds it by account (migration 12 says why). Nor is
    it in events_subject (migration 15): its id is its ledger row's, so the id's own unique index
    keeps it one per row."""
    if data is None:
        assert type == USAGE_RECORDED and event_id is not None, "only a ledger row's usage.recorded is made when read"
        conn.execute(_INSERT, (event_id, tenant, type, USAGE_UNRENDERED, now, subject, None))
        return event_id
    text, user = json_text(data), None if type == USAGE_RECORDED else about(data)
    event_id = event_id or new_id("evt")
    cur = conn.execute(_INSERT_ONCE, (event_id, tenant, type, text, now, subject, user))
    return event_id if cur.rowcount else None


def forfeit_row(tx_id: str, user: str, currency: str, cents: int, tags: str, notes: str, metadata: Any, now: int,
                key_id: str) -> LedgerRow:
    """A forfeit row as the store hands rows out (rows.ledger_row's shape), from its values."""
    return {
        "id": tx_id, "user": user, "currency": currency, "type": "withdraw", "amount": cents, "tags": tags,
        "notes": notes, "metadata": metadata, "createdAt": now, "expiresAt": None, "refundOf": None, "holdId": None,
        "keyId": key_id,
    }

"""The outbox on PostgreSQL (as ../sqlite/outbox.py): an event is a row of `events` written by
the transaction of the change it tells of."""
from __future__ import annotations

from typing import Any

import asyncpg

from ..herald import Told
from ..ids import new_id
from ..rows import json_text
from ..sqlite.outbox import NOTHING, Watch, about, forfeit_row
from .connection import lock_account

__all__ = ["NOTHING", "Watch", "about", "emit", "emit_many", "event_args", "forfeit_row", "lock_watching", "watch"]

EMIT = (
    "INSERT INTO events (id, tenant, type, data, created_at, subject, user_id) VALUES ($1, $2, $3, $4, $5, $6, $7)"
    " ON CONFLICT (tenant, type, subject) WHERE subject IS NOT NULL DO NOTHING"
)


async def watch(conn: asyncpg.Connection, tenant: int) -> Watch:
    row = await conn.fetchrow("SELECT alerts, spend_caps, usage_hooks FROM tenants WHERE id = $1", tenant)
    return NOTHING if row is None else Watch(*row)


async def emit(
    conn: asyncpg.Connection, tenant: int, type: str, data: dict[str, Any], now: int, subject: str | None = None
) -> str | None:
    """Record an event in the caller's transaction; its id, or None when an event of this type
    about `subject` exists already."""
    event_id = new_id("evt")
    status = await conn.execute(EMIT, event_id, tenant, type, json_text(data), now, subject, about(data))
    return event_id if status.endswith(" 1") else None


def event_args(tenant: int, told: Told, now: int, subject: str, event_id: str | None = None) -> tuple[Any, ...]:
    """EMIT's parameters for one event the herald told of (`event_id`: a ledger row's,
    ids.row_event_id; else a new one)."""
    return event_id or new_id("evt"), tenant, told[0], json_text(told[1]), now, subject, about(told[1])


async def emit_many(conn: asyncpg.Connection, events: list[tuple[Any, ...]]) -> None:
    """Several events (event_args each) in one pipelined statement: one round trip, not one each."""
    if len(events) == 1:
        await conn.execute(EMIT, *events[0])
    elif events:
        await conn.executemany(EMIT, events)


# The account's lock (connection.lock_account) and the tenant's Watch in one statement: the
# write reads its Watch without a round trip of its own. The Watch comes from the statement's
# snapshot, taken before it waited for the lock: an alert, cap or endpoint created while this
# write waited applies from the next write on (the write is ordered before it), as it would
# have had the write not waited. FOR UPDATE OF b: the tenants row is read, never locked (a lock
# there would queue every write of the tenant behind one another).
_LOCK_WATCHING = (
    "SELECT b.balance, t.alerts, t.spend_caps, t.usage_hooks FROM balances b LEFT JOIN tenants t ON t.id = b.tenant"
    " WHERE b.tenant = $1 AND b.user_id = $2 AND b.currency = $3 FOR UPDATE OF b"
)


async def lock_watching(conn: asyncpg.Connection, tenant: int, user: str, currency: str) -> tuple[int, Watch]:
    """connection.lock_account and the tenant's Watch: (the balance row's value, the Watch)."""
    row = await conn.fetchrow(_LOCK_WATCHING, tenant, user, currency)
    if row is None:  # a new account (rare): the lock as lock_account takes it, then the Watch
        return await lock_account(conn, tenant, user, currency), await watch(conn, tenant)
    balance, alerts, spend_caps, usage_hooks = row
    return balance, (NOTHING if alerts is None else Watch(alerts, spend_caps, usage_hooks))
